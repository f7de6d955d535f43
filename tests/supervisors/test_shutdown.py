"""run_tree: a real SIGTERM / SIGINT stops the whole tree right to left within the grace."""

from __future__ import annotations

import logging
import os
import signal

import pytest
import trio
import trio.testing

from supervisors import ChildSpec, DynamicSupervisor, MaxIntensityReached, Shutdown, Supervisor, run_tree

from .children import Fleet, crasher


def tree(fleet: Fleet, *, b_on_stop: str | float = "exit") -> Supervisor:
    nested = Supervisor("nested", [fleet.spec("c", trap=True), fleet.spec("d")])
    return Supervisor(
        "root",
        [
            fleet.spec("a", trap=True),
            fleet.spec("b", trap=True, on_stop=b_on_stop, shutdown=Shutdown.INFINITY),
            nested.child_spec(),
            fleet.spec("e", trap=True, shutdown=Shutdown.BRUTAL_KILL),
        ],
    )


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_signal_stops_the_tree_right_to_left(
    signum: signal.Signals, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "supervisors")
    fleet = Fleet()
    root = tree(fleet, b_on_stop=2.0)
    async with trio.open_nursery() as nursery:
        assert await nursery.start(run_tree, root, 10) is root
        assert fleet.what("start") == ["a", "b", "c", "d", "e"]
        await trio.sleep(1)
        os.kill(os.getpid(), signum)
    assert [(t, what, i) for t, what, i in fleet.events if what != "start"] == [
        (1, "cancelled", "e"),  # brutal kill: never asked
        (1, "exit", "e"),
        (1, "cancelled", "d"),  # nested supervisor, right to left; d does not trap
        (1, "exit", "d"),
        (1, "stop_requested", "c"),
        (1, "exit", "c"),
        (1, "stop_requested", "b"),  # takes its 2 s
        (3, "exit", "b"),
        (3, "stop_requested", "a"),
        (3, "exit", "a"),
    ]
    assert trio.current_time() == 3
    messages = [r.getMessage() for r in caplog.records if r.name == "supervisors"]
    assert f"supervisors: {signum.name} received; stopping tree 'root' (grace 10s)" in messages
    assert messages[-1] == "supervisors: tree 'root' stopped (normal)"


async def test_grace_caps_the_whole_shutdown(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    fleet = Fleet()
    root = tree(fleet, b_on_stop="ignore")  # b ignores the request, with shutdown INFINITY
    async with trio.open_nursery() as nursery:
        await nursery.start(run_tree, root, 4)
        os.kill(os.getpid(), signal.SIGTERM)
    # b holds up the ordered stop; at the 4 s grace everything left is cancelled.
    assert trio.current_time() == 4
    assert fleet.events[-4:] == [(4, "cancelled", "b"), (4, "exit", "b"), (4, "cancelled", "a"), (4, "exit", "a")]
    assert caplog.records[-1].getMessage() == "supervisors: tree 'root' cancelled: it did not stop within the 4s grace"


async def test_dynamic_children_share_one_grace(autojump_clock: trio.testing.MockClock) -> None:
    fleet = Fleet()
    root = DynamicSupervisor("sockets", fleet.spec("conn", trap=True, on_stop="ignore", shutdown=2))
    async with trio.open_nursery() as nursery:
        await nursery.start(run_tree, root, 30)
        for i in range(3):
            await root.start_child(i)
        os.kill(os.getpid(), signal.SIGTERM)
    assert trio.current_time() == 2  # all asked at once, all cancelled at the template's grace
    assert fleet.what("stop_requested") == ["conn"] * 3
    assert fleet.what("cancelled") == ["conn"] * 3


async def test_escalation_of_the_root_is_raised_plainly(autojump_clock: trio.testing.MockClock) -> None:
    root = Supervisor("root", [ChildSpec("crasher", crasher, ([],))])
    with pytest.raises(MaxIntensityReached, match="'root'"):
        await run_tree(root, grace=5)
