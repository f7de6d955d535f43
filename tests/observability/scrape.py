"""Helpers to read a `Metrics.render()` text exposition in tests, and one emit of every event."""

from __future__ import annotations

import re

from whispr.observability import telemetry

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample line of an exposition: (name, labels) -> value."""
    samples: Samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        assert match, f"unparsable sample line {line!r}"
        name, labels, value = match.groups()
        samples[(name, frozenset(_LABEL.findall(labels or "")))] = float(value)
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The value of the one sample `name` whose labels include `labels`."""
    found = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls]
    assert len(found) == 1, f"{name}{labels}: expected one sample, found {len(found)}"
    return found[0]


def emit_every_event() -> None:
    """Emit each telemetry event once, with realistic measurements and metadata."""
    e = telemetry.emit
    e(telemetry.SOCKET_CONNECTED, {}, {"transport": "websocket", "vsn": "2.0.0"})
    e(telemetry.SOCKET_REFUSED, {}, {"status": 429, "reason": "ip_connection_cap"})
    e(telemetry.SOCKET_CLOSED, {"duration": 42.0}, {"code": 1013})
    e(telemetry.CHANNEL_JOINED, {"duration": 0.004}, {"channel": "conversation:c1"})
    e(telemetry.CHANNEL_JOIN_REFUSED, {}, {"channel": "conversation:c2", "reason": "not_member"})
    e(telemetry.CHANNEL_LEFT, {}, {"channel": "conversation:c1"})
    e(telemetry.CHANNEL_CRASHED, {}, {"channel": "user:u1"})
    e(telemetry.MESSAGE_RECEIVED, {"size": 300.0}, {"channel": "conversation:c1", "event": "send_message"})
    e(telemetry.MESSAGE_SENT, {"size": 500.0, "count": 3.0}, {"kind": "broadcast"})
    e(
        telemetry.REPLY_LATENCY,
        {"duration": 0.02},
        {"channel": "conversation:c1", "event": "send_message", "status": "ok"},
    )
    e(
        telemetry.MESSAGE_DELIVERED,
        {"store": 0.003, "pubsub": 0.002, "queue": 0.001, "total": 0.006},
        {"path": "live"},
    )
    e(telemetry.OUTBOX_DEPTH, {"depth": 7.0})
    e(telemetry.SLOW_CONSUMER_DROPPED, {"dropped": 12.0}, {"reason": "overflow"})
    e(telemetry.LIMIT_EXCEEDED, {}, {"limit": "messages_per_user"})
    e(telemetry.ABUSE_DETECTED, {}, {"detector": "spam"})
    e(telemetry.PRESENCE_DIFF, {"joins": 2.0, "leaves": 1.0}, {"channel": "conversation:c1"})
    e(telemetry.RECOVERY, {"replayed": 5.0}, {"outcome": "recovered"})
    e(telemetry.SUPERVISOR_RESTART, {}, {"supervisor": "root", "child": "pubsub", "context": "child_terminated"})
    e(telemetry.CIRCUIT_STATE, {}, {"breaker": "redis", "state": "open"})
    e(telemetry.DEPENDENCY_CALL, {"duration": 0.0015}, {"dependency": "redis", "operation": "publish", "outcome": "ok"})
    e(telemetry.NODE_UP, {}, {"node": "n2"})
    e(telemetry.NODE_DOWN, {}, {"node": "n3"})
    e(telemetry.LOOP_LAG, {"lag": 0.003})
    e(telemetry.PUBSUB_RESYNC, {"feeds": 4.0}, {"reason": "resubscribe"})
