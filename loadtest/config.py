"""Run configuration shared by the parent (runner) and the worker processes."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

SCENARIOS = ("connect", "hold", "fanout", "rtt", "chat", "reconnect")
SECRET_ENV = "LOADTEST_TOKEN_SECRET"  # how the parent hands the HS256 secret to its workers (not argv)
MAX_SOURCE_IPS = 65_000
MAX_SOCKETS_PER_PROC = 15_000  # the per-process open-file limit is 20,000
MARKER_PLACEHOLDER = "{marker}"


@dataclass
class Config:
    scenario: str
    url: str = "ws://127.0.0.1:4000/socket"  # the socket base, as given to phoenix.js
    node_ports: list[int] = field(default_factory=list)  # more nodes on the url's host: sockets round-robin over all
    connections: int = 100  # connect: storm size; hold: idle connections; fanout: subscribers; rtt: C
    procs: int = 1
    source_ips: int = 8  # spread connections over N loopback addresses from source_base on (0: no explicit bind)
    source_base: int = 0  # the first source address is 127.0.0.1 + source_base (shift it between runs: per-IP limits)
    token: str | None = None  # query parameter `token`
    auth_token: str | None = None  # phoenix.js-style `authToken` (Sec-WebSocket-Protocol)
    params: dict[str, str] = field(default_factory=dict)  # more query parameters
    token_secret: str | None = None  # HS256 secret: mint one token per connection (sub, device_id, exp)
    user: str = "lt-u{i}"  # minted tokens' sub; {i} = connection index
    device: str = "lt-d{i}"  # minted tokens' device_id
    token_ttl: float = 3600.0
    publish_topic: str | None = None  # fanout: the topic the publisher joins and pushes to (default: topic of 0)
    publisher_user: str = "lt-pub"  # fanout: the publisher's sub (and device) with minted tokens
    groups_file: str | None = None  # JSON written by `python -m loadtest.seed`: the conversation of each index
    group_size: int = 10  # chat/reconnect/{conv}: connections i .. share conversation i // group_size
    conversations: list[str] = field(default_factory=list)  # read from groups_file
    request_payload: str = '{"n": {n}}'  # rtt: JSON template; {n} = request number, {marker} = unique id
    drop_fraction: float = 0.5  # reconnect: share of each conversation's members that drop
    reconnect_rate: float | None = None  # reconnect: the storm's connects per second (default: rate)
    topic: str = "room:lobby"  # `{i}` connection index, `{user}` its user, `{conv}` its conversation id
    join_params: dict[str, Any] = field(default_factory=dict)
    event: str = "ping"  # rtt: the pushed event; fanout: the event the publisher pushes
    payload: str = '{"body": "{marker}"}'  # JSON template; {marker} carries seq and send time
    rate: float = 500.0  # connects per second (all processes together)
    msg_rate: float = 10.0  # fanout: messages per second; chat/reconnect: aggregate send_message per second
    count: int = 0  # fanout: messages to publish; rtt: total requests (0: bounded by --duration only)
    duration: float = 10.0  # measured phase (s): hold / publishing / rtt / chat sending / reconnect outage
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

    def for_worker(self) -> str:
        """The JSON given to workers on their command line: without the secret (that goes by environment)."""
        d = {**dataclasses.asdict(self), "token_secret": None}
        if self.groups_file:
            d["conversations"] = []  # the worker reads the file itself (argv stays small)
        return json.dumps(d)

    def load_groups(self) -> None:
        """Read `groups_file` (if any) into `group_size` and `conversations`."""
        if self.groups_file and not self.conversations:
            with open(self.groups_file, encoding="utf-8") as f:
                data = json.load(f)
            self.group_size = int(data["group_size"])
            self.conversations = [str(c) for c in data["conversations"]]

    def secret_from_env(self) -> None:
        if self.token_secret is None and os.environ.get(SECRET_ENV):
            self.token_secret = os.environ[SECRET_ENV]

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

    def port_for(self, i: int) -> int:
        """The port connection i connects to: round-robin over the url's port and `node_ports`."""
        ports = [self.port, *self.node_ports]
        return ports[i % len(ports)]

    def target(self, token: str | None = None) -> str:
        """The request target: `<base path>/websocket?...&vsn=2.0.0` (what phoenix.js sends)."""
        parts = urlsplit(self.url)
        query: dict[str, str] = dict(self.params)
        token = token if token is not None else self.token
        if token is not None:
            query["token"] = token
        query["vsn"] = "2.0.0"
        return f"{parts.path.rstrip('/')}/websocket?{urlencode(query)}"

    def subprotocols(self) -> tuple[str, ...]:
        if self.auth_token is None:
            return ()
        import base64

        b64 = base64.b64encode(self.auth_token.encode()).decode().rstrip("=")
        return ("phoenix", "base64url.bearer.phx." + b64)

    def user_for(self, i: int) -> str:
        return self.user.replace("{i}", str(i))

    def device_for(self, i: int) -> str:
        return self.device.replace("{i}", str(i))

    def conv_for(self, i: int) -> str:
        g = i // self.group_size
        if not self.conversations:
            return str(g)
        if g >= len(self.conversations):
            raise ValueError(f"connection {i} has no conversation: the groups file has {len(self.conversations)}")
        return self.conversations[g]

    def topic_for(self, i: int) -> str:
        t = self.topic.replace("{i}", str(i)).replace("{user}", self.user_for(i))
        return t.replace("{conv}", self.conv_for(i)) if "{conv}" in t else t

    def topics_for(self, i: int) -> list[str]:
        """What connection i joins: chat/reconnect join `user:<id>` and `conversation:<id>`."""
        if self.scenario in ("chat", "reconnect"):
            return [f"user:{self.user_for(i)}", f"conversation:{self.conv_for(i)}"]
        return [self.topic_for(i)]

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
        if any(not 0 < p < 65536 for p in self.node_ports):
            raise ValueError("--node-port must be a TCP port (1-65535)")
        if self.connections < 1 or self.procs < 1:
            raise ValueError("--connections and --procs must be at least 1")
        per_proc = -(-self.connections // self.procs)
        if per_proc > MAX_SOCKETS_PER_PROC:
            need = -(-self.connections // MAX_SOCKETS_PER_PROC)
            raise ValueError(
                f"{per_proc} sockets per process is over {MAX_SOCKETS_PER_PROC}: use --procs {need} or more"
            )
        if not 0 <= self.source_ips <= MAX_SOURCE_IPS or not 0 <= self.source_base <= 16_000_000:
            raise ValueError(f"--source-ips must be between 0 and {MAX_SOURCE_IPS}")
        if self.scenario in ("chat", "reconnect"):
            if self.token_secret is None:
                raise ValueError(f"{self.scenario} needs per-user tokens: --token-secret or --secret-file")
            if self.group_size < 2 or self.connections % self.group_size:
                raise ValueError(f"{self.scenario}: -n must be a multiple of the group size ({self.group_size}, ≥ 2)")
            if self.procs > 1 and (self.connections // self.group_size) % self.procs:
                raise ValueError(
                    f"{self.scenario}: the {self.connections // self.group_size} conversations must split evenly over --procs"
                )
        if not 0 <= self.drop_fraction <= 1:
            raise ValueError("--drop-fraction must be within 0..1")
        if self.conversations and -(-self.connections // self.group_size) > len(self.conversations):
            raise ValueError(
                f"the groups file has {len(self.conversations)} conversations: too few for -n {self.connections}"
            )
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
        if self.source_ips == 0:
            return None
        return self.source_addr(i % self.source_ips)

    def source_addr(self, k: int) -> str:
        """The k-th source address: 127.0.0.1 + source_base + k (all of 127.0.0.0/8 is loopback)."""
        return str(ipaddress.IPv4Address("127.0.0.1") + self.source_base + k)
