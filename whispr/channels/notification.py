"""`notification:<user_id>`: the user's notifications (contract §2-§3).

Join: that user only (`unauthorized`); reply `{}`. S→C `notification {"id","type","title","body",
"data","created_at"}`, broadcast on the topic by the service API when one is created.
C→S `notification_read {"ids": [...]}` → `ok {}` (ids that are unknown, read or someone else's are
ignored); anything else → `error unknown_event`.
"""

from __future__ import annotations

from typing import Any

from whispr.channels.base import (
    Channel,
    ChannelSocket,
    HandleInResult,
    JoinError,
    JoinOk,
    error,
    ok,
    reply_error,
    reply_ok,
)
from whispr.channels.conversation import INVALID_PAYLOAD, SERVICE_UNAVAILABLE, UNKNOWN_EVENT
from whispr.delivery.deps import Deps
from whispr.delivery.store import Notification, StoreUnavailable, iso_ms
from whispr.protocol import Payload

TOPIC_PREFIX = "notification:"
NOTIFICATION_EVENT = "notification"


def notification_payload(notification: Notification) -> dict[str, Any]:
    """The `notification` event's payload (contract §3)."""
    return {
        "id": notification.id,
        "type": notification.type,
        "title": notification.title,
        "body": notification.body,
        "data": dict(notification.data),
        "created_at": iso_ms(notification.created_at),
    }


class NotificationChannel(Channel):
    """One device on its user's notifications. Built per join by `make_router`."""

    __slots__ = ("_deps",)

    def __init__(self, deps: Deps) -> None:
        self._deps = deps

    async def join(self, topic: str, params: Payload, socket: ChannelSocket) -> JoinOk | JoinError:
        """That user only."""
        identity = socket.identity
        if topic != TOPIC_PREFIX + identity.user_id:
            return error({"reason": "unauthorized"})
        refusal = await self._deps.guard(identity).check_join()
        if refusal is not None:
            return error(refusal.response(), refusal.close_code)
        return ok()

    async def handle_in(self, event: str, payload: Payload, socket: ChannelSocket) -> HandleInResult:
        """`notification_read {"ids": [str, ...]}` → `ok {}`."""
        if event != "notification_read":
            return reply_error(UNKNOWN_EVENT)
        ids = payload.get("ids") if isinstance(payload, dict) else None
        if not isinstance(ids, list) or not all(isinstance(id_, str) for id_ in ids):
            return reply_error(INVALID_PAYLOAD)
        try:
            await self._deps.store.mark_notifications_read(socket.identity.user_id, ids)
        except StoreUnavailable:
            return reply_error(SERVICE_UNAVAILABLE)
        return reply_ok()
