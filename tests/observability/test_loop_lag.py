from __future__ import annotations

from collections.abc import Iterator

import pytest
import trio
import trio.testing

from whispr.observability import telemetry
from whispr.observability.loop_lag import measure_loop_lag


@pytest.fixture
def lags() -> Iterator[list[float]]:
    seen: list[float] = []
    telemetry.attach("test.lag", [telemetry.LOOP_LAG], lambda e, m, md: seen.append(m["lag"]))
    yield seen
    telemetry.detach("test.lag")


async def test_reports_how_late_the_loop_woke_it(mock_clock: trio.testing.MockClock, lags: list[float]) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(measure_loop_lag, 0.5)
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(0.5)  # on time
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(0.75)  # the tick's deadline passed 0.25 s before the loop got to it
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert lags == [0.0, pytest.approx(0.25)]


async def test_nothing_is_emitted_before_the_first_interval(
    mock_clock: trio.testing.MockClock, lags: list[float]
) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(measure_loop_lag, 1.0)
        mock_clock.jump(0.9)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert lags == []


async def test_ticks_every_interval(autojump_clock: trio.testing.MockClock, lags: list[float]) -> None:
    with trio.move_on_after(10.25):
        await measure_loop_lag(1.0)
    assert lags == [0.0] * 10


async def test_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        await measure_loop_lag(0.0)
