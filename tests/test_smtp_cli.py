"""`mailctl test connect` / `mailctl test send` end to end against real local servers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from smtpserver import PASSWORD, TOKEN, USER, assert_no_secret, closed_port, make_pki, silent_listener, smtp_server, store_secret, write_profiles


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def smtp_profile(port, **values):
    base = {"type": "smtp", "host": "localhost", "port": port, "security": "starttls", "auth": "none", "timeout": 5, "from_address": USER}
    base.update(values)
    return base


def test_quick_start_local_profile_delivers_to_maildir(cli, isolated_env):
    res = cli("test", "send", "--to", "someone@example.com")
    assert res.exit_code == 0, res.output
    line = next(l for l in res.stdout.splitlines() if l.startswith("Delivered to the Maildir: "))
    path = Path(line.split(": ", 1)[1])
    assert path.is_file() and path.parent.name == "new"
    assert str(isolated_env) in str(path)
    content = path.read_text()
    assert "To: someone@example.com" in content and "Return-Path: <mailctl@localhost>" in content


def test_local_profile_json_and_connect(cli):
    res = cli("test", "send", "--to", "a@example.com", "--subject", "S1", "--body", "B1", "--json")
    data = json.loads(res.stdout)
    assert data["ok"] and data["type"] == "file" and Path(data["result"]["location"]).is_file()
    assert cli("test", "connect").exit_code == 0


def test_send_requires_to(cli):
    res = cli("test", "send")
    assert res.exit_code == 2 and "--to" in res.stderr


def test_header_injection_is_65(cli):
    res = cli("test", "send", "--to", "a@example.com", "--subject", "hi\r\nBcc: victim@example.com")
    assert res.exit_code == 65


def test_connect_starttls_auth_full_report(cli, isolated_env, pki):
    store_secret("corp", "password", PASSWORD)
    with smtp_server(cert=pki.good) as srv:
        write_profiles(isolated_env, {"corp": smtp_profile(srv.port, ca_file=str(pki.ca_file), auth="password", username=USER)})
        res = cli("test", "connect", "--transcript")
        assert res.exit_code == 0, res.output
        out = res.stdout
        for stage in ("resolve", "connect", "banner", "ehlo", "starttls", "ehlo_tls", "auth", "quit"):
            assert f" {stage} " in out, stage
        assert "TLSv1.3" in out or "TLSv1.2" in out
        assert "SHA-256:" in out and "days left" in out and "DNS:localhost" in out
        assert "AUTH:       LOGIN PLAIN XOAUTH2" in out and "PIPELINING" in out
        assert "C: AUTH PLAIN [redacted]" in out
        assert_no_secret(res.stdout, res.stderr)

        res = cli("test", "connect", "corp", "--json", "--transcript")
        data = json.loads(res.stdout)
        names = [s["stage"] for s in data["stages"]]
        # the password is fetched in a stage of its own, so AUTH's time is the server's (#15)
        assert names == ["resolve", "connect", "banner", "ehlo", "starttls", "ehlo_tls", "secret", "auth", "quit"]
        assert all(s["status"] == "ok" for s in data["stages"])
        assert all(isinstance(s["duration_seconds"], float) for s in data["stages"])
        assert data["tls"]["version"].startswith("TLSv1.")
        cert = data["certificates"][0]
        assert cert["expires_in_seconds"] > 0 and cert["not_after_at"].endswith("Z") and len(cert["sha256"]) == 95 and "DNS:localhost" in cert["san"]
        assert data["capabilities"]["auth"] == ["LOGIN", "PLAIN", "XOAUTH2"] and data["capabilities"]["size"]
        assert data["transcript"]
        assert_no_secret(res.stdout, res.stderr)


def test_send_through_smtp_reports_queue_id_and_attachment(cli, isolated_env, pki, tmp_path):
    store_secret("corp", "password", PASSWORD)
    att = tmp_path / "report.csv"
    att.write_text("a,b\n1,2\n")
    with smtp_server(cert=pki.good) as srv:
        write_profiles(isolated_env, {"corp": smtp_profile(srv.port, ca_file=str(pki.ca_file), auth="password", username=USER, sender_name="Ops")})
        res = cli("test", "send", "--to", "bob@example.net", "--from", "ops@example.com", "--subject", "Quarterly", "--body", "see attached", "--attach", str(att), "--transcript")
        assert res.exit_code == 0, res.output
        assert "Queue id: Q00001" in res.stdout
        for stage in ("mail", "rcpt", "data"):
            assert f" {stage} " in res.stdout
        msg = srv.messages[0]
        assert msg["from"] == "ops@example.com" and msg["to"] == ["bob@example.net"]
        assert b"Subject: Quarterly" in msg["data"] and b'filename="report.csv"' in msg["data"]
        assert_no_secret(res.stdout, res.stderr)

        res = cli("test", "send", "--to", "bob@example.net", "--json", "--transcript")
        data = json.loads(res.stdout)
        assert data["result"]["queue_id"] == "Q00002"
        assert [s["stage"] for s in data["stages"]][-4:] == ["mail", "rcpt", "data", "quit"]
        assert_no_secret(res.stdout, res.stderr)


def test_quit_after(cli, isolated_env, pki):
    with smtp_server(cert=pki.good) as srv:
        write_profiles(isolated_env, {"corp": smtp_profile(srv.port, ca_file=str(pki.ca_file))})
        data = json.loads(cli("test", "connect", "--quit-after", "banner", "--json").stdout)
        assert [s["stage"] for s in data["stages"]] == ["resolve", "connect", "banner", "quit"]
        data = json.loads(cli("test", "send", "--to", "x@example.net", "--quit-after", "rcpt", "--json").stdout)
        assert [s["stage"] for s in data["stages"]][-3:] == ["mail", "rcpt", "quit"]
        assert srv.messages == []
        data = json.loads(cli("test", "connect", "--quit-after", "tls", "--json").stdout)
        assert [s["stage"] for s in data["stages"]][-3:] == ["starttls", "ehlo_tls", "quit"]
        assert cli("test", "connect", "--quit-after", "bogus").exit_code == 2


def test_wrong_password_shows_cause_and_fix_exit_77(cli, isolated_env, pki):
    store_secret("corp", "password", "Wr0ng-" + PASSWORD)
    with smtp_server(cert=pki.good) as srv:
        write_profiles(isolated_env, {"corp": smtp_profile(srv.port, ca_file=str(pki.ca_file), auth="password", username=USER)})
        res = cli("test", "send", "--to", "bob@example.net", "--transcript")
        assert res.exit_code == 77
        assert "FAILED auth" in res.stdout and "cause:" in res.stdout
        assert "535" in res.stderr and res.stderr.startswith("Error: ")
        # the error and its fix are printed once: as the Error and Hint lines, not also on the stage (#15)
        error, hint = res.stderr.splitlines()[:2]
        assert hint.startswith("Hint: ") and (res.stdout + res.stderr).count(hint.removeprefix("Hint: ")) == 1
        assert (res.stdout + res.stderr).count(error.removeprefix("Error: ")) == 1
        assert_no_secret(res.stdout, res.stderr, secrets=("Wr0ng-" + PASSWORD,))


def test_xoauth2_token_redacted_everywhere(cli, isolated_env, pki):
    store_secret("m365", "access_token", TOKEN)
    with smtp_server(security="tls", cert=pki.good) as srv:
        write_profiles(isolated_env, {"m365": smtp_profile(srv.port, security="tls", ca_file=str(pki.ca_file), auth="oauth", username=USER)})
        for extra in ((), ("--json",)):
            res = cli("test", "send", "--to", "bob@example.net", "--transcript", *extra)
            assert res.exit_code == 0, res.output
            assert_no_secret(res.stdout, res.stderr)
        assert "XOAUTH2" in res.stdout


def test_failover_is_reported(cli, isolated_env):
    with smtp_server() as srv:
        write_profiles(isolated_env, {"corp": smtp_profile(closed_port(), host="127.0.0.1", security="none", alternate_host="127.0.0.1", alternate_port=srv.port)})
        res = cli("test", "send", "--to", "bob@example.net", "--json")
        data = json.loads(res.stdout)
        assert res.exit_code == 0 and data["used_alternate"] and data["result"]["used_alternate"]
        failed = [s for s in data["stages"] if s["status"] == "failed"]
        assert failed[0]["stage"] == "connect" and "alternate" in failed[0]["detail"]
        res = cli("test", "send", "--to", "bob@example.net")
        assert "(the alternate server)" in res.stdout


def test_certificate_shown_when_verification_fails(cli, isolated_env, pki):
    with smtp_server(cert=pki.expired) as srv:
        write_profiles(isolated_env, {"corp": smtp_profile(srv.port, ca_file=str(pki.ca_file))})
        res = cli("test", "connect", "--json")
        assert res.exit_code == 69
        data = json.loads(res.stdout)
        assert data["failed_stage"] == "starttls" and data["explanation"]["id"] == "tls-expired"
        assert data["certificates"] and data["certificates"][0]["expired"] is True
        assert data["tls"]["verification"].startswith("FAILED")
        res = cli("test", "connect")
        assert "EXPIRED" in res.stdout


def test_unknown_type_profile_is_78(cli, isolated_env):
    # graph and ews declare their stages (transports/http_stages.py); gmail-api has none
    write_profiles(isolated_env, {"g": {"type": "gmail-api", "client_id": "abc"}})
    res = cli("test", "connect")
    assert res.exit_code == 78
