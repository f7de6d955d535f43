"""PostgreSQL-only behaviour: several nodes writing at once, and a server crash (reliability.md D8)."""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest
import trio

from tests.adapters.conftest import postgres_url
from tests.adapters.store_helpers import append_message
from tests.services import postgres_server
from whispr.adapters.aio import open_bridge
from whispr.adapters.postgres_store import open_postgres_store
from whispr.delivery.store import Message, StoreUnavailable

pytestmark = pytest.mark.integration


async def test_two_nodes_appending_at_once_keep_seqs_and_inboxes_gap_free(pg_url: str) -> None:
    """Two pools = two nodes. Overlapping members in several conversations would deadlock if the
    lock order were not fixed."""
    async with open_bridge(), open_postgres_store(pg_url) as one, open_postgres_store(pg_url) as two:
        members = ["ann", "bob", "cat", "dan"]
        conversations = [await one.create_conversation(members[i:] + members[:i]) for i in range(4)]
        acked: list[Message] = []

        async def sender(node: int, n: int) -> None:
            store = (one, two)[node]
            for i in range(20):
                message, _ = await append_message(
                    store,
                    conversations[(n + i) % 4],
                    members[n % 4],
                    f"node{node}",
                    f"{node}-{n}-{i}",
                    "text",
                    "",
                    {},
                    None,
                )
                acked.append(message)

        async with trio.open_nursery() as nursery:
            for node in (0, 1):
                for n in range(10):
                    nursery.start_soon(sender, node, n)

        for conversation in conversations:
            page = await two.messages_after(conversation, 0, 1000)
            assert [m.seq for m in page.messages] == list(range(1, 101))
        for user in members:
            inbox = await one.inbox_after(user, 0, 1000)
            assert [e.seq for e in inbox.entries] == list(range(1, 401))
            by_conversation = defaultdict(list)
            for entry in inbox.entries:
                by_conversation[entry.message.conversation_id].append(entry.message.seq)
            assert all(seqs == sorted(seqs) for seqs in by_conversation.values())
        assert len({m.id for m in acked}) == 400


@pytest.mark.slow
async def test_a_crashed_server_fails_calls_promptly_and_loses_no_acked_message() -> None:
    with postgres_server() as server:
        # A 1 s breaker reset: a slow restart may open the breaker, and the writers retry in a loop.
        store_cm = open_postgres_store(postgres_url(server, "whispr"), call_timeout=1.0, reset_timeout=1.0)
        async with open_bridge(), store_cm as store:
            conversation = await store.create_conversation(["ann", "bob"])
            acked: dict[str, Message] = {}
            outcomes: Counter[str] = Counter()
            enough_before, outage_seen, enough_after, done = trio.Event(), trio.Event(), trio.Event(), trio.Event()

            async def writer(n: int) -> None:
                i = 0
                while not done.is_set():
                    key = f"{n}-{i}"
                    try:  # a client retries the same client_message_id until it gets an ok
                        message, duplicate = await append_message(
                            store, conversation, f"user{n}", "phone", key, "text", "", {}, None
                        )
                    except StoreUnavailable:
                        outcomes["unavailable"] += 1
                        if outcomes["unavailable"] >= 10:
                            outage_seen.set()
                        continue
                    outcomes["duplicate" if duplicate else "ok"] += 1
                    acked[key] = message
                    i += 1
                    if len(acked) >= 200:
                        enough_before.set()
                    if outage_seen.is_set() and len(acked) >= 400:
                        enough_after.set()

            async with trio.open_nursery() as nursery:
                for n in range(10):
                    nursery.start_soon(writer, n)
                with trio.fail_after(60):  # a guard against hanging, not a timing assertion
                    await enough_before.wait()
                    await trio.to_thread.run_sync(server.stop, "immediate")
                    await outage_seen.wait()
                    with pytest.raises(StoreUnavailable):
                        await store.messages_after(conversation, 0, 1)
                    await trio.to_thread.run_sync(server.start)
                    await enough_after.wait()
                done.set()

            page = await store.messages_after(conversation, 0, 10_000)
        stored = {m.id: m for m in page.messages}
        assert [key for key, m in acked.items() if stored.get(m.id) != m] == []  # 0 acked messages lost
        assert [m.seq for m in page.messages] == list(range(1, len(page.messages) + 1))
        assert len(page.messages) == len(acked)  # every committed message was eventually acked once
