"""The idle and close deadlines of an endpoint's connections: one task and one heap.

A connection must close when nothing arrived for `idle_timeout` seconds, and must drop TCP when
its close handshake has not finished `close_timeout` seconds after its close frame (contract.md
§5, RFC 6455 §7.1.1). A cancel scope around each read would enforce that at the price of a scope,
its status and a deadline registration per socket and per frame; here every connection has one
entry in one heap, served by one task per endpoint.

Re-arming is lazy: a frame received moves the connection's idle deadline forward by writing an
attribute, without touching the heap. When an entry comes due, the keeper asks its connection
(`Expiring.expire`), which either acts (its deadline passed) or names its current deadline, and
the entry is filed again at that time. Only a deadline *earlier* than the one filed (the close
handshake's) needs a new entry (`watch`), and the entry it replaces is cancelled.
"""

from __future__ import annotations

import heapq
import itertools
import math
from typing import Protocol

import trio


class Expiring(Protocol):
    """What a `Deadlines` serves (a `WebSocketConnection`)."""

    def expire(self, now: float) -> float | None:
        """Called when an entry of this object comes due (Trio time `now`): act if the object's
        deadline passed, and return the time to be asked again, or None for never. Synchronous;
        must not raise."""
        ...


class DeadlineEntry:
    """One filed deadline; `cancel()` drops it (and its reference to the target). Idempotent."""

    __slots__ = ("target",)

    def __init__(self, target: Expiring) -> None:
        self.target: Expiring | None = target

    def cancel(self) -> None:
        self.target = None


class Deadlines:
    """One endpoint's deadline keeper: `run` must be running (in the endpoint's nursery) while
    connections `watch` it."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, DeadlineEntry]] = []
        self._order = itertools.count()
        self._wakeup = trio.Event()

    def watch(self, when: float, target: Expiring) -> DeadlineEntry:
        """Ask `target.expire` at Trio time `when` (and then when it says). Synchronous, never blocks."""
        entry = DeadlineEntry(target)
        earliest = self._heap[0][0] if self._heap else math.inf
        heapq.heappush(self._heap, (when, next(self._order), entry))
        if when < earliest:
            self._wakeup.set()
        return entry

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the entries until cancelled. Calls `task_status.started()` at once."""
        task_status.started()
        heap = self._heap
        while True:
            now = trio.current_time()
            while heap and heap[0][0] <= now:
                _, _, entry = heapq.heappop(heap)
                target = entry.target
                if target is None:
                    continue  # cancelled
                again = target.expire(now)
                if again is not None and entry.target is not None:
                    heapq.heappush(heap, (again, next(self._order), entry))
            self._wakeup = trio.Event()
            with trio.move_on_at(heap[0][0] if heap else math.inf):
                await self._wakeup.wait()
