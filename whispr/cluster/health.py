"""`NodeHealth`: is this node too busy to take new sockets? Pure: it only reads the callables it is given.

Rules (contract.md "503 node draining or overloaded (`Retry-After`)"; reliability.md B, D2, E4):
- The node is *overloaded* when any of these holds, each a reason of its own:
  - open connections >= `max_connections` (a hard cap: about 20 KiB of RSS each, architecture.md);
  - event-loop lag >= `max_loop_lag` seconds (every socket on the node already waits that long);
  - resident memory >= `max_rss` bytes (well before the container's OOM kill);
  - a required dependency is unhealthy (a flag the app chooses to pass, e.g. the supervision tree
    or the store: the cluster stream is NOT one of them by default, since a node without Redis
    still serves its local sockets, reliability.md D3).
- The endpoint answers a new connection on an overloaded node with 503 and `Retry-After:
  retry_after`, and keeps the sockets it has. There is no hysteresis: the callables are expected
  to be smoothed already (loop lag as a recent maximum, RSS as sampled).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

__all__ = ["HealthThresholds", "NodeHealth", "OverloadReport"]


@dataclass(frozen=True, slots=True)
class HealthThresholds:
    """Limits past which the node refuses new sockets; validated on construction.

    Attributes:
        max_connections: open sockets at which new ones are refused (10,000 ≈ 200 MB of sockets).
        max_loop_lag: seconds of event-loop lag (reliability.md D2 counts stalls over 0.1 s as
            failures; 0.25 s is a loop that is clearly saturated, not one unlucky tick).
        max_rss: bytes of resident memory (1.5 GiB, under a 2 GiB container limit).
        retry_after: seconds the client is told to wait (the `Retry-After` header).

    Raises:
        ValueError: a threshold that is not positive.
    """

    max_connections: int = 10_000
    max_loop_lag: float = 0.25
    max_rss: int = 1536 * 1024 * 1024
    retry_after: int = 5

    def __post_init__(self) -> None:
        for name in ("max_connections", "max_loop_lag", "max_rss", "retry_after"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"{name} must be positive, got {value!r}")


@dataclass(frozen=True, slots=True)
class OverloadReport:
    """One evaluation: `overloaded` iff `reasons` is not empty; each reason names value and limit."""

    reasons: tuple[str, ...]
    retry_after: int

    @property
    def overloaded(self) -> bool:
        """True when at least one threshold is crossed."""
        return bool(self.reasons)


@dataclass(frozen=True, slots=True)
class NodeHealth:
    """Evaluates the node's load against `thresholds`. Synchronous, cheap, never blocks.

    Args:
        connections: the number of open sockets now.
        loop_lag: the recent event-loop lag, seconds.
        rss: resident memory now, bytes.
        dependencies: required dependencies by name → a callable saying whether it is healthy.
        thresholds: the limits.
    """

    connections: Callable[[], int]
    loop_lag: Callable[[], float]
    rss: Callable[[], int]
    dependencies: Mapping[str, Callable[[], bool]] = field(default_factory=dict)
    thresholds: HealthThresholds = field(default_factory=HealthThresholds)

    def check(self) -> OverloadReport:
        """Read every callable once and say whether the node is overloaded, and why.

        Raises:
            Exception: whatever a callable raises (they are the caller's own).
        """
        limits = self.thresholds
        reasons: list[str] = []
        connections = self.connections()
        if connections >= limits.max_connections:
            reasons.append(f"connections {connections} >= {limits.max_connections}")
        lag = self.loop_lag()
        if lag >= limits.max_loop_lag:
            reasons.append(f"event-loop lag {lag:.3f} s >= {limits.max_loop_lag} s")
        rss = self.rss()
        if rss >= limits.max_rss:
            reasons.append(f"rss {rss} bytes >= {limits.max_rss} bytes")
        reasons.extend(f"dependency {name} unhealthy" for name, ok in sorted(self.dependencies.items()) if not ok())
        return OverloadReport(tuple(reasons), limits.retry_after)
