"""Request-head parsing and the opening handshake (RFC 6455 §4.2), sans-I/O."""

from __future__ import annotations

from urllib.parse import parse_qsl, quote

import h11
import pytest
from hypothesis import given
from hypothesis import strategies as st

from whispr.gateway.http import (
    HeadError,
    HttpRequest,
    HttpResponse,
    body_length,
    check_handshake,
    parse_head,
    render_response,
    render_switching_protocols,
)

PEER = ("10.0.0.1", 5555)


def test_parse_upgrade_head() -> None:
    request = parse_head(
        b"GET /socket/websocket?vsn=2.0.0&a=1&a=2&empty= HTTP/1.1\r\nHost: h\r\nUpgrade: WebSocket\r\n"
        b"Connection: keep-alive, Upgrade\r\nSec-WebSocket-Protocol: phoenix\r\n"
        b"Sec-WebSocket-Protocol: base64url.bearer.phx.dG9r, other\r\nX-Dup: 1\r\nX-Dup: 2\r\n\r\n",
        PEER,
        100,
    )
    assert request.path == "/socket/websocket"
    assert request.query == {"vsn": "2.0.0", "a": "2", "empty": ""}
    assert request.subprotocols == ("phoenix", "base64url.bearer.phx.dG9r", "other")
    assert request.headers["x-dup"] == "2"
    assert request.upgrade == {"websocket"}
    assert "upgrade" in request.connection
    assert request.peer == PEER


def test_rfc6455_example_accept_key() -> None:
    request = parse_head(
        b"GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        PEER,
        100,
    )
    assert check_handshake(request) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455 §1.3
    assert render_switching_protocols("k", "phoenix") == (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: k\r\nSec-WebSocket-Protocol: phoenix\r\n\r\n"
    )


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"A: b\r\n" * 5 + b"\r\n", 431),
    ],
)
def test_head_errors(head: bytes, status: int) -> None:
    with pytest.raises(HeadError) as excinfo:
        parse_head(head, PEER, 5)
    assert excinfo.value.status == status


def test_render_response() -> None:
    assert render_response(HttpResponse(429, (("Retry-After", "30"),))) == (
        b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 30\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )


# -- strictness and the h11 oracle -------------------------------------------------------------


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  folded\r\n\r\n",  # obs-fold (RFC 9112 §5.2)
        b"GET / HTTP/1.1\r\nHost: x\r\n\tfolded\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-A : 1\r\n\r\n",  # whitespace before the colon (§5.1)
        b"GET / HTTP/1.1\r\nHost: x\r\nX(A): 1\r\n\r\n",  # not a token
        b"GET / HTTP/1.1\r\nHost: x\r\n: 1\r\n\r\n",  # empty name
        b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",  # NUL
        b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n",  # other control characters
        b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n",  # bare CR
        b"GET / HTTP/1.1\r\nHost: x\nX-A: 1\r\n\r\n",  # bare LF
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",  # duplicate
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: +1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: \xb2\r\n\r\n",  # a latin-1 superscript digit
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1234567890123456789\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host (RFC 9112 §3.2)
        b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
        b"GET / HTTP/1.0\r\nHost: x\r\nhost: y\r\n\r\n",
        b"GET / HTTP/2.0\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.2\r\nHost: x\r\n\r\n",
        b"GET / http/1.1\r\nHost: x\r\n\r\n",
        b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n",  # a non-ASCII target
        b"G(T / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1 \r\nHost: x\r\n\r\n",
        b"\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\nextra",
    ],
)
def test_strict_head_rejects(head: bytes) -> None:
    with pytest.raises(HeadError) as excinfo:
        parse_head(head, PEER, 100)
    assert excinfo.value.status == 400


def test_http10_without_host_and_values_with_inner_space() -> None:
    request = parse_head(b"DELETE /x?y HTTP/1.0\r\nX-A:\t a \t b\xe9 \r\nX-Empty:\r\n\r\n", PEER, 100)
    assert (request.method, request.path, request.query, request.http_version) == ("DELETE", "/x", {"y": ""}, "1.0")
    assert request.headers == {"x-a": "a \t b\xe9", "x-empty": ""}
    assert request.body == b""


def _h11_parse(head: bytes) -> tuple[str, str, str, str, dict[str, str]] | None:
    """h11's reading of `head` in our terms (the last value of a repeated field wins), or None."""
    connection = h11.Connection(h11.SERVER, max_incomplete_event_size=len(head) + 1)
    connection.receive_data(head)
    try:
        event = connection.next_event()
    except h11.RemoteProtocolError:
        return None
    if not isinstance(event, h11.Request):
        return None
    path, _, query = event.target.decode().partition("?")
    headers = {name.decode().lower(): value.decode("latin-1") for name, value in event.headers.raw_items()}
    return event.method.decode(), path, query, event.http_version.decode(), headers


def _ours(head: bytes) -> tuple[str, str, str, str, dict[str, str]] | None:
    try:
        request = parse_head(head, PEER, 1000)
    except HeadError:
        return None
    query = head.split(b" ", 2)[1].partition(b"?")[2].decode()
    assert request.query == dict(parse_qsl(query, keep_blank_values=True))
    return request.method, request.path, query, request.http_version, dict(request.headers)


_TCHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_tokens = st.text(_TCHARS, min_size=1, max_size=12)
_values = st.text(
    st.sampled_from(["\t", " ", *map(chr, range(0x21, 0x7F)), *map(chr, range(0x80, 0x100))]), max_size=20
)
_targets = st.text(st.sampled_from(list(map(chr, range(0x21, 0x7F)))), min_size=1, max_size=30)


@st.composite
def valid_heads(draw: st.DrawFn) -> bytes:
    version = draw(st.sampled_from(["1.0", "1.1"]))
    fields = draw(
        st.lists(
            st.tuples(_tokens, _values).filter(
                lambda field: field[0].lower() not in ("host", "content-length", "transfer-encoding")
            ),
            max_size=8,
        )
    )
    if version == "1.1" or draw(st.booleans()):
        fields.insert(draw(st.integers(0, len(fields))), (draw(st.sampled_from(["Host", "host", "HOST"])), "h:1"))
    if draw(st.booleans()):
        fields.append(("Content-Length", str(draw(st.integers(0, 10**9)))))
    text = f"{draw(_tokens)} {draw(_targets)} HTTP/{version}\r\n"
    text += "".join(f"{name}:{value}\r\n" for name, value in fields) + "\r\n"
    return text.encode("latin-1")


@given(valid_heads())
def test_valid_heads_parse_like_h11(head: bytes) -> None:
    ours = _ours(head)
    assert ours is not None
    assert ours == _h11_parse(head)


@given(valid_heads(), st.integers(0, 400), st.binary(min_size=1, max_size=3))
def test_mutated_heads_are_never_accepted_where_h11_refuses(head: bytes, at: int, junk: bytes) -> None:
    """Strictness: whatever we accept, h11 accepts too, with the same meaning."""
    at = min(at, len(head) - 4)
    mutated = head[:at] + junk + head[at:]
    ours = _ours(mutated)
    if ours is not None:
        assert ours == _h11_parse(mutated)


def test_body_length() -> None:
    def request(*fields: str) -> HttpRequest:
        return parse_head(
            ("POST / HTTP/1.1\r\nHost: x\r\n" + "".join(f + "\r\n" for f in fields) + "\r\n").encode(), PEER, 10
        )

    assert body_length(request(), 10) == 0
    assert body_length(request("Content-Length: 10"), 10) == 10
    assert body_length(request("Content-Length: 0010"), 10) == 10
    too_big = body_length(request("Content-Length: 11"), 10)
    assert isinstance(too_big, HttpResponse)
    assert too_big.status == 413
    chunked = body_length(request("Transfer-Encoding: chunked"), 10)
    assert isinstance(chunked, HttpResponse)
    assert chunked.status == 411


def test_head_response_keeps_length_and_drops_body() -> None:
    assert render_response(HttpResponse(200, body=b"abc"), head_only=True) == (
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\n"
    )


@given(st.text(st.sampled_from("ab=&%+;2x é"), max_size=20))
def test_query_fast_path_matches_parse_qsl(query: str) -> None:
    head = f"GET /p?{quote(query, safe='=&%+;')} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    target_query = head.split(b" ")[1].partition(b"?")[2].decode()
    assert parse_head(head, PEER, 10).query == dict(parse_qsl(target_query, keep_blank_values=True))
