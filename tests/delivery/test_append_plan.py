"""The single write point's arithmetic, without a database."""

from __future__ import annotations

import itertools

import pytest

from whispr.delivery.append_plan import AppendRequest, appended, number_inbox, plan_batch
from whispr.delivery.store import Appended, ConversationNotFound, Message, NotMember


def request(conversation: str, sender: str, key: str, *, require_member: bool = False) -> AppendRequest:
    return AppendRequest.build(
        conversation, sender, "dev", key, "text", "x", {"k": [1]}, None, require_member=require_member
    )


def ids() -> itertools.count[int]:
    return itertools.count(1)


def test_seqs_continue_each_head_in_request_order() -> None:
    counter = ids()
    plan = plan_batch(
        [request("a", "u", "1"), request("b", "u", "1"), request("a", "u", "2")],
        heads={"a": 7, "b": 0},
        existing={},
        recipients={"a": ["u", "v"], "b": ["u"]},
        now_ms=5,
        new_id=lambda: f"m{next(counter)}",
    )

    assert [(r[0].conversation_id, r[0].seq, r[1]) for r in plan.results if isinstance(r, tuple)] == [
        ("a", 8, False),
        ("b", 1, False),
        ("a", 9, False),
    ]
    assert plan.heads == {"a": 9, "b": 1}
    assert [(m.id, json) for m, json in plan.new_messages] == [
        ("m1", '{"k":[1]}'),
        ("m2", '{"k":[1]}'),
        ("m3", '{"k":[1]}'),
    ]
    assert [(u, m.id) for u, m in plan.deliveries] == [("u", "m1"), ("v", "m1"), ("u", "m2"), ("u", "m3"), ("v", "m3")]
    assert plan.inbox_counts() == {"u": 3, "v": 2}


def test_duplicates_stored_or_in_the_batch_return_the_first_message() -> None:
    stored = Message("old", "a", 3, "u", "dev", "1", "text", "x", {}, None, 1)
    plan = plan_batch(
        [request("a", "u", "1"), request("a", "u", "2"), request("a", "u", "2")],
        heads={"a": 3},
        existing={("a", "u", "1"): stored},
        recipients={"a": ["u"]},
        now_ms=5,
        new_id=lambda: "new",
    )

    first, second, third = plan.results
    assert first == (stored, True)
    assert isinstance(second, tuple)
    assert second[0].seq == 4
    assert third == (second[0], True)
    assert len(plan.new_messages) == 1


def test_an_unknown_conversation_is_that_request_error() -> None:
    plan = plan_batch([request("nope", "u", "1")], {}, {}, {}, 5, lambda: "m")
    assert isinstance(plan.results[0], ConversationNotFound)
    assert plan.new_messages == []


def test_a_sender_who_is_not_a_member_is_refused_only_when_membership_is_required() -> None:
    stored = Message("old", "a", 3, "x", "dev", "1", "text", "x", {}, None, 1)
    counter = ids()
    plan = plan_batch(
        [
            request("a", "x", "1", require_member=True),  # stored before x was removed: still refused
            request("a", "x", "2", require_member=True),
            request("a", "u", "3", require_member=True),
            request("a", "x", "4"),  # the system path: no membership needed
        ],
        heads={"a": 3},
        existing={("a", "x", "1"): stored},
        recipients={"a": ["u", "v"]},
        now_ms=5,
        new_id=lambda: f"m{next(counter)}",
    )

    first, second, third, fourth = plan.results
    assert isinstance(first, NotMember)
    assert isinstance(second, NotMember)
    assert isinstance(third, tuple)
    assert third[0].seq == 4
    assert isinstance(fourth, tuple)
    assert fourth[0].seq == 5
    assert [m.client_message_id for m, _ in plan.new_messages] == ["3", "4"]


def test_number_inbox_continues_each_users_head() -> None:
    m1 = Message("m1", "a", 1, "u", "d", "1", "text", "", {}, None, 1)
    m2 = Message("m2", "a", 2, "u", "d", "2", "text", "", {}, None, 1)
    numbered = number_inbox([("u", m1), ("v", m1), ("u", m2)], {"u": 10})
    assert numbered == [("u", 11, m1), ("v", 1, m1), ("u", 12, m2)]


def test_metadata_must_be_json() -> None:
    with pytest.raises(TypeError):
        AppendRequest.build("a", "u", "d", "1", "text", "", {"bad": object()}, None, require_member=False)


def test_appended_carries_each_new_message_inbox_seqs_and_none_for_duplicates() -> None:
    counter = ids()
    plan = plan_batch(
        [request("a", "u", "1"), request("nope", "u", "1"), request("a", "u", "1"), request("a", "v", "2")],
        heads={"a": 0},
        existing={},
        recipients={"a": ["u", "v"]},
        now_ms=5,
        new_id=lambda: f"m{next(counter)}",
    )
    first, missing, duplicate, second = appended(plan.results, number_inbox(plan.deliveries, {"u": 4}))
    assert isinstance(first, Appended)
    assert isinstance(second, Appended)
    assert (first.message.seq, first.duplicate, dict(first.inbox)) == (1, False, {"u": 5, "v": 1})
    assert isinstance(missing, ConversationNotFound)
    assert duplicate == Appended(first.message, True, {})
    assert (second.message.seq, dict(second.inbox)) == (2, {"u": 6, "v": 2})
