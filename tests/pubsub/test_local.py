"""Local pub/sub: subscriptions, exclusion, and encode-once fan-out (architecture.md hot path)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import pytest

from whispr.protocol import V1, V2, Broadcast, Message, Reply, Serializer
from whispr.pubsub import PubSub


class CountingSerializer:
    """A serializer that counts its encodes (one instance per vsn, like V1 and V2)."""

    def __init__(self, inner: Serializer) -> None:
        self.inner = inner
        self.vsn = inner.vsn
        self.encodes = 0

    def decode(self, data: str | bytes) -> Message:
        return self.inner.decode(data)

    def encode(self, message: Message | Reply | Broadcast) -> bytes:
        self.encodes += 1
        return self.inner.encode(message)


class ListTransport:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, bool]] = []

    def send(self, frame: bytes, droppable: bool = False) -> None:
        self.sent.append((frame, droppable))


@dataclass(eq=False)
class Sub:
    serializer: Serializer
    transport: ListTransport = field(default_factory=ListTransport)


def payload_of(frame: bytes) -> object:
    assert frame[0] == 0x81  # FIN + text
    return json.loads(frame[2:] if frame[1] < 126 else frame[4:])


def test_each_serializer_encodes_once_and_every_subscriber_gets_the_same_bytes_object() -> None:
    v1, v2 = CountingSerializer(V1), CountingSerializer(V2)
    pubsub = PubSub()
    v2_subs = [Sub(v2) for _ in range(3)]
    v1_subs = [Sub(v1) for _ in range(2)]
    for sub in [*v2_subs, *v1_subs]:
        pubsub.subscribe("room:1", sub)
    assert pubsub.broadcast("room:1", "new_msg", {"body": "hi"}) == 5
    assert (v1.encodes, v2.encodes) == (1, 1)
    (v2_frame, _), *_ = v2_subs[0].transport.sent
    (v1_frame, _), *_ = v1_subs[0].transport.sent
    assert all(sub.transport.sent[0][0] is v2_frame for sub in v2_subs)
    assert all(sub.transport.sent[0][0] is v1_frame for sub in v1_subs)
    assert payload_of(v2_frame) == [None, None, "room:1", "new_msg", {"body": "hi"}]
    assert payload_of(v1_frame) == {"topic": "room:1", "event": "new_msg", "payload": {"body": "hi"}, "ref": None}


def test_broadcast_from_excludes_the_sender_and_passes_droppable() -> None:
    pubsub = PubSub()
    sender, other = Sub(V2), Sub(V2)
    pubsub.subscribe("room:1", sender)
    pubsub.subscribe("room:1", other)
    assert pubsub.broadcast_from(sender, "room:1", "user_typing", {}, droppable=True) == 1
    assert sender.transport.sent == []
    assert other.transport.sent[0][1] is True


def test_binary_payloads_go_out_as_binary_broadcast_frames() -> None:
    pubsub = PubSub()
    sub = Sub(V2)
    pubsub.subscribe("t", sub)
    pubsub.broadcast("t", "ev", b"DATA")
    assert sub.transport.sent == [(bytes((0x82, 10, 2, 1, 2)) + b"tevDATA", False)]


def test_subscriptions_are_per_topic_idempotent_and_cleaned_up() -> None:
    pubsub = PubSub()
    sub = Sub(V2)
    pubsub.subscribe("a", sub)
    pubsub.subscribe("a", sub)
    assert pubsub.subscriber_count("a") == 1
    assert pubsub.broadcast("b", "ev", {}) == 0
    pubsub.unsubscribe("a", sub)
    pubsub.unsubscribe("a", sub)
    pubsub.unsubscribe("never", sub)
    assert pubsub.subscriber_count("a") == 0
    assert pubsub.broadcast("a", "ev", {}) == 0
    assert sub.transport.sent == []


def test_no_subscriber_means_no_encoding() -> None:
    counting = CountingSerializer(V2)
    pubsub = PubSub()
    sub = Sub(counting)
    pubsub.subscribe("a", sub)
    assert pubsub.broadcast("a", "ev", {}, exclude=sub) == 0
    assert counting.encodes == 0


def test_unencodable_payload_raises_and_sends_nothing() -> None:
    pubsub = PubSub()
    sub = Sub(V2)
    pubsub.subscribe("a", sub)
    with pytest.raises(ValueError, match="JSON compliant"):
        pubsub.broadcast("a", "ev", {"x": float("nan")})
    assert sub.transport.sent == []


class FrameListTransport:
    """The cheapest honest transport: `send` appends the frame to a list."""

    __slots__ = ("sent",)

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, frame: bytes, droppable: bool = False) -> None:
        self.sent.append(frame)


@dataclass(eq=False, slots=True)
class BenchSub:
    serializer: Serializer
    transport: FrameListTransport = field(default_factory=FrameListTransport)


@pytest.mark.slow
def test_fan_out_cost_per_delivery() -> None:
    """Prints µs per delivery to 1,000 local subscribers (no assertion on time)."""
    pubsub = PubSub()
    subs = [BenchSub(V2 if n % 10 else V1) for n in range(1_000)]
    for sub in subs:
        pubsub.subscribe("room:big", sub)
    payload = {"id": "m1", "conversation_id": "c1", "seq": 1, "content": "x" * 100}
    rounds = 200
    started = time.perf_counter()
    for _ in range(rounds):
        pubsub.broadcast("room:big", "new_message", payload)
    elapsed = time.perf_counter() - started
    print(f"\nfan-out: {elapsed / (rounds * len(subs)) * 1e6:.3f} µs per delivery (1,000 subscribers, 10% V1)")
    assert all(len(sub.transport.sent) == rounds for sub in subs)
