"""The outbox on PostgreSQL: one database that applications on many hosts write into and any
of them flushes, with the SQLite outbox's guarantees (backend.py).

`PgOutbox(url)` is `Outbox` (store.py) over a psycopg 3 connection: the queue's logic is
written once, in store.py; this module supplies what differs:

* the connection (libpq conventions: the URL, PGPASSWORD, ~/.pgpass, PGSERVICE, sslmode),
  made in autocommit mode, every write its own short transaction, its settings SET after
  connecting (PgBouncer refuses the `options` startup parameter);
* the schema: the same named, append-only migrations as SQLite (pg_schema.py), applied on
  open under a transaction-level advisory lock, in their own schema (MAILCTL_PG_SCHEMA,
  default `mailctl`), so two hosts opening a fresh database at once are safe;
* claims: `SELECT ... FOR UPDATE SKIP LOCKED` in one short transaction, so concurrent
  flushes on different hosts take disjoint rows without waiting for each other;
* a claim is held by a session-level advisory lock (`_claim_lock`): the session takes, once
  per lease owner, a shared lock on a key derived from the owner, and writes its claims with
  no `lease_holder`; a flush that finds no such lock (the worker died, its connection dropped,
  or PgBouncer in session pooling mode reset the server connection with DISCARD ALL) reclaims
  the rows at once instead of waiting for the lease to run out. A claim with a `lease_holder`
  (the database session: backend pid and start time; written by versions before this one,
  or when the lock could not be had) is judged the old way, by pg_stat_activity. That needs
  one server session per client for the client's life: a pooler that shares them (PgBouncer
  in transaction or statement pooling mode) is refused at open (`_direct`, `_shares_sessions`);
* SQL spelling: `%s` parameters, `IS NOT DISTINCT FROM` for `IS ?`, RETURNING for new ids.

psycopg is imported only here, and this module only when a postgresql:// URL is used. The
password never leaves this module: `display` is the URL without it."""

from __future__ import annotations

import os
import re
from typing import Any, Callable, Iterable, Sequence

from mailctl.errors import ConfigError, MailctlError, TemporaryFailure, UnavailableError
from mailctl.outbox.locate import redact
from mailctl.outbox.pg_schema import migrate_pg
from mailctl.outbox.store import Outbox

# A database session, as a claim's holder: backend pid and start time (a pid alone is reused).
_HOLDER = "pid::text || ':' || floor(extract(epoch FROM backend_start) * 1000000)::bigint::text"

# A lease owner's claim lock (`_claim_lock`): a bigint advisory key in mailctl's own key space,
# "mc" (0x6D63) in the top 16 bits and the first 48 bits of SHA-256(owner) below, so in
# pg_locks classid >> 16 = 0x6D63 (28003), objsubid = 1. Apart from the migrations' lock
# (pg_schema._LOCK_KEY, top 16 bits 0x006D); an application's own advisory locks collide only
# with keys in that range. One SQL spelling, used for taking the lock and for judging claims.
_LOCK_TAG = 0x6D63
_OWNER_KEY = ("((x'6D63'::bigint << 48) | ('x' || left(encode(sha256(convert_to({}, 'UTF8')), 'hex'), 12))"
              "::bit(48)::bigint)")
# the claim lock keys held now (by any session of this database)
_LIVE_KEYS = ("SELECT (classid::bigint << 32) | objid::bigint FROM pg_locks WHERE locktype = 'advisory'"
              f" AND objsubid = 1 AND granted AND classid::bigint >> 16 = {_LOCK_TAG}"
              " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")


def owner_key(owner: str) -> int:
    """The advisory lock key of a lease owner's claims (what _OWNER_KEY computes in SQL)."""
    import hashlib

    return (_LOCK_TAG << 48) | int(hashlib.sha256(owner.encode("utf-8")).hexdigest()[:12], 16)


def schema_name() -> str:
    name = os.environ.get("MAILCTL_PG_SCHEMA") or "mailctl"
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
        raise ConfigError(f"MAILCTL_PG_SCHEMA={name!r} is not a plain schema name",
                          hint="use lower-case letters, digits and _ (default: mailctl)")
    return name


def pg_error(where: str, exc: BaseException) -> MailctlError:
    """A psycopg failure as one line naming the outbox (password removed) and what to do."""
    import psycopg

    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, psycopg.OperationalError):
        low = text.lower()
        pooler = _pgbouncer_error(where, text, low)
        if pooler is not None:
            return pooler
        if "password" in low or "authentication" in low or "role" in low or "permission" in low:
            return ConfigError(f"outbox {where}: {text}",
                               hint="check the user and password (PGPASSWORD, ~/.pgpass or the secret store);"
                                    " through PgBouncer, also the user=/password= of its [databases] entry")
        if "does not exist" in low:
            return ConfigError(f"outbox {where}: {text}", hint="create the database first (createdb), or fix the URL"
                                                              " (through PgBouncer: the dbname= of its [databases] entry)")
        if "fatal:" in low:  # something answered and refused: it runs, so "is it running" is the wrong question
            return UnavailableError(f"outbox {where}: {text}",
                                    hint="the server (or a pooler in front of it) refused the connection: its log says why")
        return UnavailableError(f"outbox {where}: {text}",
                                hint="check that the PostgreSQL server runs and the host and port in the URL")
    if isinstance(exc, (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled,
                        psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected)):
        return TemporaryFailure(f"outbox {where}: {text}", hint="try again")
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        return ConfigError(f"outbox {where}: {text}", hint="the database user needs CREATE on the database (for the schema)")
    return MailctlError(f"outbox {where}: {text}")


# PgBouncer's own refusals (its messages, matched lower-case; PgBouncer sends them with
# SQLSTATE 08P01 and psycopg's failed connect carries none, so the words are what tells them
# apart). PostgreSQL never says these; what it says passes through PgBouncer unchanged (1.18)
# and is handled below. (phrase, error class, hint naming the fix)
_PGBOUNCER_REFUSALS: tuple[tuple[str, type, str], ...] = (
    ("no such database", ConfigError,
     "PgBouncer has no [databases] entry for this database name: add one to pgbouncer.ini (NAME = host=... dbname=...)"
     " or a * fallback, and RELOAD it; or fix the database name in the URL"),
    ("database does not allow connections", UnavailableError,
     "the database is DISABLEd in PgBouncer: ENABLE it on PgBouncer's admin console"),
    ("max_client_conn", UnavailableError,
     "PgBouncer has max_client_conn clients already: raise max_client_conn in pgbouncer.ini (and its open-files"
     " limit), or use fewer connections; a flush holds one, two while it opens"),
    ("max_db_client_connections", UnavailableError,
     "PgBouncer's max_db_client_connections for this database is reached: raise it in pgbouncer.ini"),
    ("max_user_client_connections", UnavailableError,
     "PgBouncer's max_user_client_connections for this user is reached: raise it in pgbouncer.ini"),
    ("server login has been failing", UnavailableError,
     "PgBouncer's own login to PostgreSQL fails (the cached error says why): fix the host/port/user/password of"
     " the [databases] entry in pgbouncer.ini, or auth_file/auth_query for the password it passes on"),
    ("pgbouncer cannot connect to server", UnavailableError,
     "PgBouncer cannot reach PostgreSQL: check that the server runs and the host/port of the [databases] entry"
     " in pgbouncer.ini (PgBouncer's log says why)"),
    ("query_wait_timeout", UnavailableError,
     "PgBouncer found no server connection within query_wait_timeout: PostgreSQL unreachable from PgBouncer"
     " (the host/port of the [databases] entry; its log says), or the pool full"
     " (default_pool_size, max_db_connections)"),
    ("sasl authentication failed", ConfigError,
     "PgBouncer refused the password: it checks it against its auth_file (userlist.txt) or auth_query, so the user"
     " needs an entry there (SCRAM secret or password) that auth_type accepts; then PGPASSWORD, ~/.pgpass"
     " or the secret store"),
    ("no such user", ConfigError,
     "PgBouncer does not know this user: add it to PgBouncer's auth_file (userlist.txt), or fix auth_user/auth_query"),
    ("authentication failed", ConfigError,
     "PgBouncer refused the login: the user needs an entry in its auth_file (or auth_query) that auth_type accepts"),
    ("unix socket login rejected", ConfigError,
     "PgBouncer's auth_type = peer wants a Unix user of the same name: connect as it, or change auth_type/auth_hba_file"),
    ("login rejected", ConfigError, "PgBouncer's auth_type / auth_hba_file rejects this user here: allow it there"),
    ("bouncer config error", ConfigError,
     "PgBouncer's own configuration is wrong (auth_user, auth_dbname, auth_type): its log names the setting"),
    ("unsupported startup parameter", ConfigError,
     "PgBouncer refuses a startup parameter from the URL: drop it (e.g. options=), or list it in"
     " ignore_startup_parameters in pgbouncer.ini"),
    ("server conn crashed", TemporaryFailure,
     "the PostgreSQL session behind PgBouncer ended (a restart, or it was terminated): try again"),
)


def _pgbouncer_error(where: str, text: str, low: str) -> MailctlError | None:
    """PgBouncer's own refusal (`_PGBOUNCER_REFUSALS`) as its error and one-line fix, or None.
    PostgreSQL's password failure names the user ('... failed for user "x"'); PgBouncer's
    (md5, plain) does not, so only that spelling is taken for PgBouncer's."""
    for phrase, cls, hint in _PGBOUNCER_REFUSALS:
        if phrase in low and not (phrase == "authentication failed" and ("for user" in low or "sasl" in low)):
            return cls(f"outbox {where}: {text}", hint=hint)
    return None


class _Row(tuple):
    """A result row that is a tuple (`for (i,) in ...`) and answers row["name"] and keys(),
    like sqlite3.Row, so store.py reads both backends the same way."""

    names: tuple[str, ...] = ()

    def __getitem__(self, key):  # type: ignore[override]
        if isinstance(key, str):
            return tuple.__getitem__(self, self.names.index(key))
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self.names)


def _row_factory(cursor):
    names = tuple(c.name for c in (cursor.description or ()))
    cls = type("Row", (_Row,), {"names": names})
    return lambda values: cls(values)


def _enqueue_sql(*, notify: bool) -> str:
    """INSERT a message and its body in one statement (a data-modifying CTE); the id comes
    back, with a NOTIFY per message when `notify`."""
    from mailctl.outbox.store import _INSERT

    tail = "SELECT id, pg_notify('mailctl_outbox', id::text) FROM m" if notify else "SELECT id FROM m"
    return (f"WITH m AS ({_sql(_INSERT)} RETURNING id),"
            " b AS (INSERT INTO bodies (message, raw) SELECT id, %s::bytea FROM m) " + tail)


def _direct(raw, pid: int, client_addr: str | None, client_port: int | None, server_addr: str | None,
            server_port: int | None) -> bool:
    """True when the server session's peer is this very socket: nothing (no pooler) between
    this connection and its PostgreSQL session (`pid`). TCP: the server's client_addr/port is
    this socket's local address and its own address/port this socket's peer. A Unix socket:
    the process at the other end (SO_PEERCRED: the postmaster, or a pooler) is the session's
    parent. Anything not proven (a pooler, NAT, no /proc) is for `_shares_sessions`."""
    import ipaddress
    import socket

    with socket.socket(fileno=os.dup(raw.pgconn.socket)) as sock:
        if sock.family == socket.AF_UNIX:
            return client_port == -1 and _peer_pid(sock) == _parent_pid(pid) is not None
        local, peer = sock.getsockname()[:2], sock.getpeername()[:2]
    if None in (client_addr, server_addr) or (client_port, server_port) != (local[1], peer[1]):
        return False
    try:
        return (ipaddress.ip_address(local[0]), ipaddress.ip_address(peer[0])) == (
            ipaddress.ip_address(client_addr), ipaddress.ip_address(server_addr))
    except ValueError:
        return False


def _peer_pid(sock) -> int | None:
    import socket
    import struct

    if not hasattr(socket, "SO_PEERCRED"):  # not Linux: not proven, the probe decides
        return None
    return struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))[0] or None


def _parent_pid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            return next((int(line.split()[1]) for line in status if line.startswith("PPid:")), None)
    except (OSError, ValueError):  # another host or pid namespace, no /proc
        return None


def _shares_sessions(raw, pid: int, connect: Callable[[], Any], rounds: int = 3) -> bool:
    """Whether this connection's transactions may run on server sessions other clients use (a
    pooler in transaction or statement pooling mode, e.g. PgBouncer pool_mode = transaction),
    where a claim's holder (the session) would not name this process: a second connection,
    open at the same time, that lands on this one's server session (`pid`), or this one's
    session changing between two transactions, proves it. A direct or session-pooled
    connection keeps one server session that no other client has. A pooler hands out the
    server connection released last (PgBouncer's default), so the first round normally tells;
    the probe's wait is bounded (a session pool with no free server: no evidence)."""
    probe = connect()
    try:
        for _ in range(rounds):
            other = _probe_pid(probe, 2.0)
            (mine,) = raw.execute("SELECT pg_backend_pid()").fetchone()
            if other == pid or int(mine) != pid:
                return True
            if other is None:
                break
    finally:
        probe.close()
    return False


def _probe_pid(conn, timeout: float) -> int | None:
    """pg_backend_pid() on `conn`, or None without an answer within `timeout` (a pooler that
    waits for a free server connection): libpq's asynchronous calls, so the wait is bounded."""
    import select
    import time

    from psycopg import pq

    pgconn = conn.pgconn
    pgconn.send_query(b"SELECT pg_backend_pid()")
    end = time.monotonic() + timeout
    while pgconn.is_busy():
        left = end - time.monotonic()
        if left <= 0 or not select.select([pgconn.socket], [], [], left)[0]:
            return None
        pgconn.consume_input()
    value = None
    while (result := pgconn.get_result()) is not None:
        if result.status == pq.ExecStatus.TUPLES_OK:
            value = int(result.get_value(0, 0))
    return value


def _sql(statement: str) -> str:
    """store.py's SQLite spelling -> PostgreSQL's."""
    statement = statement.replace(" IS ?", " IS NOT DISTINCT FROM ?")
    statement = statement.replace("%", "%%").replace("?", "%s")
    return statement


class _Cursor:
    def __init__(self, cursor) -> None:
        self._cursor = cursor
        self.row_factory = None  # store.py sets sqlite3.Row here; rows are always _Row

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self):
        row = self._cursor.fetchone()
        return row[0] if row else None

    def fetchone(self):
        return self._cursor.fetchone()

    def fetchall(self):
        return self._cursor.fetchall()

    def __iter__(self):
        return iter(self._cursor)


class _Connection:
    """The few sqlite3.Connection calls store.py makes, on a psycopg connection."""

    def __init__(self, conn, where: str) -> None:
        self.raw = conn
        self.where = where

    def execute(self, statement: str, params: Sequence[Any] = ()) -> _Cursor:
        cursor = self.raw.cursor(row_factory=_row_factory)
        cursor.execute(_sql(statement), list(params))
        return _Cursor(cursor)

    def executemany(self, statement: str, rows: Iterable[Sequence[Any]]) -> None:
        rows = [list(r) for r in rows]
        if rows:
            with self.raw.cursor() as cursor:
                cursor.executemany(_sql(statement), rows)

    def close(self) -> None:
        self.raw.close()


class _Transaction:
    def __init__(self, box: "PgOutbox") -> None:
        self.box = box
        self._tx = None

    def __enter__(self) -> None:
        self._tx = self.box.conn.raw.transaction()
        self._tx.__enter__()

    def __exit__(self, exc_type, exc, tb) -> None:
        self._tx.__exit__(exc_type, exc, tb)


class PgOutbox(Outbox):
    """The outbox in a PostgreSQL database (see the module docstring)."""

    backend = "postgresql"

    def __init__(self, url: str, *, clock: Callable[[], float] | None = None, timeout: float = 30.0,
                 synchronous: str = "NORMAL", password: str | None = None) -> None:
        import time

        try:
            import psycopg
        except ImportError:  # the optional extra is not installed
            raise ConfigError("a postgresql:// outbox needs psycopg",
                              hint="pip install 'mailctl[postgresql]' (psycopg 3 with its binary wheel)") from None
        self.url = url
        self.display = redact(url)
        self.path = self.display  # what messages name
        self.clock = clock or time.time
        self.schema = schema_name()
        self._locked: set[str] = set()  # owners whose claim lock this session holds (_claim_lock)
        kwargs: dict[str, Any] = {"autocommit": True, "connect_timeout": max(1, int(timeout))}
        if password:
            kwargs["password"] = password
        # synchronous=FULL (the one-shot paths): wait for the commit to reach disk; NORMAL:
        # PostgreSQL's own default for this session (synchronous_commit as configured).
        settings = {"search_path": self.schema, "lock_timeout": f"{int(timeout * 1000)}ms"}
        if synchronous.upper() == "NORMAL":
            settings["synchronous_commit"] = "off"
        raw = self._connect(psycopg, kwargs)
        self.conn = _Connection(raw, self.display)
        try:
            self._holder = self._session_id(settings)
            if not _direct(raw, *self._peer) and _shares_sessions(raw, self._peer[0],
                                                                   lambda: self._connect(psycopg, kwargs)):
                raise ConfigError(
                    f"outbox {self.display}: a connection pooler in transaction pooling mode (PgBouncer pool_mode ="
                    " transaction or statement) is not supported: it runs this connection's transactions on server"
                    " sessions other clients share, so claims, LISTEN and the session's settings would not hold",
                    hint="connect to PostgreSQL directly, or use session pooling (PgBouncer: pool_mode = session)")
            migrate_pg(raw, self.schema)
        except psycopg.Error as exc:
            raw.close()
            raise pg_error(self.display, exc) from None
        except BaseException:
            raw.close()
            raise

    def _connect(self, psycopg, kwargs: dict[str, Any]):
        try:
            return psycopg.connect(self.url, **kwargs)
        except psycopg.Error as exc:
            raise pg_error(self.display, exc) from None
        except Exception as exc:  # a malformed URL (psycopg.ProgrammingError is an Error too)
            raise ConfigError(f"outbox {self.display}: {exc}", hint="postgresql://USER@HOST:PORT/DATABASE") from None

    def _session_id(self, settings: dict[str, str]) -> str:
        """Set the session's settings and return its id (a claim's holder), in one round trip.
        The settings are SET after connecting, not sent as the `options` startup parameter:
        PgBouncer refuses that one ("unsupported startup parameter: options"), and where it is
        told to ignore it the settings (search_path!) would be lost without a word. Also kept:
        how the server sees this session's peer, for `_direct`."""
        sets = "".join(f"set_config('{name}', %s, false), " for name in settings)
        row = self.conn.raw.execute(
            f"SELECT {sets}{_HOLDER}, pid, host(client_addr), client_port, host(inet_server_addr()),"
            " inet_server_port() FROM pg_stat_activity WHERE pid = pg_backend_pid()",
            list(settings.values())).fetchone()
        self._peer = tuple(row[len(settings) + 1:])
        return row[len(settings)]

    _peer: tuple = (0, None, None, None, None)

    # lifecycle -------------------------------------------------------------
    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:  # pragma: no cover - closing a broken connection
            pass

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()
        import psycopg

        if isinstance(exc, psycopg.Error):
            raise pg_error(self.display, exc) from exc

    def _write(self, *, fold: bool = True):
        return _Transaction(self)  # no results journal here: `fold` has nothing to fold

    def _settle_results(self) -> None:
        """Nothing to fold: a result is one statement here (record_attempt), no journal."""

    def _insert(self, row: tuple, raw: bytes) -> int:
        from mailctl.outbox.store import _INSERT

        queue_id = int(self.conn.execute(_INSERT + " RETURNING id", row).lastrowid)
        self.conn.execute("INSERT INTO bodies (message, raw) VALUES (?, ?)", (queue_id, raw))
        try:
            self.conn.raw.execute("SELECT pg_notify('mailctl_outbox', %s)", [str(queue_id)])
        except Exception:  # pragma: no cover - a wake-up call only
            pass
        return queue_id

    # enqueue in one statement: the row, its body and the wake-up call in one round trip
    def enqueue(self, raw: bytes, sender: str, recipients: Sequence[str], profile: str | None = None, *,
                hold: bool = False) -> int:
        """Queue one message (see Outbox.enqueue): one statement, atomic on its own (the
        message row, its body and the NOTIFY that wakes the workers), so one round trip."""
        row, raw = self._row(raw, sender, recipients, profile, hold)
        found = self.conn.raw.execute(_enqueue_sql(notify=True), [*row, raw]).fetchone()
        return int(found[0])

    def enqueue_many(self, items: Iterable[tuple], *, hold: bool = False) -> list[int]:
        """Queue many in ONE transaction (see Outbox.enqueue_many), sent as a pipeline (no
        round trip a message) and with one NOTIFY for the lot."""
        rows = [self._row(it[0], it[1], it[2], it[3] if len(it) > 3 else None, hold) for it in items]
        if not rows:
            return []
        ids: list[int] = []
        with self.conn.raw.transaction(), self.conn.raw.cursor() as cursor:
            cursor.executemany(_enqueue_sql(notify=False), [[*row, raw] for row, raw in rows], returning=True)
            while True:
                ids.append(int(cursor.fetchone()[0]))
                if not cursor.nextset():
                    break
            cursor.execute("SELECT pg_notify('mailctl_outbox', %s)", [str(ids[-1])])
        return ids

    # a delivery result in one statement (one round trip), as Outbox.record_attempt in several
    def record_attempt(self, claim, owner: str, outcome: str, *, reply: str = "", server: str | None = None,
                       profile: str | None = None, duration: float | None = None,
                       next_attempt_at: float | None = None, recipients: Sequence[str] | None = None,
                       renew_lease: float | None = None, failed_recipients=None) -> bool:
        """Commit one delivery result (see Outbox.record_attempt): ONE statement, see below."""
        from mailctl.outbox.backend import AttemptResult

        result = AttemptResult(claim, outcome, reply, server, profile, duration, next_attempt_at,
                               None if recipients is None else list(recipients), dict(failed_recipients or {}))
        return self.record_attempts(owner, [result], renew_lease=renew_lease)[0]

    def record_attempts(self, owner: str, results: Sequence[Any], *, renew_lease: float | None = None) -> list[bool]:
        """Commit delivery results (see Outbox.record_attempts). One result is ONE statement
        (data-modifying CTEs: the row's new state, the attempt log entry and the lease renewal
        of the owner's other rows), atomic on its own: the flush's commit is one round trip.
        Several (group commit) are one transaction of those statements, sent as a pipeline."""
        for r in results:
            if r.outcome not in ("sent", "deferred", "failed", "expired"):
                raise ValueError(r.outcome)
        now = self.clock()
        raw = self.conn.raw
        if len(results) == 1:
            sql, params = _result_sql(results[0], owner, now, renew_lease)
            (count,) = raw.execute(sql, params).fetchone()
            return [int(count) == 1]
        with raw.transaction(), raw.pipeline():
            cursors = [raw.execute(*_result_sql(r, owner, now, None)) for r in results]
            if renew_lease:
                raw.execute("UPDATE messages SET lease_until=%s WHERE lease_owner=%s AND state='sending'",
                            [now + renew_lease, owner])
        return [int(cur.fetchone()[0]) == 1 for cur in cursors]

    # claims: FOR UPDATE SKIP LOCKED, and the holder's session ---------------------------
    def _due_rows(self, now: float, tail: str, params: list[Any], limit: int):
        from mailctl.outbox.store import _CLAIM_COLS

        # due: queued/deferred and due, or sending with an expired lease, or whose claimer is
        # gone (it died: its rows return at once, not after the lease): no claim lock for its
        # owner (this version's claims, lease_holder NULL), or a holder session no longer in
        # pg_stat_activity (claims of earlier versions). Each NOT IN is one hashed look-up,
        # made only when a 'sending' row within its lease is met.
        sql = (f"SELECT {_CLAIM_COLS} FROM messages WHERE ("
               "(state IN ('queued','deferred') AND next_attempt_at <= ?)"
               " OR (state='sending' AND (lease_until < ?"
               f" OR (lease_holder IS NULL AND lease_owner IS NOT NULL AND {_OWNER_KEY.format('lease_owner')}"
               f"  NOT IN ({_LIVE_KEYS}))"
               " OR (lease_holder IS NOT NULL AND lease_holder NOT IN"
               f"  (SELECT {_HOLDER} FROM pg_stat_activity WHERE backend_start IS NOT NULL)))))"
               f"{tail} ORDER BY next_attempt_at, id LIMIT ? FOR UPDATE SKIP LOCKED")
        return self.conn.execute(sql, [now, now, *params, int(limit)]).fetchall()

    def _free_dead_holders(self, now: float) -> None:
        """Nothing to do here: the claim's SQL asks pg_locks (and pg_stat_activity) who lives."""

    def _take(self, rows, owner: str, now: float, lease_seconds: float) -> dict[int, bytes]:
        """As Outbox._take, in one statement: lease the rows to `owner` under its claim lock
        (no lease_holder), or, without the lock, naming this session as the holder; log an
        'interrupted' attempt for each row taken from a flush that died; return the bodies."""
        from mailctl.outbox.store import _C_ID, _C_STATE, INTERRUPTED_REPLY

        holder = None if self._claim_lock(owner) else self.holder
        claimed = [int(r[_C_ID]) for r in rows]
        reclaimed = [int(r[_C_ID]) for r in rows if r[_C_STATE] == "sending"]
        found = self.conn.raw.execute(
            "WITH u AS (UPDATE messages SET state='sending', lease_owner=%s, lease_until=%s, updated_at=%s,"
            " lease_holder=%s WHERE id = ANY(%s)),"
            " i AS (INSERT INTO attempts (message, at, outcome, reply)"
            " SELECT m, %s, 'interrupted', %s FROM unnest(%s::bigint[]) AS m)"
            " SELECT message, raw FROM bodies WHERE message = ANY(%s)",
            [owner, now + lease_seconds, now, holder, claimed, now, INTERRUPTED_REPLY, reclaimed, claimed])
        return {int(k): bytes(v) for k, v in found}

    def _claim_lock(self, owner: str) -> bool:
        """Hold `owner`'s claim lock in this session (taken at its first claim, one round trip
        per owner; its later claims and all results pay nothing): a shared session-level
        advisory lock, so two sessions that claim for one owner both hold it. It goes when the
        session ends, and when PgBouncer (session pooling) resets the server connection after
        the client left (DISCARD ALL): the claims are then free at once. Owners of this session
        with no claim left are let go in the same statement (a worker has an owner a round).
        False when the key is locked exclusively elsewhere (an application's own lock in
        mailctl's key space): the claim then names this session as its holder instead."""
        if owner in self._locked:
            return True
        done = [o for o in self._locked]
        got, freed = self.conn.raw.execute(
            f"SELECT pg_try_advisory_lock_shared({_OWNER_KEY.format('%s')}), ARRAY(SELECT o FROM unnest(%s::text[]) AS o"
            " WHERE CASE WHEN EXISTS (SELECT 1 FROM messages WHERE state = 'sending' AND lease_owner = o) THEN false"
            f" ELSE pg_advisory_unlock_shared({_OWNER_KEY.format('o')}) END)", [owner, done]).fetchone()
        self._locked.difference_update(freed or ())
        if got:
            self._locked.add(owner)
        return bool(got)

    def count_due(self, *, profiles: Sequence[str | None] | None = None) -> int:
        now = self.clock()
        extra: list[Any] = []
        tail = "".join(f" AND {w}" for w in self._profile_filter(profiles, extra))
        (count,) = self.conn.execute(
            "SELECT count(*) FROM messages WHERE ((state IN ('queued','deferred') AND next_attempt_at <= ?)"
            f" OR (state='sending' AND lease_until < ?)){tail}", [now, now, *extra]).fetchone()
        return int(count)

    def sent_since(self, since: float, profile: str | None = None, *, limit: int = 1000) -> list[float]:
        params: list[Any] = [since]
        extra = ""
        if profile is not None:
            extra = " AND profile = ?"
            params.append(profile)
        rows = self.conn.execute(
            "SELECT at FROM attempts WHERE outcome IN ('sent','deferred','failed') AND server IS NOT NULL"
            f" AND at >= ?{extra} ORDER BY at DESC LIMIT ?", [*params, int(limit)]).fetchall()
        return sorted(float(at) for (at,) in rows)

    # queue stats and purge: PostgreSQL's spelling -------------------------------------------
    _PURGE_IDS = "SELECT id FROM messages WHERE done_at <= ?"

    def _checkpoint(self) -> None:
        """Nothing between purge batches: PostgreSQL's own checkpoints bound its WAL."""

    def _pending_by_domain(self, cutoffs: Sequence[float]) -> tuple[dict[str, list[int]], list[int], float | None]:
        """As Outbox._pending_by_domain, in two statements: PostgreSQL groups by hashing, so
        every recipient of every pending message is grouped by its domain (after the last @)
        in one pass, without an index on the recipients."""
        from mailctl.outbox.store import _PENDING_SQL, _add_counts, _domain

        younger = ", ".join("count(*) FILTER (WHERE created_at > ?)" for _ in cutoffs)

        def split(total: int, cum: Sequence[int]) -> list[int]:
            return [cum[0]] + [b - a for a, b in zip(cum, cum[1:])] + [total - cum[-1]]

        domains: dict[str, list[int]] = {}
        for key, total, *cum in self.conn.execute(
                f"SELECT lower(regexp_replace(j.value, '^.*@', '')), count(*), {younger} FROM messages"
                " CROSS JOIN LATERAL json_array_elements_text(messages.recipients::json) AS j(value)"
                f" WHERE {_PENDING_SQL} GROUP BY 1", list(cutoffs)):
            _add_counts(domains, _domain(key), split(int(total), [int(c) for c in cum]))
        total, oldest, *cum = self.conn.execute(
            f"SELECT count(*), min(created_at), {younger} FROM messages WHERE {_PENDING_SQL}", list(cutoffs)).fetchone()
        return domains, split(int(total), [int(c) for c in cum]), None if oldest is None else float(oldest)

    def reclaim_space(self, *, vacuum: bool | None = None, wait: float = 2.0) -> dict[str, Any]:
        """PostgreSQL's side of Outbox.reclaim_space: a plain VACUUM of the three tables, which
        runs beside reads and writes (it never takes the lock flushes need), makes the purged
        rows' space reusable and gives empty pages at the end of a table back to the file
        system; `vacuum=False` leaves it to autovacuum. Sizes: the tables with their indexes."""
        before = self._relation_bytes()
        method = "none"
        if vacuum is not False:
            self.conn.raw.execute("VACUUM messages, bodies, attempts")  # autocommit: VACUUM runs outside a transaction
            method = "vacuum"
        after = self._relation_bytes()
        return {"method": method, "before_bytes": before, "after_bytes": after, "freed_bytes": max(0, before - after),
                "free_bytes": None, "note": None}

    def _relation_bytes(self) -> int:
        (total,) = self.conn.raw.execute(
            "SELECT sum(pg_total_relation_size(t::regclass)) FROM unnest(ARRAY['messages', 'bodies', 'attempts']) AS t").fetchone()
        return int(total or 0)

    def _after_import(self) -> None:
        # rows came with their own ids: the identity sequences must go past them
        for table in ("messages", "attempts"):
            self.conn.raw.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT coalesce(max(id), 0) + 1 FROM {table}), false)")

    def describe_error(self, exc: BaseException) -> MailctlError | None:
        import psycopg

        if isinstance(exc, psycopg.Error):
            return pg_error(self.display, exc)
        return None

    _listening = False

    def wait_for_mail(self, timeout: float, *, since_id: int | None = None, since: float | None = None,
                      stop: Callable[[], bool] | None = None, poll: float = 1.0) -> bool:
        """Block until a message is queued, released or retried (LISTEN/NOTIFY), or until the
        next deferred message falls due, or `timeout` passes or `stop()` says so (looked at
        every 0.25 s); True if there is mail. With `since_id` / `since`, mail newer than that
        id, or due after that time, already there ends it at once. The connection keeps
        listening from the first call on, so nothing queued between two waits is missed;
        `poll` is SQLite's."""
        import time

        raw = self.conn.raw
        if not self._listening:
            raw.execute("LISTEN mailctl_outbox")
            self._listening = True
        # LISTEN first, then look: mail queued in between is either seen here or notified
        if (since_id is not None and self.latest_id() > since_id) or (since is not None and self.due_since(since)):
            self._drain_notifies()
            return True
        end = time.monotonic() + timeout
        due = self.next_due_at()
        if due is not None:  # a retry falls due before the timeout: wake up for it
            end = min(end, time.monotonic() + max(0.0, due - self.clock()) + 0.05)
        while True:
            if stop is not None and stop():
                return False
            left = end - time.monotonic()
            if left <= 0:
                return False
            if self._notified(min(left, 0.25)):
                self._drain_notifies()
                return True

    def _notified(self, timeout: float) -> bool:
        # the generator holds the connection's lock until closed: close it before anything else
        notifies = self.conn.raw.notifies(timeout=timeout, stop_after=1)
        try:
            return next(notifies, None) is not None
        finally:
            notifies.close()

    def _drain_notifies(self) -> None:
        """A burst of enqueues is one wake-up: drop the notifications already received."""
        notifies = self.conn.raw.notifies(timeout=0)
        try:
            for _notify in notifies:
                pass
        finally:
            notifies.close()

    def _notify_due(self) -> None:
        try:
            self.conn.raw.execute("SELECT pg_notify('mailctl_outbox', '')")
        except Exception:  # pragma: no cover - a wake-up call only
            pass

    def release(self, ids: Sequence[int] | None = None) -> list[int]:
        done = super().release(ids)
        if done:  # due now: wake the workers
            self._notify_due()
        return done

    def retry(self, ids: Sequence[int] | None = None) -> list[int]:
        done = super().retry(ids)
        if done:
            self._notify_due()
        return done


def _result_sql(r: Any, owner: str, now: float, renew_lease: float | None) -> tuple[str, list[Any]]:
    """One delivery result (backend.AttemptResult) as one statement: UPDATE the row (if the
    owner still holds it), INSERT the attempt, renew the owner's other leases; it returns how
    many rows were the owner's (0 or 1)."""
    import json

    from mailctl.outbox.store import FINISHED_STATES

    sets = ["state=%s", "attempts=attempts+1", "last_attempt_at=%s", "last_reply=%s", "last_server=%s",
            "updated_at=%s", "done_at=%s", "lease_owner=NULL", "lease_until=NULL"]
    params: list[Any] = [r.outcome, now, r.reply, r.server, now, now if r.outcome in FINISHED_STATES else None]
    if r.outcome == "deferred":
        sets.append("next_attempt_at=%s")
        params.append(r.next_attempt_at if r.next_attempt_at is not None else now)
    if r.recipients is not None:
        sets.append("recipients=%s")
        params.append(json.dumps(list(r.recipients)))
    if r.failed_recipients:  # merged into those refused before (the new reply wins)
        sets.append("failed_recipients=(coalesce(failed_recipients, '{}')::jsonb || %s::jsonb)::text")
        params.append(json.dumps(dict(r.failed_recipients)))
    sql = (f"WITH u AS (UPDATE messages SET {', '.join(sets)} WHERE id=%s AND state='sending' AND lease_owner=%s"
           " RETURNING id),"
           " a AS (INSERT INTO attempts (message, at, profile, server, outcome, reply, duration)"
           " VALUES (%s, %s, %s, %s, %s, %s, %s))")
    params += [r.claim.id, owner, r.claim.id, now, r.profile, r.server, r.outcome, r.reply, r.duration]
    if renew_lease:
        sql += ", r AS (UPDATE messages SET lease_until=%s WHERE lease_owner=%s AND state='sending' AND id <> %s)"
        params += [now + renew_lease, owner, r.claim.id]
    return sql + " SELECT count(*) FROM u", params
