"""Node process faults under load (reliability.md §2 E2, E5): SIGKILL of one of two nodes, rolling restart.

Two `whispr serve` processes share a private Redis and a fresh PostgreSQL database
(`tests/faults/cluster.py`); 120 reconnecting devices in 30 conversations of four members, two on
each node, send and receive (`tests/faults/load.py`). Every test prints its figures in the form of
reliability.md §2 and asserts their targets (`tests/faults/figures.py`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from tests.drain.serve import RawClient, open_raw_client
from tests.faults.cluster import Cluster, fresh_database
from tests.faults.figures import Figures
from tests.faults.load import DEVICES, Device, delivery_figures, load_run, percentile, poll, recovery_times
from tests.presence.presence_js import State, sync_diff, sync_state
from tests.services import PostgresServer, RedisServer
from whispr.cluster.manager import DEFAULT_DOWN_AFTER

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.faults]

RECOVERY = 15.0  # reliability.md E2 / spec §12.2: reconnected and caught up within 15 s
RECOVERED_SHARE = 95.0  # per cent of the killed node's devices


async def test_e2_sigkill_one_of_two_nodes_under_load(
    tmp_path: Path, fresh_redis: RedisServer, postgres: PostgresServer
) -> None:
    async with load_run(tmp_path, fresh_redis, postgres, "e2") as run:
        with trio.fail_after(30):
            await poll(lambda: run.ledger.messages() >= 300)  # the load is under way on both nodes
        victims = run.on("b")
        killed_at = trio.current_time()
        run.cluster.kill("b")
        with trio.fail_after(30):
            await poll(lambda: trio.current_time() - killed_at >= 5.0)  # b stays down 5 s
        run.cluster.start("b")  # the restarted node rejoins the cluster under load
        await run.cluster.wait_ready("b")
        with trio.fail_after(60):
            await poll(lambda: all(recovery_times(d, killed_at)[1] < 60 for d in victims))
            await poll(lambda: trio.current_time() - killed_at >= RECOVERY)
        await run.finish()

    times = [recovery_times(d, killed_at) for d in victims]
    recovered = sum(1 for _, caught_up in times if caught_up <= RECOVERY)
    fig = Figures("E2", f"SIGKILL node b of 2 under load ({DEVICES} devices, {len(victims)} on b), b back after 5 s")
    delivery_figures(fig, run.ledger)
    fig.at_most("disconnects on the surviving node a", run.ledger.disconnects("a"), 0)
    fig.at_least("b's devices reconnected + caught up ≤ 15 s", 100 * recovered / len(victims), RECOVERED_SHARE, " %")
    fig.report("rejoin after kill p50", percentile([r for r, _ in times], 50), " s")
    fig.report("rejoin after kill max", max(r for r, _ in times), " s")
    fig.report("caught up after kill p50", percentile([c for _, c in times], 50), " s")
    fig.report("caught up after kill max", max(c for _, c in times), " s")
    fig.check()


GRACE = 10.0  # WHISPR_SHUTDOWN_GRACE of the rolling restart: reliability.md E5 "exit ≤ 10 s"
DRAIN_WINDOW = 1.0


async def test_e5_rolling_restart_of_both_nodes_under_load(
    tmp_path: Path, fresh_redis: RedisServer, postgres: PostgresServer
) -> None:
    env = {"WHISPR_SHUTDOWN_GRACE": str(GRACE), "WHISPR_DRAIN_WINDOW": str(DRAIN_WINDOW)}
    drained: dict[str, tuple[float, list[Device]]] = {}
    exits: dict[str, tuple[int, float]] = {}
    async with load_run(tmp_path, fresh_redis, postgres, "roll", env) as run:
        with trio.fail_after(30):
            await poll(lambda: run.ledger.messages() >= 300)
        for name in ("a", "b"):  # one node at a time, as a deploy does
            on_node = run.on(name)
            started = trio.current_time()
            drained[name] = (started, on_node)
            with trio.fail_after(GRACE + 5):
                code = await run.cluster.stop(name)
            exits[name] = (code, trio.current_time() - started)
            run.cluster.start(name)
            await run.cluster.wait_ready(name)
            with trio.fail_after(60):
                await poll(lambda: all(recovery_times(d, started)[1] < 60 for d in on_node))  # noqa: B023
        await run.finish()

    fig = Figures("E5", f"rolling restart: SIGTERM a, restart, then b ({DEVICES} devices under load)")
    delivery_figures(fig, run.ledger)
    for name, (started, on_node) in drained.items():
        closes = [c for d in on_node for c in d.connections if c.node == name and c.opened_at < started]
        codes = [c.close_code for c in closes if c.closed_at is not None and not c.ended_by_client]
        times = [recovery_times(d, started) for d in on_node]
        fig.at_most(f"node {name} exit code", exits[name][0], 0)
        fig.at_most(f"node {name} SIGTERM→exit", exits[name][1], GRACE, " s")
        fig.at_least(f"{name}'s devices closed with 1012", 100 * codes.count(1012) / len(on_node), 100, " %")
        fig.at_least(
            f"{name}'s devices caught up ≤ 15 s",
            100 * sum(1 for _, c in times if c <= RECOVERY) / len(on_node),
            100,
            " %",
        )
        fig.report(f"{name}'s devices caught up max", max(c for _, c in times), " s")
    unplanned = [
        c.close_code
        for d in run.devices
        for c in d.connections
        if c.closed_at is not None and not c.ended_by_client and c.close_code != 1012
    ]
    fig.at_most("server closes other than the drains' 1012", len(unplanned), 0)
    fig.check()


GHOSTS = 5
COALESCE_WINDOW = 0.05  # PresenceTracker's default coalesce_window
GHOST_BOUND = DEFAULT_DOWN_AFTER + COALESCE_WINDOW  # a dead node's presences leave after membership DOWN
GHOST_SLACK = 1.0  # the stream read that sees the silence and a loaded box's event-loop lag


class PresenceView:
    """What presence.js shows one client for one topic: `presence_state` then each `presence_diff`."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.state: State = {}

    def on_frame(self, frame: list[Any]) -> None:
        if frame[2] == self.topic and frame[3] == "presence_state":
            self.state = sync_state(self.state, frame[4])
        elif frame[2] == self.topic and frame[3] == "presence_diff":
            self.state = sync_diff(self.state, frame[4])

    def devices(self) -> set[tuple[str, str]]:
        """(user id, device id) of every meta shown."""
        return {(key, meta["device_id"]) for key, p in self.state.items() for meta in p["metas"]}


async def test_e2_a_killed_nodes_presences_leave_within_the_membership_down_timeout(
    tmp_path: Path, fresh_redis: RedisServer, postgres: PostgresServer
) -> None:
    """reliability.md E2 "stale presence after down_period: 0": a channel on the surviving node sees
    every device of the SIGKILLed node leave (`presence_diff`) within down_after + the coalesce window."""
    cluster = Cluster(tmp_path, fresh_redis, await fresh_database(postgres))
    ghosts = {(f"ghost{i}", "d") for i in range(GHOSTS)}
    try:
        cluster.start("a")
        cluster.start("b")
        await cluster.wait_ready("a", "b")
        [conversation] = await cluster.setup_conversations([["watcher", *sorted(u for u, _ in ghosts)]])
        topic = f"conversation:{conversation}"
        view = PresenceView(topic)
        async with trio.open_nursery() as nursery:
            watcher = await open_raw_client(nursery, cluster.socket_url("a", "watcher", "d"), "watcher")
            watcher.on_frame = view.on_frame
            await watcher.join(topic)
            on_b: list[RawClient] = []
            for user, device in sorted(ghosts):
                client = await open_raw_client(nursery, cluster.socket_url("b", user, device), user)
                await client.join(topic)
                on_b.append(client)
            with trio.move_on_after(10):  # b's devices reach a's channel through the cluster
                await poll(lambda: ghosts <= view.devices())
            assert ghosts <= view.devices(), f"a's channel never showed b's devices: {view.devices()}"
            killed_at = trio.current_time()
            cluster.kill("b")
            with trio.move_on_after(GHOST_BOUND + 10):
                await poll(lambda: not ghosts & view.devices())
            gone_after = trio.current_time() - killed_at
            stale = len(ghosts & view.devices())
            assert watcher.close_code is None
            nursery.cancel_scope.cancel()
    finally:
        cluster.close()
    fig = Figures("E2", f"presence of SIGKILLed node b's {GHOSTS} devices, seen from a channel on a")
    fig.at_most("stale presences after the bound", stale, 0)
    fig.at_most("all left (presence_diff) after kill", gone_after, GHOST_BOUND + GHOST_SLACK, " s")
    fig.check()
