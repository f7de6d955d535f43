"""Audit records on `whispr.audit` (reliability S8, S20): one per event, never a token or a body."""

from __future__ import annotations

import logging

import pytest
import trio

from tests.security.conftest import SECRET, claims, hs256
from tests.security.test_gatekeeper import admitted, gatekeeper, upgrade
from whispr.security.audit import AUDIT_LOGGER, AuditLog
from whispr.security.gatekeeper import Admission
from whispr.security.tokens import token_hash

BODY = "MESSAGE-BODY-MARKER do not log me"


def audit_records(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [dict(r.audit) for r in caplog.records if r.name == AUDIT_LOGGER]  # type: ignore[attr-defined]


@pytest.fixture
def everything(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)  # every logger, every level
    return caplog


async def test_one_record_per_event(autojump_clock: trio.abc.Clock, everything: pytest.LogCaptureFixture) -> None:
    gate = gatekeeper()
    good = hs256(claims(iss=None, aud=None))
    expired = hs256(claims(iss=None, aud=None, exp=1))

    admission = await admitted(gate, upgrade(origin="https://whispr.app"), good)
    await gate.admit(upgrade(origin="https://evil.example"), good)
    await gate.admit(upgrade(), expired)
    guard = gate.guard(admission)
    for _ in range(103):
        await guard.check_message(BODY)
    AuditLog().revocation(user_id="alice", device_id=None, reason="logout")

    ident = {"user_id": "alice", "device_id": "phone-1", "token_hash": token_hash(good)}
    ip = "203.0.113.7"
    assert audit_records(everything) == [
        {
            "event": "connection_attempt",
            "outcome": "accepted",
            "client_ip": ip,
            **ident,
            "user_agent": "phoenix.js/1.8",
        },
        {
            "event": "connection_attempt",
            "outcome": "refused",
            "reason": "bad_origin",
            "client_ip": ip,
            "user_agent": "phoenix.js/1.8",
        },
        {
            "event": "auth_failure",
            "reason": "expired",
            "client_ip": ip,
            "token_hash": token_hash(expired),
            "user_agent": "phoenix.js/1.8",
        },
        *[{"event": "limit_exceeded", "limit": "message", "client_ip": ip, **ident}] * 3,
        {"event": "suspicious_activity", "detector": "message_spam", "blocked_for": 300.0, "client_ip": ip, **ident},
        {"event": "revocation", "reason": "logout", "user_id": "alice"},
    ]
    lines = [r.getMessage() for r in everything.records if r.name == AUDIT_LOGGER]
    assert lines[0] == (
        f"connection_attempt outcome=accepted client_ip=203.0.113.7 user_id=alice device_id=phone-1 "
        f"token_hash={token_hash(good)} user_agent=phoenix.js/1.8"
    )
    assert lines[-1] == "revocation reason=logout user_id=alice"
    levels = [r.levelname for r in everything.records if r.name == AUDIT_LOGGER]
    assert levels == ["INFO", *["WARNING"] * 6, "INFO"]


async def test_connection_abuse_and_channel_hopping_records(
    autojump_clock: trio.abc.Clock, everything: pytest.LogCaptureFixture
) -> None:
    gate = gatekeeper()
    token = hs256(claims(iss=None, aud=None))
    for _ in range(21):
        outcome = await gate.admit(upgrade("198.51.100.3"), token)
        if isinstance(outcome, Admission):
            outcome.release()
    guard = gate.guard(await admitted(gate, upgrade()))
    for _ in range(31):
        await guard.check_join()
    events = [(r["event"], r.get("limit") or r.get("detector") or r.get("reason")) for r in audit_records(everything)]
    assert events[20:] == [
        ("limit_exceeded", "connect"),
        ("suspicious_activity", "connection_abuse"),
        ("connection_attempt", "connect_rate"),
        ("connection_attempt", None),  # the guarded socket's accepted attempt
        ("limit_exceeded", "join"),
        ("suspicious_activity", "channel_hopping"),
    ]


async def test_no_token_and_no_message_body_in_any_log_output(
    autojump_clock: trio.abc.Clock, everything: pytest.LogCaptureFixture
) -> None:
    gate = gatekeeper()
    tokens = [
        hs256(claims(iss=None, aud=None, marker="SECRETMARKER")),  # accepted
        hs256(claims(iss=None, aud=None, exp=1)),  # expired
        hs256(claims(iss=None, aud=None), key=SECRET[::-1]),  # bad signature
        "SECRETMARKER.not.a.jwt",  # garbage
        "SECRETMARKER" * 1000,  # oversize garbage
    ]
    admissions = [await gate.admit(upgrade(), token) for token in tokens]
    guard = gate.guard(next(a for a in admissions if isinstance(a, Admission)))
    for _ in range(110):
        await guard.check_message(BODY)
        await guard.check_message(BODY * 400)  # oversize too
    output = (
        "\n".join(f"{r.getMessage()} {r.exc_text or ''} {r.__dict__}" for r in everything.records) + everything.text
    )
    assert "SECRETMARKER" not in output
    assert "MESSAGE-BODY-MARKER" not in output
    for token in tokens:
        assert token not in output
        assert token[:40] not in output  # not even the header and the start of the payload
    assert len(audit_records(everything)) >= len(tokens)


def test_client_controlled_text_cannot_forge_a_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=AUDIT_LOGGER)
    AuditLog().connection_attempt(
        client_ip="203.0.113.7",
        accepted=False,
        reason="bad_origin",
        user_agent="x\nrevocation user_id=admin" + "a" * 500,
    )
    (line,) = [r.getMessage() for r in caplog.records]
    assert "\n" not in line
    assert line.startswith(
        'connection_attempt outcome=refused reason=bad_origin client_ip=203.0.113.7 user_agent="x\\n'
    )
    assert len(line) < 300  # user agents are truncated
