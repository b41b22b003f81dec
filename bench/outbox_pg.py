"""Bench: the PostgreSQL outbox next to the SQLite one, in the same run, as ratios.

* enqueue through the Python API: `enqueue()` one message a transaction, and `enqueue_many()`
  in batches of 100 (both as a long-lived handle opens them: SQLite synchronous=NORMAL,
  PostgreSQL synchronous_commit=off for the session);
* flush throughput of `mailctl queue worker` processes, 1 and 4 of them, against a local
  SMTP sink (aiosmtpd), once with a fast sink and once with a per-message delay (the server
  is the bottleneck, as a real relay is). Timed from the sink's first accepted message to its
  last, so process start-up is not counted. Target: 4 workers flush >= 2x one worker when
  the server is the bottleneck.

    python bench/outbox_pg.py [--count 5000] [--flush-count 2000] [--delayed-count 1000] [--delay 0.01] [--url postgresql://...]

Without --url a throwaway cluster is started (tests/pgserver.py: Debian's postgresql
package). Each measurement uses a fresh schema (MAILCTL_PG_SCHEMA) or a fresh file."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from outbox_smtp import RecordingHandler, SmtpServer, write_profiles  # noqa: E402

from mailctl.outbox import open_outbox  # noqa: E402

SENDER, RCPT = "app@example.com", ["user@example.org"]
_SCHEMAS = iter(range(1, 10_000))


class TimedSink(RecordingHandler):
    """Counts messages, remembers when the first and the last came; `delay` s a message."""

    def __init__(self) -> None:
        super().__init__(discard=True)
        self.delay = 0.0
        self.first = self.last = 0.0

    def reset(self, delay: float) -> None:
        with self.lock:
            self.delay, self.count, self.first, self.last = delay, 0, 0.0, 0.0

    async def handle_DATA(self, server, session, envelope):
        if self.delay:
            await asyncio.sleep(self.delay)
        now = time.perf_counter()
        with self.lock:
            self.count += 1
            self.first = self.first or now
            self.last = now
        return "250 2.0.0 Ok: queued"


def raw_messages(count: int, tag: str) -> list[bytes]:
    body = ("x" * 76 + "\r\n") * 13  # ~1 KB
    return [(f"From: app@example.com\r\nTo: user@example.org\r\nSubject: bench {i}\r\n"
             f"Message-ID: <{tag}{i}@bench.example>\r\n\r\n{body}").encode() for i in range(count)]


def fresh_location(backend: str, url: str, tmp: Path) -> tuple[str, dict]:
    """A new empty outbox: (location, the environment that names it)."""
    n = next(_SCHEMAS)
    if backend == "postgresql":
        return url, {"MAILCTL_PG_SCHEMA": f"bench{os.getpid()}_{n}"}
    return str(tmp / f"bench{n}.sqlite3"), {}


@contextlib.contextmanager
def environ(extra: dict):
    old = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def enqueue_rate(backend: str, url: str, tmp: Path, count: int, batch: int) -> float:
    location, env = fresh_location(backend, url, tmp)
    msgs = raw_messages(count, "e")
    with environ(env), open_outbox(location) as box:
        t0 = time.perf_counter()
        if batch:
            for start in range(0, count, batch):
                box.enqueue_many([(m, SENDER, RCPT) for m in msgs[start:start + batch]])
        else:
            for m in msgs:
                box.enqueue(m, SENDER, RCPT)
        elapsed = time.perf_counter() - t0
    return count / elapsed


def flush_rate(backend: str, url: str, tmp: Path, home: Path, sink: TimedSink, count: int, workers: int,
               delay: float) -> float:
    location, env = fresh_location(backend, url, tmp)
    with environ(env), open_outbox(location) as box:
        msgs = raw_messages(count, "f")
        for start in range(0, count, 500):
            box.enqueue_many([(m, SENDER, RCPT) for m in msgs[start:start + 500]])
    sink.reset(delay)
    penv = {k: v for k, v in os.environ.items() if not k.startswith("MAILCTL_")}
    penv.update(env, MAILCTL_HOME=str(home), MAILCTL_OUTBOX=location,
                PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs = [subprocess.Popen([sys.executable, "-m", "mailctl", "queue", "worker", "--interval", "1s"], env=penv,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(workers)]
    try:
        deadline = time.monotonic() + max(120.0, count * max(delay, 0.002) * 3)
        while sink.count < count and time.monotonic() < deadline:
            if any(p.poll() is not None for p in procs):
                raise SystemExit(f"a worker exited early ({[p.poll() for p in procs]})")
            time.sleep(0.02)
        if sink.count < count:
            raise SystemExit(f"{backend}: only {sink.count} of {count} delivered in time")
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    with sink.lock:
        elapsed = sink.last - sink.first
        got = sink.count
    return (got - 1) / elapsed if elapsed > 0 else float("inf")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=5000, help="messages per enqueue measurement")
    ap.add_argument("--flush-count", type=int, default=2000, help="messages per fast-sink flush measurement")
    ap.add_argument("--delayed-count", type=int, default=1000, help="messages per delayed-sink flush measurement")
    ap.add_argument("--delay", type=float, default=0.01, help="seconds the delayed sink takes per message")
    ap.add_argument("--url", default=None, help="a PostgreSQL database to use (default: a throwaway cluster)")
    a = ap.parse_args()
    with contextlib.ExitStack() as stack:
        url = a.url
        if url is None:
            import pgserver

            reason = pgserver.skip_reason()
            if reason:
                raise SystemExit(f"no PostgreSQL: {reason} (or pass --url)")
            url = stack.enter_context(pgserver.running_postgres()).url()
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        home = tmp / "home"
        home.mkdir()
        sink = TimedSink()
        server = stack.enter_context(SmtpServer(sink))
        write_profiles(home, {"sink": server}, default="sink", settings={"retention_days": 0})
        out: dict = {"bench": "outbox_pg"}
        for name, batch in (("enqueue", 0), ("enqueue_many_100", 100)):
            rates = {b: enqueue_rate(b, url, tmp, a.count, batch) for b in ("sqlite", "postgresql")}
            out[name] = {"sqlite_per_second": round(rates["sqlite"]), "postgresql_per_second": round(rates["postgresql"]),
                         "ratio_pg_to_sqlite": round(rates["postgresql"] / rates["sqlite"], 3)}
        for name, count, delay in (("flush_fast_sink", a.flush_count, 0.0), ("flush_delayed_sink", a.delayed_count, a.delay)):
            res: dict = {"count": count, "sink_delay_s": delay}
            for backend in ("sqlite", "postgresql"):
                for workers in (1, 4):
                    res[f"{backend}_{workers}w_per_second"] = round(
                        flush_rate(backend, url, tmp, home, sink, count, workers, delay))
                res[f"{backend}_4w_over_1w"] = round(res[f"{backend}_4w_per_second"] / res[f"{backend}_1w_per_second"], 2)
            for workers in (1, 4):
                res[f"ratio_pg_to_sqlite_{workers}w"] = round(
                    res[f"postgresql_{workers}w_per_second"] / res[f"sqlite_{workers}w_per_second"], 3)
            out[name] = res
        speedup = out["flush_delayed_sink"]["postgresql_4w_over_1w"]
        out["target"] = "4 workers >= 2x one worker with the delayed sink (PostgreSQL)"
        out["ok"] = speedup >= 2.0
        out["load_average"] = os.getloadavg()[0]
        out["cpus"] = os.cpu_count()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
