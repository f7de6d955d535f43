"""append_message throughput with 100 concurrent senders, with and without group commit.

Prints figures (run with `-m slow -s`, or see the printed table in the -ra summary); asserts only
correctness, never speed.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import pytest
import trio

from tests.adapters.store_helpers import append_message
from whispr.adapters.aio import open_bridge
from whispr.adapters.postgres_store import open_postgres_store
from whispr.adapters.sqlite_store import open_sqlite_store
from whispr.delivery.store import MessageStore

pytestmark = [pytest.mark.slow, pytest.mark.integration]

SENDERS = 100
CONVERSATIONS = 50  # two members each: every message also makes two inbox entries


async def measure(store: MessageStore, per_sender: int) -> str:
    conversations = [await store.create_conversation([f"u{2 * i}", f"u{2 * i + 1}"]) for i in range(CONVERSATIONS)]
    latencies: list[float] = []

    async def sender(n: int) -> None:
        conversation = conversations[n % CONVERSATIONS]
        for i in range(per_sender):
            started = time.perf_counter()
            await append_message(store, conversation, f"u{n % 2}", "phone", f"{n}-{i}", "text", "x" * 100, {}, None)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for n in range(SENDERS):
            nursery.start_soon(sender, n)
    elapsed = time.perf_counter() - started
    assert len(latencies) == SENDERS * per_sender
    cuts = statistics.quantiles(latencies, n=100)
    return (
        f"{len(latencies) / elapsed:8.0f} msg/s  p50 {cuts[49] * 1000:6.1f} ms  p99 {cuts[98] * 1000:6.1f} ms"
        f"  ({len(latencies)} messages)"
    )


@pytest.mark.parametrize(("max_batch", "per_sender"), [(512, 100), (1, 20)], ids=["group_commit", "one_per_tx"])
async def test_sqlite_throughput(
    tmp_path: Path, max_batch: int, per_sender: int, capsys: pytest.CaptureFixture[str]
) -> None:
    async with open_sqlite_store(tmp_path / "bench.db", max_batch=max_batch) as store:
        figures = await measure(store, per_sender)
    with capsys.disabled():
        print(f"\nsqlite   max_batch={max_batch:<4} {figures}")


@pytest.mark.parametrize(("max_batch", "per_sender"), [(1024, 100), (1, 10)], ids=["group_commit", "one_per_tx"])
async def test_postgres_throughput(
    pg_url: str, max_batch: int, per_sender: int, capsys: pytest.CaptureFixture[str]
) -> None:
    async with open_bridge(), open_postgres_store(pg_url, max_batch=max_batch, call_timeout=30) as store:
        figures = await measure(store, per_sender)
    with capsys.disabled():
        print(f"\npostgres max_batch={max_batch:<4} {figures}")
