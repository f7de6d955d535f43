"""The front door's service-API half on a real socket: request bodies and prefix routes."""

from __future__ import annotations

import contextlib
import json
import ssl

import pytest
import trio
import trustme

from whispr.api.routes import http_routes
from whispr.gateway.endpoint import Endpoint, EndpointConfig
from whispr.gateway.http import HttpRequest, HttpResponse

from .helpers import RawClient, accept_echo, http_exchange, parse_response, running_endpoint, upgrade_request

pytestmark = pytest.mark.integration


async def _describe(request: HttpRequest) -> HttpResponse:
    """Answers with what it was given, as JSON."""
    seen = {
        "route": "v1",
        "method": request.method,
        "path": request.path,
        "query": dict(request.query),
        "type": request.headers.get("content-type"),
        "body": request.body.decode(),
    }
    return HttpResponse(200, (("Content-Type", "application/json"),), json.dumps(seen).encode())


async def _admin(request: HttpRequest) -> HttpResponse:
    return HttpResponse(201, body=b"admin " + request.method.encode())


async def _broken(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("bug in an API handler")


PREFIXES = {"/api/v1/": _describe, "/api/v1/admin/": _admin, "/api/broken/": _broken, "/socket/": _admin}


def _request(method: str, target: str, body: bytes | None = None, extra: str = "") -> bytes:
    length = f"Content-Length: {len(body)}\r\n" if body is not None else ""
    return f"{method} {target} HTTP/1.1\r\nHost: x\r\n{length}{extra}\r\n".encode() + (body or b"")


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "PATCH"])
async def test_prefix_route_gets_every_method_with_its_body(method: str) -> None:
    body = json.dumps({"text": "hé", "n": 1}).encode()
    async with running_endpoint(http_prefix_routes=PREFIXES) as (_, port):
        status, headers, answer = await http_exchange(
            port, _request(method, "/api/v1/messages/7?limit=5&cursor=", body, "Content-Type: application/json\r\n")
        )
    assert (status, headers["content-type"], headers["connection"]) == (200, "application/json", "close")
    assert json.loads(answer) == {
        "route": "v1",
        "method": method,
        "path": "/api/v1/messages/7",
        "query": {"limit": "5", "cursor": ""},
        "type": "application/json",
        "body": body.decode(),
    }


async def test_body_arriving_in_pieces_is_read_whole() -> None:
    body = b"x" * 200_000  # several reads, beyond the head buffer and the socket buffers
    async with running_endpoint(http_prefix_routes=PREFIXES) as (_, port):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(_request("POST", "/api/v1/blob", None, f"Content-Length: {len(body)}\r\n"))
            for offset in range(0, len(body), 50_000):
                await stream.send_all(body[offset : offset + 50_000])
            data = b""
            while chunk := await stream.receive_some():
                data += chunk
    status, _, answer = parse_response(data)
    assert (status, json.loads(answer)["body"]) == (200, body.decode())


async def test_no_content_length_means_empty_body() -> None:
    async with running_endpoint(http_prefix_routes=PREFIXES) as (_, port):
        status, _, answer = await http_exchange(port, _request("DELETE", "/api/v1/messages/7"))
    assert (status, json.loads(answer)["body"]) == (200, "")


async def test_longest_prefix_wins_and_exact_routes_keep_working() -> None:
    async with running_endpoint(http_routes=http_routes(), http_prefix_routes=PREFIXES) as (_, port):
        assert await http_exchange(port, _request("PUT", "/api/v1/admin/users/3", b"{}")) == (
            201,
            {"content-length": "9", "connection": "close"},
            b"admin PUT",
        )
        assert (await http_exchange(port, _request("GET", "/api/v1/x")))[0] == 200
        assert (await http_exchange(port, _request("GET", "/health")))[:3:2] == (200, b'{"status":"ok"}')
        assert (await http_exchange(port, _request("POST", "/health", b"")))[0] == 400  # exact routes: GET only
        assert (await http_exchange(port, _request("GET", "/api/v1")))[0] == 404  # the prefix includes the "/"
        assert (await http_exchange(port, _request("GET", "/api/v2/x")))[0] == 404
        # Exact paths win over a prefix covering them: long-poll stays 404, the socket stays WebSocket.
        assert (await http_exchange(port, _request("GET", "/socket/longpoll")))[0] == 404
        assert (await http_exchange(port, _request("POST", "/socket/websocket", b"")))[0] == 400
        client = await RawClient.connect(port, upgrade_request())
        async with client.stream:
            assert client.status == 101


async def test_head_answer_has_no_body() -> None:
    async with running_endpoint(http_prefix_routes=PREFIXES) as (_, port):
        assert await http_exchange(port, _request("HEAD", "/api/v1/admin/x")) == (
            201,
            {"content-length": "10", "connection": "close"},
            b"",
        )


async def test_handler_bug_is_500(caplog: pytest.LogCaptureFixture) -> None:
    async with running_endpoint(http_prefix_routes=PREFIXES) as (_, port):
        assert (await http_exchange(port, _request("POST", "/api/broken/x", b"{}")))[0] == 500
        assert (await http_exchange(port, _request("GET", "/api/v1/x")))[0] == 200
    assert any(r.levelname == "ERROR" and "POST /api/broken/x" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (_request("POST", "/api/v1/x", b"y" * 1025), 413),
        (_request("POST", "/api/v1/x", None, "Content-Length: 999999999999\r\n"), 413),  # announced, never sent
        (_request("POST", "/api/v1/x", None, "Transfer-Encoding: chunked\r\n") + b"2\r\nhi\r\n0\r\n\r\n", 411),
        (_request("POST", "/api/v1/x", b"hi", "Transfer-Encoding: chunked\r\n"), 400),  # smuggling shape
        (_request("POST", "/api/v1/x", b"hi", "Content-Length: 2\r\n"), 400),  # duplicate
        (_request("POST", "/api/v1/x", None, "Content-Length: 2, 2\r\n") + b"hi", 400),
        (_request("POST", "/api/v1/x", None, "Content-Length: -1\r\n"), 400),
        (upgrade_request(extra="Content-Length: 2\r\n") + b"hi", 400),
        (upgrade_request(extra="Transfer-Encoding: chunked\r\n") + b"0\r\n\r\n", 400),
    ],
    ids=[
        "over-cap",
        "announced-over-cap",
        "chunked",
        "te-and-cl",
        "dup-cl",
        "cl-list",
        "cl-negative",
        "upgrade-body",
        "upgrade-chunked",
    ],
)
async def test_refused_bodies(request_bytes: bytes, status: int) -> None:
    async with running_endpoint(http_prefix_routes=PREFIXES, max_body_size=1024) as (_, port):
        assert (await http_exchange(port, request_bytes))[0] == status


async def test_upgrade_with_empty_body_is_fine() -> None:
    async with running_endpoint(http_prefix_routes=PREFIXES) as (_, port):
        client = await RawClient.connect(port, upgrade_request(extra="Content-Length: 0\r\n"))
        async with client.stream:
            assert client.status == 101


async def test_expect_100_continue() -> None:
    async with running_endpoint(http_prefix_routes=PREFIXES) as (_, port):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(_request("POST", "/api/v1/x", None, "Content-Length: 4\r\nExpect: 100-continue\r\n"))
            interim = b""
            while not interim.endswith(b"\r\n\r\n"):
                interim += await stream.receive_some(1)
            assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
            await stream.send_all(b"ping")
            data = b""
            while chunk := await stream.receive_some():
                data += chunk
    status, _, answer = parse_response(data)
    assert (status, json.loads(answer)["body"]) == (200, "ping")


async def test_body_not_arriving_is_dropped_at_handshake_timeout(autojump_clock: trio.testing.MockClock) -> None:
    async with running_endpoint(http_prefix_routes=PREFIXES) as (endpoint, port):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(_request("POST", "/api/v1/x", None, "Content-Length: 10\r\n") + b"abc")
            start = trio.current_time()
            assert await stream.receive_some() == b""  # dropped, no answer
            assert trio.current_time() - start == pytest.approx(10.0, abs=0.01)
            assert endpoint.statistics().handshakes == 0


async def test_eof_inside_body_is_dropped() -> None:
    async with running_endpoint(http_prefix_routes=PREFIXES) as (_, port):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(_request("POST", "/api/v1/x", None, "Content-Length: 10\r\n") + b"abc")
            await stream.send_eof()
            assert await stream.receive_some() == b""


def test_prefix_must_start_with_slash() -> None:
    with pytest.raises(ValueError, match="start with '/'"):
        Endpoint(EndpointConfig(), accept_echo, http_prefix_routes={"api/": _describe})
    with pytest.raises(ValueError, match="max_body_size"):
        EndpointConfig(max_body_size=-1)


async def test_https_body() -> None:
    """The body is read through the TLS stream too (`trio.SSLStream`)."""
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    body = b"z" * 100_000  # several TLS records
    async with running_endpoint(ssl_context=server_context, http_prefix_routes=PREFIXES) as (_, port):
        stream = trio.SSLStream(
            await trio.open_tcp_stream("127.0.0.1", port), client_context, server_hostname="127.0.0.1"
        )
        async with stream:
            await stream.send_all(_request("POST", "/api/v1/tls", body))
            data = b""
            with contextlib.suppress(trio.BrokenResourceError):  # the server closes without close_notify
                while chunk := await stream.receive_some():
                    data += chunk
    status, _, answer = parse_response(data)
    assert (status, json.loads(answer)["body"]) == (200, body.decode())
