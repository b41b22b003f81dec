"""Four defects, each against real components:

1. the EHLO sent after STARTTLS that fails (no answer, a dropped connection, a refusal) is
   reported as stage `ehlo_tls`, not `ehlo` (a raw TLS server on loopback with the test CA);
2. `mailctl -v/-vv queue worker` passes the trace to its flushes as `queue flush` does: the
   timings and the redacted transcript on stderr, never the password (a real worker process
   against aiosmtpd with STARTTLS and AUTH);
3. only the `--json` OPTION turns errors into JSON: a "--json" that is the value of an option
   (`send --subject --json`) leaves them in plain text;
4. `mailctl test connect` on a graph profile refreshes the token once on a 401 from the
   mailbox lookup, as sending does (the local Graph fake and identity provider)."""

from __future__ import annotations

import json
import re
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import keyring
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from httpfakes import FakeHTTPS, Reply, graph_error, graph_fake  # noqa: E402
from idp import CLIENT_ID, CLIENT_SECRET, TENANT, ca_pem, idp, trust_ca  # noqa: E402,F401  (fixtures)
from idp import write_profiles as write_graph_profiles  # noqa: E402
from smtpserver import (  # noqa: E402
    PASSWORD,
    USER,
    assert_no_secret,
    make_pki,
    raw_server,
    smtp_server,
    write_profiles,
)
from worker_procs import env_for, log_has, mailctl, message, start_worker, wait_until  # noqa: E402

from mailctl.errors import ExitCode, MailctlError  # noqa: E402
from mailctl.outbox import Outbox  # noqa: E402

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


# --- 1. the EHLO after STARTTLS -------------------------------------------------------------
TIMEOUT = 1.0


def after_starttls(pki, then):
    """A server that offers STARTTLS, completes the handshake with the test CA's certificate
    for localhost, reads the second EHLO and then does `then(conn)`."""

    def behaviour(conn) -> None:
        if not conn.send(b"220 s5.test ESMTP\r\n") or conn.line() is None:
            return
        if not conn.send(b"250-s5.test\r\n250 STARTTLS\r\n") or conn.line() != "STARTTLS":
            return
        conn.send(b"220 2.0.0 go ahead\r\n")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        pki.good.configure_cert(ctx)
        conn.sock.settimeout(5)
        try:
            conn.sock = ctx.wrap_socket(conn.sock, server_side=True)
        except (OSError, ssl.SSLError):
            return
        conn.sock.settimeout(0.2)
        conn.buf = b""
        if conn.line() is None:  # the second EHLO
            return
        then(conn)

    return behaviour


def never_answer(conn) -> None:
    conn.stop.wait(10)  # holds the connection open, silent, until the test is over


def hang_up(conn) -> None:
    conn.sock.close()


def refuse(conn) -> None:
    conn.send(b"554 5.3.2 not now\r\n")  # EHLO refused ...
    if conn.line() is not None:
        conn.send(b"554 5.3.2 not now\r\n")  # ... and the HELO after it


def starttls_profile(port: int, pki) -> dict:
    return {"type": "smtp", "host": "localhost", "port": port, "security": "starttls", "auth": "none",
            "timeout": TIMEOUT, "ca_file": str(pki.ca_file), "from_address": "app@example.com"}


@pytest.mark.parametrize("then, exit_code, words", [
    (never_answer, ExitCode.TEMPFAIL, "did not answer within 1s during EHLO after STARTTLS"),
    (hang_up, ExitCode.TEMPFAIL, "lost during EHLO after STARTTLS"),
    (refuse, ExitCode.PROTOCOL, "EHLO after STARTTLS refused by"),
])
def test_a_failed_ehlo_after_starttls_is_stage_ehlo_tls(cli, isolated_env, pki, then, exit_code, words):
    with raw_server(after_starttls(pki, then)) as srv:
        write_profiles(isolated_env, {"h": starttls_profile(srv.port, pki)})
        start = time.monotonic()
        res = cli("test", "connect", "--json")
        took = time.monotonic() - start
        text = cli("test", "connect")
    assert res.exit_code == int(exit_code), res.output
    assert took < TIMEOUT * 4, took  # one deadline for the stage, not a hang
    data = json.loads(res.stdout)
    assert data["failed_stage"] == "ehlo_tls" and data["exit_code"] == int(exit_code)
    names = [(s["stage"], s["status"]) for s in data["stages"]]
    assert ("ehlo", "ok") in names and ("starttls", "ok") in names and ("ehlo_tls", "failed") in names
    assert words in data["error"], data["error"]
    assert data["tls"]["version"].startswith("TLS")  # STARTTLS did complete
    assert text.exit_code == int(exit_code)
    assert re.search(r"^\s+FAILED ehlo_tls ", text.stdout, re.M), text.stdout
    assert words in text.stderr and "Error: " in text.stderr


def test_the_ehlo_tls_timeout_error_carries_its_stage(isolated_env, pki):
    """What send, flush and the worker see: the MailctlError of open() names ehlo_tls, and the
    explanation is the one for the EHLO after STARTTLS."""
    from mailctl.profiles.store import ProfileStore
    from mailctl.profiles.resolve import resolve_profile
    from mailctl.secrets import default_resolver
    from mailctl.transports import open_transport

    with raw_server(after_starttls(pki, never_answer)) as srv:
        write_profiles(isolated_env, {"h": starttls_profile(srv.port, pki)})
        profile = resolve_profile(ProfileStore(isolated_env / "profiles.toml").load(), "h")
        start = time.monotonic()
        with pytest.raises(MailctlError) as exc:
            with open_transport(profile, default_resolver()):
                pass
        took = time.monotonic() - start
    err = exc.value
    assert (err.stage, err.exit_code) == ("ehlo_tls", ExitCode.TEMPFAIL), (err.stage, err.message)
    assert "during EHLO after STARTTLS" in err.message and took < TIMEOUT * 4
    assert err.explanation is not None and "after STARTTLS" in err.explanation.cause


# --- 2. queue worker -v / -vv -------------------------------------------------------------
TIMING = re.compile(r"^mailctl: connected to 127\.0\.0\.1:\d+ in \d+ ms$", re.M)


@pytest.mark.parametrize("verbose", ["-v", "-vv"])
def test_queue_worker_v_traces_its_flushes_as_queue_flush_does(isolated_env, tmp_path, pki, verbose):
    location = str(tmp_path / "outbox.sqlite3")
    log = tmp_path / "worker.log"
    with smtp_server(cert=pki.good) as server:
        write_profiles(isolated_env, {"relay": {
            "type": "smtp", "host": "127.0.0.1", "port": server.port, "security": "starttls", "auth": "password",
            "username": USER, "ca_file": str(pki.ca_file), "from_address": USER, "timeout": 10}}, default="relay")
        box = Outbox(location)
        box.enqueue(message(0, "s5"), USER, ["user@example.org"])
        box.close()
        env = env_for(isolated_env, location, MAILCTL_SECRET_RELAY_PASSWORD=PASSWORD)
        proc = subprocess.Popen(mailctl(verbose, "queue", "worker", "--interval", "60s"), env=env,
                                stdout=subprocess.DEVNULL, stderr=open(log, "ab"))
        try:
            assert wait_until(lambda: len(server.messages) == 1, 30), log.read_text()
            assert wait_until(lambda: log_has(log, "mailctl: sent in"), 10), log.read_text()
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            code = proc.wait(20)
    err = log.read_text()
    assert code == 0, err
    assert "mailctl: profile relay (the default profile)" in err
    assert "mailctl: outbox " in err
    assert "mailctl: secret password for profile relay from environment ($MAILCTL_SECRET_RELAY_PASSWORD)" in err
    assert len(TIMING.findall(err)) == 1 and err.count("mailctl: sent in") == 1, err
    talk = [line[len("mailctl: "):] for line in err.splitlines() if line.startswith(("mailctl: C:", "mailctl: S:"))]
    if verbose == "-vv":
        assert "C: STARTTLS" in [t.upper() for t in talk]
        assert "C: AUTH PLAIN [redacted]" in talk
        assert "C: Subject: s5 0" in talk and any(t.startswith("S: 250 ") for t in talk)
    else:
        assert talk == []  # the transcript is -vv's
    assert re.search(r" info round .*sent=1", err) or '"event": "round"' in err, err  # its own log is still there
    assert_no_secret(err)


def test_queue_worker_without_v_adds_no_trace(isolated_env, tmp_path, pki):
    location = str(tmp_path / "outbox.sqlite3")
    log = tmp_path / "worker.log"
    with smtp_server(cert=pki.good) as server:
        write_profiles(isolated_env, {"relay": {
            "type": "smtp", "host": "127.0.0.1", "port": server.port, "security": "starttls", "auth": "none",
            "ca_file": str(pki.ca_file), "from_address": USER, "timeout": 10}}, default="relay")
        box = Outbox(location)
        box.enqueue(message(0, "s5"), USER, ["user@example.org"])
        box.close()
        proc = start_worker(env_for(isolated_env, location), "--interval", "60s", log=log)
        try:
            assert wait_until(lambda: len(server.messages) == 1, 30), log.read_text()
            assert wait_until(lambda: log_has(log, "round"), 10), log.read_text()
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            code = proc.wait(20)
    err = log.read_text()
    assert code == 0 and "mailctl: " not in err, err


# --- 3. --json as an option, not as a value ------------------------------------------------
@pytest.fixture
def smtp_profile(isolated_env):
    write_profiles(isolated_env, {"s": {"type": "smtp", "host": "127.0.0.1", "port": 2525, "security": "none",
                                        "auth": "none", "from_address": "app@example.com"}}, default="s")


BAD = "not an address"


def test_the_json_flag_still_gives_an_error_object(cli, smtp_profile):
    for args in (("send", "--json", "--to", BAD, "-b", "x"), ("--json", "send", "--to", BAD, "-b", "x"),
                 ("send", "--subject=--json", "--json", "--to", BAD, "-b", "x")):
        res = cli(*args)
        assert res.exit_code == int(ExitCode.DATAERR), (args, res.output)  # the address is bad data
        doc = json.loads(res.stdout)  # one object on stdout
        assert doc["exit_code"] == res.exit_code and BAD in doc["error"] and doc["error"].startswith("to: "), (args, doc)
        assert "Error: to: " in res.stderr


def test_a_json_option_value_leaves_the_error_in_plain_text(cli, smtp_profile):
    flagged = cli("send", "--json", "--to", BAD, "-b", "x")
    for args, exit_code, error in (
            (("send", "--subject", "--json", "--to", BAD, "-b", "x"), ExitCode.DATAERR, "Error: to: "),
            (("send", "-s", "--json", "--to", BAD, "-b", "x"), ExitCode.DATAERR, "Error: to: "),
            (("send", "-s--json", "--to", BAD, "-b", "x"), ExitCode.DATAERR, "Error: to: "),
            (("-p", "--json", "send", "--to", BAD, "-b", "x"), ExitCode.NOINPUT, "Error: no profile named '--json'"),
            (("send", "--to", BAD, "-b", "x", "--", "--json"), ExitCode.NOINPUT, "Error: no profile named '--json'")):
        res = cli(*args)
        assert res.exit_code == int(exit_code), (args, res.output)
        assert res.stdout == "", (args, res.stdout)  # no error object
        assert [line for line in res.stderr.splitlines() if line.startswith(error)], (args, res.stderr)
    # the value case fails the same way as the flagged one, only without the object
    plain = cli("send", "--subject", "--json", "--to", BAD, "-b", "x")
    assert plain.exit_code == flagged.exit_code and plain.stdout == ""


def test_usage_errors_follow_the_option_too(cli, smtp_profile):
    res = cli("send", "--json", "--no-such-option")
    assert res.exit_code == 2 and json.loads(res.stdout)["exit_code"] == 2
    res = cli("send", "--subject", "--json", "--no-such-option")
    assert res.exit_code == 2 and res.stdout == "", res.stdout


# --- 4. graph test connect: one token refresh on a 401 --------------------------------------
MAILBOX = "ops@example.com"


@pytest.fixture
def graph(trust_ca):
    with FakeHTTPS(trust_ca) as srv:
        yield graph_fake(srv)


@pytest.fixture
def app_profile(isolated_env, graph, idp, ca_pem):
    write_graph_profiles(isolated_env, {"app": {
        "type": "graph", "auth": "client-credentials", "username": MAILBOX, "from_address": MAILBOX,
        "tenant_id": TENANT, "client_id": CLIENT_ID, "authority": idp.authority,
        "graph_endpoint": graph.base_url, "ca_file": ca_pem}}, default="app")
    keyring.set_password("mailctl", "app/client_secret", CLIENT_SECRET)
    return "app"


MAILBOX_PATH = r"/v1.0/users/[^/]+"


def test_graph_test_connect_refreshes_the_token_once_on_401(cli, app_profile, graph, idp):
    graph.on("GET", MAILBOX_PATH, graph_error(401, "InvalidAuthenticationToken", "Lifetime validation failed, the token is expired."),
             Reply(200, {"mail": MAILBOX, "userPrincipalName": MAILBOX}))
    res = cli("test", "connect", "app", "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["failed_stage"] is None and data["stages"][-1]["status"] == "ok", data["stages"]
    first, second = graph.find("GET", MAILBOX_PATH)
    old, new = (r.headers["authorization"].removeprefix("Bearer ") for r in (first, second))
    assert old != new and idp.check_access_token(new)  # a fresh token, from the identity provider
    assert old not in res.output and new not in res.output and CLIENT_SECRET not in res.output


def test_graph_test_connect_401_after_the_refresh_is_77(cli, app_profile, graph):
    graph.on("GET", MAILBOX_PATH, graph_error(401, "InvalidAuthenticationToken", "Access token validation failure."))
    res = cli("test", "connect", "app", "--json")
    assert res.exit_code == int(ExitCode.NOPERM), res.output
    assert len(graph.find("GET", MAILBOX_PATH)) == 2  # refreshed once, not more
    assert json.loads(res.stdout)["failed_stage"] == "response"
