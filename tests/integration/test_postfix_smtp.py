"""`mailctl test send` against a real Postfix with Dovecot SASL (issue 3): STARTTLS + AUTH
delivers, a wrong password is exit 77 with the knowledge base's hint, an untrusted
certificate is refused (exit 69) unless ca_file or tls_fingerprint vouch for it, and AUTH is
never sent before TLS. Every test that uses the password asserts it appears in no output."""

from __future__ import annotations

import base64
import json
import re
import uuid

import keyring
import pytest

from integration_services import smtp_profile, write_profiles

pytestmark = pytest.mark.integration


def _setup(home, server, name="pf", password=None, **overrides):
    write_profiles(home, {name: smtp_profile(server, **overrides)})
    keyring.set_password("mailctl", f"{name}/password", server.password if password is None else password)


def _assert_secret_hidden(res, server, password=None):
    pw = password or server.password
    plain = base64.b64encode(f"\0{server.username}\0{pw}".encode()).decode()
    for needle in (pw, plain, base64.b64encode(pw.encode()).decode()):
        assert needle not in res.stdout and needle not in res.stderr


def _queue_id(text: str) -> str | None:
    m = re.search(r"queued as ([0-9A-Za-z]+)", text)
    return m.group(1) if m else None


# --- success ---------------------------------------------------------------------------
def test_send_starttls_auth_delivers(postfix_server, cli, isolated_env):
    _setup(isolated_env, postfix_server)
    subject = f"integration {uuid.uuid4()}"
    res = cli("test", "send", "pf", "--to", postfix_server.accept, "--subject", subject, "--body", "hello from mailctl\n")
    assert res.exit_code == 0, res.output + repr(res.exception)
    _assert_secret_hidden(res, postfix_server)
    queue_id = _queue_id(res.stdout)
    assert queue_id, res.stdout

    msg = postfix_server.by_subject(subject)
    assert postfix_server.username in msg["From"]
    assert msg["To"] == postfix_server.accept
    assert msg["Delivered-To"] == postfix_server.accept
    message_id = msg["Message-ID"]
    assert message_id and re.match(r"^<[^<>@\s]+@[^<>@\s]+>$", message_id)
    assert msg["Date"]
    assert "hello from mailctl" in msg.get_body(("plain",)).get_content()
    # The queue id mailctl reported is the one Postfix gave this very message.
    log = postfix_server.wait_for_log(re.escape(f"{queue_id}: message-id={message_id}"))
    # It really went over TLS with SASL as our user.
    assert f"{queue_id}: client=localhost[127.0.0.1], sasl_method=PLAIN, sasl_username={postfix_server.username}" in log


def test_send_json_and_transcript_redacted(postfix_server, cli, isolated_env):
    _setup(isolated_env, postfix_server)
    subject = f"integration json {uuid.uuid4()}"
    res = cli("test", "send", "pf", "--to", postfix_server.accept, "--subject", subject, "--transcript", "--json")
    assert res.exit_code == 0, res.output + repr(res.exception)
    _assert_secret_hidden(res, postfix_server)
    data = json.loads(res.stdout)
    stages = {s["stage"]: s["status"] for s in data["stages"]}
    for name in ("connect", "banner", "ehlo", "starttls", "auth", "mail", "rcpt", "data"):
        assert stages.get(name) == "ok", stages
    text = json.dumps(data)
    assert "STARTTLS" in text and "AUTH" in text
    assert "mailctl-test-postfix" in text  # the banner is in the transcript
    postfix_server.by_subject(subject)


def test_send_with_tls_fingerprint_pin(postfix_server, cli, isolated_env):
    """A pin vouches for the self-signed server, with no ca_file at all."""
    ep = postfix_server.selfsigned
    _setup(isolated_env, postfix_server, port=ep.port, ca_file=None, tls_fingerprint=postfix_server.selfsigned_fingerprint)
    subject = f"integration pinned {uuid.uuid4()}"
    res = cli("test", "send", "pf", "--to", postfix_server.accept, "--subject", subject)
    assert res.exit_code == 0, res.output + repr(res.exception)
    _assert_secret_hidden(res, postfix_server)
    postfix_server.by_subject(subject)


def test_send_selfsigned_trusted_through_ca_file(postfix_server, cli, isolated_env):
    ep = postfix_server.selfsigned
    _setup(isolated_env, postfix_server, port=ep.port, ca_file=str(postfix_server.selfsigned_cert))
    subject = f"integration selfsigned-ca {uuid.uuid4()}"
    res = cli("test", "send", "pf", "--to", postfix_server.accept, "--subject", subject)
    assert res.exit_code == 0, res.output + repr(res.exception)
    postfix_server.by_subject(subject)


# --- failures --------------------------------------------------------------------------
def test_wrong_password_exit_77_with_hint(postfix_server, cli, isolated_env):
    wrong = f"wrong-{uuid.uuid4().hex}"
    _setup(isolated_env, postfix_server, password=wrong)
    subject = f"integration wrongpw {uuid.uuid4()}"
    res = cli("test", "send", "pf", "--to", postfix_server.accept, "--subject", subject)
    assert res.exit_code == 77, res.output + repr(res.exception)
    assert "Traceback" not in res.output
    assert "535" in res.output
    # The knowledge base's cause under the failure, and its fix once: as the hint line (#15).
    assert "cause:" in res.stdout and "fix:" not in res.stdout
    assert "Hint:" in res.stderr
    assert "password" in res.output.lower()
    _assert_secret_hidden(res, postfix_server, wrong)
    _assert_secret_hidden(res, postfix_server)  # nor the right one, obviously
    assert not postfix_server.wait_for_messages(lambda m: m["Subject"] == subject, timeout=1)
    postfix_server.wait_for_log("SASL PLAIN authentication failed")


def test_wrong_password_hint_is_generic_for_postfix(postfix_server, cli, isolated_env):
    _setup(isolated_env, postfix_server, password="wrong-password-generic")
    res = cli("test", "send", "pf", "--to", postfix_server.accept)
    assert res.exit_code == 77, res.output
    assert "--password-stdin" in res.output
    assert "Google" not in res.output and "google.com" not in res.output


def test_wrong_password_json_has_explanation(postfix_server, cli, isolated_env):
    wrong = f"wrong-{uuid.uuid4().hex}"
    _setup(isolated_env, postfix_server, password=wrong)
    res = cli("test", "send", "pf", "--to", postfix_server.accept, "--json")
    assert res.exit_code == 77, res.output
    data = json.loads(res.stdout)
    auth = next(s for s in data["stages"] if s["stage"] == "auth")
    assert auth["status"] == "failed"
    assert data["exit_code"] == 77 and data["failed_stage"] == "auth"
    assert data["explanation"]["cause"] and data["explanation"]["fix"]
    assert "535" in json.dumps(auth)
    _assert_secret_hidden(res, postfix_server, wrong)


@pytest.mark.parametrize("ca", ["test-ca", "system"])
def test_self_signed_certificate_refused(postfix_server, cli, isolated_env, ca):
    ep = postfix_server.selfsigned
    _setup(isolated_env, postfix_server, port=ep.port, ca_file=str(postfix_server.ca_file) if ca == "test-ca" else None)
    subject = f"integration untrusted {uuid.uuid4()}"
    res = cli("test", "send", "pf", "--to", postfix_server.accept, "--subject", subject)
    assert res.exit_code == 69, res.output + repr(res.exception)
    assert "Traceback" not in res.output
    out = res.output.lower()
    assert "certificate" in out
    assert "--ca-file" in res.output or "--tls-fingerprint" in res.output
    _assert_secret_hidden(res, postfix_server)
    assert not postfix_server.wait_for_messages(lambda m: m["Subject"] == subject, timeout=1)


def test_wrong_fingerprint_refused(postfix_server, cli, isolated_env):
    ep = postfix_server.selfsigned
    _setup(isolated_env, postfix_server, port=ep.port, ca_file=None, tls_fingerprint=":".join(["AB"] * 32))
    res = cli("test", "send", "pf", "--to", postfix_server.accept)
    assert res.exit_code == 69, res.output
    assert "fingerprint" in res.output.lower()
    assert postfix_server.selfsigned_fingerprint in res.output  # tells what the server has
    _assert_secret_hidden(res, postfix_server)


def test_starttls_not_offered_exit_76(postfix_server, cli, isolated_env):
    ep = postfix_server.notls
    _setup(isolated_env, postfix_server, port=ep.port)
    res = cli("test", "send", "pf", "--to", postfix_server.accept)
    assert res.exit_code == 76, res.output
    assert "STARTTLS" in res.output
    _assert_secret_hidden(res, postfix_server)


def test_auth_before_tls_refused_by_server(postfix_server, cli, isolated_env):
    """Postfix with smtpd_tls_auth_only=yes hides AUTH until STARTTLS: a profile that speaks
    plaintext (security none) even with allow_insecure_auth gets no AUTH, and mailctl says why."""
    _setup(isolated_env, postfix_server, security="none", allow_insecure_auth=True, ca_file=None)
    subject = f"integration auth-before-tls {uuid.uuid4()}"
    res = cli("test", "send", "pf", "--to", postfix_server.accept, "--subject", subject)
    assert res.exit_code == 76, res.output + repr(res.exception)
    assert "AUTH" in res.output
    assert "STARTTLS" in res.output or "starttls" in res.output
    _assert_secret_hidden(res, postfix_server)
    assert not postfix_server.wait_for_messages(lambda m: m["Subject"] == subject, timeout=1)


def test_no_auth_on_plaintext_without_allow_insecure_auth(postfix_server, cli, isolated_env):
    """A server that DOES offer AUTH in plaintext: mailctl itself refuses to send it (exit 78),
    and the server never saw an AUTH command."""
    ep = postfix_server.plainauth
    _setup(isolated_env, postfix_server, port=ep.port, security="none", ca_file=None)
    subject = f"integration plaintext-refused {uuid.uuid4()}"
    before = postfix_server.log()
    res = cli("test", "send", "pf", "--to", postfix_server.accept, "--subject", subject, "--transcript")
    assert res.exit_code == 78, res.output + repr(res.exception)
    assert "unencrypted" in res.output
    assert "allow-insecure-auth" in res.output or "allow_insecure_auth" in res.output
    assert not re.search(r"(?m)^\s*C: AUTH", res.output)
    _assert_secret_hidden(res, postfix_server)
    # Postfix's own account of the session (logged asynchronously): no AUTH command at all.
    new = postfix_server.wait_for_log(r"postfix/plainauth/smtpd\[\d+\]: disconnect from", since=len(before))
    disconnects = [line for line in new.splitlines() if "postfix/plainauth/smtpd" in line and "disconnect from" in line]
    assert all("auth=" not in line for line in disconnects), disconnects
    assert not postfix_server.wait_for_messages(lambda m: m["Subject"] == subject, timeout=1)


def test_plaintext_auth_when_explicitly_allowed(postfix_server, cli, isolated_env):
    ep = postfix_server.plainauth
    _setup(isolated_env, postfix_server, port=ep.port, security="none", allow_insecure_auth=True, ca_file=None)
    subject = f"integration plaintext-allowed {uuid.uuid4()}"
    res = cli("test", "send", "pf", "--to", postfix_server.accept, "--subject", subject)
    assert res.exit_code == 0, res.output + repr(res.exception)
    _assert_secret_hidden(res, postfix_server)
    postfix_server.by_subject(subject)


def test_rejected_recipient_exit_1(postfix_server, cli, isolated_env):
    _setup(isolated_env, postfix_server)
    res = cli("test", "send", "pf", "--to", postfix_server.reject)
    assert res.exit_code == 1, res.output
    assert "550" in res.output and "5.1.1" in res.output
    _assert_secret_hidden(res, postfix_server)


def test_deferred_recipient_exit_75(postfix_server, cli, isolated_env):
    _setup(isolated_env, postfix_server)
    res = cli("test", "send", "pf", "--to", postfix_server.defer)
    assert res.exit_code == 75, res.output
    assert "450" in res.output
    _assert_secret_hidden(res, postfix_server)


def test_profile_added_through_the_cli(postfix_server, cli, isolated_env):
    """The whole path a user takes: profile add --password-stdin, then test send."""
    res = cli(
        "profile", "add", "viacli",
        "--host", postfix_server.host, "--port", str(postfix_server.port),
        "--security", "starttls", "--auth", "password",
        "--username", postfix_server.username, "--from-address", postfix_server.username,
        "--ca-file", str(postfix_server.ca_file), "--password-stdin",
        input=postfix_server.password + "\n",
    )
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert postfix_server.password not in (isolated_env / "profiles.toml").read_text()
    subject = f"integration via-cli {uuid.uuid4()}"
    sent = cli("test", "send", "viacli", "--to", postfix_server.accept, "--subject", subject)
    assert sent.exit_code == 0, sent.output + repr(sent.exception)
    _assert_secret_hidden(sent, postfix_server)
    postfix_server.by_subject(subject)


# --- test connect ----------------------------------------------------------------------
def test_connect_reports_tls_certificate_and_capabilities(postfix_server, cli, isolated_env):
    _setup(isolated_env, postfix_server)
    res = cli("test", "connect", "pf", "--json")
    assert res.exit_code == 0, res.output + repr(res.exception)
    _assert_secret_hidden(res, postfix_server)
    data = json.loads(res.stdout)
    assert data["tls"]["version"] in ("TLSv1.2", "TLSv1.3")
    assert data["tls"]["verification"].startswith("ok")
    leaf = data["certificates"][0]
    assert "IP:127.0.0.1" in leaf["san"] and not leaf["self_signed"]
    assert data["capabilities"]["auth"] == ["PLAIN", "LOGIN"]  # after STARTTLS
    # the second EHLO as Postfix said it: no STARTTLS after TLS, offered before it (#15)
    assert not data["capabilities"]["starttls"] and data["capabilities"]["starttls_before_tls"]
    assert data["capabilities"]["pipelining"]
    stages = [s["stage"] for s in data["stages"] if s["status"] == "ok"]
    for stage in ("connect", "banner", "ehlo", "starttls", "ehlo_tls", "secret", "auth", "quit"):
        assert stage in stages, stages


def test_connect_shows_the_fingerprint_to_pin(postfix_server, cli, isolated_env):
    """test connect on the untrusted server fails (69) but shows the SHA-256 a user would pin."""
    _setup(isolated_env, postfix_server, port=postfix_server.selfsigned.port)
    res = cli("test", "connect", "pf")
    assert res.exit_code == 69, res.output
    assert postfix_server.selfsigned_fingerprint in res.stdout
    assert "self-signed" in res.stdout
