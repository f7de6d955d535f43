"""`ClusterBridge`: the node's PubSub and live delivery, extended across nodes through Redis pub/sub.

Rules
-----
* Redis pub/sub is at-most-once (reliability.md §1.5): it only saves store reads, it never decides
  what exists. Every entry that must reach a device is in the store and numbered (a conversation
  seq, an inbox seq); what Redis loses is read back from the store after the feed's head
  (`whispr.delivery.live`), so a lost publication costs latency, never a message.
* One Redis channel per topic, `<prefix>:t:<topic>`, subscribed while the topic has a local
  subscriber: SUBSCRIBE when `PubSub` reports the first one, UNSUBSCRIBE after the last. Plus three
  fixed channels: `<prefix>:n:<node id>` (this node's liveness heartbeat), `<prefix>:ctl`
  (cluster-wide resync requests) and `<prefix>:presence` (presence replication,
  `whispr.presence.replication`, which is also told to resync on a reconnect or lost publications).
* Every local broadcast is published, whatever the remote interest: a PUBLISH nobody listens to
  costs Redis one dict lookup, and a node-side "remote interest" cache would be stale exactly when a
  node has just subscribed, which is when it must not miss anything. One PUBLISH per broadcast;
  everything queued during one publication goes out as the next one, in one pipeline (one bridge
  crossing and one round trip per tick, however many broadcasts).
* The receiving node decodes each publication once (one `json.loads`) and fans it out locally with
  `PubSub.broadcast_local`, which serializes once per serializer and frames once (encode-once).
  Its own publications come back on channels it subscribes to: they are skipped by origin.

Payload (JSON object, `v` = 1; unknown versions and kinds are skipped and counted, so a rolling
deploy never crashes a reader):

| k | meaning | fields |
|---|---|---|
| `b` | a PubSub broadcast | `t` topic, `e` event, `p` payload (`bin`: 1 if it is base64 bytes), `d`: 1 if droppable |
| `m` | a committed conversation entry | `t` topic, `s` seq, `p` the `new_message` payload |
| `p` | poke: the topic's stream has new entries (a `user:` inbox; its seq is not known here) | `t` |
| `r` | membership revoked | `t`, `c` conversation id, `u` user id |
| `h` | heartbeat (on the node's own channel) | `i` counter |
| `s` | resync request (on `ctl`): the sender lost publications | |
| `x` | disconnect (on `ctl`): a user's sockets, or one device's (a kick, a deactivation, or that device connected elsewhere) | `u` user id, `d` device id or null |
| `y` | presence replication (on `presence`) | `y` and the fields of `whispr.presence.replication` |

Every payload has `v`, `k` and `o` (the origin node id).

Resync triggers (each pulls feeds from the store after their head; telemetry `PUBSUB_RESYNC`):
* a `subscribe` confirmation for a topic channel: that topic (the first one closes the window
  between the feed going live and the subscription taking effect; any later one is a resubscribe,
  after which whatever was published in the gap is read back);
* a heartbeat that was published but not received within 2 × `heartbeat_interval`: every feed,
  and the listener's connection is dropped and made again (a half-open subscription);
* no heartbeat received for 2 × `heartbeat_interval` (Redis down, hung, or unreachable): the node is
  *degraded*; every feed is pulled at once, then every `degraded_poll_interval`, and again when a
  heartbeat comes back; cross-node delivery then runs off the store;
* publications dropped by this node (breaker open, timeout, full outbox): once a publication
  succeeds again, a resync request goes to `ctl`, and every node pulls every feed;
* received publications dropped because the inbound buffer was full: every feed.

Theory of operation: five tasks under `run`. The *publisher* drains the outbox (a bounded Trio
channel filled synchronously by `forward`/`committed`/...) batch by batch through the
`CircuitBreaker`, so a hung Redis costs callers nothing and fails fast once open. The *listener*
runs the adapter's pump (asyncio side, one bridge crossing per connection) which hands every
received item to a Trio memory channel; when the pump fails, the listener reconnects with a backoff
(immediately after a connection that worked). The *consumer* decodes and dispatches what the pump
received. The *subscriber* sends the SUBSCRIBE/UNSUBSCRIBE that `interest` queued, batched. The
*heartbeat* publishes the liveness heartbeat and runs the checks above.

Invariants:
* `_wanted` is the set of topic channels this node should be subscribed to (its PubSub topics); a
  new listener connection subscribes the fixed channels and all of `_wanted`.
* `_outstanding` holds heartbeats that were published successfully and not yet received.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from whispr.observability.telemetry import PUBSUB_RESYNC, emit
from whispr.protocol import Payload
from whispr.pubsub.local import PubSub
from whispr.resilience.breaker import CircuitBreaker, CircuitOpen

__all__ = [
    "PUBSUB_RESYNC",
    "VERSION",
    "Bus",
    "ClusterBridge",
    "Inbound",
    "LiveSink",
    "PubSubUnavailable",
    "bridge_statistics",
]

VERSION = 1
"""The payload version this node writes and reads."""

MESSAGE_KINDS = frozenset({b"message", b"smessage"})
SUBSCRIBE_KINDS = frozenset({b"subscribe", b"ssubscribe"})

Inbound = tuple[bytes, bytes, bytes | int]
"""What the pump hands over: (kind, channel, data), as Redis sent it: kind `message`/`smessage` with
the published bytes, or `subscribe`/`unsubscribe`/`ssubscribe`/`sunsubscribe` with a count."""

_log = logging.getLogger("whispr.cluster")
_FIRST_BACKOFF = 0.05
_MAX_BACKOFF = 2.0


class PubSubUnavailable(Exception):
    """Redis pub/sub could not be reached, failed, or did not answer in time; raised `from` the cause."""


class Bus(Protocol):
    """What the bridge needs from a pub/sub server (`whispr.adapters.redis_pubsub` implements it)."""

    @property
    def inbound_dropped(self) -> int:
        """How many received items the pump dropped because the Trio channel was full (ever)."""
        ...

    async def publish(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """Publish every (channel, data), in order, in one round trip. Cancellable.

        Raises:
            PubSubUnavailable: some or all were not published.
        """
        ...

    async def listen(self, channels: Callable[[], Collection[str]], send: trio.MemorySendChannel[Inbound]) -> None:
        """Connect, subscribe to `channels()` (read once connected), and hand every item received to
        `send` (never waiting: a full channel drops the item and counts it in `inbound_dropped`).

        Blocking: until the connection fails or the caller cancels; returns if `send` is closed.

        Raises:
            PubSubUnavailable: the connection could not be made, or was lost.
        """
        ...

    async def subscribe(self, channels: Sequence[str]) -> None:
        """Subscribe the current `listen` connection to `channels` (nothing if none is up). Never raises
        for a connection problem: `listen` notices it and the next connection subscribes everything."""
        ...

    async def unsubscribe(self, channels: Sequence[str]) -> None:
        """Unsubscribe the current `listen` connection from `channels`; as `subscribe`."""
        ...


class _Outbound(Protocol):
    def committed(self, topic: str, seq: int, payload: dict[str, Any], pokes: tuple[str, ...]) -> None: ...

    def revoked(self, conversation_id: str, user_id: str) -> None: ...


class ConnectionSink(Protocol):
    """What the bridge needs from the node's sockets (`whispr.delivery.connections.ConnectionRegistry`)."""

    def set_remote(self, remote: Any) -> None:
        """Fan disconnects out to `remote` (the bridge), or stop with None."""
        ...

    def revoke_local(self, user_id: str, device_id: str | None) -> int:
        """Disconnect the user's sockets (one device's) on this node."""
        ...


class LiveSink(Protocol):
    """What the bridge needs from live delivery (`whispr.delivery.live.LiveDelivery`)."""

    def set_outbound(self, outbound: _Outbound | None) -> None:
        """Tell `outbound` of every commit and revocation."""
        ...

    def remote_entry(self, topic: str, seq: int, payload: dict[str, Any]) -> None:
        """Offer an entry committed on another node."""
        ...

    def resync(self, topics: Iterable[str] | None = None) -> int:
        """Pull these feeds (None: all) from the store after their head; return how many."""
        ...

    def revoke_local(self, conversation_id: str, user_id: str) -> None:
        """Stop live delivery of the conversation to the user's devices on this node."""
        ...


class PresenceSink(Protocol):
    """What the bridge needs from presence replication (`whispr.presence.replication.PresenceReplica`)."""

    def remote(self, origin: str, message: dict[str, Any]) -> None:
        """Apply a presence publication of node `origin`.

        Raises:
            KeyError, TypeError, ValueError: the message is malformed.
        """
        ...

    def resync(self) -> None:
        """Presence publications may have been lost: ask every node for its state."""
        ...


@dataclass(frozen=True, slots=True)
class BridgeStatistics:
    """A snapshot of `ClusterBridge.statistics()` (counters since the bridge was built)."""

    connected: bool  # the listener's current connection confirmed its first subscription
    degraded: bool  # no heartbeat came back for 2 x heartbeat_interval
    topics: int  # topic channels wanted
    published: int  # publications sent (heartbeats included)
    publish_failed: int  # publications dropped: breaker open, timeout, Redis error, full outbox
    received: int  # publications received (own and others')
    own_skipped: int  # own publications received back and skipped
    invalid: int  # publications with an unknown version or kind, or malformed
    connections: int  # listener connections that confirmed a subscription
    resubscribes: int  # connections after the first
    last_resubscribe_seconds: float  # from the loss of a connection to the next one's first confirmation
    heartbeat_timeouts: int
    resyncs: dict[str, int]  # reason -> times
    inbound_dropped: int


def bridge_statistics(bridge: ClusterBridge) -> BridgeStatistics:
    """`bridge.statistics()`, as a function (for metrics collectors)."""
    return bridge.statistics()


def _dumps(envelope: dict[str, Any]) -> bytes:
    return json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode()


class ClusterBridge:
    """Cross-node pub/sub for one node (see the module docstring). Run `run` in the node's tree.

    Args:
        pubsub: the node's PubSub; `run` makes it forward broadcasts here.
        bus: the pub/sub server (`whispr.adapters.redis_pubsub.open_redis_bus`).
        node_id: this node's id (unique in the cluster); publications carry it as their origin.
        prefix: channel name prefix, shared by the cluster.
        heartbeat_interval: seconds between liveness heartbeats; a heartbeat must be back within
            twice that (reliability.md §1.6).
        degraded_poll_interval: seconds between store reads of every feed while degraded; None: only
            when degraded starts and ends.
        breaker: the publish path's breaker; default: 0.25 s per call, opens after 5 failures,
            trials after 5 s (a publication waits for nobody, so probing soon is cheap).
        max_outbox: publications queued at most; more are dropped (and trigger a resync request).
        max_batch: publications per pipeline.
        inbound_buffer: received items buffered for the consumer; more are dropped (resync).
    """

    def __init__(
        self,
        pubsub: PubSub,
        bus: Bus,
        *,
        node_id: str,
        prefix: str = "whispr",
        heartbeat_interval: float = 1.0,
        degraded_poll_interval: float | None = 5.0,
        breaker: CircuitBreaker | None = None,
        max_outbox: int = 10_000,
        max_batch: int = 1_000,
        inbound_buffer: int = 10_000,
    ) -> None:
        if not heartbeat_interval > 0:
            raise ValueError(f"heartbeat_interval must be positive, got {heartbeat_interval!r}")
        if degraded_poll_interval is not None and not degraded_poll_interval > 0:
            raise ValueError(f"degraded_poll_interval must be positive or None, got {degraded_poll_interval!r}")
        if max_outbox < 1 or max_batch < 1 or inbound_buffer < 1:
            raise ValueError("max_outbox, max_batch and inbound_buffer must be at least 1")
        self.node_id = node_id
        self._pubsub = pubsub
        self._bus = bus
        self._topic_prefix = f"{prefix}:t:"
        self._heartbeat_channel = f"{prefix}:n:{node_id}"
        self._ctl_channel = f"{prefix}:ctl"
        self._presence_channel = f"{prefix}:presence"
        self._interval = heartbeat_interval
        self._poll_interval = degraded_poll_interval
        self._breaker = breaker or CircuitBreaker("redis_pubsub", call_timeout=0.25, reset_timeout=5.0)
        self._max_batch = max_batch
        self._live: LiveSink | None = None
        self._sockets: ConnectionSink | None = None
        self._presence: PresenceSink | None = None
        # (channel, data, heartbeat id or 0) waiting for the publisher.
        self._outbox_send, self._outbox_receive = trio.open_memory_channel[tuple[str, bytes, int]](max_outbox)
        self._inbound_send, self._inbound_receive = trio.open_memory_channel[Inbound](inbound_buffer)
        self._wanted: set[str] = set()
        self._changes: dict[str, bool] = {}  # channel -> subscribe (True) / unsubscribe, not sent yet
        self._changed = trio.Event()
        self._listen_scope: trio.CancelScope | None = None
        self._dirty = False  # publications were dropped since the last successful one
        self._heartbeat_id = 0
        self._outstanding: dict[int, float] = {}  # heartbeat id -> when its publication returned
        self._last_heartbeat = 0.0
        self._degraded = False
        self._last_poll = 0.0
        self._connected = False
        self._lost_at: float | None = None  # when the last working connection was lost
        self._inbound_dropped_seen = 0
        # counters
        self._published = 0
        self._publish_failed = 0
        self._received = 0
        self._own = 0
        self._invalid = 0
        self._connections = 0
        self._last_resubscribe = 0.0
        self._heartbeat_timeouts = 0
        self._resyncs: dict[str, int] = {}

    # -- wiring ------------------------------------------------------------------------------------

    def attach_live(self, live: LiveSink) -> None:
        """Bridge `live`'s commits and revocations, and deliver remote ones to it (replacing any
        earlier one). Call it when the node's live delivery is built (the delivery child)."""
        if self._live is not None and self._live is not live:
            self._live.set_outbound(None)
        self._live = live
        live.set_outbound(self)

    def attach_connections(self, connections: ConnectionSink) -> None:
        """Fan `connections`' disconnects out to every node, and apply the other nodes' to it
        (replacing any earlier one). Call it with the node's `ConnectionRegistry`."""
        if self._sockets is not None and self._sockets is not connections:
            self._sockets.set_remote(None)
        self._sockets = connections
        connections.set_remote(self)

    def attach_presence(self, presence: PresenceSink | None) -> None:
        """Deliver the other nodes' presence publications to `presence` (None: drop them). Call it
        with the node's `PresenceReplica` while it runs."""
        self._presence = presence

    def publish_presence(self, message: dict[str, Any]) -> None:
        """`PresenceReplica`: publish `message` to every other node's replica. Never blocks."""
        self._queue(self._presence_channel, _dumps({**message, "v": VERSION, "k": "y", "o": self.node_id}))

    def disconnect(self, user_id: str, device_id: str | None) -> None:
        """`ConnectionRegistry`: disconnect the user's sockets (one device's) on the other nodes."""
        envelope = {"v": VERSION, "k": "x", "o": self.node_id, "u": user_id, "d": device_id}
        self._queue(self._ctl_channel, _dumps(envelope))

    def detach_live(self, live: LiveSink) -> None:
        """Undo `attach_live(live)` (nothing if another one was attached since)."""
        if self._live is live:
            live.set_outbound(None)
            self._live = None

    def channel(self, topic: str) -> str:
        """The Redis channel of `topic`."""
        return self._topic_prefix + topic

    def statistics(self) -> BridgeStatistics:
        """A snapshot of the counters."""
        return BridgeStatistics(
            connected=self._connected,
            degraded=self._degraded,
            topics=len(self._wanted),
            published=self._published,
            publish_failed=self._publish_failed,
            received=self._received,
            own_skipped=self._own,
            invalid=self._invalid,
            connections=self._connections,
            resubscribes=max(0, self._connections - 1),
            last_resubscribe_seconds=self._last_resubscribe,
            heartbeat_timeouts=self._heartbeat_timeouts,
            resyncs=dict(self._resyncs),
            inbound_dropped=self._bus.inbound_dropped,
        )

    # -- what PubSub and LiveDelivery call (synchronous, never block) ------------------------------

    def interest(self, topic: str, subscribed: bool) -> None:
        """`PubSub`: `topic` got its first local subscriber, or lost its last."""
        channel = self.channel(topic)
        if subscribed:
            self._wanted.add(channel)
        else:
            self._wanted.discard(channel)
        self._changes[channel] = subscribed
        self._changed.set()

    def forward(self, topic: str, event: str, payload: Payload, droppable: bool) -> None:
        """`PubSub`: publish a local broadcast.

        Raises:
            TypeError, ValueError: the payload cannot be encoded as JSON.
        """
        envelope: dict[str, Any] = {"v": VERSION, "k": "b", "o": self.node_id, "t": topic, "e": event}
        if isinstance(payload, bytes):
            envelope["p"] = base64.b64encode(payload).decode()
            envelope["bin"] = 1
        else:
            envelope["p"] = payload
        if droppable:
            envelope["d"] = 1
        self._queue(self.channel(topic), _dumps(envelope))

    def committed(self, topic: str, seq: int, payload: dict[str, Any], pokes: tuple[str, ...]) -> None:
        """`LiveDelivery`: entry `seq` of `topic` was committed here; `pokes` have new inbox entries."""
        origin = self.node_id
        self._queue(
            self.channel(topic), _dumps({"v": VERSION, "k": "m", "o": origin, "t": topic, "s": seq, "p": payload})
        )
        for poked in pokes:
            self._queue(self.channel(poked), _dumps({"v": VERSION, "k": "p", "o": origin, "t": poked}))

    def revoked(self, conversation_id: str, user_id: str) -> None:
        """`LiveDelivery`: a membership was revoked here."""
        topic = f"conversation:{conversation_id}"
        envelope = {"v": VERSION, "k": "r", "o": self.node_id, "t": topic, "c": conversation_id, "u": user_id}
        self._queue(self.channel(topic), _dumps(envelope))

    def _queue(self, channel: str, data: bytes, heartbeat: int = 0) -> None:
        try:
            self._outbox_send.send_nowait((channel, data, heartbeat))
        except trio.WouldBlock:
            self._publish_failed += 1
            self._dirty = True

    # -- the service -------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[ClusterBridge] = trio.TASK_STATUS_IGNORED) -> None:
        """Bridge the node's PubSub (and live delivery, once attached) until cancelled.

        Started at once, without waiting for Redis: a node without Redis keeps serving its own
        sockets (reliability.md D3), and the bridge connects in the background.

        Resource handling: on exit PubSub and live delivery stop forwarding here.
        Error handling: Redis failures are handled here (see the module docstring); anything else
        propagates to the supervisor.
        """
        self._pubsub.set_remote(self)
        try:
            for topic in self._pubsub.topics():
                self._wanted.add(self.channel(topic))
            self._last_heartbeat = self._last_poll = trio.current_time()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._publisher)
                nursery.start_soon(self._consumer)
                nursery.start_soon(self._listener)
                nursery.start_soon(self._subscriber)
                nursery.start_soon(self._heartbeat)
                task_status.started(self)
        finally:
            self._pubsub.set_remote(None)
            if self._live is not None:
                self._live.set_outbound(None)

    async def _publisher(self) -> None:
        async for first in self._outbox_receive:
            batch = [first]
            while len(batch) < self._max_batch:
                try:
                    batch.append(self._outbox_receive.receive_nowait())
                except trio.WouldBlock:
                    break
            try:
                await self._breaker.call(self._bus.publish, [(channel, data) for channel, data, _ in batch])
            except (CircuitOpen, trio.TooSlowError, PubSubUnavailable) as exc:
                if not self._dirty:
                    _log.warning("cross-node publication failing, dropping until it works: %s", exc)
                self._publish_failed += len(batch)
                self._dirty = True
                continue
            self._published += len(batch)
            now = trio.current_time()
            for _, _, heartbeat in batch:
                if heartbeat:
                    self._outstanding[heartbeat] = now
            if self._dirty:
                self._dirty = False
                _log.info("cross-node publication works again; asking every node to resync")
                self._queue(self._ctl_channel, _dumps({"v": VERSION, "k": "s", "o": self.node_id}))

    def _channels(self) -> list[str]:
        return [self._heartbeat_channel, self._ctl_channel, self._presence_channel, *self._wanted]

    async def _listener(self) -> None:
        backoff = 0.0
        while True:
            self._connected = False
            with trio.CancelScope() as scope:
                self._listen_scope = scope
                try:
                    await self._bus.listen(self._channels, self._inbound_send)
                except PubSubUnavailable as exc:
                    if self._connected or backoff == 0.0:
                        _log.warning("cross-node subscription lost: %s", exc)
            self._listen_scope = None
            if self._connected:
                self._lost_at = trio.current_time()
                backoff = 0.0  # it worked: try again at once (a killed connection, a failover)
            elif scope.cancelled_caught:
                backoff = 0.0  # reset by the heartbeat check: Redis answers publications
            await trio.sleep(backoff)
            backoff = min(max(backoff * 2, _FIRST_BACKOFF), _MAX_BACKOFF)

    async def _subscriber(self) -> None:
        while True:
            await self._changed.wait()
            self._changed = trio.Event()
            changes, self._changes = self._changes, {}
            subscribe = [channel for channel, wanted in changes.items() if wanted]
            unsubscribe = [channel for channel, wanted in changes.items() if not wanted]
            if subscribe:
                await self._bus.subscribe(subscribe)
            if unsubscribe:
                await self._bus.unsubscribe(unsubscribe)

    async def _heartbeat(self) -> None:
        while True:
            self._heartbeat_id += 1
            envelope = {"v": VERSION, "k": "h", "o": self.node_id, "i": self._heartbeat_id}
            self._queue(self._heartbeat_channel, _dumps(envelope), self._heartbeat_id)
            await trio.sleep(self._interval)
            self._check_liveness(trio.current_time())

    def _check_liveness(self, now: float) -> None:
        late = 2 * self._interval
        if self._outstanding and min(self._outstanding.values()) < now - late:
            # Published but never received: the subscription is dead even if its socket is not.
            self._outstanding.clear()
            self._heartbeat_timeouts += 1
            _log.warning("cross-node heartbeat not received within %.1fs: reconnecting", late)
            self._resync(None, "heartbeat_timeout")
            if self._listen_scope is not None:
                self._listen_scope.cancel()
        if now - self._last_heartbeat > late:
            if not self._degraded:
                self._degraded = True
                self._last_poll = now
                _log.warning("cross-node pub/sub degraded: live delivery from other nodes runs off the store")
                self._resync(None, "degraded")
            elif self._poll_interval is not None and now - self._last_poll >= self._poll_interval:
                self._last_poll = now
                self._resync(None, "degraded_poll")

    def _resync(self, topics: Iterable[str] | None, reason: str) -> None:
        feeds = self._live.resync(topics) if self._live is not None else 0
        # A peer's dropped publications are left to its presence clock heartbeats: a resync of
        # every node's presence on every node would cost a transfer per pair of nodes.
        if topics is None and reason != "peer_request" and self._presence is not None:
            self._presence.resync()
        self._resyncs[reason] = self._resyncs.get(reason, 0) + 1
        emit(PUBSUB_RESYNC, {"feeds": feeds}, {"reason": reason})

    async def _consumer(self) -> None:
        prefix = self._topic_prefix.encode()
        heartbeat_channel = self._heartbeat_channel.encode()
        async for first in self._inbound_receive:
            batch = [first]
            while True:
                try:
                    batch.append(self._inbound_receive.receive_nowait())
                except trio.WouldBlock:
                    break
            subscribed: list[str] = []
            for kind, channel, data in batch:
                if kind in MESSAGE_KINDS:
                    assert isinstance(data, bytes)
                    self._received += 1
                    self._dispatch(data)
                elif kind in SUBSCRIBE_KINDS:
                    if channel == heartbeat_channel:
                        self._on_connected()
                    elif channel.startswith(prefix):
                        subscribed.append(channel[len(prefix) :].decode())
            if subscribed:
                self._resync(subscribed, "resubscribe" if self._connections > 1 else "subscribe")
            dropped = self._bus.inbound_dropped
            if dropped != self._inbound_dropped_seen:
                self._inbound_dropped_seen = dropped
                self._resync(None, "overflow")

    def _on_connected(self) -> None:
        """The heartbeat channel's confirmation: the first of each connection."""
        self._connected = True
        self._connections += 1
        if self._presence is not None:
            self._presence.resync()  # whatever was published while no connection listened is lost
        if self._lost_at is not None:
            self._last_resubscribe = trio.current_time() - self._lost_at
            self._lost_at = None
            _log.info("cross-node subscription back after %.3fs", self._last_resubscribe)

    def _dispatch(self, data: bytes) -> None:
        try:
            envelope = json.loads(data)
            if not isinstance(envelope, dict) or envelope.get("v") != VERSION:
                self._invalid += 1
                return
            kind = envelope["k"]
            if envelope["o"] == self.node_id:
                if kind == "h":
                    self._on_heartbeat(envelope["i"])
                else:
                    self._own += 1
                return
            live = self._live
            if kind == "b":
                payload = envelope["p"]
                if envelope.get("bin"):
                    payload = base64.b64decode(payload)
                self._pubsub.broadcast_local(envelope["t"], envelope["e"], payload, droppable=bool(envelope.get("d")))
            elif kind == "m":
                if live is not None:
                    live.remote_entry(envelope["t"], int(envelope["s"]), envelope["p"])
            elif kind == "p":
                if live is not None:
                    live.resync((envelope["t"],))
            elif kind == "r":
                if live is not None:
                    live.revoke_local(envelope["c"], envelope["u"])
            elif kind == "s":
                self._resync(None, "peer_request")
            elif kind == "x":
                if self._sockets is not None:
                    self._sockets.revoke_local(envelope["u"], envelope["d"])
            elif kind == "y":
                if self._presence is not None:
                    self._presence.remote(envelope["o"], envelope)
            else:
                self._invalid += 1
        except (KeyError, TypeError, ValueError) as exc:
            self._invalid += 1
            _log.debug("skipped a malformed cross-node publication: %r", exc)

    def _on_heartbeat(self, heartbeat: object) -> None:
        now = trio.current_time()
        self._last_heartbeat = now
        if isinstance(heartbeat, int):
            for done in [i for i in self._outstanding if i <= heartbeat]:
                del self._outstanding[done]
        if self._degraded:
            self._degraded = False
            _log.info("cross-node pub/sub healthy again")
            self._resync(None, "recovered")
