"""Broken and hostile SMTP servers (raw sockets on 127.0.0.1): an endless greeting or EHLO
reply, a reply dribbled a byte at a time or a line at a time, a TLS handshake dribbled, a
server that echoes the AUTH payload it received. mailctl must end within its deadlines, hold
a bounded reply, say what the server did, and never show, log or store a credential."""

from __future__ import annotations

import base64
import json
import os
import select
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mailctl.outbox import Outbox

from smtpserver import (
    PASSWORD,
    TOKEN,
    USER,
    assert_no_secret,
    assert_no_secret_form,
    make_pki,
    raw_server,
    smtp_server,
    store_secret,
    write_profiles,
)

pytestmark = pytest.mark.timeout(120)

GREETING = b"220 hostile.test ESMTP\r\n"
BOUND = 16_000_000  # what an endless server sends at most before it gives up by itself
RAW = "From: app@example.com\nTo: user@example.org\nSubject: hello\nMessage-ID: <h1@example.com>\n\nbody\n"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def profile(port: int, **values):
    base = {"type": "smtp", "host": "127.0.0.1", "port": port, "security": "none", "auth": "none", "timeout": 2,
            "from_address": "app@example.com"}
    base.update(values)
    return base


def outbox(home: Path) -> Outbox:
    return Outbox(home / "data" / "outbox.sqlite3")


# --- behaviours ---------------------------------------------------------------------------
def endless_greeting(conn, bound: int = BOUND) -> None:
    chunk = b"220-hostile.test greeting you again and again\r\n" * 64
    while conn.sent < bound and conn.send(chunk):
        pass


def endless_ehlo(conn) -> None:
    if not conn.send(GREETING) or conn.line() is None:
        return
    chunk = b"250-PIPELINING\r\n" * 256
    while conn.sent < BOUND and conn.send(chunk):
        pass


def endless_line(conn) -> None:
    """A greeting line that never ends (no CRLF)."""
    chunk = b"220 " + b"x" * 65536
    while conn.sent < BOUND and conn.send(chunk):
        pass


def drip_greeting(conn) -> None:
    conn.send_slowly(b"220 drip.test ESMTP at your service\r\n", 0.5)


def slow_ehlo_lines(conn) -> None:
    """Every line complete and quick, but one every 0.3 s: 12 s for the whole EHLO reply."""
    if not conn.send(GREETING) or conn.line() is None:
        return
    for i in range(40):
        if not conn.send(b"250-SLOW-%d\r\n" % i) or conn.stop.wait(0.3):
            return
    conn.send(b"250 OK\r\n")


def drip_data_reply(conn, endless: bool = False) -> None:
    """A well-behaved session until the end of DATA; the final reply comes a byte at a time
    (endless: never ends)."""
    conn.send(GREETING)
    while True:
        line = conn.line()
        if line is None:
            return
        verb = line.split(" ", 1)[0].upper()
        if verb in ("EHLO", "HELO"):
            conn.send(b"250-hostile.test\r\n250 8BITMIME\r\n")
        elif verb in ("MAIL", "RCPT", "RSET", "NOOP"):
            conn.send(b"250 OK\r\n")
        elif verb == "DATA":
            conn.send(b"354 go ahead\r\n")
            while conn.line() not in (None, "."):
                pass
            if endless:
                while conn.sent < BOUND and conn.send(b"250-2.0.0 still queueing\r\n" * 64):
                    pass
            else:
                conn.send_slowly(b"250 2.0.0 Ok: queued as SLOW1\r\n", 0.5)
            return
        elif verb == "QUIT":
            conn.send(b"221 bye\r\n")
            return
        else:
            conn.send(b"502 no\r\n")


def timed(fn, *args, **kw):
    start = time.monotonic()
    result = fn(*args, **kw)
    return result, time.monotonic() - start


def error_line(stderr: str) -> str:
    lines = [l for l in stderr.splitlines() if l.startswith("Error: ")]
    assert len(lines) == 1, stderr
    return lines[0]


# --- item 7: bounded replies ----------------------------------------------------------------
@pytest.mark.parametrize("behaviour, stage, what", [
    (endless_greeting, "banner", "more than 100 lines in its greeting"),
    (endless_ehlo, "ehlo", "more than 100 lines in its EHLO reply"),
    (endless_line, "banner", "a line longer than 8192 bytes in its greeting"),
])
def test_endless_reply_is_a_protocol_error_at_once(cli, isolated_env, behaviour, stage, what):
    with raw_server(behaviour) as srv:
        write_profiles(isolated_env, {"h": profile(srv.port)})
        res, took = timed(cli, "test", "connect")
        assert res.exit_code == 76, res.output
        assert took < 6, took
        line = error_line(res.stderr)
        assert what in line and f"127.0.0.1:{srv.port}" in line
        assert len(res.stdout) + len(res.stderr) < 4000  # the reply is not echoed in bulk
        assert f"FAILED {stage}" in res.stdout

        res, took = timed(cli, "test", "connect", "--json", "--transcript")
        data = json.loads(res.stdout)
        assert (res.exit_code, data["failed_stage"], data["explanation"]["id"]) == (76, stage, "reply-too-long")
        assert took < 6 and len(res.stdout) < 20000


@pytest.mark.parametrize("behaviour", [endless_greeting, endless_ehlo])
def test_endless_reply_defers_the_message_in_send_and_flush(cli, isolated_env, behaviour):
    with raw_server(behaviour) as srv:
        write_profiles(isolated_env, {"h": profile(srv.port)})
        res, took = timed(cli, "send", "--to", "user@example.org", "--subject", "s", "--body", "b")
        assert res.exit_code == 75, res.output
        assert took < 6
        assert "more than 100 lines" in res.stderr and len(res.stderr) < 4000
        assert cli("queue", "add", input=RAW).exit_code == 0
        res, took = timed(cli, "queue", "flush")
        assert res.exit_code == 75, res.output
        assert took < 6
    with outbox(isolated_env) as box:
        rows = list(box.list())
        assert [r.state for r in rows] == ["deferred", "deferred"]
        for r in rows:
            assert "more than 100 lines" in r.last_reply and len(r.last_reply) < 1000


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc")
def test_memory_stays_flat_against_an_endless_greeting(isolated_env, tmp_path):
    """In a fresh interpreter: a `test connect` against a server sending 48 MB of `220-` lines
    raises the peak RSS by less than 10 MB (reading it all would take some 90 MB)."""
    from smtpserver import closed_port

    script = tmp_path / "rss.py"
    script.write_text(textwrap.dedent("""
        from typer.testing import CliRunner
        from mailctl.cli import app

        def peak_kib():  # VmHWM: this process's peak RSS (ru_maxrss would carry the parent's over exec)
            with open("/proc/self/status") as f:
                return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))

        runner = CliRunner()
        runner.invoke(app, ["test", "connect", "closed"])  # warm up: every import the probe needs
        before = peak_kib()
        res = runner.invoke(app, ["test", "connect", "hostile"])
        print(res.exit_code, before, peak_kib())
    """))
    with raw_server(lambda conn: endless_greeting(conn, 48_000_000)) as srv:
        write_profiles(isolated_env, {"hostile": profile(srv.port), "closed": profile(closed_port())}, default="hostile")
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAILCTL_")}
        env.update(MAILCTL_HOME=str(isolated_env), NO_COLOR="1", PYTHON_KEYRING_BACKEND="keyring.backends.null.Keyring",
                   PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
        out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60)
    code, before, after = (int(x) for x in out.stdout.split())
    assert after - before < 10 * 1024, (before, after)  # KiB
    assert code == 76, out.stdout + out.stderr


# --- item 7: deadlines, not per-read timeouts -------------------------------------------------
def test_dripping_greeting_gives_up_at_the_deadline(cli, isolated_env):
    with raw_server(drip_greeting) as srv:
        write_profiles(isolated_env, {"h": profile(srv.port)})
        res, took = timed(cli, "test", "connect")
        assert res.exit_code == 69, res.output
        assert took < 2 * 3, took
        line = error_line(res.stderr)
        assert "no complete greeting" in line and "within 2s" in line

        res, took = timed(cli, "test", "connect", "--json")
        data = json.loads(res.stdout)
        assert (res.exit_code, data["failed_stage"], data["explanation"]["id"]) == (69, "banner", "reply-too-slow")
        assert took < 6


def test_dripping_greeting_defers_the_message_in_send_and_flush(cli, isolated_env):
    with raw_server(drip_greeting) as srv:
        write_profiles(isolated_env, {"h": profile(srv.port)})
        res, took = timed(cli, "send", "--to", "user@example.org", "--subject", "s", "--body", "b")
        assert res.exit_code == 75, res.output
        assert took < 6 and "no complete greeting" in res.stderr
        assert cli("queue", "add", input=RAW).exit_code == 0
        res, took = timed(cli, "queue", "flush")
        assert res.exit_code == 75 and took < 6, res.output
    with outbox(isolated_env) as box:
        assert [r.state for r in list(box.list())] == ["deferred", "deferred"]


def test_ehlo_lines_one_by_one_cannot_stretch_the_stage(cli, isolated_env):
    # every read completes well within the 2 s timeout; the stage as a whole may not take longer
    with raw_server(slow_ehlo_lines) as srv:
        write_profiles(isolated_env, {"h": profile(srv.port)})
        res, took = timed(cli, "test", "connect", "--json")
        data = json.loads(res.stdout)
        assert (res.exit_code, data["failed_stage"]) == (75, "ehlo"), res.output
        assert data["explanation"]["id"] == "reply-too-slow"
        assert "did not complete its EHLO reply within 2s" in data["error"]
        assert took < 6, took
        res, took = timed(cli, "send", "--to", "user@example.org", "--subject", "s", "--body", "b")
        assert res.exit_code == 75 and took < 6, res.output
    with outbox(isolated_env) as box:
        [row] = list(box.list())
        assert row.state == "deferred" and "EHLO" in row.last_reply


@pytest.mark.parametrize("endless, said", [(False, "did not complete its DATA reply within 2s"),
                                           (True, "more than 100 lines in its DATA reply")])
def test_a_broken_final_reply_defers_not_loses(cli, isolated_env, endless, said):
    with raw_server(lambda conn: drip_data_reply(conn, endless)) as srv:
        write_profiles(isolated_env, {"h": profile(srv.port)})
        assert cli("queue", "add", input=RAW).exit_code == 0
        res, took = timed(cli, "queue", "flush")
        assert res.exit_code == 75, res.output
        assert took < 6, took
    with outbox(isolated_env) as box:
        [row] = list(box.list())
        assert row.state == "deferred" and said in row.last_reply, row.last_reply


def drip_relay(upstream: int, delay: float):
    """Relays to a real server, passing the server's bytes on one at a time."""
    def behaviour(conn) -> None:
        up = socket.create_connection(("127.0.0.1", upstream), timeout=5)
        pending = b""
        end = time.monotonic() + 30
        try:
            while not conn.stop.is_set() and time.monotonic() < end:
                readable, _, _ = select.select([conn.sock, up], [], [], delay)
                for s in readable:
                    data = s.recv(65536)
                    if not data:
                        return
                    if s is conn.sock:
                        up.sendall(data)
                    else:
                        pending += data
                if pending:
                    if not conn.send(pending[:1]):
                        return
                    pending = pending[1:]
        finally:
            up.close()
    return behaviour


def test_dripping_tls_handshake_keeps_to_the_timeout(cli, isolated_env, pki):
    with smtp_server(security="tls", cert=pki.good) as real, raw_server(drip_relay(real.port, 0.02)) as srv:
        write_profiles(isolated_env, {"h": profile(srv.port, host="localhost", security="tls", timeout=1.5,
                                                   ca_file=str(pki.ca_file))})
        res, took = timed(cli, "test", "connect", "--json")
        data = json.loads(res.stdout)
        assert (res.exit_code, data["failed_stage"]) == (69, "tls"), res.output
        assert took < 1.5 * 3, took


# --- item 9: a server that echoes the credentials ---------------------------------------------
def _visible(payload: str) -> str:
    try:
        return base64.b64decode(payload + "=" * (-len(payload) % 4)).decode("utf-8", "replace").replace("\0", " ").replace("\x01", " ")
    except Exception:
        return payload


def echo_server(mechanisms: str = "PLAIN LOGIN XOAUTH2", *, accept: bool = False):
    """Answers AUTH with the payload it received: as sent, without padding, truncated and
    decoded. accept=True: AUTH succeeds and MAIL FROM and the final DATA reply echo it too."""
    echoed: list[str] = []

    def behaviour(conn) -> None:
        payload = ""
        conn.send(b"220 echo.test ESMTP\r\n")
        while (line := conn.line()) is not None:
            words = line.split()
            verb = words[0].upper() if words else ""
            if verb in ("EHLO", "HELO"):
                conn.send(f"250-echo.test\r\n250-AUTH {mechanisms}\r\n250 8BITMIME\r\n".encode())
            elif verb == "AUTH":
                mech, got = words[1].upper(), words[2:]
                if mech == "LOGIN":
                    if not got:
                        conn.send(b"334 VXNlcm5hbWU6\r\n")
                        got = [conn.line() or ""]
                    conn.send(b"334 UGFzc3dvcmQ6\r\n")
                    got.append(conn.line() or "")
                elif not got:
                    conn.send(b"334 \r\n")
                    got = [conn.line() or ""]
                parts = [g for g in got if g]
                payload = " ".join(parts)
                echoed.extend(parts)
                if accept:
                    conn.send(f"235 2.7.0 Authentication successful for payload {payload}\r\n".encode())
                    continue
                lines = [f"5.7.8 Authentication failed for payload {payload}",
                         "5.7.8 unpadded " + " ".join(p.rstrip("=") for p in parts),
                         "5.7.8 truncated " + " ".join(p[:-3] + "..." for p in parts),
                         "5.7.8 decoded " + " | ".join(_visible(p) for p in parts)]
                reply = "".join(f"535-{l}\r\n" for l in lines[:-1]) + f"535 {lines[-1]}\r\n"
                conn.send(reply.encode())
            elif verb == "MAIL":
                conn.send(f"250 2.1.0 sender ok, you sent {payload}\r\n".encode())
            elif verb == "RCPT":
                conn.send(b"250 2.1.5 ok\r\n")
            elif verb == "DATA":
                conn.send(b"354 go ahead\r\n")
                while conn.line() not in (None, "."):
                    pass
                conn.send(f"250 2.0.0 Ok: queued as ECHO1 (auth was {payload}, {_visible(payload)})\r\n".encode())
            elif verb == "RSET":
                conn.send(b"250 ok\r\n")
            elif verb == "QUIT":
                conn.send(b"221 bye\r\n")
                return
            else:
                conn.send(b"502 5.5.2 what\r\n")

    behaviour.echoed = echoed
    return behaviour


def assert_clean(behaviour, *texts: str) -> None:
    assert_no_secret_form(*texts)
    assert_no_secret(*texts)
    for payload in behaviour.echoed:  # a truncated echo of an encoded payload is masked too
        for text in texts:
            assert payload[:-3] not in (text or ""), text


@pytest.mark.parametrize("mechanisms, auth", [("PLAIN LOGIN", "password"), ("LOGIN", "password"), ("XOAUTH2", "oauth")])
def test_echoed_credentials_are_redacted_in_test_connect(cli, isolated_env, mechanisms, auth):
    store_secret("e", "password", PASSWORD)
    store_secret("e", "access_token", TOKEN)
    behaviour = echo_server(mechanisms)
    with raw_server(behaviour) as srv:
        write_profiles(isolated_env, {"e": profile(srv.port, auth=auth, username=USER, allow_insecure_auth=True)})
        outputs = []
        for extra in ((), ("--json",), ("--transcript",), ("--json", "--transcript")):
            res = cli("test", "connect", *extra)
            assert res.exit_code == 77, res.output
            outputs += [res.stdout, res.stderr]
        assert behaviour.echoed, "the server saw no AUTH payload"
        assert "Authentication failed for payload [redacted]" in outputs[1]
    assert_clean(behaviour, *outputs)


@pytest.mark.parametrize("mechanisms, auth", [("PLAIN", "password"), ("LOGIN", "password"), ("XOAUTH2", "oauth")])
def test_echoed_credentials_are_redacted_in_send_and_the_outbox(cli, isolated_env, mechanisms, auth):
    store_secret("e", "password", PASSWORD)
    store_secret("e", "access_token", TOKEN)
    behaviour = echo_server(mechanisms)
    with raw_server(behaviour) as srv:
        write_profiles(isolated_env, {"e": profile(srv.port, auth=auth, username=USER, allow_insecure_auth=True)})
        sent = cli("send", "--to", "user@example.org", "--subject", "s", "--body", "b")
        assert sent.exit_code in (75, 77) and "535" in sent.stderr, sent.output  # kept in the outbox
        assert cli("queue", "add", input=RAW).exit_code == 0
        flushed = cli("queue", "flush")
        flushed_json = cli("queue", "flush", "--json")
        assert flushed.exit_code in (75, 77) and "[redacted]" in flushed.stdout + flushed.stderr, flushed.output
    listed = cli("queue", "list", "--json")
    with outbox(isolated_env) as box:
        rows = list(box.list())
        replies = [r.last_reply or "" for r in rows]
    assert [r.state for r in rows] == ["deferred", "deferred"] and all("535" in r for r in replies), replies
    assert_clean(behaviour, sent.stdout, sent.stderr, flushed.stdout, flushed.stderr, flushed_json.stdout,
                 listed.stdout, *replies)


def test_echo_after_a_successful_auth_is_redacted_in_the_result(cli, isolated_env):
    store_secret("e", "password", PASSWORD)
    behaviour = echo_server("PLAIN", accept=True)
    with raw_server(behaviour) as srv:
        write_profiles(isolated_env, {"e": profile(srv.port, auth="password", username=USER, allow_insecure_auth=True)})
        tested = [cli("test", "send", "--to", "user@example.org", *extra) for extra in ((), ("--json",))]
        assert all(r.exit_code == 0 for r in tested), tested[0].output
        assert "ECHO1" in tested[0].stdout
        assert cli("queue", "add", input=RAW).exit_code == 0
        flushed = cli("queue", "flush", "--json")
        assert flushed.exit_code == 0, flushed.output
    with outbox(isolated_env) as box:
        [row] = list(box.list())
    assert row.state == "sent" and "ECHO1" in row.last_reply
    assert_clean(behaviour, *(r.stdout + r.stderr for r in tested), flushed.stdout, row.last_reply)
