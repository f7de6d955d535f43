"""GroupCommit batches concurrent submits and answers every caller exactly once."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from whispr.delivery.group_commit import GroupCommit
from whispr.delivery.store import ConversationNotFound, StoreError, StoreUnavailable


class Backend:
    """A commit function that records its batches and blocks until the test releases it."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = trio.Event()
        self.fail_with: Exception | None = None

    async def commit(self, batch: list[int]) -> list[int | StoreError]:
        self.batches.append(batch)
        await self.release.wait()
        if self.fail_with is not None:
            raise self.fail_with
        return [ConversationNotFound(str(n)) if n < 0 else n * 10 for n in batch]


async def test_requests_queued_during_a_commit_form_the_next_batch(nursery: trio.Nursery) -> None:
    backend = Backend()
    commits = GroupCommit(backend.commit, max_batch=100)
    await nursery.start(commits.run)
    results: dict[int, int] = {}

    async def submit(n: int) -> None:
        results[n] = await commits.submit(n)

    async with trio.open_nursery() as callers:
        callers.start_soon(submit, 0)
        await trio.testing.wait_all_tasks_blocked()  # batch [0] is committing
        for n in range(1, 6):
            callers.start_soon(submit, n)
        await trio.testing.wait_all_tasks_blocked()
        backend.release.set()

    assert [sorted(batch) for batch in backend.batches] == [[0], [1, 2, 3, 4, 5]]  # (Trio starts tasks in any order)
    assert results == {n: n * 10 for n in range(6)}


async def test_batches_are_capped_at_max_batch(nursery: trio.Nursery) -> None:
    backend = Backend()
    backend.release.set()
    commits = GroupCommit(backend.commit, max_batch=2)
    async with trio.open_nursery() as callers:
        for n in range(5):
            callers.start_soon(commits.submit, n)
        await trio.testing.wait_all_tasks_blocked()
        await nursery.start(commits.run)

    assert [len(batch) for batch in backend.batches] == [2, 2, 1]
    assert sorted(n for batch in backend.batches for n in batch) == [0, 1, 2, 3, 4]


async def test_a_request_error_reaches_only_its_caller(nursery: trio.Nursery) -> None:
    backend = Backend()
    backend.release.set()
    commits = GroupCommit(backend.commit, max_batch=10)
    await nursery.start(commits.run)

    with pytest.raises(ConversationNotFound):
        await commits.submit(-1)
    assert await commits.submit(2) == 20


async def test_a_failed_batch_fails_each_caller_with_its_own_error(nursery: trio.Nursery) -> None:
    backend = Backend()
    cause = OSError("connection refused")
    try:
        raise StoreUnavailable("down") from cause
    except StoreUnavailable as exc:
        backend.fail_with = exc
    commits = GroupCommit(backend.commit, max_batch=10)
    errors: list[BaseException] = []

    async def submit(n: int) -> None:
        try:
            await commits.submit(n)
        except StoreUnavailable as exc:
            errors.append(exc)

    async with trio.open_nursery() as callers:
        for n in range(3):
            callers.start_soon(submit, n)
        await trio.testing.wait_all_tasks_blocked()
        await nursery.start(commits.run)
        backend.release.set()

    assert len(errors) == 3
    assert len({id(e) for e in errors}) == 3
    assert all(e.__cause__ is cause for e in errors)


async def test_stopping_the_writer_answers_pending_and_later_callers() -> None:
    backend = Backend()
    commits = GroupCommit(backend.commit, max_batch=1)
    outcomes: list[BaseException] = []

    async def submit(n: int) -> None:
        try:
            await commits.submit(n)
        except StoreUnavailable as exc:
            outcomes.append(exc)

    async with trio.open_nursery() as callers, trio.open_nursery() as writer:
        await writer.start(commits.run)
        callers.start_soon(submit, 1)  # in flight, never released
        callers.start_soon(submit, 2)  # queued
        await trio.testing.wait_all_tasks_blocked()
        writer.cancel_scope.cancel()

    assert len(outcomes) == 2
    with pytest.raises(StoreUnavailable, match="closed"):
        await commits.submit(3)


async def test_an_unexpected_commit_error_stops_the_writer_and_fails_callers() -> None:
    backend = Backend()
    backend.release.set()
    backend.fail_with = RuntimeError("bug")
    commits = GroupCommit(backend.commit, max_batch=10)
    answered: list[BaseException] = []

    async def submit() -> None:
        try:
            await commits.submit(1)
        except StoreUnavailable as exc:
            answered.append(exc)

    with pytest.RaisesGroup(pytest.RaisesExc(RuntimeError, match="bug")):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(submit)
            await trio.testing.wait_all_tasks_blocked()
            await nursery.start(commits.run)
    assert len(answered) == 1


def test_max_batch_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        GroupCommit(Backend().commit, max_batch=0)
