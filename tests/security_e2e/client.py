"""Raw Phoenix V2 clients for end-to-end security tests against a real node.

The clients are `websockets` 17 synchronous connections, bound to a chosen loopback source address
(`127.0.0.N`) so per-IP limits can be exercised. Their I/O runs in worker threads
(`in_thread`), so every wait is bounded by a real-time timeout whatever Trio's clock does (the
tests freeze or jump a `MockClock` to make rate limits deterministic).

Nothing here sleeps to synchronise: a client waits for the frame it expects, or for the close.
"""

from __future__ import annotations

import functools
import json
import logging
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlencode

import trio
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

T = TypeVar("T")

TIMEOUT = 10.0  # real seconds: the bound on any single wait
USER_AGENT = "whispr-e2e/1"
CONTROL_IPS = tuple(f"127.0.0.{200 + i}" for i in range(5))

# The clients' own debug logs quote the request URI (and so the token): keep them out of caplog,
# whose captures must only hold what the node logs.
_CLIENT_LOG = logging.getLogger("e2e.client")
_CLIENT_LOG.disabled = True

_THREADS = trio.CapacityLimiter(200)  # client threads never starve the store's worker threads


async def in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking client call in a worker thread (abandoned if the test is cancelled)."""
    return await trio.to_thread.run_sync(
        functools.partial(fn, *args, **kwargs), limiter=_THREADS, abandon_on_cancel=True
    )


@dataclass
class Refused:
    """An upgrade answered with an HTTP error: no WebSocket was opened."""

    status: int
    headers: dict[str, str]
    body: bytes


def ws_url(port: int, token: str | None, vsn: str = "2.0.0", extra: dict[str, str] | None = None) -> str:
    query = {"vsn": vsn, **({"token": token} if token is not None else {}), **(extra or {})}
    return f"ws://127.0.0.1:{port}/socket/websocket?{urlencode(query)}"


class Phx:
    """One Phoenix V2 socket. Blocking; not thread-safe (one thread at a time)."""

    def __init__(self, ws: ClientConnection, source: str) -> None:
        self.ws = ws
        self.source = source
        self._ref = 0
        self.inbox: list[list[Any]] = []  # frames read while waiting for something else
        self.join_refs: dict[str, str] = {}
        self.close_code: int | None = None

    # -- connecting ------------------------------------------------------------------------

    @classmethod
    def connect(
        cls,
        port: int,
        token: str | None,
        *,
        source: str = "127.0.0.1",
        origin: str | None = None,
        headers: dict[str, str] | None = None,
        vsn: str = "2.0.0",
    ) -> Phx:
        """Open a socket, or raise `RefusedError` carrying the HTTP refusal."""
        try:
            ws = connect(
                ws_url(port, token, vsn),
                source_address=(source, 0),
                origin=origin,  # type: ignore[arg-type]
                additional_headers=headers,
                compression=None,
                open_timeout=TIMEOUT,
                close_timeout=TIMEOUT,
                ping_interval=None,
                max_size=None,
                max_queue=None,
                logger=_CLIENT_LOG,
                user_agent_header=USER_AGENT,
                legacy=True,  # a long-lived connection object, closed by `close()`
            )
        except InvalidStatus as exc:
            response = exc.response
            raise RefusedError(
                Refused(response.status_code, {k.lower(): v for k, v in response.headers.raw_items()}, response.body)
            ) from None
        return cls(ws, source)

    # -- frames ----------------------------------------------------------------------------

    def next_ref(self) -> str:
        self._ref += 1
        return str(self._ref)

    def send_frame(self, frame: list[Any]) -> None:
        self.ws.send(json.dumps(frame, ensure_ascii=False))

    def push(self, topic: str, event: str, payload: Any) -> str:
        ref = self.next_ref()
        self.send_frame([self.join_refs.get(topic), ref, topic, event, payload])
        return ref

    def _recv(self, timeout: float) -> list[Any]:
        try:
            data = self.ws.recv(timeout=timeout)
        except ConnectionClosed as exc:
            self.close_code = exc.rcvd.code if exc.rcvd is not None else None
            raise
        frame = json.loads(data)
        assert isinstance(frame, list), frame
        return frame

    def wait_for(self, match: Callable[[list[Any]], bool], timeout: float = TIMEOUT) -> list[Any]:
        """The first frame (buffered or new) that `match`es; others are buffered."""
        for i, frame in enumerate(self.inbox):
            if match(frame):
                del self.inbox[i]
                return frame
        while True:
            frame = self._recv(timeout)
            if match(frame):
                return frame
            self.inbox.append(frame)

    def reply(self, ref: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The `phx_reply` payload `{"status", "response"}` to push `ref`."""
        frame = self.wait_for(lambda f: f[3] == "phx_reply" and f[1] == ref, timeout)
        payload = frame[4]
        assert isinstance(payload, dict)
        return payload

    def call(self, topic: str, event: str, payload: Any, timeout: float = TIMEOUT) -> dict[str, Any]:
        return self.reply(self.push(topic, event, payload), timeout)

    def join(self, topic: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        ref = self.next_ref()
        self.send_frame([ref, ref, topic, "phx_join", params or {}])
        reply = self.reply(ref)
        if reply["status"] == "ok":
            self.join_refs[topic] = ref
        return reply

    def heartbeat(self) -> dict[str, Any]:
        return self.call("phoenix", "heartbeat", {})

    def send_message(self, conversation_id: str, content: str, client_message_id: str) -> dict[str, Any]:
        payload = {"client_message_id": client_message_id, "content": content, "type": "text"}
        return self.call(f"conversation:{conversation_id}", "send_message", payload)

    def count_new_messages(self) -> int:
        return sum(1 for frame in self.inbox if frame[3] == "new_message")

    # -- closing ---------------------------------------------------------------------------

    def wait_closed(self, timeout: float = TIMEOUT) -> int | None:
        """Read (and buffer) until the server closes; the close code it sent."""
        try:
            while True:
                self.inbox.append(self._recv(timeout))
        except ConnectionClosed:
            return self.close_code

    def is_open(self) -> bool:
        return self.close_code is None and self.ws.protocol.close_code is None

    def close(self) -> None:
        self.ws.close()


class RefusedError(Exception):
    def __init__(self, refused: Refused) -> None:
        super().__init__(f"HTTP {refused.status}")
        self.refused = refused


def try_connect(port: int, token: str | None, **kwargs: Any) -> Phx | Refused:
    """`Phx.connect`, with a refusal as a value."""
    try:
        return Phx.connect(port, token, **kwargs)
    except RefusedError as exc:
        return exc.refused


def http_get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
        return response.status, response.read()


# -- the control set ------------------------------------------------------------------------


@dataclass
class ControlSet:
    """Healthy sockets of other users, from other IPs, on one shared conversation.

    `exchange()` has every member send one message and checks that every member received every
    message; `check()` additionally asserts that no control socket was disconnected.
    """

    port: int
    conversation_id: str
    sockets: list[Phx] = field(default_factory=list)
    sent: int = 0
    rounds: int = 0

    def exchange(self) -> None:
        self.rounds += 1
        refs = []
        for i, phx in enumerate(self.sockets):
            payload = {"client_message_id": f"ctl-{self.rounds}-{i}", "content": f"control {self.rounds} {i}"}
            refs.append((phx, phx.push(f"conversation:{self.conversation_id}", "send_message", payload)))
        for phx, ref in refs:
            reply = phx.reply(ref)
            assert reply["status"] == "ok", reply
        self.sent += len(self.sockets)
        for phx in self.sockets:
            while phx.count_new_messages() < self.sent:
                phx.inbox.append(phx._recv(TIMEOUT))

    def check(self) -> None:
        """0 disconnects and 100 % of the messages on every control socket."""
        self.exchange()
        for phx in self.sockets:
            assert phx.is_open(), f"control socket from {phx.source} closed with {phx.close_code}"
            assert phx.heartbeat()["status"] == "ok"
            ids = {frame[4]["client_message_id"] for frame in phx.inbox if frame[3] == "new_message"}
            assert len(ids) == self.sent, (phx.source, len(ids), self.sent)

    def close(self) -> None:
        for phx in self.sockets:
            phx.close()
