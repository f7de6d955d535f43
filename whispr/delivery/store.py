"""The message store: the interface the channels and the router call, its models and its errors.

The store is the source of truth for messages, membership and delivery cursors (architecture.md
"Storage and distribution"). Two backends implement `MessageStore`: SQLite (embedded default,
`whispr.adapters.sqlite_store`) and PostgreSQL (`whispr.adapters.postgres_store`), both checked by
one behavioural suite (tests/adapters/test_store_behaviour.py). This module imports no I/O library.

Rules (contract.md §3-§4):
- **Single write point.** `append` assigns the per-conversation `seq` inside the transaction
  that stores the message, under the conversation's lock: `seq` is gap-free and strictly increasing
  per conversation, and a `seq` is visible to readers only once every smaller one is.
- **Ack means durable.** `append` returns only after the transaction has committed.
- **Idempotent sends.** (conversation_id, sender_id, client_message_id) is unique: a repeat returns
  the stored message with `duplicate=True` and changes nothing, whatever its other fields say.
- **Group commit.** Concurrent `append` calls are committed together in one transaction;
  each caller still gets its own result or its own error.

Theory of operation — the user inbox (the `user:` topic's `seq`):
`user:<user_id>` carries messages of many conversations, so a per-conversation `seq` cannot be its
cursor. Each user therefore has an **inbox**: when a message is stored, every *active* member of its
conversation (the sender included, for the sender's other devices) gets an inbox entry with the next
**inbox seq** of that user, assigned in the same transaction under the same rules (gap-free, strictly
increasing per user, committed in order). Per-conversation order is preserved inside an inbox.
- `sync {"since_seq"}`, `ack {"seq"}` and the `user:` join's `last_seq` are inbox seqs; the channel
  layer adds the entry's inbox seq to the `new_message` pushes of the `user:` topic so that a client
  can ack what it received live (contract.md §3 names the field only as `seq`).
- Each device has one delivery cursor per user: the inbox seq it has acked. `advance_cursor` never
  moves it back, and never past the inbox head (a client cannot ack what does not exist yet).
- Membership is read at write time: a member added later does not receive older messages in the
  inbox (the `conversation:` topic's history has them), a removed member receives no new ones.
- Fan-out on write costs one inbox row per active member per message; fine for chats and groups,
  to be revisited for very large rooms.

Retention (contract.md §4.3, §5): entries and messages older than `retention` seconds (24 h) are not
replayed. Replays start at the later of the requested position and the oldest retained entry, so a
page never has a hole; `recovered` is False when that skipped something (or when the requested
position is ahead of the head, which the store never issued). History stays in `messages`;
`purge_expired` deletes expired inbox entries only.

Times are integers: milliseconds since the Unix epoch, UTC, taken from the store's injectable clock.

Errors: every method may raise `StoreUnavailable` (the backend is down, slow past its per-call
timeout, or the store is closed), raised `from` the backend's own exception.
"""

from __future__ import annotations

import datetime as _dt
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

JSONObject = Mapping[str, object]

DEFAULT_RETENTION = 24 * 3600.0  # seconds a message stays replayable (contract.md §5 "offline retention")


class StoreError(Exception):
    """Base class of the store's errors."""


class StoreUnavailable(StoreError):
    """The backend cannot answer now (down, timed out, closed). Retry later; nothing was acked."""


class ConversationNotFound(StoreError):
    """The conversation id does not exist."""


class NotMember(StoreError):
    """The sender is not an active member of the conversation (wire reason `not_member`)."""


def iso_ms(ms: int) -> str:
    """Milliseconds since the epoch as ISO 8601 UTC with milliseconds, e.g. `2024-05-01T12:00:00.123Z`."""
    seconds, millis = divmod(ms, 1000)
    return f"{_iso_second(seconds)}{millis:03d}Z"


@functools.lru_cache(maxsize=256)
def _iso_second(seconds: int) -> str:
    # Cached: every message payload formats its time, and those of one second share this part
    # (strftime is most of `Message.payload()`'s cost on the send path).
    return _dt.datetime.fromtimestamp(seconds, tz=_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.")


@dataclass(frozen=True, slots=True)
class Message:
    """A stored chat message. `id` is server-assigned and stable; `seq` is per conversation."""

    id: str
    conversation_id: str
    seq: int
    sender_id: str
    sender_device_id: str
    client_message_id: str
    type: str
    content: str
    metadata: JSONObject = field(hash=False)  # a JSON object; hashing skips it (dicts are unhashable)
    reply_to: str | None
    inserted_at: int  # ms since the epoch, UTC

    def payload(self) -> dict[str, object]:
        """The contract.md §3 Message object (plus `reply_to`, echoed as the sender gave it)."""
        return {
            "id": self.id,
            "conversation_id": self.conversation_id,
            "seq": self.seq,
            "sender_id": self.sender_id,
            "sender_device_id": self.sender_device_id,
            "client_message_id": self.client_message_id,
            "type": self.type,
            "content": self.content,
            "metadata": dict(self.metadata),
            "reply_to": self.reply_to,
            "inserted_at": iso_ms(self.inserted_at),
        }


@dataclass(frozen=True, slots=True)
class Appended:
    """What `MessageStore.append` returns: the message, whether it was a `duplicate`, and `inbox`,
    the inbox seq each recipient got for it in the same transaction (user id -> inbox seq, in
    user-id order; empty for a duplicate, which creates no inbox entry)."""

    message: Message
    duplicate: bool
    inbox: Mapping[str, int] = field(default_factory=dict, hash=False)


@dataclass(frozen=True, slots=True)
class InboxEntry:
    """A message as delivered to one user: `seq` is the user's inbox seq."""

    seq: int
    message: Message


@dataclass(frozen=True, slots=True)
class MessagePage:
    """One page of a conversation's replay, oldest first.

    `head_seq` is the conversation's newest seq (not the last one of this page). `recovered` is
    False when messages after the requested position were skipped because they are past retention
    (or the position is ahead of `head_seq`): the client must be told, never a silent gap.
    """

    messages: list[Message]
    head_seq: int
    has_more: bool
    recovered: bool


@dataclass(frozen=True, slots=True)
class InboxPage:
    """One page of a user's inbox replay, in inbox order; fields as in `MessagePage`."""

    entries: list[InboxEntry]
    head_seq: int
    has_more: bool
    recovered: bool


@dataclass(frozen=True, slots=True)
class Notification:
    """A notification for one user; `read_at` is None while unread."""

    id: str
    user_id: str
    type: str
    title: str
    body: str
    data: JSONObject = field(hash=False)
    created_at: int  # ms since the epoch, UTC
    read_at: int | None


class MessageStore(Protocol):
    """What the layers above call. Every method is async, runs without blocking the Trio loop
    and may raise `StoreUnavailable`. Ids are strings; seqs start at 1, and 0 means "nothing yet".

    Cancellation: a cancelled call may or may not have taken effect. For `append` that is
    safe by design: the client retries with the same `client_message_id` and gets `duplicate=True`
    if the first attempt committed.
    """

    async def append(
        self,
        conversation_id: str,
        sender_id: str,
        sender_device_id: str,
        client_message_id: str,
        type: str,
        content: str,
        metadata: JSONObject,
        reply_to: str | None,
        *,
        require_member: bool = False,
    ) -> Appended:
        """Store a message durably and return it (`Appended`).

        Returns once the message is committed, with `duplicate` False and `inbox` the inbox seq each
        recipient got (so live delivery hands `user:` entries over without reading them back); or the
        original message with `duplicate` True if this sender already sent `client_message_id` in
        this conversation. With `require_member` the sender must be an active member, read in the
        same transaction (so a removal committed before it is never missed); without it the sender
        needs neither membership nor a user row (the service API posting as the system).

        Raises:
            ConversationNotFound: the conversation does not exist.
            NotMember: `require_member` and the sender is not an active member (nothing stored).
            TypeError: `metadata` is not JSON-serialisable.
        """
        ...

    async def messages_after(self, conversation_id: str, after_seq: int, limit: int) -> MessagePage:
        """Messages with `seq > after_seq` within retention, oldest first, at most `limit`.

        Raises:
            ConversationNotFound: the conversation does not exist.
        """
        ...

    async def inbox_after(self, user_id: str, after_seq: int, limit: int) -> InboxPage:
        """The user's inbox entries with inbox seq > `after_seq` within retention, oldest first.

        An unknown user has an empty inbox (`head_seq` 0).
        """
        ...

    async def cursor(self, user_id: str, device_id: str) -> int:
        """The inbox seq this device has acked (0 if it never acked)."""
        ...

    async def inbox_from_cursor(self, user_id: str, device_id: str, limit: int) -> tuple[int, InboxPage]:
        """`cursor(user_id, device_id)` and `inbox_after(user_id, that cursor, limit)` in one call:
        what a `user:` join without `last_seq` reads (one trip to the SQLite store's thread, not two)."""
        ...

    async def advance_cursor(self, user_id: str, device_id: str, seq: int) -> int:
        """Move the device's cursor to `seq` and return the stored cursor.

        Monotonic: a `seq` at or below the stored cursor changes nothing. A `seq` past the inbox
        head is clamped to the head.
        """
        ...

    async def create_conversation(self, members: Sequence[str]) -> str:
        """Create a conversation with these active members; return its new id."""
        ...

    async def add_member(self, conversation_id: str, user_id: str) -> None:
        """Make `user_id` an active member (again). Idempotent.

        Raises:
            ConversationNotFound: the conversation does not exist.
        """
        ...

    async def remove_member(self, conversation_id: str, user_id: str) -> None:
        """Mark `user_id` inactive in the conversation. Idempotent; unknown pairs are ignored."""
        ...

    async def is_member(self, conversation_id: str, user_id: str) -> bool:
        """True if `user_id` is an active member of the conversation."""
        ...

    async def members(self, conversation_id: str) -> list[str]:
        """Active members of the conversation, sorted; [] for an unknown conversation."""
        ...

    async def conversations_of(self, user_id: str) -> list[str]:
        """Ids of the conversations where `user_id` is an active member, sorted."""
        ...

    async def upsert_user(self, user_id: str, active: bool) -> None:
        """Create the user, or set its `active` flag."""
        ...

    async def user_active(self, user_id: str) -> bool:
        """True if the user exists and is active."""
        ...

    async def create_notification(
        self, user_id: str, type: str, title: str, body: str, data: JSONObject
    ) -> Notification:
        """Store an unread notification and return it.

        Raises:
            TypeError: `data` is not JSON-serialisable.
        """
        ...

    async def unread_notifications(self, user_id: str, limit: int) -> list[Notification]:
        """The user's unread notifications, oldest first, at most `limit`."""
        ...

    async def mark_notifications_read(self, user_id: str, ids: Sequence[str]) -> int:
        """Mark these of the user's notifications read; return how many changed.

        Ids that are unknown, already read or someone else's are ignored.
        """
        ...

    async def purge_expired(self) -> int:
        """Delete inbox entries past retention; return how many. Messages stay as history."""
        ...
