"""EWS (exchangelib) against a local HTTPS fake that answers like Exchange: the exact SOAP
mailctl sends (MIME content only, SendAndSaveCopy into sentitems), authentication, TLS and
the mapping of ResponseCodes and SOAP faults to errors and exit codes."""

from __future__ import annotations

import base64
import re

import keyring
import pytest

from httpfakes import (
    FakeHTTPS, Reply, create_item_error, create_item_ok, ews_fake, soap_fault, soap_mime_content, soap_operation,
)
from idp import CLIENT_ID, CLIENT_SECRET, TENANT, ca_pem, idp, trust_ca, write_profiles, resolved  # noqa: F401
from mailctl.errors import AuthError, ConfigError, DeliveryError, ExitCode, MailctlError, UnavailableError
from mailctl.message import build_message, envelope, message_bytes
from mailctl.secrets import default_resolver
from mailctl.transports import open_transport
from mailctl.profiles.presets import ews_warnings as lint_warnings, is_exchange_online
from mailctl.transports.ews import EwsTransport

MAILBOX = "ops@corp.example"
PASSWORD = "Winter2026!-secret"
TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.ews-token-SECRET-456"
EWS_PATH = "/EWS/Exchange.asmx"


@pytest.fixture
def srv(trust_ca):
    with FakeHTTPS(trust_ca) as server:
        yield server


def make_profile(home, url, name="e", **values):
    base = {"type": "ews", "auth": "password", "username": MAILBOX, "from_address": MAILBOX, "ews_url": url}
    base.update(values)
    write_profiles(home, {name: base})
    return resolved(home, name)


@pytest.fixture
def basic(isolated_env, srv, ca_pem):
    ews_fake(srv, basic=(MAILBOX, PASSWORD))
    keyring.set_password("mailctl", "e/password", PASSWORD)
    return make_profile(isolated_env, srv.base_url + EWS_PATH, ca_file=ca_pem)


def message(profile, **kw):
    msg = build_message(profile, {}, to=kw.pop("to", ["alice@example.net"]), subject="Invoice 2026-11",
                        body="Please find the invoice.\n", **kw)
    sender, recipients = envelope(msg)
    return message_bytes(msg), sender, recipients


def send(profile, raw, sender, recipients):
    with open_transport(profile, default_resolver()) as t:
        return t.send(raw, sender, recipients)


def create_items(srv):
    return [r for r in srv.requests if soap_operation(r.body) == "CreateItem"]


def no_secret(err: MailctlError, *secrets):
    for s in secrets:
        for text in (err.message, err.hint or "", str(err)):
            assert s not in text


# --- what goes over the wire ------------------------------------------------------
def test_basic_auth_send_and_save_posts_mime_content_only(basic, srv):
    raw, sender, rcpts = message(basic, cc=["bob@example.net"])
    result = send(basic, raw, sender, rcpts)
    # exchangelib tastes the auth type with one unauthenticated request, then authenticates
    assert srv.requests[0].headers.get("authorization") is None
    [req] = create_items(srv)
    assert req.path == EWS_PATH
    assert req.headers["authorization"] == "Basic " + base64.b64encode(f"{MAILBOX}:{PASSWORD}".encode()).decode()
    assert req.headers["content-type"].startswith("text/xml")
    assert req.headers["x-anchormailbox"] == MAILBOX
    body = req.body.decode()
    assert 'MessageDisposition="SendAndSaveCopy"' in body
    assert re.search(r'<m:SavedItemFolderId><t:DistinguishedFolderId Id="sentitems">', body)
    # only the MIME content: no Importance/Sensitivity defaults overriding the headers
    item = re.search(r"<t:Message>(.*)</t:Message>", body).group(1)
    assert re.fullmatch(r"<t:MimeContent>[A-Za-z0-9+/=]+</t:MimeContent>", item)
    assert soap_mime_content(req.body) == raw
    assert result.reply == "NoError (CreateItem SendAndSaveCopy)" and result.server == srv.base_url + EWS_PATH


def test_no_copy_when_save_to_sent_items_is_false(isolated_env, srv, ca_pem):
    ews_fake(srv, basic=(MAILBOX, PASSWORD))
    keyring.set_password("mailctl", "e/password", PASSWORD)
    profile = make_profile(isolated_env, srv.base_url + EWS_PATH, ca_file=ca_pem, save_to_sent_items=False)
    raw, sender, rcpts = message(profile)
    result = send(profile, raw, sender, rcpts)
    [req] = create_items(srv)
    assert 'MessageDisposition="SendOnly"' in req.body.decode() and b"SavedItemFolderId" not in req.body
    assert result.reply == "NoError (CreateItem SendOnly)"


def test_bcc_envelope_recipients_are_added_as_bcc_header(basic, srv):
    raw, sender, rcpts = message(basic, bcc=["audit@corp.example"])
    send(basic, raw, sender, rcpts)
    sent = soap_mime_content(create_items(srv)[0].body)
    assert b"Bcc: audit@corp.example\r\n" in sent
    assert sent.replace(b"Bcc: audit@corp.example\r\n", b"") == raw


def test_several_sends_reuse_one_account(basic, srv):
    raw, sender, rcpts = message(basic)
    with open_transport(basic, default_resolver()) as t:
        t.send(raw, sender, rcpts)
        t.send(raw, sender, rcpts)
    assert len(create_items(srv)) == 2
    assert sum(1 for r in srv.requests if "authorization" not in r.headers) == 1  # one auth probe


def test_delegated_oauth_sends_bearer_token_without_impersonation(isolated_env, srv, ca_pem):
    ews_fake(srv, bearer=TOKEN)
    keyring.set_password("mailctl", "o/access_token", TOKEN)
    profile = make_profile(isolated_env, srv.base_url + EWS_PATH, name="o", auth="oauth", ca_file=ca_pem)
    raw, sender, rcpts = message(profile)
    send(profile, raw, sender, rcpts)
    [req] = create_items(srv)
    assert req.headers["authorization"] == f"Bearer {TOKEN}"
    assert b"ExchangeImpersonation" not in req.body
    assert soap_mime_content(req.body) == raw
    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in srv.requests)  # no auth probe


def test_app_only_uses_client_credentials_and_impersonation(isolated_env, srv, idp, ca_pem):
    seen = {}

    def check(rec):
        seen["token"] = rec.headers.get("authorization", "").removeprefix("Bearer ")
        return create_item_ok()

    srv.on("POST", EWS_PATH, check)
    profile = make_profile(isolated_env, srv.base_url + EWS_PATH, name="app", auth="client-credentials",
                           tenant_id=TENANT, client_id=CLIENT_ID, authority=idp.authority, ca_file=ca_pem,
                           provider="microsoft365")
    keyring.set_password("mailctl", "app/client_secret", CLIENT_SECRET)
    raw, sender, rcpts = message(profile)
    send(profile, raw, sender, rcpts)
    assert idp.check_access_token(seen["token"], f"app:{CLIENT_ID}")
    [req] = create_items(srv)
    body = req.body.decode()
    assert re.search(r"<t:ExchangeImpersonation><t:ConnectingSID><t:PrimarySmtpAddress>"
                     + re.escape(MAILBOX) + "</t:PrimarySmtpAddress>", body)
    assert req.headers["x-anchormailbox"] == MAILBOX


# --- errors --------------------------------------------------------------------------
@pytest.mark.parametrize("reply, cls, exit_code, permanent, words", [
    (create_item_error("ErrorInvalidRecipients", "At least one recipient isn't valid., A message can't be sent because it contains no recipients."),
     DeliveryError, ExitCode.PROBLEMS, True, "To/Cc/Bcc"),
    (create_item_error("ErrorAccessDenied", "Access is denied. Check credentials and try again."),
     AuthError, ExitCode.NOPERM, True, "FullAccess"),
    (create_item_error("ErrorSendAsDenied", "The user account which was used to submit this request does not have the right to send mail on behalf of the specified sending account."),
     DeliveryError, ExitCode.NOPERM, True, "Send As"),
    (soap_fault("ErrorNonExistentMailbox", "The SMTP address has no mailbox associated with it."),
     DeliveryError, ExitCode.NOINPUT, True, "username"),
    (soap_fault("ErrorImpersonateUserDenied", "The account does not have permission to impersonate the requested user."),
     AuthError, ExitCode.NOPERM, True, "ApplicationImpersonation"),
    (soap_fault("ErrorServerBusy", "The server cannot service this request right now. Try again later."),
     DeliveryError, ExitCode.TEMPFAIL, False, "retries later"),
    (create_item_error("ErrorQuotaExceeded", "The mailbox has exceeded its quota."),
     DeliveryError, ExitCode.TEMPFAIL, False, "free space"),
])
def test_exchange_errors_map_to_hints_and_exit_codes(isolated_env, srv, ca_pem, reply, cls, exit_code, permanent, words):
    ews_fake(srv, basic=(MAILBOX, PASSWORD), create_item=reply)
    keyring.set_password("mailctl", "e/password", PASSWORD)
    profile = make_profile(isolated_env, srv.base_url + EWS_PATH, ca_file=ca_pem)
    raw, sender, rcpts = message(profile)
    with pytest.raises(cls) as exc:
        send(profile, raw, sender, rcpts)
    err = exc.value
    assert err.exit_code == exit_code and words in (err.hint or "")
    code = re.search(r"(?:ResponseCode[^>]*>)(\w+)<", reply.body).group(1)
    assert code in err.message and err.error_code == code
    if isinstance(err, DeliveryError):
        assert err.permanent is permanent and err.stage == "CreateItem"
    no_secret(err, PASSWORD)


def test_wrong_password_is_an_auth_error_without_the_password(isolated_env, srv, ca_pem):
    ews_fake(srv, basic=(MAILBOX, PASSWORD))
    keyring.set_password("mailctl", "e/password", "not-the-password-987")
    profile = make_profile(isolated_env, srv.base_url + EWS_PATH, ca_file=ca_pem)
    raw, sender, rcpts = message(profile)
    with pytest.raises(AuthError) as exc:
        send(profile, raw, sender, rcpts)
    assert exc.value.exit_code == ExitCode.NOPERM and "--password-stdin" in exc.value.hint
    no_secret(exc.value, "not-the-password-987", PASSWORD)
    assert create_items(srv) == [] or all(r.headers.get("authorization") for r in create_items(srv))


def test_rejected_static_token_says_what_to_do(isolated_env, srv, ca_pem):
    ews_fake(srv, bearer="another-token")
    keyring.set_password("mailctl", "o/access_token", TOKEN)
    profile = make_profile(isolated_env, srv.base_url + EWS_PATH, name="o", auth="oauth", ca_file=ca_pem)
    raw, sender, rcpts = message(profile)
    with pytest.raises(AuthError) as exc:
        send(profile, raw, sender, rcpts)
    assert exc.value.exit_code == ExitCode.NOPERM and "access_token" in exc.value.hint
    no_secret(exc.value, TOKEN)


def test_missing_password_is_reported_before_connecting(isolated_env, srv, ca_pem):
    ews_fake(srv, basic=(MAILBOX, PASSWORD))
    profile = make_profile(isolated_env, srv.base_url + EWS_PATH, ca_file=ca_pem)
    raw, sender, rcpts = message(profile)
    with pytest.raises(AuthError) as exc:
        send(profile, raw, sender, rcpts)
    assert "no password" in exc.value.message and srv.requests == []


def test_a_mailbox_address_is_needed(isolated_env, srv):
    profile = make_profile(isolated_env, srv.base_url + EWS_PATH, username="CORP\\ops", from_address="")
    with pytest.raises(ConfigError) as err:
        EwsTransport(profile, default_resolver()).open()
    assert "--mailbox" in err.value.hint


def test_domain_login_sends_as_the_mailbox(isolated_env, srv, ca_pem):
    # on-premises: log in as CORP\svc-mail, send as (and save into) a shared mailbox
    shared = "billing@corp.example"
    ews_fake(srv, basic=("CORP\\svc-mail", PASSWORD))
    keyring.set_password("mailctl", "e/password", PASSWORD)
    profile = make_profile(isolated_env, srv.base_url + EWS_PATH, username="CORP\\svc-mail", mailbox=shared,
                           from_address=shared, ca_file=ca_pem)
    raw, sender, rcpts = message(profile)
    assert send(profile, raw, sender, rcpts).reply.startswith("NoError")
    [req] = create_items(srv)
    assert req.headers["authorization"] == "Basic " + base64.b64encode(f"CORP\\svc-mail:{PASSWORD}".encode()).decode()
    assert re.search(r'<t:DistinguishedFolderId Id="sentitems"><t:Mailbox><t:EmailAddress>' + re.escape(shared), req.body.decode())
    assert PASSWORD not in req.body.decode()


# --- TLS -----------------------------------------------------------------------------
def test_ca_file_is_honoured_over_requests_ca_bundle(basic, srv, monkeypatch):
    import certifi

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())
    monkeypatch.setenv("CURL_CA_BUNDLE", certifi.where())
    raw, sender, rcpts = message(basic)
    assert send(basic, raw, sender, rcpts).reply.startswith("NoError")


def test_untrusted_certificate_is_unavailable(isolated_env, srv, ca_pem, monkeypatch):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", ca_pem)  # exchangelib's sessions trust the env: we must not
    ews_fake(srv, basic=(MAILBOX, PASSWORD))
    keyring.set_password("mailctl", "e/password", PASSWORD)
    profile = make_profile(isolated_env, srv.base_url + EWS_PATH)
    raw, sender, rcpts = message(profile)
    with pytest.raises(UnavailableError) as exc:
        send(profile, raw, sender, rcpts)
    assert exc.value.exit_code == ExitCode.UNAVAILABLE and "certificate verify failed" in exc.value.message
    assert "ca_file" in exc.value.hint
    assert srv.requests == []


def test_tls_verify_false_connects_without_ca(isolated_env, srv):
    ews_fake(srv, basic=(MAILBOX, PASSWORD))
    keyring.set_password("mailctl", "e/password", PASSWORD)
    profile = make_profile(isolated_env, srv.base_url + EWS_PATH, tls_verify=False)
    raw, sender, rcpts = message(profile)
    assert send(profile, raw, sender, rcpts).reply.startswith("NoError")


# --- Exchange Online retirement ---------------------------------------------------------
def test_lint_warns_about_exchange_online_ews(isolated_env):
    online = make_profile(isolated_env, "https://outlook.office365.com/EWS/Exchange.asmx", auth="oauth")
    [warning] = lint_warnings(online)
    assert "October 2026" in warning and "graph" in warning and "on-premises" in warning
    assert is_exchange_online("https://outlook.office365.com/EWS/Exchange.asmx")
    onprem = make_profile(isolated_env, "https://mail.corp.example/EWS/Exchange.asmx")
    assert lint_warnings(onprem) == []
    basic_online = make_profile(isolated_env, "https://outlook.office365.com/EWS/Exchange.asmx")
    assert any("basic authentication" in w for w in lint_warnings(basic_online))
    assert lint_warnings(make_profile(isolated_env, "http://mail.corp.example/EWS/Exchange.asmx"))[0].startswith("ews_url uses http://")


def test_lint_ignores_other_transports(isolated_env):
    write_profiles(isolated_env, {"s": {"type": "smtp", "host": "outlook.office365.com"}})
    assert lint_warnings(resolved(isolated_env, "s")) == []


def test_app_only_401_refreshes_the_token_once(isolated_env, srv, idp, ca_pem):
    replies = [Reply(401, b"", {"WWW-Authenticate": 'Bearer error="invalid_token"'}), create_item_ok()]
    srv.on("POST", EWS_PATH, lambda rec: replies.pop(0) if len(replies) > 1 else replies[0])
    profile = make_profile(isolated_env, srv.base_url + EWS_PATH, name="app", auth="client-credentials",
                           tenant_id=TENANT, client_id=CLIENT_ID, authority=idp.authority, ca_file=ca_pem)
    keyring.set_password("mailctl", "app/client_secret", CLIENT_SECRET)
    raw, sender, rcpts = message(profile)
    assert send(profile, raw, sender, rcpts).reply.startswith("NoError")
    first, second = srv.requests[0], srv.requests[-1]
    assert first.headers["authorization"] != second.headers["authorization"]
    assert idp.check_access_token(second.headers["authorization"].removeprefix("Bearer "))


def test_requests_go_through_the_profile_proxy(isolated_env, srv, ca_pem):
    from httpfakes import ConnectProxy

    ews_fake(srv, basic=(MAILBOX, PASSWORD))
    keyring.set_password("mailctl", "e/password", PASSWORD)
    with ConnectProxy() as proxy:
        profile = make_profile(isolated_env, srv.base_url + EWS_PATH, ca_file=ca_pem, proxy=proxy.url)
        raw, sender, rcpts = message(profile)
        assert send(profile, raw, sender, rcpts).reply.startswith("NoError")
    assert proxy.targets and set(proxy.targets) == {f"127.0.0.1:{srv.port}"}


def test_connection_refused_is_unavailable(isolated_env, ca_pem):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    keyring.set_password("mailctl", "e/password", PASSWORD)
    profile = make_profile(isolated_env, f"https://127.0.0.1:{port}{EWS_PATH}", ca_file=ca_pem)
    raw, sender, rcpts = message(profile)
    with pytest.raises(UnavailableError) as exc:
        send(profile, raw, sender, rcpts)
    assert exc.value.exit_code == ExitCode.UNAVAILABLE and "ews_url" in exc.value.hint
    assert "object at 0x" not in exc.value.message


def test_autodiscover_only_when_asked(isolated_env, srv, ca_pem, monkeypatch):
    import exchangelib

    calls = []
    real_account = exchangelib.Account

    class Discovered:
        protocol = type("P", (), {"service_endpoint": srv.base_url + EWS_PATH})()

    def account(*args, **kwargs):
        if kwargs.get("autodiscover"):
            calls.append(kwargs["primary_smtp_address"])
            return Discovered()
        return real_account(*args, **kwargs)

    monkeypatch.setattr(exchangelib, "Account", account)
    ews_fake(srv, basic=(MAILBOX, PASSWORD))
    keyring.set_password("mailctl", "e/password", PASSWORD)
    # with a URL: no autodiscover even when asked for
    profile = make_profile(isolated_env, srv.base_url + EWS_PATH, ca_file=ca_pem, autodiscover=True)
    raw, sender, rcpts = message(profile)
    send(profile, raw, sender, rcpts)
    assert calls == []
    # without a URL: autodiscover, then the discovered endpoint is used
    write_profiles(isolated_env, {"d": {"type": "ews", "auth": "password", "username": MAILBOX, "autodiscover": True,
                                        "ca_file": ca_pem}})
    keyring.set_password("mailctl", "d/password", PASSWORD)
    result = send(resolved(isolated_env, "d"), raw, sender, rcpts)
    assert calls == [MAILBOX] and result.server == srv.base_url + EWS_PATH
