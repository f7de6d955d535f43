"""DynamicSupervisor: start on demand (awaited and fire-and-forget), limits, restarts, terminate."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from supervisors import (
    ChildSpec,
    DynamicSupervisor,
    InvalidChildSpec,
    InvalidSupervisorFlags,
    MaxChildrenReached,
    MaxIntensityReached,
    Restart,
    StartError,
    Supervisor,
)

from .children import Boom, Fleet, idle


async def test_start_child_waits_for_readiness_and_returns_the_value(nursery: trio.Nursery) -> None:
    dyn = DynamicSupervisor("sockets", ChildSpec("connection", idle, restart=Restart.TEMPORARY))
    await nursery.start(dyn.run)
    ready = trio.Event()

    async def slow_start(value: str, *, task_status: trio.TaskStatus[str]) -> None:
        await ready.wait()
        task_status.started(value)
        await trio.sleep_forever()

    dyn.template = ChildSpec("connection", slow_start, restart=Restart.TEMPORARY)
    results: list[object] = []

    async def listener() -> None:
        results.append(await dyn.start_child(1, "handle-1"))

    nursery.start_soon(listener)
    await trio.testing.wait_all_tasks_blocked()
    assert results == []
    assert [(c.id, c.status) for c in dyn.which_children()] == [(1, "starting")]
    ready.set()
    await trio.testing.wait_all_tasks_blocked()
    assert results == ["handle-1"]
    assert [(c.id, c.status, c.value) for c in dyn.which_children()] == [(1, "running", "handle-1")]


async def test_start_child_nowait_does_not_wait(nursery: trio.Nursery) -> None:
    fleet = Fleet()
    dyn = DynamicSupervisor("sockets", fleet.spec("connection", restart=Restart.TEMPORARY))
    await nursery.start(dyn.run)
    dyn.start_child_nowait("c1")
    assert fleet.events == []  # not run yet: the caller did not wait
    assert dyn.count_children().active == 1
    await trio.testing.wait_all_tasks_blocked()
    assert fleet.what("start") == ["connection"]
    assert [c.status for c in dyn.which_children()] == ["running"]


async def test_max_children_is_refused_with_a_clear_error(nursery: trio.Nursery) -> None:
    dyn = DynamicSupervisor("sockets", ChildSpec("connection", idle), max_children=2)
    await nursery.start(dyn.run)
    await dyn.start_child(1)
    dyn.start_child_nowait(2)  # counted while still starting
    with pytest.raises(MaxChildrenReached, match=r"'sockets' refused child 3: max_children=2 reached"):
        dyn.start_child_nowait(3)
    with pytest.raises(MaxChildrenReached):
        await dyn.start_child(3)
    await dyn.terminate_child(1)
    await dyn.start_child(3)
    assert sorted(c.id for c in dyn.which_children()) == [2, 3]


async def test_duplicate_child_id_is_refused(nursery: trio.Nursery) -> None:
    dyn = DynamicSupervisor("sockets", ChildSpec("connection", idle))
    await nursery.start(dyn.run)
    await dyn.start_child("a")
    with pytest.raises(InvalidChildSpec, match="duplicate_child_id"):
        dyn.start_child_nowait("a")


async def test_start_child_before_run_is_refused() -> None:
    dyn = DynamicSupervisor("sockets", ChildSpec("connection", idle))
    with pytest.raises(RuntimeError, match="'sockets' is not running"):
        dyn.start_child_nowait(1)


@pytest.mark.parametrize("how", ["normal", "crash", "shutdown"])
async def test_temporary_children_are_never_restarted(
    how: str, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    fleet = Fleet()
    dyn = DynamicSupervisor("sockets", fleet.spec("conn", restart=Restart.TEMPORARY), intensity=100)
    await nursery.start(dyn.run)
    await dyn.start_child(1)
    fleet.exit("conn", how)
    await trio.testing.wait_all_tasks_blocked()
    assert fleet.what("start") == ["conn"]
    assert dyn.which_children() == []
    terminated = [r for r in caplog.records if r.report["error_context"] == "child_terminated"]
    assert len(terminated) == (1 if how == "crash" else 0)


async def test_permanent_child_is_restarted_in_place_with_its_arguments(nursery: trio.Nursery) -> None:
    starts: list[object] = []

    async def conn(arg: object, *, task_status: trio.TaskStatus[None]) -> None:
        starts.append(arg)
        task_status.started()
        if len(starts) == 1:
            raise Boom("first")
        await trio.sleep_forever()

    dyn = DynamicSupervisor("pool", ChildSpec("worker", conn))
    await nursery.start(dyn.run)
    await dyn.start_child("w1", "arg")
    await trio.testing.wait_all_tasks_blocked()
    assert starts == ["arg", "arg"]
    [info] = dyn.which_children()
    assert (info.id, info.status, info.restarts) == ("w1", "running", 1)
    assert dyn.restarts == 1


async def test_escalation_stops_every_child(autojump_clock: trio.testing.MockClock) -> None:
    exits: list[tuple[float, str]] = []

    async def worker(kind: str, *, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        try:
            await trio.sleep(1 if kind == "crash" else 1000)
            raise Boom(kind)
        finally:
            exits.append((trio.current_time(), kind))

    dyn = DynamicSupervisor("pool", ChildSpec("worker", worker), intensity=2, period=10)

    async def starter(*, task_status: trio.TaskStatus[None]) -> None:
        await dyn.start_child("w", "crash")
        await dyn.start_child("b", "bystander")
        task_status.started()
        await trio.sleep_forever()

    root = Supervisor("root", [dyn.child_spec(), ChildSpec("starter", starter)], intensity=0)
    with pytest.raises(MaxIntensityReached) as caught:
        await root.run()
    failure = caught.value.__cause__
    assert isinstance(failure, MaxIntensityReached)
    assert (failure.supervisor, failure.child_id) == ("pool", "w")
    # Crashes at 1 and 2 are restarted; the one at 3 overflows 2 in 10 s, and the bystander is stopped.
    assert exits == [(1, "crash"), (2, "crash"), (3, "crash"), (3, "bystander")]


async def test_terminate_child_stops_it_without_restart(nursery: trio.Nursery) -> None:
    fleet = Fleet()
    dyn = DynamicSupervisor("pool", fleet.spec("worker", trap=True))
    await nursery.start(dyn.run)
    await dyn.start_child("w")
    await dyn.terminate_child("w")
    assert fleet.what("stop_requested") == ["worker"]
    assert fleet.what("start") == ["worker"]
    assert dyn.count_children().active == 0
    with pytest.raises(LookupError, match="no child 'w'"):
        await dyn.terminate_child("w")


async def test_cancelled_terminate_child_cancels_the_child_at_once(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    fleet = Fleet()
    dyn = DynamicSupervisor("pool", fleet.spec("worker", trap=True, on_stop="ignore", shutdown=100))
    await nursery.start(dyn.run)
    await dyn.start_child("w")
    with trio.move_on_after(1):
        await dyn.terminate_child("w")
    await trio.testing.wait_all_tasks_blocked()
    assert fleet.events[1:] == [(0, "stop_requested", "worker"), (1, "cancelled", "worker"), (1, "exit", "worker")]
    assert dyn.which_children() == []


async def test_count_children(nursery: trio.Nursery) -> None:
    dyn = DynamicSupervisor("pool", ChildSpec("worker", idle))
    await nursery.start(dyn.run)
    for i in range(3):
        await dyn.start_child(i)
    counts = dyn.count_children()
    assert (counts.specs, counts.active, counts.supervisors, counts.workers) == (3, 3, 0, 3)


async def test_awaited_start_failure_raises_start_error(
    caplog: pytest.LogCaptureFixture, nursery: trio.Nursery
) -> None:
    async def bad(*, task_status: trio.TaskStatus[None]) -> None:
        raise OSError("handshake failed")

    dyn = DynamicSupervisor("sockets", ChildSpec("connection", bad))
    await nursery.start(dyn.run)
    with pytest.raises(StartError, match="child 7 failed to start") as caught:
        await dyn.start_child(7)
    assert isinstance(caught.value.__cause__, OSError)
    assert dyn.which_children() == []
    [report] = [r for r in caplog.records if r.report["error_context"] == "start_error"]
    assert report.report["offender"]["id"] == 7


async def test_nowait_start_failure_is_reported_and_not_restarted(
    caplog: pytest.LogCaptureFixture, nursery: trio.Nursery
) -> None:
    calls: list[int] = []

    async def bad(*, task_status: trio.TaskStatus[None]) -> None:
        calls.append(1)
        raise OSError("handshake failed")

    dyn = DynamicSupervisor("sockets", ChildSpec("connection", bad))
    await nursery.start(dyn.run)
    dyn.start_child_nowait(7)
    await trio.testing.wait_all_tasks_blocked()
    assert calls == [1]
    assert dyn.which_children() == []
    assert [r.report["error_context"] for r in caplog.records] == ["start_error"]


async def test_nested_under_a_supervisor_shows_as_a_supervisor_child(nursery: trio.Nursery) -> None:
    dyn = DynamicSupervisor("sockets", ChildSpec("connection", idle))
    root = Supervisor("root", [dyn.child_spec()])
    await nursery.start(root.run)
    counts = root.count_children()
    assert (counts.supervisors, counts.workers) == (1, 0)
    await dyn.start_child(1)
    assert dyn.count_children().active == 1


def test_max_children_must_be_positive() -> None:
    with pytest.raises(InvalidSupervisorFlags, match="invalid_max_children"):
        DynamicSupervisor("sockets", ChildSpec("connection", idle), max_children=0)
