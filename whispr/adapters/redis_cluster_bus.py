"""`RedisClusterBus`: the cluster bridge's pub/sub (`whispr.pubsub.cluster.Bus`) on a Redis Cluster.

Redis Cluster's sharded pub/sub (Redis 7: SPUBLISH / SSUBSCRIBE / SUNSUBSCRIBE) keeps a channel on
the shard that owns its name's hash slot, like a key: a publication is handled by that shard alone
instead of being broadcast over the cluster bus to every node (what plain PUBLISH does), so the
bridge's traffic is spread over the masters. Build it with `redis_pubsub.open_redis_bus` and a
`redis+cluster://` URL (`redis_client`).

Rules (those of `redis_pubsub`, plus):
- Publications: one cluster pipeline per batch (`SPUBLISH` per message), which redis-py splits into
  one pipeline per master; each channel's publications keep their order (same shard).
- The subscription is one dedicated connection per master, all opened by the pump, which reads them
  all (one asyncio reader each) and hands every reply to the Trio channel. Channels are subscribed
  one SSUBSCRIBE per hash slot (Redis refuses a multi-channel SSUBSCRIBE across slots, CROSSSLOT),
  all of a connection's in one write, on the master that owns the slot in the slot map read when
  the pump started (refreshed each time: a new pump follows a resharding or a failover).
- Any loss on any shard ends the whole pump with `PubSubUnavailable`, so the bridge's next `listen`
  subscribes everything again on every master and every confirmation resyncs its topic from the
  store (reliability.md §1.5: a lost subscription costs latency, never a message). A loss is:
  a connection error; an error reply (MOVED: the slot moved since the map was read); a
  `sunsubscribe` that we did not ask for (Redis unsubscribes a slot's channels when the slot
  leaves the master); a `subscribe` for a channel whose slot the map gives to a master we hold no
  connection to; or a master that does not answer a PING within `_PROBE_INTERVAL` (the bridge's
  heartbeat only proves the shard its own channel lives on; this proves every shard).
- Every `redis.RedisError`, `RedisClusterException` and `OSError` becomes `PubSubUnavailable`
  (in `RedisBus.listen` / `publish`).
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any

import trio
from redis.asyncio import RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError

from whispr.adapters.aio import run_aio
from whispr.adapters.redis_client import REDIS_ERRORS, connection_race_as_error, raise_if_cancelled
from whispr.adapters.redis_pubsub import RedisBus
from whispr.pubsub.cluster import Inbound

__all__ = ["RedisClusterBus"]

_SUBSCRIBE_CHUNK = 1_000  # channels per SSUBSCRIBE (all of one slot)
_PROBE_INTERVAL = 1.0  # seconds between PINGs on each shard connection; one must be answered before the next
_PONGS = (b"PONG", [b"pong", b""])  # RESP3 (a plain reply), RESP2 (in subscribed mode, an array)


class _ShardLost(RedisConnectionError):
    """A shard connection is up but no longer carries what we subscribed (see the module docstring)."""


class RedisClusterBus(RedisBus):
    """Sharded pub/sub over every master of a Redis Cluster. Build with `open_redis_bus("redis+cluster://…")`.

    Must be used inside `whispr.adapters.aio.open_bridge()`.
    """

    def __init__(self, client: RedisCluster) -> None:
        super().__init__(client, sharded=True)
        self._cluster = client
        self._shards: dict[str, AbstractConnection] = {}  # master name -> the pump's connection, while it runs
        self._leaving: Counter[bytes] = Counter()  # sunsubscribe confirmations we asked for and have not seen
        self._lost: asyncio.Event | None = None  # set by `subscribe` to end the pump (a slot moved)

    async def _publish(self, messages: Sequence[tuple[str, bytes]]) -> None:
        with connection_race_as_error():  # a cluster pipeline does not go through execute_command
            await super()._publish(messages)

    @property
    def shards(self) -> int:
        """Masters the running pump holds a subscription connection to (0 when none runs)."""
        return len(self._shards)

    async def _pump(self, channels: Callable[[], Collection[str]], send: trio.MemorySendChannel[Inbound]) -> None:
        # asyncio side: awaits here are asyncio awaits; Trio is reached only through `send`.
        cluster = self._cluster
        await cluster.initialize()  # the first time: read the slot map from a seed
        await cluster.nodes_manager.initialize()  # every time: the map as it is now
        raise_if_cancelled()
        connections: dict[str, AbstractConnection] = {
            node.name: node.connection_class(**node.connection_kwargs) for node in cluster.get_primaries()
        }
        lost = asyncio.Event()
        tasks: list[asyncio.Task[None]] = []
        try:
            for connection in connections.values():  # one by one: a failure leaves no connect running
                await connection.connect()  # type: ignore[no-untyped-call]
            raise_if_cancelled()
            # No await between publishing the connections and reading `channels()` (as in RedisBus).
            self._shards, self._lost = connections, lost
            self._leaving.clear()
            await self._send_grouped(self._subscribe_command, list(channels()))
            raise_if_cancelled()
            unanswered: set[str] = set()
            tasks = [asyncio.ensure_future(self._read(n, c, send, unanswered)) for n, c in connections.items()]
            tasks.append(asyncio.ensure_future(self._probe(connections, unanswered)))
            tasks.append(asyncio.ensure_future(self._until(lost)))
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # the first failure, if any (a reader only returns once `send` is closed)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self._shards is connections:
                self._shards, self._lost = {}, None
            await asyncio.gather(*(c.disconnect(nowait=True) for c in connections.values()))

    async def _read(
        self, name: str, connection: AbstractConnection, send: trio.MemorySendChannel[Inbound], unanswered: set[str]
    ) -> None:
        while True:
            reply: Any = await connection.read_response(timeout=math.inf, push_request=True)
            if reply in _PONGS:
                unanswered.discard(name)
                continue
            kind, channel = reply[0], reply[1]
            if kind == b"sunsubscribe":
                if self._leaving[channel] <= 0:
                    raise _ShardLost(f"{name} dropped the subscription to {channel!r} (its slot moved)")
                self._leaving[channel] -= 1
            try:
                send.send_nowait((kind, channel, reply[2]))
            except trio.WouldBlock:
                self._dropped += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return

    @staticmethod
    async def _probe(connections: dict[str, AbstractConnection], unanswered: set[str]) -> None:
        while True:
            if unanswered:
                raise _ShardLost(f"{', '.join(sorted(unanswered))} did not answer PING within {_PROBE_INTERVAL}s")
            unanswered.update(connections)
            for connection in connections.values():
                await connection.send_command("PING")
            await asyncio.sleep(_PROBE_INTERVAL)

    @staticmethod
    async def _until(lost: asyncio.Event) -> None:
        await lost.wait()
        raise _ShardLost("the slot map changed under the subscription")

    async def _send_grouped(self, command: str, channels: Iterable[str]) -> None:
        """Send `command` for `channels` on the connections of the masters owning their slots, one
        command per slot (up to `_SUBSCRIBE_CHUNK` channels), one write per connection. A channel
        whose master has no connection here ends the pump (`_lost`)."""
        by_master: dict[str, dict[int, list[str]]] = {}
        for channel in channels:
            try:
                node = self._cluster.get_node_from_key(channel)
            except REDIS_ERRORS:
                node = None  # the slot is not covered: as good as moved
            master = "" if node is None else node.name
            if master not in self._shards:
                if self._lost is not None:
                    self._lost.set()
                return
            by_master.setdefault(master, {}).setdefault(self._cluster.keyslot(channel), []).append(channel)
        for master, slots in by_master.items():
            commands = [
                (command, *group[start : start + _SUBSCRIBE_CHUNK])
                for group in slots.values()
                for start in range(0, len(group), _SUBSCRIBE_CHUNK)
            ]
            if command == self._unsubscribe_command:
                self._leaving.update(channel.encode() for group in slots.values() for channel in group)
            connection = self._shards[master]
            await connection.send_packed_command(connection.pack_commands(commands))

    async def _send(self, command: str, channels: Sequence[str]) -> None:
        if not self._shards or not channels:
            await trio.lowlevel.checkpoint()
            return
        try:
            await run_aio(self._send_grouped, command, channels)
        except (*REDIS_ERRORS, OSError):
            return  # the pump notices the broken connection and the next one subscribes everything
