"""Conformance, channel level: join, refusals, refs, pushes, broadcasts, leave, crash, stop, limits.

protocol.md §10 items 9-20, with the app's real channels (`user:`, `conversation:`, `notification:`)
and faults injected into the running node's store, as phoenix.js 1.8.16 sees them on the wire.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest
import trio

from tests.conformance.conftest import World
from tests.conformance.support import has_joined, index_of, recv_frames, run_js, wait_until
from tests.phoenix_js import events_of
from whispr.security.limits import LimitsConfig, Rate

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class InjectedFault(RuntimeError):
    """An unexpected error planted in the store: the channel callback that meets it crashes."""


@contextmanager
def fault_once(
    objects: Sequence[object], method: str, when: Callable[..., bool] = lambda *a, **k: True
) -> Iterator[list[Any]]:
    """Make `method` of `objects` (every node's store: the socket may land on any) raise `InjectedFault`
    on the first call, on any of them, for which `when(*args)` holds; restored on exit. Yields the list
    of argument tuples of the calls that raised (at most one)."""
    raised: list[Any] = []

    def planted(original: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not raised and when(*args, **kwargs):
                raised.append(args)
                raise InjectedFault(f"injected fault in {method}")
            return await original(*args, **kwargs)

        return wrapper

    originals = [getattr(obj, method) for obj in objects]
    for obj, original in zip(objects, originals, strict=True):
        setattr(obj, method, planted(original))
    try:
        yield raised
    finally:
        for obj, original in zip(objects, originals, strict=True):
            setattr(obj, method, original)


def connect(world: World, user: str = "alice", device: str = "d1", socket: str = "s1", **kw: Any) -> dict[str, Any]:
    return {"op": "connect", "socket": socket, "params": world.params(user, device), **kw}


# -- 9. join accepted --------------------------------------------------------------------------------


async def test_09_join_ok_echoes_both_refs_and_later_pushes_carry_join_ref(world: World) -> None:
    result = await run_js(world.server, "join", {"topic": "user:alice", "params": world.params("alice", "d1")})
    summary = result["summary"]
    assert summary["status"] == "ok"
    join_ref = summary["join_ref"]
    assert summary["sent_frame"] == [join_ref, join_ref, "user:alice", "phx_join", {}]
    reply = summary["reply_frame"]
    assert reply["join_ref"] == reply["ref"] == join_ref
    assert reply["event"] == "phx_reply"
    response = reply["payload"]["response"]
    assert reply["payload"]["status"] == "ok"
    assert response["user_id"] == "alice"
    assert response["device_id"] == "d1"
    assert isinstance(response["server_time"], int)
    assert response["recovered"] is True
    # the reply comes first; then presence_state, a push carrying J (protocol.md §5.1)
    state = summary["frames_after_reply"][0]
    assert state["event"] == "presence_state"
    assert state["join_ref"] == join_ref
    assert state["ref"] is None
    [meta] = state["payload"]["alice"]["metas"]
    assert meta["device_id"] == "d1"
    assert isinstance(meta["phx_ref"], str)
    assert meta["phx_ref"]
    assert summary["join_attempts"] == 1


@pytest.mark.parametrize("topic", ["conversation", "notification"])
async def test_09_join_ok_on_conversation_and_notification(world: World, topic: str) -> None:
    name = world.conv_topic if topic == "conversation" else "notification:alice"
    result = await run_js(world.server, "join", {"topic": name, "params": world.params("alice", "d1")})
    summary = result["summary"]
    assert summary["status"] == "ok"
    assert summary["reply_frame"]["join_ref"] == summary["reply_frame"]["ref"] == summary["join_ref"]
    if topic == "conversation":
        assert summary["response"] == {"conversation_id": world.conversation, "last_seq": 0, "recovered": True}
        assert summary["frames_after_reply"][0]["event"] == "presence_state"
        assert summary["frames_after_reply"][0]["join_ref"] == summary["join_ref"]
    else:
        assert summary["response"] == {}


# -- 10. join refused by the app -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "reason"),
    [
        ("user:bob", "unauthorized"),
        ("notification:bob", "unauthorized"),
        ("conversation:other", "not_member"),
        ("conversation:no-such-conversation", "not_member"),
    ],
)
async def test_10_join_refused_with_reason_and_no_phx_close(world: World, topic: str, reason: str) -> None:
    if topic == "conversation:other":
        topic = f"conversation:{world.other_conversation}"
    result = await run_js(
        world.server, "join", {"topic": topic, "params": world.params("alice", "d1"), "after_ms": 300}
    )
    summary = result["summary"]
    assert summary["status"] == "error"
    assert summary["response"] == {"reason": reason}
    assert summary["reply_frame"]["ref"] == summary["sent_frame"][1]
    assert summary["left"] is True  # the harness's error handler called channel.leave()
    assert summary["join_attempts"] == 1
    # after the refusal: only the reply to phoenix.js's own phx_leave; no phx_close, no phx_error
    assert [(f["event"], f["payload"]["status"]) for f in summary["frames_after_reply"]] == [("phx_reply", "ok")]
    assert not recv_frames(result, event="phx_close")
    assert not events_of(result, "ws_close")


# -- 11. join crashes -------------------------------------------------------------------------------


async def test_11_join_crash_is_refused_and_socket_survives(world: World) -> None:
    conv = world.conv_topic
    steps = [
        connect(world),
        {"op": "join", "topic": "user:alice", "channel": "u"},
        {"op": "join", "topic": conv, "channel": "c1"},  # crashes in the store
        {"op": "push", "channel": "u", "event": "ping"},
        {"op": "join", "topic": conv, "channel": "c2"},  # a new channel object, same topic: joins
        {"op": "push", "channel": "c2", "event": "message_read", "payload": {"up_to_seq": 0}},
    ]
    with fault_once(world.server.stores, "is_member") as raised:
        result = await run_js(world.server, "script", {"steps": steps})
    assert len(raised) == 1
    [crashed] = events_of(result, "join_reply", channel="c1")
    assert crashed["status"] == "error"
    assert crashed["response"] == {"reason": "join crashed"}
    [ok] = events_of(result, "join_reply", channel="c2")
    assert ok["status"] == "ok"
    assert events_of(result, "push_reply", channel="u")[0]["status"] == "ok"
    assert events_of(result, "push_reply", channel="c2")[0]["status"] == "ok"
    assert not events_of(result, "chan_error", channel="u")
    assert not recv_frames(result, event="phx_error")
    assert not events_of(result, "ws_close")


# -- 12. unmatched topic ----------------------------------------------------------------------------


async def test_12_join_of_unrouted_topic_is_unmatched_with_null_join_ref(world: World) -> None:
    args = {"topic": "room:lobby", "event": "ping", "params": world.params("alice", "d1")}
    result = await run_js(world.server, "unmatched", args)
    summary = result["summary"]
    assert summary["status"] == "error"
    assert summary["response"] == {"reason": "unmatched topic"}
    reply = summary["reply_frame"]
    assert reply["join_ref"] is None
    assert reply["ref"] == summary["sent_frame"][1]
    assert reply["payload"] == {"status": "error", "response": {"reason": "unmatched topic"}}
    push = summary["push_reply_frame"]
    assert push["join_ref"] is None
    assert push["payload"] == {"status": "error", "response": {"reason": "unmatched topic"}}


# -- 13. channel limit --------------------------------------------------------------------------------


async def test_13_101st_channel_is_refused_too_many_channels(world: World) -> None:
    """The channel cap (100) can only be reached with the join rate (30/min, contract §5) raised: the
    node has no setting for it, so the test relaxes the running gatekeeper's limits before connecting."""
    for running in world.server.nodes:
        gatekeeper = running.node.gatekeeper
        assert gatekeeper is not None
        gatekeeper._limits = dataclasses.replace(  # type: ignore[attr-defined]
            LimitsConfig(), join_rate=Rate("join", 1000, 60.0, "sliding_window")
        )
    topics = ["user:alice", "notification:alice"]
    for _ in range(99):
        topics.append(f"conversation:{await world.server.store.create_conversation(['alice'])}")
    steps: list[dict[str, Any]] = [connect(world)]
    steps += [{"op": "join", "topic": t, "channel": f"c{i}"} for i, t in enumerate(topics)]
    steps += [{"op": "push", "channel": "c0", "event": "ping"}]
    result = await run_js(world.server, "script", {"steps": steps, "deadline_ms": 30_000})
    replies = events_of(result, "join_reply")
    assert [r["status"] for r in replies[:100]] == ["ok"] * 100
    last = replies[100]
    assert last["channel"] == "c100"
    assert last["status"] == "error"
    assert last["response"] == {"reason": "too many channels joined"}
    assert events_of(result, "push_reply", channel="c0")[0]["status"] == "ok"  # the socket lives on
    assert not events_of(result, "ws_close")


async def _join_flood(world: World) -> tuple[dict[str, Any], dict[str, Any]]:
    """30 joins on one socket (the contract's per-minute budget), then a 31st; (result, ws_close)."""
    store = world.server.store
    topics = ["user:alice", "notification:alice"]
    for _ in range(28):
        topics.append(f"conversation:{await store.create_conversation(['alice'])}")
    steps: list[dict[str, Any]] = [connect(world, reconnect_ms=60_000)]
    steps += [{"op": "join", "topic": t, "channel": f"c{i}"} for i, t in enumerate(topics)]
    steps += [{"op": "join", "topic": world.conv_topic, "channel": "over", "wait": False}]
    steps += [{"op": "wait", "match": {"kind": "ws_close"}}]
    result = await run_js(world.server, "script", {"steps": steps, "deadline_ms": 30_000})
    assert [r["status"] for r in events_of(result, "join_reply")][:30] == ["ok"] * 30
    [close] = events_of(result, "ws_close")
    return result, close


async def test_13_join_flood_over_the_join_rate_closes_1008(world: World) -> None:
    """contract.md §5: more than 30 joins a minute on one socket → refused, then blocked: close 1008."""
    _, close = await _join_flood(world)
    assert close["code"] == 1008


async def test_13_join_over_the_join_rate_is_answered_rate_limit_exceeded_before_close(world: World) -> None:
    """contract.md §5 / gatekeeper docstring: the refused join gets `error rate_limit_exceeded` (with
    retry_after_ms), and only then is the socket closed with 1008."""
    result, close = await _join_flood(world)
    [join] = sent_frames_of(result, "phx_join", world.conv_topic)
    replies = recv_frames(result, ref=join["ref"], event="phx_reply")
    assert replies, "the refused join got no reply before the close"
    assert replies[0]["payload"]["status"] == "error"
    assert replies[0]["payload"]["response"]["reason"] == "rate_limit_exceeded"
    assert isinstance(replies[0]["payload"]["response"]["retry_after_ms"], int)
    assert index_of(result, replies[0]) < index_of(result, close)


def sent_frames_of(result: dict[str, Any], event: str, topic: str) -> list[dict[str, Any]]:
    return [e for e in result["events"] if e["kind"] == "send" and e["event"] == event and e["topic"] == topic]


# -- 14. duplicate join -----------------------------------------------------------------------------


async def test_14_duplicate_join_replies_ok_then_closes_old_join(world: World) -> None:
    args = {"topic": world.conv_topic, "params": world.params("alice", "d1")}
    result = await run_js(world.server, "duplicate_join", args)
    summary = result["summary"]
    first, second = summary["first_join_ref"], summary["second_join_ref"]
    assert first != second
    assert summary["second_reply"]["join_ref"] == summary["second_reply"]["ref"] == second
    assert summary["second_reply"]["payload"]["status"] == "ok"
    assert summary["close_frame"] == {
        "join_ref": first,
        "ref": first,
        "topic": world.conv_topic,
        "event": "phx_close",
        "payload": {},
    }
    assert summary["reply_before_close"] is True
    assert summary["channel_closed"] is True  # phoenix.js's channel was the first join
    assert len(recv_frames(result, event="phx_close")) == 1


async def test_14_after_duplicate_join_only_the_new_instance_is_subscribed(world: World) -> None:
    """The old instance is gone server-side: a message after the duplicate join arrives once, for the
    new join_ref (or as a broadcast), not once per instance."""
    conv = world.conv_topic
    steps = [
        connect(world, "alice", "d1", "a"),
        connect(world, "bob", "b1", "b"),
        {"op": "join", "socket": "a", "topic": conv, "channel": "ac"},
        {"op": "join", "socket": "b", "topic": conv, "channel": "bc"},
        {"op": "raw_push", "socket": "a", "topic": conv, "event": "phx_join", "id": "dup"},
        {"op": "wait", "match": {"kind": "recv", "socket": "a", "event": "phx_close"}},
        {
            "op": "push",
            "channel": "bc",
            "event": "send_message",
            "payload": {"client_message_id": "m1", "content": "x"},
        },
        {"op": "wait", "match": {"kind": "recv", "socket": "a", "topic": conv, "event": "new_message"}},
        {"op": "push", "channel": "bc", "event": "message_read", "payload": {"up_to_seq": 1}},
        {"op": "wait", "match": {"kind": "recv", "socket": "a", "topic": conv, "event": "message_status"}},
    ]
    result = await run_js(world.server, "script", {"steps": steps})
    [dup] = events_of(result, "raw_sent", id="dup")
    old_join_ref = events_of(result, "join_reply", channel="ac")[0]["join_ref"]
    [close] = recv_frames(result, "a", event="phx_close")
    assert close["join_ref"] == close["ref"] == old_join_ref
    [message] = recv_frames(result, "a", topic=conv, event="new_message")  # once, not once per instance
    assert message["join_ref"] in (None, dup["ref"])
    assert message["payload"]["client_message_id"] == "m1"
    assert len(recv_frames(result, "a", topic=conv, event="message_status")) == 1
    # the message came after the close, so phoenix.js's (closed) channel object does not see it
    assert index_of(result, close) < index_of(result, message)


# -- 15. pushes, replies, broadcasts --------------------------------------------------------------------


async def test_15_push_reply_carries_request_ref_and_channel_join_ref(world: World) -> None:
    pushes = [
        {"event": "ping"},
        {"event": "heartbeat"},
        {"event": "sync", "payload": {"since_seq": 0, "limit": 10}},
        {"event": "no_such_event"},
    ]
    args = {"topic": "user:alice", "params": world.params("alice", "d1"), "pushes": pushes}
    result = await run_js(world.server, "push", args)
    join_ref = result["summary"]["join"]["join_ref"]
    replies = result["summary"]["replies"]
    assert [(r["event"], r["status"]) for r in replies] == [
        ("ping", "ok"),
        ("heartbeat", "ok"),
        ("sync", "ok"),
        ("no_such_event", "error"),
    ]
    for reply in replies:
        assert reply["frame"]["ref"] == reply["ref"] != join_ref
        assert reply["frame"]["join_ref"] == join_ref
        assert reply["frame"]["topic"] == "user:alice"
        assert reply["frame"]["event"] == "phx_reply"
    assert replies[0]["response"]["pong"] is True
    assert replies[1]["response"] == {"status": "alive"}
    assert replies[2]["response"] == {"messages": [], "last_seq": 0, "has_more": False}
    assert replies[3]["response"] == {"reason": "unknown_event"}


async def test_15_broadcasts_arrive_with_null_join_ref_and_ref(world: World) -> None:
    conv = world.conv_topic
    steps = [
        connect(world, "alice", "d1", "a"),
        connect(world, "bob", "b1", "b"),
        {"op": "join", "socket": "a", "topic": conv, "channel": "ac"},
        {"op": "join", "socket": "b", "topic": conv, "channel": "bc"},
        {
            "op": "push",
            "channel": "bc",
            "event": "send_message",
            "payload": {"client_message_id": "m1", "content": "hi"},
        },
        {"op": "push", "channel": "bc", "event": "message_read", "payload": {"up_to_seq": 1}},
        {"op": "push", "channel": "bc", "event": "typing_start", "wait": False},
        {"op": "wait", "match": {"kind": "chan_msg", "channel": "ac", "event": "message_status"}},
        {"op": "wait", "match": {"kind": "chan_msg", "channel": "ac", "event": "user_typing"}},
    ]
    result = await run_js(world.server, "script", {"steps": steps})
    [send] = events_of(result, "push_reply", channel="bc", event="send_message")
    assert send["status"] == "ok"
    assert send["response"]["seq"] == 1
    assert send["response"]["duplicate"] is False
    assert isinstance(send["response"]["message_id"], str)
    [status] = recv_frames(result, "a", event="message_status")
    assert status["join_ref"] is None
    assert status["ref"] is None
    assert status["topic"] == conv
    assert {k: status["payload"][k] for k in ("user_id", "device_id", "status", "up_to_seq")} == {
        "user_id": "bob",
        "device_id": "b1",
        "status": "read",
        "up_to_seq": 1,
    }
    [typing] = recv_frames(result, "a", event="user_typing")
    assert typing["frame"] == [None, None, conv, "user_typing", {"user_id": "bob", "typing": True}]
    # broadcast_from: the sender's own socket gets neither
    assert not recv_frames(result, "b", event="message_status")
    assert not recv_frames(result, "b", event="user_typing")
    # phoenix.js dispatched both to alice's channel
    assert events_of(result, "chan_msg", channel="ac", event="message_status")
    assert events_of(result, "chan_msg", channel="ac", event="user_typing")


async def test_15_new_message_reaches_online_members_live(world: World) -> None:
    """contract.md §3/§4.4: after the ok, `new_message` goes to every subscriber of the conversation
    (the sender's device included) and to `user:<member>` of every member's connected devices."""
    conv = world.conv_topic
    steps = [
        connect(world, "alice", "d1", "a"),
        connect(world, "bob", "b1", "b"),
        {"op": "join", "socket": "a", "topic": conv, "channel": "ac"},
        {"op": "join", "socket": "a", "topic": "user:alice", "channel": "au"},
        {"op": "join", "socket": "b", "topic": conv, "channel": "bc"},
        {
            "op": "push",
            "channel": "bc",
            "event": "send_message",
            "payload": {"client_message_id": "m1", "content": "hi"},
        },
        {"op": "wait", "match": {"kind": "chan_msg", "channel": "ac", "event": "new_message"}, "wait_ms": 3000},
        {"op": "wait", "match": {"kind": "chan_msg", "channel": "au", "event": "new_message"}, "wait_ms": 3000},
        {"op": "wait", "match": {"kind": "chan_msg", "channel": "bc", "event": "new_message"}, "wait_ms": 3000},
    ]
    result = await run_js(world.server, "script", {"steps": steps})
    [send] = events_of(result, "push_reply", channel="bc", event="send_message")
    for socket, channel in (("a", "ac"), ("a", "au"), ("b", "bc")):
        [frame] = [
            f
            for f in recv_frames(result, socket, event="new_message")
            if f["topic"] == ("user:alice" if channel == "au" else conv)
        ]
        assert frame["ref"] is None
        # a broadcast (null) or a push with the channel's current join_ref: phoenix.js dispatches both
        assert frame["join_ref"] in (None, events_of(result, "join_reply", channel=channel)[0]["join_ref"])
        assert frame["payload"]["id"] == send["response"]["message_id"]
        assert frame["payload"]["content"] == "hi"
        assert frame["payload"]["sender_id"] == "bob"
    # on the sender's own socket: the ok first, then the message (contract.md §3 "ok, then broadcast")
    [ok] = recv_frames(result, "b", ref=send["ref"])
    [own] = recv_frames(result, "b", event="new_message")
    assert index_of(result, ok) < index_of(result, own)


# -- 16. push to a topic not joined -------------------------------------------------------------------


async def test_16_push_to_unjoined_topic_is_unmatched_and_reaches_no_channel(world: World) -> None:
    conv = world.conv_topic
    steps = [
        connect(world),
        {"op": "join", "topic": "user:alice", "channel": "u"},
        {
            "op": "raw_push",
            "topic": conv,
            "event": "send_message",
            "payload": {"client_message_id": "x", "content": "no"},
            "id": "p1",
        },
        {
            "op": "raw_push",
            "topic": conv,
            "event": "send_message",
            "payload": {"client_message_id": "y", "content": "no"},
            "join_ref": "12345",
            "id": "p2",
        },
        {"op": "push", "channel": "u", "event": "ping"},
    ]
    result = await run_js(world.server, "script", {"steps": steps})
    for raw in events_of(result, "raw_sent"):
        [reply] = recv_frames(result, ref=raw["ref"], event="phx_reply")
        assert reply["join_ref"] is None
        assert reply["topic"] == conv
        assert reply["payload"] == {"status": "error", "response": {"reason": "unmatched topic"}}
    assert events_of(result, "push_reply", channel="u")[0]["status"] == "ok"
    store = world.server.store
    assert (await store.messages_after(world.conversation, 0, 10)).messages == []  # nothing was stored


# -- 17. stale join_ref ----------------------------------------------------------------------------


async def test_17_stale_join_ref_is_ignored_and_null_join_ref_accepted(world: World) -> None:
    steps = [
        connect(world),
        {"op": "join", "topic": "user:alice", "channel": "u"},
        {"op": "raw_push", "topic": "user:alice", "event": "phx_join", "id": "rejoin"},  # a new instance
        {"op": "raw_push", "topic": "user:alice", "event": "ping", "join_ref_of": "u", "wait": False, "id": "stale"},
        {"op": "raw_push", "topic": "user:alice", "event": "ping", "join_ref": None, "id": "null"},
    ]
    result = await run_js(world.server, "script", {"steps": steps})
    raws = {e["id"]: e for e in events_of(result, "raw_sent")}
    first_join_ref = events_of(result, "join_reply", channel="u")[0]["join_ref"]
    assert raws["stale"]["join_ref"] == first_join_ref
    new_join_ref = raws["rejoin"]["ref"]
    assert not recv_frames(result, ref=raws["stale"]["ref"])  # silently dropped (frames are in order)
    [ok] = recv_frames(result, ref=raws["null"]["ref"])
    assert ok["join_ref"] == new_join_ref
    assert ok["payload"]["status"] == "ok"
    assert ok["payload"]["response"]["pong"] is True


# -- 18. leave ---------------------------------------------------------------------------------------


async def test_18_leave_replies_ok_then_phx_close_and_later_push_is_unmatched(world: World) -> None:
    args = {"topic": "user:alice", "event": "ping", "params": world.params("alice", "d1")}
    result = await run_js(world.server, "leave", args)
    summary = result["summary"]
    join_ref = summary["join_ref"]
    assert summary["leave_sent"]["join_ref"] == join_ref
    assert summary["leave_reply"] == {
        "join_ref": join_ref,
        "ref": summary["leave_sent"]["ref"],
        "topic": "user:alice",
        "event": "phx_reply",
        "payload": {"status": "ok", "response": {}},
    }
    assert summary["close_frame"] == {
        "join_ref": join_ref,
        "ref": join_ref,
        "topic": "user:alice",
        "event": "phx_close",
        "payload": {},
    }
    leave_reply = recv_frames(result, ref=summary["leave_sent"]["ref"])[0]
    close = recv_frames(result, event="phx_close")[0]
    assert index_of(result, leave_reply) < index_of(result, close)
    assert summary["channel_closed"] is True
    assert summary["push_after_leave_sent"]["join_ref"] == join_ref
    after = summary["push_after_leave_reply"]
    assert after["join_ref"] is None
    assert after["payload"] == {"status": "error", "response": {"reason": "unmatched topic"}}


async def test_18_leave_of_topic_not_joined_is_ok(world: World) -> None:
    steps = [connect(world), {"op": "raw_push", "topic": "user:alice", "event": "phx_leave", "id": "leave"}]
    result = await run_js(world.server, "script", {"steps": steps})
    [raw] = events_of(result, "raw_sent")
    [reply] = recv_frames(result, ref=raw["ref"])
    assert reply["payload"] == {"status": "ok", "response": {}}
    assert not recv_frames(result, event="phx_close")


# -- 19. channel crash --------------------------------------------------------------------------------


async def test_19_channel_crash_sends_phx_error_and_phoenix_js_rejoins(world: World) -> None:
    steps = [
        connect(world, rejoin_ms=50),
        {"op": "join", "topic": "user:alice", "channel": "u"},
        {"op": "join", "topic": "notification:alice", "channel": "n"},
        {"op": "join", "topic": world.conv_topic, "channel": "c"},
        # `sync` with limit 7 reads the inbox with limit 7: that read crashes
        {
            "op": "push",
            "channel": "u",
            "event": "sync",
            "payload": {"since_seq": 0, "limit": 7},
            "wait": False,
            "timeout_ms": 3000,
            "id": "boom",
        },
        {"op": "wait", "match": {"kind": "chan_error", "channel": "u"}},
        {"op": "wait", "match": {"kind": "join_reply", "channel": "u", "status": "ok"}, "count": 2},
        {"op": "push", "channel": "u", "event": "ping", "id": "after"},
        {"op": "push", "channel": "n", "event": "notification_read", "payload": {"ids": []}, "id": "n"},
        {"op": "push", "channel": "c", "event": "message_read", "payload": {"up_to_seq": 0}, "id": "c"},
    ]
    with fault_once(world.server.stores, "inbox_after", lambda user, after, limit: limit == 7) as raised:
        result = await run_js(world.server, "script", {"steps": steps})
    assert raised == [("alice", 0, 7)]
    joins = events_of(result, "join_reply", channel="u")
    first, second = joins[0]["join_ref"], joins[1]["join_ref"]
    assert first != second
    assert [j["status"] for j in joins] == ["ok", "ok"]
    [error] = recv_frames(result, event="phx_error")
    assert error["frame"] == [first, first, "user:alice", "phx_error", {"reason": "channel_crash"}]
    assert events_of(result, "chan_error", channel="u")[0]["reason"] == {"reason": "channel_crash"}
    # the rejoin is a new phx_join whose ref becomes the join_ref
    rejoin = [f for f in sent_frames_of(result, "phx_join", "user:alice")][1]
    assert rejoin["join_ref"] == rejoin["ref"] == second
    after = events_of(result, "push_reply", id="after")[0]
    assert after["status"] == "ok"
    assert after["join_ref"] == second
    # the in-flight push got no reply; the other topics of the socket were not touched
    assert [r["status"] for r in events_of(result, "push_reply", id="boom")] in ([], ["timeout"])
    assert events_of(result, "push_reply", id="n")[0]["status"] == "ok"
    assert events_of(result, "push_reply", id="c")[0]["status"] == "ok"
    assert not events_of(result, "chan_error", channel="n")
    assert not events_of(result, "chan_error", channel="c")
    assert len(events_of(result, "join_reply", channel="n")) == 1
    assert len(events_of(result, "join_reply", channel="c")) == 1
    assert not events_of(result, "ws_close")


# -- 20. channel stops by itself ---------------------------------------------------------------------


async def test_20_channel_stop_sends_phx_close_and_client_does_not_rejoin(world: World) -> None:
    """Membership revoked while joined: the next push is refused `not_member`, then `phx_close` for
    the channel's join_ref (contract §3), and phoenix.js does not rejoin (protocol.md §4.5)."""
    node = world.server.nodes[0].node  # any node: the store is shared, revoke and broadcast reach every node
    assert node.store is not None
    assert node.deps is not None
    assert node.pubsub is not None
    conv = world.conv_topic
    steps = [
        connect(world, rejoin_ms=50),
        {"op": "join", "topic": "user:alice", "channel": "u"},
        {"op": "join", "topic": conv, "channel": "c"},
        {"op": "wait", "match": {"kind": "recv", "topic": "user:alice", "event": "test_revoked"}, "wait_ms": 8000},
        {"op": "push", "channel": "c", "event": "message_read", "payload": {"up_to_seq": 0}, "id": "refused"},
        {"op": "wait", "match": {"kind": "chan_close", "channel": "c"}},
        {"op": "sleep", "ms": 400},  # several rejoin periods (50 ms): no rejoin may happen
    ]
    results: dict[str, Any] = {}

    async def run() -> None:
        results["r"] = await run_js(world.server, "script", {"steps": steps})

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        await wait_until(lambda: has_joined(world.server, "alice", "d1", "user:alice", conv), what="alice joined")
        # what the service API's remove-member does (whispr.api.service)
        await node.store.remove_member(world.conversation, "alice")
        node.deps.live.revoke(world.conversation, "alice")
        # then tell the script, with a broadcast on its user topic
        node.pubsub.broadcast("user:alice", "test_revoked", {})
    result = results["r"]
    [refused] = events_of(result, "push_reply", id="refused")
    assert refused["status"] == "error"
    assert refused["response"] == {"reason": "not_member"}
    join_ref = events_of(result, "join_reply", channel="c")[0]["join_ref"]
    [close] = recv_frames(result, event="phx_close", topic=conv)
    assert close["frame"] == [join_ref, join_ref, conv, "phx_close", {}]
    reply = recv_frames(result, ref=refused["ref"])[0]
    assert index_of(result, reply) < index_of(result, close)
    assert len(sent_frames_of(result, "phx_join", conv)) == 1  # no rejoin
    assert not recv_frames(result, event="phx_error")
