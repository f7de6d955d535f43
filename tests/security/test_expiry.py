"""ExpiryWatch closes each socket at its token's deadline, on Trio's virtual clock."""

from __future__ import annotations

import trio
import trio.testing

from whispr.security.expiry import ExpiryWatch


async def test_sockets_close_at_their_deadlines_in_order(autojump_clock: trio.testing.MockClock) -> None:
    start_wall = 1_000_000.0
    start = trio.current_time()
    watch = ExpiryWatch(wall_clock=lambda: start_wall + (trio.current_time() - start))
    closed: list[tuple[str, float]] = []

    def closer(name: str):  # type: ignore[no-untyped-def]
        return lambda: closed.append((name, trio.current_time() - start))

    async with trio.open_nursery() as nursery:
        await nursery.start(watch.run)
        watch.watch(start_wall + 20, closer("late"))
        watch.watch(start_wall + 5, closer("early"))
        cancel = watch.watch(start_wall + 10, closer("cancelled"))
        cancel()
        cancel()
        await trio.sleep(30)
        assert closed == [("early", 5.0), ("late", 20.0)]
        assert len(watch) == 0
        nursery.cancel_scope.cancel()


async def test_a_deadline_already_past_fires_at_once(autojump_clock: trio.testing.MockClock) -> None:
    watch = ExpiryWatch(wall_clock=lambda: 50.0)
    closed: list[str] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(watch.run)
        watch.watch(10.0, lambda: closed.append("x"))
        await trio.testing.wait_all_tasks_blocked()
        assert closed == ["x"]
        nursery.cancel_scope.cancel()


async def test_an_earlier_deadline_wakes_a_watch_sleeping_on_a_later_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    start = trio.current_time()
    watch = ExpiryWatch(wall_clock=lambda: trio.current_time() - start)
    closed: list[float] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(watch.run)
        watch.watch(100.0, lambda: closed.append(trio.current_time() - start))
        await trio.testing.wait_all_tasks_blocked()
        watch.watch(1.0, lambda: closed.append(trio.current_time() - start))
        await trio.sleep(2)
        assert closed == [1.0]
        nursery.cancel_scope.cancel()
