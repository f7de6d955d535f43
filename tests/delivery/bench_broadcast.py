"""Benchmark of one broadcast to a large conversation (issue 6 "one broadcast to 10k subscribers").

Drives the real channels, `MessageRouter`, `LiveDelivery` and `PhoenixSocket`s on fake transports
(no network) over the embedded SQLite store, with the Prometheus metrics attached as in a node:
`--members` devices, one per member, joined on their own `user:<id>` topic only (as in the loadtest's
10k fan-out row), and one sender, a member too, who sends `--messages` messages one after the other
through the router (as the service API does).

Figures, one line per message:
- append ms: the router's send until it returns (the durable append of one inbox row per member);
- last frame ms: the send until the last member's frame is written to its transport;
- cpu ms: process CPU (all threads) over the same interval.
Asserts that every member received every message once, on `user:`, in order.

Run: `python -m tests.delivery.bench_broadcast [--members 10000] [--messages 3]`. Not collected by
pytest (no `test_` prefix).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import trio

from tests.delivery.bench_live import Device, Transport, settle, start_delivery
from whispr.adapters.sqlite_store import open_sqlite_store
from whispr.delivery.router import Draft
from whispr.gateway.socket import PhoenixSocket
from whispr.observability.metrics import Metrics
from whispr.protocol import V2, Identity

SENDER = "lt-pub"


async def run(members: int, messages: int, path: Path) -> None:
    async with open_sqlite_store(path) as store, trio.open_nursery() as nursery:
        deps, router, pubsub = await start_delivery(store, nursery)
        users = [f"g{i}" for i in range(members)]
        cid = await store.create_conversation([*users, SENDER])
        devices = []
        for user in users:
            identity = Identity(user, "d1", "web")
            transport = Transport()
            devices.append(Device(PhoenixSocket(transport, V2, router, pubsub, identity), transport, identity))
            await devices[-1].push(f"user:{user}", "phx_join", {})
        await settle()
        for device in devices:
            device.transport.frames.clear()

        for n in range(messages):
            cpu, started = time.process_time(), time.perf_counter()
            await deps.router.send(cid, SENDER, "api", Draft(f"b{n}", "hello", "text", {}, None))
            appended = time.perf_counter()
            await settle()
            cpu = time.process_time() - cpu
            last = max(device.transport.frames[-1][0] for device in devices)
            print(
                f"message {n + 1}: append ms {1000 * (appended - started):.1f}"
                f"  last frame ms {1000 * (last - started):.1f}  cpu ms {1000 * cpu:.1f}",
                flush=True,
            )
        nursery.cancel_scope.cancel()

    for device in devices:
        pushes = [json.loads(frame[2 + (2 if frame[1] & 0x7F == 126 else 0) :]) for _, frame in device.transport.frames]
        seqs = [push[4]["inbox_seq"] for push in pushes if push[3] == "new_message"]
        assert seqs == list(range(1, messages + 1)), (device.identity.user_id, seqs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--messages", type=int, default=3)
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()}")
    Metrics("bench")
    with tempfile.TemporaryDirectory() as tmp:
        trio.run(run, args.members, args.messages, Path(tmp) / "bench.db")
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
