"""`RedisBus`: the cluster bridge's pub/sub (`whispr.pubsub.cluster.Bus`) on one Redis server.

Rules (dependencies.md §2; reliability.md §1.5, §1.6):
- Publications go out as one pipeline per batch (`PUBLISH` per message, no MULTI): one bridge
  crossing and one round trip whatever the batch size. The pool comes from
  `redis_client.open_redis`: a reply is bounded by `io_timeout`, a failed command is retried once.
- The subscription runs on its own connection, made here and owned by the *pump*: an asyncio
  coroutine that reads replies forever and hands each one to a Trio memory channel with
  `send_nowait` (legal: trio-asyncio runs asyncio on the Trio thread). The bridge is crossed once
  per connection, not per message.
- redis-py's `PubSub` object is not used: on a lost connection it reconnects and resubscribes
  silently, and whatever was published in between is lost without a trace. Here a lost connection
  ends the pump with `PubSubUnavailable`; the caller makes a new one, which subscribes everything
  again, and every `subscribe` confirmation it gets tells it what to read back from the store.
- redis-py 8 speaks RESP3 by default, where confirmations and publications are *push* replies: the
  pump reads with `push_request=True`, or they would go to the parser's push handler instead.
- A blocking read has no timeout (Redis may be silent for long): liveness is the caller's
  heartbeat, and a dead connection is dropped by cancelling the pump.
- Every `redis.RedisError` (and `OSError`) becomes `PubSubUnavailable`, raised `from` it.

`sharded=True` uses SPUBLISH / SSUBSCRIBE / SUNSUBSCRIBE instead (Redis 7 sharded pub/sub) against
one server. Redis Cluster (several shards) is `redis_cluster_bus.RedisClusterBus`, which
`open_redis_bus` returns for a `redis+cluster://` URL.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection

from whispr.adapters.aio import run_aio
from whispr.adapters.redis_client import REDIS_ERRORS, RedisClient, open_redis, raise_if_cancelled
from whispr.config import is_cluster_url
from whispr.pubsub.cluster import Inbound, PubSubUnavailable

__all__ = ["RedisBus", "open_redis_bus"]

_SUBSCRIBE_CHUNK = 1_000  # channels per SUBSCRIBE command after a (re)connect


class RedisBus:
    """Publish through `client`'s pool; subscribe on a dedicated connection. Build with `open_redis_bus`.

    Must be used inside `whispr.adapters.aio.open_bridge()`.
    """

    def __init__(self, client: RedisClient, *, sharded: bool = False) -> None:
        self._client = client
        self._publish_command = "SPUBLISH" if sharded else "PUBLISH"
        self._subscribe_command = "SSUBSCRIBE" if sharded else "SUBSCRIBE"
        self._unsubscribe_command = "SUNSUBSCRIBE" if sharded else "UNSUBSCRIBE"
        self._connection: AbstractConnection | None = None  # the pump's, while it runs
        self._dropped = 0

    @property
    def inbound_dropped(self) -> int:
        """Received items dropped because the Trio channel was full."""
        return self._dropped

    async def publish(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """Publish every (channel, data) in one pipeline. One round trip; cancellable.

        Raises:
            PubSubUnavailable: Redis is unreachable, failed or timed out (some may have gone out).
        """
        try:
            await run_aio(self._publish, messages)
        except (*REDIS_ERRORS, OSError) as exc:
            raise PubSubUnavailable(f"{self._publish_command} failed: {type(exc).__name__}: {exc}") from exc

    async def _publish(self, messages: Sequence[tuple[str, bytes]]) -> None:
        async with self._client.pipeline(transaction=False) as pipe:
            for channel, data in messages:
                pipe.execute_command(self._publish_command, channel, data)
            await pipe.execute()

    async def listen(self, channels: Callable[[], Collection[str]], send: trio.MemorySendChannel[Inbound]) -> None:
        """Connect, subscribe to `channels()`, and pump every reply into `send` (see `Bus.listen`).

        Blocking until the connection fails or the caller cancels. Returns if `send` is closed.

        Raises:
            PubSubUnavailable: could not connect, or the connection was lost.
        """
        try:
            await run_aio(self._pump, channels, send)
        except (*REDIS_ERRORS, OSError) as exc:
            raise PubSubUnavailable(f"subscription failed: {type(exc).__name__}: {exc}") from exc

    async def _pump(self, channels: Callable[[], Collection[str]], send: trio.MemorySendChannel[Inbound]) -> None:
        # asyncio side: awaits here are asyncio awaits; Trio is reached only through `send`.
        assert isinstance(self._client, Redis)  # RedisClusterBus has its own pump
        pool = self._client.connection_pool
        connection: AbstractConnection = pool.connection_class(**pool.connection_kwargs)
        try:
            await connection.connect()  # type: ignore[no-untyped-call]
            # No await between becoming the current connection and reading `channels()`: a channel
            # added after this point is sent by `subscribe` on this connection, one added before
            # is in the list.
            self._connection = connection
            wanted = list(channels())
            for start in range(0, len(wanted), _SUBSCRIBE_CHUNK):
                await connection.send_command(self._subscribe_command, *wanted[start : start + _SUBSCRIBE_CHUNK])
            raise_if_cancelled()
            while True:
                reply: Any = await connection.read_response(timeout=math.inf, push_request=True)
                try:
                    send.send_nowait((reply[0], reply[1], reply[2]))
                except trio.WouldBlock:
                    self._dropped += 1
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
        finally:
            if self._connection is connection:
                self._connection = None
            await connection.disconnect(nowait=True)

    async def subscribe(self, channels: Sequence[str]) -> None:
        """Subscribe the pump's connection to `channels` (nothing if no pump runs). Never raises for a
        connection problem: the pump notices, and its next connection subscribes everything."""
        await self._send(self._subscribe_command, channels)

    async def unsubscribe(self, channels: Sequence[str]) -> None:
        """Unsubscribe the pump's connection from `channels`; as `subscribe`."""
        await self._send(self._unsubscribe_command, channels)

    async def _send(self, command: str, channels: Sequence[str]) -> None:
        connection = self._connection
        if connection is None or not channels:
            await trio.lowlevel.checkpoint()
            return
        for start in range(0, len(channels), _SUBSCRIBE_CHUNK):
            try:
                await run_aio(connection.send_command, command, *channels[start : start + _SUBSCRIBE_CHUNK])
            except (*REDIS_ERRORS, OSError):
                return


@asynccontextmanager
async def open_redis_bus(
    url: str, *, io_timeout: float = 0.5, sharded: bool = False, max_connections: int = 4
) -> AsyncIterator[RedisBus]:
    """A `RedisBus` for `url` (`redis://host:port/db`) with its own small pool, closed on exit; for
    `redis+cluster://…` a `RedisClusterBus` (always sharded) with a small pool per node.

    Must run inside `whispr.adapters.aio.open_bridge()`. Connects lazily: entering never blocks on
    the network, and an unreachable Redis shows up as `PubSubUnavailable` from the first call.

    Raises:
        ValueError: a malformed cluster URL.
    """
    async with open_redis(url, io_timeout=io_timeout, max_connections=max_connections) as client:
        if is_cluster_url(url):
            # Imported here: redis_cluster_bus subclasses RedisBus, so a top-level import would cycle.
            from whispr.adapters.redis_cluster_bus import RedisClusterBus

            assert not isinstance(client, Redis)
            yield RedisClusterBus(client)
        else:
            yield RedisBus(client, sharded=sharded)
