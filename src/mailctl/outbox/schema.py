"""The outbox's SQLite schema as named, append-only migrations. Each runs once, in its own
transaction, and is recorded in `migrations`; never edit or reorder one that has shipped, add
a new one at the end."""

from __future__ import annotations

import sqlite3
import time

# attempts.outcome, one row per event in a message's life:
#   sent, deferred, failed  a delivery attempt; the message's state after it
#   expired                 given up after max_retry_age: a last attempt that was deferred,
#                           or no attempt at all (still deferred when a flush started)
#   interrupted             no result: the flush that was sending it died, and another flush
#                           claimed it again once its lease ran out (store.claim_batch). It may
#                           have been delivered; it is tried again (at-least-once).
# A comment here rather than in a migration's SQL: a shipped migration's text stays as it was.
MIGRATIONS: list[tuple[str, str]] = [
    (
        "001_messages_and_attempts",
        """
        CREATE TABLE messages (
            id              INTEGER PRIMARY KEY,
            created_at      REAL NOT NULL,          -- unix time the message was queued
            updated_at      REAL NOT NULL,
            profile         TEXT,                   -- NULL: the default profile at flush time
            sender          TEXT NOT NULL,          -- envelope MAIL FROM ('' = null sender)
            recipients      TEXT NOT NULL,          -- JSON list: envelope RCPT TO still to deliver
            message_id      TEXT,                   -- the Message-ID header, for finding it
            subject         TEXT,
            size            INTEGER NOT NULL,       -- of the raw bytes (in `bodies`)
            state           TEXT NOT NULL DEFAULT 'queued'
                            CHECK (state IN ('queued','sending','sent','deferred','failed','expired','held')),
            attempts        INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL NOT NULL,
            lease_until     REAL,                   -- while sending: when another flush may reclaim it
            lease_owner     TEXT,                   -- while sending: the flush that claimed it
            last_attempt_at REAL,
            last_reply      TEXT,
            last_server     TEXT,
            done_at         REAL,                   -- when it reached sent/failed/expired
            age_base        REAL NOT NULL           -- max_retry_age counts from here: queued, released or retried
        );
        -- deliberately few indexes: every one is rewritten by each delivery's commit
        CREATE INDEX messages_ready ON messages (state, next_attempt_at);
        -- the raw RFC 5322 bytes, exactly as queued; apart so that state changes, listings and
        -- stats touch small rows only
        CREATE TABLE bodies (
            message     INTEGER PRIMARY KEY REFERENCES messages (id) ON DELETE CASCADE,
            raw         BLOB NOT NULL
        );
        CREATE TABLE attempts (
            id          INTEGER PRIMARY KEY,
            message     INTEGER NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
            at          REAL NOT NULL,
            profile     TEXT,
            server      TEXT,
            outcome     TEXT NOT NULL,              -- sent | deferred | failed | expired | interrupted (see above)
            reply       TEXT,
            duration    REAL
        );
        CREATE INDEX attempts_message ON attempts (message);
        """,
    ),
    (
        "002_failed_recipients",
        """
        -- recipients refused for good (5xx), kept when the message went out to the others (or
        -- waits for the 4xx ones): a JSON object recipient -> reply; NULL when none was refused
        ALTER TABLE messages ADD COLUMN failed_recipients TEXT;
        """,
    ),
    (
        "003_lease_holder",
        """
        -- who holds a claim beyond its owner's name: on PostgreSQL the database session (backend
        -- pid and start), so a dead session's rows return at once; unused by SQLite so far
        ALTER TABLE messages ADD COLUMN lease_holder TEXT;
        """,
    ),
    (
        "004_queue_scale",
        """
        -- A message has a done_at exactly when it is finished (sent, failed, expired): every
        -- path that finishes one sets it, retry clears it. The indexes below rely on that, and
        -- test only done_at (which claims never write), so a claim touches none of them.
        UPDATE messages SET done_at = updated_at WHERE done_at IS NULL AND state IN ('sent','failed','expired');
        -- purge by finish time, in batches, and the flush's "anything to purge?": one range
        CREATE INDEX messages_done ON messages (done_at) WHERE done_at IS NOT NULL;
        -- queue stats and list --state failed: the few partly failed messages, without a scan
        CREATE INDEX messages_partly_failed ON messages (state) WHERE failed_recipients IS NOT NULL;
        -- queue stats (qshape): pending mail by its first recipient's domain and age, counted in
        -- index order (no sort). The domain is what follows the first @ (store.py:
        -- _FIRST_DOMAIN, which must stay this text).
        CREATE INDEX messages_pending_domain
            ON messages (lower(substr(json_extract(recipients, '$[0]'), instr(json_extract(recipients, '$[0]'), '@') + 1)), created_at)
            WHERE done_at IS NULL;
        -- ...and the pending messages with more than one recipient, whose others are counted apart
        -- (the recipients in the index too: read without visiting the table)
        CREATE INDEX messages_pending_multi ON messages (created_at, recipients)
            WHERE done_at IS NULL AND json_array_length(recipients) > 1;
        """,
    ),
    (
        "005_results_journal",
        """
        -- A flush's plain successes (sent to every recipient), each committed on its own in ONE
        -- small insert before the connection's next message goes out; folded into messages and
        -- attempts in batches by the next write transaction (store.py: _fold_results), so it
        -- holds at most about a claim's worth of rows, and none between flushes. A row here is a
        -- delivery already made: applying it is all any later writer may do with it.
        CREATE TABLE results (
            id          INTEGER PRIMARY KEY,
            message     INTEGER NOT NULL,       -- messages.id (no foreign key: no index to maintain)
            owner       TEXT NOT NULL,          -- the flush that held the lease
            at          REAL NOT NULL,
            profile     TEXT,
            server      TEXT,
            reply       TEXT,
            duration    REAL
        );
        """,
    ),
]


def migrate(conn: sqlite3.Connection) -> list[str]:
    """Apply pending migrations; returns the names applied. Safe when several processes open a
    fresh file at once: the check and the migration run under one write lock."""
    _incremental_vacuum_if_new(conn)
    conn.execute("CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
    done = {row[0] for row in conn.execute("SELECT name FROM migrations")}
    if all(name in done for name, _ in MIGRATIONS):
        return []
    applied: list[str] = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        done = {row[0] for row in conn.execute("SELECT name FROM migrations")}
        for name, sql in MIGRATIONS:
            if name in done:
                continue
            for statement in _statements(sql):
                conn.execute(statement)
            conn.execute("INSERT INTO migrations (name, applied_at) VALUES (?, ?)", (name, time.time()))
            applied.append(name)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return applied


def _incremental_vacuum_if_new(conn: sqlite3.Connection) -> None:
    """A new outbox gets auto_vacuum=INCREMENTAL, so `queue purge` can hand freed pages back
    to the file system a few thousand at a time (PRAGMA incremental_vacuum) instead of
    rewriting the whole file (VACUUM). The mode takes effect only through a VACUUM once the
    file has a header (the journal mode, set before, wrote one); with no table yet that
    VACUUM is instant. An outbox made before keeps its mode until `queue purge` VACUUMs it."""
    if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
        return
    if conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:
        return
    conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
    try:
        conn.execute("VACUUM")
    except sqlite3.OperationalError:  # another process is creating the file this instant
        pass


def _statements(sql: str) -> list[str]:
    # executescript() would COMMIT our transaction; split instead. Comments go first (they may
    # hold ';'); our SQL has no '--' or ';' inside string literals.
    text = "\n".join(line.split("--", 1)[0] for line in sql.splitlines())
    return [chunk.strip() for chunk in text.split(";") if chunk.strip()]
