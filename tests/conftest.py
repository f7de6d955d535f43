"""Shared fixtures: private Redis, Redis Cluster and PostgreSQL instances (see tests/services.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.services import (
    PostgresServer,
    RedisClusterServers,
    RedisServer,
    postgres_server,
    redis_server,
)
from tests.services import redis_cluster as start_redis_cluster


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
def redis_cluster() -> Iterator[RedisClusterServers]:
    """One private 3-master Redis Cluster for the session. Tests that restart or reshard it use
    `fresh_redis_cluster`."""
    with start_redis_cluster() as cluster:
        yield cluster


@pytest.fixture
def fresh_redis_cluster() -> Iterator[RedisClusterServers]:
    """A private 3-master Redis Cluster owned by one test, free to be resharded or restarted."""
    with start_redis_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One private PostgreSQL cluster for the session (database `whispr`)."""
    with postgres_server() as server:
        yield server
