"""A redis.asyncio client configured for use from Trio through trio-asyncio: one server, or a Redis Cluster.

dependencies.md §2: redis-py 8.1 retries every command 10 times with backoff by default, which
turns an outage into multi-second stalls; here a failed command is retried once, at once (enough to
ride over a dropped connection), and connecting and each reply are bounded by `io_timeout`.
The pool is a blocking one: with many sockets pushing at once, a call waits (up to `pool_timeout`)
for a free connection instead of failing with "Too many connections" at once. Every call crosses
the trio-asyncio bridge on this one thread (about 0.5 ms), so a burst queues there whatever the
pool size; `pool_timeout` is that queue's bound, not a network timeout.

Redis Cluster is chosen by the URL (the README's configuration table):
`redis+cluster://[user:password@]host:port[,host:port…]`, a seed list of cluster nodes (one
reachable seed is enough; the client learns the others and the slot map from it). The client is a
`redis.asyncio.RedisCluster`: each command goes to the master owning its key's slot, and a MOVED
reply or a lost node refreshes the slot map. Its per-node pools do not block (past
`max_connections` to one master a call fails at once, `MaxConnectionsError`: measured, 144 of
240 concurrent calls with 32 per master), so the client admits `max_connections` calls at a time
in all and makes the others wait, up to `pool_timeout`, as the blocking pool does (0 of 240 failed).
The slot map is read once on entering: concurrent first calls that each start reading it race in
redis-py 8.1 (see `connection_race_as_error`). Lua scripts run with EVAL, not EVALSHA: on NOSCRIPT
(a new or restarted master) redis-py loads the script on every master at once, a fan-out that
failed calls under concurrency in the same runs; EVAL needs no loading and costs only the
script's text per call (under 1 KB).
Cluster mode has only database 0 and no TLS here.

Callers translate `REDIS_ERRORS` into their own exception: the cluster client also raises
`RedisClusterException`, which is not a `RedisError` (e.g. "no reachable seed", "slot not covered").
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from typing import Any

import trio
import trio_asyncio
from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError
from redis.maint_notifications import MaintNotificationsConfig
from redis.typing import EncodableT

from whispr.config import is_cluster_url, parse_cluster_url

__all__ = ["REDIS_ERRORS", "RedisClient", "connection_race_as_error", "open_redis", "raise_if_cancelled"]

REDIS_ERRORS = (RedisError, RedisClusterException)
"""Everything redis-py raises for a Redis (or Redis Cluster) failure."""

RedisClient = Redis | RedisCluster


class _EvalScript:
    """What `register_script` returns on a cluster: the script, run with EVAL on its key's master."""

    def __init__(self, client: RedisCluster, script: str) -> None:
        self._client = client
        self._script = script

    async def __call__(self, keys: Sequence[str] = (), args: Sequence[EncodableT] = ()) -> Any:
        return await self._client.eval(self._script, len(keys), *keys, *args)


@contextmanager
def connection_race_as_error() -> Iterator[None]:
    """Turn redis-py 8.1's cluster connection race into the `ConnectionError` it is.

    Measured here: when calls start at once on a client that has not read its slot map yet, a
    connection one of them is opening gets closed under it, and its handshake fails with
    `AttributeError: 'NoneType' object has no attribute 'writelines'` (1 test run in 4 with 20
    concurrent first calls on the loaded 2-core box). `open_redis` reads the slot map first, which
    removed it in the runs here; re-reading the map after an error may still hit it. Left alone it
    would escape every caller's `REDIS_ERRORS` handling.
    """
    try:
        yield
    except AttributeError as exc:
        raise RedisConnectionError(f"connection closed while it was being opened: {exc}") from exc


class _ClusterClient(RedisCluster):
    """A `RedisCluster` that admits `max_connections` calls at a time (the others wait up to
    `pool_timeout`), runs scripts with EVAL, and reports its connection race as a `ConnectionError`
    (see the module docstring and `connection_race_as_error`)."""

    def __init__(self, *, pool_timeout: float, max_connections: int, **kwargs: Any) -> None:
        super().__init__(max_connections=max_connections, **kwargs)
        self._turns = asyncio.Semaphore(max_connections)
        self._pool_timeout = pool_timeout

    def register_script(self, script: str) -> _EvalScript:  # type: ignore[override]
        return _EvalScript(self, script)

    async def execute_command(self, *args: EncodableT, **kwargs: Any) -> Any:
        try:
            async with asyncio.timeout(self._pool_timeout):
                await self._turns.acquire()
        except TimeoutError:
            raise RedisConnectionError(f"no free connection within {self._pool_timeout}s") from None
        try:
            with connection_race_as_error():
                return await super().execute_command(*args, **kwargs)
        finally:
            self._turns.release()


def raise_if_cancelled() -> None:
    """Re-raise a cancellation that redis-py swallowed (call it on the asyncio side, after an await).

    Measured here (redis 8.1, Python 3.11): a cancel that lands while XREAD BLOCK is waiting is
    sometimes absorbed by the client's read timeout handling, and XREAD returns `[]` as if its
    block had merely expired; one that lands while the cluster client refreshes its slot map, or
    while a command is written (`send_packed_command`), is sometimes absorbed too. A pump would then run on forever and its Trio caller
    would never finish cancelling. The task's `cancelling()` count still says a cancel was asked for.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


@asynccontextmanager
async def open_redis(
    url: str, *, io_timeout: float = 0.5, pool_timeout: float = 2.0, max_connections: int = 32
) -> AsyncIterator[RedisClient]:
    """A client for `url` (`redis://host:port/db`, or `redis+cluster://…`: see above) with its own
    pool(s), closed on exit.

    Must run inside `trio_asyncio.open_loop()` (dependencies.md §2 (b)). Connects lazily, so entering
    never blocks on the network, except that a cluster client reads the slot map on entering (up to
    `io_timeout` per seed; an unreachable cluster is not an error there); exiting closes the
    connections, shielded from cancellation so no socket is left to a ResourceWarning.

    Raises:
        ValueError: a malformed cluster URL (see `whispr.config.parse_cluster_url`).
    """
    client: RedisClient
    if is_cluster_url(url):
        seeds, user, password = parse_cluster_url(url)
        client = _ClusterClient(
            pool_timeout=pool_timeout,
            # Redis Cluster 7 has no maintenance notifications: don't ask on every new connection.
            maint_notifications_config=MaintNotificationsConfig(enabled=False),
            startup_nodes=[ClusterNode(host, port) for host, port in seeds],
            username=user,
            password=password,
            max_connections=max_connections,
            socket_timeout=io_timeout,
            socket_connect_timeout=io_timeout,
            retry=Retry(NoBackoff(), 1),
        )
        # Read the slot map now, once: concurrent first calls each starting that read race in redis-py
        # 8.1 (see `connection_race_as_error`; measured: 1 test run in 4 failed a call, 0 in 8 after
        # this). If the cluster is unreachable, the first call tries again.
        with suppress(*REDIS_ERRORS, OSError):
            await trio_asyncio.aio_as_trio(client.initialize)()
    else:
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
