"""Run configuration shared by the parent (runner) and the worker processes."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

SCENARIOS = ("connect", "hold", "fanout", "rtt")
MAX_SOCKETS_PER_PROC = 15_000  # the per-process open-file limit is 20,000
MARKER_PLACEHOLDER = "{marker}"


@dataclass
class Config:
    scenario: str
    url: str = "ws://127.0.0.1:4000/socket"  # the socket base, as given to phoenix.js
    connections: int = 100  # connect: storm size; hold: idle connections; fanout: subscribers; rtt: C
    procs: int = 1
    source_ips: int = 8  # spread connections over 127.0.0.1 .. 127.0.0.N (0: no explicit bind)
    token: str | None = None  # query parameter `token`
    auth_token: str | None = None  # phoenix.js-style `authToken` (Sec-WebSocket-Protocol)
    params: dict[str, str] = field(default_factory=dict)  # more query parameters
    topic: str = "room:lobby"  # `{i}` is replaced by the connection index
    join_params: dict[str, Any] = field(default_factory=dict)
    event: str = "ping"  # rtt: the pushed event; fanout: the event the publisher pushes
    payload: str = '{"body": "{marker}"}'  # JSON template; {marker} carries seq and send time
    rate: float = 500.0  # connects per second (all processes together)
    msg_rate: float = 10.0  # fanout: messages per second
    count: int = 0  # fanout: messages to publish; rtt: total requests (0: bounded by --duration only)
    duration: float = 10.0  # the measured phase (s): hold time / max publishing time / rtt run time
    ramp_timeout: float | None = None  # how long the connect phase may take (default: N/rate + 10 s)
    drain: float = 5.0  # fanout: how long to wait for deliveries after the last send
    connect_timeout: float = 10.0  # per connection: TCP + upgrade + join
    request_timeout: float = 10.0  # rtt: per request
    heartbeat: float = 30.0  # Phoenix heartbeat interval of idle connections
    server_pid: int | None = None
    trigger_url: str | None = None  # fanout: POST this URL instead of pushing over a WebSocket
    trigger_body: str = '{"body": "{marker}"}'
    trigger_headers: list[str] = field(default_factory=list)  # "Name: value"
    progress_interval: float = 1.0
    out: str | None = None
    plot: str | None = None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Config:
        return cls(**json.loads(text))

    # --- derived -------------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (443 if parts.scheme == "wss" else 80)

    def target(self) -> str:
        """The request target: `<base path>/websocket?...&vsn=2.0.0` (what phoenix.js sends)."""
        parts = urlsplit(self.url)
        query: dict[str, str] = dict(self.params)
        if self.token is not None:
            query["token"] = self.token
        query["vsn"] = "2.0.0"
        return f"{parts.path.rstrip('/')}/websocket?{urlencode(query)}"

    def subprotocols(self) -> tuple[str, ...]:
        if self.auth_token is None:
            return ()
        import base64

        b64 = base64.b64encode(self.auth_token.encode()).decode().rstrip("=")
        return ("phoenix", "base64url.bearer.phx." + b64)

    def topic_for(self, i: int) -> str:
        return self.topic.replace("{i}", str(i))

    def effective_ramp_timeout(self) -> float:
        if self.ramp_timeout is not None:
            return self.ramp_timeout
        return self.connections / max(self.rate, 1e-9) + self.connect_timeout + 5.0

    def validate(self) -> None:
        if self.scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {self.scenario!r}; choose one of {', '.join(SCENARIOS)}")
        if urlsplit(self.url).scheme != "ws":
            raise ValueError("only ws:// URLs are supported (loopback load tests)")
        if not self.host.startswith("127."):
            raise ValueError("load tests target loopback only (127.0.0.0/8)")
        if self.connections < 1 or self.procs < 1:
            raise ValueError("--connections and --procs must be at least 1")
        per_proc = -(-self.connections // self.procs)
        if per_proc > MAX_SOCKETS_PER_PROC:
            need = -(-self.connections // MAX_SOCKETS_PER_PROC)
            raise ValueError(
                f"{per_proc} sockets per process is over {MAX_SOCKETS_PER_PROC}: use --procs {need} or more"
            )
        if not 0 <= self.source_ips <= 254:
            raise ValueError("--source-ips must be between 0 and 254")
        if self.duration <= 0 or self.rate <= 0 or self.msg_rate <= 0:
            raise ValueError("--duration, --rate and --msg-rate must be positive")
        if self.scenario == "fanout" and MARKER_PLACEHOLDER not in (
            self.trigger_body if self.trigger_url else self.payload
        ):
            raise ValueError("the fanout payload/trigger body must contain {marker}")

    def shares(self) -> list[tuple[int, int]]:
        """(first connection index, count) for each worker process."""
        base, extra = divmod(self.connections, self.procs)
        out, first = [], 0
        for w in range(self.procs):
            n = base + (1 if w < extra else 0)
            out.append((first, n))
            first += n
        return out

    def source_for(self, i: int) -> str | None:
        return None if self.source_ips == 0 else f"127.0.0.{1 + i % self.source_ips}"
