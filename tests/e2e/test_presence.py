"""Issue 5, criterion 5: presence on `user:<id>` as phoenix.js's `Presence` sees it.

- Two devices of one user are ONE key (the user id) with TWO metas (one per device).
- A device that reconnects inside the grace period (5 s) produces no `presence_diff` on the other
  devices: not the leave, not a join.

"Nothing arrived" is shown without a sleep: after the reconnect, a marker device leaves. Its leave
is held for the same grace period, from a later moment, and the tracker fires held leaves in
deadline order, so by the time the marker's leave diff reaches the observer, a leave of the
reconnected device (had one been scheduled) would already have been sent.
"""

from __future__ import annotations

import base64
import json
import os
import socket
from typing import Any

import pytest
import trio

from tests.e2e.conftest import Chat
from tests.e2e.phx import PhxClient, next_client_ip
from tests.phoenix_js import events_of, run_scenario_async

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HARNESS_TIMEOUT = 60.0
PRESENCE_WAIT_MS = 15_000  # a leave is held for the grace period (5 s) before its diff


def _connect(chat: Chat, socket_name: str, device: str) -> dict[str, Any]:
    return {"op": "connect", "socket": socket_name, "params": chat.params("alice", device)}


def _join(socket_name: str) -> dict[str, Any]:
    return {"op": "join", "socket": socket_name, "topic": "user:alice", "channel": socket_name, "presence": True}


def _sync(channel: str, metas: int, since: str = "start") -> dict[str, Any]:
    match = {"kind": "presence_sync", "channel": channel, "meta_count": metas}
    return {"op": "wait", "match": match, "since": since, "wait_ms": PRESENCE_WAIT_MS}


def _devices_in(diff: dict[str, Any], side: str) -> list[str]:
    return [m["device_id"] for entry in diff[side].values() for m in entry["metas"]]


async def test_two_devices_are_one_key_with_two_metas_and_a_quick_reconnect_sends_no_diff(chat: Chat) -> None:
    steps = [
        _connect(chat, "a", "phone"),
        _join("a"),
        _sync("a", 1),
        _connect(chat, "b", "laptop"),
        _join("b"),
        _sync("a", 2),
        _sync("b", 2),
        _connect(chat, "c", "tablet"),  # the marker device
        _join("c"),
        _sync("a", 3),
        # the laptop drops and comes back on a new socket, well inside the grace period
        {"op": "disconnect", "socket": "b", "mark": "reconnect"},
        _connect(chat, "b2", "laptop"),
        _join("b2"),
        _sync("b2", 3),
        # the marker leaves: its diff comes a grace period later than any diff of the laptop would
        {"op": "disconnect", "socket": "c", "mark": "marker"},
        {
            "op": "wait",
            "match": {"kind": "presence_leave", "channel": "a", "key": "alice"},
            "since": "marker",
            "wait_ms": PRESENCE_WAIT_MS,
        },
        _sync("a", 2, since="marker"),
    ]
    result = await run_scenario_async(
        chat.node.socket_url, "script", {"steps": steps, "deadline_ms": 45_000}, timeout=HARNESS_TIMEOUT
    )

    # one key, two metas, one per device, as phoenix.js's Presence lists them
    two = next(s for s in events_of(result, "presence_sync", channel="a") if s["meta_count"] == 2)
    assert two["keys"] == ["alice"]
    [entry] = two["list"]
    metas = {m["device_id"]: m for m in entry["metas"]}
    assert sorted(metas) == ["laptop", "phone"]
    assert len({m["phx_ref"] for m in metas.values()}) == 2
    for m in metas.values():
        assert isinstance(m["online_at"], int)
        assert "device_type" in m
    laptop_ref = metas["laptop"]["phx_ref"]

    # from the laptop's drop on, the phone got exactly one diff: the marker's leave
    start = next(
        e["t"] for e in result["events"] if e["kind"] == "step" and e["label"] is None and e["op"] == "disconnect"
    )
    diffs = [e["payload"] for e in events_of(result, "recv", socket="a", event="presence_diff") if e["t"] >= start]
    assert len(diffs) == 1, diffs
    assert _devices_in(diffs[0], "joins") == []
    assert _devices_in(diffs[0], "leaves") == ["tablet"]
    assert [e["key"] for e in events_of(result, "presence_join", channel="a") if e["t"] >= start] == []
    # the laptop kept its meta and phx_ref: for the others it never went away
    last = events_of(result, "presence_sync", channel="a")[-1]
    [entry] = last["list"]
    assert sorted((m["device_id"], m["phx_ref"]) for m in entry["metas"]) == sorted(
        [("phone", metas["phone"]["phx_ref"]), ("laptop", laptop_ref)]
    )


# -- the reconnect that beats the old connection's close ---------------------------------------------


class FrozenSocket:
    """A WebSocket client that joins a topic, then stops reading and never answers a close frame:
    a phone whose old connection went half-open when it switched networks."""

    def __init__(self, port: int, token: str, topic: str, client_ip: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET /socket/websocket?vsn=2.0.0&token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\nX-Forwarded-For: {client_ip}\r\n\r\n"
        )
        self.sock.sendall(request.encode())
        head = self._until(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        self._send_text(json.dumps(["1", "1", topic, "phx_join", {}]))
        self._until(b'"phx_reply"')

    def _until(self, marker: bytes) -> bytes:
        data = b""
        while marker not in data:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError(f"connection closed before {marker!r}")
            data += chunk
        return data

    def _send_text(self, text: str) -> None:
        payload = text.encode()
        assert len(payload) < 126
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)

    def wait_dropped(self, timeout: float) -> None:
        """Read (and ignore) until the server closes TCP."""
        self.sock.settimeout(timeout)
        while self.sock.recv(65536):
            pass

    def close(self) -> None:
        self.sock.close()


async def test_a_reconnect_before_the_old_socket_closed_keeps_the_device_present(chat: Chat) -> None:
    """The new socket of the laptop joins while the server still waits (close timeout, 5 s) for the
    old, half-open one to answer its 1001. When the old one finally goes, the laptop is still online:
    its presence must stay."""
    node = chat.node

    def scenario() -> tuple[list[dict[str, Any]], dict[str, Any]]:
        def client(device: str) -> PhxClient:
            return PhxClient(node.socket_url, node.token("alice", device), client_ip=next_client_ip(), name=device)

        phone, tablet = client("phone"), client("tablet")
        old = FrozenSocket(node.port, node.token("alice", "laptop"), "user:alice", next_client_ip())
        laptop = None
        try:
            assert phone.join("user:alice")["status"] == "ok"
            assert tablet.join("user:alice")["status"] == "ok"
            laptop = client("laptop")  # replaces the frozen socket (it gets a 1001 it never answers)
            assert laptop.join("user:alice")["status"] == "ok"
            mark = len(phone.broadcasts("user:alice", "presence_diff"))
            old.wait_dropped(timeout=15)  # the server gave up on the old socket: its channels ended
            tablet.close()  # the marker: its leave is held from now on
            phone.wait_for(
                lambda _: any(
                    "tablet" in _devices_in(d, "leaves") for d in phone.broadcasts("user:alice", "presence_diff")
                ),
                timeout=15,
                what="the tablet's leave",
            )
            return phone.broadcasts("user:alice", "presence_diff")[mark:], node.node.presence.list("user:alice")  # type: ignore[union-attr]
        finally:
            old.close()
            for c in (phone, tablet, laptop):
                if c is not None:
                    c.close()

    diffs, listed = await trio.to_thread.run_sync(scenario)
    left = [d for diff in diffs for d in _devices_in(diff, "leaves")]
    assert left == ["tablet"], diffs
    assert sorted(m["device_id"] for m in listed["alice"]["metas"]) == ["laptop", "phone"]
