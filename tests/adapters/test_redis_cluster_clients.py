"""The other Redis users on a private 3-master Redis Cluster (a `redis+cluster://` URL): the rate
limiter's scripts and blocks (one budget per subject across nodes, whichever master holds it) and
the membership stream (XADD / XREAD on the master owning the stream's key)."""

from __future__ import annotations

import uuid

import pytest
import trio
from redis.asyncio import RedisCluster

from tests.services import RedisClusterServers
from whispr.adapters.aio import open_bridge, run_aio
from whispr.adapters.redis_client import open_redis
from whispr.adapters.redis_limits import RedisLimiter
from whispr.adapters.redis_streams import open_redis_stream
from whispr.cluster.stream import ClusterUnavailable, PumpItem, Record
from whispr.security.limits import Decision, Rate

pytestmark = pytest.mark.integration


class Clock:
    """A wall clock frozen for the test: no refill during a burst, so a budget is exact."""

    def __init__(self) -> None:
        self.now = 1_750_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("algorithm", ["token_bucket", "sliding_window"])
async def test_two_nodes_share_one_budget_per_subject_on_every_master(
    redis_cluster: RedisClusterServers, algorithm: str
) -> None:
    rate = Rate(f"cluster_{uuid.uuid4().hex[:8]}", 10, 60.0, algorithm)  # type: ignore[arg-type]
    clock = Clock()
    with trio.fail_after(30):
        # io_timeout: 5 s, as a loaded 2-core box needs; this test is about the shared budget, not timeouts.
        async with (
            open_bridge(),
            open_redis(redis_cluster.url, io_timeout=5) as a,
            open_redis(redis_cluster.url, io_timeout=5) as b,
        ):
            assert isinstance(a, RedisCluster)
            await run_aio(a.initialize)
            # Two subjects whose keys live on each master.
            per_master: dict[str, list[str]] = {n.name: [] for n in a.get_primaries()}
            while min(len(s) for s in per_master.values()) < 2:
                subject = f"user:{uuid.uuid4().hex}"
                node = a.get_node_from_key(f"whispr:limit:{rate.name}:{{{subject}}}")  # as RedisLimiter keys it
                assert node is not None
                per_master[node.name].append(subject)
            nodes = [RedisLimiter(a, clock), RedisLimiter(b, clock)]
            subjects = [subject for found in per_master.values() for subject in found[:2]]
            decisions: dict[str, list[Decision]] = {subject: [] for subject in subjects}

            async def push(node: RedisLimiter, subject: str) -> None:
                decisions[subject].append(await node.hit(rate, subject))

            # 120 calls started at once, 60 per client: more than its 32 turns (the rest wait for one).
            async with trio.open_nursery() as nursery:
                for subject in subjects:
                    for i in range(20):  # 10 per node
                        nursery.start_soon(push, nodes[i % 2], subject)
            assert {s: sum(d.allowed for d in ds) for s, ds in decisions.items()} == dict.fromkeys(subjects, 10)


async def test_blocks_only_lengthen_on_the_cluster(redis_cluster: RedisClusterServers) -> None:
    subject = f"ip:{uuid.uuid4().hex}"
    with trio.fail_after(30):
        async with open_bridge(), open_redis(redis_cluster.url) as client:
            limiter = RedisLimiter(client)
            assert await limiter.blocked_for(subject) == 0.0
            await limiter.block(subject, 300)
            await limiter.block(subject, 5)
            assert 299 < await limiter.blocked_for(subject) <= 300


async def test_the_membership_stream_appends_and_pumps_in_order_on_the_cluster(
    redis_cluster: RedisClusterServers,
) -> None:
    name = f"whispr:test:{uuid.uuid4().hex}"
    with trio.fail_after(30):
        async with (
            open_bridge(),
            open_redis_stream(redis_cluster.url, name, maxlen=1000) as stream,
            trio.open_nursery() as nursery,
        ):
            first = await stream.append({"i": "0"})
            send, receive = trio.open_memory_channel[PumpItem](16)
            nursery.start_soon(lambda: stream.pump(first, send, max_backoff=0.1))
            for i in range(1, 100):
                await stream.append({"i": str(i)})
            records: list[Record] = []
            while len(records) < 99:
                item = await receive.receive()
                assert not isinstance(item, ClusterUnavailable)
                records.extend(item)
            assert [r.fields["i"] for r in records] == [str(i) for i in range(1, 100)]
            nursery.cancel_scope.cancel()
