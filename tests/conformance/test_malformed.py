"""Conformance, malformed input: it closes only the offending socket (protocol.md §10 item 26), and a
flood of it from one client leaves concurrent healthy sockets untouched (the isolation issue).

phoenix.js never sends a malformed frame, so the offenders are raw WebSocket clients (`support.RawSocket`);
each raw client comes from its own client IP (`X-Forwarded-For` through the trusted loopback proxy),
so that the per-IP caps of contract.md §5 do not get in the way of the scenario.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio

from tests.conformance.conftest import World
from tests.conformance.support import (
    GARBAGE,
    MAX_MESSAGE,
    Closed,
    Garbage,
    PhoenixRaw,
    has_joined,
    open_raw,
    send_garbage,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _query(world: World, user: str, device: str) -> str:
    return f"token={world.server.token(user, device)}&vsn=2.0.0"


# -- 26. a malformed frame closes only its socket ---------------------------------------------------


@pytest.mark.parametrize("garbage", GARBAGE, ids=lambda g: g.name)
async def test_26_malformed_frame_closes_only_the_offending_socket(world: World, garbage: Garbage) -> None:
    conv = world.conv_topic
    async with (
        open_raw(world.server, _query(world, "bob", "b1"), forwarded_for="10.0.0.2") as bystander_ws,
        open_raw(world.server, _query(world, "alice", "d1"), forwarded_for="10.0.0.1") as offender_ws,
    ):
        bystander, offender = PhoenixRaw(bystander_ws), PhoenixRaw(offender_ws)
        with trio.fail_after(10):
            _, reply = await bystander.join(conv)
            assert reply["status"] == "ok"
            _, reply = await offender.join(conv)
            assert reply["status"] == "ok"
            await send_garbage(offender_ws, garbage)
            trailing = await offender.push("phoenix", "heartbeat", {})  # after the garbage: never processed
            with pytest.raises(Closed) as closed:
                await offender.until(lambda f: False)
            assert closed.value.code == garbage.close_code
            assert not [f for f in offender.received if f[1] == trailing]
            await offender_ws.aclose()  # a client closes TCP once the server's close frame (and FIN) came
            await wait_until(lambda: not has_joined(world.server, "alice", "d1"), what="the offender to be gone")
            # the bystander: same node, same conversation, still served
            assert (await bystander.heartbeat())[4] == {"status": "ok", "response": {}}
            reply = await bystander.call(conv, "message_read", {"up_to_seq": 0})
            assert reply[4]["status"] == "ok"
            assert has_joined(world.server, "bob", "b1", conv)
            assert bystander_ws.close_code is None


async def test_26_frame_of_exactly_the_size_cap_is_accepted(world: World) -> None:
    """contract.md §5: 64 KiB counted in bytes before decoding; the cap itself is allowed."""
    frame = json.dumps([None, "1", "phoenix", "heartbeat", {}]).encode()
    padded = frame[:-1] + b" " * (MAX_MESSAGE - len(frame)) + b"]"
    assert len(padded) == MAX_MESSAGE
    async with open_raw(world.server, _query(world, "alice", "d1"), forwarded_for="10.0.0.1") as ws:
        with trio.fail_after(10):
            await ws.send_text(padded)
            assert await ws.recv_json() == [None, "1", "phoenix", "phx_reply", {"status": "ok", "response": {}}]


async def test_26_lone_surrogate_escape_is_valid_json_and_not_fatal(world: World) -> None:
    """`"\\ud800"` is legal JSON but has no UTF-8 form: the gateway must answer (ASCII-escaped), not crash."""
    async with open_raw(world.server, _query(world, "alice", "d1"), forwarded_for="10.0.0.1") as ws:
        phx = PhoenixRaw(ws)
        with trio.fail_after(10):
            await ws.send_text(b'[null,"s1","room:\\ud800","phx_join",{}]')
            reply = await phx.until(lambda f: f[1] == "s1")
            assert reply[0] is None
            assert reply[2] == "room:\ud800"
            assert reply[4] == {"status": "error", "response": {"reason": "unmatched topic"}}
            assert (await phx.heartbeat())[4]["status"] == "ok"


# -- the isolation issue: a flood of malformed frames next to 20 healthy sockets ---------------------

HEALTHY = 20
MESSAGES_EACH = 2
FLOOD_ROUNDS = 2
FLOOD_MIN_FRAMES = 1000


@dataclass
class FloodStats:
    frames: int = 0
    connections: int = 0
    codes: dict[str, list[int]] = field(default_factory=dict)


async def _flooder(world: World, done: trio.Event, stats: FloodStats) -> None:
    """One raw socket at a time sends a pipelined burst of garbage (~50 frames, every kind, each kind
    first in turn); the gateway closes it on the first; the next connection goes on. FLOOD_ROUNDS
    passes over the kinds (hundreds of frames), then `done` is set."""
    small = [g for g in GARBAGE if g.kind == "text" and len(g.data) < 1024]
    for n in range(FLOOD_ROUNDS * len(GARBAGE)):
        first = GARBAGE[n % len(GARBAGE)]
        burst = [first, *GARBAGE, *small, *small]
        with trio.fail_after(15):
            async with open_raw(
                world.server, _query(world, "flooder", f"f{n}"), forwarded_for=f"10.66.{n // 200}.{n % 200 + 1}"
            ) as ws:
                stats.connections += 1
                for garbage in burst:
                    await send_garbage(ws, garbage)
                stats.frames += len(burst)
                stats.codes.setdefault(first.name, []).append(await ws.wait_closed())
    done.set()


async def _healthy(
    world: World, i: int, everyone_joined: trio.Event, joined: list[int], flood_done: trio.Event, live: bool
) -> dict[str, Any]:
    user = f"h{i:02d}"
    conv = world.conv_topic
    async with open_raw(world.server, _query(world, user, "d"), forwarded_for=f"10.20.0.{i + 1}") as ws:
        phx = PhoenixRaw(ws)
        conv_ref, reply = await phx.join(conv)
        assert reply["status"] == "ok", reply
        _, reply = await phx.join(f"user:{user}")
        assert reply["status"] == "ok", reply
        joined.append(i)
        if len(joined) == HEALTHY:
            everyone_joined.set()
        await everyone_joined.wait()
        seqs = []
        for k in range(MESSAGES_EACH):
            reply = await phx.call(conv, "send_message", {"client_message_id": f"{user}-{k}", "content": f"{user} {k}"})
            assert reply[0] == conv_ref
            assert reply[4]["status"] == "ok", reply
            seqs.append(reply[4]["response"]["seq"])
        reply = await phx.call(conv, "message_read", {"up_to_seq": max(seqs)}, conv_ref)
        assert reply[4]["status"] == "ok", reply
        assert (await phx.heartbeat())[4]["status"] == "ok"
        # every other healthy socket's read receipt (a broadcast_from) reaches this one
        statuses = await phx.until_count(lambda f: f[2] == conv and f[3] == "message_status", HEALTHY - 1)
        senders = sorted(f[4]["user_id"] for f in statuses)
        assert senders == sorted(f"h{j:02d}" for j in range(HEALTHY) if j != i)
        assert all(f[0] is None and f[1] is None for f in statuses)
        received: list[str] = []
        if live:
            with trio.fail_after(5):
                messages = await phx.until_count(
                    lambda f: f[2] == conv and f[3] == "new_message", HEALTHY * MESSAGES_EACH
                )
            received = sorted(f[4]["client_message_id"] for f in messages)
        await flood_done.wait()  # stay connected through the whole flood
        assert has_joined(world.server, user, "d", conv, f"user:{user}")
        assert (await phx.heartbeat())[4]["status"] == "ok"  # still open at the end
        assert ws.close_code is None
        return {"user": user, "seqs": seqs, "received": received}


async def _flood_with_healthy_traffic(world: World, live: bool) -> tuple[FloodStats, list[dict[str, Any]]]:
    store = world.server.store
    users = [f"h{i:02d}" for i in range(HEALTHY)]
    for user in users:
        await world.server.add_user(user)
    world.conversation = await store.create_conversation(users)
    await world.server.add_user("flooder")
    stats = FloodStats()
    flood_done = trio.Event()
    everyone_joined = trio.Event()
    joined: list[int] = []
    outcomes: list[dict[str, Any]] = []

    async def healthy(i: int) -> None:
        outcomes.append(await _healthy(world, i, everyone_joined, joined, flood_done, live))

    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_flooder, world, flood_done, stats)
            for i in range(HEALTHY):
                nursery.start_soon(healthy, i)
    return stats, outcomes


def _assert_flood_isolated(world: World, stats: FloodStats, outcomes: list[dict[str, Any]]) -> None:
    assert len(outcomes) == HEALTHY  # no healthy socket was closed (each checks its own, and raised otherwise)
    assert stats.frames >= FLOOD_MIN_FRAMES
    assert stats.connections == FLOOD_ROUNDS * len(GARBAGE)
    for garbage in GARBAGE:  # every kind led a burst, and its burst was closed with its code
        assert stats.codes.get(garbage.name), f"{garbage.name} never led a burst"
        assert set(stats.codes[garbage.name]) == {garbage.close_code}, (garbage.name, stats.codes[garbage.name])
    seqs = sorted(seq for outcome in outcomes for seq in outcome["seqs"])
    assert seqs == list(range(1, HEALTHY * MESSAGES_EACH + 1))  # every message stored, gap-free


async def test_malformed_flood_does_not_disturb_20_healthy_sockets(world: World) -> None:
    stats, outcomes = await _flood_with_healthy_traffic(world, live=False)
    _assert_flood_isolated(world, stats, outcomes)


async def test_malformed_flood_healthy_sockets_receive_every_new_message(world: World) -> None:
    stats, outcomes = await _flood_with_healthy_traffic(world, live=True)
    _assert_flood_isolated(world, stats, outcomes)
    expected = sorted(f"h{i:02d}-{k}" for i in range(HEALTHY) for k in range(MESSAGES_EACH))
    assert all(outcome["received"] == expected for outcome in outcomes)
