"""Cross-node pub/sub through a private 3-master Redis Cluster (sharded pub/sub): two nodes in one
process sharing the cluster and a SQLite store, as in tests/pubsub/test_cluster.py (whose helpers
this reuses), with the bridge's topics spread over every master.

Faults: `CLIENT KILL TYPE pubsub` on one master at a time, and one master SIGKILLed and restarted
mid-traffic. Waiting is done on conditions bounded by `fail_after`, never on durations. Last, two
whole nodes (`tests/node.py`) configured with the `redis+cluster://` URL.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
import trio
from redis.asyncio import RedisCluster

from tests.node import running_node
from tests.pubsub.test_cluster import (
    Audience,
    ClusterNode,
    connected,
    conversation_seqs,
    figures,
    open_cluster,
    resync_events,
    send_many,
    wait_until,
)
from tests.services import RedisClusterServers
from whispr.adapters.aio import run_aio
from whispr.adapters.redis_client import open_redis
from whispr.adapters.redis_cluster_bus import RedisClusterBus

pytestmark = pytest.mark.integration


def master_of(admin: RedisCluster, channel: str) -> str:
    node = admin.get_node_from_key(channel)
    assert node is not None
    return node.name


async def spread_audience(nodes: list[ClusterNode], admin: RedisCluster, per_master: int) -> Audience:
    """An `Audience` (tests/pubsub/test_cluster.py) whose users' `user:` topics put at least
    `per_master` channels on every master (the conversation's channel is on one of them)."""
    bridge = nodes[0].bridge
    masters = {n.name for n in admin.get_primaries()}
    count = dict.fromkeys(masters, 0)
    members = []
    i = 0
    while min(count.values()) < per_master:
        user = f"u{i}"
        i += 1
        master = master_of(admin, bridge.channel(f"user:{user}"))
        if count[master] < per_master:
            count[master] += 1
            members.append(user)
    conversation_id = await nodes[0].node.conversation("sender", *members)
    crowd = Audience(conversation_id, [], [])
    for j, user in enumerate(members):
        conversation = nodes[j % len(nodes)].device(user, "c")
        assert (await conversation.join(f"conversation:{conversation_id}", {"last_seq": 0}))["status"] == "ok"
        inbox = nodes[(j + 1) % len(nodes)].device(user, "u")
        assert (await inbox.join(f"user:{user}"))["status"] == "ok"
        crowd.on_conversation.append(conversation)
        crowd.on_user.append(inbox)
    return crowd


async def test_two_nodes_exchange_conversation_messages_through_the_cluster_exactly_once_in_order(
    tmp_path: Path, redis_cluster: RedisClusterServers
) -> None:
    with trio.fail_after(120):
        async with open_cluster(tmp_path, redis_cluster.url) as nodes, open_redis(redis_cluster.url) as admin:
            assert isinstance(admin, RedisCluster)
            await run_aio(admin.initialize)
            await connected(*nodes)
            crowd = await spread_audience(nodes, admin, per_master=3)  # 9 users, 18 devices
            wanted = {nodes[1].bridge.channel(f"user:{d.identity.user_id}") for d in crowd.on_user}
            assert len({master_of(admin, c) for c in wanted}) == 3  # every master carries topics
            for n in nodes:
                assert isinstance(n.bus, RedisClusterBus)
                assert n.bus.shards == 3
            async with trio.open_nursery() as senders:
                senders.start_soon(send_many, nodes[0], crowd.conversation_id, "sender", 250, "a")
                senders.start_soon(send_many, nodes[1], crowd.conversation_id, "sender", 250, "b")
            await wait_until(lambda: crowd.received(500))
            result = crowd.check(500)
            assert result == {"missing": 0, "duplicates": 0, "out_of_order": 0}
            figures("cluster", nodes, **result)
            for n in nodes:
                stats = n.bridge.statistics()
                assert stats.received > 0
                assert stats.invalid == 0
                assert stats.resubscribes == 0


async def test_client_kill_on_one_master_at_a_time_mid_stream_is_filled_from_the_store(
    tmp_path: Path, redis_cluster: RedisClusterServers
) -> None:
    with trio.fail_after(120), resync_events() as events:
        async with open_cluster(tmp_path, redis_cluster.url) as nodes, open_redis(redis_cluster.url) as admin:
            assert isinstance(admin, RedisCluster)
            await run_aio(admin.initialize)
            await connected(*nodes)
            crowd = await spread_audience(nodes, admin, per_master=2)
            primaries = admin.get_primaries()
            killed = 0
            for chunk in range(6):
                await send_many(nodes[0], crowd.conversation_id, "sender", 100, f"k{chunk}-")
                victim = primaries[chunk % 3]
                killed += await run_aio(
                    lambda v=victim: admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub", target_nodes=v)
                )
            await wait_until(lambda: crowd.received(600))
            result = crowd.check(600)
            assert result == {"missing": 0, "duplicates": 0, "out_of_order": 0}
            assert killed >= 6
            await connected(*nodes)
            figures("cluster-client-kill", nodes, killed=killed, **result)
            stats = nodes[1].bridge.statistics()
            assert stats.resubscribes >= 6
            assert stats.resyncs.get("resubscribe", 0) >= 1
            assert any(md["reason"] == "resubscribe" and m["feeds"] > 0 for m, md in events)


async def test_one_master_sigkilled_and_restarted_mid_traffic_loses_nothing(
    tmp_path: Path, fresh_redis_cluster: RedisClusterServers
) -> None:
    with trio.fail_after(180):
        async with (
            open_cluster(tmp_path, fresh_redis_cluster.url) as nodes,
            open_redis(fresh_redis_cluster.url) as admin,
        ):
            assert isinstance(admin, RedisCluster)
            await run_aio(admin.initialize)
            await connected(*nodes)
            crowd = await spread_audience(nodes, admin, per_master=2)
            # The master carrying the conversation's channel goes down.
            port = int(master_of(admin, nodes[0].bridge.channel(f"conversation:{crowd.conversation_id}")).split(":")[1])
            victim = next(m for m in fresh_redis_cluster.masters if m.port == port)
            local = [d for d in crowd.on_conversation if d.node is nodes[0].node]
            await send_many(nodes[0], crowd.conversation_id, "sender", 150, "before")
            killed_at = trio.current_time()
            victim.kill()
            await send_many(nodes[0], crowd.conversation_id, "sender", 100, "during")
            await wait_until(lambda: all(len(conversation_seqs(d, crowd.conversation_id)) >= 250 for d in local))
            await wait_until(lambda: all(n.bridge.statistics().degraded for n in nodes))
            degraded_after = trio.current_time() - killed_at
            await trio.to_thread.run_sync(victim.start)
            await trio.to_thread.run_sync(fresh_redis_cluster.wait_ok)
            restarted_at = trio.current_time()
            await send_many(nodes[1], crowd.conversation_id, "sender", 250, "after")
            await wait_until(lambda: crowd.received(500))
            result = crowd.check(500)
            assert result == {"missing": 0, "duplicates": 0, "out_of_order": 0}
            await connected(*nodes)
            figures(
                "cluster-master-restart",
                nodes,
                degraded_after=round(degraded_after, 3),
                connected_after_restart=round(trio.current_time() - restarted_at, 3),
                **result,
            )
            for n in nodes:
                stats = n.bridge.statistics()
                assert stats.resubscribes >= 1
                assert stats.resyncs.get("degraded", 0) >= 1


async def test_two_whole_nodes_on_the_cluster_url_bridge_see_each_other_and_are_ready(
    tmp_path: Path, fresh_redis_cluster: RedisClusterServers
) -> None:
    url = fresh_redis_cluster.url
    async with (
        running_node(tmp_path / "a", redis_url=url, node_id="node-a") as a,
        running_node(tmp_path / "b", redis_url=url, node_id="node-b") as b,
    ):
        with trio.fail_after(30):
            for running, other in ((a, "node-b"), (b, "node-a")):
                cluster, bridge = running.node.cluster, running.node.bridge
                assert cluster is not None
                assert bridge is not None
                await cluster.wait_until(lambda c=cluster, o=other: o in c.members())
                await wait_until(lambda br=bridge: br.statistics().connected)

        def ready() -> dict[str, object]:
            with urllib.request.urlopen(a.http_url + "/ready", timeout=10) as response:
                return json.loads(response.read())  # type: ignore[no-any-return]

        report = await trio.to_thread.run_sync(ready)
    assert report["checks"]["cluster"] == {"ok": True, "detail": ""}  # type: ignore[index]
