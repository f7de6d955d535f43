"""The cluster message store: PostgreSQL through psycopg 3's `AsyncConnectionPool`, under trio-asyncio.

Rules:
- Must be opened inside `whispr.adapters.aio.open_bridge()` (the trio-asyncio loop).
- Every call is one crossing of the bridge, bounded by a per-call timeout (`call_timeout`, default
  2 s), with `statement_timeout` set on the server as the second line of defence.
- Appends are group-committed: one writer sends each batch as one transaction in one crossing, using
  set-based statements (`unnest` arrays), so the cost per batch hardly grows with its size.
- The single write point holds across nodes: a batch locks its conversations `FOR UPDATE` (sorted by
  id), then the recipients' inbox heads (sorted by user id, through `INSERT … ON CONFLICT` in that
  order). Every writer takes the locks in the same order, so there is no deadlock, and each
  conversation's and inbox's seqs commit in order.

Cancellation: every call is cancellable (psycopg cancels the running query). A cancelled or
timed-out append may or may not have committed; the client's retry resolves it (`duplicate=True`).

Error handling: psycopg/psycopg_pool `OperationalError`s (connection refused or lost, server
shutdown, pool timeout, statement timeout, deadlock) and the per-call timeout become
`StoreUnavailable`, raised from the original. The pool replaces broken connections by itself
(`check_connection` on every checkout), so calls succeed again once the server is back.

Admission (local overload is not a PostgreSQL failure): the pool has a fixed size (`pool_size`
connections, opened up front and kept), and a call first takes one of `pool_size` slots of a
`trio.CapacityLimiter`, FIFO, *before* the breaker. So at most `pool_size` calls are inside the
breaker, and the queue that forms when the node's own calls hold every connection (a reconnect
storm after a restart, reliability.md E5) waits in Trio, outside the breaker. A call that gets no
slot within `call_timeout` raises `StoreUnavailable` ("node overloaded") and counts neither way.
An admitted call finds a connection in the pool unless PostgreSQL broke it, or the pool is still
opening it; so what the breaker times is the checkout from a pool that should have a connection,
plus the statement: refused or lost connections, a pool that cannot open any (`PoolTimeout`), and
a hung server or statement (the breaker's deadline) all count, as D8 and D9 require.

Circuit breaker (contract.md §5; reliability.md D8, D9): every admitted call, appends (one call per
batch) and the pool's opening included, runs through one `CircuitBreaker("postgres")` whose
`call_timeout` is the per-call timeout. Five failures in a row (`StoreUnavailable` or the timeout)
open it; while open, every call raises `StoreUnavailable` at once, raised from `CircuitOpen`,
without waiting on the pool (refused calls give their slot back at once), so a send gets
`service_unavailable` in well under a second instead of after a timeout.
After `reset_timeout` (30 s) the next three calls are trials: all three succeed → closed, one fails
→ open again. Answers such as `ConversationNotFound` count as successes. The breaker's state is
`PostgresStore.breaker`, and reaches /metrics and the logs through CIRCUIT_STATE telemetry.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import psycopg
import trio
from psycopg_pool import AsyncConnectionPool

from whispr.adapters.aio import run_aio
from whispr.adapters.migrations import load
from whispr.delivery.append_plan import AppendRequest, Key, appended, number_inbox, plan_batch
from whispr.delivery.group_commit import GroupCommit
from whispr.delivery.replay import check_page_args, replay_start
from whispr.delivery.store import (
    DEFAULT_RETENTION,
    Appended,
    ConversationNotFound,
    InboxEntry,
    InboxPage,
    JSONObject,
    Message,
    MessagePage,
    Notification,
    StoreError,
    StoreUnavailable,
)
from whispr.resilience import CircuitBreaker, CircuitOpen

if getattr(psycopg.waiting, "get_running_loop", None) is not asyncio.get_running_loop:
    raise ImportError(
        "psycopg was imported before trio_asyncio, so it cannot find the trio-asyncio loop:"
        " import whispr.adapters (or trio_asyncio) before psycopg"
    )

T = TypeVar("T")

MAX_BATCH = 1024
CALL_TIMEOUT = 2.0  # reliability.md D9: a 2 s app timeout
# Connections per node, all opened at start. A node is one Trio thread and a call costs it ~0.6 ms
# of CPU (bridge included), so it makes at most ~1,450 calls/s (measured on a local server: the same
# at 1, 10 and 40 calls at once). By Little's law 10 connections sustain that rate up to ~7 ms per
# call (a remote server); more would only queue inside PostgreSQL, and 10 per node keeps 9 nodes
# under the server's default max_connections (100, 3 reserved).
POOL_SIZE = 10
RESET_TIMEOUT = 30.0  # contract.md §5: the breaker stays open 30 s
_MIGRATION_LOCK = 0x77686973  # pg_advisory_xact_lock key ("whis"): one migrator at a time
_MESSAGE_COLUMNS = (
    "m.id, m.conversation_id, m.seq, m.sender_id, m.sender_device_id, m.client_message_id,"
    " m.type, m.content, m.metadata, m.reply_to, m.inserted_at"
)
_NOTIFICATION_COLUMNS = "id, user_id, type, title, body, data, created_at, read_at"

Connection = psycopg.AsyncConnection[tuple[Any, ...]]


def _message(row: Sequence[Any]) -> Message:
    return Message(*row)


async def _migrate(conn: Connection) -> list[int]:
    """Apply the pending migrations, one transaction each, under an advisory lock (nodes may race)."""
    applied = []
    for migration in load("postgres"):
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations"
                " (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)"
            )
            cur = await conn.execute("SELECT 1 FROM schema_migrations WHERE version = %s", (migration.version,))
            if await cur.fetchone() is not None:
                continue
            await conn.execute(migration.sql)  # no parameters: several statements are allowed
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (%s, %s, %s)",
                (migration.version, migration.name, int(time.time() * 1000)),
            )
        applied.append(migration.version)
    return applied


async def migrate(dsn: str) -> list[int]:
    """Create or upgrade the schema of the database at `dsn`; return the versions applied.

    Idempotent, and safe when several nodes run it at once. Must run inside `open_bridge()`.
    Cancellable (wrap it in `trio.fail_after` to bound it); connecting gives up after 10 s.

    Raises:
        StoreUnavailable: the database cannot be reached or refused the migration.
    """

    async def run() -> list[int]:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True, connect_timeout=10) as conn:
            return await _migrate(conn)

    try:
        return await run_aio(run)
    except psycopg.OperationalError as exc:
        raise StoreUnavailable(f"PostgreSQL migration failed: {exc}") from exc


@asynccontextmanager
async def open_postgres_store(
    dsn: str,
    *,
    clock: Callable[[], float] = time.time,
    retention: float = DEFAULT_RETENTION,
    max_batch: int = MAX_BATCH,
    call_timeout: float = CALL_TIMEOUT,
    reset_timeout: float = RESET_TIMEOUT,
    pool_size: int = POOL_SIZE,
) -> AsyncIterator[PostgresStore]:
    """Open a pool to `dsn`, migrate the schema, and close the pool on exit.

    Must run inside `whispr.adapters.aio.open_bridge()`.

    Args:
        dsn: a libpq connection string or URL.
        clock: Unix time in seconds; `inserted_at` and retention use it (tests inject one).
        retention: seconds during which messages are replayed.
        max_batch: most appends per transaction (1 disables group commit).
        call_timeout: seconds a call may wait for one of the node's `pool_size` slots, and then
            seconds it may take to check out a connection and run (the breaker's `call_timeout`).
        reset_timeout: seconds the circuit breaker stays open before its trial calls.
        pool_size: connections to keep open (a fixed pool), and calls admitted at once.

    Resource handling: runs the group-commit writer in a nursery of its own. On exit, appends not
    yet committed get `StoreUnavailable`, then the pool is closed (shielded from cancellation).

    Raises:
        StoreUnavailable: the database cannot be reached within `call_timeout`, or cannot be migrated.
    """
    statement_timeout_ms = int(call_timeout * 1000) + 500
    # A fixed pool (psycopg_pool's min_size == max_size): a connection opened on demand, during a
    # burst, would make admitted calls wait on connect(), and that wait counts against the breaker.
    pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
        dsn,
        min_size=pool_size,
        max_size=pool_size,
        open=False,
        timeout=call_timeout,
        check=AsyncConnectionPool.check_connection,
        kwargs={
            "autocommit": True,
            "connect_timeout": max(1, round(call_timeout)),
            "options": f"-c statement_timeout={statement_timeout_ms}",
        },
        name="whispr-store",
    )
    breaker = CircuitBreaker(
        "postgres", call_timeout=call_timeout, reset_timeout=reset_timeout, failure_types=(StoreUnavailable,)
    )
    store = PostgresStore(pool, clock, retention, max_batch, breaker)
    try:
        await store._call("open", pool.open, True, call_timeout)
        await store._call("migrate", store._aio_migrate)
        async with trio.open_nursery() as nursery:
            await nursery.start(store._appends.run)
            yield store
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await run_aio(pool.close)


class PostgresStore:
    """`whispr.delivery.store.MessageStore` on PostgreSQL. Build it with `open_postgres_store`."""

    def __init__(
        self,
        pool: AsyncConnectionPool[Connection],
        clock: Callable[[], float],
        retention: float,
        max_batch: int,
        breaker: CircuitBreaker,
    ) -> None:
        self._pool = pool
        self._clock = clock
        self._retention_ms = int(retention * 1000)
        self.breaker = breaker
        # One slot per pool connection; taken before the breaker (module docstring, "Admission").
        self._slots = trio.CapacityLimiter(pool.max_size)
        self._appends: GroupCommit[AppendRequest, Appended] = GroupCommit(self._commit_appends, max_batch)

    # -- plumbing ---------------------------------------------------------------------------------

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def _call(self, operation: str, fn: Callable[..., Awaitable[T]], *args: object) -> T:
        """Take a slot, then cross the bridge once to await `fn(*args)` through the breaker; translate
        its errors.

        Blocking: up to the breaker's `call_timeout` waiting for a slot while the node's own calls
        hold all of them, then up to `call_timeout` more in the breaker (not at all while it is
        open). Cancellable: yes. Raises `StoreUnavailable` (no slot in time, down, timed out, or
        circuit open) or the `StoreError` answer `fn` raised (e.g. `ConversationNotFound`).
        """
        timeout = self.breaker.call_timeout
        with trio.move_on_after(timeout) as queued:
            await self._slots.acquire()
        if queued.cancelled_caught:
            # Never reached the breaker: the wait measures this node's load, not PostgreSQL.
            raise StoreUnavailable(
                f"postgres {operation}: node overloaded, all {self._slots.total_tokens} connections"
                f" busy with its own calls for {timeout}s (not counted as a PostgreSQL failure)"
            )
        try:
            return await self.breaker.call(_translated, operation, fn, *args, operation=operation)
        except CircuitOpen as exc:
            raise StoreUnavailable(f"postgres circuit open; retry in {exc.retry_after:.1f}s") from exc
        except trio.TooSlowError as exc:
            raise StoreUnavailable(f"postgres {operation} took longer than {timeout}s") from exc
        finally:
            self._slots.release()

    async def _aio_migrate(self) -> list[int]:
        async with self._pool.connection() as conn:
            return await _migrate(conn)

    async def _aio_fetch(self, sql: str, params: Sequence[object]) -> list[tuple[Any, ...]]:
        async with self._pool.connection() as conn:
            cur = await conn.execute(sql, params)
            return await cur.fetchall()

    async def _aio_write(self, sql: str, params: Sequence[object]) -> int:
        async with self._pool.connection() as conn:
            cur = await conn.execute(sql, params)
            return cur.rowcount

    async def _fetch(self, operation: str, sql: str, params: Sequence[object]) -> list[tuple[Any, ...]]:
        return await self._call(operation, self._aio_fetch, sql, params)

    # -- messages ---------------------------------------------------------------------------------

    async def append(
        self,
        conversation_id: str,
        sender_id: str,
        sender_device_id: str,
        client_message_id: str,
        type: str,
        content: str,
        metadata: JSONObject,
        reply_to: str | None,
        *,
        require_member: bool = False,
    ) -> Appended:
        """See `MessageStore.append`. Blocks until the batch holding it has committed."""
        request = AppendRequest.build(
            conversation_id,
            sender_id,
            sender_device_id,
            client_message_id,
            type,
            content,
            metadata,
            reply_to,
            require_member=require_member,
        )
        return await self._appends.submit(request)

    async def _commit_appends(self, requests: list[AppendRequest]) -> list[Appended | StoreError]:
        return await self._call("append_batch", self._aio_append_batch, requests)

    async def _aio_append_batch(self, requests: list[AppendRequest]) -> list[Appended | StoreError]:
        async with self._pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "SELECT id, last_seq FROM conversations WHERE id = ANY(%s) ORDER BY id FOR UPDATE",
                (sorted({r.conversation_id for r in requests}),),
            )
            heads: dict[str, int] = dict(await cur.fetchall())
            cur = await conn.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages m"
                " JOIN unnest(%s::text[], %s::text[], %s::text[]) AS k (c, s, cm)"
                " ON m.conversation_id = k.c AND m.sender_id = k.s AND m.client_message_id = k.cm",
                _columns([r.key for r in requests], 3),
            )
            existing: dict[Key, Message] = {}
            for row in await cur.fetchall():
                message = _message(row)
                existing[(message.conversation_id, message.sender_id, message.client_message_id)] = message
            cur = await conn.execute(
                "SELECT conversation_id, user_id FROM members"
                " WHERE conversation_id = ANY(%s) AND active ORDER BY user_id",
                (list(heads),),
            )
            recipients: dict[str, list[str]] = defaultdict(list)
            for conversation_id, user_id in await cur.fetchall():
                recipients[conversation_id].append(user_id)
            plan = plan_batch(requests, heads, existing, recipients, self._now_ms(), lambda: str(uuid.uuid4()))
            if not plan.new_messages:
                return appended(plan.results, [])
            await conn.execute(
                "INSERT INTO messages (id, conversation_id, seq, sender_id, sender_device_id, client_message_id,"
                " type, content, metadata, reply_to, inserted_at)"
                " SELECT id, c, seq, s, d, cm, t, body, meta::jsonb, r, at FROM unnest(%s::text[], %s::text[],"
                " %s::bigint[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[],"
                " %s::bigint[]) AS v (id, c, seq, s, d, cm, t, body, meta, r, at)",
                _columns(
                    [
                        (
                            m.id,
                            m.conversation_id,
                            m.seq,
                            m.sender_id,
                            m.sender_device_id,
                            m.client_message_id,
                            m.type,
                            m.content,
                            metadata_json,
                            m.reply_to,
                            m.inserted_at,
                        )
                        for m, metadata_json in plan.new_messages
                    ],
                    11,
                ),
            )
            await conn.execute(
                "UPDATE conversations c SET last_seq = v.last FROM unnest(%s::text[], %s::bigint[]) AS v (id, last)"
                " WHERE c.id = v.id",
                _columns(list(plan.heads.items()), 2),
            )
            counts = plan.inbox_counts()
            numbered: list[tuple[str, int, Message]] = []
            if counts:
                cur = await conn.execute(
                    "INSERT INTO inboxes (user_id, last_seq)"
                    " SELECT u, n FROM unnest(%s::text[], %s::bigint[]) AS v (u, n) ORDER BY u"
                    " ON CONFLICT (user_id) DO UPDATE SET last_seq = inboxes.last_seq + excluded.last_seq"
                    " RETURNING user_id, last_seq",
                    _columns(sorted(counts.items()), 2),
                )
                bases = {user_id: last - counts[user_id] for user_id, last in await cur.fetchall()}
                numbered = number_inbox(plan.deliveries, bases)
                await conn.execute(
                    "INSERT INTO inbox_entries (user_id, seq, message_id, inserted_at)"
                    " SELECT * FROM unnest(%s::text[], %s::bigint[], %s::text[], %s::bigint[])",
                    _columns([(u, seq, m.id, m.inserted_at) for u, seq, m in numbered], 4),
                )
        return appended(plan.results, numbered)

    async def messages_after(self, conversation_id: str, after_seq: int, limit: int) -> MessagePage:
        """See `MessageStore.messages_after`."""
        check_page_args(after_seq, limit)
        return await self._call("messages_after", self._aio_messages_after, conversation_id, after_seq, limit)

    async def _aio_messages_after(self, conversation_id: str, after_seq: int, limit: int) -> MessagePage:
        async with self._pool.connection() as conn:
            # One statement, one snapshot: the head and the retention floor agree.
            cur = await conn.execute(
                "SELECT c.last_seq, (SELECT m.seq FROM messages m WHERE m.conversation_id = c.id"
                " AND m.inserted_at >= %s ORDER BY m.inserted_at, m.seq LIMIT 1)"
                " FROM conversations c WHERE c.id = %s",
                (self._now_ms() - self._retention_ms, conversation_id),
            )
            row = await cur.fetchone()
            if row is None:
                raise ConversationNotFound(conversation_id)
            head, floor = row
            start, recovered = replay_start(after_seq, head, floor)
            cur = await conn.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages m WHERE m.conversation_id = %s"
                " AND m.seq >= %s AND m.seq <= %s ORDER BY m.seq LIMIT %s",
                (conversation_id, start, head, limit + 1),
            )
            rows = await cur.fetchall()
        return MessagePage([_message(r) for r in rows[:limit]], head, len(rows) > limit, recovered)

    async def inbox_after(self, user_id: str, after_seq: int, limit: int) -> InboxPage:
        """See `MessageStore.inbox_after`."""
        check_page_args(after_seq, limit)
        return await self._call("inbox_after", self._aio_inbox_after, user_id, after_seq, limit)

    async def _aio_inbox_after(self, user_id: str, after_seq: int, limit: int) -> InboxPage:
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT COALESCE((SELECT last_seq FROM inboxes WHERE user_id = %s), 0),"
                " (SELECT seq FROM inbox_entries WHERE user_id = %s AND inserted_at >= %s"
                " ORDER BY inserted_at, seq LIMIT 1)",
                (user_id, user_id, self._now_ms() - self._retention_ms),
            )
            row = await cur.fetchone()
            assert row is not None  # a SELECT without FROM returns one row
            head, floor = row
            start, recovered = replay_start(after_seq, head, floor)
            cur = await conn.execute(
                f"SELECT e.seq, {_MESSAGE_COLUMNS} FROM inbox_entries e JOIN messages m ON m.id = e.message_id"
                " WHERE e.user_id = %s AND e.seq >= %s AND e.seq <= %s ORDER BY e.seq LIMIT %s",
                (user_id, start, head, limit + 1),
            )
            rows = await cur.fetchall()
        entries = [InboxEntry(r[0], _message(r[1:])) for r in rows[:limit]]
        return InboxPage(entries, head, len(rows) > limit, recovered)

    async def purge_expired(self) -> int:
        """See `MessageStore.purge_expired`."""
        return await self._call(
            "purge_expired",
            self._aio_write,
            "DELETE FROM inbox_entries WHERE inserted_at < %s",
            (self._now_ms() - self._retention_ms,),
        )

    # -- cursors ----------------------------------------------------------------------------------

    async def cursor(self, user_id: str, device_id: str) -> int:
        """See `MessageStore.cursor`."""
        rows = await self._fetch(
            "cursor",
            "SELECT acked_seq FROM device_cursors WHERE user_id = %s AND device_id = %s",
            (user_id, device_id),
        )
        return int(rows[0][0]) if rows else 0

    async def inbox_from_cursor(self, user_id: str, device_id: str, limit: int) -> tuple[int, InboxPage]:
        """See `MessageStore.inbox_from_cursor` (two queries: there is no store thread to save a trip to)."""
        position = await self.cursor(user_id, device_id)
        return position, await self.inbox_after(user_id, position, limit)

    async def advance_cursor(self, user_id: str, device_id: str, seq: int) -> int:
        """See `MessageStore.advance_cursor`.

        Raises:
            ValueError: `seq` is negative.
        """
        if seq < 0:
            raise ValueError(f"seq must be >= 0, got {seq}")
        rows = await self._fetch(
            "advance_cursor",
            "INSERT INTO device_cursors (user_id, device_id, acked_seq, updated_at)"
            " VALUES (%s, %s, LEAST(%s, COALESCE((SELECT last_seq FROM inboxes WHERE user_id = %s), 0)), %s)"
            " ON CONFLICT (user_id, device_id) DO UPDATE"
            " SET acked_seq = GREATEST(device_cursors.acked_seq, excluded.acked_seq), updated_at = excluded.updated_at"
            " RETURNING acked_seq",
            (user_id, device_id, seq, user_id, self._now_ms()),
        )
        return int(rows[0][0])

    # -- membership -------------------------------------------------------------------------------

    async def create_conversation(self, members: Sequence[str]) -> str:
        """See `MessageStore.create_conversation`."""
        conversation_id = str(uuid.uuid4())
        now = self._now_ms()
        await self._fetch(
            "create_conversation",
            "WITH c AS (INSERT INTO conversations (id, last_seq, created_at) VALUES (%s, 0, %s) RETURNING id)"
            " INSERT INTO members (conversation_id, user_id, active, joined_at)"
            " SELECT c.id, u, true, %s FROM c, unnest(%s::text[]) AS u RETURNING user_id",
            (conversation_id, now, now, sorted(set(members))),
        )
        return conversation_id

    async def add_member(self, conversation_id: str, user_id: str) -> None:
        """See `MessageStore.add_member`."""
        rows = await self._fetch(
            "add_member",
            "INSERT INTO members (conversation_id, user_id, active, joined_at)"
            " SELECT id, %s, true, %s FROM conversations WHERE id = %s"
            " ON CONFLICT (conversation_id, user_id) DO UPDATE SET active = true,"
            " joined_at = CASE WHEN members.active THEN members.joined_at ELSE excluded.joined_at END"
            " RETURNING 1",
            (user_id, self._now_ms(), conversation_id),
        )
        if not rows:
            raise ConversationNotFound(conversation_id)

    async def remove_member(self, conversation_id: str, user_id: str) -> None:
        """See `MessageStore.remove_member`."""
        await self._call(
            "remove_member",
            self._aio_write,
            "UPDATE members SET active = false WHERE conversation_id = %s AND user_id = %s",
            (conversation_id, user_id),
        )

    async def is_member(self, conversation_id: str, user_id: str) -> bool:
        """See `MessageStore.is_member`."""
        rows = await self._fetch(
            "is_member",
            "SELECT 1 FROM members WHERE conversation_id = %s AND user_id = %s AND active",
            (conversation_id, user_id),
        )
        return bool(rows)

    async def members(self, conversation_id: str) -> list[str]:
        """See `MessageStore.members`."""
        rows = await self._fetch(
            "members",
            "SELECT user_id FROM members WHERE conversation_id = %s AND active ORDER BY user_id",
            (conversation_id,),
        )
        return [row[0] for row in rows]

    async def conversations_of(self, user_id: str) -> list[str]:
        """See `MessageStore.conversations_of`."""
        rows = await self._fetch(
            "conversations_of",
            "SELECT conversation_id FROM members WHERE user_id = %s AND active ORDER BY conversation_id",
            (user_id,),
        )
        return [row[0] for row in rows]

    # -- users ------------------------------------------------------------------------------------

    async def upsert_user(self, user_id: str, active: bool) -> None:
        """See `MessageStore.upsert_user`."""
        await self._call(
            "upsert_user",
            self._aio_write,
            "INSERT INTO users (user_id, active, created_at) VALUES (%s, %s, %s)"
            " ON CONFLICT (user_id) DO UPDATE SET active = excluded.active",
            (user_id, active, self._now_ms()),
        )

    async def user_active(self, user_id: str) -> bool:
        """See `MessageStore.user_active`."""
        rows = await self._fetch("user_active", "SELECT active FROM users WHERE user_id = %s", (user_id,))
        return bool(rows and rows[0][0])

    # -- notifications ----------------------------------------------------------------------------

    async def create_notification(
        self, user_id: str, type: str, title: str, body: str, data: JSONObject
    ) -> Notification:
        """See `MessageStore.create_notification`."""
        data_json = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
        notification = Notification(
            str(uuid.uuid4()), user_id, type, title, body, json.loads(data_json), self._now_ms(), None
        )
        await self._call(
            "create_notification",
            self._aio_write,
            f"INSERT INTO notifications ({_NOTIFICATION_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s, NULL)",
            (notification.id, user_id, type, title, body, data_json, notification.created_at),
        )
        return notification

    async def unread_notifications(self, user_id: str, limit: int) -> list[Notification]:
        """See `MessageStore.unread_notifications`."""
        check_page_args(0, limit)
        rows = await self._fetch(
            "unread_notifications",
            f"SELECT {_NOTIFICATION_COLUMNS} FROM notifications WHERE user_id = %s AND read_at IS NULL"
            " ORDER BY created_at, id LIMIT %s",
            (user_id, limit),
        )
        return [Notification(*row) for row in rows]

    async def mark_notifications_read(self, user_id: str, ids: Sequence[str]) -> int:
        """See `MessageStore.mark_notifications_read`."""
        return await self._call(
            "mark_notifications_read",
            self._aio_write,
            "UPDATE notifications SET read_at = %s WHERE user_id = %s AND id = ANY(%s) AND read_at IS NULL",
            (self._now_ms(), user_id, list(ids)),
        )


async def _translated(operation: str, fn: Callable[..., Awaitable[T]], *args: object) -> T:
    """`await fn(*args)` across the bridge, with psycopg's `OperationalError` as `StoreUnavailable`
    (a breaker failure; other errors are answers and pass unchanged)."""
    try:
        return await run_aio(fn, *args)
    except psycopg.OperationalError as exc:
        raise StoreUnavailable(f"postgres {operation} failed: {exc}") from exc


def _columns(rows: Sequence[Sequence[object]], width: int) -> list[list[object]]:
    """Rows to columns, for `unnest(%s::type[], …)` (one array parameter per column)."""
    return [[row[i] for row in rows] for i in range(width)]
