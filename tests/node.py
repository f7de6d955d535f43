"""A real whispr node for integration tests: the whole supervision tree in-process, on a free port.

`running_node(tmp_path)` yields a `RunningNode` with the node's services, its ws URL and helpers
to mint tokens and create users. The embedded default (SQLite in `tmp_path`, in-process pub/sub)
unless `store_url` is given.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import trio

from whispr.adapters.aio import open_bridge
from whispr.app import Node, run_node, token_config
from whispr.config import Settings
from whispr.observability.metrics import Metrics
from whispr.security.tokens import mint_token

SECRET = "test-secret-that-is-at-least-32-bytes-long"


@dataclass
class RunningNode:
    node: Node
    settings: Settings

    @property
    def port(self) -> int:
        assert self.node.address is not None
        return self.node.address[1]

    @property
    def socket_url(self) -> str:
        """The phoenix.js endpoint base (the client appends /websocket)."""
        return f"ws://127.0.0.1:{self.port}/socket"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def token(self, user_id: str, device_id: str, ttl: float = 3600.0, device_type: str | None = None) -> str:
        return mint_token(token_config(self.settings), user_id, device_id, ttl=ttl, device_type=device_type)

    async def add_user(self, user_id: str, active: bool = True) -> None:
        assert self.node.store is not None
        await self.node.store.upsert_user(user_id, active)


@contextlib.asynccontextmanager
async def running_node(data_dir: Path, **overrides: Any) -> AsyncIterator[RunningNode]:
    """Run a node until the block exits (then cancel it). Must run under Trio (pytest-trio)."""
    settings = Settings(
        host="127.0.0.1", port=0, dev=True, data_dir=data_dir, jwt_secret=SECRET, api_key="test-api-key", node_id="n1"
    )
    settings = replace(settings, **overrides)
    metrics = Metrics(settings.node_id, handler_id=f"metrics-{id(settings)}", process_metrics=False)
    node = Node(settings, metrics)
    try:
        async with open_bridge(), trio.open_nursery() as nursery:
            await nursery.start(run_node, node)
            yield RunningNode(node, settings)
            nursery.cancel_scope.cancel()
    finally:
        metrics.detach()
