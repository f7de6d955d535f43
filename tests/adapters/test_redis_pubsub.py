"""The Redis pub/sub adapter: pipelined publications, the pump, live (un)subscription, failures."""

from __future__ import annotations

import uuid

import pytest
import trio

from tests.services import RedisServer, free_port
from whispr.adapters.aio import open_bridge, run_aio
from whispr.adapters.redis_client import open_redis
from whispr.adapters.redis_pubsub import open_redis_bus
from whispr.pubsub.cluster import Inbound, PubSubUnavailable

pytestmark = pytest.mark.integration


def name() -> str:
    return f"test:{uuid.uuid4().hex}"


async def until(receive: trio.MemoryReceiveChannel[Inbound], kind: bytes, channel: str) -> Inbound:
    """The next item of `kind` on `channel`, skipping others."""
    async for item in receive:
        if item[0] == kind and item[1] == channel.encode():
            return item
    raise AssertionError("the pump stopped")


async def test_a_batch_is_published_in_order_and_pumped_after_the_confirmations(redis: RedisServer) -> None:
    a, b = name(), name()
    with trio.fail_after(10):
        async with open_bridge(), open_redis_bus(redis.url) as bus, trio.open_nursery() as nursery:
            send, receive = trio.open_memory_channel[Inbound](10_000)
            nursery.start_soon(bus.listen, lambda: [a, b], send)
            await until(receive, b"subscribe", a)
            await until(receive, b"subscribe", b)
            await bus.publish([(a if i % 2 else b, str(i).encode()) for i in range(2_000)])
            got = [await receive.receive() for _ in range(2_000)]
            assert [(k, int(d)) for k, _, d in got if isinstance(d, bytes)] == [(b"message", i) for i in range(2_000)]
            assert {c for _, c, d in got if isinstance(d, bytes) and int(d) % 2} == {a.encode()}
            nursery.cancel_scope.cancel()


async def test_channels_are_added_and_removed_on_the_running_connection(redis: RedisServer) -> None:
    a, b = name(), name()
    with trio.fail_after(10):
        async with open_bridge(), open_redis_bus(redis.url) as bus, trio.open_nursery() as nursery:
            send, receive = trio.open_memory_channel[Inbound](100)
            nursery.start_soon(bus.listen, lambda: [a], send)
            await until(receive, b"subscribe", a)
            await bus.subscribe([b])
            await until(receive, b"subscribe", b)
            await bus.unsubscribe([a])
            await until(receive, b"unsubscribe", a)
            await bus.publish([(a, b"lost"), (b, b"kept")])
            assert await until(receive, b"message", b) == (b"message", b.encode(), b"kept")
            nursery.cancel_scope.cancel()


async def test_subscribe_without_a_connection_does_nothing(redis: RedisServer) -> None:
    with trio.fail_after(10):
        async with open_bridge(), open_redis_bus(redis.url) as bus:
            await bus.subscribe([name()])
            await bus.unsubscribe([name()])


async def test_a_killed_connection_ends_the_pump_with_pubsub_unavailable(redis: RedisServer) -> None:
    a = name()
    with trio.fail_after(10):
        async with open_bridge(), open_redis_bus(redis.url) as bus, open_redis(redis.url) as admin:
            send, receive = trio.open_memory_channel[Inbound](100)
            outcome: list[BaseException] = []

            async def listen() -> None:
                try:
                    await bus.listen(lambda: [a], send)
                except PubSubUnavailable as exc:
                    outcome.append(exc)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(listen)
                await until(receive, b"subscribe", a)
                killed = await run_aio(admin.execute_command, "CLIENT", "KILL", "TYPE", "pubsub")
                assert killed == 1
            assert len(outcome) == 1
            assert outcome[0].__cause__ is not None


async def test_a_full_channel_drops_and_counts(redis: RedisServer) -> None:
    a = name()
    with trio.fail_after(10):
        async with open_bridge(), open_redis_bus(redis.url) as bus, trio.open_nursery() as nursery:
            send, receive = trio.open_memory_channel[Inbound](1)
            nursery.start_soon(bus.listen, lambda: [a], send)
            await until(receive, b"subscribe", a)
            await bus.publish([(a, b"x")] * 50)
            while bus.inbound_dropped == 0:  # noqa: ASYNC110 - the pump offers no event for its counter
                await trio.sleep(0.01)  # the pump runs on its own; poll its counter
            assert bus.inbound_dropped >= 1
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("url", ["redis://127.0.0.1:{port}/0", "redis+cluster://127.0.0.1:{port}"])
async def test_unreachable_redis_fails_fast_with_pubsub_unavailable(url: str) -> None:
    """One server or a cluster (no seed answers): both buses fail with PubSubUnavailable, not a hang."""
    url = url.format(port=free_port())
    with trio.fail_after(10):
        async with open_bridge(), open_redis_bus(url, io_timeout=0.2) as bus:
            with pytest.raises(PubSubUnavailable):
                await bus.publish([("x", b"y")])
            send, _ = trio.open_memory_channel[Inbound](1)
            with pytest.raises(PubSubUnavailable):
                await bus.listen(lambda: ["x"], send)


async def test_sharded_pubsub_on_one_server(redis: RedisServer) -> None:
    a = name()
    with trio.fail_after(10):
        async with open_bridge(), open_redis_bus(redis.url, sharded=True) as bus, trio.open_nursery() as nursery:
            send, receive = trio.open_memory_channel[Inbound](100)
            nursery.start_soon(bus.listen, lambda: [a], send)
            await until(receive, b"ssubscribe", a)
            await bus.publish([(a, b"1"), (a, b"2")])
            assert await until(receive, b"smessage", a) == (b"smessage", a.encode(), b"1")
            assert await until(receive, b"smessage", a) == (b"smessage", a.encode(), b"2")
            nursery.cancel_scope.cancel()
