"""Group commit: concurrent writes batched into one transaction, each caller awaiting its own result.

Theory of operation: callers `submit()` a request and wait. One writer task (`run`) takes everything
queued (up to `max_batch`) and hands it to the backend's `commit` function as one batch: one
transaction, and for PostgreSQL one crossing of the trio-asyncio bridge. While a batch commits, new
requests queue up and form the next batch, so the batch size follows the load with no timer and no
added latency when idle ("leader/follower" group commit, as in database WAL writers).

Invariants:
- every submitted request is answered exactly once: with its result, its own `StoreError`, or
  `StoreUnavailable` if its batch failed or the writer stopped before committing it;
- batches commit one at a time, in submission order.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar, cast

import trio

from whispr.delivery.store import StoreError, StoreUnavailable

Req = TypeVar("Req")
Res = TypeVar("Res")


class _Slot(Generic[Req, Res]):
    __slots__ = ("done", "outcome", "request")

    def __init__(self, request: Req) -> None:
        self.request = request
        self.done = trio.Event()
        self.outcome: Res | StoreError | None = None

    def answer(self, outcome: Res | StoreError) -> None:
        self.outcome = outcome
        self.done.set()


class GroupCommit(Generic[Req, Res]):
    """Batches `submit()` calls into `commit(batch)` calls made by one writer task (`run`).

    `commit` receives a non-empty list of requests and returns one outcome per request, in order:
    a result, or a `StoreError` for that request alone. If it raises `StoreUnavailable`, every
    request of the batch gets a `StoreUnavailable` of its own (caused by the same error). Any other
    exception is a bug: it stops the writer and propagates out of `run`.
    """

    def __init__(self, commit: Callable[[list[Req]], Awaitable[list[Res | StoreError]]], max_batch: int) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self._commit = commit
        self._max_batch = max_batch
        # Every queued slot has a caller waiting on it, so the queue is bounded by the callers.
        self._send, self._receive = trio.open_memory_channel[_Slot[Req, Res]](math.inf)

    async def submit(self, request: Req) -> Res:
        """Queue `request`, wait until its batch has committed, and return its result.

        Blocks until the commit; cancelling the caller does not withdraw the request.

        Raises:
            StoreError: this request's own error, or `StoreUnavailable` (batch failed, writer stopped).
        """
        slot: _Slot[Req, Res] = _Slot(request)
        try:
            self._send.send_nowait(slot)
        except trio.ClosedResourceError:
            raise StoreUnavailable("the store is closed") from None
        await slot.done.wait()
        outcome = slot.outcome
        if isinstance(outcome, StoreError):
            raise outcome
        return cast(Res, outcome)  # answer() set it before `done`

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The writer loop; runs until cancelled. Answers every pending request before it returns."""
        in_flight: list[_Slot[Req, Res]] = []
        task_status.started()
        try:
            async for first in self._receive:
                in_flight = [first]
                while len(in_flight) < self._max_batch:
                    try:
                        in_flight.append(self._receive.receive_nowait())
                    except trio.WouldBlock:
                        break
                try:
                    outcomes = await self._commit([slot.request for slot in in_flight])
                except StoreUnavailable as exc:
                    for slot in in_flight:
                        slot.answer(_copy_unavailable(exc))
                else:
                    for slot, outcome in zip(in_flight, outcomes, strict=True):
                        slot.answer(outcome)
                in_flight = []
        finally:
            self._send.close()
            stopped = StoreUnavailable("the store's writer stopped before committing")
            for slot in in_flight:
                slot.answer(_copy_unavailable(stopped))
            while True:
                try:
                    self._receive.receive_nowait().answer(_copy_unavailable(stopped))
                except (trio.WouldBlock, trio.EndOfChannel):
                    break


def _copy_unavailable(exc: StoreUnavailable) -> StoreUnavailable:
    """A fresh exception per caller (each raise sets its own traceback), with the same cause."""
    copy = StoreUnavailable(*exc.args)
    copy.__cause__ = exc.__cause__
    return copy
