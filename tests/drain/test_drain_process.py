"""SIGTERM drains a real `whispr serve` process (contract.md §3, §6 1012; reliability.md E5).

Every connected client sees `reconnect_required {"reason": "draining"}` on its `user:` topic, then
close 1012, the closes spread over the drain window; `/ready` answers 503 during the drain and new
upgrades get 503 + Retry-After; every message that was acked is in the store after the exit; the
process exits 0 within the grace.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionRejected

from tests.drain.serve import Closed, RawClient, ServeProcess, http_get, must, open_raw_client, open_websocket
from tests.phoenix_js import JS_DIR, events_of, run_scenario_async
from whispr.adapters import open_store
from whispr.adapters.aio import open_bridge

pytestmark = pytest.mark.integration

CLIENTS = 20
WINDOW = 2.0
GRACE = 12.0
LIMITS = {"WHISPR_CONNECTIONS_PER_IP": "1000", "WHISPR_CONNECTS_PER_5MIN": "10000"}  # every client is 127.0.0.1


async def _wait_connections(serve: ServeProcess, count: int) -> None:
    """Until the node lists `count` sockets that have joined their `user:` topic."""

    def joined() -> int:
        listed = must(serve.api().connections())["connections"]
        return sum(1 for c in listed if f"user:{c['user_id']}" in c["topics"])

    while await trio.to_thread.run_sync(joined) < count:  # noqa: ASYNC110 - another process: no event to wait on
        await trio.sleep(0.05)


async def _sender(client: RawClient, conversation: str, acked: dict[str, int], done: trio.Event) -> None:
    """Send messages one after the other until the socket closes; record every ack."""
    n = 0
    try:
        while True:
            n += 1
            cmid = f"drain-{n}"
            payload = {"client_message_id": cmid, "content": f"m{n}", "type": "text"}
            reply = await client.push(f"conversation:{conversation}", "send_message", payload)
            assert reply["status"] == "ok", reply
            acked[cmid] = reply["response"]["seq"]
            if n == 5:
                done.set()  # the stream of sends is under way
    except Closed:
        pass


async def test_sigterm_drains_every_socket_with_reconnect_required_then_1012(tmp_path: Path) -> None:
    env = {"WHISPR_SHUTDOWN_GRACE": str(GRACE), "WHISPR_DRAIN_WINDOW": str(WINDOW), **LIMITS}
    serve = ServeProcess(tmp_path / "node", env)
    use_js = (JS_DIR / "node_modules" / "phoenix").is_dir()
    try:
        await trio.to_thread.run_sync(serve.wait_ready)
        api = serve.api()
        users = [f"u{i}" for i in range(CLIENTS)] + ["js"]
        for user in users:
            must(await trio.to_thread.run_sync(api.set_active, user, True))
        conversation = must(await trio.to_thread.run_sync(api.create_conversation, ["u0", "u1"]))["id"]
        acked: dict[str, int] = {}
        js_result: dict[str, Any] = {}
        sigterm_at = 0.0
        ready_during_drain: list[int] = []
        refused: list[ConnectionRejected] = []

        async with trio.open_nursery() as nursery:
            clients: list[RawClient] = []
            for i in range(CLIENTS):
                client = await open_raw_client(nursery, serve.socket_url(serve.token(f"u{i}", "d")), f"u{i}")
                await client.join(f"user:u{i}")
                clients.append(client)
            sender = clients[0]
            await sender.join(f"conversation:{conversation}")
            sending = trio.Event()
            nursery.start_soon(_sender, sender, conversation, acked, sending)

            if use_js:

                async def js_client() -> None:
                    steps = [
                        {"op": "connect", "params": {"token": serve.token("js", "browser")}, "reconnect_ms": 5000},
                        {"op": "join", "topic": "user:js", "channel": "u"},
                        {"op": "wait", "match": {"kind": "chan_msg", "event": "reconnect_required"}, "wait_ms": 15000},
                        {"op": "wait", "match": {"kind": "close", "code": 1012}, "wait_ms": 15000},
                    ]
                    url = f"ws://127.0.0.1:{serve.port}/socket"
                    js_result.update(await run_scenario_async(url, "script", {"steps": steps, "deadline_ms": 30000}))

                nursery.start_soon(js_client)
            with trio.fail_after(20):
                await _wait_connections(serve, CLIENTS + (1 if use_js else 0))
                await sending.wait()

            serve.terminate()
            sigterm_at = trio.current_time()
            with trio.fail_after(5):
                while True:  # /ready fails at once, while the sockets are still open
                    status, body = await trio.to_thread.run_sync(http_get, serve.http_url + "/ready")
                    if status == 503:
                        assert json.loads(body)["draining"] is True
                        ready_during_drain.append(sum(1 for c in clients if c.close_code is None))
                        break
                    await trio.sleep(0.02)
            try:  # a new socket is refused with 503 + Retry-After
                async with open_websocket(serve.socket_url(serve.token("u1", "late"))):
                    pass
            except ConnectionRejected as exc:
                refused.append(exc)
            with trio.fail_after(GRACE):
                for client in clients:
                    await client.closed.wait()
        exit_code = await trio.to_thread.run_sync(lambda: serve.proc.wait(timeout=GRACE))
        exited_after = trio.current_time() - sigterm_at
    finally:
        serve.close()
    log = serve.log()

    assert exit_code == 0, log
    assert exited_after < GRACE, log
    assert ready_during_drain[0] > 0  # 503 seen while sockets were still open
    assert refused[0].status_code == 503
    assert any(name.lower() == b"retry-after" for name, _ in refused[0].headers)
    for client in clients:
        notices = [f for f in client.events("reconnect_required") if f[2] == f"user:{client.name}"]
        assert client.close_code == 1012, (client.name, client.close_code)
        assert len(notices) == 1, client.frames[-3:]
        assert notices[0][4]["reason"] == "draining"
        assert 500 <= notices[0][4]["retry_after_ms"] <= 1000
        after = client.frames[client.frames.index(notices[0]) + 1 :]
        assert {f[3] for f in after} <= {"phx_reply", "new_message"}, after  # only what was in flight
    closes = sorted(c.closed_at - sigterm_at for c in clients if c.closed_at is not None)
    assert closes[-1] - closes[0] > WINDOW / 2, closes  # spread over the window, not all at once
    assert f"drain done: {CLIENTS + (1 if use_js else 0)} sockets" in log, log
    if use_js:
        assert js_result["ok"], js_result
        notice = events_of(js_result, "chan_msg", event="reconnect_required")[0]
        assert notice["payload"]["reason"] == "draining"
        assert events_of(js_result, "close")[0]["code"] == 1012

    # nothing acked is lost: every acked message is in the store with the seq the ack gave
    assert acked, log

    async def stored() -> dict[str, int]:
        async with open_bridge(), open_store(f"sqlite:///{serve.data_dir / 'whispr.db'}") as store:
            page = await store.messages_after(conversation, 0, 10_000)
            return {m.client_message_id: m.seq for m in page.messages}

    in_store = await stored()
    assert {cmid: in_store.get(cmid) for cmid in acked} == acked
    print(
        f"\ndrain: {len(clients) + (1 if use_js else 0)} sockets, closes from {closes[0]:.3f}s to {closes[-1]:.3f}s "
        f"after SIGTERM, {len(acked)} acked sends, exit 0 after {exited_after:.3f}s; "
        + next(line for line in log.splitlines() if "drain done" in line).split("WARNING")[-1].strip()
    )
