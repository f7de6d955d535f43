"""A subscriber that stops reading (reliability.md §2 B9; contract.md §5 "outbound queue per socket").

One member of a conversation joins and then never reads again (its TCP receive buffer is 4 KiB, so
the node's writes back up at once); 5,000 messages of 1 KiB are sent into the conversation. The
node must close the stalled socket with 1013 once its bounded outbound queue overflows, while the
other members, on both nodes, get 5,000/5,000 in order and exactly once.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest
import trio
from trio_websocket import wrap_client_stream

from tests.drain.serve import RawClient, open_raw_client
from tests.faults.cluster import Cluster, fresh_database
from tests.faults.figures import Figures
from tests.faults.load import Ack, Connection, Device, Ledger, Traffic, joined, percentile, poll
from tests.services import PostgresServer, RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.faults]

MESSAGES = 5_000
CONTENT = 1024
CONVERSATIONS = 10
SENDERS = 4  # per conversation; each sends one message at a time
READERS = 4  # users reading every conversation, two on each node
DROP_WITHIN = 5.0  # reliability.md B9: time to drop ≤ 5 s after the queue fills


async def send_share(client: RawClient, sender: Device) -> None:
    """Send its share of `MESSAGES`, one at a time, recording each ack."""
    for n in range(MESSAGES // (SENDERS * CONVERSATIONS)):
        cmid = f"b9-{n}"
        sent_at = trio.current_time()
        payload = {"client_message_id": cmid, "content": "x" * CONTENT, "type": "text"}
        reply = await client.push(sender.topic, "send_message", payload)
        assert reply["status"] == "ok", reply
        r = reply["response"]
        sender.acks[cmid] = Ack(r["message_id"], r["seq"], sent_at, trio.current_time(), r["duplicate"])


def rss_kib(pid: int) -> int:
    """Resident set size of process `pid` in KiB (Linux /proc)."""
    match = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    assert match is not None
    return int(match[1])


async def test_b9_a_subscriber_that_stops_reading_is_dropped_and_the_others_get_everything(
    tmp_path: Path, fresh_redis: RedisServer, postgres: PostgresServer
) -> None:
    cluster = Cluster(tmp_path, fresh_redis, await fresh_database(postgres))
    # One conversation per sender (a conversation's seq is assigned at one write point, so one
    # conversation alone would pace the run); the stalled user and four readers are in all of them.
    # A reader has one device per conversation; the stalled user one socket joined to every topic.
    senders = [Device(f"b9s{k}-{i}", "d", "", "ab"[i % 2]) for k in range(CONVERSATIONS) for i in range(SENDERS)]
    readers = [Device(f"b9r{j}", f"d{k}", "", "aabb"[j]) for j in range(READERS) for k in range(CONVERSATIONS)]
    stalled_user = "b9stalled"
    ledger = Ledger([*senders, *readers])
    traffic = Traffic(interval=1.0)  # readers never send: `go` is never set
    slow_close: list[str] = []
    try:
        cluster.start("a")
        cluster.start("b")
        await cluster.wait_ready("a", "b")
        members = [
            [*senders[k * SENDERS : (k + 1) * SENDERS], *(r for r in readers if r.device == f"d{k}")]
            for k in range(CONVERSATIONS)
        ]
        groups = [[stalled_user, *(d.user for d in group)] for group in members]
        for conversation, group in zip(await cluster.setup_conversations(groups), members, strict=True):
            for d in group:
                d.conversation = conversation
        node_a = cluster.nodes["a"]
        async with trio.open_nursery() as nursery:
            for d in readers:
                nursery.start_soon(d.run, cluster, traffic)

            # the stalled member: a 4 KiB receive buffer, then no read after its join
            sock = trio.socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            await sock.connect(("127.0.0.1", node_a.port))
            stream = trio.SocketStream(sock)
            url = cluster.socket_url("a", stalled_user, "d")
            resource = url[url.index("/socket") :]
            slow_ws = await wrap_client_stream(nursery, stream, f"127.0.0.1:{node_a.port}", resource)
            slow = RawClient("stalled", slow_ws)
            async with trio.open_nursery() as reading:
                reading.start_soon(slow.read_loop)
                for group in members:
                    await slow.join(group[0].topic)
                reading.cancel_scope.cancel()  # from here on it reads nothing

            clients = []
            for sender in senders:
                url = cluster.socket_url(sender.home, sender.user, sender.device)
                client = await open_raw_client(nursery, url, sender.user)
                client.on_frame = sender.record_frame
                await client.join(sender.topic, {"last_seq": 0})
                now = trio.current_time()
                sender.connections.append(Connection(sender.home, now, joined_at=now, join_head=0))
                clients.append(client)
            with trio.fail_after(60):
                await poll(joined(readers))

            rss_before = rss_kib(node_a.proc.pid)
            started = trio.current_time()
            dropped: list[float] = []
            close_line = re.compile(rf"socket closed .* code=(\d+) .*user_id={stalled_user} ")

            async def watch_log() -> None:
                while not (found := close_line.findall(node_a.log())):  # noqa: ASYNC110 - another process's log
                    await trio.sleep(0.05)
                slow_close.append(found[0])
                dropped.append(trio.current_time() - started)

            async with trio.open_nursery() as sending:
                for client, sender in zip(clients, senders, strict=True):
                    sending.start_soon(send_share, client, sender)
                nursery.start_soon(watch_log)
            finished = trio.current_time() - started
            rss_after = rss_kib(node_a.proc.pid)
            with trio.move_on_after(DROP_WITHIN):
                await poll(lambda: bool(dropped))
            with trio.move_on_after(60):
                await poll(ledger.all_delivered)
            assert ledger.all_delivered(), ledger.diagnose()
            traffic.stopped.set()
            # the stalled client reads again: what the node wrote before closing, then the close
            with trio.move_on_after(10):
                await slow.read_loop()
            slow_ws_code = slow.close_code
            await stream.aclose()
            nursery.cancel_scope.cancel()
    finally:
        cluster.close()

    fig = Figures("B9", f"slow consumer: 1 socket on {CONVERSATIONS} topics stops reading; {MESSAGES} × 1 KiB sent")
    fig.at_least("messages acked", ledger.messages(), MESSAGES)
    for j in range(READERS):
        mine = [d for d in readers if d.user == f"b9r{j}"]
        received = sum(len({a.message_id for a in d.arrivals}) for d in mine)
        fig.at_least(f"reader b9r{j} on {mine[0].home}: received", received, MESSAGES)
    fig.at_most("acked but not delivered (other members)", ledger.missing(), 0)
    fig.at_most("duplicates after dedupe by id", ledger.duplicates_after_dedupe(), 0)
    fig.at_most("out of order", ledger.out_of_order(), 0)
    fig.at_most("disconnects of the other members", ledger.disconnects("a") + ledger.disconnects("b"), 0)
    fig.at_least("stalled socket closed by the node with 1013", int(slow_close == ["1013"]), 1)
    fig.report("close code seen by the stalled client", str(slow_ws_code))
    fig.report("sending all messages took", finished, " s")
    fig.report("send start → stalled socket dropped", dropped[0] if dropped else float("inf"), " s")
    # the queue fills before the last send; B9 allows 5 s from there
    fig.at_most(
        "dropped after the last send by", (dropped[0] if dropped else float("inf")) - finished, DROP_WITHIN, " s"
    )
    fig.report("node a RSS growth over the send", (rss_after - rss_before) / 1024, " MiB")
    fig.report("ack→deliver p99 (other members)", percentile(ledger.delivery_latencies(), 99), " s")
    fig.check()
