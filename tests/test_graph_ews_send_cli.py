"""`mailctl send` through graph and ews profiles (the outbox path): delivered, deferred on
throttling, failed on a permanent refusal; exit codes as for SMTP."""

from __future__ import annotations

import email
import email.policy
import json

import keyring
import pytest

from httpfakes import FakeHTTPS, create_item_error, decoded_mime, ews_fake, graph_error, graph_fake, soap_mime_content, soap_operation
from idp import CLIENT_ID, TENANT, ca_pem, trust_ca, write_profiles  # noqa: F401
from mailctl.outbox import Outbox

TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.send-token-SECRET-321"
PASSWORD = "Autumn2026!-secret"


@pytest.fixture
def srv(trust_ca):
    with FakeHTTPS(trust_ca) as server:
        yield server


def graph_profile(home, srv, ca_pem):
    keyring.set_password("mailctl", "g/access_token", TOKEN)
    write_profiles(home, {"g": {"type": "graph", "auth": "oauth", "username": "ops@example.com",
                                "from_address": "ops@example.com", "tenant_id": TENANT, "client_id": CLIENT_ID,
                                "graph_endpoint": srv.base_url, "ca_file": ca_pem}}, default="g")


def states(home):
    with Outbox(home / "data" / "outbox.sqlite3") as b:
        return {k: v for k, v in b.count_by_state().items() if v}


def test_send_via_graph(cli, isolated_env, srv, ca_pem):
    graph_fake(srv)
    graph_profile(isolated_env, srv, ca_pem)
    res = cli("send", "--to", "bob@example.org", "--bcc", "audit@example.org", "--subject", "Via Graph", "--body", "hello", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["outcome"] == "sent"
    [req] = srv.find("POST", r"/v1.0/me/sendMail")
    sent = email.message_from_bytes(decoded_mime(req), policy=email.policy.default)
    assert sent["Subject"] == "Via Graph" and sent["Bcc"] == "audit@example.org"
    assert states(isolated_env) == {"sent": 1}
    assert TOKEN not in res.output


def test_throttled_graph_send_stays_queued_75(cli, isolated_env, srv, ca_pem):
    graph_fake(srv)
    srv.on("POST", r"/v1.0/me/sendMail", graph_error(429, "ApplicationThrottled", "Too many requests", {"Retry-After": "900"}))
    graph_profile(isolated_env, srv, ca_pem)
    res = cli("send", "--to", "bob@example.org", "--subject", "Later", "--body", "x")
    assert res.exit_code == 75, res.output
    assert states(isolated_env) == {"deferred": 1}


def test_send_as_denied_fails(cli, isolated_env, srv, ca_pem):
    graph_fake(srv)
    srv.on("POST", r"/v1.0/me/sendMail", graph_error(403, "ErrorSendAsDenied", "not allowed to send as"))
    graph_profile(isolated_env, srv, ca_pem)
    res = cli("send", "--to", "bob@example.org", "--from", "ceo@example.com", "--subject", "S", "--body", "x")
    assert res.exit_code != 0 and "ErrorSendAsDenied" in res.stderr
    assert states(isolated_env) == {"failed": 1}
    assert TOKEN not in res.output


def test_send_via_ews(cli, isolated_env, srv, ca_pem):
    ews_fake(srv, basic=("ops@corp.example", PASSWORD))
    keyring.set_password("mailctl", "e/password", PASSWORD)
    write_profiles(isolated_env, {"e": {"type": "ews", "auth": "password", "username": "ops@corp.example",
                                        "from_address": "ops@corp.example", "ews_url": srv.base_url + "/EWS/Exchange.asmx",
                                        "ca_file": ca_pem}}, default="e")
    res = cli("send", "--to", "bob@example.org", "--subject", "Via EWS", "--body", "hello")
    assert res.exit_code == 0, res.output
    [req] = [r for r in srv.requests if soap_operation(r.body) == "CreateItem"]
    assert b"Subject: Via EWS" in soap_mime_content(req.body)
    assert states(isolated_env) == {"sent": 1} and PASSWORD not in res.output


def test_ews_invalid_recipients_fails(cli, isolated_env, srv, ca_pem):
    ews_fake(srv, basic=("ops@corp.example", PASSWORD),
             create_item=create_item_error("ErrorInvalidRecipients", "At least one recipient isn't valid."))
    keyring.set_password("mailctl", "e/password", PASSWORD)
    write_profiles(isolated_env, {"e": {"type": "ews", "auth": "password", "username": "ops@corp.example",
                                        "from_address": "ops@corp.example", "ews_url": srv.base_url + "/EWS/Exchange.asmx",
                                        "ca_file": ca_pem}}, default="e")
    res = cli("send", "--to", "bob@example.org", "--subject", "S", "--body", "x")
    assert res.exit_code == 1, res.output
    assert states(isolated_env) == {"failed": 1}
