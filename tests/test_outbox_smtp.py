"""The outbox against real SMTP servers (aiosmtpd on 127.0.0.1): one connection per flush,
4xx/5xx recipients, the alternate server, SIGKILL at many points, concurrent flushes."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mailctl.outbox import FlushOptions, FlushPolicy, Outbox, flush
from mailctl.profiles.model import ResolvedProfile
from mailctl.transports import open_transport

sys.path.insert(0, str(Path(__file__).parent))
from outbox_smtp import RecordingHandler, SmtpServer, free_port, journaled_ids, write_profiles  # noqa: E402

pytestmark = pytest.mark.timeout(240)


def message(n: int, to: str = "user@example.org") -> bytes:
    return (f"From: app@example.com\r\nTo: {to}\r\nSubject: test {n}\r\n"
            f"Message-ID: <m{n}@test.example>\r\n\r\nbody {n}\r\n").encode()


def profile_for(server: SmtpServer, **extra) -> ResolvedProfile:
    values = {"type": "smtp", "host": "127.0.0.1", "port": server.port, "security": "none", "auth": "none",
              "from_address": "app@example.com", "timeout": 10, **extra}
    return ResolvedProfile("local_smtp", values)


def smtp_flush(box, profile, **kw):
    return flush(box, policy=kw.pop("policy", FlushPolicy()), resolve=lambda name: profile,
                 open_transport=lambda p: open_transport(p, None), options=kw.pop("options", FlushOptions()), **kw)


def test_flush_over_one_connection_with_4xx_and_5xx(tmp_path):
    handler = RecordingHandler(temp_fail={"later@example.org"}, perm_fail={"nobody@example.org"})
    with SmtpServer(handler) as server:
        box = Outbox(tmp_path / "o.sqlite3")
        ok = [box.enqueue(message(n), "app@example.com", ["user@example.org"]) for n in range(5)]
        later = box.enqueue(message(10, "later@example.org"), "app@example.com", ["later@example.org"])
        nobody = box.enqueue(message(11, "nobody@example.org"), "app@example.com", ["nobody@example.org"])
        mixed = box.enqueue(message(12), "app@example.com", ["user@example.org", "later@example.org"])
        report = smtp_flush(box, profile_for(server))
        assert handler.connections == 1  # one connection reused for all eight
        assert (report.sent, report.deferred, report.failed) == (5, 2, 1)
        assert all(box.get(i).state == "sent" for i in ok)
        assert box.get(later).state == "deferred" and box.get(later).last_reply.startswith("451")
        assert box.get(nobody).state == "failed" and "550" in box.get(nobody).last_reply
        assert box.get(mixed).state == "deferred" and box.get(mixed).recipients == ["later@example.org"]
        assert int(report.exit_code) == 1
        assert handler.by_message_id["<m12@test.example>"] == 1
        box.close()


def test_alternate_server_when_primary_is_down(tmp_path):
    with SmtpServer() as server:
        box = Outbox(tmp_path / "o.sqlite3")
        box.enqueue(message(1), "app@example.com", ["user@example.org"])
        dead = free_port()
        profile = profile_for(server, port=dead, alternate_host="127.0.0.1", alternate_port=server.port)
        report = smtp_flush(box, profile)
        assert report.sent == 1 and server.handler.count == 1
        box.close()


def test_unreachable_server_defers(tmp_path):
    box = Outbox(tmp_path / "o.sqlite3")
    i = box.enqueue(message(1), "app@example.com", ["user@example.org"])
    profile = ResolvedProfile("p", {"type": "smtp", "host": "127.0.0.1", "port": free_port(), "security": "none",
                                    "auth": "none", "timeout": 5})
    report = smtp_flush(box, profile)
    assert report.deferred == 1 and int(report.exit_code) == 75
    assert box.get(i).state == "deferred"
    box.close()


class LedgerHandler(RecordingHandler):
    """At each message's DATA (the point of delivery), reads the outbox with its own SQLite
    connection and notes how many earlier messages the flush has committed as sent."""

    def __init__(self, db: Path, **kw) -> None:
        super().__init__(**kw)
        self.db = db
        self.committed_at_data: list[tuple[int, int]] = []  # (messages delivered before, committed sent)

    async def handle_DATA(self, server, session, envelope):
        with sqlite3.connect(self.db) as conn:
            # committed: the row says sent, or its result waits in the journal or a side file
            sent = {i for (i,) in conn.execute("SELECT id FROM messages WHERE state='sent'")}
        self.committed_at_data.append((self.count, len(sent | journaled_ids(self.db))))
        return await super().handle_DATA(server, session, envelope)


def test_each_result_is_committed_before_the_next_message_is_delivered(tmp_path):
    # The flush writes a result while the server handles the next MAIL FROM; the guarantee
    # "a kill repeats at most the message in flight" needs every earlier result committed
    # by the time the next message's data reaches the server.
    path = tmp_path / "o.sqlite3"
    handler = LedgerHandler(path)
    with SmtpServer(handler) as server:
        box = Outbox(path)
        for n in range(30):
            box.enqueue(message(n), "app@example.com", ["user@example.org"])
        report = smtp_flush(box, profile_for(server))
        assert report.sent == 30
        assert handler.committed_at_data == [(k, k) for k in range(30)]
        assert box.count_by_state()["sent"] == 30
        box.close()


class LockingHandler(RecordingHandler):
    """After the first message, another connection takes the outbox's write lock and keeps it."""

    def __init__(self, db: Path, **kw) -> None:
        super().__init__(**kw)
        self.holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)

    async def handle_DATA(self, server, session, envelope):
        reply = await super().handle_DATA(server, session, envelope)
        if self.count == 1:
            self.holder.execute("BEGIN IMMEDIATE")
        return reply


@pytest.mark.parametrize("nowhere", ["side file blocked", "synchronous FULL"])
def test_a_result_that_cannot_be_written_stops_the_flush_before_more_mail_goes_out(tmp_path, nowhere):
    # the result has nowhere to go: no side file (its directory cannot be made, or every commit
    # must be synced), and the database is locked by another connection
    path = tmp_path / "o.sqlite3"
    if nowhere == "side file blocked":  # a file where the side files' directory would be
        Path(f"{path}.results").write_text("")
    handler = LockingHandler(path)
    with SmtpServer(handler) as server:
        box = Outbox(path, timeout=0.3, synchronous="FULL" if nowhere == "synchronous FULL" else "NORMAL")
        ids = [box.enqueue(message(n), "app@example.com", ["user@example.org"]) for n in range(5)]
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            smtp_flush(box, profile_for(server))
        assert handler.count == 1  # message 2 got no further than MAIL FROM
        handler.holder.execute("ROLLBACK")
        handler.holder.close()
        # the first message's result never made it: it is the one that may go out twice
        states = {i: box.get(i).state for i in ids}
        assert states[ids[0]] == "sending" and set(states.values()) <= {"sending", "queued"}
        box.clock = lambda: time.time() + 3600  # the dead flush's lease runs out
        report = smtp_flush(box, profile_for(server))
        assert report.sent == 5 and report.reclaimed >= 1
        assert handler.by_message_id["<m0@test.example>"] == 2
        assert all(handler.by_message_id[f"<m{n}@test.example>"] == 1 for n in range(1, 5))
        box.close()


def test_a_locked_database_does_not_stop_results_that_go_to_the_side_file(tmp_path):
    # Plain successes go to the side file, which needs no database lock: the claimed messages
    # all go out, each on record before the next; the flush stops at its next write (locked).
    # Once the lock is gone, a later flush (the first one's lease run out) sends none again.
    path = tmp_path / "o.sqlite3"
    handler = LockingHandler(path)
    with SmtpServer(handler) as server:
        box = Outbox(path, timeout=0.3)
        ids = [box.enqueue(message(n), "app@example.com", ["user@example.org"]) for n in range(5)]
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            smtp_flush(box, profile_for(server))
        assert handler.count == 5
        assert journaled_ids(path) == set(ids)
        handler.holder.execute("ROLLBACK")
        handler.holder.close()
        box.close()  # its lines are not folded: the side file stays for the next handle
        assert journaled_ids(path) == set(ids)
        later = Outbox(path, clock=lambda: time.time() + 3600)
        report = smtp_flush(later, profile_for(server))
        assert report.sent == 0 and report.reclaimed == 0
        assert all(handler.by_message_id[f"<m{n}@test.example>"] == 1 for n in range(5))
        assert [later.get(i).state for i in ids] == ["sent"] * 5
        assert all([e["outcome"] for e in later.get(i).attempt_log] == ["sent"] for i in ids)
        later.close()
    assert not [f for f in Path(f"{path}.results").iterdir()]  # the dead handle's file is gone


# --- processes -----------------------------------------------------------------------------
def _env(home: Path, outbox: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILCTL_")}
    env.update(MAILCTL_HOME=str(home), MAILCTL_OUTBOX=str(outbox), NO_COLOR="1")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _flush_cmd(*extra: str) -> list[str]:
    return [sys.executable, "-m", "mailctl", "queue", "flush", *extra]


class SlowHandler(RecordingHandler):
    """A little latency per message so that kills land while messages are on the wire."""

    async def handle_DATA(self, server, session, envelope):
        await asyncio.sleep(0.02)
        return await super().handle_DATA(server, session, envelope)


def test_sigkill_at_many_points_loses_nothing(isolated_env, tmp_path):
    n = 150
    handler = SlowHandler()
    with SmtpServer(handler) as server:
        write_profiles(isolated_env, {"local_smtp": server}, default="local_smtp", settings={"retention_days": 0})
        outbox = tmp_path / "o.sqlite3"
        with Outbox(outbox) as box:
            for i in range(n):
                box.enqueue(message(i), "app@example.com", ["user@example.org"])
        env = _env(isolated_env, outbox)
        rng = random.Random(6)
        kills = 0
        for round_ in range(12):
            proc = subprocess.Popen(_flush_cmd("--lease", "1"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.35, 1.2))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait()
            if handler.count >= n:
                break
            time.sleep(rng.choice([0, 0, 1.1]))  # sometimes let the lease run out before the next run
        time.sleep(1.1)  # the last killed flush's lease
        done = subprocess.run(_flush_cmd("--lease", "1"), env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        with Outbox(outbox) as box:
            counts = box.count_by_state()
        assert counts["sent"] == n, counts
        delivered = handler.by_message_id
        missing = [i for i in range(n) if delivered[f"<m{i}@test.example>"] == 0]
        assert not missing
        duplicates = sum(c - 1 for c in delivered.values() if c > 1)
        assert kills >= 3, "the flushes finished before they could be killed; slow the server down"
        print(f"SIGKILL test: {kills} kills, {duplicates} duplicate deliveries, {n} messages")
        assert duplicates <= kills, (duplicates, kills)


def test_four_concurrent_flushes_never_send_twice(isolated_env, tmp_path):
    n = 400
    handler = RecordingHandler()
    with SmtpServer(handler) as server:
        write_profiles(isolated_env, {"local_smtp": server}, default="local_smtp")
        outbox = tmp_path / "o.sqlite3"
        with Outbox(outbox) as box:
            for i in range(n):
                box.enqueue(message(i), "app@example.com", ["user@example.org"])
        env = _env(isolated_env, outbox)
        procs = [subprocess.Popen(_flush_cmd("--json"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(4)]
        outs = [p.communicate(timeout=180) for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0, 0], outs
        import json

        sent_by_process = [json.loads(o)["sent"] for o, _ in outs]
        assert sum(sent_by_process) == n
        assert handler.count == n
        assert all(c == 1 for c in handler.by_message_id.values()) and len(handler.by_message_id) == n
        assert sum(1 for s in sent_by_process if s) >= 2, sent_by_process  # they really ran side by side


# --- issue #12 item 3: configuration problems are not delivery attempts ------------------------
def test_flush_without_a_keyring_leaves_mail_alone_and_exits_78_once(cli, isolated_env, tmp_path):
    """cron without D-Bus: `queue flush` used to defer every message ("no usable keyring
    backend"), charge an attempt and exit 75, until max_retry_age expired them."""
    import json

    import keyring
    import keyring.backends.fail

    from smtpserver import smtp_server

    with smtp_server(auth=True, auth_require_tls=False) as srv:
        (isolated_env / "profiles.toml").write_text(
            'schema_version = 1\ndefault = "srv"\n[settings]\nmax_retry_age = "1h"\n[profiles.srv]\ntype = "smtp"\n'
            f'host = "127.0.0.1"\nport = {srv.port}\nsecurity = "none"\nauth = "password"\nusername = "alice@example.com"\n'
            'allow_insecure_auth = true\nfrom_address = "alice@example.com"\ntimeout = 10\n')
        outbox = tmp_path / "o.sqlite3"
        with Outbox(outbox) as box:
            ids = [box.enqueue(message(n), "alice@example.com", ["user@example.org"]) for n in range(3)]
        keyring.set_keyring(keyring.backends.fail.Keyring())
        r = cli("queue", "flush", "--outbox", str(outbox))
        assert r.exit_code == 78, r.output
        assert r.stderr.count("no usable keyring") == 1 and "Hint:" in r.stderr and "Traceback" not in r.output
        r = cli("queue", "flush", "--outbox", str(outbox), "--json")
        data = json.loads(r.stdout)
        assert r.exit_code == 78 and data["exit_code"] == 78 and data["left"] == 3 and data["deferred"] == 0
        assert "keyring" in data["config_errors"]["srv"]["message"] and data["config_errors"]["srv"]["hint"]
        with Outbox(outbox, clock=lambda: time.time() + 7200) as box:  # past max_retry_age
            for i in ids:
                info = box.get(i)
                assert (info.state, info.attempts, info.attempt_log) == ("queued", 0, [])
        assert srv.messages == []


def test_flush_with_no_password_stored_leaves_mail_alone_and_exits_78(cli, isolated_env, tmp_path, memory_keyring):
    """issue #12 item 3: 'cannot get a profile's secret' is a configuration problem: no
    attempt, no backoff, no expiry clock; the server never sees an AUTH."""
    from smtpserver import smtp_server

    with smtp_server(auth=True, auth_require_tls=False) as srv:
        (isolated_env / "profiles.toml").write_text(
            'schema_version = 1\ndefault = "srv"\n[profiles.srv]\ntype = "smtp"\n'
            f'host = "127.0.0.1"\nport = {srv.port}\nsecurity = "none"\nauth = "password"\nusername = "alice@example.com"\n'
            'allow_insecure_auth = true\nfrom_address = "alice@example.com"\ntimeout = 10\n')
        outbox = tmp_path / "o.sqlite3"
        with Outbox(outbox) as box:
            ids = [box.enqueue(message(n), "alice@example.com", ["user@example.org"]) for n in range(2)]
        r = cli("queue", "flush", "--outbox", str(outbox))
        assert r.exit_code == 78, r.output
        assert "no password stored" in r.stderr and "--password-stdin" in r.stderr
        with Outbox(outbox) as box:
            assert all((box.get(i).state, box.get(i).attempts) == ("queued", 0) for i in ids)
        assert srv.messages == []
