"""The parent process: starts the workers, runs the scenario's phases, measures the server, aggregates."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import trio

from loadtest.config import MARKER_PLACEHOLDER, SECRET_ENV, Config
from loadtest.stats import Histogram, ServerProbe, Windows
from loadtest.wsclient import ConnectionClosed, WsClient


class LoadtestError(RuntimeError):
    pass


@dataclass
class WorkerHandle:
    index: int
    n: int
    proc: trio.Process
    progress: dict[str, Any] = field(default_factory=dict)
    ready: trio.Event = field(default_factory=trio.Event)
    done: trio.Event = field(default_factory=trio.Event)
    finished: trio.Event = field(default_factory=trio.Event)
    result: dict[str, Any] | None = None
    stderr: bytes = b""

    async def send(self, cmd: str) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self.proc.stdin.send_all(cmd.encode() + b"\n")


class Run:
    def __init__(self, cfg: Config, *, progress_stream: Any = None) -> None:
        cfg.validate()
        self.cfg = cfg
        self.probe = ServerProbe(cfg.server_pid)
        try:
            self.probe.rss()
        except (OSError, RuntimeError) as exc:
            raise LoadtestError(f"cannot read /proc/{cfg.server_pid}: {exc}") from exc
        self.workers: list[WorkerHandle] = []
        self.out = progress_stream if progress_stream is not None else sys.stderr
        self.phase = "start"
        self.published = 0
        self.t0 = time.monotonic()
        self.progressed = trio.Event()  # set (and replaced) on every message from a worker

    # --- workers -------------------------------------------------------------------------------

    async def _start_worker(self, nursery: trio.Nursery, index: int, first: int, n: int) -> WorkerHandle:
        cmd = [sys.executable, "-m", "loadtest.worker", self.cfg.for_worker(), str(index), str(first), str(n)]
        env = dict(os.environ)
        if self.cfg.token_secret is not None:
            env[SECRET_ENV] = self.cfg.token_secret
        proc = await trio.lowlevel.open_process(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        )
        handle = WorkerHandle(index, n, proc)
        nursery.start_soon(self._read_worker, handle)
        nursery.start_soon(self._read_stderr, handle)
        return handle

    async def _read_stderr(self, handle: WorkerHandle) -> None:
        assert handle.proc.stderr is not None
        async for chunk in handle.proc.stderr:
            handle.stderr = (handle.stderr + chunk)[-8192:]

    async def _read_worker(self, handle: WorkerHandle) -> None:
        assert handle.proc.stdout is not None
        buf = b""
        async for chunk in handle.proc.stdout:
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                msg = json.loads(line)
                kind = msg.pop("type")
                self.progressed.set()
                self.progressed = trio.Event()
                if kind in ("progress", "ready", "done", "result"):
                    handle.progress = {k: v for k, v in msg.items() if not isinstance(v, dict)}
                if kind == "ready":
                    handle.ready.set()
                elif kind == "done":
                    handle.done.set()
                elif kind == "result":
                    handle.result = msg
                    handle.ready.set()
                    handle.done.set()
        await handle.proc.wait()
        handle.ready.set()
        handle.done.set()
        handle.finished.set()

    def total(self, key: str) -> int:
        return sum(int(w.progress.get(key, 0)) for w in self.workers)

    async def _all(self, event: str, within: float) -> bool:
        with trio.move_on_after(within):
            for w in self.workers:
                await getattr(w, event).wait()
            return True
        return False

    async def _broadcast(self, cmd: str) -> None:
        for w in self.workers:
            await w.send(cmd)

    async def _progress_printer(self) -> None:
        """One progress line every `progress_interval` until cancelled, then a last one: even a run
        shorter than the interval shows its final state."""
        try:
            while True:
                await trio.sleep(self.cfg.progress_interval)
                self._print_progress()
        finally:
            self._print_progress(last=True)

    def _print_progress(self, last: bool = False) -> None:
        """On a terminal the line rewrites itself (`\\r`) until the last one ends it."""
        tty = hasattr(self.out, "isatty") and self.out.isatty()
        line = (
            f"[{self.cfg.scenario}] {time.monotonic() - self.t0:6.1f}s {self.phase:<8} "
            f"joined {self.total('joined')}/{self.cfg.connections} failed {self.total('failed')} "
            f"live {self.total('live')} published {self.published} received {self.total('received')} "
            f"replies {self.total('replies')}"
        )
        self.out.write(("\r" + line + ("\n" if last else "")) if tty else (line + "\n"))
        self.out.flush()

    # --- main ----------------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        cfg = self.cfg
        rss0, cpu0 = self.probe.rss(), self.probe.cpu()
        wait0 = self.probe.wait()
        summary: dict[str, Any] = {}
        hard_limit = 2 * cfg.effective_ramp_timeout() + cfg.duration + 2 * cfg.drain + 40.0
        try:
            with trio.fail_after(hard_limit):
                await self._phases(summary, rss0, cpu0)
        except trio.TooSlowError:
            raise LoadtestError(f"the run did not finish within its hard limit of {hard_limit:.0f} s") from None
        finally:
            for w in self.workers:
                if w.proc.returncode is None:
                    w.proc.kill()
        # how long the server was runnable but had no CPU (another process on its core)
        summary["server_runqueue_wait_s"] = _delta(wait0, self.probe.wait())
        summary["run_wall_s"] = round(time.monotonic() - self.t0, 3)
        return self._aggregate(summary)

    async def _phases(self, summary: dict[str, Any], rss0: int | None, cpu0: float | None) -> None:
        cfg = self.cfg
        async with trio.open_nursery() as nursery:
            printer = trio.CancelScope()

            async def printer_task() -> None:
                with printer:
                    await self._progress_printer()

            nursery.start_soon(printer_task)
            for index, (first, n) in enumerate(cfg.shares()):
                self.workers.append(await self._start_worker(nursery, index, first, n))
            self.phase = "ramp"
            t_ramp = time.monotonic()
            await self._all("ready", cfg.effective_ramp_timeout() + 10.0)
            ramp_s = time.monotonic() - t_ramp
            rss1, cpu1 = self.probe.rss(), self.probe.cpu()
            summary.update(ramp_s=round(ramp_s, 3))
            summary["server_rss_before_kib"] = rss0
            summary["server_rss_ready_kib"] = rss1
            summary["server_cpu_ramp_s"] = _delta(cpu0, cpu1)
            self.phase = "measure"
            if cfg.scenario == "connect":
                await self._broadcast("stop")
            elif cfg.scenario == "hold":
                await trio.sleep(cfg.duration)
                cpu2, rss2 = self.probe.cpu(), self.probe.rss()
                summary.update(hold_s=cfg.duration, server_cpu_hold_s=_delta(cpu1, cpu2), server_rss_end_kib=rss2)
                await self._broadcast("stop")
            elif cfg.scenario == "fanout":
                summary.update(await self._fanout(nursery))
                await self._broadcast("stop")
            elif cfg.scenario in ("chat", "reconnect"):
                cpu_a = self.probe.cpu()
                t_a = time.monotonic()
                self.phase = "send" if cfg.scenario == "chat" else "outage"
                await self._broadcast("go")
                await self._all("done", cfg.effective_ramp_timeout() + cfg.duration + 2 * cfg.drain + 10.0)
                summary.update(
                    measure_s=round(time.monotonic() - t_a, 3), server_cpu_measure_s=_delta(cpu_a, self.probe.cpu())
                )
                await self._broadcast("stop")
            elif cfg.scenario == "rtt":
                cpu_a = self.probe.cpu()
                t_a = time.monotonic()
                await self._broadcast("go")
                await self._all("done", cfg.duration + cfg.request_timeout + 5.0)
                summary.update(
                    measure_s=round(time.monotonic() - t_a, 3), server_cpu_measure_s=_delta(cpu_a, self.probe.cpu())
                )
                await self._broadcast("stop")
            self.phase = "stop"
            await self._all("finished", 30.0)
            printer.cancel()
            if hasattr(self.out, "isatty") and self.out.isatty():
                self.out.write("\n")

    async def _fanout(self, nursery: trio.Nursery) -> dict[str, Any]:
        cfg = self.cfg
        subscribers = self.total("joined")
        limit = cfg.count if cfg.count else int(cfg.duration * cfg.msg_rate)
        publisher: WsClient | None = None
        topic = cfg.topic_for(0) if cfg.publish_topic is None else cfg.publish_topic.replace("{conv}", cfg.conv_for(0))
        pub_scope = trio.CancelScope()
        if cfg.trigger_url is None:
            token = None
            if cfg.token_secret is not None:
                from loadtest.worker import mint

                token = mint(cfg, cfg.publisher_user, cfg.publisher_user)
            source = cfg.source_addr(cfg.source_ips) if cfg.source_ips else None  # past the subscribers' range
            with trio.fail_after(cfg.connect_timeout):
                publisher = await WsClient.connect(
                    cfg.host, cfg.port, cfg.target(token), subprotocols=cfg.subprotocols(), source=source
                )
                await publisher.send_text(json.dumps(["1", "1", topic, "phx_join", cfg.join_params]).encode())
                while True:
                    msg = json.loads(await publisher.recv())
                    if msg[1] == "1" and msg[3] == "phx_reply":
                        break
                if msg[4].get("status") != "ok":
                    raise LoadtestError(f"publisher join refused: {msg[4]}")

            async def drain_publisher() -> None:  # the server may broadcast to the publisher too
                assert publisher is not None
                with pub_scope, contextlib.suppress(ConnectionClosed, OSError):
                    while True:
                        await publisher.recv()

            nursery.start_soon(drain_publisher)
        cpu_a = self.probe.cpu()
        t_first = time.time()
        t_start = time.monotonic()
        self.phase = "publish"
        t_pub0 = trio.current_time()
        with trio.move_on_after(cfg.duration):
            for seq in range(limit):
                await trio.sleep_until(t_pub0 + seq / cfg.msg_rate)
                marker = f"lt:{seq}:{time.time_ns()}"
                if publisher is not None:
                    body = cfg.payload.replace(MARKER_PLACEHOLDER, marker)
                    frame = f'["1","{seq + 2}",{json.dumps(topic)},{json.dumps(cfg.event)},{body}]'
                    await publisher.send_text(frame.encode())
                else:
                    await _http_post(cfg, cfg.trigger_body.replace(MARKER_PLACEHOLDER, marker))
                self.published += 1
        t_last_send = time.monotonic()
        self.phase = "drain"
        expected = subscribers * self.published
        with trio.move_on_after(cfg.drain):
            while self.total("received") < expected:
                await self.progressed.wait()
        cpu_b = self.probe.cpu()
        pub_scope.cancel()
        if publisher is not None:
            await publisher.aclose()
        return {
            "subscribers": subscribers,
            "messages_sent": self.published,
            "publish_s": round(t_last_send - t_start, 3),
            "first_send_wall": t_first,
            "server_cpu_measure_s": _delta(cpu_a, cpu_b),
        }

    def _aggregate(self, summary: dict[str, Any]) -> dict[str, Any]:
        cfg = self.cfg
        hists: dict[str, Histogram] = {}
        windows = Windows()
        failures: Counter[str] = Counter()
        stats: Counter[str] = Counter()
        rss_client = 0
        client_cpu: float | None = None
        extras: list[dict[str, Any]] = []
        first_wall: float | None = None
        last_wall: float | None = None
        errors: list[str] = []
        ramp_first = min(
            (w.result["ramp_first_wall"] for w in self.workers if w.result and w.result["ramp_first_wall"]),
            default=None,
        )
        ramp_last = max(
            (w.result["ramp_last_wall"] for w in self.workers if w.result and w.result["ramp_last_wall"]), default=None
        )
        for w in self.workers:
            if w.result is None:
                errors.append(
                    f"worker {w.index} exited {w.proc.returncode}: {w.stderr.decode(errors='replace')[-2000:]}"
                )
                continue
            r = w.result
            for name, hj in r["hist"].items():
                hists.setdefault(name, Histogram()).merge(Histogram.from_json(hj))
            windows.merge(Windows.from_json(r["windows"]))
            failures.update(r["failures"])
            stats.update(r["stats"])
            if r.get("client_cpu_measure_s") is not None:
                client_cpu = (client_cpu or 0.0) + r["client_cpu_measure_s"]
            extras.append(r.get("extra") or {})
            if r["rss_ready_kib"] is not None:
                rss_client += r["rss_ready_kib"] - r["rss_start_kib"]
            if r["first_event_wall"] is not None:
                first_wall = r["first_event_wall"] if first_wall is None else min(first_wall, r["first_event_wall"])
            if r["last_event_wall"] is not None:
                last_wall = r["last_event_wall"] if last_wall is None else max(last_wall, r["last_event_wall"])
        if errors:
            raise LoadtestError("; ".join(errors))
        joined = stats["joined"]
        out: dict[str, Any] = {
            "type": "summary",
            "scenario": cfg.scenario,
            "connections": cfg.connections,
            "procs": cfg.procs,
            "attempted": stats["attempted"],
            "joined": joined,
            "failed": sum(v for k, v in failures.items() if not k.startswith("dropped")),
            "dropped": stats["dropped"],
            "failures": dict(failures),
            "client_kib_per_conn": round(rss_client / joined, 2) if joined else None,
            "client_cpu_measure_s": None if client_cpu is None else round(client_cpu, 3),
        }
        out.update(summary)
        for name in ("tcp", "upgrade", "join"):
            if name in hists:
                out[f"{name}_latency"] = hists[name].summary_ms()
        cpu = summary.get("server_cpu_measure_s")
        if cfg.scenario == "connect":
            out["success_rate"] = round(joined / cfg.connections, 4)
            out["connects_per_s"] = _rate(joined, ramp_first, ramp_last)
            ramp_cpu = summary.get("server_cpu_ramp_s")
            out["server_cpu_us_per_connect"] = _per(ramp_cpu, joined)
            out["server_kib_per_conn"] = _kib_per(summary, "server_rss_ready_kib", joined)
        elif cfg.scenario == "hold":
            out["server_kib_per_conn"] = _kib_per(summary, "server_rss_ready_kib", joined)
            hold_cpu = summary.get("server_cpu_hold_s")
            out["server_cpu_us_per_conn_s"] = (
                None if hold_cpu is None or not joined else round(hold_cpu * 1e6 / joined / cfg.duration, 3)
            )
        elif cfg.scenario == "fanout":
            expected = out["subscribers"] * out["messages_sent"]
            received = stats["received"]
            dups = stats["duplicates_or_reordered"]
            out.update(
                expected=expected,
                received=received,
                duplicates_or_reordered=dups,
                lost=expected - (received - dups),
                loss_rate=round((expected - (received - dups)) / expected, 6) if expected else None,
                stale_markers=stats["stale_markers"],
                deliveries_per_s=_rate(received, summary.pop("first_send_wall", None), last_wall),
                latency=hists.get("delivery", Histogram()).summary_ms(),
                server_cpu_us_per_delivery=_per(cpu, received),
            )
        elif cfg.scenario == "rtt":
            replies = stats["replies"]
            out.update(
                requests=stats["sent"],
                replies=replies,
                error_replies=stats["error_replies"],
                timeouts=stats["request_timeouts"],
                replies_per_s=_rate(replies, first_wall, last_wall),
                latency=hists.get("rtt", Histogram()).summary_ms(),
                server_cpu_us_per_request=_per(cpu, replies),
            )
        elif cfg.scenario in ("chat", "reconnect"):
            out.update(_chat_summary(cfg, stats, hists, extras, cpu))
        out["windows"] = _windows(windows)
        return out


def _chat_summary(
    cfg: Config, stats: Counter[str], hists: dict[str, Histogram], extras: list[dict[str, Any]], cpu: float | None
) -> dict[str, Any]:
    def total(key: str) -> int:
        return sum(int(e.get(key) or 0) for e in extras)

    def wall(key: str, pick: Any) -> float | None:
        values = [e[key] for e in extras if e.get(key) is not None]
        return pick(values) if values else None

    acked = stats["acked"]
    first_send, last_ack = wall("first_send_wall", min), wall("last_ack_wall", max)
    out: dict[str, Any] = {
        "conversations": cfg.connections // cfg.group_size,
        "target_msg_rate": cfg.msg_rate,
        "sent": stats["sent"],
        "acked": acked,
        "acked_duplicate": stats["acked_duplicate"],
        "send_errors": stats["send_errors"],
        "send_error_kinds": {k.removeprefix("send_error_"): v for k, v in stats.items() if k.startswith("send_error_")},
        "unacked": total("unacked"),
        "acked_per_s": _rate(acked, first_send, last_ack),
        "ack_latency": hists.get("ack", Histogram()).summary_ms(),
        "delivered": stats["received"],
        "lost": total("lost"),
        "duplicates": stats["duplicates"],
        "conv_seq_gaps": stats["conv_seq_gaps"],
        "conv_seq_repeated": stats["conv_seq_repeated"],
        "user_deliveries": stats["user_deliveries"],
        "delivery_latency": hists.get("delivery", Histogram()).summary_ms(),
        "delivery_all_members_latency": hists.get("delivery_all", Histogram()).summary_ms(),
        "server_cpu_us_per_ack": _per(cpu, acked),
        "server_cpu_us_per_delivery": _per(cpu, stats["received"] + stats["user_deliveries"]),
    }
    if cfg.scenario == "reconnect":
        storm, last_caught = wall("storm_wall", min), wall("last_caught_wall", max)
        out.update(
            dropped=stats["dropped_on_purpose"],
            rejoined=stats["rejoined"],
            caught_up=stats["caught_up"],
            not_rejoined=total("not_rejoined"),
            replayed=stats["replayed"],
            missing_conv=total("missing_conv"),
            missing_user=total("missing_user"),
            user_seq_repeated=stats["user_seq_repeated"],
            rejoin_time=hists.get("rejoin", Histogram()).summary_ms(),
            catchup_time=hists.get("catchup", Histogram()).summary_ms(),
            all_caught_up_s=None if storm is None or last_caught is None else round(last_caught - storm, 3),
        )
    return out


def _delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(b - a, 3)


def _per(cpu_s: float | None, n: int) -> float | None:
    return None if cpu_s is None or not n else round(cpu_s * 1e6 / n, 2)


def _kib_per(summary: dict[str, Any], key: str, n: int) -> float | None:
    before, after = summary.get("server_rss_before_kib"), summary.get(key)
    return None if before is None or after is None or not n else round((after - before) / n, 2)


def _rate(n: int, first: float | None, last: float | None) -> float | None:
    if not n or first is None or last is None or last <= first:
        return None
    return round(n / (last - first), 1)


def _windows(w: Windows) -> list[dict[str, Any]]:
    if not w.by_second:
        return []
    t0 = min(w.by_second)
    return [{"t": sec - t0, **h.summary_ms()} for sec, h in sorted(w.by_second.items())]


async def _http_post(cfg: Config, body: str) -> None:
    """POST `body` to cfg.trigger_url (HTTP/1.1, Connection: close); raises on a non-2xx status."""
    assert cfg.trigger_url is not None
    parts = urlsplit(cfg.trigger_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    data = body.encode()
    head = [
        f"POST {target or '/'} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(data)}",
        "Connection: close",
        *cfg.trigger_headers,
    ]
    with trio.fail_after(cfg.request_timeout):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            await stream.send_all(("\r\n".join(head) + "\r\n\r\n").encode() + data)
            resp = b""
            while b"\r\n" not in resp:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    break
                resp += chunk
    status_line = resp.split(b"\r\n", 1)[0].decode("latin-1")
    parts2 = status_line.split(" ")
    if len(parts2) < 2 or not parts2[1].startswith("2"):
        raise LoadtestError(f"trigger POST failed: {status_line!r}")


async def run(cfg: Config, *, progress_stream: Any = None) -> dict[str, Any]:
    """Run one load scenario to completion and return its summary (see `Run._aggregate`)."""
    return await Run(cfg, progress_stream=progress_stream).run()
