"""`make_connect`: path, vsn, subprotocols and token carriers (protocol.md §1, contract.md §1)."""

from __future__ import annotations

import base64
from typing import Any

import pytest
import trio

from tests.channels.fakes import FakeTransport, router
from whispr.gateway.socket import PhoenixSocket
from whispr.gateway.socket_connect import Admitted, make_connect
from whispr.gateway.transport import Accept, Refuse, UpgradeRequest
from whispr.observability.logs import LogContext, current_context
from whispr.protocol import V1, V2, Identity
from whispr.pubsub import PubSub

IDENTITY = Identity("42", "dev1", "ios")


class Recorder:
    """An authenticate hook that accepts the token "good" and records what it was given."""

    def __init__(self) -> None:
        self.tokens: list[str | None] = []

    async def __call__(self, token: str | None, request: UpgradeRequest) -> Admitted | Refuse:
        self.tokens.append(token)
        return Admitted(IDENTITY) if token == "good" else Refuse(403, "invalid token")


def request(
    query: dict[str, str] | None = None,
    subprotocols: tuple[str, ...] = (),
    headers: dict[str, str] | None = None,
    path: str = "/socket/websocket",
) -> UpgradeRequest:
    return UpgradeRequest(
        path=path,
        query={"vsn": "2.0.0", "token": "good"} if query is None else query,
        headers=headers or {},
        subprotocols=subprotocols,
        peer=("127.0.0.1", 5555),
    )


def auth_token_subprotocol(token: str) -> str:
    # phoenix.js: "base64url.bearer.phx." + btoa(token) with every "=" removed.
    return "base64url.bearer.phx." + base64.b64encode(token.encode()).decode().rstrip("=")


async def connect(req: UpgradeRequest, auth: Any = None) -> Accept | Refuse:
    return await make_connect(router(), PubSub(), auth or Recorder())(req)


def socket_of(accept: Accept | Refuse) -> PhoenixSocket:
    assert isinstance(accept, Accept)
    socket = accept.handler(FakeTransport())
    assert isinstance(socket, PhoenixSocket)
    return socket


async def test_valid_upgrade_is_accepted_with_v2_and_the_identity() -> None:
    accepted = await connect(request({"token": "good", "vsn": "2.0.0"}))
    assert isinstance(accepted, Accept)
    assert accepted.subprotocol is None
    socket = socket_of(accepted)
    assert socket.serializer is V2
    assert socket.identity == IDENTITY


async def test_missing_vsn_is_served_as_v1() -> None:
    assert socket_of(await connect(request({"token": "good"}))).serializer is V1


@pytest.mark.parametrize("vsn", ["9.9.9", "2.1.0", "abc", ""])
async def test_unknown_vsn_is_refused_with_403(vsn: str) -> None:
    refused = await connect(request({"token": "good", "vsn": vsn}))
    assert isinstance(refused, Refuse)
    assert refused.status == 403


@pytest.mark.parametrize("path", ["/socket/longpoll", "/", "/socket/websocket/"])
async def test_other_paths_are_404(path: str) -> None:
    refused = await connect(request(path=path))
    assert isinstance(refused, Refuse)
    assert refused.status == 404


async def test_refusal_from_authenticate_is_returned_as_is() -> None:
    refused = await connect(request({"token": "bad", "vsn": "2.0.0"}))
    assert refused == Refuse(403, "invalid token")


async def test_missing_token_reaches_authenticate_as_none() -> None:
    auth = Recorder()
    refused = await connect(request({"vsn": "2.0.0"}), auth)
    assert isinstance(refused, Refuse)
    assert auth.tokens == [None]


# A token whose standard base64 has "+" and "/" and needs padding: btoa-style, not base64url.
TRICKY = "~~~???a"  # base64 "fn5+Pz8/YQ==": "+", "/" and padding to strip


def test_tricky_token_exercises_the_standard_alphabet() -> None:
    encoded = auth_token_subprotocol(TRICKY).removeprefix("base64url.bearer.phx.")
    assert "+" in encoded
    assert "/" in encoded
    assert len(encoded) % 4 != 0


@pytest.mark.parametrize("token", ["good", TRICKY, "eyJhbGciOiJIUzI1NiJ9.e30.sig", "a", "ab"])
async def test_auth_token_subprotocol_is_decoded_and_phoenix_selected(token: str) -> None:
    auth = Recorder()
    result = await connect(request({"vsn": "2.0.0"}, subprotocols=("phoenix", auth_token_subprotocol(token))), auth)
    assert auth.tokens == [token]
    if token == "good":
        assert isinstance(result, Accept)
        assert result.subprotocol == "phoenix"


async def test_phoenix_is_selected_whenever_offered() -> None:
    result = await connect(request(subprotocols=("other", "phoenix")))
    assert isinstance(result, Accept)
    assert result.subprotocol == "phoenix"


@pytest.mark.parametrize("subprotocols", [("chat",), ("chat", auth_token_subprotocol("good"))])
async def test_offering_subprotocols_without_phoenix_is_refused(subprotocols: tuple[str, ...]) -> None:
    refused = await connect(request(subprotocols=subprotocols))
    assert isinstance(refused, Refuse)
    assert refused.status == 403


@pytest.mark.parametrize("entry", ["base64url.bearer.phx.***", "base64url.bearer.phx.a", "base64url.bearer.phx./w"])
async def test_undecodable_auth_token_is_refused(entry: str) -> None:
    auth = Recorder()
    refused = await connect(request({"vsn": "2.0.0"}, subprotocols=("phoenix", entry)), auth)
    assert isinstance(refused, Refuse)
    assert refused.status == 403
    assert auth.tokens == []


async def test_only_the_token_entry_offered_selects_nothing() -> None:
    result = await connect(request({"vsn": "2.0.0"}, subprotocols=(auth_token_subprotocol("good"),)))
    assert isinstance(result, Accept)
    assert result.subprotocol is None


@pytest.mark.parametrize("header", ["Bearer good", "bearer  good ", "BEARER good"])
async def test_bearer_header_carries_the_token(header: str) -> None:
    auth = Recorder()
    result = await connect(request({"vsn": "2.0.0"}, headers={"authorization": header}), auth)
    assert isinstance(result, Accept)
    assert auth.tokens == ["good"]


@pytest.mark.parametrize("header", ["Basic Z29vZA==", "Bearer", "Bearer "])
async def test_other_authorization_schemes_carry_no_token(header: str) -> None:
    auth = Recorder()
    await connect(request({"vsn": "2.0.0"}, headers={"authorization": header}), auth)
    assert auth.tokens == [None]


async def test_query_token_comes_first_then_subprotocol_then_header() -> None:
    auth = Recorder()
    both = request(
        {"vsn": "2.0.0", "token": "good"},
        subprotocols=("phoenix", auth_token_subprotocol("sub")),
        headers={"authorization": "Bearer head"},
    )
    await connect(both, auth)
    no_query = request({"vsn": "2.0.0"}, subprotocols=both.subprotocols, headers=dict(both.headers))
    await connect(no_query, auth)
    await connect(request({"vsn": "2.0.0"}, headers={"authorization": "Bearer head"}), auth)
    assert auth.tokens == ["good", "sub", "head"]


async def test_accepted_socket_honours_max_channels() -> None:
    accepted = await make_connect(router(), PubSub(), Recorder(), max_channels=1)(request())
    transport = FakeTransport()
    assert isinstance(accepted, Accept)
    socket = accepted.handler(transport)
    await socket.on_text('["1","1","room:a","phx_join",{}]')
    await socket.on_text('["2","2","room:b","phx_join",{}]')
    assert b"too many channels joined" in transport.frames[-1]


async def test_admitted_hooks_run_when_the_socket_opens_and_when_it_is_gone() -> None:
    events: list[object] = []

    async def admit(token: str | None, request: UpgradeRequest) -> Admitted:
        return Admitted(IDENTITY, opened=events.append, closed=lambda: events.append("closed"))

    accepted = await make_connect(router(), PubSub(), admit)(request())
    assert events == []
    socket = socket_of(accepted)
    assert events == [socket]
    assert isinstance(accepted, Accept)
    assert accepted.on_closed is not None
    accepted.on_closed()
    assert events == [socket, "closed"]


async def test_the_connection_task_logs_with_its_user_and_device() -> None:
    async def child(accepted: Accept | Refuse, seen: list[object]) -> None:
        socket_of(accepted)  # builds the socket in this task, as the transport's reader does
        seen.append(current_context())

    accepted = await connect(request())
    seen: list[object] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(child, accepted, seen)
    (context,) = seen
    assert isinstance(context, LogContext)
    assert (context.user_id, context.device_id) == ("42", "dev1")
    assert context.conn_id is not None
    assert context.conn_id.startswith("c")
    assert current_context().user_id is None  # other tasks are untouched
