"""`ClusterManager`: this node's membership I/O. Gossips heartbeats through a stream, feeds `Membership`.

Rules (style.md §3 items 7 and 14; reliability.md §1.2, D1–D3, E2, E3; dependencies.md §2):
- Joining: append a first heartbeat at once, then read the stream from `down_after` before that
  entry's id (anything older belongs to nodes that are down anyway) up to and including it. Once
  that entry is read back, the view holds every node that was up when we joined: the manager has
  *joined* and `run()` calls `task_status.started(self)`. Entries read during that catch-up count as
  heard when they were written (their age is measured on the stream server's clock, from their ids),
  so a node that fell silent 10 s ago is not taken for alive.
- Then three loops: heartbeats every `heartbeat_interval` (the first one after a random fraction of
  it, each later one 0–10 % early, so nodes started together do not beat in lockstep); the reader
  pump, which resumes from the explicit last id after any failure; and the down check, which wakes
  at `Membership.next_deadline()` (at least once per heartbeat interval).
- Redis down is not a crash: every failure marks the dependency unhealthy (`healthy`, for /ready),
  is counted and logged once per outage, and is retried (heartbeats on their next tick, the pump
  with backoff up to one heartbeat interval). If Redis is unreachable at boot, `run()` reports
  started at the first failure, unjoined and unhealthy, so the node still serves local traffic
  (reliability.md D3), and joins as soon as Redis answers. While blind, the node sees the others go
  DOWN after `down_after` (it cannot tell a dead node from a dead link, like a netsplit), and UP
  again, same incarnation, once it hears them.
- Stopping: a graceful stop (`stop()`, or the supervisor's shutdown request through
  `supervisors.trap_shutdown()`) appends a `leave`, so the others permdown this node at once.
  Cancellation appends nothing: to the others it is a crash (DOWN after `down_after`, PERMDOWN after
  `permdown_after`).
- One instance is one boot: its incarnation is fixed at construction. A supervisor restarting
  `run()` on the same instance keeps the view and the subscriptions, so a node that died while this
  one was restarting still gets its NodeDown.

Telemetry: NODE_UP {} {node} on every `NodeUp`; NODE_DOWN {} {node} when an UP node stops being up
(`NodeDown`, or `NodePermdown` straight from UP); DEPENDENCY_CALL {duration} {dependency="redis",
operation="xadd", outcome ok|error} for every append. Logs on `whispr.cluster`: INFO per node event
and on recovery, WARNING once per outage and once per kind of unreadable entry, ERROR when another
process writes heartbeats under this node id with a newer incarnation.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial

import trio

from supervisors import trap_shutdown
from whispr.cluster.membership import (
    Entry,
    EntryError,
    Kind,
    Membership,
    NodeDown,
    NodeEvent,
    NodeUp,
    Replica,
    Status,
    Timeouts,
    UnknownVersion,
    decode_entry,
    encode_entry,
    new_incarnation,
)
from whispr.cluster.stream import ClusterStream, ClusterUnavailable, PumpItem, Record, parse_id
from whispr.observability.telemetry import DEPENDENCY_CALL, NODE_DOWN, NODE_UP, emit

__all__ = [
    "DEFAULT_DOWN_AFTER",
    "DEFAULT_HEARTBEAT_INTERVAL",
    "DEFAULT_MAXLEN",
    "DEFAULT_PERMDOWN_AFTER",
    "DEFAULT_STREAM",
    "ClusterManager",
    "ClusterStatistics",
]

DEFAULT_HEARTBEAT_INTERVAL = 1.5
"""Seconds between heartbeats: phoenix_pubsub's `broadcast_period`. 0.7 heartbeats/s/node of XADD."""
DEFAULT_DOWN_AFTER = 15.0
"""Ten missed heartbeats (phoenix_pubsub's `max_silent_periods`). Short enough that a dead node's
presences are gone well within the 15 s in which its clients must have reconnected elsewhere
(reliability.md E2), long enough to ride out a GC pause, a Redis failover or a few slow event-loop
ticks without flapping."""
DEFAULT_PERMDOWN_AFTER = 1200.0
"""20 minutes: phoenix_pubsub's `permdown_period`. A DOWN node keeps its identity this long, so a
node back from a long netsplit is the same replica; its presences are already hidden while DOWN."""
DEFAULT_STREAM = "whispr:cluster"
DEFAULT_MAXLEN = 10_000
"""Entries kept in the stream: catch-up reads `down_after` of history, i.e. 10 entries per node at
the defaults, so 10,000 covers a thousand nodes with room to spare (about 1.5 MB in Redis)."""

_JITTER = 0.1  # each heartbeat after the first comes up to 10 % early, never late
_FIRST_BACKOFF = 0.05

_log = logging.getLogger("whispr.cluster")


@dataclass(frozen=True, slots=True)
class ClusterStatistics:
    """A snapshot from `ClusterManager.statistics()`.

    Attributes:
        node_id, incarnation: this node's replica.
        joined: the current run has read its own first heartbeat back.
        healthy: the latest append and the latest read both succeeded (see `ClusterManager.healthy`).
        up, down: other nodes announced UP, DOWN.
        heartbeats_sent, heartbeat_failures: appends (heartbeats and leaves) that succeeded, failed.
        read_failures: failed stream reads.
        entries_read: stream entries read, readable or not.
        unknown_version_skipped: entries skipped for a `v` other than `ENTRY_VERSION`.
        malformed_skipped: entries of the right `v` skipped as unreadable.
    """

    node_id: str
    incarnation: int
    joined: bool
    healthy: bool
    up: int
    down: int
    heartbeats_sent: int
    heartbeat_failures: int
    read_failures: int
    entries_read: int
    unknown_version_skipped: int
    malformed_skipped: int


class ClusterManager:
    """This node's membership in the cluster: a supervised service. Not thread-safe (one Trio run).

    Args:
        redis: a `redis://` URL (opened with `whispr.adapters.redis_streams.open_redis_stream`,
            which needs `whispr.adapters.aio.open_bridge()` around the tree), or a ready
            `ClusterStream` (then `stream` and `maxlen` are ignored).
        node_id: this node's name in the cluster; unique per running process.
        heartbeat_interval, down_after, permdown_after: the timing (`membership.Timeouts`).
        stream: the stream key.
        maxlen: the stream's approximate length cap.
        meta: a small JSON object published in every heartbeat (`Replica.meta` on the others).

    Raises:
        ValueError: bad timing (plain-English reason), `maxlen` < 1, or an empty `node_id`.
    """

    def __init__(
        self,
        redis: str | ClusterStream,
        node_id: str,
        *,
        heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL,
        down_after: float = DEFAULT_DOWN_AFTER,
        permdown_after: float = DEFAULT_PERMDOWN_AFTER,
        stream: str = DEFAULT_STREAM,
        maxlen: int = DEFAULT_MAXLEN,
        meta: Mapping[str, object] | None = None,
    ) -> None:
        if not node_id:
            raise ValueError("node_id must not be empty")
        if maxlen < 1:
            raise ValueError(f"maxlen must be at least 1 entry, got {maxlen!r}")
        self.timeouts = Timeouts(heartbeat_interval, down_after, permdown_after)
        self.node_id = node_id
        self.incarnation = new_incarnation()
        self._redis = redis
        self._stream_name = stream
        self._maxlen = maxlen
        self._meta = dict(meta or {})
        self._membership = Membership(self.timeouts)
        # Invariant: every open subscription; one whose receiver is closed is dropped on the next event.
        self._subscribers: list[trio.MemorySendChannel[NodeEvent]] = []
        self._up: set[str] = set()  # nodes whose NODE_UP telemetry has no NODE_DOWN yet
        self._changed = trio.Event()  # set and replaced on every observable change (wait_until)
        self._running = False
        self._stop = trio.Event()  # per run
        self._ready = trio.Event()  # per run: joined, or failed before joining
        self._joined = False
        self._write_ok = False
        self._read_ok = False
        self._warned: set[str] = set()
        self._heartbeats_sent = 0
        self._heartbeat_failures = 0
        self._read_failures = 0
        self._entries_read = 0
        self._unknown_version = 0
        self._malformed = 0

    # --- public API ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[ClusterManager] = trio.TASK_STATUS_IGNORED) -> None:
        """Join the cluster and gossip until stopped. Blocks until then.

        Calls `task_status.started(self)` once joined (the view then holds every node that was up
        when this one joined), or at the first Redis failure before that (see the module rules).

        Resource handling: opens the stream (when given a URL) and closes it on exit; subscriptions
        stay open across runs.

        Error handling: Redis errors never escape; they flip `healthy` and are retried. Returns
        normally after a graceful stop (having appended a `leave`, best effort, for at most
        `down_after` seconds). Cancellation propagates and appends nothing.

        Raises:
            RuntimeError: this instance is already running.
        """
        if self._running:
            raise RuntimeError(f"ClusterManager {self.node_id!r} is already running")
        self._running = True
        self._stop = trio.Event()
        self._ready = trio.Event()
        self._joined = self._write_ok = self._read_ok = False
        try:
            try:
                supervisor_stop: trio.Event | None = trap_shutdown()
            except RuntimeError:  # not a supervised child: stop() is the only graceful way out
                supervisor_stop = None
            async with self._open() as stream:
                async with trio.open_nursery() as nursery:
                    if supervisor_stop is not None:
                        nursery.start_soon(self._relay_stop, supervisor_stop)
                    nursery.start_soon(self._cancel_on_stop, nursery.cancel_scope)
                    nursery.start_soon(self._serve, stream)
                    await self._ready.wait()
                    task_status.started(self)
                with trio.move_on_after(self.timeouts.down_after):
                    await self._append(stream, Kind.LEAVE)
        except ClusterUnavailable as exc:
            _log.warning("node %s left without its leave entry (%s)", self.node_id, exc)
        finally:
            self._running = False
            self._joined = False
            self._notify()

    def stop(self) -> None:
        """Ask `run()` to leave gracefully (append a `leave`, then return). Not blocking; idempotent."""
        self._stop.set()

    def members(self) -> dict[str, Replica]:
        """The other nodes, UP or DOWN, by node id, as last announced to subscribers (not this node)."""
        return self._membership.announced()

    def subscribe(self) -> trio.MemoryReceiveChannel[NodeEvent]:
        """A channel of every node event from now on, starting with a `NodeUp` per node already UP.

        Not blocking. The buffer is unbounded (node events are rare); read it promptly, and close it
        to unsubscribe. It stays open across restarts of `run()`. Events about a node never seen
        UP on this channel (e.g. a `NodePermdown` of a DOWN node) may arrive: ignore them.
        """
        send, receive = trio.open_memory_channel[NodeEvent](math.inf)
        for node, replica in self._membership.announced().items():
            if replica.status is Status.UP:
                send.send_nowait(NodeUp(node, replica.incarnation))
        self._subscribers.append(send)
        return receive

    @property
    def healthy(self) -> bool:
        """True while joined and the latest append and read both succeeded: the readiness check."""
        return self._joined and self._write_ok and self._read_ok

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Block until `predicate()` is true, re-checking it after every change of membership,
        health or statistics. Cancellable; returns at once if it is already true."""
        while not predicate():
            await self._changed.wait()

    def statistics(self) -> ClusterStatistics:
        """Counters and state, for metrics and tests. Not blocking."""
        announced = self._membership.announced().values()
        return ClusterStatistics(
            node_id=self.node_id,
            incarnation=self.incarnation,
            joined=self._joined,
            healthy=self.healthy,
            up=sum(r.status is Status.UP for r in announced),
            down=sum(r.status is Status.DOWN for r in announced),
            heartbeats_sent=self._heartbeats_sent,
            heartbeat_failures=self._heartbeat_failures,
            read_failures=self._read_failures,
            entries_read=self._entries_read,
            unknown_version_skipped=self._unknown_version,
            malformed_skipped=self._malformed,
        )

    # --- the run --------------------------------------------------------------------------------

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[ClusterStream]:
        if isinstance(self._redis, str):
            # Imported here: the adapter imports whispr.cluster.stream, so a top-level import would cycle.
            from whispr.adapters.redis_streams import open_redis_stream

            async with open_redis_stream(self._redis, self._stream_name, maxlen=self._maxlen) as stream:
                yield stream
        else:
            yield self._redis

    async def _relay_stop(self, supervisor_stop: trio.Event) -> None:
        await supervisor_stop.wait()
        self.stop()

    async def _cancel_on_stop(self, scope: trio.CancelScope) -> None:
        await self._stop.wait()
        scope.cancel()

    async def _serve(self, stream: ClusterStream) -> None:
        first_id, first_at = await self._first_heartbeat(stream)
        interval = self.timeouts.heartbeat_interval
        ms, _ = parse_id(first_id)
        after = f"{max(0, ms - math.ceil(self.timeouts.down_after * 1000))}-0"
        send, receive = trio.open_memory_channel[PumpItem](16)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(stream.pump, after, send, max_backoff=interval))
            nursery.start_soon(self._read, receive, parse_id(first_id), first_at)
            await self._ready.wait()
            nursery.start_soon(self._heartbeats, stream, first_at)
            nursery.start_soon(self._down_checks)

    async def _first_heartbeat(self, stream: ClusterStream) -> tuple[str, float]:
        backoff = _FIRST_BACKOFF
        while True:
            try:
                entry_id = await self._append(stream, Kind.HEARTBEAT)
            except ClusterUnavailable:
                self._ready.set()  # serve unjoined rather than hold the boot up (module rules)
                await trio.sleep(backoff)
                backoff = min(backoff * 2, self.timeouts.heartbeat_interval)
            else:
                return entry_id, trio.current_time()

    async def _heartbeats(self, stream: ClusterStream, last_at: float) -> None:
        interval = self.timeouts.heartbeat_interval
        next_at = last_at + random.uniform(0, interval)
        while True:
            await trio.sleep_until(next_at)
            next_at = trio.current_time() + interval * (1 - random.uniform(0, _JITTER))
            with contextlib.suppress(ClusterUnavailable):  # counted and logged; the next tick retries
                await self._append(stream, Kind.HEARTBEAT)

    async def _down_checks(self) -> None:
        while True:
            await trio.sleep_until(
                min(self._membership.next_deadline(), trio.current_time() + self.timeouts.heartbeat_interval)
            )
            self._publish(self._membership.tick(trio.current_time()))

    async def _read(
        self, receive: trio.MemoryReceiveChannel[PumpItem], first: tuple[int, int], first_at: float
    ) -> None:
        async with receive:
            async for item in receive:
                if isinstance(item, ClusterUnavailable):
                    self._read_failures += 1
                    self._set_health(read_ok=False, error=item)
                    self._ready.set()
                else:
                    self._set_health(read_ok=True)
                    self._apply(item, first, first_at)
                self._notify()

    async def _append(self, stream: ClusterStream, kind: Kind) -> str:
        entry = Entry(self.node_id, self.incarnation, kind, time.time(), self._meta)
        started = trio.current_time()
        try:
            entry_id = await stream.append(encode_entry(entry))
        except ClusterUnavailable as exc:
            self._heartbeat_failures += 1
            self._emit_call(started, "error")
            self._set_health(write_ok=False, error=exc)
            self._notify()
            raise
        self._heartbeats_sent += 1
        self._emit_call(started, "ok")
        self._set_health(write_ok=True)
        self._notify()
        return entry_id

    # --- feeding the pure state -------------------------------------------------------------------

    def _apply(self, records: Sequence[Record], first: tuple[int, int], first_at: float) -> None:
        now = trio.current_time()
        observations: list[tuple[Entry, float]] = []
        for record in records:
            self._entries_read += 1
            try:
                entry = decode_entry(record.fields)
            except UnknownVersion:
                self._unknown_version += 1
                version = record.fields.get("v")
                self._warn_once(f"v={version!r}", "skipped stream entries of unknown version %r (counted)", version)
                continue
            except EntryError as exc:
                self._malformed += 1
                self._warn_once("malformed", "skipped a malformed stream entry (counted): %s", exc)
                continue
            key = parse_id(record.id)
            # History (catch-up) counts as heard when written, by the stream server's clock.
            heard_at = min(now, first_at - (first[0] - key[0]) / 1000) if key <= first else now
            if entry.node == self.node_id:
                self._own_entry(entry, key >= first)
                continue
            observations.append((entry, heard_at))
        self._publish(self._membership.merge(observations, now))

    def _own_entry(self, entry: Entry, live: bool) -> None:
        if entry.incarnation == self.incarnation and live and not self._joined:
            self._joined = True
            self._ready.set()
            _log.info("node %s joined the cluster (incarnation %d)", self.node_id, self.incarnation)
        elif entry.incarnation > self.incarnation and live:
            self._warn_once(
                "duplicate",
                "another process writes heartbeats as node %s (incarnation %d)",
                self.node_id,
                entry.incarnation,
            )

    def _publish(self, events: list[NodeEvent]) -> None:
        if not events:
            return
        for event in events:
            if isinstance(event, NodeUp):
                _log.info("node %s is up (incarnation %d)", event.node, event.incarnation)
                self._up.add(event.node)
                emit(NODE_UP, metadata={"node": event.node})
            else:
                if isinstance(event, NodeDown):
                    _log.info("node %s is down (incarnation %d)", event.node, event.incarnation)
                else:
                    reason = event.reason.value
                    _log.info("node %s is permdown (incarnation %d, %s)", event.node, event.incarnation, reason)
                if event.node in self._up:
                    self._up.discard(event.node)
                    emit(NODE_DOWN, metadata={"node": event.node})
            for send in list(self._subscribers):
                try:
                    send.send_nowait(event)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self._subscribers.remove(send)
        self._notify()

    # --- health and bookkeeping ---------------------------------------------------------------------

    def _set_health(
        self, *, write_ok: bool | None = None, read_ok: bool | None = None, error: Exception | None = None
    ) -> None:
        was = self._write_ok and self._read_ok
        if write_ok is not None:
            self._write_ok = write_ok
        if read_ok is not None:
            self._read_ok = read_ok
        now = self._write_ok and self._read_ok
        if was and not now:
            _log.warning("cluster stream unavailable on node %s (%s); retrying", self.node_id, error)
        elif now and not was:
            _log.info("cluster stream reachable from node %s", self.node_id)

    def _emit_call(self, started: float, outcome: str) -> None:
        emit(
            DEPENDENCY_CALL,
            {"duration": trio.current_time() - started},
            {"dependency": "redis", "operation": "xadd", "outcome": outcome},
        )

    def _warn_once(self, key: str, message: str, *args: object) -> None:
        # The first of a kind is a WARNING (ERROR for a duplicate node id); repeats go to DEBUG.
        if key in self._warned:
            _log.debug(message, *args)
            return
        self._warned.add(key)
        _log.log(logging.ERROR if key == "duplicate" else logging.WARNING, message, *args)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()
