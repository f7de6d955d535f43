"""The store tests' fresh-database fixture, for the breaker tests that need a real PostgreSQL."""

from tests.adapters.conftest import pg_url as pg_url
