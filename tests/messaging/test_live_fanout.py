"""The live path's costs and shortcuts: inbox entries handed over with the seqs the write returned
(no store read per online member), frames encoded once per (serializer, join_ref), and the store
still filling every gap the live path leaves."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from tests.channels.fakes import unframe
from tests.messaging.conftest import Device, Node, settle
from whispr.observability import telemetry
from whispr.protocol import V1


def count_reads(node: Node, monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    calls: Counter[str] = Counter()
    for name in ("inbox_after", "messages_after"):
        read = getattr(node.store, name)

        async def counted(*args: Any, _read: Any = read, _name: str = name) -> Any:
            calls[_name] += 1
            return await _read(*args)

        monkeypatch.setattr(node.store, name, counted)
    return calls


def new_message_frames(device: Device, topic: str) -> list[bytes]:
    return [
        frame
        for frame in device.transport.frames
        if b'"new_message"' in frame and f'"{topic}"'.encode() in unframe(frame)[1]
    ]


async def joined(node: Node, cid: str, *who: tuple[str, str]) -> list[Device]:
    devices = []
    for user, device_id in who:
        device = node.device(user, device_id)
        assert (await device.join(f"user:{user}"))["status"] == "ok"
        assert (await device.join(f"conversation:{cid}"))["status"] == "ok"
        devices.append(device)
    await settle()
    return devices


async def test_live_entries_read_nothing_back_and_share_one_encoding(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    cid = await node.conversation("alice", "bob")
    alice, bob_phone, bob_laptop = await joined(node, cid, ("alice", "d1"), ("bob", "phone"), ("bob", "laptop"))
    reads = count_reads(node, monkeypatch)

    sent = await node.send(cid, "alice", 5)
    await settle()

    assert reads == {}  # every entry came with its seq from the write
    for device in (alice, bob_phone, bob_laptop):
        on_user = device.events(f"user:{device.identity.user_id}", "new_message")
        assert [(m["id"], m["inbox_seq"]) for m in on_user] == [(m.id, i) for i, m in enumerate(sent, 1)]
        assert [m["id"] for m in device.events(f"conversation:{cid}", "new_message")] == [m.id for m in sent]
    # Same serializer and join_ref: the very same bytes object, encoded once per entry.
    phone, laptop = new_message_frames(bob_phone, "user:bob"), new_message_frames(bob_laptop, "user:bob")
    assert all(a is b for a, b in zip(phone, laptop, strict=True))
    on_conversation = [new_message_frames(d, f"conversation:{cid}") for d in (alice, bob_phone, bob_laptop)]
    assert all(a is b is c for a, b, c in zip(*on_conversation, strict=True))


async def test_message_sent_counts_every_live_frame_written_once_per_encoding(node: Node) -> None:
    cid = await node.conversation("alice", "bob", "carol")
    devices = await joined(node, cid, ("alice", "d1"), ("bob", "phone"), ("bob", "laptop"), ("carol", "d1"))
    events: list[tuple[float, float]] = []

    def handler(event: str, measurements: telemetry.Measurements, metadata: telemetry.Metadata) -> None:
        if metadata.get("kind") == "push":
            events.append((measurements["size"], measurements["count"]))

    telemetry.attach("test-live-sent", [telemetry.MESSAGE_SENT], handler)
    try:
        await node.send(cid, "alice", 2)
        await settle()
    finally:
        telemetry.detach("test-live-sent")

    topics = [(d, topic) for d in devices for topic in (f"conversation:{cid}", f"user:{d.identity.user_id}")]
    written = sum(len(new_message_frames(device, topic)) for device, topic in topics)
    assert written == 2 * 4 * 2  # two messages, four devices, two topics
    assert sum(count for _, count in events) == written
    # One conversation encoding and one spliced `user:` encoding per message (same serializer and join_ref).
    assert len(events) == 4


async def test_live_frames_are_the_bytes_a_per_device_push_or_a_replay_sends(node: Node) -> None:
    cid = await node.conversation("alice", "bob")
    [bob] = await joined(node, cid, ("bob", "phone"))
    # Another join_ref on user:bob (its second join), and a V1 socket: their own encodings.
    other = node.device("bob", "tablet")
    assert (await other.join(f"conversation:{cid}"))["status"] == "ok"
    assert (await other.join("user:bob"))["status"] == "ok"
    v1 = node.device("bob", "v1")
    v1.socket = type(v1.socket)(v1.transport, V1, node.router, node.pubsub, v1.identity)
    await v1.socket.on_text('{"topic": "user:bob", "event": "phx_join", "payload": {}, "ref": "1", "join_ref": "1"}')
    await settle()
    v1.transport.frames.clear()

    [message] = await node.send(cid, "alice", 1)
    await settle()

    live = new_message_frames(bob, "user:bob")[0]
    assert unframe(new_message_frames(other, "user:bob")[0])[1].startswith(b'["2",null,"user:bob"')
    [v1_frame] = [f for f in v1.transport.frames if b"new_message" in f]
    assert unframe(v1_frame)[1].startswith(b'{"topic":"user:bob","event":"new_message","payload":{')
    assert b'"ref":null}' in unframe(v1_frame)[1]
    # A device joining with the same join_ref replays the entry: byte for byte the live frame.
    late = node.device("bob", "late")
    assert (await late.join("user:bob", {"last_seq": 0}))["status"] == "ok"
    await settle()
    assert new_message_frames(late, "user:bob") == [live]
    assert message.id.encode() in live


async def test_a_publication_lost_on_the_user_stream_is_read_back_at_the_next_jump(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    cid = await node.conversation("alice", "bob")
    [bob] = await joined(node, cid, ("bob", "phone"))
    reads = count_reads(node, monkeypatch)

    # Committed but never published (its sender cancelled between the commit and the publication).
    lost = await node.store.append(cid, "alice", "api", "lost", "text", "lost", {}, None)
    [next_one] = await node.send(cid, "alice", 1)
    await settle()

    assert reads["inbox_after"] >= 1
    assert reads["messages_after"] >= 1
    on_user = bob.events("user:bob", "new_message")
    assert [(m["id"], m["inbox_seq"]) for m in on_user] == [(lost.message.id, 1), (next_one.id, 2)]
    assert [m["seq"] for m in bob.events(f"conversation:{cid}", "new_message")] == [1, 2]


async def test_the_fan_out_follows_the_membership_the_write_read(node: Node) -> None:
    cid = await node.conversation("alice", "bob")
    carol, bob = node.device("carol"), node.device("bob")
    assert (await carol.join("user:carol"))["status"] == "ok"
    assert (await bob.join("user:bob"))["status"] == "ok"
    await settle()
    await node.store.add_member(cid, "carol")
    await node.store.remove_member(cid, "bob")

    [message] = await node.send(cid, "alice", 1)
    await settle()
    # No membership read or cache before the write: the recipients are the write's own.
    assert [m["id"] for m in carol.events("user:carol", "new_message")] == [message.id]
    assert bob.events("user:bob", "new_message") == []
