"""Fakes for driving `PhoenixSocket` without a network: a recording transport and test channels."""

from __future__ import annotations

import json
import struct
from typing import Any, ClassVar

from whispr.channels import (
    NOREPLY,
    Channel,
    ChannelSocket,
    HandleInfoResult,
    HandleInResult,
    JoinError,
    JoinOk,
    Router,
    error,
    ok,
    reply_ok,
    stop,
)
from whispr.gateway.socket import PhoenixSocket
from whispr.protocol import V2, Identity, Payload, Reason, Serializer
from whispr.pubsub import PubSub

IDENTITY = Identity("42", "dev1")


def unframe(frame: bytes) -> tuple[int, bytes]:
    """(opcode, payload) of one unmasked server frame."""
    opcode, length = frame[0] & 0x0F, frame[1] & 0x7F
    offset = 2
    if length == 126:
        (length,) = struct.unpack("!H", frame[2:4])
        offset = 4
    elif length == 127:
        (length,) = struct.unpack("!Q", frame[2:10])
        offset = 10
    assert len(frame) == offset + length
    return opcode, frame[offset:]


class FakeTransport:
    """Records frames and the close, honouring the Transport contract (nothing sent after close)."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.droppable: list[bool] = []
        self.close_code: int | None = None
        self.close_reason = ""

    def send(self, frame: bytes, droppable: bool = False) -> None:
        if self.close_code is None:
            self.frames.append(frame)
            self.droppable.append(droppable)

    def close(self, code: int, reason: str = "") -> None:
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason


class Client:
    """One connection: a PhoenixSocket on a FakeTransport, spoken to in V2 (or V1) JSON."""

    def __init__(self, router: Router, pubsub: PubSub, serializer: Serializer = V2, **options: Any) -> None:
        self.transport = FakeTransport()
        self.socket = PhoenixSocket(self.transport, serializer, router, pubsub, IDENTITY, **options)
        self.seen = 0

    async def push(self, join_ref: str | None, ref: str | None, topic: str, event: str, payload: Any = None) -> None:
        await self.socket.on_text(json.dumps([join_ref, ref, topic, event, {} if payload is None else payload]))

    async def join(self, topic: str, ref: str, params: Any = None) -> None:
        await self.push(ref, ref, topic, "phx_join", params)

    def received(self) -> list[Any]:
        """Messages written since the last call: decoded JSON, or (opcode, bytes) for binary frames."""
        frames, self.seen = self.transport.frames[self.seen :], len(self.transport.frames)
        out: list[Any] = []
        for frame in frames:
            opcode, payload = unframe(frame)
            out.append(json.loads(payload) if opcode == 1 else (opcode, payload))
        return out


class RoomChannel(Channel):
    """Does what its params and events ask, and records its terminations."""

    terminated: ClassVar[list[tuple[str, str | None, Reason]]] = []

    async def join(self, topic: str, params: Payload, socket: ChannelSocket) -> JoinOk | JoinError:
        assert isinstance(params, dict)
        if "refuse" in params:
            return error({"reason": params["refuse"]}, params.get("close_code"))
        if params.get("crash"):
            raise RuntimeError("join boom")
        if params.get("push_in_join"):
            socket.push("early", {})
        if params.get("bad_response"):
            return ok({"x": {1, 2}})
        socket.send_info("after_join")
        return ok({"joined": topic})

    async def handle_in(self, event: str, payload: Payload, socket: ChannelSocket) -> HandleInResult:
        if event == "echo":
            return reply_ok(payload)
        if event == "noreply":
            return NOREPLY
        if event == "crash":
            raise ValueError("handle_in boom")
        if event == "stop":
            return stop("normal", reply_ok({"bye": True}))
        if event == "push":
            socket.push("pushed", payload)
            return NOREPLY
        if event == "broadcast":
            socket.broadcast("shout", payload)
            return NOREPLY
        if event == "broadcast_from":
            socket.broadcast_from("shout", payload, droppable=True)
            return NOREPLY
        if event == "upload":
            assert isinstance(payload, bytes)
            return reply_ok(payload[::-1])
        if event == "info_stop":
            socket.send_info("stop")
            return NOREPLY
        if event == "info_crash":
            socket.send_info("crash")
            return NOREPLY
        if event == "unencodable":
            return reply_ok({"x": float("nan")})
        return 42  # type: ignore[return-value]

    async def handle_info(self, message: object, socket: ChannelSocket) -> HandleInfoResult:
        if message == "after_join":
            socket.push("presence_state", {})
        elif message == "stop":
            return stop("done")
        elif message == "crash":
            raise KeyError("handle_info boom")
        return NOREPLY

    async def terminate(self, reason: Reason, socket: ChannelSocket) -> None:
        self.terminated.append((socket.topic, socket.join_ref, reason))
        socket.push("terminating", {})
        if reason == "closed" and socket.topic == "room:raise":
            raise RuntimeError("terminate boom")


def router() -> Router:
    return Router([("room:*", RoomChannel)])
