"""Issue #15 items 3, 5 and 6: what `mailctl test connect/send` shows is what happened.

Timeouts are timeouts (which stage, after how long, the causes for that stage); the EHLO
after STARTTLS is shown as it was; fetching the secret is a stage of its own; every error is
printed once; the local address and the one the server saw; the test message says what sent
it. Real servers on 127.0.0.1: aiosmtpd (STARTTLS), a silent listener, raw scripted servers."""

from __future__ import annotations

import json
import re
import sys

import pytest

import mailctl
from smtpserver import PASSWORD, USER, assert_no_secret, make_pki, raw_server, silent_listener, smtp_server, store_secret, write_profiles


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def profile(port, **values):
    p = {"type": "smtp", "host": "127.0.0.1", "port": port, "security": "none", "auth": "none", "timeout": 1,
         "from_address": USER}
    p.update(values)
    return p


def run_json(cli, *args):
    res = cli(*args, "--json")
    return res, json.loads(res.stdout)


def stage(data, name):
    return next(s for s in data["stages"] if s["stage"] == name)


# --- item 3: timeouts are timeouts -----------------------------------------------------------
def test_no_greeting_is_a_timeout_with_the_banner_causes(cli, isolated_env):
    with silent_listener() as port:
        write_profiles(isolated_env, {"p": profile(port)})
        res, data = run_json(cli, "test", "connect")
        human = cli("test", "connect")
    assert res.exit_code == 69 and data["failed_stage"] == "banner"
    assert "closed" not in data["error"] and "within 1s" in data["error"] and "stayed open" in data["error"]
    cause = data["explanation"]["cause"]
    assert re.search(r"Timed out at banner after 1\.\d s \(timeout 1 s\)", cause), cause
    for likely in ("implicit TLS", "tarpit", "firewall"):
        assert likely in cause
    assert stage(data, "banner")["duration_seconds"] >= 0.95
    assert "closed the connection" not in human.output


def test_a_server_that_closes_before_greeting_is_not_a_timeout(cli, isolated_env):
    with raw_server(lambda conn: None) as srv:  # accepts, then closes at once
        write_profiles(isolated_env, {"p": profile(srv.port, timeout=5)})
        res, data = run_json(cli, "test", "connect")
    assert res.exit_code == 69 and "closed the connection" in data["error"] and "without a greeting" in data["error"]
    assert "Timed out" not in (data["explanation"] or {}).get("cause", "")
    assert stage(data, "banner")["duration_seconds"] < 2


def test_implicit_tls_to_a_silent_port_times_out_at_tls(cli, isolated_env):
    with silent_listener() as port:
        write_profiles(isolated_env, {"p": profile(port, security="tls")})
        res, data = run_json(cli, "test", "connect")
    assert res.exit_code == 69 and data["failed_stage"] == "tls"
    assert "no answer within 1s" in data["error"]
    assert data["explanation"]["cause"].startswith("Timed out at tls after 1.")
    assert "implicit-TLS port" in data["explanation"]["cause"]


def _greets_then_silent(conn):
    conn.send(b"220 slow.test ESMTP\r\n")
    conn.line()  # EHLO, never answered
    conn.stop.wait(5)


def test_ehlo_timeout_names_the_stage_and_its_causes(cli, isolated_env):
    with raw_server(_greets_then_silent) as srv:
        write_profiles(isolated_env, {"p": profile(srv.port)})
        res, data = run_json(cli, "test", "connect")
    assert data["failed_stage"] == "ehlo"
    assert re.search(r"timed out after 1\.\d s", data["error"]), data["error"]
    assert data["explanation"]["cause"].startswith("Timed out at ehlo after 1.")
    assert "reverse DNS" in data["explanation"]["cause"]
    assert data["explanation"]["exit_code"] == res.exit_code  # one exit code, whatever the explanation


# --- item 5: what is shown is what happened --------------------------------------------------
def test_second_ehlo_is_shown_as_it_was(cli, isolated_env, pki):
    with smtp_server(cert=pki.good) as srv:
        write_profiles(isolated_env, {"p": profile(srv.port, host="localhost", security="starttls", ca_file=str(pki.ca_file))})
        res, data = run_json(cli, "test", "connect")
        human = cli("test", "connect")
    assert res.exit_code == 0
    assert "STARTTLS" in stage(data, "ehlo")["detail"]
    assert "STARTTLS" not in stage(data, "ehlo_tls")["detail"]  # aiosmtpd stops offering it after TLS
    caps = data["capabilities"]
    assert caps["starttls"] is False and caps["after_starttls"] is True and caps["starttls_before_tls"] is True
    assert "starttls" not in caps["all"]
    assert "Capabilities (EHLO after STARTTLS):" in human.stdout
    assert re.search(r"STARTTLS:\s+no \(offered before TLS", human.stdout)


def test_fetching_the_secret_is_its_own_stage(cli, isolated_env, pki):
    """A secret_command that takes 0.6 s: the secret stage takes it, AUTH does not."""
    command = f"{sys.executable} -c \"import time; time.sleep(0.6); print('{PASSWORD}')\""
    with smtp_server(cert=pki.good) as srv:
        write_profiles(isolated_env, {"p": profile(srv.port, host="localhost", security="starttls", ca_file=str(pki.ca_file),
                                                   auth="password", username=USER, secret_command=command, timeout=5)})
        res, data = run_json(cli, "test", "connect")
    assert res.exit_code == 0, res.output
    names = [s["stage"] for s in data["stages"]]
    assert names.index("secret") == names.index("auth") - 1
    secret, auth = stage(data, "secret"), stage(data, "auth")
    assert secret["duration_seconds"] >= 0.55 and auth["duration_seconds"] < 0.5
    assert secret["detail"] == "password from secret_command:p"
    assert srv.handler.attempts_auth == [("PLAIN", True)]
    assert_no_secret(res.stdout, res.stderr)


def test_a_missing_secret_fails_at_the_secret_stage(cli, isolated_env, pki):
    with smtp_server(cert=pki.good) as srv:
        write_profiles(isolated_env, {"p": profile(srv.port, host="localhost", security="starttls", ca_file=str(pki.ca_file),
                                                   auth="password", username=USER)})
        res, data = run_json(cli, "test", "connect")
        assert srv.handler.attempts_auth == []
    assert res.exit_code == 77 and data["failed_stage"] == "secret" and "no password stored" in data["error"]


def test_every_error_is_printed_once(cli, isolated_env, pki):
    with smtp_server(cert=pki.wrong_name) as srv:
        write_profiles(isolated_env, {"p": profile(srv.port, host="localhost", security="starttls", ca_file=str(pki.ca_file))})
        res = cli("test", "connect")
    assert res.exit_code == 69
    error = res.stderr.splitlines()[0].removeprefix("Error: ")
    hint = res.stderr.splitlines()[1].removeprefix("Hint: ")
    everything = res.stdout + res.stderr
    assert everything.count(error) == 1 and everything.count(hint) == 1
    assert re.search(r"FAILED starttls .*\(the error is below\)", res.stdout)
    assert "cause: The server's certificate is valid for mail.other.test" in res.stdout


# --- item 6: the operator's context -----------------------------------------------------------
def _reports_the_client(conn):
    """A server whose EHLO reply shows the address it saw, as Exchange and Gmail do."""
    peer = conn.sock.getpeername()
    conn.send(b"220 mx.test ESMTP\r\n")
    while True:
        line = conn.line()
        if line is None:
            return
        verb = line.split(" ", 1)[0].upper()
        if verb == "EHLO":
            conn.send(f"250-mx.test Hello [203.0.113.7]\r\n250-X-CLIENT-PORT {peer[1]}\r\n250 SIZE 1000\r\n".encode())
        elif verb == "QUIT":
            conn.send(b"221 bye\r\n")
            return
        else:
            conn.send(b"502 no\r\n")


def test_local_address_and_the_address_the_server_saw(cli, isolated_env):
    with raw_server(_reports_the_client) as srv:
        write_profiles(isolated_env, {"p": profile(srv.port)})
        res, data = run_json(cli, "test", "connect")
        human = cli("test", "connect")
    assert res.exit_code == 0, res.output
    client = data["client"]
    seen_port = data["capabilities"]["all"]["x-client-port"]
    assert client["local"] == f"127.0.0.1:{seen_port}"  # the port the server accepted from
    assert client["seen_by_server"] == "203.0.113.7"
    assert "from 127.0.0.1:" in stage(data, "connect")["detail"]
    assert "Server saw:     203.0.113.7" in human.stdout and "allow-list" in human.stdout


def test_without_the_address_in_ehlo_only_the_local_one_is_shown(cli, isolated_env, pki):
    with smtp_server() as srv:  # aiosmtpd's EHLO reply does not show it
        write_profiles(isolated_env, {"p": profile(srv.port)})
        res, data = run_json(cli, "test", "connect")
        human = cli("test", "connect")
    assert data["client"]["seen_by_server"] is None and data["client"]["local"].startswith("127.0.0.1:")
    assert "Connected from: 127.0.0.1:" in human.stdout and "Server saw" not in human.stdout


def test_test_message_body_says_what_sent_it(cli, isolated_env, pki):
    store_secret("p", "password", PASSWORD)
    with smtp_server(cert=pki.good) as srv:
        write_profiles(isolated_env, {"p": profile(srv.port, host="localhost", security="starttls", ca_file=str(pki.ca_file),
                                                   auth="password", username=USER, timeout=5)})
        res = cli("test", "send", "--to", "bob@example.net")
        assert res.exit_code == 0, res.output
        body = srv.messages[0]["data"].decode()
    for label, value in (("Profile", "p"), ("Type", "smtp"), ("Host", "localhost"), ("Port", str(srv.port)),
                         ("Security", "starttls"), ("User", USER), ("mailctl", mailctl.__version__)):
        assert re.search(rf"^  {label}:\s+{re.escape(value)}\r?$", body, re.M), (label, body)
    assert re.search(r"^  Time:\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4}\r?$", body, re.M)
    assert PASSWORD not in body


def test_hints_name_the_probe_that_ran(cli, isolated_env):
    """A knowledge-base fix that says to re-run with --transcript names test send in a test
    send (with its --to) and test connect in a test connect."""
    def drops_at_ehlo(conn):
        conn.send(b"220 mx.test ESMTP\r\n")
        conn.line()  # EHLO: the connection is dropped without a reply

    with raw_server(drops_at_ehlo) as srv:
        write_profiles(isolated_env, {"p": profile(srv.port)})
        res, data = run_json(cli, "test", "connect")
    assert data["failed_stage"] == "ehlo" and data["explanation"]["id"] == "connection-lost", data
    # the knowledge base says `mailctl test send p --transcript`; this was a test connect
    assert "`mailctl test connect p --transcript`" in data["explanation"]["fix"]
    assert "`mailctl test connect p --transcript`" in data["hint"]

    from mailctl.diagnostics.probe import for_this_probe

    text = "run `mailctl test send p --transcript` to see it; the SIZE in `mailctl test connect`"
    assert for_this_probe(text, sending=False) == "run `mailctl test connect p --transcript` to see it; the SIZE in `mailctl test connect`"
    assert for_this_probe("run `mailctl test connect p --transcript`", sending=True) == "run `mailctl test send p --to ADDR --transcript`"
