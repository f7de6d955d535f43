"""Restart intensity: at most ``intensity`` restarts within a sliding window of ``period`` seconds.

A pure object with the clock injected: the supervisor passes ``trio.current_time()``, tests pass
plain floats.
"""

from __future__ import annotations

from collections import deque

__all__ = ["RestartIntensity"]


class RestartIntensity:
    """Counts one supervisor's restarts over a sliding window (OTP ``add_restart/1``).

    Args:
        intensity: Restarts allowed within the window (≥ 0).
        period: Window length in seconds (> 0).
    """

    __slots__ = ("_restarts", "intensity", "period")

    def __init__(self, intensity: int, period: float) -> None:
        self.intensity = intensity
        self.period = period
        # Invariant: restart times, oldest first, all within `period` of the latest `record()`.
        self._restarts: deque[float] = deque()

    def record(self, now: float) -> bool:
        """Record a restart at ``now``; return whether it stays within the intensity.

        ``now`` must not go backwards between calls. A restart at ``then`` is still in the window
        while ``now - then <= period`` (OTP keeps restarts with ``R >= Now - Period``). The restart
        is allowed when the window then holds at most ``intensity`` restarts; ``False`` means the
        supervisor must give up.
        """
        threshold = now - self.period
        restarts = self._restarts
        while restarts and restarts[0] < threshold:
            restarts.popleft()
        restarts.append(now)
        return len(restarts) <= self.intensity

    def __len__(self) -> int:
        """Restarts in the window as of the latest ``record()``."""
        return len(self._restarts)
