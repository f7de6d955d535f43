"""The load generator's minimal WebSocket client, against wsproto-based servers."""

from __future__ import annotations

import json
import struct

import pytest
import trio
from trio_websocket import WebSocketRequest, serve_websocket
from wsproto.frame_protocol import FrameDecoder

from loadtest.wsclient import (
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    ConnectionClosed,
    HandshakeError,
    WsClient,
    encode_frame,
)
from tests.loadtest.standin import LoadStandIn


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70000])
def test_encode_frame_is_a_masked_final_text_frame_wsproto_can_read(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    decoder = FrameDecoder(client=False)  # a server-side decoder: it requires the mask
    decoder.receive_bytes(encode_frame(payload))
    frame = decoder.process_buffer()
    assert frame is not None
    assert frame.opcode.value == OP_TEXT
    assert frame.frame_finished
    assert frame.message_finished
    assert bytes(frame.payload) == payload


def _server_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    b0 = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        return bytes((b0, n)) + payload
    if n < 1 << 16:
        return struct.pack("!BBH", b0, 126, n) + payload
    return struct.pack("!BBQ", b0, 127, n) + payload


async def test_parses_fragments_answers_ping_and_close() -> None:
    a, b = trio.socket.socketpair()
    ws = WsClient(a, b"", None)
    with a, b:
        big = b"x" * 70000
        data = (
            _server_frame(OP_TEXT, b"hel", fin=False)
            + _server_frame(0x0, b"lo")
            + _server_frame(OP_PING, b"p1")
            + _server_frame(OP_TEXT, big)
            + _server_frame(OP_CLOSE, (4001).to_bytes(2, "big"))
        )
        await b.send(data)
        assert await ws.recv() == b"hello"
        assert await ws.recv() == big
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
        assert info.value.code == 4001
        decoder = FrameDecoder(client=False)
        decoder.receive_bytes(await b.recv(1024))
        pong = decoder.process_buffer()
        close = decoder.process_buffer()
        assert pong is not None
        assert pong.opcode.value == OP_PONG
        assert bytes(pong.payload) == b"p1"
        assert close is not None
        assert close.opcode.value == OP_CLOSE


@pytest.fixture
async def standin(nursery: trio.Nursery) -> LoadStandIn:
    result: LoadStandIn = await nursery.start(LoadStandIn().serve)
    return result


@pytest.mark.integration
async def test_handshake_subprotocol_join_and_reply(standin: LoadStandIn) -> None:
    with trio.fail_after(5):
        ws = await WsClient.connect(
            "127.0.0.1",
            standin.ws_port,
            "/socket/websocket?vsn=2.0.0",
            source="127.0.0.3",
            subprotocols=("phoenix", "base64url.bearer.phx.YWJj"),
        )
        assert ws.subprotocol == "phoenix"
        await ws.send_text(b'["1","1","room:a","phx_join",{}]')
        assert json.loads(await ws.recv()) == ["1", "1", "room:a", "phx_reply", {"status": "ok", "response": {}}]
        await ws.send_text(b'["1","2","room:a","ping",{}]')
        assert json.loads(await ws.recv())[4] == {"status": "ok", "response": {"pong": True}}
        await ws.aclose()
    assert standin.subprotocols == [["phoenix", "base64url.bearer.phx.YWJj"]]


@pytest.mark.integration
async def test_refused_upgrade_reports_status(standin: LoadStandIn) -> None:
    with trio.fail_after(5), pytest.raises(HandshakeError) as info:
        await WsClient.connect("127.0.0.1", standin.ws_port, "/socket/websocket?vsn=2.0.0&token=bad")
    assert info.value.status == 403


@pytest.mark.integration
async def test_server_without_offered_subprotocol_is_refused(nursery: trio.Nursery) -> None:
    async def plain(request: WebSocketRequest) -> None:
        ws = await request.accept()  # ignores the offered subprotocols
        await ws.get_message()

    server = await nursery.start(serve_websocket, plain, "127.0.0.1", 0, None)
    with trio.fail_after(5), pytest.raises(HandshakeError, match="no offered subprotocol"):
        await WsClient.connect("127.0.0.1", server.port, "/", subprotocols=("phoenix",))
