"""Two nodes sharing a Redis form one cluster: each sees the other up, and /ready checks membership."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
import trio

from tests.node import running_node
from tests.services import RedisServer

pytestmark = pytest.mark.integration


async def test_two_nodes_see_each_other_through_redis(tmp_path: Path, redis: RedisServer) -> None:
    async with (
        running_node(tmp_path / "a", redis_url=redis.url, node_id="node-a") as a,
        running_node(tmp_path / "b", redis_url=redis.url, node_id="node-b") as b,
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
