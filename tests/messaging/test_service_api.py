"""The `/api/v1` service API (contract §7): auth, conversations, members, messages, notifications, kicks."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.messaging.conftest import Node, settle
from whispr.api.service import ServiceApi

KEY = "k" * 32
AUTH = {"authorization": f"Bearer {KEY}"}


@pytest.fixture
def api(node: Node) -> ServiceApi:
    return ServiceApi(node.deps, node.pubsub, ["other-key", KEY])


async def call(api: ServiceApi, method: str, path: str, body: Any = None, headers: Any = None) -> tuple[int, Any]:
    raw = b"" if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    status, response_headers, data = await api.handle(method, path, AUTH if headers is None else headers, raw)
    if not data:
        return status, None
    assert ("Content-Type", "application/json") in response_headers
    return status, json.loads(data)


async def test_every_route_needs_a_valid_bearer_key(api: ServiceApi) -> None:
    for headers in ({}, {"authorization": KEY}, {"authorization": "Bearer wrong"}, {"authorization": f"Basic {KEY}"}):
        assert await call(api, "GET", "/api/v1/connections", headers=headers) == (401, {"error": "unauthorized"})
    assert await call(api, "GET", "/api/v1/nowhere", headers={}) == (401, {"error": "unauthorized"})
    assert await call(api, "GET", "/api/v1/connections", headers={"authorization": "bearer other-key"}) == (
        200,
        {"connections": []},
    )
    with pytest.raises(ValueError, match="API key"):
        ServiceApi(api._deps, api._pubsub, [])


async def test_routing_errors(api: ServiceApi) -> None:
    assert await call(api, "GET", "/api/v1/nowhere") == (404, {"error": "not_found"})
    assert await call(api, "GET", "/api/v1/conversations") == (405, {"error": "method_not_allowed"})
    assert await call(api, "POST", "/api/v1/conversations/") == (404, {"error": "not_found"})
    assert await call(api, "POST", "/api/v1/conversations", b"{nope") == (400, {"error": "invalid_json"})
    assert await call(api, "POST", "/api/v1/conversations", [1]) == (400, {"error": "invalid_json"})
    for members in (None, [], [""], "alice", [1]):
        assert await call(api, "POST", "/api/v1/conversations", {"members": members}) == (
            422,
            {"error": "invalid_payload"},
        )


async def test_create_conversation_post_messages_and_deliver_to_connected_devices(node: Node, api: ServiceApi) -> None:
    status, created = await call(api, "POST", "/api/v1/conversations", {"members": ["alice", "bob"]})
    assert status == 201
    cid = created["id"]
    assert await node.store.members(cid) == ["alice", "bob"]
    bob = node.device("bob")
    await bob.join("user:bob")
    await bob.join(f"conversation:{cid}")
    await settle()

    message = {"sender_id": "alice", "client_message_id": "c1", "content": "from the backend"}
    status, ack = await call(api, "POST", f"/api/v1/conversations/{cid}/messages", message)
    assert status == 201
    assert ack["seq"] == 1
    assert ack["duplicate"] is False
    assert await call(api, "POST", f"/api/v1/conversations/{cid}/messages", message) == (
        200,
        {**ack, "duplicate": True},
    )
    status, system = await call(
        api,
        "POST",
        f"/api/v1/conversations/{cid}/messages",
        {"sender_id": None, "client_message_id": "s1", "content": "x"},
    )
    assert status == 201
    assert system["seq"] == 2
    await settle()

    on_user = bob.events("user:bob", "new_message")
    on_conversation = bob.events(f"conversation:{cid}", "new_message")
    assert [m["id"] for m in on_user] == [m["id"] for m in on_conversation] == [ack["message_id"], system["message_id"]]
    assert [(m["sender_id"], m["sender_device_id"]) for m in on_user] == [("alice", "api"), ("system", "system")]

    path = f"/api/v1/conversations/{cid}/messages"
    assert await call(api, "POST", path, {"sender_id": "mallory", "client_message_id": "m", "content": "x"}) == (
        422,
        {"error": "not_member"},
    )
    assert await call(api, "POST", path, {"client_message_id": "m", "content": "x"}) == (
        422,
        {"error": "invalid_payload"},
    )
    assert await call(api, "POST", path, {"sender_id": "alice", "content": "x"}) == (422, {"error": "invalid_payload"})
    too_large = {"sender_id": "alice", "client_message_id": "big", "content": "é" * 5001}
    assert await call(api, "POST", path, too_large) == (422, {"error": "message_too_large"})
    assert await call(
        api,
        "POST",
        "/api/v1/conversations/nope/messages",
        {"sender_id": "system", "client_message_id": "m", "content": "x"},
    ) == (404, {"error": "conversation_not_found"})


async def test_members_can_be_added_and_removed(node: Node, api: ServiceApi) -> None:
    cid = await node.conversation("alice")
    carol = node.device("carol")
    assert (await carol.join(f"conversation:{cid}"))["response"] == {"reason": "not_member"}
    assert await call(api, "POST", f"/api/v1/conversations/{cid}/members", {"user_id": "carol"}) == (204, None)
    assert (await carol.join(f"conversation:{cid}"))["status"] == "ok"
    assert await call(api, "POST", "/api/v1/conversations/nope/members", {"user_id": "carol"}) == (
        404,
        {"error": "conversation_not_found"},
    )
    assert await call(api, "POST", f"/api/v1/conversations/{cid}/members", {}) == (422, {"error": "invalid_payload"})

    assert await call(api, "DELETE", f"/api/v1/conversations/{cid}/members/carol") == (204, None)
    assert await node.store.members(cid) == ["alice"]
    await node.send(cid, "alice", 1)
    await settle()
    assert carol.events(f"conversation:{cid}", "new_message") == []
    assert (await carol.call(f"conversation:{cid}", "message_read", {"up_to_seq": 1}))["response"] == {
        "reason": "not_member"
    }


async def test_notifications_are_stored_and_pushed(node: Node, api: ServiceApi) -> None:
    alice = node.device("alice")
    await alice.join("notification:alice")
    body = {"type": "mention", "title": "Hi", "body": "Bob mentioned you", "data": {"conversation_id": "c"}}
    status, created = await call(api, "POST", "/api/v1/users/alice/notifications", body)
    assert status == 201
    [pushed] = alice.events("notification:alice", "notification")
    assert pushed["id"] == created["id"]
    assert {k: pushed[k] for k in ("type", "title", "body", "data")} == body
    assert pushed["created_at"].endswith("Z")
    assert [n.id for n in await node.store.unread_notifications("alice", 10)] == [created["id"]]
    assert await call(api, "POST", "/api/v1/users/alice/notifications", {"title": "no type"}) == (
        422,
        {"error": "invalid_payload"},
    )


async def test_deactivation_and_disconnects_close_sockets_with_1001(node: Node, api: ServiceApi) -> None:
    phone, laptop, bob = node.device("alice", "phone"), node.device("alice", "laptop"), node.device("bob")
    await phone.join("user:alice")
    status, listed = await call(api, "GET", "/api/v1/connections")
    assert status == 200
    assert listed["connections"][0] == {"user_id": "alice", "device_id": "laptop", "device_type": "web", "topics": []}
    assert [c["device_id"] for c in listed["connections"]] == ["laptop", "phone", "d1"]
    assert listed["connections"][1]["topics"] == ["user:alice"]

    assert await call(api, "POST", "/api/v1/users/alice/devices/phone/disconnect") == (200, {"disconnected": 1})
    assert phone.transport.close_code == 1001
    assert laptop.transport.close_code is None
    assert await call(api, "POST", "/api/v1/users/alice/devices/watch/disconnect") == (200, {"disconnected": 0})
    assert await call(api, "POST", "/api/v1/users/bob/disconnect") == (200, {"disconnected": 1})
    assert bob.transport.close_code == 1001

    assert await call(api, "PUT", "/api/v1/users/alice", {"active": False}) == (
        200,
        {"user_id": "alice", "active": False, "disconnected": 2},
    )
    assert laptop.transport.close_code == 1001
    assert await node.store.user_active("alice") is False
    assert await call(api, "PUT", "/api/v1/users/alice", {"active": "yes"}) == (422, {"error": "invalid_payload"})


async def test_a_second_socket_of_a_device_replaces_the_first(node: Node) -> None:
    old = node.device("alice")
    new = node.device("alice")
    assert old.transport.close_code == 1001
    assert new.transport.close_code is None
    await old.close()
    assert len(node.deps.connections) == 1


async def test_a_store_outage_is_503(node: Node, api: ServiceApi, monkeypatch: pytest.MonkeyPatch) -> None:
    from whispr.delivery.store import StoreUnavailable

    async def down(members: list[str]) -> str:
        raise StoreUnavailable("down")

    monkeypatch.setattr(node.store, "create_conversation", down)
    assert await call(api, "POST", "/api/v1/conversations", {"members": ["a"]}) == (
        503,
        {"error": "service_unavailable"},
    )
