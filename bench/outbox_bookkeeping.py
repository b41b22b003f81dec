"""Bench: the outbox's per-message bookkeeping in a flush, without the network: CPU
microseconds a message for what FlushRun asks of the store (its share of a claim, then one
committed result), and pages written per commit, on SQLite (the default) or PostgreSQL.

    python bench/outbox_bookkeeping.py [--count 5000] [--rounds 3] [--pg URL] [--connections N]

Two measures, each the median of the rounds:

- `store_cpu_us_per_msg`: claim_batch(100) + record_attempt() per message, as the flush calls
  them (a lease renewal every 60 s of the store clock, the clock advancing 1 ms a message);
- `engine_cpu_us_per_msg`: the whole FlushRun over a transport that accepts every message at
  once (no socket): the store's part plus the engine's own Python per message. With
  `--connections N`, N lanes (threads) share the run and their results are group-committed:
  `engine_commits_per_msg` says how many database commits a message cost (1.0: one each;
  a plain success written to a side file is none), counted in a round of its own. The
  transport then takes `--server-us` microseconds a message (a sleep, as a server's round
  trip would), so that results of several lanes meet.

`wal_bytes_per_commit` is the growth of the -wal file divided by the results recorded (SQLite
writes a page of 4 KB per page changed). Each result was a commit of its own until side files
(mailctl/outbox/resultsfile.py): since, a plain success is a line in a file and the WAL grows
only by the claims' and folds' commits, so the figure is per result, the name kept so that
`--baseline` compares like with like.
CPU time (process_time) and not wall time: it does not depend on the other load of the machine.
Target (issue #14): the bookkeeping cost halved against the same bench before the change."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# --src DIR: measure another checkout's mailctl (what --baseline runs); read before the import
SRC = Path(sys.argv[sys.argv.index("--src") + 1]) if "--src" in sys.argv[:-1] else ROOT / "src"
sys.path.insert(0, str(SRC))

from mailctl.outbox import FlushOptions, FlushPolicy, Outbox, flush  # noqa: E402


def messages(count: int) -> list[tuple[bytes, str, list[str]]]:
    body = ("x" * 76 + "\r\n") * 11  # ~1 KB with the header
    return [((f"From: app@example.com\r\nTo: user@example.org\r\nSubject: bench {i}\r\n"
              f"Message-ID: <bench{i}@example.com>\r\n\r\n{body}").encode(), "app@example.com", ["user@example.org"])
            for i in range(count)]


class Clock:
    """The store's clock: real time plus 1 ms per call, so a long run renews leases as a real one does."""

    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        self.t += 0.001
        return self.t


class Accepting:
    """A transport that accepts every message at once (or after `delay` seconds, the server's
    round trip): the engine without the wire."""

    overlaps_work = True
    server = None
    delay = 0.0

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def send(self, raw, sender, recipients, *, while_waiting=None):
        if while_waiting is not None:
            while_waiting()
        if self.delay:
            time.sleep(self.delay)
        return _Result()


class _Result:
    server = "127.0.0.1:25"
    reply = "250 2.0.0 Ok: queued"
    refused: dict = {}


class _Profile:
    name = "bench"
    values: dict = {}


def open_box(tmp: Path, n: int, pg: str | None, clock: Clock):
    if pg:
        from mailctl.outbox.pg import PgOutbox

        os.environ["MAILCTL_PG_SCHEMA"] = f"bench_bookkeeping_{os.getpid()}_{n}"
        return PgOutbox(pg, clock=clock)
    return Outbox(tmp / f"o{n}.sqlite3", clock=clock)


def wal_size(box) -> int:
    path = getattr(box, "path", None)
    wal = Path(f"{path}-wal") if isinstance(path, Path) else None
    return wal.stat().st_size if wal is not None and wal.exists() else 0


def store_round(box, limit: int | None = None) -> float:
    """claim_batch + record_attempt per message, as FlushRun calls them (CPU seconds)."""
    c0 = time.process_time()
    owner, renewed, done = "bench-owner", box.clock(), 0
    while limit is None or done < limit:
        claims = box.claim_batch(owner, 100 if limit is None else min(100, limit - done), 600.0)
        if not claims:
            break
        for c in claims:
            renew = None
            if box.clock() - renewed >= 60.0:
                renewed, renew = box.clock(), 600.0
            box.record_attempt(c, owner, "sent", reply="250 2.0.0 Ok: queued", server="127.0.0.1:25",
                               profile="bench", duration=0.0001, renew_lease=renew)
        done += len(claims)
    return time.process_time() - c0


def wal_per_commit(box, commits: int = 1000) -> int:
    """Bytes the WAL grows a commit (automatic checkpoints off for this measure only)."""
    box.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    box.conn.execute("PRAGMA wal_autocheckpoint=0")
    w0 = wal_size(box)
    store_round(box, commits)
    grew = wal_size(box) - w0
    box.conn.execute("PRAGMA wal_autocheckpoint=1000")
    return round(grew / commits)


def engine_round(box, connections: int = 1, delay: float = 0.0, *, count_commits: bool = False) -> tuple[float, int]:
    """CPU seconds of a whole flush, and (`count_commits`) the commits it made. Counting takes
    a trace callback, Python run for every statement, so a round that counts is not timed."""
    profile = _Profile()
    profile.values = {"max_connections": connections}
    commits = [0]
    if count_commits and hasattr(box.conn, "set_trace_callback"):
        def count(sql: str, txn=[False]) -> None:
            # a COMMIT, or a write statement outside BEGIN ... COMMIT (its own transaction)
            if sql.startswith("BEGIN"):
                txn[0] = True
            elif sql == "COMMIT" or sql == "ROLLBACK":
                txn[0] = False
                commits[0] += sql == "COMMIT"
            elif not txn[0] and sql.split(None, 1)[0] in ("INSERT", "UPDATE", "DELETE"):
                commits[0] += 1

        box.conn.set_trace_callback(count)

    def transport(p):
        t = Accepting()
        t.delay = delay
        return t

    c0 = time.process_time()
    report = flush(box, policy=FlushPolicy(retention_days=0), resolve=lambda name: profile,
                   open_transport=transport,
                   options=FlushOptions(connections=connections) if connections > 1 else FlushOptions())
    cpu = time.process_time() - c0
    assert report.sent and not report.deferred, report.to_dict()
    return cpu, commits[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pg", metavar="URL", help="a PostgreSQL outbox (a throwaway database) instead of SQLite")
    ap.add_argument("--connections", type=int, default=1, help="lanes of the engine round (max_connections too)")
    ap.add_argument("--server-us", type=float, default=200.0, help="with --connections > 1: the transport's time a message")
    ap.add_argument("--src", help="the src directory of the mailctl to measure (default: this checkout's)")
    ap.add_argument("--baseline", metavar="REV", help="also measure git revision REV (a temporary worktree), "
                    "round by round interleaved with this checkout, and print both and their ratios")
    a = ap.parse_args()
    if a.baseline:
        compare(a)
        return
    msgs = messages(a.count)
    store_cpu, engine_cpu, wal, commits = [], [], [], []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for n in range(a.rounds):
            for kind in ("store", "engine"):
                clock = Clock()
                box = open_box(tmp, n * 2 + (kind == "engine"), a.pg, clock)
                box.enqueue_many(msgs)
                if kind == "store":
                    store_cpu.append(store_round(box))
                    if not a.pg:
                        box.enqueue_many(msgs[:1000])
                        wal.append(wal_per_commit(box))
                else:
                    delay = a.server_us / 1e6 if a.connections > 1 else 0.0
                    engine_cpu.append(engine_round(box, a.connections, delay)[0])
                    if n == 0 and not a.pg:  # the commits, once, in a round of their own
                        counted = open_box(tmp, 10_000 + n, a.pg, Clock())
                        counted.enqueue_many(msgs)
                        commits.append(engine_round(counted, a.connections, delay, count_commits=True)[1])
                        counted.close()
                if a.pg:
                    box.conn.raw.execute(f"DROP SCHEMA {box.schema} CASCADE")
                box.close()
    print(json.dumps({
        "bench": "outbox_bookkeeping", "backend": "postgresql" if a.pg else "sqlite", "count": a.count,
        "rounds": a.rounds,
        "store_cpu_us_per_msg": round(statistics.median(store_cpu) / a.count * 1e6, 1),
        "engine_cpu_us_per_msg": round(statistics.median(engine_cpu) / a.count * 1e6, 1),
        "connections": a.connections,
        "engine_commits_per_msg": round(statistics.median(commits) / a.count, 3) if not a.pg else None,
        "wal_bytes_per_commit": statistics.median(wal) if wal else None,
        "load_average": os.getloadavg()[0],
    }))


def compare(a) -> None:
    """This checkout against `a.baseline` in one run: one round of each in turn, so that the
    machine's drift hits both alike; the medians and after/before ratios (0.5: halved)."""
    import shutil
    import subprocess

    wt = Path(tempfile.mkdtemp(prefix="bookkeeping-baseline-"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(wt), a.baseline], check=True)
    try:
        runs: dict[str, list[dict]] = {"after": [], "before": []}
        base = [sys.executable, __file__, "--count", str(a.count), "--rounds", "1", "--connections", str(a.connections)]
        for _ in range(a.rounds):
            for name, extra in (("before", ["--src", str(wt / "src")]), ("after", [])):
                out = subprocess.run(base + extra, check=True, capture_output=True, text=True).stdout
                runs[name].append(json.loads(out))
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(wt)], check=False)
        shutil.rmtree(wt, ignore_errors=True)
    keys = ("store_cpu_us_per_msg", "engine_cpu_us_per_msg", "wal_bytes_per_commit")
    med = {name: {k: statistics.median(r[k] for r in rs) for k in keys} for name, rs in runs.items()}
    print(json.dumps({
        "bench": "outbox_bookkeeping", "baseline": a.baseline, "count": a.count, "rounds": a.rounds,
        "before": med["before"], "after": med["after"],
        "after_vs_before": {k: round(med["after"][k] / med["before"][k], 3) for k in keys},
        "target": "store and engine CPU per message at most 0.5 of before",
        "load_average": os.getloadavg()[0],
    }))


if __name__ == "__main__":
    main()
