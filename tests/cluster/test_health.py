"""Redirect mode, unit level: NodeHealth's thresholds over injected readings, and OverloadGuard's
cached verdict, exact connection cap, change log and loop-lag window."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
import trio
import trio.testing

from whispr.cluster.health import HealthThresholds, LagWindow, NodeHealth, OverloadGuard, Reason, rss_bytes
from whispr.gateway.transport import Refuse
from whispr.observability import telemetry

LIMITS = HealthThresholds(max_connections=100, max_loop_lag=0.25, max_rss=1000, retry_after=7)


def health(connections: int = 0, lag: float = 0.0, rss: int = 0, **deps: bool) -> NodeHealth:
    return NodeHealth(
        connections=lambda: connections,
        loop_lag=lambda: lag,
        rss=lambda: rss,
        thresholds=LIMITS,
        dependencies={name: constant(ok) for name, ok in deps.items()},
    )


def constant(ok: bool) -> Callable[[], bool]:
    return lambda: ok


def test_below_every_threshold_is_not_overloaded() -> None:
    report = health(connections=99, lag=0.249, rss=999, store=True).check()
    assert not report.overloaded
    assert report.reasons == ()


@pytest.mark.parametrize(
    ("node", "reason"),
    [
        (health(connections=100), Reason("connections", "connections 100 >= 100")),
        (health(lag=0.3), Reason("loop_lag", "event-loop lag 0.300 s >= 0.25 s")),
        (health(rss=1000), Reason("rss", "rss 1000 bytes >= 1000 bytes")),
        (health(store=False), Reason("dependency_store", "dependency store unhealthy")),
    ],
)
def test_each_threshold_is_a_reason_of_its_own(node: NodeHealth, reason: Reason) -> None:
    report = node.check()
    assert report.overloaded
    assert report.reasons == (reason,)
    assert report.retry_after == 7


def test_all_reasons_are_given_at_once() -> None:
    report = health(connections=500, lag=1.0, rss=5000, tree=False, store=False, redis=True).check()
    assert report.kinds == ("connections", "loop_lag", "rss", "dependency_store", "dependency_tree")


def test_readings_are_taken_on_every_check() -> None:
    connections = [10]
    node = NodeHealth(connections=lambda: connections[0], loop_lag=lambda: 0.0, rss=lambda: 0, thresholds=LIMITS)
    assert not node.check().overloaded
    connections[0] = 100
    assert node.check().overloaded


@pytest.mark.parametrize("field", ["max_connections", "max_loop_lag", "max_rss", "retry_after"])
def test_thresholds_must_be_positive(field: str) -> None:
    values = {"max_connections": 1, "max_loop_lag": 1.0, "max_rss": 1, "retry_after": 1, field: 0}
    with pytest.raises(ValueError, match=f"{field} must be positive"):
        HealthThresholds(**values)  # type: ignore[arg-type]


# -- OverloadGuard ---------------------------------------------------------------------------------


class Readings:
    """Settable readings for a guard."""

    def __init__(self) -> None:
        self.connections = 0
        self.rss = 0
        self.store = True

    def guard(self) -> OverloadGuard:
        return OverloadGuard(
            LIMITS, lambda: self.connections, rss=lambda: self.rss, dependencies={"store": lambda: self.store}
        )


def refusal(kind: str) -> Refuse:
    return Refuse(503, f"overloaded_{kind}", (("Retry-After", "7"),))


def test_connection_cap_is_checked_on_every_connect_without_a_sample() -> None:
    readings = Readings()
    guard = readings.guard()
    assert guard.refusal() is None
    readings.connections = 100
    assert guard.refusal() == refusal("connections")  # no sample in between: the cap is live
    readings.connections = 99
    assert guard.refusal() is None


@pytest.mark.parametrize("kind", ["rss", "dependency_store"])
def test_sampled_reasons_are_cached_until_the_next_sample(kind: str) -> None:
    readings = Readings()
    guard = readings.guard()
    guard.sample()
    readings.rss, readings.store = (1000, True) if kind == "rss" else (0, False)
    assert guard.refusal() is None  # not sampled yet: the connect path reads only the cache
    assert guard.sample().kinds == (kind,)
    assert guard.refusal() == refusal(kind)
    readings.rss, readings.store = 0, True
    assert guard.refusal() == refusal(kind)
    assert not guard.sample().overloaded
    assert guard.refusal() is None


def test_a_sampled_cap_does_not_outlive_a_freed_slot() -> None:
    readings = Readings()
    guard = readings.guard()
    readings.connections = 100
    assert guard.sample().kinds == ("connections",)
    readings.connections = 99
    assert guard.refusal() is None  # the cap is live, not cached


def test_loop_lag_is_the_largest_reported_since_the_previous_sample() -> None:
    window = LagWindow()
    window.attach()
    try:
        assert window() == 0.0
        for lag in (0.01, 0.3, 0.02):
            telemetry.emit(telemetry.LOOP_LAG, {"lag": lag})
        assert window() == 0.3
        telemetry.emit(telemetry.LOOP_LAG, {"lag": 0.05})
        assert window() == 0.05
        assert window() == 0.05  # no report since: the previous reading stands
    finally:
        window.detach()
    telemetry.emit(telemetry.LOOP_LAG, {"lag": 9.0})
    assert window() == 0.05  # detached


def test_one_log_line_per_change_of_reasons(caplog: pytest.LogCaptureFixture) -> None:
    readings = Readings()
    guard = readings.guard()
    caplog.set_level(logging.INFO, logger="whispr.gateway")
    guard.sample()
    assert caplog.records == []
    readings.rss = 5000
    for _ in range(3):
        guard.sample()
        guard.refusal()
    readings.store = False
    guard.sample()
    guard.sample()
    readings.rss, readings.store = 0, True
    guard.sample()
    guard.sample()
    messages = [record.getMessage() for record in caplog.records]
    assert messages == [
        "node overloaded: refusing new sockets with 503 (open ones stay): rss 5000 bytes >= 1000 bytes",
        "node still overloaded, reasons changed: refusing new sockets with 503 (open ones stay): "
        "rss 5000 bytes >= 1000 bytes; dependency store unhealthy",
        "node no longer overloaded (was: rss, dependency_store): accepting new sockets",
    ]
    assert [record.levelno for record in caplog.records] == [logging.WARNING, logging.WARNING, logging.INFO]


async def test_run_samples_periodically_and_reads_the_loop_lag(autojump_clock: trio.testing.MockClock) -> None:
    guard = Readings().guard()
    async with trio.open_nursery() as nursery:
        await nursery.start(guard.run, 1.0)
        assert guard.refusal() is None
        telemetry.emit(telemetry.LOOP_LAG, {"lag": 0.5})
        await trio.sleep(1.5)  # one sample later (virtual time)
        assert guard.refusal() == refusal("loop_lag")
        await trio.sleep(1.0)  # a sample without a lag report keeps the reading
        assert guard.refusal() == refusal("loop_lag")
        telemetry.emit(telemetry.LOOP_LAG, {"lag": 0.0})
        await trio.sleep(1.0)
        assert guard.refusal() is None
        nursery.cancel_scope.cancel()
    async with trio.open_nursery() as nursery:  # its lag window was detached: it can run again
        await nursery.start(guard.run, 1.0)
        nursery.cancel_scope.cancel()


def test_rss_is_read_from_the_process() -> None:
    assert 1024 * 1024 < rss_bytes() < 64 * 1024**3
