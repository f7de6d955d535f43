"""`conversation:<id>`: send, typing, read receipts, and the conversation's messages live (contract §2-§4).

Join (§2): active members only (`not_member`); params `{"last_seq": n}` (conversation seq). The
reply is `{"conversation_id", "last_seq": the conversation's head, "recovered"}`; then come
`presence_state` and, with `last_seq`, every message after it (`new_message`, oldest first, paged),
then the live ones, without gap, disorder or duplicate (`whispr.delivery.live`). Without
`last_seq` the device gets what is sent from its join on (its backlog is on `user:`), and
`recovered` is true (nothing asked for was skipped).

Events (§3):
| event | reply | effect |
|---|---|---|
| `send_message` | `ok {"message_id","seq","duplicate"}` after the commit | `new_message` on this topic and on `user:<member>` (`whispr.delivery.router`) |
| `typing_start` / `typing_stop` | none | broadcast_from `user_typing {"user_id","typing"}`, droppable, coalesced (`whispr.delivery.typing`) |
| `message_read {"up_to_seq"}` | `ok {}` | broadcast_from `message_status {"user_id","device_id","status":"read","up_to_seq","at"}` |
| anything else | `error unknown_event` | |

Errors: `invalid_payload`; the guard's `message_too_large`, `rate_limit_exceeded` (+ `retry_after_ms`)
and `blocked` (the socket is then closed with the refusal's code, after the reply);
`service_unavailable` when the store fails (socket and channel kept: the client retries with the
same `client_message_id`); `not_member` when membership was revoked meanwhile, followed by
`phx_close` (the channel stops; the client does not rejoin).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from whispr.channels.base import (
    NOREPLY,
    Channel,
    ChannelSocket,
    HandleInfoResult,
    HandleInResult,
    JoinError,
    JoinOk,
    error,
    ok,
    reply_error,
    reply_ok,
    stop,
)
from whispr.delivery.deps import Deps
from whispr.delivery.live import Feed, Gate, Page, Reader, conversation_reader
from whispr.delivery.router import Draft, InvalidPayload, NotMember, seq_param
from whispr.delivery.store import ConversationNotFound, StoreUnavailable, iso_ms
from whispr.presence import PRESENCE_STATE_EVENT, AlreadyTracked
from whispr.protocol import Payload, Reason, SharedFrames
from whispr.security.gatekeeper import Refusal

TOPIC_PREFIX = "conversation:"
NEW_MESSAGE = "new_message"
NOT_MEMBER = "not_member"
INVALID_PAYLOAD = {"reason": "invalid_payload"}
SERVICE_UNAVAILABLE = {"reason": "service_unavailable"}
UNKNOWN_EVENT = {"reason": "unknown_event"}
_AFTER_JOIN = "after_join"


@dataclass(frozen=True, slots=True)
class CloseSocket:
    """`handle_info` message: close the socket with the refusal's code (after its reply is written)."""

    refusal: Refusal


def presence_meta(socket: ChannelSocket, deps: Deps) -> dict[str, Any]:
    """The device's presence meta (contract §3): `{device_id, device_type, online_at}`."""
    identity = socket.identity
    return {"device_id": identity.device_id, "device_type": identity.device_type, "online_at": deps.wall_ms()}


def track_presence(socket: ChannelSocket, deps: Deps) -> None:
    """Track the device on the socket's topic, key = user id, tracking id = socket id.

    A device whose previous socket has not closed yet (the server still waits for it to answer its
    1001, e.g. a half-open connection after a network switch) already tracks the topic: that meta
    stays, and is handed over to this socket: the old socket's terminate must not remove it, or
    the device would leave a grace period later while connected.
    """
    identity = socket.identity
    try:
        deps.presence.track(socket.topic, identity.user_id, identity.socket_id, presence_meta(socket, deps))
    except AlreadyTracked:
        handover = (socket.topic, identity.socket_id)
        deps.presence_handovers[handover] = deps.presence_handovers.get(handover, 0) + 1


def untrack_presence(socket: ChannelSocket, deps: Deps) -> None:
    """Leave the socket's topic (after the tracker's grace period), unless the device's meta was
    handed over to a newer socket of it (`track_presence`)."""
    handover = (socket.topic, socket.identity.socket_id)
    pending = deps.presence_handovers.get(handover, 0)
    if pending:
        if pending == 1:
            del deps.presence_handovers[handover]
        else:
            deps.presence_handovers[handover] = pending - 1
        return
    deps.presence.untrack(socket.topic, socket.identity.user_id, socket.identity.socket_id)


def last_seq_param(params: Payload) -> int | None:
    """The join's `last_seq` (a seq, or None to use the stored position). Raises `InvalidPayload`."""
    last_seq = params.get("last_seq") if isinstance(params, dict) else None
    return None if last_seq is None else seq_param(last_seq)


class FeedChannel(Channel):
    """What the `user:` and `conversation:` channels share: one device handed a live feed through
    its own replay gate (`whispr.delivery.live`), and tracked in the topic's presence.

    A subclass's accepted join calls `_start`; after the join reply the channel pushes
    `presence_state` (protocol.md §5.2), then replays the first page and switches to live. A store
    failure during that replay raises: the client gets `phx_error` and rejoins from its position.
    `terminate` stops live delivery and presence for the device.
    """

    __slots__ = ("_deps", "_feed", "_first", "_gate", "_socket")

    def __init__(self, deps: Deps) -> None:
        self._deps = deps
        # Set by an accepted join (`_start`).
        self._socket: ChannelSocket
        self._gate: Gate
        self._feed: Feed
        self._first: Page | None = None  # the first replay page, until the after-join step sends it

    def _start(self, socket: ChannelSocket, topic: str, position: int, read: Reader, first: Page) -> None:
        """The join is accepted: gate the feed of `topic` from `position` (its first page read),
        track the device's presence, and queue the after-join step."""
        self._socket = socket
        self._gate = Gate(socket.identity.user_id, position, self._deliver)
        self._feed = self._deps.live.attach(topic, self._gate, read)
        self._first = first
        track_presence(socket, self._deps)
        socket.send_info(_AFTER_JOIN)

    def _deliver(self, seq: int, payload: dict[str, Any], frames: SharedFrames | None) -> None:
        """The gate's `Deliver` (a method, not a closure per join: memory per idle socket)."""
        self._socket.push_shared(NEW_MESSAGE, payload, frames)

    async def handle_info(self, message: object, socket: ChannelSocket) -> HandleInfoResult:
        """The after-join step: `presence_state`, then the replay and the switch to live."""
        if message == _AFTER_JOIN and self._first is not None:
            first, self._first = self._first, None
            socket.push(PRESENCE_STATE_EVENT, self._deps.presence.list(socket.topic))
            await self._deps.live.catch_up(self._feed, self._gate, first)
        return NOREPLY

    async def terminate(self, reason: Reason, socket: ChannelSocket) -> None:
        """Stop live delivery and presence for this device."""
        self._deps.live.detach(socket.topic, self._gate)
        untrack_presence(socket, self._deps)


def refuse(refusal: Refusal, socket: ChannelSocket) -> HandleInResult:
    """Answer a guard refusal; a refusal with a close code closes the socket after the reply."""
    if refusal.close_code is not None:
        socket.send_info(CloseSocket(refusal))
    return reply_error(refusal.response())


class ConversationChannel(FeedChannel):
    """One device on one conversation. Built per join by `make_router`."""

    __slots__ = ("_guard",)  # set by an accepted join

    async def join(self, topic: str, params: Payload, socket: ChannelSocket) -> JoinOk | JoinError:
        """Members only; reads the first replay page (see the module docstring)."""
        deps = self._deps
        identity = socket.identity
        conversation_id = topic.removeprefix(TOPIC_PREFIX)
        guard = deps.guard(identity)
        refusal = await guard.check_join()
        if refusal is not None:
            return error(refusal.response(), refusal.close_code)
        try:
            position = last_seq_param(params)
        except InvalidPayload:
            return error(INVALID_PAYLOAD)
        read = conversation_reader(deps.store, conversation_id)
        try:
            if not await deps.store.is_member(conversation_id, identity.user_id):
                return error({"reason": NOT_MEMBER})
            if position is None:
                head = (await read(0, 1)).head
                position, first = head, Page([], head, False, True)
            else:
                first = await read(position, deps.live.page_size)
        except ConversationNotFound:
            return error({"reason": NOT_MEMBER})
        except StoreUnavailable:
            return error(SERVICE_UNAVAILABLE)
        self._guard = guard
        self._start(socket, topic, position, read, first)
        return ok({"conversation_id": conversation_id, "last_seq": first.head, "recovered": first.recovered})

    async def handle_in(self, event: str, payload: Payload, socket: ChannelSocket) -> HandleInResult:
        """See the module docstring's table."""
        if self._gate.revoked:
            return stop(NOT_MEMBER, reply_error({"reason": NOT_MEMBER}))
        if event == "send_message":
            return await self._send_message(payload, socket)
        if event in ("typing_start", "typing_stop"):
            typing = event == "typing_start"
            user_id = socket.identity.user_id
            if self._deps.typing.admit(socket.topic, user_id, typing):
                socket.broadcast_from("user_typing", {"user_id": user_id, "typing": typing}, droppable=True)
            return NOREPLY
        if event == "message_read":
            try:
                up_to_seq = seq_param(payload.get("up_to_seq") if isinstance(payload, dict) else None)
            except InvalidPayload:
                return reply_error(INVALID_PAYLOAD)
            identity = socket.identity
            status = {
                "user_id": identity.user_id,
                "device_id": identity.device_id,
                "status": "read",
                "up_to_seq": up_to_seq,
                "at": iso_ms(self._deps.wall_ms()),
            }
            socket.broadcast_from("message_status", status)
            return reply_ok()
        return reply_error(UNKNOWN_EVENT)

    async def _send_message(self, payload: Payload, socket: ChannelSocket) -> HandleInResult:
        try:
            draft = Draft.parse(payload)
        except InvalidPayload:
            return reply_error(INVALID_PAYLOAD)
        refusal = await self._guard.check_message(draft.content)
        if refusal is not None:
            return refuse(refusal, socket)
        identity = socket.identity
        try:
            message, duplicate = await self._deps.router.send(
                socket.topic.removeprefix(TOPIC_PREFIX), identity.user_id, identity.device_id, draft
            )
        except (NotMember, ConversationNotFound):
            return stop(NOT_MEMBER, reply_error({"reason": NOT_MEMBER}))
        except StoreUnavailable:
            return reply_error(SERVICE_UNAVAILABLE)
        return reply_ok({"message_id": message.id, "seq": message.seq, "duplicate": duplicate})

    async def handle_info(self, message: object, socket: ChannelSocket) -> HandleInfoResult:
        """`FeedChannel`'s after-join step, and `CloseSocket` (a refusal that closes the socket)."""
        if isinstance(message, CloseSocket):
            refusal = message.refusal
            assert refusal.close_code is not None  # only sent for those
            self._deps.connections.close(socket.identity, refusal.close_code, refusal.reason)
            return NOREPLY
        return await super().handle_info(message, socket)
