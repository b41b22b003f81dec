"""`mailctl test connect` / `test send` on graph profiles, end to end through the CLI against
the local Graph fake: stages, durations, redaction and exit codes."""

from __future__ import annotations

import email
import email.policy
import json

import keyring
import pytest

from httpfakes import FakeHTTPS, decoded_mime, graph_error, graph_fake
from idp import CLIENT_ID, CLIENT_SECRET, TENANT, ca_pem, idp, trust_ca, write_profiles  # noqa: F401

TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.diag-token-SECRET-789"
MAILBOX = "ops@example.com"


@pytest.fixture
def graph(trust_ca):
    with FakeHTTPS(trust_ca) as srv:
        yield graph_fake(srv)


@pytest.fixture
def profile(isolated_env, graph, ca_pem):
    keyring.set_password("mailctl", "g/access_token", TOKEN)
    write_profiles(isolated_env, {"g": {
        "type": "graph", "auth": "oauth", "username": MAILBOX, "from_address": MAILBOX, "tenant_id": TENANT,
        "client_id": CLIENT_ID, "graph_endpoint": graph.base_url, "ca_file": ca_pem,
    }}, default="g")
    return "g"


def stages(data):
    return [(s["stage"], s["status"]) for s in data["stages"]]


def test_connect_shows_token_tls_request_response(cli, profile, graph):
    res = cli("test", "connect", "g", "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert stages(data) == [("secret", "ok"), ("token", "ok"), ("connect", "ok"), ("tls", "ok"), ("request", "ok"),
                            ("response", "ok")]
    assert all(s["duration_seconds"] >= 0 for s in data["stages"])
    assert data["tls"]["version"].startswith("TLS") and "ca_file" in data["tls"]["verification"]
    assert data["certificates"][0]["san"]
    assert data["settings"]["endpoint"] == graph.base_url
    [req] = graph.requests
    assert req.method == "GET" and req.path == "/v1.0/me" and req.headers["authorization"] == f"Bearer {TOKEN}"
    assert TOKEN not in res.output


@pytest.mark.parametrize("stage, expected", [
    ("secret", [("secret", "ok")]),
    ("token", [("secret", "ok"), ("token", "ok")]),
    ("connect", [("secret", "ok"), ("token", "ok"), ("connect", "ok")]),
    ("tls", [("secret", "ok"), ("token", "ok"), ("connect", "ok"), ("tls", "ok")]),
    ("auth", [("secret", "ok"), ("token", "ok"), ("connect", "ok"), ("tls", "ok")]),  # an SMTP name: before the request
])
def test_quit_after_http_stages(cli, profile, graph, stage, expected):
    res = cli("test", "send", "g", "--to", "x@example.net", "--quit-after", stage, "--json")
    assert res.exit_code == 0, res.output
    assert stages(json.loads(res.stdout)) == expected
    assert graph.requests == []  # nothing reached the API, nothing was sent


def test_quit_after_token_is_refused_for_smtp(cli, isolated_env):
    write_profiles(isolated_env, {"s": {"type": "smtp", "host": "127.0.0.1", "port": 2525, "security": "none", "auth": "none"}})
    res = cli("test", "connect", "s", "--quit-after", "token")
    assert res.exit_code == 2 and "graph and ews" in res.stderr and "--quit-after auth" in res.stderr


def test_connect_human_output(cli, profile):
    res = cli("test", "connect", "g")
    assert res.exit_code == 0, res.output
    out = res.stdout
    for word in ("token", "tls", "request", "response", "mailbox ops@example.com", "Bearer [redacted]"):
        assert word in out
    assert TOKEN not in res.output


def test_send_reports_202_and_sends_the_built_message(cli, profile, graph):
    res = cli("test", "send", "g", "--to", "alice@example.net", "--subject", "Diag", "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert stages(data)[-2:] == [("request", "ok"), ("response", "ok")]
    assert data["result"]["reply"].startswith("202") and data["result"]["route"] == "mime"
    [req] = graph.find("POST", r"/v1.0/me/sendMail")
    sent = email.message_from_bytes(decoded_mime(req), policy=email.policy.default)
    assert sent["Subject"] == "Diag" and sent["To"] == "alice@example.net" and sent["From"].addresses[0].addr_spec == MAILBOX
    assert TOKEN not in res.output


@pytest.mark.parametrize("reply, exit_code, words", [
    (graph_error(403, "ErrorSendAsDenied", "The user account which was used to submit this request does not have the right to send mail on behalf of the specified sending account."), 77, "Send As"),
    (graph_error(404, "MailboxNotEnabledForRESTAPI", "The mailbox is either inactive, soft-deleted, or is hosted on-premise."), 78, "licence"),
    (graph_error(403, "ErrorAccessDenied", "Access is denied. Check credentials and try again."), 77, "Mail.Send"),
    (graph_error(401, "InvalidAuthenticationToken", "Access token has expired or is not yet valid."), 77, "access_token"),
])
def test_send_failures_exit_codes_and_explanations(cli, profile, graph, reply, exit_code, words):
    graph.on("POST", r"/v1.0/me/sendMail", reply)
    res = cli("test", "send", "g", "--to", "alice@example.net", "--json")
    assert res.exit_code == exit_code, res.output
    data = json.loads(res.stdout)
    assert data["failed_stage"] == "response"
    failed = data["stages"][-1]
    assert failed["data"]["error_code"] == reply.body["error"]["code"] and failed["data"]["http_status"] == reply.status
    assert words in (data["hint"] or "") and data["explanation"]["fix"]
    assert "Hint:" in res.stderr and TOKEN not in res.output


def test_connect_401_is_exit_77(cli, profile, graph):
    graph.on("GET", r"/v1.0/me", graph_error(401, "InvalidAuthenticationToken", "Access token validation failure. Invalid audience."))
    res = cli("test", "connect", "g")
    assert res.exit_code == 77 and "FAILED" in res.stdout and TOKEN not in res.output


def test_connect_403_on_mailbox_read_is_only_a_note(cli, profile, graph):
    graph.on("GET", r"/v1.0/me", graph_error(403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation."))
    res = cli("test", "connect", "g", "--json")
    assert res.exit_code == 0, res.output
    assert "User.Read" in json.loads(res.stdout)["stages"][-1]["detail"]


def test_untrusted_certificate_fails_at_tls_with_69(cli, isolated_env, graph):
    keyring.set_password("mailctl", "g/access_token", TOKEN)
    write_profiles(isolated_env, {"g": {"type": "graph", "auth": "oauth", "username": MAILBOX, "tenant_id": TENANT,
                                        "client_id": CLIENT_ID, "graph_endpoint": graph.base_url}})
    res = cli("test", "connect", "g", "--json")
    assert res.exit_code == 69
    data = json.loads(res.stdout)
    assert data["failed_stage"] == "tls" and "certificate verify failed" in data["error"]
    assert data["certificates"] and data["tls"]["verification"].startswith("FAILED")
    assert graph.requests == []


def test_missing_token_fails_at_secret_stage_with_77(cli, isolated_env, graph, ca_pem):
    write_profiles(isolated_env, {"g": {"type": "graph", "auth": "oauth", "username": MAILBOX, "tenant_id": TENANT,
                                        "client_id": CLIENT_ID, "graph_endpoint": graph.base_url, "ca_file": ca_pem}})
    res = cli("test", "connect", "g", "--json")
    assert res.exit_code == 77
    data = json.loads(res.stdout)
    # nothing stored from `auth login`: a missing secret, found before any network call
    assert data["failed_stage"] == "secret" and "auth login g" in data["hint"]


def test_app_only_connect_and_send(cli, isolated_env, graph, idp, ca_pem):
    write_profiles(isolated_env, {"app": {"type": "graph", "auth": "client-credentials", "username": MAILBOX,
                                          "from_address": MAILBOX, "tenant_id": TENANT, "client_id": CLIENT_ID,
                                          "authority": idp.authority, "graph_endpoint": graph.base_url, "ca_file": ca_pem}})
    keyring.set_password("mailctl", "app/client_secret", CLIENT_SECRET)
    res = cli("test", "send", "app", "--to", "alice@example.net", "--json")
    assert res.exit_code == 0, res.output
    assert "client credentials" in json.loads(res.stdout)["stages"][0]["detail"]
    assert graph.find("POST", rf"/v1.0/users/{MAILBOX}/sendMail")
    assert CLIENT_SECRET not in res.output
    for req in graph.requests:
        assert req.headers["authorization"].removeprefix("Bearer ") not in res.output


def test_knowledge_entries_plug_into_the_shared_knowledge_base(monkeypatch):
    from mailctl.knowledge import http as http_knowledge, smtp as knowledge

    monkeypatch.setattr(knowledge, "KNOWLEDGE", list(knowledge.KNOWLEDGE))
    monkeypatch.setattr(http_knowledge, "_registered", False)
    http_knowledge.register_with_knowledge_base()
    graph = knowledge.explain(knowledge.Reply(http_status=403, error_code="ErrorAccessDenied", stage="sendMail"))
    ews = knowledge.explain(knowledge.Reply(http_status=200, error_code="ErrorAccessDenied", stage="CreateItem"))
    assert graph.id == "graph-ErrorAccessDenied" and "Mail.Send" in graph.fix
    assert ews.id == "ews-ErrorAccessDenied" and "EWS.AccessAsUser.All" in ews.fix
