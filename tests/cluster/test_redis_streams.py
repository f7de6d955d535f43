"""The Redis Streams adapter: XADD with MAXLEN, and the pump resuming from its explicit last id."""

from __future__ import annotations

import uuid

import pytest
import trio

from tests.services import RedisServer
from whispr.adapters.aio import open_bridge, run_aio
from whispr.adapters.redis_client import open_redis
from whispr.adapters.redis_streams import open_redis_stream
from whispr.cluster.stream import ClusterUnavailable, PumpItem, Record, parse_id

pytestmark = pytest.mark.integration


async def next_records(receive: trio.MemoryReceiveChannel[PumpItem], count: int) -> list[Record]:
    """Receive until `count` records have come (skipping empty reads and errors)."""
    records: list[Record] = []
    while len(records) < count:
        item = await receive.receive()
        if not isinstance(item, ClusterUnavailable):
            records.extend(item)
    return records


def test_parse_id_orders_like_the_stream() -> None:
    assert parse_id("5-1") < parse_id("5-2") < parse_id("6-0")
    assert parse_id("7") == (7, 0)
    with pytest.raises(ValueError, match="invalid literal"):
        parse_id("x-1")


async def test_append_returns_increasing_ids_and_maxlen_trims(redis: RedisServer) -> None:
    name = f"whispr:test:{uuid.uuid4().hex}"
    with trio.fail_after(10):
        async with open_bridge(), open_redis_stream(redis.url, name, maxlen=10) as stream:
            ids = [await stream.append({"i": str(i)}) for i in range(500)]
            assert ids == sorted(ids, key=parse_id)
            assert len(set(ids)) == 500
            async with open_redis(redis.url) as client:
                length = await run_aio(client.xlen, name)
            assert 10 <= length < 500  # approximate trimming: whole macro-nodes at a time


async def test_pump_sends_everything_after_the_given_id_in_order(redis: RedisServer) -> None:
    name = f"whispr:test:{uuid.uuid4().hex}"
    with trio.fail_after(10):
        async with open_bridge(), open_redis_stream(redis.url, name, maxlen=1000) as stream, trio.open_nursery() as n:
            first = await stream.append({"i": "0"})
            send, receive = trio.open_memory_channel[PumpItem](1)  # tiny: the pump must wait, not drop
            n.start_soon(lambda: stream.pump(first, send, max_backoff=0.1))
            for i in range(1, 200):
                await stream.append({"i": str(i)})
            records = await next_records(receive, 199)
            assert [r.fields["i"] for r in records] == [str(i) for i in range(1, 200)]
            n.cancel_scope.cancel()


async def test_pump_resumes_from_its_last_id_after_its_connection_is_killed(redis: RedisServer) -> None:
    name = f"whispr:test:{uuid.uuid4().hex}"
    with trio.fail_after(10):
        async with (
            open_bridge(),
            open_redis_stream(redis.url, name, maxlen=1000) as stream,
            open_redis(redis.url) as admin,
            trio.open_nursery() as n,
        ):
            send, receive = trio.open_memory_channel[PumpItem](100)
            n.start_soon(lambda: stream.pump("0-0", send, max_backoff=0.1))
            await stream.append({"i": "1"})
            assert [r.fields["i"] for r in await next_records(receive, 1)] == ["1"]
            for i in range(2, 12):  # entries appended while the reader's connection is being dropped
                await run_aio(admin.execute_command, "CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
                await stream.append({"i": str(i)})
            assert [r.fields["i"] for r in await next_records(receive, 10)] == [str(i) for i in range(2, 12)]
            n.cancel_scope.cancel()


async def test_unreachable_redis_is_cluster_unavailable(fresh_redis: RedisServer) -> None:
    fresh_redis.kill()
    with trio.fail_after(10):
        async with open_bridge(), open_redis_stream(fresh_redis.url, "s", maxlen=10) as stream:
            with pytest.raises(ClusterUnavailable, match="XADD s failed: ConnectionError") as info:
                await stream.append({"a": "b"})
            assert info.value.__cause__ is not None
            send, receive = trio.open_memory_channel[PumpItem](10)
            async with trio.open_nursery() as n:
                n.start_soon(lambda: stream.pump("0-0", send, max_backoff=0.1))
                for _ in range(3):  # keeps retrying, reporting each failure
                    assert isinstance(await receive.receive(), ClusterUnavailable)
                await receive.aclose()  # the pump returns once its receiver is gone
