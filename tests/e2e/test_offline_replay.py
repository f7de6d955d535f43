"""Issue 5, criterion 2 (reliability.md G2): a device offline during 1,000 messages catches up on rejoin.

A third device of alice (phoenix.js, tests/e2e/js/device.js) is on `user:alice`, receives a few
messages, goes offline; 1,000 messages are sent to alice's two conversations; it comes back and
phoenix.js rejoins by itself. Two ways of telling the server where it stands:
- `fn`: `last_seq` from a params FUNCTION (phoenix.js evaluates it at every rejoin, as stock clients do);
- `cursor`: no `last_seq` at all, after an `ack`: the server starts from the stored cursor.
While it replays, 200 more messages are sent live, and alice's other device stays online all along
(so the replaying device has to merge into a feed that is already live).
It must get every message, in order (inbox seq, and seq per conversation), none twice.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import trio

from tests.e2e.conftest import Chat
from tests.e2e.js_device import JsDevice, js_device
from tests.e2e.phx import PhxClient, next_client_ip
from whispr.delivery.router import Draft

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OFFLINE = 1_000
LIVE_DURING_REPLAY = 200
BEFORE = 5


async def _send_many(chat: Chat, conversations: list[tuple[str, list[str]]], prefix: str, count: int) -> None:
    """`count` messages through the router (the one send path), 20 at a time (group commits), over
    the conversations and their members in turn. The client-facing send path is rate limited
    (100/min per user), which is not what this test is about."""
    deps = chat.node.node.deps
    assert deps is not None
    limiter = trio.CapacityLimiter(20)

    async def one(i: int) -> None:
        conversation, members = conversations[i % len(conversations)]
        sender = members[i // len(conversations) % len(members)]
        async with limiter:
            await deps.router.send(
                conversation, sender, "server", Draft(f"{prefix}-{i}", f"{prefix} {i}", "text", {}, None)
            )

    async with trio.open_nursery() as nursery:
        for i in range(count):
            nursery.start_soon(one, i)


def _messages(device: JsDevice, since: int = 0) -> list[dict[str, Any]]:
    return device.of("msg", since)


@pytest.mark.parametrize("mode", ["fn", "cursor"])
async def test_device_offline_during_1000_messages_gets_them_all_in_order_on_rejoin(chat: Chat, mode: str) -> None:
    node = chat.node
    store = node.node.store
    assert store is not None
    with_carol = await store.create_conversation(["alice", "carol"])
    conversations = [(chat.conversation, ["alice", "bob"]), (with_carol, ["alice", "carol"])]

    # alice's phone: a raw client, online the whole time
    phone = await trio.to_thread.run_sync(
        lambda: PhxClient(node.socket_url, node.token("alice", "phone"), client_ip=next_client_ip(), name="phone")
    )
    try:
        assert (await trio.to_thread.run_sync(phone.join, "user:alice"))["status"] == "ok"
        async with js_device(node.socket_url, node.token("alice", "tablet"), "user:alice", mode=mode) as tablet:
            [join] = await tablet.wait(lambda ev: [e for e in ev if e["ev"] == "join"], what="the first join")
            assert join["status"] == "ok"
            assert join["response"]["recovered"] is True
            await _send_many(chat, conversations, "before", BEFORE)
            await tablet.wait(lambda ev: len(_messages(tablet)) == BEFORE, what=f"{BEFORE} live messages")
            if mode == "cursor":
                await tablet.command({"op": "ack", "seq": BEFORE})
                [ack] = await tablet.wait(lambda ev: tablet.of("ack"), what="the ack reply")
                assert ack["status"] == "ok"
                assert await store.cursor("alice", "tablet") == BEFORE

            await tablet.command({"op": "disconnect"})
            await tablet.wait(lambda ev: tablet.of("disconnected"), what="the disconnect")
            await _send_many(chat, conversations, "offline", OFFLINE)
            mark = len(tablet.events)

            started = time.monotonic()
            await tablet.command({"op": "connect"})
            async with trio.open_nursery() as nursery:
                # live traffic while the device replays: it must end up in order after the backlog
                nursery.start_soon(_send_many, chat, conversations, "live", LIVE_DURING_REPLAY)
                total = BEFORE + OFFLINE + LIVE_DURING_REPLAY
                await tablet.wait(
                    lambda ev: any(m["inbox_seq"] >= total for m in _messages(tablet, mark)),
                    what=f"inbox seq {total}",
                    within=60,
                )
            catch_up = time.monotonic() - started

            after = _messages(tablet, mark)
            rejoins = tablet.of("join", mark)
            sent_joins = tablet.of("sent_join", mark)

        # the server's view: alice's inbox, the source of truth
        inbox = []
        after_seq = 0
        while True:
            page = await store.inbox_after("alice", after_seq, 500)
            inbox += page.entries
            if not page.has_more:
                break
            after_seq = page.entries[-1].seq
        assert [e.seq for e in inbox] == list(range(1, total + 1))

        # how the client told the server where it was
        assert sent_joins, "phoenix.js did not rejoin"
        expected_params = {"last_seq": BEFORE} if mode == "fn" else {}
        assert all(j["payload"] == expected_params for j in sent_joins), sent_joins
        assert [j["status"] for j in rejoins][-1] == "ok"
        assert rejoins[-1]["response"]["recovered"] is True

        # everything after the position, once each, in inbox order; ids as stored
        assert [m["inbox_seq"] for m in after] == list(range(BEFORE + 1, total + 1))
        assert [m["id"] for m in after] == [e.message.id for e in inbox[BEFORE:]]
        assert len({m["id"] for m in after}) == len(after)
        for conversation, _ in conversations:
            seqs = [m["seq"] for m in after if m["conversation_id"] == conversation]
            assert seqs == sorted(seqs)
            assert len(set(seqs)) == len(seqs)
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))

        # the phone, online all along, got all of them live, in order
        def phone_done() -> list[dict[str, Any]]:
            got: list[dict[str, Any]] = phone.wait_for(
                lambda _: (
                    len(phone.events("user:alice", "new_message")) >= total
                    and phone.events("user:alice", "new_message")
                ),
                what="all messages on the phone",
            )
            return got

        got = await trio.to_thread.run_sync(phone_done)
        assert [m["inbox_seq"] for m in got] == list(range(1, total + 1))
        print(
            f"\n[G2 {mode}] offline {OFFLINE} + live {LIVE_DURING_REPLAY} during replay: "
            f"received {len(after)}/{total - BEFORE}, duplicates 0, out of order 0, catch-up {catch_up:.2f} s, "
            f"rejoin attempts {len(sent_joins)}"
        )
    finally:
        await trio.to_thread.run_sync(phone.close)
