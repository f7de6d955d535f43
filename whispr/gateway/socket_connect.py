"""The `Connect` hook for Phoenix sockets: path, subprotocols, vsn, token, then `authenticate`.

The checks run in the order of `Phoenix.Transports.WebSocket.call/2` (protocol.md §1.2), after
the endpoint's own (method, origin, limits):

1. The path must be `/socket/websocket` (anything else, long-poll included, is 404: §9); an
   overloaded node then refuses with 503 + Retry-After (contract.md §1), before any token work.
2. `authToken` (§1.3): exactly one offered subprotocol starting with `base64url.bearer.phx.` is
   the token, in **standard** base64 (`+`, `/`) without padding; it is removed from the offer
   (several such entries are ignored, as Phoenix does). Undecodable → 403.
3. If the client still offers subprotocols, `phoenix` must be among them and is selected
   (browsers and `ws` abort a handshake that selects none); otherwise 403.
4. `vsn` from the query, "1.0.0" when absent: 1.0.x is served with V1 (object frames), 2.0.x
   with V2; anything else → 403 (`Phoenix.Socket.__connect__/3`).
5. The token: query `token`, else the `authToken` subprotocol, else `Authorization: Bearer`
   (for native clients; contract.md §1). `authenticate(token or None, request)` returns an
   `Admitted`, or the `Refuse` to answer (403 by default in Phoenix; 429/503 are the hook's call).
   `Admitted.opened(socket)` runs when the socket is built (e.g. to register it by socket id) and
   `Admitted.closed()` once its connection is gone (e.g. to give back a per-IP slot).

Tokens never reach logs or refusal reasons.
"""

from __future__ import annotations

import base64
import binascii
import itertools
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from whispr.channels.router import Router
from whispr.gateway.socket import PhoenixSocket
from whispr.gateway.transport import Accept, Connect, Refuse, Transport, UpgradeRequest
from whispr.observability.logs import bind_log_context
from whispr.protocol import Identity, serializer_for_vsn
from whispr.protocol.session import DEFAULT_MAX_CHANNELS
from whispr.pubsub.local import PubSub

SOCKET_PATH = "/socket/websocket"
_connection_ids = itertools.count(1)
PHOENIX_SUBPROTOCOL = "phoenix"
AUTH_TOKEN_PREFIX = "base64url.bearer.phx."
DEFAULT_VSN = "1.0.0"


def _nothing() -> None:
    return None


@dataclass(frozen=True, slots=True)
class Admitted:
    """Who connects, and what to run when their socket opens and when its connection is gone."""

    identity: Identity
    opened: Callable[[PhoenixSocket], None] = lambda socket: None
    closed: Callable[[], None] = _nothing


Authenticate = Callable[[str | None, UpgradeRequest], Awaitable[Admitted | Refuse]]
"""Verifies the token (None when the client sent none) and returns who connects, or a refusal."""


def make_connect(
    router: Router,
    pubsub: PubSub,
    authenticate: Authenticate,
    *,
    max_channels: int = DEFAULT_MAX_CHANNELS,
    overload: Callable[[], Refuse | None] = _nothing,
) -> Connect:
    """The endpoint's `connect` for Phoenix sockets served by `router` (see the module docstring).

    `overload()` is asked before the token is looked at: the refusal it returns (503 when the node
    is overloaded, `whispr.cluster.health`) is answered at once. It must be O(1) and never block.
    """

    async def connect(request: UpgradeRequest) -> Accept | Refuse:
        if request.path != SOCKET_PATH:
            return Refuse(404, "not found")
        refusal = overload()
        if refusal is not None:
            return refusal
        try:
            protocol_token, offered = _split_auth_token(request.subprotocols)
        except ValueError:
            return Refuse(403, "invalid auth token")
        if offered and PHOENIX_SUBPROTOCOL not in offered:
            return Refuse(403, "unsupported subprotocol")
        vsn = request.query.get("vsn", DEFAULT_VSN)
        serializer = serializer_for_vsn(vsn)
        if serializer is None:
            return Refuse(403, "unsupported vsn")
        token = request.query.get("token") or protocol_token or _bearer_token(request.headers)
        outcome = await authenticate(token, request)
        if isinstance(outcome, Refuse):
            return outcome
        admitted = outcome

        def handler(transport: Transport) -> PhoenixSocket:
            # Runs in the connection's own task: every record it logs carries who it is.
            identity = admitted.identity
            bind_log_context(
                conn_id=f"c{next(_connection_ids)}", user_id=identity.user_id, device_id=identity.device_id
            )
            socket = PhoenixSocket(transport, serializer, router, pubsub, admitted.identity, max_channels=max_channels)
            admitted.opened(socket)
            return socket

        return Accept(handler=handler, subprotocol=PHOENIX_SUBPROTOCOL if offered else None, on_closed=admitted.closed)

    return connect


def _split_auth_token(subprotocols: tuple[str, ...]) -> tuple[str | None, tuple[str, ...]]:
    """(token, remaining subprotocols), per `maybe_auth_token_from_header/2`.

    Raises:
        ValueError: the single token entry is not standard base64 of a UTF-8 string.
    """
    tokens = [entry for entry in subprotocols if entry.startswith(AUTH_TOKEN_PREFIX)]
    if len(tokens) != 1:
        return None, subprotocols
    encoded = tokens[0][len(AUTH_TOKEN_PREFIX) :]
    try:
        token = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise ValueError("undecodable auth token") from None
    return token, tuple(entry for entry in subprotocols if entry != tokens[0])


def _bearer_token(headers: Mapping[str, str]) -> str | None:
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    credentials = credentials.strip()
    return credentials if scheme.lower() == "bearer" and credentials else None
