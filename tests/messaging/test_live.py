"""`whispr.delivery.live` on a scripted in-memory stream: the feed's and the gate's rules in isolation."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from whispr.delivery.live import MAX_PENDING, Feed, Gate, LiveDelivery, Page
from whispr.protocol import SharedFrames

TOPIC = "user:u"


class Stream:
    """A stream of entries 1..n; reads can be held until `release` is set."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.hold = False
        self.release = trio.Event()

    async def read(self, after_seq: int, limit: int) -> Page:
        snapshot = self.n
        if self.hold:
            await self.release.wait()
        else:
            await trio.lowlevel.checkpoint()
        last = min(snapshot, after_seq + limit)
        return Page([(seq, {"seq": seq}) for seq in range(after_seq + 1, last + 1)], snapshot, last < snapshot, True)


class Recorder:
    def __init__(self) -> None:
        self.seqs: list[int] = []

    def __call__(self, seq: int, payload: dict[str, Any], frames: SharedFrames | None) -> None:
        assert payload == {"seq": seq}
        self.seqs.append(seq)


async def live_gate(live: LiveDelivery, stream: Stream, position: int) -> tuple[Feed, Gate, Recorder]:
    recorder = Recorder()
    gate = Gate("u", position, recorder)
    feed = live.attach(TOPIC, gate, stream.read)
    await live.catch_up(feed, gate, await stream.read(position, live.page_size))
    assert gate.live
    return feed, gate, recorder


async def test_a_pull_read_before_a_head_reset_is_read_again() -> None:
    """A gate that goes live alone lowers the head while a pull is in flight from the old head:
    the pull's page must not be handed over, or the new gate would skip (its position, old head]."""
    live, stream = LiveDelivery(), Stream(10)
    feed, first, _ = await live_gate(live, stream, 10)
    live.attach(TOPIC, Gate("u", 0, Recorder()), stream.read)  # a replaying gate keeps the feed alive
    stream.n = 15
    stream.hold = True
    async with trio.open_nursery() as nursery:
        nursery.start_soon(feed.pull, 100)
        await trio.testing.wait_all_tasks_blocked()
        live.detach(TOPIC, first)
        recorder = Recorder()
        second = Gate("u", 5, recorder)
        live.attach(TOPIC, second, stream.read)
        await live.catch_up(feed, second, Page([], 5, False, True))
        assert second.live
        assert feed.head == 5
        stream.hold = False
        stream.release.set()
    assert recorder.seqs == list(range(6, 16))


async def test_offers_are_handed_over_in_seq_order_and_gaps_are_pulled() -> None:
    live, stream = LiveDelivery(page_size=3), Stream(2)
    feed, _, recorder = await live_gate(live, stream, 2)
    stream.n = 9
    for seq in (4, 3, 3, 2, 6):
        feed.offer(seq, {"seq": seq})
    assert recorder.seqs == [3, 4]
    assert list(feed.pending) == [6]
    await feed.pull(live.page_size)  # 5 was never offered: read from the store, then 6 .. 9
    assert recorder.seqs == list(range(3, 10))
    assert feed.pending == {}


async def test_the_pending_buffer_is_bounded() -> None:
    live, stream = LiveDelivery(), Stream(0)
    feed, _, recorder = await live_gate(live, stream, 0)
    for seq in range(2, MAX_PENDING + 10):
        feed.offer(seq, {"seq": seq})
    assert len(feed.pending) == MAX_PENDING
    assert recorder.seqs == []
    stream.n = MAX_PENDING + 9
    await feed.pull(live.page_size)
    assert recorder.seqs == list(range(1, MAX_PENDING + 10))


async def test_a_replaying_gate_gets_nothing_from_the_feed_and_joins_where_it_stands() -> None:
    live, stream = LiveDelivery(page_size=4), Stream(6)
    feed, _, live_recorder = await live_gate(live, stream, 6)
    recorder = Recorder()
    gate = Gate("u", 0, recorder)
    live.attach(TOPIC, gate, stream.read)
    feed.offer(7, {"seq": 7})  # the replaying gate does not see it
    stream.n = 7
    await live.catch_up(feed, gate, await stream.read(0, 4))
    feed.offer(8, {"seq": 8})
    assert recorder.seqs == list(range(1, 9))
    assert live_recorder.seqs == [7, 8]


async def test_a_position_ahead_of_the_head_is_clamped() -> None:
    live, stream = LiveDelivery(), Stream(3)
    recorder = Recorder()
    gate = Gate("u", 50, recorder)
    feed = live.attach(TOPIC, gate, stream.read)
    await live.catch_up(feed, gate, await stream.read(50, 100))
    feed.offer(4, {"seq": 4})
    assert recorder.seqs == [4]


async def test_revoked_gates_and_detached_feeds_get_nothing() -> None:
    live, stream = LiveDelivery(), Stream(0)
    feed, gate, recorder = await live_gate(live, stream, 0)
    live.revoke("nope", "u")
    live.revoke("u", "someone else")
    feed.offer(1, {"seq": 1})
    gate.revoked = True
    feed.offer(2, {"seq": 2})
    live.detach(TOPIC, gate)
    live.detach(TOPIC, gate)
    assert recorder.seqs == [1]
    assert live.attach(TOPIC, Gate("u", 0, recorder), stream.read) is not feed
