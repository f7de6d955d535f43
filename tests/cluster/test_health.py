"""NodeHealth: pure thresholds over injected readings."""

from __future__ import annotations

import pytest

from whispr.cluster.health import HealthThresholds, NodeHealth

LIMITS = HealthThresholds(max_connections=100, max_loop_lag=0.25, max_rss=1000, retry_after=7)


def health(connections: int = 0, lag: float = 0.0, rss: int = 0, **deps: bool) -> NodeHealth:
    return NodeHealth(
        connections=lambda: connections,
        loop_lag=lambda: lag,
        rss=lambda: rss,
        dependencies={name: (lambda ok=ok: ok) for name, ok in deps.items()},
        thresholds=LIMITS,
    )


def test_below_every_threshold_is_not_overloaded() -> None:
    report = health(connections=99, lag=0.249, rss=999, store=True).check()
    assert not report.overloaded
    assert report.reasons == ()


@pytest.mark.parametrize(
    ("node", "reason"),
    [
        (health(connections=100), "connections 100 >= 100"),
        (health(lag=0.3), "event-loop lag 0.300 s >= 0.25 s"),
        (health(rss=1000), "rss 1000 bytes >= 1000 bytes"),
        (health(store=False), "dependency store unhealthy"),
    ],
)
def test_each_threshold_is_a_reason_of_its_own(node: NodeHealth, reason: str) -> None:
    report = node.check()
    assert report.overloaded
    assert report.reasons == (reason,)
    assert report.retry_after == 7


def test_all_reasons_are_given_at_once() -> None:
    report = health(connections=500, lag=1.0, rss=5000, tree=False, store=False, redis=True).check()
    assert len(report.reasons) == 5
    assert report.reasons[-2:] == ("dependency store unhealthy", "dependency tree unhealthy")


def test_readings_are_taken_on_every_check() -> None:
    connections = [10]
    node = NodeHealth(connections=lambda: connections[0], loop_lag=lambda: 0.0, rss=lambda: 0, thresholds=LIMITS)
    assert not node.check().overloaded
    connections[0] = 100
    assert node.check().overloaded


@pytest.mark.parametrize("field", ["max_connections", "max_loop_lag", "max_rss", "retry_after"])
def test_thresholds_must_be_positive(field: str) -> None:
    with pytest.raises(ValueError, match=f"{field} must be positive"):
        HealthThresholds(**{field: 0})


def test_defaults_are_sane() -> None:
    defaults = HealthThresholds()
    assert defaults.max_connections == 10_000
    assert 0.1 <= defaults.max_loop_lag <= 1.0
