"""The HTTP half of the front door, sans-I/O: request heads in, responses and the 101 out.

One port serves the WebSocket upgrade and a few plain routes (/health, /ready, /metrics), so the
endpoint reads each request head itself (capped, under the handshake timeout) and parses it here
with h11. Every plain response closes the connection (`Connection: close`): no keep-alive,
no request bodies.

The upgrade is checked against RFC 6455 §4.2.1 (GET, HTTP/1.1, `Host`, `Upgrade: websocket`,
`Connection: Upgrade`, a 16-byte base64 `Sec-WebSocket-Key`) and answered per §4.2.2; an
unsupported `Sec-WebSocket-Version` gets 426 with `Sec-WebSocket-Version: 13` (§4.4).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import parse_qsl

import h11

_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """A parsed request head.

    `path` excludes the query; `query` keeps the last value of each parameter; header names are
    lower-case with the last value kept, except `Sec-WebSocket-Protocol`, whose comma-separated
    entries across all its lines are in `subprotocols`. `upgrade` and `connection` are the
    lower-cased tokens of those headers across all their lines.
    """

    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    subprotocols: tuple[str, ...]
    upgrade: frozenset[str]
    connection: frozenset[str]
    http_version: str
    peer: tuple[str, int]


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """A complete plain response; the endpoint adds `Content-Length` and `Connection: close`."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""


HttpHandler = Callable[[HttpRequest], Awaitable[HttpResponse]]
"""A plain route: GET only, may await (e.g. `/metrics` rendering in `trio.to_thread`)."""


class HeadError(Exception):
    """The request head cannot be served; answer `status` (400 or 431) and close."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason


def parse_head(head: bytes, peer: tuple[str, int], max_headers: int) -> HttpRequest:
    """Parse one complete request head (up to and including the blank line).

    Raises:
        HeadError: malformed (400), or more than `max_headers` header lines (431).
    """
    connection = h11.Connection(h11.SERVER, max_incomplete_event_size=len(head) + 1)
    connection.receive_data(head)
    try:
        event = connection.next_event()
    except h11.RemoteProtocolError as exc:
        raise HeadError(400, str(exc)) from None
    if not isinstance(event, h11.Request):
        raise HeadError(400, "incomplete request head")
    raw_headers = event.headers.raw_items()
    if len(raw_headers) > max_headers:
        raise HeadError(431, "too many header fields")
    headers: dict[str, str] = {}
    subprotocols: list[str] = []
    upgrade: set[str] = set()
    tokens: set[str] = set()
    for raw_name, raw_value in raw_headers:
        name = raw_name.decode("ascii").lower()
        value = raw_value.decode("latin-1")
        headers[name] = value
        if name == "sec-websocket-protocol":
            subprotocols.extend(item.strip() for item in value.split(",") if item.strip())
        elif name == "upgrade":
            upgrade.update(item.strip().lower() for item in value.split(","))
        elif name == "connection":
            tokens.update(item.strip().lower() for item in value.split(","))
    target = event.target.decode("ascii")
    path, _, query = target.partition("?")
    return HttpRequest(
        method=event.method.decode("ascii"),
        path=path,
        query=dict(parse_qsl(query, keep_blank_values=True)),
        headers=headers,
        subprotocols=tuple(subprotocols),
        upgrade=frozenset(upgrade),
        connection=frozenset(tokens),
        http_version=event.http_version.decode("ascii"),
        peer=peer,
    )


def is_upgrade(request: HttpRequest) -> bool:
    """Whether the request asks for a WebSocket (`Upgrade: websocket`, case-insensitive)."""
    return "websocket" in request.upgrade


def check_handshake(request: HttpRequest) -> HttpResponse | str:
    """The `Sec-WebSocket-Accept` value for a valid upgrade (§4.2.1), or the refusal to send."""
    if request.http_version != "1.1" or "upgrade" not in request.connection or "host" not in request.headers:
        return HttpResponse(400, body=b"Bad WebSocket handshake\n")
    if request.headers.get("sec-websocket-version") != "13":
        return HttpResponse(426, (("Sec-WebSocket-Version", "13"),), b"Unsupported WebSocket version\n")
    key = request.headers.get("sec-websocket-key", "")
    try:
        valid = len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        valid = False
    if not valid:
        return HttpResponse(400, body=b"Bad Sec-WebSocket-Key\n")
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + _WS_GUID).digest()).decode("ascii")


def render_switching_protocols(accept: str, subprotocol: str | None) -> bytes:
    """The 101 response completing the opening handshake (§4.2.2); never `Sec-WebSocket-Extensions`."""
    lines = [
        "HTTP/1.1 101 Switching Protocols",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Accept: {accept}",
    ]
    if subprotocol is not None:
        lines.append(f"Sec-WebSocket-Protocol: {subprotocol}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def render_response(response: HttpResponse) -> bytes:
    """Serialize `response` with `Content-Length` and `Connection: close`."""
    try:
        phrase = HTTPStatus(response.status).phrase
    except ValueError:
        phrase = ""
    lines = [f"HTTP/1.1 {response.status} {phrase}"]
    lines.extend(f"{name}: {value}" for name, value in response.headers)
    lines.append(f"Content-Length: {len(response.body)}")
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + response.body
