"""The audit trail through a real node (reliability S20; contract §1 "tokens are never logged").

Each pattern is triggered once and must add exactly the expected structured records on logger
`whispr.audit` (one per event, with who/where/why and the token's hash, never the token or a body).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.security_e2e.client import TIMEOUT, USER_AGENT, Phx, Refused, in_thread, try_connect
from tests.security_e2e.conftest import audit_lines, audit_records, claims, hs256, node_with_control
from whispr.security.tokens import token_hash

pytestmark = pytest.mark.integration

BODY = "BODYMARKER confidential message text"


class Audit:
    """The audit records seen so far; `new()` returns those written since the last call."""

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        self._caplog = caplog
        self._seen = 0

    def new(self) -> list[dict[str, Any]]:
        records = audit_records(self._caplog)
        fresh, self._seen = records[self._seen :], len(records)
        return fresh


async def test_one_structured_record_per_event(tmp_path: Path, caplog_all: pytest.LogCaptureFixture) -> None:
    async with node_with_control(tmp_path, joins_per_minute=2) as (rn, control):
        audit = Audit(caplog_all)
        audit.new()  # the control set's connections
        await rn.add_user("alice")
        assert rn.node.store is not None
        conversation_id = await rn.node.store.create_conversation(["alice"])

        # connection attempt (accepted)
        token = rn.token("alice", "d1", device_type="web")
        alice = await in_thread(Phx.connect, rn.port, token, source="127.0.0.60")
        assert audit.new() == [
            {
                "event": "connection_attempt",
                "outcome": "accepted",
                "client_ip": "127.0.0.60",
                "user_id": "alice",
                "device_id": "d1",
                "token_hash": token_hash(token),
                "user_agent": USER_AGENT,
            }
        ]

        # auth failure: one record, in place of a connection_attempt
        bad = hs256(claims(iss=None, aud=None, exp=None))
        refused = await in_thread(try_connect, rn.port, bad, source="127.0.0.61")
        assert isinstance(refused, Refused)
        assert audit.new() == [
            {
                "event": "auth_failure",
                "reason": "missing_claim",
                "client_ip": "127.0.0.61",
                "token_hash": token_hash(bad),
                "user_agent": USER_AGENT,
            }
        ]

        # limit exceeded (message size)
        assert (await in_thread(alice.join, f"conversation:{conversation_id}"))["status"] == "ok"
        reply = await in_thread(alice.send_message, conversation_id, BODY + "x" * 10_000, "big")
        assert reply["response"] == {"reason": "message_too_large"}
        assert audit.new() == [
            {
                "event": "limit_exceeded",
                "limit": "message_size",
                "client_ip": "127.0.0.60",
                "user_id": "alice",
                "device_id": "d1",
                "token_hash": token_hash(token),
            }
        ]
        assert (await in_thread(alice.send_message, conversation_id, BODY, "ok-1"))["status"] == "ok"
        assert audit.new() == []  # accepted messages are not audited

        # suspicious activity (channel hopping: joins_per_minute=2, the socket has joined once)
        assert (await in_thread(alice.join, "user:alice"))["status"] == "ok"
        over = await in_thread(alice.join, "notification:alice")
        assert over["response"]["reason"] == "rate_limit_exceeded"
        assert await in_thread(alice.wait_closed) == 1008
        who = {"client_ip": "127.0.0.60", "user_id": "alice", "device_id": "d1", "token_hash": token_hash(token)}
        assert audit.new() == [
            {"event": "limit_exceeded", "limit": "join", **who},
            {"event": "suspicious_activity", "detector": "channel_hopping", "blocked_for": 300.0, **who},
        ]

        # a blocked user's attempt: a refused connection_attempt saying why
        again = await in_thread(try_connect, rn.port, rn.token("alice", "d2"), source="127.0.0.62")
        assert isinstance(again, Refused)
        assert again.status == 429
        [blocked] = audit.new()
        assert (blocked["event"], blocked["outcome"], blocked["reason"], blocked["user_id"]) == (
            "connection_attempt",
            "refused",
            "blocked",
            "alice",
        )

        # lines are `event key=value ...`, one per record; never a body or a token
        lines = audit_lines(caplog_all)
        assert all(line.split(" ", 1)[0] in {a["event"] for a in audit_records(caplog_all)} for line in lines)
        everything = "\n".join(r.getMessage() + repr(r.__dict__) for r in caplog_all.records)
        assert "BODYMARKER" not in everything
        assert token not in everything
        assert bad not in everything
        await in_thread(control.check)


def api_post(url: str, key: str) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=b"", method="POST", headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def disconnect_via_api(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """Disconnect alice through the service API (skip when it is not mounted); return the new audit records."""
    async with node_with_control(tmp_path) as (rn, control):
        await rn.add_user("alice")
        sockets = [
            await in_thread(Phx.connect, rn.port, rn.token("alice", f"d{i}"), source=f"127.0.0.{70 + i}")
            for i in range(2)
        ]
        for phx in sockets:
            assert (await in_thread(phx.join, "user:alice"))["status"] == "ok"
        audit = Audit(caplog)
        audit.new()
        status, body = await in_thread(api_post, f"{rn.http_url}/api/v1/users/alice/disconnect", rn.settings.api_key)
        if status == 404:
            pytest.skip("the service API is not mounted on the node")
        assert status == 200, body
        assert json.loads(body) == {"disconnected": 2}
        for phx in sockets:
            assert await in_thread(phx.wait_closed) == 1001  # contract §6: kicked (revocation)
        await in_thread(control.check)
        return audit.new()


async def test_service_api_disconnect_closes_every_socket_of_the_user(
    tmp_path: Path, caplog_all: pytest.LogCaptureFixture
) -> None:
    await disconnect_via_api(tmp_path, caplog_all)


async def test_service_api_disconnect_writes_one_revocation_record(
    tmp_path: Path, caplog_all: pytest.LogCaptureFixture
) -> None:
    records = await disconnect_via_api(tmp_path, caplog_all)
    revocations = [r for r in records if r["event"] == "revocation"]
    assert [(r["user_id"], r.get("device_id")) for r in revocations] == [("alice", None)]


async def test_inactive_user_refusal_is_audited_as_refused(
    tmp_path: Path, caplog_all: pytest.LogCaptureFixture
) -> None:
    async with node_with_control(tmp_path) as (rn, control):
        await rn.add_user("gone", active=False)
        refused = await in_thread(try_connect, rn.port, rn.token("gone", "d1"), source="127.0.0.80")
        assert isinstance(refused, Refused)
        assert refused.status == 403
        await in_thread(control.check)
        records = [a for a in audit_records(caplog_all) if a["client_ip"] == "127.0.0.80"]
        assert [(a["event"], a["outcome"], a.get("reason")) for a in records] == [
            ("connection_attempt", "refused", "inactive_user")
        ]
