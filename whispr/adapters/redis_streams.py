"""`RedisStream`: the cluster's membership stream (`whispr.cluster.stream.ClusterStream`) on a Redis Stream.

Rules (dependencies.md §2; reliability.md §1.5):
- Appends are `XADD <stream> MAXLEN ~ <maxlen> * field value …`: the stream never grows past about
  `maxlen` entries, trimmed lazily by Redis in whole macro-nodes (cheap).
- Reads are `XREAD COUNT n BLOCK ms STREAMS <stream> <last id>` with the explicit id of the last entry
  delivered, never `$`: `$` means "whatever arrives after the server gets this command", so
  entries appended while a reconnect is under way would be lost.
- The read loop (the *pump*) runs entirely on the asyncio side and hands each read's records to a
  Trio memory channel (`send_nowait`, legal because trio-asyncio runs asyncio on the Trio thread),
  so the bridge is crossed once for the pump's whole life, not once per read. A full channel is
  polled every 10 ms rather than awaited (awaiting it would cross the bridge back).
- The pump re-raises a cancellation that redis-py swallowed (`redis_client.raise_if_cancelled`), so cancelling
  it always ends it.
- Every `redis.RedisError` (or, on a Redis Cluster, `RedisClusterException`) becomes
  `ClusterUnavailable`, raised (or, in the pump, sent) `from` it.
- On a Redis Cluster (a `redis+cluster://` URL, see `redis_client`) both commands touch only the
  stream's key, so they go to the master owning its slot and work unchanged.

Timeouts: the client comes from `redis_client.open_redis`, so connecting and every reply are bounded
by `io_timeout` and a failed command is retried once, at once. XREAD blocks for `io_timeout / 2`,
less than that socket timeout, so an answer always comes in time and a hung Redis (SIGSTOP) shows up
as a `TimeoutError` after `io_timeout`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import cast

import trio

from whispr.adapters.aio import run_aio
from whispr.adapters.redis_client import REDIS_ERRORS, RedisClient, open_redis, raise_if_cancelled
from whispr.cluster.stream import ClusterUnavailable, PumpItem, Record

__all__ = ["RedisStream", "open_redis_stream"]

_READ_COUNT = 1000  # entries per XREAD: one read drains a busy cluster's second of heartbeats
_FIRST_BACKOFF = 0.05
_FULL_POLL = 0.01  # seconds between tries to hand a read to a full channel
# XREAD's reply under RESP2 (open_redis's protocol): [[stream, [(id, {field: value}), …]]], bytes throughout.
_Reply = list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


class RedisStream:
    """One Redis Stream used as the membership log. Build it with `open_redis_stream`.

    Must be used inside `whispr.adapters.aio.open_bridge()`.
    """

    def __init__(self, client: RedisClient, name: str, *, maxlen: int, block: float) -> None:
        self._client = client
        self.name = name
        self._maxlen = maxlen
        self._block_ms = max(1, int(block * 1000))

    async def append(self, fields: Mapping[str, str]) -> str:
        """XADD with approximate MAXLEN; returns the new entry's id. One round trip; cancellable.

        Raises:
            ClusterUnavailable: Redis is unreachable or timed out (the entry may have been added).
        """
        try:
            return _text(await run_aio(self._xadd, dict(fields)))
        except REDIS_ERRORS as exc:
            raise ClusterUnavailable(f"XADD {self.name} failed: {type(exc).__name__}") from exc

    async def _xadd(self, fields: dict[str, str]) -> bytes | str:
        return await self._client.xadd(self.name, fields, maxlen=self._maxlen, approximate=True)  # type: ignore[arg-type]

    async def pump(self, after: str, send: trio.MemorySendChannel[PumpItem], *, max_backoff: float) -> None:
        """Send every entry after id `after` into `send`, forever (see `ClusterStream.pump`).

        Blocking: runs until cancelled, or returns once the receiving end of `send` is closed.
        Cancellable at any point (an XREAD cut short is harmless: the next one repeats it).

        Error handling: a failed XREAD is sent as `ClusterUnavailable`, then retried after a backoff
        that starts at 50 ms and doubles up to `max_backoff`; a successful read resets it.
        """
        await run_aio(self._pump, after, send, max_backoff)

    async def _pump(self, after: str, send: trio.MemorySendChannel[PumpItem], max_backoff: float) -> None:
        # asyncio side: awaits here are asyncio awaits; Trio is reached only through `send`.
        last = after
        backoff = _FIRST_BACKOFF
        failed = False
        while True:
            raise_if_cancelled()
            item: PumpItem
            try:
                reply = cast(
                    _Reply, await self._client.xread({self.name: last}, count=_READ_COUNT, block=self._block_ms)
                )
            except REDIS_ERRORS as exc:
                error = ClusterUnavailable(f"XREAD {self.name} failed: {type(exc).__name__}")
                error.__cause__ = exc
                item = error
            else:
                records = [
                    Record(_text(entry_id), {_text(k): _text(v) for k, v in fields.items()})
                    for _, entries in reply
                    for entry_id, fields in entries
                ]
                if records:
                    last = records[-1].id
                elif not failed:
                    continue  # an empty read only matters as the news that a failure is over
                item = records
                backoff = _FIRST_BACKOFF
            failed = isinstance(item, ClusterUnavailable)
            while True:
                try:
                    send.send_nowait(item)
                    break
                except trio.WouldBlock:
                    # Full: poll, rather than cross the bridge back with trio_as_aio(send.send).
                    await asyncio.sleep(_FULL_POLL)
                except trio.BrokenResourceError:
                    return  # the receiver is gone
            if failed:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, max_backoff)


@asynccontextmanager
async def open_redis_stream(url: str, name: str, *, maxlen: int, io_timeout: float = 0.5) -> AsyncIterator[RedisStream]:
    """A `RedisStream` on stream key `name` at `url`, with its own small pool, closed on exit.

    Must run inside `whispr.adapters.aio.open_bridge()`. Connects lazily: entering never blocks on
    the network, and an unreachable Redis shows up as `ClusterUnavailable` from the first call.
    """
    async with open_redis(url, io_timeout=io_timeout, max_connections=4) as client:
        yield RedisStream(client, name, maxlen=maxlen, block=io_timeout / 2)
