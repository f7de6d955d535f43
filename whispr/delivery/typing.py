"""Typing-indicator coalescing (contract §3 `typing_start` / `typing_stop`).

"Coalesced to at most one per user per 2 s": per (conversation, user), across all the user's
devices on this node, a `user_typing` with the same `typing` value as the last one sent is dropped
inside the window. A change of value always goes out at once: dropping a `typing_stop` would leave
the indicator on until the client's own timeout. Indicators are droppable frames anyway.
"""

from __future__ import annotations

from collections.abc import Callable

TYPING_WINDOW = 2.0
_MIN_SWEEP = 1024


class TypingCoalescer:
    """Decides which typing events are broadcast. Synchronous; `clock` is monotonic seconds."""

    __slots__ = ("_clock", "_last", "_sweep_at", "_window")

    def __init__(self, clock: Callable[[], float], window: float = TYPING_WINDOW) -> None:
        self._clock = clock
        self._window = window
        # (conversation id, user id) -> (time sent, typing) of the last indicator sent. Entries older
        # than the window are swept whenever the map reaches `_sweep_at` (twice its size after the
        # last sweep), so memory follows the recent typers at an amortised O(1) per call.
        self._last: dict[tuple[str, str], tuple[float, bool]] = {}
        self._sweep_at = _MIN_SWEEP

    def admit(self, conversation_id: str, user_id: str, typing: bool) -> bool:
        """True if this indicator should be broadcast now (and record it as sent)."""
        now = self._clock()
        key = (conversation_id, user_id)
        last = self._last.get(key)
        if last is not None and last[1] == typing and now - last[0] < self._window:
            return False
        self._last[key] = (now, typing)
        if len(self._last) >= self._sweep_at:
            self._last = {k: v for k, v in self._last.items() if now - v[0] < self._window}
            self._sweep_at = max(_MIN_SWEEP, 2 * len(self._last))
        return True
