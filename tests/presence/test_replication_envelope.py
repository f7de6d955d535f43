"""Presence replication through the real bridge envelope: every publication keeps its own fields.

Regression (found by the conformance run behind nginx): a delta carried its key as `k`, which the
bridge's envelope kind (`"k": "y"`) overwrote, so another node listed the device under the key "y".
"""

from __future__ import annotations

import json

import trio
import trio.testing

from tests.presence.test_replication import TOPIC, cluster, meta, settle
from tests.pubsub.test_cluster_unit import FakeBus, FakeLive, running
from whispr.pubsub import PubSub


async def test_every_publication_crosses_the_bridge_with_its_fields_intact(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with cluster("a", "b") as nodes:
        b = nodes.members["b"]
        b.tracker.track(TOPIC, "42", "user_socket:42:laptop", meta("laptop"))
        await settle()
        b.tracker.untrack(TOPIC, "42", "user_socket:42:laptop")
        await settle()
        messages = [message for _, message in nodes.published]
    assert {"d", "s", "h", "r"} <= {message["y"] for message in messages}  # every kind was published

    bus = FakeBus()
    async with running(PubSub(), bus, FakeLive()) as bridge:
        for message in messages:
            bridge.publish_presence(message)
        await trio.testing.wait_all_tasks_blocked()
    sent = [json.loads(data) for channel, data in bus.published if channel == "p:presence"]
    assert len(sent) == len(messages)
    for message, wire in zip(messages, sent, strict=True):
        assert {name: wire[name] for name in message} == message
