"""The embedded message store: SQLite in WAL mode, on one worker thread, with group commit.

Rules:
- One connection, used by one thread at a time: every call runs in `trio.to_thread.run_sync` under a
  `CapacityLimiter(1)`, so the Trio loop never blocks on SQLite and SQLite never sees two threads.
- Appends are group-committed (`whispr.delivery.group_commit`): all `append` calls queued
  while a batch commits form the next batch, stored in one `BEGIN IMMEDIATE … COMMIT`.
- Durability: `journal_mode=WAL`, `synchronous=FULL`. A commit returns only after the WAL is
  fsynced, so an ack survives a process SIGKILL *and* an OS crash or power loss. (`NORMAL` would
  survive SIGKILL but may lose the last commits on power loss; "ack means durable" rules it out.)
  Group commit pays one fsync per batch, not per message.
- `busy_timeout` 5 s, in case another process (`whispr migrate`) holds the write lock.

Cancellation: a call that is waiting for the thread can be cancelled; once SQLite runs it, it is
not (SQLite work is short), and the caller is answered when it finishes.

Error handling: `sqlite3` errors that mean "the database cannot do it now" (locked, I/O, disk full,
corrupt) become `StoreUnavailable` raised from the original; misuse (`IntegrityError`,
`ProgrammingError`, `InterfaceError`) is a bug and propagates.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import trio

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
from whispr.observability.telemetry import DEPENDENCY_CALL, emit

T = TypeVar("T")

MAX_BATCH = 512
_BUGS = (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError)
_MESSAGE_COLUMNS = (
    "m.id, m.conversation_id, m.seq, m.sender_id, m.sender_device_id, m.client_message_id,"
    " m.type, m.content, m.metadata, m.reply_to, m.inserted_at"
)
_NOTIFICATION_COLUMNS = "id, user_id, type, title, body, data, created_at, read_at"


def _message(row: Sequence[Any]) -> Message:
    (id_, conversation_id, seq, sender_id, device_id, client_message_id, type_, content, meta, reply_to, at) = row
    return Message(
        id=str(id_),
        conversation_id=str(conversation_id),
        seq=int(seq),
        sender_id=str(sender_id),
        sender_device_id=str(device_id),
        client_message_id=str(client_message_id),
        type=str(type_),
        content=str(content),
        metadata=json.loads(str(meta)),
        reply_to=None if reply_to is None else str(reply_to),
        inserted_at=int(at),
    )


def _notification(row: Sequence[Any]) -> Notification:
    id_, user_id, type_, title, body, data, created_at, read_at = row
    return Notification(
        id=str(id_),
        user_id=str(user_id),
        type=str(type_),
        title=str(title),
        body=str(body),
        data=json.loads(str(data)),
        created_at=int(created_at),
        read_at=None if read_at is None else int(read_at),
    )


def _marks(n: int) -> str:
    """`?, ?, …` for an `IN (…)` list of n parameters (a batch stays far below SQLite's 32,766)."""
    return ", ".join("?" * n)


def _statements(script: str) -> list[str]:
    """Split a migration script into statements (sqlite3 executes one at a time inside a transaction)."""
    statements: list[str] = []
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    if pending.strip() and not all(s.strip().startswith("--") for s in pending.splitlines() if s.strip()):
        raise ValueError(f"incomplete SQL statement at the end of a migration: {pending.strip()[:80]!r}")
    return statements


def _migrate(conn: sqlite3.Connection) -> list[int]:
    """Apply the pending migrations, one `BEGIN IMMEDIATE` transaction each; return their versions."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations"
        " (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)"
    )
    applied = []
    for migration in load("sqlite"):
        with _transaction(conn):
            if conn.execute("SELECT 1 FROM schema_migrations WHERE version = ?", (migration.version,)).fetchone():
                continue
            for statement in _statements(migration.sql):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (migration.version, migration.name, int(time.time() * 1000)),
            )
        applied.append(migration.version)
    return applied


class _transaction:
    """`BEGIN IMMEDIATE` … `COMMIT`, or `ROLLBACK` on any exception (the connection is in autocommit mode)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            self._conn.execute("COMMIT")
        elif self._conn.in_transaction:
            self._conn.execute("ROLLBACK")


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise StoreUnavailable(f"SQLite refused WAL mode for {path!r} (got {mode!r})")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        _migrate(conn)
    except BaseException:
        conn.close()
        raise
    return conn


async def migrate(path: str | os.PathLike[str]) -> list[int]:
    """Create or upgrade the schema of the SQLite database at `path`; return the versions applied.

    Idempotent (a second run applies nothing). Runs on a worker thread; not cancellable once started.

    Raises:
        StoreUnavailable: the file cannot be opened or written.
    """

    def run() -> list[int]:
        conn = sqlite3.connect(os.fspath(path), isolation_level=None, timeout=5.0)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return _migrate(conn)
        finally:
            conn.close()

    try:
        return await trio.to_thread.run_sync(run)
    except sqlite3.Error as exc:
        raise StoreUnavailable(f"SQLite migration of {os.fspath(path)!r} failed: {exc}") from exc


@asynccontextmanager
async def open_sqlite_store(
    path: str | os.PathLike[str],
    *,
    clock: Callable[[], float] = time.time,
    retention: float = DEFAULT_RETENTION,
    max_batch: int = MAX_BATCH,
) -> AsyncIterator[SQLiteStore]:
    """Open (creating and migrating if needed) the SQLite store at `path`, and close it on exit.

    Args:
        path: the database file; its directory must exist. `-wal` and `-shm` files sit beside it.
        clock: Unix time in seconds; `inserted_at` and retention use it (tests inject one).
        retention: seconds during which messages are replayed.
        max_batch: most appends per transaction (1 disables group commit).

    Resource handling: runs the group-commit writer in a nursery of its own. On exit, appends not
    yet committed get `StoreUnavailable`, then the connection is closed (shielded from cancellation).

    Raises:
        StoreUnavailable: the file cannot be opened, is not a database, or cannot be migrated.
    """
    limiter = trio.CapacityLimiter(1)
    try:
        conn = await trio.to_thread.run_sync(_connect, os.fspath(path), limiter=limiter)
    except sqlite3.Error as exc:
        raise StoreUnavailable(f"cannot open the SQLite store {os.fspath(path)!r}: {exc}") from exc
    store = SQLiteStore(conn, limiter, clock, retention, max_batch)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(store._appends.run)
            yield store
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(store._close, limiter=limiter)


class SQLiteStore:
    """`whispr.delivery.store.MessageStore` on SQLite. Build it with `open_sqlite_store`."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        limiter: trio.CapacityLimiter,
        clock: Callable[[], float],
        retention: float,
        max_batch: int,
    ) -> None:
        self._conn = conn
        self._limiter = limiter
        self._clock = clock
        self._retention_ms = int(retention * 1000)
        self._closed = False
        self._appends: GroupCommit[AppendRequest, Appended] = GroupCommit(self._commit_appends, max_batch)

    # -- plumbing ---------------------------------------------------------------------------------

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _close(self) -> None:
        self._closed = True
        self._conn.close()

    def _checked(self, fn: Callable[..., T], *args: object) -> T:
        if self._closed:
            raise StoreUnavailable("the store is closed")
        return fn(*args)

    async def _run(self, operation: str, fn: Callable[..., T], *args: object) -> T:
        """Run `fn(*args)` on the store's thread; translate errors; emit DEPENDENCY_CALL."""
        started = time.perf_counter()
        outcome = "error"
        try:
            result = await trio.to_thread.run_sync(self._checked, fn, *args, limiter=self._limiter)
            outcome = "ok"
            return result
        except sqlite3.Error as exc:
            if isinstance(exc, _BUGS):
                raise
            raise StoreUnavailable(f"sqlite {operation} failed: {exc}") from exc
        except StoreUnavailable:
            raise
        except StoreError:
            outcome = "ok"  # an answer (e.g. ConversationNotFound), not a failure of SQLite
            raise
        finally:
            emit(
                DEPENDENCY_CALL,
                {"duration": time.perf_counter() - started},
                {"dependency": "sqlite", "operation": operation, "outcome": outcome},
            )

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
        return await self._run("append_batch", self._append_batch, requests)

    def _append_batch(self, requests: list[AppendRequest]) -> list[Appended | StoreError]:
        conn = self._conn
        conversation_ids = sorted({r.conversation_id for r in requests})
        with _transaction(conn):
            heads: dict[str, int] = dict(
                conn.execute(
                    f"SELECT id, last_seq FROM conversations WHERE id IN ({_marks(len(conversation_ids))})",
                    conversation_ids,
                ).fetchall()
            )
            keys = [part for r in requests for part in r.key]
            existing: dict[Key, Message] = {}
            for row in conn.execute(
                # CROSS JOIN keeps the keys as the outer loop, so each is an index search, not a scan.
                f"SELECT {_MESSAGE_COLUMNS} FROM (VALUES {', '.join(['(?, ?, ?)'] * len(requests))}) AS k"
                " CROSS JOIN messages m ON m.conversation_id = k.column1 AND m.sender_id = k.column2"
                " AND m.client_message_id = k.column3",
                keys,
            ):
                message = _message(row)
                existing[(message.conversation_id, message.sender_id, message.client_message_id)] = message
            recipients: dict[str, list[str]] = defaultdict(list)
            for conversation_id, user_id in conn.execute(
                f"SELECT conversation_id, user_id FROM members WHERE conversation_id IN ({_marks(len(heads))})"
                " AND active ORDER BY user_id",
                list(heads),
            ):
                recipients[conversation_id].append(user_id)
            plan = plan_batch(requests, heads, existing, recipients, self._now_ms(), lambda: str(uuid.uuid4()))
            conn.executemany(
                "INSERT INTO messages (id, conversation_id, seq, sender_id, sender_device_id, client_message_id,"
                " type, content, metadata, reply_to, inserted_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
            )
            conn.executemany(
                "UPDATE conversations SET last_seq = ? WHERE id = ?", [(h, c) for c, h in plan.heads.items()]
            )
            counts = plan.inbox_counts()
            bases: dict[str, int] = dict.fromkeys(counts, 0)
            bases.update(
                conn.execute(
                    f"SELECT user_id, last_seq FROM inboxes WHERE user_id IN ({_marks(len(counts))})", list(counts)
                ).fetchall()
            )
            numbered = number_inbox(plan.deliveries, bases)
            conn.executemany(
                "INSERT INTO inbox_entries (user_id, seq, message_id, inserted_at) VALUES (?, ?, ?, ?)",
                [(user_id, seq, m.id, m.inserted_at) for user_id, seq, m in numbered],
            )
            conn.executemany(
                "INSERT INTO inboxes (user_id, last_seq) VALUES (?, ?)"
                " ON CONFLICT (user_id) DO UPDATE SET last_seq = excluded.last_seq",
                [(user_id, bases[user_id] + count) for user_id, count in counts.items()],
            )
        return appended(plan.results, numbered)

    async def messages_after(self, conversation_id: str, after_seq: int, limit: int) -> MessagePage:
        """See `MessageStore.messages_after`."""
        check_page_args(after_seq, limit)
        return await self._run("messages_after", self._messages_after, conversation_id, after_seq, limit)

    def _messages_after(self, conversation_id: str, after_seq: int, limit: int) -> MessagePage:
        conn = self._conn
        row = conn.execute("SELECT last_seq FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
        if row is None:
            raise ConversationNotFound(conversation_id)
        head: int = row[0]
        floor = conn.execute(
            "SELECT seq FROM messages WHERE conversation_id = ? AND inserted_at >= ? ORDER BY inserted_at, seq LIMIT 1",
            (conversation_id, self._now_ms() - self._retention_ms),
        ).fetchone()
        start, recovered = replay_start(after_seq, head, None if floor is None else floor[0])
        rows = conn.execute(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages m WHERE m.conversation_id = ? AND m.seq >= ? ORDER BY m.seq LIMIT ?",
            (conversation_id, start, limit + 1),
        ).fetchall()
        return MessagePage([_message(r) for r in rows[:limit]], head, len(rows) > limit, recovered)

    async def inbox_after(self, user_id: str, after_seq: int, limit: int) -> InboxPage:
        """See `MessageStore.inbox_after`."""
        check_page_args(after_seq, limit)
        return await self._run("inbox_after", self._inbox_after, user_id, after_seq, limit)

    def _inbox_after(self, user_id: str, after_seq: int, limit: int) -> InboxPage:
        conn = self._conn
        row = conn.execute("SELECT last_seq FROM inboxes WHERE user_id = ?", (user_id,)).fetchone()
        head: int = 0 if row is None else row[0]
        floor = conn.execute(
            "SELECT seq FROM inbox_entries WHERE user_id = ? AND inserted_at >= ? ORDER BY inserted_at, seq LIMIT 1",
            (user_id, self._now_ms() - self._retention_ms),
        ).fetchone()
        start, recovered = replay_start(after_seq, head, None if floor is None else floor[0])
        rows = conn.execute(
            f"SELECT e.seq, {_MESSAGE_COLUMNS} FROM inbox_entries e JOIN messages m ON m.id = e.message_id"
            " WHERE e.user_id = ? AND e.seq >= ? ORDER BY e.seq LIMIT ?",
            (user_id, start, limit + 1),
        ).fetchall()
        entries = [InboxEntry(r[0], _message(r[1:])) for r in rows[:limit]]
        return InboxPage(entries, head, len(rows) > limit, recovered)

    async def purge_expired(self) -> int:
        """See `MessageStore.purge_expired`."""
        return await self._run("purge_expired", self._purge_expired)

    def _purge_expired(self) -> int:
        with _transaction(self._conn):
            cursor = self._conn.execute(
                "DELETE FROM inbox_entries WHERE inserted_at < ?", (self._now_ms() - self._retention_ms,)
            )
        return cursor.rowcount

    # -- cursors ----------------------------------------------------------------------------------

    async def cursor(self, user_id: str, device_id: str) -> int:
        """See `MessageStore.cursor`."""
        return await self._run("cursor", self._cursor, user_id, device_id)

    def _cursor(self, user_id: str, device_id: str) -> int:
        row = self._conn.execute(
            "SELECT acked_seq FROM device_cursors WHERE user_id = ? AND device_id = ?", (user_id, device_id)
        ).fetchone()
        return 0 if row is None else int(row[0])

    async def inbox_from_cursor(self, user_id: str, device_id: str, limit: int) -> tuple[int, InboxPage]:
        """See `MessageStore.inbox_from_cursor`: both reads on one trip to the store's thread."""
        check_page_args(0, limit)
        return await self._run("inbox_from_cursor", self._inbox_from_cursor, user_id, device_id, limit)

    def _inbox_from_cursor(self, user_id: str, device_id: str, limit: int) -> tuple[int, InboxPage]:
        position = self._cursor(user_id, device_id)
        return position, self._inbox_after(user_id, position, limit)

    async def advance_cursor(self, user_id: str, device_id: str, seq: int) -> int:
        """See `MessageStore.advance_cursor`.

        Raises:
            ValueError: `seq` is negative.
        """
        if seq < 0:
            raise ValueError(f"seq must be >= 0, got {seq}")
        return await self._run("advance_cursor", self._advance_cursor, user_id, device_id, seq)

    def _advance_cursor(self, user_id: str, device_id: str, seq: int) -> int:
        with _transaction(self._conn):
            row = self._conn.execute(
                "INSERT INTO device_cursors (user_id, device_id, acked_seq, updated_at)"
                " VALUES (?, ?, MIN(?, COALESCE((SELECT last_seq FROM inboxes WHERE user_id = ?), 0)), ?)"
                " ON CONFLICT (user_id, device_id) DO UPDATE"
                " SET acked_seq = MAX(acked_seq, excluded.acked_seq), updated_at = excluded.updated_at"
                " RETURNING acked_seq",
                (user_id, device_id, seq, user_id, self._now_ms()),
            ).fetchone()
        return int(row[0])

    # -- membership -------------------------------------------------------------------------------

    async def create_conversation(self, members: Sequence[str]) -> str:
        """See `MessageStore.create_conversation`."""
        return await self._run("create_conversation", self._create_conversation, sorted(set(members)))

    def _create_conversation(self, members: list[str]) -> str:
        conversation_id = str(uuid.uuid4())
        now = self._now_ms()
        with _transaction(self._conn):
            self._conn.execute(
                "INSERT INTO conversations (id, last_seq, created_at) VALUES (?, 0, ?)", (conversation_id, now)
            )
            self._conn.executemany(
                "INSERT INTO members (conversation_id, user_id, active, joined_at) VALUES (?, ?, 1, ?)",
                [(conversation_id, user_id, now) for user_id in members],
            )
        return conversation_id

    async def add_member(self, conversation_id: str, user_id: str) -> None:
        """See `MessageStore.add_member`."""
        await self._run("add_member", self._add_member, conversation_id, user_id)

    def _add_member(self, conversation_id: str, user_id: str) -> None:
        with _transaction(self._conn):
            if self._conn.execute("SELECT 1 FROM conversations WHERE id = ?", (conversation_id,)).fetchone() is None:
                raise ConversationNotFound(conversation_id)
            self._conn.execute(
                "INSERT INTO members (conversation_id, user_id, active, joined_at) VALUES (?, ?, 1, ?)"
                " ON CONFLICT (conversation_id, user_id) DO UPDATE SET active = 1,"
                " joined_at = CASE WHEN members.active THEN members.joined_at ELSE excluded.joined_at END",
                (conversation_id, user_id, self._now_ms()),
            )

    async def remove_member(self, conversation_id: str, user_id: str) -> None:
        """See `MessageStore.remove_member`."""
        await self._run(
            "remove_member",
            self._write,
            "UPDATE members SET active = 0 WHERE conversation_id = ? AND user_id = ?",
            (conversation_id, user_id),
        )

    def _write(self, sql: str, params: Sequence[object]) -> int:
        with _transaction(self._conn):
            return self._conn.execute(sql, params).rowcount

    def _column(self, sql: str, params: Sequence[object]) -> list[object]:
        return [row[0] for row in self._conn.execute(sql, params)]

    async def is_member(self, conversation_id: str, user_id: str) -> bool:
        """See `MessageStore.is_member`."""
        found = await self._run(
            "is_member",
            self._column,
            "SELECT 1 FROM members WHERE conversation_id = ? AND user_id = ? AND active",
            (conversation_id, user_id),
        )
        return bool(found)

    async def members(self, conversation_id: str) -> list[str]:
        """See `MessageStore.members`."""
        found = await self._run(
            "members",
            self._column,
            "SELECT user_id FROM members WHERE conversation_id = ? AND active ORDER BY user_id",
            (conversation_id,),
        )
        return [str(user_id) for user_id in found]

    async def conversations_of(self, user_id: str) -> list[str]:
        """See `MessageStore.conversations_of`."""
        found = await self._run(
            "conversations_of",
            self._column,
            "SELECT conversation_id FROM members WHERE user_id = ? AND active ORDER BY conversation_id",
            (user_id,),
        )
        return [str(conversation_id) for conversation_id in found]

    # -- users ------------------------------------------------------------------------------------

    async def upsert_user(self, user_id: str, active: bool) -> None:
        """See `MessageStore.upsert_user`."""
        await self._run(
            "upsert_user",
            self._write,
            "INSERT INTO users (user_id, active, created_at) VALUES (?, ?, ?)"
            " ON CONFLICT (user_id) DO UPDATE SET active = excluded.active",
            (user_id, active, self._now_ms()),
        )

    async def user_active(self, user_id: str) -> bool:
        """See `MessageStore.user_active`."""
        found = await self._run("user_active", self._column, "SELECT active FROM users WHERE user_id = ?", (user_id,))
        return bool(found and found[0])

    # -- notifications ----------------------------------------------------------------------------

    async def create_notification(
        self, user_id: str, type: str, title: str, body: str, data: JSONObject
    ) -> Notification:
        """See `MessageStore.create_notification`."""
        data_json = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
        return await self._run("create_notification", self._create_notification, user_id, type, title, body, data_json)

    def _create_notification(self, user_id: str, type: str, title: str, body: str, data_json: str) -> Notification:
        n = Notification(str(uuid.uuid4()), user_id, type, title, body, json.loads(data_json), self._now_ms(), None)
        with _transaction(self._conn):
            self._conn.execute(
                f"INSERT INTO notifications ({_NOTIFICATION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
                (n.id, n.user_id, n.type, n.title, n.body, data_json, n.created_at),
            )
        return n

    async def unread_notifications(self, user_id: str, limit: int) -> list[Notification]:
        """See `MessageStore.unread_notifications`."""
        check_page_args(0, limit)
        return await self._run("unread_notifications", self._unread_notifications, user_id, limit)

    def _unread_notifications(self, user_id: str, limit: int) -> list[Notification]:
        rows = self._conn.execute(
            f"SELECT {_NOTIFICATION_COLUMNS} FROM notifications WHERE user_id = ? AND read_at IS NULL"
            " ORDER BY created_at, id LIMIT ?",
            (user_id, limit),
        )
        return [_notification(row) for row in rows]

    async def mark_notifications_read(self, user_id: str, ids: Sequence[str]) -> int:
        """See `MessageStore.mark_notifications_read`."""
        return await self._run("mark_notifications_read", self._mark_read, user_id, list(ids))

    def _mark_read(self, user_id: str, ids: list[str]) -> int:
        now = self._now_ms()
        with _transaction(self._conn):
            cursor = self._conn.executemany(
                "UPDATE notifications SET read_at = ? WHERE id = ? AND user_id = ? AND read_at IS NULL",
                [(now, id_, user_id) for id_ in ids],
            )
        return cursor.rowcount
