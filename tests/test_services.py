"""The private-instance helpers start real servers that answer."""

from __future__ import annotations

import socket

from tests.services import PostgresServer, RedisServer


def test_private_redis_answers_ping(redis: RedisServer) -> None:
    with socket.create_connection(("127.0.0.1", redis.port), timeout=5) as s:
        s.sendall(b"PING\r\n")
        assert s.recv(64) == b"+PONG\r\n"


def test_private_postgres_accepts_connections(postgres: PostgresServer) -> None:
    with socket.create_connection(("127.0.0.1", postgres.port), timeout=5):
        pass
    assert f"port={postgres.port}" in postgres.dsn
