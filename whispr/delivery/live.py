"""Live delivery of `new_message` with replay on join: gap-free, in order, no duplicates (contract §4.3-§4.5).

Rules
-----
A *stream* is what one topic delivers, numbered by one seq: `user:<id>` carries the user's inbox
(inbox seq, `whispr.delivery.store`), `conversation:<id>` carries the conversation (its seq). A
device that joins a stream at *position* p (the last seq it has) must be sent every entry after p
exactly once, in seq order: first what is stored (the *replay*), then what is committed later
(the *live* path). Entries are read from the store, the source of truth; the live path only saves
reads, it never decides what exists.

Theory of operation
-------------------
Two objects per stream and node:

* A `Feed` per stream with at least one joined device on this node. Its `head` is the seq of the
  last entry it handed to the live gates. It advances only by handing over entries in seq order:
  entries offered with their seq (`offer`: the write returns the conversation seq and each
  recipient's inbox seq, `MessageStore.append`), or read from the store after `head` (`pull`: a
  gap, a go-live, a resync from the cluster). An offer that jumps (seq > head + 1: two sends
  committed together woke up in the other order, or a sender was cancelled between its commit
  and its publication) is buffered (bounded) until the missing seq arrives; if it is still
  missing once the batch has been handled, the feed pulls the gap from the store. So a feed hands every entry after its head to
  its live gates exactly once, in order, whatever order the live path brings them in.
* A `Gate` per joined channel instance (one device on one topic): its `position` is the last seq
  sent to the device. It starts *replaying*: the channel reads the store page by page after its
  position (`catch_up`) and pushes what it reads, while the feed's entries are not passed to it.
  When a read comes back with nothing more (`has_more` false) the gate tries to *go live*, which
  happens synchronously (no checkpoint between the check and the switch):
  - if no other gate of the feed is live, nothing depends on the feed's head, so the head is set to
    the gate's position and a pull is requested: whatever was committed after the replay's last
    read is then read after that position and handed over;
  - otherwise the gate goes live only if its position is at or past the head; if the feed already
    handed over entries the replay has not read (position < head), the replay reads again.
  A live gate passes an entry only if its seq is above its position (duplicates from the replay's
  overlap are dropped by seq) and then moves its position to it.

Why there is no gap and no disorder: a live gate's position was at or past the feed's head when it
went live (or the head was set to it), and from then on the feed hands it every later entry in
order, so it receives everything after its position; the replay before that was a consecutive
read of the store. Naive schemes fail exactly where this one checks: "replay, then subscribe"
loses what commits between the last read and the subscription (here: the go-live pull, or the
position < head re-read); "subscribe, then replay" interleaves live N+5 with replayed N+1 (here:
nothing is passed to a replaying gate).

All feed work (offers, pulls) runs in the one `LiveDelivery.run` task, in the order the router
publishes commits; channels only attach, detach and go live, which never await. The router
publishes after its commit returns and before the sender's `ok` is written, so an acked message is
always published, and reaches the sender's own device after the ack (contract §3 "ok, then
broadcast"). A publication lost anyway (its sender cancelled between commit and publication) is
found by the next jump on that stream, which pulls from the store.

Invariants
----------
* `Feed.head` only decreases when a gate goes live while no other gate of that feed is live;
  `Feed.epoch` counts those resets, so a pull discards a page read before one.
* A live gate's position is at least the feed's head when it goes live.
* `Feed.pending` holds entries with seq > head + 1, at most `MAX_PENDING`.

Across nodes (`whispr.pubsub.cluster`): an `Outbound` set with `set_outbound` is told of every commit
published here (`committed`: the conversation entry with its seq, and the members' `user:` topics to
poke) and of every revocation; what other nodes publish comes back as `remote_entry` (a
conversation entry, offered like a local one: a jump is filled from the store) and `resync` (pull
the named feeds, or all of them, from the store after their head: a `user:` poke, a resubscribe, a
lost heartbeat). Both only queue work for `run`; a lost or late remote notice costs a store read,
never an entry.

Encode once: a feed builds an entry's payload once (one per message for the conversation stream,
one per recipient for `user:`, whose `inbox_seq` is that user's) and hands it to all its live gates
with one `SharedFrames` (`Deliver`'s third argument); each channel pushes with
`ChannelSocket.push_shared`, which encodes once per (serializer, join_ref) and writes the same bytes
to every device that shares them. A live message's `user:` entries share one spliced
`SharedFrames` across all its recipients: the message is encoded once per (serializer, join_ref)
and each recipient's frame only fills in its topic and `inbox_seq`. The frames are exactly those of
a per-device `push` (the channel's join_ref included, so clients keep dropping a left join's
frames); devices whose clients number their joins alike (phoenix.js: the first join of a socket is
ref "1"...) share one encoding. MESSAGE_SENT is emitted once per frame built, with `count` the
sockets it was written to (`sent`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from whispr.delivery.store import InboxEntry, InboxPage, Message, MessageStore, StoreUnavailable
from whispr.observability.telemetry import MESSAGE_DELIVERED, MESSAGE_SENT, RECOVERY, emit
from whispr.protocol import SharedFrames

_LIVE = {"path": "live"}
_PUSH = {"kind": "push"}
INBOX_SEQ = "inbox_seq"
"""The key `user:` pushes add to the Message payload: the entry's inbox seq."""

PAGE_SIZE = 100
"""Entries read per store call, by replays and pulls."""
MAX_PENDING = 1_000
"""Out-of-order entries a feed buffers; beyond that they are dropped and read back by the pull."""

_log = logging.getLogger("whispr.delivery")

Entry = tuple[int, dict[str, Any]]
"""(stream seq, the `new_message` payload)."""
Deliver = Callable[[int, dict[str, Any], SharedFrames | None], None]
"""Sends one entry to one device (synchronous, never blocks): `(seq, payload, frames)`, where
`frames` is shared by every device the same entry is handed to (None: a replay, one device)."""


@dataclass(frozen=True, slots=True)
class Page:
    """One read of a stream: entries oldest first, the stream's head, whether more follow, and
    `recovered` (False: entries after the requested position were skipped, past retention)."""

    entries: list[Entry]
    head: int
    has_more: bool
    recovered: bool


Reader = Callable[[int, int], Awaitable[Page]]
"""`read(after_seq, limit)`: the stream's entries after `after_seq`. May raise `StoreUnavailable`."""


def user_topic(user_id: str) -> str:
    """The `user:` topic (and stream) of `user_id`."""
    return f"user:{user_id}"


def conversation_topic(conversation_id: str) -> str:
    """The `conversation:` topic (and stream) of `conversation_id`."""
    return f"conversation:{conversation_id}"


def inbox_payload(entry: InboxEntry) -> dict[str, Any]:
    """The `new_message` payload on `user:` topics: the Message plus its `inbox_seq`, the seq that
    `ack`, `sync` and the join's `last_seq` count in (store docstring, "the user inbox")."""
    payload = entry.message.payload()
    payload[INBOX_SEQ] = entry.seq
    return payload


def sent(frames: SharedFrames) -> None:
    """Emit MESSAGE_SENT once per frame `frames` built, with the sockets it was written to."""
    for size, count in frames.uses():
        emit(MESSAGE_SENT, {"size": size, "count": count}, _PUSH)


def inbox_reader(store: MessageStore, user_id: str) -> Reader:
    """Reads `user_id`'s inbox (inbox seqs)."""

    async def read(after_seq: int, limit: int) -> Page:
        return inbox_page(await store.inbox_after(user_id, after_seq, limit))

    return read


def inbox_page(page: InboxPage) -> Page:
    """An inbox page as a feed `Page` (entries as `new_message` payloads)."""
    return Page([(e.seq, inbox_payload(e)) for e in page.entries], page.head_seq, page.has_more, page.recovered)


def conversation_reader(store: MessageStore, conversation_id: str) -> Reader:
    """Reads a conversation (conversation seqs). Raises `ConversationNotFound` for an unknown id."""

    async def read(after_seq: int, limit: int) -> Page:
        page = await store.messages_after(conversation_id, after_seq, limit)
        return Page([(m.seq, m.payload()) for m in page.messages], page.head_seq, page.has_more, page.recovered)

    return read


class Gate:
    """One joined channel instance's window on a stream (see the module docstring)."""

    __slots__ = ("_deliver", "live", "position", "revoked", "user_id")

    def __init__(self, user_id: str, position: int, deliver: Deliver) -> None:
        self.user_id = user_id
        # The last seq sent to the device; only grows once the gate is attached.
        self.position = position
        # False while replaying: the feed's entries are not passed (the replay reads them).
        self.live = False
        # Set when the user's membership of the conversation is revoked: nothing is passed any more.
        self.revoked = False
        self._deliver = deliver

    def offer(self, seq: int, payload: dict[str, Any], frames: SharedFrames) -> None:
        """Pass the entry if the gate is live, not revoked, and the device does not have it yet."""
        if self.live and not self.revoked and seq > self.position:
            self.position = seq
            self._deliver(seq, payload, frames)

    def replayed(self, seq: int, payload: dict[str, Any]) -> bool:
        """Send a replayed entry unless the device has it; True if it was sent."""
        if seq <= self.position:
            return False
        self.position = seq
        self._deliver(seq, payload, None)
        return True


class Feed:
    """One stream on this node: its live gates and its head (see the module docstring)."""

    __slots__ = ("epoch", "gates", "head", "pending", "read", "topic")

    def __init__(self, topic: str, read: Reader) -> None:
        self.topic = topic
        self.read = read
        # Seq of the last entry handed to the live gates (meaningless while none is live).
        self.head = 0
        # Bumped each time `head` is reset by a gate going live alone.
        self.epoch = 0
        # Attached gates, live or replaying, in attach order (a dict used as an ordered set).
        self.gates: dict[Gate, None] = {}
        # seq -> payload of offered entries that jumped ahead of head + 1.
        self.pending: dict[int, dict[str, Any]] = {}

    def has_live(self) -> bool:
        """True if a gate of this feed is live."""
        return any(gate.live for gate in self.gates)

    def offer(self, seq: int, payload: dict[str, Any], frames: SharedFrames | None = None) -> None:
        """An entry from the live path: hand it over if it is next, buffer it if it jumps.

        `frames`: shared with other feeds' entries of the same message (the caller then emits
        `sent`); None: this entry's own."""
        if seq <= self.head or not self.has_live():
            return  # already handed over, or nobody live: the replays and the go-live pull read it
        if seq > self.head + 1:
            if len(self.pending) < MAX_PENDING:
                self.pending[seq] = payload
            return
        self._hand_over(seq, payload, frames)
        self._drain()

    async def pull(self, page_size: int) -> None:
        """Read the store after `head` until caught up and hand the entries over.

        Blocks on store reads. Raises `StoreUnavailable`; what was handed over stays handed over.
        """
        while self.has_live():
            epoch = self.epoch
            page = await self.read(self.head, page_size)
            if epoch != self.epoch:
                continue  # the head was reset meanwhile: read again from the new one
            for seq, payload in page.entries:
                if seq > self.head:
                    # Consecutive from head + 1, except past retention, where we never stall.
                    self._hand_over(seq, payload)
            self._drain()
            if not page.has_more:
                return

    def _hand_over(self, seq: int, payload: dict[str, Any], shared: SharedFrames | None = None) -> None:
        self.head = seq
        frames = SharedFrames() if shared is None else shared
        for gate in self.gates:
            gate.offer(seq, payload, frames)
        if shared is None:
            sent(frames)

    def _drain(self) -> None:
        if not self.pending:
            return  # the usual case: nothing jumped ahead
        for seq in [seq for seq in self.pending if seq <= self.head]:
            del self.pending[seq]
        while (payload := self.pending.pop(self.head + 1, None)) is not None:
            self._hand_over(self.head + 1, payload)


@dataclass(frozen=True, slots=True)
class _Committed:
    message: Message
    payload: dict[str, Any]  # message.payload(), built once, never mutated
    inbox: Mapping[str, int]  # recipient -> inbox seq of the message
    accepted_at: float  # trio.current_time() when the router took the send
    committed_at: float  # ... and when the store's commit returned


@dataclass(frozen=True, slots=True)
class _RemoteEntry:
    topic: str
    seq: int
    payload: dict[str, Any]


class Outbound(Protocol):
    """Where the node's commits and revocations go to reach the other nodes (the cluster bridge)."""

    def committed(self, topic: str, seq: int, payload: dict[str, Any], pokes: tuple[str, ...]) -> None:
        """Entry `seq` of `topic` (a conversation) was committed; the `pokes` topics (its members'
        `user:` topics) have new inbox entries. Synchronous, never blocks."""
        ...

    def revoked(self, conversation_id: str, user_id: str) -> None:
        """The user's membership of the conversation was revoked. Synchronous, never blocks."""
        ...


class LiveDelivery:
    """The node's feeds and the task that feeds them. Create one per node; run `run` in the tree."""

    def __init__(self, *, page_size: int = PAGE_SIZE) -> None:
        if page_size < 1:
            raise ValueError(f"page_size must be at least 1, got {page_size}")
        self.page_size = page_size
        self._feeds: dict[str, Feed] = {}
        # Work for `run`: commits to publish and feeds to pull. Unbounded: one item per commit,
        # each of which already waited for a store write; `run` drains it batch by batch.
        self._send, self._receive = trio.open_memory_channel[_Committed | _RemoteEntry | Feed](math.inf)
        self._outbound: Outbound | None = None

    def set_outbound(self, outbound: Outbound | None) -> None:
        """Tell `outbound` of every commit and revocation from now on (None: this node only)."""
        self._outbound = outbound

    def attach(self, topic: str, gate: Gate, read: Reader) -> Feed:
        """Attach a replaying gate to the topic's feed (created with `read` if new)."""
        feed = self._feeds.get(topic)
        if feed is None:
            feed = self._feeds[topic] = Feed(topic, read)
        feed.gates[gate] = None
        return feed

    def detach(self, topic: str, gate: Gate) -> None:
        """Detach a gate (its channel ended); the feed goes when its last gate does. Idempotent."""
        feed = self._feeds.get(topic)
        if feed is not None:
            feed.gates.pop(gate, None)
            if not feed.gates:
                del self._feeds[topic]

    def revoke(self, conversation_id: str, user_id: str) -> None:
        """Stop live delivery on `conversation:<id>` to the user's devices (membership revoked), on
        every node."""
        self.revoke_local(conversation_id, user_id)
        if self._outbound is not None:
            self._outbound.revoked(conversation_id, user_id)

    def revoke_local(self, conversation_id: str, user_id: str) -> None:
        """`revoke` on this node only (what the bridge does with a remote revocation)."""
        feed = self._feeds.get(conversation_topic(conversation_id))
        if feed is not None:
            for gate in feed.gates:
                if gate.user_id == user_id:
                    gate.revoked = True

    def published(self, message: Message, inbox: Mapping[str, int], accepted_at: float, committed_at: float) -> None:
        """A new message was committed: deliver it on its conversation and its recipients' inboxes.

        `inbox` is the inbox seq each recipient got for it in the same transaction
        (`Appended.inbox`); `accepted_at` and `committed_at` (Trio clock) time the delivery-latency
        telemetry. Synchronous, never blocks: the work is done by `run`, after the caller's
        current step.
        """
        payload = message.payload()
        self._send.send_nowait(_Committed(message, payload, inbox, accepted_at, committed_at))
        if self._outbound is not None:
            self._outbound.committed(
                conversation_topic(message.conversation_id),
                message.seq,
                payload,
                tuple(user_topic(member) for member in inbox),
            )

    def remote_entry(self, topic: str, seq: int, payload: dict[str, Any]) -> None:
        """Entry `seq` of `topic` was committed on another node: offer it to the topic's feed, if
        any, as `published` does (a jump is filled from the store). Synchronous, never blocks."""
        if topic in self._feeds:
            self._send.send_nowait(_RemoteEntry(topic, seq, payload))

    def resync(self, topics: Iterable[str] | None = None) -> int:
        """Pull the feeds of `topics` (None: every feed) from the store after their head, in `run`;
        return how many feeds were queued. Synchronous, never blocks."""
        feeds = list(self._feeds.values()) if topics is None else [self._feeds.get(topic) for topic in topics]
        queued = 0
        for feed in feeds:
            if feed is not None:
                self._send.send_nowait(feed)
                queued += 1
        return queued

    async def catch_up(self, feed: Feed, gate: Gate, first: Page) -> int:
        """Replay `first` and the pages after it to the gate, then make it live; return how many
        entries were sent. `first` is the read after the gate's position, `feed` what `attach` gave.

        Blocks on store reads; the device gets each page as it is read. Returns early if the gate
        is detached meanwhile. Raises `StoreUnavailable` (the gate stays replaying).
        """
        # A position ahead of the head was never issued (store: `recovered` is False then); without
        # this the entries up to it would be dropped as duplicates when they come.
        gate.position = min(gate.position, first.head)
        replayed = 0
        page = first
        while gate in feed.gates:
            replayed += sum(gate.replayed(seq, payload) for seq, payload in page.entries)
            if not page.has_more and self._go_live(feed, gate):
                break
            page = await feed.read(gate.position, self.page_size)
        emit(RECOVERY, {"replayed": replayed}, {"outcome": "recovered" if first.recovered else "not_recovered"})
        return replayed

    def _go_live(self, feed: Feed, gate: Gate) -> bool:
        if not any(other.live for other in feed.gates if other is not gate):
            feed.head = gate.position
            feed.epoch += 1
            feed.pending.clear()
            gate.live = True
            # What was committed after the replay's last read is read back from this position.
            self._send.send_nowait(feed)
            return True
        if gate.position < feed.head:
            return False  # the feed handed over entries this replay has not read yet
        gate.live = True
        return True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Publish commits and run pulls, batch by batch, until cancelled.

        Error handling: a pull that raises `StoreUnavailable` is logged at WARNING and left behind;
        the feed catches up at its next pull (its next commit, or a gap). Anything else propagates.
        """
        task_status.started()
        async for item in self._receive:
            batch = [item]
            while True:
                try:
                    batch.append(self._receive.receive_nowait())
                except trio.WouldBlock:
                    break
            to_pull: dict[Feed, None] = {}
            offered: dict[Feed, None] = {}
            for work in batch:
                if isinstance(work, Feed):
                    to_pull[work] = None
                    continue
                if isinstance(work, _RemoteEntry):
                    remote = self._feeds.get(work.topic)
                    if remote is not None:
                        remote.offer(work.seq, work.payload)
                        offered[remote] = None
                    continue
                message = work.message
                payload = work.payload
                feed = self._feeds.get(conversation_topic(message.conversation_id))
                if feed is not None:
                    feed.offer(message.seq, payload)
                    offered[feed] = None
                    # Acceptance → written to the conversation's live devices (the offer writes synchronously).
                    now = trio.current_time()
                    emit(
                        MESSAGE_DELIVERED,
                        {
                            "store": work.committed_at - work.accepted_at,
                            "queue": now - work.committed_at,
                            "pubsub": 0.0,
                            "total": now - work.accepted_at,
                        },
                        _LIVE,
                    )
                # One encoding per (serializer, join_ref) for all the recipients' `user:` frames.
                inbox_frames = SharedFrames(splice=INBOX_SEQ)
                for user_id, inbox_seq in work.inbox.items():
                    inbox = self._feeds.get(user_topic(user_id))
                    if inbox is not None and inbox_seq > inbox.head:
                        # Same keys, same order as `inbox_payload`: the bytes a replay would send.
                        inbox.offer(inbox_seq, {**payload, INBOX_SEQ: inbox_seq}, inbox_frames)
                        offered[inbox] = None
                sent(inbox_frames)
            for feed in offered:
                if feed.pending:
                    to_pull[feed] = None  # a seq is still missing after the whole batch: read it
            for feed in to_pull:
                if self._feeds.get(feed.topic) is not feed:
                    continue
                try:
                    await feed.pull(self.page_size)
                except StoreUnavailable as exc:
                    _log.warning("live delivery on %s is behind: %s", feed.topic, exc)
