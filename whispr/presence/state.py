"""The pure presence state: topic → key → metas, each meta owned by (node, tracking id).

No I/O, no clock, no Trio: `PresenceTracker` (tracker.py) adds the grace period and the coalescing
window; the cluster layer will feed the same operations from other nodes.

Rules (protocol.md §5.1, `Phoenix.Tracker.Shard`, `Phoenix.Presence`):
- Every meta is the caller's map plus `phx_ref`, a fresh `random_ref()`. A meta is known by its
  `phx_ref` everywhere: presence.js matches joins and leaves by ref only.
- An owner holds at most one meta per (topic, key): a second `track` is `AlreadyTracked`, as
  `Phoenix.Tracker.track/5` answers `{:error, {:already_tracked, ...}}`.
- `update` replaces the meta with a new one under a new ref carrying `phx_ref_prev`, and reports
  both in ONE diff: a join of the new meta and a leave of the old (`Shard.put_update/6`).
- Diffs carry whole metas (with their refs), so a leave removes exactly the meta that joined.

Theory of operation: metas live in `_topics[topic][key][phx_ref]`; two indexes find them by owner.
Every mutation returns the `Diff` that tells a subscriber of the topic how to follow it. `Diff.merge`
composes diffs, cancelling a join with a later leave of the same ref unless the join was `seen()`,
so a buffer of merged diffs is itself one diff that takes every subscriber, whether it knew the
state at the buffer's start or got a `presence_state` since, to the current state (the coalescing window).

Invariants:
- `_topics` holds no empty key and no empty topic (presence.js deletes a key whose metas are gone).
- `_refs` and `_owned` index exactly the metas in `_topics`: one `_refs` entry and one `_owned`
  entry per meta, and `_owned` holds no empty node or tracking id.
- Metas of a key are in the order they joined: the order presence.js builds from the diffs
  (`syncDiff` appends joined metas after the ones it had).

Replicas: ownership is per (node, tracking id) and the state does not know which node is local, so
the metas of every node live here side by side. Another node's metas arrive with their `phx_ref`
(`put`, `replace_node`: a state transfer), and `remove_node` drops a whole node's metas (what
`Phoenix.Tracker` does to a replica that is down), each returning the diffs that tell subscribers.
"""

from __future__ import annotations

import builtins
import secrets
from collections.abc import Iterable
from typing import Any, NamedTuple

__all__ = [
    "AlreadyTracked",
    "Diff",
    "Meta",
    "NotTracked",
    "Owner",
    "PresenceState",
    "random_ref",
]

Meta = dict[str, Any]
"""A presence meta as sent on the wire: the tracked map plus `phx_ref` (and `phx_ref_prev` after an update)."""


def random_ref() -> str:
    """A new `phx_ref`: url-safe base64 of 12 random bytes, 16 characters (`Shard.random_ref/0`)."""
    return secrets.token_urlsafe(12)


class Owner(NamedTuple):
    """Who tracked a meta: the node it lives on and the tracking id (the device's connection) on that node."""

    node: str
    tracking_id: str


class AlreadyTracked(ValueError):
    """The owner already has a meta under this topic and key."""


class NotTracked(LookupError):
    """The owner has no meta under this topic and key."""


class Diff:
    """Joins and leaves on one topic, keyed by presence key, each meta under its `phx_ref`.

    Mutable, so the tracker can merge a window's worth of changes into one. `to_payload()` is the
    `presence_diff` payload.
    """

    __slots__ = ("_unseen", "joins", "leaves")

    def __init__(self) -> None:
        # key -> phx_ref -> meta, in the order the metas joined or left. No empty inner dict.
        self.joins: dict[str, dict[str, Meta]] = {}
        self.leaves: dict[str, dict[str, Meta]] = {}
        # Refs joined since the last `seen()`: no subscriber can know them yet. Always a subset of `joins`.
        self._unseen: set[str] = set()

    def __bool__(self) -> bool:
        return bool(self.joins or self.leaves)

    def join(self, key: str, meta: Meta) -> None:
        """Record that `meta` joined under `key`.

        A meta that left earlier in this diff and comes back (another node's metas leave when that
        node is down and return when it is up again) loses its leave and keeps the join, which a
        subscriber that knew it ignores (presence.js matches by ref) and one that did not applies.
        It is no longer unseen: subscribers from before the diff know it.
        """
        ref = meta["phx_ref"]
        self.joins.setdefault(key, {})[ref] = meta
        left = self.leaves.get(key)
        if left is not None and ref in left:
            del left[ref]
            if not left:
                del self.leaves[key]
        else:
            self._unseen.add(ref)

    def leave(self, key: str, meta: Meta) -> None:
        """Record that `meta` left `key`; an unseen join of the same ref in this diff cancels out instead.

        A ref is only ever one meta, so when nobody can know a joined meta yet, nobody needs to hear
        that it came and went. A join that was `seen()` stays, and the leave is recorded next to it:
        presence.js applies joins before leaves, so a subscriber ends without the meta either way.
        """
        ref = meta["phx_ref"]
        if ref in self._unseen:
            self._unseen.discard(ref)
            joined = self.joins[key]
            del joined[ref]
            if not joined:
                del self.joins[key]
        else:
            self.leaves.setdefault(key, {})[ref] = meta

    def seen(self) -> None:
        """Note that a subscriber may know every meta joined so far (a `presence_state` listed it).

        From then on a leave of one of them no longer cancels its join (see `leave`): a client
        that joined the topic mid-window got the meta in its `presence_state` and must see it leave.
        """
        self._unseen = set()

    def merge(self, later: Diff) -> None:
        """Append `later` to this diff, so that it goes from this diff's start state to `later`'s end state."""
        for key, metas in later.joins.items():
            for meta in metas.values():
                self.join(key, meta)
        for key, metas in later.leaves.items():
            for meta in metas.values():
                self.leave(key, meta)

    def counts(self) -> tuple[int, int]:
        """(metas joined, metas left)."""
        return sum(map(len, self.joins.values())), sum(map(len, self.leaves.values()))

    def to_payload(self) -> dict[str, Any]:
        """The `presence_diff` payload: `{"joins": {key: {"metas": [...]}}, "leaves": {...}}`, both maps always present."""
        return {"joins": _grouped(self.joins), "leaves": _grouped(self.leaves)}


def _grouped(metas_by_key: dict[str, dict[str, Meta]]) -> dict[str, Any]:
    return {key: {"metas": [dict(meta) for meta in metas.values()]} for key, metas in metas_by_key.items()}


class PresenceState:
    """Presence of every topic on this replica. Synchronous; nothing here blocks or awaits."""

    __slots__ = ("_owned", "_refs", "_topics")

    def __init__(self) -> None:
        # topic -> key -> phx_ref -> meta, each level in insertion order; no empty key or topic.
        self._topics: dict[str, dict[str, dict[str, Meta]]] = {}
        # (topic, key, owner) -> phx_ref of the owner's one meta there.
        self._refs: dict[tuple[str, str, Owner], str] = {}
        # node -> tracking id -> (topic, key) pairs it holds (dict as an ordered set); no empty level.
        self._owned: dict[str, dict[str, dict[tuple[str, str], None]]] = {}

    @property
    def topic_count(self) -> int:
        """Topics with at least one meta."""
        return len(self._topics)

    @property
    def meta_count(self) -> int:
        """Metas across all topics."""
        return len(self._refs)

    def ref(self, owner: Owner, topic: str, key: str) -> str | None:
        """The `phx_ref` of the owner's meta under (topic, key), or None."""
        return self._refs.get((topic, key, owner))

    def tracked(self, owner: Owner) -> builtins.list[tuple[str, str]]:
        """The (topic, key) pairs the owner holds a meta under, in the order it tracked them."""
        return list(self._owned.get(owner.node, {}).get(owner.tracking_id, ()))

    def list(self, topic: str) -> dict[str, Any]:
        """The `presence_state` payload of `topic`: `{key: {"metas": [meta, ...]}}` (a fresh copy)."""
        return _grouped(self._topics.get(topic, {}))

    def track(self, owner: Owner, topic: str, key: str, meta: Meta) -> tuple[str, Diff]:
        """Add `meta` (plus a new `phx_ref`) under (topic, key) for `owner`.

        Returns:
            The new `phx_ref` and the diff joining the meta.

        Raises:
            AlreadyTracked: the owner already has a meta there (`update` or `untrack` it first).
        """
        if (topic, key, owner) in self._refs:
            raise AlreadyTracked(f"{owner} already tracks {key!r} on {topic!r}")
        ref = random_ref()
        diff = Diff()
        diff.join(key, self._put(owner, topic, key, {**meta, "phx_ref": ref}))
        return ref, diff

    def update(self, owner: Owner, topic: str, key: str, meta: Meta) -> tuple[str, Diff]:
        """Replace the owner's meta under (topic, key) by `meta` with a new `phx_ref` and `phx_ref_prev`.

        Returns:
            The new `phx_ref` and ONE diff that joins the new meta and leaves the old one
            (`Phoenix.Tracker.Shard.put_update/6`).

        Raises:
            NotTracked: the owner has no meta there (`Phoenix.Tracker.update/5` → `{:error, :nopresence}`).
        """
        old = self._pop(owner, topic, key)
        ref = random_ref()
        diff = Diff()
        diff.join(key, self._put(owner, topic, key, {**meta, "phx_ref": ref, "phx_ref_prev": old["phx_ref"]}))
        diff.leave(key, old)
        return ref, diff

    def untrack(self, owner: Owner, topic: str, key: str) -> Diff:
        """Remove the owner's meta under (topic, key); returns the diff leaving it (empty if there was none)."""
        diff = Diff()
        if (topic, key, owner) in self._refs:
            diff.leave(key, self._pop(owner, topic, key))
        return diff

    def put(self, owner: Owner, topic: str, key: str, meta: Meta) -> Diff:
        """Make `meta`, which carries its `phx_ref`, the owner's meta under (topic, key): how another
        node's track or update arrives here.

        Returns the diff joining `meta` and leaving the owner's previous meta there, if any; empty
        when the owner already holds that very ref (a replayed change).
        """
        diff = Diff()
        current = self._refs.get((topic, key, owner))
        if current == meta["phx_ref"]:
            return diff
        if current is not None:
            diff.leave(key, self._pop(owner, topic, key))
        diff.join(key, self._put(owner, topic, key, meta))
        return diff

    def owned(self, node: str) -> builtins.list[tuple[str, str, str, Meta]]:
        """Every meta `node` owns, as (tracking id, topic, key, meta): what a state transfer carries."""
        return [
            (tracking_id, topic, key, self._topics[topic][key][self._refs[topic, key, Owner(node, tracking_id)]])
            for tracking_id, pairs in self._owned.get(node, {}).items()
            for topic, key in pairs
        ]

    def replace_node(self, node: str, entries: Iterable[tuple[str, str, str, Meta]]) -> dict[str, Diff]:
        """Make `entries` (as `owned` lists them) the whole of `node`'s metas: a state transfer.

        Metas whose ref is unchanged stay untouched (no diff); the others leave or join. Returns the
        non-empty diffs per topic.
        """
        wanted = {(tracking_id, topic, key): meta for tracking_id, topic, key, meta in entries}
        diffs: dict[str, Diff] = {}
        for tracking_id, topic, key, _ in self.owned(node):
            if (tracking_id, topic, key) not in wanted:
                diffs.setdefault(topic, Diff()).merge(self.untrack(Owner(node, tracking_id), topic, key))
        for (tracking_id, topic, key), meta in wanted.items():
            diffs.setdefault(topic, Diff()).merge(self.put(Owner(node, tracking_id), topic, key, meta))
        return {topic: diff for topic, diff in diffs.items() if diff}

    def remove_node(self, node: str) -> dict[str, Diff]:
        """Remove every meta owned by `node` (a replica that is gone); returns the leaves per topic."""
        return self.replace_node(node, ())

    def _put(self, owner: Owner, topic: str, key: str, meta: Meta) -> Meta:
        ref = meta["phx_ref"]
        self._topics.setdefault(topic, {}).setdefault(key, {})[ref] = meta
        self._refs[topic, key, owner] = ref
        self._owned.setdefault(owner.node, {}).setdefault(owner.tracking_id, {})[topic, key] = None
        return meta

    def _pop(self, owner: Owner, topic: str, key: str) -> Meta:
        try:
            ref = self._refs.pop((topic, key, owner))
        except KeyError:
            raise NotTracked(f"{owner} does not track {key!r} on {topic!r}") from None
        keys = self._topics[topic]
        metas = keys[key]
        meta = metas.pop(ref)
        if not metas:
            del keys[key]
            if not keys:
                del self._topics[topic]
        by_id = self._owned[owner.node]
        pairs = by_id[owner.tracking_id]
        del pairs[topic, key]
        if not pairs:
            del by_id[owner.tracking_id]
            if not by_id:
                del self._owned[owner.node]
        return meta
