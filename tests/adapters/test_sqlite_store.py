"""SQLite-only behaviour: durability of acks across a SIGKILL, and the connection settings."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from tests.adapters.conftest import ROOT
from whispr.adapters.sqlite_store import open_sqlite_store

pytestmark = pytest.mark.integration


@pytest.mark.slow
async def test_every_acked_append_survives_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "whispr.db"
    async with open_sqlite_store(path) as store:
        conversation = await store.create_conversation(["ann", "bob"])

    acked: dict[int, str] = {}
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "tests.adapters.sqlite_writer", str(path), conversation],
        stdout=subprocess.PIPE,
        cwd=ROOT,
    )
    assert process.stdout is not None
    buffer = b""
    with trio.fail_after(60):
        while len(acked) < 2000:
            chunk = await process.stdout.receive_some()
            assert chunk, "the writer exited early"
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                seq, message_id = line.decode().split()
                acked[int(seq)] = message_id
    process.send_signal(signal.SIGKILL)  # mid-stream: the writer is still appending
    await process.wait()
    await process.stdout.aclose()
    assert process.returncode == -signal.SIGKILL

    async with open_sqlite_store(path) as store:
        page = await store.messages_after(conversation, 0, 1_000_000)
    stored = {m.seq: m.id for m in page.messages}
    assert [seq for seq in acked if stored.get(seq) != acked[seq]] == []  # 0 acked messages lost
    assert sorted(stored) == list(range(1, len(stored) + 1))
    assert len(stored) >= len(acked)


async def test_connection_runs_wal_with_synchronous_full(tmp_path: Path) -> None:
    async with open_sqlite_store(tmp_path / "whispr.db") as store:
        conn = store._conn  # the settings are the contract, so the test reads them from the connection
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
        assert conn.execute("PRAGMA foreign_keys").fetchone() == (1,)
