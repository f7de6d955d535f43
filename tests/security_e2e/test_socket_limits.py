"""Limits on an open socket, through a real node (contract §3, §5, §6; reliability B1, S10, S20).

Rate limits run on Trio's clock; these tests freeze it (`clock.rate = 0`) so that no token is
refilled while a burst is sent, and jump it past a window when they need a fresh one. Every wait is
a real-time client timeout, so a frozen clock cannot hang a test.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio.testing

from tests.node import RunningNode
from tests.security_e2e.client import ControlSet, Phx, Refused, in_thread, try_connect
from tests.security_e2e.conftest import audit_records, node_with_control

pytestmark = pytest.mark.integration

EMOJI = "😀"  # 4 bytes of UTF-8


@contextmanager
def frozen(clock: trio.testing.MockClock) -> Iterator[None]:
    clock.rate = 0
    try:
        yield
    finally:
        clock.rate = 1


async def member_pair(rn: RunningNode, ip: str = "127.0.0.20") -> tuple[str, Phx, Phx]:
    """(conversation, alice's socket, bob's socket): both joined to one conversation."""
    await rn.add_user("alice")
    await rn.add_user("bob")
    assert rn.node.store is not None
    conversation_id = await rn.node.store.create_conversation(["alice", "bob"])
    alice = await in_thread(Phx.connect, rn.port, rn.token("alice", "d1"), source=ip)
    bob = await in_thread(Phx.connect, rn.port, rn.token("bob", "d1"), source="127.0.0.21")
    for phx in (alice, bob):
        assert (await in_thread(phx.join, f"conversation:{conversation_id}"))["status"] == "ok"
    return conversation_id, alice, bob


def frame_of_size(topic: str, ref: str, size: int) -> str:
    """A `send_message` frame of exactly `size` UTF-8 bytes."""

    def build(n: int) -> str:
        payload = {"client_message_id": f"big-{ref}", "content": "a" * n}
        return json.dumps([None, ref, topic, "send_message", payload], ensure_ascii=False)

    base = len(build(0).encode())
    frame = build(size - base)
    assert len(frame.encode()) == size
    return frame


async def test_content_size_counted_in_utf8_bytes_socket_kept(
    tmp_path: Path, caplog_all: pytest.LogCaptureFixture
) -> None:
    async with node_with_control(tmp_path) as (rn, control):
        conversation_id, alice, bob = await member_pair(rn)
        cases = [
            ("a" * 10_000, "ok"),
            ("a" * 10_001, "message_too_large"),
            (EMOJI * 2_500, "ok"),  # exactly 10,000 bytes
            (EMOJI * 2_501, "message_too_large"),  # 10,004 bytes
            (EMOJI * 10_000, "message_too_large"),  # 40,000 bytes in a 40 KB frame
            ("é" * 5_001, "message_too_large"),  # 10,002 bytes, 5,001 characters
        ]
        for i, (content, expected) in enumerate(cases):
            reply = await in_thread(alice.send_message, conversation_id, content, f"size-{i}")
            if expected == "ok":
                assert reply["status"] == "ok", (i, reply)
            else:
                assert reply == {"status": "error", "response": {"reason": "message_too_large"}}, i
            assert alice.is_open()
        # socket kept: it still sends, and bob got exactly the two accepted messages
        assert (await in_thread(alice.send_message, conversation_id, "after", "size-after"))["status"] == "ok"
        await in_thread(lambda: bob.wait_for(lambda f: f[3] == "new_message" and f[4]["content"] == "after"))
        delivered = [f[4]["client_message_id"] for f in bob.inbox if f[3] == "new_message"]
        assert delivered == ["size-0", "size-2"]
        sizes = [a for a in audit_records(caplog_all, "limit_exceeded") if a["limit"] == "message_size"]
        assert len(sizes) == 4
        assert all(a["user_id"] == "alice" for a in sizes)
        await in_thread(alice.close)
        await in_thread(bob.close)
        await in_thread(control.check)


async def test_frame_over_64_kib_closes_1009(tmp_path: Path) -> None:
    async with node_with_control(tmp_path) as (rn, control):
        conversation_id, alice, bob = await member_pair(rn)
        topic = f"conversation:{conversation_id}"
        await in_thread(alice.ws.send, frame_of_size(topic, "900", 64 * 1024))  # at the cap: parsed
        reply = await in_thread(alice.reply, "900")
        assert reply == {"status": "error", "response": {"reason": "message_too_large"}}
        assert (await in_thread(alice.heartbeat))["status"] == "ok"
        await in_thread(alice.ws.send, frame_of_size(topic, "901", 64 * 1024 + 1))  # one byte over
        assert await in_thread(alice.wait_closed) == 1009
        assert not [f for f in alice.inbox if f[1] == "901"]  # never parsed
        assert (await in_thread(bob.heartbeat))["status"] == "ok"
        await in_thread(bob.close)
        await in_thread(control.check)


async def spam_until_blocked(
    rn: RunningNode, clock: trio.testing.MockClock, control: ControlSet
) -> tuple[dict[str, Any], Phx, Phx, str]:
    """alice sends 100 accepted messages, then 3 over the rate on a frozen clock. Returns the third
    refusal's reply, alice's and bob's sockets and the conversation."""
    conversation_id, alice, bob = await member_pair(rn)

    def burst() -> list[dict[str, Any]]:
        return [alice.send_message(conversation_id, f"m{i}", f"rate-{i}") for i in range(100)]

    with frozen(clock):
        replies = await in_thread(burst)
        assert [r["status"] for r in replies] == ["ok"] * 100

        # the 101st: refused with a retry hint, socket kept
        first = await in_thread(alice.send_message, conversation_id, "m100", "rate-100")
        assert first == {"status": "error", "response": {"reason": "rate_limit_exceeded", "retry_after_ms": 600}}
        assert alice.is_open()
        assert (await in_thread(alice.heartbeat))["status"] == "ok"
        read = await in_thread(alice.call, f"conversation:{conversation_id}", "message_read", {"up_to_seq": 1})
        assert read["status"] == "ok"  # other events on the channel still work

        second = await in_thread(alice.send_message, conversation_id, "m101", "rate-101")
        assert second["response"]["reason"] == "rate_limit_exceeded"
        assert alice.is_open()
        third = await in_thread(alice.send_message, conversation_id, "m102", "rate-102")  # spam: 3 in a row
        await in_thread(control.check)
    return third, alice, bob, conversation_id


async def test_message_rate_then_spam_block(
    tmp_path: Path, clock: trio.testing.MockClock, caplog_all: pytest.LogCaptureFixture
) -> None:
    async with node_with_control(tmp_path) as (rn, control):
        third, alice, bob, _ = await spam_until_blocked(rn, clock, control)
        assert third["status"] == "error"
        assert third["response"]["retry_after_ms"] == 300_000
        assert await in_thread(alice.wait_closed) == 1008

        # bob got exactly the 100 accepted messages
        def bob_got_100() -> int:
            while bob.count_new_messages() < 100:
                bob.inbox.append(bob._recv(10))
            return bob.count_new_messages()

        assert await in_thread(bob_got_100) == 100

        # the user is blocked: a new socket (any IP) is refused at the upgrade
        again = await in_thread(try_connect, rn.port, rn.token("alice", "d2"), source="127.0.0.22")
        assert isinstance(again, Refused)
        assert again.status == 429
        assert 1 <= int(again.headers["retry-after"]) <= 300

        messages = [a for a in audit_records(caplog_all, "limit_exceeded") if a["limit"] == "message"]
        assert len(messages) == 3
        assert {(a["user_id"], a["client_ip"]) for a in messages} == {("alice", "127.0.0.20")}
        suspicious = audit_records(caplog_all, "suspicious_activity")
        assert [(a["detector"], a["user_id"], a["blocked_for"]) for a in suspicious] == [
            ("message_spam", "alice", 300.0)
        ]
        refused = [a for a in audit_records(caplog_all, "connection_attempt") if a["outcome"] == "refused"]
        assert [(a["reason"], a["user_id"]) for a in refused] == [("blocked", "alice")]
        bodies = "\n".join(r.getMessage() + repr(r.__dict__) for r in caplog_all.records)
        assert "m100" not in bodies  # never a message body in any log
        await in_thread(bob.close)
        await in_thread(control.check)


async def test_spam_block_reply_reason_is_blocked(tmp_path: Path, clock: trio.testing.MockClock) -> None:
    async with node_with_control(tmp_path) as (rn, control):
        third, alice, bob, _ = await spam_until_blocked(rn, clock, control)
        for phx in (alice, bob):
            await in_thread(phx.close)
        assert third["response"]["reason"] == "blocked"


async def test_join_flood_rate_limited_then_blocked(
    tmp_path: Path, clock: trio.testing.MockClock, caplog_all: pytest.LogCaptureFixture
) -> None:
    async with node_with_control(tmp_path) as (rn, control):
        await rn.add_user("hopper")
        assert rn.node.store is not None
        mine = await rn.node.store.create_conversation(["hopper"])
        phx = await in_thread(Phx.connect, rn.port, rn.token("hopper", "d1"), source="127.0.0.30")
        with frozen(clock):
            for i in range(30):  # channel hopping: probing conversations; each join counts
                reply = await in_thread(phx.join, f"conversation:probe-{i}")
                assert reply == {"status": "error", "response": {"reason": "not_member"}}, i
            over = await in_thread(phx.join, f"conversation:{mine}")  # the 31st in a minute
            assert over["status"] == "error"
            assert over["response"]["reason"] == "rate_limit_exceeded"
            assert over["response"]["retry_after_ms"] == 300_000
            assert await in_thread(phx.wait_closed) == 1008  # then blocked
            again = await in_thread(try_connect, rn.port, rn.token("hopper", "d2"), source="127.0.0.31")
            assert isinstance(again, Refused)
            assert again.status == 429
            await in_thread(control.check)
        joins = [a for a in audit_records(caplog_all, "limit_exceeded") if a["limit"] == "join"]
        assert [(a["user_id"], a["client_ip"]) for a in joins] == [("hopper", "127.0.0.30")]
        suspicious = audit_records(caplog_all, "suspicious_activity")
        assert [(a["detector"], a["user_id"]) for a in suspicious] == [("channel_hopping", "hopper")]


async def test_100_channels_then_too_many_channels_joined(tmp_path: Path, clock: trio.testing.MockClock) -> None:
    """100 joins need 4 join-rate windows (30 per minute): the frozen clock jumps 61 s between them,
    and every socket sends a heartbeat after each jump so no idle timeout (90 s) is reached."""
    async with node_with_control(tmp_path) as (rn, control):
        await rn.add_user("collector")
        assert rn.node.store is not None
        conversations = [await rn.node.store.create_conversation(["collector"]) for _ in range(101)]
        phx = await in_thread(Phx.connect, rn.port, rn.token("collector", "d1"), source="127.0.0.40")

        def keep_alive() -> None:
            for socket in [phx, *control.sockets]:
                assert socket.heartbeat()["status"] == "ok"

        with frozen(clock):
            for start in range(0, 100, 30):
                if start:
                    clock.jump(61)
                    await in_thread(keep_alive)
                for conversation_id in conversations[start : min(start + 30, 100)]:
                    reply = await in_thread(phx.join, f"conversation:{conversation_id}")
                    assert reply["status"] == "ok", (conversation_id, reply)
            assert len(phx.join_refs) == 100
            over = await in_thread(phx.join, f"conversation:{conversations[100]}")
            assert over == {"status": "error", "response": {"reason": "too many channels joined"}}
            also = await in_thread(phx.join, "user:collector")
            assert also == {"status": "error", "response": {"reason": "too many channels joined"}}
            # socket kept, its channels work
            assert (await in_thread(phx.heartbeat))["status"] == "ok"
            sent = await in_thread(phx.send_message, conversations[99], "still here", "c-1")
            assert sent["status"] == "ok"
            await in_thread(phx.close)
            await in_thread(control.check)


async def test_blocked_user_other_live_socket_refused_on_join(
    tmp_path: Path, clock: trio.testing.MockClock, caplog_all: pytest.LogCaptureFixture
) -> None:
    """Contract §2: any join may be refused with `blocked`. alice's second device, connected before her
    first one was blocked for spam, is refused its next join with `blocked` and closed with 1008."""
    async with node_with_control(tmp_path) as (rn, control):
        await rn.add_user("alice")
        other = await in_thread(Phx.connect, rn.port, rn.token("alice", "d2"), source="127.0.0.23")
        assert (await in_thread(other.join, "user:alice"))["status"] == "ok"
        _, alice, bob, conversation_id = await spam_until_blocked(rn, clock, control)
        assert await in_thread(alice.wait_closed) == 1008
        reply = await in_thread(other.join, f"conversation:{conversation_id}")
        assert reply["status"] == "error"
        assert reply["response"]["reason"] == "blocked"
        assert 0 < reply["response"]["retry_after_ms"] <= 300_000
        assert await in_thread(other.wait_closed) == 1008
        assert len(audit_records(caplog_all, "suspicious_activity")) == 1  # one block, one record
        await in_thread(bob.close)
        await in_thread(control.check)


async def test_blocked_user_other_live_socket_refused_on_send(
    tmp_path: Path, clock: trio.testing.MockClock, caplog_all: pytest.LogCaptureFixture
) -> None:
    """Contract §3 push error `blocked`, §5 "spam": alice's second device, joined to the conversation
    before her first one was blocked, is refused its next send with `blocked` and closed with 1008,
    even once her message budget has refilled; nothing of that send is delivered."""
    async with node_with_control(tmp_path) as (rn, control):
        conversation_id, alice, bob = await member_pair(rn)
        other = await in_thread(Phx.connect, rn.port, rn.token("alice", "d2"), source="127.0.0.23")
        assert (await in_thread(other.join, f"conversation:{conversation_id}"))["status"] == "ok"

        def spam() -> list[dict[str, Any]]:
            return [alice.send_message(conversation_id, f"m{i}", f"spam-{i}") for i in range(103)]

        with frozen(clock):
            replies = await in_thread(spam)
            assert [r["status"] for r in replies] == ["ok"] * 100 + ["error"] * 3
            assert replies[-1]["response"]["reason"] == "blocked"
            assert await in_thread(alice.wait_closed) == 1008
            clock.jump(60)  # the message budget is full again; the block has 240 s left
            reply = await in_thread(other.send_message, conversation_id, "after the block", "late-1")
        assert reply == {"status": "error", "response": {"reason": "blocked", "retry_after_ms": 240_000}}
        assert await in_thread(other.wait_closed) == 1008

        def bob_got_only_the_100() -> int:
            while bob.count_new_messages() < 100:
                bob.inbox.append(bob._recv(10))
            return bob.count_new_messages()

        assert await in_thread(bob_got_only_the_100) == 100
        assert len(audit_records(caplog_all, "suspicious_activity")) == 1  # one block, one record
        await in_thread(bob.close)
        await in_thread(control.check)
