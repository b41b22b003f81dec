"""The outbox store: one SQLite file in WAL mode holding every message (raw bytes, envelope,
profile, state, attempts, next attempt, last reply) and a log of every attempt.

Concurrency model: readers never block; every write is a short BEGIN IMMEDIATE transaction.
A flush *claims* rows (state 'sending', a lease owner and a lease expiry) in one such
transaction, so two flushes never hold the same row, and rows of a flush that died are
claimed again once their lease has run out. The result of each delivery is committed before
the next message's data is sent (flush.py), so a crash can repeat at most one message: the
one whose reply was in flight or whose result was being written.

`Outbox` is the SQLite implementation of backend.FlushStore, the calls the flush engine makes;
its records (ClaimedMessage, MessageInfo) are defined there and come out of here built by
column name (sqlite3.Row), never by position.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import time
from email.message import EmailMessage, Message
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from mailctl.addresses import check_address, check_sender
from mailctl.errors import ConfigError, MailctlError, NotFoundError, TemporaryFailure, UsageError, ValidationError
from mailctl.message import wire_bytes
from mailctl.outbox.backend import ClaimedMessage, MessageInfo, _iso
from mailctl.outbox.schema import migrate
from mailctl.profiles.model import validate_name

STATES = ("queued", "sending", "sent", "deferred", "failed", "expired", "held")
PENDING_STATES = ("queued", "deferred", "held", "sending")
FINISHED_STATES = ("sent", "failed", "expired")
ATTEMPT_OUTCOMES = ("sent", "deferred", "failed", "expired", "interrupted")  # attempts.outcome (schema.py)

# qshape-like age buckets (minutes): 0-5, 5-10, 10-20 ... 640-1280, 1280+
AGE_BUCKETS_MIN = (5, 10, 20, 40, 80, 160, 320, 640, 1280)


_HEADER_RE = re.compile(rb"^(message-id|subject)[ \t]*:[ \t]*(.*(?:\r?\n[ \t].*)*)", re.I | re.M)


def _header_fields(raw: bytes) -> tuple[str | None, str | None]:
    """Message-ID and Subject from the header block. A regex, not the email parser: enqueue
    must stay fast (the parser costs ~0.7 ms a message) and the stored bytes are what counts."""
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        end = raw.find(b"\n\n")
    head = raw if end < 0 else raw[:end]
    found: dict[bytes, str] = {}
    for m in _HEADER_RE.finditer(head):
        name = m.group(1).lower()
        if name not in found:
            found[name] = re.sub(r"\r?\n[ \t]", " ", m.group(2).decode("utf-8", "replace")).strip()
    subject = found.get(b"subject")
    if subject and "=?" in subject:
        try:
            from email.header import decode_header, make_header

            subject = str(make_header(decode_header(subject)))
        except Exception:  # leave an undecodable subject as it is
            pass
    return found.get(b"message-id") or None, subject




def outbox_error(path: str | os.PathLike, exc: sqlite3.Error) -> MailctlError:
    """An SQLite failure as one line naming the outbox file and what to do."""
    text = str(exc)
    low = text.lower()
    where = f"outbox {path}"
    if "locked" in low or "busy" in low:
        return TemporaryFailure(f"{where}: {text} (another process held its write lock too long)",
                                hint="try again; if it persists, look for a stuck process using the outbox (fuser FILE)")
    if "not a database" in low or "malformed" in low:
        return ConfigError(f"{where}: {text}",
                           hint="--outbox / MAILCTL_OUTBOX must name a mailctl outbox; move the damaged file aside "
                                "(sqlite3 FILE .recover can salvage its rows)")
    if "readonly" in low or "unable to open" in low or "permission" in low:
        return ConfigError(f"{where}: {text}",
                           hint="the file and its directory must be writable by this user (the -wal and -shm files too)")
    if "disk" in low or "full" in low or "i/o" in low:
        return TemporaryFailure(f"{where}: {text}", hint="free disk space or fix the file system, then try again")
    return MailctlError(f"{where}: {text}")


class Outbox:
    """The queue. `Outbox(path)` opens (and creates or migrates) the file.

    `synchronous` is SQLite's PRAGMA for this connection:
    * "NORMAL" (default): a committed write survives the crash or kill of any process, but
      the last commits (up to one WAL checkpoint's worth) may roll back after a power cut or
      kernel crash. The file is never corrupted either way.
    * "FULL": every commit waits for the disk (one fsync each), so it survives power loss
      too; enqueue() then runs at the disk's sync rate (about 4,000/s on an SSD-backed VM).
    mailctl's own commands that queue one message (send --queue, queue add, sendmail) use
    FULL: a process start costs far more than one fsync.

    Used as a context manager, SQLite failures leave it as MailctlErrors naming the file
    (exit 75 when locked or the disk is full, 78 when the file is not an outbox or not
    writable)."""

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        *,
        clock: Callable[[], float] = time.time,
        timeout: float = 60.0,
        synchronous: str = "NORMAL",
    ) -> None:
        from mailctl.outbox.locate import check_location, display, looks_like_url
        from mailctl.paths import outbox_path

        named = os.fspath(path) if path else os.environ.get("MAILCTL_OUTBOX", "")
        if looks_like_url(named):  # never a file named "postgresql:" in the working directory
            check_location(named, "named by --outbox" if path else "named by $MAILCTL_OUTBOX")
            raise ConfigError(f"outbox {display(named)} is a PostgreSQL URL, not an SQLite file",
                              hint="open it with mailctl.outbox.open_outbox() (or PgOutbox)")
        self.path = Path(outbox_path(path))
        self.clock = clock
        from mailctl.paths import private_dir

        if self.path.is_symlink() and not self.path.exists():  # never create a file where a link points
            raise ConfigError(f"outbox {self.path} is a symbolic link to {os.readlink(self.path)}, which does not exist",
                              hint="point the link at an existing outbox, remove it, or name another file with --outbox")
        try:
            private_dir(self.path.parent)  # 0700, parents included: the queue holds whole messages
            if not self.path.exists():
                # readable by its owner only; O_EXCL|O_NOFOLLOW: created here, not through a link
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0), 0o600)
                os.close(fd)
        except FileExistsError:  # another process created it first
            pass
        except OSError as exc:
            raise ConfigError(f"outbox {self.path}: {exc.strerror or exc}",
                              hint="the file and its directory must be writable by this user") from None
        if synchronous.upper() not in ("FULL", "NORMAL", "EXTRA", "OFF"):
            raise UsageError(f"invalid synchronous mode {synchronous!r}", hint="use NORMAL or FULL")
        try:
            self.conn = sqlite3.connect(str(self.path), timeout=timeout, isolation_level=None, check_same_thread=False)
            try:
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
                self.conn.execute("PRAGMA foreign_keys=ON")
                migrate(self.conn)
            except BaseException:
                self.conn.close()
                raise
        except sqlite3.Error as exc:
            raise outbox_error(self.path, exc) from exc

    # lifecycle -------------------------------------------------------------
    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "Outbox":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()
        if isinstance(exc, sqlite3.Error):
            raise outbox_error(self.path, exc) from exc

    def _write(self):
        return _WriteTxn(self.conn)

    def describe_error(self, exc: BaseException) -> MailctlError | None:
        """A failure of this outbox's storage as a one-line MailctlError naming it; None when
        `exc` is not a storage failure (the queue worker reports and recovers with this)."""
        if isinstance(exc, sqlite3.Error):
            return outbox_error(self.path, exc)
        return None

    # the queue worker: new mail, the backlog ------------------------------------------
    def latest_id(self) -> int:
        """The highest queue id so far (0 when empty): mail queued later has a higher one."""
        (top,) = self.conn.execute("SELECT max(id) FROM messages").fetchone()
        return int(top or 0)

    def due_since(self, since: float) -> bool:
        """Whether a message became due after `since` (store clock): released or retried, a
        deferred one whose retry time came, one queued since. Rows that were due before (left
        alone by a configuration problem) do not count."""
        now = self.clock()
        row = self.conn.execute(
            "SELECT 1 FROM messages WHERE state IN ('queued','deferred') AND next_attempt_at > ?"
            " AND next_attempt_at <= ? LIMIT 1", (since, now)).fetchone()
        return row is not None

    def next_due_at(self) -> float | None:
        """When the next queued or deferred message falls due (store clock), None if none waits."""
        (at,) = self.conn.execute(
            "SELECT min(next_attempt_at) FROM messages WHERE state IN ('queued','deferred') AND next_attempt_at > ?",
            (self.clock(),)).fetchone()
        return None if at is None else float(at)

    def wait_for_mail(self, timeout: float, *, since_id: int | None = None, since: float | None = None,
                      stop: Callable[[], bool] | None = None, poll: float = 1.0) -> bool:
        """Wait until there is mail to send: newer than `since_id` (default: now's latest), or
        due after `since` (due_since); True. False when `timeout` passes or `stop()` says so.
        SQLite has no notifications: this looks every `poll` seconds (two index lookups), and
        at `stop` every 0.1 s."""
        start = time.monotonic()
        end = start + timeout
        if since_id is None:
            since_id = self.latest_id()
        next_look = start
        while True:
            now = time.monotonic()
            if now >= next_look:
                if self.latest_id() > since_id or (since is not None and self.due_since(since)):
                    return True
                next_look = now + poll
            if stop is not None and stop():
                return False
            if now >= end:
                return False
            time.sleep(max(0.0, min(0.1, end - now, next_look - now)))

    def hold_queued_before(self, before: float) -> list[int]:
        """Hold the backlog (queue worker --hold-backlog): queued and deferred messages queued
        before `before` become held, for an operator to release; returns their ids."""
        now = self.clock()
        with self._write():
            target = [i for (i,) in self.conn.execute(
                "SELECT id FROM messages WHERE state IN ('queued','deferred') AND created_at < ? ORDER BY id", (before,))]
            for start in range(0, len(target), 500):
                chunk = target[start:start + 500]
                self.conn.execute(f"UPDATE messages SET state='held', updated_at=? WHERE id IN ({','.join('?' * len(chunk))})"
                                  " AND state IN ('queued','deferred')", [now, *chunk])
        return target

    # putting mail in ------------------------------------------------------
    def enqueue(
        self,
        raw: bytes,
        sender: str,
        recipients: Sequence[str],
        profile: str | None = None,
        *,
        hold: bool = False,
    ) -> int:
        """Queue raw RFC 5322 bytes for `recipients`; returns the queue id. Committed when this
        returns (safe from any process crash; with synchronous="FULL", from power loss too)."""
        row, raw = self._row(raw, sender, recipients, profile, hold)
        with self._write():
            return self._insert(row, raw)

    def enqueue_many(self, items: Iterable[tuple], *, hold: bool = False) -> list[int]:
        """Queue many (raw, sender, recipients[, profile]) in ONE transaction: all or none,
        one disk sync for the lot (bulk imports, batch jobs)."""
        rows = [self._row(it[0], it[1], it[2], it[3] if len(it) > 3 else None, hold) for it in items]
        with self._write():
            return [self._insert(row, raw) for row, raw in rows]

    def _insert(self, row: tuple, raw: bytes) -> int:
        queue_id = int(self.conn.execute(_INSERT, row).lastrowid)
        self.conn.execute("INSERT INTO bodies (message, raw) VALUES (?, ?)", (queue_id, raw))
        return queue_id

    def _row(self, raw: bytes, sender: str, recipients: Sequence[str], profile: str | None, hold: bool) -> tuple[tuple, bytes]:
        if isinstance(raw, str):
            raw = raw.encode("utf-8")
        if not isinstance(raw, (bytes, bytearray, memoryview)) or not raw:
            raise ValidationError("the message is empty")
        if isinstance(recipients, str):
            recipients = [recipients]
        rcpts = [check_address(r, "recipient") for r in recipients if not isinstance(r, str) or r.strip()]
        if not rcpts:
            raise ValidationError("the message has no recipients", hint="give recipients (To/Cc/Bcc headers or arguments)")
        sender = check_sender(sender, "sender")
        if profile is not None:
            validate_name(profile)
        raw = wire_bytes(bytes(raw))  # no NUL; CRLF line ends, so the stored bytes are what goes out
        message_id, subject = _header_fields(raw)
        now = self.clock()
        return (now, now, profile, sender, json.dumps(rcpts), message_id, subject, len(raw),
                "held" if hold else "queued", now, now), raw

    def enqueue_message(
        self,
        msg: Message,
        profile: str | None = None,
        *,
        sender: str | None = None,
        recipients: Sequence[str] | None = None,
        hold: bool = False,
    ) -> int:
        """Queue an email.message.(Email)Message. The envelope comes from its headers (Sender or
        From; To, Cc and Bcc) unless given; Bcc is removed from the stored bytes."""
        from mailctl.outbox.envelope import envelope_recipients, envelope_sender, message_bytes

        rcpts = list(recipients) if recipients is not None else envelope_recipients(msg)
        if sender is None:
            sender = envelope_sender(msg)
        raw = message_bytes(msg, strip_bcc=True)
        return self.enqueue(raw, sender, rcpts, profile, hold=hold)

    # claiming and results (the flush engine) ----------------------------
    def claim_batch(
        self,
        owner: str,
        limit: int,
        lease_seconds: float,
        *,
        profiles: Sequence[str | None] | None = None,
        ids: Sequence[int] | None = None,
    ) -> list[ClaimedMessage]:
        """Claim up to `limit` due messages for `owner` in one short write transaction.

        Due: queued or deferred with next_attempt_at <= now, or sending with an expired lease
        (its flush died). `profiles` restricts to those profile names (None in the list = rows
        queued for the default profile); `ids` to those queue ids."""
        now = self.clock()
        if ids is not None and not ids:
            return []
        params: list[Any] = []
        where = self._profile_filter(profiles, params)
        if ids is not None:
            where.append(f"id IN ({','.join('?' * len(ids))})")
            params += list(ids)
        with self._write():
            self._free_dead_holders(now)
            rows = self._due_rows(now, "".join(f" AND {w}" for w in where), params, limit)
            if not rows:
                return []
            bodies = self._take(rows, owner, now, lease_seconds)
        return [_claimed(row, bodies.get(row["id"], b"")) for row in rows]

    def _due_rows(self, now: float, tail: str, params: list[Any], limit: int) -> list[sqlite3.Row]:
        """Up to `limit` due rows (named: sqlite3.Row), oldest due first."""
        # One indexed range scan per state (an OR across states would scan and sort the whole
        # table on every claim), then merge: oldest due first.
        rows: list[sqlite3.Row] = []
        for cond in _DUE_CONDITIONS:
            rows += _named(self.conn.execute(
                f"SELECT {_CLAIM_COLS} FROM messages WHERE {cond}{tail} ORDER BY next_attempt_at, id LIMIT ?",
                [now, *params, int(limit)],
            )).fetchall()
        rows.sort(key=lambda r: (r["next_attempt_at"], r["id"]))
        return rows[:limit]

    @property
    def holder(self) -> str:
        """Who holds this handle's claims: host, pid and the process's start (a pid is reused)."""
        if self._holder is None:
            self._holder = process_holder(os.getpid())
        return self._holder

    _holder: str | None = None

    def _free_dead_holders(self, now: float) -> None:
        """Claims whose holder process on this host is gone (killed, OOM, reboot) are due at
        once: their lease is cut short, so the claim below takes them (logged interrupted)."""
        here = _HOST + ":"
        holders = [h for (h,) in self.conn.execute(
            "SELECT DISTINCT lease_holder FROM messages WHERE state='sending' AND lease_until >= ?"
            " AND lease_holder IS NOT NULL", (now,)) if h.startswith(here)]
        for holder in holders:
            if not holder_alive(holder):
                self.conn.execute("UPDATE messages SET lease_until=? WHERE state='sending' AND lease_holder=?",
                                  (now - 1, holder))

    def _take(self, rows: Sequence[sqlite3.Row], owner: str, now: float, lease_seconds: float) -> dict[int, bytes]:
        """Lease `rows` to `owner` (inside the claim's transaction); returns their raw bytes by id.
        A row that was still 'sending' (its flush died) gets an 'interrupted' attempt logged."""
        claimed = [r["id"] for r in rows]
        marks = ",".join("?" * len(claimed))
        self.conn.execute(
            f"UPDATE messages SET state='sending', lease_owner=?, lease_until=?, updated_at=?, lease_holder=?"
            f" WHERE id IN ({marks})",
            [owner, now + lease_seconds, now, self.holder, *claimed],
        )
        bodies = dict(self.conn.execute(f"SELECT message, raw FROM bodies WHERE message IN ({marks})", claimed))
        reclaimed = [r["id"] for r in rows if r["state"] == "sending"]
        if reclaimed:
            self.conn.executemany(
                "INSERT INTO attempts (message, at, outcome, reply) VALUES (?, ?, 'interrupted',"
                " 'a flush stopped while sending this message; it may have been delivered')",
                [(i, now) for i in reclaimed],
            )
        return bodies

    @staticmethod
    def _profile_filter(profiles: Sequence[str | None] | None, params: list[Any]) -> list[str]:
        if profiles is None:
            return []
        names = [p for p in profiles if p is not None]
        parts = []
        if names:
            parts.append(f"profile IN ({','.join('?' * len(names))})")
            params += names
        if any(p is None for p in profiles):
            parts.append("profile IS NULL")
        return ["(" + " OR ".join(parts) + ")"] if parts else ["1=0"]

    def record_attempt(
        self,
        claim: ClaimedMessage,
        owner: str,
        outcome: str,
        *,
        reply: str = "",
        server: str | None = None,
        profile: str | None = None,
        duration: float | None = None,
        next_attempt_at: float | None = None,
        recipients: Sequence[str] | None = None,
        renew_lease: float | None = None,
        failed_recipients: Mapping[str, str] | None = None,
    ) -> bool:
        """Commit one delivery result. outcome: sent | deferred | failed | expired.
        `recipients` (deferred only) narrows the envelope to those still to deliver.
        `failed_recipients` (recipient -> reply) adds to the ones refused for good.
        `renew_lease` extends the lease of this owner's other claimed rows in the same commit.
        Returns False if the row was no longer ours (another flush reclaimed it)."""
        if outcome not in ("sent", "deferred", "failed", "expired"):
            raise ValueError(outcome)
        now = self.clock()
        done = now if outcome in FINISHED_STATES else None
        sets = ["state=?", "attempts=attempts+1", "last_attempt_at=?", "last_reply=?", "last_server=?",
                "updated_at=?", "done_at=?", "lease_owner=NULL", "lease_until=NULL"]
        params: list[Any] = [outcome, now, reply, server, now, done]
        if outcome == "deferred":
            sets.append("next_attempt_at=?")
            params.append(next_attempt_at if next_attempt_at is not None else now)
        if recipients is not None:
            sets.append("recipients=?")
            params.append(json.dumps(list(recipients)))
        with self._write():
            if failed_recipients:
                row = self.conn.execute("SELECT failed_recipients FROM messages WHERE id=?", (claim.id,)).fetchone()
                failed = json.loads(row[0]) if row and row[0] else {}
                failed.update(failed_recipients)
                sets.append("failed_recipients=?")
                params.append(json.dumps(failed))
            cur = self.conn.execute(
                f"UPDATE messages SET {', '.join(sets)} WHERE id=? AND state='sending' AND lease_owner=?",
                [*params, claim.id, owner],
            )
            self.conn.execute(
                "INSERT INTO attempts (message, at, profile, server, outcome, reply, duration) VALUES (?,?,?,?,?,?,?)",
                (claim.id, now, profile, server, outcome, reply, duration),
            )
            if renew_lease:
                self.conn.execute(
                    "UPDATE messages SET lease_until=? WHERE lease_owner=? AND state='sending'",
                    (now + renew_lease, owner),
                )
        return cur.rowcount == 1

    def release_claims(self, owner: str, ids: Iterable[int] | None = None) -> int:
        """Give back claimed rows this flush did not try (limit reached, stopped early)."""
        params: list[Any] = [owner]
        extra = ""
        if ids is not None:
            ids = list(ids)
            if not ids:
                return 0
            extra = f" AND id IN ({','.join('?' * len(ids))})"
            params += ids
        with self._write():
            cur = self.conn.execute(
                "UPDATE messages SET state=CASE WHEN attempts=0 THEN 'queued' ELSE 'deferred' END,"
                " lease_owner=NULL, lease_until=NULL"
                f" WHERE lease_owner=? AND state='sending'{extra}",
                params,
            )
        return cur.rowcount

    def expire_overdue(self, max_age_seconds: float, *, profiles: Sequence[str | None] | None = None,
                       skip_due: bool = False) -> list[int]:
        """Deferred messages whose retry clock started more than max_age ago become expired;
        with skip_due, only those not due yet (the flush expires due ones itself)."""
        now = self.clock()
        params: list[Any] = [now - max_age_seconds]
        where = ["state='deferred'", "age_base < ?"]
        if skip_due:
            where.append("next_attempt_at > ?")
            params.append(now)
        where += self._profile_filter(profiles, params)
        with self._write():
            ids = [i for (i,) in self.conn.execute(f"SELECT id FROM messages WHERE {' AND '.join(where)}", params)]
            if ids:
                self.conn.executemany(
                    "UPDATE messages SET state='expired', done_at=?, updated_at=? WHERE id=?",
                    [(now, now, i) for i in ids],
                )
                self.conn.executemany(
                    "INSERT INTO attempts (message, at, outcome, reply) VALUES (?, ?, 'expired', ?)",
                    [(i, now, f"still undelivered after max_retry_age ({int(max_age_seconds)}s)") for i in ids],
                )
        return ids

    def sent_since(self, since: float, profile: str | None = None, *, limit: int = 1000) -> list[float]:
        """Times of the last `limit` delivery attempts that reached a server since `since`, all
        profiles or one (so a rate limit holds across successive and concurrent flushes). Walks
        the log backwards from the newest entry: no index on time needed."""
        times: list[float] = []
        for at, prof, server in self.conn.execute(
            "SELECT at, profile, server FROM attempts WHERE outcome IN ('sent','deferred','failed') ORDER BY id DESC"
        ):
            if at < since - 300:  # clocks of concurrent writers differ a little; then stop
                break
            if at >= since and server is not None and (profile is None or prof == profile):
                times.append(at)
                if len(times) >= limit:
                    break
        return sorted(times)

    # reading -------------------------------------------------------------
    def count_due(self, *, profiles: Sequence[str | None] | None = None) -> int:
        now = self.clock()
        extra: list[Any] = []
        tail = "".join(f" AND {w}" for w in self._profile_filter(profiles, extra))
        total = 0
        for cond in _DUE_CONDITIONS:
            (count,) = self.conn.execute(f"SELECT count(*) FROM messages WHERE {cond}{tail}", [now, *extra]).fetchone()
            total += count
        return total

    def count_by_state(self, *, profiles: Sequence[str | None] | None = None) -> dict[str, int]:
        params: list[Any] = []
        where = self._profile_filter(profiles, params)
        sql = "SELECT state, count(*) FROM messages" + (f" WHERE {' AND '.join(where)}" if where else "") + " GROUP BY state"
        counts = {s: 0 for s in STATES}
        counts.update({s: n for s, n in self.conn.execute(sql, params)})
        return counts

    def due_messages(self, *, profiles: Sequence[str | None] | None = None, limit: int | None = None) -> Iterator[MessageInfo]:
        """What a flush would take now (for --dry-run), in the order it would take them."""
        now = self.clock()
        params: list[Any] = [now, now]
        where = ["((state IN ('queued','deferred') AND next_attempt_at <= ?) OR (state='sending' AND lease_until < ?))"]
        where += self._profile_filter(profiles, params)
        sql = f"SELECT {_INFO_COLS} FROM messages WHERE {' AND '.join(where)} ORDER BY next_attempt_at, id"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        for row in _named(self.conn.execute(sql, params)):
            yield _info(row)

    def list(self, *, states: Sequence[str] | None = None, profile: str | None = None, limit: int | None = None) -> Iterator[MessageInfo]:
        where, params = [], []
        if states:
            bad = [s for s in states if s not in STATES]
            if bad:
                raise ValidationError(f"unknown state {bad[0]!r}", hint="states: " + ", ".join(STATES))
            cond = f"state IN ({','.join('?' * len(states))})"
            params += list(states)
            if "failed" in states:  # also the partly failed: some recipients refused for good, sent to the others
                cond = f"({cond} OR (failed_recipients IS NOT NULL AND state != 'failed'))"
            where.append(cond)
        if profile is not None:
            where.append("profile IS ?")
            params.append(profile)
        sql = f"SELECT {_INFO_COLS} FROM messages" + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY id"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        for row in _named(self.conn.execute(sql, params)):
            yield _info(row)

    def get(self, message_id: int, *, with_raw: bool = False) -> MessageInfo:
        row = _named(self.conn.execute(f"SELECT {_INFO_COLS} FROM messages WHERE id=?", (message_id,))).fetchone()
        if row is None:
            raise NotFoundError(f"no message {message_id} in the outbox", hint="list them with: mailctl queue list")
        info = _info(row)
        info.attempt_log = [
            {"at": _iso(at), "profile": prof, "server": server, "outcome": outcome, "reply": reply,
             "duration": None if duration is None else round(duration, 3)}
            for at, prof, server, outcome, reply, duration in self.conn.execute(
                "SELECT at, profile, server, outcome, reply, duration FROM attempts WHERE message=? ORDER BY id", (message_id,)
            )
        ]
        if with_raw:
            body = _named(self.conn.execute("SELECT raw FROM bodies WHERE message=?", (message_id,))).fetchone()
            info.raw = bytes(body["raw"]) if body else b""
        return info

    # managing ------------------------------------------------------------
    def _change(self, ids: Sequence[int] | None, from_states: Sequence[str], sets: str, params: Sequence[Any], what: str) -> list[int]:
        """Apply `sets` to the given ids (or all, when ids is None) that are in from_states.
        An explicit id in another state is an error naming the state."""
        marks = ",".join("?" * len(from_states))
        with self._write():
            if ids is None:
                target = [i for (i,) in self.conn.execute(f"SELECT id FROM messages WHERE state IN ({marks})", list(from_states))]
            else:
                target = []
                for i in ids:
                    row = _named(self.conn.execute("SELECT state FROM messages WHERE id=?", (i,))).fetchone()
                    if row is None:
                        raise NotFoundError(f"no message {i} in the outbox", hint="list them with: mailctl queue list")
                    if row["state"] not in from_states:
                        raise ValidationError(
                            f"message {i} is {row['state']}: only {', '.join(from_states)} messages can be {what}"
                        )
                    target.append(i)
            for start in range(0, len(target), 500):
                chunk = target[start:start + 500]
                self.conn.execute(f"UPDATE messages SET {sets} WHERE id IN ({','.join('?' * len(chunk))})", [*params, *chunk])
        return target

    def hold(self, ids: Sequence[int] | None = None) -> list[int]:
        """Keep messages from being sent until released (queued or deferred -> held)."""
        now = self.clock()
        return self._change(ids, ("queued", "deferred"), "state='held', updated_at=?", [now], "held")

    def release(self, ids: Sequence[int] | None = None) -> list[int]:
        """held -> queued, due now; the max_retry_age clock restarts."""
        now = self.clock()
        return self._change(ids, ("held",), "state='queued', next_attempt_at=?, age_base=?, updated_at=?", [now, now, now], "released")

    def retry(self, ids: Sequence[int] | None = None) -> list[int]:
        """deferred, failed or expired -> queued, due now; the max_retry_age clock restarts."""
        now = self.clock()
        return self._change(
            ids, ("deferred", "failed", "expired"),
            "state='queued', next_attempt_at=?, age_base=?, done_at=NULL, updated_at=?", [now, now, now], "retried",
        )

    def delete(self, ids: Sequence[int] | None = None) -> list[int]:
        """Remove messages for good (any state but one a live flush is sending)."""
        now = self.clock()
        with self._write():
            if ids is None:
                target = [i for (i,) in self.conn.execute(
                    "SELECT id FROM messages WHERE state != 'sending' OR lease_until < ?", (now,))]
            else:
                target = []
                for i in ids:
                    row = _named(self.conn.execute("SELECT state, lease_until FROM messages WHERE id=?", (i,))).fetchone()
                    if row is None:
                        raise NotFoundError(f"no message {i} in the outbox", hint="list them with: mailctl queue list")
                    if row["state"] == "sending" and (row["lease_until"] or 0) >= now:
                        raise ValidationError(f"message {i} is being sent by a running flush", hint="try again when the flush is done")
                    target.append(i)
            for start in range(0, len(target), 500):
                chunk = target[start:start + 500]
                self.conn.execute(f"DELETE FROM messages WHERE id IN ({','.join('?' * len(chunk))})", chunk)
        return target

    def purge(self, older_than_seconds: float, states: Sequence[str] = FINISHED_STATES) -> int:
        """Delete finished messages (sent, failed, expired by default) that finished more than
        `older_than_seconds` ago, with their attempt log."""
        bad = [s for s in states if s not in FINISHED_STATES]
        if bad:
            raise ValidationError(f"purge removes only finished messages, not {bad[0]!r}", hint="states: sent, failed, expired")
        if not states:
            return 0
        cutoff = self.clock() - older_than_seconds
        with self._write():
            cur = self.conn.execute(
                f"DELETE FROM messages WHERE state IN ({','.join('?' * len(states))}) AND coalesce(done_at, updated_at) <= ?",
                [*states, cutoff],
            )
        return cur.rowcount

    def attempt_counts(self, since: float | None = None) -> dict[str, int]:
        """Entries of the attempt log by outcome (sent, deferred, failed, expired,
        interrupted), all of them or those at or after `since` (for queue stats' metrics)."""
        counts = {o: 0 for o in ATTEMPT_OUTCOMES}
        sql, params = "SELECT outcome, count(*) FROM attempts", []
        if since is not None:
            sql += " WHERE at >= ?"
            params.append(since)
        for outcome, n in self.conn.execute(sql + " GROUP BY outcome", params):
            counts[outcome] = int(n)
        return counts

    def oldest_created(self, states: Sequence[str]) -> float | None:
        """When the oldest message in these states was queued (store clock), None if none is."""
        (oldest,) = self.conn.execute(
            f"SELECT min(created_at) FROM messages WHERE state IN ({','.join('?' * len(states))})", list(states)).fetchone()
        return None if oldest is None else float(oldest)

    # copying between outboxes (queue migrate) ---------------------------------------------
    def export_batch(self, after_id: int, limit: int = 500) -> tuple[list[dict[str, Any]], dict[int, bytes], list[dict[str, Any]]]:
        """Up to `limit` messages with ids above `after_id`, whole (every column), in id order,
        with their bodies and attempt logs: (messages, bodies by id, attempts)."""
        msgs = [dict(zip(r.keys(), r)) for r in _named(self.conn.execute(
            f"SELECT {_COPY_MESSAGE_COLS} FROM messages WHERE id > ? ORDER BY id LIMIT ?", (int(after_id), int(limit))))]
        if not msgs:
            return [], {}, []
        ids = [m["id"] for m in msgs]
        marks = ",".join("?" * len(ids))
        bodies = {int(k): bytes(v) for k, v in self.conn.execute(f"SELECT message, raw FROM bodies WHERE message IN ({marks})", ids)}
        attempts = [dict(zip(r.keys(), r)) for r in _named(self.conn.execute(
            f"SELECT {_COPY_ATTEMPT_COLS} FROM attempts WHERE message IN ({marks}) ORDER BY id", ids))]
        return msgs, bodies, attempts

    def import_batch(self, messages: Sequence[Mapping[str, Any]], bodies: Mapping[int, bytes],
                     attempts: Sequence[Mapping[str, Any]]) -> dict[str, int]:
        """Write an export_batch() of another outbox here, keeping ids, states and attempts, in
        one transaction. Idempotent: a message already here (the same id, queued at the same
        time by the same sender) takes the source's state; a missing one is added; an attempt
        already here is skipped. A different message under the same id is refused, nothing
        of the batch written. A message being sent in the source (a flush runs there) comes
        over due again (queued, or deferred after attempts), its lease dropped."""
        counts = {"added": 0, "updated": 0, "unchanged": 0, "attempts": 0, "was_sending": 0}
        if not messages:
            return counts
        cols = _COPY_MESSAGE_COLS.split(", ")
        ids = [int(m["id"]) for m in messages]
        marks = ",".join("?" * len(ids))
        with self._write():
            here = {int(r["id"]): dict(zip(r.keys(), r)) for r in _named(self.conn.execute(
                f"SELECT {_COPY_MESSAGE_COLS} FROM messages WHERE id IN ({marks})", ids))}
            for m in messages:
                row = dict(m)
                if row["state"] == "sending":
                    row.update(state="queued" if not row["attempts"] else "deferred", lease_owner=None,
                               lease_until=None, lease_holder=None)
                    counts["was_sending"] += 1
                old = here.get(int(row["id"]))
                if old is None:
                    self.conn.execute(f"INSERT INTO messages ({', '.join(cols)}) VALUES ({','.join('?' * len(cols))})",
                                      [row[c] for c in cols])
                    self.conn.execute("INSERT INTO bodies (message, raw) VALUES (?, ?)",
                                      (row["id"], bytes(bodies.get(int(row["id"]), b""))))
                    counts["added"] += 1
                    continue
                if any(old[c] != row[c] for c in _COPY_IDENTITY):
                    raise ValidationError(
                        f"message {row['id']} of the destination is another message than the source's "
                        f"(queued {_iso(old['created_at'])} by {old['sender'] or '<>'}, not {_iso(row['created_at'])} "
                        f"by {row['sender'] or '<>'})",
                        hint="copy into an empty outbox, or the one this outbox was copied from")
                changed = [c for c in cols if c not in _COPY_IDENTITY and old[c] != row[c]]
                if changed:
                    self.conn.execute(f"UPDATE messages SET {', '.join(f'{c}=?' for c in changed)} WHERE id=?",
                                      [*(row[c] for c in changed), row["id"]])
                    counts["updated"] += 1
                else:
                    counts["unchanged"] += 1
            acols = _COPY_ATTEMPT_COLS.split(", ")
            if attempts:
                aids = [int(a["id"]) for a in attempts]
                known = {int(i): int(msg) for i, msg in self.conn.execute(
                    f"SELECT id, message FROM attempts WHERE id IN ({','.join('?' * len(aids))})", aids)}
                for a in attempts:
                    if int(a["id"]) in known:
                        if known[int(a["id"])] != int(a["message"]):
                            raise ValidationError(
                                f"attempt {a['id']} of the destination belongs to another message",
                                hint="copy into an empty outbox, or the one this outbox was copied from")
                        continue
                    self.conn.execute(f"INSERT INTO attempts ({', '.join(acols)}) VALUES ({','.join('?' * len(acols))})",
                                      [a[c] for c in acols])
                    counts["attempts"] += 1
            self._after_import()
        return counts

    def _after_import(self) -> None:
        """Rows came in with their own ids (SQLite picks max(id)+1 by itself)."""

    def stats(self, *, top: int = 20) -> dict[str, Any]:
        """Counts by state; pending recipients by domain and age (Postfix qshape style)."""
        now = self.clock()
        by_state = self.count_by_state()
        buckets = [f"{m}m" for m in AGE_BUCKETS_MIN] + [f"{AGE_BUCKETS_MIN[-1]}m+"]
        domains: dict[str, list[int]] = {}
        ages = [0] * len(buckets)
        marks = ",".join("?" * len(PENDING_STATES))
        for recipients, created in self.conn.execute(
            f"SELECT recipients, created_at FROM messages WHERE state IN ({marks})", PENDING_STATES
        ):
            age_min = max(0.0, now - created) / 60
            b = next((i for i, m in enumerate(AGE_BUCKETS_MIN) if age_min < m), len(AGE_BUCKETS_MIN))
            ages[b] += 1
            for rcpt in json.loads(recipients):
                domain = rcpt.rpartition("@")[2].lower() or "(none)"
                row = domains.get(domain)
                if row is None:
                    row = domains[domain] = [0] * len(buckets)
                row[b] += 1
        ranked = sorted(domains.items(), key=lambda kv: (-sum(kv[1]), kv[0]))
        partial, failed_rcpts = 0, 0
        for (failed,) in self.conn.execute(
                "SELECT failed_recipients FROM messages WHERE failed_recipients IS NOT NULL AND state != 'failed'"):
            partial += 1
            failed_rcpts += len(json.loads(failed))
        (oldest,) = self.conn.execute(f"SELECT min(created_at) FROM messages WHERE state IN ({marks})", PENDING_STATES).fetchone()
        return {
            "by_state": by_state,
            "total": sum(by_state.values()),
            "pending": sum(by_state[s] for s in PENDING_STATES),
            "oldest_pending_age_seconds": None if oldest is None else round(now - oldest, 1),
            # messages that went out (or wait) for some recipients while others were refused for good
            "partially_failed": partial,
            "partially_failed_recipients": failed_rcpts,
            "age_buckets": buckets,
            "by_age": dict(zip(buckets, ages)),
            "by_domain": [
                {"domain": d, "total": sum(counts), "by_age": dict(zip(buckets, counts))} for d, counts in ranked[:top]
            ],
            "domains_total": len(domains),
        }


# every column, for copying an outbox to another (export_batch / import_batch)
_COPY_MESSAGE_COLS = ("id, created_at, updated_at, profile, sender, recipients, message_id, subject, size, state,"
                      " attempts, next_attempt_at, lease_until, lease_owner, last_attempt_at, last_reply, last_server,"
                      " done_at, age_base, failed_recipients, lease_holder")
_COPY_ATTEMPT_COLS = "id, message, at, profile, server, outcome, reply, duration"
_COPY_IDENTITY = ("id", "created_at", "sender")  # the same message, in both outboxes

_INSERT = ("INSERT INTO messages (created_at, updated_at, profile, sender, recipients, message_id, subject,"
           " size, state, next_attempt_at, age_base) VALUES (?,?,?,?,?,?,?,?,?,?,?)")

_INFO_COLS = ("id, state, created_at, updated_at, profile, sender, recipients, message_id, subject, size, attempts,"
              " next_attempt_at, last_attempt_at, last_reply, last_server, done_at, failed_recipients")


# due: the three ways a row can be due, each an indexed range scan (params: now)
_DUE_CONDITIONS = ("state='sending' AND lease_until < ?", "state='queued' AND next_attempt_at <= ?",
                   "state='deferred' AND next_attempt_at <= ?")

_CLAIM_COLS = "id, profile, sender, recipients, attempts, created_at, age_base, message_id, state, next_attempt_at"


_HOST = (socket.gethostname() or "localhost").replace(":", "_")


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux /proc), "" where unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return ""
    fields = stat[stat.rfind(b")") + 2:].split()
    return fields[19].decode() if len(fields) > 19 else ""


def process_holder(pid: int) -> str:
    return f"{_HOST}:{pid}:{_start_time(pid)}"


def holder_alive(holder: str) -> bool:
    """Whether the process a holder string names (on this host) still runs."""
    _host, _, rest = holder.partition(":")
    pid_text, _, started = rest.partition(":")
    if not pid_text.isdigit():
        return True  # not ours to judge
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return not started or _start_time(pid) in ("", started)


def _named(cursor: sqlite3.Cursor) -> sqlite3.Cursor:
    """Rows of this cursor as sqlite3.Row (by column name); the connection keeps plain tuples."""
    cursor.row_factory = sqlite3.Row
    return cursor


def _claimed(row: sqlite3.Row, raw: bytes) -> ClaimedMessage:
    """A claimed row (_CLAIM_COLS) and its body as the record the flush works with."""
    return ClaimedMessage(
        id=row["id"], profile=row["profile"], sender=row["sender"], recipients=json.loads(row["recipients"]),
        raw=bytes(raw), attempts=row["attempts"], created_at=row["created_at"], age_base=row["age_base"],
        message_id=row["message_id"], reclaimed=row["state"] == "sending",
    )


def _info(row: sqlite3.Row) -> MessageInfo:
    """A row of _INFO_COLS (whose names are MessageInfo's fields) as a MessageInfo."""
    fields = dict(zip(row.keys(), row))
    fields["recipients"] = json.loads(fields["recipients"])
    fields["failed_recipients"] = json.loads(fields["failed_recipients"]) if fields["failed_recipients"] else {}
    return MessageInfo(**fields)


class _WriteTxn:
    """BEGIN IMMEDIATE ... COMMIT: take the write lock up front so two writers never deadlock
    upgrading read locks; SQLite's busy timeout makes the second one wait."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.conn.execute("COMMIT")
        else:
            self.conn.execute("ROLLBACK")
