"""The HTTP half of the front door, sans-I/O: request heads in, responses and the 101 out.

One port serves the WebSocket upgrade, a few plain routes (/health, /ready, /metrics) and the
prefix routes of the service API, so the endpoint reads each request head itself (capped, under
the handshake timeout) and parses it here. Every plain response closes the connection
(`Connection: close`): no keep-alive. A request body is read when `Content-Length` announces one
(capped: 413 beyond); chunked transfer coding is not supported (411, see `body_length`).

The upgrade is checked against RFC 6455 §4.2.1 (GET, HTTP/1.1, `Host`, `Upgrade: websocket`,
`Connection: Upgrade`, a 16-byte base64 `Sec-WebSocket-Key`) and answered per §4.2.2; an
unsupported `Sec-WebSocket-Version` gets 426 with `Sec-WebSocket-Version: 13` (§4.4).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import parse_qsl

_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3
_TEXT_PLAIN = (("Content-Type", "text/plain"),)
_TCHAR = rb"-!#$%&'*+.^_`|~0-9A-Za-z"  # RFC 9110 §5.6.2
# request-line CRLF *( field-line CRLF ) CRLF; every repetition starts with a character the next
# element cannot start with, so matching is linear (no backtracking on hostile input).
_HEAD = re.compile(rb"[%s]+ [\x21-\x7e]+ HTTP/1\.[01]\r\n(?:[%s]+:[\t\x20-\x7e\x80-\xff]*\r\n)*\r\n" % (_TCHAR, _TCHAR))
_SPECIAL = frozenset({"host", "content-length", "sec-websocket-protocol", "upgrade", "connection"})


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
    body: bytes = b""
    """The request body (`Content-Length` bytes); empty without one and on WebSocket routes."""


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """A complete plain response; the endpoint adds `Content-Length` and `Connection: close`."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""


HttpHandler = Callable[[HttpRequest], Awaitable[HttpResponse]]
"""A plain route; may await (e.g. `/metrics` rendering in `trio.to_thread`).

An exact route (`http_routes`) gets GET requests only; a prefix route (`http_prefix_routes`) gets
every method and answers 405 itself for those it does not serve. Raising is a bug: logged, 500.
"""

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
"""The interim response to `Expect: 100-continue`, sent before reading the body (RFC 9110 §10.1.1)."""


class HeadError(Exception):
    """The request head cannot be served; answer `status` (400 or 431) and close."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason


def parse_head(head: bytes, peer: tuple[str, int], max_headers: int) -> HttpRequest:
    """Parse one complete request head (up to and including the blank line), strictly.

    The grammar is RFC 9112 §3 and §5 with CRLF line ends only: no obsolete line folding, no
    whitespace before a colon, no control characters but HTAB in a value, HTTP/1.0 or 1.1 only.
    HTTP/1.1 needs exactly one `Host` (§3.2); `Content-Length` must be one field of digits and
    never comes with `Transfer-Encoding` (§6.3: request smuggling). Every head accepted here is
    accepted alike by h11 (tests/gateway/test_http.py checks it with Hypothesis).

    Raises:
        HeadError: malformed (400), or more than `max_headers` header lines (431).
    """
    if head.count(b"\r\n") - 2 > max_headers:
        raise HeadError(431, "too many header fields")
    if _HEAD.fullmatch(head) is None:
        raise HeadError(400, "malformed request head")
    lines = head.decode("latin-1").split("\r\n")
    del lines[-2:]  # the blank line
    method, target, version = lines[0].split(" ")
    headers: dict[str, str] = {}
    subprotocols: list[str] = []
    upgrade: set[str] = set()
    tokens: set[str] = set()
    hosts = 0
    content_length: str | None = None
    for index in range(1, len(lines)):
        name, _, value = lines[index].partition(":")
        name = name.lower()
        value = value.strip(" \t")
        if name in _SPECIAL:
            if name == "host":
                hosts += 1
            elif name == "content-length":
                if content_length is not None or not (value.isascii() and value.isdigit()) or len(value) > 18:
                    raise HeadError(400, "bad or duplicate Content-Length")
                content_length = value
            elif name == "sec-websocket-protocol":
                subprotocols.extend(item.strip() for item in value.split(",") if item.strip())
            elif name == "upgrade":
                upgrade.update(item.strip().lower() for item in value.split(","))
            else:  # connection
                tokens.update(item.strip().lower() for item in value.split(","))
        headers[name] = value
    version = version[5:]
    if hosts > 1 or (hosts == 0 and version == "1.1"):
        raise HeadError(400, "missing or duplicate Host")
    if content_length is not None and "transfer-encoding" in headers:
        raise HeadError(400, "both Content-Length and Transfer-Encoding")
    path, _, query = target.partition("?")
    return HttpRequest(
        method=method,
        path=path,
        query=_parse_query(query) if query else {},
        headers=headers,
        subprotocols=tuple(subprotocols),
        upgrade=frozenset(upgrade),
        connection=frozenset(tokens),
        http_version=version,
        peer=peer,
    )


def _parse_query(query: str) -> dict[str, str]:
    """`dict(parse_qsl(query, keep_blank_values=True))`, without its cost when nothing is escaped."""
    if "%" in query or "+" in query:
        return dict(parse_qsl(query, keep_blank_values=True))
    parsed: dict[str, str] = {}
    for item in query.split("&"):
        if item:
            name, _, value = item.partition("=")
            parsed[name] = value
    return parsed


def body_length(request: HttpRequest, max_body_size: int) -> int | HttpResponse:
    """How many body bytes follow the head, or the refusal to send instead of reading them.

    `Content-Length` was validated by `parse_head` (one field, digits only). Chunked (or any)
    transfer coding → 411, asking for a `Content-Length`; over `max_body_size` → 413.
    """
    headers = request.headers
    if "transfer-encoding" in headers:
        return HttpResponse(411, _TEXT_PLAIN, b"Content-Length required (no chunked request bodies)\n")
    value = headers.get("content-length")
    if value is None:
        return 0
    length = int(value)
    if length > max_body_size:
        return HttpResponse(413, _TEXT_PLAIN, b"Request body too large\n")
    return length


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


def render_response(response: HttpResponse, head_only: bool = False) -> bytes:
    """Serialize `response` with `Content-Length` and `Connection: close`.

    `head_only` (the answer to a HEAD request) keeps the `Content-Length` and omits the body.
    """
    try:
        phrase = HTTPStatus(response.status).phrase
    except ValueError:
        phrase = ""
    lines = [f"HTTP/1.1 {response.status} {phrase}"]
    lines.extend(f"{name}: {value}" for name, value in response.headers)
    lines.append(f"Content-Length: {len(response.body)}")
    lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + response.body
