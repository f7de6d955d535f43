"""Origin allow-list (contract §1; reliability S1)."""

from __future__ import annotations

import pytest

from whispr.security.origin import OriginPolicy, parse_origin

POLICY = OriginPolicy(["https://whispr.app", "https://api.whispr.app", "https://staging.whispr.app:8443"])


@pytest.mark.parametrize(
    "origin",
    [
        None,  # native clients send no Origin (contract §1)
        "https://whispr.app",
        "https://api.whispr.app",
        "https://WHISPR.app",  # hosts are case-insensitive
        "https://whispr.app:443",  # the default port, spelled out
        "https://staging.whispr.app:8443",
    ],
)
def test_allowed(origin: str | None) -> None:
    assert POLICY.allows(origin)


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example",
        "https://whispr.app.evil.example",  # suffix trick
        "https://evilwhispr.app",
        "https://sub.whispr.app",  # no wildcards
        "null",  # sandboxed iframes, file: pages
        "http://whispr.app",  # scheme differs
        "https://whispr.app:8443",  # port differs
        "https://staging.whispr.app",  # port differs (443 vs 8443)
        "https://whispr.app/",
        "https://whispr.app/path",
        "https://user@whispr.app",
        "https://whispr.app?x=1",
        "https://whispr.app#x",
        "wss://whispr.app",
        "whispr.app",
        "",
        "https://whispr.app:99999",
        "https://localhost:3000",  # dev hosts only in dev mode
        "http://127.0.0.1:8080",
    ],
)
def test_refused(origin: str) -> None:
    assert not POLICY.allows(origin)


def test_dev_mode_allows_localhost_on_any_port() -> None:
    dev = OriginPolicy(["https://whispr.app"], dev=True)
    for origin in ["http://localhost:3000", "http://127.0.0.1:5173", "https://localhost", "https://whispr.app"]:
        assert dev.allows(origin), origin
    for origin in ["http://localhost.evil.example:3000", "http://127.0.0.2:3000", "null", "https://evil.example"]:
        assert not dev.allows(origin), origin


@pytest.mark.parametrize("entry", ["https://*.whispr.app", "https://whispr.app/", "whispr.app", "null", "*"])
def test_malformed_allow_list_entries_are_refused(entry: str) -> None:
    with pytest.raises(ValueError, match="is not of the form"):
        OriginPolicy([entry])


def test_parse_origin_canonicalises() -> None:
    assert parse_origin("HTTPS://Whispr.App") == ("https", "whispr.app", 443)
    assert parse_origin("http://[::1]:8080") == ("http", "::1", 8080)
