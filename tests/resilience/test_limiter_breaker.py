"""The shared limiter behind its circuit breaker (reliability.md S11, D2): a hung or dead Redis
degrades the cluster-wide budget to one budget per node, fast, and the shared one comes back.

The first test runs on Trio's virtual clock (times asserted there are exact, not measured); the
second hangs a real private Redis with SIGSTOP and prints its figures.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator

import pytest
import trio
import trio_asyncio

from tests.services import RedisServer
from whispr.adapters.redis_client import open_redis
from whispr.adapters.redis_limits import RedisLimiter
from whispr.observability import telemetry
from whispr.resilience import CircuitBreaker
from whispr.security.limits import PRIMARY_TIMEOUT, Decision, FallbackLimiter, LimiterUnavailable, LocalLimiter, Rate

MESSAGES = Rate("message", 100, 3600.0, "token_bucket")  # slow refill: budgets are exact counts


class Shared:
    """A shared limiter that works, hangs or fails on demand; `calls` counts the calls it received."""

    def __init__(self) -> None:
        self.local = LocalLimiter()
        self.mode = "up"
        self.calls = 0

    async def _enter(self) -> None:
        self.calls += 1
        if self.mode == "hung":
            await trio.sleep_forever()
        if self.mode == "down":
            raise LimiterUnavailable("down")

    async def hit(self, rate: Rate, subject: str) -> Decision:
        await self._enter()
        return await self.local.hit(rate, subject)

    async def block(self, subject: str, seconds: float) -> None:
        await self._enter()
        await self.local.block(subject, seconds)

    async def blocked_for(self, subject: str) -> float:
        await self._enter()
        return await self.local.blocked_for(subject)


async def test_a_hung_shared_limiter_costs_five_call_timeouts_then_nothing_until_its_trials_succeed(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="whispr.security")
    shared, local = Shared(), LocalLimiter()
    limiter = FallbackLimiter(shared, local)
    shared.mode = "hung"
    waits = []
    for _ in range(8):
        started = trio.current_time()
        assert (await limiter.hit(MESSAGES, "alice")).allowed
        waits.append(trio.current_time() - started)
    assert waits == [PRIMARY_TIMEOUT] * 5 + [0.0] * 3  # open after 5 timeouts: no call waits any more
    assert shared.calls == 5
    await limiter.block("user:alice", 60)  # held locally while the breaker is open
    assert await limiter.blocked_for("user:alice") == 60.0
    assert shared.calls == 5
    left = [(await local.hit(MESSAGES, "alice")).allowed for _ in range(93)]
    assert left == [True] * 92 + [False]  # the 8 hits were spent from the node's own budget

    await trio.sleep(30)  # contract.md §5: open 30 s, then 3 trial calls
    shared.mode = "up"
    for _ in range(4):
        await limiter.hit(MESSAGES, "bob")
    assert shared.calls == 9  # 3 trials closed the breaker, the 4th call went to the shared limiter too
    messages = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "whispr.security"]
    assert messages == [
        (
            logging.WARNING,
            "shared limiter unavailable, enforcing limits per node: redis_limits: hit took longer than 0.25s",
        ),
        (logging.INFO, "shared limiter available again"),
    ]


@pytest.fixture
async def aio_loop() -> AsyncIterator[None]:
    async with trio_asyncio.open_loop():
        yield


@pytest.mark.integration
@pytest.mark.slow
async def test_a_sigstopped_redis_degrades_to_the_node_budget_fast_and_recovers(
    aio_loop: None, fresh_redis: RedisServer
) -> None:
    """D2 for the limiter: SIGSTOP the shared Redis mid-traffic, then SIGCONT (reset shortened to 1 s)."""
    transitions: list[str] = []
    handler = f"test-limiter-breaker-{uuid.uuid4().hex}"
    telemetry.attach(
        handler,
        [telemetry.CIRCUIT_STATE],
        lambda e, m, md: transitions.append(str(md["state"])) if md["breaker"] == "redis_limits" else None,
    )
    try:
        async with open_redis(fresh_redis.url) as client, open_redis(fresh_redis.url) as other_client:
            breaker = CircuitBreaker(
                "redis_limits", call_timeout=PRIMARY_TIMEOUT, reset_timeout=1.0, failure_types=(LimiterUnavailable,)
            )
            limiter = FallbackLimiter(RedisLimiter(client), LocalLimiter(), breaker)
            other_node = RedisLimiter(other_client)
            subject = uuid.uuid4().hex
            assert (await limiter.hit(MESSAGES, subject)).allowed
            fresh_redis.pause()
            try:
                latencies = []
                decisions = []
                for _ in range(101):
                    started = trio.current_time()
                    decisions.append(await limiter.hit(MESSAGES, subject))
                    latencies.append(trio.current_time() - started)
                opened = transitions[:]
            finally:
                fresh_redis.resume()
            with trio.fail_after(30):  # a guard against hanging, not a timing assertion
                while transitions[-1:] != ["closed"]:
                    await limiter.hit(MESSAGES, subject)
                    await trio.sleep(0.05)  # a client's pace while the breaker waits out its reset
            # Shared again: the other node sees this node's hits on the shared budget.
            shared_left = [await other_node.hit(MESSAGES, subject) for _ in range(100)]
    finally:
        telemetry.detach(handler)

    slowest_after_open = max(latencies[5:])
    print(
        f"\nD2 (limiter) Redis SIGSTOPped: 101 hits\n"
        f"  first 5 hits: {', '.join(f'{t * 1000:.0f} ms' for t in latencies[:5])}"
        f" (each ≤ the {PRIMARY_TIMEOUT * 1000:.0f} ms call timeout + scheduling)\n"
        f"  hits 6-101 (breaker open, local budget): slowest {slowest_after_open * 1000:.2f} ms (target ≤ 50 ms)\n"
        f"  allowed while down: {sum(d.allowed for d in decisions)} of 101 (target: the node's own budget, 100)\n"
        f"  breaker transitions: {' → '.join(['closed', *transitions])}"
    )
    assert opened == ["open"]
    assert all(latency <= PRIMARY_TIMEOUT + 0.25 for latency in latencies[:5])
    assert slowest_after_open <= 0.05
    assert sum(d.allowed for d in decisions) == 100  # one budget per node, never none (S11)
    assert transitions == ["open", "half_open", "closed"]
    assert sum(d.allowed for d in shared_left) < 100  # this node's hits count on the shared budget again
