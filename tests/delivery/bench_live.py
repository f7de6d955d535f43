"""Benchmark of the live delivery path of `new_message` (issue 6): prints figures, asserts correctness.

Drives the real `LiveDelivery`, `MessageRouter`, channels and `PhoenixSocket`s on fake transports
(no network) over the embedded SQLite store: `--conversations` conversations of `--members`
members, one device per member, joined on `user:<id>` and `conversation:<id>` (so every message
is 2 x members frames). `--senders` devices send `--messages` messages in a closed loop through
their sockets (`send_message`, waiting for the `ok`).

Figures (one line per repeat, then the medians):
- msgs/s: acked sends per second of wall time;
- ack p50/p99: `send_message` push to its `ok` written;
- dlv p99: push to the last member frame written (fan-out complete);
- live µs/frame: main-thread CPU spent in the `LiveDelivery.run` task (Trio instrument, task steps)
  per delivered `new_message` frame: offers, pulls' bookkeeping, encoding, transport writes;
- read µs/frame: store-thread CPU of the live path's store reads (`inbox_after`, `messages_after`)
  per delivered frame;
- proc µs/frame: whole-process CPU (all threads: sockets, router, SQLite commits, delivery) per frame;
- calls/msg: store calls per acked message, by operation.

Run: `python -m tests.delivery.bench_live [--conversations 1000] [--members 10] [--messages 20000]
[--senders 300] [--repeat 3] [--metrics]`. Not collected by pytest (no `test_` prefix).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
import trio.testing

from whispr.adapters.sqlite_store import SQLiteStore, open_sqlite_store
from whispr.channels.router import Router
from whispr.channels.user import make_router
from whispr.delivery.deps import Deps
from whispr.delivery.store import MessageStore
from whispr.gateway.socket import PhoenixSocket
from whispr.observability.metrics import Metrics
from whispr.presence import PresenceTracker
from whispr.protocol import V2, Identity
from whispr.pubsub import PubSub
from whispr.security.gatekeeper import Refusal


class Transport:
    """Records (time, frame) of every frame written; nothing else."""

    __slots__ = ("frames",)

    def __init__(self) -> None:
        self.frames: list[tuple[float, bytes]] = []

    def send(self, frame: bytes, droppable: bool = False) -> None:
        self.frames.append((time.perf_counter(), frame))

    def close(self, code: int, reason: str = "") -> None:
        raise AssertionError(f"closed {code} {reason}")


class Guard:
    async def check_join(self) -> Refusal | None:
        return None

    async def check_message(self, content: str) -> Refusal | None:
        return None


class CountingStore:
    """Delegates to the store and counts calls by method name."""

    def __init__(self, store: SQLiteStore) -> None:
        self._store = store
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if not callable(attr) or name.startswith("_"):
            return attr
        calls = self.calls

        def counted(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return attr(*args, **kwargs)

        return counted


class TaskCPU(trio.abc.Instrument):
    """Main-thread CPU of the steps of the tasks whose name ends with `suffix`."""

    def __init__(self, suffix: str) -> None:
        self.suffix = suffix
        self.cpu = 0.0
        self._started = 0.0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name.endswith(self.suffix):
            self._started = time.thread_time()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name.endswith(self.suffix):
            self.cpu += time.thread_time() - self._started


def timed(fn: Callable[..., Any], box: list[float]) -> Callable[..., Any]:
    """`fn` (run on the store thread) with its thread CPU added to box[0]."""

    def run(*args: Any) -> Any:
        started = time.thread_time()
        try:
            return fn(*args)
        finally:
            box[0] += time.thread_time() - started

    return run


class Device:
    __slots__ = ("identity", "join_refs", "ref", "socket", "transport")

    def __init__(self, socket: PhoenixSocket, transport: Transport, identity: Identity) -> None:
        self.socket = socket
        self.transport = transport
        self.identity = identity
        self.ref = 0
        self.join_refs: dict[str, str] = {}

    async def push(self, topic: str, event: str, payload: dict[str, Any]) -> str:
        self.ref += 1
        ref = str(self.ref)
        join_ref = ref if event == "phx_join" else self.join_refs[topic]
        if event == "phx_join":
            self.join_refs[topic] = ref
        await self.socket.on_text(json.dumps([join_ref, ref, topic, event, payload]))
        return ref


async def settle() -> None:
    while True:
        await trio.testing.wait_all_threads_completed()
        await trio.testing.wait_all_tasks_blocked()
        if trio.testing.active_thread_count() == 0:
            return


async def start_delivery(store: MessageStore, nursery: trio.Nursery) -> tuple[Deps, Router, PubSub]:
    """A node's messaging services over `store` without the network, as `whispr.app` wires them:
    local pub/sub, presence, live delivery (started in `nursery`), and the channel router over a
    guard that admits everything."""
    pubsub = PubSub()

    def publish(topic: str, event: str, payload: dict[str, Any]) -> None:
        pubsub.broadcast(topic, event, payload, droppable=True)

    presence = PresenceTracker(publish, node="n1")
    guard = Guard()
    deps = Deps.build(store, presence, lambda identity: guard)
    await nursery.start(deps.live.run)
    await nursery.start(presence.run)
    return deps, make_router(deps), pubsub


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else (values[0] if values else 0.0)


async def run_once(args: argparse.Namespace, path: Path, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    async with open_sqlite_store(path) as sqlite, trio.open_nursery() as nursery:
        store = CountingStore(sqlite)
        read_cpu = [0.0]
        sqlite._inbox_after = timed(sqlite._inbox_after, read_cpu)  # type: ignore[method-assign]
        sqlite._messages_after = timed(sqlite._messages_after, read_cpu)  # type: ignore[method-assign]
        deps, router, pubsub = await start_delivery(store, nursery)

        conversations: list[tuple[str, list[Device]]] = []
        for c in range(args.conversations):
            users = [f"u{c}-{k}" for k in range(args.members)]
            cid = await sqlite.create_conversation(users)
            devices = []
            for user in users:
                transport = Transport()
                identity = Identity(user, "d1", "web")
                socket = PhoenixSocket(transport, V2, router, pubsub, identity)
                deps.connections.add(socket)
                devices.append(Device(socket, transport, identity))
            conversations.append((cid, devices))
        joined = time.perf_counter()
        for cid, devices in conversations:
            for device in devices:
                await device.push(f"user:{device.identity.user_id}", "phx_join", {})
                await device.push(f"conversation:{cid}", "phx_join", {})
        await settle()
        joined = time.perf_counter() - joined
        for _, devices in conversations:
            for device in devices:
                device.transport.frames.clear()

        senders = [
            (cid, devices[s // len(conversations) % len(devices)])
            for s, (cid, devices) in ((s, conversations[s % len(conversations)]) for s in range(args.senders))
        ]
        started_at: dict[str, float] = {}
        acks: list[float] = []
        per_sender = args.messages // len(senders)
        store.calls.clear()
        read_cpu[0] = 0.0
        instrument = TaskCPU("LiveDelivery.run")
        trio.lowlevel.add_instrument(instrument)

        async def sender(n: int, cid: str, device: Device) -> None:
            topic = f"conversation:{cid}"
            for i in range(per_sender):
                cmid = f"s{n}-{i}"
                started = started_at[cmid] = time.perf_counter()
                await device.push(topic, "send_message", {"client_message_id": cmid, "content": "x" * 100})
                acks.append(time.perf_counter() - started)

        cpu0, wall0 = time.process_time(), time.perf_counter()
        rng.shuffle(senders)
        async with trio.open_nursery() as senders_nursery:
            for n, (cid, device) in enumerate(senders):
                senders_nursery.start_soon(sender, n, cid, device)
        wall = time.perf_counter() - wall0
        await settle()
        cpu = time.process_time() - cpu0
        trio.lowlevel.remove_instrument(instrument)
        calls = dict(store.calls)
        nursery.cancel_scope.cancel()

    # Correctness and delivery latency: every member device got every message of its conversation
    # once, in order, on both topics.
    sent = len(acks)
    frames = 0
    last_at: dict[str, float] = {}
    for _, devices in conversations:
        for device in devices:
            inbox_seqs: list[int] = []
            conv_seqs: list[int] = []
            for at, frame in device.transport.frames:
                message = json.loads(frame[2 + (2 if frame[1] & 0x7F == 126 else 0) :])
                if message[3] != "new_message":
                    continue
                frames += 1
                payload = message[4]
                if message[2].startswith("user:"):
                    inbox_seqs.append(payload["inbox_seq"])
                else:
                    conv_seqs.append(payload["seq"])
                cmid = payload["client_message_id"]
                if at > last_at.get(cmid, 0.0):
                    last_at[cmid] = at
            assert inbox_seqs == list(range(1, len(inbox_seqs) + 1)), inbox_seqs[:20]
            assert conv_seqs == list(range(1, len(conv_seqs) + 1)), conv_seqs[:20]
            assert len(inbox_seqs) == len(conv_seqs)
    assert frames == sent * args.members * 2, (frames, sent)
    deliveries = [last_at[cmid] - started for cmid, started in started_at.items()]
    figures = {
        "join_s": joined,
        "msgs_s": sent / wall,
        "ack_p50_ms": pct(acks, 50) * 1e3,
        "ack_p99_ms": pct(acks, 99) * 1e3,
        "dlv_p99_ms": pct(deliveries, 99) * 1e3,
        "live_us_frame": instrument.cpu / frames * 1e6,
        "read_us_frame": read_cpu[0] / frames * 1e6,
        "proc_us_frame": cpu / frames * 1e6,
        "proc_us_msg": cpu / sent * 1e6,
    }
    for name, count in sorted(calls.items()):
        figures[f"calls/msg {name}"] = count / sent
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=1000)
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--senders", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--metrics",
        action="store_true",
        help="attach the Prometheus metrics, as a node does (telemetry costs included)",
    )
    args = parser.parse_args()
    if args.metrics:
        Metrics("bench")
    print(f"load average at start: {os.getloadavg()}")
    print(
        f"{args.conversations} conversations x {args.members} members, {args.conversations * args.members} devices"
        f" on user: and conversation:, {args.messages} messages from {args.senders} closed-loop senders"
    )
    runs = []
    for r in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            figures = trio.run(run_once, args, Path(tmp) / "bench.db", r)
        runs.append(figures)
        print(f"run {r + 1}: " + "  ".join(f"{k} {v:.2f}" for k, v in figures.items()), flush=True)
    keys = sorted({k for run in runs for k in run}, key=lambda k: (k.startswith("calls"), k))
    print("median: " + "  ".join(f"{k} {statistics.median(run.get(k, 0.0) for run in runs):.2f}" for k in keys))
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
