"""`/metrics` after a scripted session tells an SRE what happened (issue: observability).

Connect, join, send, crash a channel, exceed a limit, be refused: then one scrape of the real
node's `/metrics` must show each family with the expected value.
"""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import trio
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.node import running_node

pytestmark = pytest.mark.integration


def sample(scrape: str, family: str, **labels: str) -> float:
    """The value of the one series of `family` whose labels include `labels` (0 if absent)."""
    total = 0.0
    for line in scrape.splitlines():
        match = re.fullmatch(r"(\w+)\{(.*)\} (\S+)", line)
        if not match or match[1] != family:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match[2]))
        if all(found.get(key) == value for key, value in labels.items()):
            total += float(match[3])
    return total


def session(url: str, conversation: str) -> list[Any]:
    """One device: join, send, a too-large send, a crashing sync; returns the frames received."""
    frames: list[Any] = []
    with connect(url, open_timeout=10) as ws:

        def call(frame: list[Any]) -> None:
            ws.send(json.dumps(frame))
            while True:
                received = json.loads(ws.recv(timeout=10))
                frames.append(received)
                if received[1] == frame[1] or received[3] == "phx_error":
                    return

        call(["1", "1", "user:alice", "phx_join", {}])
        call(["2", "2", f"conversation:{conversation}", "phx_join", {}])
        call(["2", "3", f"conversation:{conversation}", "send_message", {"client_message_id": "m1", "content": "hi"}])
        big = {"client_message_id": "m2", "content": "x" * 10_001}
        call(["2", "4", f"conversation:{conversation}", "send_message", big])
        call(["1", "5", "user:alice", "sync", {"since_seq": 0}])  # the store raises: the channel crashes
    return frames


async def test_scrape_after_a_scripted_session_shows_each_family(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_node(tmp_path) as running:
        store = running.node.store
        assert store is not None
        await running.add_user("alice")
        await running.add_user("bob")
        conversation = await store.create_conversation(["alice", "bob"])
        inbox_after = store.inbox_after

        async def sync_crashes(user_id: str, after_seq: int, limit: int) -> Any:
            if limit == 500:  # `sync` reads 500 entries, replays 100: only sync meets the fault
                raise RuntimeError("injected fault")
            return await inbox_after(user_id, after_seq, limit)

        monkeypatch.setattr(store, "inbox_after", sync_crashes)
        token = running.token("alice", "phone")
        url = f"ws://127.0.0.1:{running.port}/socket/websocket?vsn=2.0.0&token={token}"
        frames = await trio.to_thread.run_sync(session, url, conversation)

        def refused() -> int:
            try:
                connect(url.replace(token, "garbage"), open_timeout=10).close()
            except InvalidStatus as exc:
                return exc.response.status_code
            return 101

        def scrape() -> str:
            with urllib.request.urlopen(running.http_url + "/metrics", timeout=10) as response:
                return response.read().decode()

        assert await trio.to_thread.run_sync(refused) == 403
        text = await trio.to_thread.run_sync(scrape)

    ack = next(f for f in frames if f[1] == "3")
    assert ack[4]["status"] == "ok"
    too_large = next(f for f in frames if f[1] == "4")
    assert too_large[4] == {"status": "error", "response": {"reason": "message_too_large"}}
    assert any(f[3] == "phx_error" and f[2] == "user:alice" for f in frames)

    assert sample(text, "whispr_connections_total") == 1
    assert sample(text, "whispr_connections_refused_total", status="403") == 1
    assert sample(text, "whispr_channel_joins_total", channel="user") == 1
    assert sample(text, "whispr_channel_joins_total", channel="conversation") == 1
    assert sample(text, "whispr_channel_crashes_total", channel="user") == 1
    assert sample(text, "whispr_messages_received_total", channel="conversation", event="send_message") == 2
    assert sample(text, "whispr_limit_exceeded_total", limit="message_size") == 1
    assert sample(text, "whispr_delivery_latency_seconds_count", part="total", path="live") == 1
    assert sample(text, "whispr_delivery_latency_seconds_count", part="store", path="live") == 1
