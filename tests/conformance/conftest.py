"""The server under test, fresh for every case, in two deployments: every case runs against both.

- `one_node`: one node, embedded default (SQLite, in-process pub/sub).
- `nginx_two_nodes`: deploy/nginx/whispr.conf (a real nginx, tests/deploy_nginx/nginx.py) in front of
  two nodes sharing a private Redis and a private PostgreSQL database; nginx balances by least
  connections, so a case's first two sockets land on different nodes and its cross-socket
  assertions (broadcasts, presence, delivery) cross nodes.

Fresh per case: the connect budget of a client IP (20 per 5 min, contract.md §5) and the abuse blocks
(per node, or one budget in Redis), presence, and the users' inboxes (cases assert exact inbox
contents for "alice"); phoenix.js reconnects and refused retries spend that budget. For the two
nodes, the Redis and the database live for the session and are emptied before each case (FLUSHALL,
TRUNCATE): a new Redis and CREATE DATABASE per case cost ~0.8 s each time, 67 times.

127.0.0.0/8 is a trusted proxy, so raw clients can spread over client IPs with X-Forwarded-For
(nginx appends its own hop, which the node skips); phoenix.js sends none and stays 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.adapters.conftest import postgres_url
from tests.conformance.support import Server
from tests.deploy_nginx.nginx import nginx_binary, running_nginx
from tests.node import running_node
from tests.services import PostgresServer, RedisServer, redis_server

DEPLOYMENTS = ("one_node", "nginx_two_nodes")

Deploy = Callable[..., contextlib.AbstractAsyncContextManager[Server]]
"""`deploy(**settings)`: run the case's deployment with those settings overridden."""


@dataclass
class World:
    """The server under test with three active users and a conversation of alice and bob."""

    server: Server
    conversation: str  # alice + bob
    other_conversation: str  # bob + carol (alice is not a member)

    @property
    def conv_topic(self) -> str:
        return f"conversation:{self.conversation}"

    def params(self, user: str, device: str, **kw: float) -> dict[str, str]:
        """phoenix.js `params` with a valid token."""
        return {"token": self.server.token(user, device, **kw)}


@dataclass(frozen=True)
class ClusterServices:
    """The Redis and the PostgreSQL database of the two-node deployment, for the whole session."""

    redis: RedisServer
    postgres: PostgresServer
    database: str

    @property
    def store_url(self) -> str:
        return postgres_url(self.postgres, self.database)

    def empty(self) -> None:
        """Forget everything the previous case left (no node may be running): every Redis key,
        every row of every table but the schema's migrations."""
        import psycopg
        import redis

        with redis.Redis.from_url(self.redis.url) as client:
            client.flushall()
        with psycopg.connect(self.store_url, autocommit=True) as conn:
            tables = conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'schema_migrations'"
            ).fetchall()
            if tables:
                conn.execute(f"TRUNCATE {', '.join(name for (name,) in tables)} RESTART IDENTITY CASCADE")


@pytest.fixture(scope="session")
def cluster_services(postgres: PostgresServer) -> Iterator[ClusterServices]:
    import psycopg

    database = f"conformance_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    try:
        with redis_server() as server:
            yield ClusterServices(server, postgres, database)
    finally:
        with psycopg.connect(postgres.dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{database}" WITH (FORCE)')


@pytest.fixture(params=DEPLOYMENTS)
def deploy(request: pytest.FixtureRequest, tmp_path: Path) -> Deploy:
    """The case's deployment, as a context manager to enter with extra settings."""
    common: dict[str, Any] = {"trusted_proxies": ("127.0.0.0/8",)}
    if request.param == "one_node":

        @contextlib.asynccontextmanager
        async def one_node(**settings: Any) -> AsyncIterator[Server]:
            async with running_node(tmp_path, **common, **settings) as node:
                yield Server([node], node.port)

        return one_node

    if nginx_binary() is None:
        pytest.skip("nginx is not installed (bash .ci/setup --dev)")
    services: ClusterServices = request.getfixturevalue("cluster_services")
    services.empty()
    common["redis_url"] = services.redis.url
    common["store_url"] = services.store_url

    @contextlib.asynccontextmanager
    async def nginx_two_nodes(**settings: Any) -> AsyncIterator[Server]:
        async with (  # one after the other: the first case's first node migrates the database
            running_node(tmp_path / "a", node_id="conf-a", **common, **settings) as a,
            running_node(tmp_path / "b", node_id="conf-b", **common, **settings) as b,
        ):
            with running_nginx(tmp_path / "nginx", [a.port, b.port]) as port:
                yield Server([a, b], port)

    return nginx_two_nodes


@pytest.fixture
async def world(deploy: Deploy) -> AsyncIterator[World]:
    async with deploy() as server:
        for user in ("alice", "bob", "carol"):
            await server.add_user(user)
        conversation = await server.store.create_conversation(["alice", "bob"])
        other = await server.store.create_conversation(["bob", "carol"])
        yield World(server, conversation, other)
