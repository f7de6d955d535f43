"""Prometheus metrics for one whispr node, fed by the telemetry events of `telemetry.py`.

`Metrics(node)` owns a private `CollectorRegistry` (never the process-global default, so two
instances, e.g. in tests, never share a series) and attaches one telemetry handler. Every series
carries a constant `node` label, added at scrape time, so call sites never pass it.

Contract:
- Label cardinality is bounded by construction; no user id, device id, topic, token or message
  body ever becomes a label value:
  - `channel` is the topic prefix ("user", "conversation", "notification", "phoenix"), else "other";
  - `event`, `vsn`, `status`, close `code`, join-refusal `reason`, supervisor `context`, circuit
    `state` and delivery `path` come from the allow-lists of contract.md, else "other";
  - every other label (refusal reasons, limits, detectors, supervisors, children, breakers,
    dependencies, operations, outcomes) takes the first `FREE_LABEL_CAP` distinct values that
    look like identifiers, then "other". Supervisor `child` ids are cut at the first ":".
- Label children are cached, so a hot-path event costs a dict lookup plus the increment.
- `render()` is synchronous and costs ~15-20 µs per series: call it off the event loop,
  `await trio.to_thread.run_sync(metrics.render)` (the registry is lock-protected).
- `_created` series are disabled process-wide (`prometheus_client.disable_created_metrics()`).
- `whispr_connections_active` counts SOCKET_CONNECTED minus SOCKET_CLOSED: every accepted socket
  must emit exactly one SOCKET_CLOSED.

Families (all prefixed `whispr_`; histograms also expose `_bucket`, `_sum`, `_count`):

| family | type | labels | from |
|---|---|---|---|
| connections_active | gauge | | SOCKET_CONNECTED, SOCKET_CLOSED |
| connections_max | gauge | | `max_connections` (only when given) |
| connections_total | counter | vsn | SOCKET_CONNECTED |
| connections_closed_total | counter | code | SOCKET_CLOSED |
| connection_duration_seconds | histogram | | SOCKET_CLOSED |
| connections_refused_total | counter | status, reason | SOCKET_REFUSED |
| channel_joins_total | counter | channel | CHANNEL_JOINED |
| channel_join_duration_seconds | histogram | channel | CHANNEL_JOINED |
| channel_join_refusals_total | counter | channel, reason | CHANNEL_JOIN_REFUSED |
| channel_leaves_total | counter | channel | CHANNEL_LEFT |
| channel_crashes_total | counter | channel | CHANNEL_CRASHED |
| messages_received_total | counter | channel, event | MESSAGE_RECEIVED |
| messages_sent_total | counter | kind | MESSAGE_SENT (+= count) |
| message_size_bytes | histogram | direction | MESSAGE_RECEIVED, MESSAGE_SENT (one per frame encoded) |
| reply_duration_seconds | histogram | channel, event, status | REPLY_LATENCY |
| delivery_latency_seconds | histogram | path, part (store, pubsub, queue, total) | MESSAGE_DELIVERED |
| outbox_depth_frames | histogram | | OUTBOX_DEPTH |
| slow_consumer_drops_total | counter | reason | SLOW_CONSUMER_DROPPED (+1) |
| slow_consumer_dropped_frames_total | counter | reason | SLOW_CONSUMER_DROPPED (+= dropped) |
| limit_exceeded_total | counter | limit | LIMIT_EXCEEDED |
| abuse_detected_total | counter | detector | ABUSE_DETECTED |
| presence_diffs_total | counter | channel | PRESENCE_DIFF |
| presence_changes_total | counter | channel, change (join, leave) | PRESENCE_DIFF |
| recoveries_total | counter | outcome | RECOVERY |
| recovery_replayed_messages_total | counter | outcome | RECOVERY |
| supervisor_restarts_total | counter | supervisor, child, context | SUPERVISOR_RESTART (not `progress`) |
| circuit_state | gauge (1 for the current state) | breaker, state | CIRCUIT_STATE |
| circuit_transitions_total | counter | breaker, state | CIRCUIT_STATE |
| dependency_call_duration_seconds | histogram | dependency, operation | DEPENDENCY_CALL |
| dependency_calls_total | counter | dependency, operation, outcome | DEPENDENCY_CALL |
| event_loop_lag_seconds | histogram | | LOOP_LAG |
| cluster_nodes | gauge | | NODE_UP, NODE_DOWN (this node counts itself) |
| cluster_node_events_total | counter | event (up, down) | NODE_UP, NODE_DOWN |
| pubsub_resyncs_total | counter | reason | PUBSUB_RESYNC |
| ready | gauge (from the first report on) | | `observe_readiness` |
| draining | gauge (from the first report on) | | `observe_readiness` |
| readiness_check_ok | gauge | check | `observe_readiness` |

Plus prometheus-client's `process_*` families (resident memory, CPU seconds, open fds, start time).

MESSAGE_SENT is read as "one frame of `size` bytes written to `count` sockets" (a broadcast is
encoded once): the message counter grows by `count`, the size histogram by one observation.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable
from typing import Final, Generic, TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric

from whispr.observability import telemetry
from whispr.observability.health import ReadinessReport

__all__ = ["FREE_LABEL_CAP", "OTHER", "Metrics"]

OTHER: Final = "other"
FREE_LABEL_CAP: Final = 32
"""Distinct values a free-form label may take before further ones are counted as "other"."""

CHANNELS: Final = frozenset({"user", "conversation", "notification", "phoenix"})
CLIENT_EVENTS: Final = frozenset(
    {
        "phx_join",
        "phx_leave",
        "heartbeat",
        "ping",
        "sync",
        "ack",
        "send_message",
        "typing_start",
        "typing_stop",
        "message_read",
        "notification_read",
    }
)
VSNS: Final = frozenset({"1.0.0", "2.0.0"})
REPLY_STATUSES: Final = frozenset({"ok", "error"})
SEND_KINDS: Final = frozenset({"reply", "push", "broadcast"})
CLOSE_CODES: Final = frozenset({"1000", "1001", "1005", "1006", "1008", "1009", "1011", "1012", "1013", "3000", "4000"})
HTTP_STATUSES: Final = frozenset({"400", "403", "404", "426", "429", "500", "503"})
JOIN_REFUSALS: Final = frozenset(
    {
        "unauthorized",
        "not_member",
        "unmatched topic",
        "too many channels joined",
        "rate_limit_exceeded",
        "blocked",
        "service_unavailable",
    }
)
SUPERVISOR_CONTEXTS: Final = frozenset({"child_terminated", "start_error", "shutdown_error", "shutdown"})
CIRCUIT_STATES: Final = ("closed", "open", "half_open")
DELIVERY_PATHS: Final = frozenset({"live", "replay"})
DELIVERY_PARTS: Final = ("store", "pubsub", "queue", "total")
RECOVERY_OUTCOMES: Final = frozenset({"recovered", "not_recovered"})

LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
DEPENDENCY_BUCKETS: Final = (0.0005, *LATENCY_BUCKETS)
DURATION_BUCKETS: Final = (1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 43200.0, 86400.0)
SIZE_BUCKETS: Final = (64.0, 256.0, 1024.0, 4096.0, 10000.0, 16384.0, 65536.0)
DEPTH_BUCKETS: Final = (0.0, 1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0)
LAG_BUCKETS: Final = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_ .\-]{0,47}")


def _text(value: object) -> str:
    """A metadata value as text; a missing value (None) is "", which every label maps to "other"."""
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


def _amount(measurements: telemetry.Measurements, key: str, default: float = 0.0) -> float:
    """A measurement as a non-negative float (counters refuse negative increments)."""
    return max(0.0, float(measurements.get(key, default)))


def topic_prefix(channel: object) -> str:
    """The bounded `channel` label of a topic or channel name: "conversation:42" -> "conversation"."""
    prefix = _text(channel).partition(":")[0]
    return prefix if prefix in CHANNELS else OTHER


def allowed(value: object, allow: Collection[str]) -> str:
    """`value` as a label if it is in `allow`, else "other"."""
    text = _text(value)
    return text if text in allow else OTHER


class FreeLabel:
    """A label whose values are not known in advance: the first `cap` identifier-like values, then "other".

    Values that do not look like identifiers (too long, leading digit, ":" "/" "?" "=", or a JWT's
    "eyJ" prefix) are "other" at once, so an id or a secret never becomes a series.
    """

    def __init__(self, cap: int = FREE_LABEL_CAP) -> None:
        self._cap = cap
        self._seen: set[str] = set()

    def __call__(self, value: object) -> str:
        text = _text(value)
        if text in self._seen:
            return text
        if len(self._seen) >= self._cap or text.startswith("eyJ") or not _IDENTIFIER.fullmatch(text):
            return OTHER
        self._seen.add(text)
        return text


M = TypeVar("M", bound=MetricWrapperBase)


class _Family(Generic[M]):
    """A labelled metric with its children cached by label values."""

    def __init__(self, metric: M) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], M] = {}

    def __call__(self, *values: str) -> M:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


class _NodeLabelled:
    """A collector that adds the constant label `node` to every sample of another registry."""

    def __init__(self, inner: CollectorRegistry, node: str) -> None:
        self._inner = inner
        self._node = node

    def collect(self) -> Iterable[Metric]:
        for metric in self._inner.collect():
            metric.samples = [s._replace(labels={**s.labels, "node": self._node}) for s in metric.samples]
            yield metric


Handler = Callable[[telemetry.Measurements, telemetry.Metadata], None]


class Metrics:
    """The Prometheus families of one node, attached to telemetry on construction.

    Args:
        node: this node's name, the value of the constant `node` label.
        max_connections: the node's connection cap, exported as `whispr_connections_max` so an
            alert can compare the active count with it; omitted when None.
        process_metrics: also export prometheus-client's `process_*` families (Linux /proc).
        handler_id: the telemetry handler id; two live instances need distinct ids.

    Raises:
        ValueError: `handler_id` is already attached.
    """

    def __init__(
        self,
        node: str,
        *,
        max_connections: int | None = None,
        process_metrics: bool = True,
        handler_id: str = "whispr.metrics",
    ) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in prometheus-client 0.26
        self.node = node
        self._handler_id = handler_id
        self._inner = CollectorRegistry()
        self.registry = CollectorRegistry()
        self.registry.register(_NodeLabelled(self._inner, node))
        if process_metrics:
            ProcessCollector(registry=self._inner)
        self._build_families()
        if max_connections is not None:
            Gauge("whispr_connections_max", "Connection cap of this node.", registry=self._inner).set(max_connections)
        self._up_nodes: set[str] = {node}
        self._cluster_nodes.set(1)
        self._free: dict[str, FreeLabel] = {}
        self._handlers: dict[str, Handler] = {
            telemetry.SOCKET_CONNECTED: self._socket_connected,
            telemetry.SOCKET_REFUSED: self._socket_refused,
            telemetry.SOCKET_CLOSED: self._socket_closed,
            telemetry.CHANNEL_JOINED: self._channel_joined,
            telemetry.CHANNEL_JOIN_REFUSED: self._channel_join_refused,
            telemetry.CHANNEL_LEFT: self._channel_left,
            telemetry.CHANNEL_CRASHED: self._channel_crashed,
            telemetry.MESSAGE_RECEIVED: self._message_received,
            telemetry.MESSAGE_SENT: self._message_sent,
            telemetry.REPLY_LATENCY: self._reply_latency,
            telemetry.MESSAGE_DELIVERED: self._message_delivered,
            telemetry.OUTBOX_DEPTH: self._outbox_depth,
            telemetry.SLOW_CONSUMER_DROPPED: self._slow_consumer_dropped,
            telemetry.LIMIT_EXCEEDED: self._limit_exceeded,
            telemetry.ABUSE_DETECTED: self._abuse_detected,
            telemetry.PRESENCE_DIFF: self._presence_diff,
            telemetry.RECOVERY: self._recovery,
            telemetry.SUPERVISOR_RESTART: self._supervisor_restart,
            telemetry.CIRCUIT_STATE: self._circuit_state,
            telemetry.DEPENDENCY_CALL: self._dependency_call,
            telemetry.NODE_UP: self._node_up,
            telemetry.NODE_DOWN: self._node_down,
            telemetry.LOOP_LAG: self._loop_lag,
            telemetry.PUBSUB_RESYNC: self._pubsub_resync,
        }
        telemetry.attach(handler_id, self._handlers, self.handle)

    def _build_families(self) -> None:
        r = self._inner

        def counter(name: str, doc: str, *labels: str) -> _Family[Counter]:
            return _Family(Counter(name, doc, labels, registry=r))

        def histogram(name: str, doc: str, buckets: tuple[float, ...], *labels: str) -> _Family[Histogram]:
            return _Family(Histogram(name, doc, labels, registry=r, buckets=buckets))

        def gauge(name: str, doc: str, *labels: str) -> _Family[Gauge]:
            return _Family(Gauge(name, doc, labels, registry=r))

        self._connections_active = Gauge("whispr_connections_active", "Open client sockets.", registry=r)
        self._connections = counter("whispr_connections", "Accepted client sockets.", "vsn")
        self._closed = counter("whispr_connections_closed", "Closed client sockets by close code.", "code")
        self._connection_duration = Histogram(
            "whispr_connection_duration_seconds", "Lifetime of closed sockets.", buckets=DURATION_BUCKETS, registry=r
        )
        self._refused = counter(
            "whispr_connections_refused", "Upgrades refused, by HTTP status and reason.", "status", "reason"
        )
        self._joins = counter("whispr_channel_joins", "Channel joins accepted.", "channel")
        self._join_duration = histogram(
            "whispr_channel_join_duration_seconds", "Time to answer a join.", LATENCY_BUCKETS, "channel"
        )
        self._join_refusals = counter("whispr_channel_join_refusals", "Channel joins refused.", "channel", "reason")
        self._leaves = counter("whispr_channel_leaves", "Channels left (leave, close or crash).", "channel")
        self._crashes = counter("whispr_channel_crashes", "Channel callbacks that raised.", "channel")
        self._received = counter("whispr_messages_received", "Client frames received.", "channel", "event")
        self._sent = counter("whispr_messages_sent", "Frames written to client sockets.", "kind")
        self._size = histogram("whispr_message_size_bytes", "Frame size.", SIZE_BUCKETS, "direction")
        self._reply = histogram(
            "whispr_reply_duration_seconds",
            "Client push to reply.",
            LATENCY_BUCKETS,
            "channel",
            "event",
            "status",
        )
        self._delivery = histogram(
            "whispr_delivery_latency_seconds",
            "End-to-end delivery latency and its parts (store, pubsub, queue wait, total).",
            LATENCY_BUCKETS,
            "path",
            "part",
        )
        self._outbox = Histogram(
            "whispr_outbox_depth_frames", "Sampled outbox depth per socket.", buckets=DEPTH_BUCKETS, registry=r
        )
        self._slow = counter("whispr_slow_consumer_drops", "Slow-consumer drop events.", "reason")
        self._slow_frames = counter(
            "whispr_slow_consumer_dropped_frames", "Frames dropped for slow consumers.", "reason"
        )
        self._limits = counter("whispr_limit_exceeded", "Requests refused by a limit.", "limit")
        self._abuse = counter("whispr_abuse_detected", "Abuse detections.", "detector")
        self._presence_diffs = counter("whispr_presence_diffs", "Presence diffs broadcast.", "channel")
        self._presence_changes = counter("whispr_presence_changes", "Presence joins and leaves.", "channel", "change")
        self._recoveries = counter("whispr_recoveries", "Rejoin recoveries by outcome.", "outcome")
        self._replayed = counter("whispr_recovery_replayed_messages", "Messages replayed on rejoin.", "outcome")
        self._restarts = counter(
            "whispr_supervisor_restarts", "Supervisor reports, by context.", "supervisor", "child", "context"
        )
        self._circuit = gauge("whispr_circuit_state", "1 for the breaker's current state.", "breaker", "state")
        self._circuit_transitions = counter(
            "whispr_circuit_transitions", "Circuit-breaker state changes.", "breaker", "state"
        )
        self._dependency_duration = histogram(
            "whispr_dependency_call_duration_seconds",
            "Redis/PostgreSQL call latency.",
            DEPENDENCY_BUCKETS,
            "dependency",
            "operation",
        )
        self._dependency_calls = counter(
            "whispr_dependency_calls", "Redis/PostgreSQL calls by outcome.", "dependency", "operation", "outcome"
        )
        self._loop_lag_hist = Histogram(
            "whispr_event_loop_lag_seconds", "Event-loop wake-up lateness.", buckets=LAG_BUCKETS, registry=r
        )
        self._cluster_nodes = Gauge("whispr_cluster_nodes", "Nodes this node sees up, itself included.", registry=r)
        self._node_events = counter("whispr_cluster_node_events", "Membership changes seen.", "event")
        self._resyncs = counter(
            "whispr_pubsub_resyncs", "Feed resyncs from the store after a possible loss, by trigger.", "reason"
        )
        self._check_ok = gauge("whispr_readiness_check_ok", "1 when the readiness check passed.", "check")
        self._readiness: tuple[Gauge, Gauge] | None = None

    def handle(self, event: str, measurements: telemetry.Measurements, metadata: telemetry.Metadata) -> None:
        """The telemetry handler: update the families for one event."""
        self._handlers[event](measurements, metadata)

    def render(self) -> tuple[bytes, str]:
        """The text exposition and its Content-Type. Blocking: run it in a thread."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def detach(self) -> None:
        """Stop listening to telemetry. The families keep their values."""
        telemetry.detach(self._handler_id)

    def observe_readiness(self, report: ReadinessReport) -> None:
        """Export a readiness evaluation (pass as `Readiness(on_report=...)`). Check names are the app's own.

        `whispr_ready` and `whispr_draining` appear with the first report, so a node that is never
        probed does not look unready.
        """
        if self._readiness is None:
            self._readiness = (
                Gauge("whispr_ready", "1 when the last /ready answered 200.", registry=self._inner),
                Gauge("whispr_draining", "1 while the node drains.", registry=self._inner),
            )
        ready, draining = self._readiness
        ready.set(report.ready)
        draining.set(report.draining)
        for check in report.checks:
            self._check_ok(check.name).set(check.ok)

    def _label(self, name: str, value: object) -> str:
        free = self._free.get(name)
        if free is None:
            free = self._free[name] = FreeLabel()
        return free(value)

    def _socket_connected(self, m: telemetry.Measurements, md: telemetry.Metadata) -> None:
        self._connections_active.inc()
        self._connections(allowed(md.get("vsn"), VSNS)).inc()

    def _socket_refused(self, m: telemetry.Measurements, md: telemetry.Metadata) -> None:
        self._refused(allowed(md.get("status"), HTTP_STATUSES), self._label("refusal", md.get("reason"))).inc()

    def _socket_closed(self, m: telemetry.Measurements, md: telemetry.Metadata) -> None:
        self._connections_active.dec()
        self._closed(allowed(md.get("code"), CLOSE_CODES)).inc()
        self._connection_duration.observe(_amount(m, "duration"))

    def _channel_joined(self, m: telemetry.Measurements, md: telemetry.Metadata) -> None:
        channel = topic_prefix(md.get("channel"))
        self._joins(channel).inc()
        self._join_duration(channel).observe(_amount(m, "duration"))

    def _channel_join_refused(self, m: telemetry.Measurements, md: telemetry.Metadata) -> None:
        self._join_refusals(topic_prefix(md.get("channel")), allowed(md.get("reason"), JOIN_REFUSALS)).inc()

    def _channel_left(self, m: telemetry.Measurements, md: telemetry.Metadata) -> None:
        self._leaves(topic_prefix(md.get("channel"))).inc()

    def _channel_crashed(self, m: telemetry.Measurements, md: telemetry.Metadata) -> None:
        self._crashes(topic_prefix(md.get("channel"))).inc()

    def _message_received(self, m: telemetry.Measurements, md: telemetry.Metadata) -> None:
        self._received(topic_prefix(md.get("channel")), allowed(md.get("event"), CLIENT_EVENTS)).inc()
        self._size("in").observe(_amount(m, "size"))

    def _message_sent(self, m: telemetry.Measurements, md: telemetry.Metadata) -> None:
        self._sent(allowed(md.get("kind"), SEND_KINDS)).inc(_amount(m, "count", 1.0))
        self._size("out").observe(_amount(m, "size"))

    def _reply_latency(self, m: telemetry.Measurements, md: telemetry.Metadata) -> None:
        self._reply(
            topic_prefix(md.get("channel")),
            allowed(md.get("event"), CLIENT_EVENTS),
            allowed(md.get("status"), REPLY_STATUSES),
        ).observe(_amount(m, "duration"))

    def _message_delivered(self, m: telemetry.Measurements, md: telemetry.Metadata) -> None:
        path = allowed(md.get("path"), DELIVERY_PATHS)
        for part in DELIVERY_PARTS:
            if part in m:
                self._delivery(path, part).observe(_amount(m, part))

    def _outbox_depth(self, m: telemetry.Measurements, md: telemetry.Metadata) -> None:
        self._outbox.observe(_amount(m, "depth"))

    def _slow_consumer_dropped(self, m: telemetry.Measurements, md: telemetry.Metadata) -> None:
        reason = self._label("slow_consumer", md.get("reason"))
        self._slow(reason).inc()
        self._slow_frames(reason).inc(_amount(m, "dropped"))

    def _limit_exceeded(self, m: telemetry.Measurements, md: telemetry.Metadata) -> None:
        self._limits(self._label("limit", md.get("limit"))).inc()

    def _abuse_detected(self, m: telemetry.Measurements, md: telemetry.Metadata) -> None:
        self._abuse(self._label("detector", md.get("detector"))).inc()

    def _presence_diff(self, m: telemetry.Measurements, md: telemetry.Metadata) -> None:
        channel = topic_prefix(md.get("channel"))
        self._presence_diffs(channel).inc()
        self._presence_changes(channel, "join").inc(_amount(m, "joins"))
        self._presence_changes(channel, "leave").inc(_amount(m, "leaves"))

    def _recovery(self, m: telemetry.Measurements, md: telemetry.Metadata) -> None:
        outcome = allowed(md.get("outcome"), RECOVERY_OUTCOMES)
        self._recoveries(outcome).inc()
        self._replayed(outcome).inc(_amount(m, "replayed"))

    def _supervisor_restart(self, m: telemetry.Measurements, md: telemetry.Metadata) -> None:
        if md.get("context") == "progress":
            return
        self._restarts(
            self._label("supervisor", md.get("supervisor")),
            self._label("child", _text(md.get("child")).partition(":")[0]),
            allowed(md.get("context"), SUPERVISOR_CONTEXTS),
        ).inc()

    def _circuit_state(self, m: telemetry.Measurements, md: telemetry.Metadata) -> None:
        breaker = self._label("breaker", md.get("breaker"))
        state = allowed(md.get("state"), CIRCUIT_STATES)
        for known in CIRCUIT_STATES:
            self._circuit(breaker, known).set(known == state)
        self._circuit_transitions(breaker, state).inc()

    def _dependency_call(self, m: telemetry.Measurements, md: telemetry.Metadata) -> None:
        dependency = self._label("dependency", md.get("dependency"))
        operation = self._label("operation", md.get("operation"))
        self._dependency_duration(dependency, operation).observe(_amount(m, "duration"))
        self._dependency_calls(dependency, operation, self._label("outcome", md.get("outcome"))).inc()

    def _node_up(self, m: telemetry.Measurements, md: telemetry.Metadata) -> None:
        self._up_nodes.add(_text(md.get("node")))
        self._cluster_nodes.set(len(self._up_nodes))
        self._node_events("up").inc()

    def _node_down(self, m: telemetry.Measurements, md: telemetry.Metadata) -> None:
        self._up_nodes.discard(_text(md.get("node")))
        self._up_nodes.add(self.node)
        self._cluster_nodes.set(len(self._up_nodes))
        self._node_events("down").inc()

    def _loop_lag(self, m: telemetry.Measurements, md: telemetry.Metadata) -> None:
        self._loop_lag_hist.observe(_amount(m, "lag"))

    def _pubsub_resync(self, m: telemetry.Measurements, md: telemetry.Metadata) -> None:
        self._resyncs(self._label("resync", md.get("reason"))).inc()
