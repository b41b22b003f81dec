"""The SQLite outbox's kill test and concurrency test (tests/test_outbox_smtp.py), on a shared
PostgreSQL outbox, with the workers as separate hosts would run them: separate processes that
share neither a MAILCTL_HOME (each its own profiles file) nor a working directory, only the
database URL. 4 workers, SIGKILL at random points and a restart, until the queue is empty:
nothing lost, no more duplicates than kills; 4 side by side never send a message twice."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from outbox_smtp import RecordingHandler, SmtpServer, write_profiles  # noqa: E402
from worker_procs import SlowHandler, env_for, mailctl, message, start_worker, wait_until  # noqa: E402

pytestmark = pytest.mark.timeout(300)
SENDER, RCPT = "app@example.com", ["user@example.org"]


class Host:
    """One 'host': its own home (profiles file) and working directory; a worker process."""

    def __init__(self, root: Path, k: int, server: SmtpServer, url: str, settings: dict | None = None) -> None:
        self.home = root / f"host{k}" / "home"
        self.cwd = root / f"host{k}" / "cwd"
        self.home.mkdir(parents=True)
        self.cwd.mkdir()
        write_profiles(self.home, {"relay": server}, default="relay", settings=settings)
        self.env = env_for(self.home, url)
        self.log = root / f"host{k}" / "worker.log"
        self.proc: subprocess.Popen | None = None
        self.offset = 0  # where the current process's log lines begin

    def start(self, *args: str) -> None:
        self.offset = self.log.stat().st_size if self.log.exists() else 0
        self.proc = start_worker(self.env, "--interval", "2s", *args, cwd=self.cwd, log=self.log)

    def started(self) -> bool:
        """The current process got as far as its start line (its signal handlers are in place)."""
        text = self.log.read_bytes()[self.offset:].decode() if self.log.exists() else ""
        return " start " in text or '"start"' in text

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        wait_until(lambda: self.started() or self.proc.poll() is not None, 30)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


def _counts(url: str) -> dict:
    from mailctl.outbox.pg import PgOutbox

    with PgOutbox(url) as box:
        return box.count_by_state()


def test_sigkill_of_workers_at_random_points_loses_nothing(pg_url, tmp_path):
    n = 300
    handler = SlowHandler(0.05)
    rng = random.Random(13)
    from mailctl.outbox.pg import PgOutbox

    with SmtpServer(handler) as server:
        with PgOutbox(pg_url) as box:
            box.enqueue_many([(message(i, "k"), SENDER, RCPT) for i in range(n)])
        hosts = [Host(tmp_path, k, server, pg_url, settings={"retention_days": 0}) for k in range(4)]
        for h in hosts:
            h.start()
        kills = 0
        deadline = time.monotonic() + 150
        try:
            while handler.count < n and kills < 40 and time.monotonic() < deadline:
                time.sleep(rng.uniform(0.2, 0.9))
                victim = rng.choice(hosts)
                if victim.alive():
                    victim.proc.send_signal(signal.SIGKILL)
                    victim.proc.wait()
                    kills += 1
                if rng.random() < 0.7:  # usually back at once, sometimes after the others went on
                    victim.start()
            for h in hosts:
                if not h.alive():
                    h.start()
            assert wait_until(lambda: _counts(pg_url)["sent"] == n, 120), _counts(pg_url)
        finally:
            codes = [h.stop() for h in hosts]
    assert codes == [0, 0, 0, 0], [h.log.read_text()[-2000:] for h in hosts]
    counts = _counts(pg_url)
    assert counts["sent"] == n and counts["sending"] == 0, counts
    missing = [i for i in range(n) if handler.by_message_id[f"<k{i}@test.example>"] == 0]
    assert not missing
    duplicates = sum(c - 1 for c in handler.by_message_id.values() if c > 1)
    assert kills >= 3, "the workers finished before they could be killed; slow the server down"
    print(f"PostgreSQL SIGKILL test: {kills} kills, {duplicates} duplicate deliveries, {n} messages")
    assert duplicates <= kills, (duplicates, kills)
    for h in hosts:  # separate hosts: nothing written into the working directories
        assert list(h.cwd.iterdir()) == []


def test_four_workers_on_separate_hosts_never_send_twice(pg_url, tmp_path):
    n = 400
    handler = SlowHandler(0.005)
    from mailctl.outbox.pg import PgOutbox

    with SmtpServer(handler) as server:
        hosts = [Host(tmp_path, k, server, pg_url) for k in range(4)]
        for h in hosts:
            h.start("--log-format", "json")
        # they are all waiting (LISTEN) before the mail comes: a NOTIFY wakes all four at once
        assert wait_until(lambda: all(h.log.exists() and '"start"' in h.log.read_text() for h in hosts), 30)
        with PgOutbox(pg_url) as box:
            box.enqueue_many([(message(i, "c"), SENDER, RCPT) for i in range(n)])
        try:
            assert wait_until(lambda: handler.count >= n, 120), handler.count
            time.sleep(0.5)
        finally:
            codes = [h.stop() for h in hosts]
    assert codes == [0, 0, 0, 0]
    sent_by_worker = []
    for h in hosts:
        events = [json.loads(line) for line in h.log.read_text().splitlines()]
        assert events[-1]["event"] == "stopped", events[-1]
        sent_by_worker.append(events[-1]["sent"])
    assert sum(sent_by_worker) == n and handler.count == n
    assert all(c == 1 for c in handler.by_message_id.values()) and len(handler.by_message_id) == n
    assert sum(1 for s in sent_by_worker if s) >= 2, sent_by_worker  # they really ran side by side


def test_four_flushes_on_separate_hosts_never_send_twice(pg_url, tmp_path):
    """The cron-style `queue flush`, four at once from four hosts' homes."""
    n = 400
    handler = RecordingHandler()
    from mailctl.outbox.pg import PgOutbox

    with SmtpServer(handler) as server:
        with PgOutbox(pg_url) as box:
            box.enqueue_many([(message(i, "f"), SENDER, RCPT) for i in range(n)])
        hosts = [Host(tmp_path, k, server, pg_url) for k in range(4)]
        procs = [subprocess.Popen(mailctl("queue", "flush", "--json"), env=h.env, cwd=h.cwd, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for h in hosts]
        outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], outs
    sent = [json.loads(o)["sent"] for o, _ in outs]
    assert sum(sent) == n and handler.count == n
    assert all(c == 1 for c in handler.by_message_id.values()) and len(handler.by_message_id) == n
    assert sum(1 for s in sent if s) >= 2, sent
