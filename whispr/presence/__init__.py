"""Presence in Phoenix format: who is online on a topic, one meta per device (protocol.md §5).

`PresenceState` is the pure core (topic → key → metas owned by (node, tracking id)); `PresenceTracker`
is the node's Trio service around it, with the grace period on leaves and coalesced `presence_diff`s;
`PresenceReplica` (replication.py) makes every node's tracker hold the whole cluster's presence.
"""

from whispr.presence.replication import PresenceReplica, ReplicaStatistics
from whispr.presence.state import AlreadyTracked, Diff, Meta, NotTracked, Owner, PresenceState, random_ref
from whispr.presence.tracker import (
    PRESENCE_DIFF_EVENT,
    PRESENCE_STATE_EVENT,
    Broadcast,
    PresenceStatistics,
    PresenceTracker,
)

__all__ = [
    "PRESENCE_DIFF_EVENT",
    "PRESENCE_STATE_EVENT",
    "AlreadyTracked",
    "Broadcast",
    "Diff",
    "Meta",
    "NotTracked",
    "Owner",
    "PresenceReplica",
    "PresenceState",
    "PresenceStatistics",
    "PresenceTracker",
    "ReplicaStatistics",
    "random_ref",
]
