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
from bisect import bisect_left
from email.message import EmailMessage, Message
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from mailctl.addresses import check_address, check_sender
from mailctl.errors import ConfigError, MailctlError, NotFoundError, TemporaryFailure, UsageError, ValidationError
from mailctl.message import wire_bytes
from mailctl.outbox.backend import AttemptResult, ClaimedMessage, MessageInfo, _iso
from mailctl.outbox.resultsfile import Entry, Others, ResultsFile, pending_elsewhere, results_dir
from mailctl.outbox.schema import migrate
from mailctl.profiles.model import validate_name

STATES = ("queued", "sending", "sent", "deferred", "failed", "expired", "held")
PENDING_STATES = ("queued", "deferred", "held", "sending")
FINISHED_STATES = ("sent", "failed", "expired")
ATTEMPT_OUTCOMES = ("sent", "deferred", "failed", "expired", "interrupted")  # attempts.outcome (schema.py)

PURGE_BATCH = 2500  # messages a purge transaction deletes (a few MB of WAL, tens of ms of lock)
WAL_LIMIT = 16 << 20  # a batch job truncates the WAL when it has grown past this
RECLAIM_PAGES = 2000  # pages (8 MB) an incremental_vacuum transaction frees
VACUUM_MIN_FREE = 4 << 20  # reclaim_space(): VACUUM an older outbox only for this much free space...
VACUUM_MAX_LIVE = 256 << 20  # ...and when it has at most this much to rewrite (seconds of work)

# qshape-like age buckets (minutes): 0-5, 5-10, 10-20 ... 640-1280, 1280+
AGE_BUCKETS_MIN = (5, 10, 20, 40, 80, 160, 320, 640, 1280)  # at most 9 bounds: a bucket is one digit (_bucket_digit)


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
                # The schema's CHECK on messages.state stays (any other writer of the file meets
                # it), but this connection does not evaluate it: SQLite (3.40) builds a
                # temporary index of its seven states for every row whose state changes, a
                # sixth of a flush's bookkeeping (a claim and a result each change one). Every
                # state this code writes is a literal or checked first (record_attempt's
                # outcome, import_batch's states); tests/test_outbox_states.py holds it to that.
                self.conn.execute("PRAGMA ignore_check_constraints=ON")
            except BaseException:
                self.conn.close()
                raise
        except sqlite3.Error as exc:
            raise outbox_error(self.path, exc) from exc
        # plain successes go to a side file (resultsfile.py) unless every commit must reach
        # the disk: a write() is as safe as a commit from a process's death, not from power loss
        self._results = ResultsFile(self._real_path()) if synchronous.upper() in _SIDE_FILE_MODES else None
        self._folding: tuple[int, Others] | None = None

    # lifecycle -------------------------------------------------------------
    def close(self) -> None:
        if self._results is not None:
            self._results.close()
        self.conn.close()

    def __enter__(self) -> "Outbox":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()
        if isinstance(exc, sqlite3.Error):
            raise outbox_error(self.path, exc) from exc

    def _write(self, *, fold: bool = True):
        """A write transaction. It first folds the results journal in (see _fold_results), so
        whatever it does sees every delivery made; only a flush's own result insert skips it."""
        if not fold:
            return _WriteTxn(self.conn)
        return _WriteTxn(self.conn, self._fold_results, self._folded)

    def _fold_results(self) -> int:
        """Apply every plain success on record but not applied yet to its message and the
        attempt log, inside the caller's transaction: this handle's side-file lines (kept in
        memory), the other handles' side files (a killed flush's among them), and the results
        table (schema 005: where they go when there is no side file). A whole claim's worth at
        once: consecutive rows share their pages, so a result costs a fraction of a commit of its
        own. A result changes its message only while the row is still its owner's, and is
        logged once, however many handles fold it. Returns the results applied."""
        own = self._own_lines()
        others = self._others()
        self._folding = (len(own), others)
        if own or others.entries:
            staged = {e[:3]: e for e in [*own, *others.entries]}  # (message, owner, at): one result
            _stage(self.conn, list(staged.values()))
        (count,) = self.conn.execute("SELECT count(*) FROM results").fetchone()
        if not count:
            return 0
        if _UPDATE_FROM:  # SQLite 3.33+: each statement does the whole journal
            self.conn.execute(_FOLD_ATTEMPTS)
            self.conn.execute(_FOLD_MESSAGES)
        else:
            rows = self.conn.execute(_JOURNAL_READ).fetchall()
            self.conn.executemany(_ATTEMPT_ONCE, [(message, at, profile, server, reply, duration, message, message, at, server, reply)
                                                  for message, _owner, at, profile, server, reply, duration in rows])
            self.conn.executemany(_RESULT_SENT, [(at, reply, server, at, at, message, owner)
                                                 for message, owner, at, _profile, server, reply, _duration in rows])
        self.conn.execute("DELETE FROM results")
        return int(count)

    def _folded(self, committed: bool) -> None:
        """After the transaction that folded: committed, this handle's lines are applied (its
        file is emptied) and dead writers' files go; rolled back, everything stays."""
        if self._folding is None:
            return
        own, others = self._folding
        self._folding = None
        if committed:
            if own and self._results is not None:
                self._results.clear(own)
            others.remove()
        else:
            others.release()

    def _settle_results(self) -> None:
        """Before a read that shows states or counts: fold what a flush has journaled, so a
        message it delivered reads as sent at once. Waits at most half a second for the write
        lock (a flush holds it for microseconds at a time); busy, or a read-only file, and the
        read shows those few messages as still sending until the flush's next claim."""
        if self.conn.in_transaction or not self._unfolded():
            return
        try:
            with _busy_timeout(self.conn, 0.5), self._write():
                pass
        except sqlite3.OperationalError:
            pass

    def _real_path(self) -> Path:
        """The file itself, links resolved: every process names the same side-file directory,
        whatever path it opened the outbox by."""
        if self._real is None:
            self._real = Path(os.path.realpath(self.path))
        return self._real

    _real: Path | None = None

    def _side_dir(self) -> str:
        """Where the side files are (resultsfile.py), as a string: looked at in every write."""
        if self._side is None:
            self._side = str(results_dir(self._real_path()))
        return self._side

    _side: str | None = None

    def _own_lines(self) -> list[Entry]:
        """This handle's side-file lines not folded yet."""
        return self._results.pending if self._results is not None else []

    def _others(self) -> Others:
        """The other handles' side files, read (resultsfile.Others)."""
        return Others(self._side_dir(), self._results.name if self._results is not None else None)

    def _unfolded(self) -> bool:
        """Whether any plain success on record waits for a fold (cheap: no lock taken)."""
        own = self._results.name if self._results is not None else None
        return bool(self._own_lines() or pending_elsewhere(self._side_dir(), own)
                    or self.conn.execute(_JOURNAL_ANY).fetchone() is not None)

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
        return [_claimed(row, bodies.get(row[_C_ID], b"")) for row in rows]

    def _due_rows(self, now: float, tail: str, params: list[Any], limit: int) -> list[tuple]:
        """Up to `limit` due rows (tuples of _CLAIM_COLS), oldest due first."""
        # One indexed range scan per state (an OR across states would scan and sort the whole
        # table on every claim), then merge: oldest due first. Plain tuples, read by position:
        # sqlite3.Row's lookup by name was a twentieth of a flush's bookkeeping.
        found = [rows for rows in (self.conn.execute(
            f"SELECT {_CLAIM_COLS} FROM messages WHERE {cond}{tail} ORDER BY next_attempt_at, id LIMIT ?",
            [now, *params, int(limit)]).fetchall() for cond in _DUE_CONDITIONS) if rows]
        if len(found) == 1:  # the usual case: every due row in one state, already in order
            return found[0]
        merged = [row for rows in found for row in rows]
        merged.sort(key=_due_order)
        return merged[:limit]

    @property
    def holder(self) -> str:
        """Who holds this handle's claims: host, pid and the process's start (a pid is reused)."""
        if self._holder is None:
            self._holder = process_holder(os.getpid())
        return self._holder

    _holder: str | None = None
    _results: ResultsFile | None = None  # (PgOutbox has none: it records every result in the database)

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

    def _take(self, rows: Sequence[tuple], owner: str, now: float, lease_seconds: float) -> dict[int, bytes]:
        """Lease `rows` (_CLAIM_COLS) to `owner` (inside the claim's transaction); returns their
        raw bytes by id. A row that was still 'sending' (its flush died) gets an 'interrupted'
        attempt logged."""
        claimed = [r[_C_ID] for r in rows]
        marks = ",".join("?" * len(claimed))
        self.conn.execute(
            f"UPDATE messages SET state='sending', lease_owner=?, lease_until=?, updated_at=?, lease_holder=?"
            f" WHERE id IN ({marks})",
            [owner, now + lease_seconds, now, self.holder, *claimed],
        )
        bodies = dict(self.conn.execute(f"SELECT message, raw FROM bodies WHERE message IN ({marks})", claimed))
        reclaimed = [r[_C_ID] for r in rows if r[_C_STATE] == "sending"]
        if reclaimed:
            self.conn.executemany("INSERT INTO attempts (message, at, outcome, reply) VALUES (?, ?, 'interrupted', ?)",
                                  [(i, now, INTERRUPTED_REPLY) for i in reclaimed])
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
        Returns False if the row was no longer ours (another flush reclaimed it). A plain
        success written to the side file returns True without knowing: the fold applies it
        only while the row is still ours (and logs it either way)."""
        if outcome not in ("sent", "deferred", "failed", "expired"):
            raise ValueError(outcome)
        if outcome == "sent" and recipients is None and not failed_recipients:
            now = self.clock()
            if not renew_lease and self._results is not None and self._results.append(
                    [(claim.id, owner, now, profile, server, reply, duration)]):
                return True  # one write(): folded by the next write transaction
            if not renew_lease:  # one statement: its own transaction (no BEGIN/COMMIT round)
                ours = self._journal(claim.id, owner, now, reply, server, profile, duration)
            else:
                with self._write(fold=False):
                    ours = self._journal(claim.id, owner, now, reply, server, profile, duration)
                    if ours:
                        self._renew(owner, now + renew_lease)
            if ours:
                return True
            # no longer ours: logged below as any other result is
        result = AttemptResult(claim, outcome, reply, server, profile, duration, next_attempt_at,
                               None if recipients is None else list(recipients), dict(failed_recipients or {}))
        now = self.clock()
        with self._write():
            ours = self._record(result, owner, now)
            if renew_lease:
                self._renew(owner, now + renew_lease)
        return ours

    def record_attempts(self, owner: str, results: Sequence[AttemptResult], *,
                        renew_lease: float | None = None) -> list[bool]:
        """Commit several delivery results in ONE transaction (the results of several
        connections that came in while the last commit ran: group commit), with one lease
        renewal; per result, whether the row was still ours."""
        for r in results:
            if r.outcome not in ("sent", "deferred", "failed", "expired"):
                raise ValueError(r.outcome)
        now = self.clock()
        if not renew_lease and self._results is not None and all(_plain(r) for r in results) and self._results.append(
                [(r.claim.id, owner, now, r.profile, r.server, r.reply, r.duration) for r in results]):
            return [True] * len(results)
        with self._write(fold=False):
            ours = [self._journal_or_record(r, owner, now) for r in results]
            if renew_lease:
                self._renew(owner, now + renew_lease)
        return ours

    def _journal(self, message: int, owner: str, now: float, reply: str, server: str | None,
                 profile: str | None, duration: float | None) -> bool:
        """A plain success as ONE insert into the results journal (a page or two per commit,
        against seven for the row, its four indexes and the attempt log), made only while
        the row is still this owner's; False when it is not (nothing written)."""
        cur = self.conn.execute(_JOURNAL_INSERT, (message, owner, now, profile, server, reply, duration, message, owner))
        return cur.rowcount == 1

    def _journal_or_record(self, r: AttemptResult, owner: str, now: float) -> bool:
        if _plain(r):
            if self._journal(r.claim.id, owner, now, r.reply, r.server, r.profile, r.duration):
                return True
        return self._record(r, owner, now)

    def _renew(self, owner: str, until: float) -> None:
        self.conn.execute("UPDATE messages SET lease_until=? WHERE lease_owner=? AND state='sending'", (until, owner))

    def _record(self, r: AttemptResult, owner: str, now: float) -> bool:
        """One result's two statements (inside the caller's transaction): the row's new state,
        then its attempt-log entry. The common case, sent to everyone, is one prepared
        statement text (sqlite3 caches it), no string building."""
        done = now if r.outcome in FINISHED_STATES else None
        if r.outcome == "sent" and r.recipients is None and not r.failed_recipients:
            cur = self.conn.execute(_RESULT_SENT, (now, r.reply, r.server, now, done, r.claim.id, owner))
        else:
            sets, params = _result_sets(r, now, done)
            if r.failed_recipients:
                row = self.conn.execute("SELECT failed_recipients FROM messages WHERE id=?", (r.claim.id,)).fetchone()
                failed = json.loads(row[0]) if row and row[0] else {}
                failed.update(r.failed_recipients)
                sets.append("failed_recipients=?")
                params.append(json.dumps(failed))
            cur = self.conn.execute(
                f"UPDATE messages SET {', '.join(sets)} WHERE id=? AND state='sending' AND lease_owner=?",
                [*params, r.claim.id, owner])
        self.conn.execute(_ATTEMPT_INSERT, (r.claim.id, now, r.profile, r.server, r.outcome, r.reply, r.duration))
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
        profiles or one (so a rate limit holds across successive and concurrent flushes), the
        results journal's included. Walks the log backwards from the newest entry (no index on
        time needed). The log is in time order but for the successes a fold appended after
        results written directly meanwhile (at most about a claim's worth): the walk goes on
        _LOG_DISORDER entries past the limit before it trusts what it has."""
        times: list[float] = [at for at, prof, server in self.conn.execute("SELECT at, profile, server FROM results")
                              if at >= since and server is not None and (profile is None or prof == profile)]
        times += [e[2] for e in self._side_file_entries() if e[2] >= since and e[4] is not None
                  and (profile is None or e[3] == profile)]
        counted = beyond = 0
        for at, prof, server in self.conn.execute(
            "SELECT at, profile, server FROM attempts WHERE outcome IN ('sent','deferred','failed') ORDER BY id DESC"
        ):
            if at < since - 300:  # clocks of concurrent writers differ a little; then stop
                break
            if at >= since and server is not None and (profile is None or prof == profile):
                times.append(at)
                counted += 1
            if counted >= limit:
                beyond += 1
                if beyond > _LOG_DISORDER:
                    break
        times.sort()
        return times[-limit:] if limit else times

    def _side_file_entries(self) -> list[Entry]:
        """The side files' results not applied yet (their message still sending for their
        owner), this handle's and the others': once applied, a result is in the attempt log."""
        others = self._others()
        others.release()  # read only: the folding is a write transaction's
        entries = [*self._own_lines(), *others.entries]
        if not entries:
            return []
        owners = {}
        ids = sorted({e[0] for e in entries})
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            owners.update(self.conn.execute(
                f"SELECT id, lease_owner FROM messages WHERE state='sending' AND id IN ({','.join('?' * len(chunk))})",
                chunk).fetchall())
        return [e for e in entries if owners.get(e[0]) == e[1]]

    # reading -------------------------------------------------------------
    def count_due(self, *, profiles: Sequence[str | None] | None = None) -> int:
        self._settle_results()  # a killed flush's journaled messages are sent, not due
        now = self.clock()
        extra: list[Any] = []
        tail = "".join(f" AND {w}" for w in self._profile_filter(profiles, extra))
        total = 0
        for cond in _DUE_CONDITIONS:
            (count,) = self.conn.execute(f"SELECT count(*) FROM messages WHERE {cond}{tail}", [now, *extra]).fetchone()
            total += count
        return total

    def count_by_state(self, *, profiles: Sequence[str | None] | None = None) -> dict[str, int]:
        """Messages by state (of these profiles). Every flush ends with it: on an outbox of a
        million kept sent messages, `sent` is the total (a count SQLite takes from the b-tree's
        pages, not entry by entry) less the other states (index ranges), one statement, one
        snapshot."""
        self._settle_results()
        if profiles is None:
            others = [s for s in STATES if s != "sent"]
            total, *counts = self.conn.execute(
                "SELECT (SELECT count(*) FROM messages), "
                + ", ".join("(SELECT count(*) FROM messages WHERE state=?)" for _ in others), others).fetchone()
            found = dict(zip(others, (int(n) for n in counts)))
            found["sent"] = int(total) - sum(found.values())
            return {s: found[s] for s in STATES}
        params: list[Any] = []
        where = self._profile_filter(profiles, params)
        sql = "SELECT state, count(*) FROM messages" + (f" WHERE {' AND '.join(where)}" if where else "") + " GROUP BY state"
        counts = {s: 0 for s in STATES}
        counts.update({s: n for s, n in self.conn.execute(sql, params)})
        return counts

    def due_messages(self, *, profiles: Sequence[str | None] | None = None, limit: int | None = None) -> Iterator[MessageInfo]:
        """What a flush would take now (for --dry-run), in the order it would take them."""
        self._settle_results()
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

    def list(self, *, states: Sequence[str] | None = None, profile: str | None = None, limit: int | None = None,
             newest_first: bool = False) -> Iterator[MessageInfo]:
        """Messages in `states` (all when None; "failed" includes the partly failed), of one
        profile or all, oldest first or `newest_first`, at most `limit`. Newest first with a
        limit reads only the rows shown (the newest ids of each state, from an index), so a
        page of a million-row outbox costs what a page of a small one does."""
        self._settle_results()
        where, params = self._list_where(states, profile)
        if newest_first and limit is not None:
            ids = self._newest_ids(states, profile, int(limit))
            if not ids:
                return
            rows = _named(self.conn.execute(
                f"SELECT {_INFO_COLS} FROM messages WHERE id IN ({','.join('?' * len(ids))}) ORDER BY id DESC", ids))
            for row in rows.fetchall():
                yield _info(row)
            return
        sql = (f"SELECT {_INFO_COLS} FROM messages" + (f" WHERE {' AND '.join(where)}" if where else "")
               + (" ORDER BY id DESC" if newest_first else " ORDER BY id"))
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        for row in _named(self.conn.execute(sql, params)):
            yield _info(row)

    def count_listed(self, *, states: Sequence[str] | None = None, profile: str | None = None) -> int:
        """How many messages list() would give without a limit (queue list's "N more")."""
        self._settle_results()
        where, params = self._list_where(states, profile)
        (count,) = self.conn.execute(
            "SELECT count(*) FROM messages" + (f" WHERE {' AND '.join(where)}" if where else ""), params).fetchone()
        return int(count)

    @staticmethod
    def _list_where(states: Sequence[str] | None, profile: str | None) -> tuple[list[str], list[Any]]:
        where: list[str] = []
        params: list[Any] = []
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
        return where, params

    def _newest_ids(self, states: Sequence[str] | None, profile: str | None, limit: int) -> list[int]:
        """The `limit` highest ids of list()'s rows: per state the newest, from messages_ready
        alone (the index holds state and id: a pass over that state's entries keeping the top
        `limit`, no row read), then merged."""
        extra, params = ("", []) if profile is None else (" AND profile IS ?", [profile])
        found: set[int] = set()
        for state in dict.fromkeys(states or STATES):
            found.update(i for (i,) in self.conn.execute(
                f"SELECT id FROM messages WHERE state=?{extra} ORDER BY id DESC LIMIT ?", [state, *params, limit]))
        if states and "failed" in states:  # the partly failed (messages_partly_failed)
            found.update(i for (i,) in self.conn.execute(
                f"SELECT id FROM messages WHERE failed_recipients IS NOT NULL AND state != 'failed'{extra}"
                " ORDER BY id DESC LIMIT ?", [*params, limit]))
        return sorted(found, reverse=True)[:limit]

    def get(self, message_id: int, *, with_raw: bool = False) -> MessageInfo:
        self._settle_results()
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

    def purge(self, older_than_seconds: float, states: Sequence[str] = FINISHED_STATES, *,
              batch_size: int = PURGE_BATCH) -> int:
        """Delete finished messages (sent, failed, expired by default) that finished more than
        `older_than_seconds` ago, with their bodies and attempt logs, `batch_size` messages a
        transaction: each holds the write lock for a few milliseconds and flushes and
        enqueues get their turn between two, and the WAL stays a few batches large however
        much goes. The pages freed stay in the file for new mail (reclaim_space() gives them
        back). Nothing to purge costs one index lookup (messages_done)."""
        bad = [s for s in states if s not in FINISHED_STATES]
        if bad:
            raise ValidationError(f"purge removes only finished messages, not {bad[0]!r}", hint="states: sent, failed, expired")
        cutoff = self.clock() - older_than_seconds
        total = 0
        marks = ",".join("?" * len(set(states)))
        while states:
            self._checkpoint()
            started = time.monotonic()
            with self._write():
                count = self.conn.execute(
                    f"DELETE FROM messages WHERE id IN ({self._PURGE_IDS} AND state IN ({marks}) LIMIT ?)",
                    [cutoff, *dict.fromkeys(states), int(batch_size)]).rowcount
            total += count
            if count < batch_size:
                break
            _give_way(started)
        return total

    # finished before the cutoff, oldest first, from messages_done (the planner would rather
    # walk messages_ready for the state: every finished row)
    _PURGE_IDS = "SELECT id FROM messages INDEXED BY messages_done WHERE done_at <= ?"

    def reclaim_space(self, *, vacuum: bool | None = None, wait: float = 2.0) -> dict[str, Any]:
        """Give the pages purged messages left free back to the file system, and empty the WAL.

        * An outbox made with auto_vacuum=INCREMENTAL (every new one, schema.py): PRAGMA
          incremental_vacuum, RECLAIM_PAGES pages a transaction (short locks, a bounded WAL).
        * An older one: VACUUM, which rewrites the file (and makes it incremental for next
          time) and holds the write lock meanwhile, so only when worthwhile: a quarter of the
          file or more free (and at least VACUUM_MIN_FREE bytes), and at most VACUUM_MAX_LIVE
          bytes to rewrite; `vacuum=True` whatever the sizes, False never.
        VACUUM and the final checkpoint wait at most `wait` seconds for other processes (a
        flush writing, a long read) and are skipped, saying why, rather than block them.
        Returns method (incremental, vacuum, none), before_bytes, after_bytes and freed_bytes
        (database + WAL), free_bytes (what is still free inside), and note (why not)."""
        before = self._file_bytes()
        page_size, pages, free = (self.conn.execute(f"PRAGMA {p}").fetchone()[0]
                                  for p in ("page_size", "page_count", "freelist_count"))
        method, note = "none", None
        if free and self.conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:
            method = "incremental"
            self._incremental_vacuum()
        elif free and vacuum is not False:
            live = (pages - free) * page_size
            if vacuum or (free * 4 >= pages and free * page_size >= VACUUM_MIN_FREE and live <= VACUUM_MAX_LIVE):
                method, note = "vacuum", self._vacuum(wait)
            elif free * 4 >= pages and free * page_size >= VACUUM_MIN_FREE:
                note = (f"VACUUM would rewrite {live / 1e6:.0f} MB holding the outbox's write lock meanwhile: "
                        "run `mailctl queue purge --vacuum` while no flush runs")
        wal_note = self._truncate_wal(wait)
        after = self._file_bytes()
        still_free = self.conn.execute("PRAGMA freelist_count").fetchone()[0] * page_size
        return {"method": method, "before_bytes": before, "after_bytes": after,
                "freed_bytes": max(0, before - after), "free_bytes": still_free, "note": note or wal_note}

    def _checkpoint(self) -> None:
        """Copy the WAL into the database now, so that the next write starts it over. A batch
        job calls it before each batch: with other processes writing in between, SQLite's own
        checkpoint seldom finds the WAL all copied, and the file would grow with the job.
        PASSIVE waits for nobody; past WAL_LIMIT, TRUNCATE waits up to 0.1 s for other
        processes' reads to end (writers wait that long at most) and empties the file."""
        wal = Path(f"{self.path}-wal")
        if wal.exists() and wal.stat().st_size > WAL_LIMIT:
            with _busy_timeout(self.conn, 0.1):
                self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        else:
            self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def _file_bytes(self) -> int:
        """The database file and its WAL, in bytes."""
        return sum(os.path.getsize(p) for p in (self.path, Path(f"{self.path}-wal")) if os.path.exists(p))

    def _incremental_vacuum(self) -> None:
        """Free pages back to the file system, RECLAIM_PAGES a transaction, pausing between."""
        while True:
            free = self.conn.execute("PRAGMA freelist_count").fetchone()[0]
            if not free:
                return
            self._checkpoint()
            started = time.monotonic()
            # its own transaction; executescript, as execute() would run a single step (one page)
            self.conn.executescript(f"PRAGMA incremental_vacuum({min(free, RECLAIM_PAGES)});")
            if free <= RECLAIM_PAGES:
                return
            _give_way(started)

    def _vacuum(self, wait: float) -> str | None:
        """VACUUM into an incremental file; None, or why it did not run."""
        try:
            with _busy_timeout(self.conn, wait):
                self.conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
                self.conn.execute("VACUUM")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc).lower() or "busy" in str(exc).lower():
                return (f"VACUUM skipped: another process was using the outbox for more than {wait:g}s; "
                        "run `mailctl queue purge` again later to give the space back")
            raise
        return None

    def _truncate_wal(self, wait: float) -> str | None:
        """Checkpoint and truncate the WAL; None, or why it stays for now."""
        with _busy_timeout(self.conn, wait):
            busy, _frames, _done = self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:
            return "the WAL is emptied at the next checkpoint: another process was reading or writing the outbox"
        return None

    def attempt_counts(self, since: float | None = None) -> dict[str, int]:
        """Entries of the attempt log by outcome (sent, deferred, failed, expired,
        interrupted), all of them or those at or after `since` (for queue stats' metrics)."""
        self._settle_results()
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
        self._settle_results()
        (oldest,) = self.conn.execute(
            f"SELECT min(created_at) FROM messages WHERE state IN ({','.join('?' * len(states))})", list(states)).fetchone()
        return None if oldest is None else float(oldest)

    # copying between outboxes (queue migrate) ---------------------------------------------
    def export_batch(self, after_id: int, limit: int = 500) -> tuple[list[dict[str, Any]], dict[int, bytes], list[dict[str, Any]]]:
        """Up to `limit` messages with ids above `after_id`, whole (every column), in id order,
        with their bodies and attempt logs: (messages, bodies by id, attempts)."""
        self._settle_results()
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
                if row["state"] not in STATES:  # (the connection does not evaluate the CHECK)
                    raise ValidationError(f"message {row['id']} has an unknown state {row['state']!r}",
                                          hint="states: " + ", ".join(STATES))
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
        """Counts by state; pending recipients by domain and age (Postfix qshape style).
        Counted by the database from indexes (messages_pending_domain and _multi: no row
        of finished mail is read), so it takes about a second per million pending messages."""
        now = self.clock()
        by_state = self.count_by_state()
        buckets = [f"{m}m" for m in AGE_BUCKETS_MIN] + [f"{AGE_BUCKETS_MIN[-1]}m+"]
        # a message is in bucket i when created_at > cutoffs[i] (younger than the bucket's bound)
        cutoffs = [now - m * 60 for m in AGE_BUCKETS_MIN]
        domains, ages, oldest = self._pending_by_domain(cutoffs)
        ranked = sorted(domains.items(), key=lambda kv: (-sum(kv[1]), kv[0]))
        partial, failed_rcpts = 0, 0
        for (failed,) in self.conn.execute(
                "SELECT failed_recipients FROM messages WHERE failed_recipients IS NOT NULL AND state != 'failed'"):
            partial += 1
            failed_rcpts += len(json.loads(failed))
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

    def _pending_by_domain(self, cutoffs: Sequence[float]) -> tuple[dict[str, list[int]], list[int], float | None]:
        """Pending recipients by domain and age bucket, pending messages by age bucket, and
        when the oldest was queued. The first recipient of each message: one pass over
        messages_pending_domain, grouped in its order, a cumulative count per bucket bound;
        the other recipients of the (few) messages with several: messages_pending_multi."""
        domains: dict[str, list[int]] = {}
        ages = [0] * (len(cutoffs) + 1)
        oldest: float | None = None
        # per domain, one character per message: its bucket's digit (a binary search over the
        # bounds, then one aggregate a row: half the cost of a count per bucket)
        for key, first_at, digits in self.conn.execute(
                f"SELECT {_FIRST_DOMAIN}, min(created_at), group_concat({_bucket_digit(cutoffs, 0, len(cutoffs))}, '')"
                " FROM messages INDEXED BY messages_pending_domain WHERE done_at IS NULL GROUP BY 1"):
            counts = [digits.count(str(b)) for b in range(len(ages))]
            ages = [x + y for x, y in zip(ages, counts)]
            oldest = first_at if oldest is None else min(oldest, first_at)
            if key is not None:  # None: a message without recipients
                _add_counts(domains, _domain(key), counts)
        ascending = sorted(cutoffs)
        tally: dict[tuple[str, int], int] = {}  # (what follows the last @, bucket) -> recipients
        for rcpt, created in self.conn.execute(
                "SELECT j.value, created_at FROM messages INDEXED BY messages_pending_multi, json_each(messages.recipients)"
                " AS j WHERE done_at IS NULL AND json_array_length(recipients) > 1 AND j.key > 0"):
            key = (rcpt[rcpt.rfind("@") + 1:], len(ascending) - bisect_left(ascending, created))
            tally[key] = tally.get(key, 0) + 1
        for (tail, bucket), count in tally.items():
            counts = [0] * len(ages)
            counts[bucket] = count
            _add_counts(domains, _domain(tail), counts)
        return domains, ages, oldest


def _give_way(started: float) -> None:
    """Between two batches of a long job (purge, incremental vacuum), pause for a quarter of
    the batch's time: a writer waiting on the lock (SQLite's busy handler looks again every
    few milliseconds, then every 100 ms at most) gets in, and the job runs at 80 % speed."""
    time.sleep(min(0.05, max(0.001, (time.monotonic() - started) / 4)))


def _bucket_digit(cutoffs: Sequence[float], lo: int, hi: int) -> str:
    """SQL for the age bucket of `created_at` as one digit, lo..hi: bucket i is the first with
    created_at > cutoffs[i] (younger than its bound), len(cutoffs) the oldest."""
    if lo == hi:
        return f"'{lo}'"
    mid = (lo + hi) // 2
    return (f"CASE WHEN created_at > {float(cutoffs[mid])!r} THEN {_bucket_digit(cutoffs, lo, mid)}"
            f" ELSE {_bucket_digit(cutoffs, mid + 1, hi)} END")


def _domain(address_or_tail: str) -> str:
    """A recipient's domain as qshape shows it: after the last @, lower case."""
    return address_or_tail.rpartition("@")[2].lower() or "(none)"


def _add_counts(domains: dict[str, list[int]], domain: str, counts: Sequence[int]) -> None:
    row = domains.get(domain)
    if row is None:
        domains[domain] = list(counts)
    else:
        row[:] = [x + y for x, y in zip(row, counts)]


# the pending states as SQL (PgOutbox's stats); SQLite's indexes know them as done_at IS NULL
_PENDING_SQL = "state IN ('queued','deferred','held','sending')"
# the first recipient's domain (or what follows its first @), exactly as messages_pending_domain has it
_FIRST_DOMAIN = ("lower(substr(json_extract(recipients, '$[0]'), instr(json_extract(recipients, '$[0]'), '@') + 1))")


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
# their positions (_claimed unpacks them in this order)
_C_ID, _C_STATE, _C_DUE = 0, 8, 9
# the attempt-log reply of a row claimed again from a flush that died while sending it
INTERRUPTED_REPLY = "a flush stopped while sending this message; it may have been delivered"

# a delivery result (record_attempt): the row's new state and its attempt-log entry
_RESULT_COMMON = ("attempts=attempts+1, last_attempt_at=?, last_reply=?, last_server=?, updated_at=?, done_at=?,"
                  " lease_owner=NULL, lease_until=NULL")
_RESULT_SENT = (f"UPDATE messages SET state='sent', {_RESULT_COMMON} WHERE id=? AND state='sending' AND lease_owner=?")
_ATTEMPT_INSERT = "INSERT INTO attempts (message, at, profile, server, outcome, reply, duration) VALUES (?,?,?,?,?,?,?)"
# the results journal (schema 005): a plain success, written only while the row is still the owner's
_JOURNAL_INSERT = ("INSERT INTO results (message, owner, at, profile, server, reply, duration) SELECT ?,?,?,?,?,?,?"
                   " WHERE EXISTS (SELECT 1 FROM messages WHERE id=? AND state='sending' AND lease_owner=?)")
_JOURNAL_READ = "SELECT message, owner, at, profile, server, reply, duration FROM results ORDER BY id"
# the synchronous modes whose plain successes go to a side file (resultsfile.py): the others
# sync every commit, which a write() to the side file would not match
_SIDE_FILE_MODES = ("NORMAL", "OFF")
# side-file lines (resultsfile.py) into the table, to be folded with it in the same transaction
_JOURNAL_STAGE = "INSERT INTO results (message, owner, at, profile, server, reply, duration) VALUES (?,?,?,?,?,?,?)"
# several lines a statement: one execution of 100 rows costs half what 100 executions do;
# a claim's worth (100 a connection) in one, the rest in tens, then one by one
_STAGE_MANY = {n: _JOURNAL_STAGE + ",(?,?,?,?,?,?,?)" * (n - 1) for n in (100, 10)}
_JOURNAL_ANY = "SELECT 1 FROM results LIMIT 1"
# how far out of time order the attempt log can be (sent_since): a fold appends a claim's worth
# of successes (100 a connection) after what other connections wrote directly meanwhile
_LOG_DISORDER = 2000
# folding it (_fold_results): the rows' new state as _RESULT_SENT sets it, and their attempt-log entries
_UPDATE_FROM = sqlite3.sqlite_version_info >= (3, 33, 0)
_FOLD_MESSAGES = ("UPDATE messages SET state='sent', attempts=attempts+1, last_attempt_at=r.at, last_reply=r.reply,"
                  " last_server=r.server, updated_at=r.at, done_at=r.at, lease_owner=NULL, lease_until=NULL"
                  " FROM results AS r WHERE messages.id=r.message AND messages.state='sending'"
                  " AND messages.lease_owner=r.owner")
# logged once: another handle may have folded the same side-file line before (its writer
# empties the file only after its own fold); a result for a row taken over is logged all the same;
# one for a message deleted since (queue delete / purge after another handle folded it) is
# dropped: its attempt-log entry would break the foreign key, and so every later fold
_FOLD_ATTEMPTS = ("INSERT INTO attempts (message, at, profile, server, outcome, reply, duration)"
                  " SELECT message, at, profile, server, 'sent', reply, duration FROM results AS r"
                  " WHERE EXISTS (SELECT 1 FROM messages AS m WHERE m.id=r.message)"
                  " AND NOT EXISTS (SELECT 1 FROM attempts AS a WHERE a.message=r.message AND a.outcome='sent'"
                  " AND a.at=r.at AND a.server IS r.server AND a.reply IS r.reply) ORDER BY id")
_ATTEMPT_ONCE = ("INSERT INTO attempts (message, at, profile, server, outcome, reply, duration)"
                 " SELECT ?,?,?,?,'sent',?,? WHERE EXISTS (SELECT 1 FROM messages WHERE id=?)"
                 " AND NOT EXISTS (SELECT 1 FROM attempts WHERE message=? AND outcome='sent'"
                 " AND at=? AND server IS ? AND reply IS ?)")


def _stage(conn: sqlite3.Connection, entries: Sequence[Entry]) -> None:
    """Side-file lines into the results table, many a statement (three statement texts in
    all, so that each stays prepared)."""
    i = 0
    for n, sql in _STAGE_MANY.items():
        while len(entries) - i >= n:
            conn.execute(sql, [v for e in entries[i:i + n] for v in e])
            i += n
    if i < len(entries):
        conn.executemany(_JOURNAL_STAGE, entries[i:])


def _plain(r: AttemptResult) -> bool:
    """A plain success: sent to every recipient (what the journal and the side file hold)."""
    return r.outcome == "sent" and r.recipients is None and not r.failed_recipients


def _result_sets(r: AttemptResult, now: float, done: float | None) -> tuple[list[str], list[Any]]:
    """SET terms and their parameters for a result other than a plain `sent`."""
    sets = ["state=?", _RESULT_COMMON]
    params: list[Any] = [r.outcome, now, r.reply, r.server, now, done]
    if r.outcome == "deferred":
        sets.append("next_attempt_at=?")
        params.append(r.next_attempt_at if r.next_attempt_at is not None else now)
    if r.recipients is not None:
        sets.append("recipients=?")
        params.append(json.dumps(list(r.recipients)))
    return sets, params


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


def _claimed(row: Sequence[Any], raw: bytes) -> ClaimedMessage:
    """A claimed row (_CLAIM_COLS, by position) and its body as the record the flush works with."""
    (id_, profile, sender, recipients, attempts, created_at, age_base, message_id, state, _due) = row
    return ClaimedMessage(id_, profile, sender, _recipients(recipients), bytes(raw), attempts, created_at,
                          age_base, message_id, state == "sending")


def _due_order(row: Sequence[Any]) -> tuple[float, int]:
    return row[_C_DUE], row[_C_ID]


def _recipients(text: str) -> list[str]:
    """The recipients column (json.dumps of a list, so ASCII with escapes). One address with
    nothing escaped, the usual case, is read without the JSON parser."""
    if text.startswith('["') and text.endswith('"]'):
        inner = text[2:-2]
        if '"' not in inner and "\\" not in inner:
            return [inner]
    return json.loads(text)


def _info(row: sqlite3.Row) -> MessageInfo:
    """A row of _INFO_COLS (whose names are MessageInfo's fields) as a MessageInfo."""
    fields = dict(zip(row.keys(), row))
    fields["recipients"] = json.loads(fields["recipients"])
    fields["failed_recipients"] = json.loads(fields["failed_recipients"]) if fields["failed_recipients"] else {}
    return MessageInfo(**fields)


class _busy_timeout:
    """Wait at most `seconds` for another process's lock within the block (VACUUM, the WAL
    checkpoint: they should give way to a flush, not hold it up), then the connection's own."""

    def __init__(self, conn: sqlite3.Connection, seconds: float) -> None:
        self.conn = conn
        self.ms = int(seconds * 1000)
        self.saved = 0

    def __enter__(self) -> None:
        self.saved = self.conn.execute("PRAGMA busy_timeout").fetchone()[0]
        self.conn.execute(f"PRAGMA busy_timeout={self.ms}")

    def __exit__(self, *exc: object) -> None:
        self.conn.execute(f"PRAGMA busy_timeout={int(self.saved)}")


class _WriteTxn:
    """BEGIN IMMEDIATE ... COMMIT: take the write lock up front so two writers never deadlock
    upgrading read locks; SQLite's busy timeout makes the second one wait."""

    def __init__(self, conn: sqlite3.Connection, first: Callable[[], Any] | None = None,
                 then: Callable[[bool], None] | None = None) -> None:
        self.conn = conn
        self.first = first
        self.then = then  # after COMMIT (True) or ROLLBACK (False)

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")
        if self.first is not None:
            try:
                self.first()
            except BaseException:
                self.conn.execute("ROLLBACK")
                self._then(False)
                raise

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self.conn.execute("COMMIT")
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                self._then(False)
                raise
            self._then(True)
        else:
            self.conn.execute("ROLLBACK")
            self._then(False)

    def _then(self, committed: bool) -> None:
        if self.then is not None:
            self.then(committed)
