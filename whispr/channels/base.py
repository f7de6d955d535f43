"""The channel behaviour (`Phoenix.Channel`): join, handle_in, handle_info, terminate.

Supervision (OTP semantics, no task per channel)
------------------------------------------------
Per-connection memory and CPU budgets are tight (≤ 12 KiB RSS per idle joined connection, ≤ 60 µs
per request/reply), so a channel is **not** its own Trio task, unlike a Phoenix channel process.
Its callbacks run inside the connection's task, one at a time, each behind its own exception
boundary. The socket (`whispr.gateway.socket.PhoenixSocket`) is the channels' `one_for_one`
supervisor with `TEMPORARY` children:

* a callback that raises is logged at ERROR on logger `whispr.channel`, the channel's `terminate`
  runs with the exception as reason, the channel is forgotten, and the client gets
  `[J, J, topic, "phx_error", {"reason": "channel_crash"}]` on that topic only (telemetry
  `CHANNEL_CRASHED`). The socket and its other channels live on. Nothing is restarted server-side:
  the client's rejoin (1 s later by default) creates a fresh channel instance;
* a `join` that raises is answered `error {"reason": "join crashed"}` and nothing is kept;
* returning `stop(...)` ends the channel normally: `phx_close`, and the client does not rejoin;
* `terminate` also runs on leave (`"left"`), duplicate join (`"duplicate_join"`) and transport close
  (`"closed"`). An exception in `terminate` is logged and otherwise ignored.

A new `Channel` instance is made for every join, so per-join state lives on `self`. Callbacks may
await (store, presence); while one runs, the connection handles nothing else, exactly as a Phoenix
socket process waits for `Phoenix.Channel.Server.join/4`.

Callbacks may not push or broadcast before their join has been accepted (Phoenix raises the same
way); work that must follow the join reply, such as pushing `presence_state`, goes through
`socket.send_info(...)` and `handle_info`, Phoenix's `send(self(), :after_join)` idiom.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Protocol

from whispr.protocol import NORMAL, STATUS_ERROR, STATUS_OK, Identity, Payload, Reason, SharedFrames


class ChannelSocket(Protocol):
    """What a channel callback gets as `socket`: one channel instance's view of its connection."""

    @property
    def topic(self) -> str:
        """The joined topic, e.g. "user:42"."""
        ...

    @property
    def join_ref(self) -> str | None:
        """The ref of the join that created this instance (carried by its pushes)."""
        ...

    @property
    def identity(self) -> Identity:
        """Who is connected (set at the upgrade by the `authenticate` hook)."""
        ...

    def push(self, event: str, payload: Payload, *, droppable: bool = False) -> None:
        """Send `event` to this client only, with this instance's join_ref (`Phoenix.Channel.push/3`).

        `droppable` frames (typing, presence) are the first discarded by a full outbox.

        Raises:
            RuntimeError: called before the join was accepted.
        """
        ...

    def push_shared(self, event: str, payload: dict[str, Any], frames: SharedFrames | None) -> None:
        """`push`, with the frame encoded through `frames` (`whispr.protocol.SharedFrames`): at most
        once per (serializer, join_ref) among the calls that share it, which must all push the same
        `event` and `payload` on the same topic (one stream entry handed to several devices), or,
        for a spliced `frames`, payloads that differ only in the spliced key's int value. `frames`
        None: a plain `push`. The owner of `frames` emits MESSAGE_SENT for these writes.

        The bytes written are exactly those `push` writes (this instance's join_ref included).

        Raises:
            RuntimeError: called before the join was accepted.
        """
        ...

    def broadcast(self, event: str, payload: Payload, *, droppable: bool = False) -> None:
        """Send `event` to every subscriber of this topic, this client included (join_ref null).

        Raises:
            RuntimeError: called before the join was accepted.
        """
        ...

    def broadcast_from(self, event: str, payload: Payload, *, droppable: bool = False) -> None:
        """Like `broadcast`, but not to this connection (`Phoenix.Channel.broadcast_from/3`).

        Raises:
            RuntimeError: called before the join was accepted.
        """
        ...

    def send_info(self, message: object) -> None:
        """Deliver `message` to this instance's `handle_info` once the current client message
        (including its reply) has been handled (`send(self(), message)`). Dropped if the
        instance is gone by then."""
        ...


@dataclass(frozen=True, slots=True)
class JoinOk:
    """`{:ok, response, socket}`: the join is accepted; `response` is the reply's response."""

    response: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class JoinError:
    """`{:error, response}`: the join is refused; no channel is kept and no `phx_close` is sent.

    `close_code`, when set, closes the whole socket right after the error reply is written
    (contract.md §6: 1008 when abuse detection blocks the user).
    """

    response: dict[str, Any]
    close_code: int | None = None


@dataclass(frozen=True, slots=True)
class ReplyResult:
    """`{:reply, {status, response}, socket}`: answer the client's push."""

    status: str
    response: Payload


@dataclass(frozen=True, slots=True)
class NoReply:
    """`{:noreply, socket}`: nothing is sent (the client's push times out if it waits)."""


@dataclass(frozen=True, slots=True)
class Stop:
    """`{:stop, reason, [reply,] socket}`: optionally reply, then end the channel with `phx_close`."""

    reason: Reason = NORMAL
    reply: ReplyResult | None = None


NOREPLY = NoReply()
HandleInResult = ReplyResult | NoReply | Stop
HandleInfoResult = NoReply | Stop


def ok(response: dict[str, Any] | None = None) -> JoinOk:
    """Accept a join, replying `response` (`{}` by default)."""
    return JoinOk({} if response is None else response)


def error(response: dict[str, Any], close_code: int | None = None) -> JoinError:
    """Refuse a join, e.g. `error({"reason": "unauthorized"})`; `close_code` closes the socket after the reply."""
    return JoinError(response, close_code)


def reply(status: str, response: Payload | None = None) -> ReplyResult:
    """Reply to the client's push with `status` ("ok", "error", ...) and `response`."""
    return ReplyResult(status, {} if response is None else response)


def reply_ok(response: Payload | None = None) -> ReplyResult:
    """`reply("ok", response)`."""
    return reply(STATUS_OK, response)


def reply_error(response: Payload | None = None) -> ReplyResult:
    """`reply("error", response)`."""
    return reply(STATUS_ERROR, response)


def stop(reason: Reason = NORMAL, reply: ReplyResult | None = None) -> Stop:
    """End the channel normally after sending `reply` (if any): `phx_close`, no client rejoin."""
    return Stop(reason, reply)


class Channel(ABC):
    """Subclass and route a topic pattern to it (see `whispr.channels.router.Router`)."""

    __slots__ = ()

    @abstractmethod
    async def join(self, topic: str, params: Payload, socket: ChannelSocket) -> JoinOk | JoinError:
        """Authorize the join of `topic` with the client's `params`; return `ok(...)` or `error(...)`."""

    @abstractmethod
    async def handle_in(self, event: str, payload: Payload, socket: ChannelSocket) -> HandleInResult:
        """Handle a client event; return `reply(...)`, `NOREPLY` or `stop(...)`."""

    async def handle_info(self, message: object, socket: ChannelSocket) -> HandleInfoResult:
        """Handle a message sent with `send_info` (or `PhoenixSocket.info`); ignored by default."""
        return NOREPLY

    async def terminate(self, reason: Reason, socket: ChannelSocket) -> None:  # noqa: B027 - optional hook
        """The instance is ending with `reason` ("left", "duplicate_join", "closed", a `stop`
        reason or the exception that crashed it). Pushes from here still carry its join_ref."""
