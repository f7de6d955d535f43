"""ClusterManager against a real private Redis: several managers in one Trio run, on short intervals.

Synchronisation is always on the managers' own observed state (`wait_until`, driven by their change
notifications); `fail_after` only bounds a test. Detection times are printed (run with `-s` or
`-rP` to read them), never asserted.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
import trio

from tests.services import RedisServer
from whispr.adapters.aio import open_bridge, run_aio
from whispr.adapters.redis_client import open_redis
from whispr.adapters.redis_streams import open_redis_stream
from whispr.cluster import ClusterManager, NodeDown, NodeEvent, NodePermdown, NodeUp, PermdownReason, Status
from whispr.cluster.membership import Entry, Kind, encode_entry

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HEARTBEAT = 0.1
DOWN_AFTER = 0.3  # three missed heartbeats
PERMDOWN_AFTER = 5.0  # far beyond every fault below, so any permdown seen is a spurious one
GUARD = 20  # seconds: the bound on any one test, never a synchronisation


class Cluster:
    """Managers on one stream, each run in its own cancel scope so a test can 'crash' one."""

    def __init__(self, nursery: trio.Nursery, url: str) -> None:
        self.nursery = nursery
        self.url = url
        self.stream = f"whispr:test:{uuid.uuid4().hex}"
        self.nodes: dict[str, ClusterManager] = {}
        self.scopes: dict[str, trio.CancelScope] = {}

    async def start(self, node_id: str, **timing: float) -> ClusterManager:
        timing = {"heartbeat_interval": HEARTBEAT, "down_after": DOWN_AFTER, "permdown_after": PERMDOWN_AFTER} | timing
        manager = ClusterManager(self.url, node_id, stream=self.stream, maxlen=1000, **timing)
        scope = trio.CancelScope()
        await self.nursery.start(self._run, manager, scope)
        self.nodes[node_id], self.scopes[node_id] = manager, scope
        return manager

    @staticmethod
    async def _run(manager: ClusterManager, scope: trio.CancelScope, *, task_status: trio.TaskStatus[None]) -> None:
        with scope:
            await manager.run(task_status=task_status)

    def crash(self, node_id: str) -> None:
        """Cancel the node: no leave is written, as if the process died."""
        self.scopes.pop(node_id).cancel()
        del self.nodes[node_id]

    def others(self, node_id: str) -> list[ClusterManager]:
        return [m for n, m in self.nodes.items() if n != node_id]

    async def all_see_all_up(self) -> None:
        for manager in self.nodes.values():
            expected = {n: m.incarnation for n, m in self.nodes.items() if m is not manager}
            await manager.wait_until(lambda manager=manager, expected=expected: up(manager) == expected)


def up(manager: ClusterManager) -> dict[str, int]:
    """The nodes `manager` has announced UP, with their incarnations."""
    return {n: r.incarnation for n, r in manager.members().items() if r.status is Status.UP}


def status_is(manager: ClusterManager, node: str, status: Status | None) -> Callable[[], bool]:
    def check() -> bool:
        replica = manager.members().get(node)
        return (replica.status if replica else None) is status

    return check


@asynccontextmanager
async def cluster(url: str) -> AsyncIterator[Cluster]:
    async with open_bridge(), trio.open_nursery() as nursery:
        yield Cluster(nursery, url)
        nursery.cancel_scope.cancel()


def drain(events: trio.MemoryReceiveChannel[NodeEvent]) -> list[NodeEvent]:
    out: list[NodeEvent] = []
    while True:
        try:
            out.append(events.receive_nowait())
        except trio.WouldBlock:
            return out


@pytest.mark.trio
async def test_three_nodes_see_each_other_up(redis: RedisServer) -> None:
    with trio.fail_after(GUARD):
        async with cluster(redis.url) as c:
            for name in "abc":
                await c.start(name)
            await c.all_see_all_up()
            for manager in c.nodes.values():
                stats = manager.statistics()
                assert stats.joined
                assert manager.healthy
                assert (stats.up, stats.down, stats.unknown_version_skipped) == (2, 0, 0)


@pytest.mark.trio
async def test_a_late_joiner_knows_the_members_once_started(redis: RedisServer) -> None:
    with trio.fail_after(GUARD):
        async with cluster(redis.url) as c:
            a = await c.start("a", down_after=1.0)
            b = await c.start("b", down_after=1.0)
            await c.all_see_all_up()
            late = await c.start("late", down_after=1.0)
            # Learned from the stream's recent history during the join, before started().
            assert up(late) == {"a": a.incarnation, "b": b.incarnation}


@pytest.mark.trio
async def test_graceful_stop_is_a_prompt_permdown(redis: RedisServer) -> None:
    with trio.fail_after(GUARD):
        async with cluster(redis.url) as c:
            for name in "abc":  # a longer down_after: a loaded CI machine must not flap them meanwhile
                await c.start(name, down_after=1.0)
            await c.all_see_all_up()
            leaving = c.nodes.pop("c")
            subscriptions = [m.subscribe() for m in c.nodes.values()]
            stopped_at = trio.current_time()
            leaving.stop()
            for manager in c.nodes.values():
                await manager.wait_until(status_is(manager, "c", None))
            print(f"graceful leave seen by every node after {trio.current_time() - stopped_at:.3f} s")
            for events in subscriptions:
                seen = [e for e in drain(events) if e.node == "c"]
                assert seen[-1] == NodePermdown("c", leaving.incarnation, PermdownReason.LEAVE)
                assert not any(isinstance(e, NodeDown) for e in seen)


@pytest.mark.trio
async def test_crash_is_down_after_down_after_then_permdown(redis: RedisServer) -> None:
    with trio.fail_after(GUARD):
        async with cluster(redis.url) as c:
            for name in "abc":
                await c.start(name, permdown_after=1.0)
            await c.all_see_all_up()
            incarnation = c.nodes["c"].incarnation
            survivors = c.others("c")
            subscriptions = [m.subscribe() for m in survivors]
            crashed_at = trio.current_time()
            c.crash("c")
            for manager in survivors:
                await manager.wait_until(status_is(manager, "c", Status.DOWN))
            print(f"crash seen DOWN by every node after {trio.current_time() - crashed_at:.3f} s (down_after 0.3)")
            for manager in survivors:
                await manager.wait_until(status_is(manager, "c", None))
            print(f"crash seen PERMDOWN by every node after {trio.current_time() - crashed_at:.3f} s (permdown 1.0)")
            for events in subscriptions:
                seen = [e for e in drain(events) if e.node == "c"]
                assert seen == [
                    NodeUp("c", incarnation),  # the subscription's initial state
                    NodeDown("c", incarnation),
                    NodePermdown("c", incarnation, PermdownReason.TIMEOUT),
                ]


@pytest.mark.trio
async def test_restart_is_a_new_incarnation_replacing_the_old(redis: RedisServer) -> None:
    with trio.fail_after(GUARD):
        async with cluster(redis.url) as c:
            for name in "abc":
                await c.start(name, down_after=1.0)
            await c.all_see_all_up()
            old = c.nodes["c"].incarnation
            survivors = c.others("c")
            subscriptions = [m.subscribe() for m in survivors]
            c.crash("c")
            restarted_at = trio.current_time()
            new = (await c.start("c", down_after=1.0)).incarnation
            assert new > old
            await c.all_see_all_up()
            print(f"restart seen by every node after {trio.current_time() - restarted_at:.3f} s")
            for events in subscriptions:
                seen = [e for e in drain(events) if e.node == "c"]
                # The old replica is discarded (its presences must go) before the new one is up; the
                # old one may or may not have been seen DOWN first, depending on how quick the restart was.
                assert seen[0] == NodeUp("c", old)
                assert seen[-2:] == [NodePermdown("c", old, PermdownReason.REPLACED), NodeUp("c", new)]
                assert seen[1:-2] in ([], [NodeDown("c", old)])


@pytest.mark.trio
async def test_redis_hang_longer_than_down_after_then_back(fresh_redis: RedisServer) -> None:
    with trio.fail_after(GUARD):
        async with cluster(fresh_redis.url) as c:
            for name in "abc":
                await c.start(name)
            await c.all_see_all_up()
            incarnations = {n: m.incarnation for n, m in c.nodes.items()}
            subscriptions = [m.subscribe() for m in c.nodes.values()]
            fresh_redis.pause()
            paused_at = trio.current_time()
            for manager in c.nodes.values():
                await manager.wait_until(lambda m=manager: all(r.status is Status.DOWN for r in m.members().values()))
            print(f"Redis SIGSTOP: every node saw the others DOWN after {trio.current_time() - paused_at:.3f} s")
            for manager in c.nodes.values():
                await manager.wait_until(lambda m=manager: not m.healthy)
            fresh_redis.resume()
            resumed_at = trio.current_time()
            await c.all_see_all_up()
            print(f"Redis SIGCONT: every node saw the others UP after {trio.current_time() - resumed_at:.3f} s")
            for manager in c.nodes.values():
                await manager.wait_until(lambda m=manager: m.healthy)
            for events in subscriptions:
                seen = drain(events)
                assert not any(isinstance(e, NodePermdown) for e in seen)
                assert {(e.node, e.incarnation) for e in seen} <= set(incarnations.items())  # same incarnations


@pytest.mark.trio
async def test_redis_killed_and_restarted(fresh_redis: RedisServer) -> None:
    with trio.fail_after(GUARD):
        async with cluster(fresh_redis.url) as c:
            for name in "abc":
                await c.start(name)
            await c.all_see_all_up()
            fresh_redis.kill()
            killed_at = trio.current_time()
            for manager in c.nodes.values():
                await manager.wait_until(lambda m=manager: all(r.status is Status.DOWN for r in m.members().values()))
            for manager in c.nodes.values():
                await manager.wait_until(lambda m=manager: not m.healthy)
            await trio.to_thread.run_sync(fresh_redis.start)  # an empty Redis on the same port
            restarted_at = trio.current_time()
            await c.all_see_all_up()
            print(
                f"Redis SIGKILL: others DOWN after {restarted_at - killed_at:.3f} s (incl. restart); "
                f"UP again {trio.current_time() - restarted_at:.3f} s after the restart"
            )
            for manager in c.nodes.values():
                await manager.wait_until(lambda m=manager: m.healthy)
                assert manager.statistics().heartbeat_failures > 0
            # Gossip goes on: each node reads more entries after recovery.
            marks = {n: m.statistics().entries_read for n, m in c.nodes.items()}
            for name, manager in c.nodes.items():
                await manager.wait_until(lambda m=manager, n=name: m.statistics().entries_read > marks[n] + 6)


@pytest.mark.trio
async def test_redis_down_at_boot_starts_unjoined_then_joins(fresh_redis: RedisServer) -> None:
    fresh_redis.kill()
    with trio.fail_after(GUARD):
        async with cluster(fresh_redis.url) as c:
            a = await c.start("a")
            stats = a.statistics()
            assert not stats.joined
            assert not a.healthy
            assert stats.heartbeat_failures >= 1
            await trio.to_thread.run_sync(fresh_redis.start)
            await a.wait_until(lambda: a.healthy)
            assert a.statistics().joined
            await c.start("b")
            await c.all_see_all_up()


@pytest.mark.trio
async def test_entries_of_unknown_version_or_malformed_are_skipped_and_counted(redis: RedisServer) -> None:
    with trio.fail_after(GUARD):
        async with cluster(redis.url) as c:
            a = await c.start("a")
            b = await c.start("b")
            await c.all_see_all_up()
            future = encode_entry(Entry("z", 1, Kind.HEARTBEAT, 0.0)) | {"v": "2"}
            async with open_redis_stream(redis.url, c.stream, maxlen=1000) as stream:
                await stream.append(future)
                await stream.append({"v": "1", "node": "y", "kind": "nonsense"})
                await stream.append({"no": "version"})
            for manager in (a, b):
                await manager.wait_until(
                    lambda m=manager: (
                        (m.statistics().unknown_version_skipped, m.statistics().malformed_skipped) == (2, 1)
                    )
                )
                assert set(manager.members()) <= {"a", "b"}
            await c.all_see_all_up()


@pytest.mark.trio
async def test_history_older_than_down_after_is_not_taken_for_alive(redis: RedisServer) -> None:
    with trio.fail_after(GUARD):
        async with cluster(redis.url) as c:
            async with open_redis(redis.url) as client:
                seconds, micros = await run_aio(client.time)
                now_ms = int(seconds) * 1000 + int(micros) // 1000
                ghost = encode_entry(Entry("ghost", 1, Kind.HEARTBEAT, 0.0))
                recent = encode_entry(Entry("recent", 1, Kind.HEARTBEAT, 0.0))
                await run_aio(client.xadd, c.stream, ghost, f"{now_ms - 2000}-0")  # 2 s old: down already
                await run_aio(client.xadd, c.stream, recent, f"{now_ms - 100}-0")  # 0.1 s old: up
            a = await c.start("a", down_after=1.0)
            assert up(a) == {"recent": 1}
            assert "ghost" not in a.members()  # never announced up, so never announced at all
