"""Fixtures of the end-to-end suite: a real node (the whole tree, in-process) with users and a conversation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.node import RunningNode, running_node


@dataclass
class Chat:
    """A running node with users alice, bob and carol, and one conversation of alice and bob."""

    node: RunningNode
    conversation: str

    @property
    def topic(self) -> str:
        return f"conversation:{self.conversation}"

    def params(self, user: str, device: str) -> dict[str, str]:
        """phoenix.js socket `params` with a valid token for the device."""
        return {"token": self.node.token(user, device)}


@pytest.fixture
async def chat(tmp_path: Path) -> AsyncIterator[Chat]:
    # 127.0.0.0/8 is a trusted proxy: raw clients spread over client IPs with X-Forwarded-For
    # (tests/e2e/phx.py); phoenix.js sends none and stays 127.0.0.1 (a fresh node: a fresh budget).
    async with running_node(tmp_path, trusted_proxies=("127.0.0.0/8",)) as node:
        for user in ("alice", "bob", "carol"):
            await node.add_user(user)
        store = node.node.store
        assert store is not None
        yield Chat(node, await store.create_conversation(["alice", "bob"]))
