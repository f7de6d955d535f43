"""The bounded outbox: its policy in isolation, then the write path over a socketpair with tiny buffers."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import pytest
import trio
import trio.testing

from whispr.gateway.deadlines import Deadlines
from whispr.gateway.frames import binary_frame
from whispr.gateway.outbox import Outbox
from whispr.gateway.transport import Accept, Transport
from whispr.gateway.websocket import WebSocketConnection, WebSocketLimits
from whispr.observability import telemetry

from .helpers import OP_BINARY, OP_CLOSE, RawClient, close_payload


@contextmanager
def recorded(*events: str) -> Iterator[list[tuple[str, dict[str, float], dict[str, object]]]]:
    seen: list[tuple[str, dict[str, float], dict[str, object]]] = []
    telemetry.attach("test-outbox", events, lambda e, m, md: seen.append((e, dict(m), dict(md))))
    try:
        yield seen
    finally:
        telemetry.detach("test-outbox")


def test_fifo_and_partial_writes() -> None:
    outbox = Outbox(max_frames=10, max_bytes=1000)
    for frame in (b"abc", b"defg", b"h"):
        assert outbox.push(frame)
    assert outbox.nbytes == 8
    outbox.consume(5)  # "abc" and "de"
    assert [bytes(chunk) for chunk in outbox.head(10)] == [b"fg", b"h"]
    outbox.consume(3)
    assert len(outbox) == 0
    assert outbox.nbytes == 0


def test_droppable_frames_go_first() -> None:
    outbox = Outbox(max_frames=3, max_bytes=1000)
    with recorded(telemetry.SLOW_CONSUMER_DROPPED) as seen:
        assert outbox.push(b"durable-1")
        assert outbox.push(b"typing", droppable=True)
        assert outbox.push(b"presence", droppable=True)
        assert outbox.push(b"typing-again", droppable=True)  # full: this one is dropped
        assert outbox.push(b"durable-2")  # full: evicts the queued droppable frames
        assert [bytes(c) for c in outbox.head(10)] == [b"durable-1", b"durable-2"]
        assert outbox.push(b"durable-3")
        assert not outbox.push(b"durable-4")  # nothing left to drop: overflow
    assert [m["dropped"] for _, m, _ in seen] == [1, 2]


def test_started_head_is_never_evicted_or_discarded() -> None:
    outbox = Outbox(max_frames=2, max_bytes=1000)
    outbox.push(b"presence", droppable=True)
    outbox.consume(3)  # "pre" is on the wire: the rest must follow
    outbox.push(b"typing", droppable=True)
    assert outbox.push(b"durable")  # evicts "typing" only
    assert [bytes(c) for c in outbox.head(10)] == [b"sence", b"durable"]
    outbox.discard_unstarted()
    outbox.push_final(b"close")
    assert [bytes(c) for c in outbox.head(10)] == [b"sence", b"close"]
    assert outbox.nbytes == 10


def test_byte_bound_admits_one_large_frame_into_an_empty_queue() -> None:
    outbox = Outbox(max_frames=100, max_bytes=10)
    assert outbox.push(b"x" * 50)
    assert not outbox.push(b"y")


class _Probe:
    """A handler that hands its transport to the test and signals on_close."""

    transport: Transport

    def __init__(self) -> None:
        self.closed = trio.Event()

    def __call__(self, transport: Transport) -> _Probe:
        self.transport = transport
        return self

    async def on_text(self, data: str) -> None:
        pass

    async def on_binary(self, data: bytes) -> None:
        pass

    async def on_close(self) -> None:
        self.closed.set()


@asynccontextmanager
async def _socketpair_connection(limits: WebSocketLimits) -> AsyncIterator[tuple[Transport, RawClient, _Probe]]:
    """A server connection on one end of a socketpair with small kernel buffers, a raw client on the other."""
    server, client = socket.socketpair()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    server.setblocking(False)
    probe = _Probe()
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(client))
    deadlines = Deadlines()
    async with trio.open_nursery() as keeper:
        await keeper.start(deadlines.run)
        async with trio.open_nursery() as nursery:
            connection = WebSocketConnection(server, ("socketpair", 0), limits, nursery, deadlines)
            nursery.start_soon(connection.run, Accept(probe))
            await trio.testing.wait_all_tasks_blocked()
            async with stream:
                yield probe.transport, RawClient(stream, (101, {}, b""), b""), probe
        keeper.cancel_scope.cancel()


def _numbered(i: int) -> bytes:
    return binary_frame(i.to_bytes(4, "big") + b"." * 1020)


async def test_frames_in_order_through_the_coalescing_writer() -> None:
    n = 400  # 400 KiB: far beyond the kernel buffers, so most frames queue
    with recorded(telemetry.OUTBOX_DEPTH) as writes:
        async with _socketpair_connection(WebSocketLimits()) as (transport, client, probe):
            for i in range(n):
                transport.send(_numbered(i))
            for i in range(n):
                assert await client.receive() == (OP_BINARY, _numbered(i)[4:])
            await client.send(OP_CLOSE, close_payload(1001))
            assert await client.receive() == (OP_CLOSE, close_payload(1001))
            assert await client.at_eof()
    assert 0 < len(writes) < n  # the writer ran, with several frames per sendmsg
    assert probe.closed.is_set()


async def test_client_that_never_reads_gets_1013_after_the_frames_on_the_wire() -> None:
    limits = WebSocketLimits(outbox_max_frames=20)
    with recorded(telemetry.SLOW_CONSUMER_DROPPED) as dropped:
        async with _socketpair_connection(limits) as (transport, client, _):
            for i in range(200):
                transport.send(_numbered(i))
            assert [md["reason"] for _, _, md in dropped] == ["overflow"]
            transport.send(_numbered(999))  # after close: discarded
            expected = 0
            while (frame := await client.receive()) is not None and frame[0] == OP_BINARY:
                assert frame[1][:4] == expected.to_bytes(4, "big")  # a gap-free prefix, in order
                expected += 1
            assert 0 < expected < 200
            assert frame == (OP_CLOSE, close_payload(1013, "slow consumer"))


async def test_stalled_writer_aborts_at_write_timeout(autojump_clock: trio.testing.MockClock) -> None:
    with recorded(telemetry.SLOW_CONSUMER_DROPPED, telemetry.SOCKET_CLOSED) as seen:
        async with _socketpair_connection(WebSocketLimits()) as (transport, _client, probe):
            start = trio.current_time()
            for i in range(100):
                transport.send(_numbered(i))
            await probe.closed.wait()  # the client never reads; the clock jumps to the write timeout
            assert trio.current_time() - start == pytest.approx(30.0, abs=0.01)
    assert [md.get("reason") for e, _, md in seen if e == telemetry.SLOW_CONSUMER_DROPPED] == ["write_timeout"]
    assert [md["code"] for e, _, md in seen if e == telemetry.SOCKET_CLOSED] == [1006]
