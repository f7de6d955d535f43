"""The per-socket `Session`: every row of its table (protocol.md §3, §4) and a state machine.

`Session[str]` here routes "room:*" to the handler "Room" and nothing else.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from whispr.protocol import (
    CLOSED,
    DUPLICATE_JOIN,
    LEFT,
    NORMAL,
    PHX_CLOSE,
    PHX_ERROR,
    PHX_JOIN,
    PHX_LEAVE,
    Action,
    HandleIn,
    Join,
    Message,
    Reply,
    Send,
    Session,
    Terminate,
)


def route(topic: str) -> str | None:
    return "Room" if topic.startswith("room:") else None


def join_message(topic: str, ref: str, params: dict[str, Any] | None = None) -> Message:
    return Message(topic, PHX_JOIN, params or {}, ref, ref)


def close(topic: str, join_ref: str | None) -> Send:
    return Send(Message(topic, PHX_CLOSE, {}, join_ref, join_ref))


def joined_session(*topics: str, max_channels: int = 100) -> Session[str]:
    session: Session[str] = Session(route, max_channels=max_channels)
    for n, topic in enumerate(topics, 1):
        (join,) = session.receive(join_message(topic, f"j{n}"))
        assert isinstance(join, Join)
        session.joined(join, {})
    return session


def test_heartbeat_is_answered_by_the_session() -> None:
    session: Session[str] = Session(route)
    actions = session.receive(Message("phoenix", "heartbeat", {}, "3", None))
    assert actions == [Send(Reply("phoenix", "ok", {}, "3", None))]


def test_join_asks_for_the_channel_then_replies_with_both_refs() -> None:
    session: Session[str] = Session(route)
    (join,) = session.receive(join_message("room:1", "1", {"last_seq": 4}))
    assert join == Join("room:1", {"last_seq": 4}, "1", "1", "Room", None)
    assert session.joins == {}
    assert session.joined(join, {"a": 1}) == [Send(Reply("room:1", "ok", {"a": 1}, "1", "1"))]
    assert session.joins == {"room:1": "1"}


def test_refused_join_keeps_nothing_and_sends_no_close() -> None:
    session: Session[str] = Session(route)
    (join,) = session.receive(join_message("room:1", "1"))
    assert isinstance(join, Join)
    actions = session.join_refused(join, {"reason": "unauthorized"})
    assert actions == [Send(Reply("room:1", "error", {"reason": "unauthorized"}, "1", "1"))]
    assert session.joins == {}


@pytest.mark.parametrize("topic", ["nope:1", "phoenix"])
def test_join_without_route_is_unmatched_with_null_join_ref(topic: str) -> None:
    session: Session[str] = Session(route)
    actions = session.receive(join_message(topic, "1"))
    assert actions == [Send(Reply(topic, "error", {"reason": "unmatched topic"}, "1", None))]


def test_join_beyond_the_channel_limit_is_refused() -> None:
    session = joined_session("room:1", "room:2", max_channels=2)
    actions = session.receive(join_message("room:3", "9"))
    assert actions == [Send(Reply("room:3", "error", {"reason": "too many channels joined"}, "9", "9"))]


def test_duplicate_join_terminates_the_old_instance_and_closes_it_after_the_new_reply() -> None:
    session = joined_session("room:1")
    terminate, join = session.receive(join_message("room:1", "5"))
    assert terminate == Terminate("room:1", "j1", DUPLICATE_JOIN)
    assert isinstance(join, Join)
    assert join.close_after == Message("room:1", PHX_CLOSE, {}, "j1", "j1")
    # protocol.md §4.2: new reply first, then phx_close for the old join_ref.
    assert session.joined(join, {}) == [Send(Reply("room:1", "ok", {}, "5", "5")), close("room:1", "j1")]
    assert session.joins == {"room:1": "5"}


def test_refused_duplicate_join_still_closes_the_old_instance() -> None:
    session = joined_session("room:1")
    _, join = session.receive(join_message("room:1", "5"))
    assert isinstance(join, Join)
    assert session.join_refused(join, {"reason": "no"}) == [
        Send(Reply("room:1", "error", {"reason": "no"}, "5", "5")),
        close("room:1", "j1"),
    ]
    assert session.joins == {}


def test_duplicate_join_at_the_limit_replaces_the_old_instance() -> None:
    session = joined_session("room:1", "room:2", max_channels=2)
    _, join = session.receive(join_message("room:2", "7"))
    assert isinstance(join, Join)


@pytest.mark.parametrize("join_ref", ["j1", None])
def test_event_on_joined_topic_goes_to_the_channel(join_ref: str | None) -> None:
    session = joined_session("room:1")
    actions = session.receive(Message("room:1", "new_msg", {"b": 1}, "4", join_ref))
    assert actions == [HandleIn("room:1", "new_msg", {"b": 1}, "4")]


def test_event_with_stale_join_ref_is_dropped() -> None:
    session = joined_session("room:1")
    assert session.receive(Message("room:1", "new_msg", {}, "4", "old")) == []
    assert session.receive(Message("room:1", PHX_LEAVE, {}, "5", "old")) == []
    assert session.joins == {"room:1": "j1"}


def test_event_on_topic_not_joined_is_unmatched() -> None:
    session: Session[str] = Session(route)
    actions = session.receive(Message("room:1", "new_msg", {}, "4", "1"))
    assert actions == [Send(Reply("room:1", "error", {"reason": "unmatched topic"}, "4", None))]


def test_leave_replies_ok_then_closes_then_terminates() -> None:
    session = joined_session("room:1")
    actions = session.receive(Message("room:1", PHX_LEAVE, {}, "8", "j1"))
    assert actions == [
        Send(Reply("room:1", "ok", {}, "8", "j1")),
        close("room:1", "j1"),
        Terminate("room:1", "j1", LEFT),
    ]
    assert session.joins == {}


def test_leave_of_a_topic_not_joined_is_ok() -> None:
    session: Session[str] = Session(route)
    assert session.receive(Message("room:1", PHX_LEAVE, {}, "8", "3")) == [Send(Reply("room:1", "ok", {}, "8", "3"))]


def test_crash_terminates_then_sends_phx_error_with_ref_equal_join_ref() -> None:
    session = joined_session("room:1", "room:2")
    error = ValueError("boom")
    assert session.crashed("room:1", "j1", error) == [
        Terminate("room:1", "j1", error),
        Send(Message("room:1", PHX_ERROR, {"reason": "channel_crash"}, "j1", "j1")),
    ]
    assert session.joins == {"room:2": "j2"}


def test_stop_closes_then_terminates() -> None:
    session = joined_session("room:1")
    assert session.stopped("room:1", "j1") == [close("room:1", "j1"), Terminate("room:1", "j1", NORMAL)]
    assert session.joins == {}


def test_outcomes_of_an_instance_that_is_gone_do_nothing() -> None:
    session = joined_session("room:1")
    assert session.crashed("room:1", "other", ValueError()) == []
    assert session.stopped("room:2", None) == []
    assert session.joins == {"room:1": "j1"}


def test_close_terminates_everything_and_sends_nothing() -> None:
    session = joined_session("room:1", "room:2")
    assert session.close() == [Terminate("room:1", "j1", CLOSED), Terminate("room:2", "j2", CLOSED)]
    assert session.joins == {}


def test_joined_twice_is_a_caller_bug() -> None:
    session: Session[str] = Session(route)
    (join,) = session.receive(join_message("room:1", "1"))
    assert isinstance(join, Join)
    session.joined(join, {})
    with pytest.raises(RuntimeError):
        session.joined(join, {})


TOPICS = ["room:1", "room:2", "room:3", "nope:1"]
MAX_CHANNELS = 2


class SessionMachine(RuleBasedStateMachine):
    """Drives a Session like a client plus channels would, against a model of live instances."""

    def __init__(self) -> None:
        super().__init__()
        self.session: Session[str] = Session(route, max_channels=MAX_CHANNELS)
        self.live: dict[str, str] = {}  # model: topic -> join_ref
        self.issued: dict[str, set[str]] = {topic: set() for topic in TOPICS}
        self.counter = 0

    def next_ref(self) -> str:
        self.counter += 1
        return str(self.counter)

    def check_wire(self, actions: list[Action[str]]) -> None:
        for action in actions:
            if isinstance(action, Send):
                message = action.message
                if message.join_ref is not None:
                    assert message.join_ref in self.issued[message.topic]
                if isinstance(message, Message) and message.event in (PHX_CLOSE, PHX_ERROR):
                    assert message.ref == message.join_ref

    def terminate(self, action: Action[str], topic: str, reason: object) -> None:
        assert isinstance(action, Terminate)
        assert (action.topic, action.join_ref) == (topic, self.live.pop(topic))
        assert action.reason == reason

    @rule(topic=st.sampled_from(TOPICS), accept=st.booleans())
    def join(self, topic: str, accept: bool) -> None:
        ref = self.next_ref()
        self.issued[topic].add(ref)
        actions = self.session.receive(join_message(topic, ref))
        self.check_wire(actions)
        old = self.live.get(topic)
        if old is not None:
            self.terminate(actions.pop(0), topic, DUPLICATE_JOIN)
        tail = [close(topic, old)] if old is not None else []
        if route(topic) is None:
            assert actions == [Send(Reply(topic, "error", {"reason": "unmatched topic"}, ref, None)), *tail]
        elif len(self.live) >= MAX_CHANNELS:
            assert actions == [Send(Reply(topic, "error", {"reason": "too many channels joined"}, ref, ref)), *tail]
        else:
            (join,) = actions
            assert isinstance(join, Join)
            if accept:
                outcome = self.session.joined(join, {})
                self.live[topic] = ref
            else:
                outcome = self.session.join_refused(join, {"reason": "no"})
            self.check_wire(outcome)
            status = "ok" if accept else "error"
            assert outcome[0] == Send(Reply(topic, status, outcome[0].message.payload, ref, ref))  # type: ignore[union-attr]
            assert outcome[1:] == tail

    @rule(topic=st.sampled_from(TOPICS), which=st.sampled_from(["current", "null", "stale"]))
    def push(self, topic: str, which: str) -> None:
        current = self.live.get(topic)
        join_ref = {"current": current, "null": None, "stale": "stale"}[which]
        actions = self.session.receive(Message(topic, "ev", {}, self.next_ref(), join_ref))
        self.check_wire(actions)
        if current is None:
            (send,) = actions
            assert isinstance(send, Send)
            assert send.message.payload == {"reason": "unmatched topic"}
            assert send.message.join_ref is None
        elif which == "stale":
            assert actions == []
        else:
            assert [type(action) for action in actions] == [HandleIn]

    @rule(topic=st.sampled_from(TOPICS), stale=st.booleans())
    def leave(self, topic: str, stale: bool) -> None:
        current = self.live.get(topic)
        ref = self.next_ref()
        actions = self.session.receive(Message(topic, PHX_LEAVE, {}, ref, "stale" if stale else current))
        if current is None:
            # The only message echoing a join_ref the server never issued (`handle_in(nil, phx_leave)`).
            assert actions == [Send(Reply(topic, "ok", {}, ref, "stale" if stale else None))]
            return
        self.check_wire(actions)
        if stale:
            assert actions == []
        else:
            assert actions[:2] == [Send(Reply(topic, "ok", {}, ref, current)), close(topic, current)]
            self.terminate(actions[2], topic, LEFT)

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def crash(self, data: st.DataObject) -> None:
        topic = data.draw(st.sampled_from(sorted(self.live)))
        current = self.live[topic]
        error = RuntimeError("boom")
        actions = self.session.crashed(topic, current, error)
        self.check_wire(actions)
        self.terminate(actions[0], topic, error)
        assert actions[1:] == [Send(Message(topic, PHX_ERROR, {"reason": "channel_crash"}, current, current))]

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def stop(self, data: st.DataObject) -> None:
        topic = data.draw(st.sampled_from(sorted(self.live)))
        current = self.live[topic]
        actions = self.session.stopped(topic, current)
        self.check_wire(actions)
        assert actions[0] == close(topic, current)
        self.terminate(actions[1], topic, NORMAL)

    @rule()
    def heartbeat(self) -> None:
        ref = self.next_ref()
        assert self.session.receive(Message("phoenix", "heartbeat", {}, ref, None)) == [
            Send(Reply("phoenix", "ok", {}, ref, None))
        ]

    @invariant()
    def session_matches_model(self) -> None:
        assert dict(self.session.joins) == self.live
        assert len(self.live) <= MAX_CHANNELS

    def teardown(self) -> None:
        # Every live instance gets exactly one Terminate, and nothing is sent on close.
        actions = self.session.close()
        assert actions == [Terminate(topic, join_ref, CLOSED) for topic, join_ref in self.live.items()]


TestSessionMachine = SessionMachine.TestCase
