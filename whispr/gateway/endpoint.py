"""The listener: one port for the WebSocket upgrade and the plain HTTP routes.

Start it under a supervisor (or any nursery) with `port = await nursery.start(endpoint.serve)`.

Theory of operation:
- One accept loop on a non-blocking listening socket (`trio.lowlevel.wait_readable`), one task
  per accepted connection. No `trio.SocketStream` on the plain path: the connection writes with
  the socket's own non-blocking `send` (see `whispr.gateway.websocket`). On Linux the listener
  sets TCP_NODELAY (inherited by accepted sockets) and TCP_DEFER_ACCEPT (a connection is accepted
  once its first bytes arrived, so a connect usually costs one wake-up, not two).
- The front door reads the request head itself: at most `max_head_size` bytes (431 beyond),
  at most `max_headers` header lines (431), parsed strictly (`whispr.gateway.http.parse_head`).
  A plain request's body is read when `Content-Length` announces one (at most `max_body_size`
  bytes, else 413; chunked → 411; `Expect: 100-continue` is answered). Everything up to the 101
  or the answer, `connect` and the body included, must finish within `handshake_timeout`, or the
  connection is dropped without an answer (contract.md §5).
- Routing (protocol.md §1.2): a WebSocket route (`socket_path`, plus any extra route such as the
  test-only Autobahn echo) takes only a GET upgrade (other methods and a plain GET → 400, a bad
  handshake → 400/426); then `connect(UpgradeRequest)` decides: `Refuse` → that status with its
  headers and an empty body, no upgrade; `Accept` → 101 and the connection runs. A plain route
  (/health, /ready, /metrics: handlers given by `whispr.api`) takes only GET (else 400).
  `longpoll_path` → 404. Then the prefix routes (`http_prefix_routes`, e.g. "/api/v1/"), longest
  prefix first, take every method (a HEAD answer goes out without its body); every other
  path → 404.

Error handling: every connection is its own exception boundary. A bug in a handler or in
`connect` is logged on `whispr.gateway` and answered (500 before the upgrade, close 1011 after);
nothing a client sends can stop the listener or another connection.
"""

from __future__ import annotations

import errno
import logging
import math
import socket
import ssl
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import trio

from whispr.gateway.deadlines import Deadlines
from whispr.gateway.http import (
    CONTINUE,
    HeadError,
    HttpHandler,
    HttpRequest,
    HttpResponse,
    body_length,
    check_handshake,
    is_upgrade,
    parse_head,
    render_response,
    render_switching_protocols,
)
from whispr.gateway.transport import Accept, Connect, Refuse, UpgradeRequest
from whispr.gateway.websocket import WebSocketConnection, WebSocketLimits, tls_stream
from whispr.observability import telemetry

_log = logging.getLogger("whispr.gateway")

_ACCEPT_BURST = 100  # connections accepted per wake-up before yielding to other tasks
_LINGER = 1.0  # seconds to drain a client's leftover bytes after a plain response (avoids an RST)
_LINUX = sys.platform == "linux"  # TCP_NODELAY inherited from the listener; TCP_DEFER_ACCEPT
_RESOURCE_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
_Stream = trio.SSLStream[trio.SocketStream]
_TEXT = (("Content-Type", "text/plain"),)


@dataclass(frozen=True, slots=True)
class WebSocketRoute:
    """A path served by WebSocket: who decides on upgrades there, and the limits of its connections."""

    connect: Connect
    limits: WebSocketLimits = field(default_factory=WebSocketLimits)


@dataclass(frozen=True, slots=True)
class EndpointConfig:
    """Listener settings (defaults from contract.md §1, §5, §7).

    Attributes:
        host: address to bind; "0.0.0.0" for all IPv4 interfaces.
        port: TCP port; 0 picks a free one (`serve` reports it).
        backlog: listen(2) backlog.
        reuse_port: set SO_REUSEPORT, for several node processes sharing the port.
        ssl_context: serve wss/https with this server context; None for plain ws/http.
        handshake_timeout: seconds from accept to the 101 (or the HTTP answer); then dropped.
        max_head_size: bytes of one request head (over it: 431).
        max_headers: header lines of one request head (over it: 431).
        max_body_size: bytes of one plain request's body (over it: 413).
        socket_path: the Phoenix WebSocket path.
        longpoll_path: the Phoenix long-poll path, answered 404 (long-poll is not served).
        limits: the limits of connections on `socket_path`.
    """

    host: str = "0.0.0.0"
    port: int = 4000
    backlog: int = 1024
    reuse_port: bool = False
    ssl_context: ssl.SSLContext | None = None
    handshake_timeout: float = 10.0
    max_head_size: int = 16 * 1024
    max_headers: int = 100
    max_body_size: int = 1024 * 1024
    socket_path: str = "/socket/websocket"
    longpoll_path: str = "/socket/longpoll"
    limits: WebSocketLimits = field(default_factory=WebSocketLimits)

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"EndpointConfig.port must be in 0..65535, got {self.port!r}")
        if not self.handshake_timeout > 0:
            raise ValueError(f"EndpointConfig.handshake_timeout must be positive, got {self.handshake_timeout!r}")
        if self.max_head_size < 1024 or self.max_headers < 1:
            raise ValueError("EndpointConfig.max_head_size must be at least 1024 and max_headers at least 1")
        if self.max_body_size < 0:
            raise ValueError(f"EndpointConfig.max_body_size must not be negative, got {self.max_body_size!r}")


@dataclass(frozen=True, slots=True)
class EndpointStatistics:
    """`connections`: upgraded connections open; `handshakes`: accepted sockets before their 101/answer."""

    connections: int
    handshakes: int


class Endpoint:
    """The listener and front door of one node."""

    def __init__(
        self,
        config: EndpointConfig,
        connect: Connect,
        *,
        http_routes: Mapping[str, HttpHandler] | None = None,
        extra_websocket_routes: Mapping[str, WebSocketRoute] | None = None,
        http_prefix_routes: Mapping[str, HttpHandler] | None = None,
    ) -> None:
        """Serve `connect` on `config.socket_path`, `http_routes` (path → GET handler), any
        extra WebSocket routes (e.g. the Autobahn echo, in tests only) and `http_prefix_routes`
        (path prefix → handler of every method on the paths starting with it, e.g. "/api/v1/").

        Exact routes (WebSocket, plain, long-poll) win over prefixes; among prefixes the longest wins.

        Raises:
            ValueError: two routes share a path, or a prefix does not start with "/".
        """
        self._config = config
        self._websocket_routes = {config.socket_path: WebSocketRoute(connect, config.limits)}
        self._http_routes = dict(http_routes or {})
        for path, route in (extra_websocket_routes or {}).items():
            if path in self._websocket_routes:
                raise ValueError(f"WebSocket route {path!r} is defined twice")
            self._websocket_routes[path] = route
        clash = set(self._websocket_routes) & (set(self._http_routes) | {config.longpoll_path})
        if clash:
            raise ValueError(f"paths served twice: {sorted(clash)}")
        prefixes = dict(http_prefix_routes or {})
        bad = [prefix for prefix in prefixes if not prefix.startswith("/")]
        if bad:
            raise ValueError(f"HTTP prefix routes must start with '/': {sorted(bad)}")
        self._prefix_routes = sorted(prefixes.items(), key=lambda item: len(item[0]), reverse=True)
        self._connections = 0
        self._handshakes = 0
        self._deadlines = Deadlines()  # the idle and close timeouts of every upgraded connection

    def statistics(self) -> EndpointStatistics:
        """Current counts of open connections and of handshakes in progress."""
        return EndpointStatistics(self._connections, self._handshakes)

    async def serve(self, *, task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind, report `(host, port)` through `task_status.started`, and serve until cancelled.

        Blocks forever. Cancelling it closes the listener and every connection (their
        `on_close` still runs).

        Resource handling: the listening socket and every accepted socket are closed on exit.
        Error handling: binding errors (`OSError`) propagate before `started`; afterwards only
        an unexpected accept(2) error does; no connection's error ever reaches it.
        """
        listener = self._bind()
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self._deadlines.run)
                host, port = listener.getsockname()[:2]
                _log.info("endpoint listening on %s:%d (%s)", host, port, "wss" if self._config.ssl_context else "ws")
                task_status.started((host, port))
                await self._accept_loop(listener, nursery)
        finally:
            trio.lowlevel.notify_closing(listener)
            listener.close()

    def _bind(self) -> socket.socket:
        config = self._config
        family, kind, proto, _, address = socket.getaddrinfo(
            config.host, config.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        listener = socket.socket(family, kind, proto)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if _LINUX:
                # Accepted sockets inherit TCP_NODELAY (one setsockopt fewer per connection), and
                # TCP_DEFER_ACCEPT holds a connection in the kernel until its first bytes arrive,
                # so the head is there at accept: no EAGAIN, no epoll round trip, and a client
                # that connects but stays silent costs no descriptor and no task.
                listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, math.ceil(config.handshake_timeout))
            if config.reuse_port:
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            listener.bind(address)
            listener.listen(config.backlog)
            listener.setblocking(False)
        except BaseException:
            listener.close()
            raise
        return listener

    async def _accept_loop(self, listener: socket.socket, nursery: trio.Nursery) -> None:
        while True:
            await trio.lowlevel.wait_readable(listener)
            for _ in range(_ACCEPT_BURST):
                try:
                    sock, address = listener.accept()
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno in _RESOURCE_ERRORS:
                        # Like trio.serve_listeners: back off instead of spinning on a full table.
                        _log.error("accept failed (%s); pausing 100 ms", errno.errorcode.get(exc.errno or 0, exc))
                        await trio.sleep(0.1)
                        break
                    if exc.errno == errno.ECONNABORTED:
                        continue
                    raise
                sock.setblocking(False)
                if not _LINUX:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                nursery.start_soon(self._serve_connection, sock, (address[0], address[1]), nursery)

    async def _serve_connection(self, sock: socket.socket, peer: tuple[str, int], nursery: trio.Nursery) -> None:
        """The exception boundary of one accepted socket."""
        try:
            self._handshakes += 1
            try:
                upgraded = await self._front_door(sock, peer, nursery)
            finally:
                self._handshakes -= 1
            if upgraded is not None:
                # No local keeps the Accept: once `run` has built the handler, its factory and
                # everything that closes over go, instead of living as long as the connection.
                running = upgraded[0].run(upgraded[1], upgraded[2])
                del upgraded
                self._connections += 1
                try:
                    await running
                finally:
                    self._connections -= 1
        except Exception:
            _log.exception("connection from %s failed", peer)
        finally:
            sock.close()

    async def _front_door(
        self, sock: socket.socket, peer: tuple[str, int], nursery: trio.Nursery
    ) -> tuple[WebSocketConnection, Accept, bytes] | None:
        """Answer one request; the upgraded connection (not yet run) or None when answered."""
        config = self._config
        stream = tls_stream(sock, config.ssl_context) if config.ssl_context is not None else None
        response: HttpResponse | None = None
        head_only = False
        with trio.move_on_after(config.handshake_timeout):
            try:
                read = await _read_head(sock, stream, config.max_head_size)
                if read is None:
                    return None
                head, received = read
                request = parse_head(head, peer, config.max_headers)
                route = self._websocket_routes.get(request.path)
                if route is None:
                    handler, response = self._http_route(request)
                    if handler is not None:
                        length = body_length(request, config.max_body_size)
                        if isinstance(length, HttpResponse):
                            response = length
                        else:
                            if length:
                                body = await _read_body(sock, stream, received, length, request)
                                if body is None:
                                    return None
                                request = replace(request, body=body)
                            response = await self._call(handler, request)
                            head_only = request.method == "HEAD"
                else:
                    outcome = await self._upgrade(request, route)
                    if isinstance(outcome, HttpResponse):
                        response = outcome
                    else:
                        accept, subprotocol_line = outcome
                        connection = WebSocketConnection(sock, peer, route.limits, nursery, self._deadlines, stream)
                        connection.send(subprotocol_line)
                        telemetry.emit(
                            telemetry.SOCKET_CONNECTED,
                            metadata={"transport": "websocket", "vsn": request.query.get("vsn", "1.0.0")},
                        )
                        _log.info("socket connected %s %s", peer, request.path)
                        return connection, accept, received
            except HeadError as exc:
                response = HttpResponse(exc.status, body=f"{exc.reason}\n".encode())
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return None  # peer gone, or a failed TLS handshake
            assert response is not None  # every branch above answers or returns
            try:
                await _send_all(sock, stream, render_response(response, head_only))
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return None
        if response is not None and stream is None:
            await _linger(sock)
        return None

    async def _upgrade(self, request: HttpRequest, route: WebSocketRoute) -> HttpResponse | tuple[Accept, bytes]:
        """Check the handshake and ask `connect`; the refusal to send, or the Accept and its 101."""
        if request.method != "GET" or not is_upgrade(request):
            return self._refused(HttpResponse(400, body=b"WebSocket upgrade expected\n"), "bad_request")
        headers = request.headers
        if "transfer-encoding" in headers or int(headers.get("content-length", "0")):
            # The bytes after the head are WebSocket frames; a body would be read as frames.
            return self._refused(HttpResponse(400, body=b"WebSocket upgrade with a body\n"), "bad_request")
        accept_key = check_handshake(request)
        if isinstance(accept_key, HttpResponse):
            return self._refused(accept_key, "bad_handshake")
        upgrade = UpgradeRequest(request.path, request.query, request.headers, request.subprotocols, request.peer)
        try:
            decision = await route.connect(upgrade)
        except Exception:
            _log.exception("connect failed for %s", request.peer)
            return self._refused(HttpResponse(500), "internal_error")
        if isinstance(decision, Refuse):
            return self._refused(HttpResponse(decision.status, decision.headers), decision.reason)
        if decision.subprotocol is not None and decision.subprotocol not in request.subprotocols:
            _log.error("connect selected subprotocol %r, not offered by %s", decision.subprotocol, request.peer)
            return self._refused(HttpResponse(500), "internal_error")
        return decision, render_switching_protocols(accept_key, decision.subprotocol)

    @staticmethod
    def _refused(response: HttpResponse, reason: str) -> HttpResponse:
        telemetry.emit(telemetry.SOCKET_REFUSED, metadata={"status": response.status, "reason": reason})
        return response

    def _http_route(self, request: HttpRequest) -> tuple[HttpHandler, None] | tuple[None, HttpResponse]:
        """The handler for a plain request, or the answer when there is none (404, or 400 for a
        non-GET on an exact route)."""
        path = request.path
        handler = self._http_routes.get(path)
        if handler is not None:
            if request.method != "GET":
                return None, HttpResponse(400, _TEXT, b"GET only\n")
            return handler, None
        if path != self._config.longpoll_path:
            for prefix, prefix_handler in self._prefix_routes:
                if path.startswith(prefix):
                    return prefix_handler, None
        return None, HttpResponse(404, _TEXT, b"Not Found\n")

    @staticmethod
    async def _call(handler: HttpHandler, request: HttpRequest) -> HttpResponse:
        try:
            return await handler(request)
        except Exception:
            _log.exception("HTTP route %s %s failed", request.method, request.path)
            return HttpResponse(500, _TEXT, b"Internal Server Error\n")


async def _receive_some(sock: socket.socket, stream: _Stream | None, size: int) -> bytes | bytearray:
    """Read the request head; tries the socket before waiting, since the head usually arrived
    with (or right after) the connection and a wait would cost a scheduler round trip."""
    if stream is not None:
        return await stream.receive_some(size)
    while True:
        try:
            data = sock.recv(size)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(sock)
            continue
        await trio.lowlevel.checkpoint_if_cancelled()  # the handshake deadline still applies
        return data


async def _read_head(sock: socket.socket, stream: _Stream | None, limit: int) -> tuple[bytes, bytes] | None:
    """The request head (through its blank line) and the bytes read after it; None at EOF.

    Raises:
        HeadError: 431 when no blank line ends the head within `limit` bytes.
    """
    buffer = bytearray()
    while True:
        data = await _receive_some(sock, stream, limit)
        if not data:
            return None
        scan_from = max(0, len(buffer) - 3)
        buffer += data
        end = buffer.find(b"\r\n\r\n", scan_from)
        if end >= 0 and end + 4 <= limit:
            return bytes(buffer[: end + 4]), bytes(buffer[end + 4 :])
        if len(buffer) >= limit:
            raise HeadError(431, "request head too large")


async def _read_body(
    sock: socket.socket, stream: _Stream | None, received: bytes, length: int, request: HttpRequest
) -> bytes | None:
    """The `length` body bytes, starting with those `received` after the head; None at EOF.

    Answers `Expect: 100-continue` first when the body has not started arriving.
    """
    if len(received) >= length:
        return received[:length]
    if not received and request.headers.get("expect", "").lower() == "100-continue":
        await _send_all(sock, stream, CONTINUE)
    buffer = bytearray(received)
    while len(buffer) < length:
        data = await _receive_some(sock, stream, length - len(buffer))
        if not data:
            return None
        buffer += data
    return bytes(buffer)


async def _send_all(sock: socket.socket, stream: _Stream | None, data: bytes) -> None:
    if stream is not None:
        await stream.send_all(data)
        return
    view = memoryview(data)
    while view:
        await trio.lowlevel.wait_writable(sock)
        try:
            view = view[sock.send(view) :]
        except BlockingIOError:
            continue


async def _linger(sock: socket.socket) -> None:
    """Half-close after a response and discard what the client still sends, until EOF or `_LINGER`.

    Closing with unread bytes makes the kernel send an RST, which can destroy the response
    before the client reads it (e.g. a 431 sent while the oversized head is still arriving).
    """
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        return
    with trio.move_on_after(_LINGER):
        for _ in range(64):
            await trio.lowlevel.wait_readable(sock)
            try:
                if not sock.recv(64 * 1024):
                    return
            except BlockingIOError:
                continue
            except OSError:
                return
