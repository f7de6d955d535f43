"""Hand-made JWTs for the security tests: valid claims, HS256 signing, and raw (unsigned or mis-signed) tokens.

The unit tests (tests/security) and the end-to-end tests (tests/security_e2e) differ only in their default device
and signing secret; each conftest binds those and re-exports these helpers.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt

ISSUER = "https://auth.whispr.app"
AUDIENCE = "whispr-gateway"


def b64(data: bytes) -> str:
    """base64url without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_claims(device_id: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Valid claims for `ISSUER`/`AUDIENCE` and user alice, expiring in an hour; `None` in `overrides` drops a claim."""
    now = int(time.time())
    base: dict[str, Any] = {
        "sub": "alice",
        "device_id": device_id,
        "iat": now,
        "exp": now + 3600,
        "iss": ISSUER,
        "aud": AUDIENCE,
    }
    base.update(overrides)
    return {key: value for key, value in base.items() if value is not None}


def sign_hs256(payload: dict[str, Any], key: bytes, headers: dict[str, Any] | None = None) -> str:
    return jwt.encode(payload, key, algorithm="HS256", headers=headers)


def raw_token(header: dict[str, Any], payload: dict[str, Any], key: bytes | None) -> str:
    """A token built by hand: HMAC-SHA256-signed with `key` (whatever `header` claims), or unsigned when None."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    if key is None:
        return signing_input + "."
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"
