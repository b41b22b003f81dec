"""The SQLite outbox's results journal (migration 005, store.py: _journal, _fold_results,
_settle_results): a plain success is one autocommitted insert into `results`, made only while
the row is still the owner's, and every later write transaction folds the journal into
messages and attempts first. Real SQLite files, real processes, a real SMTP server."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from mailctl.outbox import FlushOptions, FlushPolicy, Outbox, flush
from mailctl.outbox import resultsfile
from mailctl.outbox.backend import AttemptResult
from mailctl.outbox.flush import RateLimiter
from mailctl.outbox.transfer import copy_outbox
from mailctl.profiles.model import ResolvedProfile
from mailctl.transports import open_transport

sys.path.insert(0, str(Path(__file__).parent))
from outbox_smtp import RecordingHandler, SmtpServer  # noqa: E402

pytestmark = pytest.mark.timeout(120)

OWNER = "flush-a"


@pytest.fixture(params=["update_from", "row_by_row"])
def fold_impl(request, monkeypatch):
    """Both ways _fold_results applies the journal: UPDATE ... FROM (SQLite 3.33+) and the
    row-by-row fallback for older SQLite libraries (Python builds linked against one)."""
    from mailctl.outbox import store

    if request.param == "row_by_row":
        monkeypatch.setattr(store, "_UPDATE_FROM", False)
    return request.param


class Clock:
    """A store clock the test moves by hand (lease expiry without sleeping)."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def raw_msg(n: int) -> bytes:
    return (f"From: app@example.com\r\nTo: user@example.org\r\nSubject: journal {n}\r\n"
            f"Message-ID: <j{n}@test.example>\r\n\r\nbody {n}\r\n").encode()


def peek(path: Path) -> sqlite3.Connection:
    """A plain sqlite3 connection: sees the file as it is, never folds anything."""
    return sqlite3.connect(path, isolation_level=None)


def journal_rows(path: Path) -> list[tuple]:
    """The plain successes on record and not applied yet: the results table's rows, then the
    side files' lines whose message is still their owner's (resultsfile.py)."""
    with peek(path) as c:
        rows = c.execute("SELECT message, owner, profile, server, reply FROM results ORDER BY id").fetchall()
        for entry in side_file_lines(path):
            message, owner, _at, profile, server, reply, _duration = entry
            if c.execute("SELECT 1 FROM messages WHERE id=? AND state='sending' AND lease_owner=?",
                         (message, owner)).fetchone():
                rows.append((message, owner, profile, server, reply))
    return rows


def side_file_lines(path: Path) -> list[tuple]:
    """Every valid line of every side file of this outbox, read as any process would."""
    directory = resultsfile.results_dir(path)
    if not directory.exists():
        return []
    return [e for f in sorted(directory.iterdir()) if not f.name.startswith(".")
            for e in resultsfile.decode(f.read_bytes())]


def raw_state(path: Path, message_id: int) -> tuple:
    with peek(path) as c:
        return c.execute("SELECT state, attempts, lease_owner FROM messages WHERE id=?", (message_id,)).fetchone()


def raw_outcomes(path: Path, message_id: int) -> list[str]:
    with peek(path) as c:
        return [o for (o,) in c.execute("SELECT outcome FROM attempts WHERE message=? ORDER BY id", (message_id,))]


def journaled(tmp_path: Path, n: int = 1, clock=None) -> tuple[Path, Outbox, list]:
    """An outbox with `n` queued messages, all claimed by OWNER, the first one's success
    journaled (not folded yet). Returns the path, the flush's handle and the claims."""
    path = tmp_path / "o.sqlite3"
    box = Outbox(path, clock=clock or time.time)
    for i in range(n):
        box.enqueue(raw_msg(i), "app@example.com", ["user@example.org"], "work")
    claims = box.claim_batch(OWNER, n, 300)
    assert box.record_attempt(claims[0], OWNER, "sent", reply="250 2.0.0 Ok: queued", server="127.0.0.1:25",
                              profile="work", duration=0.012)
    assert [r[0] for r in journal_rows(path)] == [claims[0].id]
    return path, box, claims


# 1 -------------------------------------------------------------------------------------------
def test_a_plain_success_is_journaled_and_any_handle_reads_it_as_sent(tmp_path, fold_impl):
    path, box, claims = journaled(tmp_path)
    mid = claims[0].id
    assert journal_rows(path) == [(mid, OWNER, "work", "127.0.0.1:25", "250 2.0.0 Ok: queued")]
    assert raw_state(path, mid) == ("sending", 0, OWNER)  # the row itself is not touched
    assert raw_outcomes(path, mid) == []

    with Outbox(path) as other:
        info = other.get(mid)
    assert (info.state, info.attempts) == ("sent", 1)
    assert info.last_reply == "250 2.0.0 Ok: queued" and info.last_server == "127.0.0.1:25"
    assert info.done_at is not None and info.last_attempt_at == info.done_at
    assert len(info.attempt_log) == 1
    entry = info.attempt_log[0]
    assert (entry["outcome"], entry["profile"], entry["server"], entry["duration"]) == ("sent", "work", "127.0.0.1:25", 0.012)
    assert journal_rows(path) == []
    assert raw_state(path, mid) == ("sent", 1, None)
    box.close()


def test_the_fast_path_with_a_lease_renewal_journals_and_renews(tmp_path):
    clock = Clock()
    path = tmp_path / "o.sqlite3"
    box = Outbox(path, clock=clock)
    for i in range(2):
        box.enqueue(raw_msg(i), "app@example.com", ["user@example.org"])
    first, second = box.claim_batch(OWNER, 2, 30)
    clock.now += 20
    assert box.record_attempt(first, OWNER, "sent", reply="250 ok", server="s", renew_lease=30)
    assert [r[0] for r in journal_rows(path)] == [first.id]
    with peek(path) as c:
        (until,) = c.execute("SELECT lease_until FROM messages WHERE id=?", (second.id,)).fetchone()
    assert until == clock.now + 30
    box.close()


# 2 -------------------------------------------------------------------------------------------
CHILD = textwrap.dedent("""
    import os, sys
    from mailctl.outbox import Outbox
    box = Outbox(sys.argv[1])
    claims = box.claim_batch("dead-flush", 10, float(sys.argv[2]))
    assert len(claims) == 2, claims
    claims.sort(key=lambda c: c.id)
    assert box.record_attempt(claims[0], "dead-flush", "sent", reply="250 ok", server="127.0.0.1:2525", profile=None)
    print("journaled", claims[0].id, flush=True)
    if sys.argv[3] == "kill":
        os.kill(os.getpid(), 9)
    os._exit(0)
""")


@pytest.mark.parametrize("death", ["kill", "_exit"])
def test_a_flush_killed_before_the_fold_never_has_its_delivery_repeated(tmp_path, death, fold_impl):
    path = tmp_path / "o.sqlite3"
    with Outbox(path) as box:
        delivered = box.enqueue(raw_msg(1), "app@example.com", ["user@example.org"])
        untried = box.enqueue(raw_msg(2), "app@example.com", ["user@example.org"])
    proc = subprocess.run([sys.executable, "-c", CHILD, str(path), "1", death], capture_output=True, text=True, timeout=60)
    assert proc.returncode == (-signal.SIGKILL if death == "kill" else 0), proc.stderr
    assert proc.stdout.split() == ["journaled", str(delivered)]
    assert journal_rows(path) == [(delivered, "dead-flush", None, "127.0.0.1:2525", "250 ok")]
    assert raw_state(path, delivered) == ("sending", 0, "dead-flush")

    # well past the child's 1 s lease, as any flush started later would see it
    with Outbox(path, clock=lambda: time.time() + 120) as box:
        taken = box.claim_batch("flush-b", 10, 300)
        assert [c.id for c in taken] == [untried]  # the delivered one is not sent again
        assert journal_rows(path) == []
        info = box.get(delivered)
        assert (info.state, info.attempts) == ("sent", 1)
        assert [e["outcome"] for e in info.attempt_log] == ["sent"]  # no 'interrupted' entry
        assert [e["outcome"] for e in box.get(untried).attempt_log] == ["interrupted"]


def test_a_dead_flushs_journal_is_folded_by_a_claim_even_within_its_lease(tmp_path):
    """The holder is gone (same host): its claims are freed at once, the journaled one sent."""
    path = tmp_path / "o.sqlite3"
    with Outbox(path) as box:
        delivered = box.enqueue(raw_msg(1), "app@example.com", ["user@example.org"])
        untried = box.enqueue(raw_msg(2), "app@example.com", ["user@example.org"])
    proc = subprocess.run([sys.executable, "-c", CHILD, str(path), "3600", "kill"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    with Outbox(path) as box:
        assert [c.id for c in box.claim_batch("flush-b", 10, 300)] == [untried]
        assert box.get(delivered).state == "sent"


# 3 -------------------------------------------------------------------------------------------
# "FULL": every commit synced, so no side file: the journal insert itself checks the row is
# ours (False when not). "NORMAL": one write() to the side file, which cannot check: True, and
# the fold applies the line only while the row is still the owner's (logged either way).
@pytest.mark.parametrize("sync", ["FULL", "NORMAL"])
def test_a_result_for_a_row_taken_over_is_not_journaled_but_logged(tmp_path, sync):
    clock = Clock()
    path = tmp_path / "o.sqlite3"
    box = Outbox(path, clock=clock, synchronous=sync)
    mid = box.enqueue(raw_msg(1), "app@example.com", ["user@example.org"])
    (claim,) = box.claim_batch(OWNER, 1, 10)
    clock.now += 20  # lease expired: another flush takes the row over
    with Outbox(path, clock=clock) as other:
        assert [c.id for c in other.claim_batch("flush-b", 1, 300)] == [mid]
    assert raw_state(path, mid) == ("sending", 0, "flush-b")

    ours = box.record_attempt(claim, OWNER, "sent", reply="250 late", server="s1", profile="work", duration=0.5)
    assert ours is (sync == "NORMAL")
    assert journal_rows(path) == []
    if sync == "NORMAL":
        assert [e[0] for e in side_file_lines(path)] == [mid]  # on record, not applicable
        assert box.count_due() == 0  # any write folds: logged, the row left to flush-b
        assert box.count_due() == 0  # folded once: logged once
    # as _record always did: the row is left to its new owner, the attempt is logged anyway
    assert raw_state(path, mid) == ("sending", 0, "flush-b")
    assert raw_outcomes(path, mid) == ["interrupted", "sent"]
    with peek(path) as c:
        assert c.execute("SELECT profile, server, reply, duration FROM attempts WHERE outcome='sent'").fetchall() == [
            ("work", "s1", "250 late", 0.5)]
    # and the new owner's own success still goes through the journal
    assert box.record_attempt(claim, "flush-b", "sent", reply="250 ok", server="s2")
    assert journal_rows(path) == [(mid, "flush-b", None, "s2", "250 ok")]
    assert box.get(mid).state == "sent"
    assert raw_outcomes(path, mid) == ["interrupted", "sent", "sent"]
    box.close()
    assert side_file_lines(path) == []  # applied: the file is emptied, and gone at close


@pytest.mark.parametrize("sync", ["FULL", "NORMAL"])
def test_record_attempts_for_a_row_taken_over_is_not_journaled_but_logged(tmp_path, sync):
    clock = Clock()
    path = tmp_path / "o.sqlite3"
    box = Outbox(path, clock=clock, synchronous=sync)
    mid = box.enqueue(raw_msg(1), "app@example.com", ["user@example.org"])
    (claim,) = box.claim_batch(OWNER, 1, 10)
    clock.now += 20
    box.claim_batch("flush-b", 1, 300)  # the same file, another owner
    assert box.record_attempts(OWNER, [AttemptResult(claim, "sent", "250 late", "s1")]) == [sync == "NORMAL"]
    assert journal_rows(path) == []
    box.count_due()  # a fold
    assert raw_outcomes(path, mid) == ["interrupted", "sent"]
    assert raw_state(path, mid) == ("sending", 0, "flush-b")
    box.close()


# 4 -------------------------------------------------------------------------------------------
def test_sent_since_counts_journaled_results_per_profile_and_within_limit(tmp_path):
    clock = Clock(1000.0)
    path = tmp_path / "o.sqlite3"
    box = Outbox(path, clock=clock)
    ids = [box.enqueue(raw_msg(i), "app@example.com", ["user@example.org"], "work" if i % 2 else "home")
           for i in range(6)]
    claims = {c.id: c for c in box.claim_batch(OWNER, 6, 300)}
    for n, i in enumerate(ids):
        clock.now = 1000.0 + n
        c = claims[i]
        assert box.record_attempt(c, OWNER, "sent", reply="250", server="s", profile=c.profile)
    assert len(journal_rows(path)) == 6  # nothing folded: only the journal has them
    assert box.sent_since(0) == [1000.0 + n for n in range(6)]
    assert box.sent_since(0, "work") == [1001.0, 1003.0, 1005.0]
    assert box.sent_since(0, "home") == [1000.0, 1002.0, 1004.0]
    assert box.sent_since(1002.5) == [1003.0, 1004.0, 1005.0]
    assert box.sent_since(0, limit=2) == [1004.0, 1005.0]
    assert box.sent_since(0, "work", limit=1) == [1005.0]
    assert len(journal_rows(path)) == 6  # sent_since is a plain read
    box.close()


def test_sent_since_merges_journaled_and_logged_results(tmp_path):
    clock = Clock(1000.0)
    path = tmp_path / "o.sqlite3"
    box = Outbox(path, clock=clock)
    for i in range(3):
        box.enqueue(raw_msg(i), "app@example.com", ["user@example.org"])
    a, b, c = box.claim_batch(OWNER, 3, 300)
    box.record_attempt(a, OWNER, "sent", server="s")  # 1000, journaled
    clock.now = 1001.0
    box.record_attempt(b, OWNER, "deferred", server="s", next_attempt_at=5000)  # folds a, logs b
    clock.now = 1002.0
    box.record_attempt(c, OWNER, "sent", server="s")  # journaled
    assert [r[0] for r in journal_rows(path)] == [c.id]
    assert box.sent_since(0) == [1000.0, 1001.0, 1002.0]
    assert box.sent_since(0, limit=2) == [1001.0, 1002.0]
    box.close()


def test_sent_since_limit_keeps_the_newest_when_the_journal_is_older_than_the_log(tmp_path):
    clock = Clock(1000.0)
    path = tmp_path / "o.sqlite3"
    box = Outbox(path, clock=clock)
    for i in range(3):
        box.enqueue(raw_msg(i), "app@example.com", ["user@example.org"])
    a, b, c = box.claim_batch(OWNER, 3, 300)
    assert box.record_attempt(a, OWNER, "sent", server="s")  # 1000: journaled
    clock.now = 1001.0
    box.record_attempts(OWNER, [AttemptResult(b, "deferred", "451", "s", next_attempt_at=9e9)])  # group commit
    clock.now = 1002.0
    box.record_attempts(OWNER, [AttemptResult(c, "deferred", "451", "s", next_attempt_at=9e9)])
    assert len(journal_rows(path)) == 1
    assert box.sent_since(0) == [1000.0, 1001.0, 1002.0]
    # what a flush's limiter of 2 a minute makes of it: 1001 + 60 - 1002 = 59 s to wait (gets 58)
    assert RateLimiter(2, box.sent_since(clock.now - 60, limit=2)).wait_time(clock.now) == pytest.approx(59.0)
    assert box.sent_since(0, limit=2) == [1001.0, 1002.0]
    box.close()


def test_sent_since_limit_keeps_the_newest_after_the_fold(tmp_path):
    clock = Clock(1000.0)
    path = tmp_path / "o.sqlite3"
    box = Outbox(path, clock=clock)
    for i in range(4):
        box.enqueue(raw_msg(i), "app@example.com", ["user@example.org"])
    a, b, c, d = box.claim_batch(OWNER, 4, 300)
    assert box.record_attempt(a, OWNER, "sent", server="s")  # 1000: journaled
    clock.now = 1001.0
    box.record_attempts(OWNER, [AttemptResult(b, "deferred", "451", "s", next_attempt_at=9e9)])
    clock.now = 1002.0
    box.record_attempts(OWNER, [AttemptResult(c, "deferred", "451", "s", next_attempt_at=9e9)])
    box.release_claims(OWNER)  # folds
    assert journal_rows(path) == []
    assert box.sent_since(0, limit=2) == [1001.0, 1002.0]
    box.close()


# 5 -------------------------------------------------------------------------------------------
def _other_queued(box: Outbox) -> int:
    return box.enqueue(raw_msg(99), "app@example.com", ["user@example.org"])


def _source_with_id_3(tmp_path: Path) -> tuple:
    with Outbox(tmp_path / "src.sqlite3") as src:
        for i in range(3):
            src.enqueue(raw_msg(100 + i), "app@example.com", ["user@example.org"])
        src.delete([1, 2])
        return src.export_batch(0)


WRITES = {
    "release_claims": lambda box, claims, tmp: box.release_claims(OWNER),
    "release_claims_ids": lambda box, claims, tmp: box.release_claims(OWNER, [c.id for c in claims]),
    "hold": lambda box, claims, tmp: box.hold([_other_queued(box)]),
    "release": lambda box, claims, tmp: box.release(box.hold([_other_queued(box)])),
    "retry": lambda box, claims, tmp: box.retry([claims[1].id]),
    "delete": lambda box, claims, tmp: box.delete([claims[1].id]),
    "purge": lambda box, claims, tmp: box.purge(3600),
    "expire_overdue": lambda box, claims, tmp: box.expire_overdue(3600),
    "hold_queued_before": lambda box, claims, tmp: box.hold_queued_before(0),
    "enqueue": lambda box, claims, tmp: _other_queued(box),
    "enqueue_many": lambda box, claims, tmp: box.enqueue_many(
        [(raw_msg(98), "app@example.com", ["user@example.org"], None)]),
    "claim_batch": lambda box, claims, tmp: box.claim_batch("flush-b", 10, 300),
    "record_attempt_deferred": lambda box, claims, tmp: box.record_attempt(
        box.claim_batch("flush-b", 1, 300, ids=[_other_queued(box)])[0], "flush-b", "deferred", next_attempt_at=9e9),
    "import_batch": lambda box, claims, tmp: box.import_batch(*_source_with_id_3(tmp)),
}


@pytest.mark.parametrize("op", sorted(WRITES))
def test_every_write_folds_the_journal_first(tmp_path, op):
    path = tmp_path / "o.sqlite3"
    box = Outbox(path)
    for i in range(2):
        box.enqueue(raw_msg(i), "app@example.com", ["user@example.org"], "work")
    claims = box.claim_batch(OWNER, 2, 300)
    mid = claims[0].id
    # the second claim failed (retry / delete need a finished message): written directly, first
    assert box.record_attempt(claims[1], OWNER, "failed", reply="550 no", server="s")
    assert box.record_attempt(claims[0], OWNER, "sent", reply="250 ok", server="s", profile="work")
    assert [r[0] for r in journal_rows(path)] == [mid] and raw_state(path, mid) == ("sending", 0, OWNER)
    with Outbox(path) as other:
        WRITES[op](other, claims, tmp_path)
    assert journal_rows(path) == []
    assert raw_state(path, mid) == ("sent", 1, None)
    assert raw_outcomes(path, mid) == ["sent"]
    box.close()


def test_release_claims_never_requeues_a_journaled_delivery(tmp_path, fold_impl):
    path, box, claims = journaled(tmp_path, n=3)
    assert box.release_claims(OWNER) == 2  # the two untried ones
    assert raw_state(path, claims[0].id) == ("sent", 1, None)
    assert [raw_state(path, c.id) for c in claims[1:]] == [("queued", 0, None)] * 2
    assert [c.id for c in box.claim_batch("flush-b", 10, 300)] == [c.id for c in claims[1:]]
    box.close()


def test_export_batch_shows_a_journaled_delivery_as_sent(tmp_path):
    """queue migrate reads with export_batch: a journaled message going over as 'sending'
    would be queued again on the other side (import_batch) and delivered twice."""
    path, box, claims = journaled(tmp_path, n=1)
    with Outbox(path) as other:
        msgs, _bodies, attempts = other.export_batch(0)
    assert [(m["id"], m["state"]) for m in msgs] == [(claims[0].id, "sent")]
    assert [a["outcome"] for a in attempts] == ["sent"]
    assert journal_rows(path) == []
    box.close()


def test_copy_outbox_carries_a_journaled_delivery_over_as_sent(tmp_path):
    path, box, claims = journaled(tmp_path, n=2)
    with Outbox(path) as src, Outbox(tmp_path / "dest.sqlite3") as dest:
        totals = copy_outbox(src, dest)
        assert totals["destination"]["sent"] == 1 and totals["was_sending"] == 1  # the untried claim only
        assert dest.get(claims[0].id).state == "sent"
        assert dest.get(claims[1].id).state == "queued"
        assert [c.id for c in dest.claim_batch("flush-b", 10, 300)] == [claims[1].id]
    box.close()


# 6 -------------------------------------------------------------------------------------------
def test_reads_give_way_to_a_held_write_lock_then_fold(tmp_path):
    path, box, claims = journaled(tmp_path, n=1)
    mid = claims[0].id
    reader = Outbox(path)  # the 60 s busy timeout of every handle
    locker = peek(path)
    locker.execute("BEGIN IMMEDIATE")
    try:
        took = []
        for read in (lambda: list(reader.list()), reader.count_by_state, lambda: reader.get(mid)):
            started = time.monotonic()
            took.append((read(), time.monotonic() - started))
        (listed, _), (counts, _), (info, _) = took
        assert all(0.4 < t < 1.5 for _, t in took), took  # about 0.5 s each, not the 60 s busy timeout
        assert [(m.id, m.state) for m in listed] == [(mid, "sending")]
        assert counts["sending"] == 1 and counts["sent"] == 0
        assert info.state == "sending"
        assert len(journal_rows(path)) == 1
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    # the reader's busy timeout is back to normal afterwards (a write waits, and succeeds)
    assert reader.conn.execute("PRAGMA busy_timeout").fetchone()[0] == 60000
    assert [(m.id, m.state) for m in reader.list()] == [(mid, "sent")]
    assert reader.count_by_state()["sent"] == 1
    assert journal_rows(path) == []
    reader.close()
    box.close()


def test_a_read_waits_briefly_for_a_short_write_lock(tmp_path):
    """A lock held for a moment (shorter than the 0.5 s the read waits) does not make the
    read show stale states: it waits and folds."""
    path, box, claims = journaled(tmp_path, n=1)
    locker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    locker.execute("BEGIN IMMEDIATE")
    threading.Timer(0.15, lambda: locker.execute("ROLLBACK")).start()
    try:
        with Outbox(path) as reader:
            assert reader.count_by_state()["sent"] == 1
    finally:
        time.sleep(0.2)
        locker.close()
    box.close()


# 7 -------------------------------------------------------------------------------------------
def test_an_outbox_of_migration_004_upgrades_and_flushes_everything_once(tmp_path):
    from mailctl.outbox import schema

    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    original, schema.MIGRATIONS = schema.MIGRATIONS, schema.MIGRATIONS[:4]
    try:
        assert [n for n, _ in schema.MIGRATIONS][-1].startswith("004")
        schema.migrate(conn)
    finally:
        schema.MIGRATIONS = original
    assert conn.execute("SELECT name FROM sqlite_master WHERE name='results'").fetchone() is None
    # mail queued by the release of schema 004 (rows as it wrote them)
    now = time.time()
    ids = []
    for i in range(8):
        cur = conn.execute("INSERT INTO messages (created_at, updated_at, sender, recipients, size, next_attempt_at,"
                           " age_base) VALUES (?, ?, 'app@example.com', '[\"user@example.org\"]', ?, ?, ?)",
                           (now, now, len(raw_msg(i)), now, now))
        conn.execute("INSERT INTO bodies (message, raw) VALUES (?, ?)", (cur.lastrowid, raw_msg(i)))
        ids.append(cur.lastrowid)
    conn.close()

    handler = RecordingHandler()
    with SmtpServer(handler) as server, Outbox(path) as box:
        names = [n for (n,) in box.conn.execute("SELECT name FROM migrations ORDER BY rowid")]
        assert names == [n for n, _ in schema.MIGRATIONS] and names[-1] == "005_results_journal"
        profile = ResolvedProfile("local_smtp", {"type": "smtp", "host": "127.0.0.1", "port": server.port,
                                                 "security": "none", "auth": "none",
                                                 "from_address": "app@example.com", "timeout": 10})
        report = flush(box, policy=FlushPolicy(), resolve=lambda name: profile,
                       open_transport=lambda p: open_transport(p, None), options=FlushOptions())
        assert report.sent == 8 and report.deferred == report.failed == 0
    assert sorted(handler.by_message_id.values()) == [1] * 8
    assert journal_rows(path) == []
    with peek(path) as c:
        assert c.execute("SELECT state, attempts, count(*) FROM messages GROUP BY state, attempts").fetchall() == [
            ("sent", 1, 8)]
        assert c.execute("SELECT message, outcome FROM attempts ORDER BY message").fetchall() == [
            (i, "sent") for i in ids]


# 8 -------------------------------------------------------------------------------------------
def test_group_commit_journals_plain_successes_and_writes_the_rest(tmp_path, fold_impl):
    clock = Clock()
    path = tmp_path / "o.sqlite3"
    box = Outbox(path, clock=clock)
    for i in range(5):
        box.enqueue(raw_msg(i), "app@example.com", ["user@example.org", "other@example.org"])
    plain1, deferred, plain2, narrowed, partial = box.claim_batch(OWNER, 5, 30)
    clock.now += 10
    ours = box.record_attempts(OWNER, [
        AttemptResult(plain1, "sent", "250 one", "s", "work", 0.1),
        AttemptResult(deferred, "deferred", "451 later", "s", "work", 0.2, next_attempt_at=clock.now + 600),
        AttemptResult(plain2, "sent", "250 two", "s", "work", 0.3),
        AttemptResult(narrowed, "deferred", "451 some", "s", "work", 0.4, next_attempt_at=clock.now + 600,
                      recipients=["other@example.org"]),
        AttemptResult(partial, "sent", "250 some", "s", "work", 0.5, failed_recipients={"other@example.org": "550 no"}),
    ], renew_lease=30)
    assert ours == [True] * 5
    assert [r[0] for r in journal_rows(path)] == [plain1.id, plain2.id]
    # the others are on their rows already, in the same commit
    assert raw_state(path, plain1.id) == ("sending", 0, OWNER)
    assert raw_state(path, deferred.id) == ("deferred", 1, None)
    assert raw_state(path, narrowed.id) == ("deferred", 1, None)
    assert raw_state(path, partial.id) == ("sent", 1, None)
    assert raw_outcomes(path, plain1.id) == []
    with peek(path) as c:  # the renewal touched the journaled rows (still the owner's), harmlessly
        assert c.execute("SELECT lease_until FROM messages WHERE id=?", (plain1.id,)).fetchone() == (clock.now + 30,)

    with Outbox(path, clock=clock) as reader:
        infos = {m.id: m for m in reader.list()}
        assert journal_rows(path) == []
        assert {i: m.state for i, m in infos.items()} == {
            plain1.id: "sent", deferred.id: "deferred", plain2.id: "sent", narrowed.id: "deferred", partial.id: "sent"}
        assert infos[plain1.id].last_reply == "250 one" and infos[plain2.id].last_reply == "250 two"
        assert all(m.attempts == 1 for m in infos.values())
        assert reader.get(narrowed.id).recipients == ["other@example.org"]
        assert reader.get(partial.id).failed_recipients == {"other@example.org": "550 no"}
        for claim, dur in ((plain1, 0.1), (deferred, 0.2), (plain2, 0.3), (narrowed, 0.4), (partial, 0.5)):
            log = reader.get(claim.id).attempt_log
            assert len(log) == 1 and log[0]["duration"] == dur and log[0]["profile"] == "work"
        assert reader.attempt_counts() == {"sent": 3, "deferred": 2, "failed": 0, "expired": 0, "interrupted": 0}
    box.close()


@pytest.mark.parametrize("sync", ["FULL", "NORMAL"])
def test_group_commit_with_a_row_taken_over_mixes_journal_and_direct(tmp_path, sync):
    clock = Clock()
    path = tmp_path / "o.sqlite3"
    box = Outbox(path, clock=clock, synchronous=sync)
    for i in range(2):
        box.enqueue(raw_msg(i), "app@example.com", ["user@example.org"])
    (lost,) = box.claim_batch(OWNER, 1, 10)
    clock.now += 20
    box.claim_batch("flush-b", 1, 300)  # takes `lost` over
    (kept,) = box.claim_batch(OWNER, 1, 300)
    assert box.record_attempts(OWNER, [AttemptResult(lost, "sent", "250 a", "s"),
                                       AttemptResult(kept, "sent", "250 b", "s")]) == [sync == "NORMAL", True]
    assert [r[0] for r in journal_rows(path)] == [kept.id]
    box.count_due()  # a fold
    assert raw_outcomes(path, lost.id) == ["interrupted", "sent"]
    assert raw_state(path, lost.id) == ("sending", 0, "flush-b")
    assert box.get(kept.id).state == "sent"
    box.close()


# real processes racing: takeovers, journal and direct writes mixed -----------------------------
RACER = textwrap.dedent("""
    import json, random, sys, time
    from mailctl.outbox import Outbox
    from mailctl.outbox.backend import AttemptResult
    path, owner, total, seed, sync = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    rnd = random.Random(seed)
    box = Outbox(path, synchronous=sync)
    events = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        started = time.time()
        claims = box.claim_batch(owner, rnd.randint(1, 4), 0.15)
        events.append(["claim", started, [c.id for c in claims]])
        if not claims:
            if box.count_by_state()["sent"] == total:
                break
            time.sleep(0.02)
            continue
        if rnd.random() < 0.5:
            time.sleep(rnd.choice([0, 0, 0.01, 0.3]))  # 0.3: past the lease, someone takes over
            ours = box.record_attempts(owner, [AttemptResult(c, "sent", "250 ok", "s") for c in claims],
                                       renew_lease=rnd.choice([None, 0.15]))
        else:
            ours = []
            for c in claims:
                time.sleep(rnd.choice([0, 0, 0.01, 0.3]))
                ours.append(box.record_attempt(c, owner, "sent", reply="250 ok", server="s",
                                               renew_lease=rnd.choice([None, 0.15])))
        done = time.time()
        events += [["result", done, c.id, ok] for c, ok in zip(claims, ours)]
    print(json.dumps(events))
""")


@pytest.mark.parametrize("sync", ["FULL", "NORMAL"])
def test_racing_flush_processes_never_claim_a_journaled_delivery(tmp_path, sync):
    path = tmp_path / "o.sqlite3"
    total = 40
    with Outbox(path) as box:
        box.enqueue_many([(raw_msg(i), "app@example.com", ["user@example.org"]) for i in range(total)])
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(path), f"racer-{n}", str(total), str(n), sync],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for n in range(3)]
    outs = [p.communicate(timeout=90) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [e for _, e in outs]
    import json

    events = [e for out, _ in outs for e in json.loads(out)]
    with peek(path) as c:
        taken_over = {}  # message -> when a claim first took it from a flush whose lease ran out
        for message, at in c.execute("SELECT message, at FROM attempts WHERE outcome='interrupted' ORDER BY id"):
            taken_over.setdefault(message, at)
    confirmed: dict[int, list[float]] = {}
    for kind, at, *rest in events:
        if kind == "result" and rest[1]:
            confirmed.setdefault(rest[0], []).append(at)
    assert len(confirmed) == total
    for message, times in confirmed.items():
        if sync == "FULL":  # the journal insert checks the row is ours: confirmed exactly once
            assert len(times) == 1, f"message {message} confirmed twice"
        else:  # a side-file line cannot check: a second confirmation only after a takeover
            assert len(times) == 1 or taken_over.get(message, float("inf")) < max(times), message
    # a claim begun after a confirmed result never takes that message, unless that result came
    # from a flush whose claim had been taken over before it (then it was not the row's to apply)
    late_claims = [(i, at) for kind, at, *rest in events if kind == "claim"
                   for i in rest[0] if i in confirmed and at > min(confirmed[i])
                   and not taken_over.get(i, float("inf")) < min(confirmed[i])]
    assert late_claims == []
    with Outbox(path) as box:
        assert box.count_by_state()["sent"] == total
    assert journal_rows(path) == []
    with peek(path) as c:
        assert c.execute("SELECT DISTINCT attempts FROM messages").fetchall() == [(1,)]
        takeovers = c.execute("SELECT count(*) FROM attempts WHERE outcome='interrupted'").fetchone()[0]
        stale = c.execute("SELECT count(*) FROM attempts WHERE outcome='sent'").fetchone()[0] - total
    late = sum(1 for kind, _at, *rest in events if kind == "result" and not rest[1])
    late += sum(len(times) - 1 for times in confirmed.values())
    assert takeovers >= 1  # the race did happen: leases ran out under a sender
    assert stale == late  # a result no longer ours is logged, not applied
    assert side_file_lines(path) == []  # every racer closed its handle: no side file is left


def test_a_journaled_message_past_its_lease_is_not_counted_as_due(tmp_path):
    # a flush that died after journaling: its lease runs out, but the message was delivered;
    # count_due (the flush's "anything more?" between batches) folds first and counts nothing
    clock = Clock(1000.0)
    path = tmp_path / "o.sqlite3"
    box = Outbox(path, clock=clock)
    box.enqueue(raw_msg(0), "app@example.com", ["user@example.org"])
    (c,) = box.claim_batch(OWNER, 10, 5)
    assert box.record_attempt(c, OWNER, "sent", server="s")
    box.close()
    clock.now = 2000.0  # far past the 5 s lease
    other = Outbox(path, clock=clock)
    assert len(journal_rows(path)) == 1
    assert other.count_due() == 0
    assert journal_rows(path) == [] and other.get(c.id).state == "sent"
    other.close()
