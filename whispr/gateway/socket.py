"""The Phoenix socket of one connection: serializer + `Session` + channels on a `Transport`.

`PhoenixSocket` is the `SocketHandler` the transport drives (`whispr.gateway.transport`). For each
client frame it decodes with the connection's serializer, feeds the pure `Session` and performs
the actions it returns: it writes frames, runs channel callbacks and keeps the local pub/sub
subscriptions in step with the live channels.

Channels are not tasks: their callbacks run here, in the transport's reader task, one at a time,
each behind its own exception boundary; this object is their one_for_one supervisor with temporary
children (the model is spelled out in `whispr.channels.base`). Consequences worth knowing:

* Frames are written in the order Phoenix documents (protocol.md §4.2, §4.3, §8): the join reply
  before anything the channel pushes after joining, a duplicate join's reply before the old
  join's `phx_close`, a leave's reply before its `phx_close`.
* `send_info` messages run after the client message that caused them is fully handled.

Close codes (RFC 6455 §7.4.1; never 1000, which stops phoenix.js ≤ 1.8.15 from reconnecting):

| code | when |
|---|---|
| 1007 invalid payload | a frame that is not a Phoenix message for this vsn (not JSON, not an array/object of the right shape, refs not strings, payload not an object, bad binary header). Phoenix crashes the socket on such input (`decode!`); the client reconnects |
| 1003 unsupported data | a binary frame on a vsn 1.0.0 socket |
| 1001 going away | `disconnect()`: server-side kick by socket id (Phoenix ≥ 1.8.8, protocol.md §4.9) |

Logging: channel callback crashes at ERROR on `whispr.channel`; malformed-frame closes at INFO on
`whispr.gateway` (once per connection, without the offending bytes).
"""

from __future__ import annotations

import logging
from time import perf_counter
from typing import Any

import trio

from whispr.channels.base import (
    Channel,
    JoinError,
    JoinOk,
    NoReply,
    ReplyResult,
    Stop,
)
from whispr.channels.router import ChannelFactory, Router
from whispr.gateway.frames import binary_frame, text_frame
from whispr.gateway.transport import Transport
from whispr.observability.telemetry import (
    CHANNEL_CRASHED,
    CHANNEL_JOIN_REFUSED,
    CHANNEL_JOINED,
    CHANNEL_LEFT,
    MESSAGE_RECEIVED,
    MESSAGE_SENT,
    REPLY_LATENCY,
    emit,
)
from whispr.protocol import (
    JOIN_CRASHED,
    LEFT,
    STATUS_ERROR,
    STATUS_OK,
    Action,
    HandleIn,
    Identity,
    Join,
    Message,
    Payload,
    ProtocolError,
    Reply,
    Send,
    Serializer,
    Session,
    SharedFrames,
    Terminate,
)
from whispr.protocol.session import DEFAULT_MAX_CHANNELS
from whispr.pubsub.local import PubSub

CLOSE_GOING_AWAY = 1001
TERMINATE_TIMEOUT = 5.0
"""Seconds the channels' `terminate` callbacks get once the connection is gone (OTP's default
worker shutdown, 5000 ms); they run shielded from the cancellation that may be closing it."""

_log = logging.getLogger("whispr.gateway")
_channel_log = logging.getLogger("whispr.channel")
_REPLY = {"kind": "reply"}
_PUSH = {"kind": "push"}


class ChannelHandle:
    """One channel instance's `ChannelSocket`: its topic, join_ref and way to the connection."""

    __slots__ = ("_socket", "channel", "join_ref", "joined", "topic")

    def __init__(self, socket: PhoenixSocket, topic: str, join_ref: str | None, channel: Channel) -> None:
        self._socket = socket
        self.topic = topic
        self.join_ref = join_ref
        self.channel = channel
        # False until the join is accepted; pushing or broadcasting before that is an error.
        self.joined = False

    @property
    def identity(self) -> Identity:
        """Who is connected."""
        return self._socket.identity

    def push(self, event: str, payload: Payload, *, droppable: bool = False) -> None:
        """See `whispr.channels.base.ChannelSocket.push`."""
        self._check_joined()
        self._socket._send(Message(self.topic, event, payload, None, self.join_ref), _PUSH, droppable)

    def push_shared(self, event: str, payload: dict[str, Any], frames: SharedFrames | None) -> None:
        """See `whispr.channels.base.ChannelSocket.push_shared`."""
        self._check_joined()
        socket = self._socket
        if frames is None:
            socket._send(Message(self.topic, event, payload, None, self.join_ref), _PUSH)
        elif not socket._gone:
            # MESSAGE_SENT is emitted by the owner of `frames`, once per encoding.
            frame = frames.frame(socket.serializer, self.topic, event, payload, self.join_ref, text_frame)
            socket.transport.send(frame)

    def broadcast(self, event: str, payload: Payload, *, droppable: bool = False) -> None:
        """See `whispr.channels.base.ChannelSocket.broadcast`."""
        self._check_joined()
        self._socket._pubsub.broadcast(self.topic, event, payload, droppable=droppable)

    def broadcast_from(self, event: str, payload: Payload, *, droppable: bool = False) -> None:
        """See `whispr.channels.base.ChannelSocket.broadcast_from`."""
        self._check_joined()
        self._socket._pubsub.broadcast_from(self._socket, self.topic, event, payload, droppable=droppable)

    def send_info(self, message: object) -> None:
        """See `whispr.channels.base.ChannelSocket.send_info`."""
        self._socket._mailbox.append((self, message))

    def _check_joined(self) -> None:
        if not self.joined:
            # Phoenix.Channel.assert_joined!/1
            raise RuntimeError("push and broadcast are only allowed once the join is accepted; use send_info in join")


class PhoenixSocket:
    """The `SocketHandler` of one Phoenix connection.

    `serializer` and `transport` are public so that `PubSub` can fan broadcasts out to it.
    """

    __slots__ = (
        "_channels",
        "_closing",
        "_gone",
        "_mailbox",
        "_pubsub",
        "_session",
        "identity",
        "serializer",
        "transport",
    )

    def __init__(
        self,
        transport: Transport,
        serializer: Serializer,
        router: Router,
        pubsub: PubSub,
        identity: Identity,
        *,
        max_channels: int = DEFAULT_MAX_CHANNELS,
    ) -> None:
        self.transport = transport
        self.serializer = serializer
        self.identity = identity
        self._pubsub = pubsub
        self._session: Session[ChannelFactory] = Session(router.route, max_channels=max_channels)
        # topic -> live channel instance; the same keys as `_session.joins`, with the same join_refs,
        # between client messages. Each live topic is subscribed in `_pubsub` with `self`.
        self._channels: dict[str, ChannelHandle] = {}
        # (instance, message) for handle_info, run after the current client message.
        self._mailbox: list[tuple[ChannelHandle, object]] = []
        # True once we closed (malformed input, disconnect) or the connection is gone: input is ignored.
        self._closing = False
        # True once `on_close` started: nothing is sent any more (pushes from terminate included).
        self._gone = False

    @property
    def topics(self) -> list[str]:
        """The topics with a live channel, in join order."""
        return list(self._channels)

    async def on_text(self, data: str) -> None:
        """Handle one client text frame. Runs channel callbacks; returns when they are done."""
        await self._receive(data)

    async def on_binary(self, data: bytes) -> None:
        """Handle one client binary frame (V2 binary push; a V1 socket closes with 1003)."""
        await self._receive(data)

    async def on_close(self) -> None:
        """Unsubscribe everything, then run each channel's `terminate("closed")` (§4.7).

        Blocks for at most `TERMINATE_TIMEOUT` seconds, shielded from cancellation. Sends nothing.
        """
        self._closing = self._gone = True
        self._mailbox.clear()
        for topic in self._channels:
            self._pubsub.unsubscribe(topic, self)
        with trio.move_on_after(TERMINATE_TIMEOUT, shield=True):
            await self._run(self._session.close())

    def disconnect(self) -> None:
        """Server-side kick (`"disconnect"` on the socket id): close with 1001 so the client reconnects."""
        self._closing = True
        self.transport.close(CLOSE_GOING_AWAY, "disconnect")

    async def _receive(self, data: str | bytes) -> None:
        if self._closing:
            return
        try:
            message = self.serializer.decode(data)
        except ProtocolError as exc:
            _log.info("closing %s: %s", self.identity.socket_id, exc.reason)
            self._closing = True
            self.transport.close(exc.close_code, exc.reason)
            return
        live = self._channels.get(message.topic)
        emit(
            MESSAGE_RECEIVED,
            {"size": len(data)},  # characters for a text frame: the transport counted its bytes already
            {"channel": _prefix(message.topic) if live is not None else "", "event": message.event},
        )
        await self._run(self._session.receive(message))
        while self._mailbox:
            batch, self._mailbox = self._mailbox, []
            for handle, info in batch:
                if self._channels.get(handle.topic) is handle:
                    await self._handle_info(handle, info)

    async def _run(self, actions: list[Action[ChannelFactory]]) -> None:
        for action in actions:
            if isinstance(action, Send):
                self._send(action.message, _REPLY if isinstance(action.message, Reply) else _PUSH)
            elif isinstance(action, HandleIn):
                await self._handle_in(action)
            elif isinstance(action, Join):
                await self._join(action)
            else:
                await self._terminate(action)

    def _frame(self, message: Message | Reply) -> bytes:
        data = self.serializer.encode(message)
        return binary_frame(data) if isinstance(message.payload, bytes) else text_frame(data)

    def _send(self, message: Message | Reply, kind: dict[str, str], droppable: bool = False) -> None:
        self._write(self._frame(message), kind, droppable)

    def _write(self, frame: bytes, kind: dict[str, str], droppable: bool = False) -> None:
        if self._gone:
            return
        self.transport.send(frame, droppable)
        emit(MESSAGE_SENT, {"size": len(frame), "count": 1}, kind)

    async def _join(self, action: Join[ChannelFactory]) -> None:
        started = perf_counter()
        name = getattr(action.handler, "__name__", type(action.handler).__name__)
        try:
            channel = action.handler()
            name = type(channel).__name__
            handle = ChannelHandle(self, action.topic, action.join_ref, channel)
            result = await channel.join(action.topic, action.params, handle)
            if isinstance(result, JoinOk):
                status = STATUS_OK
            elif isinstance(result, JoinError):
                status = STATUS_ERROR
            else:
                raise TypeError(f"{name}.join must return ok(...) or error(...), got {result!r}")
            # Encoded inside the boundary: an unencodable response is the channel's crash.
            frame = self._frame(Reply(action.topic, status, result.response, action.ref, action.join_ref))
        except Exception:
            _channel_log.exception("%s.join crashed on topic %r", name, action.topic)
            emit(CHANNEL_CRASHED, {}, {"channel": _prefix(action.topic)})
            await self._run(self._session.join_refused(action, {"reason": JOIN_CRASHED}))
            return
        if status == STATUS_OK:
            handle.joined = True
            self._channels[action.topic] = handle
            # Channel.Server.init_join/3 subscribes before the reply is written.
            self._pubsub.subscribe(action.topic, self)
            emit(CHANNEL_JOINED, {"duration": perf_counter() - started}, {"channel": _prefix(action.topic)})
            actions = self._session.joined(action, result.response)
        else:
            reason = str(result.response.get("reason", ""))
            emit(CHANNEL_JOIN_REFUSED, {}, {"channel": _prefix(action.topic), "reason": reason})
            actions = self._session.join_refused(action, result.response)
        # actions[0] is the join reply (Session contract), already encoded above.
        self._write(frame, _REPLY)
        if isinstance(result, JoinError) and result.close_code is not None:
            self.transport.close(result.close_code, str(result.response.get("reason", "")))
            return
        await self._run(actions[1:])

    async def _handle_in(self, action: HandleIn) -> None:
        handle = self._channels[action.topic]
        started = perf_counter()
        try:
            result = await handle.channel.handle_in(action.event, action.payload, handle)
            if isinstance(result, ReplyResult):
                answer: ReplyResult | None = result
            elif isinstance(result, Stop):
                answer = result.reply
            elif isinstance(result, NoReply):
                answer = None
            else:
                raise TypeError(f"handle_in must return reply(...), NOREPLY or stop(...), got {result!r}")
            if answer is not None:
                reply = Reply(action.topic, answer.status, answer.response, action.ref, handle.join_ref)
                self._write(self._frame(reply), _REPLY)
        except Exception as exc:
            await self._crash(handle, exc, "handle_in")
            return
        if answer is not None:
            emit(
                REPLY_LATENCY,
                {"duration": perf_counter() - started},
                {"channel": _prefix(handle.topic), "event": action.event, "status": answer.status},
            )
        if isinstance(result, Stop):
            await self._run(self._session.stopped(handle.topic, handle.join_ref, result.reason))

    async def _handle_info(self, handle: ChannelHandle, info: object) -> None:
        try:
            result = await handle.channel.handle_info(info, handle)
            if not isinstance(result, NoReply) and not (isinstance(result, Stop) and result.reply is None):
                raise TypeError(f"handle_info must return NOREPLY or stop(reason), got {result!r}")
        except Exception as exc:
            await self._crash(handle, exc, "handle_info")
            return
        if isinstance(result, Stop):
            await self._run(self._session.stopped(handle.topic, handle.join_ref, result.reason))

    async def _crash(self, handle: ChannelHandle, exc: Exception, callback: str) -> None:
        name = type(handle.channel).__name__
        _channel_log.error("%s.%s crashed on topic %r", name, callback, handle.topic, exc_info=exc)
        emit(CHANNEL_CRASHED, {}, {"channel": _prefix(handle.topic)})
        await self._run(self._session.crashed(handle.topic, handle.join_ref, exc))

    async def _terminate(self, action: Terminate) -> None:
        handle = self._channels.pop(action.topic)
        self._pubsub.unsubscribe(action.topic, self)
        name = type(handle.channel).__name__
        if action.reason == LEFT:
            emit(CHANNEL_LEFT, {}, {"channel": _prefix(action.topic)})
        try:
            await handle.channel.terminate(action.reason, handle)
        except Exception:
            _channel_log.exception("%s.terminate raised on topic %r", name, action.topic)


def _prefix(topic: str) -> str:
    """The telemetry `channel` of a topic: its prefix ("user:42" -> "user"), bounded, never an id."""
    return topic.partition(":")[0]
