"""A fresh node per test: the connect budget of 127.0.0.1 (20 per 5 min, contract.md §5) and the
abuse blocks are per node, and phoenix.js reconnects and refused retries spend that budget."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.node import RunningNode, running_node


@dataclass
class World:
    """A running node with three active users and a conversation of alice and bob."""

    node: RunningNode
    conversation: str  # alice + bob
    other_conversation: str  # bob + carol (alice is not a member)

    @property
    def conv_topic(self) -> str:
        return f"conversation:{self.conversation}"

    def params(self, user: str, device: str, **kw: float) -> dict[str, str]:
        """phoenix.js `params` with a valid token."""
        return {"token": self.node.token(user, device, **kw)}


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    # 127.0.0.0/8 is a trusted proxy, so raw clients can spread over client IPs with X-Forwarded-For;
    # phoenix.js sends none and stays 127.0.0.1.
    async with running_node(tmp_path, trusted_proxies=("127.0.0.0/8",)) as node:
        for user in ("alice", "bob", "carol"):
            await node.add_user(user)
        store = node.node.store
        assert store is not None
        conversation = await store.create_conversation(["alice", "bob"])
        other = await store.create_conversation(["bob", "carol"])
        yield World(node, conversation, other)
