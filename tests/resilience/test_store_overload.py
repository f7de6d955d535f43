"""The PostgreSQL breaker tells a busy node from a failing database (reliability.md E5, D8, D9).

A burst of calls larger than the pool queues for the node's connections: waiting there is local
overload and must not open the breaker, while the same burst against a stopped or hung server
must still open it. Each test runs a real `PostgresStore` on a real server.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping

import pytest
import trio

from tests.adapters.conftest import postgres_url
from tests.services import postgres_server
from whispr.adapters.aio import open_bridge
from whispr.adapters.postgres_store import open_postgres_store
from whispr.delivery.store import StoreUnavailable
from whispr.observability import telemetry
from whispr.resilience import CircuitOpen, State

pytestmark = pytest.mark.integration

BURST = 40  # calls at once: four times the default pool, twenty times the small one


@pytest.fixture
def transitions() -> Iterator[list[str]]:
    """The states the `postgres` breaker moves to (CIRCUIT_STATE telemetry), in order."""
    seen: list[str] = []

    def handle(event: str, measurements: Mapping[str, float], metadata: Mapping[str, object]) -> None:
        if metadata.get("breaker") == "postgres":
            seen.append(str(metadata["state"]))

    handler = f"test-store-overload-{uuid.uuid4().hex}"
    telemetry.attach(handler, [telemetry.CIRCUIT_STATE], handle)
    yield seen
    telemetry.detach(handler)


def outcome(exc: StoreUnavailable | None) -> str:
    """ok, overloaded (no connection slot in time), open (refused by the breaker) or failed."""
    if exc is None:
        return "ok"
    if "node overloaded" in str(exc):
        return "overloaded"
    return "open" if isinstance(exc.__cause__, CircuitOpen) else "failed"


async def burst(call: Callable[[int], Awaitable[object]]) -> Counter[str]:
    """Start `call(i)` for i in range(BURST) at once; count the outcomes."""
    outcomes: Counter[str] = Counter()

    async def one(i: int) -> None:
        try:
            await call(i)
        except StoreUnavailable as exc:
            outcomes[outcome(exc)] += 1
        else:
            outcomes["ok"] += 1

    with trio.fail_after(60):  # a guard against hanging, not a timing assertion
        async with trio.open_nursery() as nursery:
            for i in range(BURST):
                nursery.start_soon(one, i)
    return outcomes


async def test_a_pool_saturated_by_slow_healthy_calls_keeps_the_breaker_closed(
    pg_url: str, transitions: list[str]
) -> None:
    """Every `upsert_user` takes 0.2 s (a trigger sleeps): 40 of them on 2 connections need 4 s, so
    the calls queued last give up after the 2 s call timeout. PostgreSQL answered every call it got."""
    import psycopg  # after whispr.adapters (trio_asyncio): see whispr/adapters/__init__.py

    async with open_bridge(), open_postgres_store(pg_url, pool_size=2) as store:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(
                "CREATE FUNCTION slow_write() RETURNS trigger LANGUAGE plpgsql"
                " AS $$ BEGIN PERFORM pg_sleep(0.2); RETURN NEW; END $$"
            )
            conn.execute(
                "CREATE TRIGGER slow BEFORE INSERT OR UPDATE ON users FOR EACH ROW EXECUTE FUNCTION slow_write()"
            )
        outcomes = await burst(lambda i: store.upsert_user(f"slow-{i}", True))
        await store.upsert_user("after", True)  # the breaker still admits calls
        after = await store.user_active("after")

    print(f"\n{BURST} slow calls on a pool of 2: {dict(outcomes)}; breaker transitions: {transitions}")
    assert set(outcomes) == {"ok", "overloaded"}
    assert outcomes["overloaded"] >= store.breaker.failure_threshold  # counted, they would have opened it
    assert transitions == []
    assert store.breaker.statistics().consecutive_failures == 0
    assert after is True


async def test_a_hung_server_still_opens_the_breaker_when_calls_queue(pg_url: str, transitions: list[str]) -> None:
    """A lock makes every write hang: the pool's ten connections are held by calls that PostgreSQL
    does not answer, and those calls' timeouts open the breaker (D9's failure, at burst scale)."""
    import psycopg  # after whispr.adapters (trio_asyncio): see whispr/adapters/__init__.py

    async with open_bridge(), open_postgres_store(pg_url, call_timeout=1.0) as store:
        with psycopg.connect(pg_url) as locker:  # a transaction holding the table lock
            locker.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
            outcomes = await burst(lambda i: store.upsert_user(f"hung-{i}", True))
            locker.rollback()

    print(f"\n{BURST} calls to a hung server, pool of 10: {dict(outcomes)}; breaker transitions: {transitions}")
    assert transitions == ["open"]
    assert store.breaker.state is State.OPEN
    assert outcomes["ok"] == 0
    assert outcomes["failed"] >= store.breaker.failure_threshold


@pytest.mark.slow
async def test_a_stopped_server_still_opens_the_breaker_when_calls_queue(transitions: list[str]) -> None:
    """PostgreSQL stopped (`-m immediate`, D8): the pooled connections are dead and none can be
    opened, so the admitted calls fail, open the breaker, and the rest are refused."""
    with postgres_server() as server:
        async with open_bridge(), open_postgres_store(postgres_url(server, "whispr"), call_timeout=1.0) as store:
            await store.upsert_user("before", True)
            await trio.to_thread.run_sync(server.stop, "immediate")
            outcomes = await burst(lambda i: store.user_active("before"))
            with pytest.raises(StoreUnavailable) as refused:
                await store.user_active("before")

    print(f"\n{BURST} calls to a stopped server, pool of 10: {dict(outcomes)}; breaker transitions: {transitions}")
    assert transitions == ["open"]
    assert outcomes["ok"] == 0
    assert outcomes["failed"] >= store.breaker.failure_threshold
    assert outcome(refused.value) == "open"
