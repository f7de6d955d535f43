"""Keys, token configs and a token factory for the security tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from tests.jwt_factory import AUDIENCE, ISSUER, make_claims, sign_hs256
from whispr.observability import telemetry
from whispr.security.tokens import TokenConfig

SECRET = b"0123456789abcdef0123456789abcdef-test-only"

Seen = list[tuple[str, dict[str, object]]]


def claims(**overrides: Any) -> dict[str, Any]:
    """Valid claims for the HS256 test config (device phone-1), expiring in an hour; `None` values are dropped."""
    return make_claims("phone-1", overrides)


def hs256(payload: dict[str, Any], key: bytes = SECRET, headers: dict[str, Any] | None = None) -> str:
    return sign_hs256(payload, key, headers)


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
