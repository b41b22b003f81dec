"""The PostgreSQL outbox behind a real PgBouncer (tests/pgbouncer.py) in front of the throwaway
cluster (tests/pgserver.py).

A claim is held by a session-level advisory lock (pg.py, `_claim_lock`), and mailctl LISTENs
and SETs session settings: behind a pooler in transaction (or statement) pooling mode one
client's transactions run on server sessions that other clients share, so a live flush's claim
could be reclaimed (sent twice) the moment PgBouncer retires that server connection. Such a
pooler is refused at open (exit 78, the URL without its password, the fix), before anything is
written; session pooling works end to end (queue add, flush, LISTEN), never loses a live claim,
and gives a dead flush's claims back at once: PgBouncer's DISCARD ALL releases its lock though
the server session lives on. PgBouncer's own startup refusals come out as one line with the
pgbouncer.ini setting that fixes them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import pgbouncer  # noqa: E402
from outbox_smtp import RecordingHandler, SmtpServer, write_profiles  # noqa: E402

pytestmark = pytest.mark.skipif(pgbouncer.skip_reason() is not None, reason=pgbouncer.skip_reason() or "")

RAW = b"From: app@example.com\r\nTo: user@example.org\r\nSubject: pooled\r\n\r\nbody\r\n"
# retire idle server connections quickly: the moment a transaction-pooled claim goes wrong
RETIRE = "server_lifetime = 1\nserver_idle_timeout = 1"


@pytest.fixture(scope="module")
def session_bouncer(pg_server):
    with pgbouncer.running_pgbouncer(pg_server, "session", extra=RETIRE) as bouncer:
        yield bouncer


def _schema_exists(pg_server, name: str) -> bool:
    return pg_server.psql(f"SELECT count(*) FROM pg_namespace WHERE nspname = '{name}'") == "1\n"


def _warm(url: str, n: int) -> None:
    """Leave `n` idle server connections in the pool (several to choose from, as in production)."""
    import psycopg

    conns = [psycopg.connect(url, autocommit=True) for _ in range(n)]
    for c in conns:
        c.execute("BEGIN")
    for c in conns:
        c.execute("COMMIT")
        c.close()


def _wait(condition, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.05)
    return bool(condition())


def _lock_holders(pg_server, owner: str | None = None) -> set[int]:
    """Backends holding a claim lock (mailctl's advisory key space), or `owner`'s, seen directly."""
    from mailctl.outbox.pg import owner_key

    which = f"AND (classid::bigint << 32 | objid::bigint) = {owner_key(owner)}" if owner else ""
    out = pg_server.psql("SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1 AND granted"
                         f" AND classid::bigint >> 16 = 28003 {which}")
    return {int(line) for line in out.split()}


def _backends(pg_server) -> set[int]:
    return {int(line) for line in pg_server.psql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend'").split()}


def test_transaction_pooling_shares_server_sessions_between_live_clients(pg_server):
    """Why it is refused: through pool_mode = transaction two clients, both connected, run on
    one server session (PgBouncer hands out the server connection released last), so a
    session names no client, and a claim's holder could not tell a live flush from a dead one."""
    import psycopg

    with pgbouncer.running_pgbouncer(pg_server, "transaction") as bouncer:
        with psycopg.connect(bouncer.url(), autocommit=True) as a, psycopg.connect(bouncer.url(), autocommit=True) as b:
            (pid_a,) = a.execute("SELECT pg_backend_pid()").fetchone()
            (pid_b,) = b.execute("SELECT pg_backend_pid()").fetchone()
    assert pid_a == pid_b


@pytest.mark.parametrize("mode, extra, warm, unix", [
    ("transaction", "", 0, False),
    ("statement", "", 0, False),
    ("transaction", "", 0, True),  # PgBouncer's Unix socket
    # FIFO hand-out with several idle servers: the probe still sees the session change
    ("transaction", "server_round_robin = 1", 4, False),
])
def test_transaction_pooling_is_refused_at_open(pg_server, pg_url, monkeypatch, mode, extra, warm, unix):
    from mailctl.errors import ConfigError, ExitCode
    from mailctl.outbox.pg import PgOutbox

    monkeypatch.setenv("MAILCTL_PG_SCHEMA", "refused")
    with pgbouncer.running_pgbouncer(pg_server, mode, extra=extra) as bouncer:
        if warm:
            _warm(bouncer.url(), warm)
        url = bouncer.unix_url() if unix else bouncer.url()
        started = time.monotonic()
        with pytest.raises(ConfigError) as info:
            PgOutbox(url)
        assert time.monotonic() - started < 10
    err = info.value
    text = f"{err} {getattr(err, 'hint', '')}"
    assert err.exit_code == ExitCode.CONFIG == 78
    assert url.replace(f":{pg_server.password}", "") in str(err) and pg_server.password not in text
    assert "transaction pooling" in str(err) and "pool_mode = session" in text
    assert "\n" not in str(err)
    # refused before the migrations: nothing was created through the pooler
    assert not _schema_exists(pg_server, "refused")


def test_cli_refuses_transaction_pooling_in_one_line(cli, isolated_env, pg_server, pg_url, monkeypatch, tmp_path):
    with pgbouncer.running_pgbouncer(pg_server, "transaction") as bouncer, SmtpServer() as srv:
        write_profiles(isolated_env, {"relay": srv}, default="relay")
        monkeypatch.setenv("MAILCTL_OUTBOX", bouncer.url(password=False))
        monkeypatch.setenv("PGPASSWORD", pg_server.password)
        r = cli("queue", "add", input=RAW)
        flush = cli("queue", "flush", "--json")
    assert r.exit_code == 78 and flush.exit_code == 78, r.output + flush.output
    assert r.exception is None and "Traceback" not in r.output
    assert "transaction pooling" in r.output and "pool_mode = session" in r.output
    assert bouncer.url(password=False) in r.output and pg_server.password not in r.output + flush.output


def test_direct_connections_are_known_without_a_probe(pg_server, pg_url, session_bouncer):
    """A direct connection (TCP or the Unix socket) is recognised from the server's view of its
    peer, so it pays no second connection; through PgBouncer that view is PgBouncer's."""
    from mailctl.outbox.pg import PgOutbox, _direct

    unix = f"postgresql://{pg_server.user}@/{pg_server.dbname}?host={pg_server.socket_dir}&port={pg_server.port}"
    for url, direct in ((pg_url, True), (unix, True), (session_bouncer.url(), False), (session_bouncer.unix_url(), False)):
        with PgOutbox(url) as box:
            assert _direct(box.conn.raw, *box._peer) is direct, url


def test_an_unprivileged_user_opens_directly_without_a_probe(pg_server, pg_url):
    """The check reads nothing a plain database user may not (no pg_read_all_settings)."""
    import secrets

    from mailctl.outbox.pg import PgOutbox, _direct

    password = secrets.token_urlsafe(12)
    pg_server.psql(f"DROP ROLE IF EXISTS plain_user; CREATE ROLE plain_user LOGIN PASSWORD '{password}';"
                   " GRANT CREATE ON DATABASE mailctl TO plain_user")
    tcp = f"postgresql://plain_user:{password}@{pg_server.host}:{pg_server.port}/{pg_server.dbname}"
    unix = f"postgresql://plain_user@/{pg_server.dbname}?host={pg_server.socket_dir}&port={pg_server.port}"
    try:
        for url in (tcp, unix):
            with PgOutbox(url) as box:
                assert _direct(box.conn.raw, *box._peer), url
                assert box.enqueue(RAW, "app@example.com", ["user@example.org"]) > 0
    finally:
        pg_server.psql("DROP OWNED BY plain_user CASCADE; DROP ROLE plain_user")


def test_session_pooling_keeps_the_session_settings(pg_url, session_bouncer, monkeypatch):
    """The settings are SET after connecting (PgBouncer refuses the `options` startup parameter)."""
    from mailctl.outbox.pg import PgOutbox

    monkeypatch.setenv("MAILCTL_PG_SCHEMA", "pooled_settings")
    with PgOutbox(session_bouncer.url(), timeout=7) as box:
        raw = box.conn.raw
        for _ in range(8):  # past psycopg's prepare threshold: prepared statements, still one server session
            assert raw.execute("SELECT current_setting('search_path'), current_setting('lock_timeout'),"
                               " current_setting('synchronous_commit')").fetchone() == ("pooled_settings", "7s", "off")
    with PgOutbox(session_bouncer.url(), synchronous="FULL") as box:
        assert box.conn.raw.execute("SHOW synchronous_commit").fetchone() == ("on",)


def test_session_pooling_queue_add_and_flush(cli, isolated_env, pg_server, pg_url, session_bouncer, monkeypatch, tmp_path):
    from mailctl.outbox.pg import PgOutbox

    handler = RecordingHandler()
    with SmtpServer(handler) as srv:
        write_profiles(isolated_env, {"relay": srv}, default="relay")
        monkeypatch.setenv("MAILCTL_OUTBOX", session_bouncer.url(password=False))
        monkeypatch.setenv("PGPASSWORD", pg_server.password)
        added = cli("queue", "add", input=RAW)
        assert added.exit_code == 0, added.output
        qid = int(added.stdout.strip())
        flushed = cli("queue", "flush", "--json")
        assert flushed.exit_code == 0, flushed.output
        shown = cli("queue", "show", str(qid), "--json")
    assert len(handler.messages) == 1 and b"Subject: pooled" in handler.messages[0]["data"]
    assert handler.messages[0]["to"] == ["user@example.org"]
    assert '"sent"' in shown.stdout
    assert pg_server.password not in added.output + flushed.output + shown.output
    with PgOutbox(pg_url) as box:  # the same rows, seen directly
        assert box.count_by_state()["sent"] == 1
        assert [row[0] for row in box.conn.raw.execute("SELECT id FROM messages")] == [qid]


def test_session_pooling_claim_and_record_survive_server_retirement(pg_url, session_bouncer):
    """The transaction-pooling failure, turned round: a live flush's claim outlives PgBouncer's
    retiring of idle server connections (server_lifetime = 1): no other flush takes it, and its
    result is accepted. (Through pool_mode = transaction this same sequence let flush B take
    flush A's live claim: the message went out twice.)"""
    from mailctl.outbox.pg import PgOutbox

    with PgOutbox(session_bouncer.url()) as a, PgOutbox(session_bouncer.url()) as b:
        assert a._holder != b._holder  # two clients, two server sessions
        qid = a.enqueue(RAW, "app@example.com", ["user@example.org"])
        [claim] = a.claim_batch("flush-a", 10, 300)
        time.sleep(2.5)  # "delivering"; PgBouncer's janitor retires idle servers meanwhile
        assert b.claim_batch("flush-b", 10, 300) == []
        assert a.record_attempt(claim, "flush-a", "sent", reply="250 ok") is True
        outcomes = [o for (o,) in a.conn.raw.execute("SELECT outcome FROM attempts WHERE message = %s", [qid])]
    assert (claim.id, outcomes) == (qid, ["sent"])


def test_session_pooling_concurrent_flushes_take_disjoint_rows(pg_url, session_bouncer):
    from mailctl.outbox.pg import PgOutbox

    with PgOutbox(session_bouncer.url()) as box:
        ids = box.enqueue_many([(RAW, "app@example.com", [f"u{i}@example.org"]) for i in range(40)])
    taken: dict[str, list[int]] = {}

    def flush(owner: str) -> None:
        with PgOutbox(session_bouncer.url()) as box:
            mine = taken.setdefault(owner, [])
            while claims := box.claim_batch(owner, 3, 300):
                for c in claims:
                    assert box.record_attempt(c, owner, "sent", reply="250 ok")
                    mine.append(c.id)

    threads = [threading.Thread(target=flush, args=(f"flush-{n}",)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    every = [i for owner in taken.values() for i in owner]
    assert sorted(every) == sorted(ids)  # each message exactly once


def test_session_pooling_closed_client_claims_return_at_once(pg_server, pg_url):
    """A client that goes with rows still claimed, behind PgBouncer: its server session stays in
    the pool (pg_stat_activity still lists it), but PgBouncer's DISCARD ALL released its claim
    lock, so the next flush takes the rows at once (lease 600 s), logged interrupted."""
    from mailctl.outbox.pg import PgOutbox

    with pgbouncer.running_pgbouncer(pg_server, "session") as bouncer, PgOutbox(bouncer.url()) as other:
        qid = other.enqueue(RAW, "app@example.com", ["user@example.org"])
        dead = PgOutbox(bouncer.url())
        (backend,) = dead.conn.raw.execute("SELECT pg_backend_pid()").fetchone()
        [claim] = dead.claim_batch("flush-dead", 10, 600)
        assert other.claim_batch("flush-next", 10, 300) == []  # alive: its lock is held
        dead.close()  # the client is gone; its server session is not
        assert _wait(lambda: not _lock_holders(pg_server), 10)
        assert backend in _backends(pg_server)
        assert [c.id for c in other.claim_batch("flush-next", 10, 300)] == [claim.id] == [qid]
        outcomes = [o for (o,) in other.conn.raw.execute("SELECT outcome FROM attempts WHERE message = %s", [qid])]
    assert outcomes == ["interrupted"]


def test_session_pooling_listen_wakes_a_waiting_worker(pg_url, session_bouncer):
    from mailctl.outbox.pg import PgOutbox

    with PgOutbox(session_bouncer.url()) as worker, PgOutbox(session_bouncer.url()) as app:
        assert worker.wait_for_mail(0.2) is False  # now listening
        woke: list[float] = []

        def wait() -> None:
            started = time.monotonic()
            if worker.wait_for_mail(20):
                woke.append(time.monotonic() - started)

        t = threading.Thread(target=wait)
        t.start()
        time.sleep(0.3)
        app.enqueue(RAW, "app@example.com", ["user@example.org"])
        t.join(25)
    assert woke and woke[0] < 5  # the NOTIFY, not the 20 s timeout


# --- a flush process killed behind PgBouncer; live claims; mixed versions ---------------------------
N = 12


class SlowHandler(RecordingHandler):
    """0.3 s a message: the first flush is surely killed half-way. `started` counts the DATA
    commands begun: while the server sits on one, the flush waits for SMTP, not the database
    (a client that goes with a query in flight makes PgBouncer close the server session)."""

    started = 0

    async def handle_DATA(self, server, session, envelope):
        import asyncio

        self.started += 1
        await asyncio.sleep(0.3)
        return await super().handle_DATA(server, session, envelope)


def _message(i: int) -> bytes:
    return (f"From: app@example.com\r\nTo: user@example.org\r\nSubject: m{i}\r\n"
            f"Message-ID: <pooled{i}@test.example>\r\n\r\nbody {i}\r\n").encode()


def _flush_env(home: Path, url: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILCTL_")}
    env.update(MAILCTL_HOME=str(home), MAILCTL_OUTBOX=url, MAILCTL_PG_SCHEMA=os.environ["MAILCTL_PG_SCHEMA"], NO_COLOR="1")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_session_pooling_sigkilled_flush_gives_its_claims_back_at_once(pg_server, pg_url, isolated_env):
    """`mailctl queue flush` through PgBouncer (session pooling), SIGKILLed half-way with its
    claims (lease 600 s): PgBouncer keeps its server session (still in pg_stat_activity, so the
    session check of earlier versions would wait the lease out) but resets it, releasing the
    claim lock; the next flush through PgBouncer takes the rows at once, logged interrupted."""
    from mailctl.outbox.pg import PgOutbox

    handler = SlowHandler()
    with pgbouncer.running_pgbouncer(pg_server, "session") as bouncer, SmtpServer(handler) as server:
        write_profiles(isolated_env, {"relay": server}, default="relay")
        with PgOutbox(bouncer.url()) as box:
            box.enqueue_many([(_message(i), "app@example.com", ["user@example.org"]) for i in range(N)])
        before = _lock_holders(pg_server)
        env = _flush_env(isolated_env, bouncer.url(password=False))
        env["PGPASSWORD"] = pg_server.password
        cmd = [sys.executable, "-m", "mailctl", "queue", "flush"]  # the default lease: 600 s
        first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            assert _wait(lambda: handler.started >= 3, 30), "the first flush sent nothing"
            [backend] = _lock_holders(pg_server) - before  # the killed flush's server session
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait()
        assert handler.count < N, "the first flush finished before it could be killed"
        assert _wait(lambda: backend not in _lock_holders(pg_server), 10)  # DISCARD ALL
        assert backend in _backends(pg_server)  # ... on a server session that lives on
        start = time.monotonic()
        second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        took = time.monotonic() - start
    assert second.returncode == 0, second.stdout + second.stderr
    assert took < 60, f"the second flush waited for the lease ({took:.1f} s)"
    with PgOutbox(pg_url) as box:
        counts = box.count_by_state()
        interrupted = [e for i in range(1, N + 1) for e in box.get(i).attempt_log if e["outcome"] == "interrupted"]
    assert counts["sent"] == N and counts["sending"] == 0, counts
    assert all(handler.by_message_id[f"<pooled{i}@test.example>"] >= 1 for i in range(N))
    assert sum(c - 1 for c in handler.by_message_id.values() if c > 1) <= 1  # at most the one in flight
    assert interrupted, "the killed flush's claims were taken back as interrupted"
    assert pg_server.password not in second.stdout + second.stderr


def test_session_pooling_a_live_flush_keeps_its_claims_while_others_come_and_go(pg_server, pg_url, session_bouncer):
    """Other clients connect, claim and leave through the same pool (PgBouncer resets their
    server connections and hands them on; server_lifetime = 1 retires idle ones), one is
    SIGKILLed: the live flush's claims are never taken, and its results are accepted."""
    from mailctl.outbox.pg import PgOutbox

    url = session_bouncer.url()
    with PgOutbox(url) as live:
        ids = live.enqueue_many([(RAW, "app@example.com", [f"u{i}@example.org"]) for i in range(5)])
        claims = live.claim_batch("flush-live", 10, 300)
        assert sorted(c.id for c in claims) == sorted(ids)
        script = ("import sys, time; from mailctl.outbox.pg import PgOutbox; b = PgOutbox(sys.argv[1]);"
                  " b.claim_batch('flush-doomed', 10, 300); print('ready', flush=True); time.sleep(60)")
        doomed = subprocess.Popen([sys.executable, "-c", script, url], stdout=subprocess.PIPE, text=True,
                                  env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")})
        try:
            assert doomed.stdout.readline().strip() == "ready"
        finally:
            doomed.send_signal(signal.SIGKILL)
            doomed.wait()
        for k in range(6):
            with PgOutbox(url) as other:
                assert other.claim_batch(f"other-{k}", 10, 300) == []
        time.sleep(2.2)  # the janitor retires idle server connections meanwhile
        with PgOutbox(url) as other:
            assert other.claim_batch("flush-other", 10, 300) == []
        assert _lock_holders(pg_server, "flush-live")
        assert all(live.record_attempt(c, "flush-live", "sent", reply="250 ok") for c in claims)
        assert live.count_by_state()["sent"] == 5


# The claim condition of mailctl before claim locks, verbatim: what a host not upgraded yet runs.
_EARLIER_DUE = ("SELECT id FROM messages WHERE state='sending' AND (lease_until < %s OR (lease_holder IS NOT NULL"
                " AND lease_holder NOT IN (SELECT pid::text || ':' || floor(extract(epoch FROM backend_start) * 1000000)"
                "::bigint::text FROM pg_stat_activity WHERE backend_start IS NOT NULL)))")


def test_mixed_versions_during_an_upgrade(pg_server, pg_url):
    """Both directions of a rolling upgrade. A claim written the earlier way (lease_holder: a
    session id) is judged by pg_stat_activity: kept while that session lives, free at once when
    it ends. A claim of this version (no lease_holder) is never taken early by an earlier host:
    its condition waits for the lease (never a live claim stolen, mail sent twice)."""
    import psycopg

    from mailctl.outbox.pg import PgOutbox

    with PgOutbox(pg_url) as box, psycopg.connect(pg_url, autocommit=True) as earlier:
        earlier.execute(f"SET search_path TO {box.schema}")
        old_ids = box.enqueue_many([(RAW, "app@example.com", [f"o{i}@example.org"]) for i in range(2)])
        (session,) = earlier.execute("SELECT pid::text || ':' || floor(extract(epoch FROM backend_start) * 1000000)"
                                     "::bigint::text FROM pg_stat_activity WHERE pid = pg_backend_pid()").fetchone()
        earlier.execute("UPDATE messages SET state='sending', lease_owner='earlier', lease_until=%s, lease_holder=%s"
                        " WHERE id = ANY(%s)", [time.time() + 6000, session, old_ids])
        assert box.claim_batch("new", 10, 600) == []  # the earlier host's session lives
        new = PgOutbox(pg_url)
        new_ids = box.enqueue_many([(RAW, "app@example.com", [f"n{i}@example.org"]) for i in range(2)])
        assert sorted(c.id for c in new.claim_batch("new-live", 10, 600)) == sorted(new_ids)
        assert earlier.execute(_EARLIER_DUE, [time.time()]).fetchall() == []  # live: not taken
        new.close()  # this version's flush dies: an earlier host still waits for the lease ...
        assert earlier.execute(_EARLIER_DUE, [time.time()]).fetchall() == []
        assert sorted(r[0] for r in earlier.execute(_EARLIER_DUE, [time.time() + 601])) == sorted(new_ids)
        earlier.close()  # ... and the earlier host dies: its claims are free at once here
        back = box.claim_batch("next", 10, 600)
    assert sorted(c.id for c in back) == sorted(old_ids + new_ids) and all(c.reclaimed for c in back)


def test_claim_locks_are_one_per_owner_and_let_go_when_its_claims_are_done(pg_server, pg_url):
    """A worker has a new lease owner every round: its session holds one lock per owner with
    claims left, not one per round ever run; a later claim for an owner pays no lock again."""
    from mailctl.outbox.pg import PgOutbox, owner_key

    with PgOutbox(pg_url) as box:
        (me,) = box.conn.raw.execute("SELECT pg_backend_pid()").fetchone()
        box.enqueue_many([(RAW, "app@example.com", [f"r{i}@example.org"]) for i in range(4)])
        [a] = box.claim_batch("round-1", 1, 600)
        assert _lock_holders(pg_server, "round-1") == {me}
        [b] = box.claim_batch("round-1", 1, 600)  # the same owner: the lock is held once
        assert box.conn.raw.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = %s",
                                    [me]).fetchone() == (1,)
        assert box.record_attempt(a, "round-1", "sent") and box.record_attempt(b, "round-1", "sent")
        [c] = box.claim_batch("round-2", 1, 600)  # round-1 has no claim left: let go
        assert _lock_holders(pg_server, "round-1") == set() and _lock_holders(pg_server, "round-2") == {me}
        [d] = box.claim_batch("round-3", 1, 600)  # round-2 still holds c: kept
        assert _lock_holders(pg_server, "round-2") == {me} == _lock_holders(pg_server, "round-3")
        assert (c.id, d.id) != (a.id, b.id)
        (key,) = box.conn.raw.execute(
            "SELECT (classid::bigint << 32) | objid::bigint FROM pg_locks WHERE locktype = 'advisory' AND pid = %s"
            " ORDER BY 1 LIMIT 1", [me]).fetchone()
        assert key in (owner_key("round-2"), owner_key("round-3")) and key >> 48 == 0x6D63


def test_an_application_lock_on_the_key_falls_back_to_the_session_holder(pg_server, pg_url):
    """The key locked exclusively by someone else (an application's own advisory lock in
    mailctl's key space): the claim names this session as its holder instead, judged by
    pg_stat_activity: still never taken while this session lives."""
    import psycopg

    from mailctl.outbox.pg import PgOutbox, owner_key

    with PgOutbox(pg_url) as box, PgOutbox(pg_url) as other, psycopg.connect(pg_url, autocommit=True) as app:
        app.execute("SELECT pg_advisory_lock(%s)", [owner_key("flush-x")])
        qid = box.enqueue(RAW, "app@example.com", ["user@example.org"])
        [claim] = box.claim_batch("flush-x", 10, 600)
        (holder,) = box.conn.raw.execute("SELECT lease_holder FROM messages WHERE id = %s", [qid]).fetchone()
        assert holder == box.holder
        assert other.claim_batch("other", 10, 600) == []
        assert box.record_attempt(claim, "flush-x", "sent")


# --- PgBouncer's own startup refusals: one line, the pgbouncer.ini setting that fixes them -------
def _refusal(url: str):
    from mailctl.errors import MailctlError
    from mailctl.outbox.pg import PgOutbox

    with pytest.raises(MailctlError) as info:
        PgOutbox(url, timeout=8)
    err = info.value
    text = f"{err} {err.hint or ''}"
    assert "\n" not in text and "Traceback" not in text
    return err, text


def test_pgbouncer_refusals_name_the_setting(pg_server):
    """Produced by the real PgBouncer: an unknown database name, a wrong password (PgBouncer
    checks it against its auth_file), max_client_conn reached, PostgreSQL unreachable from
    PgBouncer (query_wait_timeout), and PgBouncer's own login refused by PostgreSQL."""
    import socket

    import psycopg

    from mailctl.errors import ExitCode

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    databases = "\n".join([pgbouncer.database_line(pg_server),
                           pgbouncer.database_line(pg_server, name="unreachable", host="127.0.0.1", port=dead),
                           pgbouncer.database_line(pg_server, name="ghost", user="ghost")])
    extra = "max_client_conn = 3\nquery_wait_timeout = 2\nserver_connect_timeout = 1\nserver_login_retry = 1"
    with pgbouncer.running_pgbouncer(pg_server, "session", databases=databases, extra=extra) as b:
        base = b.url().rsplit("/", 1)[0]
        found = {
            "no such database": _refusal(f"{base}/nosuchdb"),
            "password": _refusal(b.url().replace(pg_server.password, "wrong-password-xyz")),
            "unreachable": _refusal(f"{base}/unreachable"),
            "ghost": _refusal(f"{base}/ghost"),
        }
        held = [psycopg.connect(b.url()) for _ in range(3)]
        try:
            found["max_client_conn"] = _refusal(b.url())
        finally:
            for c in held:
                c.close()
    (err, text) = found["no such database"]
    assert "no such database" in str(err) and "[databases]" in text and err.exit_code == ExitCode.CONFIG
    (err, text) = found["password"]
    assert "auth_file" in text and err.exit_code == ExitCode.CONFIG and "wrong-password-xyz" not in text
    (err, text) = found["unreachable"]
    assert "query_wait_timeout" in str(err) and "[databases]" in text and err.exit_code == ExitCode.UNAVAILABLE
    (err, text) = found["ghost"]
    assert 'role "ghost"' in str(err) and "[databases]" in text and err.exit_code == ExitCode.CONFIG
    (err, text) = found["max_client_conn"]
    assert "max_client_conn" in str(err) and "raise max_client_conn" in text and err.exit_code == ExitCode.UNAVAILABLE
    for err, text in found.values():
        assert pg_server.password not in text and "host and port in the URL" not in text


@pytest.mark.parametrize("message, exit_code, fix", [
    # newer PgBouncer versions' words (the installed 1.18 passes the server's error through instead)
    ('server login has been failing, cached error: password authentication failed for user "pgbouncer"'
     " (server_login_retry)", 69, "[databases] entry"),
    ("server login has been failing, try again later (server_login_retry)", 69, "[databases] entry"),
    ("pgbouncer cannot connect to server", 69, "[databases] entry"),
    ("client connections exceeded (max_db_client_connections)", 69, "raise it in pgbouncer.ini"),
    ("database does not allow connections: mailctl", 69, "ENABLE"),
    ("password authentication failed", 78, "auth_file"),  # PgBouncer's (md5): no "for user"
    ('"trust" authentication failed', 78, "auth_file"),
    ("unsupported startup parameter: options", 78, "ignore_startup_parameters"),
    ("bouncer config error", 78, "auth_type"),
    # PostgreSQL's own, for contrast: the user and password, not PgBouncer's files first
    ('password authentication failed for user "mailctl"', 78, "PGPASSWORD"),
    ("sorry, too many clients already", 69, "refused the connection"),
])
def test_pooler_refusals_on_the_wire(message, exit_code, fix):
    with pgbouncer.refusing_server(message) as url:
        err, text = _refusal(url)
    assert int(err.exit_code) == exit_code and fix in text, text
    assert message in str(err) and "secret-not-shown" not in text and "host and port in the URL" not in text


def test_flushes_under_different_database_roles_never_take_each_others_live_claims(pg_server, pg_url):
    """pg_stat_activity hides another role's backend_start from a plain user, so the session
    check of earlier versions took a live flush of another role for dead (mail sent twice);
    pg_locks shows every session's locks to every user: the claim lock is seen."""
    import secrets

    from mailctl.outbox.pg import PgOutbox

    password = secrets.token_urlsafe(12)
    with PgOutbox(pg_url) as owner:
        schema = owner.schema
        qid = owner.enqueue(RAW, "app@example.com", ["user@example.org"])
    pg_server.psql(f"DROP ROLE IF EXISTS other_role; CREATE ROLE other_role LOGIN PASSWORD '{password}';"
                   f" GRANT CREATE ON DATABASE {pg_server.dbname} TO other_role; GRANT USAGE, CREATE ON SCHEMA {schema} TO other_role;"
                   f" GRANT ALL ON ALL TABLES IN SCHEMA {schema} TO other_role;"
                   f" GRANT ALL ON ALL SEQUENCES IN SCHEMA {schema} TO other_role")
    other_url = f"postgresql://other_role:{password}@{pg_server.host}:{pg_server.port}/{pg_server.dbname}"
    try:
        with PgOutbox(pg_url) as live, PgOutbox(other_url) as other:
            hidden = other.conn.raw.execute("SELECT backend_start FROM pg_stat_activity WHERE pid = %s",
                                            [int(live.holder.split(":")[0])]).fetchone()
            [claim] = live.claim_batch("flush-role-a", 10, 600)
            assert hidden == (None,)  # what the earlier check could not see
            assert other.claim_batch("flush-role-b", 10, 600) == []
            assert live.record_attempt(claim, "flush-role-a", "sent") and claim.id == qid
    finally:
        pg_server.psql("DROP OWNED BY other_role CASCADE; DROP ROLE other_role")
