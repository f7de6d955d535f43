"""`PhoenixSocket` on a fake transport: the protocol.md §10 cases that need no network.

Case numbers refer to protocol.md §10.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from tests.channels.fakes import Client, RoomChannel, router
from whispr.channels import NOREPLY, Channel, ChannelSocket, HandleInResult, JoinError, JoinOk, Router, ok
from whispr.gateway.socket import TERMINATE_TIMEOUT
from whispr.observability import telemetry
from whispr.protocol import V1, Payload
from whispr.pubsub import PubSub

CRASH = {"reason": "channel_crash"}


@pytest.fixture(autouse=True)
def _reset_terminated() -> None:
    RoomChannel.terminated.clear()


@pytest.fixture
def pubsub() -> PubSub:
    return PubSub()


@pytest.fixture
def client(pubsub: PubSub) -> Client:
    return Client(router(), pubsub)


@pytest.fixture
def events() -> Iterator[list[tuple[str, Any, Any]]]:
    seen: list[tuple[str, Any, Any]] = []
    names = [
        telemetry.CHANNEL_JOINED,
        telemetry.CHANNEL_JOIN_REFUSED,
        telemetry.CHANNEL_CRASHED,
        telemetry.CHANNEL_LEFT,
        telemetry.REPLY_LATENCY,
        telemetry.MESSAGE_SENT,
        telemetry.MESSAGE_RECEIVED,
    ]
    telemetry.attach("test_socket", names, lambda name, m, md: seen.append((name, dict(m), dict(md))))
    yield seen
    telemetry.detach("test_socket")


def reply(join_ref: str | None, ref: str, topic: str, status: str, response: Any) -> list[Any]:
    return [join_ref, ref, topic, "phx_reply", {"status": status, "response": response}]


# 7
async def test_heartbeat_is_answered(client: Client) -> None:
    await client.push(None, "3", "phoenix", "heartbeat")
    assert client.received() == [reply(None, "3", "phoenix", "ok", {})]


# 9
async def test_join_reply_echoes_both_refs_and_after_join_pushes_follow(client: Client, events: list[Any]) -> None:
    await client.join("room:1", "1")
    assert client.received() == [
        reply("1", "1", "room:1", "ok", {"joined": "room:1"}),
        ["1", None, "room:1", "presence_state", {}],
    ]
    assert client.socket.topics == ["room:1"]
    assert any(name == telemetry.CHANNEL_JOINED and md == {"channel": "room"} for name, _, md in events)


# 10
async def test_refused_join_replies_error_and_keeps_nothing(client: Client, pubsub: PubSub) -> None:
    await client.join("room:1", "1", {"refuse": "unauthorized"})
    assert client.received() == [reply("1", "1", "room:1", "error", {"reason": "unauthorized"})]
    assert client.socket.topics == []
    assert pubsub.subscriber_count("room:1") == 0


# 11
async def test_join_that_crashes_is_refused_and_the_socket_lives_on(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    await client.join("room:ok", "1")
    with caplog.at_level(logging.ERROR, logger="whispr.channel"):
        await client.join("room:2", "2", {"crash": True})
    assert client.received()[2:] == [reply("2", "2", "room:2", "error", {"reason": "join crashed"})]
    assert "RoomChannel.join crashed" in caplog.text
    await client.push("1", "3", "room:ok", "echo", {"still": "alive"})
    assert client.received() == [reply("1", "3", "room:ok", "ok", {"still": "alive"})]


async def test_push_during_join_is_a_join_crash(client: Client) -> None:
    await client.join("room:1", "1", {"push_in_join": True})
    assert client.received() == [reply("1", "1", "room:1", "error", {"reason": "join crashed"})]


async def test_unencodable_join_response_is_a_join_crash(client: Client, pubsub: PubSub) -> None:
    await client.join("room:1", "1", {"bad_response": True})
    assert client.received() == [reply("1", "1", "room:1", "error", {"reason": "join crashed"})]
    assert client.socket.topics == []
    assert pubsub.subscriber_count("room:1") == 0


# 12
async def test_join_without_route_is_unmatched_with_null_join_ref(client: Client) -> None:
    await client.join("nope:1", "1")
    assert client.received() == [reply(None, "1", "nope:1", "error", {"reason": "unmatched topic"})]


# 13
async def test_join_beyond_the_channel_limit(pubsub: PubSub) -> None:
    client = Client(router(), pubsub)
    for n in range(100):
        await client.join(f"room:{n}", str(n))
    client.received()
    await client.join("room:100", "x")
    assert client.received() == [reply("x", "x", "room:100", "error", {"reason": "too many channels joined"})]
    limited = Client(router(), pubsub, max_channels=1)
    await limited.join("room:a", "1")
    await limited.join("room:b", "2")
    assert limited.received()[-1] == reply("2", "2", "room:b", "error", {"reason": "too many channels joined"})


# 14
async def test_duplicate_join_replies_then_closes_the_old_join_ref(client: Client, pubsub: PubSub) -> None:
    await client.join("room:1", "1")
    client.received()
    await client.join("room:1", "5")
    # The old instance terminates first (its push still carries "1"), then the new reply, then the
    # old phx_close (protocol.md §4.2), then the new instance's after-join push.
    assert client.received() == [
        ["1", None, "room:1", "terminating", {}],
        reply("5", "5", "room:1", "ok", {"joined": "room:1"}),
        ["1", "1", "room:1", "phx_close", {}],
        ["5", None, "room:1", "presence_state", {}],
    ]
    assert RoomChannel.terminated == [("room:1", "1", "duplicate_join")]
    assert pubsub.broadcast("room:1", "b", {}) == 1


# 15
@pytest.mark.parametrize("join_ref", ["1", None])
async def test_event_reply_carries_the_ref_and_the_channel_join_ref(client: Client, join_ref: str | None) -> None:
    await client.join("room:1", "1")
    client.received()
    await client.push(join_ref, "2", "room:1", "echo", {"n": 1})
    assert client.received() == [reply("1", "2", "room:1", "ok", {"n": 1})]


async def test_noreply_sends_nothing_and_pushes_carry_the_join_ref(client: Client) -> None:
    await client.join("room:1", "1")
    client.received()
    await client.push("1", "2", "room:1", "noreply")
    await client.push("1", "3", "room:1", "push", {"p": 1})
    assert client.received() == [["1", None, "room:1", "pushed", {"p": 1}]]


async def test_broadcasts_reach_every_subscriber_with_null_refs(pubsub: PubSub) -> None:
    alice, bob = Client(router(), pubsub), Client(router(), pubsub)
    await alice.join("room:1", "1")
    await bob.join("room:1", "7")
    alice.received(), bob.received()
    await alice.push("1", "2", "room:1", "broadcast", {"hi": 1})
    assert alice.received() == bob.received() == [[None, None, "room:1", "shout", {"hi": 1}]]
    await alice.push("1", "3", "room:1", "broadcast_from", {"hi": 2})
    assert alice.received() == []
    assert bob.received() == [[None, None, "room:1", "shout", {"hi": 2}]]
    assert bob.transport.droppable[-1] is True


# 16
async def test_event_on_a_topic_not_joined_is_unmatched(client: Client) -> None:
    await client.push("1", "2", "room:1", "echo")
    assert client.received() == [reply(None, "2", "room:1", "error", {"reason": "unmatched topic"})]


# 17
async def test_stale_join_ref_is_ignored(client: Client) -> None:
    await client.join("room:1", "1")
    await client.join("room:1", "5")
    client.received()
    await client.push("1", "6", "room:1", "echo")
    assert client.received() == []
    await client.push(None, "7", "room:1", "echo")
    assert client.received() == [reply("5", "7", "room:1", "ok", {})]


# 18
async def test_leave_replies_ok_then_closes_and_later_events_are_unmatched(
    client: Client, pubsub: PubSub, events: list[Any]
) -> None:
    await client.join("room:1", "1")
    client.received()
    await client.push("1", "2", "room:1", "phx_leave")
    assert client.received() == [
        reply("1", "2", "room:1", "ok", {}),
        ["1", "1", "room:1", "phx_close", {}],
        ["1", None, "room:1", "terminating", {}],
    ]
    assert RoomChannel.terminated == [("room:1", "1", "left")]
    assert pubsub.subscriber_count("room:1") == 0
    assert any(name == telemetry.CHANNEL_LEFT for name, _, _ in events)
    await client.push("1", "3", "room:1", "echo")
    assert client.received() == [reply(None, "3", "room:1", "error", {"reason": "unmatched topic"})]


async def test_leave_of_a_topic_not_joined_is_ok(client: Client) -> None:
    await client.push("9", "2", "room:1", "phx_leave")
    assert client.received() == [reply("9", "2", "room:1", "ok", {})]


# 19
@pytest.mark.parametrize("event", ["crash", "info_crash", "unknown_returns_42", "unencodable"])
async def test_channel_crash_sends_phx_error_and_the_rejoin_succeeds(
    client: Client, pubsub: PubSub, events: list[Any], caplog: pytest.LogCaptureFixture, event: str
) -> None:
    await client.join("room:1", "1")
    await client.join("room:2", "2")
    client.received()
    with caplog.at_level(logging.ERROR, logger="whispr.channel"):
        await client.push("1", "3", "room:1", event)
    received = client.received()
    assert received[-1] == ["1", "1", "room:1", "phx_error", CRASH]
    assert ["1", None, "room:1", "terminating", {}] in received
    assert len(RoomChannel.terminated) == 1
    (topic, join_ref, reason) = RoomChannel.terminated[0]
    assert (topic, join_ref) == ("room:1", "1")
    assert isinstance(reason, Exception)
    assert [r.name for r in caplog.records] == ["whispr.channel"]
    assert caplog.records[0].levelno == logging.ERROR
    assert (telemetry.CHANNEL_CRASHED, {}, {"channel": "room"}) in events
    assert client.socket.topics == ["room:2"]
    assert pubsub.subscriber_count("room:1") == 0
    # The other channel is untouched, and the client's rejoin creates a fresh instance.
    await client.push("2", "4", "room:2", "echo")
    await client.join("room:1", "5")
    assert client.received()[:2] == [
        reply("2", "4", "room:2", "ok", {}),
        reply("5", "5", "room:1", "ok", {"joined": "room:1"}),
    ]


# 20
async def test_channel_stop_replies_then_closes(client: Client, pubsub: PubSub) -> None:
    await client.join("room:1", "1")
    client.received()
    await client.push("1", "2", "room:1", "stop")
    assert client.received() == [
        reply("1", "2", "room:1", "ok", {"bye": True}),
        ["1", "1", "room:1", "phx_close", {}],
        ["1", None, "room:1", "terminating", {}],
    ]
    assert RoomChannel.terminated == [("room:1", "1", "normal")]
    assert pubsub.subscriber_count("room:1") == 0


async def test_stop_from_handle_info_closes(client: Client) -> None:
    await client.join("room:1", "1")
    client.received()
    await client.push("1", "2", "room:1", "info_stop")
    assert client.received()[0] == ["1", "1", "room:1", "phx_close", {}]
    assert RoomChannel.terminated == [("room:1", "1", "done")]


# 25
async def test_binary_push_is_delivered_and_answered_with_a_binary_reply(client: Client) -> None:
    await client.join("room:1", "1")
    client.received()
    frame = bytes((0, 1, 1, 6, 6)) + b"1" + b"2" + b"room:1" + b"upload" + b"\x01\x02\x03"
    await client.socket.on_binary(frame)
    assert client.received() == [(2, bytes((1, 1, 1, 6, 2)) + b"12room:1ok\x03\x02\x01")]
    assert client.transport.close_code is None


async def test_binary_frame_on_v1_closes_with_1003(pubsub: PubSub) -> None:
    client = Client(router(), pubsub, serializer=V1)
    await client.socket.on_binary(b"\x00\x00\x00\x00\x00")
    assert client.transport.close_code == 1003


# 26
@pytest.mark.parametrize(
    "text",
    [
        "not json",
        '{"topic": "t"}',
        '["1", "2", "t", "e"]',
        '["1", "2", "t", "e", "not an object"]',
        '[1, 2, "t", "e", {}]',
    ],
)
async def test_malformed_frames_close_with_1007_and_affect_no_other_socket(pubsub: PubSub, text: str) -> None:
    bad, good = Client(router(), pubsub), Client(router(), pubsub)
    await bad.join("room:1", "1")
    await good.join("room:1", "1")
    bad.received(), good.received()
    await bad.socket.on_text(text)
    assert bad.transport.close_code == 1007
    assert text not in bad.transport.close_reason
    await bad.push(None, "2", "phoenix", "heartbeat")  # input after the close is ignored
    assert bad.received() == []
    await good.push(None, "2", "phoenix", "heartbeat")
    assert good.received() == [reply(None, "2", "phoenix", "ok", {})]


# 27
async def test_v1_socket_speaks_objects_without_join_ref(pubsub: PubSub) -> None:
    client = Client(router(), pubsub, serializer=V1)
    await client.socket.on_text(
        json.dumps({"topic": "room:1", "event": "phx_join", "payload": {}, "ref": "1", "join_ref": "1"})
    )
    await client.socket.on_text(json.dumps({"topic": "room:1", "event": "echo", "payload": {"a": 1}, "ref": "2"}))
    pubsub.broadcast("room:1", "b", {})
    assert client.received() == [
        {
            "topic": "room:1",
            "event": "phx_reply",
            "payload": {"status": "ok", "response": {"joined": "room:1"}},
            "ref": "1",
        },
        {"topic": "room:1", "event": "presence_state", "payload": {}, "ref": None},
        {"topic": "room:1", "event": "phx_reply", "payload": {"status": "ok", "response": {"a": 1}}, "ref": "2"},
        {"topic": "room:1", "event": "b", "payload": {}, "ref": None},
    ]


# 21 at this layer: the transport closed.
async def test_on_close_unsubscribes_and_terminates_everything_without_sending(
    client: Client, pubsub: PubSub, caplog: pytest.LogCaptureFixture
) -> None:
    await client.join("room:1", "1")
    await client.join("room:raise", "2")
    client.received()
    with caplog.at_level(logging.ERROR, logger="whispr.channel"):
        await client.socket.on_close()
    assert client.received() == []
    assert sorted(RoomChannel.terminated) == [("room:1", "1", "closed"), ("room:raise", "2", "closed")]
    assert "RoomChannel.terminate raised" in caplog.text
    assert pubsub.subscriber_count("room:1") == pubsub.subscriber_count("room:raise") == 0


async def test_on_close_runs_terminate_even_when_cancelled(pubsub: PubSub) -> None:
    terminated = trio.Event()

    class Slow(Channel):
        async def join(self, topic: str, params: Payload, socket: ChannelSocket) -> JoinOk | JoinError:
            return ok()

        async def handle_in(self, event: str, payload: Payload, socket: ChannelSocket) -> HandleInResult:
            return NOREPLY

        async def terminate(self, reason: object, socket: ChannelSocket) -> None:
            await trio.lowlevel.checkpoint()
            terminated.set()

    client = Client(Router([("slow", Slow)]), pubsub)
    await client.join("slow", "1")
    with trio.CancelScope() as scope:
        scope.cancel()
        await client.socket.on_close()
    assert terminated.is_set()


# 22 at this layer
async def test_disconnect_closes_with_1001(client: Client) -> None:
    client.socket.disconnect()
    assert client.transport.close_code == 1001
    await client.push(None, "1", "phoenix", "heartbeat")
    assert client.received() == []


async def test_telemetry_counts_messages_and_reply_latency(client: Client, events: list[Any]) -> None:
    await client.join("room:1", "1")
    await client.push("1", "2", "room:1", "echo")
    names = [name for name, _, _ in events]
    assert names.count(telemetry.MESSAGE_RECEIVED) == 2
    assert names.count(telemetry.MESSAGE_SENT) == 3
    (latency,) = [md for name, _, md in events if name == telemetry.REPLY_LATENCY]
    assert latency == {"channel": "room", "event": "echo", "status": "ok"}


async def test_on_close_gives_terminate_callbacks_a_bounded_time(
    pubsub: PubSub, autojump_clock: trio.abc.Clock
) -> None:
    class Stuck(Channel):
        async def join(self, topic: str, params: Payload, socket: ChannelSocket) -> JoinOk | JoinError:
            return ok()

        async def handle_in(self, event: str, payload: Payload, socket: ChannelSocket) -> HandleInResult:
            return NOREPLY

        async def terminate(self, reason: object, socket: ChannelSocket) -> None:
            await trio.sleep_forever()

    client = Client(Router([("stuck", Stuck)]), pubsub)
    await client.join("stuck", "1")
    started = trio.current_time()
    await client.socket.on_close()
    assert trio.current_time() - started == pytest.approx(TERMINATE_TIMEOUT)
    assert pubsub.subscriber_count("stuck") == 0


async def test_refused_join_with_a_close_code_writes_the_reply_then_closes(client: Client) -> None:
    await client.join("room:1", "1", {"refuse": "blocked", "close_code": 1008})
    assert client.received() == [
        ["1", "1", "room:1", "phx_reply", {"status": "error", "response": {"reason": "blocked"}}]
    ]
    assert client.transport.close_code == 1008
