"""Plain successes in a side file beside an SQLite outbox (mailctl.outbox.resultsfile): one
write() a result instead of a commit, folded into the database by the next write transaction
of any handle. Real files, real flock, real processes killed with SIGKILL, a real SMTP server."""

from __future__ import annotations

import fcntl
import os
import signal
import sqlite3
import stat
import subprocess
import struct
import sys
import textwrap
import time
import zlib
from pathlib import Path

import pytest

from mailctl.outbox import FlushOptions, FlushPolicy, Outbox, flush, resultsfile
from mailctl.profiles.model import ResolvedProfile
from mailctl.transports import open_transport

sys.path.insert(0, str(Path(__file__).parent))
from outbox_smtp import RecordingHandler, SmtpServer, journaled_ids  # noqa: E402

pytestmark = pytest.mark.timeout(120)

OWNER = "flush-a"


@pytest.fixture(params=["update_from", "row_by_row"])
def fold_impl(request, monkeypatch):
    """Both ways the fold applies what is staged: UPDATE ... FROM (SQLite 3.33+) and row by row."""
    from mailctl.outbox import store

    if request.param == "row_by_row":
        monkeypatch.setattr(store, "_UPDATE_FROM", False)
    return request.param


def raw_msg(n: int) -> bytes:
    return (f"From: app@example.com\r\nTo: user@example.org\r\nSubject: side {n}\r\n"
            f"Message-ID: <s{n}@test.example>\r\n\r\nbody {n}\r\n").encode()


def side_files(path: Path) -> list[Path]:
    d = resultsfile.results_dir(path)
    return sorted(f for f in d.iterdir() if not f.name.startswith(".")) if d.is_dir() else []


def peek(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def row(path: Path, mid: int) -> tuple:
    with peek(path) as c:
        return c.execute("SELECT state, attempts, lease_owner FROM messages WHERE id=?", (mid,)).fetchone()


def outcomes(path: Path, mid: int) -> list[tuple]:
    with peek(path) as c:
        return c.execute("SELECT outcome, profile, server, reply, duration FROM attempts WHERE message=? ORDER BY id",
                         (mid,)).fetchall()


def locked_by_someone(f: Path) -> bool:
    fd = os.open(f, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def queued(tmp_path: Path, n: int, **kw) -> tuple[Path, Outbox, list]:
    path = tmp_path / "o.sqlite3"
    box = Outbox(path, **kw)
    for i in range(n):
        box.enqueue(raw_msg(i), "app@example.com", ["user@example.org"], "work")
    return path, box, box.claim_batch(OWNER, n, 300)


def sent(box: Outbox, claim, reply: str = "250 2.0.0 Ok: queued") -> bool:
    return box.record_attempt(claim, OWNER, "sent", reply=reply, server="127.0.0.1:25", profile="work", duration=0.01)


# 1 -------------------------------------------------------------------------------------------
def test_a_plain_success_is_one_line_in_a_private_locked_side_file(tmp_path):
    path, box, claims = queued(tmp_path, 2)
    assert sent(box, claims[0], reply="250 ok\twith a tab \\ and a backslash")
    (f,) = side_files(path)
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert stat.S_IMODE(f.parent.stat().st_mode) == 0o700
    assert f.name.startswith(f"{os.getpid()}-")
    (entry,) = resultsfile.decode(f.read_bytes())
    assert entry[0] == claims[0].id and entry[1] == OWNER and entry[3:] == (
        "work", "127.0.0.1:25", "250 ok\twith a tab \\ and a backslash", 0.01)
    assert locked_by_someone(f)  # its writer lives
    with peek(path) as c:
        assert c.execute("SELECT count(*) FROM results").fetchone() == (0,)  # not in the database
    assert row(path, claims[0].id) == ("sending", 0, OWNER)
    box.close()


def test_the_next_write_folds_the_lines_and_empties_the_file_and_close_removes_it(tmp_path):
    path, box, claims = queued(tmp_path, 3)
    assert sent(box, claims[0]) and sent(box, claims[1])
    (f,) = side_files(path)
    assert len(resultsfile.decode(f.read_bytes())) == 2
    assert box.claim_batch(OWNER, 10, 300) == []  # a write transaction: folds first
    assert f.stat().st_size == 0
    for c in claims[:2]:
        assert row(path, c.id) == ("sent", 1, None)
        assert outcomes(path, c.id) == [("sent", "work", "127.0.0.1:25", "250 2.0.0 Ok: queued", 0.01)]
    assert row(path, claims[2].id) == ("sending", 0, OWNER)
    box.close()
    assert side_files(path) == []


def test_a_reader_shows_a_live_writers_successes_as_sent_and_each_is_logged_once(tmp_path):
    path, box, claims = queued(tmp_path, 3)
    assert sent(box, claims[0])
    with Outbox(path) as reader:  # another handle: its own open file, the writer's flock holds
        assert reader.get(claims[0].id).state == "sent"
        assert reader.count_by_state()["sent"] == 1
    (f,) = side_files(path)
    assert f.stat().st_size > 0  # a live writer's file is read, never emptied or removed by others
    assert sent(box, claims[1])
    box.release_claims(OWNER)  # the writer's own fold: the first line again, and the second
    assert [row(path, c.id)[0] for c in claims] == ["sent", "sent", "queued"]
    assert [len(outcomes(path, c.id)) for c in claims] == [1, 1, 0]
    assert f.stat().st_size == 0
    box.close()


def test_a_reply_of_none_or_of_any_text_comes_back_as_written(tmp_path):
    path, box, claims = queued(tmp_path, 4)
    replies = [None, "250 ok \\N \\t\tend\r\n", "250 \u00e9t\u00e9 \U0001f4e8"]
    for c, reply in zip(claims, replies):
        assert box.record_attempt(c, OWNER, "sent", reply=reply, server=None, profile=None, duration=None)
    (f,) = side_files(path)
    assert [e[5] for e in resultsfile.decode(f.read_bytes())] == replies
    # text SQLite cannot store (a lone surrogate) never becomes a line that every later fold
    # would trip over: it goes to the database directly and fails there, as it always did
    with pytest.raises(UnicodeEncodeError):
        box.record_attempt(claims[3], OWNER, "sent", reply="250 \udcff")
    assert box.release_claims(OWNER) == 1  # the write transactions still work
    with peek(path) as c:
        assert c.execute("SELECT reply FROM attempts ORDER BY id").fetchall() == [(r,) for r in replies]
    box.close()


def test_the_line_format_is_the_one_earlier_releases_wrote():
    """A killed flush's file is folded by whatever mailctl opens the outbox next, maybe a newer
    one: the bytes of a line must not change (written here as session 6's encoder wrote them)."""
    at, duration = 1_800_000_000.123456, 0.000123
    packed = struct.pack("<d", at).hex(), struct.pack("<d", duration).hex()
    body = f"12345\t{packed[0]}\t{packed[1]}\t250 2.0.0 Ok: queued\tflush-1\tbench\t127.0.0.1:25\n".encode()
    line = b"%08x\t" % zlib.crc32(body) + body
    entry = (12345, "flush-1", at, "bench", "127.0.0.1:25", "250 2.0.0 Ok: queued", duration)
    assert resultsfile.encode(entry) == line
    assert resultsfile.decode(line) == [entry]
    no_duration = entry[:6] + (None,)
    body = f"12345\t{packed[0]}\t\\N\t250 2.0.0 Ok: queued\tflush-1\tbench\t127.0.0.1:25\n".encode()
    assert resultsfile.encode(no_duration) == b"%08x\t" % zlib.crc32(body) + body
    assert resultsfile.decode(resultsfile.encode(no_duration)) == [no_duration]


def test_a_line_for_a_message_deleted_since_is_dropped_not_a_broken_fold(tmp_path, fold_impl):
    # another handle folds the live writer's line (the message reads as sent), deletes the
    # message; the writer's own fold of the same line then has no message to log it for
    path, box, claims = queued(tmp_path, 2)
    assert sent(box, claims[0])
    with Outbox(path) as other:
        assert other.delete([claims[0].id]) == [claims[0].id]
    assert box.release_claims(OWNER) == 1  # its fold: the deleted message's line is dropped
    with peek(path) as c:
        assert c.execute("SELECT count(*) FROM attempts").fetchone() == (0,)
    box.close()
    # and a dead writer's file naming a deleted message does not stop every later write
    proc = subprocess.run([sys.executable, "-c", WRITER, str(path), "300", "1", "kill"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL and proc.stdout.split() == [str(claims[1].id)], proc.stderr
    assert len(side_files(path)) == 1
    with peek(path) as c:
        c.execute("DELETE FROM messages")  # gone, say by a restore of an older copy
    with Outbox(path) as later:
        later.enqueue(raw_msg(9), "app@example.com", ["user@example.org"])  # a write: folds the dead file
        assert later.count_by_state()["queued"] == 1
    assert side_files(path) == []


# 2 -------------------------------------------------------------------------------------------
WRITER = textwrap.dedent("""
    import os, sys
    from mailctl.outbox import Outbox
    box = Outbox(sys.argv[1])
    claims = box.claim_batch("dead-flush", 10, float(sys.argv[2]))
    for c in claims[:int(sys.argv[3])]:
        box.record_attempt(c, "dead-flush", "sent", reply="250 ok", server="127.0.0.1:2525", profile="work")
    print(" ".join(str(c.id) for c in claims[:int(sys.argv[3])]), flush=True)
    if sys.argv[4] == "kill":
        os.kill(os.getpid(), 9)
    sys.stdin.read()  # "stay": alive until the test closes our stdin
""")


def test_a_writer_killed_before_its_fold_has_its_deliveries_applied_not_repeated(tmp_path):
    path = tmp_path / "o.sqlite3"
    with Outbox(path) as box:
        ids = [box.enqueue(raw_msg(i), "app@example.com", ["user@example.org"]) for i in range(5)]
    proc = subprocess.run([sys.executable, "-c", WRITER, str(path), "300", "3", "kill"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert [int(i) for i in proc.stdout.split()] == ids[:3]
    (f,) = side_files(path)
    assert not locked_by_someone(f)  # its writer is gone
    assert [row(path, i)[0] for i in ids] == ["sending"] * 5  # nothing in the database yet

    # within the dead flush's lease: its holder is dead, so a claim takes what it did not send
    with Outbox(path) as box:
        taken = box.claim_batch("flush-b", 10, 300)
        assert sorted(c.id for c in taken) == ids[3:]
        for i in ids[:3]:
            info = box.get(i)
            assert (info.state, info.attempts) == ("sent", 1)
            assert [e["outcome"] for e in info.attempt_log] == ["sent"]  # not 'interrupted'
    assert side_files(path) == []  # applied, then removed


def test_a_torn_or_damaged_line_is_skipped_and_the_others_applied(tmp_path):
    # what a power cut mid-write leaves: the end of the last line missing, or a line's bytes
    # not what its check says; the good lines still count
    path = tmp_path / "o.sqlite3"
    with Outbox(path) as box:
        ids = [box.enqueue(raw_msg(i), "app@example.com", ["user@example.org"]) for i in range(4)]
        box.claim_batch("dead-flush", 10, 300)
    lines = [resultsfile.encode((i, "dead-flush", time.time(), None, "s", "250 ok", None)) for i in ids]
    damaged = lines[1].replace(b"250 ok", b"250 OK")  # the check no longer matches
    d = resultsfile.results_dir(path)
    d.mkdir(mode=0o700)
    (d / "4242-dead").write_bytes(lines[0] + damaged + lines[2] + lines[3][:-7])
    with Outbox(path, clock=lambda: time.time() + 600) as box:  # past the lease
        taken = box.claim_batch("flush-b", 10, 300)
        assert sorted(c.id for c in taken) == [ids[1], ids[3]]  # sent again: at least once
        assert [box.get(i).state for i in (ids[0], ids[2])] == ["sent", "sent"]
    assert side_files(path) == []


def test_a_live_writers_lines_count_for_the_rate_limit_of_another_process(tmp_path):
    path = tmp_path / "o.sqlite3"
    with Outbox(path) as box:
        for i in range(4):
            box.enqueue(raw_msg(i), "app@example.com", ["user@example.org"], "work")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path), "300", "3", "stay"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert len(writer.stdout.readline().split()) == 3
        with Outbox(path) as box:
            since = time.time() - 60
            assert len(box.sent_since(since, "work")) == 3
            assert box.sent_since(since, "home") == []
            assert len(box.sent_since(since)) == 3
            box.count_due()  # this handle folds the live writer's lines ...
            assert len(box.sent_since(since, "work")) == 3  # ... and they are counted once still
        (f,) = side_files(path)
        assert locked_by_someone(f) and f.stat().st_size > 0  # the live writer's file is left alone
    finally:
        writer.stdin.close()
        writer.wait(timeout=30)


# 3 -------------------------------------------------------------------------------------------
def test_with_synchronous_full_a_success_is_committed_to_the_database(tmp_path):
    path, box, claims = queued(tmp_path, 1, synchronous="FULL")
    assert sent(box, claims[0])
    assert side_files(path) == []
    with peek(path) as c:
        assert c.execute("SELECT message FROM results").fetchall() == [(claims[0].id,)]
    box.close()


def test_where_no_side_file_can_be_made_a_success_goes_to_the_database(tmp_path):
    path = tmp_path / "o.sqlite3"
    Path(f"{path}.results").write_text("not a directory")
    box = Outbox(path)
    box.enqueue(raw_msg(0), "app@example.com", ["user@example.org"])
    (claim,) = box.claim_batch(OWNER, 1, 300)
    assert sent(box, claim)
    with peek(path) as c:
        assert c.execute("SELECT message FROM results").fetchall() == [(claim.id,)]
    assert box.get(claim.id).state == "sent"
    box.close()
    assert Path(f"{path}.results").read_text() == "not a directory"


def test_an_unborn_side_file_of_a_dead_writer_is_removed_a_live_ones_kept(tmp_path):
    # created under a dot name, locked, then renamed: a dot file whose lock is free is what a
    # writer killed between creating and renaming leaves (empty)
    path, box, claims = queued(tmp_path, 1)
    d = resultsfile.results_dir(path)
    d.mkdir(mode=0o700)
    (d / ".99-dead").write_bytes(b"")
    held = os.open(d / ".98-alive", os.O_WRONLY | os.O_CREAT, 0o600)
    fcntl.flock(held, fcntl.LOCK_EX)
    try:
        box.release_claims(OWNER)  # any write transaction looks
        assert sorted(p.name for p in d.iterdir()) == [".98-alive"]
    finally:
        os.close(held)
    box.close()


def test_an_outbox_opened_through_a_symbolic_link_shares_the_side_files(tmp_path):
    path, box, claims = queued(tmp_path, 2)
    link = tmp_path / "link.sqlite3"
    link.symlink_to(path)
    with Outbox(link) as other:
        assert sent(other, claims[0])  # written beside the real file
        assert resultsfile.results_dir(path).is_dir() and not resultsfile.results_dir(link).exists()
        assert box.get(claims[0].id).state == "sent"
    box.close()


# 4 -------------------------------------------------------------------------------------------
class Slow(RecordingHandler):
    async def handle_DATA(self, server, session, envelope):
        import asyncio

        await asyncio.sleep(0.02)
        return await super().handle_DATA(server, session, envelope)


FLUSHER = textwrap.dedent("""
    import sys
    from mailctl.outbox import FlushOptions, FlushPolicy, Outbox, flush
    from mailctl.profiles.model import ResolvedProfile
    from mailctl.transports import open_transport
    p = ResolvedProfile("relay", {"type": "smtp", "host": "127.0.0.1", "port": int(sys.argv[2]), "security": "none",
                                  "auth": "none", "from_address": "app@example.com", "timeout": 10})
    flush(Outbox(sys.argv[1]), policy=FlushPolicy(), resolve=lambda name: p,
          open_transport=lambda q: open_transport(q, None), options=FlushOptions())
""")


def test_a_flush_process_killed_mid_run_repeats_at_most_the_message_in_flight(tmp_path):
    path = tmp_path / "o.sqlite3"
    with Outbox(path) as box:
        ids = [box.enqueue(raw_msg(i), "app@example.com", ["user@example.org"]) for i in range(60)]
    handler = Slow()
    with SmtpServer(handler) as server:
        proc = subprocess.Popen([sys.executable, "-c", FLUSHER, str(path), str(server.port)])
        deadline = time.monotonic() + 30
        while handler.count < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.kill()
        proc.wait(timeout=30)
        before = dict(handler.by_message_id)
        assert 20 <= len(before) < 60
        on_record = journaled_ids(path)
        assert on_record  # results the dead flush had not folded yet
        p = ResolvedProfile("relay", {"type": "smtp", "host": "127.0.0.1", "port": server.port, "security": "none",
                                      "auth": "none", "from_address": "app@example.com", "timeout": 10})
        with Outbox(path) as box:
            report = flush(box, policy=FlushPolicy(), resolve=lambda name: p,
                           open_transport=lambda q: open_transport(q, None), options=FlushOptions())
            assert all(box.get(i).state == "sent" for i in ids)
        twice = [m for m, n in handler.by_message_id.items() if n > 1]
        assert len(twice) <= 1  # the one on the wire when the flush died, if any
        assert report.sent == 60 - len(before) + len(twice)
    assert side_files(path) == []


@pytest.mark.parametrize("count", [0, 1, 9, 10, 11, 99, 100, 101, 137, 250])
def test_lines_are_staged_whole_and_in_order_whatever_their_count(tmp_path, count):
    from mailctl.outbox.store import _stage

    box = Outbox(tmp_path / "o.sqlite3")
    entries = [(i, f"owner-{i % 3}", 1_800_000_000.0 + i / 7, None if i % 5 else "p", "s:25", f"250 ok {i}",
                None if i % 4 else i / 1000) for i in range(count)]
    with box._write(fold=False):
        _stage(box.conn, entries)
        staged = box.conn.execute("SELECT message, owner, at, profile, server, reply, duration FROM results"
                                  " ORDER BY id").fetchall()
        box.conn.execute("DELETE FROM results")
    assert staged == entries
    box.close()


def _as_user(uid: int, gid: int, work) -> object:
    """Run `work()` in a forked child that has become uid/gid (the modules it needs are imported
    already: this interpreter's own files may be out of that user's reach); its result back."""
    import pickle

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never back into pytest
        code = 0
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            data = pickle.dumps(("ok", work()))
        except BaseException as exc:  # noqa: BLE001 (reported to the parent)
            data, code = pickle.dumps(("error", repr(exc))), 1
        os.write(w, data)
        os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    kind, value = pickle.loads(data)
    assert kind == "ok", value
    return value


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: a root flush of another user's outbox")
def test_a_root_flush_of_a_users_outbox_leaves_side_files_the_user_can_fold():
    """A system cron flushing a user's queue as root, killed before its fold: its side file
    belongs to the outbox's owner (as SQLite's -wal and -shm do), so the owner's next flush
    applies those deliveries instead of sending them again after the lease."""
    import pwd
    import shutil
    import tempfile

    nobody = pwd.getpwnam("nobody")
    uid, gid = nobody.pw_uid, nobody.pw_gid
    d = Path(tempfile.mkdtemp(prefix="mailctl-root-flush-"))
    try:
        d.chmod(0o755)
        os.chown(d, uid, gid)
        path = d / "o.sqlite3"
        Outbox(d / "warm.sqlite3").close()  # every module the child needs, imported here

        def make():
            with Outbox(path) as box:
                return [box.enqueue(raw_msg(i), "app@example.com", ["user@example.org"]) for i in range(4)]

        ids = _as_user(uid, gid, make)
        assert os.stat(path).st_uid == uid
        # an earlier root flush left the directory as root's: it is given back too
        resultsfile.results_dir(path).mkdir(mode=0o700)
        box = Outbox(path)  # root
        claims = box.claim_batch(OWNER, 4, 300)
        for c in claims[:3]:
            assert sent(box, c)
        box.close()  # no fold: as a root flush killed now leaves it (its lock gone)
        (f,) = side_files(path)
        assert (os.stat(f).st_uid, os.stat(f).st_gid) == (uid, gid)
        assert (os.stat(f.parent).st_uid, stat.S_IMODE(os.stat(f.parent).st_mode)) == (uid, 0o700)

        def fold():
            with Outbox(path) as box:
                box.release_claims(OWNER)  # a write transaction: it folds what it can read
                return [(box.get(i).state, [e["outcome"] for e in box.get(i).attempt_log]) for i in ids], \
                    sorted(p.name for p in resultsfile.results_dir(path).iterdir())

        states, left = _as_user(uid, gid, fold)
        assert states == [("sent", ["sent"])] * 3 + [("queued", [])]
        assert left == []  # the dead root flush's file, removed by the user's handle
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_a_link_in_place_of_the_side_file_directory_is_never_written_nor_read_through(tmp_path):
    """Whoever owns the outbox's directory could plant `<outbox>.results` as a link to anywhere
    (a root flush of a user's outbox would then write there, and remove what it took for dead
    writers' files): the writer keeps its results in the database, a fold reads nothing through
    the link, and nothing where it points is touched."""
    path, box, claims = queued(tmp_path, 2)
    box.close()
    target = tmp_path / "elsewhere"
    target.mkdir()
    bait = target / "4242-0123456789ab"  # looks like a dead writer's side file, with a valid line
    bait.write_bytes(resultsfile.encode((claims[1].id, OWNER, time.time(), "work", "s", "250 ok", None)))
    resultsfile.results_dir(path).symlink_to(target)
    box = Outbox(path)
    assert sent(box, claims[0])
    with peek(path) as c:
        assert c.execute("SELECT message FROM results").fetchall() == [(claims[0].id,)]
    assert box.release_claims(OWNER) == 1  # a write transaction: it folds what it can see
    assert (box.get(claims[0].id).state, box.get(claims[1].id).state) == ("sent", "queued")
    assert sorted(p.name for p in target.iterdir()) == [bait.name]  # untouched
    box.close()


def test_something_else_in_the_side_file_directory_does_not_stop_the_writes(tmp_path):
    """A directory (or a link) someone made among the side files is skipped, not a fold that
    fails, and with it every write transaction of the outbox."""
    path, box, claims = queued(tmp_path, 2)
    assert sent(box, claims[0])
    d = resultsfile.results_dir(path)
    (d / "4242-0123456789ab").mkdir()
    (d / "4243-0123456789ab").symlink_to(tmp_path / "nowhere")
    with Outbox(path) as other:
        assert other.release_claims(OWNER) == 1  # a write transaction, folding what it can read
        assert other.get(claims[0].id).state == "sent"
    box.close()
