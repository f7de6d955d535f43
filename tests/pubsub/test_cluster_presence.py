"""`ClusterBridge` and presence replication: the `y` publications on `<prefix>:presence` and the resyncs."""

from __future__ import annotations

import json
from typing import Any

import trio
import trio.testing

from tests.pubsub.test_cluster_unit import FakeBus, FakeLive, envelope, running
from whispr.pubsub import PubSub


class FakeReplica:
    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.resyncs = 0

    def remote(self, origin: str, message: dict[str, Any]) -> None:
        if message["y"] == "bad":
            raise ValueError("malformed")
        self.received.append((origin, message))

    def resync(self) -> None:
        self.resyncs += 1


async def test_presence_messages_go_out_and_come_in_on_their_channel() -> None:
    bus, replica = FakeBus(), FakeReplica()
    async with running(PubSub(), bus, FakeLive()) as bridge:
        bridge.attach_presence(replica)
        bridge.publish_presence({"y": "h", "i": 7, "c": 3})
        await trio.testing.wait_all_tasks_blocked()
        sent = [json.loads(data) for channel, data in bus.published if channel == "p:presence"]
        assert sent == [{"y": "h", "i": 7, "c": 3, "v": 1, "k": "y", "o": "me"}]
        bus.deliver(b"message", "p:presence", envelope(k="y", y="d", c=1))
        bus.deliver(b"message", "p:presence", envelope(k="y", y="bad"))
        await trio.testing.wait_all_tasks_blocked()
        assert [(origin, message["y"]) for origin, message in replica.received] == [("other", "d")]
        assert bridge.statistics().invalid == 1
        assert bridge.statistics().own_skipped == 1  # its own heartbeat came back: not for its replica
        bridge.attach_presence(None)
        bus.deliver(b"message", "p:presence", envelope(k="y", y="d", c=2))
        await trio.testing.wait_all_tasks_blocked()
        assert len(replica.received) == 1


async def test_a_new_connection_resyncs_presence_but_a_peers_resync_request_does_not() -> None:
    bus, replica = FakeBus(), FakeReplica()
    async with running(PubSub(), bus, FakeLive()) as bridge:
        bridge.attach_presence(replica)
        await trio.testing.wait_all_tasks_blocked()
        before = replica.resyncs
        bus.deliver(b"subscribe", "p:n:me", 1)  # a reconnection's first confirmation
        await trio.testing.wait_all_tasks_blocked()
        assert replica.resyncs == before + 1
        bus.deliver(b"message", "p:ctl", envelope(k="s"))  # another node dropped publications
        await trio.testing.wait_all_tasks_blocked()
        assert replica.resyncs == before + 1  # left to that node's presence clock heartbeats
