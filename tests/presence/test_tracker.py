"""`PresenceTracker` on Trio's virtual clock: grace period, reconnects, coalescing, telemetry."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from tests.presence.presence_js import sync_diff
from whispr.observability import telemetry
from whispr.presence import AlreadyTracked, NotTracked, PresenceStatistics, PresenceTracker

GRACE = 5.0
WINDOW = 0.05
TOPIC = "user:42"
PHONE = "user_socket:42:phone"
LAPTOP = "user_socket:42:laptop"

Sent = list[tuple[str, str, dict[str, Any]]]


def meta(device: str, online_at: int = 1) -> dict[str, Any]:
    return {"device_id": device, "device_type": "ios", "online_at": online_at}


@asynccontextmanager
async def running(**options: float) -> AsyncIterator[tuple[PresenceTracker, Sent]]:
    sent: Sent = []
    tracker = PresenceTracker(
        lambda topic, event, payload: sent.append((topic, event, payload)),
        node="node-a",
        **{"grace_period": GRACE, "coalesce_window": WINDOW, **options},
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(tracker.run)
        yield tracker, sent
        nursery.cancel_scope.cancel()


async def settle() -> None:
    """Let every held leave and every window run out."""
    await trio.sleep(GRACE + WINDOW + 1)


@pytest.fixture
def diffs_seen() -> Iterator[list[tuple[dict[str, float], dict[str, object]]]]:
    seen: list[tuple[dict[str, float], dict[str, object]]] = []
    telemetry.attach("test-presence", [telemetry.PRESENCE_DIFF], lambda _e, m, md: seen.append((dict(m), dict(md))))
    yield seen
    telemetry.detach("test-presence")


async def test_track_lists_at_once_and_broadcasts_after_the_window(autojump_clock: trio.testing.MockClock) -> None:
    async with running() as (tracker, sent):
        ref = tracker.track(TOPIC, "42", PHONE, meta("phone"))
        assert tracker.list(TOPIC) == {"42": {"metas": [{**meta("phone"), "phx_ref": ref}]}}
        await trio.sleep(WINDOW / 2)
        assert sent == []
        await trio.sleep(WINDOW)
        assert sent == [
            (TOPIC, "presence_diff", {"joins": {"42": {"metas": [{**meta("phone"), "phx_ref": ref}]}}, "leaves": {}})
        ]


async def test_changes_in_one_window_are_one_broadcast_per_topic(autojump_clock: trio.testing.MockClock) -> None:
    async with running() as (tracker, sent):
        refs = [
            tracker.track("conversation:1", str(user), f"user_socket:{user}:phone", meta("phone")) for user in range(5)
        ]
        other = tracker.track("conversation:2", "0", "user_socket:0:phone", meta("phone"))
        await trio.sleep(WINDOW / 2)
        refs.append(tracker.track("conversation:1", "0", "user_socket:0:laptop", meta("laptop")))
        await settle()

    assert [(topic, event) for topic, event, _ in sent] == [
        ("conversation:1", "presence_diff"),
        ("conversation:2", "presence_diff"),
    ]
    joins = sent[0][2]["joins"]
    assert sent[0][2]["leaves"] == {}
    assert sorted(m["phx_ref"] for presence in joins.values() for m in presence["metas"]) == sorted(refs)
    assert [m["device_id"] for m in joins["0"]["metas"]] == ["phone", "laptop"]
    assert sent[1][2]["joins"]["0"]["metas"][0]["phx_ref"] == other


async def test_join_and_leave_inside_one_window_cancel_out(autojump_clock: trio.testing.MockClock) -> None:
    async with running(grace_period=0) as (tracker, sent):
        tracker.track(TOPIC, "42", PHONE, meta("phone"))
        tracker.untrack(TOPIC, "42", PHONE)
        await settle()
        assert sent == []
        assert tracker.list(TOPIC) == {}


async def test_a_leave_waits_for_the_grace_period_then_is_one_diff(
    autojump_clock: trio.testing.MockClock, diffs_seen: list[tuple[dict[str, float], dict[str, object]]]
) -> None:
    async with running() as (tracker, sent):
        ref = tracker.track(TOPIC, "42", PHONE, meta("phone"))
        await settle()
        sent.clear()

        tracker.untrack(TOPIC, "42", PHONE)
        assert tracker.statistics() == PresenceStatistics(topics=1, metas=1, pending_leaves=1, pending_diffs=0)
        await trio.sleep(GRACE - 0.1)
        assert sent == []
        assert tracker.list(TOPIC) != {}  # held: still online for everyone
        await settle()

        assert sent == [
            (TOPIC, "presence_diff", {"joins": {}, "leaves": {"42": {"metas": [{**meta("phone"), "phx_ref": ref}]}}})
        ]
        assert tracker.list(TOPIC) == {}
        assert tracker.statistics() == PresenceStatistics(topics=0, metas=0, pending_leaves=0, pending_diffs=0)
    assert diffs_seen == [
        ({"joins": 1, "leaves": 0}, {"channel": "user"}),
        ({"joins": 0, "leaves": 1}, {"channel": "user"}),
    ]


async def test_a_reconnect_inside_the_grace_period_sends_nothing(autojump_clock: trio.testing.MockClock) -> None:
    async with running() as (tracker, sent):
        ref = tracker.track(TOPIC, "42", PHONE, meta("phone"))
        await settle()
        before = tracker.list(TOPIC)
        sent.clear()

        tracker.untrack(TOPIC, "42", PHONE)
        await trio.sleep(GRACE - 0.1)
        # The new socket's meta has a fresh online_at: it is ignored, the device never went offline.
        assert tracker.track(TOPIC, "42", PHONE, meta("phone", online_at=2)) == ref
        await settle()

        assert sent == []
        assert tracker.list(TOPIC) == before
        assert tracker.statistics().pending_leaves == 0


async def test_a_reconnect_cancels_the_leave_for_good(autojump_clock: trio.testing.MockClock) -> None:
    async with running() as (tracker, sent):
        ref = tracker.track(TOPIC, "42", PHONE, meta("phone"))
        await settle()
        sent.clear()
        tracker.untrack(TOPIC, "42", PHONE)
        await trio.sleep(1)
        tracker.track(TOPIC, "42", PHONE, meta("phone"))
        await trio.sleep(1)
        tracker.untrack(TOPIC, "42", PHONE)  # a second drop: a fresh grace period from now
        await trio.sleep(GRACE - 0.5)
        assert sent == []
        await settle()
        assert [payload["leaves"]["42"]["metas"][0]["phx_ref"] for _, _, payload in sent] == [ref]


async def test_untrack_twice_keeps_the_first_deadline(autojump_clock: trio.testing.MockClock) -> None:
    async with running() as (tracker, sent):
        tracker.track(TOPIC, "42", PHONE, meta("phone"))
        await settle()
        sent.clear()
        tracker.untrack(TOPIC, "42", PHONE)
        await trio.sleep(GRACE / 2)
        tracker.untrack(TOPIC, "42", PHONE)
        await trio.sleep(GRACE / 2 + WINDOW + 0.01)
        assert len(sent) == 1


async def test_a_leave_removes_exactly_the_meta_with_that_ref(autojump_clock: trio.testing.MockClock) -> None:
    async with running() as (tracker, sent):
        phone = tracker.track(TOPIC, "42", PHONE, meta("phone"))
        laptop = tracker.track(TOPIC, "42", LAPTOP, meta("laptop"))
        await settle()
        tracker.untrack(TOPIC, "42", PHONE)
        await settle()

    assert [m["phx_ref"] for m in sent[0][2]["joins"]["42"]["metas"]] == [phone, laptop]
    assert sent[1][2] == {"joins": {}, "leaves": {"42": {"metas": [{**meta("phone"), "phx_ref": phone}]}}}
    client = sync_diff(sync_diff({}, sent[0][2]), sent[1][2])
    assert client == {"42": {"metas": [{**meta("laptop"), "phx_ref": laptop}]}}


async def test_update_is_one_diff_with_join_leave_and_phx_ref_prev(autojump_clock: trio.testing.MockClock) -> None:
    async with running() as (tracker, sent):
        old = tracker.track(TOPIC, "42", PHONE, meta("phone"))
        await settle()
        new = tracker.update(TOPIC, "42", PHONE, meta("phone", online_at=2))
        await settle()

    assert sent[1:] == [
        (
            TOPIC,
            "presence_diff",
            {
                "joins": {"42": {"metas": [{**meta("phone", online_at=2), "phx_ref": new, "phx_ref_prev": old}]}},
                "leaves": {"42": {"metas": [{**meta("phone"), "phx_ref": old}]}},
            },
        )
    ]


async def test_untrack_all_leaves_every_topic_of_the_device(autojump_clock: trio.testing.MockClock) -> None:
    async with running() as (tracker, sent):
        tracker.track("user:42", "42", PHONE, meta("phone"))
        tracker.track("conversation:1", "42", PHONE, meta("phone"))
        tracker.track("conversation:1", "42", LAPTOP, meta("laptop"))
        await settle()
        sent.clear()

        tracker.untrack_all(PHONE)
        assert tracker.statistics().pending_leaves == 2
        await settle()

        assert sorted(topic for topic, _, _ in sent) == ["conversation:1", "user:42"]
        assert tracker.list("user:42") == {}
        assert [m["device_id"] for m in tracker.list("conversation:1")["42"]["metas"]] == ["laptop"]


async def test_tracking_twice_and_updating_nothing_raise(autojump_clock: trio.testing.MockClock) -> None:
    async with running() as (tracker, _):
        tracker.track(TOPIC, "42", PHONE, meta("phone"))
        with pytest.raises(AlreadyTracked):
            tracker.track(TOPIC, "42", PHONE, meta("phone"))
        with pytest.raises(NotTracked):
            tracker.update(TOPIC, "42", LAPTOP, meta("laptop"))
        tracker.untrack(TOPIC, "42", LAPTOP)  # nothing to untrack: no-op
        assert tracker.statistics().pending_leaves == 0


async def test_run_twice_is_refused(autojump_clock: trio.testing.MockClock) -> None:
    async with running() as (tracker, _):
        with pytest.raises(RuntimeError, match="already running"):
            await tracker.run()


async def test_timers_survive_a_restart_of_run(autojump_clock: trio.testing.MockClock) -> None:
    sent: Sent = []
    tracker = PresenceTracker(lambda *message: sent.append(message), node="node-a", grace_period=GRACE)
    async with trio.open_nursery() as nursery:
        await nursery.start(tracker.run)
        tracker.track(TOPIC, "42", PHONE, meta("phone"))
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert sent == []
    async with trio.open_nursery() as nursery:
        await nursery.start(tracker.run)
        await settle()
        nursery.cancel_scope.cancel()
    assert len(sent) == 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"grace_period": -1.0}, "grace_period"),
        ({"coalesce_window": float("nan")}, "coalesce_window"),
        ({"grace_period": float("inf")}, "grace_period"),
    ],
)
def test_bad_durations_are_refused(options: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PresenceTracker(lambda *_: None, node="node-a", **options)


async def test_a_meta_listed_mid_window_is_sent_leaving(autojump_clock: trio.testing.MockClock) -> None:
    async with running() as (tracker, sent):
        old = tracker.track(TOPIC, "42", PHONE, meta("phone"))
        late_client = sync_diff({}, {"joins": tracker.list(TOPIC), "leaves": {}})  # its presence_state shows `old`
        new = tracker.update(TOPIC, "42", PHONE, meta("phone", online_at=2))
        await settle()

    [(_, _, payload)] = sent
    assert [m["phx_ref"] for m in payload["joins"]["42"]["metas"]] == [old, new]
    assert [m["phx_ref"] for m in payload["leaves"]["42"]["metas"]] == [old]
    assert sync_diff(late_client, payload) == sync_diff({}, payload) == tracker.list(TOPIC)


async def test_own_changes_are_reported_as_they_happen_and_a_reconnect_is_none(
    autojump_clock: trio.testing.MockClock,
) -> None:
    changes: list[tuple[str, str, str, dict[str, Any] | None]] = []
    async with running() as (tracker, _):
        tracker.replicate_to(lambda *change: changes.append(change))
        ref = tracker.track(TOPIC, "42", PHONE, meta("phone"))
        new_ref = tracker.update(TOPIC, "42", PHONE, meta("phone", 2))
        tracker.untrack(TOPIC, "42", PHONE)
        tracker.track(TOPIC, "42", PHONE, meta("phone", 3))  # a reconnect inside the grace period
        tracker.untrack(TOPIC, "42", PHONE)
        assert len(changes) == 2
        await settle()
    assert changes == [
        (PHONE, TOPIC, "42", {**meta("phone"), "phx_ref": ref}),
        (PHONE, TOPIC, "42", {**meta("phone", 2), "phx_ref": new_ref, "phx_ref_prev": ref}),
        (PHONE, TOPIC, "42", None),
    ]


async def test_remote_changes_apply_at_once_and_share_the_window(autojump_clock: trio.testing.MockClock) -> None:
    remote = {**meta("laptop"), "phx_ref": "remote-ref"}
    async with running() as (tracker, sent):
        ref = tracker.track(TOPIC, "42", PHONE, meta("phone"))
        tracker.apply_remote("node-b", LAPTOP, TOPIC, "42", remote)
        assert tracker.list(TOPIC) == {"42": {"metas": [{**meta("phone"), "phx_ref": ref}, remote]}}
        assert tracker.owned() == [(PHONE, TOPIC, "42", {**meta("phone"), "phx_ref": ref})]
        await settle()
        assert len(sent) == 1  # the local and the remote join: one presence_diff
        tracker.remove_node("node-b")  # no grace period: it was served on node-b
        assert tracker.list(TOPIC) == {"42": {"metas": [{**meta("phone"), "phx_ref": ref}]}}
        await trio.sleep(2 * WINDOW)
        assert sent[1][2] == {"joins": {}, "leaves": {"42": {"metas": [remote]}}}
        with pytest.raises(ValueError, match="this node"):
            tracker.apply_remote("node-a", LAPTOP, TOPIC, "42", remote)
