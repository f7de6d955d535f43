"""Tests of the phoenix.js conformance harness (tests/phoenix_js.py + tests/js/conformance.js).

They run the real `phoenix` npm client against `StandIn`, a deliberately small Phoenix V2 server written
here with trio-websocket. The stand-in is not the gateway: it exists to prove that the harness connects,
drives phoenix.js and reports what happened faithfully. The gateway's conformance tests use the same harness.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket

from tests.phoenix_js import HarnessError, ScenarioFailed, events_of, run_scenario, run_scenario_async

pytestmark = [pytest.mark.integration, pytest.mark.slow]

AUTH_PREFIX = "base64url.bearer.phx."
JOINABLE = ("room:", "crash:", "presence:")


@dataclass(eq=False)
class Conn:
    ws: WebSocketConnection
    user: str
    joined: dict[str, str] = field(default_factory=dict)  # topic -> join_ref


@dataclass
class StandIn:
    """A tiny Phoenix V2 server. Topics: `room:*`, `crash:*`, `presence:*` join ok (`room:refused` is
    refused, `room:silent` never answers), anything else is unmatched. Events: `echo` (ok, echoes the
    payload), `fail` (error), `shout` (broadcast to the topic, then ok), `boom` (channel crash: phx_error),
    `drop` (closes the socket with 4001), `noreply`. Connect refused with 403 when `token=bad`."""

    port: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)
    conns: list[Conn] = field(default_factory=list)
    received: list[list[Any]] = field(default_factory=list)
    presences: dict[str, dict[Conn, dict[str, Any]]] = field(default_factory=dict)
    _refs: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/socket"

    async def handler(self, request: WebSocketRequest) -> None:
        target = urlsplit(request.path)
        query = {k: v[0] for k, v in parse_qs(target.query).items()}
        tokens = [p[len(AUTH_PREFIX) :] for p in request.proposed_subprotocols if p.startswith(AUTH_PREFIX)]
        auth_token = base64.b64decode(tokens[0] + "=" * (-len(tokens[0]) % 4)).decode() if tokens else None
        self.requests.append(
            {
                "path": target.path,
                "query": query,
                "subprotocols": list(request.proposed_subprotocols),
                "auth_token": auth_token,
            }
        )
        if query.get("token") == "bad" or auth_token == "bad" or query.get("vsn") != "2.0.0":
            await request.reject(403)
            return
        subprotocol = "phoenix" if "phoenix" in request.proposed_subprotocols else None
        ws = await request.accept(subprotocol=subprotocol)
        conn = Conn(ws, query.get("user", "anon"))
        self.conns.append(conn)
        try:
            while True:
                frame = json.loads(await ws.get_message())
                self.received.append(frame)
                await self.dispatch(conn, *frame[:5])
        except ConnectionClosed:
            pass
        finally:
            self.conns.remove(conn)
            for topic in list(conn.joined):
                await self.untrack(conn, topic)

    async def send(self, conn: Conn, frame: list[Any]) -> None:
        with contextlib.suppress(ConnectionClosed):
            await conn.ws.send_message(json.dumps(frame))

    async def reply(self, conn: Conn, join_ref: Any, ref: Any, topic: str, status: str, response: Any) -> None:
        await self.send(conn, [join_ref, ref, topic, "phx_reply", {"status": status, "response": response}])

    async def dispatch(self, conn: Conn, join_ref: Any, ref: Any, topic: str, event: str, payload: Any) -> None:
        if topic == "phoenix" and event == "heartbeat":
            await self.reply(conn, None, ref, "phoenix", "ok", {})
        elif event == "phx_join":
            if topic == "room:silent":
                return
            if topic == "room:refused":
                await self.reply(conn, join_ref, ref, topic, "error", {"reason": "unauthorized"})
            elif not topic.startswith(JOINABLE):
                await self.reply(conn, None, ref, topic, "error", {"reason": "unmatched topic"})
            else:
                old = conn.joined.get(topic)
                if old is not None:
                    await self.untrack(conn, topic)
                conn.joined[topic] = join_ref
                await self.reply(
                    conn, join_ref, ref, topic, "ok", {"topic": topic, "params": payload, "user": conn.user}
                )
                if old is not None:
                    await self.send(conn, [old, old, topic, "phx_close", {}])
                if topic.startswith("presence:"):
                    await self.track(conn, topic, join_ref)
        elif topic not in conn.joined:
            if event == "phx_leave":  # Phoenix answers ok to a leave of a topic that is not joined
                await self.reply(conn, join_ref, ref, topic, "ok", {})
            else:
                await self.reply(conn, None, ref, topic, "error", {"reason": "unmatched topic"})
        elif event == "phx_leave":
            jref = conn.joined.pop(topic)
            await self.reply(conn, jref, ref, topic, "ok", {})
            await self.send(conn, [jref, jref, topic, "phx_close", {}])
            await self.untrack(conn, topic)
        elif event == "echo":
            await self.reply(conn, join_ref, ref, topic, "ok", payload)
        elif event == "fail":
            await self.reply(conn, join_ref, ref, topic, "error", {"reason": "nope"})
        elif event == "shout":
            for other in list(self.conns):
                if topic in other.joined:
                    await self.send(other, [None, None, topic, "shout", payload])
            await self.reply(conn, join_ref, ref, topic, "ok", {})
        elif event == "boom":
            jref = conn.joined.pop(topic)
            await self.send(conn, [jref, jref, topic, "phx_error", {"reason": "channel_crash"}])
        elif event == "drop":
            await conn.ws.aclose(4001, "dropped by test")

    async def track(self, conn: Conn, topic: str, join_ref: str) -> None:
        meta = {"phx_ref": f"ref{next(self._refs)}", "device": conn.user}
        members = self.presences.setdefault(topic, {})
        members[conn] = meta
        state: dict[str, Any] = {}
        for c, m in members.items():
            state.setdefault(c.user, {"metas": []})["metas"].append(m)
        await self.send(conn, [join_ref, None, topic, "presence_state", state])
        diff = {"joins": {conn.user: {"metas": [meta]}}, "leaves": {}}
        for other in members:
            if other is not conn:
                await self.send(other, [None, None, topic, "presence_diff", diff])

    async def untrack(self, conn: Conn, topic: str) -> None:
        meta = self.presences.get(topic, {}).pop(conn, None)
        if meta is None:
            return
        diff = {"joins": {}, "leaves": {conn.user: {"metas": [meta]}}}
        for other in self.presences[topic]:
            await self.send(other, [None, None, topic, "presence_diff", diff])


@pytest.fixture
async def standin(nursery: trio.Nursery) -> StandIn:
    server = StandIn()
    ws_server = await nursery.start(serve_websocket, server.handler, "127.0.0.1", 0, None)
    server.port = ws_server.port
    return server


async def run(standin: StandIn, scenario: str, args: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return await run_scenario_async(standin.url, scenario, args, timeout=20, **kw)


# ---------------------------------------------------------------------------------------------------


async def test_connect_query_token_and_auth_token_subprotocol(standin: StandIn) -> None:
    token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI0MiJ9.c2lnbmF0dXJl"
    result = await run(standin, "connect", {"params": {"token": "q-tok", "user": "u1"}, "auth_token": token})
    summary = result["summary"]
    assert summary["opened"] is True
    assert summary["protocol"] == "phoenix"
    assert summary["upgrade_status"] == 101
    assert summary["url"].startswith(f"{standin.url}/websocket?")
    assert summary["url"].endswith("&vsn=2.0.0")
    [req] = standin.requests
    assert req["path"] == "/socket/websocket"
    assert req["query"] == {"token": "q-tok", "user": "u1", "vsn": "2.0.0"}
    assert req["subprotocols"][0] == "phoenix"
    assert req["subprotocols"][1].startswith(AUTH_PREFIX)
    assert "=" not in req["subprotocols"][1]
    assert req["auth_token"] == token
    # the harness closed its socket by itself (disconnect without a code → 1005 at the server)
    assert [e["code"] for e in events_of(result, "ws_close")] == [1005]


async def test_refused_connect_is_reported_and_reconnecting_stops(standin: StandIn) -> None:
    result = await run(standin, "refused", {"params": {"token": "bad"}, "observe_ms": 200, "after_ms": 300})
    summary = result["summary"]
    assert summary["opened"] is False
    assert summary["status"] == 403
    assert set(summary["close_codes"]) == {1006}
    assert summary["attempts_before_disconnect"] >= 2  # phoenix.js retried a refused upgrade
    assert summary["attempts_after_disconnect"] == 0
    assert len(standin.requests) == summary["attempts_before_disconnect"]


async def test_heartbeats_are_answered_and_socket_stays_open(standin: StandIn) -> None:
    result = await run(standin, "heartbeat", {"heartbeat_ms": 40, "duration_ms": 400})
    summary = result["summary"]
    assert summary["heartbeats_sent"] >= 3
    assert summary["unanswered_refs"] == [] or len(summary["unanswered_refs"]) == 1  # the last may be in flight
    assert summary["heartbeats_answered"] >= summary["heartbeats_sent"] - 1
    ref = summary["sent_frames"][0][1]
    assert summary["sent_frames"][0] == [None, ref, "phoenix", "heartbeat", {}]
    assert summary["reply_frames"][0] == [None, ref, "phoenix", "phx_reply", {"status": "ok", "response": {}}]
    assert summary["opens"] == 1
    assert summary["closes"] == []
    server_heartbeats = [f for f in standin.received if f[3] == "heartbeat"]
    assert len(server_heartbeats) == summary["heartbeats_sent"]


async def test_heartbeat_unanswered_is_visible(standin: StandIn) -> None:
    """A server that never answers heartbeats: the harness shows phoenix.js closing and reconnecting."""

    async def mute(conn: Conn, join_ref: Any, ref: Any, topic: str, event: str, payload: Any) -> None:
        return None

    standin.dispatch = mute  # type: ignore[method-assign]
    result = await run(standin, "heartbeat", {"heartbeat_ms": 40, "duration_ms": 300})
    summary = result["summary"]
    assert summary["heartbeats_answered"] == 0
    assert {"code": 1000, "reason": "heartbeat timeout"} in summary["closes"]
    assert summary["opens"] >= 2


async def test_join_ok_reports_reply_payload_and_refs(standin: StandIn) -> None:
    result = await run(standin, "join", {"topic": "room:1", "join_params": {"last_seq": 7}, "params": {"user": "u9"}})
    summary = result["summary"]
    assert summary["status"] == "ok"
    assert summary["response"] == {"topic": "room:1", "params": {"last_seq": 7}, "user": "u9"}
    join_ref = summary["join_ref"]
    assert summary["sent_frame"] == [join_ref, join_ref, "room:1", "phx_join", {"last_seq": 7}]
    assert summary["reply_frame"] == {
        "join_ref": join_ref,
        "ref": join_ref,
        "topic": "room:1",
        "event": "phx_reply",
        "payload": {"status": "ok", "response": summary["response"]},
    }
    assert summary["join_attempts"] == 1


async def test_join_refused_then_leave(standin: StandIn) -> None:
    result = await run(standin, "join", {"topic": "room:refused", "after_ms": 300})
    summary = result["summary"]
    assert summary["status"] == "error"
    assert summary["response"] == {"reason": "unauthorized"}
    assert summary["left"] is True
    assert summary["join_attempts"] == 1  # channel.leave() stopped phoenix.js from rejoining
    # after the refusal only the reply to phoenix.js's leave arrives: no phx_close, no second join
    assert [(f["event"], f["payload"]["status"]) for f in summary["frames_after_reply"]] == [("phx_reply", "ok")]
    assert [f[3] for f in standin.received if f[2] == "room:refused"] == ["phx_join", "phx_leave"]


async def test_unmatched_topic_join_and_push(standin: StandIn) -> None:
    result = await run(standin, "unmatched", {"topic": "nowhere:1", "event": "hello"})
    summary = result["summary"]
    assert summary["status"] == "error"
    assert summary["response"] == {"reason": "unmatched topic"}
    assert summary["reply_frame"]["join_ref"] is None
    push = summary["push_reply_frame"]
    assert push["join_ref"] is None
    assert push["payload"] == {"status": "error", "response": {"reason": "unmatched topic"}}


async def test_push_replies_ok_error_and_timeout(standin: StandIn) -> None:
    pushes = [
        {"event": "echo", "payload": {"n": 1}},
        {"event": "fail"},
        {"event": "noreply", "timeout_ms": 150},
    ]
    result = await run(standin, "push", {"topic": "room:p", "pushes": pushes})
    replies = result["summary"]["replies"]
    join_ref = result["summary"]["join"]["join_ref"]
    assert [(r["event"], r["status"]) for r in replies] == [("echo", "ok"), ("fail", "error"), ("noreply", "timeout")]
    assert replies[0]["response"] == {"n": 1}
    assert replies[1]["response"] == {"reason": "nope"}
    assert replies[0]["frame"]["join_ref"] == join_ref
    assert replies[0]["frame"]["ref"] == replies[0]["ref"] != join_ref
    assert replies[2]["frame"] is None


async def test_broadcast_arrives_with_null_refs(standin: StandIn) -> None:
    args = {"topic": "room:b", "trigger": {"event": "shout", "payload": {"text": "hi"}}, "event": "shout"}
    result = await run(standin, "broadcast", args)
    summary = result["summary"]
    assert summary["received"] == [
        {"join_ref": None, "ref": None, "topic": "room:b", "event": "shout", "payload": {"text": "hi"}}
    ]
    assert summary["dispatched"] == 1  # phoenix.js delivered it to the channel


async def test_leave_then_push_is_unmatched(standin: StandIn) -> None:
    result = await run(standin, "leave", {"topic": "room:l", "event": "echo"})
    summary = result["summary"]
    join_ref = summary["join_ref"]
    assert summary["leave_reply"]["payload"] == {"status": "ok", "response": {}}
    assert summary["close_frame"] == {
        "join_ref": join_ref,
        "ref": join_ref,
        "topic": "room:l",
        "event": "phx_close",
        "payload": {},
    }
    assert summary["channel_closed"] is True
    assert summary["push_after_leave_sent"]["join_ref"] == join_ref
    assert summary["push_after_leave_reply"]["payload"]["response"] == {"reason": "unmatched topic"}


async def test_duplicate_join_seen_in_raw_frames(standin: StandIn) -> None:
    result = await run(standin, "duplicate_join", {"topic": "room:d"})
    summary = result["summary"]
    first, second = summary["first_join_ref"], summary["second_join_ref"]
    assert first != second
    assert summary["second_reply"]["join_ref"] == second
    assert summary["second_reply"]["payload"]["status"] == "ok"
    assert summary["close_frame"]["join_ref"] == summary["close_frame"]["ref"] == first
    assert summary["reply_before_close"] is True
    assert summary["channel_closed"] is True  # phoenix.js's channel (the first join) got phx_close


async def test_channel_crash_then_rejoin(standin: StandIn) -> None:
    result = await run(standin, "crash", {"topic": "crash:1", "rejoin_ms": 30})
    summary = result["summary"]
    assert summary["error_frame"]["event"] == "phx_error"
    assert summary["error_frame"]["payload"] == {"reason": "channel_crash"}
    assert summary["channel_errors"] == [{"reason": "channel_crash"}]
    assert summary["rejoined"] is True
    first, second = summary["join_replies"][:2]
    assert first["join_ref"] == summary["error_frame"]["join_ref"]
    assert second["join_ref"] != first["join_ref"]
    assert summary["rejoin_delay_ms"] >= 25


async def test_server_drop_then_reconnect_and_rejoin(standin: StandIn) -> None:
    args = {"topic": "room:r", "trigger": {"event": "drop"}, "reconnect_ms": 20}
    result = await run(standin, "reconnect", args)
    summary = result["summary"]
    assert summary["close"] == {"code": 4001, "reason": "dropped by test"}
    assert summary["connects"] == 2
    assert summary["opens"] == 2
    assert summary["rejoined"] is True
    assert summary["channel_errors"][0] == {"source": "transport", "reason": "connection_closed"}


async def test_presence_two_sockets(standin: StandIn) -> None:
    args = {"topic": "presence:lobby", "params_a": {"user": "alice"}, "params_b": {"user": "bob"}}
    result = await run(standin, "presence", args)
    summary = result["summary"]
    assert summary["a_syncs"][0]["keys"] == ["alice"]
    both = next(s for s in summary["a_syncs"] if s["meta_count"] == 2)
    assert both["keys"] == ["alice", "bob"]
    assert summary["phx_refs_unique"] is True
    assert summary["a_syncs"][-1]["keys"] == ["alice"]
    assert [j["key"] for j in summary["a_joins"]] == ["alice", "bob"]
    assert [j["key"] for j in summary["a_leaves"]] == ["bob"]
    # presence_state is a push (channel's join_ref); presence_diff a broadcast (null)
    assert all(f["join_ref"] is not None for f in summary["state_frames"])
    assert all(f["join_ref"] is None for f in summary["diff_frames"])


async def test_script_composes_steps(standin: StandIn) -> None:
    steps = [
        {"op": "connect", "socket": "x", "params": {"user": "x"}},
        {"op": "connect", "socket": "y", "params": {"user": "y"}},
        {"op": "join", "socket": "x", "channel": "cx", "topic": "room:s"},
        {"op": "join", "socket": "y", "channel": "cy", "topic": "room:s"},
        {"op": "push", "channel": "cx", "event": "shout", "payload": {"n": 1}, "id": "s1"},
        {"op": "wait", "match": {"kind": "chan_msg", "channel": "cy", "event": "shout", "payload": {"n": 1}}},
        {"op": "ping", "socket": "y"},
        {"op": "leave", "channel": "cy"},
        {"op": "disconnect", "socket": "x"},
    ]
    result = await run(standin, "script", {"steps": steps})
    assert result["ok"] is True
    [reply] = events_of(result, "push_reply", id="s1")
    assert reply["status"] == "ok"
    assert len(events_of(result, "chan_msg", channel="cx", event="shout")) == 1
    assert len(events_of(result, "ping", socket="y")) == 1
    assert events_of(result, "leave_reply", channel="cy")[0]["status"] == "ok"


async def test_failed_wait_raises_scenario_failed_with_result(standin: StandIn) -> None:
    with pytest.raises(ScenarioFailed) as info:
        await run(standin, "join", {"topic": "room:silent", "wait_ms": 200})
    result = info.value.result
    assert result["ok"] is False
    assert result["failed_step"]["op"] == "join"
    assert "timeout" in result["failed_step"]["error"]
    unchecked = await run(standin, "join", {"topic": "room:silent", "wait_ms": 200}, check=False)
    assert unchecked["summary"]["status"] is None


async def test_harness_errors_are_clear(standin: StandIn) -> None:
    with pytest.raises(HarnessError, match="scenarios: connect"):
        await run(standin, "no-such-scenario", {})
    with pytest.raises(HarnessError, match="unknown op"):
        await run(standin, "script", {"steps": [{"op": "fly"}]})


async def test_blocking_runner_from_a_thread(standin: StandIn) -> None:
    result = await trio.to_thread.run_sync(lambda: run_scenario(standin.url, "join", {"topic": "room:t"}, 20))
    assert result["summary"]["status"] == "ok"
