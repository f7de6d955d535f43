"""JWT at the upgrade through a real node (reliability C1, C2, S2-S5, S8; contract §1, §6).

Every bad token is refused with 403 before any upgrade, writes one `auth_failure` audit record with
the token's hash and a reason, takes no connection slot, and never shows up in any log record or
in `/metrics`. A token that expires mid-session closes its socket with 3000 at `exp` + 30 s leeway.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.jwt_factory import AUDIENCE, ISSUER, b64, raw_token
from tests.security_e2e.client import USER_AGENT, Phx, Refused, http_get, in_thread, try_connect
from tests.security_e2e.conftest import (
    audit_records,
    claims,
    hs256,
    node_with_control,
    wait_until,
)
from whispr.security.tokens import token_hash

pytestmark = pytest.mark.integration

MARKER = "SECRETMARKER"


def tampered(token: str, **changes: Any) -> str:
    """`token` with its payload changed and the original signature kept."""
    header, payload, signature = token.split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    body.update(changes)
    return f"{header}.{b64(json.dumps(body).encode())}.{signature}"


class CountingServer:
    """A TCP listener that only counts connections: the `jku` target that must get 0 hits."""

    def __init__(self) -> None:
        self.hits = 0
        self.port = 0

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async def handler(stream: trio.SocketStream) -> None:
            self.hits += 1
            await stream.aclose()

        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(handler, listeners)


def assert_no_leak(tokens: list[str], caplog: pytest.LogCaptureFixture, metrics: bytes) -> None:
    """No token, nor any token's signature, in any captured log record (message or extra fields) or metric."""
    haystacks = [metrics.decode()]
    for record in caplog.records:
        haystacks.append(record.getMessage())
        haystacks.append(repr(record.__dict__))
    text = "\n".join(haystacks)
    for token in tokens:
        needles = [token, *(part for part in token.split(".")[1:] if len(part) >= 16)]
        for needle in needles:
            assert needle not in text, f"token material {needle[:24]}... leaked"
    assert MARKER not in text


async def test_hs256_battery_refuses_with_403_before_upgrade(
    tmp_path: Path, caplog_all: pytest.LogCaptureFixture
) -> None:
    now = int(time.time())
    async with node_with_control(tmp_path, jwt_issuer=ISSUER, jwt_audience=AUDIENCE) as (rn, control):
        jku = CountingServer()
        async with trio.open_nursery() as nursery:
            await nursery.start(jku.serve)
            good = hs256(claims())
            cases: list[tuple[str, str | None, str]] = [
                ("alg none", raw_token({"alg": "none", "typ": "JWT"}, claims(), None), "bad_algorithm"),
                ("alg None", raw_token({"alg": "None", "typ": "JWT"}, claims(), None), "bad_algorithm"),
                ("missing exp", hs256(claims(exp=None)), "missing_claim"),
                ("expired beyond leeway", hs256(claims(iat=now - 100, exp=now - 45)), "expired"),
                ("wrong aud", hs256(claims(aud="someone-else")), "bad_audience"),
                ("missing aud", hs256(claims(aud=None)), "missing_claim"),
                ("wrong iss", hs256(claims(iss="https://evil.example")), "bad_issuer"),
                ("tampered payload", tampered(good, sub="mallory"), "bad_signature"),
                ("wrong secret", hs256(claims(), key=b"x" * 48), "bad_signature"),
                (
                    "jku header",
                    hs256(claims(), headers={"jku": f"http://127.0.0.1:{jku.port}/jwks.json"}),
                    "forbidden_header",
                ),
                ("missing device_id", hs256(claims(device_id=None)), "missing_claim"),
                ("garbage", f"{MARKER}-not-a-jwt", "malformed"),
                ("garbage three parts", f"{MARKER}.{MARKER}.{MARKER}", "malformed"),
                ("missing token", None, "missing_token"),
            ]
            for i, (name, token, reason) in enumerate(cases):
                source = f"127.0.1.{i + 1}"  # one IP per attempt: the connect rate is not what is tested
                outcome = await in_thread(lambda t=token, s=source: try_connect(rn.port, t, source=s))
                assert isinstance(outcome, Refused), f"{name}: upgraded"
                assert outcome.status == 403, (name, outcome)
                assert rn.node.gatekeeper is not None
                assert rn.node.gatekeeper.slots.held(source) == 0, name  # no slot kept
                failures = [a for a in audit_records(caplog_all, "auth_failure") if a["client_ip"] == source]
                assert len(failures) == 1, (name, failures)
                expected_hash = {"token_hash": token_hash(token)} if token else {}
                assert failures[0] == {
                    "event": "auth_failure",
                    "reason": reason,
                    "client_ip": source,
                    **expected_hash,
                    "user_agent": USER_AGENT,
                }
                assert "token" not in str(outcome.body), name

            # the same refusal through the other two carriers (authToken subprotocol, bearer header)
            bad = hs256(claims(aud="someone-else"))
            protocol = "base64url.bearer.phx." + base64.b64encode(bad.encode()).decode().rstrip("=")
            for source, kwargs in [
                ("127.0.1.100", {"headers": {"Sec-WebSocket-Protocol": f"phoenix, {protocol}"}}),
                ("127.0.1.101", {"headers": {"Authorization": f"Bearer {bad}"}}),
            ]:
                outcome = await in_thread(lambda s=source, k=kwargs: try_connect(rn.port, None, source=s, **k))
                assert isinstance(outcome, Refused)
                assert outcome.status == 403
            assert jku.hits == 0  # the jku URL was never fetched
            nursery.cancel_scope.cancel()

        # positive control: the same node upgrades a good token (and the leeway lets a 20 s-old one in)
        await rn.add_user("alice")
        for source, token in [("127.0.1.200", good), ("127.0.1.201", hs256(claims(device_id="d2", exp=now - 20)))]:
            phx = await in_thread(lambda t=token, s=source: Phx.connect(rn.port, t, source=s))
            assert (await in_thread(phx.heartbeat))["status"] == "ok"
            await in_thread(phx.close)

        deps = rn.node.deps
        assert deps is not None
        await wait_until(lambda: len(deps.connections) == len(control.sockets))  # only the control set left
        status, metrics = await in_thread(http_get, f"{rn.http_url}/metrics")
        assert status == 200
        await in_thread(control.check)
        assert_no_leak([t for _, t, _ in cases if t] + [good, bad], caplog_all, metrics)


@pytest.fixture
def rsa_keys(tmp_path: Path) -> tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey, Path, bytes]:
    """(the issuer's key, an attacker's key, a JWKS file with the issuer's public key as kid k1, its PEM)."""
    issuer = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(issuer.public_key()))
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [{**jwk, "kid": "k1", "alg": "RS256", "use": "sig"}]}))
    pem = issuer.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return issuer, attacker, path, pem


async def test_rs256_jwks_battery(
    tmp_path: Path,
    caplog_all: pytest.LogCaptureFixture,
    rsa_keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey, Path, bytes],
) -> None:
    issuer, attacker, jwks_path, pem = rsa_keys
    attacker_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(attacker.public_key()))

    def rs(payload: dict[str, Any], key: Any = issuer, **headers: Any) -> str:
        return jwt.encode(payload, key, algorithm="RS256", headers={"kid": "k1", **headers})

    def mint(user: str, device: str) -> str:
        return rs(claims(aud=None, sub=user, device_id=device))

    async with node_with_control(
        tmp_path, mint, jwt_algorithm="RS256", jwt_public_keys=str(jwks_path), jwt_issuer=ISSUER
    ) as (rn, control):
        cases: list[tuple[str, str, str]] = [
            (
                "HS/RS confusion: HS256 keyed with the public PEM",
                raw_token({"alg": "HS256", "kid": "k1"}, claims(aud=None), pem),
                "bad_algorithm",
            ),
            ("alg none", raw_token({"alg": "none", "kid": "k1"}, claims(aud=None), None), "bad_algorithm"),
            ("unknown kid", rs(claims(aud=None), attacker, kid="k2"), "unknown_kid"),
            ("kid path traversal", rs(claims(aud=None), kid="../../etc/passwd"), "unknown_kid"),
            ("kid sql", rs(claims(aud=None), kid="' OR 1=1--"), "unknown_kid"),
            ("no kid", jwt.encode(claims(aud=None), issuer, algorithm="RS256"), "unknown_kid"),
            ("right kid, attacker's key", rs(claims(aud=None), attacker), "bad_signature"),
            ("embedded jwk", rs(claims(aud=None), attacker, jwk=attacker_jwk), "forbidden_header"),
            ("jku", rs(claims(aud=None), jku="https://evil.example/jwks.json"), "forbidden_header"),
            ("missing exp", rs(claims(aud=None, exp=None)), "missing_claim"),
            ("wrong iss", rs(claims(aud=None, iss="https://evil.example")), "bad_issuer"),
        ]
        for i, (name, token, reason) in enumerate(cases):
            source = f"127.0.2.{i + 1}"
            outcome = await in_thread(lambda t=token, s=source: try_connect(rn.port, t, source=s))
            assert isinstance(outcome, Refused), f"{name}: upgraded"
            assert outcome.status == 403, (name, outcome)
            failures = [a for a in audit_records(caplog_all, "auth_failure") if a["client_ip"] == source]
            assert [(f["reason"], f["token_hash"]) for f in failures] == [(reason, token_hash(token))], name

        good = rs(claims(aud=None, sub="rs-user"))
        await rn.add_user("rs-user")
        phx = await in_thread(lambda: Phx.connect(rn.port, good, source="127.0.2.200"))
        assert (await in_thread(phx.join, "user:rs-user"))["status"] == "ok"
        await in_thread(phx.close)
        _, metrics = await in_thread(http_get, f"{rn.http_url}/metrics")
        await in_thread(control.check)
        assert_no_leak([t for _, t, _ in cases] + [good], caplog_all, metrics)


def _unverified_exp(token: str) -> float:
    return float(jwt.decode(token, options={"verify_signature": False})["exp"])


async def test_token_expiry_mid_session_closes_with_3000(tmp_path: Path, caplog_all: pytest.LogCaptureFixture) -> None:
    """A token whose `exp` lies 27 s in the past still upgrades (30 s leeway, contract §1); its socket is
    then closed with 3000 at `exp` + 30 s, about 3 s later. The same deadline arithmetic as a token
    that expires an hour into its session, without the wait (the slow variant below waits it out)."""
    async with node_with_control(tmp_path) as (rn, control):
        await rn.add_user("alice")
        now = int(time.time())
        token = hs256(claims(iss=None, aud=None, iat=now - 60, exp=now - 27))
        phx = await in_thread(lambda: Phx.connect(rn.port, token, source="127.0.3.1"))
        assert (await in_thread(phx.join, "user:alice"))["status"] == "ok"
        assert await in_thread(phx.wait_closed) == 3000
        assert time.time() >= _unverified_exp(token) + 30  # not before exp + leeway
        await in_thread(control.check)


@pytest.mark.slow
async def test_token_expiry_real_ttl_closes_with_3000(tmp_path: Path) -> None:
    """The plain case: a 2 s token, closed with 3000 at exp + 30 s (about 32 s of wall time)."""
    async with node_with_control(tmp_path) as (rn, control):
        await rn.add_user("alice")
        token = rn.token("alice", "d1", ttl=2)
        phx = await in_thread(lambda: Phx.connect(rn.port, token, source="127.0.3.2"))
        assert (await in_thread(phx.join, "user:alice"))["status"] == "ok"
        assert await in_thread(lambda: phx.wait_closed(timeout=45)) == 3000
        assert time.time() >= _unverified_exp(token) + 30
        await in_thread(control.check)
