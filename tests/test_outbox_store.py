"""The outbox store on real SQLite files: schema and migrations, enqueue, claims and leases,
management operations, purge and stats."""

from __future__ import annotations

import json
import sqlite3
from email.message import EmailMessage

import pytest

from mailctl.errors import ConfigError, NotFoundError, TemporaryFailure, ValidationError
from mailctl.outbox import ClaimedMessage, Outbox, enqueue_message
from mailctl.outbox.schema import MIGRATIONS


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def box(outbox_factory, clock):
    """This file's tests run on both backends (SQLite, PostgreSQL): the storage contract."""
    b = outbox_factory(clock=clock)
    yield b
    b.close()


RAW = b"From: a@example.com\r\nTo: b@example.org\r\nSubject: hello\r\nMessage-ID: <m1@example.com>\r\n\r\nbody\r\n"


def test_blank_database_gets_every_migration_in_order(tmp_path):
    path = tmp_path / "new.sqlite3"
    Outbox(path).close()
    conn = sqlite3.connect(path)
    names = [r[0] for r in conn.execute("SELECT name FROM migrations ORDER BY rowid")]
    assert names == [name for name, _ in MIGRATIONS]
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    cols = {r[1] for r in conn.execute("PRAGMA table_info(messages)")}
    assert {r[1] for r in conn.execute("PRAGMA table_info(bodies)")} == {"message", "raw"}
    assert {"sender", "recipients", "profile", "state", "attempts", "next_attempt_at", "last_reply",
            "lease_until", "lease_owner"} <= cols
    assert {r[1] for r in conn.execute("PRAGMA table_info(attempts)")} >= {"at", "server", "reply", "duration", "outcome"}
    # reopening applies nothing twice
    Outbox(path).close()
    assert conn.execute("SELECT count(*) FROM migrations").fetchone()[0] == len(MIGRATIONS)


def test_file_is_private(tmp_path):
    path = tmp_path / "sub" / "o.sqlite3"
    Outbox(path).close()
    assert path.stat().st_mode & 0o077 == 0


def test_migration_names_are_unique_and_append_only():
    names = [n for n, _ in MIGRATIONS]
    assert len(names) == len(set(names))
    assert names == sorted(names)


def test_enqueue_keeps_bytes_envelope_and_headers(box):
    i = box.enqueue(RAW, "a@example.com", ["b@example.org", "c@example.net"], "company")
    info = box.get(i, with_raw=True)
    assert info.raw == RAW
    assert info.state == "queued" and info.attempts == 0
    assert info.recipients == ["b@example.org", "c@example.net"]
    assert info.profile == "company" and info.message_id == "<m1@example.com>" and info.subject == "hello"


def test_enqueue_normalises_bare_lf(box):
    i = box.enqueue(b"Subject: x\n\nline1\nline2\n", "a@example.com", ["b@example.org"])
    assert box.get(i, with_raw=True).raw == b"Subject: x\r\n\r\nline1\r\nline2\r\n"


@pytest.mark.parametrize(
    "raw, sender, rcpts",
    [(b"", "a@x.org", ["b@y.org"]), (RAW, "a@x.org", []), (RAW, "a@x.org\r\nRCPT TO:<evil@x>", ["b@y.org"]),
     (RAW, "a@x.org", ["b@y.org\n"])],
)
def test_enqueue_refuses_bad_input(box, raw, sender, rcpts):
    with pytest.raises(ValidationError):
        box.enqueue(raw, sender, rcpts)


def test_enqueue_message_takes_envelope_from_headers_and_strips_bcc(tmp_path):
    msg = EmailMessage()
    msg["From"] = "App <app@example.com>"
    msg["To"] = "x@example.org"
    msg["Cc"] = "y@example.net"
    msg["Bcc"] = "secret@example.com"
    msg["Subject"] = "s"
    msg.set_content("hi")
    path = tmp_path / "o.sqlite3"
    i = enqueue_message(msg, "company", path=path)
    with Outbox(path) as box:
        info = box.get(i, with_raw=True)
    assert info.sender == "app@example.com"
    assert info.recipients == ["x@example.org", "y@example.net", "secret@example.com"]
    assert b"secret@example.com" not in info.raw and b"Bcc" not in info.raw
    assert b"\r\n" in info.raw


def test_claims_are_exclusive_and_leases_expire(tmp_path, clock):
    path = tmp_path / "o.sqlite3"
    a = Outbox(path, clock=clock)
    b = Outbox(path, clock=clock)
    ids = [a.enqueue(RAW, "a@x.org", ["b@y.org"]) for _ in range(5)]
    first = a.claim_batch("A", 3, lease_seconds=60)
    second = b.claim_batch("B", 10, lease_seconds=60)
    assert [c.id for c in first] == ids[:3]
    assert [c.id for c in second] == ids[3:]
    assert b.claim_batch("B", 10, lease_seconds=60) == []
    clock.t += 61  # A died: its rows come back after the lease, marked as reclaimed
    again = b.claim_batch("B", 10, lease_seconds=60)
    assert sorted(c.id for c in again) == sorted(ids)
    assert all(c.reclaimed for c in again if c.id in ids[:3])
    log = b.get(ids[0]).attempt_log
    assert log[-1]["outcome"] == "interrupted"
    # A's late result for a row B now owns is refused: at once (a journal insert, which checks),
    # or when folded (a line in A's side file, which cannot): the row stays B's either way
    late = a.record_attempt(first[0], "A", "sent", reply="250 late")
    assert late is (a._results is not None)
    assert b.get(first[0].id).state == "sending"
    assert b.record_attempt(again[0], "B", "sent", reply="250 ok") is True
    a.close()
    b.close()


def test_release_claims_gives_untried_rows_back(box):
    i = box.enqueue(RAW, "a@x.org", ["b@y.org"])
    box.claim_batch("A", 5, 60)
    assert box.release_claims("A") == 1
    assert box.get(i).state == "queued"


def test_deferred_not_due_until_next_attempt(box, clock):
    i = box.enqueue(RAW, "a@x.org", ["b@y.org"])
    [c] = box.claim_batch("A", 1, 60)
    box.record_attempt(c, "A", "deferred", reply="451 later", next_attempt_at=clock.t + 300)
    assert box.claim_batch("A", 1, 60) == []
    clock.t += 300
    [c] = box.claim_batch("A", 1, 60)
    assert c.id == i and c.attempts == 1


def test_hold_release_retry_delete(box, clock):
    a = box.enqueue(RAW, "a@x.org", ["b@y.org"])
    b = box.enqueue(RAW, "a@x.org", ["b@y.org"])
    assert box.hold() == [a, b]
    assert box.claim_batch("A", 10, 60) == []  # held mail is skipped
    with pytest.raises(ValidationError, match="held"):
        box.retry([a])
    assert box.release([a]) == [a]
    [c] = box.claim_batch("A", 10, 60)
    box.record_attempt(c, "A", "failed", reply="550 no")
    assert box.retry([a]) == [a] and box.get(a).state == "queued"
    assert box.delete([b]) == [b]
    with pytest.raises(NotFoundError):
        box.get(b)
    with pytest.raises(NotFoundError):
        box.hold([999])


def test_delete_refuses_a_message_being_sent(box):
    i = box.enqueue(RAW, "a@x.org", ["b@y.org"])
    box.claim_batch("A", 1, 60)
    with pytest.raises(ValidationError, match="being sent"):
        box.delete([i])
    assert box.delete() == []


def test_purge_removes_only_old_finished_mail(box, clock):
    old = box.enqueue(RAW, "a@x.org", ["b@y.org"])
    pending = box.enqueue(RAW, "a@x.org", ["b@y.org"])
    [c] = box.claim_batch("A", 1, 60, ids=[old])
    box.record_attempt(c, "A", "sent", reply="250 ok")
    clock.t += 31 * 86400
    recent = box.enqueue(RAW, "a@x.org", ["b@y.org"])
    [c] = box.claim_batch("A", 1, 60, ids=[recent])
    box.record_attempt(c, "A", "failed", reply="550 no")
    assert box.purge(30 * 86400) == 1
    assert {m.id for m in box.list()} == {pending, recent}
    assert box.purge(0, ["sent"]) == 0
    with pytest.raises(ValidationError):
        box.purge(0, ["queued"])
    # the attempt log goes with the message
    assert box.conn.execute("SELECT count(*) FROM attempts WHERE message=?", (old,)).fetchone()[0] == 0


def test_expire_overdue_only_touches_deferred(box, clock):
    d = box.enqueue(RAW, "a@x.org", ["b@y.org"])
    q = box.enqueue(RAW, "a@x.org", ["b@y.org"])
    [c] = box.claim_batch("A", 1, 60, ids=[d])
    box.record_attempt(c, "A", "deferred", reply="451", next_attempt_at=clock.t + 300)
    clock.t += 3 * 86400
    assert box.expire_overdue(2 * 86400) == [d]
    assert box.get(d).state == "expired" and box.get(q).state == "queued"


def test_stats_like_qshape(box, clock):
    box.enqueue(RAW, "a@x.org", ["u1@example.org", "u2@example.org"])
    clock.t += 30 * 60
    box.enqueue(RAW, "a@x.org", ["u@other.net"])
    s = box.stats()
    assert s["by_state"]["queued"] == 2 and s["pending"] == 2
    dom = {d["domain"]: d for d in s["by_domain"]}
    assert dom["example.org"]["total"] == 2 and dom["example.org"]["by_age"]["40m"] == 2
    assert dom["other.net"]["by_age"]["5m"] == 1
    assert s["by_domain"][0]["domain"] == "example.org"
    json.dumps(s)


def test_list_filters_by_state(box):
    a = box.enqueue(RAW, "a@x.org", ["b@y.org"])
    box.enqueue(RAW, "a@x.org", ["b@y.org"], hold=True)
    assert [m.id for m in box.list(states=["queued"])] == [a]
    with pytest.raises(ValidationError):
        list(box.list(states=["bogus"]))


def _synchronous(box: Outbox) -> int:
    return box.conn.execute("PRAGMA synchronous").fetchone()[0]


def test_durability_modes(tmp_path):
    # NORMAL (1) for the API's long-lived Outbox; FULL (2) on request and for one-shot enqueues
    with Outbox(tmp_path / "a.sqlite3") as box:
        assert _synchronous(box) == 1
        assert box.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with Outbox(tmp_path / "a.sqlite3", synchronous="full") as box:
        assert _synchronous(box) == 2
    with pytest.raises(Exception) as err:
        Outbox(tmp_path / "a.sqlite3", synchronous="sometimes")
    assert "synchronous" in str(err.value)


def test_a_file_that_is_not_an_outbox_is_a_config_error(tmp_path):
    bogus = tmp_path / "notes.txt"
    bogus.write_text("these are not the rows you are looking for\n" * 200)
    before = bogus.read_bytes()
    with pytest.raises(ConfigError) as err:
        Outbox(bogus)
    assert str(bogus) in err.value.message and int(err.value.exit_code) == 78
    assert "MAILCTL_OUTBOX" in err.value.hint
    assert bogus.read_bytes() == before  # untouched


def test_a_locked_outbox_is_a_temporary_failure(tmp_path):
    path = tmp_path / "o.sqlite3"
    Outbox(path).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process sits on the write lock
    try:
        with pytest.raises(TemporaryFailure) as err:
            with Outbox(path, timeout=0.2) as box:
                box.enqueue(RAW, "a@example.com", ["b@example.org"])
        assert str(path) in err.value.message and "locked" in err.value.message
        assert int(err.value.exit_code) == 75
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    with Outbox(path) as box:
        assert sum(box.count_by_state().values()) == 0  # nothing half-written


def test_claims_are_named_records(box, clock):
    i = box.enqueue(RAW, "a@example.com", ["b@example.org", "c@example.net"], "company")
    created = clock.t
    clock.t += 5
    [c] = box.claim_batch("A", 10, 60)
    assert isinstance(c, ClaimedMessage)
    assert (c.id, c.profile, c.sender, c.recipients, c.raw) == (i, "company", "a@example.com",
                                                             ["b@example.org", "c@example.net"], RAW)
    assert (c.attempts, c.created_at, c.age_base, c.message_id, c.reclaimed) == (0, created, created,
                                                                                "<m1@example.com>", False)
    # named reads leave the connection's own rows plain tuples
    assert box.conn.execute("SELECT id, state FROM messages").fetchall() == [(i, "sending")]


def test_claims_take_the_oldest_due_first_across_states(box, clock):
    a = box.enqueue(RAW, "a@x.org", ["b@y.org"])
    [c] = box.claim_batch("A", 1, 60)
    box.record_attempt(c, "A", "deferred", reply="451", next_attempt_at=clock.t + 10)
    clock.t += 5
    b = box.enqueue(RAW, "a@x.org", ["b@y.org"])  # queued after a's retry time was set, due sooner
    clock.t += 10
    assert [m.id for m in box.claim_batch("A", 10, 60)] == [b, a]


def test_outbox_is_a_flush_store(box):
    from mailctl.outbox.backend import FlushStore

    assert isinstance(box, FlushStore)


def test_an_outbox_of_the_first_schema_gets_failed_recipients(tmp_path):
    """Migration 002 (issue #12 item 5) on a file made by the first release: rows survive."""
    from mailctl.outbox import schema

    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path, isolation_level=None)
    first = schema.MIGRATIONS[:1]
    original, schema.MIGRATIONS = schema.MIGRATIONS, first
    try:
        schema.migrate(conn)
        conn.execute("INSERT INTO messages (created_at, updated_at, sender, recipients, size, next_attempt_at, age_base)"
                     " VALUES (1, 1, 'a@example.com', '[\"b@example.org\"]', 3, 1, 1)")
        conn.execute("INSERT INTO bodies (message, raw) VALUES (1, x'414243')")
    finally:
        schema.MIGRATIONS = original
    conn.close()
    with Outbox(path) as box:
        info = box.get(1)
        assert info.failed_recipients == {} and not info.partially_failed and info.recipients == ["b@example.org"]
        names = [r[0] for r in box.conn.execute("SELECT name FROM migrations ORDER BY rowid")]
    assert names[:2] == ["001_messages_and_attempts", "002_failed_recipients"]


def test_enqueue_normalises_bare_cr_and_refuses_nul(box):
    i = box.enqueue(b"Subject: x\r\n\r\na\r.\rb\rc\n", "a@example.com", ["b@example.org"])
    assert box.get(i, with_raw=True).raw == b"Subject: x\r\n\r\na\r\n.\r\nb\r\nc\r\n"
    with pytest.raises(ValidationError, match="NUL byte"):
        box.enqueue(b"Subject: x\r\n\r\na\x00b\r\n", "a@example.com", ["b@example.org"])
