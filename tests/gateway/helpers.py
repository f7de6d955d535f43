"""Test helpers for the transport: a raw RFC 6455 client over a real TCP socket, and endpoints."""

from __future__ import annotations

import base64
import os
import struct
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import trio

from whispr.gateway.endpoint import Endpoint, EndpointConfig, WebSocketRoute
from whispr.gateway.frames import binary_frame, text_frame
from whispr.gateway.http import HttpHandler
from whispr.gateway.transport import Accept, Connect, Transport, UpgradeRequest
from whispr.gateway.websocket import WebSocketLimits

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def client_frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True, rsv: int = 0) -> bytes:
    """A client frame (RFC 6455 §5.2), masked unless told otherwise."""
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
    n = len(payload)
    bit = 0x80 if mask else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 1 << 16:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def close_payload(code: int, reason: str = "") -> bytes:
    return struct.pack("!H", code) + reason.encode()


class Echo:
    """Echoes every message; "boom" raises (a handler bug); records that on_close ran."""

    closed = 0

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    async def on_text(self, data: str) -> None:
        if data == "boom":
            raise RuntimeError("handler bug")
        self.transport.send(text_frame(data.encode()))

    async def on_binary(self, data: bytes) -> None:
        self.transport.send(binary_frame(data))

    async def on_close(self) -> None:
        type(self).closed += 1


async def accept_echo(request: UpgradeRequest) -> Accept:
    return Accept(Echo, subprotocol="phoenix" if "phoenix" in request.subprotocols else None)


@asynccontextmanager
async def running_endpoint(
    connect: Connect = accept_echo,
    *,
    http_routes: Mapping[str, HttpHandler] | None = None,
    extra_websocket_routes: Mapping[str, WebSocketRoute] | None = None,
    http_prefix_routes: Mapping[str, HttpHandler] | None = None,
    **config: Any,
) -> AsyncIterator[tuple[Endpoint, int]]:
    """An endpoint on 127.0.0.1, a free port, for the body of the `async with`; `config` sets EndpointConfig fields."""
    endpoint = Endpoint(
        EndpointConfig(**{"host": "127.0.0.1", "port": 0, **config}),
        connect,
        http_routes=http_routes,
        extra_websocket_routes=extra_websocket_routes,
        http_prefix_routes=http_prefix_routes,
    )
    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(endpoint.serve)
        yield endpoint, port
        nursery.cancel_scope.cancel()


def upgrade_request(path: str = "/socket/websocket?vsn=2.0.0", extra: str = "") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    ).encode()


async def http_exchange(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send a raw request and read the whole response (the server closes after it)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        data = b""
        while chunk := await stream.receive_some():
            data += chunk
    return parse_response(data)


def parse_response(data: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


class RawClient:
    """A WebSocket client that sends exactly the bytes a test asks for."""

    def __init__(self, stream: trio.SocketStream, response: tuple[int, dict[str, str], bytes], rest: bytes) -> None:
        self.stream = stream
        self.status, self.headers, _ = response
        self._buffer = bytearray(rest)

    @classmethod
    async def connect(cls, port: int, request: bytes | None = None) -> RawClient:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(request or upgrade_request())
        data = bytearray()
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some()
            if not chunk:
                break
            data += chunk
        head, _, rest = bytes(data).partition(b"\r\n\r\n")
        return cls(stream, parse_response(head + b"\r\n\r\n"), rest)

    async def send(self, opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True, rsv: int = 0) -> None:
        await self.stream.send_all(client_frame(opcode, payload, fin=fin, mask=mask, rsv=rsv))

    async def _fill(self, n: int) -> bool:
        while len(self._buffer) < n:
            chunk = await self.stream.receive_some()
            if not chunk:
                return False
            self._buffer += chunk
        return True

    async def receive(self) -> tuple[int, bytes] | None:
        """The next server frame as (opcode, payload); None at EOF. Server frames are unmasked."""
        if not await self._fill(2):
            return None
        b0, b1 = self._buffer[0], self._buffer[1]
        assert not b1 & 0x80, "server frames are never masked"
        length, start = b1 & 0x7F, 2
        if length == 126:
            await self._fill(4)
            length, start = struct.unpack("!H", self._buffer[2:4])[0], 4
        elif length == 127:
            await self._fill(10)
            length, start = struct.unpack("!Q", self._buffer[2:10])[0], 10
        assert await self._fill(start + length)
        payload = bytes(self._buffer[start : start + length])
        del self._buffer[: start + length]
        return b0 & 0x0F, payload

    async def receive_close(self) -> int | None:
        """Skip data frames until the server's close frame; its code (None for an empty body)."""
        while (frame := await self.receive()) is not None:
            opcode, payload = frame
            if opcode == OP_CLOSE:
                return struct.unpack("!H", payload[:2])[0] if payload else None
        raise AssertionError("EOF before a close frame")

    async def at_eof(self) -> bool:
        return await self.receive() is None


def echo_route(max_message_size: int) -> dict[str, WebSocketRoute]:
    """The test-only Autobahn echo route."""
    limits = WebSocketLimits(max_message_size=max_message_size, outbox_max_bytes=max(max_message_size, 1 << 20))
    return {"/autobahn": WebSocketRoute(accept_echo, limits)}
