"""Reports: one readable line each on logger `supervisors`, structured fields in `record.report`, listeners."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from supervisors import (
    ChildSpec,
    MaxIntensityReached,
    Report,
    Restart,
    StartError,
    Strategy,
    Supervisor,
    add_report_listener,
    remove_report_listener,
)

from .children import Boom, Fleet, crasher


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, "supervisors")
    return caplog


def only(records: list[logging.LogRecord], context: str) -> logging.LogRecord:
    [record] = [r for r in records if getattr(r, "report", {}).get("error_context") == context]
    return record


async def test_progress_report(logs: pytest.LogCaptureFixture) -> None:
    fleet = Fleet()
    sup = Supervisor("root", [fleet.spec("store")])
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        nursery.cancel_scope.cancel()
    record = only(logs.records, "progress")
    assert record.levelno == logging.INFO
    assert record.getMessage() == "supervisor 'root': child 'store' (permanent, shutdown 5s) started"
    assert record.report == {
        "supervisor": "root",
        "error_context": "progress",
        "reason": None,
        "offender": {"id": "store", "restart": "permanent", "shutdown": 5.0},
    }


async def test_child_terminated_report_has_reason_and_traceback(logs: pytest.LogCaptureFixture) -> None:
    fleet = Fleet()
    sup = Supervisor("root", [fleet.spec("pubsub", shutdown=2)], intensity=3, period=10)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        fleet.exit("pubsub", "crash")
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    record = only(logs.records, "child_terminated")
    assert record.levelno == logging.ERROR
    assert record.getMessage() == (
        "supervisor 'root': child 'pubsub' (permanent, shutdown 2s) terminated: Boom('pubsub'); "
        "restarting (1 of max 3 restarts in 10s)"
    )
    assert "\n" not in record.getMessage()
    assert record.report == {
        "supervisor": "root",
        "error_context": "child_terminated",
        "reason": "Boom('pubsub')",
        "offender": {"id": "pubsub", "restart": "permanent", "shutdown": 2},
    }
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], Boom)


async def test_start_error_report(logs: pytest.LogCaptureFixture) -> None:
    async def bad(*, task_status: trio.TaskStatus[None]) -> None:
        raise OSError("port 4000 in use")

    sup = Supervisor("root", [ChildSpec("endpoint", bad, restart=Restart.TRANSIENT)])
    with pytest.raises(StartError):
        await sup.run()
    record = only(logs.records, "start_error")
    assert record.getMessage() == (
        "supervisor 'root': child 'endpoint' (transient, shutdown 5s) failed to start: OSError('port 4000 in use')"
    )
    assert record.report["reason"] == "OSError('port 4000 in use')"
    assert record.exc_info is not None


async def test_shutdown_error_report(logs: pytest.LogCaptureFixture) -> None:
    fleet = Fleet()
    sup = Supervisor(
        "root", [fleet.spec("presence", trap=True, on_stop="raise"), fleet.spec("x")], strategy=Strategy.ONE_FOR_ALL
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        fleet.exit("x", "normal")
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    record = only(logs.records, "shutdown_error")
    assert record.getMessage() == (
        "supervisor 'root': child 'presence' (permanent, shutdown 5s) raised while shutting down: "
        "Boom('presence failed to stop')"
    )


async def test_escalation_report(logs: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock) -> None:
    sup = Supervisor("root", [ChildSpec("db", crasher, ([],))])
    with pytest.raises(MaxIntensityReached):
        await sup.run()
    record = only(logs.records, "shutdown")
    assert record.levelno == logging.ERROR
    assert record.getMessage() == (
        "supervisor 'root': child 'db' (permanent, shutdown 5s) exceeded max restart intensity (1 in 5s); "
        "stopping all children and escalating to the parent"
    )
    assert record.report["reason"] == "reached_max_restart_intensity"
    assert record.report["offender"]["id"] == "db"


async def test_listener_counts_restarts_whatever_the_log_level(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL, "supervisors")
    seen: list[Report] = []
    add_report_listener(seen.append)
    try:
        fleet = Fleet()
        sup = Supervisor("root", [fleet.spec("pubsub")], intensity=5)
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            fleet.exit("pubsub", "crash")
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    finally:
        remove_report_listener(seen.append)
    assert [(r["error_context"], r["offender"]["id"]) for r in seen] == [
        ("progress", "pubsub"),
        ("child_terminated", "pubsub"),
        ("progress", "pubsub"),
    ]
    assert caplog.records == []


async def test_a_failing_listener_is_logged_and_does_not_break_the_tree(caplog: pytest.LogCaptureFixture) -> None:
    def broken(report: Report) -> None:
        raise ValueError("metrics down")

    add_report_listener(broken)
    try:
        fleet = Fleet()
        sup = Supervisor("root", [fleet.spec("store")])
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            assert sup.status == "running"
            nursery.cancel_scope.cancel()
    finally:
        remove_report_listener(broken)
    [record] = [r for r in caplog.records if "listener" in r.getMessage()]
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], ValueError)
