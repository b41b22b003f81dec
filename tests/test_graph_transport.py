"""Graph sendMail against a local HTTPS fake: the exact requests mailctl sends, and how every
kind of reply maps to errors, hints and exit codes."""

from __future__ import annotations

import base64
import email
import email.policy
import json

import keyring
import pytest

from httpfakes import (
    ACCEPTED, ConnectProxy, FakeHTTPS, Reply, decoded_mime, graph_error, graph_fake,
)
from idp import CLIENT_ID, CLIENT_SECRET, TENANT, ca_pem, idp, trust_ca, write_profiles, resolved  # noqa: F401
from mailctl.errors import AuthError, DeliveryError, ExitCode, MailctlError, UnavailableError, ValidationError
from mailctl.message import build_message, envelope, message_bytes
from mailctl.secrets import default_resolver
from mailctl.transports import open_transport
from mailctl.transports.graph import GraphTransport, split_attachments, with_envelope_recipients
from mailctl.net.http import RetryPolicy, parse_retry_after

TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.graph-token-SECRET-123"
MAILBOX = "ops@example.com"


@pytest.fixture
def graph(trust_ca):
    with FakeHTTPS(trust_ca) as srv:
        yield graph_fake(srv)


def make_profile(home, name="g", **values):
    base = {"type": "graph", "auth": "oauth", "username": MAILBOX, "from_address": MAILBOX,
            "tenant_id": TENANT, "client_id": CLIENT_ID}
    base.update(values)
    write_profiles(home, {name: base})
    return resolved(home, name)


@pytest.fixture
def delegated(isolated_env, graph, ca_pem):
    keyring.set_password("mailctl", "g/access_token", TOKEN)
    return make_profile(isolated_env, graph_endpoint=graph.base_url, ca_file=ca_pem)


def message(profile, **kw):
    msg = build_message(profile, {}, to=kw.pop("to", ["alice@example.net"]), subject=kw.pop("subject", "Quarterly report"),
                        body=kw.pop("body", "Hello from mailctl.\n"), **kw)
    sender, recipients = envelope(msg)
    return message_bytes(msg), sender, recipients


def send(profile, raw, sender, recipients, **options):
    with open_transport(profile, default_resolver(), **options) as t:
        return t.send(raw, sender, recipients)


def no_secret(*texts, secret=TOKEN):
    for text in texts:
        assert secret not in (text or "")


def err_texts(exc: MailctlError):
    return [exc.message, exc.hint or "", str(exc)]


# --- the request itself ------------------------------------------------------------
def test_delegated_send_posts_exact_mime_to_me_sendmail(delegated, graph):
    raw, sender, rcpts = message(delegated, cc=["bob@example.net"])
    result = send(delegated, raw, sender, rcpts)
    [req] = graph.requests
    assert req.method == "POST" and req.path == "/v1.0/me/sendMail"
    assert req.headers["authorization"] == f"Bearer {TOKEN}"
    assert req.headers["content-type"] == "text/plain"
    assert req.headers["user-agent"].startswith("mailctl/")
    assert decoded_mime(req) == raw  # the very bytes mailctl built, base64 in the body
    assert result.reply.startswith("202") and "request-id" in result.reply
    assert result.server == graph.base_url
    no_secret(result.reply, json.dumps(result.to_dict()))


def test_bcc_recipients_travel_in_a_bcc_header(delegated, graph):
    raw, sender, rcpts = message(delegated, bcc=["hidden@example.net"])
    assert "hidden@example.net" in rcpts and b"hidden@example.net" not in raw
    send(delegated, raw, sender, rcpts)
    sent = decoded_mime(graph.requests[0])
    parsed = email.message_from_bytes(sent, policy=email.policy.default)
    assert parsed["Bcc"] == "hidden@example.net"
    # nothing else changed
    assert sent.replace(b"Bcc: hidden@example.net\r\n", b"") == raw


def test_with_envelope_recipients_leaves_complete_messages_alone():
    raw = b"From: a@x.example\r\nTo: b@y.example\r\nSubject: s\r\n\r\nbody\r\n"
    assert with_envelope_recipients(raw, ["b@y.example"]) is raw
    assert with_envelope_recipients(raw, ["B@Y.example"]) is raw


def test_app_only_sends_as_users_upn_with_client_credentials(isolated_env, graph, idp, ca_pem):
    profile = make_profile(isolated_env, name="app", auth="client-credentials", authority=idp.authority,
                           graph_endpoint=graph.base_url, ca_file=ca_pem)
    keyring.set_password("mailctl", "app/client_secret", CLIENT_SECRET)
    raw, sender, rcpts = message(profile)
    send(profile, raw, sender, rcpts)
    [req] = graph.requests
    assert req.path == f"/v1.0/users/{MAILBOX}/sendMail"
    token = req.headers["authorization"].removeprefix("Bearer ")
    assert idp.check_access_token(token, f"app:{CLIENT_ID}")
    assert decoded_mime(req) == raw


def test_delegated_send_as_a_shared_mailbox(isolated_env, graph, ca_pem):
    from mailctl.oauth import scopes_for

    keyring.set_password("mailctl", "g/access_token", TOKEN)
    profile = make_profile(isolated_env, graph_endpoint=graph.base_url, ca_file=ca_pem,
                           mailbox="billing@example.com", from_address="billing@example.com")
    raw, sender, rcpts = message(profile)
    send(profile, raw, sender, rcpts)
    [req] = graph.requests
    assert req.path == "/v1.0/users/billing@example.com/sendMail"
    assert decoded_mime(req) == raw
    # the signed-in user sends on behalf of another mailbox: consent must cover Mail.Send.Shared
    # for the cloud's Graph resource, whatever graph_endpoint says (requests go there, tokens are not for it)
    assert scopes_for(profile) == ["https://graph.microsoft.com/Mail.Send", "https://graph.microsoft.com/Mail.Send.Shared"]
    own = make_profile(isolated_env, name="own", mailbox=MAILBOX.upper())
    assert scopes_for(own) == ["https://graph.microsoft.com/Mail.Send"]


def test_national_cloud_picks_graph_endpoint(isolated_env):
    for cloud, host in (("usgov", "https://graph.microsoft.us"), ("usgov-dod", "https://dod-graph.microsoft.us"),
                        ("china", "https://microsoftgraph.chinacloudapi.cn"), ("global", "https://graph.microsoft.com")):
        profile = make_profile(isolated_env, cloud=cloud)
        t = GraphTransport(profile, default_resolver())
        assert t.endpoint == host
        assert profile.values["graph_endpoint"] == host


def test_one_session_reused_for_several_sends(delegated, graph):
    raw, sender, rcpts = message(delegated)
    with open_transport(delegated, default_resolver()) as t:
        session = t.session
        for _ in range(3):
            t.send(raw, sender, rcpts)
        assert t.session is session
    assert len(graph.find("POST", r"/v1.0/me/sendMail")) == 3


# --- throttling ------------------------------------------------------------------
def test_429_retry_after_is_honoured_then_sent(delegated, graph):
    graph.on("POST", r"/v1.0/me/sendMail",
             graph_error(429, "ApplicationThrottled", "Application is over its MailboxConcurrency limit.", {"Retry-After": "2"}),
             ACCEPTED)
    slept = []
    raw, sender, rcpts = message(delegated)
    result = send(delegated, raw, sender, rcpts, retry=RetryPolicy(sleep=slept.append))
    assert slept == [2.0]
    assert len(graph.requests) == 2 and result.reply.startswith("202")
    assert decoded_mime(graph.requests[1]) == raw


def test_503_without_retry_after_backs_off_exponentially_and_gives_up(delegated, graph):
    graph.on("POST", r"/v1.0/me/sendMail", Reply(503, b"Service Unavailable"))
    slept = []
    raw, sender, rcpts = message(delegated)
    with pytest.raises(DeliveryError) as exc:
        send(delegated, raw, sender, rcpts, retry=RetryPolicy(max_attempts=3, sleep=slept.append))
    assert slept == [1.0, 2.0] and len(graph.requests) == 3
    assert exc.value.exit_code == ExitCode.TEMPFAIL and not exc.value.permanent


def test_retry_after_beyond_bound_defers_without_sleeping(delegated, graph):
    graph.on("POST", r"/v1.0/me/sendMail",
             graph_error(429, "TooManyRequests", "Too many requests.", {"Retry-After": "3600"}))
    slept = []
    raw, sender, rcpts = message(delegated)
    with pytest.raises(DeliveryError) as exc:
        send(delegated, raw, sender, rcpts, retry=RetryPolicy(sleep=slept.append))
    assert slept == [] and len(graph.requests) == 1
    assert exc.value.exit_code == ExitCode.TEMPFAIL and "Retry-After: 3600" in exc.value.message


def test_parse_retry_after_forms():
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Sat, 21 Nov 2026 10:00:30 GMT", now=1795255200.0) == pytest.approx(30.0)


# --- errors -----------------------------------------------------------------------
@pytest.mark.parametrize("reply, cls, exit_code, words", [
    (graph_error(401, "InvalidAuthenticationToken", "Access token has expired or is not yet valid."),
     AuthError, ExitCode.NOPERM, "access_token"),
    (graph_error(403, "ErrorAccessDenied", "Access is denied. Check credentials and try again."),
     AuthError, ExitCode.NOPERM, "Mail.Send"),
    (graph_error(404, "MailboxNotEnabledForRESTAPI", "The mailbox is either inactive, soft-deleted, or is hosted on-premise."),
     DeliveryError, ExitCode.CONFIG, "Exchange Online licence"),
    (graph_error(403, "ErrorSendAsDenied", "The user account which was used to submit this request does not have the right to send mail on behalf of the specified sending account."),
     DeliveryError, ExitCode.NOPERM, "Send As"),
    (graph_error(400, "ErrorMimeContentInvalidBase64String", "Invalid base64 string for MIME content."),
     DeliveryError, ExitCode.DATAERR, "base64"),
    (graph_error(400, "ErrorInvalidRecipients", "At least one recipient is not valid."),
     DeliveryError, ExitCode.PROBLEMS, "To/Cc/Bcc"),
])
def test_error_replies_map_to_hints_and_exit_codes(delegated, graph, reply, cls, exit_code, words):
    graph.on("POST", r"/v1.0/me/sendMail", reply)
    raw, sender, rcpts = message(delegated)
    with pytest.raises(cls) as exc:
        send(delegated, raw, sender, rcpts)
    err = exc.value
    assert err.exit_code == exit_code
    assert words in (err.hint or "")
    code = reply.body["error"]["code"]
    assert code in err.message and err.error_code == code and err.http_status == reply.status
    if isinstance(err, DeliveryError):
        assert err.permanent and err.stage == "sendMail" and err.server == graph.base_url
    no_secret(*err_texts(err))


def test_401_refreshes_token_once_then_succeeds(isolated_env, graph, idp, ca_pem):
    profile = make_profile(isolated_env, name="app", auth="client-credentials", authority=idp.authority,
                           graph_endpoint=graph.base_url, ca_file=ca_pem)
    keyring.set_password("mailctl", "app/client_secret", CLIENT_SECRET)
    graph.on("POST", r"/v1.0/users/[^/]+/sendMail",
             graph_error(401, "InvalidAuthenticationToken", "Lifetime validation failed, the token is expired."), ACCEPTED)
    raw, sender, rcpts = message(profile)
    send(profile, raw, sender, rcpts)
    first, second = graph.requests
    assert first.headers["authorization"] != second.headers["authorization"]
    assert idp.check_access_token(second.headers["authorization"].removeprefix("Bearer "))


def test_401_twice_is_an_auth_error(isolated_env, graph, idp, ca_pem):
    profile = make_profile(isolated_env, name="app", auth="client-credentials", authority=idp.authority,
                           graph_endpoint=graph.base_url, ca_file=ca_pem)
    keyring.set_password("mailctl", "app/client_secret", CLIENT_SECRET)
    graph.on("POST", r"/v1.0/users/[^/]+/sendMail", graph_error(401, "InvalidAuthenticationToken", "Access token validation failure."))
    raw, sender, rcpts = message(profile)
    with pytest.raises(AuthError) as exc:
        send(profile, raw, sender, rcpts)
    assert len(graph.requests) == 2 and exc.value.exit_code == ExitCode.NOPERM
    assert "auth login app" in exc.value.hint
    no_secret(*err_texts(exc.value), secret=CLIENT_SECRET)
    for req in graph.requests:
        no_secret(*err_texts(exc.value), secret=req.headers["authorization"].removeprefix("Bearer "))


def test_no_token_at_all_says_to_sign_in(isolated_env, graph, ca_pem):
    profile = make_profile(isolated_env, graph_endpoint=graph.base_url, ca_file=ca_pem)
    raw, sender, rcpts = message(profile)
    with pytest.raises(AuthError) as exc:
        send(profile, raw, sender, rcpts)
    assert exc.value.exit_code == ExitCode.NOPERM and "auth login g" in (exc.value.hint or "")
    assert graph.requests == []


# --- TLS and proxy -----------------------------------------------------------------
def test_ca_file_wins_over_requests_ca_bundle(delegated, graph, monkeypatch):
    import certifi

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())
    monkeypatch.setenv("CURL_CA_BUNDLE", certifi.where())
    raw, sender, rcpts = message(delegated)
    assert send(delegated, raw, sender, rcpts).reply.startswith("202")


def test_untrusted_certificate_is_unavailable(isolated_env, graph, trust_ca, ca_pem, monkeypatch):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", ca_pem)  # must not be used: trust_env is off
    keyring.set_password("mailctl", "g/access_token", TOKEN)
    profile = make_profile(isolated_env, graph_endpoint=graph.base_url)
    raw, sender, rcpts = message(profile)
    with pytest.raises(UnavailableError) as exc:
        send(profile, raw, sender, rcpts)
    assert exc.value.exit_code == ExitCode.UNAVAILABLE
    assert "certificate verify failed" in exc.value.message and "ca_file" in exc.value.hint
    no_secret(*err_texts(exc.value))


def test_connection_refused_is_unavailable(isolated_env, ca_pem):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    keyring.set_password("mailctl", "g/access_token", TOKEN)
    profile = make_profile(isolated_env, graph_endpoint=f"https://127.0.0.1:{port}", ca_file=ca_pem)
    raw, sender, rcpts = message(profile)
    with pytest.raises(UnavailableError) as exc:
        send(profile, raw, sender, rcpts)
    assert exc.value.exit_code == ExitCode.UNAVAILABLE and f"127.0.0.1:{port}" in exc.value.message


def test_requests_go_through_the_profile_proxy(isolated_env, graph, ca_pem):
    keyring.set_password("mailctl", "g/access_token", TOKEN)
    keyring.set_password("mailctl", "g/proxy_password", "pr0xy-pass")
    with ConnectProxy(require_auth="Basic " + base64.b64encode(b"squid:pr0xy-pass").decode()) as proxy:
        profile = make_profile(isolated_env, graph_endpoint=graph.base_url, ca_file=ca_pem,
                               proxy=f"http://squid@127.0.0.1:{proxy.port}")
        raw, sender, rcpts = message(profile)
        assert send(profile, raw, sender, rcpts).reply.startswith("202")
    assert proxy.targets == [f"127.0.0.1:{graph.port}"]
    assert decoded_mime(graph.requests[0]) == raw


def test_proxy_refusing_credentials_is_unavailable(isolated_env, graph, ca_pem):
    keyring.set_password("mailctl", "g/access_token", TOKEN)
    with ConnectProxy(require_auth="Basic nope") as proxy:
        profile = make_profile(isolated_env, graph_endpoint=graph.base_url, ca_file=ca_pem,
                               proxy=f"http://127.0.0.1:{proxy.port}")
        raw, sender, rcpts = message(profile)
        with pytest.raises(UnavailableError) as exc:
            send(profile, raw, sender, rcpts)
    assert "proxy" in exc.value.message and graph.requests == []


# --- large messages and saveToSentItems ------------------------------------------------
def test_large_attachment_goes_through_draft_and_upload_session(delegated, graph, tmp_path):
    big = bytes(range(256)) * (5 * 4096)  # 5 MiB
    small = b"%PDF-1.4 small attachment\n" * 100
    (tmp_path / "big.bin").write_bytes(big)
    (tmp_path / "small.pdf").write_bytes(small)
    raw, sender, rcpts = message(delegated, attachments=[tmp_path / "big.bin", tmp_path / "small.pdf"])
    result = send(delegated, raw, sender, rcpts)
    assert result.reply.startswith("202")
    paths = [(r.method, r.path) for r in graph.requests]
    assert paths[0] == ("POST", "/v1.0/me/messages")
    draft = email.message_from_bytes(decoded_mime(graph.requests[0]), policy=email.policy.default)
    assert draft["Subject"] == "Quarterly report" and not list(draft.iter_attachments())
    [small_req] = graph.find("POST", r"/v1.0/me/messages/[^/]+/attachments")
    assert small_req.json["name"] == "small.pdf" and base64.b64decode(small_req.json["contentBytes"]) == small
    [session_req] = graph.find("POST", r"/v1.0/me/messages/[^/]+/attachments/createUploadSession")
    item = session_req.json["AttachmentItem"]
    assert item == {"attachmentType": "file", "name": "big.bin", "size": len(big),
                    "contentType": "application/octet-stream", "isInline": False}
    chunks = graph.find("PUT", r"/upload/session1")
    assert all("authorization" not in c.headers for c in chunks)  # the upload URL is pre-authorised
    assert b"".join(c.body for c in chunks) == big
    assert all(len(c.body) % (320 * 1024) == 0 for c in chunks[:-1])
    assert paths[-1][0] == "POST" and paths[-1][1].endswith("/send")
    assert graph.find("POST", r"/v1.0/me/sendMail") == []


def test_failed_upload_deletes_the_draft(delegated, graph, tmp_path):
    graph.on("PUT", r"/upload/[^/]+", Reply(500, {"error": {"code": "generalException", "message": "boom"}}))
    (tmp_path / "big.bin").write_bytes(b"x" * (4 * 1024 * 1024))
    raw, sender, rcpts = message(delegated, attachments=[tmp_path / "big.bin"])
    with pytest.raises(DeliveryError) as exc:
        send(delegated, raw, sender, rcpts, retry=RetryPolicy(sleep=lambda s: None))
    assert exc.value.exit_code == ExitCode.TEMPFAIL
    assert graph.find("DELETE", r"/v1.0/me/messages/[^/]+")
    assert graph.find("POST", r"/v1.0/me/messages/[^/]+/send") == []


def test_split_attachments_keeps_body_and_reports_parts(tmp_path, isolated_env):
    (tmp_path / "a.txt").write_bytes(b"attached text\n")
    profile = make_profile(isolated_env)
    raw, _, _ = message(profile, attachments=[tmp_path / "a.txt"])
    stripped, atts = split_attachments(raw)
    assert [a["name"] for a in atts] == ["a.txt"] and atts[0]["content"] == b"attached text\n"
    assert b"Hello from mailctl." in stripped and b"attached text" not in stripped


def test_save_to_sent_items_false_uses_json_route(isolated_env, graph, ca_pem, tmp_path):
    keyring.set_password("mailctl", "g/access_token", TOKEN)
    profile = make_profile(isolated_env, graph_endpoint=graph.base_url, ca_file=ca_pem, save_to_sent_items=False)
    (tmp_path / "a.txt").write_bytes(b"attached\n")
    raw, sender, rcpts = message(profile, cc=["c@example.net"], bcc=["hidden@example.net"], attachments=[tmp_path / "a.txt"])
    send(profile, raw, sender, rcpts)
    [req] = graph.requests
    assert req.path == "/v1.0/me/sendMail" and req.headers["content-type"] == "application/json"
    body = req.json
    assert body["saveToSentItems"] is False
    msg = body["message"]
    assert msg["subject"] == "Quarterly report"
    assert msg["toRecipients"] == [{"emailAddress": {"address": "alice@example.net"}}]
    assert msg["ccRecipients"] == [{"emailAddress": {"address": "c@example.net"}}]
    assert msg["bccRecipients"] == [{"emailAddress": {"address": "hidden@example.net"}}]
    assert "Hello from mailctl." in msg["body"]["content"]
    assert msg["attachments"][0]["name"] == "a.txt"
    assert base64.b64decode(msg["attachments"][0]["contentBytes"]) == b"attached\n"


def test_app_only_without_username_is_a_config_error(isolated_env, graph, ca_pem):
    keyring.set_password("mailctl", "x/client_secret", CLIENT_SECRET)
    write_profiles(isolated_env, {"x": {"type": "graph", "auth": "client-credentials", "tenant_id": TENANT,
                                        "client_id": CLIENT_ID, "graph_endpoint": graph.base_url, "ca_file": ca_pem}})
    t = GraphTransport(resolved(isolated_env, "x"), default_resolver())
    with pytest.raises(MailctlError) as exc:
        t.mailbox_path
    assert exc.value.exit_code == ExitCode.CONFIG and "--username" in exc.value.hint


def test_heavy_libraries_not_imported_by_transport_modules():
    import subprocess
    import sys

    code = ("import sys, mailctl.transports.graph, mailctl.transports.ews, mailctl.transports.http;"
            "bad=[m for m in ('requests','exchangelib','msal') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
