"""Cross-node pub/sub through a real Redis: two nodes in one process sharing a Redis and a SQLite store.

Each "node" is the messaging services of tests/messaging (PubSub, presence, live delivery, router,
devices on fake transports) plus its own `RedisBus` and `ClusterBridge`. Faults come from
tests/services.py (`kill`/`start`, `pause`/`resume`) and `CLIENT KILL TYPE pubsub`.

Waiting is done on conditions (`wait_until`, bounded by `fail_after`), never on durations.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from tests.channels.fakes import unframe
from tests.messaging.conftest import Device, Node
from tests.services import RedisServer
from whispr.adapters.aio import open_bridge, run_aio
from whispr.adapters.redis_client import open_redis
from whispr.adapters.redis_pubsub import RedisBus, open_redis_bus
from whispr.adapters.sqlite_store import open_sqlite_store
from whispr.delivery.router import Draft
from whispr.observability import telemetry
from whispr.protocol import V1, V2, Broadcast, Message, Reply, Serializer
from whispr.pubsub.cluster import PUBSUB_RESYNC, ClusterBridge
from whispr.resilience.breaker import CircuitBreaker, State

pytestmark = pytest.mark.integration

HEARTBEAT = 0.2


@dataclass
class ClusterNode:
    node: Node
    bus: RedisBus
    bridge: ClusterBridge
    breaker: CircuitBreaker

    def device(self, user_id: str, device_id: str) -> Device:
        return self.node.device(user_id, device_id)


@asynccontextmanager
async def open_cluster(path: Path, url: str, count: int = 2) -> AsyncIterator[list[ClusterNode]]:
    """`count` nodes on one SQLite store and one Redis, bridges running."""
    prefix = f"t{uuid.uuid4().hex[:8]}"
    async with (
        open_bridge(),
        open_sqlite_store(str(path / "store.db")) as store,
        AsyncExitStack() as stack,
        trio.open_nursery() as nursery,
    ):
        nodes = []
        for i in range(count):
            bus = await stack.enter_async_context(open_redis_bus(url, io_timeout=0.5))
            node = Node(store)
            breaker = CircuitBreaker(f"redis_pubsub_n{i}", call_timeout=0.25, reset_timeout=0.5)
            bridge = ClusterBridge(
                node.pubsub,
                bus,
                node_id=f"n{i}",
                prefix=prefix,
                heartbeat_interval=HEARTBEAT,
                degraded_poll_interval=0.5,
                breaker=breaker,
            )
            bridge.attach_live(node.deps.live)
            await nursery.start(node.deps.live.run)
            await nursery.start(node.presence.run)
            await nursery.start(bridge.run)
            nodes.append(ClusterNode(node, bus, bridge, breaker))
        yield nodes
        nursery.cancel_scope.cancel()


def figures(name: str, nodes: list[ClusterNode], **extra: object) -> None:
    """Print the fault figures (shown with `pytest -s`; the report quotes them)."""
    for n in nodes:
        st = n.bridge.statistics()
        print(
            f"[{name}] {n.bridge.node_id}: resubscribes={st.resubscribes} last_resubscribe={st.last_resubscribe_seconds:.3f}s"
            f" heartbeat_timeouts={st.heartbeat_timeouts} published={st.published} publish_failed={st.publish_failed}"
            f" received={st.received} resyncs={st.resyncs}",
            extra,
        )


async def wait_until(condition: Callable[[], bool]) -> None:
    """Return once `condition()` holds (checked every 10 ms); the caller bounds it with `fail_after`."""
    while not condition():  # noqa: ASYNC110 - devices and bridges offer no event for these states
        await trio.sleep(0.01)


async def connected(*nodes: ClusterNode) -> None:
    await wait_until(lambda: all(n.bridge.statistics().connected and not n.bridge.statistics().degraded for n in nodes))


@contextmanager
def resync_events() -> Iterator[list[tuple[Mapping[str, float], Mapping[str, object]]]]:
    events: list[tuple[Mapping[str, float], Mapping[str, object]]] = []
    handler_id = f"test-{uuid.uuid4().hex}"
    telemetry.attach(handler_id, [PUBSUB_RESYNC], lambda _, m, md: events.append((m, md)))
    try:
        yield events
    finally:
        telemetry.detach(handler_id)


async def send_many(node: ClusterNode, conversation_id: str, sender: str, count: int, prefix: str) -> None:
    for i in range(count):
        draft = Draft(f"{prefix}{i}", f"{prefix} {i}", "text", {}, None)
        await node.node.deps.router.send(conversation_id, sender, "api", draft)


def conversation_seqs(device: Device, conversation_id: str) -> list[int]:
    return [m["seq"] for m in device.events(f"conversation:{conversation_id}", "new_message")]


def inbox_seqs(device: Device) -> list[int]:
    return [m["inbox_seq"] for m in device.events(f"user:{device.identity.user_id}", "new_message")]


@dataclass
class Audience:
    """Devices split across nodes: each user on `conversation:` on one node and `user:` on the other."""

    conversation_id: str
    on_conversation: list[Device]
    on_user: list[Device]

    def received(self, total: int) -> bool:
        return all(len(conversation_seqs(d, self.conversation_id)) >= total for d in self.on_conversation) and all(
            len(inbox_seqs(d)) >= total for d in self.on_user
        )

    def check(self, total: int) -> dict[str, int]:
        """Every device got 1..total exactly once, in order; returns the figures."""
        missing = duplicates = disorder = 0
        for seqs in [conversation_seqs(d, self.conversation_id) for d in self.on_conversation] + [
            inbox_seqs(d) for d in self.on_user
        ]:
            missing += total - len(set(seqs))
            duplicates += len(seqs) - len(set(seqs))
            disorder += seqs != sorted(seqs)
            assert seqs == list(range(1, total + 1))
        return {"missing": missing, "duplicates": duplicates, "out_of_order": disorder}


async def audience(nodes: list[ClusterNode], users: int) -> Audience:
    members = [f"u{i}" for i in range(users)]
    conversation_id = await nodes[0].node.conversation("sender", *members)
    on_conversation, on_user = [], []
    for i, user in enumerate(members):
        conversation = nodes[i % len(nodes)].device(user, "c")
        assert (await conversation.join(f"conversation:{conversation_id}", {"last_seq": 0}))["status"] == "ok"
        inbox = nodes[(i + 1) % len(nodes)].device(user, "u")
        assert (await inbox.join(f"user:{user}"))["status"] == "ok"
        on_conversation.append(conversation)
        on_user.append(inbox)
    return Audience(conversation_id, on_conversation, on_user)


async def test_messages_from_two_nodes_reach_every_device_on_both_in_order_exactly_once(
    tmp_path: Path, redis: RedisServer
) -> None:
    with trio.fail_after(120):
        async with open_cluster(tmp_path, redis.url) as nodes:
            await connected(*nodes)
            crowd = await audience(nodes, 10)  # 20 subscribers, 10 per node
            async with trio.open_nursery() as senders:
                senders.start_soon(send_many, nodes[0], crowd.conversation_id, "sender", 250, "a")
                senders.start_soon(send_many, nodes[1], crowd.conversation_id, "sender", 250, "b")
            await wait_until(lambda: crowd.received(500))
            assert crowd.check(500) == {"missing": 0, "duplicates": 0, "out_of_order": 0}
            for n in nodes:
                stats = n.bridge.statistics()
                assert stats.received > 0
                assert stats.own_skipped > 0
                assert stats.invalid == 0
                assert stats.resubscribes == 0


async def test_client_kill_of_the_subscriptions_mid_stream_is_filled_from_the_store(
    tmp_path: Path, redis: RedisServer
) -> None:
    with trio.fail_after(120), resync_events() as events:
        async with open_cluster(tmp_path, redis.url) as nodes, open_redis(redis.url) as admin:
            await connected(*nodes)
            crowd = await audience(nodes, 4)
            killed = 0
            for chunk in range(5):
                await send_many(nodes[0], crowd.conversation_id, "sender", 100, f"k{chunk}-")
                killed += await run_aio(admin.execute_command, "CLIENT", "KILL", "TYPE", "pubsub")
            await wait_until(lambda: crowd.received(500))
            assert crowd.check(500) == {"missing": 0, "duplicates": 0, "out_of_order": 0}
            assert killed >= 5
            await connected(*nodes)
            figures("client-kill", nodes, killed=killed, **crowd.check(500))
            stats = nodes[1].bridge.statistics()
            assert stats.resubscribes >= 5
            assert stats.resyncs.get("resubscribe", 0) >= 1
            assert stats.last_resubscribe_seconds > 0  # the figure is printed by `figures` (D7 asks ≤ 2 s)
            assert any(md["reason"] == "resubscribe" and m["feeds"] > 0 for m, md in events)


async def test_redis_sigkill_and_restart_mid_traffic_loses_nothing_and_local_delivery_never_stops(
    tmp_path: Path, fresh_redis: RedisServer
) -> None:
    with trio.fail_after(180):
        async with open_cluster(tmp_path, fresh_redis.url) as nodes:
            await connected(*nodes)
            crowd = await audience(nodes, 4)
            local = [d for d in crowd.on_conversation if d.node is nodes[0].node]
            await send_many(nodes[0], crowd.conversation_id, "sender", 150, "before")
            fresh_redis.kill()
            # Redis is gone: node 0's own devices keep getting node 0's messages at once.
            await send_many(nodes[0], crowd.conversation_id, "sender", 100, "during")
            await wait_until(lambda: all(len(conversation_seqs(d, crowd.conversation_id)) >= 250 for d in local))
            await wait_until(lambda: all(n.bridge.statistics().degraded for n in nodes))
            await trio.to_thread.run_sync(fresh_redis.start)
            await send_many(nodes[1], crowd.conversation_id, "sender", 250, "after")
            await wait_until(lambda: crowd.received(500))
            assert crowd.check(500) == {"missing": 0, "duplicates": 0, "out_of_order": 0}
            await connected(*nodes)
            figures("sigkill", nodes, **crowd.check(500))
            for n in nodes:
                stats = n.bridge.statistics()
                assert stats.resubscribes >= 1
                assert stats.resyncs.get("degraded", 0) >= 1


async def test_redis_sigstop_opens_the_breaker_fast_without_blocking_the_loop_and_recovers(
    tmp_path: Path, fresh_redis: RedisServer
) -> None:
    with trio.fail_after(180):
        async with open_cluster(tmp_path, fresh_redis.url) as nodes, trio.open_nursery() as nursery:
            await connected(*nodes)
            crowd = await audience(nodes, 4)
            ticks = itertools.count()
            ticked = [0]

            async def ticker() -> None:
                while True:
                    ticked[0] = next(ticks)
                    await trio.sleep(0.005)

            nursery.start_soon(ticker)
            await send_many(nodes[0], crowd.conversation_id, "sender", 100, "before")
            fresh_redis.pause()
            try:
                before, paused_at = ticked[0], trio.current_time()
                await send_many(nodes[0], crowd.conversation_id, "sender", 50, "paused")
                await wait_until(lambda: nodes[0].breaker.state is State.OPEN)
                opened_after = trio.current_time() - paused_at
                # Open: a publication is refused without waiting for Redis.
                failed = nodes[0].bridge.statistics().publish_failed
                await send_many(nodes[0], crowd.conversation_id, "sender", 50, "open")
                await wait_until(lambda: nodes[0].bridge.statistics().publish_failed >= failed + 50)
                assert ticked[0] - before > 20  # the Trio loop kept running all along
                local = [d for d in crowd.on_conversation if d.node is nodes[0].node]
                await wait_until(lambda: all(len(conversation_seqs(d, crowd.conversation_id)) >= 200 for d in local))
            finally:
                fresh_redis.resume()
            await send_many(nodes[1], crowd.conversation_id, "sender", 300, "after")
            await wait_until(lambda: crowd.received(500))
            assert crowd.check(500) == {"missing": 0, "duplicates": 0, "out_of_order": 0}
            await wait_until(lambda: nodes[0].breaker.state is State.CLOSED)
            await connected(*nodes)
            figures("sigstop", nodes, opened_after=round(opened_after, 3), ticks_while_paused=ticked[0] - before)
            nursery.cancel_scope.cancel()


async def test_a_lost_heartbeat_reconnects_the_subscription_and_resyncs(tmp_path: Path, redis: RedisServer) -> None:
    with trio.fail_after(30), resync_events() as events:
        async with open_cluster(tmp_path, redis.url) as nodes:
            await connected(*nodes)
            crowd = await audience(nodes, 2)
            bridge = nodes[1].bridge
            # The connection stays up but stops hearing its own heartbeat (a half-dead subscription).
            await nodes[1].bus.unsubscribe([f"{bridge.channel('x')[: -len(':t:x')]}:n:{bridge.node_id}"])
            await wait_until(lambda: bridge.statistics().heartbeat_timeouts >= 1)
            await connected(*nodes)
            assert bridge.statistics().resubscribes >= 1
            assert any(md["reason"] == "heartbeat_timeout" for _, md in events)
            await send_many(nodes[0], crowd.conversation_id, "sender", 20, "m")
            await wait_until(lambda: crowd.received(20))
            crowd.check(20)


async def test_presence_diffs_typing_and_revocations_cross_nodes(tmp_path: Path, redis: RedisServer) -> None:
    with trio.fail_after(30):
        async with open_cluster(tmp_path, redis.url) as nodes:
            await connected(*nodes)
            conversation_id = await nodes[0].node.conversation("alice", "bob")
            topic = f"conversation:{conversation_id}"
            alice = nodes[0].device("alice", "a1")
            bob = nodes[1].device("bob", "b1")
            assert (await alice.join(topic))["status"] == "ok"
            await wait_until(lambda: nodes[1].bridge.statistics().topics == 0)
            assert (await bob.join(topic))["status"] == "ok"
            # bob's join on node 1 reaches alice on node 0 as a presence_diff
            await wait_until(lambda: any("bob" in d["joins"] for d in alice.events(topic, "presence_diff")))
            await bob.push(topic, "typing_start", {}, join_ref="1")
            await wait_until(lambda: bool(alice.events(topic, "user_typing")))
            assert alice.events(topic, "user_typing") == [{"user_id": "bob", "typing": True}]
            assert bob.events(topic, "user_typing") == []  # broadcast_from: not back to the sender
            # a membership revoked on node 0 stops live delivery to bob's device on node 1
            nodes[0].node.deps.live.revoke(conversation_id, "bob")
            await send_many(nodes[0], conversation_id, "alice", 1, "after-revoke")
            await wait_until(lambda: len(conversation_seqs(alice, conversation_id)) == 1)
            await nodes[1].node.store.create_conversation(["x"])  # a store round trip for node 1 to settle
            await wait_until(lambda: nodes[1].bridge.statistics().received >= 3)
            assert conversation_seqs(bob, conversation_id) == []


class CountingSerializer:
    def __init__(self, inner: Serializer) -> None:
        self.inner = inner
        self.vsn = inner.vsn
        self.encodes = 0

    def decode(self, data: str | bytes) -> Message:
        return self.inner.decode(data)

    def encode(self, message: Message | Reply | Broadcast) -> bytes:
        self.encodes += 1
        return self.inner.encode(message)


class Frames:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, frame: bytes, droppable: bool = False) -> None:
        self.sent.append(frame)


@dataclass(eq=False)
class Sub:
    serializer: Serializer
    transport: Frames


async def test_the_receiving_node_encodes_once_per_serializer_and_binary_payloads_cross(
    tmp_path: Path, redis: RedisServer
) -> None:
    with trio.fail_after(30):
        async with open_cluster(tmp_path, redis.url) as nodes:
            v1, v2 = CountingSerializer(V1), CountingSerializer(V2)
            subs = [Sub(v2, Frames()) for _ in range(5)] + [Sub(v1, Frames()) for _ in range(3)]
            for sub in subs:
                nodes[1].node.pubsub.subscribe("room:1", sub)
            await connected(*nodes)
            await wait_until(lambda: nodes[1].bridge.statistics().resyncs.get("subscribe", 0) >= 1)
            assert nodes[0].node.pubsub.broadcast("room:1", "shout", {"text": "héllo"}) == 0
            await wait_until(lambda: all(len(s.transport.sent) == 1 for s in subs))
            assert (v1.encodes, v2.encodes) == (1, 1)
            frames = {id(s.transport.sent[0]) for s in subs if s.serializer is v2}
            assert len(frames) == 1  # the very same bytes object for every V2 subscriber
            opcode, data = unframe(subs[0].transport.sent[0])
            assert (opcode, json.loads(data)) == (1, [None, None, "room:1", "shout", {"text": "héllo"}])
            nodes[0].node.pubsub.broadcast("room:1", "blob", b"\x00\x01\xff")
            await wait_until(lambda: len(subs[0].transport.sent) == 2)
            opcode, data = unframe(subs[0].transport.sent[1])
            assert opcode == 2
            assert data.endswith(b"\x00\x01\xff")
            for sub in subs:  # the last local subscriber leaving unsubscribes the channel
                nodes[1].node.pubsub.unsubscribe("room:1", sub)
            assert nodes[1].bridge.statistics().topics == 0
