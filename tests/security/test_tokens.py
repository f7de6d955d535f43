"""The JWT battery (reliability C1, S3–S6; RFC 8725)."""

from __future__ import annotations

import builtins
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, HMACAlgorithm, OKPAlgorithm, RSAAlgorithm

from tests.jwt_factory import raw_token
from tests.security.conftest import AUDIENCE, ISSUER, SECRET, claims, hs256
from whispr.security.tokens import (
    AuthError,
    TokenConfig,
    TokenConfigError,
    TokenVerifier,
    VerifiedToken,
    mint_token,
    token_hash,
)

ASYMMETRIC = ["RS256", "ES256", "EdDSA"]


def refused(verifier: TokenVerifier, token: str | None) -> str:
    with pytest.raises(AuthError) as info:
        verifier.verify(token)
    return info.value.reason


def public_pem(private_key: Any) -> bytes:
    return bytes(
        private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def to_jwk(algorithm: str, public_key: Any) -> dict[str, Any]:
    kinds: dict[str, Any] = {"RS256": RSAAlgorithm, "ES256": ECAlgorithm, "EdDSA": OKPAlgorithm}
    jwk: dict[str, Any] = kinds[algorithm].to_jwk(public_key, as_dict=True)
    return jwk


def write_jwks(tmp_path: Path, *entries: dict[str, Any]) -> Path:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": list(entries)}))
    return path


# --- accepted -------------------------------------------------------------------------------


def test_valid_hs256_token_gives_identity(hs_config: TokenConfig) -> None:
    payload = claims(device_type="ios")
    token = hs256(payload)
    identity = TokenVerifier(hs_config).verify(token)
    assert identity == VerifiedToken("alice", "phone-1", "ios", float(payload["exp"]), token_hash(token))


def test_user_id_claim_is_accepted_and_stringified(hs_config: TokenConfig) -> None:
    identity = TokenVerifier(hs_config).verify(hs256(claims(sub=None, user_id=42, device_id=7)))
    assert (identity.user_id, identity.device_id, identity.device_type) == ("42", "7", None)


def test_iss_and_aud_are_optional_when_not_configured() -> None:
    token = hs256(claims(iss=None, aud=None))
    assert TokenVerifier(TokenConfig(secret=SECRET)).verify(token).user_id == "alice"


def test_expired_within_the_30s_leeway_is_accepted(hs_config: TokenConfig) -> None:
    token = hs256(claims(exp=int(time.time()) - 25))
    assert TokenVerifier(hs_config).verify(token).user_id == "alice"


def test_mint_token_round_trips(hs_config: TokenConfig) -> None:
    before = time.time()
    identity = TokenVerifier(hs_config).verify(mint_token(hs_config, "bob", "laptop", ttl=60, device_type="web"))
    assert (identity.user_id, identity.device_id, identity.device_type) == ("bob", "laptop", "web")
    assert before + 59 <= identity.expires_at <= time.time() + 61


# --- refused: algorithm and signature ----------------------------------------------------------


def test_alg_none_is_refused(hs_config: TokenConfig) -> None:
    token = raw_token({"alg": "none", "typ": "JWT"}, claims(), key=None)
    assert refused(TokenVerifier(hs_config), token) == "bad_algorithm"


def test_hs256_signed_with_the_rsa_public_pem_is_refused(private_keys: dict[str, Any]) -> None:
    pem = public_pem(private_keys["RS256"])
    verifier = TokenVerifier(TokenConfig(algorithm="RS256", public_key_pem=pem))
    token = raw_token({"alg": "HS256", "typ": "JWT"}, claims(), key=pem)  # the classic confusion attack
    assert refused(verifier, token) == "bad_algorithm"


def test_rs256_token_against_hs256_config_is_refused(hs_config: TokenConfig, private_keys: dict[str, Any]) -> None:
    token = jwt.encode(claims(), private_keys["RS256"], algorithm="RS256")
    assert refused(TokenVerifier(hs_config), token) == "bad_algorithm"


def test_tampered_payload_is_refused(hs_config: TokenConfig) -> None:
    header, _, signature = hs256(claims()).split(".")
    forged = raw_token({}, claims(sub="mallory"), key=None).split(".")[1]
    assert refused(TokenVerifier(hs_config), f"{header}.{forged}.{signature}") == "bad_signature"


def test_wrong_secret_is_refused(hs_config: TokenConfig) -> None:
    assert refused(TokenVerifier(hs_config), hs256(claims(), key=b"x" * 40)) == "bad_signature"


# --- refused: claims -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (claims(exp=None), "missing_claim"),  # PyJWT accepts this unless `require` names exp
        (claims(exp=int(time.time()) - 35), "expired"),  # past the 30 s leeway
        (claims(aud="someone-else"), "bad_audience"),
        (claims(aud=None), "missing_claim"),
        (claims(iss="https://evil.example"), "bad_issuer"),
        (claims(iss=None), "missing_claim"),
        # An hour ahead: these parameters are built at collection, possibly minutes before the test runs.
        (claims(nbf=int(time.time()) + 3600), "not_yet_valid"),
        (claims(iat=int(time.time()) + 3600), "not_yet_valid"),
        (claims(device_id=None), "missing_claim"),
        (claims(sub=None), "missing_claim"),
        (claims(sub=None, user_id=""), "bad_claims"),
        (claims(sub=None, user_id=True), "bad_claims"),
        (claims(user_id="bob"), "bad_claims"),  # sub and user_id disagree
        (claims(device_id="phone\nevent=revocation"), "bad_claims"),  # log injection
        (claims(device_id="x" * 256), "bad_claims"),
        (claims(device_type=["ios"]), "bad_claims"),
        (claims(sub=123), "bad_claims"),  # RFC 7519 §4.1.2: sub is a string
    ],
)
def test_bad_claims_are_refused(hs_config: TokenConfig, payload: dict[str, Any], reason: str) -> None:
    assert refused(TokenVerifier(hs_config), hs256(payload)) == reason


def test_audience_in_token_but_none_configured_is_refused() -> None:
    # RFC 7519 §4.1.3: a recipient that does not identify with `aud` must reject the token.
    assert refused(TokenVerifier(TokenConfig(secret=SECRET)), hs256(claims(iss=None))) == "bad_audience"


# --- refused: headers and garbage ----------------------------------------------------------------


@pytest.mark.parametrize("header", ["jku", "x5u", "jwk", "x5c"])
def test_key_reference_headers_are_refused(hs_config: TokenConfig, header: str) -> None:
    token = hs256(claims(), headers={header: "https://evil.example/keys.json"})
    assert refused(TokenVerifier(hs_config), token) == "forbidden_header"


@pytest.mark.parametrize("damage", ["forged", "expired"])
def test_a_key_reference_header_is_the_reason_whatever_else_is_wrong(hs_config: TokenConfig, damage: str) -> None:
    # The header is checked after the one parse that verifies the token; a token that also fails
    # verification is still audited as carrying a key reference.
    key, exp = (b"another-secret-of-at-least-32-bytes!", None) if damage == "forged" else (SECRET, time.time() - 600)
    token = hs256(claims(**({"exp": exp} if exp else {})), key=key, headers={"jku": "https://evil.example/jwks.json"})
    assert refused(TokenVerifier(hs_config), token) == "forbidden_header"


def test_the_hs256_secret_is_checked_once_not_per_token(
    hs_config: TokenConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = [hs256(claims()) for _ in range(3)]  # signed first: signing checks the key too
    forged = hs256(claims(), key=b"another-secret-of-at-least-32-bytes!")
    checks: list[bytes] = []
    full_check = HMACAlgorithm.prepare_key

    def counted(self: HMACAlgorithm, key: str | bytes) -> bytes:
        checks.append(bytes(key, "utf-8") if isinstance(key, str) else key)
        return full_check(self, key)

    monkeypatch.setattr(HMACAlgorithm, "prepare_key", counted)
    verifier = TokenVerifier(hs_config)
    assert checks == [SECRET]
    for token in tokens:
        verifier.verify(token)
    assert checks == [SECRET]  # the startup check only
    assert refused(verifier, forged) == "bad_signature"


def test_jku_pointing_at_a_local_server_gets_no_hit(hs_config: TokenConfig) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.setblocking(False)
        port = server.getsockname()[1]
        token = hs256(claims(), headers={"jku": f"http://127.0.0.1:{port}/jwks.json", "kid": "k1"})
        assert refused(TokenVerifier(hs_config), token) == "forbidden_header"
        with pytest.raises(BlockingIOError):
            server.accept()  # nobody connected


def test_unknown_critical_header_is_refused(hs_config: TokenConfig) -> None:
    token = hs256(claims(), headers={"crit": ["exp-v2"], "exp-v2": 1})
    assert refused(TokenVerifier(hs_config), token) == "invalid"


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (None, "missing_token"),
        ("", "missing_token"),
        ("garbage", "malformed"),
        ("a.b.c", "malformed"),
        ("eyJhbGciOiJIUzI1NiJ9.bm90IGpzb24.c2ln", "bad_signature"),
        ("x" * 9000, "malformed"),
        ("\udcff.\x00.\u2028", "malformed"),
    ],
)
def test_garbage_is_refused(hs_config: TokenConfig, token: str | None, reason: str) -> None:
    assert refused(TokenVerifier(hs_config), token) == reason


def test_auth_error_does_not_chain_the_pyjwt_exception(hs_config: TokenConfig) -> None:
    with pytest.raises(AuthError) as info:
        TokenVerifier(hs_config).verify(hs256(claims(exp=1)))
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


# --- asymmetric keys: PEM and JWKS by kid ---------------------------------------------------------


@pytest.mark.parametrize("algorithm", ASYMMETRIC)
def test_jwks_selects_the_key_by_kid(tmp_path: Path, private_keys: dict[str, Any], algorithm: str) -> None:
    other: Any = {
        "RS256": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ES256": lambda: ec.generate_private_key(ec.SECP256R1()),
        "EdDSA": ed25519.Ed25519PrivateKey.generate,
    }[algorithm]()
    jwks = write_jwks(
        tmp_path,
        {**to_jwk(algorithm, private_keys[algorithm].public_key()), "kid": "current", "use": "sig"},
        {**to_jwk(algorithm, other.public_key()), "kid": "previous", "alg": algorithm},
    )
    verifier = TokenVerifier(TokenConfig(algorithm=algorithm, jwks_path=jwks, issuer=ISSUER, audience=AUDIENCE))  # type: ignore[arg-type]

    def sign(key: Any, **headers: Any) -> str:
        return jwt.encode(claims(), key, algorithm=algorithm, headers=headers)

    assert verifier.verify(sign(private_keys[algorithm], kid="current")).user_id == "alice"
    assert verifier.verify(sign(other, kid="previous")).user_id == "alice"
    assert refused(verifier, sign(other, kid="current")) == "bad_signature"
    assert refused(verifier, sign(private_keys[algorithm], kid="retired")) == "unknown_kid"
    assert refused(verifier, sign(private_keys[algorithm])) == "unknown_kid"  # no kid at all


@pytest.mark.parametrize("algorithm", ASYMMETRIC)
def test_single_pem_key(private_keys: dict[str, Any], algorithm: str) -> None:
    verifier = TokenVerifier(TokenConfig(algorithm=algorithm, public_key_pem=public_pem(private_keys[algorithm])))  # type: ignore[arg-type]
    token = jwt.encode(claims(iss=None, aud=None), private_keys[algorithm], algorithm=algorithm)
    assert verifier.verify(token).device_id == "phone-1"


@pytest.mark.parametrize("kid", ["../../etc/passwd", "' OR 1=1--", "/dev/zero", "file:///etc/shadow"])
def test_hostile_kid_is_only_a_dict_lookup(
    tmp_path: Path, private_keys: dict[str, Any], monkeypatch: pytest.MonkeyPatch, kid: str
) -> None:
    jwks = write_jwks(tmp_path, {**to_jwk("EdDSA", private_keys["EdDSA"].public_key()), "kid": "k1"})
    verifier = TokenVerifier(TokenConfig(algorithm="EdDSA", jwks_path=jwks))
    opened: list[object] = []

    def spy(*args: object, **kwargs: object) -> object:
        opened.append(args[0])
        raise AssertionError("verification touched the file system")

    monkeypatch.setattr(builtins, "open", spy)
    monkeypatch.setattr(os, "open", spy)
    token = jwt.encode(claims(iss=None, aud=None), private_keys["EdDSA"], algorithm="EdDSA", headers={"kid": kid})
    assert refused(verifier, token) == "unknown_kid"
    assert opened == []


# --- configuration refused at startup ------------------------------------------------------------


def test_short_hs256_secret_is_refused_at_construction() -> None:
    with pytest.raises(TokenConfigError, match="31 bytes; at least 32"):
        TokenVerifier(TokenConfig(secret=b"s" * 31))
    assert TokenVerifier(TokenConfig(secret=b"s" * 32))  # exactly 32 is enough


def test_default_config_without_secret_is_refused() -> None:
    with pytest.raises(TokenConfigError, match="0 bytes"):
        TokenVerifier(TokenConfig())


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (TokenConfig(algorithm="HS512", secret=SECRET), "algorithm must be one of"),  # type: ignore[arg-type]
        (TokenConfig(algorithm="RS256"), "exactly one of"),
        (TokenConfig(algorithm="RS256", secret=SECRET), "remove `secret`"),
        (TokenConfig(secret=SECRET, public_key_pem=b"x"), "HS256 takes only `secret`"),
        (TokenConfig(algorithm="ES256", public_key_pem=b"not a pem"), "not a PEM public key"),
    ],
)
def test_unusable_configs_are_refused(config: TokenConfig, message: str) -> None:
    with pytest.raises(TokenConfigError, match=message):
        TokenVerifier(config)


def test_key_of_the_wrong_type_is_refused(private_keys: dict[str, Any]) -> None:
    with pytest.raises(TokenConfigError, match=r"ES256 needs an EC P-256 public key, got .*RSA"):
        TokenVerifier(TokenConfig(algorithm="ES256", public_key_pem=public_pem(private_keys["RS256"])))
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(TokenConfigError, match="P-256"):
        TokenVerifier(TokenConfig(algorithm="ES256", public_key_pem=public_pem(p384)))
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(TokenConfigError, match="at least 2048 bits"):
        TokenVerifier(TokenConfig(algorithm="RS256", public_key_pem=public_pem(weak)))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"alg": "RS512"}, "differs from the configured RS256"),
        ({"use": "enc"}, "is not `sig`"),
        ({"d": "c2VjcmV0"}, "private key material"),
        ({"kid": None}, "string `kid`"),
        (to_jwk("RS256", rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()), "2048 bits"),
    ],
)
def test_bad_jwks_entries_are_refused(
    tmp_path: Path, private_keys: dict[str, Any], change: dict[str, Any], message: str
) -> None:
    entry = {**to_jwk("RS256", private_keys["RS256"].public_key()), "kid": "k1", **change}
    jwks = write_jwks(tmp_path, {key: value for key, value in entry.items() if value is not None})
    with pytest.raises(TokenConfigError, match=message):
        TokenVerifier(TokenConfig(algorithm="RS256", jwks_path=jwks))


def test_duplicate_kid_and_missing_file_are_refused(tmp_path: Path, private_keys: dict[str, Any]) -> None:
    entry = {**to_jwk("EdDSA", private_keys["EdDSA"].public_key()), "kid": "k1"}
    with pytest.raises(TokenConfigError, match="duplicate kid"):
        TokenVerifier(TokenConfig(algorithm="EdDSA", jwks_path=write_jwks(tmp_path, entry, entry)))
    with pytest.raises(TokenConfigError, match="cannot read JWKS file"):
        TokenVerifier(TokenConfig(algorithm="EdDSA", jwks_path=tmp_path / "absent.json"))
    (tmp_path / "empty.json").write_text('{"keys": []}')
    with pytest.raises(TokenConfigError, match="no `keys` list"):
        TokenVerifier(TokenConfig(algorithm="EdDSA", jwks_path=tmp_path / "empty.json"))


def test_mint_token_refuses_what_it_cannot_sign(private_keys: dict[str, Any]) -> None:
    with pytest.raises(TokenConfigError, match="at least 32"):
        mint_token(TokenConfig(secret=b"short"), "u", "d")
    with pytest.raises(TokenConfigError, match="minted by their issuer"):
        mint_token(TokenConfig(algorithm="EdDSA", public_key_pem=public_pem(private_keys["EdDSA"])), "u", "d")
    with pytest.raises(TokenConfigError, match="ttl must be positive"):
        mint_token(TokenConfig(secret=SECRET), "u", "d", ttl=0)


def test_token_hash_is_short_stable_and_not_the_token() -> None:
    token = hs256(claims())
    assert token_hash(token) == token_hash(token)
    assert len(token_hash(token)) == 16
    assert token_hash(token) not in token
    assert token_hash(token) != token_hash(token + "x")
