"""JWT verification at the upgrade, and minting for the `whispr token` dev command.

Rules (contract §1; reliability §1.9 and S3–S6; RFC 8725):
- One algorithm, pinned by configuration: HS256 with a secret (the default) or one of RS256, ES256,
  EdDSA with public keys. The token's `alg` header never chooses anything (RFC 8725 §2.1, §3.1), so
  `none` and HS/RS confusion fail at PyJWT's allow-list check.
- Keys are loaded once, at startup, into memory. `kid` is only a key into that dict (RFC 8725 §3.10):
  no file, URL or database is ever touched on its behalf. Tokens carrying `jku`, `x5u`, `jwk` or
  `x5c` are refused outright rather than ignored: no issuer of ours sets them, so their presence is
  an attack signal worth an audit line.
- `exp` is always required (PyJWT accepts a token without `exp` unless `require` names it,
  dependencies.md §4); `iss`/`aud` are required and checked when configured; 30 s leeway.
- Every failure is one `AuthError` with a stable `reason` for audit logs and metrics; the caller
  answers 403 whatever the reason. PyJWT also raises `TypeError`/`ValueError` on some confused keys,
  so those are caught as well (dependencies.md §4).
- Tokens are never logged: `token_hash` is what goes into logs.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.algorithms import HMACAlgorithm
from jwt.exceptions import (
    DecodeError,
    ExpiredSignatureError,
    ImmatureSignatureError,
    InvalidAlgorithmError,
    InvalidAudienceError,
    InvalidIssuedAtError,
    InvalidIssuerError,
    InvalidJTIError,
    InvalidSignatureError,
    InvalidSubjectError,
    MissingRequiredClaimError,
)

Algorithm = Literal["HS256", "RS256", "ES256", "EdDSA"]
ALGORITHMS: tuple[Algorithm, ...] = get_args(Algorithm)

MIN_SECRET_BYTES = 32  # RFC 8725 §3.5 / RFC 7518 §3.2: an HS256 key at least as long as the hash output
MIN_RSA_BITS = 2048  # NIST SP 800-57; PyJWT only warns below this unless told to enforce
MAX_TOKEN_CHARS = 8192  # far above any token we issue; refuses megabyte garbage before base64/JSON work
MAX_ID_CHARS = 255  # ids end up in topics, Redis keys and log lines
REFUSED_HEADERS = frozenset({"jku", "x5u", "jwk", "x5c"})  # RFC 8725 §3.10: never follow key references


class TokenConfigError(ValueError):
    """The token configuration is unusable (short secret, bad key file, mismatched key). Raised at startup."""


class AuthError(Exception):
    """A token was refused. `reason` is a short stable code for logs and metrics, never sent to the client.

    Reasons: missing_token, malformed, forbidden_header, unknown_kid, bad_algorithm, bad_signature,
    expired, not_yet_valid, missing_claim, bad_issuer, bad_audience, bad_claims, invalid.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class TokenConfig:
    """How tokens are verified (and, for HS256, minted).

    Exactly one key source must match `algorithm`: `secret` for HS256; `public_key_pem` (one key,
    any `kid`) or `jwks_path` (keys selected by `kid`) for RS256/ES256/EdDSA.
    """

    algorithm: Algorithm = "HS256"
    secret: bytes = b""
    public_key_pem: bytes | None = None
    jwks_path: Path | None = None
    issuer: str | None = None
    audience: str | None = None
    leeway: float = 30.0  # contract §1


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """Who a verified token speaks for.

    `expires_at` is the token's `exp` as UNIX seconds: the socket layer closes the socket with 3000
    at that time (contract §6). `token_hash` is the token's log-safe name (`token_hash()`).
    """

    user_id: str
    device_id: str
    device_type: str | None
    expires_at: float
    token_hash: str


def token_hash(token: str) -> str:
    """A short, non-reversible name for a token, for logs: 16 hex digits of its SHA-256."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()[:16]


# PyJWT exception -> AuthError reason. Checked in order: subclasses before their bases.
_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (ExpiredSignatureError, "expired"),
    (ImmatureSignatureError, "not_yet_valid"),
    (MissingRequiredClaimError, "missing_claim"),
    (InvalidIssuerError, "bad_issuer"),
    (InvalidAudienceError, "bad_audience"),
    (InvalidAlgorithmError, "bad_algorithm"),
    (InvalidSignatureError, "bad_signature"),
    (DecodeError, "malformed"),
    (InvalidSubjectError, "bad_claims"),
    (InvalidIssuedAtError, "bad_claims"),
    (InvalidJTIError, "bad_claims"),
)


class TokenVerifier:
    """Verifies tokens against a `TokenConfig`. Build it once at startup; `verify` is then pure CPU.

    Raises (constructor):
        TokenConfigError: the config is unusable; the message says what to fix. Keys are read here
            and only here.
    """

    def __init__(self, config: TokenConfig) -> None:
        self._config = config
        # kid -> key. For HS256 and a single PEM key, the one key sits under None and `kid` is ignored.
        self._keys: dict[str | None, Any] = _load_keys(config)
        self._by_kid = config.jwks_path is not None
        require = ["exp"]
        if config.issuer is not None:
            require.append("iss")
        if config.audience is not None:
            require.append("aud")
        self._decoder = jwt.PyJWT({"require": require, "enforce_minimum_key_length": True})

    def verify(self, token: str | None) -> VerifiedToken:
        """Verify `token` and return its `VerifiedToken`.

        Synchronous, CPU only (about 50 µs for HS256), no I/O; never logs the token.

        Raises:
            AuthError: the token is missing, malformed, forged, expired or lacks a claim.
        """
        if not token:
            raise AuthError("missing_token")
        if len(token) > MAX_TOKEN_CHARS:
            raise AuthError("malformed")
        try:
            if self._by_kid:  # the header picks the key: read it first (RFC 8725 §3.10 checks before use)
                header = jwt.get_unverified_header(token)
                if REFUSED_HEADERS & header.keys():
                    raise AuthError("forbidden_header")
                key = self._select_key(header)
            else:
                key = self._keys[None]
            # One parse: header, signature and claims (the header is checked below, once verified).
            decoded = self._decoder.decode_complete(
                token,
                key,
                algorithms=[self._config.algorithm],  # pinned by config, never from the header
                issuer=self._config.issuer,
                audience=self._config.audience,
                leeway=self._config.leeway,
            )
        except (jwt.PyJWTError, TypeError, ValueError) as exc:  # dependencies.md §4: PyJWT also raises these
            # A refused header is the reason whatever else is wrong (an attack signal for the audit log).
            reason = "forbidden_header" if _has_key_reference(token) else _reason(exc)
            raise AuthError(reason) from None  # `from None`: the chain could quote the token
        if REFUSED_HEADERS & decoded["header"].keys():
            raise AuthError("forbidden_header")
        claims: dict[str, Any] = decoded["payload"]
        device_id = _id_claim(claims, "device_id")
        if device_id is None:
            raise AuthError("missing_claim")  # contract §1: device_id is required
        return VerifiedToken(
            user_id=_user_id(claims),
            device_id=device_id,
            device_type=_id_claim(claims, "device_type"),
            expires_at=float(claims["exp"]),
            token_hash=token_hash(token),
        )

    def _select_key(self, header: Mapping[str, Any]) -> Any:
        """The JWKS key the header's `kid` names (configs with `jwks_path` only)."""
        kid = header.get("kid")
        # RFC 8725 §3.10: the kid is untrusted input; it only ever indexes this in-memory dict.
        if not isinstance(kid, str) or kid not in self._keys:
            raise AuthError("unknown_kid")
        return self._keys[kid]


def mint_token(
    config: TokenConfig,
    user_id: str,
    device_id: str,
    ttl: float = 3600.0,
    device_type: str | None = None,
) -> str:
    """Sign a token that `TokenVerifier(config)` accepts: for the `whispr token` dev command and tests.

    Claims: `sub`, `device_id`, optional `device_type`, `iat`, `exp` = now + ttl, and `iss`/`aud`
    when configured. Synchronous, no I/O.

    Raises:
        TokenConfigError: the config is not HS256 with a valid secret (asymmetric deployments mint in
            the issuing service, which alone holds the private key), or `ttl` is not positive.
    """
    if config.algorithm != "HS256":
        raise TokenConfigError(f"minting needs algorithm HS256; {config.algorithm} tokens are minted by their issuer")
    _check_secret(config)
    if not ttl > 0:
        raise TokenConfigError(f"ttl must be positive, got {ttl!r}")
    now = int(time.time())
    claims: dict[str, Any] = {"sub": user_id, "device_id": device_id, "iat": now, "exp": now + math.ceil(ttl)}
    if device_type is not None:
        claims["device_type"] = device_type
    if config.issuer is not None:
        claims["iss"] = config.issuer
    if config.audience is not None:
        claims["aud"] = config.audience
    return jwt.encode(claims, config.secret, algorithm="HS256")


def _has_key_reference(token: str) -> bool:
    """Whether the token's (unverified) header carries one of `REFUSED_HEADERS`; False if unreadable."""
    try:
        return bool(REFUSED_HEADERS & jwt.get_unverified_header(token).keys())
    except (jwt.PyJWTError, TypeError, ValueError):
        return False


def _reason(exc: Exception) -> str:
    for kind, reason in _REASONS:
        if isinstance(exc, kind):
            return reason
    # Other PyJWT errors (e.g. an unsupported `crit` extension) are "invalid"; TypeError/ValueError
    # come from input PyJWT could not even parse (e.g. lone surrogates).
    return "invalid" if isinstance(exc, jwt.PyJWTError) else "malformed"


def _id_claim(claims: Mapping[str, Any], name: str) -> str | None:
    """The id in claim `name` as a string, or None when absent; AuthError when unusable."""
    value = claims.get(name)
    if value is None:
        return None
    # Ids are strings on the wire (contract §2); an integer id from the issuer is accepted as its digits.
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    # Printable only: ids are written into log lines (OWASP Logging: no log injection) and topics.
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID_CHARS or not value.isprintable():
        raise AuthError("bad_claims")
    return value


def _user_id(claims: Mapping[str, Any]) -> str:
    sub = _id_claim(claims, "sub")
    user_id = _id_claim(claims, "user_id")
    if sub is not None and user_id is not None and sub != user_id:
        raise AuthError("bad_claims")  # two different subjects in one token: refuse rather than guess
    chosen = sub if sub is not None else user_id
    if chosen is None:
        raise AuthError("missing_claim")
    return chosen


def _check_secret(config: TokenConfig) -> None:
    if len(config.secret) < MIN_SECRET_BYTES:
        raise TokenConfigError(
            f"the HS256 secret is {len(config.secret)} bytes; at least {MIN_SECRET_BYTES} random bytes are "
            "required (RFC 8725 §3.5). Generate one with: python -c 'import secrets; print(secrets.token_hex(32))'"
        )


def _load_keys(config: TokenConfig) -> dict[str | None, Any]:
    if config.algorithm not in ALGORITHMS:
        raise TokenConfigError(f"algorithm must be one of {', '.join(ALGORITHMS)}, got {config.algorithm!r}")
    if config.algorithm == "HS256":
        if config.public_key_pem is not None or config.jwks_path is not None:
            raise TokenConfigError("HS256 takes only `secret`; public keys need an asymmetric algorithm")
        _check_secret(config)
        return {None: _hmac_key(config.secret)}
    if config.secret:
        raise TokenConfigError(f"{config.algorithm} verifies with public keys; remove `secret`")
    if (config.public_key_pem is None) == (config.jwks_path is None):
        raise TokenConfigError(f"{config.algorithm} needs exactly one of `public_key_pem` or `jwks_path`")
    if config.public_key_pem is not None:
        try:
            key = serialization.load_pem_public_key(config.public_key_pem)
        except (ValueError, TypeError) as exc:
            raise TokenConfigError(f"public_key_pem is not a PEM public key: {exc}") from exc
        _check_key(config.algorithm, key, "public_key_pem")
        return {None: key}
    assert config.jwks_path is not None
    return _load_jwks(config.algorithm, config.jwks_path)


class _CheckedHmac(HMACAlgorithm):
    """HS256 whose one key was checked once, at startup.

    PyJWT checks an HMAC key on every decode (not PEM, SSH, DER or JWK-shaped JSON: a DER parse and a
    JSON decoder per token, a third of a verify); the configured secret never changes, so that check
    runs once here and `prepare_key` returns its result for that very key. Any other key gets the full
    check: nothing about what is verified changes, only how often an unchanging key is re-checked.
    """

    def __init__(self, key: bytes) -> None:
        super().__init__(HMACAlgorithm.SHA256)
        self._key = key
        self._prepared = super().prepare_key(key)

    def prepare_key(self, key: str | bytes) -> bytes:
        return self._prepared if key is self._key else super().prepare_key(key)


def _hmac_key(secret: bytes) -> jwt.PyJWK:
    """The HS256 secret as a key bound to HS256 (PyJWT then also refuses any other `alg`), checked once."""
    key = jwt.PyJWK({"kty": "oct", "k": base64.urlsafe_b64encode(secret).rstrip(b"=").decode()}, "HS256")
    key.Algorithm = _CheckedHmac(key.key)
    return key


def _load_jwks(algorithm: Algorithm, path: Path) -> dict[str | None, Any]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TokenConfigError(f"cannot read JWKS file {path}: {exc}") from exc
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise TokenConfigError(f"JWKS file {path} has no `keys` list")
    keys: dict[str | None, Any] = {}
    for entry in entries:
        kid = entry.get("kid") if isinstance(entry, dict) else None
        where = f"JWKS file {path}, key {kid!r}"
        if not isinstance(entry, dict) or not isinstance(kid, str) or not kid:
            raise TokenConfigError(f"JWKS file {path}: every key needs a string `kid`")
        if kid in keys:
            raise TokenConfigError(f"{where}: duplicate kid")
        if entry.get("alg", algorithm) != algorithm:
            raise TokenConfigError(f"{where}: alg {entry['alg']!r} differs from the configured {algorithm}")
        if entry.get("use", "sig") != "sig":
            raise TokenConfigError(f"{where}: use {entry['use']!r} is not `sig`")
        if "d" in entry:
            raise TokenConfigError(f"{where}: contains private key material; publish only public keys")
        try:
            jwk = jwt.PyJWK(entry, algorithm)
        except (jwt.PyJWTError, TypeError, ValueError) as exc:
            raise TokenConfigError(f"{where}: not a usable {algorithm} key: {exc}") from exc
        _check_key(algorithm, jwk.key, where)
        keys[kid] = jwk.key
    return keys


def _check_key(algorithm: Algorithm, key: object, where: str) -> None:
    """One key, one algorithm (RFC 8725 §3.1): refuse a key whose type cannot serve `algorithm`."""
    if algorithm == "RS256":
        ok = isinstance(key, rsa.RSAPublicKey) and key.key_size >= MIN_RSA_BITS
        wanted = f"an RSA public key of at least {MIN_RSA_BITS} bits"
    elif algorithm == "ES256":
        ok = isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)
        wanted = "an EC P-256 public key"
    else:
        ok = isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey)
        wanted = "an Ed25519 or Ed448 public key"
    if not ok:
        raise TokenConfigError(f"{where}: {algorithm} needs {wanted}, got {type(key).__name__}")
