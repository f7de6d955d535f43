-- whispr store, SQLite dialect. Times are INTEGER milliseconds since the Unix epoch (UTC).
-- See whispr/delivery/store.py for the rules these tables keep.

CREATE TABLE users (
    user_id    TEXT PRIMARY KEY,
    active     INTEGER NOT NULL CHECK (active IN (0, 1)),
    created_at INTEGER NOT NULL
);

CREATE TABLE conversations (
    id         TEXT PRIMARY KEY,
    last_seq   INTEGER NOT NULL DEFAULT 0,  -- the head: highest seq stored, 0 when empty
    created_at INTEGER NOT NULL
);

CREATE TABLE members (
    conversation_id TEXT NOT NULL REFERENCES conversations (id),
    user_id         TEXT NOT NULL,
    active          INTEGER NOT NULL CHECK (active IN (0, 1)),
    joined_at       INTEGER NOT NULL,
    PRIMARY KEY (conversation_id, user_id)
) WITHOUT ROWID;
CREATE INDEX members_by_user ON members (user_id, conversation_id);

CREATE TABLE messages (
    id                TEXT PRIMARY KEY,
    conversation_id   TEXT NOT NULL REFERENCES conversations (id),
    seq               INTEGER NOT NULL,
    sender_id         TEXT NOT NULL,
    sender_device_id  TEXT NOT NULL,
    client_message_id TEXT NOT NULL,
    type              TEXT NOT NULL,
    content           TEXT NOT NULL,
    metadata          TEXT NOT NULL,  -- JSON object
    reply_to          TEXT,
    inserted_at       INTEGER NOT NULL,
    UNIQUE (conversation_id, seq),
    UNIQUE (conversation_id, sender_id, client_message_id)
);
CREATE INDEX messages_by_time ON messages (conversation_id, inserted_at);

-- A user's inbox: its head, and one entry per message delivered to it (the `user:` topic's seq).
CREATE TABLE inboxes (
    user_id  TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE inbox_entries (
    user_id     TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    message_id  TEXT NOT NULL REFERENCES messages (id),
    inserted_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, seq)
) WITHOUT ROWID;
CREATE INDEX inbox_entries_by_time ON inbox_entries (user_id, inserted_at);
CREATE INDEX inbox_entries_expiry ON inbox_entries (inserted_at);

-- Per-device delivery cursor: the inbox seq the device has acked.
CREATE TABLE device_cursors (
    user_id    TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    acked_seq  INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, device_id)
) WITHOUT ROWID;

CREATE TABLE notifications (
    id         TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL,
    type       TEXT NOT NULL,
    title      TEXT NOT NULL,
    body       TEXT NOT NULL,
    data       TEXT NOT NULL,  -- JSON object
    created_at INTEGER NOT NULL,
    read_at    INTEGER
);
CREATE INDEX notifications_unread ON notifications (user_id, created_at) WHERE read_at IS NULL;
