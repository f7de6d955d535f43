"""Replay then live, without gap, disorder or duplicate (contract §4.3-§4.5; reliability G2)."""

from __future__ import annotations

import random
from typing import Any

import pytest
import trio

from tests.messaging.conftest import Device, Node, settle
from whispr.delivery.router import Draft
from whispr.delivery.store import InboxPage, MessagePage


def inbox_seqs(device: Device, user_id: str) -> list[int]:
    return [m["inbox_seq"] for m in device.events(f"user:{user_id}", "new_message")]


async def test_offline_device_gets_all_1000_messages_in_order_with_last_seq(node: Node) -> None:
    cid = await node.conversation("alice", "bob")
    bob = node.device("bob")
    await bob.join("user:bob")
    before = await node.send(cid, "alice", 3, prefix="before")
    await settle()
    last_seq = inbox_seqs(bob, "bob")[-1]
    await bob.close()

    async with trio.open_nursery() as nursery:  # concurrent senders: group commit, any wake-up order
        for sender in range(4):
            nursery.start_soon(node.send, cid, "alice", 250, f"s{sender}-")
    offline = (await node.store.inbox_after("bob", last_seq, 2000)).entries
    assert len(offline) == 1000

    bob = node.device("bob")
    joined = await bob.join("user:bob", {"last_seq": last_seq})
    assert joined["response"]["recovered"] is True
    await settle()
    live = await node.send(cid, "alice", 2, prefix="after")
    await settle()
    received = bob.events("user:bob", "new_message")
    assert [m["id"] for m in received] == [e.message.id for e in offline] + [m.id for m in live]
    assert [m["inbox_seq"] for m in received] == list(range(last_seq + 1, last_seq + 1003))
    assert len({m["id"] for m in received}) == 1002
    assert before[-1].id not in {m["id"] for m in received}


async def test_offline_device_resumes_from_its_stored_cursor_without_last_seq(node: Node) -> None:
    cid = await node.conversation("alice", "bob")
    bob = node.device("bob")
    await bob.join("user:bob")
    await node.send(cid, "alice", 10, prefix="early")
    await settle()
    assert (await bob.call("user:bob", "ack", {"seq": 10}))["status"] == "ok"
    await bob.close()
    offline = await node.send(cid, "alice", 1000)

    bob = node.device("bob")
    assert (await bob.join("user:bob"))["response"]["recovered"] is True
    await settle()
    received = bob.events("user:bob", "new_message")
    assert [m["id"] for m in received] == [m.id for m in offline]
    assert [m["inbox_seq"] for m in received] == list(range(11, 1011))


class RacingStore:
    """Delegates to the real store; while a chosen read is in flight (after its snapshot was taken,
    before its result reaches the reader) it runs `during`, e.g. commits of more messages."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.during: dict[str, list[Any]] = {"inbox_after": [], "messages_after": []}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def inbox_after(self, user_id: str, after_seq: int, limit: int) -> InboxPage:
        page: InboxPage = await self._store.inbox_after(user_id, after_seq, limit)
        if self.during["inbox_after"]:
            await self.during["inbox_after"].pop(0)()
        return page

    async def messages_after(self, conversation_id: str, after_seq: int, limit: int) -> MessagePage:
        page: MessagePage = await self._store.messages_after(conversation_id, after_seq, limit)
        if self.during["messages_after"]:
            await self.during["messages_after"].pop(0)()
        return page


@pytest.mark.parametrize("other_device_live", [False, True])
@pytest.mark.parametrize("racing_read", [0, 1, 2])
async def test_messages_committed_during_the_replay_arrive_once_in_order(
    node: Node, other_device_live: bool, racing_read: int
) -> None:
    """Commits land while one of the replay's reads is in flight (the first, a middle or the last
    page), and are fully published meanwhile: with another device of the user live (the feed moves
    past the replay: position < head), or none (the go-live pull reads them)."""
    racing = RacingStore(node.store)
    node.deps.live.page_size = 10
    object.__setattr__(node.deps, "store", racing)
    cid = await node.conversation("alice", "bob")
    await node.send(cid, "alice", 25, prefix="old")
    if other_device_live:
        tablet = node.device("bob", "tablet")
        await tablet.join("user:bob")
        await settle()

    async def commit_more() -> None:
        await node.send(cid, "alice", 7, prefix="racing")
        await settle()  # the live path has published them (to the tablet, if any) before the read returns

    noop: Any = trio.lowlevel.checkpoint
    racing.during["inbox_after"] = [noop] * racing_read + [commit_more]
    bob = node.device("bob")
    await bob.join("user:bob", {"last_seq": 0})
    await settle()
    # Everything committed so far arrived, without waiting for a later message to reveal a gap.
    assert inbox_seqs(bob, "bob") == list(range(1, 33))
    await node.send(cid, "alice", 3, prefix="new")
    await settle()

    expected = [e.message.id for e in (await node.store.inbox_after("bob", 0, 100)).entries]
    assert len(expected) == 35
    assert [m["id"] for m in bob.events("user:bob", "new_message")] == expected
    assert inbox_seqs(bob, "bob") == list(range(1, 36))
    if other_device_live:
        assert [m["id"] for m in tablet.events("user:bob", "new_message")] == expected


async def test_conversation_replay_races_and_out_of_order_wakeups(node: Node) -> None:
    racing = RacingStore(node.store)
    node.deps.live.page_size = 4
    object.__setattr__(node.deps, "store", racing)
    cid = await node.conversation("alice", "bob")
    topic = f"conversation:{cid}"
    await node.send(cid, "alice", 9)

    async def commit_concurrently() -> None:
        async with trio.open_nursery() as nursery:
            for i in range(5):
                nursery.start_soon(node.send, cid, "alice", 3, f"c{i}-")
        await settle()

    racing.during["messages_after"] = [commit_concurrently]
    bob = node.device("bob")
    await bob.join(topic, {"last_seq": 2})
    await settle()
    async with trio.open_nursery() as nursery:
        for i in range(5):
            nursery.start_soon(node.send, cid, "alice", 4, f"d{i}-")
    await settle()
    assert [m["seq"] for m in bob.events(topic, "new_message")] == list(range(3, 45))


async def test_reconnecting_under_concurrent_load_never_gaps_or_duplicates(node: Node) -> None:
    """A sender keeps sending while bob's device drops and rejoins with its last inbox seq, over and
    over, with no synchronisation between the two: every connection continues exactly where the
    previous one stopped, and the union is the whole inbox, in order."""
    cid = await node.conversation("alice", "bob")
    node.deps.live.page_size = 7
    rng = random.Random(5)
    done = trio.Event()

    async def sender() -> None:
        for i in range(300):
            draft = Draft(f"k{i}", f"m{i}", "text", {}, None)
            await node.deps.router.send(cid, "alice", "a1", draft)
            if rng.random() < 0.3:
                await trio.lowlevel.checkpoint()
        done.set()

    received: list[int] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        while not done.is_set():
            bob = node.device("bob")
            await bob.join("user:bob", {"last_seq": received[-1] if received else 0})
            for _ in range(rng.randrange(1, 5)):
                await trio.lowlevel.checkpoint()
            seqs = inbox_seqs(bob, "bob")
            assert seqs == list(range(len(received) + 1, len(received) + 1 + len(seqs)))
            received += seqs
            await bob.close()
        bob = node.device("bob")
        await bob.join("user:bob", {"last_seq": received[-1] if received else 0})
        await settle()
        received += inbox_seqs(bob, "bob")
    assert received == list(range(1, 301))
