"""Issue 5, criterion 6: SIGKILL of the server between ack and fan-out loses nothing.

The node runs as a real process (`python -m whispr serve --dev`, SQLite under a data dir). alice's
phone pipelines a burst of `send_message`s; the moment the K-th ack reaches the client (in the
client's reader thread, before anything else happens) the process gets SIGKILL. Acked messages
whose `new_message` had not reached the other devices yet were acked but never fanned out. The
process is restarted on the same data dir, every device reconnects and rejoins `user:` with the
`last_seq` it has, and the phone resends what was never acked (same `client_message_id`, as a
client does). Three crashes in a row, then a clean restart: every device must end up with every
message, in order, none twice, and the store with one message per `client_message_id`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.e2e.phx import Frame, PhxClient, next_client_ip
from tests.services import free_port, wait_for_port
from whispr.adapters import open_store
from whispr.adapters.aio import open_bridge
from whispr.app import token_config
from whispr.config import Settings
from whispr.security.tokens import mint_token

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SECRET = "e2e-crash-test-secret-at-least-32-bytes-long"
BURST = 30
KILL_AFTER_ACK = (1, 1, 5)  # per crash: SIGKILL as soon as this many acks of the burst arrived
DEVICES = (("alice", "phone"), ("alice", "laptop"), ("bob", "phone"), ("bob", "web"))
SENDER = ("alice", "phone")


class Server:
    """`whispr serve --dev` as a child process on a fixed port and data dir."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir / "server.log"
        self.starts = 0

    def start(self) -> None:
        env = {
            **os.environ,
            "WHISPR_JWT_SECRET": SECRET,
            "WHISPR_TRUSTED_PROXIES": "127.0.0.0/8",  # clients spread over IPs (tests/e2e/phx.py)
            "WHISPR_SHUTDOWN_GRACE": "5",
        }
        args = [
            sys.executable,
            "-m",
            "whispr",
            "serve",
            "--dev",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
        ]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(args, env=env, stdout=log, stderr=log)
        self.starts += 1
        wait_for_port(self.port, timeout=30)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/socket"

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)

    def wait_dead(self) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout=30)
        self.proc = None
        return code

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


class KillSwitch:
    """The sender's frame hook: SIGKILL the server the moment the K-th `send_message` ack arrives
    (in the client's reader thread, before the test or anything else sees that ack)."""

    def __init__(self, server: Server, topic: str, after: int) -> None:
        self.server = server
        self.topic = topic
        self.after = after
        self.acks = 0
        self.killed_at: float | None = None
        self._lock = threading.Lock()

    def __call__(self, frame: Frame) -> None:
        if frame[2] == self.topic and frame[3] == "phx_reply" and "message_id" in (frame[4].get("response") or {}):
            with self._lock:
                self.acks += 1
                if self.acks == self.after:
                    self.server.kill()
                    self.killed_at = time.monotonic()


@dataclass
class Device:
    user: str
    device: str
    token: str
    client: PhxClient | None = None
    received: list[dict[str, Any]] = field(default_factory=list)  # every new_message on user:, all sessions
    joins: list[dict[str, Any]] = field(default_factory=list)

    @property
    def topic(self) -> str:
        return f"user:{self.user}"

    @property
    def position(self) -> int:
        return self.received[-1]["inbox_seq"] if self.received else 0

    def connect(self, url: str) -> None:
        self.client = PhxClient(url, self.token, client_ip=next_client_ip(), name=f"{self.user}/{self.device}")
        reply = self.client.join(self.topic, {"last_seq": self.position})
        assert reply["status"] == "ok", reply
        self.joins.append(reply["response"])

    def harvest(self) -> None:
        """After the connection is gone: keep what this session received."""
        assert self.client is not None
        self.client.wait_closed()
        self.received += self.client.events(self.topic, "new_message")
        self.client = None

    def live(self) -> list[dict[str, Any]]:
        """Everything received so far, this session included."""
        session = self.client.events(self.topic, "new_message") if self.client is not None else []
        return self.received + session


async def _prepare(data_dir: Path) -> str:
    async with open_bridge(), open_store(f"sqlite:///{data_dir / 'whispr.db'}") as store:
        for user in ("alice", "bob"):
            await store.upsert_user(user, True)
        return await store.create_conversation(["alice", "bob"])


async def _stored(data_dir: Path, conversation: str) -> list[tuple[str, str, int]]:
    async with open_bridge(), open_store(f"sqlite:///{data_dir / 'whispr.db'}") as store:
        page = await store.messages_after(conversation, 0, 1000)
        assert not page.has_more
        return [(m.client_message_id, m.id, m.seq) for m in page.messages]


def test_sigkill_between_ack_and_fan_out_loses_no_acked_message(tmp_path: Path) -> None:
    conversation = trio.run(_prepare, tmp_path)
    topic = f"conversation:{conversation}"
    tokens = token_config(Settings(jwt_secret=SECRET))
    devices = [Device(u, d, mint_token(tokens, u, d, ttl=3600)) for u, d in DEVICES]
    sender = next(d for d in devices if (d.user, d.device) == SENDER)
    server = Server(tmp_path)

    acked: dict[str, tuple[str, int]] = {}  # client_message_id -> (message_id, seq), from acks
    sent: list[str] = []  # every client_message_id, in first-send order
    figures: list[dict[str, Any]] = []

    def connect_all() -> None:
        server.start()
        for device in devices:
            device.connect(server.url)
        assert sender.client is not None
        assert sender.client.join(topic)["status"] == "ok"

    def resend_unacked() -> tuple[int, int]:
        """The client's retry of everything it never got an ack for; returns (retried, duplicate)."""
        assert sender.client is not None
        retried = duplicates = 0
        for cmid in sent:
            if cmid not in acked:
                reply = sender.client.call(topic, "send_message", {"client_message_id": cmid, "content": cmid})
                assert reply["status"] == "ok", reply
                response = reply["response"]
                acked[cmid] = (response["message_id"], response["seq"])
                retried += 1
                duplicates += response["duplicate"]
        return retried, duplicates

    try:
        for crash, kill_after in enumerate(KILL_AFTER_ACK):
            connect_all()
            retried, duplicates = resend_unacked()
            client = sender.client
            assert client is not None
            kill_switch = KillSwitch(server, topic, kill_after)
            client.on_frame = kill_switch
            refs: dict[str, str] = {}
            for i in range(BURST):
                cmid = f"crash{crash}-{i}"
                sent.append(cmid)
                try:
                    refs[client.push(topic, "send_message", {"client_message_id": cmid, "content": cmid})] = cmid
                except Exception:
                    break  # the process is already gone: the rest was never sent
            assert server.wait_dead() == -signal.SIGKILL
            for device in devices:
                device.harvest()
            # what the sender learnt before the crash
            burst_acks = 0
            for frame in client.frames:
                if frame[2] == topic and frame[3] == "phx_reply" and frame[1] in refs and frame[4]["status"] == "ok":
                    response = frame[4]["response"]
                    acked[refs[frame[1]]] = (response["message_id"], response["seq"])
                    burst_acks += 1
            crash_acked = {acked[c][0] for c in refs.values() if c in acked}
            not_fanned_out = {f"{d.user}/{d.device}": len(crash_acked - {m["id"] for m in d.received}) for d in devices}
            figures.append(
                {
                    "crash": crash,
                    "kill_after_ack": kill_after,
                    "burst_pushed": len(refs),
                    "acked_before_kill": burst_acks,
                    "acked_but_not_delivered_live": not_fanned_out,
                    "retried_after_restart": retried,
                    "retries_already_stored": duplicates,
                }
            )
            assert burst_acks >= kill_after

        # a clean restart: rejoin from last_seq, resend what was never acked, and wait for everything
        connect_all()
        retried, duplicates = resend_unacked()
        figures.append({"final_retried": retried, "final_retries_already_stored": duplicates})
        assert set(acked) == set(sent)
        last_seq = max(seq for _, seq in acked.values())
        for device in devices:
            client = device.client
            assert client is not None

            def has_last(_: object, d: Device = device) -> bool:
                return any(m["seq"] == last_seq for m in d.live())

            client.wait_for(
                has_last,
                timeout=30,
                what=f"seq {last_seq} on {device.user}/{device.device}",
            )
        server.stop()
        for device in devices:
            device.harvest()
    finally:
        for device in devices:
            if device.client is not None:
                device.client.abort()
        if server.proc is not None:
            server.proc.kill()
            server.proc.wait()

    stored = trio.run(_stored, tmp_path, conversation)
    # one stored message per client_message_id, and it is the one every ack named
    assert sorted(c for c, _, _ in stored) == sorted(sent)
    assert {c: (i, s) for c, i, s in stored} == acked
    expected_ids = [i for _, i, _ in stored]
    assert [s for _, _, s in stored] == list(range(1, len(sent) + 1))
    for device in devices:
        got = [m["id"] for m in device.received]
        assert got == expected_ids, f"{device.user}/{device.device}: missing {set(expected_ids) - set(got)}"
        assert [m["inbox_seq"] for m in device.received] == list(range(1, len(sent) + 1))
        assert all(j["recovered"] for j in device.joins)
    lost_live = sum(sum(f["acked_but_not_delivered_live"].values()) for f in figures if "crash" in f)
    print(
        f"\n[crash] {len(KILL_AFTER_ACK)} SIGKILLs, {server.starts} starts, {len(sent)} messages, {lost_live} (acked, device) pairs recovered by replay"
    )
    for f in figures:
        print("  ", f)
