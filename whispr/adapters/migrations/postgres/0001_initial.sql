-- whispr store, PostgreSQL dialect. Times are BIGINT milliseconds since the Unix epoch (UTC).
-- See whispr/delivery/store.py for the rules these tables keep.

CREATE TABLE users (
    user_id    TEXT PRIMARY KEY,
    active     BOOLEAN NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE conversations (
    id         TEXT PRIMARY KEY,
    last_seq   BIGINT NOT NULL DEFAULT 0,  -- the head: highest seq stored, 0 when empty
    created_at BIGINT NOT NULL
);

CREATE TABLE members (
    conversation_id TEXT NOT NULL REFERENCES conversations (id),
    user_id         TEXT NOT NULL,
    active          BOOLEAN NOT NULL,
    joined_at       BIGINT NOT NULL,
    PRIMARY KEY (conversation_id, user_id)
);
CREATE INDEX members_by_user ON members (user_id, conversation_id);

CREATE TABLE messages (
    id                TEXT PRIMARY KEY,
    conversation_id   TEXT NOT NULL REFERENCES conversations (id),
    seq               BIGINT NOT NULL,
    sender_id         TEXT NOT NULL,
    sender_device_id  TEXT NOT NULL,
    client_message_id TEXT NOT NULL,
    type              TEXT NOT NULL,
    content           TEXT NOT NULL,
    metadata          JSONB NOT NULL,
    reply_to          TEXT,
    inserted_at       BIGINT NOT NULL,
    UNIQUE (conversation_id, seq),
    UNIQUE (conversation_id, sender_id, client_message_id)
);
CREATE INDEX messages_by_time ON messages (conversation_id, inserted_at);

-- A user's inbox: its head, and one entry per message delivered to it (the `user:` topic's seq).
CREATE TABLE inboxes (
    user_id  TEXT PRIMARY KEY,
    last_seq BIGINT NOT NULL
);

CREATE TABLE inbox_entries (
    user_id     TEXT NOT NULL,
    seq         BIGINT NOT NULL,
    message_id  TEXT NOT NULL REFERENCES messages (id),
    inserted_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, seq)
);
CREATE INDEX inbox_entries_by_time ON inbox_entries (user_id, inserted_at);
CREATE INDEX inbox_entries_expiry ON inbox_entries (inserted_at);

-- Per-device delivery cursor: the inbox seq the device has acked.
CREATE TABLE device_cursors (
    user_id    TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    acked_seq  BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id)
);

CREATE TABLE notifications (
    id         TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL,
    type       TEXT NOT NULL,
    title      TEXT NOT NULL,
    body       TEXT NOT NULL,
    data       JSONB NOT NULL,
    created_at BIGINT NOT NULL,
    read_at    BIGINT
);
CREATE INDEX notifications_unread ON notifications (user_id, created_at) WHERE read_at IS NULL;
