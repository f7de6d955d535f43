"""Cluster membership, the Tracker way: a pure view of which nodes are up, fed with stream entries.

Rules (style.md §3 item 14; phoenix_pubsub `Tracker.Replica` and `Tracker.State`; reliability.md §1.2):

- A node is a *replica* `(node_id, incarnation)`. Every boot picks a fresh `incarnation`
  (`new_incarnation()`, larger than any earlier one of the same node id), so a restarted node is a
  new replica, never mistaken for the one that crashed.
- Each node appends *entries* `{v, node, incarnation, kind, ts, meta}` to a shared stream: a
  `heartbeat` every `heartbeat_interval` seconds while it runs, one `leave` when it stops gracefully.
  `v` is `ENTRY_VERSION`; `decode_entry` refuses any other version with `UnknownVersion` and the
  caller skips and counts it, so a rolling deploy never crashes a reader. Fields a decoder does
  not know are ignored: adding an optional field keeps `v`; only an incompatible change bumps it
  (and then new nodes write both versions until the roll is over).
- Status of a replica, from the local time `now` and the local time its latest heartbeat was heard:
  UP while silent for less than `down_after`; DOWN after that (a *tempdown*: a netsplit or a pause
  looks exactly like this, and the replica comes back UP with the same incarnation when it is heard
  again); PERMDOWN after `permdown_after`, or at once on its `leave` entry (a *graceful* exit).
  A PERMDOWN replica's state (its meta, and for the layers above its presences) is discarded.
- A newer incarnation of a node id replaces the older one, whatever the older one's status: the old
  replica gets a PERMDOWN ("replaced"), then the new one its UP. Entries of an older incarnation
  than the newest known are ignored.
- Events out (what presence and pub/sub react to): `NodeUp` when a replica becomes UP (a join),
  `NodeDown` when an UP replica goes DOWN, `NodePermdown` when a replica that was announced is
  discarded (both leaves). A replica never announced UP (heard only in old history) gets no
  event at all.

Theory of operation: per node id the view keeps one `_Record` (incarnation, last heard, left, meta),
and records form a join-semilattice: the higher incarnation wins outright; for the same incarnation
`last_heard` is the max and `left` is the or. `merge` joins new observations into the records and
then compares each touched replica's *derived* status (a function of its record and `now`) with the
status last *announced* to subscribers, emitting the events in between. Nothing is scheduled here:
the caller calls `tick(now)` (= `merge((), now)`) by `next_deadline()`, when some status changes
by the mere passage of time.

Invariants:
- `_records` is order-independent: merging any observations, in any order and any grouping, at the
  same `now` gives the same records, and merging one twice changes nothing (commutative,
  associative, idempotent; tested with Hypothesis). The one exception is forgetting: a record
  silent for `2 * permdown_after` is dropped (so the table stays bounded by the nodes of the last
  hour or so), after which an older incarnation of that node id would be accepted again.
- `_announced[node]` is `(incarnation, status)` with status UP or DOWN for every replica whose last
  event was `NodeUp` or `NodeDown`; PERMDOWN is never stored: announcing it removes the entry.
- Per node, the incarnations in events never decrease, and per replica the events follow
  `NodeUp (NodeDown NodeUp)* NodeDown? NodePermdown`. After a PERMDOWN by `leave` or by
  replacement nothing more is ever said about that replica; after one by timeout, a later heartbeat
  of the same incarnation is a new `NodeUp` (the node was only unreachable, and it still holds its
  state, so the layers above resync it as if it were new: phoenix_pubsub does the same).

WARNING: `now` must never go backwards between calls (use one monotonic clock, e.g.
`trio.current_time()`); heard times of history entries may lie in the past (`heard_at <= now`).
"""

from __future__ import annotations

import enum
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "ENTRY_VERSION",
    "Entry",
    "EntryError",
    "Kind",
    "Membership",
    "NodeDown",
    "NodeEvent",
    "NodePermdown",
    "NodeUp",
    "PermdownReason",
    "Replica",
    "Status",
    "Timeouts",
    "UnknownVersion",
    "decode_entry",
    "encode_entry",
    "new_incarnation",
]

ENTRY_VERSION: Final = 1
"""The `v` of every entry this code writes, and the only one it reads."""


class Kind(enum.StrEnum):
    """What an entry says about its replica."""

    HEARTBEAT = "heartbeat"
    LEAVE = "leave"


class Status(enum.StrEnum):
    """A replica's status in the local view (see the module rules)."""

    UP = "up"
    DOWN = "down"
    PERMDOWN = "permdown"


class PermdownReason(enum.StrEnum):
    """Why a replica was discarded."""

    LEAVE = "leave"  # its graceful `leave` entry
    TIMEOUT = "timeout"  # silent for `permdown_after`
    REPLACED = "replaced"  # a newer incarnation of the same node id was heard


def new_incarnation() -> int:
    """A fresh incarnation for this boot: wall-clock nanoseconds, so a restart compares greater."""
    return time.time_ns()


@dataclass(frozen=True, slots=True)
class Timeouts:
    """The membership timing, validated on construction.

    Attributes:
        heartbeat_interval: seconds between two heartbeats of one node.
        down_after: seconds of silence after which a replica is DOWN; at least two heartbeat
            intervals, so one late or lost heartbeat never takes a node down.
        permdown_after: seconds of silence after which a DOWN replica is discarded; more than
            `down_after`.

    Raises:
        ValueError: with a plain-English reason, when a value breaks the rules above.
    """

    heartbeat_interval: float
    down_after: float
    permdown_after: float

    def __post_init__(self) -> None:
        if not self.heartbeat_interval > 0:
            raise ValueError(
                f"heartbeat_interval must be a positive number of seconds, got {self.heartbeat_interval!r}"
            )
        if not self.down_after >= 2 * self.heartbeat_interval:
            raise ValueError(
                f"down_after ({self.down_after!r} s) must be at least twice heartbeat_interval "
                f"({self.heartbeat_interval!r} s): otherwise one late heartbeat takes a healthy node down"
            )
        if not self.permdown_after > self.down_after:
            raise ValueError(
                f"permdown_after ({self.permdown_after!r} s) must be longer than down_after ({self.down_after!r} s): "
                "a silent node is first down, and discarded only later"
            )


@dataclass(frozen=True, slots=True)
class Entry:
    """One stream entry (its `v` is implied: `ENTRY_VERSION`).

    Attributes:
        node: the sender's node id.
        incarnation: the sender's incarnation (`new_incarnation()` at its boot).
        kind: heartbeat or leave.
        ts: the sender's wall clock when it wrote the entry (Unix seconds); for logs and for
            spotting clock skew, never for liveness (which uses the reader's own clock).
        meta: small JSON object the node publishes about itself (e.g. its version).
    """

    node: str
    incarnation: int
    kind: Kind
    ts: float
    meta: Mapping[str, object] = field(default_factory=dict)


class EntryError(ValueError):
    """A stream entry that cannot be read; the reader skips it and counts it."""


class UnknownVersion(EntryError):
    """The entry's `v` is missing or is not `ENTRY_VERSION` (a newer or older writer)."""


def encode_entry(entry: Entry) -> dict[str, str]:
    """The stream fields of `entry`, all strings."""
    return {
        "v": str(ENTRY_VERSION),
        "node": entry.node,
        "incarnation": str(entry.incarnation),
        "kind": entry.kind.value,
        "ts": repr(entry.ts),
        "meta": json.dumps(entry.meta, separators=(",", ":"), sort_keys=True),
    }


def decode_entry(fields: Mapping[str, str]) -> Entry:
    """Parse the stream fields of one entry; fields it does not know are ignored.

    Raises:
        UnknownVersion: `v` is missing or not `ENTRY_VERSION`.
        EntryError: a version-1 entry with a missing or malformed field.
    """
    if fields.get("v") != str(ENTRY_VERSION):
        raise UnknownVersion(f"unknown entry version {fields.get('v')!r}")
    try:
        node = fields["node"]
        incarnation = int(fields["incarnation"])
        kind = Kind(fields["kind"])
        ts = float(fields["ts"])
        meta = json.loads(fields.get("meta", "{}"))
    except (KeyError, ValueError) as exc:
        raise EntryError(f"malformed entry: {type(exc).__name__}: {exc}") from exc
    if not node or not isinstance(meta, dict):
        raise EntryError("malformed entry: empty node id or meta not an object")
    return Entry(node, incarnation, kind, ts, meta)


@dataclass(frozen=True, slots=True)
class Replica:
    """A snapshot of one replica in the local view.

    Attributes:
        node_id: the node's id.
        incarnation: the boot of that node this replica is.
        status: UP or DOWN (PERMDOWN replicas are not in the view).
        last_heartbeat: local time (the caller's clock) its latest heartbeat was heard.
        meta: the meta of its latest heartbeat.
    """

    node_id: str
    incarnation: int
    status: Status
    last_heartbeat: float
    meta: Mapping[str, object]


@dataclass(frozen=True, slots=True)
class NodeUp:
    """A replica became UP (new, restarted with a new incarnation, or back from DOWN)."""

    node: str
    incarnation: int


@dataclass(frozen=True, slots=True)
class NodeDown:
    """An UP replica missed its heartbeats for `down_after`: treat it as gone until it is back UP."""

    node: str
    incarnation: int


@dataclass(frozen=True, slots=True)
class NodePermdown:
    """A replica is discarded for good: everything it owned (presences, subscriptions) must go."""

    node: str
    incarnation: int
    reason: PermdownReason


NodeEvent = NodeUp | NodeDown | NodePermdown


@dataclass(frozen=True, slots=True)
class _Record:
    """What is known of one node id. A join-semilattice under `_join` (see the module docstring)."""

    incarnation: int
    last_heard: float  # local time of the latest entry heard for this incarnation (heartbeat or leave)
    last_heartbeat: float  # local time of the latest heartbeat; -inf if only a leave was heard
    left: bool
    meta: Mapping[str, object]


def _join(a: _Record, b: _Record) -> _Record:
    if a.incarnation != b.incarnation:
        return a if a.incarnation > b.incarnation else b
    # Same incarnation: meta follows the latest heartbeat (ties broken by content, for commutativity).
    newer = max(a, b, key=lambda r: (r.last_heartbeat, json.dumps(r.meta, sort_keys=True)))
    return _Record(
        a.incarnation,
        max(a.last_heard, b.last_heard),
        newer.last_heartbeat,
        a.left or b.left,
        newer.meta,
    )


class Membership:
    """The local view of every other node. Pure: no I/O, no clock; time is passed in.

    Not thread-safe; every method is synchronous and cheap (proportional to what it is given).

    Args:
        timeouts: the validated timing.
    """

    def __init__(self, timeouts: Timeouts) -> None:
        self.timeouts = timeouts
        self._records: dict[str, _Record] = {}
        self._announced: dict[str, tuple[int, Status]] = {}

    def merge(self, observations: Iterable[tuple[Entry, float]], now: float) -> list[NodeEvent]:
        """Merge `(entry, heard_at)` pairs into the view and return the events they cause, in order.

        `heard_at` is the local time the entry was heard (`<= now`); for entries read from history
        it is `now` minus their age. Returns the joins (`NodeUp`) and leaves (`NodeDown`,
        `NodePermdown`) since the last call, including those due to the passage of time up to
        `now` for every node, not only for those observed.
        """
        for entry, heard_at in observations:
            heartbeat = entry.kind is Kind.HEARTBEAT
            record = _Record(
                entry.incarnation,
                heard_at,
                heard_at if heartbeat else float("-inf"),
                not heartbeat,
                entry.meta if heartbeat else {},
            )
            known = self._records.get(entry.node)
            self._records[entry.node] = record if known is None else _join(known, record)
        events: list[NodeEvent] = []
        for node in sorted(self._records.keys() | self._announced.keys()):
            self._diff(node, now, events)
        return events

    def tick(self, now: float) -> list[NodeEvent]:
        """The events due to the passage of time alone: `merge((), now)`."""
        return self.merge((), now)

    def next_deadline(self) -> float:
        """The earliest local time at which some status changes with no new entry (inf if none).

        A caller that calls `tick()` at this time (or every heartbeat interval, whichever comes
        first) announces DOWN within `down_after` plus its own scheduling delay.
        """
        deadline = float("inf")
        for node, (_, status) in self._announced.items():
            record = self._records[node]
            silent_since = record.last_heartbeat
            limit = self.timeouts.down_after if status is Status.UP else self.timeouts.permdown_after
            deadline = min(deadline, silent_since + limit)
        for record in self._records.values():
            deadline = min(deadline, record.last_heard + 2 * self.timeouts.permdown_after)
        return deadline

    def replicas(self, now: float) -> dict[str, Replica]:
        """The replicas that are UP or DOWN at `now`, by node id (no PERMDOWN, no tombstones)."""
        view: dict[str, Replica] = {}
        for node, record in self._records.items():
            status = self._status(record, now)
            if status is not Status.PERMDOWN:
                view[node] = Replica(node, record.incarnation, status, record.last_heartbeat, record.meta)
        return view

    def announced(self) -> dict[str, Replica]:
        """The replicas as last announced by events (what subscribers believe), by node id."""
        return {
            node: Replica(node, inc, status, self._records[node].last_heartbeat, self._records[node].meta)
            for node, (inc, status) in self._announced.items()
        }

    def _status(self, record: _Record, now: float) -> Status:
        silence = now - record.last_heartbeat
        if record.left or silence >= self.timeouts.permdown_after:
            return Status.PERMDOWN
        return Status.DOWN if silence >= self.timeouts.down_after else Status.UP

    def _diff(self, node: str, now: float, events: list[NodeEvent]) -> None:
        record = self._records.get(node)
        told = self._announced.get(node)
        if record is not None and now - record.last_heard >= 2 * self.timeouts.permdown_after:
            del self._records[node]  # forgotten (module invariants): long PERMDOWN by now
            record = None
        if told is not None:
            told_inc = told[0]
            if record is None or record.incarnation > told_inc:
                del self._announced[node]
                reason = PermdownReason.TIMEOUT if record is None else PermdownReason.REPLACED
                events.append(NodePermdown(node, told_inc, reason))
                told = None
        if record is None:
            return
        status = self._status(record, now)
        if told is None:
            if status is Status.UP:
                self._announced[node] = (record.incarnation, Status.UP)
                events.append(NodeUp(node, record.incarnation))
            return
        if status is Status.PERMDOWN:
            del self._announced[node]
            reason = PermdownReason.LEAVE if record.left else PermdownReason.TIMEOUT
            events.append(NodePermdown(node, record.incarnation, reason))
        elif status is not told[1]:
            self._announced[node] = (record.incarnation, status)
            events.append(
                NodeUp(node, record.incarnation) if status is Status.UP else NodeDown(node, record.incarnation)
            )
