"""One load-generating process: holds its share of the connections, one Trio task per connection.

Started by the runner as `python -m loadtest.worker <config-json> <worker-index>`. It talks JSON lines:
stdout carries `progress` (every `progress_interval`), `ready` (every connection of its share was tried),
`done` (the measured phase is over) and finally `result`; stdin carries `go` (rtt: start the requests)
and `stop` (close everything and report). EOF on stdin or the worker's own deadline also stops it, so a
worker never outlives a crashed parent by more than its time bound.
"""

from __future__ import annotations

import json
import os
import random
import re
import resource
import sys
import time
from collections import Counter
from typing import Any

import jwt
import trio

from loadtest.config import Config
from loadtest.stats import Histogram, Windows, proc_rss_kib
from loadtest.wsclient import ConnectionClosed, HandshakeError, WsClient

MARKER = re.compile(rb"lt:(\d+):(\d+)")
GRACE = 15.0  # seconds a worker may live past its scenario's nominal end


def raise_nofile_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class JoinRefused(Exception):
    pass


class Worker:
    def __init__(self, cfg: Config, index: int, first: int, n: int) -> None:
        self.cfg = cfg
        self.index = index
        self.ids = range(first, first + n)
        self.target = cfg.target()
        self.cpu_ready: float | None = None
        self.started_ns = time.time_ns()
        self.cpu_done: float | None = None
        self.subprotocols = cfg.subprotocols()
        self.stats: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.hist: dict[str, Histogram] = {}
        self.windows = Windows()
        self.live: set[WsClient] = set()
        self.go = trio.Event()
        self.stop = trio.Event()
        self.ready_sent = False
        self.rss_start = proc_rss_kib(os.getpid())
        self.rss_ready: int | None = None
        self.budget = 0  # rtt: requests this worker may still start (0 = unbounded)
        self.tried = 0  # connections that joined or failed
        self.all_tried = trio.Event()
        self.rtt_active = 0
        self.rtt_finished = trio.Event()
        self.ramp_first_wall: float | None = None  # the first connect started
        self.ramp_last_wall: float | None = None  # the last successful join
        self.first_event_wall: float | None = None
        self.last_event_wall: float | None = None

    def h(self, name: str) -> Histogram:
        hist = self.hist.get(name)
        if hist is None:
            hist = self.hist[name] = Histogram()
        return hist

    def emit(self, obj: dict[str, Any]) -> None:
        obj["w"] = self.index
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    # --- connections ---------------------------------------------------------------------------

    def token_for(self, i: int) -> str | None:
        """A per-connection HS256 token (sub, device_id, iat, exp) when a secret is configured."""
        cfg = self.cfg
        if cfg.token_secret is None:
            return None
        return mint(cfg, cfg.user_for(i), cfg.device_for(i))

    async def open(
        self,
        i: int,
        join_params: list[dict[str, Any]] | None = None,
        replies: list[dict[str, Any]] | None = None,
        early: list[bytes] | None = None,
        record: bool = True,
    ) -> tuple[WsClient, str, str]:
        """Connect, upgrade and join every topic of connection i; records the phase latencies.

        Returns the socket, the first topic and its join ref. `replies` gets each join's reply
        payload; `early` gets the frames that arrived before the last join reply (replays).
        Raises on failure.
        """
        cfg = self.cfg
        t0 = trio.current_time()
        tcp: list[float] = []
        token = self.token_for(i)
        target = self.target if token is None else cfg.target(token)
        with trio.fail_after(cfg.connect_timeout):
            ws = await WsClient.connect(
                cfg.host, cfg.port_for(i), target, source=cfg.source_for(i), subprotocols=self.subprotocols, on_tcp=tcp
            )
            try:
                t_up = trio.current_time()
                topics = cfg.topics_for(i)
                for k, topic in enumerate(topics):
                    join_ref = str(k + 1)
                    params = cfg.join_params if join_params is None else join_params[k]
                    await ws.send_text(json.dumps([join_ref, join_ref, topic, "phx_join", params]).encode())
                    while True:
                        raw = await ws.recv()
                        msg = json.loads(raw)
                        if msg[1] == join_ref and msg[3] == "phx_reply":
                            break
                        if early is not None:  # a replay or presence frame before the join reply
                            early.append(raw)
                    status = msg[4].get("status")
                    if status != "ok":
                        reason = (msg[4].get("response") or {}).get("reason", status)
                        raise JoinRefused(str(reason))
                    if replies is not None:
                        replies.append(msg[4].get("response") or {})
                t_join = trio.current_time()
            except BaseException:
                ws.abort()
                raise
        if record:
            self.h("tcp").add((tcp[0] - t0) * 1e6)
            self.h("upgrade").add((t_up - t0) * 1e6)
            self.h("join").add((t_join - t0) * 1e6)
        return ws, topics[0], "1"

    def _tried(self) -> None:
        self.tried += 1
        if self.tried == len(self.ids):
            self.all_tried.set()

    async def connection(self, i: int) -> None:
        self.stats["attempted"] += 1
        if self.ramp_first_wall is None:
            self.ramp_first_wall = time.time()
        try:
            try:
                ws, topic, join_ref = await self.open(i)
            finally:
                self._tried()
        except trio.TooSlowError:
            self.failures["timeout"] += 1
            return
        except HandshakeError as exc:
            self.failures[f"http_{exc.status}" if exc.status else "handshake"] += 1
            return
        except JoinRefused as exc:
            self.failures[f"join_{exc}"] += 1
            return
        except ConnectionClosed as exc:
            self.failures[f"closed_{exc.code}"] += 1
            return
        except OSError as exc:
            self.failures[f"os_{exc.errno}"] += 1
            return
        self.stats["joined"] += 1
        self.ramp_last_wall = time.time()
        self.live.add(ws)
        try:
            if self.cfg.scenario == "rtt":
                self.rtt_active += 1
                try:
                    await self.rtt_loop(ws, topic, join_ref)
                finally:
                    self.rtt_active -= 1
                    if self.rtt_active == 0:
                        self.rtt_finished.set()
            else:
                await self.idle_loop(ws)
        except ConnectionClosed as exc:
            self.stats["dropped"] += 1
            self.failures[f"dropped_{exc.code}"] += 1
        except OSError as exc:
            self.stats["dropped"] += 1
            self.failures[f"dropped_os_{exc.errno}"] += 1
        except trio.TooSlowError:
            self.stats["request_timeouts"] += 1
        finally:
            if ws.close_code is not None:
                self.live.discard(ws)
                ws.abort()

    async def idle_loop(self, ws: WsClient) -> None:
        """Hold the connection: answer the protocol, heartbeat, and time any fan-out marker."""
        interval = self.cfg.heartbeat
        next_hb = trio.current_time() + interval * random.uniform(0.5, 1.0)
        ref = 1
        last_seq = -1
        while True:
            with trio.move_on_at(next_hb):
                msg = await ws.recv()
                m = MARKER.search(msg)
                if m is not None:
                    now_ns = time.time_ns()
                    seq, sent_ns = int(m[1]), int(m[2])
                    if sent_ns < self.started_ns:  # an earlier run's message (a replayed backlog)
                        self.stats["stale_markers"] += 1
                        continue
                    lat_us = (now_ns - sent_ns) / 1000.0
                    self.h("delivery").add(lat_us)
                    self.windows.add(now_ns / 1e9, lat_us)
                    self.stats["received"] += 1
                    if seq <= last_seq:
                        self.stats["duplicates_or_reordered"] += 1
                    else:
                        last_seq = seq
                    wall = now_ns / 1e9
                    if self.first_event_wall is None:
                        self.first_event_wall = wall
                    self.last_event_wall = wall
                continue
            ref += 1
            await ws.send_text(b'[null,"%d","phoenix","heartbeat",{}]' % ref)
            next_hb += interval

    async def rtt_loop(self, ws: WsClient, topic: str, join_ref: str) -> None:
        await self.go.wait()
        cfg = self.cfg
        prefix = json.dumps([join_ref])[:-1] + ","
        ref = 1
        n = 0
        template = cfg.request_payload
        while not self.stop.is_set():
            if cfg.count:
                if self.budget <= 0:
                    return
                self.budget -= 1
            ref += 1
            ref_s = str(ref)
            body = template.replace("{n}", str(n)).replace("{marker}", f"lt-{self.index}-{n}-{time.time_ns()}")
            frame = f'{prefix}"{ref_s}",{json.dumps(topic)},{json.dumps(cfg.event)},{body}]'.encode()
            n += 1
            t0 = time.perf_counter_ns()
            await ws.send_text(frame)
            self.stats["sent"] += 1
            with trio.fail_after(cfg.request_timeout):
                while True:
                    msg = json.loads(await ws.recv())
                    if msg[1] == ref_s and msg[3] == "phx_reply":
                        break
            lat_us = (time.perf_counter_ns() - t0) / 1000.0
            wall = time.time()
            self.h("rtt").add(lat_us)
            self.windows.add(wall, lat_us)
            self.stats["replies"] += 1
            if msg[4].get("status") != "ok":
                self.stats["error_replies"] += 1
            if self.first_event_wall is None:
                self.first_event_wall = wall
            self.last_event_wall = wall

    # --- control -------------------------------------------------------------------------------

    async def commands(self) -> None:
        stream = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
        buf = b""
        async with stream:
            while True:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    self.stop.set()
                    return
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    cmd = line.strip().decode()
                    if cmd == "go":
                        self.go.set()
                    elif cmd == "stop":
                        self.stop.set()

    async def progress(self) -> None:
        while True:
            await trio.sleep(self.cfg.progress_interval)
            self.emit({"type": "progress", **self.counters()})

    def counters(self) -> dict[str, Any]:
        return {
            "attempted": self.stats["attempted"],
            "joined": self.stats["joined"],
            "failed": sum(v for k, v in self.failures.items() if not k.startswith("dropped")),
            "live": len(self.live),
            "received": self.stats["received"],
            "sent": self.stats["sent"],
            "replies": self.stats["replies"],
        }

    async def ramp(self, nursery: trio.Nursery) -> None:
        rate = self.cfg.rate / self.cfg.procs
        t0 = trio.current_time()
        if not self.ids:
            return
        for k, i in enumerate(self.ids):
            if self.stop.is_set():
                return
            await trio.sleep_until(t0 + k / rate)
            nursery.start_soon(self.connection, i)
        # every connection has been tried once it joined or failed
        await self.all_tried.wait()

    async def run(self) -> None:
        cfg = self.cfg
        if cfg.count and cfg.scenario == "rtt":
            base, extra = divmod(cfg.count, cfg.procs)
            self.budget = base + (1 if self.index < extra else 0)
        deadline = trio.current_time() + cfg.effective_ramp_timeout() + cfg.duration + cfg.drain + GRACE
        if cfg.scenario in ("chat", "reconnect"):  # the drain twice, and the reconnect storm
            deadline += cfg.effective_ramp_timeout() + cfg.drain
        with trio.move_on_at(deadline) as scope:
            async with trio.open_nursery() as outer:
                outer.start_soon(self.commands)
                outer.start_soon(self.progress)
                async with trio.open_nursery() as conns:
                    with trio.move_on_at(trio.current_time() + cfg.effective_ramp_timeout()):
                        await self.ramp(conns)
                    self.rss_ready = proc_rss_kib(os.getpid())
                    self.cpu_ready = own_cpu_s()
                    self.emit({"type": "ready", **self.counters(), "rss_kib": self.rss_ready})
                    if cfg.scenario in ("chat", "reconnect"):
                        with trio.move_on_after(cfg.effective_ramp_timeout() + cfg.duration):
                            await self.go.wait()
                        await self.measured(conns)
                        self.cpu_done = own_cpu_s()
                        self.emit({"type": "done", **self.counters()})
                    elif cfg.scenario == "rtt":
                        with trio.move_on_after(cfg.effective_ramp_timeout() + cfg.duration):
                            await self.go.wait()
                        with trio.move_on_after(cfg.duration):
                            if self.rtt_active:  # rtt loops end when the request budget is spent
                                await self.rtt_finished.wait()
                        self.stop.set()  # no new requests; let those in flight finish
                        with trio.move_on_after(cfg.request_timeout + 1.0):
                            if self.rtt_active:
                                await self.rtt_finished.wait()
                        self.cpu_done = own_cpu_s()
                        self.emit({"type": "done", **self.counters()})
                    await self.stop.wait()
                    conns.cancel_scope.cancel()
                outer.cancel_scope.cancel()
        if scope.cancelled_caught:
            self.failures["worker_deadline"] += 1
        if self.cpu_done is None:
            self.cpu_done = own_cpu_s()
        for ws in list(self.live):
            await ws.aclose(1000, within=0.05)
        self.emit(self.result())

    async def measured(self, nursery: trio.Nursery) -> None:
        """The measured phase of chat/reconnect (`loadtest.chat.ChatWorker`)."""
        raise NotImplementedError

    def extra(self) -> dict[str, Any]:
        """Scenario-specific result fields (wall times, counts) merged by the runner."""
        return {}

    def result(self) -> dict[str, Any]:
        return {
            "type": "result",
            **self.counters(),
            "stats": dict(self.stats),
            "failures": dict(self.failures),
            "hist": {k: v.to_json() for k, v in self.hist.items()},
            "windows": self.windows.to_json(),
            "rss_start_kib": self.rss_start,
            "rss_ready_kib": self.rss_ready,
            "ramp_first_wall": self.ramp_first_wall,
            "ramp_last_wall": self.ramp_last_wall,
            "first_event_wall": self.first_event_wall,
            "last_event_wall": self.last_event_wall,
            "client_cpu_measure_s": None
            if self.cpu_ready is None or self.cpu_done is None
            else self.cpu_done - self.cpu_ready,
            "extra": self.extra(),
        }


def own_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def mint(cfg: Config, user: str, device: str) -> str:
    now = int(time.time())
    claims = {"sub": user, "device_id": device, "iat": now, "exp": now + int(cfg.token_ttl)}
    return jwt.encode(claims, cfg.token_secret or "", algorithm="HS256")


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    cfg = Config.from_json(args[0])
    cfg.secret_from_env()
    cfg.load_groups()
    index, first, n = int(args[1]), int(args[2]), int(args[3])
    raise_nofile_limit()
    if cfg.scenario in ("chat", "reconnect"):
        from loadtest.chat import ChatWorker

        trio.run(ChatWorker(cfg, index, first, n).run)
    else:
        trio.run(Worker(cfg, index, first, n).run)


if __name__ == "__main__":
    main()
