"""Server-to-client WebSocket frames, built once and shared (RFC 6455 §5.2).

Server frames are never masked (RFC 6455 §5.1), so the bytes of a frame are the same for every
connection: a broadcast is framed once and the same `bytes` object goes to every subscriber
("encode once", architecture.md hot path). Pure functions; no I/O.
"""

from __future__ import annotations

import struct

OPCODE_TEXT = 0x1
OPCODE_BINARY = 0x2
_FIN = 0x80


def _frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        return bytes((_FIN | opcode, n)) + payload
    if n < 1 << 16:
        return struct.pack("!BBH", _FIN | opcode, 126, n) + payload
    return struct.pack("!BBQ", _FIN | opcode, 127, n) + payload


def text_frame(payload: bytes) -> bytes:
    """One final, unmasked text frame carrying `payload` (already UTF-8 encoded)."""
    return _frame(OPCODE_TEXT, payload)


def binary_frame(payload: bytes) -> bytes:
    """One final, unmasked binary frame carrying `payload`."""
    return _frame(OPCODE_BINARY, payload)
