"""Conformance, connection level: upgrade, refusals, vsn, authToken, heartbeats, idle timeout.

protocol.md §10 items 1, 2, 3, 6, 7, 8, against a real node, as phoenix.js 1.8.16 (and, where
phoenix.js cannot say it, a raw WebSocket client) sees it on the wire.
"""

from __future__ import annotations

import json
import time
from urllib.parse import parse_qsl, urlsplit

import jwt
import pytest
import trio
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.conformance.conftest import Deploy, World
from tests.conformance.support import PhoenixRaw, Refused, open_raw, recv_frames, run_js
from tests.node import SECRET
from tests.phoenix_js import events_of
from whispr.security.tokens import TokenConfig, mint_token

pytestmark = [pytest.mark.integration, pytest.mark.slow]


# -- 1. upgrade ------------------------------------------------------------------------------------


async def test_01_upgrade_101_with_phoenix_js(world: World) -> None:
    params = {"a": "1", **world.params("alice", "d1"), "z": "last"}  # the token between other params
    result = await run_js(world.server, "connect", {"params": params})
    summary = result["summary"]
    assert summary["upgrade_status"] == 101
    assert summary["opened"] is True
    assert summary["protocol"] is None  # nothing offered, nothing selected
    url = urlsplit(summary["url"])
    assert url.path == "/socket/websocket"
    assert [k for k, _ in parse_qsl(url.query)] == ["a", "token", "z", "vsn"]
    assert dict(parse_qsl(url.query))["vsn"] == "2.0.0"
    assert [c["code"] for c in summary["closes"]] == [1005]  # only phoenix.js's own disconnect()


@pytest.mark.parametrize(
    "order",
    [("vsn", "token"), ("token", "vsn"), ("x", "vsn", "token", "y")],
    ids=lambda order: "-".join(order),
)
async def test_01_query_parameters_in_any_order(world: World, order: tuple[str, ...]) -> None:
    values = {"vsn": "2.0.0", "token": world.server.token("alice", "d1"), "x": "1", "y": "2"}
    query = "&".join(f"{k}={values[k]}" for k in order)
    async with open_raw(world.server, query) as ws:
        assert ws.response.status_code == 101
        phx = PhoenixRaw(ws)
        ref = await phx.push("phoenix", "heartbeat", {})
        reply = await phx.until(lambda f: f[1] == ref)
        assert reply == [None, ref, "phoenix", "phx_reply", {"status": "ok", "response": {}}]  # a V2 array


# -- 2. refused upgrades ---------------------------------------------------------------------------


def _assert_refused_403(result: dict[str, object]) -> None:
    summary = result["summary"]
    assert isinstance(summary, dict)
    assert summary["opened"] is False
    assert not events_of(result, "ws_open")
    assert not events_of(result, "ws_upgrade")  # no 101 was ever received
    errors = events_of(result, "ws_error")
    # the attempt in flight when disconnect() ran may end without a status ("closed before established")
    statuses = [e["status"] for e in errors if e["status"] is not None]
    assert len(statuses) >= 2
    assert set(statuses) == {403}, errors
    assert set(summary["close_codes"]) == {1006}  # what a browser sees of a refused upgrade
    assert summary["attempts_before_disconnect"] >= 2  # phoenix.js keeps retrying (protocol.md §0.8)...
    assert summary["attempts_after_disconnect"] == 0  # ...until the app calls disconnect()


@pytest.mark.parametrize("case", ["invalid", "expired", "missing", "wrong_secret", "inactive_user"])
async def test_02_bad_token_is_refused_with_403_and_client_retries(world: World, case: str) -> None:
    if case == "invalid":
        params = {"token": "not-a-jwt"}
    elif case == "expired":
        now = int(time.time())  # mint_token refuses a negative ttl: sign it by hand, past the 30 s leeway
        claims = {"sub": "alice", "device_id": "d1", "iat": now - 3600, "exp": now - 120}
        params = {"token": jwt.encode(claims, SECRET, algorithm="HS256")}
    elif case == "missing":
        params = {}
    elif case == "wrong_secret":
        other = TokenConfig(algorithm="HS256", secret=b"another-secret-that-is-32-bytes-long!!")
        params = {"token": mint_token(other, "alice", "d1", ttl=3600)}
    else:
        await world.server.add_user("mallory", active=False)
        params = world.params("mallory", "m1")
    # reconnect every 50 ms for 250 ms: a handful of attempts, well inside the connect budget
    args = {"params": params, "reconnect_ms": 50, "observe_ms": 250, "after_ms": 200}
    result = await run_js(world.server, "refused", args)
    _assert_refused_403(result)


async def test_02_refusal_is_an_empty_403_without_upgrade(world: World) -> None:
    with pytest.raises(Refused) as info:
        async with open_raw(world.server, "token=not-a-jwt&vsn=2.0.0"):
            pass
    assert info.value.status == 403
    assert info.value.body == b""


# -- 3. vsn ----------------------------------------------------------------------------------------


async def test_03_unknown_vsn_is_refused_with_403(world: World) -> None:
    args = {"params": world.params("alice", "d1"), "vsn": "9.9.9", "reconnect_ms": 50, "observe_ms": 250}
    result = await run_js(world.server, "refused", args)
    assert events_of(result, "ws_create")[0]["url"].endswith("&vsn=9.9.9")
    _assert_refused_403(result)


async def test_03_missing_vsn_is_served_as_v1_object_frames(world: World) -> None:
    """contract.md §1: vsn 1.0.0 (the default when absent) is served with object frames, and no
    outbound frame ever carries join_ref (protocol.md §2.1, §10 item 27)."""
    token = world.server.token("alice", "d1")
    async with open_raw(world.server, f"token={token}") as ws:
        assert ws.response.status_code == 101
        await ws.send_json({"topic": "phoenix", "event": "heartbeat", "payload": {}, "ref": "1"})
        assert await ws.recv_json() == {
            "topic": "phoenix",
            "event": "phx_reply",
            "payload": {"status": "ok", "response": {}},
            "ref": "1",
        }
        await ws.send_json({"topic": "user:alice", "event": "phx_join", "payload": {}, "ref": "2", "join_ref": "2"})
        reply = await ws.recv_json()
        assert set(reply) == {"topic", "event", "payload", "ref"}
        assert reply["event"] == "phx_reply"
        assert reply["ref"] == "2"
        assert reply["payload"]["status"] == "ok"
        assert reply["payload"]["response"]["user_id"] == "alice"
        state = await ws.recv_json()  # a push: join_ref would be "2" on V2
        assert set(state) == {"topic", "event", "payload", "ref"}
        assert state["event"] == "presence_state"
        assert state["ref"] is None
        assert list(state["payload"]) == ["alice"]
        await ws.send_json({"topic": "user:alice", "event": "ping", "payload": {}, "ref": "3", "join_ref": "2"})
        frames = [await ws.recv_json() for _ in range(2)]  # the ping reply and the presence_diff, any order
        assert all(set(f) == {"topic", "event", "payload", "ref"} for f in frames), frames
        reply = next(f for f in frames if f["ref"] == "3")
        assert reply["payload"]["status"] == "ok"
        assert reply["payload"]["response"]["pong"] is True
        diff = next(f for f in frames if f["event"] == "presence_diff")
        assert diff["ref"] is None
        # a V2 array on a V1 socket is malformed there
        await ws.send_json([None, "4", "phoenix", "heartbeat", {}])
        assert await ws.wait_closed() == 1007


# -- 6. authToken --------------------------------------------------------------------------------


async def test_06_auth_token_subprotocol_selects_phoenix(world: World) -> None:
    token = world.server.token("alice", "d1")
    steps = [
        {"op": "connect", "auth_token": token},  # no token in the query at all
        {"op": "join", "topic": "user:alice", "channel": "u"},
    ]
    result = await run_js(world.server, "script", {"steps": steps})
    [create] = events_of(result, "ws_create")
    assert "token=" not in create["url"]
    assert create["protocols"][0] == "phoenix"
    assert create["protocols"][1].startswith("base64url.bearer.phx.")
    [upgrade] = events_of(result, "ws_upgrade")
    assert upgrade["status"] == 101
    assert upgrade["subprotocol"] == "phoenix"
    assert events_of(result, "ws_open")[0]["protocol"] == "phoenix"
    [join] = events_of(result, "join_reply", channel="u")
    assert join["status"] == "ok"
    assert join["response"]["user_id"] == "alice"
    assert join["response"]["device_id"] == "d1"


async def test_06_subprotocols_without_phoenix_are_refused(world: World) -> None:
    token = world.server.token("alice", "d1")
    with pytest.raises(Refused) as info:
        async with open_raw(world.server, f"token={token}&vsn=2.0.0", subprotocols=["chat"]):
            pass
    assert info.value.status == 403


# -- 7. heartbeat ----------------------------------------------------------------------------------


async def test_07_heartbeats_answered_and_socket_stays_open(world: World) -> None:
    args = {"params": world.params("alice", "d1"), "heartbeat_ms": 60, "duration_ms": 700}
    result = await run_js(world.server, "heartbeat", args)
    summary = result["summary"]
    assert summary["heartbeats_sent"] >= 4
    assert summary["heartbeats_answered"] >= summary["heartbeats_sent"] - 1  # the last may be in flight
    assert len(summary["unanswered_refs"]) <= 1
    ref = summary["sent_frames"][0][1]
    assert summary["sent_frames"][0] == [None, ref, "phoenix", "heartbeat", {}]
    assert summary["reply_frames"][0] == [None, ref, "phoenix", "phx_reply", {"status": "ok", "response": {}}]
    assert summary["opens"] == 1
    assert summary["closes"] == []  # no "heartbeat timeout" close, no server close
    assert all(f["topic"] == "phoenix" for f in recv_frames(result))


# -- 8. idle timeout -------------------------------------------------------------------------------


async def test_08_idle_socket_closed_with_4000_and_heartbeats_keep_it_open(deploy: Deploy) -> None:
    """protocol.md §10 item 8 / contract.md §1: nothing received for the idle timeout → close 4000
    (never 1000); a client heartbeating more often than that stays open."""
    async with deploy(idle_timeout=0.5) as server:
        await server.add_user("alice")

        def url(device: str) -> str:
            return f"ws://127.0.0.1:{server.port}/socket/websocket?vsn=2.0.0&token={server.token('alice', device)}"

        def idle() -> int | None:
            with connect(url("phone"), open_timeout=10) as ws:
                try:
                    ws.recv(timeout=10)
                except ConnectionClosed as exc:
                    return exc.rcvd.code if exc.rcvd else None
            return None

        def heartbeating() -> int:
            with connect(url("laptop"), open_timeout=10) as ws:
                for n in range(8):  # 8 heartbeats 0.2 s apart: 1.6 s, three idle timeouts
                    ws.send(json.dumps([None, str(n), "phoenix", "heartbeat", {}]))
                    assert json.loads(ws.recv(timeout=10))[3] == "phx_reply"
                    time.sleep(0.2)  # the client's own cadence, not synchronisation
                return n + 1

        assert await trio.to_thread.run_sync(idle) == 4000
        assert await trio.to_thread.run_sync(heartbeating) == 8
