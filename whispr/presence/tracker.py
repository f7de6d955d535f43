"""`PresenceTracker`: the presence state of this node, with a grace period on leaves and coalesced diffs.

Rules:
- `track` shows the meta in `list()` at once; its join reaches subscribers with the topic's next
  `presence_diff` (a broadcast: the callback's subscribers, join_ref null, protocol.md §5.1).
- `untrack` holds the leave for `grace_period` seconds; the meta stays in `list()` meanwhile. A
  `track` of the same (topic, key, tracking id) inside the grace period is a reconnect of the
  same device: it cancels the held leave, KEEPS the old meta and its `phx_ref`, ignores the new
  meta and returns the old ref, so observers see no diff at all. The device never went offline
  for them, so `online_at` keeps meaning "online since". (Updating the meta instead would send a
  diff on every reconnect, since a reconnecting client's `online_at` always changes.) A caller
  that really has new metadata calls `update` after the `track`.
- Changes to a topic are buffered from the first one for `coalesce_window` seconds, then sent as
  ONE `presence_diff` (`Diff.merge`: a meta that joins and leaves inside a window is never
  mentioned, unless a `list` of the topic showed it meanwhile; a window that cancels out
  entirely sends nothing). Phoenix broadcasts each change at once; the window trades a few
  milliseconds of latency for far fewer frames when many devices come and go, and presence.js
  ends in the same state from a merged diff as from the sequence it replaces.
- `tracking_id` names the device's connection and must be the same across its reconnects (the
  socket id `user_socket:<user_id>:<device_id>`, contract.md §1), otherwise a reconnect cannot be
  recognised and observers see a join now and a leave after the grace period.
- Other nodes' metas (`whispr.presence.replication`) live in the same state under their owner's
  node: `apply_remote`, `replace_node` and `remove_node` change them at once (the grace period was
  served on their node) and their diffs go through the same windows, so a subscriber gets one
  `presence_diff` stream for the whole cluster, computed on its own node. Every change of this
  node's own metas (a track, an update, a leave once its grace period is over; not a reconnect
  inside it, which changes nothing) is reported to the `replicate_to` callback as it happens.

Theory of operation: all timers (held leaves and flush windows) sit in one heap, served by the
single `run` task, which sleeps in a cancel scope whose deadline is the earliest timer; scheduling
an earlier timer moves that deadline. Cancelled timers stay in the heap and are skipped when due
(a timer is live only while its owning dict still maps to that very object), so the heap holds at
most one grace period's worth of cancelled leaves.

Invariants:
- `_held` holds only (topic, key, tracking id) that have a meta in the state.
- `_flushes` has one live flush timer per topic with buffered changes (its diff may have cancelled
  out to empty; it is then dropped without a broadcast).
- `list(topic)` equals the state every subscriber reaches by applying, in order, the diffs sent so
  far and then the topic's buffered diff (the property tested in tests/presence).
"""

from __future__ import annotations

import builtins
import heapq
import itertools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import trio

from whispr.observability.telemetry import PRESENCE_DIFF, emit
from whispr.presence.state import Diff, Meta, Owner, PresenceState

__all__ = [
    "PRESENCE_DIFF_EVENT",
    "PRESENCE_STATE_EVENT",
    "Broadcast",
    "LocalChange",
    "PresenceStatistics",
    "PresenceTracker",
]

Broadcast = Callable[[str, str, dict[str, Any]], None]
"""`broadcast(topic, event, payload)`: send to the topic's subscribers. Synchronous, never blocks."""

LocalChange = Callable[[str, str, str, Meta | None], None]
"""`changed(tracking_id, topic, key, meta)`: this node's meta of the device under (topic, key) is now
`meta` (with its `phx_ref`), or gone (None). Synchronous, never blocks."""

PRESENCE_STATE_EVENT = "presence_state"
"""The push that carries `PresenceTracker.list(topic)` to a channel after every (re)join (protocol.md §5.2)."""
PRESENCE_DIFF_EVENT = "presence_diff"
"""The broadcast that carries a topic's coalesced `Diff`."""


@dataclass(frozen=True, slots=True)
class PresenceStatistics:
    """A snapshot of `PresenceTracker.statistics()`."""

    topics: int  # topics with at least one meta
    metas: int  # metas across all topics, held leaves included
    pending_leaves: int  # untracks waiting for their grace period
    pending_diffs: int  # topics with changes waiting for their coalescing window


@dataclass(eq=False, slots=True)
class _Flush:
    """The buffered changes of `topic`, broadcast when the window ends."""

    topic: str
    diff: Diff


@dataclass(eq=False, slots=True)
class _HeldLeave:
    """An untrack waiting for the grace period."""

    topic: str
    key: str
    tracking_id: str


class PresenceTracker:
    """Presence for one node: `track`/`untrack`/`update` now, leaves after a grace period, diffs per window.

    The mutating methods are synchronous, never block, and must be called from inside the Trio run
    (they read `trio.current_time()`). Timers fire, and diffs are broadcast, only while `run` runs.
    """

    def __init__(
        self,
        broadcast: Broadcast,
        *,
        node: str,
        grace_period: float = 5.0,
        coalesce_window: float = 0.05,
    ) -> None:
        """
        Args:
            broadcast: sends `presence_diff` to a topic's subscribers (synchronous, never blocks).
            node: this node's id (`Config.node_id`); every meta tracked here is owned by it.
            grace_period: seconds an untrack is held before its leave is applied.
            coalesce_window: seconds a topic's changes are buffered before one `presence_diff`.

        Raises:
            ValueError: a duration is negative, infinite or NaN.
        """
        for name, value in (("grace_period", grace_period), ("coalesce_window", coalesce_window)):
            if not 0 <= value < math.inf:
                raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
        self._broadcast = broadcast
        self._node = node
        self._grace_period = grace_period
        self._coalesce_window = coalesce_window
        self._state = PresenceState()
        self._changed: LocalChange | None = None
        # (topic, key, tracking id) -> its live held-leave timer.
        self._held: dict[tuple[str, str, str], _HeldLeave] = {}
        # topic -> its live flush timer (with the buffered diff).
        self._flushes: dict[str, _Flush] = {}
        # (deadline, sequence, timer); may hold dead timers, see the module docstring.
        self._timers: builtins.list[tuple[float, int, _Flush | _HeldLeave]] = []
        self._sequence = itertools.count()
        # The scope `run` sleeps in while it waits for the earliest timer; None when `run` is not waiting.
        self._sleep: trio.CancelScope | None = None

    def track(self, topic: str, key: str, tracking_id: str, meta: Meta) -> str:
        """Track `meta` under (topic, key) for the device `tracking_id`; returns its `phx_ref`.

        If a leave of the same (topic, key, tracking_id) is held, this is a reconnect inside the grace
        period: the leave is cancelled, the existing meta stays as it is (`meta` is ignored) and its
        `phx_ref` is returned. Nothing is broadcast. Otherwise the join is buffered for the topic's
        next `presence_diff`. Synchronous, never blocks.

        Raises:
            AlreadyTracked: the device already tracks (topic, key) and no leave of it is held.
        """
        owner = Owner(self._node, tracking_id)
        if self._held.pop((topic, key, tracking_id), None) is not None:
            ref = self._state.ref(owner, topic, key)
            assert ref is not None  # invariant of `_held`
            return ref
        ref, diff = self._state.track(owner, topic, key, meta)
        self._local(tracking_id, topic, key, diff.joins[key][ref])
        self._buffer(topic, diff)
        return ref

    def update(self, topic: str, key: str, tracking_id: str, meta: Meta) -> str:
        """Replace the device's meta under (topic, key); returns the new `phx_ref`.

        The next `presence_diff` joins the new meta (with `phx_ref_prev`) and leaves the old one.
        A held leave stays held (it then removes the new meta). Synchronous, never blocks.

        Raises:
            NotTracked: the device does not track (topic, key).
        """
        ref, diff = self._state.update(Owner(self._node, tracking_id), topic, key, meta)
        self._local(tracking_id, topic, key, diff.joins[key][ref])
        self._buffer(topic, diff)
        return ref

    def untrack(self, topic: str, key: str, tracking_id: str) -> None:
        """Leave (topic, key) for the device after the grace period. Synchronous, never blocks.

        Does nothing if the device does not track (topic, key) (Phoenix: untrack is idempotent) or
        if its leave is already held (the first deadline stands).
        """
        ident = (topic, key, tracking_id)
        if ident in self._held or self._state.ref(Owner(self._node, tracking_id), topic, key) is None:
            return
        held = _HeldLeave(topic, key, tracking_id)
        self._held[ident] = held
        self._schedule(self._grace_period, held)

    def untrack_all(self, tracking_id: str) -> None:
        """`untrack` everything the device tracks (its socket closed). Synchronous, never blocks."""
        for topic, key in self._state.tracked(Owner(self._node, tracking_id)):
            self.untrack(topic, key, tracking_id)

    def replicate_to(self, changed: LocalChange | None) -> None:
        """Report every later change of this node's own metas to `changed` (None: stop). Not blocking."""
        self._changed = changed

    def owned(self) -> builtins.list[tuple[str, str, str, Meta]]:
        """This node's metas as (tracking id, topic, key, meta), held leaves included: its state transfer."""
        return self._state.owned(self._node)

    def apply_remote(self, node: str, tracking_id: str, topic: str, key: str, meta: Meta | None) -> None:
        """Another node reports its device's meta under (topic, key): `meta` (with its `phx_ref`), or
        None when it left. Applied at once, the diff buffered. Synchronous, never blocks.

        Raises:
            ValueError: `node` is this node (its metas change only through this tracker's own calls).
        """
        owner = self._remote_owner(node, tracking_id)
        if meta is None:
            self._buffer(topic, self._state.untrack(owner, topic, key))
        else:
            self._buffer(topic, self._state.put(owner, topic, key, meta))

    def replace_node(self, node: str, entries: Iterable[tuple[str, str, str, Meta]]) -> None:
        """Make `entries` (as `owned` lists them on that node) the whole of `node`'s metas here: a state
        transfer. Only the differences are buffered. Synchronous, never blocks.

        Raises:
            ValueError: `node` is this node.
        """
        self._remote_owner(node, "")
        for topic, diff in self._state.replace_node(node, entries).items():
            self._buffer(topic, diff)

    def remove_node(self, node: str) -> None:
        """Drop every meta of `node` (it is down) at once, the leaves buffered. Synchronous, never blocks.

        Raises:
            ValueError: `node` is this node.
        """
        self.replace_node(node, ())

    def list(self, topic: str) -> dict[str, Any]:
        """The `presence_state` payload of `topic`, held leaves included (a fresh copy).

        Call it when the channel is subscribed to the topic's broadcasts, with no checkpoint in
        between, so that the diffs the client gets next start from this state (protocol.md §5.2: the
        client applies them after the `presence_state`). The metas listed here that are still in the
        topic's window are marked seen: if they leave within the window, the leave is sent.
        Synchronous, never blocks.
        """
        flush = self._flushes.get(topic)
        if flush is not None:
            flush.diff.seen()
        return self._state.list(topic)

    def statistics(self) -> PresenceStatistics:
        """Counts of topics, metas, held leaves and topics with buffered changes."""
        return PresenceStatistics(
            topics=self._state.topic_count,
            metas=self._state.meta_count,
            pending_leaves=len(self._held),
            pending_diffs=len(self._flushes),
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Fire held leaves and flush windows when they are due; runs until cancelled.

        Reports `task_status.started()` at once: the tracker serves from then on. Cancellable at any
        time; the state, held leaves and buffered diffs survive, and a later `run` picks them up.

        Error handling: an exception from the `broadcast` callback propagates out of `run` (a bug
        in the caller; the diff it was sending is lost).

        Raises:
            RuntimeError: `run` is already running.
        """
        if self._sleep is not None:
            raise RuntimeError("PresenceTracker.run is already running")
        task_status.started()
        try:
            while True:
                with trio.CancelScope(deadline=self._next_deadline()) as self._sleep:
                    await trio.sleep_forever()
                self._fire_due(trio.current_time())
        finally:
            self._sleep = None

    def _remote_owner(self, node: str, tracking_id: str) -> Owner:
        if node == self._node:
            raise ValueError(f"{node!r} is this node: its presence is not another node's to change")
        return Owner(node, tracking_id)

    def _local(self, tracking_id: str, topic: str, key: str, meta: Meta | None) -> None:
        if self._changed is not None:
            self._changed(tracking_id, topic, key, meta)

    def _buffer(self, topic: str, diff: Diff) -> None:
        """Add `diff` to the topic's buffer, opening a window if none is open."""
        flush = self._flushes.get(topic)
        if flush is None:
            flush = _Flush(topic, Diff())
            self._flushes[topic] = flush
            self._schedule(self._coalesce_window, flush)
        flush.diff.merge(diff)

    def _schedule(self, delay: float, timer: _Flush | _HeldLeave) -> None:
        deadline = trio.current_time() + delay
        heapq.heappush(self._timers, (deadline, next(self._sequence), timer))
        if self._sleep is not None and deadline < self._sleep.deadline:
            self._sleep.deadline = deadline

    def _live(self, timer: _Flush | _HeldLeave) -> bool:
        if isinstance(timer, _Flush):
            return self._flushes.get(timer.topic) is timer
        return self._held.get((timer.topic, timer.key, timer.tracking_id)) is timer

    def _next_deadline(self) -> float:
        while self._timers and not self._live(self._timers[0][2]):
            heapq.heappop(self._timers)
        return self._timers[0][0] if self._timers else math.inf

    def _fire_due(self, now: float) -> None:
        # A leave can open a window that is due at once (coalesce_window 0): it is pushed with a
        # deadline <= now and served by this same loop.
        while self._timers and self._timers[0][0] <= now:
            _, _, timer = heapq.heappop(self._timers)
            if not self._live(timer):
                continue
            if isinstance(timer, _HeldLeave):
                del self._held[timer.topic, timer.key, timer.tracking_id]
                owner = Owner(self._node, timer.tracking_id)
                self._buffer(timer.topic, self._state.untrack(owner, timer.topic, timer.key))
                self._local(timer.tracking_id, timer.topic, timer.key, None)
            else:
                del self._flushes[timer.topic]
                self._send(timer.topic, timer.diff)

    def _send(self, topic: str, diff: Diff) -> None:
        if not diff:
            return
        joins, leaves = diff.counts()
        self._broadcast(topic, PRESENCE_DIFF_EVENT, diff.to_payload())
        emit(PRESENCE_DIFF, {"joins": joins, "leaves": leaves}, {"channel": topic.partition(":")[0]})
