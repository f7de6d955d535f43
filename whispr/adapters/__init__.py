"""The only place that imports redis, psycopg, psycopg_pool, trio_asyncio and sqlite3.

Adapters translate their libraries' errors into whispr's (`StoreUnavailable`, raised `from` the
original). The message store (`whispr.delivery.store.MessageStore`) has two backends, chosen by URL:

| store URL | backend |
|---|---|
| `sqlite:///relative/path.db`, `sqlite:////absolute/path.db` | `sqlite_store` (embedded default) |
| `postgresql://…` or `postgres://…` (any libpq URL) | `postgres_store`; needs `aio.open_bridge()` around it |

The PostgreSQL modules are imported only when a PostgreSQL URL is used.

Import order matters: trio-asyncio replaces `asyncio.get_running_loop` when it is imported, and
psycopg binds that function when *it* is imported (`psycopg.waiting`). Importing psycopg first
leaves it with the original, which fails under trio-asyncio ("no running event loop") in every pool
connection attempt. So this package imports `aio` (trio_asyncio) before anything else, and
`postgres_store` refuses to load if psycopg came first.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from whispr.adapters import aio as aio  # first: see "Import order matters" above
from whispr.delivery.store import DEFAULT_RETENTION, MessageStore

_SQLITE = "sqlite:///"
_POSTGRES = ("postgresql://", "postgres://")


def _sqlite_path(url: str) -> str | None:
    return url[len(_SQLITE) :] if url.startswith(_SQLITE) else None


def _check(url: str) -> None:
    if _sqlite_path(url) is None and not url.startswith(_POSTGRES):
        raise ValueError(f"unsupported store URL {url.split(':', 1)[0]!r}: use sqlite:///PATH or postgresql://…")


async def migrate(url: str) -> list[int]:
    """Create or upgrade the store's schema; return the migration versions applied ([] if none).

    Idempotent. For PostgreSQL it must run inside `whispr.adapters.aio.open_bridge()`.

    Raises:
        ValueError: the URL names no supported backend.
        StoreUnavailable: the database cannot be reached, opened or migrated.
    """
    _check(url)
    path = _sqlite_path(url)
    if path is not None:
        from whispr.adapters import sqlite_store

        return await sqlite_store.migrate(path)
    from whispr.adapters import postgres_store

    return await postgres_store.migrate(url)


@asynccontextmanager
async def open_store(
    url: str, *, clock: Callable[[], float] = time.time, retention: float = DEFAULT_RETENTION
) -> AsyncIterator[MessageStore]:
    """Open the store at `url` (migrating it first) for the duration of the block, with default tuning.

    For PostgreSQL it must run inside `whispr.adapters.aio.open_bridge()`. See
    `sqlite_store.open_sqlite_store` and `postgres_store.open_postgres_store` for the details.

    Raises:
        ValueError: the URL names no supported backend.
        StoreUnavailable: the database cannot be reached, opened or migrated.
    """
    _check(url)
    path = _sqlite_path(url)
    if path is not None:
        from whispr.adapters.sqlite_store import open_sqlite_store

        async with open_sqlite_store(path, clock=clock, retention=retention) as sqlite:
            yield sqlite
        return
    from whispr.adapters.postgres_store import open_postgres_store

    async with open_postgres_store(url, clock=clock, retention=retention) as postgres:
        yield postgres
