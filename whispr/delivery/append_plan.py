"""The single write point's arithmetic, shared by every store backend (pure, no I/O).

A backend opens a transaction, locks the conversations of a batch of `AppendRequest`s, reads what
`plan_batch` needs (conversation heads, already-stored idempotency keys, active members), writes what
it returns, numbers the inbox entries with `number_inbox` from the inbox heads, and commits.

Invariants (given the conversations are locked for the whole transaction):
- per conversation, new seqs continue the head with no gap, in request order;
- a request with `require_member` whose sender is not an active member (read in the same
  transaction) yields `NotMember`, and nothing is written for it, even for a stored key;
- a key already stored, or repeated earlier in the same batch, yields the first message and
  `duplicate=True`, and nothing is written for it;
- each inbox receives its new entries in request order, so per-conversation order holds in it.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from whispr.delivery.store import Appended, ConversationNotFound, JSONObject, Message, NotMember, StoreError

Key = tuple[str, str, str]  # (conversation_id, sender_id, client_message_id)


@dataclass(frozen=True, slots=True)
class AppendRequest:
    """One `append` call; `metadata_json` is the canonical JSON text that is stored; `require_member`:
    refuse it unless the sender is an active member when it is written."""

    conversation_id: str
    sender_id: str
    sender_device_id: str
    client_message_id: str
    type: str
    content: str
    metadata_json: str
    reply_to: str | None
    require_member: bool

    @classmethod
    def build(
        cls,
        conversation_id: str,
        sender_id: str,
        sender_device_id: str,
        client_message_id: str,
        type: str,
        content: str,
        metadata: JSONObject,
        reply_to: str | None,
        *,
        require_member: bool,
    ) -> AppendRequest:
        """Validate and encode in the caller's task, so a bad request fails only its caller.

        Raises:
            TypeError: `metadata` is not JSON-serialisable.
        """
        metadata_json = json.dumps(metadata, separators=(",", ":"), ensure_ascii=False)
        return cls(
            conversation_id,
            sender_id,
            sender_device_id,
            client_message_id,
            type,
            content,
            metadata_json,
            reply_to,
            require_member,
        )

    @property
    def key(self) -> Key:
        return (self.conversation_id, self.sender_id, self.client_message_id)


AppendResult = tuple[Message, bool] | StoreError


@dataclass(slots=True)
class BatchPlan:
    """What to write for one batch, and each request's answer (same order as the requests)."""

    results: list[AppendResult]
    new_messages: list[tuple[Message, str]] = field(default_factory=list)  # (message, its metadata JSON)
    heads: dict[str, int] = field(default_factory=dict)  # conversation id -> new last_seq
    deliveries: list[tuple[str, Message]] = field(default_factory=list)  # (user_id, message), inbox order

    def inbox_counts(self) -> dict[str, int]:
        """How many inbox entries each user receives in this batch."""
        return dict(Counter(user_id for user_id, _ in self.deliveries))


def plan_batch(
    requests: Sequence[AppendRequest],
    heads: Mapping[str, int],
    existing: Mapping[Key, Message],
    recipients: Mapping[str, Sequence[str]],
    now_ms: int,
    new_id: Callable[[], str],
) -> BatchPlan:
    """Assign ids and seqs to a batch.

    Args:
        requests: the batch, in arrival order.
        heads: last_seq of each existing conversation of the batch (missing = not found).
        existing: stored messages for the batch's keys that already exist.
        recipients: active members of each conversation of the batch.
        now_ms: `inserted_at` for the new messages.
        new_id: returns a fresh message id.
    """
    plan = BatchPlan(results=[])
    seen: dict[Key, Message] = dict(existing)
    for request in requests:
        head = plan.heads.get(request.conversation_id, heads.get(request.conversation_id))
        if head is None:
            plan.results.append(ConversationNotFound(request.conversation_id))
            continue
        members = recipients.get(request.conversation_id, ())
        if request.require_member and request.sender_id not in members:
            # The membership check of contract §3 `send_message`, in the write's own transaction.
            plan.results.append(NotMember(request.conversation_id))
            continue
        original = seen.get(request.key)
        if original is not None:
            plan.results.append((original, True))
            continue
        message = Message(
            id=new_id(),
            conversation_id=request.conversation_id,
            seq=head + 1,
            sender_id=request.sender_id,
            sender_device_id=request.sender_device_id,
            client_message_id=request.client_message_id,
            type=request.type,
            content=request.content,
            metadata=json.loads(request.metadata_json),
            reply_to=request.reply_to,
            inserted_at=now_ms,
        )
        plan.heads[request.conversation_id] = message.seq
        seen[request.key] = message
        plan.new_messages.append((message, request.metadata_json))
        plan.deliveries.extend((user_id, message) for user_id in members)
        plan.results.append((message, False))
    return plan


def number_inbox(deliveries: Sequence[tuple[str, Message]], bases: Mapping[str, int]) -> list[tuple[str, int, Message]]:
    """Give each delivery the next inbox seq of its user, counting from `bases` (the old heads, 0 if absent)."""
    last = dict(bases)
    numbered = []
    for user_id, message in deliveries:
        seq = last.get(user_id, 0) + 1
        last[user_id] = seq
        numbered.append((user_id, seq, message))
    return numbered


def appended(
    results: Sequence[AppendResult], numbered: Sequence[tuple[str, int, Message]]
) -> list[Appended | StoreError]:
    """Each request's answer with the inbox seqs its message got (`number_inbox`'s output; empty for
    a duplicate or when nothing was numbered)."""
    inbox: dict[str, dict[str, int]] = {}
    for user_id, seq, message in numbered:
        inbox.setdefault(message.id, {})[user_id] = seq
    answers: list[Appended | StoreError] = []
    for result in results:
        if isinstance(result, StoreError):
            answers.append(result)
            continue
        message, duplicate = result
        answers.append(Appended(message, duplicate, {} if duplicate else inbox.get(message.id, {})))
    return answers
