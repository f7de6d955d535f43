"""Sans-I/O RFC 6455 reading for the server side: client frames in, complete messages out.

Rules (what the reader enforces, RFC sections cited):
- Every client frame is masked (§5.1), has no RSV bit set (§5.2: no extension is ever negotiated,
  so permessage-deflate's RSV1 is a protocol error too) and a known opcode (§5.2, §11.8).
- Control frames are final and carry at most 125 bytes (§5.5). They may arrive between the
  fragments of a data message (§5.4) and are returned at once.
- A continuation frame needs an open fragmented message, and a new data frame needs none (§5.4).
- The size cap counts payload *bytes* of one whole message, across all its fragments, and is
  checked as soon as a frame header announces its length: nothing is buffered or preallocated
  from a declared length beyond the cap (reliability.md B1-B3). The buffered input therefore
  never exceeds the cap plus one frame header.
- Text is validated as UTF-8 (§5.6, §8.1), fragment by fragment, so an invalid sequence fails
  at the fragment that carries it.

Violations raise `ProtocolViolation` carrying the close code to answer with (§7.4.1): 1002
protocol error, 1007 invalid payload, 1009 too big. The reader is then unusable.

Server frames are built here too (close, pong); data frames come from `whispr.gateway.frames`.
"""

from __future__ import annotations

import codecs
import struct

OPCODE_CONTINUATION = 0x0
OPCODE_TEXT = 0x1
OPCODE_BINARY = 0x2
OPCODE_CLOSE = 0x8
OPCODE_PING = 0x9
OPCODE_PONG = 0xA

CLOSE_NORMAL = 1000
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_NO_STATUS = 1005
"""Not a wire code (§7.4.1): what `parse_close` returns for a close frame without a body."""
CLOSE_INVALID_PAYLOAD = 1007
CLOSE_POLICY_VIOLATION = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_IDLE_TIMEOUT = 4000
"""whispr's own code (contract.md §1, §6): nothing received for the idle timeout."""

_FIN = 0x80
_RSV = 0x70
_MASKED = 0x80
_MAX_CONTROL_PAYLOAD = 125
_UTF8 = codecs.getincrementaldecoder("utf-8")


class ProtocolViolation(Exception):
    """The peer broke RFC 6455 or a limit; close the connection with `code`."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


def is_sendable_close_code(code: int) -> bool:
    """Whether `code` may appear in a close frame (§7.4.1, §7.4.2, IANA registry).

    1000-1003 and 1007-1014 are defined; 1004 is reserved and 1005, 1006 and 1015 must never be
    sent; 3000-4999 belong to libraries and applications; everything else is invalid.
    """
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def parse_close(payload: bytes) -> tuple[int, str]:
    """The (code, reason) of a received close frame (§5.5.1).

    An empty body gives `CLOSE_NO_STATUS` (§7.1.5).

    Raises:
        ProtocolViolation: a one-byte body or an invalid code (1002), a reason that is not
            UTF-8 (1007).
    """
    if not payload:
        return CLOSE_NO_STATUS, ""
    if len(payload) == 1:
        raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, "close frame with a one-byte body")
    code = int.from_bytes(payload[:2], "big")
    if not is_sendable_close_code(code):
        raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, "invalid close code")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolViolation(CLOSE_INVALID_PAYLOAD, "close reason is not UTF-8") from None
    return code, reason


def _control_frame(opcode: int, payload: bytes) -> bytes:
    return bytes((_FIN | opcode, len(payload))) + payload


def close_frame(code: int | None, reason: str = "") -> bytes:
    """A server close frame (§5.5.1); `None` gives an empty body, the echo of a close without one.

    The reason is cut to fit the 125-byte control payload, on a character boundary.
    """
    if code is None:
        return _control_frame(OPCODE_CLOSE, b"")
    encoded = reason.encode("utf-8")
    if len(encoded) > _MAX_CONTROL_PAYLOAD - 2:
        encoded = encoded[: _MAX_CONTROL_PAYLOAD - 2].decode("utf-8", "ignore").encode("utf-8")
    return _control_frame(OPCODE_CLOSE, struct.pack("!H", code) + encoded)


def pong_frame(payload: bytes) -> bytes:
    """The pong answering a ping with `payload` (§5.5.3: the same application data)."""
    return _control_frame(OPCODE_PONG, payload)


def _unmask(data: bytearray, mask: bytes) -> bytes:
    """XOR `data` with the repeating 4-byte `mask` (§5.3), as one big-integer operation."""
    n = len(data)
    if n == 0:
        return b""
    key = (mask * ((n + 3) >> 2))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


Event = tuple[int, "str | bytes"]
"""(opcode, payload): `OPCODE_TEXT` with a `str`; `OPCODE_BINARY`, `OPCODE_PING`, `OPCODE_PONG`,
`OPCODE_CLOSE` with the unmasked `bytes` (parse a close body with `parse_close`)."""


class FrameReader:
    """Incremental parser of client frames into complete messages and control frames.

    Feed bytes with `receive_data`, then call `next_event` until it returns `None`.
    """

    __slots__ = ("_binary_parts", "_buf", "_decoder", "_fragment_opcode", "_fragment_size", "_max_size", "_text_parts")

    def __init__(self, max_message_size: int) -> None:
        self._max_size = max_message_size
        # Invariant: holds only bytes not yet parsed; never more than one frame header plus
        # `_max_size` payload bytes, because a frame whose declared length would exceed the cap
        # is refused from its header.
        self._buf = bytearray()
        # Invariant: 0 when no fragmented message is open; otherwise its opcode, with
        # `_fragment_size` payload bytes received so far, in `_text_parts` (validated by
        # `_decoder`) for text or in `_binary_parts` for binary. All three are None otherwise.
        self._fragment_opcode = 0
        self._fragment_size = 0
        self._decoder: codecs.IncrementalDecoder | None = None
        self._text_parts: list[str] | None = None
        self._binary_parts: list[bytes] | None = None

    def receive_data(self, data: bytes | bytearray) -> None:
        """Append bytes read from the peer."""
        self._buf += data

    def next_event(self) -> Event | None:
        """The next complete message or control frame, or `None` when more bytes are needed.

        Raises:
            ProtocolViolation: see the module rules.
        """
        buf = self._buf
        while True:
            available = len(buf)
            if available < 2:
                return None
            b0 = buf[0]
            b1 = buf[1]
            if b0 & _RSV:
                raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, "reserved bits set")
            if not b1 & _MASKED:
                raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, "client frame is not masked")
            opcode = b0 & 0x0F
            fin = b0 & _FIN
            length = b1 & 0x7F
            start = 2
            if length == 126:
                if available < 4:
                    return None
                length = (buf[2] << 8) | buf[3]
                start = 4
            elif length == 127:
                if available < 10:
                    return None
                length = int.from_bytes(buf[2:10], "big")
                start = 10
                if length >> 63:
                    raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, "64-bit length with the top bit set")
            if opcode & 0x8:
                if opcode > OPCODE_PONG:
                    raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, "reserved control opcode")
                if not fin:
                    raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, "fragmented control frame")
                if length > _MAX_CONTROL_PAYLOAD:
                    raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, "control frame over 125 bytes")
            else:
                if opcode > OPCODE_BINARY:
                    raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, "reserved data opcode")
                if opcode == OPCODE_CONTINUATION:
                    if not self._fragment_opcode:
                        raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, "continuation without a message")
                elif self._fragment_opcode:
                    raise ProtocolViolation(CLOSE_PROTOCOL_ERROR, "new message inside a fragmented one")
                if self._fragment_size + length > self._max_size:
                    raise ProtocolViolation(CLOSE_TOO_BIG, "message over the size cap")
            end = start + 4 + length
            if available < end:
                return None
            payload = _unmask(buf[start + 4 : end], bytes(buf[start : start + 4]))
            del buf[:end]
            if opcode & 0x8:
                return opcode, payload
            if opcode != OPCODE_CONTINUATION:
                if fin:
                    if opcode == OPCODE_BINARY:
                        return OPCODE_BINARY, payload
                    try:
                        return OPCODE_TEXT, payload.decode("utf-8")
                    except UnicodeDecodeError:
                        raise ProtocolViolation(CLOSE_INVALID_PAYLOAD, "text is not UTF-8") from None
                self._fragment_opcode = opcode
                if opcode == OPCODE_TEXT:
                    self._decoder = _UTF8()
                    self._text_parts = []
                else:
                    self._binary_parts = []
            event = self._add_fragment(payload, fin)
            if event is not None:
                return event

    def _add_fragment(self, payload: bytes, fin: int) -> Event | None:
        """Add one fragment of the open message (§5.4); the whole message once `fin` is set."""
        self._fragment_size += len(payload)
        if self._text_parts is not None and self._decoder is not None:
            try:
                self._text_parts.append(self._decoder.decode(payload, bool(fin)))
            except UnicodeDecodeError:
                raise ProtocolViolation(CLOSE_INVALID_PAYLOAD, "text is not UTF-8") from None
        elif self._binary_parts is not None:
            self._binary_parts.append(payload)
        if not fin:
            return None
        text, binary = self._text_parts, self._binary_parts
        self._fragment_opcode = self._fragment_size = 0
        self._decoder = self._text_parts = self._binary_parts = None
        if text is not None:
            return OPCODE_TEXT, "".join(text)
        return OPCODE_BINARY, b"".join(binary or ())
