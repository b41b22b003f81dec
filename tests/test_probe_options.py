"""swaks' and msmtp's probing options (issue #15 item 7) against aiosmtpd in-process:
`test send --header/--data`, `--auth-mechanism`, `--ehlo`, `--source-address` on `test connect`
and `test send`, `send --header`, and the profile fields source_address / auth_mechanism /
ehlo_name. What the server saw (EHLO name, peer address, AUTH mechanism, message bytes) is
read from the server, not from mailctl's report."""

from __future__ import annotations

import email
import email.policy
import json

import pytest

from smtpserver import PASSWORD, USER, RecordingHandler, assert_no_secret, smtp_server, store_secret, write_profiles


class SeeingHandler(RecordingHandler):
    """Records the EHLO name and the client's address of every session."""

    def __init__(self):
        super().__init__()
        self.ehlo_names: list[str] = []
        self.peers: list[str] = []

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        self.ehlo_names.append(hostname)
        self.peers.append(session.peer[0])
        return await super().handle_EHLO(server, session, envelope, hostname, responses)


@pytest.fixture
def srv():
    handler = SeeingHandler()
    with smtp_server(handler=handler, auth_require_tls=False) as running:
        yield running


def write(isolated_env, port: int, **values) -> None:
    base = {"type": "smtp", "host": "127.0.0.1", "port": port, "security": "none", "auth": "password", "username": USER,
            "allow_insecure_auth": True, "timeout": 5, "from_address": USER}
    base.update(values)
    write_profiles(isolated_env, {"probe": base})
    store_secret("probe", "password", PASSWORD)


def received(srv, index: int = -1) -> email.message.EmailMessage:
    return email.message_from_bytes(srv.messages[index]["data"], policy=email.policy.default)


# --- --auth-mechanism -------------------------------------------------------------------------
@pytest.mark.parametrize("mech", ["LOGIN", "plain"])
def test_auth_mechanism_is_the_one_used(cli, isolated_env, srv, mech):
    write(isolated_env, srv.port)
    r = cli("test", "connect", "--auth-mechanism", mech, "--transcript")
    assert r.exit_code == 0, r.output
    assert srv.handler.attempts_auth == [(mech.upper(), True)]
    assert f"with {mech.upper()}" in r.stdout and f"C: AUTH {mech.upper()}" in r.stdout
    assert_no_secret(r.stdout, r.stderr)


def test_auth_mechanism_the_server_does_not_offer_names_what_it_offers(cli, isolated_env, srv):
    write(isolated_env, srv.port)
    r = cli("test", "connect", "--auth-mechanism", "CRAM-MD5", "--json")
    data = json.loads(r.stdout)
    assert r.exit_code == 77, r.output
    assert data["failed_stage"] == "auth" and "does not offer AUTH CRAM-MD5" in data["error"]
    assert "LOGIN PLAIN XOAUTH2" in data["error"] and "--auth-mechanism" in data["hint"]
    assert srv.handler.attempts_auth == []  # nothing was tried
    auth = next(s for s in data["stages"] if s["stage"] == "auth")
    assert auth["explanation"]["id"] == "auth-mechanism-not-offered"


def test_auth_mechanism_from_the_profile(cli, isolated_env, srv):
    write(isolated_env, srv.port, auth_mechanism="LOGIN")
    r = cli("test", "send", "--to", "bob@example.net")
    assert r.exit_code == 0, r.output
    assert srv.handler.attempts_auth == [("LOGIN", True)] and srv.messages


def test_auth_mechanism_that_cannot_carry_the_profiles_auth_is_a_config_error(cli, isolated_env, srv):
    write(isolated_env, srv.port)
    r = cli("test", "connect", "--auth-mechanism", "XOAUTH2")
    assert r.exit_code == 78 and "XOAUTH2 cannot carry auth = password" in r.stderr, r.output
    assert srv.handler.ehlo_names == []  # decided before connecting


def test_unknown_auth_mechanism_is_a_usage_error(cli, isolated_env, srv):
    write(isolated_env, srv.port)
    r = cli("test", "connect", "--auth-mechanism", "GSSAPI")
    assert r.exit_code == 2 and "--auth-mechanism" in r.stderr and "PLAIN, LOGIN, CRAM-MD5, XOAUTH2" in r.stderr, r.output


# --- --ehlo -----------------------------------------------------------------------------------
def test_ehlo_name_is_what_the_server_sees(cli, isolated_env, srv):
    write(isolated_env, srv.port, ehlo_name="from-profile.example")
    assert cli("test", "connect", "--ehlo", "probe.client.example").exit_code == 0
    assert cli("test", "send", "--ehlo", "sender.client.example", "--to", "bob@example.net").exit_code == 0
    assert cli("test", "connect").exit_code == 0
    assert srv.handler.ehlo_names == ["probe.client.example", "sender.client.example", "from-profile.example"]


def test_bad_ehlo_name_is_a_usage_error(cli, isolated_env, srv):
    write(isolated_env, srv.port)
    r = cli("test", "connect", "--ehlo", "bad name!")
    assert r.exit_code == 2 and "--ehlo" in r.stderr and "Traceback" not in r.output


# --- --source-address -------------------------------------------------------------------------
def test_source_address_is_the_address_the_server_sees(cli, isolated_env, srv):
    write(isolated_env, srv.port)
    r = cli("test", "connect", "--source-address", "127.0.0.2", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["settings"]["source_address"] == "127.0.0.2"
    assert cli("test", "send", "--source-address", "127.0.0.3", "--to", "bob@example.net").exit_code == 0
    assert srv.handler.peers == ["127.0.0.2", "127.0.0.3"]


def test_source_address_profile_field_applies_to_send_too(cli, isolated_env, srv):
    write(isolated_env, srv.port, source_address="127.0.0.4")
    r = cli("send", "--to", "bob@example.net", "--subject", "s", "--body", "b")
    assert r.exit_code == 0, r.output
    assert srv.handler.peers == ["127.0.0.4"]


def test_source_address_that_is_not_local_is_a_clear_error(cli, isolated_env, srv):
    write(isolated_env, srv.port)
    r = cli("test", "connect", "--source-address", "192.0.2.77", "--json")
    data = json.loads(r.stdout)
    assert r.exit_code == 78, r.output
    assert data["failed_stage"] == "connect" and "192.0.2.77" in data["error"] and "not an address of this machine" in data["error"]
    assert srv.handler.ehlo_names == []


def test_source_address_of_the_other_family_is_a_clear_error(cli, isolated_env, srv):
    write(isolated_env, srv.port)
    r = cli("test", "connect", "--source-address", "::1")
    assert r.exit_code == 78 and "is IPv6, but 127.0.0.1 has no IPv6 address" in r.stderr, r.output


@pytest.mark.parametrize("value", ["not-an-ip", "127.0.0.1:25", "[::1]"])
def test_source_address_that_is_not_an_ip_is_a_usage_error(cli, isolated_env, srv, value):
    write(isolated_env, srv.port)
    r = cli("test", "connect", "--source-address", value)
    assert r.exit_code == 2 and "--source-address" in r.stderr and "not an IP address" in r.stderr, r.output


def test_source_address_in_the_profile_is_validated(cli, isolated_env):
    r = cli("profile", "add", "bad", "--host", "mail.example.com", "--source-address", "mail.example.com")
    assert r.exit_code == 65 and "source_address" in r.stderr, r.output


# --- --header ---------------------------------------------------------------------------------
def test_headers_are_added_and_replace_those_of_the_same_name(cli, isolated_env, srv):
    write(isolated_env, srv.port)
    r = cli("test", "send", "--to", "bob@example.net", "--header", "X-Probe: one", "--header", "Subject: replaced",
            "--header", "X-Name: Grüße")
    assert r.exit_code == 0, r.output
    msg = received(srv)
    assert msg.get_all("Subject") == ["replaced"] and msg["X-Probe"] == "one" and str(msg["X-Name"]) == "Grüße"
    assert b"X-Name: =?utf-8?" in srv.messages[-1]["data"]  # RFC 2047 on the wire


def test_a_to_header_does_not_change_the_envelope(cli, isolated_env, srv):
    write(isolated_env, srv.port)
    assert cli("test", "send", "--to", "bob@example.net", "--header", "To: someone-else@example.net").exit_code == 0
    assert srv.messages[-1]["to"] == ["bob@example.net"] and received(srv)["To"] == "someone-else@example.net"


@pytest.mark.parametrize("value", ["no colon here", "Bad Name: x", ": empty name"])
def test_a_header_that_is_not_name_value_is_refused(cli, isolated_env, srv, value):
    write(isolated_env, srv.port)
    r = cli("test", "send", "--to", "bob@example.net", "--header", value)
    assert r.exit_code == 65 and "--header" in r.stderr and "Traceback" not in r.output, r.output
    assert srv.messages == []


def test_a_header_value_with_a_line_break_is_refused(cli, isolated_env, srv):
    write(isolated_env, srv.port)
    r = cli("send", "--to", "bob@example.net", "--subject", "s", "--body", "b", "--header", "X-A: a\r\nBcc: victim@example.net")
    assert r.exit_code == 65 and "line break" in r.stderr, r.output
    assert srv.messages == []


def test_send_header(cli, isolated_env, srv):
    write(isolated_env, srv.port)
    r = cli("send", "--to", "bob@example.net", "--subject", "s", "--body", "b", "--header", "X-Ticket: 4711",
            "--header", "Subject: from the header")
    assert r.exit_code == 0, r.output
    msg = received(srv)
    assert msg["X-Ticket"] == "4711" and msg.get_all("Subject") == ["from the header"]


# --- --data -----------------------------------------------------------------------------------
MESSAGE = b"From: Someone <someone@example.org>\nTo: list@example.org\nSubject: from a file\nX-Keep: yes\n\n.leading dot\nbody line\n"


def test_data_file_is_sent_as_it_is_with_the_envelope_from_the_options(cli, isolated_env, srv, tmp_path):
    write(isolated_env, srv.port)
    path = tmp_path / "message.eml"
    path.write_bytes(MESSAGE)
    r = cli("test", "send", "--data", str(path), "--to", "bob@example.net", "--from", "envelope@example.com",
            "--header", "X-Keep: replaced")
    assert r.exit_code == 0, r.output
    got = srv.messages[-1]
    assert got["from"] == "envelope@example.com" and got["to"] == ["bob@example.net"]
    msg = received(srv)
    assert msg["Subject"] == "from a file" and msg["From"] == "Someone <someone@example.org>"
    assert msg.get_all("X-Keep") == ["replaced"]
    assert b"\r\n.leading dot\r\nbody line" in got["data"]  # CRLF on the wire, the dot un-stuffed by the server


def test_data_from_stdin(cli, isolated_env, srv):
    write(isolated_env, srv.port)
    r = cli("test", "send", "--data", "-", "--to", "bob@example.net", input=MESSAGE)
    assert r.exit_code == 0, r.output
    assert received(srv)["Subject"] == "from a file" and srv.messages[-1]["from"] == USER


def test_data_errors(cli, isolated_env, srv, tmp_path):
    write(isolated_env, srv.port)
    r = cli("test", "send", "--data", str(tmp_path / "missing.eml"), "--to", "bob@example.net")
    assert r.exit_code == 66 and "missing.eml" in r.stderr, r.output
    r = cli("test", "send", "--data", str(tmp_path), "--to", "bob@example.net")
    assert r.exit_code == 65 and "directory" in r.stderr, r.output
    (tmp_path / "nul.eml").write_bytes(b"Subject: x\n\nnul \x00 here\n")
    r = cli("test", "send", "--data", str(tmp_path / "nul.eml"), "--to", "bob@example.net")
    assert r.exit_code == 65 and "NUL" in r.stderr, r.output
    (tmp_path / "nohead.eml").write_bytes(b"just a body line\n")
    r = cli("test", "send", "--data", str(tmp_path / "nohead.eml"), "--to", "bob@example.net")
    assert r.exit_code == 65 and "header" in r.stderr, r.output
    r = cli("test", "send", "--data", str(tmp_path / "nohead.eml"), "--to", "bob@example.net", "--subject", "s")
    assert r.exit_code == 2 and "--data" in r.stderr, r.output
    r = cli("test", "send", "--data", str(tmp_path / "nohead.eml"), "--to", "not an address")
    assert r.exit_code == 65, r.output
    assert srv.messages == []


def test_session_options_on_a_profile_that_is_not_smtp_are_a_usage_error(cli, isolated_env, tmp_path):
    write_profiles(isolated_env, {"capture": {"type": "file", "maildir": str(tmp_path / "md"), "from_address": USER}})
    r = cli("test", "connect", "--ehlo", "x.example")
    assert r.exit_code == 2 and "--ehlo applies to smtp and lmtp profiles" in r.stderr, r.output
