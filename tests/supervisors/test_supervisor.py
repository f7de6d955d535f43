"""Supervisor: the restart-type × exit matrix, strategies, escalation, start errors and shutdown policies."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from supervisors import (
    ChildSpec,
    InvalidChildSpec,
    MaxIntensityReached,
    Restart,
    Shutdown,
    StartError,
    Strategy,
    Supervisor,
)

from .children import BRUTAL, Boom, Fleet, crasher

PERMANENT, TRANSIENT, TEMPORARY = Restart.PERMANENT, Restart.TRANSIENT, Restart.TEMPORARY
STRATEGIES = list(Strategy)


def reports(caplog: pytest.LogCaptureFixture, context: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "supervisors" and r.report["error_context"] == context]


# -- restart type × exit reason, for each strategy ------------------------------------------------
#
# Children a, x, c; x exits. OTP do_restart/4 decides whether x is restarted; the strategy decides
# which siblings go with it (one_for_one: none, rest_for_one: c, one_for_all: a and c).

RESTARTED_WITH_X = {Strategy.ONE_FOR_ONE: [], Strategy.REST_FOR_ONE: ["c"], Strategy.ONE_FOR_ALL: ["a", "c"]}


async def exit_x(
    restart: Restart, how: str, strategy: Strategy, caplog: pytest.LogCaptureFixture
) -> tuple[Fleet, Supervisor]:
    fleet = Fleet()
    sup = Supervisor("sup", [fleet.spec("a"), fleet.spec("x", restart=restart), fleet.spec("c")], strategy=strategy)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        fleet.exit("x", how)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
        events = list(fleet.events)
    fleet.events = events  # before the teardown's cancellation, which has no order
    return fleet, sup


def assert_restarted(fleet: Fleet, sup: Supervisor, strategy: Strategy) -> None:
    siblings = RESTARTED_WITH_X[strategy]
    # Stopped right to left (x already gone), restarted left to right.
    assert fleet.what("start")[3:] == [c for c in ["a", "x", "c"] if c == "x" or c in siblings]
    assert fleet.what("cancelled") == [c for c in ["c", "a"] if c in siblings]
    assert sup.restarts == 1


def assert_not_restarted(fleet: Fleet, sup: Supervisor) -> None:
    assert fleet.what("start") == ["a", "x", "c"]
    assert fleet.what("cancelled") == []
    assert sup.restarts == 0


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_permanent_normal(strategy: Strategy, caplog: pytest.LogCaptureFixture) -> None:
    fleet, sup = await exit_x(PERMANENT, "normal", strategy, caplog)
    assert_restarted(fleet, sup, strategy)
    assert [r.report["reason"] for r in reports(caplog, "child_terminated")] == ["normal"]


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_permanent_crash(strategy: Strategy, caplog: pytest.LogCaptureFixture) -> None:
    fleet, sup = await exit_x(PERMANENT, "crash", strategy, caplog)
    assert_restarted(fleet, sup, strategy)
    assert [r.report["reason"] for r in reports(caplog, "child_terminated")] == ["Boom('x')"]


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_permanent_shutdown(strategy: Strategy, caplog: pytest.LogCaptureFixture) -> None:
    fleet, sup = await exit_x(PERMANENT, "shutdown", strategy, caplog)
    assert_restarted(fleet, sup, strategy)
    assert [r.report["reason"] for r in reports(caplog, "child_terminated")] == ["shutdown"]


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_transient_normal(strategy: Strategy, caplog: pytest.LogCaptureFixture) -> None:
    fleet, sup = await exit_x(TRANSIENT, "normal", strategy, caplog)
    assert_not_restarted(fleet, sup)
    assert reports(caplog, "child_terminated") == []


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_transient_crash(strategy: Strategy, caplog: pytest.LogCaptureFixture) -> None:
    fleet, sup = await exit_x(TRANSIENT, "crash", strategy, caplog)
    assert_restarted(fleet, sup, strategy)
    assert [r.report["reason"] for r in reports(caplog, "child_terminated")] == ["Boom('x')"]


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_transient_shutdown(strategy: Strategy, caplog: pytest.LogCaptureFixture) -> None:
    fleet, sup = await exit_x(TRANSIENT, "shutdown", strategy, caplog)
    assert_not_restarted(fleet, sup)
    assert reports(caplog, "child_terminated") == []


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_temporary_normal(strategy: Strategy, caplog: pytest.LogCaptureFixture) -> None:
    fleet, sup = await exit_x(TEMPORARY, "normal", strategy, caplog)
    assert_not_restarted(fleet, sup)
    assert reports(caplog, "child_terminated") == []
    assert [info.id for info in sup.which_children()] == ["a", "c"]  # its spec is forgotten


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_temporary_crash(strategy: Strategy, caplog: pytest.LogCaptureFixture) -> None:
    fleet, sup = await exit_x(TEMPORARY, "crash", strategy, caplog)
    assert_not_restarted(fleet, sup)
    [report] = reports(caplog, "child_terminated")
    assert report.report["reason"] == "Boom('x')"
    assert report.getMessage().endswith("not restarted (temporary)")


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_temporary_shutdown(strategy: Strategy, caplog: pytest.LogCaptureFixture) -> None:
    fleet, sup = await exit_x(TEMPORARY, "shutdown", strategy, caplog)
    assert_not_restarted(fleet, sup)
    assert reports(caplog, "child_terminated") == []


async def test_transient_normal_keeps_its_spec_and_reports_not_running(nursery: trio.Nursery) -> None:
    fleet = Fleet()
    sup = Supervisor("sup", [fleet.spec("x", restart=TRANSIENT)])
    await nursery.start(sup.run)
    fleet.exit("x", "normal")
    await trio.testing.wait_all_tasks_blocked()
    [info] = sup.which_children()
    assert (info.id, info.status) == ("x", "not_running")


async def test_temporary_sibling_is_not_restarted_by_one_for_all(nursery: trio.Nursery) -> None:
    fleet = Fleet()
    sup = Supervisor("sup", [fleet.spec("t", restart=TEMPORARY), fleet.spec("x")], strategy=Strategy.ONE_FOR_ALL)
    await nursery.start(sup.run)
    fleet.exit("x", "crash")
    await trio.testing.wait_all_tasks_blocked()
    assert fleet.what("start") == ["t", "x", "x"]
    assert [info.id for info in sup.which_children()] == ["x"]


# -- strategies ------------------------------------------------------------------------------------


async def test_rest_for_one_restarts_exactly_the_later_siblings_in_order(nursery: trio.Nursery) -> None:
    fleet = Fleet()
    ids = ["a", "b", "c", "d", "e"]
    sup = Supervisor("sup", [fleet.spec(i) for i in ids], strategy=Strategy.REST_FOR_ONE)
    await nursery.start(sup.run)
    fleet.events.clear()
    fleet.exit("c", "crash")
    await trio.testing.wait_all_tasks_blocked()
    assert [(what, i) for _, what, i in fleet.events if what != "cancelled"] == [
        ("exit", "c"),
        ("exit", "e"),
        ("exit", "d"),
        ("start", "c"),
        ("start", "d"),
        ("start", "e"),
    ]
    assert [info.restarts for info in sup.which_children()] == [0, 0, 1, 1, 1]


async def test_one_for_all_restarts_all(nursery: trio.Nursery) -> None:
    fleet = Fleet()
    sup = Supervisor("sup", [fleet.spec(i) for i in "abcd"], strategy=Strategy.ONE_FOR_ALL)
    await nursery.start(sup.run)
    fleet.events.clear()
    fleet.exit("b", "crash")
    await trio.testing.wait_all_tasks_blocked()
    assert fleet.what("exit") == ["b", "d", "c", "a"]
    assert fleet.what("start") == ["a", "b", "c", "d"]
    assert [info.status for info in sup.which_children()] == ["running"] * 4


async def test_one_for_one_restarts_only_the_child(nursery: trio.Nursery) -> None:
    fleet = Fleet()
    sup = Supervisor("sup", [fleet.spec(i) for i in "abc"])
    await nursery.start(sup.run)
    fleet.events.clear()
    fleet.exit("b", "crash")
    await trio.testing.wait_all_tasks_blocked()
    assert [(what, i) for _, what, i in fleet.events] == [("exit", "b"), ("start", "b")]


# -- escalation ------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_escalation(strategy: Strategy, autojump_clock: trio.testing.MockClock) -> None:
    """Named test_<strategy>_escalation through the parameter: crashes at t = 1, 2, 3, 4; intensity 3."""
    fleet = Fleet()
    starts: list[float] = []
    sup = Supervisor(
        "sup",
        [fleet.spec("a"), ChildSpec("crasher", crasher, (starts,)), fleet.spec("c")],
        strategy=strategy,
        intensity=3,
        period=10,
    )
    with pytest.raises(MaxIntensityReached) as caught:
        await sup.run()
    # Started at 0, restarted after the crashes at 1, 2, 3; the 4th crash (t=4) overflows the window.
    assert starts == [0, 1, 2, 3]
    assert trio.current_time() == 4
    assert caught.value.child_id == "crasher"
    assert caught.value.supervisor == "sup"
    assert isinstance(caught.value.__cause__, Boom)
    # Siblings are stopped right to left when the supervisor gives up.
    assert fleet.events[-4:] == [(4, "cancelled", "c"), (4, "exit", "c"), (4, "cancelled", "a"), (4, "exit", "a")]
    assert fleet.what("start").count("c") == (1 if strategy is Strategy.ONE_FOR_ONE else 4)
    assert fleet.what("start").count("a") == (4 if strategy is Strategy.ONE_FOR_ALL else 1)


# The matrix convention (style.md §3.15): one named test per strategy.
async def test_one_for_one_escalation(autojump_clock: trio.testing.MockClock) -> None:
    await test_escalation(Strategy.ONE_FOR_ONE, autojump_clock)


async def test_rest_for_one_escalation(autojump_clock: trio.testing.MockClock) -> None:
    await test_escalation(Strategy.REST_FOR_ONE, autojump_clock)


async def test_one_for_all_escalation(autojump_clock: trio.testing.MockClock) -> None:
    await test_escalation(Strategy.ONE_FOR_ALL, autojump_clock)


async def test_sliding_window_forgets_old_restarts(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    starts: list[float] = []
    sup = Supervisor("sup", [ChildSpec("crasher", crasher, (starts, 5.5))], intensity=1, period=5)
    await nursery.start(sup.run)
    await trio.sleep(60)
    # A crash every 5.5 s never puts two restarts within 5 s.
    assert starts == [5.5 * n for n in range(11)]
    assert sup.status == "running"


async def test_escalation_exactly_at_the_window_edge(autojump_clock: trio.testing.MockClock) -> None:
    # OTP keeps a restart in the window while now - then <= period: crashes 5 s apart overflow 1 in 5 s.
    starts: list[float] = []
    sup = Supervisor("sup", [ChildSpec("crasher", crasher, (starts, 5))], intensity=1, period=5)
    with pytest.raises(MaxIntensityReached):
        await sup.run()
    assert starts == [0, 5]
    assert trio.current_time() == 10


async def test_escalation_through_two_levels(autojump_clock: trio.testing.MockClock) -> None:
    starts: list[float] = []
    fleet = Fleet()
    inner = Supervisor("inner", [ChildSpec("crasher", crasher, (starts,))], intensity=1, period=5)
    middle = Supervisor("middle", [fleet.spec("m"), inner.child_spec()], intensity=1, period=60)
    root = Supervisor("root", [fleet.spec("r"), middle.child_spec()], intensity=0)
    with pytest.raises(MaxIntensityReached) as caught:
        await root.run()
    # inner gives up at t=2 (crashes at 1, 2) and again at t=4 after middle restarted it: middle gives up;
    # root allows no restart at all.
    assert starts == [0, 1, 2, 3]
    assert trio.current_time() == 4
    assert (caught.value.supervisor, caught.value.child_id) == ("root", "middle")
    middle_failure = caught.value.__cause__
    assert isinstance(middle_failure, MaxIntensityReached)
    assert (middle_failure.supervisor, middle_failure.child_id) == ("middle", "inner")
    inner_failure = middle_failure.__cause__
    assert isinstance(inner_failure, MaxIntensityReached)
    assert (inner_failure.supervisor, inner_failure.child_id) == ("inner", "crasher")
    assert isinstance(inner_failure.__cause__, Boom)
    assert fleet.what("exit") == ["m", "r"]


# -- start errors ----------------------------------------------------------------------------------


async def fails_to_start(*, task_status: trio.TaskStatus[None]) -> None:
    raise OSError("address in use")


async def returns_without_starting(*, task_status: trio.TaskStatus[None]) -> None:
    return


async def test_start_error_names_the_child_and_stops_the_started_ones(caplog: pytest.LogCaptureFixture) -> None:
    fleet = Fleet()
    sup = Supervisor("sup", [fleet.spec("a"), fleet.spec("b"), ChildSpec("bad", fails_to_start), fleet.spec("c")])
    with pytest.raises(StartError, match="child 'bad' failed to start") as caught:
        await sup.run()
    assert caught.value.child_id == "bad"
    assert isinstance(caught.value.__cause__, OSError)
    assert fleet.what("start") == ["a", "b"]
    assert fleet.what("exit") == ["b", "a"]
    [report] = reports(caplog, "start_error")
    assert report.report["offender"]["id"] == "bad"
    assert sup.status == "stopped"


async def test_returning_before_started_is_a_start_error() -> None:
    sup = Supervisor("sup", [ChildSpec("lazy", returns_without_starting)])
    with pytest.raises(StartError, match=r"before calling task_status\.started"):
        await sup.run()


async def test_restart_that_fails_to_start_is_tried_again_and_counted(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    runs: list[float] = []

    async def flaky(*, task_status: trio.TaskStatus[None]) -> None:
        runs.append(trio.current_time())
        if len(runs) > 1:
            raise OSError("still down")
        task_status.started()
        await trio.sleep(1)
        raise Boom("first run")

    sup = Supervisor("sup", [ChildSpec("flaky", flaky)], intensity=3, period=10)
    with pytest.raises(MaxIntensityReached):
        await sup.run()
    # One crash, then three failed restarts; the 4th restart overflows.
    assert runs == [0, 1, 1, 1]
    assert len(reports(caplog, "start_error")) == 3


async def test_run_twice_at_once_is_refused(nursery: trio.Nursery) -> None:
    sup = Supervisor("sup", [])
    await nursery.start(sup.run)
    with pytest.raises(RuntimeError, match="already running"):
        await sup.run()


def test_duplicate_child_ids_are_refused() -> None:
    fleet = Fleet()
    with pytest.raises(InvalidChildSpec) as caught:
        Supervisor("sup", [fleet.spec("a"), fleet.spec("a")])
    assert (caught.value.reason, caught.value.value) == ("duplicate_child_id", "a")


def test_children_must_be_child_specs() -> None:
    with pytest.raises(InvalidChildSpec, match="not_a_child_spec"):
        Supervisor("sup", [("a", print)])  # type: ignore[list-item]


# -- shutdown policies -----------------------------------------------------------------------------


async def test_shutdown_order_and_policies(autojump_clock: trio.testing.MockClock, nursery: trio.Nursery) -> None:
    """d crashes at t=1; one_for_all stops c, b, a right to left, each by its own policy."""
    fleet = Fleet()
    sup = Supervisor(
        "sup",
        [
            fleet.spec("a", trap=True, shutdown=5),  # asked, exits at once
            fleet.spec("b", trap=True, on_stop="ignore", shutdown=2),  # asked, ignores: cancelled at the grace
            fleet.spec("c", trap=True, shutdown=BRUTAL),  # never asked
            fleet.spec("d"),
        ],
        strategy=Strategy.ONE_FOR_ALL,
    )
    await nursery.start(sup.run)
    await trio.sleep(1)
    fleet.events.clear()
    fleet.exit("d", "crash")
    await trio.sleep(10)  # virtual time: let the graces run out
    assert fleet.events == [
        (1, "exit", "d"),
        (1, "cancelled", "c"),
        (1, "exit", "c"),
        (1, "stop_requested", "b"),
        (3, "cancelled", "b"),
        (3, "exit", "b"),
        (3, "stop_requested", "a"),
        (3, "exit", "a"),
        (3, "start", "a"),
        (3, "start", "b"),
        (3, "start", "c"),
        (3, "start", "d"),
    ]


async def test_child_that_does_not_trap_is_cancelled_at_once(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    fleet = Fleet()
    sup = Supervisor("sup", [fleet.spec("a", shutdown=30), fleet.spec("x")], strategy=Strategy.ONE_FOR_ALL)
    await nursery.start(sup.run)
    fleet.exit("x", "crash")
    await trio.testing.wait_all_tasks_blocked()
    assert (0, "cancelled", "a") in fleet.events
    assert fleet.what("start") == ["a", "x", "a", "x"]


async def test_slow_stop_within_grace_is_waited_for(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    fleet = Fleet()
    sup = Supervisor(
        "sup", [fleet.spec("a", trap=True, on_stop=1.5, shutdown=2), fleet.spec("x")], strategy=Strategy.ONE_FOR_ALL
    )
    await nursery.start(sup.run)
    fleet.exit("x", "crash")
    await trio.sleep(10)  # virtual time: let the graces run out
    assert (1.5, "exit", "a") in fleet.events
    assert fleet.what("cancelled") == []


async def test_infinity_waits_as_long_as_it_takes(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    fleet = Fleet()
    sup = Supervisor(
        "sup",
        [fleet.spec("a", trap=True, on_stop=1000.0, shutdown=Shutdown.INFINITY), fleet.spec("x")],
        strategy=Strategy.ONE_FOR_ALL,
    )
    await nursery.start(sup.run)
    fleet.exit("x", "crash")
    await trio.sleep(2000)  # virtual time: let the graces run out
    assert fleet.events[-2:] == [(1000, "start", "a"), (1000, "start", "x")]
    assert fleet.what("cancelled") == []


async def test_shutdown_error_when_a_child_raises_while_stopping(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    fleet = Fleet()
    sup = Supervisor(
        "sup", [fleet.spec("a", trap=True, on_stop="raise"), fleet.spec("x")], strategy=Strategy.ONE_FOR_ALL
    )
    await nursery.start(sup.run)
    fleet.exit("x", "crash")
    await trio.testing.wait_all_tasks_blocked()
    [report] = reports(caplog, "shutdown_error")
    assert report.report["offender"]["id"] == "a"
    assert report.report["reason"] == "Boom('a failed to stop')"
    assert report.exc_info is not None
    assert fleet.what("start") == ["a", "x", "a", "x"]  # the restart goes on
