"""`PresenceReplica` on Trio's virtual clock: nodes wired through an in-order, lossy in-memory bus.

Each node is a tracker and its replica; membership events are fed by hand, as `ClusterManager`
would send them. A subscriber on a node is modelled by applying that node's `presence_diff`s, in
order, to an empty presence.js state (`presence_js.sync_diff`): it must always end where the
node's `list()` is, and every node's `list()` must hold the same metas.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
import trio.testing

from tests.presence.presence_js import sync_diff
from whispr.cluster.membership import NodeDown, NodeEvent, NodePermdown, NodeUp, PermdownReason
from whispr.presence import PresenceReplica, PresenceTracker

GRACE = 5.0
WINDOW = 0.05
HEARTBEAT = 1.5
TOPIC = "user:42"

Message = dict[str, Any]
Drop = Callable[[str, str, Message], bool]
"""drop(origin, target, message): True to lose that publication on its way to `target`."""


@dataclass
class Member:
    name: str
    tracker: PresenceTracker
    replica: PresenceReplica
    sent: list[tuple[str, str, dict[str, Any]]]
    inbox: trio.MemorySendChannel[tuple[str, Message]]
    membership: trio.MemorySendChannel[NodeEvent]
    scope: trio.CancelScope

    def seen(self, topic: str = TOPIC) -> dict[str, Any]:
        """What a subscriber of `topic` on this node, there from the start, holds now."""
        state: dict[str, Any] = {}
        for sent_topic, event, payload in self.sent:
            assert event == "presence_diff"
            if sent_topic == topic:
                state = sync_diff(state, payload)
        return state


@dataclass
class Cluster:
    nursery: trio.Nursery
    members: dict[str, Member] = field(default_factory=dict)
    drop: Drop = lambda origin, target, message: False
    published: list[tuple[str, Message]] = field(default_factory=list)

    def publish(self, origin: str, message: Message) -> None:
        wire = json.loads(json.dumps(message))  # what the bridge sends is JSON
        self.published.append((origin, wire))
        for name, member in self.members.items():
            if name != origin and not self.drop(origin, name, wire):
                member.inbox.send_nowait((origin, wire))

    async def start(self, name: str, *, announce: bool = True) -> Member:
        """Start node `name` (a new tracker and replica: a new incarnation); with `announce`, the
        others get its `NodeUp` (and it theirs) as the membership would send them."""
        sent: list[tuple[str, str, dict[str, Any]]] = []
        tracker = PresenceTracker(
            lambda topic, event, payload: sent.append((topic, event, payload)),
            node=name,
            grace_period=GRACE,
            coalesce_window=WINDOW,
        )
        replica = PresenceReplica(tracker, lambda message: self.publish(name, message), node=name)
        inbox_send, inbox_receive = trio.open_memory_channel[tuple[str, Message]](1000)
        events_send, events_receive = trio.open_memory_channel[NodeEvent](100)
        scope = trio.CancelScope()
        member = Member(name, tracker, replica, sent, inbox_send, events_send, scope)

        async def serve(task_status: trio.TaskStatus[None]) -> None:
            with scope:
                async with trio.open_nursery() as nursery:
                    await nursery.start(tracker.run)
                    await nursery.start(replica.run)
                    nursery.start_soon(replica.follow, events_receive)
                    nursery.start_soon(deliver, replica, inbox_receive)
                    task_status.started()

        await self.nursery.start(serve)
        for other in self.members.values():
            if announce:
                other.membership.send_nowait(NodeUp(name, replica.incarnation))
            events_send.send_nowait(NodeUp(other.name, other.replica.incarnation))
        self.members[name] = member
        return member

    def crash(self, name: str) -> Member:
        """Cancel the node without untracking anything (SIGKILL); the others are not told."""
        member = self.members.pop(name)
        member.scope.cancel()
        return member

    def tell(self, event: NodeEvent) -> None:
        for member in self.members.values():
            member.membership.send_nowait(event)

    def assert_consistent(self, topic: str = TOPIC) -> dict[str, Any]:
        """Every node lists the same metas, and every node's subscriber holds its node's list."""
        views = {name: by_ref(member.tracker.list(topic)) for name, member in self.members.items()}
        first = next(iter(views.values()))
        assert all(view == first for view in views.values()), views
        for member in self.members.values():
            assert by_ref(member.seen(topic)) == by_ref(member.tracker.list(topic)), member.name
        return first


async def deliver(replica: PresenceReplica, inbox: trio.MemoryReceiveChannel[tuple[str, Message]]) -> None:
    async for origin, message in inbox:
        replica.remote(origin, message)


def requests(nodes: Cluster) -> list[tuple[str, Message]]:
    return [(origin, message) for origin, message in nodes.published if message["y"] == "r"]


def by_ref(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A presence state with each key's metas by ref (nodes may order a key's metas differently)."""
    return {key: {meta["phx_ref"]: meta for meta in entry["metas"]} for key, entry in state.items()}


def meta(device: str, online_at: int = 1) -> dict[str, Any]:
    return {"device_id": device, "device_type": "ios", "online_at": online_at}


async def settle() -> None:
    """Long enough for every heartbeat, request and transfer round and every window."""
    await trio.sleep(3 * HEARTBEAT + WINDOW)


@asynccontextmanager
async def cluster(*names: str) -> AsyncIterator[Cluster]:
    async with trio.open_nursery() as nursery:
        nodes = Cluster(nursery)
        for name in names:
            await nodes.start(name)
        await settle()
        yield nodes
        nursery.cancel_scope.cancel()


async def test_two_devices_on_two_nodes_are_one_key_with_two_metas_everywhere(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with cluster("a", "b") as nodes:
        a, b = nodes.members["a"], nodes.members["b"]
        phone = a.tracker.track(TOPIC, "42", "user_socket:42:phone", meta("phone"))
        laptop = b.tracker.track(TOPIC, "42", "user_socket:42:laptop", meta("laptop"))
        await trio.sleep(2 * WINDOW)
        view = nodes.assert_consistent()
        assert set(view["42"]) == {phone, laptop}
        # each node's subscriber got ONE diff for the two joins: no second copy from the other node
        assert [payload["joins"].keys() for _, _, payload in a.sent] == [{"42"}]
        assert [payload["joins"].keys() for _, _, payload in b.sent] == [{"42"}]
        updated = b.tracker.update(TOPIC, "42", "user_socket:42:laptop", meta("laptop", 2))
        b.tracker.untrack(TOPIC, "42", "user_socket:42:laptop")
        await trio.sleep(2 * WINDOW)
        assert a.tracker.list(TOPIC)["42"]["metas"][-1]["phx_ref"] == updated
        await trio.sleep(GRACE + WINDOW)  # the leave is held on b, then replicated
        assert set(nodes.assert_consistent()["42"]) == {phone}
        assert b.replica.statistics().clock == 3
        assert a.replica.statistics().deltas_applied == 3
        assert a.replica.statistics().transfers_applied == 1  # only b's state at the start


async def test_a_lost_delta_is_repaired_by_a_transfer_at_the_next_one(autojump_clock: trio.testing.MockClock) -> None:
    async with cluster("a", "b") as nodes:
        a, b = nodes.members["a"], nodes.members["b"]
        nodes.drop = lambda origin, target, message: message["y"] == "d" and message["c"] == 1
        lost = a.tracker.track(TOPIC, "42", "user_socket:42:phone", meta("phone"))
        nodes.drop = lambda origin, target, message: False
        kept = a.tracker.track("user:7", "7", "user_socket:7:phone", meta("phone"))
        await settle()  # delta 2 shows the gap: b asks for a's state
        assert set(nodes.assert_consistent()["42"]) == {lost}
        assert set(nodes.assert_consistent("user:7")["7"]) == {kept}
        assert b.replica.statistics().transfers_applied == 2


async def test_a_lost_last_delta_is_repaired_after_a_clock_heartbeat(autojump_clock: trio.testing.MockClock) -> None:
    async with cluster("a", "b") as nodes:
        a, b = nodes.members["a"], nodes.members["b"]
        nodes.drop = lambda origin, target, message: message["y"] == "d"
        ref = a.tracker.track(TOPIC, "42", "user_socket:42:phone", meta("phone"))
        nodes.drop = lambda origin, target, message: False
        await trio.sleep(WINDOW)
        assert b.tracker.list(TOPIC) == {}  # nothing shows the loss yet
        await trio.sleep(HEARTBEAT + WINDOW)  # a's next clock heartbeat does
        assert set(nodes.assert_consistent()["42"]) == {ref}


async def test_requests_are_rate_limited_and_answered_by_one_transfer(autojump_clock: trio.testing.MockClock) -> None:
    async with cluster("a", "b") as nodes:
        a, b = nodes.members["a"], nodes.members["b"]
        before = b.replica.statistics().requests_sent
        nodes.drop = lambda origin, target, message: message["y"] == "d" and message["c"] == 1
        for device in range(20):  # 19 deltas after a gap: one request
            a.tracker.track(TOPIC, "42", f"user_socket:42:{device}", meta(str(device)))
        nodes.drop = lambda origin, target, message: False
        await settle()
        assert b.replica.statistics().requests_sent == before + 1
        assert len(nodes.assert_consistent()["42"]) == 20


async def test_a_dead_node_leaves_on_its_down_event_and_comes_back_on_its_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with cluster("a", "b") as nodes:
        a, b = nodes.members["a"], nodes.members["b"]
        phone = a.tracker.track(TOPIC, "42", "user_socket:42:phone", meta("phone"))
        laptop = b.tracker.track(TOPIC, "42", "user_socket:42:laptop", meta("laptop"))
        await settle()
        diffs = len(a.sent)
        a.membership.send_nowait(NodeDown("b", 1))  # b looks dead to a (a crash, or a netsplit)
        await trio.testing.wait_all_tasks_blocked()
        assert set(by_ref(a.tracker.list(TOPIC))["42"]) == {phone}  # at once in the list...
        assert len(a.sent) == diffs
        await trio.sleep(2 * WINDOW)  # ... and to subscribers at the end of the window
        left = {**meta("laptop"), "phx_ref": laptop}
        assert a.sent[diffs:] == [(TOPIC, "presence_diff", {"joins": {}, "leaves": {"42": {"metas": [left]}}})]
        b.tracker.update(TOPIC, "42", "user_socket:42:laptop", meta("laptop", 2))  # ignored: b is down
        await settle()
        assert set(by_ref(a.tracker.list(TOPIC))["42"]) == {phone}
        assert a.replica.statistics().nodes_removed == 1
        a.membership.send_nowait(NodeUp("b", 1))
        await settle()
        view = nodes.assert_consistent()
        assert phone in view["42"]
        assert laptop not in view["42"]
        assert len(view["42"]) == 2


async def test_a_crashed_node_restarted_replaces_its_old_presences(autojump_clock: trio.testing.MockClock) -> None:
    async with cluster("a", "b") as nodes:
        a = nodes.members["a"]
        nodes.members["b"].tracker.track(TOPIC, "42", "user_socket:42:laptop", meta("laptop"))
        nodes.members["b"].tracker.track("user:9", "9", "user_socket:9:web", meta("web"))
        await settle()
        old = nodes.crash("b")
        b = await nodes.start("b", announce=False)  # a new incarnation, heard before the membership says anything
        assert b.replica.incarnation > old.replica.incarnation
        tablet = b.tracker.track(TOPIC, "42", "user_socket:42:tablet", meta("tablet"))
        await settle()
        assert set(nodes.assert_consistent()["42"]) == {tablet}
        assert a.tracker.list("user:9") == {}
        # then the membership catches up: the old replica is replaced, the new one up
        a.membership.send_nowait(NodePermdown("b", 1, PermdownReason.REPLACED))
        a.membership.send_nowait(NodeUp("b", 2))
        await settle()
        assert set(nodes.assert_consistent()["42"]) == {tablet}


async def test_publications_of_a_node_not_up_are_ignored(autojump_clock: trio.testing.MockClock) -> None:
    async with cluster("a") as nodes:
        a = nodes.members["a"]
        entry = ["user_socket:7:phone", TOPIC, "7", {**meta("phone"), "phx_ref": "r1"}]
        a.replica.remote("x", {"y": "s", "i": 1, "c": 1, "e": [entry]})
        a.replica.remote("x", {"y": "d", "i": 1, "c": 1, "t": "user_socket:7:web", "p": TOPIC, "key": "7", "m": None})
        assert a.tracker.list(TOPIC) == {}
        assert requests(nodes) == []  # not even a request: x's NodeUp will ask


async def test_stale_and_duplicate_publications_change_nothing(autojump_clock: trio.testing.MockClock) -> None:
    async with cluster("a", "b") as nodes:
        a, b = nodes.members["a"], nodes.members["b"]
        b.tracker.track(TOPIC, "42", "user_socket:42:laptop", meta("laptop"))
        await settle()
        listed = a.tracker.list(TOPIC)
        delta = next(message for origin, message in nodes.published if origin == "b" and message["y"] == "d")
        a.replica.remote("b", delta)  # a duplicate
        old = {"y": "s", "i": b.replica.incarnation - 1, "c": 9, "e": []}
        a.replica.remote("b", old)  # an older incarnation's transfer
        await settle()
        assert a.tracker.list(TOPIC) == listed


@pytest.mark.parametrize(
    "message",
    [
        {"y": "d", "i": "1", "c": 1},
        {"y": "s", "i": 1, "c": 1, "e": [["t", TOPIC, "k"]]},
        {"y": "s", "i": 1, "c": 1, "e": [["t", TOPIC, "k", {"device_id": "no ref"}]]},
        {"y": "z", "i": 1, "c": 1},
        {"i": 1, "c": 1},
    ],
)
async def test_malformed_publications_raise(autojump_clock: trio.testing.MockClock, message: Message) -> None:
    async with cluster("a", "b") as nodes:
        with pytest.raises((KeyError, TypeError, ValueError)):
            nodes.members["a"].replica.remote("b", message)


async def test_resync_asks_every_node_and_only_when_one_is_up(autojump_clock: trio.testing.MockClock) -> None:
    async with cluster("a") as nodes:
        nodes.members["a"].replica.resync()
        assert requests(nodes) == []
        b = await nodes.start("b")
        await settle()
        transfers = b.replica.statistics().transfers_sent
        nodes.members["a"].replica.resync()
        await settle()
        assert ("a", {"y": "r", "n": None}) in nodes.published
        assert b.replica.statistics().transfers_sent == transfers + 1


async def test_a_new_membership_subscription_forgets_the_nodes_held(autojump_clock: trio.testing.MockClock) -> None:
    async with cluster("a", "b") as nodes:
        a = nodes.members["a"]
        nodes.members["b"].tracker.track(TOPIC, "42", "user_socket:42:laptop", meta("laptop"))
        await settle()
        assert a.tracker.list(TOPIC) != {}
        send, receive = trio.open_memory_channel[NodeEvent](10)
        nodes.nursery.start_soon(a.replica.follow, receive)  # the cluster child restarted
        await trio.testing.wait_all_tasks_blocked()
        assert a.tracker.list(TOPIC) == {}
        send.send_nowait(NodeUp("b", 1))
        await settle()
        assert nodes.assert_consistent() != {}


def test_bad_heartbeat_interval_is_refused() -> None:
    tracker = PresenceTracker(lambda topic, event, payload: None, node="a")
    with pytest.raises(ValueError, match="heartbeat_interval"):
        PresenceReplica(tracker, lambda message: None, node="a", heartbeat_interval=0)
