"""Bench: queue management on a large outbox, as whole `mailctl` processes (issue #14).

    python bench/queue_scale.py [--sizes 300000,1000000] [--src DIR] [--create-src DIR] [--dir DIR] [--only ...]

For each size N two outboxes are built straight into a temp file with executemany (about a
second per 100,000 rows; ~1 KB bodies):

* a *pending* one: N messages queued (70 %), deferred (25 %, with a long 4xx reply), held
  (4 %) and sending (1 %), to one recipient (90 %) or two or three, over 2,000 domains, ages
  from seconds to two days, 1 % partly failed. Timed: `queue stats`, `queue stats --json`, `queue list` on an
  80x24 pseudo-terminal (what an operator sees), `queue list --limit 50` piped.
* a *finished* one: N sent messages (finished 1-20 days ago, in about the order queued, one
  attempt each). Timed: an
  idle `queue flush` (nothing due, retention_days = 30 keeps them all), then `queue purge
  --older-than 1h` (everything), with the database and WAL sizes before and after and the
  WAL's peak size while the purge ran (looked at every 20 ms).

Targets (issue #14): stats < 1 s at 300k and < 2 s at 1M; list < 1 s at 300k; database +
WAL after purging everything < 25 % of before; idle flush < 0.5 s at 1M.

`--src DIR` runs another checkout's `src` (e.g. `git archive HEAD | tar -x -C /tmp/before`
for the "before" figures); `--create-src DIR` creates the outbox files with another
checkout's schema (an outbox made by an older mailctl, then purged by this one). One JSON
object per size on stdout; progress on stderr. The temp files are deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import pty
import random
import sqlite3
import struct
import subprocess
import sys
import tempfile
import termios
import fcntl
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DAY = 86400.0
COLS = ("id, created_at, updated_at, profile, sender, recipients, message_id, subject, size, state, attempts,"
        " next_attempt_at, lease_until, lease_owner, last_attempt_at, last_reply, last_server, done_at, age_base,"
        " failed_recipients")
REPLY_4XX = ("451 4.7.1 Greylisted, please try again later: the recipient's server keeps unknown senders out for a"
             " while (see https://postmaster.example.net/greylisting for the details)")
BODY_PAD = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore.\r\n"
            * 9)


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def env_for(src: Path, home: Path, outbox: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILCTL_")}
    env.update(MAILCTL_HOME=str(home), MAILCTL_OUTBOX=str(outbox), PYTHONPATH=str(src), COLUMNS="80", LINES="24",
               NO_COLOR="1")
    return env


def create_schema(src: Path, path: Path) -> None:
    """An empty outbox made by `src`'s mailctl (its migrations, its creation pragmas)."""
    code = "import sys; from mailctl.outbox import Outbox; Outbox(sys.argv[1]).close()"
    subprocess.run([sys.executable, "-c", code, str(path)], check=True,
                   env={**os.environ, "PYTHONPATH": str(src)})


def _body(i: int, rcpt: str, subject: str) -> bytes:
    return (f"From: app@example.com\r\nTo: {rcpt}\r\nSubject: {subject}\r\nMessage-ID: <{i}@bench.example>\r\n"
            f"\r\n{BODY_PAD}").encode()


def pending_rows(n: int, now: float, rng: random.Random):
    """(message row, body) for the pending outbox."""
    for i in range(1, n + 1):
        k = rng.random()
        state = "queued" if k < 0.70 else "deferred" if k < 0.95 else "held" if k < 0.99 else "sending"
        created = now - rng.random() ** 3 * 2 * DAY
        many = 1 if rng.random() < 0.9 else rng.choice((2, 2, 3))  # one in ten to several people
        rcpts = [f"user{rng.randrange(100000)}@d{rng.randrange(2000)}.example" for _ in range(many)]
        failed = json.dumps({rcpts[0]: "550 5.1.1 no such user"}) if len(rcpts) > 1 and rng.random() < 0.1 else None
        tries = 0 if state in ("queued", "held") else rng.randrange(1, 8)
        reply = REPLY_4XX if state == "deferred" else None
        subject = f"Invoice {i} for your order of last week"
        body = _body(i, rcpts[0], subject)
        yield ((i, created, created, "bench", "app@example.com", json.dumps(rcpts), f"<{i}@bench.example>", subject,
                len(body), state, tries, created + (600 if state == "deferred" else 0),
                now + 3600 if state == "sending" else None, "bench-owner" if state == "sending" else None,
                created if tries else None, reply, "mx.example.net:25" if tries else None, None, created, failed), body)


def finished_rows(n: int, now: float, rng: random.Random):
    for i in range(1, n + 1):
        done = now - 20 * DAY + 19 * DAY * i / n + rng.random() * 600  # in about the order queued
        created = done - 2
        rcpt = f"user{rng.randrange(100000)}@d{rng.randrange(2000)}.example"
        subject = f"Invoice {i} for your order of last week"
        body = _body(i, rcpt, subject)
        yield ((i, created, done, "bench", "app@example.com", json.dumps([rcpt]), f"<{i}@bench.example>", subject,
                len(body), "sent", 1, created, None, None, done, "250 2.0.0 Ok: queued as 4Xyz", "mx.example.net:25",
                done, created, None), body)


def fill(path: Path, rows, *, attempts: bool) -> None:
    """Insert straight into the file: no journal while building, WAL again at the end."""
    conn = sqlite3.connect(str(path), isolation_level=None)
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.execute("PRAGMA journal_mode=OFF")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-262144")
    marks = ",".join("?" * len(COLS.split(",")))
    conn.execute("BEGIN")
    chunk: list = []

    def flush_chunk() -> None:
        conn.executemany(f"INSERT INTO messages ({COLS}) VALUES ({marks})", [r for r, _b in chunk])
        conn.executemany("INSERT INTO bodies (message, raw) VALUES (?, ?)", [(r[0], b) for r, b in chunk])
        if attempts:
            conn.executemany(
                "INSERT INTO attempts (message, at, profile, server, outcome, reply, duration) VALUES (?,?,?,?,?,?,?)",
                [(r[0], r[17], "bench", r[16], "sent", r[15], 0.05) for r, _b in chunk])
        chunk.clear()

    for item in rows:
        chunk.append(item)
        if len(chunk) >= 20000:
            flush_chunk()
    flush_chunk()
    conn.execute("COMMIT")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.close()


def sizes(path: Path) -> dict[str, int]:
    wal = Path(str(path) + "-wal")
    return {"db_bytes": path.stat().st_size, "wal_bytes": wal.stat().st_size if wal.exists() else 0}


def run(cmd: list[str], env: dict[str, str], *, tty: bool = False, timeout: float = 300) -> dict:
    """One whole process: wall seconds, exit code, bytes of stdout, the last stderr line."""
    full = [sys.executable, "-m", "mailctl", *cmd]
    start = time.perf_counter()
    if tty:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        proc = subprocess.Popen(full, env=env, stdout=slave, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        os.close(slave)
        got = [0]

        def drain() -> None:
            while True:
                try:
                    data = os.read(master, 65536)
                except OSError:
                    return
                if not data:
                    return
                got[0] += len(data)

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        try:
            err = proc.communicate(timeout=timeout)[1]
        except subprocess.TimeoutExpired:
            proc.kill()
            err = proc.communicate()[1]
            return {"seconds": None, "timeout": timeout, "exit_code": None}
        reader.join(5)
        os.close(master)
        out_bytes = got[0]
    else:
        try:
            proc = subprocess.run(full, env=env, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"seconds": None, "timeout": timeout, "exit_code": None}
        err, out_bytes = proc.stderr, len(proc.stdout)
    seconds = time.perf_counter() - start
    lines = err.decode("utf-8", "replace").strip().splitlines()
    return {"seconds": round(seconds, 3), "exit_code": proc.returncode, "stdout_bytes": out_bytes,
            "stderr": lines[-1][:200] if lines else ""}


class WalWatch:
    """The WAL file's largest size while a command runs."""

    def __init__(self, path: Path) -> None:
        self.wal = Path(str(path) + "-wal")
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.wal.stat().st_size)
            except OSError:
                pass
            self._stop.wait(0.02)

    def __enter__(self) -> "WalWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def bench_pending(n: int, tmp: Path, src: Path, create_src: Path, home: Path, now: float, tty_timeout: float) -> dict:
    path = tmp / f"pending-{n}.sqlite3"
    create_schema(create_src, path)
    t0 = time.perf_counter()
    fill(path, pending_rows(n, now, random.Random(n)), attempts=False)
    built = time.perf_counter() - t0
    log(f"  pending outbox of {n:,} built in {built:.1f}s ({path.stat().st_size / 1e6:.0f} MB)")
    env = env_for(src, home, path)
    run(["queue", "stats", "--json"], env)  # migrations (if any) and a warm page cache for all that follow
    out = {"build_seconds": round(built, 1)}
    for name, cmd, tty in [("stats", ["queue", "stats"], False), ("stats_json", ["queue", "stats", "--json"], False),
                           ("list_terminal_80x24", ["queue", "list"], True),
                           ("list_limit_50_piped", ["queue", "list", "--limit", "50"], False)]:
        out[name] = run(cmd, env, tty=tty, timeout=tty_timeout if tty else 300)
        log(f"  {name}: {out[name]}")
    path.unlink()
    for suffix in ("-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    return out


def bench_finished(n: int, tmp: Path, src: Path, create_src: Path, home: Path, now: float) -> dict:
    path = tmp / f"finished-{n}.sqlite3"
    create_schema(create_src, path)
    t0 = time.perf_counter()
    fill(path, finished_rows(n, now, random.Random(n)), attempts=True)
    built = time.perf_counter() - t0
    log(f"  finished outbox of {n:,} built in {built:.1f}s ({path.stat().st_size / 1e6:.0f} MB)")
    env = env_for(src, home, path)
    run(["queue", "stats", "--json"], env)  # migrations (if any), warm cache
    out: dict = {"build_seconds": round(built, 1)}
    out["idle_flush"] = run(["queue", "flush"], env)
    out["idle_flush_again"] = run(["queue", "flush"], env)
    log(f"  idle flush: {out['idle_flush']} / {out['idle_flush_again']}")
    before = sizes(path)
    with WalWatch(path) as watch:
        out["purge"] = run(["queue", "purge", "--older-than", "1h"], env, timeout=600)
    after = sizes(path)
    total_before, total_after = sum(before.values()), sum(after.values())
    out["purge"].update(before=before, after=after, wal_peak_bytes=watch.peak,
                        after_over_before=round(total_after / total_before, 4) if total_before else None)
    log(f"  purge: {out['purge']}")
    path.unlink()
    for suffix in ("-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="300000,1000000", help="comma-separated row counts")
    ap.add_argument("--src", default=str(ROOT / "src"), help="the mailctl source tree to run (default: this checkout)")
    ap.add_argument("--create-src", default=None, help="the source tree whose schema creates the files (default: --src)")
    ap.add_argument("--dir", default=None, help="where the temp files go (default: the system temp dir)")
    ap.add_argument("--only", choices=("pending", "finished"), default=None)
    ap.add_argument("--tty-timeout", type=float, default=60.0,
                    help="stop `queue list` on the terminal after this long (printing every row takes minutes)")
    a = ap.parse_args()
    src = Path(a.src).resolve()
    create_src = Path(a.create_src).resolve() if a.create_src else src
    with tempfile.TemporaryDirectory(dir=a.dir, prefix="queue-scale-") as d:
        tmp = Path(d)
        home = tmp / "home"
        home.mkdir()
        (home / "profiles.toml").write_text(
            'schema_version = 1\ndefault = "bench"\n[settings]\nretention_days = 30\n'
            '[profiles.bench]\ntype = "smtp"\nhost = "127.0.0.1"\nport = 9\nsecurity = "none"\nauth = "none"\n'
            'from_address = "app@example.com"\n')
        for n in [int(s) for s in a.sizes.split(",") if s]:
            now = time.time()
            log(f"size {n:,} (src {src}, created by {create_src})")
            result: dict = {"bench": "queue_scale", "rows": n, "src": str(src), "created_by": str(create_src)}
            if a.only in (None, "pending"):
                result["pending"] = bench_pending(n, tmp, src, create_src, home, now, a.tty_timeout)
            if a.only in (None, "finished"):
                result["finished"] = bench_finished(n, tmp, src, create_src, home, now)
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
