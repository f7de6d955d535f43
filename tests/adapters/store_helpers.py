"""Test shorthand over `MessageStore.append`."""

from __future__ import annotations

from whispr.delivery.store import JSONObject, Message, MessageStore


async def append_message(
    store: MessageStore,
    conversation_id: str,
    sender_id: str,
    sender_device_id: str,
    client_message_id: str,
    type: str,
    content: str,
    metadata: JSONObject,
    reply_to: str | None,
) -> tuple[Message, bool]:
    """`store.append(...)` as (message, duplicate)."""
    appended = await store.append(
        conversation_id, sender_id, sender_device_id, client_message_id, type, content, metadata, reply_to
    )
    return appended.message, appended.duplicate
