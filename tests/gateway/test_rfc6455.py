"""The sans-I/O frame reader: messages, fragments, limits and violations, byte by byte."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from whispr.gateway import rfc6455
from whispr.gateway.rfc6455 import FrameReader, ProtocolViolation, close_frame, parse_close, pong_frame

from .helpers import OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_TEXT, client_frame


def events(data: bytes, cap: int = 1000, chunk: int | None = None) -> list[rfc6455.Event]:
    reader = FrameReader(cap)
    out: list[rfc6455.Event] = []
    step = chunk or max(len(data), 1)
    for start in range(0, len(data), step):
        reader.receive_data(data[start : start + step])
        while (event := reader.next_event()) is not None:
            out.append(event)
    return out


@given(st.binary(max_size=300), st.integers(min_value=1, max_value=17))
def test_any_split_gives_the_same_messages(payload: bytes, chunk: int) -> None:
    text = payload.decode("latin-1")
    stream = (
        client_frame(OP_BINARY, payload)
        + client_frame(OP_TEXT, text.encode()[:7], fin=False)
        + client_frame(OP_PING, b"interleaved")  # §5.4: control frames may sit between fragments
        + client_frame(OP_CONT, text.encode()[7:])
    )
    assert events(stream, chunk=chunk) == [(OP_BINARY, payload), (OP_PING, b"interleaved"), (OP_TEXT, text)]


@given(st.binary(max_size=200))
def test_arbitrary_bytes_parse_or_raise_protocol_violation_only(data: bytes) -> None:
    """The websockets fuzz contract: any input yields events or a ProtocolViolation, nothing else."""
    code = None
    try:
        events(data, cap=100)
    except ProtocolViolation as violation:
        code = violation.code
    assert code in (None, 1002, 1007, 1009)


def test_cap_is_exact_and_counts_bytes() -> None:
    assert events(client_frame(OP_BINARY, b"x" * 100), cap=100) == [(OP_BINARY, b"x" * 100)]
    with pytest.raises(ProtocolViolation) as excinfo:
        events(client_frame(OP_TEXT, "é".encode() * 51), cap=100)  # 51 characters, 102 bytes
    assert excinfo.value.code == 1009


def test_fragment_total_over_cap_fails_at_the_header_of_the_crossing_fragment() -> None:
    reader = FrameReader(100)
    reader.receive_data(client_frame(OP_BINARY, b"x" * 60, fin=False))
    assert reader.next_event() is None
    reader.receive_data(client_frame(OP_CONT, b"x" * 41)[:4])  # only the header has arrived
    with pytest.raises(ProtocolViolation) as excinfo:
        reader.next_event()
    assert excinfo.value.code == 1009


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (client_frame(OP_TEXT, b"a", mask=False), 1002),
        (client_frame(OP_TEXT, b"a", rsv=1), 1002),
        (client_frame(0xB, b""), 1002),
        (client_frame(OP_PING, b"", fin=False), 1002),
        (client_frame(OP_TEXT, b"a", fin=False) + client_frame(OP_TEXT, b"b"), 1002),
        (bytes([0x82, 0xFF]) + (1 << 63).to_bytes(8, "big"), 1002),
        (client_frame(OP_TEXT, b"\xed\xa0\x80"), 1007),  # a UTF-16 surrogate is not UTF-8
    ],
)
def test_violations(data: bytes, code: int) -> None:
    with pytest.raises(ProtocolViolation) as excinfo:
        events(data)
    assert excinfo.value.code == code


def test_close_parsing_and_building() -> None:
    assert parse_close(b"") == (1005, "")
    assert parse_close(close_frame(4000, "idle")[2:]) == (4000, "idle")
    for bad, code in ((b"\x03", 1002), (b"\x03\xed", 1002), (b"\x0b\xb8\xc3", 1007)):  # 1005, bad UTF-8
        with pytest.raises(ProtocolViolation) as excinfo:
            parse_close(bad)
        assert excinfo.value.code == code
    assert close_frame(None) == b"\x88\x00"
    assert len(close_frame(1000, "é" * 100)) == 2 + 2 + 122  # cut to 123 bytes on a character boundary
    assert pong_frame(b"hi") == b"\x8a\x02hi"
    assert events(client_frame(OP_CLOSE, b"\x03\xe8")) == [(OP_CLOSE, b"\x03\xe8")]


def test_sendable_close_codes() -> None:
    valid = [c for c in range(0, 5001) if rfc6455.is_sendable_close_code(c)]
    assert valid == [1000, 1001, 1002, 1003, *range(1007, 1015), *range(3000, 5000)]
