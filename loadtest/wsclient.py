"""A minimal client-side WebSocket (RFC 6455) over a raw Trio socket, for holding many connections.

Why not trio-websocket or wsproto: a trio-websocket client is a connection object plus a background reader
task plus wsproto and h11 state per connection; the load generator has to hold 10k+ connections per box
next to the server under test. This client is one object with `__slots__`, one `bytearray` and one trio
socket; the caller's task reads it (no background task). Measured numbers are in the report
(`python -m loadtest hold ...` prints `client_kib_per_conn`).

What it implements: the opening handshake (with `Sec-WebSocket-Accept` check and optional subprotocols),
masked client text frames, unmasked server frames of any length, fragmentation, ping → pong, close
(answered, then the socket is closed). No extensions (no permessage-deflate).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import random
import socket as _stdsocket
import struct
from typing import Final

import trio

GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
MAX_HEAD: Final = 16 * 1024
RECV_SIZE: Final = 64 * 1024


class HandshakeError(Exception):
    """The server did not switch protocols (`status` is the HTTP status, 0 if none could be read)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ConnectionClosed(Exception):
    """The peer closed the WebSocket (`code`, 1006 when the TCP stream just ended)."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"closed {code} {reason}".strip())
        self.code = code
        self.reason = reason


def _mask(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    if n == 0:
        return payload
    reps = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(reps, "big")).to_bytes(n, "big")


def encode_frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """One final, masked client frame (RFC 6455 §5.2, §5.3)."""
    n = len(payload)
    key = random.getrandbits(32).to_bytes(4, "big")
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return head + key + _mask(payload, key)


class WsClient:
    __slots__ = ("_frag", "_frag_op", "_out", "buf", "close_code", "sock", "subprotocol")

    def __init__(self, sock: trio.socket.SocketType, leftover: bytes, subprotocol: str | None) -> None:
        self.sock = sock
        self.buf = bytearray(leftover)
        self.subprotocol = subprotocol
        self.close_code: int | None = None
        self._frag: bytearray | None = None
        self._frag_op = OP_TEXT
        self._out: bytes | None = None  # control frames to answer (pong, close), sent by recv()

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        target: str,
        *,
        source: str | None = None,
        subprotocols: tuple[str, ...] = (),
        headers: tuple[tuple[str, str], ...] = (),
        on_tcp: list[float] | None = None,
    ) -> WsClient:
        """TCP connect (from `source` if given), then the upgrade. Wrap the call in `trio.fail_after`."""
        sock = trio.socket.socket(_stdsocket.AF_INET, _stdsocket.SOCK_STREAM)
        try:
            sock.setsockopt(_stdsocket.IPPROTO_TCP, _stdsocket.TCP_NODELAY, 1)
            if source is not None:
                await sock.bind((source, 0))
            await sock.connect((host, port))
            if on_tcp is not None:
                on_tcp.append(trio.current_time())
            key = base64.b64encode(os.urandom(16))
            lines = [
                f"GET {target} HTTP/1.1",
                f"Host: {host}:{port}",
                "Upgrade: websocket",
                "Connection: Upgrade",
                f"Sec-WebSocket-Key: {key.decode()}",
                "Sec-WebSocket-Version: 13",
            ]
            if subprotocols:
                lines.append("Sec-WebSocket-Protocol: " + ", ".join(subprotocols))
            lines.extend(f"{k}: {v}" for k, v in headers)
            await _send_all(sock, ("\r\n".join(lines) + "\r\n\r\n").encode())
            head = bytearray()
            while b"\r\n\r\n" not in head:
                if len(head) > MAX_HEAD:
                    raise HandshakeError(0, "response head too large")
                chunk = await sock.recv(4096)
                if not chunk:
                    raise HandshakeError(0, "connection closed during the handshake")
                head += chunk
            end = head.index(b"\r\n\r\n") + 4
            status_line, *header_lines = head[: end - 4].decode("latin-1").split("\r\n")
            parts = status_line.split(" ", 2)
            status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
            if status != 101:
                raise HandshakeError(status, f"upgrade refused: {status_line}")
            hdrs = {}
            for line in header_lines:
                k, _, v = line.partition(":")
                hdrs[k.strip().lower()] = v.strip()
            expected = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()
            if hdrs.get("sec-websocket-accept") != expected:
                raise HandshakeError(101, "bad Sec-WebSocket-Accept")
            chosen = hdrs.get("sec-websocket-protocol")
            if subprotocols and chosen not in subprotocols:
                raise HandshakeError(101, f"server selected no offered subprotocol ({chosen!r})")
            return cls(sock, bytes(head[end:]), chosen)
        except BaseException:
            sock.close()
            raise

    async def send_text(self, data: bytes) -> None:
        """Send one text message. Only one task may send on a connection at a time (recv() answers pings)."""
        await _send_all(self.sock, encode_frame(data))

    async def recv(self) -> bytes:
        """The next text or binary message. Answers pings; raises `ConnectionClosed` at the end."""
        while True:
            msg = self._parse()
            if self._out is not None:
                out, self._out = self._out, None
                # shielded: a frame cut in half by a cancellation would corrupt the stream (tiny, bounded)
                with trio.CancelScope(shield=True), trio.move_on_after(1.0), contextlib.suppress(OSError):
                    await _send_all(self.sock, out)
            if msg is not None:
                return msg
            if self.close_code is not None:
                raise ConnectionClosed(self.close_code)
            chunk = await self.sock.recv(RECV_SIZE)
            if not chunk:
                self.close_code = 1006
                raise ConnectionClosed(1006, "TCP closed")
            self.buf += chunk

    def _parse(self) -> bytes | None:
        buf = self.buf
        while True:
            if len(buf) < 2:
                return None
            b0, b1 = buf[0], buf[1]
            n = b1 & 0x7F
            pos = 2
            if n == 126:
                if len(buf) < 4:
                    return None
                n = int.from_bytes(buf[2:4], "big")
                pos = 4
            elif n == 127:
                if len(buf) < 10:
                    return None
                n = int.from_bytes(buf[2:10], "big")
                pos = 10
            masked = b1 & 0x80
            if masked:
                pos += 4
            if len(buf) < pos + n:
                return None
            payload = bytes(buf[pos : pos + n])
            if masked:  # servers must not mask, but tolerate it
                payload = _mask(payload, bytes(buf[pos - 4 : pos]))
            del buf[: pos + n]
            opcode, fin = b0 & 0x0F, b0 & 0x80
            if opcode in (OP_TEXT, OP_BINARY):
                if fin:
                    return payload
                self._frag, self._frag_op = bytearray(payload), opcode
            elif opcode == OP_CONT and self._frag is not None:
                self._frag += payload
                if fin:
                    out, self._frag = bytes(self._frag), None
                    return out
            elif opcode == OP_PING:
                self._queue_control(OP_PONG, payload)
            elif opcode == OP_CLOSE:
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self._queue_control(OP_CLOSE, payload[:2])
                return None

    def _queue_control(self, opcode: int, payload: bytes) -> None:
        self._out = (self._out or b"") + encode_frame(payload, opcode)

    async def aclose(self, code: int = 1000, within: float = 0.5) -> None:
        """Send a close frame (best effort, bounded by `within` seconds) and close the socket."""
        try:
            if self.close_code is None:
                with trio.move_on_after(within):
                    await _send_all(self.sock, encode_frame(code.to_bytes(2, "big"), OP_CLOSE))
        except OSError:
            pass
        finally:
            self.sock.close()

    def abort(self) -> None:
        self.sock.close()


async def _send_all(sock: trio.socket.SocketType, data: bytes) -> None:
    view = memoryview(data)
    while view:
        sent = await sock.send(view)
        view = view[sent:]
