"""`ClusterBridge` against an in-memory bus: the PubSub hooks, the payload format, what is skipped."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
import trio.testing

from whispr.protocol import V2, Serializer
from whispr.pubsub import PubSub
from whispr.pubsub.cluster import ClusterBridge, Inbound, PubSubUnavailable


class FakeBus:
    """Records publications; `deliver` hands items to the running `listen` as Redis would."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []
        self.subscribed: list[str] = []
        self.unsubscribed: list[str] = []
        self.fail = False
        self._send: trio.MemorySendChannel[Inbound] | None = None
        self.listening = trio.Event()

    @property
    def inbound_dropped(self) -> int:
        return 0

    async def publish(self, messages: Sequence[tuple[str, bytes]]) -> None:
        await trio.lowlevel.checkpoint()
        if self.fail:
            raise PubSubUnavailable("down")
        self.published.extend(messages)
        for channel, data in messages:  # loop back the node's own channels, as Redis would
            if channel in self.subscribed or ":n:" in channel:
                self.deliver(b"message", channel, data)

    async def listen(self, channels: Callable[[], Collection[str]], send: trio.MemorySendChannel[Inbound]) -> None:
        self._send = send
        for channel in channels():
            self.subscribed.append(channel)
            send.send_nowait((b"subscribe", channel.encode(), 1))
        self.listening.set()
        await trio.sleep_forever()

    async def subscribe(self, channels: Sequence[str]) -> None:
        await trio.lowlevel.checkpoint()
        for channel in channels:
            self.subscribed.append(channel)
            self.deliver(b"subscribe", channel, 1)

    async def unsubscribe(self, channels: Sequence[str]) -> None:
        await trio.lowlevel.checkpoint()
        self.unsubscribed.extend(channels)

    def deliver(self, kind: bytes, channel: str, data: bytes | int) -> None:
        assert self._send is not None
        self._send.send_nowait((kind, channel.encode(), data))


class Frames:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, frame: bytes, droppable: bool = False) -> None:
        self.sent.append(frame)


@dataclass(eq=False)
class Sub:
    serializer: Serializer = V2
    transport: Frames = field(default_factory=Frames)


class FakeLive:
    def __init__(self) -> None:
        self.outbound: Any = None
        self.entries: list[tuple[str, int, dict[str, Any]]] = []
        self.resyncs: list[tuple[str, ...] | None] = []
        self.revoked: list[tuple[str, str]] = []

    def set_outbound(self, outbound: Any) -> None:
        self.outbound = outbound

    def remote_entry(self, topic: str, seq: int, payload: dict[str, Any]) -> None:
        self.entries.append((topic, seq, payload))

    def resync(self, topics: Any = None) -> int:
        self.resyncs.append(None if topics is None else tuple(topics))
        return 1

    def revoke_local(self, conversation_id: str, user_id: str) -> None:
        self.revoked.append((conversation_id, user_id))


@asynccontextmanager
async def running(pubsub: PubSub, bus: FakeBus, live: FakeLive) -> AsyncIterator[ClusterBridge]:
    bridge = ClusterBridge(pubsub, bus, node_id="me", prefix="p", heartbeat_interval=3600)
    bridge.attach_live(live)
    async with trio.open_nursery() as nursery:
        await nursery.start(bridge.run)
        await bus.listening.wait()
        yield bridge
        nursery.cancel_scope.cancel()


def envelope(**fields: Any) -> bytes:
    return json.dumps({"v": 1, "o": "other", **fields}).encode()


async def test_subscriptions_follow_the_first_and_last_local_subscriber() -> None:
    pubsub, bus, live = PubSub(), FakeBus(), FakeLive()
    early = Sub()
    pubsub.subscribe("room:early", early)  # subscribed before the bridge runs
    async with running(pubsub, bus, live) as bridge:
        assert set(bus.subscribed) == {"p:n:me", "p:ctl", "p:presence", "p:t:room:early"}
        a, b = Sub(), Sub()
        pubsub.subscribe("room:1", a)
        pubsub.subscribe("room:1", b)
        await trio.testing.wait_all_tasks_blocked()
        assert bus.subscribed.count("p:t:room:1") == 1
        assert live.resyncs[-1] == ("room:1",)  # the confirmation pulls the topic's feed
        pubsub.unsubscribe("room:1", a)
        await trio.testing.wait_all_tasks_blocked()
        assert bus.unsubscribed == []
        pubsub.unsubscribe("room:1", b)
        await trio.testing.wait_all_tasks_blocked()
        assert bus.unsubscribed == ["p:t:room:1"]
        assert bridge.statistics().topics == 1
    assert live.outbound is None  # detached on exit


async def test_broadcasts_are_published_even_without_local_subscribers_and_remote_ones_are_not_again() -> None:
    pubsub, bus, live = PubSub(), FakeBus(), FakeLive()
    async with running(pubsub, bus, live):
        assert pubsub.broadcast("room:1", "ev", {"x": 1}, droppable=True) == 0
        await trio.testing.wait_all_tasks_blocked()
        published = [json.loads(d) for c, d in bus.published if c == "p:t:room:1"]
        assert published == [{"v": 1, "k": "b", "o": "me", "t": "room:1", "e": "ev", "p": {"x": 1}, "d": 1}]
        sub = Sub()
        pubsub.subscribe("room:2", sub)
        await trio.testing.wait_all_tasks_blocked()
        before = len(bus.published)
        bus.deliver(b"message", "p:t:room:2", envelope(k="b", t="room:2", e="ev", p={"y": 2}))
        await trio.testing.wait_all_tasks_blocked()
        assert len(sub.transport.sent) == 1
        assert [c for c, _ in bus.published[before:] if c.startswith("p:t:")] == []  # not forwarded again


async def test_an_unencodable_payload_raises_and_nothing_is_sent() -> None:
    pubsub, bus, live = PubSub(), FakeBus(), FakeLive()
    async with running(pubsub, bus, live):
        sub = Sub()
        pubsub.subscribe("room:1", sub)
        with pytest.raises(TypeError):
            pubsub.broadcast("room:1", "ev", {"x": object()})
        await trio.testing.wait_all_tasks_blocked()
        assert sub.transport.sent == []
        assert [c for c, _ in bus.published if c == "p:t:room:1"] == []


async def test_commits_pokes_and_revocations_are_published_and_received() -> None:
    pubsub, bus, live = PubSub(), FakeBus(), FakeLive()
    async with running(pubsub, bus, live) as bridge:
        bridge.committed("conversation:c", 7, {"seq": 7}, ("user:a", "user:b"))
        bridge.revoked("c", "a")
        await trio.testing.wait_all_tasks_blocked()
        kinds = [(c, json.loads(d)["k"]) for c, d in bus.published if c.startswith("p:t:")]
        assert kinds == [
            ("p:t:conversation:c", "m"),
            ("p:t:user:a", "p"),
            ("p:t:user:b", "p"),
            ("p:t:conversation:c", "r"),
        ]
        live.resyncs.clear()
        bus.deliver(b"message", "p:t:conversation:c", envelope(k="m", t="conversation:c", s=8, p={"seq": 8}))
        bus.deliver(b"message", "p:t:user:a", envelope(k="p", t="user:a"))
        bus.deliver(b"message", "p:t:conversation:c", envelope(k="r", t="conversation:c", c="c", u="b"))
        bus.deliver(b"message", "p:ctl", envelope(k="s"))
        await trio.testing.wait_all_tasks_blocked()
        assert live.entries == [("conversation:c", 8, {"seq": 8})]
        assert live.resyncs == [("user:a",), None]
        assert live.revoked == [("c", "b")]


async def test_unknown_versions_kinds_and_garbage_are_counted_and_skipped() -> None:
    pubsub, bus, live = PubSub(), FakeBus(), FakeLive()
    async with running(pubsub, bus, live) as bridge:
        await trio.testing.wait_all_tasks_blocked()  # the first heartbeat went round
        received = bridge.statistics().received
        for data in (
            b"not json",
            b"[1]",
            json.dumps({"v": 2, "k": "b", "o": "x"}).encode(),
            envelope(k="zz"),
            envelope(k="m", t="conversation:c"),  # no seq
        ):
            bus.deliver(b"message", "p:t:conversation:c", data)
        bus.deliver(b"message", "p:t:conversation:c", json.dumps({"v": 1, "k": "m", "o": "me"}).encode())
        await trio.testing.wait_all_tasks_blocked()
        stats = bridge.statistics()
        assert (stats.invalid, stats.own_skipped, stats.received - received) == (5, 1, 6)
        assert live.entries == []


async def test_failed_publications_are_dropped_then_a_resync_request_follows_the_first_success() -> None:
    pubsub, bus, live = PubSub(), FakeBus(), FakeLive()
    async with running(pubsub, bus, live) as bridge:
        await trio.testing.wait_all_tasks_blocked()  # the first heartbeat went out
        bus.fail = True
        pubsub.broadcast("room:1", "ev", {})
        await trio.testing.wait_all_tasks_blocked()
        assert bridge.statistics().publish_failed == 1
        bus.fail = False
        pubsub.broadcast("room:1", "ev", {})
        await trio.testing.wait_all_tasks_blocked()
        assert [json.loads(d)["k"] for c, d in bus.published if c == "p:ctl"] == ["s"]
        assert bridge.statistics().publish_failed == 1


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="heartbeat_interval"):
        ClusterBridge(PubSub(), FakeBus(), node_id="n", heartbeat_interval=0)
    with pytest.raises(ValueError, match="degraded_poll_interval"):
        ClusterBridge(PubSub(), FakeBus(), node_id="n", degraded_poll_interval=-1)
