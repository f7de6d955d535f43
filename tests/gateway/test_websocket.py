"""Connection rules on real sockets: size caps, UTF-8, masking, ping flood, idle, close handshake, handler bugs."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from whispr.gateway.websocket import WebSocketLimits

from .helpers import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Echo,
    RawClient,
    close_payload,
    running_endpoint,
)

pytestmark = pytest.mark.integration

CAP = 64 * 1024


async def _closed_with(client: RawClient) -> int | None:
    """The server's close code, after answering it and seeing the server close TCP first."""
    code = await client.receive_close()
    await client.send(OP_CLOSE, close_payload(code or 1000))
    assert await client.at_eof()
    return code


async def test_message_exactly_at_cap_is_accepted_and_one_byte_more_is_1009() -> None:
    async with running_endpoint() as (_, port):
        client = await RawClient.connect(port)
        async with client.stream:
            await client.send(OP_BINARY, b"x" * CAP)
            assert await client.receive() == (OP_BINARY, b"x" * CAP)
            await client.send(OP_BINARY, b"x" * (CAP + 1))
            assert await _closed_with(client) == 1009


async def test_size_is_counted_in_bytes_not_characters() -> None:
    async with running_endpoint() as (_, port):
        client = await RawClient.connect(port)
        async with client.stream:
            await client.send(OP_TEXT, ("😀" * (CAP // 4 + 1)).encode())  # 16,385 characters, 65,540 bytes
            assert await _closed_with(client) == 1009


async def test_fragments_over_cap_in_total_are_1009() -> None:
    async with running_endpoint() as (_, port):
        client = await RawClient.connect(port)
        async with client.stream:
            await client.send(OP_TEXT, b"a" * 40_000, fin=False)
            await client.send(OP_CONT, b"a" * 20_000, fin=False)
            await client.send(OP_CONT, b"a" * (CAP - 60_000), fin=True)  # exactly the cap: accepted
            assert await client.receive() == (OP_TEXT, b"a" * CAP)
            await client.send(OP_TEXT, b"a" * 40_000, fin=False)
            await client.send(OP_CONT, b"a" * 40_000, fin=False)
            assert await _closed_with(client) == 1009


async def test_declared_huge_length_closes_from_the_header() -> None:
    """RFC 6455 §5.2 64-bit length 2**62 with no payload: refused at once, nothing preallocated."""
    async with running_endpoint() as (_, port):
        client = await RawClient.connect(port)
        async with client.stream:
            await client.stream.send_all(bytes([0x82, 0xFF]) + (1 << 62).to_bytes(8, "big") + b"mask")
            assert await _closed_with(client) == 1009


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (dict(opcode=OP_TEXT, payload=b"\xff\xfe"), 1007),
        (dict(opcode=OP_TEXT, payload=b"ok", mask=False), 1002),
        (dict(opcode=OP_TEXT, payload=b"ok", rsv=4), 1002),  # RSV1: permessage-deflate is not negotiated
        (dict(opcode=0x3, payload=b""), 1002),
        (dict(opcode=OP_CONT, payload=b"x"), 1002),
        (dict(opcode=OP_PING, payload=b"x" * 126), 1002),
        (dict(opcode=OP_CLOSE, payload=close_payload(1005)), 1002),
        (dict(opcode=OP_CLOSE, payload=b"\x03\xe8\xff"), 1007),
    ],
    ids=["utf8", "unmasked", "rsv1", "opcode", "orphan-continuation", "long-ping", "close-code", "close-reason"],
)
async def test_protocol_errors(frame: dict[str, object], code: int) -> None:
    async with running_endpoint() as (_, port):
        client = await RawClient.connect(port)
        async with client.stream:
            await client.send(**frame)  # type: ignore[arg-type]
            assert await _closed_with(client) == code


async def test_invalid_utf8_in_a_later_fragment_fails_at_that_fragment() -> None:
    async with running_endpoint() as (_, port):
        client = await RawClient.connect(port)
        async with client.stream:
            await client.send(OP_TEXT, "é".encode()[:1], fin=False)  # half a character: fine so far
            await client.send(OP_CONT, b"\x00", fin=False)  # now invalid, before the message ends
            assert await _closed_with(client) == 1007


async def test_pings_answered_then_a_flood_is_1008() -> None:
    async with running_endpoint(limits=WebSocketLimits(max_control_frames=10)) as (_, port):
        client = await RawClient.connect(port)
        async with client.stream:
            for i in range(10):
                await client.send(OP_PING, b"%d" % i)
                assert await client.receive() == (OP_PONG, b"%d" % i)
            await client.send(OP_PING, b"one too many")
            assert await _closed_with(client) == 1008


async def test_idle_connection_closed_with_4000(autojump_clock: trio.testing.MockClock) -> None:
    async with running_endpoint() as (endpoint, port):
        client = await RawClient.connect(port)
        async with client.stream:
            start = trio.current_time()
            await client.send(OP_TEXT, b"alive")
            assert await client.receive() == (OP_TEXT, b"alive")
            assert await client.receive_close() == 4000
            assert trio.current_time() - start == pytest.approx(90.0, abs=0.01)
            # No answer to the close: the server drops TCP after the close timeout (5 s).
            assert await client.at_eof()
            assert trio.current_time() - start == pytest.approx(95.0, abs=0.01)
        await trio.testing.wait_all_tasks_blocked()
        assert endpoint.statistics().connections == 0


async def test_every_frame_moves_the_idle_deadline(autojump_clock: trio.testing.MockClock) -> None:
    """The deadline heap re-files a connection at its latest deadline, not at the one first filed."""
    async with running_endpoint() as (endpoint, port):
        quiet = await RawClient.connect(port)
        chatty = await RawClient.connect(port)
        async with quiet.stream, chatty.stream:
            start = trio.current_time()
            for _ in range(3):  # frames at 0, 60 and 120 s
                await chatty.send(OP_TEXT, b"alive")
                assert await chatty.receive() == (OP_TEXT, b"alive")
                await trio.sleep(60)
            assert await quiet.receive_close() == 4000  # closed at 90 s, long before
            assert await chatty.receive_close() == 4000
            assert trio.current_time() - start == pytest.approx(210.0, abs=0.01)  # 90 s after the last frame
        await trio.testing.wait_all_tasks_blocked()
        assert endpoint.statistics().connections == 0


async def test_client_close_is_echoed_and_server_closes_tcp_first() -> None:
    before = Echo.closed
    async with running_endpoint() as (_, port):
        client = await RawClient.connect(port)
        async with client.stream:
            await client.send(OP_CLOSE, close_payload(4321, "bye"))
            assert await client.receive() == (OP_CLOSE, close_payload(4321, "bye"))
            assert await client.at_eof()
        await trio.testing.wait_all_tasks_blocked()
    assert Echo.closed == before + 1


async def test_handler_bug_is_1011_and_other_connections_live_on(caplog: pytest.LogCaptureFixture) -> None:
    async with running_endpoint() as (_, port):
        bystander = await RawClient.connect(port)
        victim = await RawClient.connect(port)
        async with bystander.stream, victim.stream:
            await victim.send(OP_TEXT, b"boom")
            assert await _closed_with(victim) == 1011
            await bystander.send(OP_TEXT, b"still here")
            assert await bystander.receive() == (OP_TEXT, b"still here")
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and r.name == "whispr.gateway"]
    assert len(errors) == 1
    assert errors[0].exc_info is not None


async def test_malformed_flood_leaves_healthy_sockets_untouched() -> None:
    """reliability.md A4 control set: 20 healthy sockets, 0 disconnects, 100 % of their messages."""
    rounds = 10
    async with running_endpoint() as (endpoint, port):
        healthy = [await RawClient.connect(port) for _ in range(20)]
        received = [0] * len(healthy)

        async def attacker() -> None:
            garbage = [
                b"\x81\x05hello",  # unmasked
                b"\xf1\x80abcd",  # RSV bits
                b"\x8f\x80abcd",  # reserved opcode
                b"\x82\xff" + (1 << 62).to_bytes(8, "big"),  # absurd length
                b"\x00" * 64,  # orphan continuations
            ]
            for i in range(100):
                bad = await RawClient.connect(port)
                async with bad.stream:
                    await bad.stream.send_all(garbage[i % len(garbage)])
                    assert await bad.receive_close() in (1002, 1009)

        async def talk(index: int, client: RawClient) -> None:
            for n in range(rounds):
                await client.send(OP_TEXT, b"%d:%d" % (index, n))
                assert await client.receive() == (OP_TEXT, b"%d:%d" % (index, n))
                received[index] += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(attacker)
            for index, client in enumerate(healthy):
                nursery.start_soon(talk, index, client)
        assert received == [rounds] * len(healthy)
        assert endpoint.statistics().connections >= len(healthy)
        for client in healthy:
            await client.send(OP_PING, b"still open")
            assert await client.receive() == (OP_PONG, b"still open")
            await client.stream.aclose()
