"""Issue 8, items 2 and 3: presence across two in-process nodes sharing a Redis and a PostgreSQL.

One user's devices on two nodes, watched on `user:<id>` by each device as presence.js would
(`presence_js.sync_state` / `sync_diff` over the frames): one key with two metas, the same on both
nodes; node B cancelled without untracking anything (as SIGKILL would) leaves node A's view
within the membership bound (figure printed); B restarted (a new incarnation) and a killed Redis
subscription (`CLIENT KILL TYPE pubsub`) both end with the two nodes agreeing again.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import trio

from tests.e2e.phx import Frame, PhxClient
from tests.node import RunningNode, running_node
from tests.presence.presence_js import sync_diff, sync_state
from tests.services import PostgresServer, RedisServer

pytestmark = pytest.mark.integration

COALESCE_WINDOW = 0.05  # PresenceTracker's default window
SLACK = 1.0  # stream reads and event-loop lag on a shared machine, on top of the documented bound
DEADLINE = 30.0  # for conditions that need a transfer or two, polled


class Device:
    """A device's socket on `user:<id>` and the presence.js state it builds from the frames."""

    def __init__(self, client: PhxClient, topic: str) -> None:
        self.client = client
        self.topic = topic
        self.arrivals: list[tuple[float, Frame]] = []  # (time.monotonic(), frame) of each presence frame
        client.on_frame = self._arrived

    def _arrived(self, frame: Frame) -> None:
        if frame[2] == self.topic and frame[3] in ("presence_state", "presence_diff"):
            self.arrivals.append((time.monotonic(), frame))

    def view(self) -> dict[str, set[str]]:
        """key -> the phx_refs of its metas, as presence.js holds them now."""
        state: dict[str, Any] = {}
        for _, (_, _, _, event, payload) in list(self.arrivals):
            state = sync_state(state, payload) if event == "presence_state" else sync_diff(state, payload)
        return {key: {meta["phx_ref"] for meta in entry["metas"]} for key, entry in state.items()}

    def diffs(self) -> list[tuple[float, dict[str, Any]]]:
        return [(at, frame[4]) for at, frame in list(self.arrivals) if frame[3] == "presence_diff"]


def listed(node: RunningNode, topic: str) -> dict[str, set[str]]:
    assert node.node.presence is not None
    return {key: {meta["phx_ref"] for meta in entry["metas"]} for key, entry in node.node.presence.list(topic).items()}


async def poll(condition: Callable[[], bool], what: str) -> None:
    """Return once `condition()` holds; fail after DEADLINE seconds."""
    with trio.move_on_after(DEADLINE):
        while not condition():  # noqa: ASYNC110 - the sockets' frames arrive in other threads
            await trio.sleep(0.02)
        return
    raise AssertionError(f"timed out after {DEADLINE} s waiting for {what}")


def own_refs(node: RunningNode, topic: str) -> set[str]:
    """The refs of the metas `node` itself tracks on `topic`."""
    assert node.node.presence is not None
    return {meta["phx_ref"] for _, tracked, _, meta in node.node.presence.owned() if tracked == topic}


@contextlib.asynccontextmanager
async def device(node: RunningNode, user: str, name: str) -> AsyncIterator[Device]:
    client = await trio.to_thread.run_sync(lambda: PhxClient(node.socket_url, node.token(user, name), name=name))
    try:
        watcher = Device(client, f"user:{user}")
        reply = await trio.to_thread.run_sync(client.join, watcher.topic)
        assert reply["status"] == "ok", reply
        yield watcher
    finally:
        await trio.to_thread.run_sync(client.abort)


async def test_presence_spans_nodes_survives_a_dead_node_a_restart_and_a_lost_subscription(
    tmp_path: Path, fresh_redis: RedisServer, postgres: PostgresServer
) -> None:
    store_url = f"postgresql://postgres@127.0.0.1:{postgres.port}/whispr"
    user = f"presence-{uuid.uuid4().hex[:8]}"
    topic = f"user:{user}"

    def node(name: str, directory: str) -> contextlib.AbstractAsyncContextManager[RunningNode]:
        return running_node(tmp_path / directory, redis_url=fresh_redis.url, store_url=store_url, node_id=name)

    async with node("node-a", "a") as a, device_on(a, user, "phone") as phone:
        assert a.node.cluster is not None
        # 1. Two devices on two nodes: one key, two metas, the same everywhere; each diff once.
        async with node("node-b", "b") as b, device(b, user, "laptop") as laptop:

            def same_two() -> bool:
                views = [phone.view(), laptop.view(), listed(a, topic), listed(b, topic)]
                return all(view == views[0] for view in views) and len(views[0].get(user, ())) == 2

            await poll(same_two, "both devices on both nodes")
            (laptop_ref,) = own_refs(b, topic)
            assert listed(a, topic) == {user: own_refs(a, topic) | {laptop_ref}}
            joins = [diff for _, diff in phone.diffs() if laptop_ref in refs(diff["joins"])]
            assert len(joins) == 1, phone.diffs()  # from node A's tracker only, not again from B's broadcast
        killed_at = time.monotonic()  # node B cancelled: no untrack, no leave entry (a crash)

        # 2. Node A's observers get the leave within the membership bound.
        await poll(lambda: laptop_ref not in phone.view().get(user, set()), "the ghost laptop to leave")
        left_at = next(at for at, diff in phone.diffs() if laptop_ref in refs(diff["leaves"]))
        bound = a.node.cluster.timeouts.down_after + COALESCE_WINDOW
        print(f"ghost presence gone after {left_at - killed_at:.2f} s, bound {bound:.2f} s")
        assert left_at - killed_at <= bound + SLACK
        assert phone.view() == listed(a, topic)

        # 3. Node B back (a new incarnation), a device on it: consistent again.
        async with node("node-b", "b2") as b, device(b, user, "tablet") as tablet:

            def agreed(metas: int) -> bool:
                views = [phone.view(), tablet.view(), listed(a, topic), listed(b, topic)]
                return all(view == views[0] for view in views) and len(views[0].get(user, ())) == metas

            await poll(lambda: agreed(2), "the restarted node's device on both nodes")

            # 4. Redis drops every subscription; a device joins on B meanwhile: the nodes converge.
            assert a.node.bridge is not None
            resubscribes = a.node.bridge.statistics().resubscribes
            admin = redis.Redis(port=fresh_redis.port)
            try:
                killed = await trio.to_thread.run_sync(admin.execute_command, "CLIENT", "KILL", "TYPE", "pubsub")
            finally:
                admin.close()
            assert killed >= 2
            async with device(b, user, "watch"):
                await poll(lambda: agreed(3), "convergence after the kill")
                assert a.node.bridge.statistics().resubscribes > resubscribes


def refs(side: dict[str, Any]) -> set[str]:
    return {meta["phx_ref"] for entry in side.values() for meta in entry["metas"]}


@contextlib.asynccontextmanager
async def device_on(node: RunningNode, user: str, name: str) -> AsyncIterator[Device]:
    """`device` after creating the user in the shared store."""
    await node.add_user(user)
    async with device(node, user, name) as watcher:
        yield watcher
