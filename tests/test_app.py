"""A whole node: its tree boots in order, serves probes and sockets, and stops on SIGTERM."""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import urllib.request
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import websockets
import websockets.sync.client

from tests.node import running_node
from tests.services import free_port, wait_for_port
from whispr.app import GC_YOUNG_THRESHOLD, settle_heap

pytestmark = pytest.mark.integration


async def _get(url: str) -> tuple[int, bytes]:
    def fetch() -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    return await trio.to_thread.run_sync(fetch)


async def test_probes_and_metrics_answer_on_the_socket_port(tmp_path: Path) -> None:
    async with running_node(tmp_path) as running:
        assert await _get(running.http_url + "/health") == (200, b'{"status":"ok"}')
        status, body = await _get(running.http_url + "/ready")
        assert status == 200
        assert json.loads(body) == {
            "status": "ready",
            "draining": False,
            "checks": {"store": {"ok": True, "detail": ""}, "endpoint": {"ok": True, "detail": ""}},
        }
        status, body = await _get(running.http_url + "/metrics")
        assert status == 200
        assert b'whispr_connections_active{node="n1"}' in body


async def test_a_user_joins_its_topic_over_a_real_socket(tmp_path: Path) -> None:
    async with running_node(tmp_path) as running:
        await running.add_user("alice")
        url = f"ws://127.0.0.1:{running.port}/socket/websocket?vsn=2.0.0&token={running.token('alice', 'phone')}"

        def exchange() -> list[object]:
            from websockets.sync.client import connect

            with connect(url, open_timeout=10) as ws:
                ws.send(json.dumps(["1", "1", "user:alice", "phx_join", {}]))
                reply = json.loads(ws.recv(timeout=10))
                ws.send(json.dumps(["1", "2", "user:bob", "phx_join", {}]))
                frames = [json.loads(ws.recv(timeout=10)) for _ in range(2)]
                return [reply, *frames]

        reply, *rest = await trio.to_thread.run_sync(exchange)
        assert reply[:4] == ["1", "1", "user:alice", "phx_reply"]
        assert reply[4]["status"] == "ok"
        refused = next(frame for frame in rest if frame[3] == "phx_reply")
        assert refused[4] == {"status": "error", "response": {"reason": "unauthorized"}}


async def test_inactive_and_unknown_users_are_refused_before_the_upgrade(tmp_path: Path) -> None:
    async with running_node(tmp_path) as running:
        await running.add_user("mallory", active=False)
        for user in ("mallory", "nobody"):
            url = f"ws://127.0.0.1:{running.port}/socket/websocket?vsn=2.0.0&token={running.token(user, 'd')}"
            with pytest.raises(websockets.InvalidStatus) as refused:
                await trio.to_thread.run_sync(lambda url=url: websockets.sync.client.connect(url, open_timeout=10))
            assert refused.value.response.status_code == 403


@pytest.mark.slow
def test_whispr_serve_runs_and_stops_in_order_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "WHISPR_SHUTDOWN_GRACE": "5"}
    args = [sys.executable, "-m", "whispr", "serve", "--dev", "--port", str(port), "--data-dir", str(tmp_path)]
    process = subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_port(port, timeout=30)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as response:
            assert response.status == 200
        process.send_signal(signal.SIGTERM)
        _, log = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, log
    assert "SIGTERM received; stopping tree 'root'" in log
    assert "tree 'root' stopped" in log
    started = [line.split("child '")[1].split("'")[0] for line in log.splitlines() if "started node=" in line]
    assert started == ["store", "pubsub", "presence", "delivery", "offline", "security", "loop_lag", "endpoint"]


def _api(base: str, method: str, path: str, body: object = None, key: str | None = "test-api-key") -> tuple[int, Any]:
    request = urllib.request.Request(
        base + path, method=method, data=None if body is None else json.dumps(body).encode()
    )
    request.add_header("Content-Type", "application/json")
    if key is not None:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        is_json = exc.headers.get("Content-Type", "").startswith("application/json")
        return exc.code, json.loads(raw) if is_json else raw


async def test_service_api_is_served_under_api_v1_with_the_api_key(tmp_path: Path) -> None:
    async with running_node(tmp_path) as running:
        base = running.http_url

        def calls() -> list[tuple[int, Any]]:
            created = _api(base, "POST", "/api/v1/conversations", {"members": ["alice", "bob"]})
            conversation = created[1]["id"]
            message = {"sender_id": "alice", "client_message_id": "c1", "content": "hello"}
            return [
                _api(base, "POST", "/api/v1/conversations", {"members": ["a"]}, key=None),
                _api(base, "POST", "/api/v1/conversations", {"members": ["a"]}, key="wrong"),
                created,
                _api(base, "POST", f"/api/v1/conversations/{conversation}/messages", message),
                _api(base, "POST", f"/api/v1/conversations/{conversation}/messages", message),
                _api(base, "GET", "/api/v1/connections"),
            ]

        unauthenticated, wrong_key, created, posted, again, connections = await trio.to_thread.run_sync(calls)
    assert unauthenticated == (401, {"error": "unauthorized"})
    assert wrong_key == (401, {"error": "unauthorized"})
    assert created[0] == 201
    assert posted[0] == 201
    assert posted[1]["seq"] == 1
    assert posted[1]["duplicate"] is False
    assert again == (200, {**posted[1], "duplicate": True})
    assert connections == (200, {"connections": []})


async def test_without_an_api_key_there_is_no_service_api(tmp_path: Path) -> None:
    async with running_node(tmp_path, api_key="") as running:
        status, _ = await trio.to_thread.run_sync(
            lambda: _api(running.http_url, "POST", "/api/v1/conversations", {"members": ["a"]})
        )
    assert status == 404


async def test_an_external_user_service_decides_who_is_active(tmp_path: Path) -> None:
    async def user_service(stream: trio.SocketStream) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            request += await stream.receive_some(4096)
        active = request.startswith(b"GET /users/alice ")
        body = json.dumps({"active": True}).encode() if active else b"{}"
        status = b"200 OK" if active else b"404 Not Found"
        head = b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\nConnection: close\r\n"
        await stream.send_all(head + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        (listener,) = await nursery.start(partial(trio.serve_tcp, user_service, 0, host="127.0.0.1"))
        service_url = f"http://127.0.0.1:{listener.socket.getsockname()[1]}"
        async with running_node(tmp_path, user_service_url=service_url) as running:
            statuses = []
            for user in ("alice", "bob"):  # neither is in the store's users table
                url = f"ws://127.0.0.1:{running.port}/socket/websocket?vsn=2.0.0&token={running.token(user, 'd')}"

                def attempt(url: str = url) -> int:
                    try:
                        with websockets.sync.client.connect(url, open_timeout=10):
                            pass
                    except websockets.InvalidStatus as exc:
                        return exc.response.status_code
                    return 101

                statuses.append(await trio.to_thread.run_sync(attempt))
        nursery.cancel_scope.cancel()
    assert statuses == [101, 403]


def test_settle_heap_freezes_start_up_and_examines_young_objects_less_often() -> None:
    threshold = gc.get_threshold()
    try:
        gc.unfreeze()
        start_up = [[] for _ in range(100)]  # objects alive at start-up
        settle_heap()
        assert gc.get_freeze_count() >= len(start_up)
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *threshold[1:])
        assert threshold[0] < GC_YOUNG_THRESHOLD
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
