"""Load for the fault tests: reconnecting Phoenix devices in conversations that span the nodes.

A `Device` is one user's one device, a member of one conversation, with one socket at a time:
- it connects to its home node first; after a close it waits the client backoff of reliability.md
  E2 (1 s, ×1.5 per failed attempt, at most 30 s, reset once a join succeeds) and tries the nodes in
  turn starting with the next one (what a load balancer in front of the nodes does);
- each connection joins `conversation:<id>` with `last_seq` = the last seq it holds without a gap
  (contract.md §4.3), so the server replays what it missed;
- between `Traffic.go` and `Traffic.halt` it sends `send_message` one at a time, paced, each with its own
  `client_message_id`; a send whose socket closed before the reply is sent again, with the same
  id, on the next connection (contract.md §4.2: the retry is acked with the original id and seq);
- it records every ack, every `new_message` (id, seq, arrival time) in arrival order, and every
  connection (node, opened, joined, closed, close code).
`Ledger` turns those records into the figures of reliability.md §2.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, HandshakeError

from tests.drain.serve import Closed, RawClient, open_websocket
from tests.faults.cluster import Cluster, fresh_database
from tests.faults.figures import Figures
from tests.services import PostgresServer, RedisServer

BACKOFF_FIRST = 1.0  # reliability.md E2: client backoff 1 s, ×1.5, max 30 s
BACKOFF_FACTOR = 1.5
BACKOFF_MAX = 30.0
DEVICES = 120  # the standard load: 30 conversations of four members, two on each node
SIZE = 4
INTERVAL = 1.0  # seconds between one device's sends: 120 sends/s offered over the cluster
HEARTBEAT_INTERVAL = 30.0  # phoenix.js: a heartbeat every 30 s keeps the socket under the 90 s idle timeout


@dataclass
class Traffic:
    """The run's phases: devices send (one every `interval` s) from `go` until `halt`; `stopped` ends the run."""

    interval: float
    content_bytes: int = 16
    go: trio.Event = field(default_factory=trio.Event)
    halt: trio.Event = field(default_factory=trio.Event)
    stopped: trio.Event = field(default_factory=trio.Event)


@dataclass
class Connection:
    node: str
    opened_at: float
    joined_at: float | None = None
    join_head: int | None = None  # the conversation head in the join reply
    caught_up_at: float | None = None  # when the device held every seq up to `join_head`
    closed_at: float | None = None
    close_code: int | None = None
    ended_by_client: bool = False  # the test stopped it, or the device left after a refused join


@dataclass(frozen=True)
class Arrival:
    seq: int
    message_id: str
    origin: str  # sender id / client_message_id
    at: float


@dataclass
class Ack:
    message_id: str
    seq: int
    sent_at: float  # first attempt
    acked_at: float
    duplicate: bool


@dataclass
class Device:
    user: str
    device: str
    conversation: str
    home: str
    acks: dict[str, Ack] = field(default_factory=dict)  # client_message_id -> ack
    refusals: list[tuple[float, dict[str, Any]]] = field(default_factory=list)  # error replies to sends
    arrivals: list[Arrival] = field(default_factory=list)  # raw, in arrival order
    by_seq: dict[int, str] = field(default_factory=dict)  # seq -> id (first one received)
    contiguous: int = 0  # the highest seq held without a gap
    connections: list[Connection] = field(default_factory=list)
    join_failures: list[dict[str, Any]] = field(default_factory=list)  # error responses to joins
    connect_refusals: list[int] = field(default_factory=list)  # HTTP status of refused upgrades
    _sent: int = 0
    _pending: tuple[str, float] | None = None  # (client_message_id, first attempt) awaiting an ack

    @property
    def topic(self) -> str:
        return f"conversation:{self.conversation}"

    @property
    def current(self) -> Connection | None:
        """The open connection, if any."""
        if self.connections and self.connections[-1].closed_at is None:
            return self.connections[-1]
        return None

    def record_frame(self, frame: list[Any]) -> None:
        """`RawClient.on_frame`: record a `new_message` of the device's conversation."""
        if frame[2] != self.topic or frame[3] != "new_message":
            return
        now = trio.current_time()
        message = frame[4]
        seq, message_id = int(message["seq"]), str(message["id"])
        self.arrivals.append(Arrival(seq, message_id, f"{message['sender_id']}/{message['client_message_id']}", now))
        self.by_seq.setdefault(seq, message_id)
        while self.contiguous + 1 in self.by_seq:
            self.contiguous += 1
        self._check_caught_up(now)

    def _check_caught_up(self, now: float) -> None:
        conn = self.current
        if (
            conn is not None
            and conn.join_head is not None
            and conn.caught_up_at is None
            and self.contiguous >= conn.join_head
        ):
            conn.caught_up_at = now

    async def run(self, cluster: Cluster, traffic: Traffic) -> None:
        """Connect, join, send and reconnect until `traffic.stopped`; never raises for a fault."""
        backoff = BACKOFF_FIRST
        attempt = 0
        while not traffic.stopped.is_set():
            names = list(cluster.nodes)
            name = names[(names.index(self.home) + attempt) % len(names)]
            attempt += 1
            joined = await self._connection(cluster, name, traffic)
            if traffic.stopped.is_set():
                return
            backoff = BACKOFF_FIRST if joined else min(backoff * BACKOFF_FACTOR, BACKOFF_MAX)
            with trio.move_on_after(backoff):  # the client's reconnect backoff (pacing, not synchronisation)
                await traffic.stopped.wait()

    async def _connection(self, cluster: Cluster, name: str, traffic: Traffic) -> bool:
        """One connection's life; whether its join succeeded."""
        conn: Connection | None = None
        client: RawClient | None = None
        try:
            async with open_websocket(cluster.socket_url(name, self.user, self.device)) as ws:
                conn = Connection(name, trio.current_time())
                self.connections.append(conn)
                client = RawClient(f"{self.user}/{self.device}", ws, on_frame=self.record_frame)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(client.read_loop)
                    nursery.start_soon(self._until_stopped, traffic, client, conn, nursery.cancel_scope)
                    nursery.start_soon(heartbeat, client)
                    client.join_refs[self.topic] = str(client._ref + 1)  # as `RawClient.join`, which asserts ok
                    reply = await client.push(self.topic, "phx_join", {"last_seq": self.contiguous})
                    if reply["status"] != "ok":  # e.g. service_unavailable: leave, back off, come back
                        self.join_failures.append(reply["response"])
                        conn.ended_by_client = True
                        nursery.cancel_scope.cancel()
                        return False
                    conn.joined_at = trio.current_time()
                    conn.join_head = int(reply["response"]["last_seq"])
                    self._check_caught_up(conn.joined_at)
                    await self._send_loop(client, traffic)
        except* ConnectionRejected as group:
            self.connect_refusals += [e.status_code for e in group.exceptions if isinstance(e, ConnectionRejected)]
        except* (OSError, HandshakeError, ConnectionClosed, trio.BrokenResourceError, Closed):
            pass  # a fault (refused, reset, closed mid-push): the caller backs off and reconnects
        finally:
            if conn is not None and conn.closed_at is None:  # ended by an exception, not `_until_stopped`
                conn.closed_at = trio.current_time()
                conn.close_code = None if client is None else client.close_code
                conn.ended_by_client = conn.ended_by_client or traffic.stopped.is_set()
        return conn is not None and conn.joined_at is not None

    async def _until_stopped(
        self, traffic: Traffic, client: RawClient, conn: Connection, scope: trio.CancelScope
    ) -> None:
        """End the connection when the server closes it (recording the code) or the test stops."""
        async with trio.open_nursery() as waiters:

            async def stopped() -> None:
                await traffic.stopped.wait()
                conn.ended_by_client = True
                waiters.cancel_scope.cancel()

            waiters.start_soon(stopped)
            await client.closed.wait()
            waiters.cancel_scope.cancel()
        if conn.closed_at is None:
            conn.closed_at = trio.current_time()
            conn.close_code = client.close_code
        scope.cancel()

    async def _send_loop(self, client: RawClient, traffic: Traffic) -> None:
        """Send while `traffic.sending`, one at a time; retry the pending one first (same id)."""
        while True:
            if self._pending is None:
                await traffic.go.wait()
                if traffic.halt.is_set():
                    await trio.sleep_forever()  # cancelled when the connection ends
                self._sent += 1
                self._pending = (f"{self.user}-{self.device}-{self._sent}", trio.current_time())
            cmid, first = self._pending
            payload = {"client_message_id": cmid, "content": "x" * traffic.content_bytes, "type": "text"}
            reply = await client.push(self.topic, "send_message", payload)
            now = trio.current_time()
            if reply["status"] == "ok":
                r = reply["response"]
                self.acks[cmid] = Ack(str(r["message_id"]), int(r["seq"]), first, now, bool(r["duplicate"]))
                self._pending = None
                await trio.sleep(traffic.interval)  # the load's pace
            else:
                self.refusals.append((now, reply["response"]))
                await trio.sleep(traffic.interval)  # retried with the same id after the pace

    @property
    def settled(self) -> bool:
        """Connected and joined, with no send waiting for its ack."""
        return self.current is not None and self.current.joined_at is not None and self._pending is None


async def heartbeat(client: RawClient) -> None:
    """The Phoenix protocol heartbeat (topic `phoenix`), every 30 s like phoenix.js, until cancelled or closed."""
    while True:
        await trio.sleep(HEARTBEAT_INTERVAL)  # the client's heartbeat period
        await client.push("phoenix", "heartbeat", {})


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of `values`; nan when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


@dataclass
class Ledger:
    """Figures over a finished (or settled) run of `devices`."""

    devices: list[Device]

    def acked(self) -> dict[str, dict[int, str]]:
        """conversation -> {seq: message id} over every ack of every device."""
        heads: dict[str, dict[int, str]] = {}
        for d in self.devices:
            for ack in d.acks.values():
                heads.setdefault(d.conversation, {})[ack.seq] = ack.message_id
        return heads

    def missing(self) -> int:
        """Acked-but-not-delivered: (acked message, member device) pairs the device never received."""
        acked = self.acked()
        return sum(1 for d in self.devices for seq in acked.get(d.conversation, {}) if seq not in d.by_seq)

    def all_delivered(self) -> bool:
        return self.missing() == 0 and all(d.settled for d in self.devices)

    def diagnose(self) -> str:
        """Why `all_delivered` is false: devices missing acked seqs, devices not settled (for assertion messages)."""
        acked = self.acked()
        lines = []
        for d in self.devices:
            gaps = sorted(seq for seq in acked.get(d.conversation, {}) if seq not in d.by_seq)
            conn = d.current
            if gaps or not d.settled:
                state = (
                    "none" if conn is None else f"{conn.node} joined={conn.joined_at is not None} head={conn.join_head}"
                )
                lines.append(
                    f"{d.user} home={d.home} conv={d.conversation[:8]} missing={gaps[:8]}{'…' if len(gaps) > 8 else ''}"
                    f" contiguous={d.contiguous} pending={d._pending} connection={state}"
                )
        return f"{len(lines)} devices not done:\n" + "\n".join(lines[:20])

    def raw_duplicates(self) -> int:
        """`new_message` frames whose id the device had already received (clients dedupe these by id)."""
        return sum(len(d.arrivals) - len({a.message_id for a in d.arrivals}) for d in self.devices)

    def duplicates_after_dedupe(self) -> int:
        """Messages stored twice: extra ids for one (sender, client_message_id), or for one seq."""
        ids_by_origin: dict[str, set[str]] = {}
        ids_by_seq: dict[tuple[str, int], set[str]] = {}
        for d in self.devices:
            for a in d.arrivals:
                ids_by_origin.setdefault(a.origin, set()).add(a.message_id)
                ids_by_seq.setdefault((d.conversation, a.seq), set()).add(a.message_id)
            for cmid, ack in d.acks.items():
                ids_by_origin.setdefault(f"{d.user}/{cmid}", set()).add(ack.message_id)
                ids_by_seq.setdefault((d.conversation, ack.seq), set()).add(ack.message_id)
        return sum(len(ids) - 1 for ids in [*ids_by_origin.values(), *ids_by_seq.values()])

    def out_of_order(self) -> int:
        """Per device, first receipts (by id) whose seq is below a seq received before them."""
        count = 0
        for d in self.devices:
            seen: set[str] = set()
            highest = 0
            for a in d.arrivals:
                if a.message_id in seen:
                    continue
                seen.add(a.message_id)
                if a.seq < highest:
                    count += 1
                highest = max(highest, a.seq)
        return count

    def close_codes(self) -> Counter[int | None]:
        """Close codes of every connection the server closed."""
        return Counter(
            c.close_code
            for d in self.devices
            for c in d.connections
            if c.closed_at is not None and not c.ended_by_client
        )

    def refused(self) -> Counter[str]:
        """Refused upgrades (by HTTP status) and refused joins (by reason)."""
        out: Counter[str] = Counter()
        for d in self.devices:
            out.update(f"upgrade {status}" for status in d.connect_refusals)
            out.update(f"join {r.get('reason')}" for r in d.join_failures)
        return out

    def disconnects(self, node: str, after: float = -math.inf, before: float = math.inf) -> int:
        """Connections on `node` the server closed (not the test) in [after, before)."""
        return sum(
            1
            for d in self.devices
            for c in d.connections
            if c.node == node and c.closed_at is not None and not c.ended_by_client and after <= c.closed_at < before
        )

    def messages(self) -> int:
        return sum(len(d.acks) for d in self.devices)

    def send_errors(self, after: float = -math.inf, before: float = math.inf) -> int:
        return sum(1 for d in self.devices for at, _ in d.refusals if after <= at < before)

    def ack_latencies(self, after: float = -math.inf, before: float = math.inf) -> list[float]:
        """push→ack seconds of the sends first attempted in [after, before)."""
        return [a.acked_at - a.sent_at for d in self.devices for a in d.acks.values() if after <= a.sent_at < before]

    def first_receipts(self) -> list[tuple[Device, Arrival]]:
        """Each device's first receipt of each message id."""
        out = []
        for d in self.devices:
            seen: set[str] = set()
            for a in d.arrivals:
                if a.message_id not in seen:
                    seen.add(a.message_id)
                    out.append((d, a))
        return out

    def delivery_latencies(self, cross_node_only: bool = False) -> list[float]:
        """ack→first receipt seconds of every (acked message, member device) pair; optionally only
        pairs whose sender and recipient have different home nodes."""
        acks = {a.message_id: (a.acked_at, d.home) for d in self.devices for a in d.acks.values()}
        return [
            a.at - acks[a.message_id][0]
            for d, a in self.first_receipts()
            if a.message_id in acks and (not cross_node_only or acks[a.message_id][1] != d.home)
        ]

    def last_receipt_of_acked_before(self, moment: float) -> float:
        """When the last member first received the last message acked before `moment` (-inf if none)."""
        early = {a.message_id for d in self.devices for a in d.acks.values() if a.acked_at < moment}
        return max((a.at for _, a in self.first_receipts() if a.message_id in early), default=-math.inf)


def conversation_groups(prefix: str, devices: int, size: int, nodes: list[str]) -> list[Device]:
    """`devices` devices in conversations of `size` members, members spread over `nodes` in turn."""
    assert devices % size == 0
    return [
        Device(f"{prefix}u{i}", "d", "", nodes[(i % size) % len(nodes)])  # conversation filled in by `populate`
        for i in range(devices)
    ]


async def populate(cluster: Cluster, devices: list[Device], size: int) -> None:
    """Create the conversations of `conversation_groups` (every `size` consecutive devices) and set them."""
    groups = [devices[i : i + size] for i in range(0, len(devices), size)]
    ids = await cluster.setup_conversations([[d.user for d in g] for g in groups])
    for group, conversation in zip(groups, ids, strict=True):
        for d in group:
            d.conversation = conversation


async def poll(condition: Callable[[], bool]) -> None:
    """Return once `condition()` is true, checking every 50 ms (callers bound it with `trio.fail_after`)."""
    while not condition():  # noqa: ASYNC110 - the processes under test share no event with us
        await trio.sleep(0.05)


async def poll_async(condition: Callable[[], Awaitable[bool]]) -> None:
    """`poll` for a condition that must await (a look at another process: its metrics, Redis)."""
    while not await condition():  # noqa: ASYNC110 - the processes under test share no event with us
        await trio.sleep(0.05)


def joined(devices: list[Device]) -> Callable[[], bool]:
    """Condition: every device has an open, joined connection."""
    return lambda: all(d.current is not None and d.current.joined_at is not None for d in devices)


def recovery_times(device: Device, since: float) -> tuple[float, float]:
    """(rejoined, caught up) seconds after `since`: the first connection opened after it that
    joined, and the first that held everything up to its join's head; inf when never."""
    later = [c for c in device.connections if c.opened_at >= since]
    rejoined = min((c.joined_at for c in later if c.joined_at is not None), default=math.inf)
    caught_up = min((c.caught_up_at for c in later if c.caught_up_at is not None), default=math.inf)
    return rejoined - since, caught_up - since


@dataclass
class LoadRun:
    """The standard load running on nodes `a` and `b` (see `load_run`)."""

    cluster: Cluster
    devices: list[Device]
    ledger: Ledger
    traffic: Traffic

    def on(self, node: str) -> list[Device]:
        """The devices connected to `node` now."""
        return [d for d in self.devices if d.current is not None and d.current.node == node]

    async def finish(self) -> None:
        """Stop sending; wait until every acked message reached every device (≤ 60 s, else
        AssertionError with `Ledger.diagnose`); then end every device's run."""
        self.traffic.halt.set()
        with trio.move_on_after(60):
            await poll(self.ledger.all_delivered)
        assert self.ledger.all_delivered(), self.ledger.diagnose()
        self.traffic.stopped.set()


@asynccontextmanager
async def load_run(
    root: Path, redis: RedisServer, postgres: PostgresServer, prefix: str, env: dict[str, str] | None = None
) -> AsyncIterator[LoadRun]:
    """Nodes `a` and `b` on `redis` and a fresh database, `DEVICES` devices joined and sending.

    The body injects its fault and calls `finish()`; on exit (or an exception) the devices stop
    and every node process is killed.
    """
    cluster = Cluster(root, redis, await fresh_database(postgres), env)
    devices = conversation_groups(prefix, DEVICES, SIZE, ["a", "b"])
    traffic = Traffic(interval=INTERVAL)
    try:
        cluster.start("a")
        cluster.start("b")
        await cluster.wait_ready("a", "b")
        await populate(cluster, devices, SIZE)
        async with trio.open_nursery() as nursery:
            for d in devices:
                nursery.start_soon(d.run, cluster, traffic)
            try:
                with trio.fail_after(60):
                    await poll(joined(devices))
                traffic.go.set()
                yield LoadRun(cluster, devices, Ledger(devices), traffic)
            finally:
                traffic.stopped.set()
    finally:
        cluster.close()


def delivery_figures(fig: Figures, ledger: Ledger) -> None:
    """The delivery figures of every fault row (reliability.md D1/E2 targets: 0 lost, 0 duplicated
    after dedupe, 0 out of order), and what explains them (refusals, close codes, latencies)."""
    fig.report("messages acked", ledger.messages())
    fig.at_most("acked but not delivered", ledger.missing(), 0)
    fig.at_most("duplicates after dedupe by id", ledger.duplicates_after_dedupe(), 0)
    fig.report("raw duplicates (before dedupe)", ledger.raw_duplicates())
    fig.at_most("out of order", ledger.out_of_order(), 0)
    fig.report("send error replies", ledger.send_errors())
    fig.report("refused upgrades / joins", ", ".join(f"{k}: {n}" for k, n in sorted(ledger.refused().items())) or "0")
    codes = sorted(ledger.close_codes().items(), key=str)
    fig.report("server close codes", ", ".join(f"{k}: {n}" for k, n in codes) or "none")
    acks = ledger.ack_latencies()
    fig.report("push→ack p50", percentile(acks, 50), " s")
    fig.report("push→ack p99", percentile(acks, 99), " s")
    fig.report("ack→deliver cross-node p99", percentile(ledger.delivery_latencies(cross_node_only=True), 99), " s")
