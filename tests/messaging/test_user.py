"""`user:<id>` and `notification:<id>`: authorization, app events, sync and ack (contract §2-§3)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.messaging.conftest import Node, open_node, settle

UNAUTHORIZED = {"status": "error", "response": {"reason": "unauthorized"}}
INVALID = {"status": "error", "response": {"reason": "invalid_payload"}}


async def test_only_the_user_may_join_its_topics(node: Node) -> None:
    alice = node.device("alice")
    assert await alice.join("user:bob") == UNAUTHORIZED
    assert await alice.join("notification:bob") == UNAUTHORIZED
    assert await alice.join("user:alice") == {
        "status": "ok",
        "response": {"user_id": "alice", "device_id": "d1", "server_time": 1_700_000_000_000, "recovered": True},
    }
    assert await alice.join("notification:alice") == {"status": "ok", "response": {}}
    unmatched = await alice.join("lobby")
    assert unmatched == {"status": "error", "response": {"reason": "unmatched topic"}}
    assert await alice.join("user:alice", {"last_seq": -1}) == INVALID


async def test_heartbeat_ping_and_unknown_events(node: Node) -> None:
    alice = node.device("alice")
    await alice.join("user:alice")
    assert await alice.call("user:alice", "heartbeat") == {"status": "ok", "response": {"status": "alive"}}
    assert await alice.call("user:alice", "ping") == {
        "status": "ok",
        "response": {"pong": True, "server_time": 1_700_000_000_000},
    }
    assert await alice.call("user:alice", "dance") == {"status": "error", "response": {"reason": "unknown_event"}}


async def test_presence_state_lists_the_users_devices_after_the_join_reply(node: Node) -> None:
    phone, laptop = node.device("alice", "phone"), node.device("alice", "laptop")
    await phone.join("user:alice")
    await laptop.join("user:alice")
    await settle()
    [state] = laptop.events("user:alice", "presence_state")
    metas = state["alice"]["metas"]
    assert sorted(m["device_id"] for m in metas) == ["laptop", "phone"]
    assert all(m["device_type"] == "web" and m["online_at"] == 1_700_000_000_000 for m in metas)


async def test_sync_pages_the_backlog_and_ack_moves_the_cursor(node: Node) -> None:
    cid = await node.conversation("alice", "bob")
    sent = await node.send(cid, "bob", 7)
    alice = node.device("alice")
    await alice.join("user:alice")
    await settle()
    page = await alice.call("user:alice", "sync", {"since_seq": None, "limit": 3})
    assert page["status"] == "ok"
    assert [m["id"] for m in page["response"]["messages"]] == [m.id for m in sent[:3]]
    assert page["response"]["last_seq"] == 3
    assert page["response"]["has_more"] is True
    rest = await alice.call("user:alice", "sync", {"since_seq": 3, "limit": 500})
    assert [m["inbox_seq"] for m in rest["response"]["messages"]] == [4, 5, 6, 7]
    assert rest["response"]["last_seq"] == 7
    assert rest["response"]["has_more"] is False

    assert await alice.call("user:alice", "ack", {"seq": 5}) == {"status": "ok", "response": {}}
    assert await node.store.cursor("alice", "d1") == 5
    after_ack = await alice.call("user:alice", "sync", {"since_seq": None})
    assert [m["inbox_seq"] for m in after_ack["response"]["messages"]] == [6, 7]
    empty = await alice.call("user:alice", "sync", {"since_seq": 7})
    assert empty["response"] == {"messages": [], "last_seq": 7, "has_more": False}
    # a limit over 500 is capped, not refused
    capped = await alice.call("user:alice", "sync", {"since_seq": 0, "limit": 10_000})
    assert len(capped["response"]["messages"]) == 7

    payload: Any
    for payload in ({"since_seq": -1}, {"since_seq": 0, "limit": 0}, {"since_seq": 0, "limit": "9"}):
        assert await alice.call("user:alice", "sync", payload) == INVALID, payload
    for payload in ({}, {"seq": -3}, {"seq": 1.5}, {"seq": False}):
        assert await alice.call("user:alice", "ack", payload) == INVALID, payload


async def test_retention_expired_backlog_joins_with_recovered_false(tmp_path: Path) -> None:
    clock = [1_700_000_000.0]
    async with open_node(tmp_path / "w.db", clock=lambda: clock[0], retention=60.0) as node:
        cid = await node.conversation("alice", "bob")
        await node.send(cid, "bob", 3)
        clock[0] += 120
        fresh = await node.send(cid, "bob", 2, prefix="n")
        alice = node.device("alice")
        joined = await alice.join("user:alice", {"last_seq": 0})
        assert joined["response"]["recovered"] is False
        await settle()
        assert [m["id"] for m in alice.events("user:alice", "new_message")] == [m.id for m in fresh]
        conversation = await alice.join(f"conversation:{cid}", {"last_seq": 1})
        assert conversation["response"] == {"conversation_id": cid, "last_seq": 5, "recovered": False}


async def test_notifications_and_notification_read(node: Node) -> None:
    alice = node.device("alice")
    await alice.join("notification:alice")
    notification = await node.store.create_notification("alice", "mention", "Hi", "Bob mentioned you", {"x": 1})
    assert await alice.call("notification:alice", "notification_read", {"ids": [notification.id, "unknown"]}) == {
        "status": "ok",
        "response": {},
    }
    assert await node.store.unread_notifications("alice", 10) == []
    assert await alice.call("notification:alice", "notification_read", {"ids": "x"}) == INVALID
    assert await alice.call("notification:alice", "nope") == {
        "status": "error",
        "response": {"reason": "unknown_event"},
    }


async def test_a_join_without_last_seq_reads_cursor_and_first_page_in_one_store_call(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    cid = await node.conversation("alice", "bob")
    await node.send(cid, "bob", 4)
    await node.store.advance_cursor("alice", "d1", 1)
    calls: list[str] = []
    for name in ("cursor", "inbox_after", "inbox_from_cursor"):
        original = getattr(node.store, name)

        async def counted(*args: Any, _original: Any = original, _name: str = name) -> Any:
            calls.append(_name)
            return await _original(*args)

        monkeypatch.setattr(node.store, name, counted)
    alice = node.device("alice")
    assert (await alice.join("user:alice"))["status"] == "ok"
    assert calls == ["inbox_from_cursor"]  # the join's reads: one trip (the go-live pull comes later)
    await settle()
    assert [m["inbox_seq"] for m in alice.events("user:alice", "new_message")] == [2, 3, 4]
