"""Local topic registry with encode-once fan-out (Phoenix PubSub's fastlane).

`broadcast` serializes the message once per serializer in use among the topic's subscribers (V1,
V2), frames it once (server frames are unmasked, so the bytes are the same for every connection)
and hands the very same `bytes` object to each subscriber's `transport.send` in a plain loop: no
task, lock, await or copy per subscriber (architecture.md "hot path"; `Phoenix.Channel.Server.
fastlane!/1` caches the encoding per serializer the same way). A broadcast carries join_ref and
ref null (protocol.md §0 rule 4).

Subscriptions are per (topic, subscriber); one subscriber is one connection, which has at most
one channel per topic. Single-threaded, Trio-task-safe by construction: nothing here awaits.

Cross-node (`whispr.pubsub.cluster`): a `Remote` set with `set_remote` is told when a topic gets its
first local subscriber and loses its last (`interest`), and gets every `broadcast` (`forward`)
before the local fan-out; what arrives from other nodes is fanned out with `broadcast_local`, which
does not forward again.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from whispr.gateway.frames import binary_frame, text_frame
from whispr.observability.telemetry import MESSAGE_SENT, emit
from whispr.protocol import Broadcast, Payload, Serializer

_BROADCAST = {"kind": "broadcast"}


class FrameSink(Protocol):
    """The part of a transport that fan-out uses (`whispr.gateway.transport.Transport.send`)."""

    def send(self, frame: bytes, droppable: bool = False) -> None:
        """Queue one complete server frame; never blocks, never raises."""
        ...


class Subscriber(Protocol):
    """A connection that can receive broadcasts: its serializer and its transport."""

    @property
    def serializer(self) -> Serializer:
        """The connection's serializer (a singleton per vsn)."""
        ...

    @property
    def transport(self) -> FrameSink:
        """Where the frames go."""
        ...


class Remote(Protocol):
    """The cross-node bridge, as the registry sees it (`whispr.pubsub.cluster.ClusterBridge`)."""

    def interest(self, topic: str, subscribed: bool) -> None:
        """`topic` got its first local subscriber (True) or lost its last (False). Never blocks."""
        ...

    def forward(self, topic: str, event: str, payload: Payload, droppable: bool) -> None:
        """Send a local broadcast to the other nodes. Never blocks.

        Raises:
            TypeError, ValueError: the payload cannot be encoded.
        """
        ...


class PubSub:
    """Topic → subscribers, for one node."""

    __slots__ = ("_remote", "_topics")

    def __init__(self) -> None:
        # topic -> subscribers in subscription order (a dict used as an ordered set);
        # a topic with no subscriber is removed, so len(_topics) is the number of live topics.
        self._topics: dict[str, dict[Subscriber, None]] = {}
        self._remote: Remote | None = None

    def set_remote(self, remote: Remote | None) -> None:
        """Bridge broadcasts to other nodes through `remote` from now on (None: this node only)."""
        self._remote = remote

    def topics(self) -> Iterator[str]:
        """The topics with at least one local subscriber."""
        return iter(list(self._topics))

    def subscribe(self, topic: str, subscriber: Subscriber) -> None:
        """Deliver broadcasts on `topic` to `subscriber` from now on. Idempotent."""
        subscribers = self._topics.get(topic)
        if subscribers is None:
            self._topics[topic] = {subscriber: None}
            if self._remote is not None:
                self._remote.interest(topic, True)
        else:
            subscribers[subscriber] = None

    def unsubscribe(self, topic: str, subscriber: Subscriber) -> None:
        """Stop delivering `topic` to `subscriber`. Unknown pairs are ignored."""
        subscribers = self._topics.get(topic)
        if subscribers is not None:
            subscribers.pop(subscriber, None)
            if not subscribers:
                del self._topics[topic]
                if self._remote is not None:
                    self._remote.interest(topic, False)

    def subscriber_count(self, topic: str) -> int:
        """How many subscribers `topic` has on this node."""
        return len(self._topics.get(topic, ()))

    def broadcast(
        self,
        topic: str,
        event: str,
        payload: Payload,
        *,
        exclude: Subscriber | None = None,
        droppable: bool = False,
    ) -> int:
        """Send `event` to every subscriber of `topic` except `exclude`, and to the other nodes;
        return how many local subscribers got it.

        Synchronous and never blocks: each subscriber's transport queues the frame (and a full
        outbox drops `droppable` frames first, then closes that one connection); the bridge, if
        any, queues it for the next publication batch.

        Raises:
            TypeError, ValueError: the payload cannot be encoded; nothing was sent.
        """
        if self._remote is not None:
            self._remote.forward(topic, event, payload, droppable)
        return self.broadcast_local(topic, event, payload, exclude=exclude, droppable=droppable)

    def broadcast_local(
        self,
        topic: str,
        event: str,
        payload: Payload,
        *,
        exclude: Subscriber | None = None,
        droppable: bool = False,
    ) -> int:
        """`broadcast` to this node's subscribers only (what the bridge does with a remote broadcast).

        Raises:
            TypeError, ValueError: the payload cannot be encoded; nothing was sent.
        """
        subscribers = self._topics.get(topic)
        if not subscribers:
            return 0
        message = Broadcast(topic, event, payload)
        frame_of = binary_frame if isinstance(payload, bytes) else text_frame
        frames: dict[Serializer, bytes] = {}
        delivered = 0
        size = 0
        # Transports never call back into the registry from `send`, so the dict cannot change
        # size while it is iterated.
        for subscriber in subscribers:
            if subscriber is exclude:
                continue
            serializer = subscriber.serializer
            frame = frames.get(serializer)
            if frame is None:
                frame = frames[serializer] = frame_of(serializer.encode(message))
            subscriber.transport.send(frame, droppable)
            delivered += 1
            size += len(frame)
        emit(MESSAGE_SENT, {"size": size, "count": delivered}, _BROADCAST)
        return delivered

    def broadcast_from(
        self, sender: Subscriber, topic: str, event: str, payload: Payload, *, droppable: bool = False
    ) -> int:
        """`broadcast` to every subscriber of `topic` but `sender` (`Phoenix.Channel.broadcast_from/3`)."""
        return self.broadcast(topic, event, payload, exclude=sender, droppable=droppable)
