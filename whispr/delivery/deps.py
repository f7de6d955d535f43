"""What the messaging channels and the service API share on one node, passed explicitly."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import trio

from whispr.delivery.connections import ConnectionRegistry
from whispr.delivery.live import LiveDelivery
from whispr.delivery.router import MessageRouter
from whispr.delivery.store import MessageStore
from whispr.delivery.typing import TypingCoalescer
from whispr.presence import PresenceTracker
from whispr.protocol import Identity
from whispr.security.gatekeeper import Refusal


class Guard(Protocol):
    """A socket's limits (`whispr.security.gatekeeper.SocketGuard` is one)."""

    async def check_join(self) -> Refusal | None:
        """None to go on with a join, else the refusal to answer."""
        ...

    async def check_message(self, content: str) -> Refusal | None:
        """None to store a message, else the refusal (rate, size, block) to answer."""
        ...


def wall_clock_ms() -> int:
    """Milliseconds since the Unix epoch (`server_time`, `at`)."""
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True)
class Deps:
    """The node's messaging services.

    Attributes:
        store: the message store (source of truth).
        live: live delivery and replay; its `run` must be running in the node's tree.
        router: the one send path (ack after commit, fan-out).
        connections: the node's sockets by socket id; the gateway adds and removes them.
        presence: the presence tracker (its `run` in the tree, broadcasting through the PubSub).
        guard: the socket's guard, by identity (the gatekeeper's `SocketGuard` of that socket).
        typing: typing-indicator coalescing, node-wide.
        wall_ms: wall clock in ms (`server_time`, read receipts' `at`, presence `online_at`).
        presence_handovers: (topic, socket id) -> how many joins found the device's meta still
            tracked by its previous socket (a reconnect that beat the old socket's close); that
            many terminates of the topic for the device leave the meta alone
            (`whispr.channels.conversation.track_presence`).
    """

    store: MessageStore
    live: LiveDelivery
    router: MessageRouter
    connections: ConnectionRegistry
    presence: PresenceTracker
    guard: Callable[[Identity], Guard]
    typing: TypingCoalescer
    wall_ms: Callable[[], int]
    presence_handovers: dict[tuple[str, str], int] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        store: MessageStore,
        presence: PresenceTracker,
        guard: Callable[[Identity], Guard],
        *,
        clock: Callable[[], float] = trio.current_time,
        wall_ms: Callable[[], int] = wall_clock_ms,
    ) -> Deps:
        """Wire the services around a store: a new `LiveDelivery`, router, registry and coalescer.

        Args:
            clock: monotonic seconds for typing coalescing (Trio's clock by default).
        """
        live = LiveDelivery()
        return cls(
            store=store,
            live=live,
            router=MessageRouter(store, live),
            connections=ConnectionRegistry(),
            presence=presence,
            guard=guard,
            typing=TypingCoalescer(clock),
            wall_ms=wall_ms,
        )
