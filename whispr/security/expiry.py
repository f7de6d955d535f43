"""Closes sockets whose token has expired (contract.md §1 and §6: close code 3000).

A JWT is verified once, at the upgrade; a socket must not outlive its token (OWASP WebSocket
cheat sheet, reliability.md S7/C2). One `ExpiryWatch` per node keeps every socket's deadline in a
heap served by a single task, so a connection costs a heap entry, not a task or a timer.

Deadlines are wall-clock Unix seconds (a JWT's `exp` plus the verification leeway), converted to
Trio's clock when the task sleeps, so the virtual clock of tests applies.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable

import trio

CLOSE_TOKEN_EXPIRED = 3000  # contract.md §6: get a new token before reconnecting


class _Entry:
    """One watched socket; calling it cancels the watch (it is what `watch` returns: one object
    per socket, not an entry and a closure)."""

    __slots__ = ("close", "deadline")

    def __init__(self, deadline: float, close: Callable[[], None] | None) -> None:
        self.deadline = deadline
        self.close = close  # None once cancelled or fired

    def __call__(self) -> None:
        self.close = None


class ExpiryWatch:
    """Calls each watched socket's `close` at its deadline. `run` must be running in the node's tree.

    Args:
        wall_clock: Unix seconds now (injectable for tests).
    """

    def __init__(self, wall_clock: Callable[[], float] = time.time) -> None:
        self._wall_clock = wall_clock
        self._heap: list[tuple[float, int, _Entry]] = []
        self._order = itertools.count()
        self._wakeup = trio.Event()

    def __len__(self) -> int:
        """Entries still waiting (cancelled ones are dropped lazily)."""
        return sum(1 for _, _, entry in self._heap if entry.close is not None)

    def watch(self, deadline: float, close: Callable[[], None]) -> Callable[[], None]:
        """Call `close()` at Unix time `deadline`; returns a cancel function (idempotent).

        Synchronous and never blocks. `close` must not raise or block (a transport's `close` does
        neither). A deadline already past fires on the watch task's next turn.
        """
        entry = _Entry(deadline, close)
        earliest = self._heap[0][0] if self._heap else None
        heapq.heappush(self._heap, (deadline, next(self._order), entry))
        if earliest is None or deadline < earliest:
            self._wakeup.set()
        return entry

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve deadlines until cancelled. Calls `task_status.started()` at once."""
        task_status.started()
        while True:
            self._fire_due()
            self._wakeup = trio.Event()
            with trio.move_on_at(self._next_trio_deadline()):
                await self._wakeup.wait()

    def _fire_due(self) -> None:
        now = self._wall_clock()
        while self._heap and self._heap[0][0] <= now:
            _, _, entry = heapq.heappop(self._heap)
            close, entry.close = entry.close, None
            if close is not None:
                close()

    def _next_trio_deadline(self) -> float:
        if not self._heap:
            return float("inf")
        return trio.current_time() + max(0.0, self._heap[0][0] - self._wall_clock())
