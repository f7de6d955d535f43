"""The shared limiter behind its circuit breaker (reliability.md S11, D2): a hung or dead Redis
degrades the cluster-wide budget to one budget per node, fast, and the shared one comes back.

The tests on Trio's virtual clock assert exact times (not measured); the others run a real private
Redis: one hangs it with SIGSTOP, one storms a healthy one from a busy node; both print their figures.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping

import pytest
import trio
import trio_asyncio

from tests.services import RedisServer
from whispr.adapters.redis_client import open_redis
from whispr.adapters.redis_limits import RedisLimiter
from whispr.observability import telemetry
from whispr.resilience import CircuitBreaker, State
from whispr.security.limits import (
    PRIMARY_QUEUE_TIMEOUT,
    PRIMARY_TIMEOUT,
    Decision,
    FallbackLimiter,
    LimiterUnavailable,
    LimitsConfig,
    LocalLimiter,
    Rate,
    ip_subject,
    user_subject,
)

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


class Pooled(Shared):
    """A healthy shared limiter behind a client pool of `connections`: each call holds a connection
    for `service` seconds, and calls beyond the pool wait for one (as redis-py's blocking pool does)."""

    def __init__(self, connections: int, service: float) -> None:
        super().__init__()
        self.pool = trio.CapacityLimiter(connections)
        self.service = service

    async def _enter(self) -> None:
        await super()._enter()
        async with self.pool:
            await trio.sleep(self.service)


async def storm(limiter: FallbackLimiter, calls: int) -> list[float]:
    """`calls` hits of distinct subjects started at once; how long each took."""
    waits: list[float] = []

    async def one(i: int) -> None:
        started = trio.current_time()
        assert (await limiter.hit(MESSAGES, f"ip:{i}")).allowed
        waits.append(trio.current_time() - started)

    async with trio.open_nursery() as nursery:
        for i in range(calls):
            nursery.start_soon(one, i)
    return waits


async def test_calls_queued_on_a_busy_node_do_not_open_the_breaker(autojump_clock: trio.abc.Clock) -> None:
    """A connect storm: 100 calls at once on a pool of 4 connections, each call 0.1 s. Each call
    needs 0.1 s of the dependency, but the queue would take 2.5 s: the queue is the node's, and only
    the 0.1 s may count against the breaker (reliability.md E2). The calls still queued after
    `PRIMARY_QUEUE_TIMEOUT` are answered by the node's own budget, and count neither way."""
    shared = Pooled(connections=4, service=0.1)
    breaker = CircuitBreaker("redis_limits", call_timeout=PRIMARY_TIMEOUT, failure_types=(LimiterUnavailable,))
    limiter = FallbackLimiter(shared, LocalLimiter(), breaker, max_in_flight=4)
    waits = await storm(limiter, 100)
    assert breaker.state is State.CLOSED
    assert breaker.statistics().consecutive_failures == 0
    assert shared.calls == 80  # 2 s of queue at 4 calls per 0.1 s got the shared budget's answer
    assert sorted(waits)[80:] == [pytest.approx(PRIMARY_QUEUE_TIMEOUT)] * 20  # then the node's own


async def test_a_hung_shared_limiter_still_opens_the_breaker_under_a_storm(autojump_clock: trio.abc.Clock) -> None:
    """The queue in front of the breaker does not slow the outage down: the first admitted calls
    time out, the breaker opens, and the queued calls are answered locally at once."""
    shared = Pooled(connections=4, service=0.1)
    shared.mode = "hung"
    breaker = CircuitBreaker("redis_limits", call_timeout=PRIMARY_TIMEOUT, failure_types=(LimiterUnavailable,))
    limiter = FallbackLimiter(shared, LocalLimiter(), breaker, max_in_flight=4)
    waits = await storm(limiter, 100)
    assert breaker.state is State.OPEN
    assert shared.calls == 8  # two waves of 4 admitted calls time out; the 5th failure opens it
    assert max(waits) == pytest.approx(2 * PRIMARY_TIMEOUT)


class Scripted(Shared):
    """Call number i waits `delays[i]` seconds, then answers; None: it hangs."""

    def __init__(self, delays: list[float | None]) -> None:
        super().__init__()
        self.delays = delays

    async def _enter(self) -> None:
        delay = self.delays[self.calls]
        self.calls += 1
        if delay is None:
            await trio.sleep_forever()
        await trio.sleep(delay)


async def test_a_late_success_after_the_breaker_opened_ends_no_outage(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """5 calls hang and open the breaker at 0.25 s; a 6th, admitted at 0.1 s, answers at 0.3 s. The
    outage is not over: one warning, and no "available again" until the breaker has closed."""
    caplog.set_level(logging.INFO, logger="whispr.security")
    shared = Scripted([None] * 5 + [0.2])
    limiter = FallbackLimiter(shared, LocalLimiter())

    async def late() -> None:
        await trio.sleep(0.1)
        await limiter.hit(MESSAGES, "late")

    async with trio.open_nursery() as nursery:
        for i in range(5):
            nursery.start_soon(limiter.hit, MESSAGES, f"hung-{i}")
        nursery.start_soon(late)
    await limiter.hit(MESSAGES, "after")  # refused by the open breaker
    assert shared.calls == 6
    messages = [r.getMessage() for r in caplog.records if r.name == "whispr.security"]
    assert messages == [
        "shared limiter unavailable, enforcing limits per node: redis_limits: hit took longer than 0.25s"
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


def spin(seconds: float) -> None:
    """Hold the CPU (and so the Trio loop) for `seconds`: the handshake and JWT work of a connect."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


@pytest.mark.integration
async def test_a_connect_storm_on_a_busy_node_keeps_the_shared_budget(aio_loop: None, fresh_redis: RedisServer) -> None:
    """reliability.md E2: 200 connects at once on one node, each the gatekeeper's two limiter calls
    around 1 ms of CPU, against a healthy Redis. Before admission, most calls queued for one of the
    client's 32 connections inside the breaker's 0.25 s and the breaker opened in 5 runs of 6."""
    outcomes: list[tuple[str, float]] = []
    transitions: list[str] = []
    handler = f"test-limiter-storm-{uuid.uuid4().hex}"

    def seen(event: str, measurements: Mapping[str, float], metadata: Mapping[str, object]) -> None:
        if metadata.get("breaker") == "redis_limits":
            transitions.append(str(metadata["state"]))
        if metadata.get("dependency") == "redis_limits":
            outcomes.append((str(metadata["outcome"]), measurements["duration"]))

    telemetry.attach(handler, [telemetry.CIRCUIT_STATE, telemetry.DEPENDENCY_CALL], seen)
    limits = LimitsConfig()
    run = uuid.uuid4().hex
    try:
        async with open_redis(fresh_redis.url) as client:
            limiter = FallbackLimiter(RedisLimiter(client), LocalLimiter())

            async def connect(i: int) -> None:
                spin(0.0005)
                assert (await limiter.hit(limits.connect_rate, ip_subject(f"{run}-{i}"))).allowed
                spin(0.0005)
                assert await limiter.blocked_for(user_subject(f"{run}-{i}")) == 0.0

            started = time.perf_counter()
            with trio.fail_after(60):  # a guard against hanging, not a timing assertion
                async with trio.open_nursery() as nursery:
                    for i in range(200):
                        nursery.start_soon(connect, i)
            storm_took = time.perf_counter() - started
    finally:
        telemetry.detach(handler)

    durations = sorted(duration for _, duration in outcomes)
    print(
        f"\nE2 (limiter) 200 connects at once on one busy node, healthy Redis: storm {storm_took * 1000:.0f} ms;"
        f" {len(outcomes)} of 400 calls admitted, {sum(o == 'ok' for o, _ in outcomes)} answered by Redis;"
        f" time inside the breaker p50"
        f" {durations[len(durations) // 2] * 1000:.1f} ms, max {durations[-1] * 1000:.1f} ms"
        f" (call timeout {PRIMARY_TIMEOUT * 1000:.0f} ms); breaker transitions: {transitions or 'none'}"
    )
    assert transitions == []  # the breaker stayed closed
    assert len(outcomes) == 400  # every call was admitted to the breaker: none waited 2 s for a slot
