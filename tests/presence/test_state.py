"""The pure presence core: shapes, ownership, update and node removal (protocol.md §5, §10 item 23)."""

from __future__ import annotations

import re

import pytest

from tests.presence.presence_js import sync_diff
from whispr.presence import AlreadyTracked, Diff, NotTracked, Owner, PresenceState, random_ref

PHONE = Owner("node-a", "user_socket:42:phone")
LAPTOP = Owner("node-a", "user_socket:42:laptop")
REMOTE = Owner("node-b", "user_socket:7:phone")
TOPIC = "user:42"


def meta(device: str, online_at: int = 1) -> dict[str, object]:
    return {"device_id": device, "device_type": "ios", "online_at": online_at}


def test_random_ref_is_phoenix_shaped() -> None:
    refs = {random_ref() for _ in range(100)}
    assert len(refs) == 100
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{16}", ref) for ref in refs)


def test_two_devices_of_one_user_are_one_key_with_two_metas() -> None:
    state = PresenceState()
    phone_ref, _ = state.track(PHONE, TOPIC, "42", meta("phone"))
    laptop_ref, _ = state.track(LAPTOP, TOPIC, "42", meta("laptop"))
    assert phone_ref != laptop_ref
    assert state.list(TOPIC) == {
        "42": {
            "metas": [
                {**meta("phone"), "phx_ref": phone_ref},
                {**meta("laptop"), "phx_ref": laptop_ref},
            ]
        }
    }
    assert (state.topic_count, state.meta_count) == (1, 2)


def test_track_returns_a_join_diff_in_presence_diff_shape() -> None:
    state = PresenceState()
    ref, diff = state.track(PHONE, TOPIC, "42", meta("phone"))
    assert diff.to_payload() == {"joins": {"42": {"metas": [{**meta("phone"), "phx_ref": ref}]}}, "leaves": {}}


def test_the_same_owner_tracks_a_key_once() -> None:
    state = PresenceState()
    state.track(PHONE, TOPIC, "42", meta("phone"))
    with pytest.raises(AlreadyTracked):
        state.track(PHONE, TOPIC, "42", meta("phone"))
    assert state.meta_count == 1


def test_untrack_leaves_exactly_the_meta_with_that_ref() -> None:
    state = PresenceState()
    _, first = state.track(PHONE, TOPIC, "42", meta("phone"))
    laptop_ref, second = state.track(LAPTOP, TOPIC, "42", meta("laptop"))
    client = sync_diff(sync_diff({}, first.to_payload()), second.to_payload())

    diff = state.untrack(PHONE, TOPIC, "42")

    assert diff.to_payload() == {
        "joins": {},
        "leaves": {"42": {"metas": [first.to_payload()["joins"]["42"]["metas"][0]]}},
    }
    assert sync_diff(client, diff.to_payload()) == state.list(TOPIC)
    assert state.list(TOPIC) == {"42": {"metas": [{**meta("laptop"), "phx_ref": laptop_ref}]}}


def test_the_last_leave_removes_the_key_and_the_topic() -> None:
    state = PresenceState()
    state.track(PHONE, TOPIC, "42", meta("phone"))
    state.untrack(PHONE, TOPIC, "42")
    assert state.list(TOPIC) == {}
    assert (state.topic_count, state.meta_count) == (0, 0)
    assert state.tracked(PHONE) == []


def test_untrack_of_nothing_is_an_empty_diff() -> None:
    diff = PresenceState().untrack(PHONE, TOPIC, "42")
    assert not diff
    assert diff.to_payload() == {"joins": {}, "leaves": {}}


def test_update_joins_the_new_meta_and_leaves_the_old_in_one_diff() -> None:
    state = PresenceState()
    old_ref, _ = state.track(PHONE, TOPIC, "42", meta("phone"))
    state.track(LAPTOP, TOPIC, "42", meta("laptop"))

    new_ref, diff = state.update(PHONE, TOPIC, "42", meta("phone", online_at=2))

    new_meta = {**meta("phone", online_at=2), "phx_ref": new_ref, "phx_ref_prev": old_ref}
    assert new_ref != old_ref
    assert diff.to_payload() == {
        "joins": {"42": {"metas": [new_meta]}},
        "leaves": {"42": {"metas": [{**meta("phone"), "phx_ref": old_ref}]}},
    }
    assert state.list(TOPIC)["42"]["metas"][-1] == new_meta
    assert state.ref(PHONE, TOPIC, "42") == new_ref


def test_update_of_nothing_raises() -> None:
    with pytest.raises(NotTracked):
        PresenceState().update(PHONE, TOPIC, "42", meta("phone"))


def test_remove_node_leaves_all_its_metas_and_nothing_else() -> None:
    state = PresenceState()
    state.track(PHONE, "conversation:1", "42", meta("phone"))
    remote_ref, _ = state.track(REMOTE, "conversation:1", "7", meta("phone"))
    state.track(REMOTE, "conversation:2", "7", meta("phone"))

    diffs = state.remove_node("node-b")

    assert sorted(diffs) == ["conversation:1", "conversation:2"]
    assert diffs["conversation:1"].to_payload() == {
        "joins": {},
        "leaves": {"7": {"metas": [{**meta("phone"), "phx_ref": remote_ref}]}},
    }
    assert list(state.list("conversation:1")) == ["42"]
    assert state.list("conversation:2") == {}
    assert state.remove_node("node-b") == {}


def test_tracked_lists_an_owners_topics_in_order() -> None:
    state = PresenceState()
    state.track(PHONE, "user:42", "42", meta("phone"))
    state.track(PHONE, "conversation:1", "42", meta("phone"))
    state.track(LAPTOP, "conversation:1", "42", meta("laptop"))
    assert state.tracked(PHONE) == [("user:42", "42"), ("conversation:1", "42")]


def test_merge_cancels_a_join_with_a_later_leave_of_the_same_ref() -> None:
    state = PresenceState()
    buffered = Diff()
    _, joined = state.track(PHONE, TOPIC, "42", meta("phone"))
    buffered.merge(joined)
    buffered.merge(state.untrack(PHONE, TOPIC, "42"))
    assert not buffered
    assert buffered.counts() == (0, 0)


def test_merged_diffs_take_a_client_where_the_sequence_does() -> None:
    state = PresenceState()
    _, first = state.track(PHONE, TOPIC, "42", meta("phone"))
    client = sync_diff({}, first.to_payload())
    steps = [
        state.track(LAPTOP, TOPIC, "42", meta("laptop"))[1],
        state.update(PHONE, TOPIC, "42", meta("phone", 2))[1],
        state.update(PHONE, TOPIC, "42", meta("phone", 3))[1],
        state.untrack(LAPTOP, TOPIC, "42"),
    ]
    buffered = Diff()
    for step in steps:
        buffered.merge(step)
    assert buffered.counts() == (1, 1)  # the phone's last meta joins, its first leaves; the laptop cancels out
    assert sync_diff(client, buffered.to_payload()) == state.list(TOPIC)


def test_put_adopts_a_remote_meta_with_its_ref_and_replaces_the_owners_previous_one() -> None:
    state = PresenceState()
    first = {**meta("phone"), "phx_ref": "ref-1"}
    assert state.put(REMOTE, TOPIC, "7", first).to_payload() == {"joins": {"7": {"metas": [first]}}, "leaves": {}}
    assert not state.put(REMOTE, TOPIC, "7", dict(first))  # the same ref again: nothing to tell
    second = {**meta("phone", 2), "phx_ref": "ref-2", "phx_ref_prev": "ref-1"}
    diff = state.put(REMOTE, TOPIC, "7", second)
    assert diff.to_payload() == {"joins": {"7": {"metas": [second]}}, "leaves": {"7": {"metas": [first]}}}
    assert state.list(TOPIC) == {"7": {"metas": [second]}}


def test_owned_lists_one_nodes_metas_for_a_state_transfer() -> None:
    state = PresenceState()
    ref, _ = state.track(PHONE, TOPIC, "42", meta("phone"))
    state.put(REMOTE, TOPIC, "7", {**meta("phone"), "phx_ref": "remote"})
    assert state.owned("node-a") == [(PHONE.tracking_id, TOPIC, "42", {**meta("phone"), "phx_ref": ref})]
    assert state.owned("node-c") == []


def test_replace_node_tells_only_the_differences() -> None:
    state = PresenceState()
    kept = {**meta("phone"), "phx_ref": "kept"}
    gone = {**meta("laptop"), "phx_ref": "gone"}
    state.put(REMOTE, TOPIC, "7", kept)
    state.put(Owner("node-b", "user_socket:7:laptop"), "user:7", "7", gone)
    local_ref, _ = state.track(PHONE, TOPIC, "42", meta("phone"))
    before = {TOPIC: state.list(TOPIC), "user:7": state.list("user:7")}
    new = {**meta("tablet"), "phx_ref": "new"}
    diffs = state.replace_node(
        "node-b", [(REMOTE.tracking_id, TOPIC, "7", kept), ("user_socket:7:tablet", TOPIC, "7", new)]
    )
    assert {topic: diff.to_payload() for topic, diff in diffs.items()} == {
        TOPIC: {"joins": {"7": {"metas": [new]}}, "leaves": {}},
        "user:7": {"joins": {}, "leaves": {"7": {"metas": [gone]}}},
    }
    for topic, diff in diffs.items():  # a subscriber following the diffs reaches the new state
        assert sync_diff(before[topic], diff.to_payload()) == state.list(topic)
    assert state.ref(PHONE, TOPIC, "42") == local_ref  # other nodes untouched
    assert state.replace_node("node-b", state.owned("node-b")) == {}


def test_a_meta_that_leaves_and_comes_back_in_one_diff_is_a_join_for_every_subscriber() -> None:
    state = PresenceState()
    state.put(REMOTE, TOPIC, "7", {**meta("phone"), "phx_ref": "r"})
    before = state.list(TOPIC)
    diff = Diff()
    diff.merge(state.remove_node("node-b")[TOPIC])  # its node went down...
    midway = state.list(TOPIC)  # (a subscriber that joined now)
    diff.seen()
    diff.merge(
        state.replace_node("node-b", [(REMOTE.tracking_id, TOPIC, "7", {**meta("phone"), "phx_ref": "r"})])[TOPIC]
    )
    assert diff.to_payload() == {"joins": {"7": {"metas": [{**meta("phone"), "phx_ref": "r"}]}}, "leaves": {}}
    for start in (before, midway):  # ... and came back
        assert sync_diff(start, diff.to_payload()) == state.list(TOPIC)
    diff.merge(state.remove_node("node-b")[TOPIC])  # and left again: known before the diff, so told
    for start in (before, midway):
        assert sync_diff(start, diff.to_payload()) == state.list(TOPIC) == {}
