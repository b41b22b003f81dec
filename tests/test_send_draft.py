"""`mailctl send --draft` (seed 004): Graph and EWS profiles create the message in the
mailbox's Drafts folder instead of sending it; nothing is queued, nothing is sent; other
profile types are a usage error (2) naming the types that can."""

from __future__ import annotations

import email
import email.policy
import json

import keyring
import pytest

from httpfakes import FakeHTTPS, create_item_error, decoded_mime, ews_fake, graph_error, graph_fake, soap_mime_content, soap_operation
from idp import CLIENT_ID, TENANT, ca_pem, trust_ca, write_profiles  # noqa: F401
from mailctl.outbox import Outbox

TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.draft-token-SECRET-654"
PASSWORD = "Winter2026!-draft-secret"


@pytest.fixture
def srv(trust_ca):
    with FakeHTTPS(trust_ca) as server:
        yield server


def graph_profile(home, srv, ca_pem):
    keyring.set_password("mailctl", "g/access_token", TOKEN)
    write_profiles(home, {"g": {"type": "graph", "auth": "oauth", "username": "ops@example.com",
                                "from_address": "ops@example.com", "tenant_id": TENANT, "client_id": CLIENT_ID,
                                "graph_endpoint": srv.base_url, "ca_file": ca_pem}}, default="g")


def ews_profile(home, srv, ca_pem):
    keyring.set_password("mailctl", "e/password", PASSWORD)
    write_profiles(home, {"e": {"type": "ews", "auth": "password", "username": "ops@corp.example",
                                "from_address": "ops@corp.example", "ews_url": srv.base_url + "/EWS/Exchange.asmx",
                                "ca_file": ca_pem}}, default="e")


def outbox_rows(home) -> int:
    path = home / "data" / "outbox.sqlite3"
    if not path.exists():
        return 0
    with Outbox(path) as box:
        return sum(box.count_by_state().values())


def test_graph_draft_is_created_not_sent(cli, isolated_env, srv, ca_pem):
    graph_fake(srv)
    graph_profile(isolated_env, srv, ca_pem)
    res = cli("send", "--draft", "--to", "bob@example.org", "--bcc", "audit@example.org",
              "--subject", "For review", "--body", "draft body", "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["outcome"] == "draft" and "AAMkAGI2TG93AAA=" in data["reply"]
    [req] = srv.find("POST", r"/v1.0/me/messages")
    draft = email.message_from_bytes(decoded_mime(req), policy=email.policy.default)
    assert draft["Subject"] == "For review" and draft["Bcc"] == "audit@example.org"
    assert not srv.find("POST", r".*/sendMail") and not srv.find("POST", r".*/send")
    assert outbox_rows(isolated_env) == 0
    assert TOKEN not in res.output


def test_graph_draft_with_large_attachment_uses_upload_session(cli, isolated_env, srv, ca_pem, tmp_path):
    graph_fake(srv)
    graph_profile(isolated_env, srv, ca_pem)
    big = tmp_path / "report.bin"
    big.write_bytes(b"\x01" * 3_500_000)
    res = cli("send", "--draft", "--to", "bob@example.org", "--subject", "Big", "--body", "see attached",
              "--attach", str(big))
    assert res.exit_code == 0, res.output
    assert srv.find("POST", r"/v1.0/me/messages/[^/]+/attachments/createUploadSession") and srv.find("PUT", r"/upload/[^/]+")
    assert not srv.find("POST", r"/v1.0/me/messages/[^/]+/send") and not srv.find("DELETE", r"/v1.0/me/messages/[^/]+")
    assert "Drafts" in res.stderr + res.stdout


def test_graph_draft_refused_says_why_and_queues_nothing(cli, isolated_env, srv, ca_pem):
    graph_fake(srv)
    srv.on("POST", r"/v1.0/me/messages", graph_error(403, "ErrorAccessDenied", "Access is denied. Check credentials and try again."))
    graph_profile(isolated_env, srv, ca_pem)
    res = cli("send", "--draft", "--to", "bob@example.org", "--subject", "S", "--body", "x")
    assert res.exit_code not in (0, 75), res.output
    assert "ErrorAccessDenied" in res.stderr and "Traceback" not in res.output
    assert outbox_rows(isolated_env) == 0


def test_ews_draft_uses_save_only_in_drafts(cli, isolated_env, srv, ca_pem):
    ews_fake(srv, basic=("ops@corp.example", PASSWORD))
    ews_profile(isolated_env, srv, ca_pem)
    res = cli("send", "--draft", "--to", "bob@example.org", "--subject", "Via EWS draft", "--body", "hello")
    assert res.exit_code == 0, res.output
    [req] = [r for r in srv.requests if soap_operation(r.body) == "CreateItem"]
    assert b'MessageDisposition="SaveOnly"' in req.body
    assert b'DistinguishedFolderId Id="drafts"' in req.body.replace(b"t:", b"")
    assert b"Subject: Via EWS draft" in soap_mime_content(req.body)
    assert outbox_rows(isolated_env) == 0 and PASSWORD not in res.output


def test_ews_send_still_saves_to_sent_items(cli, isolated_env, srv, ca_pem):
    ews_fake(srv, basic=("ops@corp.example", PASSWORD))
    ews_profile(isolated_env, srv, ca_pem)
    res = cli("send", "--to", "bob@example.org", "--subject", "Sent", "--body", "hello")
    assert res.exit_code == 0, res.output
    [req] = [r for r in srv.requests if soap_operation(r.body) == "CreateItem"]
    assert b'MessageDisposition="SendAndSaveCopy"' in req.body
    assert b'Id="sentitems"' in req.body


def test_ews_draft_error_is_reported(cli, isolated_env, srv, ca_pem):
    ews_fake(srv, basic=("ops@corp.example", PASSWORD),
             create_item=create_item_error("ErrorAccessDenied", "Access is denied."))
    ews_profile(isolated_env, srv, ca_pem)
    res = cli("send", "--draft", "--to", "bob@example.org", "--subject", "S", "--body", "x")
    assert res.exit_code not in (0, 75), res.output
    assert "ErrorAccessDenied" in res.stderr and outbox_rows(isolated_env) == 0


def test_draft_on_an_smtp_profile_is_a_usage_error(cli, isolated_env):
    write_profiles(isolated_env, {"s": {"type": "smtp", "host": "127.0.0.1", "port": 2525, "security": "none",
                                        "auth": "none", "from_address": "ops@example.com"}}, default="s")
    res = cli("send", "--draft", "--to", "bob@example.org", "--subject", "S", "--body", "x")
    assert res.exit_code == 2, res.output
    assert "'smtp'" in res.stderr and "graph" in res.stderr and "ews" in res.stderr
    assert outbox_rows(isolated_env) == 0


def test_draft_with_queue_is_a_usage_error(cli, isolated_env, srv, ca_pem):
    graph_fake(srv)
    graph_profile(isolated_env, srv, ca_pem)
    res = cli("send", "--draft", "--queue", "--to", "bob@example.org", "--subject", "S", "--body", "x")
    assert res.exit_code == 2, res.output
    assert not srv.requests and outbox_rows(isolated_env) == 0
