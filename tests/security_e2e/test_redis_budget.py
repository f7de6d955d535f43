"""One message budget per user across nodes (contract §5 "one budget across all nodes"; reliability B8, S11).

Two nodes share a private Redis (`redis_url`) and one store; one user has a socket on each. 150
pushes, all in flight at once, must get at most 100 `ok`s between them (plus what the token bucket
refills during the burst: one per 600 ms of wall time, since the Redis limiter runs on wall time).
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import redis as redis_sync
import trio
from websockets.exceptions import ConnectionClosed

from tests.drain.serve import ServeProcess
from tests.node import SECRET, running_node
from tests.security_e2e.client import TIMEOUT, ControlSet, Phx, in_thread
from tests.security_e2e.conftest import start_control
from tests.services import PostgresServer, RedisServer
from whispr.api.client import ApiClient
from whispr.security.tokens import TokenConfig, mint_token

pytestmark = pytest.mark.integration

PUSHES_PER_SOCKET = 75


def burst(phx: Phx, conversation_id: str) -> tuple[int, int, int | None]:
    """Push `PUSHES_PER_SOCKET` messages without waiting, then read every reply (or the close).
    Returns (ok, refused, close code)."""
    topic = f"conversation:{conversation_id}"
    refs = {
        phx.push(topic, "send_message", {"client_message_id": f"{phx.source}-{i}", "content": f"b{i}"})
        for i in range(PUSHES_PER_SOCKET)
    }
    replies: dict[str, dict[str, Any]] = {}
    try:
        while len(replies) < len(refs):
            frame = phx.wait_for(lambda f: f[3] == "phx_reply" and f[1] in refs, TIMEOUT)
            replies[frame[1]] = frame[4]
    except ConnectionClosed:
        pass
    ok = sum(1 for r in replies.values() if r["status"] == "ok")
    return ok, len(replies) - ok, phx.close_code


@asynccontextmanager
async def alice_on_two_nodes(tmp_path: Path, redis: RedisServer) -> AsyncIterator[tuple[ControlSet, str, Phx, Phx]]:
    """Nodes n1 and n2 on one Redis and one store, a control set on n1, and alice's devices d1 on n1
    and d2 on n2, both joined to her conversation with bob: (control, conversation, on n1, on n2)."""
    store_url = f"sqlite:///{tmp_path / 'shared.db'}"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    common = {"redis_url": redis.url, "store_url": store_url}
    async with (
        running_node(tmp_path / "a", node_id="n1", **common) as a,
        running_node(tmp_path / "b", node_id="n2", **common) as b,
    ):
        control = await start_control(a)
        try:
            await a.add_user("alice")
            await a.add_user("bob")
            assert a.node.store is not None
            conversation_id = await a.node.store.create_conversation(["alice", "bob"])
            on_a = await in_thread(Phx.connect, a.port, a.token("alice", "d1"), source="127.0.0.50")
            on_b = await in_thread(Phx.connect, b.port, b.token("alice", "d2"), source="127.0.0.51")
            for phx in (on_a, on_b):
                assert (await in_thread(phx.join, f"conversation:{conversation_id}"))["status"] == "ok"
            yield control, conversation_id, on_a, on_b
        finally:
            await in_thread(control.close)


async def test_two_nodes_share_one_message_budget(tmp_path: Path, fresh_redis: RedisServer) -> None:
    async with alice_on_two_nodes(tmp_path, fresh_redis) as (control, conversation_id, on_a, on_b):
        started = time.time()
        results: list[tuple[int, int, int | None]] = []

        async def run(phx: Phx) -> None:
            results.append(await in_thread(burst, phx, conversation_id))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, on_a)
            nursery.start_soon(run, on_b)
        elapsed = time.time() - started
        accepted = sum(ok for ok, _, _ in results)
        refill = math.ceil(elapsed / 0.6)
        assert accepted <= 100 + refill, (results, elapsed)
        assert accepted >= 100  # the budget itself is usable

        client = redis_sync.Redis.from_url(fresh_redis.url)
        try:
            # The limiter's keys must all expire (the membership stream, `whispr:cluster`, is bounded by MAXLEN).
            keys = [*client.scan_iter("whispr:limit:*"), *client.scan_iter("whispr:block:*")]
            assert keys, "the shared limiter wrote nothing to Redis"
            assert all(client.pttl(key) > 0 for key in keys)  # every key has a TTL
        finally:
            client.close()
        for phx in (on_a, on_b):
            if phx.is_open():
                await in_thread(phx.close)
        await in_thread(control.check)


@pytest.mark.slow
async def test_two_node_processes_share_one_message_budget(
    tmp_path: Path, fresh_redis: RedisServer, postgres: PostgresServer
) -> None:
    """The same budget with each node in its own `whispr serve` process (PostgreSQL store)."""
    env = {
        "WHISPR_REDIS_URL": fresh_redis.url,
        "WHISPR_STORE_URL": f"postgresql://postgres@127.0.0.1:{postgres.port}/whispr",
        "WHISPR_JWT_SECRET": SECRET,
        "WHISPR_API_KEY": "test-api-key",
        "WHISPR_LOG_LEVEL": "WARNING",
    }
    nodes = [ServeProcess(tmp_path / name, env, ("--node-id", name)) for name in ("p1", "p2")]
    try:
        for node in nodes:
            await in_thread(node.wait_ready)
        api = ApiClient(nodes[0].http_url, "test-api-key")
        assert (await in_thread(api.set_active, "carol", True)).ok
        created = await in_thread(api.create_conversation, ["carol", "dave"])
        conversation_id = created.body["id"]
        config = TokenConfig(secret=SECRET.encode())
        sockets = [
            await in_thread(Phx.connect, node.port, mint_token(config, "carol", device), source=source)
            for node, device, source in zip(nodes, ("d1", "d2"), ("127.0.0.60", "127.0.0.61"), strict=True)
        ]
        for phx in sockets:
            assert (await in_thread(phx.join, f"conversation:{conversation_id}"))["status"] == "ok"
        started = time.time()
        results: list[tuple[int, int, int | None]] = []

        async def run(phx: Phx) -> None:
            results.append(await in_thread(burst, phx, conversation_id))

        async with trio.open_nursery() as nursery:
            for phx in sockets:
                nursery.start_soon(run, phx)
        elapsed = time.time() - started
    finally:
        for node in nodes:
            node.close()
    accepted = sum(ok for ok, _, _ in results)
    assert 100 <= accepted <= 100 + math.ceil(elapsed / 0.6), (results, elapsed)


async def test_a_block_on_one_node_refuses_the_users_live_socket_on_the_other(
    tmp_path: Path, fresh_redis: RedisServer
) -> None:
    """contract.md §5 "spam" across nodes: alice spams on node a until blocked; her device on node b,
    joined before the block, gets `blocked` on its next push and is closed with 1008 (before the
    fix it got `rate_limit_exceeded` and kept sending once the shared budget refilled)."""
    async with alice_on_two_nodes(tmp_path, fresh_redis) as (control, conversation_id, on_a, on_b):

        def spam_until_blocked() -> dict[str, Any]:
            for i in range(300):  # 100 pass, 3 refusals in a row block (plus a few wall-time refills)
                reply = on_a.send_message(conversation_id, f"s{i}", f"spam-{i}")
                if reply["status"] == "error" and reply["response"]["reason"] == "blocked":
                    return reply
            raise AssertionError("alice was never blocked")

        blocked = await in_thread(spam_until_blocked)
        assert blocked["response"]["retry_after_ms"] == 300_000
        assert await in_thread(on_a.wait_closed) == 1008
        reply = await in_thread(on_b.send_message, conversation_id, "from b", "late-b")
        assert reply["status"] == "error"
        assert reply["response"]["reason"] == "blocked"
        assert 0 < reply["response"]["retry_after_ms"] <= 300_000
        assert await in_thread(on_b.wait_closed) == 1008
        await in_thread(control.check)
