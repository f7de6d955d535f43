"""The MessageStore contract, run on every backend (SQLite and PostgreSQL; see conftest.py)."""

from __future__ import annotations

from collections import defaultdict

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.adapters.conftest import DAY, FakeClock
from tests.adapters.store_helpers import append_message
from whispr.adapters import migrate, open_store
from whispr.adapters.aio import open_bridge
from whispr.delivery.store import ConversationNotFound, Message, MessageStore, NotMember


async def send(store: MessageStore, conversation_id: str, sender: str, key: str, content: str = "hi") -> Message:
    message, _ = await append_message(store, conversation_id, sender, f"{sender}-phone", key, "text", content, {}, None)
    return message


async def history(store: MessageStore, conversation_id: str) -> list[Message]:
    page = await store.messages_after(conversation_id, 0, 10_000)
    assert not page.has_more
    return page.messages


async def test_append_returns_the_stored_message(store: MessageStore, clock: FakeClock) -> None:
    conversation = await store.create_conversation(["ann", "bob"])
    metadata = {"mentions": ["bob"], "nested": {"emoji": "😀", "n": 1.5}}

    message, duplicate = await append_message(
        store, conversation, "ann", "ann-phone", "c1", "text", "héllo", metadata, "m0"
    )

    assert not duplicate
    assert message.conversation_id == conversation
    assert message.seq == 1
    assert (message.sender_id, message.sender_device_id, message.client_message_id) == ("ann", "ann-phone", "c1")
    assert (message.type, message.content, message.metadata, message.reply_to) == ("text", "héllo", metadata, "m0")
    assert message.inserted_at == int(clock.now * 1000)
    assert await history(store, conversation) == [message]
    assert message.payload()["inserted_at"] == "2023-11-14T22:13:20.000Z"


async def test_append_returns_each_recipients_inbox_seq_as_stored(store: MessageStore) -> None:
    ab = await store.create_conversation(["ann", "bob"])
    bc = await store.create_conversation(["bob", "cid"])
    results = []

    async def append(conversation: str, sender: str, key: str) -> None:
        results.append(await store.append(conversation, sender, f"{sender}-phone", key, "text", "x", {}, None))

    async with trio.open_nursery() as nursery:  # concurrent: committed in one batch
        for i in range(5):
            nursery.start_soon(append, ab, "ann", f"a{i}")
            nursery.start_soon(append, bc, "cid", f"c{i}")
    retry = await store.append(ab, "ann", "ann-phone", "a0", "text", "x", {}, None)

    assert retry.duplicate
    assert dict(retry.inbox) == {}
    for user in ("ann", "bob", "cid"):
        page = await store.inbox_after(user, 0, 100)
        returned = sorted((r.inbox[user], r.message.id) for r in results if user in r.inbox)
        assert returned == [(e.seq, e.message.id) for e in page.entries], user
    assert all(
        not r.duplicate and sorted(r.inbox) == ["ann", "bob"] for r in results if r.message.conversation_id == ab
    )


async def test_seq_is_gap_free_per_conversation_under_concurrent_appends(store: MessageStore) -> None:
    conversations = [await store.create_conversation(["ann", "bob"]) for _ in range(3)]
    acked: dict[str, list[Message]] = defaultdict(list)

    async def sender(n: int) -> None:
        for i in range(10):
            conversation = conversations[(n + i) % 3]
            acked[conversation].append(await send(store, conversation, f"user{n}", f"k{i}"))

    async with trio.open_nursery() as nursery:
        for n in range(30):
            nursery.start_soon(sender, n)

    for conversation in conversations:
        stored = await history(store, conversation)
        assert [m.seq for m in stored] == list(range(1, 101))
        assert sorted(stored, key=lambda m: m.seq) == sorted(acked[conversation], key=lambda m: m.seq)
        assert len({m.id for m in stored}) == 100


async def test_a_retry_returns_the_original_and_stores_nothing(store: MessageStore) -> None:
    conversation = await store.create_conversation(["ann", "bob"])
    first, first_dup = await append_message(store, conversation, "ann", "phone", "c1", "text", "one", {"a": 1}, None)
    await send(store, conversation, "bob", "c1")  # same client_message_id, other sender: a new message

    retry, retry_dup = await append_message(store, conversation, "ann", "laptop", "c1", "text", "changed", {}, "x")

    assert not first_dup
    assert retry_dup
    assert retry == first
    assert [m.seq for m in await history(store, conversation)] == [1, 2]
    assert (await store.inbox_after("bob", 0, 10)).head_seq == 2


async def test_concurrent_duplicates_in_one_batch_store_one_message(store: MessageStore) -> None:
    conversation = await store.create_conversation(["ann", "bob"])
    results: list[tuple[Message, bool]] = []

    async def attempt() -> None:
        results.append(await append_message(store, conversation, "ann", "phone", "same", "text", "x", {}, None))

    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(attempt)

    assert sorted(dup for _, dup in results) == [False] + [True] * 19
    assert {m for m, _ in results} == {results[0][0]}
    assert [m.seq for m in await history(store, conversation)] == [1]
    assert [e.seq for e in (await store.inbox_after("bob", 0, 10)).entries] == [1]


async def test_an_unknown_conversation_fails_only_its_own_append(store: MessageStore) -> None:
    conversation = await store.create_conversation(["ann"])
    outcomes: dict[str, object] = {}

    async def attempt(target: str, key: str) -> None:
        try:
            outcomes[key] = await send(store, target, "ann", key)
        except ConversationNotFound as exc:
            outcomes[key] = exc

    async with trio.open_nursery() as nursery:
        for i in range(10):
            nursery.start_soon(attempt, conversation if i % 2 else "no-such-conversation", f"k{i}")

    assert sum(isinstance(o, ConversationNotFound) for o in outcomes.values()) == 5
    assert [m.seq for m in await history(store, conversation)] == [1, 2, 3, 4, 5]
    with pytest.raises(ConversationNotFound):
        await store.messages_after("no-such-conversation", 0, 10)


async def test_messages_after_pages_in_seq_order(store: MessageStore) -> None:
    conversation = await store.create_conversation(["ann"])
    for i in range(25):
        await send(store, conversation, "ann", f"k{i}", content=str(i))

    first = await store.messages_after(conversation, 0, 10)
    second = await store.messages_after(conversation, first.messages[-1].seq, 10)
    last = await store.messages_after(conversation, second.messages[-1].seq, 10)
    caught_up = await store.messages_after(conversation, 25, 10)

    assert [m.seq for m in first.messages] == list(range(1, 11))
    assert [m.seq for m in second.messages] == list(range(11, 21))
    assert [m.seq for m in last.messages] == list(range(21, 26))
    assert [m.content for m in last.messages] == [str(i) for i in range(20, 25)]
    assert (first.has_more, second.has_more, last.has_more, caught_up.has_more) == (True, True, False, False)
    assert {p.head_seq for p in (first, second, last, caught_up)} == {25}
    assert all(p.recovered for p in (first, second, last, caught_up))
    assert caught_up.messages == []
    ahead = await store.messages_after(conversation, 30, 10)  # a position the store never issued
    assert (ahead.messages, ahead.recovered) == ([], False)
    with pytest.raises(ValueError, match="limit"):
        await store.messages_after(conversation, 0, 0)


async def test_inbox_collects_every_conversation_of_a_user_in_order(store: MessageStore) -> None:
    pair = await store.create_conversation(["ann", "bob"])
    group = await store.create_conversation(["ann", "bob", "cat"])
    sent = [
        await send(store, pair, "ann", "1"),
        await send(store, group, "cat", "2"),
        await send(store, pair, "bob", "3"),
        await send(store, group, "ann", "4"),
    ]

    bob = await store.inbox_after("bob", 0, 10)
    cat = await store.inbox_after("cat", 0, 10)
    ann_page = await store.inbox_after("ann", 1, 2)

    assert [(e.seq, e.message) for e in bob.entries] == list(enumerate(sent, start=1))
    assert (bob.head_seq, bob.has_more, bob.recovered) == (4, False, True)
    assert [e.message for e in cat.entries] == [sent[1], sent[3]]
    assert [e.seq for e in cat.entries] == [1, 2]
    assert [e.message for e in ann_page.entries] == sent[1:3]  # the sender's own messages too
    assert ann_page.has_more
    assert await store.inbox_after("nobody", 0, 10) == type(bob)([], 0, False, True)


async def test_inbox_follows_membership_at_write_time(store: MessageStore) -> None:
    conversation = await store.create_conversation(["ann", "bob"])
    before = await send(store, conversation, "ann", "1")
    await store.add_member(conversation, "cat")
    await store.remove_member(conversation, "bob")
    after = await send(store, conversation, "ann", "2")

    assert [e.message for e in (await store.inbox_after("bob", 0, 10)).entries] == [before]
    assert [e.message for e in (await store.inbox_after("cat", 0, 10)).entries] == [after]
    assert [e.message for e in (await store.inbox_after("ann", 0, 10)).entries] == [before, after]


async def test_require_member_refuses_a_non_member_in_the_write_transaction(store: MessageStore) -> None:
    conversation = await store.create_conversation(["ann", "bob"])
    kept = await store.append(conversation, "bob", "bob-phone", "1", "text", "x", {}, None, require_member=True)
    await store.remove_member(conversation, "bob")

    for key in ("1", "2"):  # a retry of a stored key is refused too
        with pytest.raises(NotMember):
            await store.append(conversation, "bob", "bob-phone", key, "text", "x", {}, None, require_member=True)
    system = await store.append(conversation, "system", "system", "3", "text", "x", {}, None)

    assert [m.id for m in await history(store, conversation)] == [kept.message.id, system.message.id]
    assert sorted(system.inbox) == ["ann"]


async def test_device_cursors_only_move_forward_and_never_past_the_head(store: MessageStore) -> None:
    conversation = await store.create_conversation(["ann", "bob"])
    for i in range(5):
        await send(store, conversation, "ann", str(i))

    assert await store.cursor("bob", "phone") == 0
    assert await store.advance_cursor("bob", "phone", 3) == 3
    assert await store.advance_cursor("bob", "phone", 2) == 3  # never back
    assert await store.advance_cursor("bob", "phone", 99) == 5  # clamped to the inbox head
    assert await store.advance_cursor("bob", "laptop", 1) == 1  # per device
    assert (await store.cursor("bob", "phone"), await store.cursor("bob", "laptop")) == (5, 1)
    assert await store.advance_cursor("dan", "phone", 7) == 0  # an empty inbox has head 0
    with pytest.raises(ValueError, match="seq"):
        await store.advance_cursor("bob", "phone", -1)


async def test_inbox_from_cursor_reads_the_page_after_the_devices_cursor(store: MessageStore) -> None:
    conversation = await store.create_conversation(["ann", "bob"])
    for i in range(5):
        await send(store, conversation, "ann", str(i))
    await store.advance_cursor("bob", "phone", 2)

    position, page = await store.inbox_from_cursor("bob", "phone", 2)
    assert position == 2
    assert page == await store.inbox_after("bob", 2, 2)
    assert [entry.seq for entry in page.entries] == [3, 4]
    assert (page.head_seq, page.has_more, page.recovered) == (5, True, True)
    position, page = await store.inbox_from_cursor("bob", "laptop", 100)  # never acked: from 0
    assert (position, [entry.seq for entry in page.entries]) == (0, [1, 2, 3, 4, 5])
    assert await store.inbox_from_cursor("dan", "phone", 10) == (0, await store.inbox_after("dan", 0, 10))


async def test_membership(store: MessageStore) -> None:
    first = await store.create_conversation(["bob", "ann", "bob"])
    second = await store.create_conversation(["ann"])

    assert await store.members(first) == ["ann", "bob"]
    assert await store.is_member(first, "bob")
    assert not await store.is_member(first, "cat")
    assert await store.conversations_of("ann") == sorted([first, second])

    await store.add_member(second, "bob")
    await store.add_member(second, "bob")  # idempotent
    await store.remove_member(first, "bob")
    await store.remove_member(first, "nobody")  # ignored

    assert await store.conversations_of("bob") == [second]
    assert not await store.is_member(first, "bob")
    assert await store.members(first) == ["ann"]
    await store.add_member(first, "bob")  # rejoin
    assert await store.members(first) == ["ann", "bob"]
    assert await store.members("no-such-conversation") == []
    with pytest.raises(ConversationNotFound):
        await store.add_member("no-such-conversation", "ann")


async def test_users(store: MessageStore) -> None:
    assert not await store.user_active("ann")
    await store.upsert_user("ann", True)
    assert await store.user_active("ann")
    await store.upsert_user("ann", False)
    assert not await store.user_active("ann")


async def test_notifications(store: MessageStore, clock: FakeClock) -> None:
    first = await store.create_notification("ann", "mention", "Bob mentioned you", "hi @ann", {"conversation": "c"})
    clock.advance(1)
    second = await store.create_notification("ann", "invite", "Join", "", {})
    other = await store.create_notification("bob", "invite", "Join", "", {})

    assert await store.unread_notifications("ann", 10) == [first, second]
    assert first.data == {"conversation": "c"}
    assert first.created_at == int((clock.now - 1) * 1000)
    assert first.read_at is None
    assert await store.mark_notifications_read("ann", [first.id, other.id, "unknown"]) == 1
    assert await store.mark_notifications_read("ann", [first.id]) == 0
    assert await store.unread_notifications("ann", 10) == [second]
    assert await store.unread_notifications("bob", 10) == [other]


async def test_retention_boundary(store: MessageStore, clock: FakeClock) -> None:
    conversation = await store.create_conversation(["ann", "bob"])
    old = [await send(store, conversation, "ann", str(i)) for i in range(3)]
    clock.advance(1)
    newer = await send(store, conversation, "ann", "3")

    clock.advance(DAY - 1)  # the first three are exactly 24 h old: still replayed
    kept = await store.messages_after(conversation, 0, 10)
    assert (kept.messages, kept.recovered) == ([*old, newer], True)

    clock.advance(0.001)  # now they are older than retention
    conversation_page = await store.messages_after(conversation, 0, 10)
    inbox_page = await store.inbox_after("bob", 0, 10)
    assert (conversation_page.messages, conversation_page.head_seq, conversation_page.recovered) == ([newer], 4, False)
    assert ([e.message for e in inbox_page.entries], inbox_page.head_seq, inbox_page.recovered) == ([newer], 4, False)
    assert (await store.messages_after(conversation, 3, 10)).recovered  # the position right before what is left
    assert (await store.inbox_after("bob", 3, 10)).recovered
    assert not (await store.inbox_after("bob", 2, 10)).recovered

    clock.advance(DAY)  # everything expired: nothing to replay; only a caught-up device is "recovered"
    assert (await store.messages_after(conversation, 0, 10)).recovered is False
    assert (await store.messages_after(conversation, 4, 10)).recovered is True
    assert await store.purge_expired() == 4 * 2  # inbox entries of ann and bob
    assert await store.purge_expired() == 0
    empty = await store.inbox_after("bob", 2, 10)
    assert (empty.entries, empty.head_seq, empty.recovered) == ([], 4, False)
    assert len(await history(store, conversation)) == 0  # past retention, and not replayed
    fresh = await send(store, conversation, "ann", "4")
    assert [e.message for e in (await store.inbox_after("bob", 4, 10)).entries] == [fresh]
    assert (await store.inbox_after("bob", 4, 10)).recovered


async def test_data_survives_reopening(store_url: str, clock: FakeClock) -> None:
    async with open_bridge():
        async with open_store(store_url, clock=clock) as store:
            conversation = await store.create_conversation(["ann", "bob"])
            sent = [await send(store, conversation, "ann", str(i)) for i in range(3)]
            await store.advance_cursor("bob", "phone", 2)
        async with open_store(store_url, clock=clock) as store:
            assert await history(store, conversation) == sent
            assert await store.cursor("bob", "phone") == 2
            again, duplicate = await append_message(store, conversation, "ann", "x", "1", "text", "", {}, None)
            assert (again, duplicate) == (sent[1], True)
            assert (await send(store, conversation, "ann", "3")).seq == 4


async def test_migrate_is_idempotent(store_url: str) -> None:
    async with open_bridge():
        assert await migrate(store_url) == [1]
        assert await migrate(store_url) == []
        async with open_store(store_url) as store:
            assert await store.members("none") == []


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    plan=st.lists(
        st.tuples(st.integers(0, 2), st.integers(0, 3), st.integers(0, 5), st.integers(1, 3)), min_size=1, max_size=40
    )
)
async def test_property_seq_gap_free_under_concurrent_appends_with_retries(
    store_url: str, plan: list[tuple[int, int, int, int]]
) -> None:
    """Each (conversation, sender, key, attempts) is sent `attempts` times, all concurrently.

    Async fixtures are not rebuilt per Hypothesis example, so each example opens the store itself
    (same database; fresh conversations).
    """
    async with open_bridge(), open_store(store_url) as store:
        await check_concurrent_appends_with_retries(store, plan)


async def check_concurrent_appends_with_retries(store: MessageStore, plan: list[tuple[int, int, int, int]]) -> None:
    conversations = [await store.create_conversation(["ann", "bob"]) for _ in range(3)]
    inbox_before = (await store.inbox_after("bob", 0, 1)).head_seq
    outcomes: dict[tuple[int, int, int], list[tuple[Message, bool]]] = defaultdict(list)

    async def attempt(c: int, s: int, k: int) -> None:
        outcome = await append_message(store, conversations[c], f"u{s}", "d", f"k{k}", "text", "", {}, None)
        outcomes[(c, s, k)].append(outcome)

    async with trio.open_nursery() as nursery:
        for c, s, k, attempts in plan:
            for _ in range(attempts):
                nursery.start_soon(attempt, c, s, k)

    for key, results in outcomes.items():
        assert len({m for m, _ in results}) == 1, key  # every attempt sees the same message
        assert [dup for _, dup in results].count(False) == 1, key
    for c, conversation in enumerate(conversations):
        stored = await history(store, conversation)
        assert [m.seq for m in stored] == list(range(1, len(stored) + 1))
        assert {m.id for m in stored} == {results[0][0].id for key, results in outcomes.items() if key[0] == c}
    inbox = await store.inbox_after("bob", inbox_before, 1000)
    assert [e.seq for e in inbox.entries] == list(range(inbox_before + 1, inbox_before + len(outcomes) + 1))
    for conversation in conversations:
        in_inbox = [e.message.seq for e in inbox.entries if e.message.conversation_id == conversation]
        assert in_inbox == sorted(in_inbox)
