"""Shared fixtures: private Redis and PostgreSQL instances (see tests/services.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.services import PostgresServer, RedisServer, postgres_server, redis_server


@pytest.fixture(scope="session")
def redis() -> Iterator[RedisServer]:
    """One private Redis for the session. Tests that inject faults into it use `fresh_redis`."""
    with redis_server() as server:
        yield server


@pytest.fixture
def fresh_redis() -> Iterator[RedisServer]:
    """A private Redis owned by one test, free to be killed, paused or restarted."""
    with redis_server() as server:
        yield server


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One private PostgreSQL cluster for the session (database `whispr`)."""
    with postgres_server() as server:
        yield server
