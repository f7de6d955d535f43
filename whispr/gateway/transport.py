"""The seam between the WebSocket transport and the Phoenix socket layer that runs on it.

The transport (`whispr.gateway.websocket`, `whispr.gateway.endpoint`) owns bytes on the wire: the
HTTP front door, the upgrade, RFC 6455 framing, frame-size caps, ping floods, handshake and idle
timeouts, the bounded outbox and its writer. The Phoenix layer (`whispr.gateway.socket`) owns
meaning: serializers, the session state machine, channels. Neither imports the other's internals;
they meet only through the types below.

Flow for one client:
1. The endpoint parses an upgrade request into an `UpgradeRequest` and awaits `connect(request)`.
2. `Refuse` → an HTTP response with that status and no upgrade (Phoenix answers 403/429/503 so).
   `Accept` → the 101 (with `subprotocol` selected when given), then `accept.handler(transport)`
   builds the `SocketHandler` for this connection.
3. The transport's reader calls `on_text` / `on_binary` serially, one complete message at a time,
   and `on_close` exactly once when the connection is gone, whoever closed it.
4. The handler writes with `transport.send(frame)` and ends the connection with `transport.close`.
   Exceptions never cross the seam: an exception escaping a handler method is a bug, which the
   transport logs and answers with close 1011 (RFC 6455 §7.4.1), touching no other connection.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol


class Transport(Protocol):
    """What a WebSocket connection offers the socket layer. All methods are synchronous."""

    def send(self, frame: bytes, droppable: bool = False) -> None:
        """Queue one complete server frame (built with `whispr.gateway.frames`).

        Never blocks, never raises. The frame is written at once when the kernel accepts it;
        otherwise the connection's writer sends it later, coalescing queued frames into one write.
        Frames are written in call order. `droppable` frames (typing, presence) are the first
        discarded when the outbox is over its bound; an overflow of other frames closes the
        connection with 1013 (slow consumer), and the device recovers through the store.
        After `close` (or once the connection is gone) frames are silently discarded.
        """
        ...

    def close(self, code: int, reason: str = "") -> None:
        """Close with `code` (RFC 6455 §7.1.2) after the frames already queued.

        Never blocks; idempotent (the first code wins).
        """
        ...


class SocketHandler(Protocol):
    """What the socket layer gives the transport for one accepted connection."""

    async def on_text(self, data: str) -> None:
        """One complete text message (already size-checked and UTF-8-validated)."""
        ...

    async def on_binary(self, data: bytes) -> None:
        """One complete binary message (already size-checked)."""
        ...

    async def on_close(self) -> None:
        """The connection is gone. Called exactly once; must not send."""
        ...


@dataclass(frozen=True, slots=True)
class UpgradeRequest:
    """A WebSocket upgrade request, as the endpoint parsed it.

    `path` excludes the query; `query` holds the last value of each parameter; header names are
    lower-case with the last value kept, except `Sec-WebSocket-Protocol`, whose comma-separated
    entries (across all its header lines) are in `subprotocols`, in order. `peer` is the TCP peer
    (host, port); the client IP behind trusted proxies is the security layer's business.
    """

    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    subprotocols: tuple[str, ...]
    peer: tuple[str, int]


@dataclass(frozen=True, slots=True)
class Refuse:
    """Answer the upgrade with an HTTP error and no upgrade. `reason` is for logs and metrics only."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Accept:
    """Upgrade the connection; `handler(transport)` builds its socket handler."""

    handler: Callable[[Transport], SocketHandler]
    subprotocol: str | None = None
    on_closed: Callable[[], None] | None = field(default=None)
    """Called once when the connection is gone (after `on_close`), e.g. to release a per-IP slot."""


Connect = Callable[[UpgradeRequest], Awaitable[Accept | Refuse]]
