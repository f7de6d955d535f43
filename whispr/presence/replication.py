"""`PresenceReplica`: every node's tracker holds the whole cluster's presence, the `Phoenix.Tracker` way.

Rules (phoenix_pubsub `Phoenix.Tracker` and `Tracker.State`, on a shared bus instead of a mesh):
- A replica is (node id, incarnation): every `PresenceReplica` picks a fresh incarnation
  (`new_incarnation()`, larger than the previous one of the node), since a new tracker starts empty.
- Every change of this node's own metas (`PresenceTracker.replicate_to`) is published at once as a
  *delta* numbered by the replica's clock (1, 2, ...). A peer applies a delta only if it is the next
  one of the replica it holds. Anything else (a replica it does not hold, a newer incarnation, a
  gap) makes it request a *state transfer*: the sender's whole own state with its clock, which
  replaces everything the peer held for that node (so a restarted node's presences replace its
  old ones, and only the differences reach subscribers). A delta or transfer it already has, or of
  an older incarnation, is ignored.
- Every `heartbeat_interval` each replica publishes its clock, so a peer that missed the last
  deltas (nothing follows to show the gap) requests a transfer within one interval.
- A peer requests at most one transfer per node per `heartbeat_interval` (a lost request or
  transfer is asked again after that); the requests a replica receives before it next runs are
  answered by one transfer, which every peer may apply.
- Membership decides whose presence counts (`ClusterManager` events through `follow`): a node's
  publications are applied only while it is UP. Its `NodeDown` or `NodePermdown` (a crash, a
  graceful leave, or a newer incarnation replacing it) removes its presences at once, and this
  node's subscribers get the leaves at the end of the tracker's window. Bound: a node that dies
  leaves every other node's view within `down_after` (`ClusterManager`, 15 s by default) +
  `coalesce_window` (0.05 s) of its last heartbeat, plus one stream read. Its `NodeUp` (a new
  node, a new incarnation, or one back from a tempdown) requests its state.
- A Redis reconnect, or lost publications either way (the bridge's `resync`), requests every
  node's state.
- One path to subscribers: remote changes enter the local tracker, which computes the diffs and
  broadcasts them to this node's subscribers only (`PubSub.broadcast_local`); no `presence_diff`
  crosses nodes, so each subscriber gets each diff once, from its own node.

Wire format: the message dicts `publish` sends (the bridge wraps them in its `y` publications,
adding the origin node), by field `y`. The bridge merges them into its envelope, whose `v`, `k` and
`o` would overwrite a field of the same name: the key is `key`, not `k`.

| y | meaning | fields |
|---|---|---|
| `d` | delta | `i` incarnation, `c` clock, `t` tracking id, `p` topic, `key` key, `m` meta or null (left) |
| `s` | state transfer | `i`, `c`, `e` = [[tracking id, topic, key, meta], ...] |
| `h` | clock heartbeat | `i`, `c` |
| `r` | transfer request | `n` the node asked, or null for every node |

Invariants:
- `_peers` holds only nodes in `_up`; for each, the tracker holds exactly the state of that
  replica at that clock (or a later one that a transfer is already requested for).
- The tracker holds no meta of a node outside `_up` (removed when it left `_up`, never added since).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from whispr.cluster.membership import NodeEvent, NodeUp, new_incarnation
from whispr.presence.state import Meta
from whispr.presence.tracker import PresenceTracker

__all__ = ["DEFAULT_HEARTBEAT_INTERVAL", "PresenceReplica", "Publish", "ReplicaStatistics"]

DEFAULT_HEARTBEAT_INTERVAL = 1.5
"""Seconds between clock heartbeats: phoenix_pubsub's `broadcast_period`, as the membership's."""

Publish = Callable[[dict[str, Any]], None]
"""`publish(message)`: send a message dict to every other node's replica. Synchronous, never blocks."""


@dataclass(frozen=True, slots=True)
class ReplicaStatistics:
    """A snapshot of `PresenceReplica.statistics()` (counters since the replica was built)."""

    incarnation: int
    clock: int  # deltas published by this replica
    peers: int  # nodes whose state is held
    deltas_applied: int
    transfers_sent: int
    transfers_applied: int
    requests_sent: int  # transfer requests, to one node or to all
    nodes_removed: int  # down nodes whose presences were dropped


@dataclass(slots=True)
class _Peer:
    incarnation: int
    clock: int


class PresenceReplica:
    """This node's presence replica: publishes its tracker's own changes, applies the other nodes'.

    Args:
        tracker: the node's tracker; `run` makes it report its own changes here.
        publish: sends a message to the other nodes (`ClusterBridge.publish_presence`).
        node: this node's id.
        heartbeat_interval: seconds between clock heartbeats, and between two transfer requests
            to the same node.

    The synchronous methods never block and must be called from inside the Trio run.
    """

    def __init__(
        self,
        tracker: PresenceTracker,
        publish: Publish,
        *,
        node: str,
        heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL,
    ) -> None:
        if not 0 < heartbeat_interval < math.inf:
            raise ValueError(f"heartbeat_interval must be a positive number of seconds, got {heartbeat_interval!r}")
        self._tracker = tracker
        self._publish = publish
        self._node = node
        self._interval = heartbeat_interval
        self.incarnation = new_incarnation()
        self._clock = 0
        self._up: set[str] = set()
        self._peers: dict[str, _Peer] = {}
        self._asked: dict[str, float] = {}  # node -> when its state was last requested
        self._transfer_due = False
        self._wake = trio.Event()
        self._counts = {"deltas_applied": 0, "transfers_sent": 0, "transfers_applied": 0, "requests_sent": 0}
        self._nodes_removed = 0

    def statistics(self) -> ReplicaStatistics:
        """Counters and state, for metrics and tests."""
        return ReplicaStatistics(
            incarnation=self.incarnation,
            clock=self._clock,
            peers=len(self._peers),
            nodes_removed=self._nodes_removed,
            **self._counts,
        )

    # -- the service -------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Publish this node's changes, its clock every heartbeat interval, and the transfers asked
        for; runs until cancelled, and stops reporting the tracker's changes then.

        Reports `task_status.started()` once the tracker reports here. Publication failures are the
        bridge's business (the peers recover through transfers); nothing is raised.
        """
        self._tracker.replicate_to(self._changed)
        try:
            task_status.started()
            while True:
                with trio.move_on_after(self._interval):
                    await self._wake.wait()
                self._wake = trio.Event()
                if self._transfer_due:
                    self._transfer_due = False
                    self._counts["transfers_sent"] += 1
                    entries = [list(entry) for entry in self._tracker.owned()]
                    self._publish({"y": "s", "i": self.incarnation, "c": self._clock, "e": entries})
                else:
                    self._publish({"y": "h", "i": self.incarnation, "c": self._clock})
        finally:
            self._tracker.replicate_to(None)

    async def follow(self, events: trio.MemoryReceiveChannel[NodeEvent]) -> None:
        """Apply membership events (`ClusterManager.subscribe()`) until `events` closes; cancellable.

        A new subscription replays a `NodeUp` for each node UP, so every node held so far is dropped
        first: one that went down unseen (while the manager restarted) must not stay.
        """
        for node in list(self._up):
            self._down(node)
        async with events:
            async for event in events:
                if event.node == self._node:
                    continue
                if isinstance(event, NodeUp):
                    self._up.add(event.node)
                    self._asked.pop(event.node, None)
                    self._request(event.node)
                else:  # NodeDown, NodePermdown
                    self._down(event.node)

    # -- what the bridge calls ---------------------------------------------------------------------

    def remote(self, origin: str, message: dict[str, Any]) -> None:
        """Apply a publication of node `origin` (see the wire format). Synchronous, never blocks.

        Raises:
            KeyError, TypeError, ValueError: the message is malformed (nothing was applied).
        """
        kind = message["y"]
        if kind == "r":
            if message["n"] in (None, self._node):
                self._transfer_due = True
                self._wake.set()
            return
        incarnation, clock = _integer(message["i"]), _integer(message["c"])
        if kind == "s":
            entries = [_entry(entry) for entry in message["e"]]
        elif kind == "d":
            change = _text(message["t"]), _text(message["p"]), _text(message["key"]), _meta(message["m"])
        elif kind != "h":
            raise ValueError(f"unknown presence message {kind!r}")
        if origin not in self._up:
            return  # membership decides who counts: its NodeUp will request the state
        peer = self._peers.get(origin)
        if peer is not None and (incarnation, clock) <= (peer.incarnation, peer.clock):
            return  # already applied, or an older incarnation's
        if kind == "s":
            self._tracker.replace_node(origin, entries)
            self._peers[origin] = _Peer(incarnation, clock)
            self._asked.pop(origin, None)
            self._counts["transfers_applied"] += 1
        elif kind == "d" and peer is not None and incarnation == peer.incarnation and clock == peer.clock + 1:
            self._tracker.apply_remote(origin, *change)
            peer.clock = clock
            self._counts["deltas_applied"] += 1
        else:
            self._request(origin)  # a replica not held, a newer incarnation, or a gap

    def resync(self) -> None:
        """Publications may have been lost (a Redis reconnect, dropped publications): request every
        node's state (nothing while no node is UP: its `NodeUp` will). Synchronous, never blocks."""
        if not self._up:
            return
        now = trio.current_time()
        for node in self._up:
            self._asked[node] = now
        self._counts["requests_sent"] += 1
        self._publish({"y": "r", "n": None})

    # -- internals ---------------------------------------------------------------------------------

    def _changed(self, tracking_id: str, topic: str, key: str, meta: Meta | None) -> None:
        self._clock += 1
        self._publish(
            {"y": "d", "i": self.incarnation, "c": self._clock, "t": tracking_id, "p": topic, "key": key, "m": meta}
        )

    def _request(self, node: str) -> None:
        now = trio.current_time()
        if now - self._asked.get(node, -math.inf) < self._interval:
            return
        self._asked[node] = now
        self._counts["requests_sent"] += 1
        self._publish({"y": "r", "n": node})

    def _down(self, node: str) -> None:
        if node not in self._up:
            return  # nothing of it is held (the invariants)
        self._up.discard(node)
        self._asked.pop(node, None)
        self._peers.pop(node, None)
        self._tracker.remove_node(node)
        self._nodes_removed += 1


def _integer(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return value


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _meta(value: object) -> Meta | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("phx_ref"), str):
        raise ValueError("a meta must be an object with a string phx_ref")
    return value


def _entry(value: object) -> tuple[str, str, str, Meta]:
    if not isinstance(value, list) or len(value) != 4:
        raise ValueError("a transfer entry must be [tracking id, topic, key, meta]")
    tracking_id, topic, key, meta = value
    checked = _meta(meta)
    if checked is None:
        raise ValueError("a transfer entry needs a meta")
    return _text(tracking_id), _text(topic), _text(key), checked
