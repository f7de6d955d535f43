"""deploy/nginx/whispr.conf for real: nginx in front of two whispr nodes sharing Redis and PostgreSQL.

The phoenix.js client connects through nginx, joins `user:`, pings; a second client lands on the
other node (least_conn) and receives a message the first one sends; a client's X-Forwarded-For
reaches the node, which trusts nginx (WHISPR_TRUSTED_PROXIES=127.0.0.1/32); /metrics is not
exposed; a draining node's 503 sends new sockets to the other node (proxy_next_upstream), and so
does an overloaded node's (redirect mode, whispr.cluster.health).
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import pytest
import trio

from tests.deploy_nginx.nginx import nginx_binary, running_nginx
from tests.drain.serve import http_get, open_websocket
from tests.node import RunningNode, running_node
from tests.phoenix_js import JS_DIR, events_of, run_scenario_async
from tests.services import PostgresServer, RedisServer

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(nginx_binary() is None, reason="nginx is not installed (bash .ci/setup --dev)"),
]


def _where(nodes: list[RunningNode], user: str) -> str | None:
    for running in nodes:
        assert running.node.deps is not None
        if any(c["user_id"] == user for c in running.node.deps.connections.describe()):
            return running.settings.node_id
    return None


async def _watch(nodes: list[RunningNode], users: list[str], found: dict[str, str]) -> None:
    """Record the node each user's socket is on, as soon as it is there."""
    while len(found) < len(users):
        for user in users:
            if user not in found and (node := _where(nodes, user)) is not None:
                found[user] = node
        await trio.sleep(0.01)


async def test_phoenix_js_through_nginx_in_front_of_two_nodes(
    tmp_path: Path, fresh_redis: RedisServer, postgres: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    if not (JS_DIR / "node_modules" / "phoenix").is_dir():
        pytest.skip("phoenix.js harness not installed (npm ci in tests/js)")
    store_url = f"postgresql://postgres@127.0.0.1:{postgres.port}/whispr"
    common = {"redis_url": fresh_redis.url, "store_url": store_url, "trusted_proxies": ("127.0.0.1/32",)}
    async with (
        running_node(tmp_path / "a", node_id="nginx-a", **common) as a,
        running_node(tmp_path / "b", node_id="nginx-b", **common) as b,
    ):
        assert a.node.store is not None
        for user in ("alice", "bob", "carol"):
            await a.add_user(user)
        conversation = await a.node.store.create_conversation(["alice", "bob"])
        with running_nginx(tmp_path / "nginx", [a.port, b.port]) as port:
            base = f"http://127.0.0.1:{port}"
            statuses = [(await trio.to_thread.run_sync(http_get, base + path))[0] for path in ("/health", "/ready")]
            assert statuses == [200, 200]
            assert (await trio.to_thread.run_sync(http_get, base + "/metrics"))[0] == 404

            steps = [
                {"op": "connect", "socket": "a", "params": {"token": a.token("alice", "phone")}},
                {"op": "join", "socket": "a", "channel": "ua", "topic": "user:alice"},
                {"op": "push", "channel": "ua", "event": "ping", "id": "ping"},
                {"op": "join", "socket": "a", "channel": "ca", "topic": f"conversation:{conversation}"},
                {"op": "connect", "socket": "b", "params": {"token": a.token("bob", "laptop")}},
                {"op": "join", "socket": "b", "channel": "ub", "topic": "user:bob"},
                {
                    "op": "push",
                    "channel": "ca",
                    "event": "send_message",
                    "id": "send",
                    "payload": {"client_message_id": "via-nginx-1", "content": "hello through nginx", "type": "text"},
                },
                {"op": "wait", "match": {"kind": "chan_msg", "channel": "ub", "event": "new_message"}},
            ]
            found: dict[str, str] = {}
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_watch, [a, b], ["alice", "bob"], found)
                result = await run_scenario_async(f"ws://127.0.0.1:{port}/socket", "script", {"steps": steps})
                nursery.cancel_scope.cancel()

            ping = events_of(result, "push_reply", id="ping")[0]
            assert ping["status"] == "ok"
            assert ping["response"]["pong"] is True
            sent = events_of(result, "push_reply", id="send")[0]
            assert sent["status"] == "ok", sent
            delivered = events_of(result, "chan_msg", channel="ub", event="new_message")[0]["payload"]
            assert delivered["content"] == "hello through nginx"
            assert delivered["seq"] == sent["response"]["seq"]
            assert found["alice"] != found["bob"], found  # least_conn: one socket per node, cross-node delivery

            # X-Forwarded-For: nginx appends its peer; the node skips the trusted hop (nginx) and
            # takes the client's address
            url = f"ws://127.0.0.1:{port}/socket/websocket?vsn=2.0.0&token={a.token('carol', 'tablet')}"
            with caplog.at_level(logging.INFO, logger="whispr.audit"):
                async with open_websocket(url, extra_headers=[(b"x-forwarded-for", b"203.0.113.7")]):
                    pass
            attempts = [
                r.audit  # type: ignore[attr-defined]
                for r in caplog.records
                if getattr(r, "audit", {}).get("event") == "connection_attempt" and r.audit.get("user_id") == "carol"  # type: ignore[attr-defined]
            ]
            assert [attempt["client_ip"] for attempt in attempts] == ["203.0.113.7"], attempts

            # a draining node refuses with 503; nginx retries the upgrade on the other node
            assert a.node.drainer is not None
            assert b.node.drainer is not None
            draining, other = (a, b) if found["alice"] == "nginx-a" else (b, a)
            assert draining.node.drainer is not None
            with trio.fail_after(10):
                await draining.node.drainer.drain()  # no socket left on it: returns at once
            for device in ("d1", "d2"):
                url = f"ws://127.0.0.1:{port}/socket/websocket?vsn=2.0.0&token={a.token('carol', device)}"
                async with open_websocket(url):
                    assert _where([other], "carol") == other.settings.node_id


async def test_an_overloaded_node_refuses_503_and_nginx_sends_the_socket_to_the_other_node(
    tmp_path: Path, fresh_redis: RedisServer, postgres: PostgresServer
) -> None:
    store_url = f"postgresql://postgres@127.0.0.1:{postgres.port}/whispr"
    common = {"redis_url": fresh_redis.url, "store_url": store_url, "trusted_proxies": ("127.0.0.1/32",)}
    user = f"overload-{uuid.uuid4().hex[:8]}"
    async with (
        running_node(tmp_path / "a", node_id="full-a", max_connections=1, **common) as full,
        running_node(tmp_path / "b", node_id="free-b", **common) as free,
    ):
        await full.add_user(user)
        assert full.node.drainer is not None
        # fill node a behind nginx's back: nginx still counts 0 connections there and picks it
        async with open_websocket(
            f"ws://127.0.0.1:{full.port}/socket/websocket?vsn=2.0.0&token={full.token(user, 'd0')}"
        ):
            with trio.fail_after(10):
                while len(full.node.drainer) < 1:  # noqa: ASYNC110 - the node offers no event for it
                    await trio.sleep(0.01)
            with running_nginx(tmp_path / "nginx", [full.port, free.port]) as port:
                for device in ("d1", "d2"):  # least_conn sends at least one of the two to a first
                    url = f"ws://127.0.0.1:{port}/socket/websocket?vsn=2.0.0&token={full.token(user, device)}"
                    async with open_websocket(url):
                        assert _where([free], user) == free.settings.node_id
        rendered = full.node.metrics.render()[0].decode()
        refused = [
            line
            for line in rendered.splitlines()
            if line.startswith("whispr_connections_refused_total{") and "overloaded_connections" in line
        ]
        assert refused, "node a never refused: nginx did not try it"
