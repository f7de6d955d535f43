"""Client IP behind trusted proxies (contract §1; reliability §1.10, B7, S12)."""

from __future__ import annotations

import pytest

from whispr.security.client_ip import ClientIpResolver

BEHIND_PROXY = ClientIpResolver(["10.0.0.0/8", "fd00::/8"])


def xff(value: str) -> dict[str, str]:
    return {"x-forwarded-for": value}


def test_direct_client_is_the_peer_whatever_it_claims() -> None:
    direct = ClientIpResolver()
    assert direct.resolve("203.0.113.7", xff("1.1.1.1")) == "203.0.113.7"
    assert BEHIND_PROXY.resolve("203.0.113.7", xff("10.0.0.1, 1.1.1.1")) == "203.0.113.7"


@pytest.mark.parametrize(
    ("header", "client"),
    [
        ("203.0.113.9", "203.0.113.9"),
        ("6.6.6.6, 203.0.113.9", "203.0.113.9"),  # spoofed left part is ignored
        ("6.6.6.6, 10.1.1.1, 203.0.113.9", "203.0.113.9"),  # even when it names a proxy
        ("6.6.6.6, 203.0.113.9, 10.0.0.5", "203.0.113.9"),  # two trusted proxies in a row
        (" 203.0.113.9 ,10.0.0.5 ", "203.0.113.9"),
        ("10.0.0.7, 10.0.0.5", "10.0.0.7"),  # all trusted: the furthest known hop
        ("", "10.0.0.2"),  # the proxy itself (health checks)
        ("unknown", "10.0.0.2"),  # not an IP: stop at the last trusted address
        ("203.0.113.9, garbage", "10.0.0.2"),
        ("203.0.113.9, 10.0.0.5, 1.2.3.4:5678", "10.0.0.2"),
        ("garbage, 203.0.113.9", "203.0.113.9"),
        ("2001:db8::1", "2001:db8::1"),
    ],
)
def test_right_most_untrusted_hop(header: str, client: str) -> None:
    assert BEHIND_PROXY.resolve("10.0.0.2", xff(header)) == client


def test_missing_header_from_proxy_is_the_proxy() -> None:
    assert BEHIND_PROXY.resolve("10.0.0.2", {}) == "10.0.0.2"


def test_ipv6_proxy_and_ipv4_mapped_addresses() -> None:
    assert BEHIND_PROXY.resolve("fd00::1", xff("198.51.100.4")) == "198.51.100.4"
    assert BEHIND_PROXY.resolve("::ffff:10.0.0.2", xff("198.51.100.4")) == "198.51.100.4"
    assert BEHIND_PROXY.resolve("::ffff:198.51.100.4", xff("1.1.1.1")) == "198.51.100.4"
    assert BEHIND_PROXY.resolve("10.0.0.2", xff("::ffff:198.51.100.4")) == "198.51.100.4"


def test_bad_configuration_and_bad_peer_raise() -> None:
    with pytest.raises(ValueError, match="does not appear to be"):
        ClientIpResolver(["10.0.0.0/33x"])
    with pytest.raises(ValueError, match="does not appear to be"):
        BEHIND_PROXY.resolve("not-an-ip", {})
