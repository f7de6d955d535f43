"""Conformance, across connections: presence, transport close, server kick, reconnect and catch-up.

protocol.md §10 items 21-24, as phoenix.js 1.8.16 (its `Presence` included) sees them. Presence leaves
are held for the tracker's grace period (5 s) before their diff, so those waits are long.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

from tests.conformance.conftest import World
from tests.conformance.support import PRESENCE_WAIT_MS, has_joined, index_of, recv_frames, run_js, wait_until
from tests.phoenix_js import events_of

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def connect(world: World, socket: str, user: str, device: str, **kw: Any) -> dict[str, Any]:
    return {"op": "connect", "socket": socket, "params": world.params(user, device), **kw}


# -- 21. transport closed by the client -----------------------------------------------------------


async def test_21_client_closing_transport_makes_its_presence_leave(world: World) -> None:
    args = {
        "topic": "user:alice",
        "params_a": world.params("alice", "d1"),
        "params_b": world.params("alice", "d2"),
        "wait_ms": PRESENCE_WAIT_MS,
        "deadline_ms": 30_000,
    }
    result = await run_js(world.server, "presence", args)
    summary = result["summary"]
    both = next(s for s in summary["a_syncs"] if s["meta_count"] == 2)
    [entry] = both["list"]
    b_meta = next(m for m in entry["metas"] if m["device_id"] == "d2")
    # b's socket closed (phoenix.js disconnect()): a sees exactly b's meta leave, by its phx_ref
    assert summary["a_leaves"] == [{"key": "alice", "metas": [b_meta]}]
    last = summary["a_syncs"][-1]
    assert last["keys"] == ["alice"]
    assert [m["device_id"] for m in last["list"][0]["metas"]] == ["d1"]
    diffs = [f for f in summary["diff_frames"] if f["socket"] == "a" and f["payload"]["leaves"]]
    [leave] = diffs
    assert leave["join_ref"] is None
    assert leave["ref"] is None
    assert leave["payload"] == {"joins": {}, "leaves": {"alice": {"metas": [b_meta]}}}


# -- 23. presence ------------------------------------------------------------------------------------


async def test_23_presence_two_sockets_one_key_two_metas_and_leave_removes_that_meta(world: World) -> None:
    steps = [
        connect(world, "a", "alice", "d1"),
        {"op": "join", "socket": "a", "topic": "user:alice", "channel": "a", "presence": True},
        {"op": "wait", "match": {"kind": "presence_sync", "channel": "a", "meta_count": 1}},
        connect(world, "b", "alice", "d2"),
        {"op": "join", "socket": "b", "topic": "user:alice", "channel": "b", "presence": True, "mark": "b_join"},
        {"op": "wait", "match": {"kind": "presence_sync", "channel": "a", "meta_count": 2}, "since": "b_join"},
        {"op": "wait", "match": {"kind": "presence_sync", "channel": "b", "meta_count": 2}},
        {"op": "leave", "channel": "b", "mark": "b_left"},
        {
            "op": "wait",
            "match": {"kind": "presence_sync", "channel": "a", "meta_count": 1},
            "since": "b_left",
            "wait_ms": PRESENCE_WAIT_MS,
        },
    ]
    result = await run_js(world.server, "script", {"steps": steps, "deadline_ms": 30_000})
    syncs = events_of(result, "presence_sync", channel="a")
    both = next(s for s in syncs if s["meta_count"] == 2)
    assert both["keys"] == ["alice"]  # one key per user...
    [entry] = both["list"]
    metas = entry["metas"]  # ...one meta per device
    assert sorted(m["device_id"] for m in metas) == ["d1", "d2"]
    refs = [m["phx_ref"] for m in metas]
    assert len(set(refs)) == 2
    assert all(isinstance(r, str) and r for r in refs)
    a_meta = next(m for m in metas if m["device_id"] == "d1")
    b_meta = next(m for m in metas if m["device_id"] == "d2")
    # b sees the same two metas (its presence_state is a push with its join_ref)
    b_state = recv_frames(result, "b", event="presence_state")[0]
    assert b_state["join_ref"] == events_of(result, "join_reply", channel="b")[0]["join_ref"]
    assert sorted(m["phx_ref"] for m in b_state["payload"]["alice"]["metas"]) == sorted(refs)
    # a sees b join through a diff (a broadcast: null refs), with b's phx_ref
    b_joins = [
        f
        for f in recv_frames(result, "a", event="presence_diff")
        if b_meta["phx_ref"] in [m["phx_ref"] for m in f["payload"]["joins"].get("alice", {}).get("metas", [])]
    ]
    [join_diff] = b_joins
    assert join_diff["join_ref"] is None
    assert join_diff["ref"] is None
    assert join_diff["payload"]["leaves"] == {}
    assert b_meta in join_diff["payload"]["joins"]["alice"]["metas"]  # diffs are coalesced: a's may be there too
    # b's leave removes exactly b's meta
    [left] = events_of(result, "presence_leave", channel="a")
    assert left["key"] == "alice"
    assert left["metas"] == [b_meta]
    assert left["remaining"] == 1
    last = syncs[-1]
    assert last["list"] == [{"key": "alice", "metas": [a_meta]}]
    leave_diff = next(f for f in recv_frames(result, "a", event="presence_diff") if f["payload"]["leaves"])
    assert leave_diff["payload"] == {"joins": {}, "leaves": {"alice": {"metas": [b_meta]}}}


# -- 22. server kick by socket id ------------------------------------------------------------------


async def test_22_server_kick_closes_that_socket_1001_and_phoenix_js_reconnects_and_rejoins(world: World) -> None:
    conv = world.conv_topic
    steps = [
        connect(world, "a", "alice", "d1", reconnect_ms=50),
        connect(world, "b", "bob", "b1"),
        {"op": "join", "socket": "a", "topic": "user:alice", "channel": "au"},
        {"op": "join", "socket": "a", "topic": conv, "channel": "ac"},
        {"op": "join", "socket": "b", "topic": conv, "channel": "bc"},
        {"op": "wait", "match": {"kind": "ws_close", "socket": "a"}, "wait_ms": 8000},
        {"op": "wait", "match": {"kind": "open", "socket": "a"}, "count": 2},
        {"op": "wait", "match": {"kind": "join_reply", "channel": "au", "status": "ok"}, "count": 2},
        {"op": "wait", "match": {"kind": "join_reply", "channel": "ac", "status": "ok"}, "count": 2},
        {"op": "push", "channel": "ac", "event": "message_read", "payload": {"up_to_seq": 0}, "id": "a_after"},
        {"op": "push", "channel": "bc", "event": "message_read", "payload": {"up_to_seq": 0}, "id": "b_after"},
    ]
    results: dict[str, Any] = {}

    async def run() -> None:
        results["r"] = await run_js(world.server, "script", {"steps": steps})

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        await wait_until(lambda: has_joined(world.server, "alice", "d1", "user:alice", conv), what="alice joined")
        await wait_until(lambda: has_joined(world.server, "bob", "b1", conv), what="bob joined")
        connections = world.server.node_of("alice", "d1").deps.connections  # type: ignore[union-attr]
        assert connections.disconnect_device("alice", "d1") is True
    result = results["r"]
    [close] = events_of(result, "ws_close", socket="a")
    assert close["code"] == 1001
    assert len(events_of(result, "ws_create", socket="a")) == 2
    for channel in ("au", "ac"):
        joins = events_of(result, "join_reply", channel=channel)
        assert [j["status"] for j in joins] == ["ok", "ok"]
        assert joins[0]["join_ref"] != joins[1]["join_ref"]
        assert events_of(result, "chan_error", channel=channel)[0]["reason"] == {
            "source": "transport",
            "reason": "connection_closed",
        }
    after = events_of(result, "push_reply", id="a_after")[0]
    assert after["status"] == "ok"
    assert after["join_ref"] == events_of(result, "join_reply", channel="ac")[1]["join_ref"]
    # only that socket: bob's was never closed and its channel never errored
    assert not events_of(result, "ws_close", socket="b")
    assert len(events_of(result, "ws_create", socket="b")) == 1
    assert not events_of(result, "chan_error", channel="bc")
    assert events_of(result, "push_reply", id="b_after")[0]["status"] == "ok"


# -- 24. reconnect catches up --------------------------------------------------------------------


async def test_24_reconnect_after_drop_catches_up_messages_sent_while_away(world: World) -> None:
    conv = world.conv_topic
    sent = [f"away-{i}" for i in range(3)]
    steps = [
        connect(world, "b", "bob", "b1"),
        {"op": "join", "socket": "b", "topic": conv, "channel": "bc"},
        # alice comes back 1.5 s after the drop: bob's messages are sent in between
        connect(world, "a", "alice", "d1", reconnect_ms=1500),
        {"op": "join", "socket": "a", "topic": "user:alice", "channel": "au"},
        {"op": "join", "socket": "a", "topic": conv, "channel": "ac"},
        {"op": "wait", "match": {"kind": "ws_close", "socket": "a"}, "wait_ms": 8000},
        *[
            {
                "op": "push",
                "channel": "bc",
                "event": "send_message",
                "payload": {"client_message_id": m, "content": m},
                "id": m,
            }
            for m in sent
        ],
        {"op": "mark", "name": "sent"},
        {"op": "wait", "match": {"kind": "open", "socket": "a"}, "count": 2, "wait_ms": 8000},
        {"op": "wait", "match": {"kind": "join_reply", "channel": "au", "status": "ok"}, "count": 2},
        *[
            {
                "op": "wait",
                "match": {
                    "kind": "chan_msg",
                    "channel": "au",
                    "event": "new_message",
                    "payload": {"client_message_id": m},
                },
            }
            for m in sent
        ],
        {"op": "push", "channel": "au", "event": "sync", "payload": {"since_seq": None}, "id": "sync"},
    ]
    results: dict[str, Any] = {}

    async def run() -> None:
        results["r"] = await run_js(world.server, "script", {"steps": steps, "deadline_ms": 30_000})

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        await wait_until(lambda: has_joined(world.server, "alice", "d1", "user:alice", conv), what="alice joined")
        connections = world.server.node_of("alice", "d1").deps.connections  # type: ignore[union-attr]
        assert connections.disconnect_device("alice", "d1") is True
    result = results["r"]
    assert events_of(result, "ws_close", socket="a")[0]["code"] == 1001
    replies = [events_of(result, "push_reply", id=m)[0] for m in sent]
    assert [r["status"] for r in replies] == ["ok"] * 3
    ids = [r["response"]["message_id"] for r in replies]
    reopened = events_of(result, "open", socket="a")[1]
    assert all(index_of(result, r) < index_of(result, reopened) for r in replies)  # sent while away
    rejoin_ref = events_of(result, "join_reply", channel="au")[1]["join_ref"]
    caught_up = [
        f
        for f in recv_frames(result, "a", event="new_message", topic="user:alice")
        if index_of(result, f) > index_of(result, reopened)
    ]
    assert [f["payload"]["id"] for f in caught_up] == ids  # each once, in order
    assert all(f["join_ref"] in (None, rejoin_ref) for f in caught_up)
    assert [f["payload"]["seq"] for f in caught_up] == [1, 2, 3]
    inbox = [f["payload"]["inbox_seq"] for f in caught_up]
    assert inbox == sorted(inbox)
    # and the app's sync from the device's cursor lists them too
    [sync] = events_of(result, "push_reply", id="sync")
    assert sync["status"] == "ok"
    assert [m["id"] for m in sync["response"]["messages"]] == ids
