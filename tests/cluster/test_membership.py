"""The pure membership core: plain floats for time, Hypothesis for the lattice and event-order laws."""

from __future__ import annotations

import contextlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from whispr.cluster.membership import (
    ENTRY_VERSION,
    Entry,
    EntryError,
    Kind,
    Membership,
    NodeDown,
    NodeEvent,
    NodePermdown,
    NodeUp,
    PermdownReason,
    Status,
    Timeouts,
    UnknownVersion,
    decode_entry,
    encode_entry,
    new_incarnation,
)

T = Timeouts(heartbeat_interval=1.0, down_after=3.0, permdown_after=10.0)


def hb(node: str = "a", incarnation: int = 1, **meta: object) -> Entry:
    return Entry(node, incarnation, Kind.HEARTBEAT, 0.0, meta)


def leave(node: str = "a", incarnation: int = 1) -> Entry:
    return Entry(node, incarnation, Kind.LEAVE, 0.0)


# --- configuration and wire format ------------------------------------------------------------------


def test_timeouts_reject_a_down_after_shorter_than_two_heartbeats() -> None:
    with pytest.raises(ValueError, match=r"down_after \(1.5 s\) must be at least twice heartbeat_interval \(1.0 s\)"):
        Timeouts(1.0, 1.5, 10.0)
    Timeouts(1.0, 2.0, 10.0)


@pytest.mark.parametrize(
    ("interval", "down", "permdown", "message"),
    [(0.0, 1.0, 2.0, "heartbeat_interval must be a positive"), (1.0, 3.0, 3.0, "permdown_after .* must be longer")],
)
def test_timeouts_reject_other_nonsense(interval: float, down: float, permdown: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Timeouts(interval, down, permdown)


def test_incarnations_grow_across_boots() -> None:
    assert new_incarnation() < new_incarnation()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=5,
)
entries = st.builds(
    Entry,
    node=st.text(min_size=1, max_size=10),
    incarnation=st.integers(min_value=0, max_value=2**63),
    kind=st.sampled_from(Kind),
    ts=st.floats(allow_nan=False, allow_infinity=False),
    meta=st.dictionaries(st.text(max_size=5), json_values, max_size=3),
)


@given(entries)
def test_entries_round_trip_through_stream_fields(entry: Entry) -> None:
    fields = encode_entry(entry)
    assert fields["v"] == str(ENTRY_VERSION)
    assert decode_entry(fields) == entry
    assert decode_entry(fields | {"added_in_a_later_release": "x"}) == entry  # unknown fields are ignored


@given(st.dictionaries(st.text(max_size=12), st.text(max_size=12), max_size=7))
def test_decode_accepts_or_raises_only_entry_error(fields: dict[str, str]) -> None:
    with contextlib.suppress(EntryError):
        decode_entry(fields)


@pytest.mark.parametrize("version", [None, "0", "2", "1.0", ""])
def test_other_versions_are_unknown(version: str | None) -> None:
    fields = encode_entry(hb())
    if version is None:
        del fields["v"]
    else:
        fields["v"] = version
    with pytest.raises(UnknownVersion):
        decode_entry(fields)


@pytest.mark.parametrize(
    "broken", [{"incarnation": "x"}, {"kind": "join"}, {"ts": "soon"}, {"meta": "[]"}, {"meta": "{"}, {"node": ""}]
)
def test_malformed_version_1_entries_are_refused(broken: dict[str, str]) -> None:
    with pytest.raises(EntryError) as info:
        decode_entry(encode_entry(hb()) | broken)
    assert not isinstance(info.value, UnknownVersion)


# --- the Tracker cases (reliability.md §1.2) ------------------------------------------------------------


def test_heartbeat_is_up_silence_is_down_at_down_after_then_permdown() -> None:
    m = Membership(T)
    assert m.merge([(hb(meta="x"), 0.0)], 0.0) == [NodeUp("a", 1)]
    assert m.next_deadline() == 3.0
    assert m.tick(2.999) == []
    assert m.tick(3.0) == [NodeDown("a", 1)]
    assert m.replicas(3.0)["a"].status is Status.DOWN
    assert m.next_deadline() == 10.0
    assert m.tick(10.0) == [NodePermdown("a", 1, PermdownReason.TIMEOUT)]
    assert m.replicas(10.0) == {}
    assert m.announced() == {}


def test_netsplit_heal_brings_the_same_incarnation_back_up() -> None:
    m = Membership(T)
    m.merge([(hb(), 0.0)], 0.0)
    assert m.tick(5.0) == [NodeDown("a", 1)]
    assert m.merge([(hb(), 6.0)], 6.0) == [NodeUp("a", 1)]
    assert m.announced()["a"].incarnation == 1


def test_graceful_leave_is_an_immediate_permdown_and_final() -> None:
    m = Membership(T)
    m.merge([(hb(), 0.0)], 0.0)
    assert m.merge([(leave(), 1.0)], 1.0) == [NodePermdown("a", 1, PermdownReason.LEAVE)]
    assert m.merge([(hb(), 1.5)], 1.5) == []  # a heartbeat overtaken by its leave changes nothing
    assert m.replicas(1.5) == {}


def test_crash_and_restart_replaces_the_old_incarnation() -> None:
    m = Membership(T)
    m.merge([(hb(incarnation=1), 0.0)], 0.0)
    assert m.merge([(hb(incarnation=2), 1.0)], 1.0) == [
        NodePermdown("a", 1, PermdownReason.REPLACED),
        NodeUp("a", 2),
    ]
    assert m.merge([(hb(incarnation=1), 1.5)], 1.5) == []  # old pids are permdowned for good


def test_rolling_update_replaces_every_node_once() -> None:
    m = Membership(T)
    nodes = ["a", "b", "c"]
    m.merge([(hb(n, 1), 0.0) for n in nodes], 0.0)
    now = 0.0
    for n in nodes:  # one node at a time: leave, then come back with a new incarnation
        now += 1.0
        assert m.merge([(leave(n, 1), now)], now) == [NodePermdown(n, 1, PermdownReason.LEAVE)]
        now += 1.0
        assert m.merge([(hb(n, 2), now), *((hb(o, 2 if o < n else 1), now) for o in nodes if o != n)], now) == [
            NodeUp(n, 2)
        ]
    assert {n: r.incarnation for n, r in m.announced().items()} == {"a": 2, "b": 2, "c": 2}


def test_a_replica_silent_past_permdown_comes_back_as_a_new_join() -> None:
    m = Membership(T)
    m.merge([(hb(), 0.0)], 0.0)
    m.tick(3.0)
    assert m.tick(11.0) == [NodePermdown("a", 1, PermdownReason.TIMEOUT)]
    assert m.merge([(hb(), 12.0)], 12.0) == [NodeUp("a", 1)]


def test_history_older_than_down_after_is_never_announced() -> None:
    m = Membership(T)
    assert m.merge([(hb("old"), 96.0), (hb("fresh"), 99.0)], 100.0) == [NodeUp("fresh", 1)]
    assert m.replicas(100.0)["old"].status is Status.DOWN
    assert m.tick(106.0) == [NodeDown("fresh", 1)]  # nothing about "old": it was never announced


def test_records_are_forgotten_after_twice_permdown() -> None:
    m = Membership(T)
    m.merge([(hb(incarnation=5), 0.0), (leave(incarnation=5), 0.0)], 0.0)
    m.tick(20.0)
    assert m.next_deadline() == float("inf")
    assert m.merge([(hb(incarnation=4), 21.0)], 21.0) == [NodeUp("a", 4)]  # the tombstone is gone


def test_a_long_jump_in_time_goes_straight_to_permdown() -> None:
    m = Membership(T)
    m.merge([(hb(), 0.0)], 0.0)
    assert m.tick(50.0) == [NodePermdown("a", 1, PermdownReason.TIMEOUT)]


def test_meta_follows_the_latest_heartbeat() -> None:
    m = Membership(T)
    m.merge([(hb(version="2"), 2.0), (hb(version="1"), 1.0)], 2.0)
    assert m.announced()["a"].meta == {"version": "2"}


# --- laws (Hypothesis) --------------------------------------------------------------------------------

NOW = 100.0
observations = st.lists(
    st.tuples(
        st.builds(
            Entry,
            node=st.sampled_from("abc"),
            incarnation=st.integers(1, 3),
            kind=st.sampled_from(Kind),
            ts=st.just(0.0),
            meta=st.dictionaries(st.sampled_from("xy"), st.integers(0, 2), max_size=1),
        ),
        # Heard within the last 2 * permdown_after: the horizon inside which nothing is forgotten.
        st.floats(NOW - 2 * T.permdown_after + 0.001, NOW),
    ),
    max_size=12,
)


@given(observations, st.randoms(use_true_random=False))
def test_merge_is_commutative_and_associative(obs: list[tuple[Entry, float]], rnd: random.Random) -> None:
    at_once = Membership(T)
    at_once.merge(obs, NOW)
    shuffled = list(obs)
    rnd.shuffle(shuffled)
    piecewise = Membership(T)
    while shuffled:
        cut = rnd.randint(1, len(shuffled))
        piecewise.merge(shuffled[:cut], NOW)
        shuffled = shuffled[cut:]
    assert piecewise.replicas(NOW) == at_once.replicas(NOW)
    assert piecewise.announced() == at_once.announced()


@given(observations, observations)
def test_merge_is_idempotent(first: list[tuple[Entry, float]], second: list[tuple[Entry, float]]) -> None:
    m = Membership(T)
    m.merge(first, NOW)
    m.merge(second, NOW)
    replicas, announced = m.replicas(NOW), m.announced()
    assert m.merge(first + second, NOW) == []
    assert (m.replicas(NOW), m.announced()) == (replicas, announced)


steps = st.lists(
    st.one_of(
        st.tuples(st.just("hb"), st.sampled_from("ab"), st.integers(1, 3)),
        st.tuples(st.just("leave"), st.sampled_from("ab"), st.integers(1, 3)),
        st.tuples(st.just("wait"), st.floats(0.1, 25.0), st.just(0)),
    ),
    max_size=40,
)


@settings(max_examples=300)
@given(steps)
def test_events_per_replica_follow_the_tracker_grammar(script: list[tuple[str, object, int]]) -> None:
    m = Membership(T)
    now = 0.0
    log: list[NodeEvent | str] = []  # events, and the node id where the view forgot a node
    last_heard: dict[str, tuple[int, float]] = {}  # per node: newest incarnation, when it was last heard
    for action, arg, incarnation in script:
        if action == "wait":
            assert isinstance(arg, float)
            now += arg
            log += m.tick(now)
        else:
            assert isinstance(arg, str)
            entry = hb(arg, incarnation) if action == "hb" else leave(arg, incarnation)
            log += m.merge([(entry, now)], now)
            if incarnation >= last_heard.get(arg, (0, 0.0))[0]:
                last_heard[arg] = (incarnation, now)
        for node, (_, heard) in list(last_heard.items()):
            if now - heard >= 2 * T.permdown_after:  # forgotten (the documented horizon)
                log.append(node)
                del last_heard[node]
    for node in "ab":
        state: dict[int, Status] = {}  # announced status per incarnation; absent = not announced
        finished: set[int] = set()  # incarnations permdowned by leave or replacement: nothing more
        newest = 0  # incarnations announced never go backwards while the node is remembered
        for e in log:
            if e == node:
                assert state == {}
                finished, newest = set(), 0
                continue
            if isinstance(e, str) or e.node != node:
                continue
            assert e.incarnation not in finished, log
            assert e.incarnation >= newest, log
            newest = e.incarnation
            current = state.get(e.incarnation)
            if isinstance(e, NodeUp):
                assert current in (None, Status.DOWN), log
                assert set(state) <= {e.incarnation}, log  # at most one announced replica per node
                state[e.incarnation] = Status.UP
            elif isinstance(e, NodeDown):
                assert current is Status.UP, log
                state[e.incarnation] = Status.DOWN
            else:
                assert current in (Status.UP, Status.DOWN), log
                del state[e.incarnation]
                if e.reason is not PermdownReason.TIMEOUT:
                    finished.add(e.incarnation)
        announced = m.announced().get(node)
        assert state == ({announced.incarnation: announced.status} if announced else {})
