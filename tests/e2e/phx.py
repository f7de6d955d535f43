"""A small blocking Phoenix Channels client (vsn 2.0.0) for end-to-end tests, on `websockets` (sync).

It runs in a worker thread (never in the Trio loop that may be serving the node): one reader thread
per connection appends every decoded frame to `frames` and wakes the waiters. Every wait is bounded.

    client = PhxClient(url_base, token, client_ip="127.0.3.4")   # ws://127.0.0.1:PORT/socket
    reply = client.join("user:alice", {"last_seq": 0})           # {"status": "ok", "response": {...}}
    reply = client.call("conversation:c1", "send_message", {...})
    client.wait_for(lambda frames: ..., what="...")

`client_ip` goes out as `X-Forwarded-For` (the node must trust 127.0.0.0/8 as a proxy): each
connection can then come from its own client IP, out of reach of the per-IP connect budget
(contract.md §5, 20 per 5 min), which reconnect-heavy tests would otherwise spend.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import socket
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

Frame = list[Any]
"""[join_ref, ref, topic, event, payload]"""

WAIT = 15.0
"""Default bound of every wait, seconds."""


class PhxError(AssertionError):
    """A wait ran out, or the server answered something the test did not expect."""


class PhxClient:
    """One Phoenix socket. Not thread-safe for senders: drive it from one thread."""

    def __init__(
        self,
        url_base: str,
        token: str,
        *,
        client_ip: str | None = None,
        open_timeout: float = WAIT,
        name: str = "",
    ) -> None:
        self.name = name
        self.frames: list[Frame] = []
        self.closed = False
        self.close_code: int | None = None
        self.join_refs: dict[str, str] = {}  # topic -> join_ref of its current join
        # Called in the reader thread with each frame as it arrives, before waiters see it.
        self.on_frame: Callable[[Frame], None] | None = None
        self._refs = itertools.count(1)
        self._cond = threading.Condition()
        headers = {"X-Forwarded-For": client_ip} if client_ip else None
        url = f"{url_base}/websocket?vsn=2.0.0&token={token}"
        parts = urlsplit(url)
        assert parts.hostname is not None
        assert parts.port is not None
        sock = socket.create_connection((parts.hostname, parts.port), timeout=open_timeout)
        self._sock = sock
        self.ws: ClientConnection = connect(
            url,
            sock=sock,
            additional_headers=headers,
            open_timeout=open_timeout,
            proxy=None,
            compression=None,
            ping_interval=None,
            close_timeout=2,
            max_size=2**22,
            max_queue=None,
        ).__enter__()  # a context manager in websockets 17; closed by `close`/`abort`
        self.error: BaseException | None = None
        self._reader = threading.Thread(target=self._read, name=f"phx-reader-{name}", daemon=True)
        self._reader.start()

    # -- reading -------------------------------------------------------------------------------

    def _read(self) -> None:
        try:
            for raw in self.ws:
                frame = json.loads(raw)
                if self.on_frame is not None:
                    self.on_frame(frame)
                with self._cond:
                    self.frames.append(frame)
                    self._cond.notify_all()
        except (ConnectionClosed, OSError):
            pass
        except Exception as exc:  # a bug here must fail the test, not vanish in a thread
            self.error = exc
        finally:
            with self._cond:
                self.closed = True
                rcvd = self.ws.protocol.close_rcvd
                self.close_code = rcvd.code if rcvd is not None else None
                self._cond.notify_all()

    def wait_for(self, predicate: Callable[[list[Frame]], Any], *, timeout: float = WAIT, what: str = "") -> Any:
        """Block until `predicate(frames)` is truthy (and return it), or raise PhxError."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                result = predicate(self.frames)
                if result:
                    return result
                left = deadline - time.monotonic()
                if left <= 0:
                    tail = self.frames[-5:]
                    raise PhxError(f"{self.name}: timed out after {timeout}s waiting for {what}; last frames {tail}")
                self._cond.wait(left)

    def wait_closed(self, timeout: float = WAIT) -> int | None:
        """Block until the server side is gone; return the close code it sent (None: no close frame)."""
        self.wait_for(lambda _: self.closed, timeout=timeout, what="the socket to close")
        self._reader.join(timeout)
        return self.close_code

    # -- writing -------------------------------------------------------------------------------

    def push(self, topic: str, event: str, payload: Any, *, join_ref: str | None = None) -> str:
        """Send one frame; returns its ref. `join_ref` defaults to the topic's current join."""
        ref = str(next(self._refs))
        if join_ref is None:
            join_ref = self.join_refs.get(topic)
        self.ws.send(json.dumps([join_ref, ref, topic, event, payload]))
        return ref

    def reply(self, topic: str, ref: str, *, timeout: float = WAIT) -> dict[str, Any]:
        """The `phx_reply` payload for `ref` on `topic` ({"status", "response"})."""

        def find(frames: list[Frame]) -> dict[str, Any] | None:
            for f in frames:
                if f[1] == ref and f[2] == topic and f[3] == "phx_reply":
                    payload: dict[str, Any] = f[4]
                    return payload
            return None

        result: dict[str, Any] = self.wait_for(find, timeout=timeout, what=f"the reply to {ref} on {topic}")
        return result

    def call(self, topic: str, event: str, payload: Any, *, timeout: float = WAIT) -> dict[str, Any]:
        """Push and wait for its reply."""
        return self.reply(topic, self.push(topic, event, payload), timeout=timeout)

    def join(self, topic: str, params: dict[str, Any] | None = None, *, timeout: float = WAIT) -> dict[str, Any]:
        """phx_join (join_ref = ref) and wait for its reply; on ok, later pushes carry that join_ref."""
        ref = str(next(self._refs))
        self.ws.send(json.dumps([ref, ref, topic, "phx_join", params or {}]))
        reply = self.reply(topic, ref, timeout=timeout)
        if reply["status"] == "ok":
            self.join_refs[topic] = ref
        return reply

    # -- reading helpers -----------------------------------------------------------------------

    def events(self, topic: str, event: str, *, join_ref: str | None = None) -> list[dict[str, Any]]:
        """Payloads of `event` pushed on `topic` for the join `join_ref` (default: the current one)."""
        ref = self.join_refs.get(topic) if join_ref is None else join_ref
        with self._cond:
            return [f[4] for f in self.frames if f[2] == topic and f[3] == event and f[0] == ref]

    def broadcasts(self, topic: str, event: str) -> list[dict[str, Any]]:
        """Payloads of `event` broadcast on `topic` (join_ref null)."""
        with self._cond:
            return [f[4] for f in self.frames if f[2] == topic and f[3] == event and f[0] is None]

    # -- closing -------------------------------------------------------------------------------

    def close(self) -> None:
        """A clean close (1000 from the client), waiting for the server's answer."""
        with contextlib.suppress(Exception):
            self.ws.close()
        self._reader.join(WAIT)

    def abort(self) -> None:
        """Drop the TCP connection without a closing handshake (a network failure, a killed app)."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(Exception):
            self.ws.close_socket()
        self._reader.join(WAIT)


_ips = itertools.count(1)


def next_client_ip() -> str:
    """A fresh loopback address for `client_ip` (127.1.0.1, 127.1.0.2, ...)."""
    n = next(_ips)
    return f"127.{1 + n // 62_500 % 250}.{n // 250 % 250}.{1 + n % 250}"
