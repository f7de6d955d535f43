"""The per-socket Phoenix state machine (`Phoenix.Socket.handle_in/4` and its channel bookkeeping).

Rules
-----
A `Session` is pure: it never performs I/O, never awaits and never runs channel code. The caller
feeds it decoded client messages and channel outcomes; it answers with a list of *actions* to
perform in order (the websockets sans-I/O shape: `receive` → actions):

* `Send(message)`: encode and write this message or reply.
* `Join(...)`: run the channel's `join` callback, then report the outcome with `joined` or
  `join_refused` (a join that raises is refused with `{"reason": "join crashed"}`).
* `HandleIn(...)`: run the live channel's `handle_in`; a channel that returns stop is reported
  with `stopped`, one that raises with `crashed`.
* `Terminate(...)`: run the channel's `terminate(reason)` and forget the channel.

Theory of operation
-------------------
Phoenix keeps `topic → {channel pid, join_ref}` per socket; so does `_joins` (without the pid: the
caller owns channel objects). The `join_ref` of a channel is the `ref` of the join that created it
(phoenix.js sends `join_ref == ref` on a join; the server echoes whatever it got, as Phoenix does).
Every outcome below cites the clause of `Phoenix.Socket.handle_in/4` (v1.8.12) it implements:

| client sends | state | actions |
|---|---|---|
| heartbeat on "phoenix" | any | reply ok `{}`, join_ref null |
| `phx_join` | topic not joined | unmatched topic / too many channels / `Join` |
| `phx_join` | topic joined (duplicate) | `Terminate(old)`, then as above; the old join's `phx_close` follows the new reply |
| `phx_leave` | joined, join_ref matches or null | reply ok, `phx_close`, `Terminate(LEFT)` |
| `phx_leave` | not joined | reply ok `{}` echoing the request's join_ref |
| any other | joined, join_ref matches or null | `HandleIn` |
| any but join | joined, stale join_ref | nothing (silently dropped) |
| any other | not joined | reply error `{"reason": "unmatched topic"}`, join_ref null |

Invariants
----------
* `_joins` holds at most `max_channels` topics, never `"phoenix"`.
* Each channel instance is created by exactly one `Join` action reported with `joined`, and
  gets exactly one `Terminate` action (leave, duplicate join, stop, crash or `close`).
* `phx_close` and `phx_error` carry `ref == join_ref` of the instance they end; no action ever
  carries another instance's join_ref.

WARNING
-------
The caller must finish a `Join` (call `joined` or `join_refused`) before feeding the next message:
the socket processes one client message at a time, as the Phoenix socket process does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Generic, TypeVar

from .message import (
    HEARTBEAT,
    PHOENIX_TOPIC,
    PHX_CLOSE,
    PHX_ERROR,
    PHX_JOIN,
    PHX_LEAVE,
    STATUS_ERROR,
    STATUS_OK,
    Message,
    Payload,
    Reply,
)

H = TypeVar("H")

DEFAULT_MAX_CHANNELS = 100
"""`max_channels_per_transport`'s default (protocol.md §1.4)."""

# Terminate reasons: Phoenix's `{:shutdown, reason}` atoms. A crash passes the exception itself.
LEFT = "left"
DUPLICATE_JOIN = "duplicate_join"
CLOSED = "closed"
NORMAL = "normal"
Reason = str | Exception

UNMATCHED_TOPIC = "unmatched topic"
TOO_MANY_CHANNELS = "too many channels joined"
JOIN_CRASHED = "join crashed"
CHANNEL_CRASH = "channel_crash"

_ABSENT = object()


@dataclass(frozen=True, slots=True)
class Send:
    """Encode `message` with the socket's serializer and write it."""

    message: Message | Reply


@dataclass(frozen=True, slots=True)
class Join(Generic[H]):
    """Run `handler`'s join for `topic`, then call `Session.joined` or `Session.join_refused`.

    `close_after` is the `phx_close` of the instance this join replaces (duplicate join): it is
    sent after this join's reply, whatever the outcome.
    """

    topic: str
    params: Payload
    ref: str | None
    join_ref: str | None
    handler: H
    close_after: Message | None


@dataclass(frozen=True, slots=True)
class HandleIn:
    """Deliver a client event to the live channel of `topic`; replies use `ref`."""

    topic: str
    event: str
    payload: Payload
    ref: str | None


@dataclass(frozen=True, slots=True)
class Terminate:
    """Run the `terminate(reason)` of the channel instance `join_ref` of `topic`, then forget it."""

    topic: str
    join_ref: str | None
    reason: Reason


Action = Send | Join[H] | HandleIn | Terminate


def _close(topic: str, join_ref: str | None) -> Message:
    # `encode_close/3`: [J, J, topic, "phx_close", {}]
    return Message(topic, PHX_CLOSE, {}, join_ref, join_ref)


class Session(Generic[H]):
    """The channels of one socket, keyed by topic. Pure; see the module docstring."""

    __slots__ = ("_joins", "_max_channels", "_route")

    def __init__(self, route: Callable[[str], H | None], *, max_channels: int = DEFAULT_MAX_CHANNELS) -> None:
        """Args:
        route: the channel handler for a topic, or None when no route matches. Pure lookup.
        max_channels: joins beyond this many live channels are refused.
        """
        self._route = route
        self._max_channels = max_channels
        # topic -> join_ref of the live channel instance; never "phoenix"; len <= max_channels.
        self._joins: dict[str, str | None] = {}

    @property
    def joins(self) -> Mapping[str, str | None]:
        """Read-only view: topic → join_ref of each live channel."""
        return MappingProxyType(self._joins)

    def receive(self, message: Message) -> list[Action[H]]:
        """The actions that answer one decoded client message."""
        topic = message.topic
        event = message.event
        if event == HEARTBEAT and topic == PHOENIX_TOPIC:
            # heartbeat clause: answered by the socket itself, join_ref null (protocol.md §4.1).
            return [Send(Reply(PHOENIX_TOPIC, STATUS_OK, {}, message.ref, None))]
        if event == PHX_JOIN:
            return self._join(message)
        current = self._joins.get(topic, _ABSENT)
        if current is _ABSENT:
            if event == PHX_LEAVE:
                # `handle_in(nil, %{event: "phx_leave"})`: ok, echoing the request's join_ref.
                return [Send(Reply(topic, STATUS_OK, {}, message.ref, message.join_ref))]
            return [Send(_unmatched(message))]
        join_ref: str | None = current  # type: ignore[assignment]
        if message.join_ref is not None and message.join_ref != join_ref:
            # Stale join_ref: dropped without a reply; null is accepted (Phoenix 1.8.12, §3).
            return []
        if event == PHX_LEAVE:
            # Channel.Server: reply ok, stop {:shutdown, :left}; then the socket's phx_close (§4.3).
            del self._joins[topic]
            return [
                Send(Reply(topic, STATUS_OK, {}, message.ref, join_ref)),
                Send(_close(topic, join_ref)),
                Terminate(topic, join_ref, LEFT),
            ]
        return [HandleIn(topic, event, message.payload, message.ref)]

    def joined(self, join: Join[H], response: Payload) -> list[Action[H]]:
        """The channel accepted `join`: it becomes the topic's live instance.

        Raises:
            RuntimeError: the topic already has a live channel (the caller skipped a message).
        """
        if join.topic in self._joins:
            raise RuntimeError(f"topic {join.topic!r} already has a live channel")
        self._joins[join.topic] = join.join_ref
        return self._join_reply(join, STATUS_OK, response)

    def join_refused(self, join: Join[H], response: Payload) -> list[Action[H]]:
        """The channel refused `join` (or raised): reply error; no channel, no `phx_close`."""
        return self._join_reply(join, STATUS_ERROR, response)

    def stopped(self, topic: str, join_ref: str | None, reason: Reason = NORMAL) -> list[Action[H]]:
        """The channel instance stopped on its own: `phx_close` (no rejoin), then `Terminate`.

        Nothing happens if that instance is no longer live (§4.5: `{:socket_close, pid, reason}`).
        """
        if self._joins.get(topic, _ABSENT) != join_ref:
            return []
        del self._joins[topic]
        return [Send(_close(topic, join_ref)), Terminate(topic, join_ref, reason)]

    def crashed(self, topic: str, join_ref: str | None, reason: Exception) -> list[Action[H]]:
        """The channel instance raised: `Terminate(reason)`, then `phx_error` so the client rejoins.

        Phoenix runs `terminate/2` as the channel process exits, and the socket's monitor then
        sends `[J, J, topic, "phx_error", {"reason": "channel_crash"}]` (§4.6, ≥ 1.8.10).
        Nothing happens if that instance is no longer live.
        """
        if self._joins.get(topic, _ABSENT) != join_ref:
            return []
        del self._joins[topic]
        error = Message(topic, PHX_ERROR, {"reason": CHANNEL_CRASH}, join_ref, join_ref)
        return [Terminate(topic, join_ref, reason), Send(error)]

    def close(self) -> list[Action[H]]:
        """The transport is gone: terminate every channel with `CLOSED`; nothing is sent (§4.7)."""
        actions: list[Action[H]] = [Terminate(topic, join_ref, CLOSED) for topic, join_ref in self._joins.items()]
        self._joins.clear()
        return actions

    def _join(self, message: Message) -> list[Action[H]]:
        topic = message.topic
        actions: list[Action[H]] = []
        close_after = None
        old = self._joins.pop(topic, _ABSENT)
        if old is not _ABSENT:
            # Duplicate clause: the old instance is shut down with {:shutdown, :duplicate_join}
            # and its phx_close goes through the socket's mailbox, so on the wire it follows the
            # new join's reply (protocol.md §4.2).
            old_join_ref: str | None = old  # type: ignore[assignment]
            actions.append(Terminate(topic, old_join_ref, DUPLICATE_JOIN))
            close_after = _close(topic, old_join_ref)
        handler = None if topic == PHOENIX_TOPIC else self._route(topic)
        if handler is None:
            actions.append(Send(_unmatched(message)))
        elif len(self._joins) >= self._max_channels:
            reply = Reply(topic, STATUS_ERROR, {"reason": TOO_MANY_CHANNELS}, message.ref, message.join_ref)
            actions.append(Send(reply))
        else:
            actions.append(Join(topic, message.payload, message.ref, message.join_ref, handler, close_after))
            return actions
        if close_after is not None:
            actions.append(Send(close_after))
        return actions

    def _join_reply(self, join: Join[H], status: str, response: Payload) -> list[Action[H]]:
        actions: list[Action[H]] = [Send(Reply(join.topic, status, response, join.ref, join.join_ref))]
        if join.close_after is not None:
            actions.append(Send(join.close_after))
        return actions


def _unmatched(message: Message) -> Reply:
    # `encode_ignore/2`: error "unmatched topic" with join_ref null (protocol.md §4.4).
    return Reply(message.topic, STATUS_ERROR, {"reason": UNMATCHED_TOPIC}, message.ref, None)
