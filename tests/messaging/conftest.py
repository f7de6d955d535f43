"""A node's messaging services on a real SQLite store, and devices that speak V2 JSON to it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from tests.channels.fakes import FakeTransport, unframe
from whispr.adapters.sqlite_store import open_sqlite_store
from whispr.channels.user import make_router
from whispr.delivery.deps import Deps
from whispr.delivery.router import Draft
from whispr.delivery.store import Message, MessageStore
from whispr.gateway.socket import PhoenixSocket
from whispr.presence import PresenceTracker
from whispr.protocol import V2, Identity
from whispr.pubsub import PubSub
from whispr.security.gatekeeper import Refusal


class FakeGuard:
    """Refuses with whatever the test puts in `join_refusals` / `message_refusals` (oldest first)."""

    def __init__(self) -> None:
        self.join_refusals: list[Refusal] = []
        self.message_refusals: list[Refusal] = []
        self.checked: list[str] = []

    async def check_join(self) -> Refusal | None:
        await trio.lowlevel.checkpoint()
        return self.join_refusals.pop(0) if self.join_refusals else None

    async def check_message(self, content: str) -> Refusal | None:
        await trio.lowlevel.checkpoint()
        self.checked.append(content)
        return self.message_refusals.pop(0) if self.message_refusals else None


async def settle() -> None:
    """Return once every task is blocked and no store thread is running: the node is idle."""
    while True:
        await trio.testing.wait_all_threads_completed()
        await trio.testing.wait_all_tasks_blocked()
        if trio.testing.active_thread_count() == 0:
            return


class Node:
    """The services of one node around `store`: pub/sub, presence, deps, router table."""

    def __init__(self, store: MessageStore) -> None:
        self.store = store
        self.pubsub = PubSub()
        self.presence = PresenceTracker(self._broadcast_presence, node="n1")
        self.guards: dict[str, FakeGuard] = {}
        self.deps = Deps.build(store, self.presence, self.guard, wall_ms=lambda: 1_700_000_000_000)
        self.router = make_router(self.deps)

    def _broadcast_presence(self, topic: str, event: str, payload: dict[str, Any]) -> None:
        self.pubsub.broadcast(topic, event, payload, droppable=True)

    def guard(self, identity: Identity) -> FakeGuard:
        return self.guards.setdefault(identity.socket_id, FakeGuard())

    def device(self, user_id: str, device_id: str = "d1") -> Device:
        return Device(self, Identity(user_id, device_id, "web"))

    async def conversation(self, *members: str) -> str:
        return await self.store.create_conversation(list(members))

    async def send(self, conversation_id: str, sender_id: str, count: int, prefix: str = "m") -> list[Message]:
        """Send `count` messages through the router (as the API does), one after the other."""
        sent = []
        for i in range(count):
            draft = Draft(f"{prefix}{i}", f"{prefix} {i}", "text", {}, None)
            message, _ = await self.deps.router.send(conversation_id, sender_id, "api", draft)
            sent.append(message)
        return sent


class Device:
    """One connection: a PhoenixSocket on a FakeTransport, registered like the gateway would."""

    def __init__(self, node: Node, identity: Identity) -> None:
        self.node = node
        self.identity = identity
        self.transport = FakeTransport()
        self.socket = PhoenixSocket(self.transport, V2, node.router, node.pubsub, identity)
        node.deps.connections.add(self.socket)
        self._ref = 0
        self._seen = 0
        self.log: list[list[Any]] = []  # every message received, decoded

    async def push(self, topic: str, event: str, payload: Any = None, join_ref: str | None = None) -> str:
        self._ref += 1
        ref = str(self._ref)
        frame = [ref if event == "phx_join" else join_ref, ref, topic, event, {} if payload is None else payload]
        await self.socket.on_text(json.dumps(frame))
        return ref

    async def join(self, topic: str, params: Any = None) -> dict[str, Any]:
        """Join; return the reply (`{"status", "response"}`)."""
        ref = await self.push(topic, "phx_join", params)
        return self.reply(ref)

    async def call(self, topic: str, event: str, payload: Any = None) -> dict[str, Any]:
        """Push an event and return its reply."""
        return self.reply(await self.push(topic, event, payload))

    def reply(self, ref: str) -> dict[str, Any]:
        replies = [m[4] for m in self.messages() if m[3] == "phx_reply" and m[1] == ref]
        assert len(replies) == 1, replies
        reply: dict[str, Any] = replies[0]
        return reply

    def messages(self) -> list[list[Any]]:
        """Everything received so far, decoded (V2 arrays)."""
        for frame in self.transport.frames[self._seen :]:
            opcode, data = unframe(frame)
            assert opcode == 1
            self.log.append(json.loads(data))
        self._seen = len(self.transport.frames)
        return self.log

    def events(self, topic: str, event: str) -> list[dict[str, Any]]:
        return [m[4] for m in self.messages() if m[2] == topic and m[3] == event]

    async def close(self) -> None:
        await self.socket.on_close()
        self.node.deps.connections.remove(self.socket)


@asynccontextmanager
async def open_node(path: Path, **store_options: Any) -> AsyncIterator[Node]:
    """A running node on a SQLite store at `path` (options as for `open_sqlite_store`)."""
    async with open_sqlite_store(path, **store_options) as store, trio.open_nursery() as nursery:
        node = Node(store)
        await nursery.start(node.deps.live.run)
        await nursery.start(node.presence.run)
        yield node
        nursery.cancel_scope.cancel()


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    async with open_node(tmp_path / "whispr.db") as node:
        yield node
