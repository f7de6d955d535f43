from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.observability.scrape import parse, value
from whispr.observability.metrics import Metrics
from whispr.observability.supervision import report_to_telemetry


@pytest.fixture
def metrics() -> Iterator[Metrics]:
    m = Metrics("n1", handler_id="test.supervision", process_metrics=False)
    yield m
    m.detach()


def report(context: str, child: object = "pubsub") -> dict[str, object]:
    return {
        "supervisor": "root",
        "error_context": context,
        "reason": "RuntimeError('boom')" if context != "progress" else None,
        "offender": {"id": child, "restart": "permanent", "shutdown": 5.0},
    }


def test_error_reports_are_counted_by_context(metrics: Metrics) -> None:
    for context in ("child_terminated", "child_terminated", "start_error", "shutdown_error", "shutdown"):
        report_to_telemetry(report(context))
    s = parse(metrics.render()[0].decode())
    assert value(s, "whispr_supervisor_restarts_total", child="pubsub", context="child_terminated") == 2
    for context in ("start_error", "shutdown_error", "shutdown"):
        assert value(s, "whispr_supervisor_restarts_total", supervisor="root", context=context) == 1


def test_progress_reports_are_not_restarts(metrics: Metrics) -> None:
    for i in range(100):
        report_to_telemetry(report("progress", child=f"user_socket:u{i}:d{i}"))
    names = {name for name, _ in parse(metrics.render()[0].decode())}
    assert "whispr_supervisor_restarts_total" not in names


def test_non_string_child_ids_stay_bounded(metrics: Metrics) -> None:
    for i in range(100):
        report_to_telemetry(report("child_terminated", child=("socket", i)))
    s = parse(metrics.render()[0].decode())
    assert value(s, "whispr_supervisor_restarts_total", child="other") == 100
