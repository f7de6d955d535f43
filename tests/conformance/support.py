"""Helpers of the conformance suite: the server under test, a raw WebSocket client, frame catalogues.

`Server` is what the cases talk to: one node, or nginx in front of two nodes (conftest.py runs every
case against both). Cases reach the nodes' internals only through it: `store` (one store, shared
by the nodes), `nodes` (e.g. to relax a limit on each) and `node_of` (the node holding a socket).

`RawSocket` is a WebSocket client built on `websockets`' sans-I/O `ClientProtocol`, driven by a Trio
TCP stream, so that it runs in the same Trio loop as the node and every wait is cancellable. It sends
what phoenix.js never would: object frames (vsn 1.0.0), broken JSON, invalid UTF-8, oversize
messages, and raw bytes that break RFC 6455 itself. `PhoenixRaw` adds Phoenix framing and a log of
what came back.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from tests.node import RunningNode
from tests.phoenix_js import run_scenario_async
from whispr.app import Node
from whispr.delivery.store import MessageStore

HARNESS_TIMEOUT = 45.0
"""Seconds one phoenix.js run may take, Node start-up included (its own deadline_ms is shorter)."""
PRESENCE_WAIT_MS = 12_000
"""A presence leave is held for the tracker's grace period (5 s) before its diff: wait that long."""


# ---------------------------------------------------------------------------------------------------
# The server under test


class Reachable(Protocol):
    """Where clients connect: a `RunningNode` or a `Server`."""

    @property
    def port(self) -> int: ...

    @property
    def socket_url(self) -> str: ...


@dataclass
class Server:
    """The nodes under test and the port clients connect to (a node's own, or nginx's in front)."""

    nodes: list[RunningNode]
    port: int

    @property
    def socket_url(self) -> str:
        """The phoenix.js endpoint base (the client appends /websocket)."""
        return f"ws://127.0.0.1:{self.port}/socket"

    @property
    def store(self) -> MessageStore:
        """The store (the nodes share it): for setting up and inspecting data."""
        store = self.nodes[0].node.store
        assert store is not None
        return store

    @property
    def stores(self) -> list[MessageStore]:
        """Each node's own store object: to plant a fault wherever the socket landed."""
        stores = [running.node.store for running in self.nodes]
        assert all(store is not None for store in stores)
        return stores  # type: ignore[return-value]

    def token(self, user_id: str, device_id: str, ttl: float = 3600.0, device_type: str | None = None) -> str:
        return self.nodes[0].token(user_id, device_id, ttl, device_type)

    async def add_user(self, user_id: str, active: bool = True) -> None:
        await self.nodes[0].add_user(user_id, active)

    def node_of(self, user: str, device: str) -> Node:
        """The node whose connection registry holds the device's socket."""
        [node] = [running.node for running in self.nodes if _described(running.node, user, device) is not None]
        return node


# ---------------------------------------------------------------------------------------------------
# phoenix.js runs


async def run_js(server: Reachable, scenario: str, args: dict[str, Any], **kw: Any) -> dict[str, Any]:
    """`run_scenario_async` against `server`, bounded by HARNESS_TIMEOUT."""
    return await run_scenario_async(server.socket_url, scenario, args, timeout=HARNESS_TIMEOUT, **kw)


def recv_frames(result: dict[str, Any], socket: str = "s1", **fields: Any) -> list[dict[str, Any]]:
    """Frames phoenix.js received on `socket` whose decoded fields equal `fields`, in order."""
    return [
        e
        for e in result["events"]
        if e["kind"] == "recv" and e.get("socket") == socket and all(e.get(k) == v for k, v in fields.items())
    ]


def index_of(result: dict[str, Any], event: dict[str, Any]) -> int:
    """Position of `event` in the timeline (events are dicts: identity, not equality)."""
    return next(i for i, e in enumerate(result["events"]) if e is event)


# ---------------------------------------------------------------------------------------------------
# Waiting on the node's state


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:  # noqa: ASYNC109
    """Return once `predicate()` holds; re-checked every few ms (a condition, not a guessed delay)."""
    with trio.move_on_after(timeout):
        while not predicate():  # noqa: ASYNC110 - the node offers no event for these states
            await trio.sleep(0.005)
        return
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def has_joined(server: Server, user: str, device: str, *topics: str) -> bool:
    """True when a node's connection registry shows the device's socket with all `topics` joined."""
    for running in server.nodes:
        conn = _described(running.node, user, device)
        if conn is not None:
            return all(t in conn["topics"] for t in topics)  # type: ignore[operator]
    return False


def _described(node: Node, user: str, device: str) -> dict[str, object] | None:
    """The node's registry entry of the device's socket, if it holds one."""
    assert node.deps is not None
    for conn in node.deps.connections.describe():
        if conn["user_id"] == user and conn["device_id"] == device:
            return conn
    return None


# ---------------------------------------------------------------------------------------------------
# Raw WebSocket client


class Refused(Exception):
    """The upgrade was answered with something else than 101."""

    def __init__(self, response: Response) -> None:
        super().__init__(f"upgrade refused with {response.status_code}")
        self.status = response.status_code
        self.body = response.body
        self.headers = response.headers


class Closed(Exception):
    """The connection is closed; `code` is the server's close code (1006: no close frame)."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"closed {code} {reason!r}")
        self.code = code
        self.reason = reason


class RawSocket:
    """One client connection: `send_*`, then `recv()` messages until `Closed`."""

    def __init__(self, stream: trio.SocketStream, protocol: ClientProtocol, response: Response) -> None:
        self.stream = stream
        self.protocol = protocol
        self.response = response
        self._pending: list[Frame] = []
        self.close_code: int | None = None

    @property
    def subprotocol(self) -> str | None:
        return self.response.headers.get("Sec-WebSocket-Protocol")

    async def flush(self) -> None:
        """Write what the protocol has queued; a peer that already went away is not an error here."""
        data = b"".join(self.protocol.data_to_send())
        if data:
            with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self.stream.send_all(data)

    async def send_text(self, data: str | bytes) -> None:
        """A text message; bytes are sent as they are (invalid UTF-8 included)."""
        self.protocol.send_text(data.encode() if isinstance(data, str) else data)
        await self.flush()

    async def send_binary(self, data: bytes) -> None:
        self.protocol.send_binary(data)
        await self.flush()

    async def send_json(self, value: Any) -> None:
        await self.send_text(json.dumps(value))

    async def send_raw(self, data: bytes) -> None:
        """Bytes straight onto TCP, bypassing the protocol (for frames that break RFC 6455)."""
        with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self.stream.send_all(data)

    async def recv(self) -> str | bytes:
        """The next message; raises `Closed` once the connection is closed."""
        while True:
            while self._pending:
                frame = self._pending.pop(0)
                if frame.opcode is Opcode.TEXT:
                    return frame.data.decode()
                if frame.opcode is Opcode.BINARY:
                    return bytes(frame.data)
            self._raise_if_closed()
            try:
                data = await self.stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if data:
                self.protocol.receive_data(data)
            else:
                self.protocol.receive_eof()
            self._pending.extend(e for e in self.protocol.events_received() if isinstance(e, Frame))
            await self.flush()  # pongs, and the echo of the server's close frame

    def _raise_if_closed(self) -> None:
        from websockets.protocol import State

        if self.protocol.state in (State.CLOSING, State.CLOSED) and not self._pending:
            rcvd = self.protocol.close_rcvd
            self.close_code = rcvd.code if rcvd is not None else 1006
            raise Closed(self.close_code, rcvd.reason if rcvd is not None else "")

    async def recv_json(self) -> Any:
        message = await self.recv()
        assert isinstance(message, str), f"expected a text message, got {message!r}"
        return json.loads(message)

    async def wait_closed(self) -> int:
        """Read (and discard) until the connection closes; its close code."""
        while True:
            try:
                await self.recv()
            except Closed as closed:
                return closed.code

    async def aclose(self) -> None:
        from websockets.protocol import State

        if self.protocol.state is State.OPEN:
            self.protocol.send_close(1000)
            await self.flush()
        await self.stream.aclose()


@asynccontextmanager
async def open_raw(
    server: Reachable,
    query: str,
    *,
    forwarded_for: str | None = None,
    headers: Sequence[tuple[str, str]] = (),
    subprotocols: Sequence[str] | None = None,
) -> Any:
    """Connect a `RawSocket` to `/socket/websocket?<query>`; raises `Refused` on a non-101 answer.

    `forwarded_for` sets `X-Forwarded-For` (the suite's nodes trust 127.0.0.0/8 as a proxy), so that
    many raw clients do not share one client IP's connection cap and connect budget.
    """
    uri = parse_uri(f"ws://127.0.0.1:{server.port}/socket/websocket?{query}")
    protocol = ClientProtocol(uri, subprotocols=list(subprotocols) if subprotocols else None, max_size=None)
    request = protocol.connect()
    if forwarded_for is not None:
        request.headers["X-Forwarded-For"] = forwarded_for
    for name, value in headers:
        request.headers[name] = value
    protocol.send_request(request)
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    try:
        with trio.fail_after(10):
            await stream.send_all(b"".join(protocol.data_to_send()))
            response: Response | None = None
            pending: list[Frame] = []
            while response is None:
                data = await stream.receive_some(65536)
                if data:
                    protocol.receive_data(data)
                else:
                    protocol.receive_eof()
                for event in protocol.events_received():
                    if isinstance(event, Response):
                        response = event
                    elif isinstance(event, Frame):
                        pending.append(event)
                if not data and response is None:
                    raise Closed(1006, "EOF before the upgrade response")
        if isinstance(protocol.handshake_exc, InvalidStatus) or response.status_code != 101:
            raise Refused(response)
        if protocol.handshake_exc is not None:
            raise protocol.handshake_exc
        sock = RawSocket(stream, protocol, response)
        sock._pending.extend(pending)
        yield sock
    finally:
        await stream.aclose()


# ---------------------------------------------------------------------------------------------------
# Phoenix V2 framing over a raw socket


@dataclass
class PhoenixRaw:
    """Phoenix V2 frames over a `RawSocket`, with a log of every frame received."""

    ws: RawSocket
    received: list[list[Any]] = field(default_factory=list)
    _refs: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def ref(self) -> str:
        return str(next(self._refs))

    async def push(self, topic: str, event: str, payload: dict[str, Any], join_ref: str | None = None) -> str:
        ref = self.ref()
        await self.ws.send_json([join_ref, ref, topic, event, payload])
        return ref

    async def join(self, topic: str, params: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        """Join and return (join_ref, reply payload)."""
        ref = self.ref()
        await self.ws.send_json([ref, ref, topic, "phx_join", params or {}])
        reply = await self.until(lambda f: f[1] == ref and f[3] == "phx_reply")
        return ref, reply[4]

    async def call(self, topic: str, event: str, payload: dict[str, Any], join_ref: str | None = None) -> list[Any]:
        """Push and wait for its reply frame."""
        ref = await self.push(topic, event, payload, join_ref)
        return await self.until(lambda f: f[1] == ref and f[3] == "phx_reply")

    async def until(self, predicate: Callable[[list[Any]], bool]) -> list[Any]:
        """Read frames until one satisfies `predicate` (frames logged before count too); that frame."""
        for frame in self.received:
            if predicate(frame):
                return frame
        while True:
            frame = await self.ws.recv_json()
            self.received.append(frame)
            if predicate(frame):
                return frame

    async def until_count(self, predicate: Callable[[list[Any]], bool], count: int) -> list[list[Any]]:
        """Read frames until `count` of all frames received satisfy `predicate`; those frames."""
        while True:
            hits = [f for f in self.received if predicate(f)]
            if len(hits) >= count:
                return hits
            self.received.append(await self.ws.recv_json())

    async def heartbeat(self) -> list[Any]:
        return await self.call("phoenix", "heartbeat", {})


# ---------------------------------------------------------------------------------------------------
# Malformed input


def _masked_frame(first_byte: int, payload: bytes, *, masked: bool = True) -> bytes:
    """A single client frame with a literal first byte (FIN, RSV and opcode bits) and a short payload."""
    assert len(payload) < 126
    if not masked:
        return bytes((first_byte, len(payload))) + payload
    key = b"\x01\x02\x03\x04"
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes((first_byte, 0x80 | len(payload))) + key + body


MAX_MESSAGE = 64 * 1024
"""contract.md §5: 64 KiB per frame, counted in bytes before JSON decoding."""


@dataclass(frozen=True)
class Garbage:
    """One kind of malformed input and the close code the gateway answers it with."""

    name: str
    kind: str  # "text" | "binary" | "raw"
    data: bytes
    close_code: int


GARBAGE: tuple[Garbage, ...] = (
    Garbage("not_json", "text", b"{this is not json", 1007),
    Garbage("empty_text", "text", b"", 1007),
    Garbage("json_object_on_v2", "text", b'{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"1"}', 1007),
    Garbage("json_scalar", "text", b"42", 1007),
    Garbage("empty_array", "text", b"[]", 1007),
    Garbage("arity_4", "text", b'[null,"1","phoenix","heartbeat"]', 1007),
    Garbage("ref_not_string", "text", b'[null,1,"phoenix","heartbeat",{}]', 1007),
    Garbage("topic_not_string", "text", b'[null,"1",7,"heartbeat",{}]', 1007),
    Garbage("payload_not_object", "text", b'[null,"1","phoenix","heartbeat",[]]', 1007),
    Garbage("nan_constant", "text", b'[null,"1","phoenix","heartbeat",{"x":NaN}]', 1007),
    Garbage("float_overflow", "text", b'[null,"1","phoenix","heartbeat",{"x":1e999}]', 1007),
    Garbage("huge_nesting", "text", b"[" * 30_000 + b"]" * 30_000, 1007),  # under the size cap
    Garbage("huge_nesting_objects", "text", b'{"a":' * 10_000 + b"1" + b"}" * 10_000, 1007),
    Garbage("invalid_utf8", "text", b'[null,"1","phoenix","heartbeat",{"x":"\xff\xfe"}]', 1007),
    Garbage("oversize", "text", b'[null,"1","phoenix","heartbeat",{"x":"' + b"a" * MAX_MESSAGE + b'"}]', 1009),
    Garbage("binary_garbage", "binary", b"\x07\x00garbage", 1007),
    Garbage("binary_short_header", "binary", b"\x00\x05", 1007),
    Garbage("reserved_opcode", "raw", _masked_frame(0x83, b"boom"), 1002),
    Garbage("rsv1_set", "raw", _masked_frame(0xC1, b"[]"), 1002),
    Garbage("unmasked_frame", "raw", _masked_frame(0x81, b"[]", masked=False), 1002),
)
"""Every kind closes the offending connection (protocol.md §10 item 26; contract.md §6 for 1009)."""


async def send_garbage(ws: RawSocket, garbage: Garbage) -> None:
    if garbage.kind == "text":
        await ws.send_text(garbage.data)
    elif garbage.kind == "binary":
        await ws.send_binary(garbage.data)
    else:
        await ws.send_raw(garbage.data)
