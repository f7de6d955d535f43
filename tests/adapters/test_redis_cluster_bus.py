"""The Redis Cluster pub/sub adapter against a private 3-master cluster: sharded publications and
subscriptions spread over every master, live (un)subscription, and every way a shard's subscription
can be lost (killed connection, resharded slot, hung master) ending the pump."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

import pytest
import trio
from redis.asyncio import RedisCluster
from redis.asyncio.cluster import ClusterNode

from tests.services import RedisClusterServers
from whispr.adapters.aio import open_bridge, run_aio
from whispr.adapters.redis_client import open_redis
from whispr.adapters.redis_cluster_bus import RedisClusterBus
from whispr.adapters.redis_pubsub import open_redis_bus
from whispr.config import ConfigError, Settings, parse_cluster_url
from whispr.pubsub.cluster import Inbound, PubSubUnavailable

pytestmark = pytest.mark.integration


def names(count: int) -> list[str]:
    return [f"test:{uuid.uuid4().hex}" for _ in range(count)]


async def until(receive: trio.MemoryReceiveChannel[Inbound], kind: bytes, channel: str) -> Inbound:
    """The next item of `kind` on `channel`, skipping others."""
    async for item in receive:
        if item[0] == kind and item[1] == channel.encode():
            return item
    raise AssertionError("the pump stopped")


async def confirmed(receive: trio.MemoryReceiveChannel[Inbound], kind: bytes, channels: list[str]) -> None:
    """Return once a `kind` confirmation came for every channel (shards answer in any order)."""
    waiting = {c.encode() for c in channels}
    async for item in receive:
        if item[0] == kind:
            waiting.discard(item[1])
        if not waiting:
            return
    raise AssertionError("the pump stopped")


@asynccontextmanager
async def admin_client(cluster: RedisClusterServers) -> AsyncIterator[RedisCluster]:
    """A cluster client for the test's own commands, with its slot map loaded."""
    async with open_redis(cluster.url) as client:
        assert isinstance(client, RedisCluster)
        await run_aio(client.initialize)
        yield client


def owner(admin: RedisCluster, channel: str) -> ClusterNode:
    node = admin.get_node_from_key(channel)
    assert node is not None
    return node


async def listen_until_lost(bus: RedisClusterBus, channels: list[str], send: trio.MemorySendChannel[Inbound]) -> None:
    with pytest.raises(PubSubUnavailable) as lost:
        await bus.listen(lambda: channels, send)
    print("pump ended with:", lost.value)


def test_cluster_urls_name_every_seed_and_refuse_what_a_cluster_cannot_do() -> None:
    assert parse_cluster_url("redis+cluster://a:1,b:2") == ([("a", 1), ("b", 2)], None, None)
    assert parse_cluster_url("redis+cluster://u:p%40ss@a:1/0") == ([("a", 1)], "u", "p@ss")
    for wrong in ("redis://a:1", "redis+cluster://a:1/3", "redis+cluster://a", "redis+cluster://a:1,"):
        with pytest.raises(ValueError, match=r"Cluster"):
            parse_cluster_url(wrong)
    # The node refuses to start on them, naming the setting.
    settings = Settings(jwt_secret="x" * 32)
    replace(settings, redis_url="redis+cluster://a:1,b:2").validate()
    for wrong in ("redis+cluster://a:1/3", "redis+cluster://a", "redis-cluster://a:1"):
        with pytest.raises(ConfigError, match=r"^redis_url"):
            replace(settings, redis_url=wrong).validate()


async def test_topics_spread_over_all_three_masters_and_each_keeps_its_order(
    redis_cluster: RedisClusterServers,
) -> None:
    channels = names(30)
    with trio.fail_after(20):
        async with (
            open_bridge(),
            admin_client(redis_cluster) as admin,
            open_redis_bus(redis_cluster.url) as bus,
            trio.open_nursery() as nursery,
        ):
            assert isinstance(bus, RedisClusterBus)
            owners = {owner(admin, c).name for c in channels}
            assert owners == {n.name for n in admin.get_primaries()}
            assert len(owners) == 3
            send, receive = trio.open_memory_channel[Inbound](10_000)
            nursery.start_soon(bus.listen, lambda: channels, send)
            await confirmed(receive, b"ssubscribe", channels)
            assert bus.shards == 3
            await bus.publish([(channels[i % 30], str(i).encode()) for i in range(3_000)])
            got: dict[bytes, list[int]] = {}
            for _ in range(3_000):
                kind, channel, data = await receive.receive()
                assert kind == b"smessage"
                assert isinstance(data, bytes)
                got.setdefault(channel, []).append(int(data))
            assert got == {c.encode(): list(range(i, 3_000, 30)) for i, c in enumerate(channels)}
            nursery.cancel_scope.cancel()


async def test_channels_are_added_and_removed_on_their_shards_connections(redis_cluster: RedisClusterServers) -> None:
    first, *more = names(10)
    with trio.fail_after(20):
        async with open_bridge(), open_redis_bus(redis_cluster.url) as bus, trio.open_nursery() as nursery:
            send, receive = trio.open_memory_channel[Inbound](1_000)
            nursery.start_soon(bus.listen, lambda: [first], send)
            await until(receive, b"ssubscribe", first)
            await bus.subscribe(more)
            await confirmed(receive, b"ssubscribe", more)
            await bus.unsubscribe([first, *more[:5]])
            await confirmed(receive, b"sunsubscribe", [first, *more[:5]])
            await bus.publish([(c, b"lost") for c in [first, *more[:5]]] + [(c, b"kept") for c in more[5:]])
            got = {await receive.receive() for _ in more[5:]}  # shards deliver in any order between them
            assert got == {(b"smessage", c.encode(), b"kept") for c in more[5:]}
            assert receive.statistics().current_buffer_used == 0  # nothing from the unsubscribed ones
            nursery.cancel_scope.cancel()


async def test_a_killed_connection_on_one_master_ends_the_whole_pump(redis_cluster: RedisClusterServers) -> None:
    channels = names(12)
    with trio.fail_after(20):
        async with open_bridge(), admin_client(redis_cluster) as admin, open_redis_bus(redis_cluster.url) as bus:
            assert isinstance(bus, RedisClusterBus)
            send, receive = trio.open_memory_channel[Inbound](1_000)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(listen_until_lost, bus, channels, send)
                await confirmed(receive, b"ssubscribe", channels)
                victim = owner(admin, channels[0])
                killed = await run_aio(
                    lambda: admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub", target_nodes=victim)
                )
                assert killed >= 1
            assert bus.shards == 0


async def test_a_resharded_slot_ends_the_pump_and_the_next_one_subscribes_on_the_new_owner(
    fresh_redis_cluster: RedisClusterServers,
) -> None:
    channel = names(1)[0]
    with trio.fail_after(30):
        async with (
            open_bridge(),
            admin_client(fresh_redis_cluster) as admin,
            open_redis_bus(fresh_redis_cluster.url) as bus,
        ):
            assert isinstance(bus, RedisClusterBus)
            source = owner(admin, channel)
            target = next(n for n in admin.get_primaries() if n.name != source.name)
            slot = admin.keyslot(channel)
            send, receive = trio.open_memory_channel[Inbound](1_000)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(listen_until_lost, bus, [channel], send)
                await until(receive, b"ssubscribe", channel)
                # The resharding protocol for an empty slot (no keys to MIGRATE).
                ids = {}
                for node in (source, target):
                    ids[node.name] = await run_aio(
                        lambda n=node: admin.execute_command("CLUSTER", "MYID", target_nodes=n)
                    )
                setslot = ("CLUSTER", "SETSLOT", slot)
                await run_aio(
                    lambda: admin.execute_command(*setslot, "IMPORTING", ids[source.name], target_nodes=target)
                )
                await run_aio(
                    lambda: admin.execute_command(*setslot, "MIGRATING", ids[target.name], target_nodes=source)
                )
                for node in (target, source):
                    await run_aio(
                        lambda n=node: admin.execute_command(*setslot, "NODE", ids[target.name], target_nodes=n)
                    )
            await run_aio(admin.nodes_manager.initialize)
            assert owner(admin, channel).name == target.name
            async with trio.open_nursery() as nursery:
                nursery.start_soon(bus.listen, lambda: [channel], send)
                await until(receive, b"ssubscribe", channel)
                await bus.publish([(channel, b"after the move")])
                assert await until(receive, b"smessage", channel) == (b"smessage", channel.encode(), b"after the move")
                nursery.cancel_scope.cancel()


async def test_a_hung_master_ends_the_pump_within_two_probe_intervals(fresh_redis_cluster: RedisClusterServers) -> None:
    channels = names(12)
    with trio.fail_after(30):
        async with (
            open_bridge(),
            admin_client(fresh_redis_cluster) as admin,
            open_redis_bus(fresh_redis_cluster.url) as bus,
        ):
            assert isinstance(bus, RedisClusterBus)
            send, receive = trio.open_memory_channel[Inbound](1_000)
            victim = owner(admin, channels[0])
            server = next(m for m in fresh_redis_cluster.masters if m.port == int(victim.port))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(listen_until_lost, bus, channels, send)
                await confirmed(receive, b"ssubscribe", channels)
                server.pause()  # its connections stay open: only the PING probe can tell
                paused_at = trio.current_time()
            server.resume()
            print(f"hung master detected after {trio.current_time() - paused_at:.2f}s")
