"""A redis.asyncio client configured for use from Trio through trio-asyncio.

dependencies.md §2: redis-py 8.1 retries every command 10 times with backoff by default, which
turns an outage into multi-second stalls; here a failed command is retried once, at once (enough to
ride over a dropped connection), and connecting and each reply are bounded by `io_timeout`.
The pool is a blocking one: with many sockets pushing at once, a call waits (up to `pool_timeout`)
for a free connection instead of failing with "Too many connections" at once. Every call crosses
the trio-asyncio bridge on this one thread (about 0.5 ms), so a burst queues there whatever the
pool size; `pool_timeout` is that queue's bound, not a network timeout.
Callers translate `redis.RedisError` into their own exception.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
import trio_asyncio
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff


@asynccontextmanager
async def open_redis(
    url: str, *, io_timeout: float = 0.5, pool_timeout: float = 2.0, max_connections: int = 32
) -> AsyncIterator[Redis]:
    """A client for `url` (`redis://host:port/db`) with its own pool, closed on exit.

    Must run inside `trio_asyncio.open_loop()` (dependencies.md §2 (b)). Connects lazily, so entering
    never blocks on the network; exiting closes the connections, shielded from cancellation so no
    socket is left to a ResourceWarning.
    """
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=pool_timeout,
        socket_timeout=io_timeout,
        socket_connect_timeout=io_timeout,
        retry=Retry(NoBackoff(), 1),
    )
    client = Redis.from_pool(pool)
    try:
        yield client
    finally:
        with trio.CancelScope(shield=True):
            await trio_asyncio.aio_as_trio(client.aclose)()
