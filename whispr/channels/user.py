"""`user:<user_id>`: every message of every conversation of the user, to each of its devices (contract §2-§4).

Join (§2): that user only (`unauthorized`). The device's position is the inbox seq in params
`{"last_seq": n}`, or else its stored delivery cursor (the last inbox seq it acked). The reply is
`{"user_id", "device_id", "server_time", "recovered"}` (`recovered` false: entries after the position
are past retention and were skipped, §4.3); then come `presence_state` (the user's own devices) and
every inbox entry after the position (`new_message`, oldest first, in pages), then the live ones:
no gap, no disorder, no duplicate (`whispr.delivery.live` explains how).

`new_message` here carries the Message plus `inbox_seq`, the seq that `ack`, `sync` and `last_seq`
count in (the Message's own `seq` is per conversation).

Events (§3):
| event | reply |
|---|---|
| `heartbeat` | `ok {"status": "alive"}` |
| `ping` | `ok {"pong": true, "server_time": ms}` |
| `sync {"since_seq": n or null, "limit": n}` | `ok {"messages", "last_seq", "has_more"}`: inbox entries after `since_seq` (null: the device's cursor), at most `limit` (default and cap 500); `last_seq` is where the next `sync` starts |
| `ack {"seq": n}` | `ok {}`: moves the device's cursor (never back, never past the inbox head) |
| anything else | `error unknown_event` |

Errors: `invalid_payload`, `service_unavailable` (the store failed; channel kept).

`make_router` is the app's topic table (§2): `user:*`, `conversation:*`, `notification:*`.
"""

from __future__ import annotations

from functools import partial

from whispr.channels.base import (
    ChannelSocket,
    HandleInResult,
    JoinError,
    JoinOk,
    error,
    ok,
    reply_error,
    reply_ok,
)
from whispr.channels.conversation import (
    INVALID_PAYLOAD,
    SERVICE_UNAVAILABLE,
    UNKNOWN_EVENT,
    ConversationChannel,
    FeedChannel,
    last_seq_param,
)
from whispr.channels.notification import NotificationChannel
from whispr.channels.router import Router
from whispr.delivery.deps import Deps
from whispr.delivery.live import inbox_page, inbox_reader, user_topic
from whispr.delivery.router import InvalidPayload, seq_param
from whispr.delivery.store import StoreUnavailable
from whispr.protocol import Payload

SYNC_LIMIT = 500
"""Most entries one `sync` returns (contract §3), also its default."""


def make_router(deps: Deps) -> Router:
    """The app's channels: `user:*`, `conversation:*`, `notification:*`; other topics are unmatched."""
    return Router(
        [
            ("user:*", partial(UserChannel, deps)),
            ("conversation:*", partial(ConversationChannel, deps)),
            ("notification:*", partial(NotificationChannel, deps)),
        ]
    )


class UserChannel(FeedChannel):
    """One device on its user's inbox. Built per join by `make_router`."""

    __slots__ = ()

    async def join(self, topic: str, params: Payload, socket: ChannelSocket) -> JoinOk | JoinError:
        """That user only; reads the first replay page (see the module docstring)."""
        deps = self._deps
        identity = socket.identity
        if topic != user_topic(identity.user_id):
            return error({"reason": "unauthorized"})
        refusal = await deps.guard(identity).check_join()
        if refusal is not None:
            return error(refusal.response(), refusal.close_code)
        try:
            position = last_seq_param(params)
        except InvalidPayload:
            return error(INVALID_PAYLOAD)
        read = inbox_reader(deps.store, identity.user_id)
        try:
            if position is None:  # the stored cursor and the first page: one store round trip
                position, page = await deps.store.inbox_from_cursor(
                    identity.user_id, identity.device_id, deps.live.page_size
                )
                first = inbox_page(page)
            else:
                first = await read(position, deps.live.page_size)
        except StoreUnavailable:
            return error(SERVICE_UNAVAILABLE)
        self._start(socket, topic, position, read, first)
        return ok(
            {
                "user_id": identity.user_id,
                "device_id": identity.device_id,
                "server_time": deps.wall_ms(),
                "recovered": first.recovered,
            }
        )

    async def handle_in(self, event: str, payload: Payload, socket: ChannelSocket) -> HandleInResult:
        """See the module docstring's table."""
        if event == "heartbeat":
            return reply_ok({"status": "alive"})
        if event == "ping":
            return reply_ok({"pong": True, "server_time": self._deps.wall_ms()})
        if not isinstance(payload, dict):
            return reply_error(INVALID_PAYLOAD if event in ("sync", "ack") else UNKNOWN_EVENT)
        identity = socket.identity
        store = self._deps.store
        try:
            if event == "sync":
                since = payload.get("since_seq")
                limit = payload.get("limit", SYNC_LIMIT)
                if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
                    raise InvalidPayload("limit must be a positive integer")
                after = await store.cursor(identity.user_id, identity.device_id) if since is None else seq_param(since)
                page = await self._feed.read(after, min(limit, SYNC_LIMIT))
                # Empty: everything up to the head was read or is past retention.
                last_seq = page.entries[-1][0] if page.entries else page.head
                messages = [entry for _, entry in page.entries]
                return reply_ok({"messages": messages, "last_seq": last_seq, "has_more": page.has_more})
            if event == "ack":
                await store.advance_cursor(identity.user_id, identity.device_id, seq_param(payload.get("seq")))
                return reply_ok()
        except InvalidPayload:
            return reply_error(INVALID_PAYLOAD)
        except StoreUnavailable:
            return reply_error(SERVICE_UNAVAILABLE)
        return reply_error(UNKNOWN_EVENT)
