"""Two nodes sharing a Redis form one cluster: each sees the other up, and /ready checks membership."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
import trio
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.node import RunningNode, running_node
from tests.services import PostgresServer, RedisServer

pytestmark = pytest.mark.integration


async def test_two_nodes_see_each_other_through_redis(tmp_path: Path, fresh_redis: RedisServer) -> None:
    async with (
        running_node(tmp_path / "a", redis_url=fresh_redis.url, node_id="node-a") as a,
        running_node(tmp_path / "b", redis_url=fresh_redis.url, node_id="node-b") as b,
    ):
        cluster_a, cluster_b = a.node.cluster, b.node.cluster
        assert cluster_a is not None
        assert cluster_b is not None
        with trio.fail_after(10):
            await cluster_a.wait_until(lambda: "node-b" in cluster_a.members())
            await cluster_b.wait_until(lambda: "node-a" in cluster_b.members())

        def ready() -> dict[str, object]:
            with urllib.request.urlopen(a.http_url + "/ready", timeout=10) as response:
                return json.loads(response.read())  # type: ignore[no-any-return]

        report = await trio.to_thread.run_sync(ready)
    assert report["checks"]["cluster"] == {"ok": True, "detail": ""}  # type: ignore[index]


async def test_embedded_node_has_no_cluster(tmp_path: Path) -> None:
    async with running_node(tmp_path) as running:
        assert running.node.cluster is None


async def test_a_message_posted_on_one_node_reaches_a_device_on_the_other(
    tmp_path: Path, fresh_redis: RedisServer, postgres: PostgresServer
) -> None:
    store_url = f"postgresql://postgres@127.0.0.1:{postgres.port}/whispr"
    async with (
        running_node(tmp_path / "a", redis_url=fresh_redis.url, store_url=store_url, node_id="node-a") as a,
        running_node(tmp_path / "b", redis_url=fresh_redis.url, store_url=store_url, node_id="node-b") as b,
    ):
        assert a.node.store is not None
        await a.add_user("alice")
        await a.add_user("bob")
        conversation = await a.node.store.create_conversation(["alice", "bob"])
        url = f"ws://127.0.0.1:{b.port}/socket/websocket?vsn=2.0.0&token={b.token('bob', 'phone')}"
        joined = trio.Event()
        received: list[object] = []

        def bob_on_node_b(token: trio.lowlevel.TrioToken) -> None:
            with connect(url, open_timeout=10) as ws:
                ws.send(json.dumps(["1", "1", "user:bob", "phx_join", {}]))
                while json.loads(ws.recv(timeout=10))[3] != "phx_reply":
                    pass
                trio.from_thread.run_sync(joined.set, trio_token=token)
                while True:
                    frame = json.loads(ws.recv(timeout=20))
                    # bob's inbox in the shared database may replay other tests' messages first
                    if frame[3] == "new_message" and frame[4]["content"] == "across":
                        received.append(frame)
                        return

        def post_on_node_a() -> int:
            body = json.dumps({"sender_id": "alice", "client_message_id": "x1", "content": "across"}).encode()
            request = urllib.request.Request(
                f"{a.http_url}/api/v1/conversations/{conversation}/messages", data=body, method="POST"
            )
            request.add_header("Authorization", "Bearer test-api-key")
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, bob_on_node_b, trio.lowlevel.current_trio_token())
            with trio.fail_after(20):
                await joined.wait()
            assert await trio.to_thread.run_sync(post_on_node_a) == 201
    (frame,) = received
    assert frame[4]["content"] == "across"
    assert frame[4]["sender_id"] == "alice"


async def test_a_disconnect_and_a_device_reconnecting_elsewhere_reach_every_node(
    tmp_path: Path, fresh_redis: RedisServer, postgres: PostgresServer
) -> None:
    store_url = f"postgresql://postgres@127.0.0.1:{postgres.port}/whispr"
    async with (
        running_node(tmp_path / "a", redis_url=fresh_redis.url, store_url=store_url, node_id="node-a") as a,
        running_node(tmp_path / "b", redis_url=fresh_redis.url, store_url=store_url, node_id="node-b") as b,
    ):
        await a.add_user("bob")
        token = trio.lowlevel.current_trio_token()
        codes: dict[str, int | None] = {}

        def device(node: RunningNode, name: str, joined: trio.Event) -> int | None:
            """Connect, join user:bob (the node has registered the socket by the reply), wait for the close."""
            url = f"ws://127.0.0.1:{node.port}/socket/websocket?vsn=2.0.0&token={node.token('bob', name)}"
            with connect(url, open_timeout=10) as ws:
                ws.send(json.dumps(["1", "1", "user:bob", "phx_join", {}]))
                while json.loads(ws.recv(timeout=10))[3] != "phx_reply":
                    pass
                trio.from_thread.run_sync(joined.set, trio_token=token)
                try:
                    while True:
                        ws.recv(timeout=20)
                except ConnectionClosed as exc:
                    return exc.rcvd.code if exc.rcvd else None

        async def run_device(label: str, node: RunningNode, name: str, joined: trio.Event, done: trio.Event) -> None:
            codes[label] = await trio.to_thread.run_sync(device, node, name, joined)
            done.set()

        async with trio.open_nursery() as nursery:
            # A kick through node A's service API closes bob's laptop on node B.
            joined, laptop_closed = trio.Event(), trio.Event()
            nursery.start_soon(run_device, "laptop on b", b, "laptop", joined, laptop_closed)
            with trio.fail_after(10):
                await joined.wait()
            assert await trio.to_thread.run_sync(api_post, a.http_url + "/api/v1/users/bob/disconnect") == 200
            with trio.fail_after(10):
                await laptop_closed.wait()
            # The phone connects on A, then again on B: the older socket, on A, is replaced.
            joined, phone_a_closed = trio.Event(), trio.Event()
            nursery.start_soon(run_device, "phone on a", a, "phone", joined, phone_a_closed)
            with trio.fail_after(10):
                await joined.wait()
            joined = trio.Event()
            nursery.start_soon(run_device, "phone on b", b, "phone", joined, trio.Event())
            with trio.fail_after(10):
                await joined.wait()
                await phone_a_closed.wait()
            # Device-level kick, also through node A: the last socket (on B) goes too.
            assert (
                await trio.to_thread.run_sync(api_post, a.http_url + "/api/v1/users/bob/devices/phone/disconnect")
                == 200
            )
    assert codes == {"laptop on b": 1001, "phone on a": 1001, "phone on b": 1001}


def api_post(url: str) -> int:
    request = urllib.request.Request(url, data=b"", method="POST")
    request.add_header("Authorization", "Bearer test-api-key")
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status
