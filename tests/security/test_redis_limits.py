"""The Redis limiter against a real private Redis (reliability B8, S11; spec issue §5.1)."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator

import pytest
import trio
import trio_asyncio
from redis.asyncio import Redis
from redis.exceptions import RedisError

from tests.security.test_gatekeeper import gatekeeper, guard_for, spam_until_blocked
from tests.services import RedisServer
from whispr.adapters.redis_client import open_redis
from whispr.adapters.redis_limits import RedisLimiter
from whispr.security.limits import (
    ALLOWED,
    Decision,
    FallbackLimiter,
    LimiterUnavailable,
    LimitsConfig,
    LocalLimiter,
    Rate,
)

pytestmark = pytest.mark.integration

LIMITS = LimitsConfig()


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_750_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def aio_loop() -> AsyncIterator[None]:
    async with trio_asyncio.open_loop():
        yield


async def keys_without_ttl(client: Redis) -> list[str]:
    """Every key whose TTL is not positive, found with SCAN (never KEYS)."""
    found = []
    async for key in trio_asyncio.aio_as_trio(client.scan_iter(count=1000)):
        if await trio_asyncio.aio_as_trio(client.pttl)(key) <= 0:
            found.append(key)
    return found


async def all_keys(client: Redis) -> list[bytes]:
    return [key async for key in trio_asyncio.aio_as_trio(client.scan_iter(count=1000))]


async def test_two_nodes_share_one_budget_under_concurrency(aio_loop: None, fresh_redis: RedisServer) -> None:
    clock = Clock()  # frozen: no refill during the burst, so the budget is exactly 100
    # pool_timeout: 300 calls queue on the trio-asyncio bridge; give a loaded 2-core CI box room.
    async with open_redis(fresh_redis.url, pool_timeout=30) as a, open_redis(fresh_redis.url, pool_timeout=30) as b:
        nodes = [RedisLimiter(a, clock), RedisLimiter(b, clock)]
        decisions: list[Decision] = []

        async def push(node: RedisLimiter) -> None:
            decisions.append(await node.hit(LIMITS.message_rate, "user:alice"))

        async with trio.open_nursery() as nursery:
            for i in range(300):  # 150 per node, all in flight at once
                nursery.start_soon(push, nodes[i % 2])
        assert len(decisions) == 300
        assert sum(d.allowed for d in decisions) == 100
        assert {d.retry_after_ms for d in decisions if not d.allowed} == {600}

        for node in nodes:  # and the other limits, so every kind of key exists
            await node.hit(LIMITS.connect_rate, "ip:203.0.113.7")
            await node.block("user:alice", 300)
        assert sorted(await all_keys(a)) == [  # one hash tag per subject: its keys share a cluster slot
            b"whispr:block:{user:alice}",
            b"whispr:limit:connect:{ip:203.0.113.7}",
            b"whispr:limit:message:{user:alice}",
        ]
        assert await keys_without_ttl(a) == []


async def test_token_bucket_boundary_on_redis(aio_loop: None, redis: RedisServer) -> None:
    clock = Clock()
    async with open_redis(redis.url) as client:
        limiter = RedisLimiter(client, clock)
        subject = "bucket-boundary"
        for _ in range(100):
            assert await limiter.hit(LIMITS.message_rate, subject) == ALLOWED  # exactly at the limit
        assert await limiter.hit(LIMITS.message_rate, subject) == Decision(False, 0.6)  # one over
        clock.now += 0.599
        assert not (await limiter.hit(LIMITS.message_rate, subject)).allowed
        clock.now += 0.001
        assert await limiter.hit(LIMITS.message_rate, subject) == ALLOWED
        assert await limiter.hit(LIMITS.message_rate, subject) == Decision(False, 0.6)
        ttl = await trio_asyncio.aio_as_trio(client.pttl)(f"whispr:limit:message:{{{subject}}}")
        assert 59_000 < ttl <= 60_000  # lives until the bucket is full again


async def test_sliding_window_boundary_on_redis(aio_loop: None, redis: RedisServer) -> None:
    clock = Clock()
    rate = Rate("window_boundary", 20, 300.0, "sliding_window")
    async with open_redis(redis.url) as client:
        limiter = RedisLimiter(client, clock)
        assert await limiter.hit(rate, "ip") == ALLOWED
        clock.now += 100
        for _ in range(19):
            assert await limiter.hit(rate, "ip") == ALLOWED  # 20 in the window
        assert await limiter.hit(rate, "ip") == Decision(False, 200.0)
        clock.now += 199.999999
        assert not (await limiter.hit(rate, "ip")).allowed
        clock.now += 0.000001
        assert await limiter.hit(rate, "ip") == ALLOWED
        assert await limiter.hit(rate, "ip") == Decision(False, 100.0)
        ttl = await trio_asyncio.aio_as_trio(client.pttl)("whispr:limit:window_boundary:{ip}")
        assert 299_000 < ttl <= 300_000


async def test_blocks_on_redis_only_lengthen(aio_loop: None, redis: RedisServer) -> None:
    async with open_redis(redis.url) as client:
        limiter = RedisLimiter(client)
        assert await limiter.blocked_for("ip:198.51.100.1") == 0.0
        await limiter.block("ip:198.51.100.1", 300)
        await limiter.block("ip:198.51.100.1", 5)
        assert 299 < await limiter.blocked_for("ip:198.51.100.1") <= 300
        await limiter.block("ip:198.51.100.1", 600)
        assert 599 < await limiter.blocked_for("ip:198.51.100.1") <= 600


@pytest.mark.parametrize("rate", [LIMITS.message_rate, LIMITS.connect_rate], ids=lambda r: r.algorithm)
async def test_a_block_set_by_one_node_refuses_the_next_hit_on_another_without_spending(
    aio_loop: None, redis: RedisServer, rate: Rate
) -> None:
    """contract.md §5: a block holds on every node; the hit's own script checks it (no extra round trip)."""
    subject = f"user:{uuid.uuid4().hex}"
    async with open_redis(redis.url) as a, open_redis(redis.url) as b:
        setter, other = RedisLimiter(a), RedisLimiter(b)
        assert await other.hit(rate, subject) == ALLOWED
        await setter.block(subject, 300)
        decision = await other.hit(rate, subject)
        assert not decision.allowed
        assert decision.blocked
        assert 299 < decision.retry_after <= 300  # what is left of the block
        state = await trio_asyncio.aio_as_trio(a.exists)(f"whispr:limit:{rate.name}:{{{subject}}}")
        await trio_asyncio.aio_as_trio(a.delete)(f"whispr:block:{{{subject}}}")
        assert state == 1
        spent = [(await other.hit(rate, subject)).allowed for _ in range(rate.limit)]
        assert spent == [True] * (rate.limit - 1) + [False]  # only the hit before the block was spent


async def test_redis_down_raises_limiter_unavailable_and_fallback_takes_over(
    aio_loop: None, fresh_redis: RedisServer
) -> None:
    async with open_redis(fresh_redis.url) as client:
        limiter = RedisLimiter(client)
        assert await limiter.hit(LIMITS.message_rate, "bob") == ALLOWED
        fresh_redis.kill()
        with pytest.raises(LimiterUnavailable) as info:
            await limiter.hit(LIMITS.message_rate, "bob")
        assert isinstance(info.value.__cause__, RedisError)
        with pytest.raises(LimiterUnavailable):
            await limiter.blocked_for("user:bob")
        with pytest.raises(LimiterUnavailable):
            await limiter.block("user:bob", 1)

        safe = FallbackLimiter(limiter, LocalLimiter(clock=Clock()))
        decisions = [await safe.hit(LIMITS.message_rate, "bob") for _ in range(101)]
        assert sum(d.allowed for d in decisions) == 100  # one budget per node, never none


class Counted:
    """A `Limiter` that counts the calls that reach the one it wraps, by method."""

    def __init__(self, inner: RedisLimiter) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()

    async def hit(self, rate: Rate, subject: str) -> Decision:
        self.calls["hit"] += 1
        return await self.inner.hit(rate, subject)

    async def block(self, subject: str, seconds: float) -> None:
        self.calls["block"] += 1
        await self.inner.block(subject, seconds)

    async def blocked_for(self, subject: str) -> float:
        self.calls["blocked_for"] += 1
        return await self.inner.blocked_for(subject)


async def test_a_spam_block_on_one_node_refuses_the_users_live_socket_on_another(
    aio_loop: None, fresh_redis: RedisServer
) -> None:
    """Two nodes (each a `FallbackLimiter` on its own client) share one Redis. The user spams on node
    a; their socket on node b, open since before the block, is refused `blocked` (close 1008) on its
    next send once the budget has refilled, with one Redis call per send as before."""
    clock = Clock()
    async with open_redis(fresh_redis.url) as a, open_redis(fresh_redis.url) as b:
        shared_b = Counted(RedisLimiter(b, clock))
        node_a = gatekeeper(FallbackLimiter(RedisLimiter(a, clock), LocalLimiter()))
        node_b = gatekeeper(FallbackLimiter(shared_b, LocalLimiter()))
        spammer, bystander = await guard_for(node_a), await guard_for(node_b)
        assert await bystander.check_message("hi") is None
        await spam_until_blocked(spammer, accepted=99)
        clock.now += 60  # the budget is full again
        shared_b.calls.clear()
        refused = await bystander.check_message("hi")
        assert refused is not None
        assert (refused.reason, refused.close_code) == ("blocked", 1008)
        assert 290_000 < (refused.retry_after_ms or 0) <= 300_000
        assert shared_b.calls == {"hit": 1}  # the block came with the send's own hit


async def test_warm_up_opens_the_connections_and_loads_the_scripts(aio_loop: None, fresh_redis: RedisServer) -> None:
    """What the first calls after a start would otherwise do inside the breaker (reliability.md E2)."""
    async with open_redis(fresh_redis.url) as client:
        assert isinstance(client, Redis)
        await RedisLimiter(client).warm_up(8)
        assert len(await trio_asyncio.aio_as_trio(client.client_list)()) == 8  # this call reuses one of them
        memory = await trio_asyncio.aio_as_trio(client.info)("memory")
        assert memory["number_of_cached_scripts"] == 3
        fresh_redis.kill()
        await RedisLimiter(client).warm_up(8)  # a Redis down at start is not an error here
