"""`python -m whispr serve` as a child process, and raw Phoenix V2 clients to drive it.

Used by the drain and `--workers` tests: the node runs exactly as deployed (its own process, its
own signal handling), the test talks to it over loopback only.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from trio_websocket import CloseReason, ConnectionClosed, WebSocketConnection, wrap_client_stream

from tests.services import free_port
from whispr.api.client import ApiClient, ApiResult
from whispr.security.tokens import TokenConfig, mint_token


class ServeProcess:
    """`whispr serve --dev` on a free loopback port with its data dir in `data_dir`; log in `log_path`."""

    def __init__(self, data_dir: Path, env: Mapping[str, str] | None = None, args: tuple[str, ...] = ()) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.log_path = data_dir / "serve.log"
        data_dir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "whispr", "serve", "--dev", "--host", "127.0.0.1"]
        argv += ["--port", str(self.port), "--data-dir", str(data_dir), *args]
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(argv, env={**os.environ, **(env or {})}, stdout=self._log, stderr=self._log)

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def socket_url(self, token: str) -> str:
        return f"ws://127.0.0.1:{self.port}/socket/websocket?vsn=2.0.0&token={token}"

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until /ready answers 200, or raise (with the log) if the process died or it timed out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"whispr serve exited with {self.proc.returncode}:\n{self.log()}")
            if http_get(self.http_url + "/ready")[0] == 200:
                return
            time.sleep(0.05)  # polling another process's port: no shared clock to wait on
        raise TimeoutError(f"whispr serve not ready after {timeout}s:\n{self.log()}")

    def secret(self, name: str) -> str:
        return (self.data_dir / name).read_text().strip()

    def token(self, user_id: str, device_id: str) -> str:
        config = TokenConfig(algorithm="HS256", secret=self.secret("dev-jwt-secret").encode())
        return mint_token(config, user_id, device_id, ttl=600.0)

    def api(self) -> ApiClient:
        return ApiClient(self.http_url, self.secret("dev-api-key"))

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """(status, body) of a GET; (0, b"") when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def must(result: ApiResult) -> Any:
    assert result.ok, result
    return result.body


class Closed(Exception):
    """The socket closed before a reply arrived."""


@dataclass
class RawClient:
    """A Phoenix V2 client speaking raw frames: every frame it receives, and how it was closed."""

    name: str
    ws: WebSocketConnection
    frames: list[list[Any]] = field(default_factory=list)
    close_code: int | None = None
    closed_at: float | None = None
    join_refs: dict[str, str] = field(default_factory=dict)
    closed: trio.Event = field(default_factory=trio.Event)
    on_frame: Callable[[list[Any]], None] | None = None  # called with each frame as it arrives
    _ref: int = 0
    _replies: dict[str, trio.MemorySendChannel[dict[str, Any]]] = field(default_factory=dict)

    async def push(self, topic: str, event: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Send one message (with the topic's join_ref) and wait for its phx_reply.

        Raises:
            Closed: the socket closed first.
        """
        if self.close_code is not None:
            raise Closed(f"{self.name} is closed")
        self._ref += 1
        ref = str(self._ref)
        send, receive = trio.open_memory_channel[dict[str, Any]](1)
        self._replies[ref] = send
        join_ref = ref if event == "phx_join" else self.join_refs.get(topic)
        try:
            await self.ws.send_message(json.dumps([join_ref, ref, topic, event, payload]))
        except ConnectionClosed as exc:
            # trio-websocket refuses sends as soon as its reader has seen the server's close frame,
            # while it is still echoing it and before `get_message` ends: this send may see the
            # close first, and `read_loop` may then be cancelled before it records the code.
            self._closed_with(exc.reason)
            raise Closed(f"{self.name} is closed") from None
        async with receive:
            try:
                return await receive.receive()
            except trio.EndOfChannel:
                raise Closed(f"{self.name} closed before the reply to ref {ref}") from None

    async def join(self, topic: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Join `topic`; the join reply's response. Asserts it was accepted."""
        self.join_refs[topic] = str(self._ref + 1)
        reply = await self.push(topic, "phx_join", params or {})
        assert reply["status"] == "ok", reply
        return reply["response"]  # type: ignore[no-any-return]

    async def read_loop(self) -> None:
        """Record frames and route replies until the server closes the connection."""
        try:
            while True:
                frame = json.loads(await self.ws.get_message())
                self.frames.append(frame)
                if self.on_frame is not None:
                    self.on_frame(frame)
                if frame[3] == "phx_reply" and (waiter := self._replies.pop(frame[1], None)) is not None:
                    waiter.send_nowait(frame[4])
        except ConnectionClosed as exc:
            self._closed_with(exc.reason)
        finally:
            self.closed.set()
            for waiter in self._replies.values():
                waiter.close()
            self._replies.clear()

    def _closed_with(self, reason: CloseReason | None) -> None:
        """Record how the connection ended, once: whichever of a send and `read_loop` saw it first."""
        if self.close_code is None and reason is not None:
            self.close_code = reason.code
            self.closed_at = trio.current_time()

    def events(self, event: str) -> list[list[Any]]:
        return [frame for frame in self.frames if frame[3] == event]


@contextlib.asynccontextmanager
async def open_websocket(
    url: str, extra_headers: list[tuple[bytes, bytes]] | None = None
) -> AsyncIterator[WebSocketConnection]:
    """A trio-websocket client whose TCP stream we own and always close (`open_websocket_url`
    leaks its socket when the server closes first or refuses the upgrade: ResourceWarning)."""
    parts = urllib.parse.urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    stream = await trio.open_tcp_stream(parts.hostname, parts.port)
    try:
        async with trio.open_nursery() as nursery:
            resource = parts.path + (f"?{parts.query}" if parts.query else "")
            ws = await wrap_client_stream(nursery, stream, parts.netloc, resource, extra_headers=extra_headers)
            try:
                yield ws
            finally:
                with trio.move_on_after(2, shield=True):
                    await ws.aclose()
    except BaseExceptionGroup as group:  # the client's own reader task raised, e.g. ConnectionRejected
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
    finally:
        await stream.aclose()


async def open_raw_client(nursery: trio.Nursery, url: str, name: str) -> RawClient:
    """Connect; the client reads in `nursery` until the server closes it (or the nursery ends)."""
    client: RawClient = await nursery.start(_run_client, url, name)
    return client


async def _run_client(url: str, name: str, *, task_status: trio.TaskStatus[RawClient]) -> None:
    async with open_websocket(url) as ws:
        client = RawClient(name, ws)
        task_status.started(client)
        await client.read_loop()
