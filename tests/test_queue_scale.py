"""Queue management that stays right and usable on large outboxes (issue #14): `queue stats`
counted by the database, `queue list` paged (pending mail, newest first), `queue purge` in
bounded batches that gives the space back, and tables that fit an 80-column terminal.
Behaviour only; the timings are bench/queue_scale.py's."""

from __future__ import annotations

import fcntl
import json
import os
import random
import re
import sqlite3
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest

from mailctl.outbox import Outbox
from mailctl.outbox.schema import MIGRATIONS
from mailctl.outbox.store import AGE_BUCKETS_MIN, PENDING_STATES
from mailctl.output import Col, Output, fit_columns

ROOT = Path(__file__).resolve().parent.parent
DATE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
LONG_REPLY = ("451 4.7.1 Greylisted: the receiving server keeps mail from unknown senders back for a while;"
              " try again in five minutes (see https://postmaster.example.net/greylisting) END-OF-REPLY")


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def raw(subject: str, to: str = "someone@example.org") -> bytes:
    return f"From: app@example.com\r\nTo: {to}\r\nSubject: {subject}\r\n\r\nbody\r\n".encode()


def finish(box, ids, outcome: str, **kw) -> None:
    """Take these messages through a claim to `outcome` (as a flush would)."""
    for claim in box.claim_batch("test-owner", len(ids), 60, ids=list(ids)):
        assert box.record_attempt(claim, "test-owner", outcome, reply=kw.get("reply", f"{outcome} reply"),
                                  server="mx.test:25", failed_recipients=kw.get("failed"),
                                  recipients=kw.get("recipients"), next_attempt_at=kw.get("next_attempt_at"))


def mixed_outbox(box, clock: Clock, rng: random.Random, n: int = 240) -> None:
    """Every state, one to four recipients (upper-case domains, an address literal, a quoted
    local part holding an @), ages across all the qshape buckets, partly failed ones."""
    domains = ["example.org", "Mail.Example.NET", "b.test", "[192.0.2.7]", "c.test"]
    start = clock.t
    for i in range(n):
        clock.t = start - rng.choice([0, 30, 299, 300, 301, 700, 1500, 3000, 7000, 15000, 30000, 60000, 80000, 200000])
        rcpts = [f"u{rng.randrange(50)}@{rng.choice(domains)}" for _ in range(rng.choice((1, 1, 2, 4)))]
        if i % 37 == 0:
            rcpts.append('"odd@local"@Quoted.Test')
        box.enqueue(raw(f"m{i}"), "app@example.com", rcpts, hold=(i % 11 == 0))
    clock.t = start
    ids = [m.id for m in box.list(states=["queued"])]
    rng.shuffle(ids)
    finish(box, ids[:40], "sent")
    finish(box, ids[40:60], "failed")
    finish(box, ids[60:100], "deferred", next_attempt_at=start + 600)
    several = [m for m in box.list(states=["queued"]) if len(m.recipients) > 1][:12]
    for m in several[:6]:  # sent to the others, the first refused for good
        finish(box, [m.id], "sent", failed={m.recipients[0]: "550 5.1.1 no such user"})
    for m in several[6:]:  # still waiting for the others (narrowed), the first refused
        finish(box, [m.id], "deferred", failed={m.recipients[0]: "550 5.1.1 no such user"},
               recipients=m.recipients[1:], next_attempt_at=start + 600)
    box.claim_batch("live-flush", 5, 600)  # a few in 'sending'


def recount(box, now: float) -> dict:
    """queue stats the slow, obvious way (the pre-#14 Python loop), from a full listing."""
    buckets = [f"{m}m" for m in AGE_BUCKETS_MIN] + [f"{AGE_BUCKETS_MIN[-1]}m+"]
    ages = [0] * len(buckets)
    domains: dict[str, list[int]] = {}
    oldest, partial, refused = None, 0, 0
    for m in box.list():
        if m.failed_recipients and m.state != "failed":
            partial += 1
            refused += len(m.failed_recipients)
        if m.state not in PENDING_STATES:
            continue
        age_min = max(0.0, now - m.created_at) / 60
        b = next((i for i, lim in enumerate(AGE_BUCKETS_MIN) if age_min < lim), len(AGE_BUCKETS_MIN))
        ages[b] += 1
        oldest = m.created_at if oldest is None else min(oldest, m.created_at)
        for r in m.recipients:
            domains.setdefault(r.rpartition("@")[2].lower() or "(none)", [0] * len(buckets))[b] += 1
    return {"by_age": dict(zip(buckets, ages)), "domains": {d: dict(zip(buckets, c)) for d, c in domains.items()},
            "oldest": None if oldest is None else round(now - oldest, 1), "partial": partial, "refused": refused}


# --- queue stats ------------------------------------------------------------------------------
def test_stats_equal_a_python_recount_on_a_mixed_outbox(outbox_factory):
    clock = Clock()
    box = outbox_factory(clock=clock)
    try:
        mixed_outbox(box, clock, random.Random(14))
        clock.t += 45  # ages move on after the last write
        want = recount(box, clock.t)
        got = box.stats(top=1000)
        assert got["by_age"] == want["by_age"]
        assert {d["domain"]: d["by_age"] for d in got["by_domain"]} == want["domains"]
        assert got["domains_total"] == len(want["domains"]) and "quoted.test" in want["domains"]
        assert got["oldest_pending_age_seconds"] == want["oldest"]
        assert (got["partially_failed"], got["partially_failed_recipients"]) == (want["partial"], want["refused"]) == (12, 12)
        assert sum(got["by_age"].values()) == got["pending"] == sum(got["by_state"][s] for s in PENDING_STATES)
        assert got["by_state"]["sending"] == 5 and got["by_state"]["failed"] == 20
        ranked = [d["total"] for d in box.stats(top=2)["by_domain"]]
        assert len(ranked) == 2 and ranked == sorted((sum(v.values()) for v in want["domains"].values()), reverse=True)[:2]
    finally:
        box.close()


def test_stats_of_an_empty_outbox(outbox_factory):
    box = outbox_factory(clock=Clock())
    try:
        s = box.stats()
        assert s["pending"] == 0 and s["oldest_pending_age_seconds"] is None and s["by_domain"] == []
        assert set(s["by_age"].values()) == {0}
    finally:
        box.close()


def test_an_outbox_from_before_004_is_migrated_and_counted(tmp_path):
    """An outbox made by an earlier mailctl (migrations 001-003, no auto_vacuum) gets the
    new indexes on open, and its rows are counted."""
    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
    for name, sql in MIGRATIONS[:3]:
        for statement in [c for c in "\n".join(l.split("--")[0] for l in sql.splitlines()).split(";") if c.strip()]:
            conn.execute(statement)
        conn.execute("INSERT INTO migrations VALUES (?, 0)", (name,))
    conn.execute("INSERT INTO messages (created_at, updated_at, sender, recipients, size, state, next_attempt_at,"
                 " age_base) VALUES (1, 1, 'a@example.com', '[\"x@One.Test\", \"y@two.test\"]', 10, 'queued', 1, 1)")
    conn.close()
    with Outbox(path, clock=Clock(1 + 3600)) as box:
        names = {r[0] for r in box.conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert {"messages_done", "messages_partly_failed", "messages_pending_domain", "messages_pending_multi"} <= names
        assert box.conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 0  # not until a VACUUM
        s = box.stats()
        assert {d["domain"]: d["total"] for d in s["by_domain"]} == {"one.test": 1, "two.test": 1}
        assert s["by_age"]["80m"] == 1


def test_a_new_outbox_is_made_with_incremental_auto_vacuum(tmp_path):
    with Outbox(tmp_path / "new.sqlite3") as box:
        assert box.conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
        assert box.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# --- queue list ------------------------------------------------------------------------------
def test_list_newest_first_with_a_limit_reads_every_state(outbox_factory):
    clock = Clock()
    box = outbox_factory(clock=clock)
    try:
        mixed_outbox(box, clock, random.Random(3), n=120)
        every = [m.id for m in box.list()]
        for states in (None, list(PENDING_STATES), ["failed"], ["sent", "held"], ["deferred"]):
            want = sorted((m.id for m in box.list(states=states)), reverse=True)
            for limit in (1, 7, 500):
                got = [m.id for m in box.list(states=states, limit=limit, newest_first=True)]
                assert got == want[:limit], (states, limit)
            assert box.count_listed(states=states) == len(want)
        assert [m.id for m in box.list(newest_first=True)] == sorted(every, reverse=True)
        partly = sum(1 for m in box.list() if m.failed_recipients and m.state != "failed")
        assert partly and box.count_listed(states=["failed"]) == 20 + partly  # the partly failed too
    finally:
        box.close()


def test_list_default_is_pending_newest_first_and_finished_on_request(cli, isolated_env):
    ids = [int(cli("queue", "add", input=raw(f"m{i}")).stdout) for i in range(5)]
    with Outbox() as box:
        finish(box, ids[:2], "sent")
    rows = [json.loads(line) for line in cli("queue", "list", "--json").stdout.splitlines()]
    assert [r["id"] for r in rows] == ids[:1:-1]  # pending only, newest first
    r = cli("queue", "list", "--state", "sent", "--json")
    assert [json.loads(line)["id"] for line in r.stdout.splitlines()] == ids[1::-1]
    r = cli("queue", "list", "--state", "all", "--json")
    assert [json.loads(line)["id"] for line in r.stdout.splitlines()] == ids[::-1]
    r = cli("queue", "list", "--limit", "2")  # piped: a table, and the footer on stderr
    assert r.exit_code == 0 and len(r.stdout.splitlines()) == 3
    assert "Newest 2 of 3 pending message(s) shown; 1 more not shown" in r.stderr and "--all" in r.stderr
    r = cli("queue", "list")  # piped: every one, no footer
    assert len(r.stdout.splitlines()) == 4 and "more not shown" not in r.stderr
    assert cli("queue", "list", "--all", "--limit", "2").exit_code == 2
    with Outbox() as box:
        finish(box, ids[2:], "sent")
    r = cli("queue", "list")
    assert r.exit_code == 0 and len(r.stdout.splitlines()) == 1  # the header
    assert "No pending messages. 5 finished" in r.stderr and "--state sent" in r.stderr


def run_on_terminal(args: list[str], env: dict[str, str], *, columns: int = 80, lines: int = 24) -> tuple[str, str, int]:
    """`mailctl ARGS` with stdout on a pseudo-terminal of this size: (screen text, stderr, exit)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "mailctl", *args], stdout=slave, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, env={**env, "COLUMNS": str(columns), "LINES": str(lines),
                                                            "NO_COLOR": "1", "TERM": "xterm"})
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    err = proc.stderr.read().decode()
    code = proc.wait(timeout=60)
    text = re.sub(r"\x1b\[[0-9;]*m", "", b"".join(chunks).decode()).replace("\r\n", "\n")
    return text, err, code


@pytest.fixture
def terminal_env(isolated_env, tmp_path):
    path = tmp_path / "outbox.sqlite3"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILCTL_")}
    env.update(MAILCTL_HOME=str(isolated_env), MAILCTL_OUTBOX=str(path), PYTHONPATH=str(ROOT / "src"))
    return env, path


def test_on_an_80_column_terminal_nothing_folds_and_replies_are_cut(terminal_env):
    env, path = terminal_env
    long_to = "someone@reject.example.test"
    with Outbox(path) as box:
        ids = [box.enqueue(raw(f"Invoice {i} for your order of last week, with a long subject line"),
                           "application.sender@example.com", [long_to, f"second{i}@example.org"]) for i in range(30)]
        finish(box, ids[-10:], "deferred", reply=LONG_REPLY, next_attempt_at=time.time() + 600)
    screen, err, code = run_on_terminal(["queue", "list"], env)
    assert code == 0, err
    rows = [line for line in screen.splitlines() if line.strip()]
    assert len(rows) == 1 + 20  # the header and a screenful (24 lines: header, footer, prompt in view)
    assert "Newest 20 of 30 pending message(s) shown; 10 more not shown" in err
    for line in rows:
        assert len(line) <= 80, line
    for line in rows[1:]:  # the whole date and the whole address on each row's one line
        assert DATE.search(line) and f"{long_to} +1" in line, line
        assert re.match(r"^\d+ ", line)
    deferred = [line for line in rows[1:] if "deferred" in line]
    assert deferred and all(line.rstrip().endswith("…") and "451 4.7.1" in line for line in deferred)
    assert "END-OF-REPLY" not in screen
    assert "Not shown at this width:" in err and "FROM" in err
    # the reply whole in queue show (wrapped, not cut) and in --json
    shown, err, code = run_on_terminal(["queue", "show", str(ids[-1])], env)
    assert code == 0, err
    assert "END-OF-REPLY" in shown and "Last reply:    " + LONG_REPLY in shown
    assert all(len(line) <= 80 for line in shown.splitlines() if DATE.search(line))
    data = json.loads(subprocess.run([sys.executable, "-m", "mailctl", "queue", "show", str(ids[-1]), "--json"],
                                     env=env, capture_output=True, text=True, check=True).stdout)
    assert LONG_REPLY in data.values()  # whole (under `reply`, the --json contract's name)
    # wide enough, every column comes back
    screen, err, code = run_on_terminal(["queue", "list", "--limit", "3"], env, columns=400)
    assert code == 0 and "Not shown at this width" not in err
    assert "application.sender@example.com" in screen and "END-OF-REPLY" in screen


def test_queue_stats_on_an_80_column_terminal_keeps_domains_whole(terminal_env):
    env, path = terminal_env
    domains = [f"very-long-recipient-domain-number-{i}.example.org" for i in range(5)]
    with Outbox(path) as box:
        for i in range(25):
            box.enqueue(raw(f"m{i}"), "app@example.com", [f"user{i}@{domains[i % 5]}", "x@gmail.com"])
    screen, err, code = run_on_terminal(["queue", "stats"], env)
    assert code == 0, err
    lines = [line for line in screen.splitlines() if line.strip()]
    assert all(len(line) <= 80 for line in lines), lines
    for d in domains:  # each domain whole on its one row, with its count
        assert any(re.match(rf"^{re.escape(d)}\s+5\s+5\b", line) for line in lines), (d, lines)
    assert "Not shown at this width: the 10m" in err and "--json" in err
    wide, err, code = run_on_terminal(["queue", "stats"], env, columns=200)
    assert code == 0 and "Not shown at this width" not in err and "1280m+" in wide


def test_fit_columns_drops_before_it_breaks_an_address(monkeypatch):
    cols = [Col("ID", "keep"), Col("WHEN", "keep"), Col("TO", "keep"), Col("NOTE", "cut", drop=2),
            Col("REPLY", "cut", drop=1, min_width=8)]
    assert fit_columns(cols, [4, 19, 30, 40, 50], 200) == {0: 4, 1: 19, 2: 30, 3: 40, 4: 50}
    w = fit_columns(cols, [4, 19, 30, 40, 50], 80)
    assert (w[0], w[1], w[2]) == (4, 19, 30) and sum(w.values()) + 2 * (len(w) - 1) <= 80
    assert fit_columns(cols, [4, 19, 30, 40, 50], 60) == {0: 4, 1: 19, 2: 30}  # NOTE, then REPLY left out
    narrow = fit_columns(cols, [4, 19, 30, 40, 50], 40)
    assert 3 not in narrow and 4 not in narrow and narrow == {0: 4, 1: 19, 2: 30}  # nothing left to drop: whole
    # rendered by rich on an 80-column "terminal": no line longer, no date or address broken
    monkeypatch.setenv("COLUMNS", "80")

    class Terminal:
        def __init__(self) -> None:
            self.parts: list[str] = []

        def write(self, s: str) -> int:
            self.parts.append(s)
            return len(s)

        def flush(self) -> None:
            pass

        def isatty(self) -> bool:
            return True

    out = Terminal()
    left = Output(stdout=out).table(cols, [(1, "2026-12-01 07:34:05", "someone@reject.test", "n" * 50, LONG_REPLY)])
    text = re.sub(r"\x1b\[[0-9;]*m", "", "".join(out.parts))
    assert left == [] and all(len(line) <= 80 for line in text.splitlines())
    assert "2026-12-01 07:34:05" in text and "someone@reject.test" in text and "…" in text


# --- queue purge -------------------------------------------------------------------------------
def fill_finished(path: Path, n: int, *, body_kb: int = 4, done_at: float = 1_000.0) -> None:
    """n sent messages with bodies and an attempt each, straight into the file (fast)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    body = b"x" * (body_kb * 1024)
    for i in range(1, n + 1):
        conn.execute("INSERT INTO messages (id, created_at, updated_at, sender, recipients, size, state, attempts,"
                     " next_attempt_at, done_at, age_base) VALUES (?, ?, ?, 'a@example.com', '[\"b@example.org\"]', ?,"
                     " 'sent', 1, ?, ?, ?)", (i, done_at - 5, done_at, len(body), done_at, done_at, done_at))
        conn.execute("INSERT INTO bodies VALUES (?, ?)", (i, body))
        conn.execute("INSERT INTO attempts (message, at, outcome, reply) VALUES (?, ?, 'sent', '250 ok')", (i, done_at))
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def file_bytes(path: Path) -> tuple[int, int]:
    wal = Path(f"{path}-wal")
    return path.stat().st_size, wal.stat().st_size if wal.exists() else 0


def test_purge_in_batches_keeps_the_wal_small_lets_writers_in_and_frees_the_space(tmp_path):
    path = tmp_path / "outbox.sqlite3"
    Outbox(path).close()
    fill_finished(path, 14000)  # ~67 MB of finished mail
    db_before, _ = file_bytes(path)
    assert db_before > 60e6
    stop = threading.Event()
    enqueued: list[float] = []
    errors: list[BaseException] = []

    def enqueuer() -> None:  # an application queueing meanwhile, with a short lock timeout
        try:
            with Outbox(path, timeout=3.0) as app:
                while not stop.is_set():
                    t0 = time.monotonic()
                    app.enqueue(raw("new"), "app@example.com", ["c@example.org"])
                    enqueued.append(time.monotonic() - t0)
                    time.sleep(0.005)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=enqueuer)
    with Outbox(path, clock=Clock(10_000.0)) as box:
        thread.start()
        try:
            assert box.purge(3600, batch_size=500) == 14000
        finally:
            stop.set()
            thread.join()
        _, wal_after_purge = file_bytes(path)  # the WAL never shrinks by itself: this is its peak
        print(f"db {db_before / 1e6:.1f} MB, WAL after purging it all {wal_after_purge / 1e6:.1f} MB")
        # in one transaction it was as large as the data; in batches a few MB (more when the
        # other connection's reads keep a checkpoint from restarting it now and then)
        assert wal_after_purge < db_before / 3, wal_after_purge
        assert not errors and len(enqueued) >= 5 and max(enqueued) < 3.0  # writers got their turn between batches
        assert box.count_listed(states=["sent"]) == 0 and box.count_listed(states=["queued"]) == len(enqueued)
        assert box.conn.execute("SELECT count(*) FROM attempts").fetchone()[0] == 0
        assert box.conn.execute("SELECT count(*) FROM bodies").fetchone()[0] == len(enqueued)
        space = box.reclaim_space()
    assert space["method"] == "incremental" and space["freed_bytes"] > 0.75 * db_before
    db, wal = file_bytes(path)
    assert db + wal < db_before / 4 and space["after_bytes"] < db_before / 4


def test_purge_of_an_older_outbox_vacuums_it_once_then_incrementally(tmp_path):
    path = tmp_path / "outbox.sqlite3"
    Outbox(path).close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA auto_vacuum=NONE")
    conn.execute("VACUUM")  # as an outbox made before 004 is
    conn.close()
    fill_finished(path, 3000)
    before = sum(file_bytes(path))
    with Outbox(path, clock=Clock(10_000.0)) as box:
        assert box.conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
        assert box.purge(3600) == 3000
        assert box.reclaim_space(vacuum=False)["method"] == "none"  # --no-vacuum
        space = box.reclaim_space()
        assert space["method"] == "vacuum" and space["note"] is None
        assert box.conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
    assert sum(file_bytes(path)) < before / 4


def test_vacuum_gives_way_to_a_busy_outbox_and_says_so(tmp_path):
    path = tmp_path / "outbox.sqlite3"
    Outbox(path).close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA auto_vacuum=NONE")
    conn.execute("VACUUM")
    conn.close()
    fill_finished(path, 1500)
    with Outbox(path, clock=Clock(10_000.0)) as box:
        box.purge(3600)
        writer = sqlite3.connect(path, isolation_level=None)
        writer.execute("BEGIN IMMEDIATE")  # a flush in the middle of a commit
        try:
            t0 = time.monotonic()
            space = box.reclaim_space(wait=0.3)
            assert time.monotonic() - t0 < 5
        finally:
            writer.execute("ROLLBACK")
            writer.close()
        assert space["method"] == "vacuum" and "skipped" in space["note"] and "queue purge" in space["note"]
        assert box.conn.execute("PRAGMA busy_timeout").fetchone()[0] == 60_000  # the connection's own again


def test_purge_command_reports_the_space_freed(cli, isolated_env):
    ids = [int(cli("queue", "add", input=raw(f"m{i}")).stdout) for i in range(3)]
    with Outbox() as box:
        finish(box, ids, "sent")
    r = cli("queue", "purge", "--older-than", "0s", "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["purged"] == 3 and data["space"]["method"] in ("incremental", "none")
    assert {"before_bytes", "after_bytes", "freed_bytes"} <= set(data["space"])
    ids = [int(cli("queue", "add", input=raw("x")).stdout)]
    with Outbox() as box:
        finish(box, ids, "sent")
    r = cli("queue", "purge", "--older-than", "0s")
    assert r.exit_code == 0 and "Purged 1 message(s)" in r.stderr and "Space:" in r.stderr and "freed" in r.stderr


def test_purge_keeps_what_is_not_old_enough_on_both_backends(outbox_factory):
    clock = Clock()
    box = outbox_factory(clock=clock)
    try:
        ids = [box.enqueue(raw(f"m{i}"), "app@example.com", ["b@example.org"]) for i in range(25)]
        finish(box, ids[:20], "sent")
        clock.t += 7200
        finish(box, ids[20:23], "failed")
        assert box.purge(3600, batch_size=4) == 20  # five full batches and an empty one
        assert sorted(m.id for m in box.list()) == ids[20:]
        space = box.reclaim_space()
        assert space["method"] in ("incremental", "vacuum", "none") and space["after_bytes"] >= 0
    finally:
        box.close()
