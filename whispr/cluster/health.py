"""Redirect mode: an overloaded node refuses new sockets with 503 + `Retry-After` and keeps its own.

Rules (contract.md "503 node draining or overloaded (`Retry-After`)"; reliability.md B11, D2, E4):
- The node is *overloaded* when any of these holds, each a reason of its own (`Reason.kind`):
  - `connections`: open sockets >= `max_connections` (a hard cap: about 20 KiB of RSS each,
    architecture.md; B11 "all accepted up to the global cap");
  - `loop_lag`: event-loop lag >= `max_loop_lag` seconds (every socket on the node already waits
    that long; D2 counts stalls over 0.1 s as failures);
  - `rss`: resident memory >= `max_rss` bytes (well before the container's OOM kill);
  - `dependency_<name>`: a required dependency is unhealthy (a flag the app chooses to pass; the
    cluster stream is NOT one by default, since a node without Redis still serves its local
    sockets, reliability.md D3).
- `NodeHealth` is the pure verdict over injected readings. `OverloadGuard` wires it to a node:
  - `run()` samples every `SAMPLE_INTERVAL` seconds: RSS (`rss_bytes`, one read of
    /proc/self/statm), the largest loop lag reported since the previous sample
    (`whispr.observability.loop_lag` through telemetry `LOOP_LAG`), the dependencies;
  - `refusal()` is the connect path's question, O(1): the connection cap is compared with the
    live count on every connect (a reconnect storm crosses it between two samples), every other
    reason is the cached verdict of the last sample;
  - one log line per change of the set of reasons (entering, changing, leaving overload), never
    one per refused connect; each refusal is counted by the endpoint's SOCKET_REFUSED telemetry
    (`whispr_connections_refused_total{status="503", reason="overloaded_<kind>"}`).
- No hysteresis: the readings are smoothed already (lag as the maximum over a sample, RSS as
  sampled), and a node that leaves overload takes new sockets at once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import trio

from whispr.gateway.transport import Refuse
from whispr.observability import telemetry

__all__ = [
    "SAMPLE_INTERVAL",
    "HealthThresholds",
    "LagWindow",
    "NodeHealth",
    "OverloadGuard",
    "OverloadReport",
    "Reason",
    "rss_bytes",
]

_log = logging.getLogger("whispr.gateway")

SAMPLE_INTERVAL = 1.0
"""Seconds between two samples of `OverloadGuard.run` (twice the loop-lag probe's period)."""
CONNECTIONS = "connections"
LOOP_LAG = "loop_lag"
RSS = "rss"
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True, slots=True)
class HealthThresholds:
    """Limits past which the node refuses new sockets (defaults: `whispr.config.Settings`).

    Attributes:
        max_connections: open sockets at which new ones are refused.
        max_loop_lag: seconds of event-loop lag.
        max_rss: bytes of resident memory.
        retry_after: seconds the client is told to wait (the `Retry-After` header).

    Raises:
        ValueError: a threshold that is not positive.
    """

    max_connections: int
    max_loop_lag: float
    max_rss: int
    retry_after: int

    def __post_init__(self) -> None:
        for name in ("max_connections", "max_loop_lag", "max_rss", "retry_after"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"{name} must be positive, got {value!r}")


class Reason(NamedTuple):
    """One crossed threshold: `kind` is bounded (a metrics label), `detail` names value and limit."""

    kind: str
    detail: str


@dataclass(frozen=True, slots=True)
class OverloadReport:
    """One evaluation: `overloaded` iff `reasons` is not empty."""

    reasons: tuple[Reason, ...]
    retry_after: int

    @property
    def overloaded(self) -> bool:
        """True when at least one threshold is crossed."""
        return bool(self.reasons)

    @property
    def kinds(self) -> tuple[str, ...]:
        """The kinds of the reasons, in order."""
        return tuple(reason.kind for reason in self.reasons)


@dataclass(frozen=True, slots=True)
class NodeHealth:
    """Evaluates the node's load against `thresholds`. Synchronous, cheap, never blocks.

    Args:
        connections: the number of open sockets now.
        loop_lag: the recent event-loop lag, seconds.
        rss: resident memory now, bytes.
        thresholds: the limits.
        dependencies: required dependencies by name → a callable saying whether it is healthy.
    """

    connections: Callable[[], int]
    loop_lag: Callable[[], float]
    rss: Callable[[], int]
    thresholds: HealthThresholds
    dependencies: Mapping[str, Callable[[], bool]] = field(default_factory=dict)

    def check(self) -> OverloadReport:
        """Read every callable once and say whether the node is overloaded, and why.

        Raises:
            Exception: whatever a callable raises (they are the caller's own).
        """
        limits = self.thresholds
        reasons: list[Reason] = []
        connections = self.connections()
        if connections >= limits.max_connections:
            reasons.append(Reason(CONNECTIONS, f"connections {connections} >= {limits.max_connections}"))
        lag = self.loop_lag()
        if lag >= limits.max_loop_lag:
            reasons.append(Reason(LOOP_LAG, f"event-loop lag {lag:.3f} s >= {limits.max_loop_lag} s"))
        rss = self.rss()
        if rss >= limits.max_rss:
            reasons.append(Reason(RSS, f"rss {rss} bytes >= {limits.max_rss} bytes"))
        reasons.extend(
            Reason(f"dependency_{name}", f"dependency {name} unhealthy")
            for name, ok in sorted(self.dependencies.items())
            if not ok()
        )
        return OverloadReport(tuple(reasons), limits.retry_after)


def rss_bytes() -> int:
    """Resident memory of this process now, bytes: one read of /proc/self/statm (Linux).

    Non-blocking in practice (procfs is generated in memory). Returns 0 where /proc does not
    exist, so the RSS threshold never trips there.
    """
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE_SIZE
    except FileNotFoundError:
        return 0


class LagWindow:
    """The largest event-loop lag reported (telemetry `LOOP_LAG`) since the previous read.

    Calling it returns that maximum and starts a new window; a window in which no report arrived
    returns the previous reading (the probe itself may be the one starved). Listens between
    `attach()` and `detach()` (both synchronous).
    """

    def __init__(self) -> None:
        self._handler_id = f"whispr.overload.lag-{id(self)}"
        self._last = 0.0
        self._window: float | None = None

    def attach(self) -> None:
        """Start listening to LOOP_LAG. Raises ValueError when already attached."""
        telemetry.attach(self._handler_id, [telemetry.LOOP_LAG], self._on_lag)

    def detach(self) -> None:
        """Stop listening; a no-op when not attached."""
        telemetry.detach(self._handler_id)

    def __call__(self) -> float:
        if self._window is not None:
            self._last, self._window = self._window, None
        return self._last

    def _on_lag(self, event: str, measurements: telemetry.Measurements, metadata: telemetry.Metadata) -> None:
        lag = float(measurements.get("lag", 0.0))
        self._window = lag if self._window is None else max(self._window, lag)


class OverloadGuard:
    """`NodeHealth` for the connect path: cached verdict, exact connection cap, change log.

    Args:
        thresholds: the limits.
        connections: the number of open sockets now; read on every connect, so O(1).
        rss: resident memory now, bytes; read once per sample.
        dependencies: as `NodeHealth.dependencies`; read once per sample.

    The loop lag is the guard's own `LagWindow`, listening while `run()` runs.
    """

    def __init__(
        self,
        thresholds: HealthThresholds,
        connections: Callable[[], int],
        *,
        rss: Callable[[], int] = rss_bytes,
        dependencies: Mapping[str, Callable[[], bool]] | None = None,
    ) -> None:
        self._lag = LagWindow()
        self._health = NodeHealth(connections, self._lag, rss, thresholds, dict(dependencies or {}))
        self._connections = connections
        self._max_connections = thresholds.max_connections
        self._retry_after = (("Retry-After", str(thresholds.retry_after)),)
        self._full = self._refuse(CONNECTIONS)
        self._cached: Refuse | None = None  # the last sample's first reason other than the cap
        self._kinds: tuple[str, ...] = ()  # the last sample's reasons, for the change log

    def refusal(self) -> Refuse | None:
        """The 503 to answer a new connection with, or None to let it in. O(1), never blocks."""
        if self._connections() >= self._max_connections:
            return self._full
        return self._cached

    def sample(self) -> OverloadReport:
        """Evaluate `NodeHealth` now, cache the verdict for `refusal()`, log a change of reasons.

        Raises:
            Exception: whatever a reading raises.
        """
        report = self._health.check()
        others = [kind for kind in report.kinds if kind != CONNECTIONS]
        self._cached = self._refuse(others[0]) if others else None
        if report.kinds != self._kinds:
            if not report.overloaded:
                _log.info("node no longer overloaded (was: %s): accepting new sockets", ", ".join(self._kinds))
            else:
                details = "; ".join(reason.detail for reason in report.reasons)
                state = "still overloaded, reasons changed" if self._kinds else "overloaded"
                _log.warning("node %s: refusing new sockets with 503 (open ones stay): %s", state, details)
            self._kinds = report.kinds
        return report

    async def run(
        self, interval: float = SAMPLE_INTERVAL, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen to the loop lag, sample now and every `interval` seconds until cancelled;
        reports `started` after the first sample. Never returns on its own.

        Raises:
            ValueError: the guard is already running.
            Exception: whatever a reading raises (the supervisor restarts the endpoint).
        """
        self._lag.attach()
        try:
            self.sample()
            task_status.started()
            while True:
                await trio.sleep(interval)
                self.sample()
        finally:
            self._lag.detach()

    def _refuse(self, kind: str) -> Refuse:
        return Refuse(503, f"overloaded_{kind}", self._retry_after)
