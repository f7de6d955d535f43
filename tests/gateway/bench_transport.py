"""Transport measurements, run by hand (prints, asserts nothing):

    python -m tests.gateway.bench_transport [--connections 2000] [--concurrency 1 50]
        [--rounds 20] [--repeat 5] [--profile /tmp/server.pstats]

The endpoint runs in a child process (`... server`), the clients in this one, so the server's
RSS and CPU (`resource.getrusage`) are its own. Per run and per `--concurrency` level (clients
connecting at once; 1 is sequential, which pays a full scheduler round and an epoll wake-up per
connect), reported:
- server CPU per connect + upgrade (no JWT, no join: the transport's share of the connect budget),
  from accept to the upgraded connection waiting for its first frame;
- server CPU per close: the client drops TCP (no close frame), the server reads EOF, tears down
  and runs `on_close`;
- RSS per idle upgraded connection (statm delta, after `gc.collect()`);
- server CPU per delivered frame: one pre-built 200-byte text frame `send` to every connection
  of the last concurrency level, `--rounds` times, every client reading (once per run).
With `--repeat` > 1 the medians follow. The machine may be shared: note `uptime` with the figures.
`--profile PATH` runs the server under cProfile (timed in process CPU time) and writes its stats
to PATH; it inflates every figure: use it for call counts and shares (`python -m pstats PATH`).
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import statistics
import sys
import time

import trio
import trio.testing

from whispr.gateway.endpoint import Endpoint, EndpointConfig
from whispr.gateway.frames import text_frame
from whispr.gateway.transport import Accept, Transport, UpgradeRequest

from .helpers import RawClient, upgrade_request

FRAME = text_frame(b'[null,null,"conversation:1","new_message",{"body":"' + b"x" * 145 + b'"}]')


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _user() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_utime


_gc_time = [0.0, 0.0]  # CPU seconds spent in automatic collections; start of the current one


def _on_gc(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        _gc_time[1] = time.process_time()
    else:
        _gc_time[0] += time.process_time() - _gc_time[1]


def _rss() -> int:
    gc.callbacks.remove(_on_gc)
    gc.collect()
    gc.callbacks.append(_on_gc)
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _Idle:
    __slots__ = ("transport",)
    open = 0
    all_closed = trio.Event()

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        type(self).open += 1

    async def on_text(self, data: str) -> None:
        pass

    async def on_binary(self, data: bytes) -> None:
        pass

    async def on_close(self) -> None:
        cls = type(self)
        cls.open -= 1
        if not cls.open:
            cls.all_closed.set()


async def server() -> None:
    """Serve, then obey commands on stdin: `mark`, `report N`, `closed N`, `broadcast ROUNDS`."""
    transports: list[Transport] = []

    def build(transport: Transport) -> _Idle:
        transports.append(transport)
        return _Idle(transport)

    async def connect(request: UpgradeRequest) -> Accept:
        return Accept(build)

    gc.callbacks.append(_on_gc)
    if os.environ.get("BENCH_GC_FREEZE"):
        gc.freeze()  # what an application may do once started: its long-lived objects leave the GC's scans
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    endpoint = Endpoint(EndpointConfig(host="127.0.0.1", port=0, backlog=4096), connect)
    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(endpoint.serve)
        print(port, flush=True)
        mark = (0.0, 0, 0.0, 0.0)
        buffer = b""
        while line := await stdin.receive_some():
            buffer += line
            while b"\n" in buffer:
                command, buffer = buffer.split(b"\n", 1)
                words = command.decode().split()
                await trio.testing.wait_all_tasks_blocked()
                if words[0] == "mark":
                    mark = (_cpu(), _rss(), _user(), _gc_time[0])
                    print("ok", flush=True)
                elif words[0] in ("report", "closed"):
                    n = int(words[1])
                    if words[0] == "closed":
                        if _Idle.open:  # wait until every EOF was served
                            await _Idle.all_closed.wait()
                        _Idle.all_closed = trio.Event()
                        transports.clear()
                    cpu, user, in_gc = _cpu() - mark[0], _user() - mark[2], _gc_time[0] - mark[3]
                    rss = _rss() - mark[1]
                    print(
                        f"{cpu / n * 1e6:.1f} {rss / n / 1024:.2f} {user / n * 1e6:.1f} {in_gc / n * 1e6:.1f}",
                        flush=True,
                    )
                elif words[0] == "broadcast":
                    rounds = int(words[1])
                    targets = list(transports)
                    fanout = len(targets)
                    start, start_user = _cpu(), _user()
                    for _ in range(rounds):
                        for transport in targets:
                            transport.send(FRAME)
                        await trio.testing.wait_all_tasks_blocked()  # any writer that had to run is done
                    n = fanout * rounds
                    print(f"{(_cpu() - start) / n * 1e6:.2f} {(_user() - start_user) / n * 1e6:.2f}", flush=True)
        nursery.cancel_scope.cancel()


async def one_run(connections: int, levels: list[int], rounds: int, profile: str | None) -> dict[str, float]:
    env = {**os.environ, "BENCH_PROFILE": profile} if profile else None
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "tests.gateway.bench_transport", "server"], stdin=-1, stdout=-1, env=env
    )
    assert process.stdin is not None
    assert process.stdout is not None
    lines = b""

    async def ask(command: str) -> list[float]:
        nonlocal lines
        assert process.stdin is not None
        assert process.stdout is not None
        await process.stdin.send_all(command.encode() + b"\n")
        while b"\n" not in lines:
            lines += await process.stdout.receive_some()
        answer, lines = lines.split(b"\n", 1)
        return [float(word) for word in answer.decode().split()] if answer != b"ok" else []

    while b"\n" not in lines:
        lines += await process.stdout.receive_some()
    port_line, lines = lines.split(b"\n", 1)
    port = int(port_line)
    request = upgrade_request("/socket/websocket?vsn=2.0.0")
    figures: dict[str, float] = {}
    opened: list[RawClient] = []
    for level in levels:
        await ask("mark")
        opened = []
        limiter = trio.CapacityLimiter(level)

        async def open_one(limiter: trio.CapacityLimiter = limiter, opened: list[RawClient] = opened) -> None:
            async with limiter:
                client = await RawClient.connect(port, request)
            assert client.status == 101
            opened.append(client)

        async with trio.open_nursery() as nursery:
            for _ in range(connections):
                nursery.start_soon(open_one)
        cpu_us, kib, user_us, gc_us = await ask(f"report {connections}")
        print(
            f"  connect+upgrade x{level:<3}: {cpu_us:6.1f} us server CPU each ({user_us:.1f} user, {gc_us:.1f} in GC);"
            f" idle connection {kib:.2f} KiB RSS ({connections} connections)"
        )
        figures[f"connect x{level} gc us"] = gc_us
        figures[f"connect x{level} us"] = cpu_us
        figures[f"connect x{level} user us"] = user_us
        if level != levels[-1]:
            await ask("mark")
            for client in opened:
                await client.stream.aclose()
            cpu_us, _, user_us, gc_us = await ask(f"closed {connections}")
            print(f"  close (EOF):       {cpu_us:6.1f} us server CPU each ({user_us:.1f} user, {gc_us:.1f} in GC)")
            figures["close us"] = cpu_us
            figures["close user us"] = user_us

    expected = len(FRAME) * rounds
    done = trio.Event()
    fanout = remaining = len(opened)

    async def drain(client: RawClient) -> None:
        nonlocal remaining
        got = 0
        while got < expected:
            got += len(await client.stream.receive_some())
        remaining -= 1
        if not remaining:
            done.set()

    async with trio.open_nursery() as nursery:
        for client in opened:
            nursery.start_soon(drain, client)
        total, user = await ask(f"broadcast {rounds}")
        await done.wait()
    print(
        f"  broadcast:         {total:6.2f} us server CPU per delivered frame ({user:.2f} user;"
        f" {fanout} connections x {rounds} rounds, {len(FRAME)}-byte frame)"
    )
    figures["broadcast us"] = total
    figures["broadcast user us"] = user
    for client in opened:
        await client.stream.aclose()
    await process.stdin.aclose()
    await process.wait()
    return figures


async def clients(args: argparse.Namespace) -> None:
    runs: list[dict[str, float]] = []
    for index in range(args.repeat):
        print(f"run {index + 1}/{args.repeat} (load average {os.getloadavg()[0]:.2f})", flush=True)
        runs.append(await one_run(args.connections, args.concurrency, args.rounds, args.profile))
    if args.repeat > 1:
        print(f"medians of {args.repeat} runs (load average now {os.getloadavg()[0]:.2f}):")
        for key in runs[0]:
            values = sorted(run[key] for run in runs)
            print(f"  {key:22} {statistics.median(values):7.2f}   (min {values[0]:.2f}, max {values[-1]:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("role", nargs="?", default="clients", choices=["clients", "server"])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 50])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--profile", help="run the server under cProfile, stats to this file")
    args = parser.parse_args()
    if args.role == "server":
        if profile := os.environ.get("BENCH_PROFILE"):
            import cProfile

            profiler = cProfile.Profile(time.process_time)  # CPU time: a wait for epoll costs nothing
            profiler.runcall(trio.run, server)
            profiler.dump_stats(profile)
        else:
            trio.run(server)
    else:
        trio.run(clients, args)


if __name__ == "__main__":
    main()
