"""Keys, token configs and a token factory for the security tests."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from whispr.observability import telemetry
from whispr.security.tokens import TokenConfig

SECRET = b"0123456789abcdef0123456789abcdef-test-only"
ISSUER = "https://auth.whispr.app"
AUDIENCE = "whispr-gateway"

Seen = list[tuple[str, dict[str, object]]]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**overrides: Any) -> dict[str, Any]:
    """Valid claims for the HS256 test config, expiring in an hour; `None` values are dropped."""
    now = int(time.time())
    base: dict[str, Any] = {
        "sub": "alice",
        "device_id": "phone-1",
        "iat": now,
        "exp": now + 3600,
        "iss": ISSUER,
        "aud": AUDIENCE,
    }
    base.update(overrides)
    return {key: value for key, value in base.items() if value is not None}


def hs256(payload: dict[str, Any], key: bytes = SECRET, headers: dict[str, Any] | None = None) -> str:
    return jwt.encode(payload, key, algorithm="HS256", headers=headers)


def raw_token(header: dict[str, Any], payload: dict[str, Any], key: bytes | None) -> str:
    """A token built by hand: HS256-signed with `key` as the HMAC secret, or unsigned when None."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    if key is None:
        return signing_input + "."
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


@pytest.fixture
def hs_config() -> TokenConfig:
    return TokenConfig(secret=SECRET, issuer=ISSUER, audience=AUDIENCE)


@pytest.fixture(scope="session")
def private_keys() -> dict[str, Any]:
    """One private key per asymmetric algorithm."""
    return {
        "RS256": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ES256": ec.generate_private_key(ec.SECP256R1()),
        "EdDSA": ed25519.Ed25519PrivateKey.generate(),
    }


@pytest.fixture
def seen_telemetry() -> Iterator[Seen]:
    """Metadata of every LIMIT_EXCEEDED and ABUSE_DETECTED event emitted during the test."""
    events: Seen = []
    telemetry.attach(
        "security-tests",
        [telemetry.LIMIT_EXCEEDED, telemetry.ABUSE_DETECTED],
        lambda event, _m, metadata: events.append((event, dict(metadata))),
    )
    yield events
    telemetry.detach("security-tests")
