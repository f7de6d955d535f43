"""The Phoenix wire structs (`Phoenix.Socket.Message`, `Reply`, `Broadcast`) and reserved names.

A payload is a JSON object (`dict`) or, on vsn 2.0.0 only, raw `bytes` carried by a binary frame
(Phoenix's `{:binary, data}`; protocol.md §2.3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Payload = dict[str, Any] | bytes
"""A JSON object, or the raw bytes of a V2 binary frame."""

PHOENIX_TOPIC = "phoenix"
"""The socket's own topic: heartbeats go there, and it is never joinable as a channel."""
HEARTBEAT = "heartbeat"
PHX_JOIN = "phx_join"
PHX_LEAVE = "phx_leave"
PHX_REPLY = "phx_reply"
PHX_CLOSE = "phx_close"
PHX_ERROR = "phx_error"

STATUS_OK = "ok"
STATUS_ERROR = "error"


@dataclass(frozen=True, slots=True)
class Message:
    """A message from the client, or a push to one client (`Phoenix.Socket.Message`).

    `ref` and `join_ref` are opaque strings echoed byte for byte, or None (JSON null).
    A push carries the channel's `join_ref` and `ref` None; `phx_close`/`phx_error` carry
    `ref == join_ref` (protocol.md §2.2).
    """

    topic: str
    event: str
    payload: Payload
    ref: str | None = None
    join_ref: str | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    """A `phx_reply` to the request `ref` (`Phoenix.Socket.Reply`).

    On the wire the payload becomes `{"status": status, "response": payload}`.
    """

    topic: str
    status: str
    payload: Payload
    ref: str | None
    join_ref: str | None


@dataclass(frozen=True, slots=True)
class Broadcast:
    """A message to every subscriber of `topic` (`Phoenix.Socket.Broadcast`): no refs on the wire."""

    topic: str
    event: str
    payload: Payload
