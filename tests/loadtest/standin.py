"""A tiny Phoenix V2 echo/broadcast server to test the load generator against (not the gateway).

* `phoenix`/`heartbeat` → ok. Joins: any topic → ok, except `room:refused` (error `unauthorized`).
  Connect with `token=bad` → 403.
* `ping` → ok `{"pong": true}`; `noreply` → nothing; any other event on a joined topic → broadcast to
  the topic's subscribers (`[null, null, topic, event, payload]`, encoded once), then ok.
* HTTP (separate port): `POST /broadcast/<topic>` with a JSON body → broadcast `new_message` → 202.
* Whispr-like topics (for chat/reconnect): `conversation:<id>` join → ok `{"last_seq": head}`, then with
  `{"last_seq": n}` the messages after n; `send_message` → ok `{message_id, seq, duplicate}`, then
  `new_message` on the conversation and on `user:<member>` (with `inbox_seq`) of every user that ever
  joined it. `user:<id>` join replays the user's inbox after `last_seq` (default 0). The token's JWT
  payload is decoded (not verified) to know the user: `subs` records (sub, device_id) per connect.

Run it alone (for manual load runs): `python -m tests.loadtest.standin --port 4100`.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket


def _jwt_sub(token: str | None) -> tuple[str, str] | None:
    """(sub, device_id) of a JWT, decoded without verification (the stand-in trusts the load generator)."""
    if not token or token.count(".") != 2:
        return None
    try:
        b64 = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4)))
        return str(claims["sub"]), str(claims["device_id"])
    except (ValueError, KeyError):
        return None


@dataclass
class LoadStandIn:
    ws_port: int = 0
    http_port: int = 0
    topics: dict[str, set[WebSocketConnection]] = field(default_factory=dict)
    connects: int = 0
    refused: int = 0
    broadcasts: int = 0
    requests: int = 0
    subprotocols: list[list[str]] = field(default_factory=list)
    subs: list[tuple[str, str]] = field(default_factory=list)
    conv_log: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    conv_members: dict[str, set[str]] = field(default_factory=dict)
    inbox: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    # One per conversation: a send's seq assignment and its broadcasts happen in seq order, as in whispr
    # (each connection is its own task and every write may yield, so without it seq 6 can overtake seq 5).
    conv_locks: dict[str, trio.Lock] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}/socket"

    async def handler(self, request: WebSocketRequest) -> None:
        query = {k: v[0] for k, v in parse_qs(urlsplit(request.path).query).items()}
        self.subprotocols.append(list(request.proposed_subprotocols))
        if query.get("token") == "bad":
            self.refused += 1
            await request.reject(403)
            return
        ws = await request.accept(subprotocol="phoenix" if "phoenix" in request.proposed_subprotocols else None)
        self.connects += 1
        sub = _jwt_sub(query.get("token"))
        if sub is not None:
            self.subs.append(sub)
        joined: dict[str, str] = {}
        try:
            while True:
                join_ref, ref, topic, event, payload = json.loads(await ws.get_message())[:5]
                if event == "heartbeat" and topic == "phoenix":
                    await self.reply(ws, None, ref, topic, "ok", {})
                elif event == "phx_join":
                    if topic == "room:refused":
                        await self.reply(ws, join_ref, ref, topic, "error", {"reason": "unauthorized"})
                        continue
                    joined[topic] = join_ref
                    self.topics.setdefault(topic, set()).add(ws)
                    await self.join_whispr_topic(ws, join_ref, ref, topic, payload, sub)
                elif event == "send_message" and topic.startswith("conversation:") and topic in joined:
                    await self.send_message(ws, join_ref, ref, topic, payload, sub)
                elif topic not in joined:
                    await self.reply(ws, None, ref, topic, "error", {"reason": "unmatched topic"})
                elif event == "ping":
                    self.requests += 1
                    await self.reply(ws, join_ref, ref, topic, "ok", {"pong": True})
                elif event == "noreply":
                    pass
                else:
                    await self.broadcast(topic, event, payload)
                    await self.reply(ws, join_ref, ref, topic, "ok", {})
        except ConnectionClosed:
            pass
        finally:
            for topic in joined:
                self.topics[topic].discard(ws)

    async def join_whispr_topic(
        self, ws: WebSocketConnection, join_ref: Any, ref: Any, topic: str, params: Any, sub: Any
    ) -> None:
        after = params.get("last_seq") if isinstance(params, dict) else None
        if topic.startswith("conversation:"):
            log = self.conv_log.setdefault(topic, [])
            if sub is not None:
                self.conv_members.setdefault(topic, set()).add(sub[0])
            await self.reply(ws, join_ref, ref, topic, "ok", {"last_seq": len(log)})
            backlog = log[after:] if isinstance(after, int) else []
        elif topic.startswith("user:"):
            await self.reply(ws, join_ref, ref, topic, "ok", {"recovered": True})
            box = self.inbox.setdefault(topic[len("user:") :], [])
            backlog = box[after if isinstance(after, int) else 0 :]
        else:
            await self.reply(ws, join_ref, ref, topic, "ok", {})
            return
        for m in backlog:
            await ws.send_message(json.dumps([join_ref, None, topic, "new_message", m], separators=(",", ":")))

    async def send_message(
        self, ws: WebSocketConnection, join_ref: Any, ref: Any, topic: str, payload: Any, sub: Any
    ) -> None:
        async with self.conv_locks.setdefault(topic, trio.Lock()):
            await self._append_and_broadcast(ws, join_ref, ref, topic, payload, sub)

    async def _append_and_broadcast(
        self, ws: WebSocketConnection, join_ref: Any, ref: Any, topic: str, payload: Any, sub: Any
    ) -> None:
        log = self.conv_log.setdefault(topic, [])
        msg = {"id": f"m{topic}-{len(log) + 1}", "seq": len(log) + 1, "sender_id": sub[0] if sub else None}
        msg.update(client_message_id=payload["client_message_id"], content=payload.get("content", ""))
        log.append(msg)
        await self.reply(
            ws, join_ref, ref, topic, "ok", {"message_id": msg["id"], "seq": msg["seq"], "duplicate": False}
        )
        await self.broadcast(topic, "new_message", msg)
        for user in sorted(self.conv_members.get(topic, ())):
            box = self.inbox.setdefault(user, [])
            box.append({**msg, "inbox_seq": len(box) + 1})
            await self.broadcast(f"user:{user}", "new_message", box[-1])

    async def reply(self, ws: WebSocketConnection, join_ref: Any, ref: Any, topic: str, status: str, resp: Any) -> None:
        frame = [join_ref, ref, topic, "phx_reply", {"status": status, "response": resp}]
        await ws.send_message(json.dumps(frame, separators=(",", ":")))

    async def broadcast(self, topic: str, event: str, payload: Any) -> None:
        self.broadcasts += 1
        text = json.dumps([None, None, topic, event, payload], separators=(",", ":"))  # encoded once
        for sub in list(self.topics.get(topic, ())):
            with contextlib.suppress(ConnectionClosed):
                await sub.send_message(text)

    async def http(self, stream: trio.SocketStream) -> None:
        async with stream:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    return
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target = lines[0].split(" ")[:2]
            length = next(
                (int(v) for k, _, v in (h.partition(":") for h in lines[1:]) if k.lower() == "content-length"), 0
            )
            while len(body) < length:
                body += await stream.receive_some(4096)
            if method == "POST" and target.startswith("/broadcast/"):
                await self.broadcast(unquote(target[len("/broadcast/") :]), "new_message", json.loads(body))
                status = b"202 Accepted"
            else:
                status = b"404 Not Found"
            await stream.send_all(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    async def serve(self, *, task_status: trio.TaskStatus[LoadStandIn] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve_websocket, self.handler, "127.0.0.1", self.ws_port, None)
            self.ws_port = server.port
            listeners = await nursery.start(
                functools.partial(trio.serve_tcp, host="127.0.0.1"), self.http, self.http_port
            )
            self.http_port = listeners[0].socket.getsockname()[1]
            task_status.started(self)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--http-port", type=int, default=0)
    ns = parser.parse_args()

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            s = await nursery.start(LoadStandIn(ns.port, ns.http_port).serve)
            print(f"ws {s.url} http http://127.0.0.1:{s.http_port}", flush=True)

    trio.run(run)


if __name__ == "__main__":
    main()
