"""The service-to-service API under `/api/v1` (contract §7), as one handler the endpoint mounts.

Every request needs `Authorization: Bearer <api key>`, compared in constant time with each
configured key; anything else is 401, before any routing (unknown paths included, so routes are not
revealed). Bodies are JSON objects; every answer is JSON, errors as `{"error": reason}`.

| method and path | body | success |
|---|---|---|
| `POST /api/v1/conversations` | `{"members": [user_id, ...]}` | 201 `{"id"}` |
| `POST /api/v1/conversations/<id>/members` | `{"user_id"}` | 204 |
| `DELETE /api/v1/conversations/<id>/members/<user_id>` | | 204; the user's open `conversation:<id>` channels stop receiving and answer their next event with `not_member` |
| `POST /api/v1/conversations/<id>/messages` | `{"sender_id": user id, or null / "system" for the system, "sender_device_id"?, "client_message_id", "content", "type"?, "metadata"?, "reply_to"?}` | 201 `{"message_id","seq","duplicate": false}`, or 200 with `"duplicate": true`; same path as `send_message` (ack after commit, fan-out) |
| `POST /api/v1/users/<id>/notifications` | `{"type", "title"?, "body"?, "data"?}` | 201 `{"id"}`; `notification` pushed on `notification:<id>` |
| `PUT /api/v1/users/<id>` | `{"active": bool}` | 200 `{"user_id","active","disconnected"}`; deactivating disconnects the user's sockets |
| `POST /api/v1/users/<id>/disconnect` | | 200 `{"disconnected": n}` (close 1001) |
| `POST /api/v1/users/<id>/devices/<device_id>/disconnect` | | 200 `{"disconnected": 0 or 1}` |
| `GET /api/v1/connections` | | 200 `{"connections": [{"user_id","device_id","device_type","topics"}]}` |

Errors: 400 `invalid_json` (body not a JSON object); 401 `unauthorized`; 404 `not_found` (no such
route) or `conversation_not_found`; 405 `method_not_allowed`; 422 `invalid_payload`, `not_member`
(a user posting to a conversation they are not an active member of), `message_too_large`;
503 `service_unavailable` (the store is down: nothing was done, or, for a message, retry with the
same `client_message_id`). Disconnects and the connection list cover this node only.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any
from urllib.parse import unquote

from whispr.channels.notification import NOTIFICATION_EVENT, notification_payload
from whispr.delivery.deps import Deps
from whispr.delivery.router import SYSTEM_SENDER, Draft, InvalidPayload, NotMember
from whispr.delivery.store import ConversationNotFound, StoreUnavailable
from whispr.pubsub.local import PubSub
from whispr.security.audit import AuditLog
from whispr.security.limits import content_too_large

PREFIX = "/api/v1/"
API_DEVICE_ID = "api"
"""`sender_device_id` of messages posted for a user without one."""

Response = tuple[int, list[tuple[str, str]], bytes]
_JSON_HEADERS = [("Content-Type", "application/json")]
_Handler = Callable[[list[str], dict[str, Any]], Awaitable[Response]]


class ApiError(Exception):
    """Answer `status` with `{"error": reason}`."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason


def json_response(status: int, body: object | None = None) -> Response:
    """A JSON response (no body when `body` is None, e.g. 204)."""
    if body is None:
        return status, [], b""
    return status, list(_JSON_HEADERS), json.dumps(body, separators=(",", ":")).encode()


class ServiceApi:
    """The `/api/v1` handlers of one node. Mount `handle` for every path under `PREFIX`."""

    def __init__(self, deps: Deps, pubsub: PubSub, api_keys: Sequence[str], *, max_content_bytes: int = 10_000) -> None:
        """
        Args:
            deps: the node's messaging services (the same the channels use).
            pubsub: where `notification` events are broadcast.
            api_keys: the accepted bearer keys.
            max_content_bytes: contract §5 content limit, as for `send_message`.

        Raises:
            ValueError: no key, or an empty one.
        """
        if not api_keys or not all(api_keys):
            raise ValueError("the service API needs at least one non-empty API key")
        self._deps = deps
        self._pubsub = pubsub
        self._audit = AuditLog()  # revocations are security events (contract §7, reliability S20)
        self._keys = [key.encode() for key in api_keys]
        self._max_content_bytes = max_content_bytes
        # (method, path pattern) -> handler; "*" matches one path segment, passed as a parameter.
        self._routes: dict[tuple[str, tuple[str, ...]], _Handler] = {
            ("POST", ("conversations",)): self._create_conversation,
            ("POST", ("conversations", "*", "members")): self._add_member,
            ("DELETE", ("conversations", "*", "members", "*")): self._remove_member,
            ("POST", ("conversations", "*", "messages")): self._post_message,
            ("POST", ("users", "*", "notifications")): self._notify,
            ("PUT", ("users", "*")): self._set_active,
            ("POST", ("users", "*", "disconnect")): self._disconnect_user,
            ("POST", ("users", "*", "devices", "*", "disconnect")): self._disconnect_device,
            ("GET", ("connections",)): self._connections,
        }

    async def handle(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> Response:
        """Serve one request. `path` excludes the query; header names are lower-case.

        Blocks on the store calls of the operation. Never raises for a client's mistake or a
        store outage: those are answered (see the module docstring).
        """
        try:
            self._authenticate(headers)
            handler, params = self._route(method, path)
            return await handler(params, _body(body))
        except ApiError as exc:
            return json_response(exc.status, {"error": exc.reason})
        except StoreUnavailable:
            return json_response(503, {"error": "service_unavailable"})

    def _authenticate(self, headers: Mapping[str, str]) -> None:
        scheme, _, key = headers.get("authorization", "").partition(" ")
        candidate = key.strip().encode()
        # Compare with every key, whatever matches, so timing reveals neither key nor position.
        matched = False
        for expected in self._keys:
            matched |= hmac.compare_digest(candidate, expected)
        if scheme.lower() != "bearer" or not matched:
            raise ApiError(401, "unauthorized")

    def _route(self, method: str, path: str) -> tuple[_Handler, list[str]]:
        if not path.startswith(PREFIX):
            raise ApiError(404, "not_found")
        segments = [unquote(segment) for segment in path[len(PREFIX) :].split("/")]
        if not all(segments):
            raise ApiError(404, "not_found")
        allowed = False
        for (route_method, pattern), handler in self._routes.items():
            if len(pattern) != len(segments) or any(p not in ("*", s) for p, s in zip(pattern, segments, strict=True)):
                continue
            if route_method == method:
                return handler, [s for p, s in zip(pattern, segments, strict=True) if p == "*"]
            allowed = True
        raise ApiError(405 if allowed else 404, "method_not_allowed" if allowed else "not_found")

    async def _create_conversation(self, params: list[str], body: dict[str, Any]) -> Response:
        members = body.get("members")
        if not isinstance(members, list) or not members or not all(isinstance(m, str) and m for m in members):
            raise ApiError(422, "invalid_payload")
        conversation_id = await self._deps.store.create_conversation(members)
        return json_response(201, {"id": conversation_id})

    async def _add_member(self, params: list[str], body: dict[str, Any]) -> Response:
        user_id = body.get("user_id")
        if not isinstance(user_id, str) or not user_id:
            raise ApiError(422, "invalid_payload")
        try:
            await self._deps.store.add_member(params[0], user_id)
        except ConversationNotFound:
            raise ApiError(404, "conversation_not_found") from None
        return json_response(204)

    async def _remove_member(self, params: list[str], body: dict[str, Any]) -> Response:
        conversation_id, user_id = params
        await self._deps.store.remove_member(conversation_id, user_id)
        self._deps.live.revoke(conversation_id, user_id)
        return json_response(204)

    async def _post_message(self, params: list[str], body: dict[str, Any]) -> Response:
        if "sender_id" not in body:
            raise ApiError(422, "invalid_payload")
        sender_id = body["sender_id"]
        as_system = sender_id is None or sender_id == SYSTEM_SENDER
        device_id = body.get("sender_device_id", SYSTEM_SENDER if as_system else API_DEVICE_ID)
        if not as_system and not (isinstance(sender_id, str) and sender_id):
            raise ApiError(422, "invalid_payload")
        if not isinstance(device_id, str) or not device_id:
            raise ApiError(422, "invalid_payload")
        try:
            draft = Draft.parse(body)
        except InvalidPayload:
            raise ApiError(422, "invalid_payload") from None
        if content_too_large(draft.content, self._max_content_bytes):
            raise ApiError(422, "message_too_large")
        try:
            message, duplicate = await self._deps.router.send(
                params[0], SYSTEM_SENDER if as_system else sender_id, device_id, draft, as_system=as_system
            )
        except NotMember:
            raise ApiError(422, "not_member") from None
        except ConversationNotFound:
            raise ApiError(404, "conversation_not_found") from None
        ack = {"message_id": message.id, "seq": message.seq, "duplicate": duplicate}
        return json_response(200 if duplicate else 201, ack)

    async def _notify(self, params: list[str], body: dict[str, Any]) -> Response:
        user_id = params[0]
        type_, title, text, data = body.get("type"), body.get("title", ""), body.get("body", ""), body.get("data", {})
        if not (isinstance(type_, str) and type_ and isinstance(title, str) and isinstance(text, str)):
            raise ApiError(422, "invalid_payload")
        if not isinstance(data, dict):
            raise ApiError(422, "invalid_payload")
        notification = await self._deps.store.create_notification(user_id, type_, title, text, data)
        self._pubsub.broadcast(f"notification:{user_id}", NOTIFICATION_EVENT, notification_payload(notification))
        return json_response(201, {"id": notification.id})

    async def _set_active(self, params: list[str], body: dict[str, Any]) -> Response:
        user_id = params[0]
        active = body.get("active")
        if not isinstance(active, bool):
            raise ApiError(422, "invalid_payload")
        await self._deps.store.upsert_user(user_id, active)
        disconnected = 0
        if not active:
            disconnected = self._deps.connections.disconnect_user(user_id)
            self._audit.revocation(user_id=user_id, device_id=None, reason="deactivated")
        return json_response(200, {"user_id": user_id, "active": active, "disconnected": disconnected})

    async def _disconnect_user(self, params: list[str], body: dict[str, Any]) -> Response:
        disconnected = self._deps.connections.disconnect_user(params[0])
        self._audit.revocation(user_id=params[0], device_id=None, reason="api_disconnect")
        return json_response(200, {"disconnected": disconnected})

    async def _disconnect_device(self, params: list[str], body: dict[str, Any]) -> Response:
        user_id, device_id = params
        disconnected = self._deps.connections.disconnect_device(user_id, device_id)
        self._audit.revocation(user_id=user_id, device_id=device_id, reason="api_disconnect")
        return json_response(200, {"disconnected": int(disconnected)})

    async def _connections(self, params: list[str], body: dict[str, Any]) -> Response:
        return json_response(200, {"connections": self._deps.connections.describe()})


def _body(body: bytes) -> dict[str, Any]:
    """The request's JSON object; an empty body is `{}`."""
    if not body.strip():
        return {}
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "invalid_json") from None
    if not isinstance(value, dict):
        raise ApiError(400, "invalid_json")
    return value
