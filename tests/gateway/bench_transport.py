"""Transport measurements, run by hand (prints, asserts nothing):

    python -m tests.gateway.bench_transport [--connections 2000] [--fanout 1000] [--rounds 20]

The endpoint runs in a child process (`... server`), the clients in this one, so the server's
RSS and CPU (`resource.getrusage`) are its own. Reported:
- server CPU per connect + upgrade (no JWT, no join: the transport's share of the connect budget);
- RSS per idle upgraded connection (statm delta over `--connections`, after `gc.collect()`);
- server CPU per delivered frame: one pre-built 200-byte text frame `send` to `--fanout`
  connections, `--rounds` times, every client reading.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import sys

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


def _rss() -> int:
    gc.collect()
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _Idle:
    __slots__ = ("transport",)

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    async def on_text(self, data: str) -> None:
        pass

    async def on_binary(self, data: bytes) -> None:
        pass

    async def on_close(self) -> None:
        pass


async def server() -> None:
    """Serve, then obey commands on stdin: `mark`, `report N`, `broadcast FANOUT ROUNDS`."""
    transports: list[Transport] = []

    def build(transport: Transport) -> _Idle:
        transports.append(transport)
        return _Idle(transport)

    async def connect(request: UpgradeRequest) -> Accept:
        return Accept(build)

    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(Endpoint(EndpointConfig(host="127.0.0.1", port=0, backlog=4096), connect).serve)
        print(port, flush=True)
        mark = (0.0, 0, 0.0)
        buffer = b""
        while line := await stdin.receive_some():
            buffer += line
            while b"\n" in buffer:
                command, buffer = buffer.split(b"\n", 1)
                words = command.decode().split()
                await trio.testing.wait_all_tasks_blocked()
                if words[0] == "mark":
                    mark = (_cpu(), _rss(), _user())
                    print("ok", flush=True)
                elif words[0] == "report":
                    n = int(words[1])
                    cpu, rss, user = _cpu() - mark[0], _rss() - mark[1], _user() - mark[2]
                    print(f"{cpu / n * 1e6:.1f} {rss / n / 1024:.2f} {user / n * 1e6:.1f}", flush=True)
                elif words[0] == "broadcast":
                    fanout, rounds = int(words[1]), int(words[2])
                    targets = transports[:fanout]
                    start, start_user = _cpu(), _user()
                    for _ in range(rounds):
                        for transport in targets:
                            transport.send(FRAME)
                        await trio.testing.wait_all_tasks_blocked()  # any writer that had to run is done
                    n = fanout * rounds
                    print(f"{(_cpu() - start) / n * 1e6:.2f} {(_user() - start_user) / n * 1e6:.2f}", flush=True)
        nursery.cancel_scope.cancel()


async def clients(connections: int, fanout: int, rounds: int) -> None:
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "tests.gateway.bench_transport", "server"], stdin=-1, stdout=-1
    )
    assert process.stdin is not None
    assert process.stdout is not None
    lines = b""

    async def ask(command: str) -> str:
        nonlocal lines
        assert process.stdin is not None
        assert process.stdout is not None
        await process.stdin.send_all(command.encode() + b"\n")
        while b"\n" not in lines:
            lines += await process.stdout.receive_some()
        answer, lines = lines.split(b"\n", 1)
        return answer.decode()

    while b"\n" not in lines:
        lines += await process.stdout.receive_some()
    port_line, lines = lines.split(b"\n", 1)
    port = int(port_line)
    await ask("mark")
    opened: list[RawClient] = []
    request = upgrade_request("/socket/websocket?vsn=2.0.0")
    for _ in range(connections):
        client = await RawClient.connect(port, request)
        assert client.status == 101
        opened.append(client)
    cpu_us, kib, user_us = (float(v) for v in (await ask(f"report {connections}")).split())
    print(
        f"connect+upgrade: {cpu_us:.0f} us server CPU each ({user_us:.0f} us in user space);"
        f" idle connection: {kib:.2f} KiB RSS each ({connections} connections)"
    )

    expected = len(FRAME) * rounds
    done = trio.Event()
    remaining = fanout

    async def drain(client: RawClient) -> None:
        nonlocal remaining
        got = 0
        while got < expected:
            got += len(await client.stream.receive_some())
        remaining -= 1
        if not remaining:
            done.set()

    async with trio.open_nursery() as nursery:
        for client in opened[:fanout]:
            nursery.start_soon(drain, client)
        total, user = (await ask(f"broadcast {fanout} {rounds}")).split()
        await done.wait()
    print(
        f"broadcast: {total} us server CPU per delivered frame, {user} us of it in user space"
        f" ({fanout} connections x {rounds} rounds, {len(FRAME)}-byte frame)"
    )
    for client in opened:
        await client.stream.aclose()
    await process.stdin.aclose()
    await process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("role", nargs="?", default="clients", choices=["clients", "server"])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--fanout", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    if args.role == "server":
        trio.run(server)
    else:
        trio.run(clients, args.connections, args.fanout, args.rounds)


if __name__ == "__main__":
    main()
