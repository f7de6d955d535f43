"""Origin check at the upgrade: the defence against cross-site WebSocket hijacking.

Rules (contract §1; reliability S1; OWASP WebSocket cheat sheet, CWE-1385):
- An Origin, when present, must equal an allow-listed origin exactly, compared as the RFC 6454
  tuple (scheme, host, port) with the default port made explicit. No wildcards, no substring or
  suffix matching: `https://whispr.app.evil.example` is not `https://whispr.app`.
- No Origin header at all is allowed: native clients send none (contract §1 wins over
  reliability S1, which would refuse it).
- `null` (sandboxed iframes, `file:` pages, some redirects) and anything that is not a bare
  `scheme://host[:port]` are refused.
- Dev mode also allows http(s) on `localhost` and `127.0.0.1`, any port.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

DEFAULT_PORTS = {"http": 80, "https": 443}
DEV_HOSTS = frozenset({"localhost", "127.0.0.1"})

Origin = tuple[str, str, int]


class OriginPolicy:
    """The allow-list. Construction validates it; `allows` is pure and cheap.

    Raises (constructor):
        ValueError: an allow-list entry is not a bare `http(s)://host[:port]` origin (e.g. has a
            path, a trailing slash or a wildcard); the message names it.
    """

    def __init__(self, allowed: Iterable[str] = ("https://whispr.app", "https://api.whispr.app"), dev: bool = False):
        parsed: set[Origin] = set()
        for entry in allowed:
            origin = parse_origin(entry)
            if origin is None:
                raise ValueError(f"allowed origin {entry!r} is not of the form scheme://host[:port]")
            parsed.add(origin)
        self._allowed = frozenset(parsed)
        self._dev = dev

    def allows(self, origin: str | None) -> bool:
        """Whether a handshake with this `Origin` header value (None: no header) may upgrade."""
        if origin is None:
            return True  # contract §1: native clients send no Origin
        parsed = parse_origin(origin)
        if parsed is None:
            return False  # includes `null` (RFC 6454 §7.3)
        return parsed in self._allowed or (self._dev and parsed[1] in DEV_HOSTS)


def parse_origin(value: str) -> Origin | None:
    """`scheme://host[:port]` as (scheme, host, port), lower-cased with the default port filled in.

    None for anything else: `null`, paths (even `/`), queries, fragments, userinfo, non-http(s)
    schemes, bad ports.
    """
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname
    if scheme not in DEFAULT_PORTS or not host or "*" in host:
        return None
    if parts.path or parts.query or parts.fragment or "?" in value or "#" in value or "@" in parts.netloc:
        return None
    return scheme, host, DEFAULT_PORTS[scheme] if port is None else port
