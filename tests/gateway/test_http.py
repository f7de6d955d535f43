"""Request-head parsing and the opening handshake (RFC 6455 §4.2), sans-I/O."""

from __future__ import annotations

import pytest

from whispr.gateway.http import (
    HeadError,
    HttpResponse,
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
