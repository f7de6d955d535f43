"""`conversation:<id>`: sends acked after commit, fan-out to every device, refusals (contract §2-§4)."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from tests.messaging.conftest import Node, settle
from whispr.delivery.store import StoreUnavailable
from whispr.security.gatekeeper import Refusal


def send(cmid: str, content: str = "hi", **extra: object) -> dict[str, object]:
    return {"client_message_id": cmid, "content": content, "type": "text", **extra}


async def test_two_users_exchange_messages_on_every_device(node: Node) -> None:
    cid = await node.conversation("alice", "bob")
    topic = f"conversation:{cid}"
    alice, bob_phone, bob_laptop = node.device("alice"), node.device("bob", "phone"), node.device("bob", "laptop")
    for device in (alice, bob_phone, bob_laptop):
        user = device.identity.user_id
        assert (await device.join(f"user:{user}"))["status"] == "ok"
        joined = await device.join(topic)
        assert joined == {"status": "ok", "response": {"conversation_id": cid, "last_seq": 0, "recovered": True}}
    await settle()

    ack = await alice.call(topic, "send_message", send("c1", "hello bob"))
    assert ack["status"] == "ok"
    assert ack["response"]["seq"] == 1
    assert ack["response"]["duplicate"] is False
    # The ack is written before any new_message reaches the sender (contract §3 "ok, then broadcast").
    assert alice.messages()[-1][3] == "phx_reply"
    await settle()
    reply = await bob_phone.call(topic, "send_message", send("c1", "hi alice"))
    assert reply["response"]["seq"] == 2
    await settle()

    ids = [ack["response"]["message_id"], reply["response"]["message_id"]]
    for device in (alice, bob_phone, bob_laptop):
        on_conversation = device.events(topic, "new_message")
        assert [m["id"] for m in on_conversation] == ids
        assert [m["seq"] for m in on_conversation] == [1, 2]
        on_user = device.events(f"user:{device.identity.user_id}", "new_message")
        assert [m["id"] for m in on_user] == ids
        assert [m["inbox_seq"] for m in on_user] == [1, 2]
    first = alice.events(topic, "new_message")[0]
    assert first["sender_id"] == "alice"
    assert first["sender_device_id"] == "d1"
    assert first["content"] == "hello bob"
    assert first["client_message_id"] == "c1"
    assert first["inserted_at"].endswith("Z")


async def test_retries_of_one_client_message_id_store_once_with_identical_acks(node: Node) -> None:
    """reliability D10: the same client_message_id three times, one of them across a reconnect."""
    cid = await node.conversation("alice", "bob")
    topic = f"conversation:{cid}"
    bob = node.device("bob")
    await bob.join("user:bob")
    alice = node.device("alice")
    await alice.join(topic)
    first = await alice.call(topic, "send_message", send("same", "once"))
    second = await alice.call(topic, "send_message", send("same", "once"))
    await alice.close()
    alice = node.device("alice")
    await alice.join(topic)
    third = await alice.call(topic, "send_message", send("same", "changed content is ignored"))
    await settle()

    assert first["response"]["duplicate"] is False
    for retry in (second, third):
        assert retry["status"] == "ok"
        assert retry["response"] == {**first["response"], "duplicate": True}
    page = await node.store.messages_after(cid, 0, 10)
    assert [m.content for m in page.messages] == ["once"]
    assert [m["id"] for m in bob.events("user:bob", "new_message")] == [first["response"]["message_id"]]


async def test_non_members_are_refused_and_revoked_members_are_closed(node: Node) -> None:
    cid = await node.conversation("alice", "bob")
    topic = f"conversation:{cid}"
    mallory = node.device("mallory")
    assert await mallory.join(topic) == {"status": "error", "response": {"reason": "not_member"}}
    assert await mallory.join("conversation:nope") == {"status": "error", "response": {"reason": "not_member"}}

    bob = node.device("bob")
    await bob.join(topic)
    await node.store.remove_member(cid, "bob")
    refused = await bob.call(topic, "send_message", send("c1"))
    assert refused == {"status": "error", "response": {"reason": "not_member"}}
    assert bob.messages()[-1][3] == "phx_close"
    assert (await node.store.messages_after(cid, 0, 10)).messages == []


async def test_api_revocation_stops_live_delivery_and_the_next_event_closes(node: Node) -> None:
    cid = await node.conversation("alice", "bob")
    topic = f"conversation:{cid}"
    bob = node.device("bob")
    await bob.join(topic)
    await settle()
    await node.store.remove_member(cid, "bob")
    node.deps.live.revoke(cid, "bob")
    await node.send(cid, "alice", 2)
    await settle()
    assert bob.events(topic, "new_message") == []
    assert await bob.call(topic, "typing_start") == {"status": "error", "response": {"reason": "not_member"}}
    assert bob.messages()[-1][3] == "phx_close"


async def test_invalid_payloads(node: Node) -> None:
    cid = await node.conversation("alice")
    topic = f"conversation:{cid}"
    alice = node.device("alice")
    await alice.join(topic)
    invalid = {"status": "error", "response": {"reason": "invalid_payload"}}
    payload: Any
    for payload in (
        {"content": "no id"},
        {"client_message_id": "", "content": "empty id"},
        {"client_message_id": 7, "content": "int id"},
        {"client_message_id": "x"},
        {"client_message_id": "x", "content": 5},
        {"client_message_id": "x", "content": "a", "type": "image"},
        {"client_message_id": "x", "content": "a", "metadata": []},
        {"client_message_id": "x", "content": "a", "reply_to": 3},
    ):
        assert await alice.call(topic, "send_message", payload) == invalid, payload
    for payload in ({}, {"up_to_seq": -1}, {"up_to_seq": True}, {"up_to_seq": "3"}):
        assert await alice.call(topic, "message_read", payload) == invalid, payload
    assert await alice.call(topic, "dance") == {"status": "error", "response": {"reason": "unknown_event"}}
    assert await node.device("alice", "d2").join(topic, {"last_seq": "x"}) == invalid
    assert (await node.store.messages_after(cid, 0, 10)).messages == []
    # metadata and reply_to are optional and stored as given
    ok = await alice.call(topic, "send_message", send("y", metadata={"k": [1]}, reply_to="m0"))
    stored = (await node.store.messages_after(cid, 0, 10)).messages[0]
    assert ok["status"] == "ok"
    assert stored.metadata == {"k": [1]}
    assert stored.reply_to == "m0"


async def test_guard_refusals_are_answered_and_blocks_close_after_the_reply(node: Node) -> None:
    cid = await node.conversation("alice")
    topic = f"conversation:{cid}"
    alice = node.device("alice")
    await alice.join(topic)
    guard = node.guards[alice.identity.socket_id]
    guard.message_refusals = [Refusal("message_too_large"), Refusal("rate_limit_exceeded", 1500)]
    big = await alice.call(topic, "send_message", send("a", "x" * 10_001))
    assert big == {"status": "error", "response": {"reason": "message_too_large"}}
    limited = await alice.call(topic, "send_message", send("b"))
    assert limited == {"status": "error", "response": {"reason": "rate_limit_exceeded", "retry_after_ms": 1500}}
    assert alice.transport.close_code is None
    guard.message_refusals = [Refusal("rate_limit_exceeded", 300_000, 1008)]
    blocked = await alice.call(topic, "send_message", send("c"))
    assert blocked == {"status": "error", "response": {"reason": "rate_limit_exceeded", "retry_after_ms": 300_000}}
    assert alice.transport.close_code == 1008
    assert (await node.store.messages_after(cid, 0, 10)).messages == []

    guard_bob = node.guard(node.device("bob").identity)
    guard_bob.join_refusals = [Refusal("rate_limit_exceeded", 2000)]
    bob = node.device("bob")
    assert await bob.join("user:bob") == {
        "status": "error",
        "response": {"reason": "rate_limit_exceeded", "retry_after_ms": 2000},
    }


async def test_store_outage_answers_service_unavailable_and_keeps_the_socket(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    cid = await node.conversation("alice")
    topic = f"conversation:{cid}"
    alice = node.device("alice")
    await alice.join(topic)

    async def down(*args: object, **kwargs: object) -> object:
        raise StoreUnavailable("down")

    with monkeypatch.context() as patch:
        patch.setattr(node.store, "append", down)
        refused = await alice.call(topic, "send_message", send("c1"))
    assert refused == {"status": "error", "response": {"reason": "service_unavailable"}}
    retried = await alice.call(topic, "send_message", send("c1"))
    assert retried["status"] == "ok"
    assert retried["response"]["duplicate"] is False
    assert alice.transport.close_code is None


async def test_typing_is_coalesced_per_user_on_the_virtual_clock(node: Node, autojump_clock: trio.abc.Clock) -> None:
    cid = await node.conversation("alice", "bob")
    topic = f"conversation:{cid}"
    alice_phone, alice_laptop, bob = node.device("alice", "phone"), node.device("alice", "laptop"), node.device("bob")
    for device in (alice_phone, alice_laptop, bob):
        await device.join(topic)
    refs = [await alice_phone.push(topic, "typing_start")]
    refs.append(await alice_laptop.push(topic, "typing_start"))  # same user, same state, inside 2 s: dropped
    refs.append(await alice_phone.push(topic, "typing_start"))
    await trio.sleep(1.0)
    refs.append(await alice_phone.push(topic, "typing_stop"))  # a change goes out at once
    refs.append(await alice_phone.push(topic, "typing_stop"))
    await trio.sleep(2.5)
    refs.append(await alice_phone.push(topic, "typing_stop"))  # the window has passed
    typing = bob.events(topic, "user_typing")
    assert typing == [
        {"user_id": "alice", "typing": True},
        {"user_id": "alice", "typing": False},
        {"user_id": "alice", "typing": False},
    ]
    # broadcast_from: to the user's other devices too, not to the sending socket
    assert alice_phone.events(topic, "user_typing") == []
    assert alice_laptop.events(topic, "user_typing") == typing
    # no reply, and droppable frames
    for device in (alice_phone, alice_laptop):
        assert not [m for m in device.messages() if m[3] == "phx_reply" and m[2] == topic and m[1] in refs[1:]]
    assert bob.transport.droppable[-3:] == [True, True, True]


async def test_message_read_broadcasts_a_status_to_the_others(node: Node) -> None:
    cid = await node.conversation("alice", "bob")
    topic = f"conversation:{cid}"
    alice, bob = node.device("alice"), node.device("bob")
    await alice.join(topic)
    await bob.join(topic)
    assert await bob.call(topic, "message_read", {"up_to_seq": 4}) == {"status": "ok", "response": {}}
    status = {"user_id": "bob", "device_id": "d1", "status": "read", "up_to_seq": 4, "at": "2023-11-14T22:13:20.000Z"}
    assert alice.events(topic, "message_status") == [status]
    assert bob.events(topic, "message_status") == []


async def test_conversation_join_replays_after_last_seq(node: Node) -> None:
    cid = await node.conversation("alice", "bob")
    topic = f"conversation:{cid}"
    await node.send(cid, "alice", 5)
    bob = node.device("bob")
    assert (await bob.join(topic, {"last_seq": 2}))["response"] == {
        "conversation_id": cid,
        "last_seq": 5,
        "recovered": True,
    }
    await settle()
    await node.send(cid, "alice", 2, prefix="n")
    await settle()
    assert [m["seq"] for m in bob.events(topic, "new_message")] == [3, 4, 5, 6, 7]
    events = [m[3] for m in bob.messages()]
    assert events.index("phx_reply") < events.index("presence_state") < events.index("new_message")
