"""Issue 5, criteria 1 and 3, with the real phoenix.js client (tests/js/conformance.js `script`).

1. Two users exchange messages on a conversation: each `send_message` is acked
   `{message_id, seq, duplicate: false}`, and `new_message` reaches the conversation topic and the
   `user:` topic of every connected device of both users (the sender's own devices included).
3. Retries of one `client_message_id`, also across a reconnect, store one message and get identical
   acks (`duplicate: true` on the repeats), with no second broadcast.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

from tests.e2e.conftest import Chat
from tests.e2e.phx import PhxClient, next_client_ip
from tests.phoenix_js import events_of, run_scenario_async

pytestmark = pytest.mark.integration

HARNESS_TIMEOUT = 45.0


def _connect(chat: Chat, socket: str, user: str, device: str) -> dict[str, Any]:
    return {"op": "connect", "socket": socket, "params": chat.params(user, device)}


def _join(socket: str, topic: str, channel: str) -> dict[str, Any]:
    return {"op": "join", "socket": socket, "topic": topic, "channel": channel}


def _send(channel: str, cmid: str, content: str, push_id: str, **kw: Any) -> dict[str, Any]:
    payload = {"client_message_id": cmid, "content": content, "type": "text"}
    return {"op": "push", "channel": channel, "event": "send_message", "payload": payload, "id": push_id, **kw}


def _wait_messages(socket: str, topic: str, count: int, since: str = "start") -> dict[str, Any]:
    match = {"kind": "chan_msg", "socket": socket, "topic": topic, "event": "new_message"}
    return {"op": "wait", "match": match, "count": count, "since": since, "wait_ms": 10_000}


def _reply(result: dict[str, Any], push_id: str) -> dict[str, Any]:
    [reply] = events_of(result, "push_reply", id=push_id)
    return reply


def _received(result: dict[str, Any], socket: str, topic: str) -> list[dict[str, Any]]:
    return [e["payload"] for e in events_of(result, "chan_msg", socket=socket, topic=topic, event="new_message")]


async def test_two_users_exchange_messages_every_device_gets_every_message(chat: Chat) -> None:
    """alice (phone, laptop) and bob (phone, web): 3 messages back and forth."""
    user_a, user_b, conv = "user:alice", "user:bob", chat.topic
    devices = {"a1": ("alice", "phone"), "a2": ("alice", "laptop"), "b1": ("bob", "phone"), "b2": ("bob", "web")}
    steps: list[dict[str, Any]] = []
    for socket, (user, device) in devices.items():
        steps += [_connect(chat, socket, user, device), _join(socket, f"user:{user}", f"{socket}_user")]
    # the laptop is on its inbox only; the others also have the conversation open
    for socket in ("a1", "b1", "b2"):
        steps.append(_join(socket, conv, f"{socket}_conv"))
    steps += [
        _send("a1_conv", "a-1", "hi bob", "m1"),
        _send("b1_conv", "b-1", "hi alice", "m2"),
        _send("a1_conv", "a-2", "how are you?", "m3"),
    ]
    for socket in devices:
        user_topic = user_a if socket.startswith("a") else user_b
        steps.append(_wait_messages(socket, user_topic, 3))
    for socket in ("a1", "b1", "b2"):
        steps.append(_wait_messages(socket, conv, 3))

    result = await run_scenario_async(chat.node.socket_url, "script", {"steps": steps}, timeout=HARNESS_TIMEOUT)

    for socket in devices:
        [join] = events_of(result, "join_reply", channel=f"{socket}_user")
        assert join["status"] == "ok"
        assert join["response"]["recovered"] is True
    acks = [_reply(result, m) for m in ("m1", "m2", "m3")]
    for ack, seq in zip(acks, (1, 2, 3), strict=True):
        assert ack["status"] == "ok"
        assert set(ack["response"]) == {"message_id", "seq", "duplicate"}
        assert ack["response"]["seq"] == seq
        assert ack["response"]["duplicate"] is False
    ids = [ack["response"]["message_id"] for ack in acks]
    assert len(set(ids)) == 3
    expected = [
        ("a-1", "alice", "phone", "hi bob", 1),
        ("b-1", "bob", "phone", "hi alice", 2),
        ("a-2", "alice", "phone", "how are you?", 3),
    ]
    for socket in devices:
        user_topic = user_a if socket.startswith("a") else user_b
        topics = [user_topic] + ([conv] if socket != "a2" else [])
        for topic in topics:
            got = _received(result, socket, topic)
            assert [m["id"] for m in got] == ids, (socket, topic)
            assert [
                (m["client_message_id"], m["sender_id"], m["sender_device_id"], m["content"], m["seq"]) for m in got
            ] == expected
            assert all(m["conversation_id"] == chat.conversation and m["type"] == "text" for m in got)
            if topic == user_topic:
                assert [m["inbox_seq"] for m in got] == [1, 2, 3]
    # the laptop never joined the conversation topic: nothing of it reached that socket
    assert not [e for e in events_of(result, "recv", socket="a2") if e.get("topic") == conv]
    # "ok, then broadcast": the sender's own conversation socket gets the ack before the message
    recv = [e for e in result["events"] if e["kind"] == "recv" and e["socket"] == "a1" and e.get("topic") == conv]
    ack_at = next(i for i, e in enumerate(recv) if e["event"] == "phx_reply" and e["ref"] == acks[0]["ref"])
    msg_at = next(i for i, e in enumerate(recv) if e["event"] == "new_message" and e["payload"]["id"] == ids[0])
    assert ack_at < msg_at
    # and the store has exactly these three
    store = chat.node.node.store
    assert store is not None
    page = await store.messages_after(chat.conversation, 0, 10)
    assert [m.id for m in page.messages] == ids


async def test_retries_of_one_client_message_id_store_one_message_and_ack_identically(chat: Chat) -> None:
    """Three sends of `retry-1` by alice's phone: twice on one socket, once after a reconnect; then a marker."""
    conv, user_b = chat.topic, "user:bob"
    steps: list[dict[str, Any]] = [
        _connect(chat, "b", "bob", "phone"),
        _join("b", user_b, "b_user"),
        _join("b", conv, "b_conv"),
        _connect(chat, "a", "alice", "phone"),
        _join("a", conv, "a_conv"),
        _send("a_conv", "retry-1", "only once", "try1"),
        _send("a_conv", "retry-1", "only once", "try2"),
        # the phone loses its connection and comes back on a new socket (same device)
        {"op": "disconnect", "socket": "a"},
        _connect(chat, "a_again", "alice", "phone"),
        _join("a_again", conv, "a_again_conv"),
        _send("a_again_conv", "retry-1", "only once", "try3"),
        # a later message: anything broadcast for the retries would reach bob before it (seq order)
        _send("a_again_conv", "marker-1", "after the retries", "marker"),
        _wait_messages("b", user_b, 2),
        _wait_messages("b", conv, 2),
    ]
    result = await run_scenario_async(chat.node.socket_url, "script", {"steps": steps}, timeout=HARNESS_TIMEOUT)

    tries = [_reply(result, t) for t in ("try1", "try2", "try3")]
    assert [t["status"] for t in tries] == ["ok", "ok", "ok"]
    first = tries[0]["response"]
    assert first["duplicate"] is False
    for repeat in tries[1:]:
        assert repeat["response"] == {**first, "duplicate": True}
    marker = _reply(result, "marker")["response"]
    assert marker["seq"] == first["seq"] + 1
    # bob got the message once on each topic, then the marker: no second broadcast
    for topic in (user_b, conv):
        assert [m["id"] for m in _received(result, "b", topic)] == [first["message_id"], marker["message_id"]]
    store = chat.node.node.store
    assert store is not None
    page = await store.messages_after(chat.conversation, 0, 10)
    assert [(m.client_message_id, m.id) for m in page.messages] == [
        ("retry-1", first["message_id"]),
        ("marker-1", marker["message_id"]),
    ]
    inbox = await store.inbox_after("bob", 0, 10)
    assert [e.message.id for e in inbox.entries] == [first["message_id"], marker["message_id"]]


async def test_concurrent_retries_from_two_sockets_of_the_sender_store_one_message(chat: Chat) -> None:
    """The same `client_message_id` pushed at once from two sockets of alice (e.g. a resend that
    races the original on a new connection): both land in one group commit or close to it."""
    conv = chat.topic
    node = chat.node

    def scenario() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        bob = PhxClient(node.socket_url, node.token("bob", "phone"), client_ip=next_client_ip(), name="bob")
        senders = [
            PhxClient(node.socket_url, node.token("alice", d), client_ip=next_client_ip(), name=d)
            for d in ("phone", "laptop", "tablet")
        ]
        try:
            assert bob.join("user:bob")["status"] == "ok"
            for s in senders:
                assert s.join(conv)["status"] == "ok"
            acks: list[dict[str, Any]] = []
            for round_ in range(5):
                payload = {"client_message_id": f"race-{round_}", "content": f"race {round_}"}
                refs = [(s, s.push(conv, "send_message", payload)) for s in senders]  # no waiting in between
                acks += [s.reply(conv, ref) for s, ref in refs]
            marker = senders[0].call(conv, "send_message", {"client_message_id": "marker", "content": "end"})
            bob.wait_for(
                lambda _: any(
                    m["id"] == marker["response"]["message_id"] for m in bob.events("user:bob", "new_message")
                ),
                what="the marker",
            )
            return acks, bob.events("user:bob", "new_message")
        finally:
            for c in (bob, *senders):
                c.close()

    acks, received = await trio.to_thread.run_sync(scenario)
    assert all(a["status"] == "ok" for a in acks)
    for round_ in range(5):
        group = [a["response"] for a in acks[3 * round_ : 3 * round_ + 3]]
        assert len({(r["message_id"], r["seq"]) for r in group}) == 1, group
        assert sorted(r["duplicate"] for r in group) == [False, True, True], group
    assert [m["client_message_id"] for m in received] == [f"race-{r}" for r in range(5)] + ["marker"]
    store = node.node.store
    assert store is not None
    page = await store.messages_after(chat.conversation, 0, 20)
    assert [m.seq for m in page.messages] == [1, 2, 3, 4, 5, 6]
