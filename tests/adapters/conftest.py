"""Store fixtures: the same behavioural suite runs on SQLite (in tmp_path) and on PostgreSQL (a fresh
database per test in the session's private cluster)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.services import PostgresServer
from whispr.adapters import open_store
from whispr.adapters.aio import open_bridge
from whispr.delivery.store import MessageStore

ROOT = Path(__file__).resolve().parents[2]
START = 1_700_000_000.0  # 2023-11-14T22:13:20Z
DAY = 24 * 3600.0


class FakeClock:
    """An injectable wall clock (Unix seconds) that moves only when told to."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def postgres_url(server: PostgresServer, dbname: str) -> str:
    return f"postgresql://postgres@127.0.0.1:{server.port}/{dbname}"


@pytest.fixture
def pg_url(postgres: PostgresServer) -> Iterator[str]:
    """A fresh, empty database in the session cluster, dropped afterwards."""
    import psycopg  # after whispr.adapters (trio_asyncio): see whispr/adapters/__init__.py

    name = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield postgres_url(postgres, name)
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: object) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/whispr.db"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
async def store(store_url: str, clock: FakeClock) -> AsyncIterator[MessageStore]:
    """The store, inside the trio-asyncio loop as `main()` opens it (both in this fixture's task)."""
    async with open_bridge(), open_store(store_url, clock=clock) as opened:
        yield opened
