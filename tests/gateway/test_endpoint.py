"""The front door on a real socket: plain routes, refusals, the upgrade, head limits, timeouts."""

from __future__ import annotations

import contextlib
import gc
import socket
import ssl
import weakref

import pytest
import trio
import trustme
from websockets.sync.client import connect as websockets_connect

from whispr.api.routes import http_routes
from whispr.gateway.endpoint import Endpoint, EndpointConfig
from whispr.gateway.transport import Accept, Refuse, Transport, UpgradeRequest
from whispr.gateway.websocket import WebSocketLimits
from whispr.observability import telemetry

from .helpers import OP_TEXT, Echo, RawClient, accept_echo, http_exchange, running_endpoint, upgrade_request

pytestmark = pytest.mark.integration


async def _not_ready() -> tuple[int, bytes]:
    return 503, b'{"status":"unready"}'


async def _metrics() -> tuple[bytes, str]:
    """Rendered in a worker thread, as a Prometheus registry would be."""
    return await trio.to_thread.run_sync(lambda: b"whispr_up 1\n"), "text/plain; version=0.0.4"


def _get(path: str, method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()


async def test_plain_routes() -> None:
    routes = http_routes(ready=_not_ready, metrics=_metrics)
    async with running_endpoint(http_routes=routes) as (_, port):
        assert await http_exchange(port, _get("/health")) == (
            200,
            {"content-type": "application/json", "content-length": "15", "connection": "close"},
            b'{"status":"ok"}',
        )
        status, headers, body = await http_exchange(port, _get("/ready"))
        assert (status, headers["content-type"], body) == (503, "application/json", b'{"status":"unready"}')
        status, headers, body = await http_exchange(port, _get("/metrics"))
        assert (status, headers["content-type"], body) == (200, "text/plain; version=0.0.4", b"whispr_up 1\n")


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (_get("/socket/longpoll?vsn=2.0.0"), 404),
        (_get("/nowhere"), 404),
        (_get("/health", "POST"), 400),
        (_get("/socket/websocket", "POST"), 400),
        (_get("/socket/websocket?vsn=2.0.0"), 400),  # a GET that is not an upgrade
        (upgrade_request().replace(b"Version: 13", b"Version: 8"), 426),
        (upgrade_request().replace(b"Sec-WebSocket-Key", b"Sec-WebSocket-Nonce"), 400),
        (b"NOT HTTP AT ALL\r\n\r\n", 400),
        (b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(101)) + b"\r\n", 431),
    ],
    ids=[
        "longpoll",
        "unknown",
        "post-health",
        "post-socket",
        "plain-get-socket",
        "version",
        "no-key",
        "garbage",
        "headers",
    ],
)
async def test_refused_before_upgrade(request_bytes: bytes, status: int) -> None:
    async with running_endpoint(http_routes=http_routes()) as (_, port):
        assert (await http_exchange(port, request_bytes))[0] == status


async def test_oversize_head_431() -> None:
    async with running_endpoint() as (_, port):
        big = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 20_000 + b"\r\n\r\n"
        status, _, _ = await http_exchange(port, big)
        assert status == 431


async def test_refuse_gives_its_status_and_headers_and_no_upgrade() -> None:
    events: list[tuple[str, object]] = []
    telemetry.attach("test-refuse", [telemetry.SOCKET_REFUSED], lambda e, m, md: events.append((e, dict(md))))

    async def refuse(request: UpgradeRequest) -> Refuse:
        return Refuse(429, "per_ip_limit", (("Retry-After", "30"),))

    try:
        async with running_endpoint(refuse) as (_, port):
            status, headers, body = await http_exchange(port, upgrade_request())
    finally:
        telemetry.detach("test-refuse")
    assert (status, headers["retry-after"], body) == (429, "30", b"")
    assert "upgrade" not in headers
    assert "sec-websocket-accept" not in headers
    assert events == [(telemetry.SOCKET_REFUSED, {"status": 429, "reason": "per_ip_limit"})]


async def test_accept_echoes_subprotocol_and_reports_peer() -> None:
    seen: list[UpgradeRequest] = []

    async def connect(request: UpgradeRequest) -> Accept:
        seen.append(request)
        return Accept(Echo, subprotocol="phoenix")

    async with running_endpoint(connect) as (_, port):
        client = await RawClient.connect(
            port,
            upgrade_request(
                "/socket/websocket?vsn=2.0.0&token=t1&token=t2",
                "Sec-WebSocket-Protocol: phoenix\r\nSec-WebSocket-Protocol: base64url.bearer.phx.abc, x\r\n",
            ),
        )
        async with client.stream:
            assert client.status == 101
            assert client.headers["sec-websocket-protocol"] == "phoenix"
            assert "sec-websocket-extensions" not in client.headers  # reliability.md A3
            (request,) = seen
            assert request.subprotocols == ("phoenix", "base64url.bearer.phx.abc", "x")
            assert request.query == {"vsn": "2.0.0", "token": "t2"}
            assert request.peer == tuple(client.stream.socket.getsockname()[:2])


async def test_an_open_connection_keeps_its_on_closed_but_not_the_accept_or_its_factory() -> None:
    """Memory per idle socket: what `connect` built for the upgrade goes once the handler exists."""
    factories: list[weakref.ref[object]] = []
    built: list[str] = []
    closed = trio.Event()

    async def connect(request: UpgradeRequest) -> Accept:
        def factory(transport: Transport) -> Echo:  # a closure, like the Phoenix socket's factory
            built.append(request.path)
            return Echo(transport)

        factories.append(weakref.ref(factory))
        return Accept(factory, on_closed=closed.set)

    async with running_endpoint(connect) as (endpoint, port):
        client = await RawClient.connect(port, upgrade_request())
        async with client.stream:
            await client.send(OP_TEXT, b"ping")
            assert await client.receive() == (OP_TEXT, b"ping")  # the handler runs
            gc.collect()
            assert endpoint.statistics().connections == 1
            assert built == ["/socket/websocket"]
            assert factories[0]() is None  # neither the Accept nor its factory is held any more
        with trio.fail_after(10):
            await closed.wait()  # ... while on_closed was kept, and runs


async def test_websockets_client_round_trip() -> None:
    """An independent implementation (websockets 17) talks to the endpoint."""

    def talk(port: int) -> tuple[str | None, object, object]:
        with websockets_connect(f"ws://127.0.0.1:{port}/socket/websocket?vsn=2.0.0", subprotocols=["phoenix"]) as ws:
            ws.send("hello")
            text = ws.recv(timeout=10)
            ws.send(b"\x00\xff")
            return ws.subprotocol, text, ws.recv(timeout=10)

    async with running_endpoint() as (_, port):
        assert await trio.to_thread.run_sync(talk, port) == ("phoenix", "hello", b"\x00\xff")


async def test_slow_handshake_dropped_at_timeout(autojump_clock: trio.testing.MockClock) -> None:
    async with running_endpoint() as (endpoint, port):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"GET /socket/websocket HTTP/1.1\r\nHost: x\r\n")  # never finished
            start = trio.current_time()
            assert await stream.receive_some() == b""  # dropped, no answer
            assert trio.current_time() - start == pytest.approx(10.0, abs=0.01)
            assert endpoint.statistics().handshakes == 0


async def test_connect_bug_is_500_and_listener_survives(caplog: pytest.LogCaptureFixture) -> None:
    async def broken(request: UpgradeRequest) -> Accept:
        raise RuntimeError("bug in connect")

    async with running_endpoint(broken, http_routes=http_routes()) as (_, port):
        assert (await http_exchange(port, upgrade_request()))[0] == 500
        assert (await http_exchange(port, _get("/health")))[0] == 200
    assert any(r.levelname == "ERROR" and r.name == "whispr.gateway" for r in caplog.records)


async def test_pipelined_frame_after_head_is_not_lost() -> None:
    from .helpers import OP_TEXT, client_frame

    async with running_endpoint() as (_, port):
        client = await RawClient.connect(port, upgrade_request() + client_frame(OP_TEXT, b"early"))
        async with client.stream:
            assert await client.receive() == (OP_TEXT, b"early")


async def test_bind_conflict_raises_before_started() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        endpoint = Endpoint(EndpointConfig(host="127.0.0.1", port=holder.getsockname()[1]), accept_echo)
        async with trio.open_nursery() as nursery:
            with pytest.raises(OSError, match="in use"):
                await nursery.start(endpoint.serve)


async def test_wss_round_trip_and_https_health() -> None:
    """TLS (trustme certificates): the same front door and connection over `trio.SSLStream`."""
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)

    def talk(port: int) -> object:
        with websockets_connect(f"wss://127.0.0.1:{port}/socket/websocket", ssl=client_context) as ws:
            ws.send("x" * 100_000)  # beyond one TLS record and the socket buffers
            return ws.recv(timeout=10)

    async with running_endpoint(
        ssl_context=server_context, http_routes=http_routes(), limits=WebSocketLimits(max_message_size=1 << 20)
    ) as (_, port):
        assert await trio.to_thread.run_sync(talk, port) == "x" * 100_000
        stream = trio.SSLStream(
            await trio.open_tcp_stream("127.0.0.1", port), client_context, server_hostname="127.0.0.1"
        )
        async with stream:
            await stream.send_all(_get("/health"))
            data = b""
            with contextlib.suppress(trio.BrokenResourceError):  # the server closes without close_notify
                while chunk := await stream.receive_some():
                    data += chunk
        assert data.startswith(b"HTTP/1.1 200 OK\r\n")
