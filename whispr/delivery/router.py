"""The message router: validate, store (ack after commit), then fan out (contract §3 `send_message`, §4.1-§4.2).

One path for every sender: the `conversation:` channel's `send_message` and the service API's
`POST /api/v1/conversations/<id>/messages` both call `MessageRouter.send`:

1. the message is appended (group-committed) with `require_member`: the store refuses a sender who
   is not an active member (`NotMember`) in the write's own transaction, so a send costs one store
   call, and no membership cache can go stale. The call returns only once it is committed, so the
   caller's `ok` means durable (§4.1). A repeated `client_message_id` of the same sender returns
   the original with `duplicate=True` (§4.2);
2. a new message is published to `LiveDelivery` synchronously, before the caller can answer, with
   the inbox seq each recipient got in the same transaction (`MessageStore.append`): it reaches
   `new_message` on `conversation:<id>` and on `user:<recipient>`, on every device (§4.4), without
   reading the store back. A duplicate is not published again.

The fan-out goes to the recipients the store numbered at write time, the members of that same
transaction: a member removed before the commit never gets the message, one added before it does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import trio

from whispr.delivery.live import LiveDelivery
from whispr.delivery.store import Message, MessageStore, NotMember

__all__ = ["SYSTEM_SENDER", "Draft", "InvalidPayload", "MessageRouter", "NotMember", "seq_param"]

MESSAGE_TYPE_TEXT = "text"
SYSTEM_SENDER = "system"
"""`sender_id` (and `sender_device_id`) of messages the service API posts as the system."""


class InvalidPayload(ValueError):
    """A `send_message` payload that does not match contract §3 (wire reason `invalid_payload`)."""


@dataclass(frozen=True, slots=True)
class Draft:
    """A validated message to send: contract §3 `send_message` fields."""

    client_message_id: str
    content: str
    type: str
    metadata: Mapping[str, Any]
    reply_to: str | None

    @classmethod
    def parse(cls, payload: object) -> Draft:
        """Validate a `send_message` payload: `client_message_id` non-empty str (required),
        `content` str (required), `type` "text" (default), `metadata` object (default {}),
        `reply_to` message id or null. Other keys are ignored.

        Raises:
            InvalidPayload: naming the first offending field.
        """
        if not isinstance(payload, dict):
            raise InvalidPayload("payload must be an object")
        client_message_id = payload.get("client_message_id")
        if not isinstance(client_message_id, str) or not client_message_id:
            raise InvalidPayload("client_message_id must be a non-empty string")
        content = payload.get("content")
        if not isinstance(content, str):
            raise InvalidPayload("content must be a string")
        type_ = payload.get("type", MESSAGE_TYPE_TEXT)
        if type_ != MESSAGE_TYPE_TEXT:
            raise InvalidPayload('type must be "text"')
        metadata = payload.get("metadata", {})
        if not isinstance(metadata, dict):
            raise InvalidPayload("metadata must be an object")
        reply_to = payload.get("reply_to")
        if reply_to is not None and not isinstance(reply_to, str):
            raise InvalidPayload("reply_to must be a message id or null")
        return cls(client_message_id, content, type_, metadata, reply_to)


class MessageRouter:
    """Stores messages and fans them out; one per node."""

    __slots__ = ("_live", "_store")

    def __init__(self, store: MessageStore, live: LiveDelivery) -> None:
        self._store = store
        self._live = live

    async def send(
        self, conversation_id: str, sender_id: str, sender_device_id: str, draft: Draft, *, as_system: bool = False
    ) -> tuple[Message, bool]:
        """Store `draft` from the sender and publish it; return `(message, duplicate)`.

        Blocks until the message is committed (one store call). `as_system` skips the membership
        check (the service API posting as `SYSTEM_SENDER`).

        Raises:
            NotMember: the sender is not an active member (nothing stored).
            ConversationNotFound: the conversation does not exist.
            StoreUnavailable: nothing is acked; the client retries with the same `client_message_id`.
        """
        accepted_at = trio.current_time()
        appended = await self._store.append(
            conversation_id,
            sender_id,
            sender_device_id,
            draft.client_message_id,
            draft.type,
            draft.content,
            draft.metadata,
            draft.reply_to,
            require_member=not as_system,
        )
        message, duplicate = appended.message, appended.duplicate
        if not duplicate:
            # Synchronous: published before the caller's ack is written (module docstring, step 3).
            self._live.published(message, appended.inbox, accepted_at, trio.current_time())
        return message, duplicate


def seq_param(value: object) -> int:
    """A seq from a client payload: a non-negative integer (not a bool).

    Raises:
        InvalidPayload: anything else.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidPayload("a seq must be a non-negative integer")
    return value
