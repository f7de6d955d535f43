"""Cluster membership: which whispr nodes are alive, gossiped through a Redis Stream.

- `membership`: the pure, Tracker-style view (replicas, incarnations, UP/DOWN/PERMDOWN, events).
- `manager`: `ClusterManager`, the supervised service doing the stream I/O around it.
- `stream`: the interface the manager needs from the stream, and `ClusterUnavailable`.
- `health`: `NodeHealth`, whether this node should refuse new sockets (503 + Retry-After).

Presence and pub/sub react to node events: `manager.subscribe()` gives a channel of `NodeUp`,
`NodeDown` and `NodePermdown`.
"""

from whispr.cluster.health import HealthThresholds, NodeHealth, OverloadReport
from whispr.cluster.manager import ClusterManager, ClusterStatistics
from whispr.cluster.membership import (
    Membership,
    NodeDown,
    NodeEvent,
    NodePermdown,
    NodeUp,
    PermdownReason,
    Replica,
    Status,
    Timeouts,
)
from whispr.cluster.stream import ClusterStream, ClusterUnavailable

__all__ = [
    "ClusterManager",
    "ClusterStatistics",
    "ClusterStream",
    "ClusterUnavailable",
    "HealthThresholds",
    "Membership",
    "NodeDown",
    "NodeEvent",
    "NodeHealth",
    "NodePermdown",
    "NodeUp",
    "OverloadReport",
    "PermdownReason",
    "Replica",
    "Status",
    "Timeouts",
]
