"""Named telemetry events, emitted by the code and subscribed to by metrics and logs.

The Phoenix way (`:telemetry.execute/3`): code that does something calls
`emit(EVENT, measurements, metadata)`; `whispr/observability/metrics.py` and the log handlers
`attach()` to the events they care about. Protocol, gateway and channel code never import
prometheus_client, so they stay testable and cheap.

Contract:
- `emit` is synchronous, never blocks and never raises: a handler that raises is detached and
  the failure is logged once on logger `whispr.telemetry` (as `:telemetry` does).
- With no handler attached for an event, `emit` costs one dict lookup (it sits on hot paths).
- Measurements are numbers (durations in seconds, sizes in bytes, counts). Metadata values must
  have bounded cardinality if a metrics handler turns them into labels: never put a token, a
  message body or a password in metadata.

Events (name: measurements; metadata):

| event | measurements | metadata |
|---|---|---|
| SOCKET_CONNECTED | {} | {transport, vsn} |
| SOCKET_REFUSED | {} | {status, reason} |
| SOCKET_CLOSED | {duration} | {code} |
| CHANNEL_JOINED | {duration} | {channel} |
| CHANNEL_JOIN_REFUSED | {} | {channel, reason} |
| CHANNEL_LEFT | {} | {channel} |
| CHANNEL_CRASHED | {} | {channel} |
| MESSAGE_RECEIVED | {size} | {channel, event} |
| MESSAGE_SENT | {size, count} | {kind} (reply, push, broadcast) |
| REPLY_LATENCY | {duration} | {channel, event, status} |
| MESSAGE_DELIVERED | {store, pubsub, queue, total} | {path} (live, replay) |
| OUTBOX_DEPTH | {depth} | {} |
| SLOW_CONSUMER_DROPPED | {dropped} | {reason} |
| LIMIT_EXCEEDED | {} | {limit} |
| ABUSE_DETECTED | {} | {detector} |
| PRESENCE_DIFF | {joins, leaves} | {channel} |
| RECOVERY | {replayed} | {outcome} (recovered, not_recovered) |
| SUPERVISOR_RESTART | {} | {supervisor, child, context} |
| CIRCUIT_STATE | {} | {breaker, state} |
| DEPENDENCY_CALL | {duration} | {dependency, operation, outcome} |
| NODE_UP / NODE_DOWN | {} | {node} |
| LOOP_LAG | {lag} | {} |
| PUBSUB_RESYNC | {feeds} | {reason} (subscribe, resubscribe, overflow, peer_request, heartbeat_timeout, degraded, degraded_poll, recovered) |
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping

Measurements = Mapping[str, float]
Metadata = Mapping[str, object]
Handler = Callable[[str, Measurements, Metadata], None]

SOCKET_CONNECTED = "socket.connected"
SOCKET_REFUSED = "socket.refused"
SOCKET_CLOSED = "socket.closed"
CHANNEL_JOINED = "channel.joined"
CHANNEL_JOIN_REFUSED = "channel.join_refused"
CHANNEL_LEFT = "channel.left"
CHANNEL_CRASHED = "channel.crashed"
MESSAGE_RECEIVED = "message.received"
MESSAGE_SENT = "message.sent"
REPLY_LATENCY = "reply.latency"
MESSAGE_DELIVERED = "message.delivered"
OUTBOX_DEPTH = "outbox.depth"
SLOW_CONSUMER_DROPPED = "slow_consumer.dropped"
LIMIT_EXCEEDED = "limit.exceeded"
ABUSE_DETECTED = "abuse.detected"
PRESENCE_DIFF = "presence.diff"
RECOVERY = "recovery"
SUPERVISOR_RESTART = "supervisor.restart"
CIRCUIT_STATE = "circuit.state"
DEPENDENCY_CALL = "dependency.call"
NODE_UP = "node.up"
NODE_DOWN = "node.down"
LOOP_LAG = "loop.lag"
PUBSUB_RESYNC = "pubsub.resync"

_EMPTY: Mapping[str, float] = {}
_log = logging.getLogger("whispr.telemetry")
# event name -> list of (handler id, handler). Replaced, never mutated, so emit needs no lock.
_handlers: dict[str, tuple[tuple[str, Handler], ...]] = {}


def attach(handler_id: str, events: Iterable[str], handler: Handler) -> None:
    """Call `handler(event, measurements, metadata)` on every emit of `events`.

    Raises:
        ValueError: `handler_id` is already attached (detach it first).
    """
    if any(hid == handler_id for pairs in _handlers.values() for hid, _ in pairs):
        raise ValueError(f"telemetry handler {handler_id!r} is already attached")
    for event in events:
        _handlers[event] = (*_handlers.get(event, ()), (handler_id, handler))


def detach(handler_id: str) -> None:
    """Remove a handler from every event; unknown ids are ignored."""
    for event, pairs in list(_handlers.items()):
        kept = tuple(pair for pair in pairs if pair[0] != handler_id)
        if kept:
            _handlers[event] = kept
        else:
            del _handlers[event]


def emit(event: str, measurements: Measurements = _EMPTY, metadata: Metadata = _EMPTY) -> None:
    """Run the handlers attached to `event`. Synchronous; never raises."""
    pairs = _handlers.get(event)
    if not pairs:
        return
    for handler_id, handler in pairs:
        try:
            handler(event, measurements, metadata)
        except Exception:
            _log.exception("telemetry handler %r failed on %s and was detached", handler_id, event)
            detach(handler_id)
