"""`mailctl test connect` / `test send` on ews profiles through the CLI against the local
Exchange fake: stages, the Exchange Online warning, redaction and exit codes."""

from __future__ import annotations

import base64
import json

import keyring
import pytest

from httpfakes import (
    FakeHTTPS, Reply, create_item_error, create_item_ok, ews_fake, soap_envelope, soap_fault, soap_mime_content,
    soap_operation, M_NS, T_NS,
)
from idp import ca_pem, trust_ca, write_profiles  # noqa: F401

MAILBOX = "ops@corp.example"
PASSWORD = "Summer2026!-secret"
EWS_PATH = "/EWS/Exchange.asmx"


def get_folder_ok() -> Reply:
    return Reply(200, soap_envelope(
        f'<m:GetFolderResponse xmlns:m="{M_NS}" xmlns:t="{T_NS}"><m:ResponseMessages>'
        '<m:GetFolderResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode><m:Folders>'
        '<t:Folder><t:FolderId Id="AAMkSENT=" ChangeKey="AQAAAA=="/><t:ParentFolderId Id="AAMkROOT=" ChangeKey="AQAAAA=="/>'
        "<t:FolderClass>IPF.Note</t:FolderClass><t:DisplayName>Sent Items</t:DisplayName><t:TotalCount>12</t:TotalCount>"
        "<t:ChildFolderCount>0</t:ChildFolderCount><t:UnreadCount>0</t:UnreadCount></t:Folder>"
        "</m:Folders></m:GetFolderResponseMessage></m:ResponseMessages></m:GetFolderResponse>"
    ), {"Content-Type": "text/xml; charset=utf-8"})


@pytest.fixture
def srv(trust_ca):
    with FakeHTTPS(trust_ca) as server:
        yield server


def setup(home, srv, ca_pem, create_item=None, **values):
    ews_fake(srv, basic=(MAILBOX, PASSWORD), create_item=create_item)
    inner = srv.dispatch

    def dispatch(rec):
        good = "Basic " + base64.b64encode(f"{MAILBOX}:{PASSWORD}".encode()).decode()
        if soap_operation(rec.body) == "GetFolder" and rec.headers.get("authorization") == good:
            return get_folder_ok()
        return inner(rec)

    srv.dispatch = dispatch
    keyring.set_password("mailctl", "e/password", PASSWORD)
    base = {"type": "ews", "auth": "password", "username": MAILBOX, "from_address": MAILBOX,
            "ews_url": srv.base_url + EWS_PATH, "ca_file": ca_pem}
    base.update(values)
    write_profiles(home, {"e": base}, default="e")


def stages(data):
    return [(s["stage"], s["status"]) for s in data["stages"]]


def test_connect_stages_and_getfolder(cli, isolated_env, srv, ca_pem):
    setup(isolated_env, srv, ca_pem)
    res = cli("test", "connect", "e", "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert stages(data) == [("secret", "ok"), ("connect", "ok"), ("tls", "ok"), ("request", "ok"), ("response", "ok")]
    assert "keyring" in data["stages"][0]["detail"] and "Sent Items" in data["stages"][-1]["detail"]
    assert data["settings"]["warnings"] == []
    assert PASSWORD not in res.output


def test_send_posts_createitem_and_reports_noerror(cli, isolated_env, srv, ca_pem):
    setup(isolated_env, srv, ca_pem)
    res = cli("test", "send", "e", "--to", "alice@example.net", "--subject", "EWS diag")
    assert res.exit_code == 0, res.output
    assert "NoError (CreateItem SendAndSaveCopy)" in res.stdout
    [req] = [r for r in srv.requests if soap_operation(r.body) == "CreateItem"]
    assert b"Subject: EWS diag" in soap_mime_content(req.body)
    assert PASSWORD not in res.output


@pytest.mark.parametrize("reply, exit_code", [
    (create_item_error("ErrorInvalidRecipients", "At least one recipient isn't valid."), 1),
    (create_item_error("ErrorAccessDenied", "Access is denied. Check credentials and try again."), 77),
    (soap_fault("ErrorServerBusy", "The server cannot service this request right now. Try again later."), 75),
])
def test_send_failure_exit_codes(cli, isolated_env, srv, ca_pem, reply, exit_code):
    setup(isolated_env, srv, ca_pem, create_item=reply)
    res = cli("test", "send", "e", "--to", "alice@example.net", "--json")
    assert res.exit_code == exit_code, res.output
    data = json.loads(res.stdout)
    assert data["failed_stage"] == "response" and data["explanation"]["id"].startswith("ews-")
    assert PASSWORD not in res.output


def test_wrong_password_exit_77(cli, isolated_env, srv, ca_pem):
    setup(isolated_env, srv, ca_pem)
    keyring.set_password("mailctl", "e/password", "wrong-password-000")
    res = cli("test", "connect", "e")
    assert res.exit_code == 77 and "wrong-password-000" not in res.output


def test_missing_password_fails_at_secret_stage(cli, isolated_env, srv, ca_pem):
    setup(isolated_env, srv, ca_pem)
    keyring.delete_password("mailctl", "e/password")
    res = cli("test", "connect", "e", "--json")
    assert res.exit_code == 77 and json.loads(res.stdout)["failed_stage"] == "secret"
    assert srv.requests == []


def test_exchange_online_url_warns_in_test_connect(cli, isolated_env):
    keyring.set_password("mailctl", "o/access_token", "tok-not-used-123")
    write_profiles(isolated_env, {"o": {"type": "ews", "auth": "oauth", "username": MAILBOX,
                                        "ews_url": "https://outlook.office365.com/EWS/Exchange.asmx",
                                        # no internet in tests: through a proxy the connect stage is folded
                                        # into the request, and --quit-after auth stops before it
                                        "proxy": "http://127.0.0.1:9"}})
    res = cli("test", "connect", "o", "--quit-after", "auth", "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["stages"][0]["stage"] == "lint" and "October 2026" in data["stages"][0]["detail"]
    assert any("October 2026" in w for w in data["settings"]["warnings"])
    assert "tok-not-used-123" not in res.output
