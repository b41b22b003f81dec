"""`queue flush --connections N`: N sessions per profile at once, each in its own thread,
against a real SMTP server (aiosmtpd on 127.0.0.1) that counts its sessions, on both outbox
backends. What must hold:

* N sessions really are open at the same time (the server sees them overlap);
* every message is delivered exactly once, and the report counts them all;
* a profile's max_connections (default 1) caps --connections, and the flush says so;
* on every connection, each message's result is committed before that connection sends the
  next message's data (so a kill repeats at most one message per connection);
* the per-profile rate limit holds across the threads;
* a stop (the worker's SIGTERM) ends every lane after its message in flight, claims given back.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import threading
import time
from pathlib import Path

import pytest

from mailctl.outbox import FlushOptions, FlushPolicy, Outbox
from mailctl.outbox.flush import FlushRun
from mailctl.profiles.model import ResolvedProfile
from mailctl.transports import open_transport

sys.path.insert(0, str(Path(__file__).parent))
from outbox_smtp import RecordingHandler, SmtpServer, block_side_files, journaled_ids  # noqa: E402

pytestmark = pytest.mark.timeout(180)

_MID = re.compile(rb"^Message-ID:\s*(\S+)", re.I | re.M)


def message(n: int) -> bytes:
    return (f"From: app@example.com\r\nTo: user@example.org\r\nSubject: conn {n}\r\n"
            f"Message-ID: <c{n}@test.example>\r\n\r\nbody {n}\r\n").encode()


class SessionCounter(RecordingHandler):
    """Counts sessions (EHLO to QUIT) and the most open at once; records which session
    delivered which Message-ID. `delay`: seconds per message, so sessions overlap. With a
    `checker` (another handle on the outbox), every DATA also records whether the results of
    the messages this session delivered before were committed by then."""

    def __init__(self, *, delay: float = 0.0, checker=None) -> None:
        super().__init__()
        self.delay = delay
        self.checker = checker
        self.active = 0
        self.peak = 0
        self.by_session: dict[int, list[str]] = {}
        self.uncommitted: list[tuple[int, str]] = []  # (session, Message-ID) seen uncommitted
        self.check_lock = threading.Lock()

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
            self.by_session.setdefault(id(session), [])
        return await super().handle_EHLO(server, session, envelope, hostname, responses)

    async def handle_QUIT(self, server, session, envelope):
        with self.lock:
            self.active -= 1
        return "221 Bye"

    async def handle_DATA(self, server, session, envelope):
        if self.delay:
            await asyncio.sleep(self.delay)
        data = envelope.original_content or envelope.content
        mid = _MID.search(data).group(1).decode()
        before = list(self.by_session.get(id(session), []))
        if self.checker is not None and before:
            with self.check_lock:
                marks = ",".join("?" * len(before))
                # committed: the row says sent, or (SQLite) the result is in the journal or a side file
                journal = journaled_ids(self.checker.path) if type(self.checker) is Outbox else set()
                states = ["sent" if i in journal else s for (i, s) in self.checker.conn.execute(
                    f"SELECT id, state FROM messages WHERE message_id IN ({marks})", before)]
            if states.count("sent") != len(before):
                self.uncommitted.append((id(session), mid))
        with self.lock:
            self.by_session.setdefault(id(session), []).append(mid)
        return await super().handle_DATA(server, session, envelope)


def profile_for(server: SmtpServer, **extra) -> ResolvedProfile:
    values = {"type": "smtp", "host": "127.0.0.1", "port": server.port, "security": "none", "auth": "none",
              "from_address": "app@example.com", "timeout": 10, **extra}
    return ResolvedProfile("relay", values)


def run_flush(box, profile, *, connections: int, policy: FlushPolicy | None = None, stop=None, **options):
    run = FlushRun(box, policy=policy or FlushPolicy(retention_days=0), resolve=lambda name: profile,
                   open_transport=lambda p: open_transport(p, None),
                   options=FlushOptions(connections=connections, **options), stop=stop)
    return run.run()


def fill(box, n: int) -> None:
    box.enqueue_many([(message(i), "app@example.com", ["user@example.org"]) for i in range(n)])


def test_four_connections_at_once_each_message_once_each_result_committed_first(outbox_factory):
    n = 120
    box = outbox_factory()
    fill(box, n)
    checker = outbox_factory()
    handler = SessionCounter(delay=0.01, checker=checker)
    with SmtpServer(handler) as server:
        report = run_flush(box, profile_for(server, max_connections=4), connections=4)
    assert handler.peak == 4 and len(handler.by_session) == 4  # four sessions, open at the same time
    assert all(len(mids) >= 5 for mids in handler.by_session.values()), handler.by_session  # all of them worked
    assert handler.count == n and len(handler.by_message_id) == n
    assert all(c == 1 for c in handler.by_message_id.values())  # exactly once
    assert (report.sent, report.deferred, report.failed, report.connections_capped) == (n, 0, 0, {})
    assert handler.uncommitted == []  # every earlier result of a session was committed before its next data
    counts = box.count_by_state()
    assert counts["sent"] == n and counts["sending"] == 0
    assert sum(1 for a in box.get(1).attempt_log if a["outcome"] == "sent") == 1
    checker.close()
    box.close()


def test_max_connections_caps_connections_and_the_default_is_one(outbox_factory):
    box = outbox_factory()
    fill(box, 40)
    handler = SessionCounter(delay=0.01)
    with SmtpServer(handler) as server:
        capped = run_flush(box, profile_for(server, max_connections=2), connections=4, limit=20)
        assert handler.peak == 2 and len(handler.by_session) == 2
        assert capped.sent == 20 and capped.connections_capped == {"relay": 2}
        assert capped.to_dict()["connections_capped"] == {"relay": 2}
        handler.by_session.clear()
        handler.peak = 0
        default = run_flush(box, profile_for(server), connections=3)  # no max_connections: 1
        assert handler.peak == 1 and len(handler.by_session) == 1
        assert default.sent == 20 and default.connections_capped == {"relay": 1}
    assert handler.count == 40 and all(c == 1 for c in handler.by_message_id.values())
    box.close()


def test_the_cli_takes_connections_and_says_when_max_connections_capped_it(cli, isolated_env, tmp_path):
    from mailctl.outbox import Outbox

    handler = SessionCounter(delay=0.01)
    with SmtpServer(handler) as server:
        (isolated_env / "profiles.toml").write_text(
            'schema_version = 1\ndefault = "relay"\n[settings]\nretention_days = 0\n\n'
            + server.profile_toml("relay", max_connections=2))
        outbox = tmp_path / "o.sqlite3"
        with Outbox(outbox) as box:
            fill(box, 30)
        res = cli("queue", "flush", "--connections", "3", "--outbox", str(outbox), "--json")
        assert res.exit_code == 0, res.output
        doc = json.loads(res.stdout)
        assert doc["sent"] == 30 and doc["connections_capped"] == {"relay": 2}
        assert "max_connections = 2" in res.stderr and "--connections 3 used 2" in res.stderr
        assert handler.peak == 2 and handler.count == 30
        bad = cli("queue", "flush", "--connections", "0", "--outbox", str(outbox))
        assert bad.exit_code == 2 and "--connections" in bad.output


def test_the_rate_limit_holds_across_the_connections(outbox_factory):
    box = outbox_factory()
    fill(box, 12)
    handler = SessionCounter()
    with SmtpServer(handler) as server:
        # 5 a minute for the profile: 4 connections must still send only 5, the rest wait
        started = time.monotonic()
        stop_after = lambda: time.monotonic() - started > 1.5  # noqa: E731 - the wait for the 6th is ~60 s
        report = run_flush(box, profile_for(server, max_connections=4, rate_limit_per_minute=5), connections=4,
                           stop=stop_after)
    assert handler.count == 5 and report.sent == 5 and report.stopped
    counts = box.count_by_state()
    assert counts["sent"] == 5 and counts["queued"] == 7 and counts["sending"] == 0  # the rest given back
    box.close()


def test_a_stop_finishes_each_connections_message_in_flight_and_gives_the_rest_back(outbox_factory):
    n = 200
    box = outbox_factory()
    fill(box, n)
    handler = SessionCounter(delay=0.02)
    with SmtpServer(handler) as server:
        stop_at = {"n": 30}
        report = run_flush(box, profile_for(server, max_connections=3), connections=3,
                           stop=lambda: handler.count >= stop_at["n"])
    assert report.stopped
    delivered = handler.count
    assert 30 <= delivered < n
    counts = box.count_by_state()
    # every message the server accepted is committed as sent (the three in flight too); none is left claimed
    assert counts["sent"] == delivered == report.sent
    assert counts["sending"] == 0 and counts["queued"] == n - delivered
    box.close()


def test_a_failed_commit_stops_every_connection_before_more_data(tmp_path):
    import sqlite3

    from mailctl.outbox import Outbox

    path = tmp_path / "o.sqlite3"
    block_side_files(path)  # the results must go to the locked database
    box = Outbox(path, timeout=0.3)
    fill(box, 60)

    class Locking(SessionCounter):
        """After 6 messages another connection takes the outbox's write lock and keeps it."""

        def __init__(self) -> None:
            super().__init__(delay=0.01)
            self.holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)

        async def handle_DATA(self, server, session, envelope):
            reply = await super().handle_DATA(server, session, envelope)
            if self.count == 6:
                self.holder.execute("BEGIN IMMEDIATE")
            return reply

    handler = Locking()
    with SmtpServer(handler) as server:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            run_flush(box, profile_for(server, max_connections=3), connections=3)
        stuck = handler.count
        handler.holder.execute("ROLLBACK")
        handler.holder.close()
        # at most one message a connection went out after the lock: their results are the
        # ones that never made it, and they alone may be sent twice
        assert stuck <= 6 + 3
        box.clock = lambda: time.time() + 3600  # the dead flush's leases run out
        report = run_flush(box, profile_for(server, max_connections=3), connections=3)
    assert box.count_by_state()["sent"] == 60
    repeats = sum(c - 1 for c in handler.by_message_id.values())
    assert len(handler.by_message_id) == 60 and repeats <= 3, repeats
    assert report.reclaimed >= repeats
    box.close()


def test_the_worker_runs_its_rounds_over_n_connections_and_sigterm_gives_the_rest_back(outbox_factory, isolated_env,
                                                                                      tmp_path):
    import signal
    import subprocess

    from worker_procs import env_for, location_of, start_worker, wait_until

    n = 300
    box = outbox_factory()
    fill(box, n)
    location = location_of(box)
    log = tmp_path / "worker.log"
    handler = SessionCounter(delay=0.02)
    with SmtpServer(handler) as server:
        (isolated_env / "profiles.toml").write_text(
            'schema_version = 1\ndefault = "relay"\n[settings]\nretention_days = 0\n\n'
            + server.profile_toml("relay", max_connections=3))
        proc = start_worker(env_for(isolated_env, location), "--connections", "3", "--log-format", "json", log=log)
        try:
            assert wait_until(lambda: handler.count >= 40, 60), log.read_text()
            assert handler.peak == 3  # three sessions of the one profile at once
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise
    assert code == 0, log.read_text()
    events = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert events[0]["event"] == "start" and events[0]["connections"] == 3
    delivered = handler.count
    assert delivered < n and all(c == 1 for c in handler.by_message_id.values())
    counts = box.count_by_state()
    # each connection's message in flight was finished and committed; the rest went back at once
    assert counts["sent"] == delivered and counts["sending"] == 0 and counts["queued"] == n - delivered
    assert events[-1]["event"] == "stopped" and events[-1]["sent"] == delivered
    box.close()


def test_record_attempts_commits_several_results_in_one_write(outbox_factory):
    from mailctl.outbox.backend import AttemptResult

    box = outbox_factory()
    fill(box, 5)
    claims = box.claim_batch("me", 5, 60.0)
    lease_before = {r: box.conn.execute("SELECT lease_until FROM messages WHERE id=?", (r,)).fetchone()[0]
                    for r in (claims[3].id, claims[4].id)}
    box.clock = lambda: time.time() + 30
    results = [AttemptResult(claims[0], "sent", "250 ok", "mx:25", "relay", 0.01),
               AttemptResult(claims[1], "deferred", "451 later", "mx:25", "relay", 0.01, next_attempt_at=time.time() + 300),
               AttemptResult(claims[2], "failed", "550 no", "mx:25", "relay", 0.01,
                             failed_recipients={"user@example.org": "550 no"})]
    assert box.record_attempts("me", results, renew_lease=600.0) == [True, True, True]
    assert [box.get(c.id).state for c in claims[:3]] == ["sent", "deferred", "failed"]
    assert box.get(claims[2].id).failed_recipients == {"user@example.org": "550 no"}
    assert [len(box.get(c.id).attempt_log) for c in claims[:3]] == [1, 1, 1]
    for r, before in lease_before.items():  # the owner's other rows: lease renewed in the same write
        after = box.conn.execute("SELECT lease_until FROM messages WHERE id=?", (r,)).fetchone()[0]
        assert after > before + 500
    # a row another owner holds is not changed, and says so (an SQLite side-file line cannot
    # tell yet: it is not applied when folded); the others in the write still are
    stolen = AttemptResult(claims[3], "sent", "250 ok", "mx:25", "relay", 0.01)
    assert box.record_attempts("someone-else", [stolen]) == [getattr(box, "_results", None) is not None]
    assert box.get(claims[3].id).state == "sending"
    assert box.record_attempts("me", [AttemptResult(claims[3], "sent"), AttemptResult(claims[4], "sent")]) == [True, True]
    with pytest.raises(ValueError):
        box.record_attempts("me", [AttemptResult(claims[4], "bogus")])
    box.close()


def test_ctrl_c_stops_every_connection_after_its_message_in_flight_claims_given_back(outbox_factory):
    import os
    import signal

    n = 300
    box = outbox_factory()
    fill(box, n)
    handler = SessionCounter(delay=0.02)
    with SmtpServer(handler) as server:
        timer = threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGINT))  # Ctrl-C in the main thread
        timer.start()
        try:
            with pytest.raises(KeyboardInterrupt):
                run_flush(box, profile_for(server, max_connections=3), connections=3)
        finally:
            timer.cancel()
        delivered = handler.count
        assert handler.peak == 3 and 0 < delivered < n
    counts = box.count_by_state()
    assert counts["sent"] == delivered and counts["sending"] == 0 and counts["queued"] == n - delivered
    assert all(c == 1 for c in handler.by_message_id.values())
    box.close()


@pytest.mark.parametrize("connections", [1, 3])
def test_sigterm_ends_queue_flush_after_the_messages_in_flight(outbox_factory, isolated_env, tmp_path, connections):
    """systemd stopping a flush unit, `timeout 60 mailctl queue flush`: SIGTERM finishes what
    is on the wire, records it, gives the rest back at once (no lease to wait out), exit 75."""
    import signal
    import subprocess

    from worker_procs import env_for, location_of, mailctl, wait_until

    n = 300
    box = outbox_factory()
    fill(box, n)
    handler = SessionCounter(delay=0.02)
    with SmtpServer(handler) as server:
        (isolated_env / "profiles.toml").write_text(
            'schema_version = 1\ndefault = "relay"\n[settings]\nretention_days = 0\n\n'
            + server.profile_toml("relay", max_connections=connections))
        err = tmp_path / "flush.err"
        with open(err, "wb") as fh:
            proc = subprocess.Popen(mailctl("queue", "flush", "--connections", str(connections), "--json"),
                                    env=env_for(isolated_env, location_of(box)), stdout=subprocess.PIPE, stderr=fh)
        try:
            assert wait_until(lambda: handler.count >= 30, 60), err.read_text()
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 75, err.read_text()
    report = json.loads(out)
    assert report["stopped"] is True and report["exit_code"] == 75
    assert "Stopped by SIGTERM" in err.read_text()
    delivered = handler.count
    assert 30 <= delivered < n and all(c == 1 for c in handler.by_message_id.values())
    counts = box.count_by_state()
    assert counts["sent"] == delivered == report["sent"] and counts["sending"] == 0
    assert counts["queued"] == n - delivered
    box.close()
