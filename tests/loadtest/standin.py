"""A tiny Phoenix V2 echo/broadcast server to test the load generator against (not the gateway).

* `phoenix`/`heartbeat` → ok. Joins: any topic → ok, except `room:refused` (error `unauthorized`).
  Connect with `token=bad` → 403.
* `ping` → ok `{"pong": true}`; `noreply` → nothing; any other event on a joined topic → broadcast to
  the topic's subscribers (`[null, null, topic, event, payload]`, encoded once), then ok.
* HTTP (separate port): `POST /broadcast/<topic>` with a JSON body → broadcast `new_message` → 202.

Run it alone (for manual load runs): `python -m tests.loadtest.standin --port 4100`.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket


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
                    await self.reply(ws, join_ref, ref, topic, "ok", {})
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

    async def reply(self, ws: WebSocketConnection, join_ref: Any, ref: Any, topic: str, status: str, resp: Any) -> None:
        await ws.send_message(json.dumps([join_ref, ref, topic, "phx_reply", {"status": status, "response": resp}]))

    async def broadcast(self, topic: str, event: str, payload: Any) -> None:
        self.broadcasts += 1
        text = json.dumps([None, None, topic, event, payload])  # encoded once for everyone
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
