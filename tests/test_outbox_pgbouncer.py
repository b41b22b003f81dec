"""The PostgreSQL outbox behind a real PgBouncer (tests/pgbouncer.py) in front of the throwaway
cluster (tests/pgserver.py).

A claim names its holder by the server session, and mailctl LISTENs and SETs session settings:
behind a pooler in transaction (or statement) pooling mode one client's transactions run on
server sessions that other clients share, so a live flush's claim could be reclaimed (sent
twice) the moment PgBouncer retires that server connection. Such a pooler is refused at open
(exit 78, the URL without its password, the fix), before anything is written; session pooling
works end to end (queue add, flush, LISTEN) and never loses a live claim."""

from __future__ import annotations

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


def test_session_pooling_dead_flush_claims_return_after_the_lease(pg_server, pg_url):
    """A flush that dies behind PgBouncer leaves its server session alive in the pool (PgBouncer
    resets it with DISCARD ALL and may hand it to the next client): its claims come back when
    their lease runs out, not at once as on a direct connection, and are logged interrupted."""
    from mailctl.outbox.pg import PgOutbox

    with pgbouncer.running_pgbouncer(pg_server, "session") as bouncer, PgOutbox(bouncer.url()) as other:
        qid = other.enqueue(RAW, "app@example.com", ["user@example.org"])
        dead = PgOutbox(bouncer.url())
        [claim] = dead.claim_batch("flush-dead", 10, 2.0)
        dead.close()  # the client is gone; its server session is not
        assert other.claim_batch("flush-next", 10, 300) == []
        time.sleep(2.2)
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
