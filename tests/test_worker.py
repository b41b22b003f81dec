"""`mailctl queue worker` as a real process, on both backends (the outbox_factory fixture):
it sends what is queued while it waits (at once on PostgreSQL: LISTEN/NOTIFY; within a second
on SQLite), SIGTERM/SIGINT finish the message in flight and give the rest back at once (exit
0), SIGHUP reads the profiles again, --concurrency runs lanes side by side, --hold-backlog
holds what was there before it started, a dropped database connection is survived."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from outbox_smtp import RecordingHandler, SmtpServer, write_profiles  # noqa: E402
from worker_procs import SlowHandler, env_for, location_of, log_has, mailctl, message, start_worker, wait_until  # noqa: E402

pytestmark = pytest.mark.timeout(180)
SENDER, RCPT = "app@example.com", ["user@example.org"]


def _stop(proc: subprocess.Popen, sig=signal.SIGTERM, timeout: float = 20) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


def _events(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


def test_worker_sends_new_mail_while_it_waits_and_stops_on_sigterm(outbox_factory, isolated_env, tmp_path):
    handler = RecordingHandler()
    box = outbox_factory()
    location = location_of(box)
    log = tmp_path / "worker.log"
    with SmtpServer(handler) as server:
        write_profiles(isolated_env, {"relay": server}, default="relay")
        box.enqueue(message(0), SENDER, RCPT)  # queued before the start: the first round sends it
        proc = start_worker(env_for(isolated_env, location), "--interval", "60s", "--log-format", "json", log=log)
        try:
            assert wait_until(lambda: handler.count == 1, 30), log.read_text()
            assert wait_until(lambda: log_has(log, '"event": "round"'), 10)
            time.sleep(0.5)  # it is waiting now, for up to 60 s
            latencies = []
            for i in (1, 2, 3):
                t0 = time.monotonic()
                box.enqueue(message(i), SENDER, RCPT)
                assert wait_until(lambda: handler.count == i + 1, 20), log.read_text()
                latencies.append(time.monotonic() - t0)
        finally:
            code = _stop(proc)
    box.close()
    assert code == 0, log.read_text()
    # woken by the new mail, not by the 60 s interval: NOTIFY at once, SQLite's poll each second
    limit = 1.0 if outbox_factory.backend == "postgresql" else 2.5
    assert max(latencies) < limit, latencies
    events = _events(log)
    assert events[0]["event"] == "start" and events[0]["backend"] == outbox_factory.backend
    assert events[-1]["event"] == "stopped" and events[-1]["reason"] == "SIGTERM" and events[-1]["sent"] == 4
    assert sum(e.get("sent", 0) for e in events if e["event"] == "round") == 4
    assert all(e["time"] and e["level"] for e in events)
    assert sorted(handler.by_message_id.values()) == [1, 1, 1, 1]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_finishes_the_message_in_flight_and_gives_the_rest_back(outbox_factory, isolated_env, tmp_path, sig):
    n = 30
    handler = SlowHandler(0.3)
    box = outbox_factory()
    location = location_of(box)
    log = tmp_path / "worker.log"
    with SmtpServer(handler) as server:
        write_profiles(isolated_env, {"relay": server}, default="relay", settings={"retention_days": 0})
        box.enqueue_many([(message(i), SENDER, RCPT) for i in range(n)])
        proc = start_worker(env_for(isolated_env, location), "--interval", "60s", log=log)
        try:
            assert wait_until(lambda: handler.count >= 3, 30), log.read_text()
        finally:
            t0 = time.monotonic()
            code = _stop(proc, sig)
            took = time.monotonic() - t0
        counts = box.count_by_state()
        sent_at_stop = handler.count
        assert code == 0, log.read_text()
        assert took < 5, took  # one message's time, not the lease, not the whole queue
        # the message in flight was finished and committed; the claimed rest went back at once
        assert counts["sending"] == 0, counts
        assert counts["sent"] == sent_at_stop and counts["queued"] == n - sent_at_stop, (counts, sent_at_stop)
        text = log.read_text()
        assert f"stopping signal={signal.Signals(sig).name}" in text and "stopped reason=" in text
        assert "Traceback" not in text
        # nothing to reclaim: the next flush sends the rest, no 'interrupted' entries
        done = subprocess.run(mailctl("queue", "flush", "--json"), env=env_for(isolated_env, location),
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["reclaimed"] == 0 and report["sent"] == n - sent_at_stop
    assert len(handler.by_message_id) == n and all(c == 1 for c in handler.by_message_id.values())
    assert all(e["outcome"] != "interrupted" for i in range(1, n + 1) for e in box.get(i).attempt_log)
    box.close()


def test_sighup_reads_the_profiles_again(outbox_factory, isolated_env, tmp_path):
    handler = RecordingHandler()
    box = outbox_factory()
    location = location_of(box)
    log = tmp_path / "worker.log"
    with SmtpServer(handler) as server:
        write_profiles(isolated_env, {"relay": server}, default="relay", settings={"sending_enabled": False})
        proc = start_worker(env_for(isolated_env, location), "--interval", "60s", log=log)
        try:
            assert wait_until(lambda: log_has(log, " start "), 30), log.read_text()
            box.enqueue(message(1), SENDER, RCPT)
            assert wait_until(lambda: log_has(log, "sending-disabled"), 10), log.read_text()
            time.sleep(1.0)
            assert handler.count == 0  # switched off: it waits
            # a broken file: reported, the previous configuration kept
            good = (isolated_env / "profiles.toml").read_text()
            (isolated_env / "profiles.toml").write_text("this is = not [toml\n")
            proc.send_signal(signal.SIGHUP)
            assert wait_until(lambda: log_has(log, "reload-failed"), 10), log.read_text()
            assert proc.poll() is None and handler.count == 0
            (isolated_env / "profiles.toml").write_text(good.replace("sending_enabled = false", "sending_enabled = true"))
            proc.send_signal(signal.SIGHUP)
            assert wait_until(lambda: handler.count == 1, 10), log.read_text()
        finally:
            code = _stop(proc)
    box.close()
    assert code == 0, log.read_text()
    assert "reload sending_enabled=true" in log.read_text()


def test_concurrency_runs_lanes_side_by_side_without_sending_twice(outbox_factory, isolated_env, tmp_path):
    n, delay = 40, 0.2
    handler = SlowHandler(delay)
    box = outbox_factory()
    location = location_of(box)
    log = tmp_path / "worker.log"
    with SmtpServer(handler) as server:
        write_profiles(isolated_env, {"relay": server}, default="relay")
        box.enqueue_many([(message(i), SENDER, RCPT) for i in range(n)])
        t0 = time.monotonic()
        proc = start_worker(env_for(isolated_env, location), "--concurrency", "4", "--interval", "60s", log=log)
        try:
            assert wait_until(lambda: handler.count >= n, 60), log.read_text()
            took = time.monotonic() - t0
            time.sleep(0.5)
        finally:
            code = _stop(proc)
        counts = box.count_by_state()
    box.close()
    assert code == 0, log.read_text()
    assert counts["sent"] == n, counts
    assert len(handler.by_message_id) == n and all(c == 1 for c in handler.by_message_id.values())
    assert handler.connections >= 2  # more than one lane had a session
    assert took < n * delay * 0.75, f"{took:.1f}s: the lanes did not run side by side (one lane: {n * delay:.0f}s)"
    lanes = {line.split("lane=")[1].split()[0] for line in log.read_text().splitlines() if " round " in line}
    assert len(lanes) >= 2, log.read_text()


@pytest.mark.parametrize("how", ["flag", "setting"])
def test_hold_backlog_holds_what_was_queued_before_the_start(outbox_factory, isolated_env, tmp_path, how):
    handler = RecordingHandler()
    box = outbox_factory()
    location = location_of(box)
    log = tmp_path / "worker.log"
    with SmtpServer(handler) as server:
        settings = {"hold_backlog_at_start": True} if how == "setting" else None
        write_profiles(isolated_env, {"relay": server}, default="relay", settings=settings)
        old = [box.enqueue(message(i, "old"), SENDER, RCPT) for i in range(3)]
        held_before = box.enqueue(message(9, "old"), SENDER, RCPT, hold=True)
        time.sleep(0.05)
        args = ["--interval", "60s"] + (["--hold-backlog"] if how == "flag" else [])
        proc = start_worker(env_for(isolated_env, location), *args, log=log)
        try:
            assert wait_until(lambda: log_has(log, "backlog-held"), 30), log.read_text()
            new = box.enqueue(message(1, "new"), SENDER, RCPT)
            assert wait_until(lambda: handler.count == 1, 20), log.read_text()
            time.sleep(1.5)
            assert handler.count == 1
            assert [box.get(i).state for i in old] == ["held"] * 3 and box.get(new).state == "sent"
            assert box.get(held_before).state == "held"
            box.release(old)  # the operator lets the backlog go: it flows (PostgreSQL: notified)
            assert wait_until(lambda: handler.count == 4, 20), log.read_text()
        finally:
            code = _stop(proc)
    assert code == 0, log.read_text()
    assert "backlog-held count=3" in log.read_text()
    assert box.get(held_before).state == "held"
    box.close()


def test_no_hold_backlog_overrides_the_setting(isolated_env, tmp_path):
    handler = RecordingHandler()
    from mailctl.outbox import Outbox

    path = tmp_path / "o.sqlite3"
    log = tmp_path / "worker.log"
    with SmtpServer(handler) as server, Outbox(path) as box:
        write_profiles(isolated_env, {"relay": server}, default="relay", settings={"hold_backlog_at_start": True})
        box.enqueue(message(1), SENDER, RCPT)
        proc = start_worker(env_for(isolated_env, str(path)), "--no-hold-backlog", "--interval", "60s", log=log)
        try:
            assert wait_until(lambda: handler.count == 1, 30), log.read_text()
        finally:
            assert _stop(proc) == 0
    assert "backlog-held" not in log.read_text()


def test_worker_usage_and_configuration_errors_are_one_line(isolated_env, tmp_path, cli):
    r = cli("queue", "worker", "--interval", "soon", "--outbox", str(tmp_path / "o.sqlite3"))
    assert r.exit_code == 2 and "--interval" in r.output and "Traceback" not in r.output
    r = cli("queue", "worker", "--log-format", "xml", "--outbox", str(tmp_path / "o.sqlite3"))
    assert r.exit_code == 2
    # no profiles at all: 78, never the built-in local profile by accident
    r = cli("queue", "worker", "--outbox", str(tmp_path / "o.sqlite3"))
    assert r.exit_code == 78, r.output
    with SmtpServer() as server:
        write_profiles(isolated_env, {"relay": server}, default="relay")
        r = cli("queue", "worker", "--profile", "nope", "--outbox", str(tmp_path / "o.sqlite3"))
        assert r.exit_code == 66 and "nope" in r.output
        r = cli("queue", "worker", "--outbox", "mysql://u@127.0.0.1/db")
        assert r.exit_code == 78 and "not an outbox backend" in r.output


def test_a_dropped_database_connection_is_survived_without_losing_mail(pg_url, pg_server, isolated_env, tmp_path):
    """The database ends the worker's session mid-flush (pg_terminate_backend: what a failover
    or a restarted server does): the worker reconnects and finishes; nothing is lost, at most
    the message in flight is sent twice."""
    from mailctl.outbox.pg import PgOutbox

    n = 30
    handler = SlowHandler(0.2)
    log = tmp_path / "worker.log"
    with SmtpServer(handler) as server, PgOutbox(pg_url) as box:
        write_profiles(isolated_env, {"relay": server}, default="relay")
        box.enqueue_many([(message(i), SENDER, RCPT) for i in range(n)])
        mine = box.conn.raw.execute("SELECT pg_backend_pid()").fetchone()[0]
        proc = start_worker(env_for(isolated_env, pg_url), "--interval", "60s", log=log)
        try:
            assert wait_until(lambda: handler.count >= 5, 30), log.read_text()
            killed = pg_server.psql(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = current_database()"
                f" AND backend_type = 'client backend' AND pid NOT IN (pg_backend_pid(), {mine})")
            assert int(killed) >= 1
            assert wait_until(lambda: box.count_by_state()["sent"] == n, 60), (box.count_by_state(), log.read_text())
            assert proc.poll() is None  # it reconnected rather than died
        finally:
            code = _stop(proc)
    text = log.read_text()
    assert code == 0, text
    assert "round-failed" in text and "reconnected" in text and "Traceback" not in text
    assert len(handler.by_message_id) == n
    assert sum(c - 1 for c in handler.by_message_id.values()) <= 1


def test_an_outbox_that_stays_unreachable_ends_the_worker_non_zero(isolated_env, tmp_path, cli):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with SmtpServer() as server:
        write_profiles(isolated_env, {"relay": server}, default="relay")
        r = cli("queue", "worker", "--outbox", f"postgresql://mailctl:pw-xyz@127.0.0.1:{port}/mailctl")
    assert r.exit_code == 69, r.output
    assert "pw-xyz" not in r.output and "Traceback" not in r.output


def test_log_lines_for_journald_and_json():
    import io

    from mailctl.outbox.worker import EventLog

    out = io.StringIO()
    EventLog(out, journald=True)("round", "info", sent=3, reply='250 ok "queued"', lane=None)
    EventLog(out, journald=True)("round-failed", "error", error="outbox x: server closed the connection\nunexpectedly")
    EventLog(out, journald=False)("start", pid=1)
    EventLog(out, "json")("stopped", "notice", reason="SIGTERM", sent=2)
    lines = out.getvalue().splitlines()
    assert lines[0] == '<6>round sent=3 reply="250 ok \\"queued\\""'
    assert lines[1] == '<3>round-failed error="outbox x: server closed the connection unexpectedly"'
    assert lines[2].endswith(" info start pid=1") and not lines[2].startswith("<")
    doc = json.loads(lines[3])
    assert (doc["event"], doc["level"], doc["reason"], doc["sent"]) == ("stopped", "notice", "SIGTERM", 2) and doc["time"]
    assert len(lines) == 4  # one line per event, whatever the values hold


def test_the_systemd_units_in_the_repository_match_the_commands():
    import configparser
    import shlex

    from typer.main import get_command

    from mailctl.cli import app

    root = Path(__file__).resolve().parents[1] / "contrib" / "systemd"

    def unit(name):
        parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
        parser.optionxform = str
        parser.read_string((root / name).read_text())
        return parser

    queue = get_command(app).get_command(None, "queue")

    def options_of(command):
        return {opt for p in queue.get_command(None, command).params for opt in getattr(p, "opts", []) + getattr(p, "secondary_opts", [])}

    worker = unit("mailctl-worker.service")
    argv = shlex.split(worker["Service"]["ExecStart"])
    assert argv[1:3] == ["queue", "worker"]
    assert {a.split("=")[0] for a in argv[3:] if a.startswith("--")} <= options_of("worker")
    assert "HUP" in worker["Service"]["ExecReload"] and worker["Service"]["KillSignal"] == "SIGTERM"
    assert worker["Service"]["Restart"] == "on-failure" and "78" in worker["Service"]["RestartPreventExitStatus"]
    flush = unit("mailctl-flush.service")
    argv = shlex.split(flush["Service"]["ExecStart"])
    assert "queue" in argv and argv[argv.index("queue") + 1] == "flush"
    assert flush["Service"]["Type"] == "oneshot" and "75" in flush["Service"]["SuccessExitStatus"].split()
    timer = unit("mailctl-flush.timer")
    assert timer["Timer"]["Unit"] == "mailctl-flush.service" and "timers.target" in timer["Install"]["WantedBy"]
    docs = (Path(__file__).resolve().parents[1] / "docs" / "outbox.md").read_text()
    for name in ("mailctl-worker.service", "mailctl-flush.service", "mailctl-flush.timer"):
        assert f"contrib/systemd/{name}" in docs


def test_lanes_share_the_rate_limit_and_a_stop_ends_the_wait(outbox_factory, isolated_env, tmp_path):
    handler = RecordingHandler()
    box = outbox_factory()
    location = location_of(box)
    log = tmp_path / "worker.log"
    with SmtpServer(handler) as server:
        write_profiles(isolated_env, {"relay": server}, default="relay", settings={"rate_limit_per_minute": 5})
        box.enqueue_many([(message(i), SENDER, RCPT) for i in range(12)])
        proc = start_worker(env_for(isolated_env, location), "--concurrency", "4", "--interval", "60s", log=log)
        try:
            assert wait_until(lambda: handler.count >= 5, 30), log.read_text()
            time.sleep(2.0)
            assert handler.count == 5, "four lanes together keep one limit of 5 a minute"
        finally:
            t0 = time.monotonic()
            code = _stop(proc)
            took = time.monotonic() - t0
    counts = box.count_by_state()
    box.close()
    assert code == 0, log.read_text()
    assert took < 5, f"the stop waited for the rate limit ({took:.1f}s)"
    assert counts["sent"] == 5 and counts["queued"] == 7 and counts["sending"] == 0, counts
