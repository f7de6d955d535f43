"""The client IP that per-IP limits and audit records key on.

Rules (contract §1; reliability §1.10 and S12):
- The TCP peer is the client, unless the peer is a configured trusted proxy.
- Behind trusted proxies, walk `X-Forwarded-For` from the right, skipping trusted hops; the first
  untrusted hop is the client. Every hop to its right was appended by a proxy we trust, so it
  cannot be forged; everything to its left was sent by the client and is never believed
  (the left-most-hop mistake behind CVE-2020-28483; see adam-p.ca/blog/2022/03/x-forwarded-for).
- A hop that is not an IP address ends the walk: the last trusted address is returned, so a
  malformed header can never turn into a client-chosen key.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ClientIpResolver:
    """Resolves the client IP of an upgrade request. Pure; no I/O.

    Raises (constructor):
        ValueError: a trusted-proxy entry is not an IP address or CIDR network.
    """

    def __init__(self, trusted_proxies: Iterable[str] = ()) -> None:
        self._trusted: tuple[Network, ...] = tuple(ipaddress.ip_network(cidr, strict=False) for cidr in trusted_proxies)

    def resolve(self, peer_host: str, headers: Mapping[str, str]) -> str:
        """The client IP as text, from the TCP peer address and the lower-cased request headers.

        Raises:
            ValueError: `peer_host` is not an IP address (a transport bug, not client input).
        """
        client = _normalise(ipaddress.ip_address(peer_host))
        if not self._is_trusted(client):
            return str(client)
        for hop in reversed(headers.get("x-forwarded-for", "").split(",")):
            try:
                address = _normalise(ipaddress.ip_address(hop.strip()))
            except ValueError:
                break  # not written by a proxy we trust: stop at the last trusted address
            client = address
            if not self._is_trusted(address):
                break
        return str(client)

    def _is_trusted(self, address: Address) -> bool:
        return any(address in network for network in self._trusted)


def _normalise(address: Address) -> Address:
    """An IPv4-mapped IPv6 peer (`::ffff:203.0.113.7`, dual-stack sockets) is its IPv4 address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
