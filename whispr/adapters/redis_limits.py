"""The Redis backend of `whispr.security.limits.Limiter`: one budget per key for the whole cluster.

Rules (reliability B8, S11; spec issue §5.1):
- Each operation is one Lua script or one command, so it is atomic: concurrent hits from any number
  of nodes never overshoot a limit (the spec's GET-then-INCR does).
- Every key is written together with its TTL in that same atomic step, so no key is ever left
  without one (a crash between INCR and EXPIRE would block a user forever).
- The arithmetic is that of `limits.TokenBucket` and `limits.SlidingWindow`, on integer
  microseconds of the injected clock (default: wall time, shared by all nodes through NTP; a node
  whose clock lags only sees slightly fewer tokens). Blocks are Redis key TTLs, i.e. real time.
- Every `redis.RedisError` (on a Redis Cluster also `RedisClusterException`) becomes
  `LimiterUnavailable`, raised from it.
- A hit on a blocked subject is refused by the hit's own script (contract.md §5: a block holds on
  every node, for every send), so enforcing blocks costs no round trip of its own.
- Redis Cluster works unchanged: every script and command touches the keys of one subject, which
  share the subject as their hash tag, so they live in one slot and run on its master.

Keys: `whispr:limit:<rate name>:{<subject>}` (string or sorted set), `whispr:block:{<subject>}` (string).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import trio_asyncio

from whispr.adapters.aio import run_aio
from whispr.adapters.redis_client import REDIS_ERRORS, RedisClient
from whispr.security.limits import ALLOWED, MICROS, Decision, LimiterUnavailable, Rate

# Every hit script: KEYS[1] its state, KEYS[2] the subject's block. Returns {blocked, wait}:
# {1, ms left on the block} (nothing spent), else {0, 0} when allowed or {0, µs to wait} when refused.
_REFUSE_IF_BLOCKED = """
local blocked = redis.call('PTTL', KEYS[2])
if blocked > 0 then
  return {1, blocked}
end
"""

# GCRA (limits.TokenBucket). ARGV: now_us, interval_us, burst_us.
# The key lives exactly until the bucket is full again.
_TOKEN_BUCKET = (
    _REFUSE_IF_BLOCKED
    + """
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now) + interval
if tat - now > burst then
  return {0, tat - burst - now}
end
redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000))
return {0, 0}
"""
)

# Sliding window log (limits.SlidingWindow); KEYS[1]: sorted set of accepted hit times.
# ARGV: now_us, period_us, limit, a nonce that keeps members unique.
_SLIDING_WINDOW = (
    _REFUSE_IF_BLOCKED
    + """
local now = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now - period))
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, tonumber(oldest[2]) + period - now}
end
redis.call('ZADD', KEYS[1], string.format('%.0f', now), ARGV[4])
redis.call('PEXPIRE', KEYS[1], math.ceil(period / 1000))
return {0, 0}
"""
)

# KEYS: block. ARGV: ms. Only ever lengthens a block; value and TTL are set by one SET.
_BLOCK = """
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
end
return 0
"""


class RedisLimiter:
    """`Limiter` on a shared Redis. Build one per node on a client from `redis_client.open_redis`.

    Every method is one round trip across the trio-asyncio bridge (about 0.5 ms), bounded by the
    client's socket timeout; cancellable (a cancelled script has run entirely or not at all).
    Must be used inside `trio_asyncio.open_loop()`.
    """

    def __init__(self, client: RedisClient, clock: Callable[[], float] = time.time) -> None:
        self._client = client
        self._clock = clock
        self._token_bucket = client.register_script(_TOKEN_BUCKET)
        self._sliding_window = client.register_script(_SLIDING_WINDOW)
        self._block = client.register_script(_BLOCK)

    async def hit(self, rate: Rate, subject: str) -> Decision:
        """See `Limiter.hit` (a blocked subject included). Raises `LimiterUnavailable` when Redis fails."""
        keys = [f"whispr:limit:{rate.name}:{{{subject}}}", _block_key(subject)]
        now = round(self._clock() * MICROS)
        if rate.algorithm == "token_bucket":
            args: list[int | str] = [now, rate.interval_us, rate.interval_us * rate.limit]
            blocked, wait = await self._run(self._token_bucket, keys, args)
        else:
            args = [now, rate.period_us, rate.limit, os.urandom(8).hex()]
            blocked, wait = await self._run(self._sliding_window, keys, args)
        if blocked:
            return Decision(False, wait / 1000, blocked=True)
        return ALLOWED if wait == 0 else Decision(False, wait / MICROS)

    async def warm_up(self, connections: int) -> None:
        """Open `connections` of the client's pooled connections and load the scripts into Redis.

        Call it once before the node accepts sockets: the first calls after a start (reliability.md
        E2, E5: every device reconnects at once) would otherwise each open a connection and, on
        NOSCRIPT, load their script, several round trips on a busy loop inside the breaker's call
        timeout. Blocking: a round trip per connection (concurrently) and one per script, each
        bounded by the client's socket timeout. Cancellable. Never raises: whether Redis is up is
        for the breaker to find out, on the calls that need it.
        """

        async def warm() -> None:
            await asyncio.gather(*(self._client.ping() for _ in range(connections)), return_exceptions=True)
            for script in (_TOKEN_BUCKET, _SLIDING_WINDOW, _BLOCK):
                await self._client.script_load(script)

        with contextlib.suppress(*REDIS_ERRORS):
            await run_aio(warm)

    async def block(self, subject: str, seconds: float) -> None:
        """See `Limiter.block`. Raises `LimiterUnavailable` when Redis fails."""
        await self._run(self._block, [_block_key(subject)], [max(1, round(seconds * 1000))])

    async def blocked_for(self, subject: str) -> float:
        """See `Limiter.blocked_for`. Raises `LimiterUnavailable` when Redis fails."""
        try:
            ms = await trio_asyncio.aio_as_trio(self._client.pttl)(_block_key(subject))
        except REDIS_ERRORS as exc:
            raise LimiterUnavailable(f"redis PTTL failed: {exc}") from exc
        return ms / 1000 if ms > 0 else 0.0

    async def _run(self, script: object, keys: list[str], args: Sequence[int | str]) -> Any:
        try:
            return await trio_asyncio.aio_as_trio(script)(keys=keys, args=args)
        except REDIS_ERRORS as exc:
            raise LimiterUnavailable(f"redis script failed: {exc}") from exc


def _block_key(subject: str) -> str:
    return f"whispr:block:{{{subject}}}"
