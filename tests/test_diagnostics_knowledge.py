"""The knowledge base: every entry a reply can produce is scripted on a real server and must
come back from `mailctl test send` with its cause, fix and exit code; failures that are not
replies (DNS, refused, timeouts, TLS) are produced for real too."""

from __future__ import annotations

import json

import pytest

from mailctl.knowledge import smtp as knowledge
from mailctl.knowledge.smtp import KNOWLEDGE, KnownFailure, Reply, explain, register
from mailctl.errors import ExitCode

from smtpserver import PASSWORD, USER, assert_no_secret, closed_port, make_pki, silent_listener, smtp_server, store_secret, write_profiles

REPLY_ENTRIES = [e for e in KNOWLEDGE if e.example]
# every real wording an entry knows (its example and the other servers' texts in `also`)
REPLY_CASES = [(e, ex) for e in KNOWLEDGE for ex in ([e.example] if e.example else []) + list(e.also)]
STAGE_DEFAULT_5XX = {"banner": 69, "ehlo": 76, "auth": 77, "mail": 1, "rcpt": 1, "data": 1}


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def base_profile(port, **values):
    p = {"type": "smtp", "host": "127.0.0.1", "port": port, "security": "none", "auth": "none", "timeout": 3, "from_address": USER}
    p.update(values)
    return p


def run_json(cli, *args):
    res = cli(*args, "--json", "--transcript")
    return res, json.loads(res.stdout)


def test_every_issue_failure_has_an_entry():
    ids = {e.id for e in KNOWLEDGE}
    required = {
        "connection-refused", "connect-timeout", "dns-not-found", "tls-to-plaintext-port", "plaintext-to-tls-port",
        "tls-hostname-mismatch", "tls-self-signed", "tls-expired", "starttls-not-offered", "auth-before-tls",
        "auth-failed", "m365-auth-unsuccessful", "gmail-bad-credentials", "gmail-app-password-required",
        "m365-basic-auth-retired", "m365-smtp-auth-disabled", "not-authenticated", "m365-tenant-attribution",
        "m365-send-as-denied", "m365-concurrent-connections", "rate-limited", "too-many-logins",
        "sender-unauthenticated", "relay-denied", "unknown-recipient",
        # issue #15: the production refusals of Postfix, Exim, Sendmail, Exchange Online, Gmail, Outlook.com
        "sender-login-mismatch", "sender-not-logged-in", "client-host-rejected", "helo-rejected", "sender-policy-rejected",
        "recipient-access-denied", "greylisted", "message-too-big", "connection-limit", "message-rate-limit",
        "server-timeout", "too-many-errors", "service-closing", "send-as-no-permission", "m365-recipient-not-found",
        "m365-recipient-restricted", "m365-bad-outbound-sender", "m365-unregistered-domain", "m365-banned-ip",
        "gmail-ip-rate-limited", "gmail-low-reputation", "gmail-web-login-required", "recipient-disabled",
        "outlook-basic-auth-disabled", "outlook-rate-limited", "outlook-policy-block", "exim-administrative-prohibition",
    }
    assert required <= ids, required - ids
    assert len(ids) == len(KNOWLEDGE)


@pytest.mark.parametrize("entry,example", REPLY_CASES, ids=[f"{e.id}-{i}" for i, (e, _) in enumerate(REPLY_CASES)])
def test_scripted_reply_is_explained(cli, isolated_env, entry: KnownFailure, example):
    stage, reply = example
    extra = {}
    if stage == "auth":
        store_secret("kb", "password", PASSWORD)
        extra = {"auth": "password", "username": USER, "allow_insecure_auth": True}
    with smtp_server(script={stage: reply}, auth_require_tls=False) as srv:
        write_profiles(isolated_env, {"kb": base_profile(srv.port, **extra)})
        res, data = run_json(cli, "test", "send", "--to", "someone@example.net")
        assert data["failed_stage"] == stage, data["stages"]
        assert data["explanation"]["id"] == entry.id
        code = int(reply[:3])
        want = entry.exit_code if entry.exit_code is not None else (STAGE_DEFAULT_5XX[stage] if code >= 500 else 75)
        assert res.exit_code == int(want) == data["exit_code"]
        failed = data["stages"][[s["stage"] for s in data["stages"]].index(stage)]
        assert failed["data"]["code"] == code
        assert_no_secret(res.stdout, res.stderr)
        human = cli("test", "send", "--to", "someone@example.net")
        assert "cause: " + entry.cause.format(profile="kb", host="127.0.0.1", port=srv.port)[:40] in human.stdout
        assert "Hint: " in human.stderr


def test_connection_refused(cli, isolated_env):
    write_profiles(isolated_env, {"kb": base_profile(closed_port())})
    res, data = run_json(cli, "test", "connect")
    assert (res.exit_code, data["failed_stage"], data["explanation"]["id"]) == (69, "connect", "connection-refused")


def test_name_resolution_failure(cli, isolated_env):
    write_profiles(isolated_env, {"kb": base_profile(25, host="no-such-host.invalid")})
    res, data = run_json(cli, "test", "connect")
    assert (res.exit_code, data["failed_stage"], data["explanation"]["id"]) == (69, "resolve", "dns-not-found")
    assert "no-such-host.invalid" in data["explanation"]["fix"]


def test_silent_server_times_out_at_banner(cli, isolated_env):
    with silent_listener() as port:
        write_profiles(isolated_env, {"kb": base_profile(port, timeout=0.5)})
        res, data = run_json(cli, "test", "connect")
    assert (res.exit_code, data["failed_stage"], data["explanation"]["id"]) == (69, "banner", "plaintext-to-tls-port")


def test_plaintext_to_implicit_tls_port(cli, isolated_env, pki):
    with smtp_server(security="tls", cert=pki.good) as srv:
        write_profiles(isolated_env, {"kb": base_profile(srv.port, host="localhost", security="starttls", timeout=0.7, ca_file=str(pki.ca_file))})
        res, data = run_json(cli, "test", "connect")
    assert (res.exit_code, data["explanation"]["id"]) == (69, "plaintext-to-tls-port")
    assert "--security tls" in data["explanation"]["fix"]


def test_tls_to_plaintext_port(cli, isolated_env):
    with smtp_server() as srv:
        write_profiles(isolated_env, {"kb": base_profile(srv.port, security="tls")})
        res, data = run_json(cli, "test", "connect")
    assert (res.exit_code, data["failed_stage"], data["explanation"]["id"]) == (69, "tls", "tls-to-plaintext-port")


@pytest.mark.parametrize(
    "cert,expected",
    [("wrong_name", "tls-hostname-mismatch"), ("self_signed", "tls-self-signed"), ("other_ca_cert", "tls-self-signed"), ("expired", "tls-expired")],
)
@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_certificate_failures(cli, isolated_env, pki, cert, expected, security):
    with smtp_server(security=security, cert=getattr(pki, cert)) as srv:
        write_profiles(isolated_env, {"kb": base_profile(srv.port, host="localhost", security=security, ca_file=str(pki.ca_file))})
        res, data = run_json(cli, "test", "connect")
    assert (res.exit_code, data["explanation"]["id"]) == (69, expected)
    assert data["failed_stage"] == ("starttls" if security == "starttls" else "tls")
    assert data["certificates"], "the refused certificate is shown"


def test_starttls_not_offered(cli, isolated_env):
    with smtp_server() as srv:  # no certificate: no STARTTLS
        write_profiles(isolated_env, {"kb": base_profile(srv.port, security="starttls")})
        res, data = run_json(cli, "test", "connect")
    assert (res.exit_code, data["failed_stage"], data["explanation"]["id"]) == (76, "starttls", "starttls-not-offered")
    assert not any(l["line"].upper().startswith("AUTH") for l in data["transcript"])


def test_auth_refused_on_plaintext_by_mailctl(cli, isolated_env):
    store_secret("kb", "password", PASSWORD)
    with smtp_server(auth_require_tls=False) as srv:
        write_profiles(isolated_env, {"kb": base_profile(srv.port, auth="password", username=USER)})
        res, data = run_json(cli, "test", "connect")
        assert srv.handler.attempts_auth == []
    assert (res.exit_code, data["failed_stage"], data["explanation"]["id"]) == (78, "auth", "auth-plaintext-refused")
    assert_no_secret(res.stdout, res.stderr)


def test_auth_not_offered_before_tls(cli, isolated_env, pki):
    store_secret("kb", "password", PASSWORD)
    with smtp_server(cert=pki.good, auth_require_tls=True) as srv:  # AUTH advertised only after STARTTLS
        write_profiles(isolated_env, {"kb": base_profile(srv.port, auth="password", username=USER, allow_insecure_auth=True)})
        res, data = run_json(cli, "test", "connect")
    assert (res.exit_code, data["failed_stage"], data["explanation"]["id"]) == (76, "auth", "auth-not-offered")


def test_real_wrong_password_on_real_server(cli, isolated_env, pki):
    store_secret("kb", "password", "not-" + PASSWORD)
    with smtp_server(cert=pki.good) as srv:
        write_profiles(isolated_env, {"kb": base_profile(srv.port, host="localhost", security="starttls", auth="password", username=USER, ca_file=str(pki.ca_file))})
        res, data = run_json(cli, "test", "connect")
    # aiosmtpd answers the generic 535 5.7.8: the generic fix, not the Gmail one
    assert (res.exit_code, data["explanation"]["id"]) == (77, "auth-failed")
    assert_no_secret(res.stdout, res.stderr, secrets=("not-" + PASSWORD,))


def test_explain_exceptions_without_server():
    assert explain(TimeoutError("timed out"), stage="connect").id == "connect-timeout"
    err = OSError(101, "Network is unreachable")
    assert explain(err, stage="connect").id == "network-unreachable"
    assert explain(ConnectionRefusedError(111, "Connection refused")).exit_code == ExitCode.UNAVAILABLE
    assert explain(Reply(250, "2.0.0 ok")) is None


def test_explain_replies_and_placeholders():
    e = explain((535, "5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled"), stage="auth", context={"profile": "corp"})
    assert e.id == "m365-smtp-auth-disabled" and "Set-TransportConfig" in e.fix
    e = explain(Reply(550, "5.7.1 Relay access denied", stage="rcpt"), context={"profile": "corp"})
    assert e.id == "relay-denied" and "profile edit corp" in e.fix
    assert explain(Reply(451, "4.7.512 temporary", stage="mail")).id == "m365-temporary-restriction"
    generic = explain(Reply(599, "boom", stage="data"))
    assert generic.id == "smtp-generic-5xx" and generic.status is None and "(5xx)" in generic.cause
    assert "550 Requested action not taken" in explain(Reply(550, "no", stage="data")).cause


def test_the_two_replies_of_issue_15():
    """The two everyday refusals that got the generic answer now get their own cause and 77."""
    e = explain(Reply(553, "5.7.1 <ceo@example.com>: Sender address rejected: not owned by user alice@example.com", stage="rcpt"),
                context={"profile": "corp"})
    assert (e.id, e.exit_code) == ("sender-login-mismatch", ExitCode.NOPERM)
    assert "--from-address" in e.fix and "profile edit corp" in e.fix
    assert e.status == "5.7.1 Delivery not authorized, message refused (RFC 3463)"
    e = explain(Reply(554, "5.7.1 <unknown[192.0.2.10]>: Client host rejected: Access denied", stage="banner"))
    assert (e.id, e.exit_code) == ("client-host-rejected", ExitCode.NOPERM)


def test_exit_codes_follow_the_class_of_the_refusal():
    """Temporary replies are 75 whatever the entry; sender policy 77; recipient refusals 1."""
    for entry in KNOWLEDGE:
        for stage, reply in ([entry.example] if entry.example else []) + list(entry.also):
            e = explain(Reply(int(reply[:3]), reply[4:], stage=stage))
            if reply.startswith("4"):
                assert e.exit_code in (ExitCode.TEMPFAIL, None), (entry.id, reply)
            elif e.exit_code == ExitCode.TEMPFAIL:
                pytest.fail(f"{entry.id}: a permanent reply is explained as temporary: {reply}")
    for reply, want in [
        ("550 5.7.1 <bob@example.com>: Recipient address rejected: Access denied", None),  # recipient: stage default 1
        ("554 5.7.1 <spammer@example.org>: Sender address rejected: Access denied", ExitCode.NOPERM),
        ("554 5.7.1 <someone@example.net>: Relay access denied", ExitCode.NOPERM),
        ("454 4.7.1 <someone@example.net>: Relay access denied", ExitCode.TEMPFAIL),  # temporary first
    ]:
        assert explain(Reply(int(reply[:3]), reply[4:], stage="rcpt")).exit_code == want, reply
    # the words of a refusal for good, with a 4xx code: temporary, whatever the entry says
    e = explain(Reply(451, "4.2.0 SendAsDenied; try again later", stage="data"))
    assert (e.id, e.exit_code) == ("m365-send-as-denied", ExitCode.TEMPFAIL)


def test_starttls_temporary_failure():
    """Postfix answers STARTTLS with 454 when it cannot load its certificate (the scripted
    server cannot refuse STARTTLS, so this one is explained directly)."""
    e = explain(Reply(454, "4.7.0 TLS not available due to local problem", stage="starttls"))
    assert (e.id, e.exit_code) == ("starttls-temporary", ExitCode.TEMPFAIL)
    assert explain(Reply(454, "4.7.0 TLS not available due to local problem", stage="rcpt")).id != "starttls-temporary"


def test_register_for_other_transports(monkeypatch):
    monkeypatch.setattr(knowledge, "KNOWLEDGE", list(KNOWLEDGE))
    register(KnownFailure("graph-send-as-denied", "Graph: no Send As right.", "Grant Send As.", ExitCode.NOPERM, http_status=(403,), error_codes=("ErrorSendAsDenied",)))
    e = explain(Reply(http_status=403, error_code="ErrorSendAsDenied", text="not allowed"))
    assert e.id == "graph-send-as-denied"
    assert explain(Reply(http_status=403, error_code="Other")) is None
    with pytest.raises(ValueError):
        register(KnownFailure("graph-send-as-denied", "x", "y", http_status=(403,)))
