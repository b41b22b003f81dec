"""The `secret` stage of the HTTP transports (graph, ews) in `mailctl test connect/send`:
what the token needs is read from the secret store and timed on its own, before the `token`
stage talks to the identity provider (tests/idp.py) and the API fake (tests/httpfakes.py).
A missing, locked or failing secret store fails at `secret` with no network call."""

from __future__ import annotations

import base64
import json
import sys

import keyring
import pytest
from keyring.errors import KeyringLocked

from httpfakes import FakeHTTPS, Reply, create_item_ok, ews_fake, graph_fake, soap_envelope, soap_operation, M_NS, T_NS
from idp import CLIENT_ID, CLIENT_SECRET, TENANT, ca_pem, idp, trust_ca, write_profiles  # noqa: F401

MAILBOX = "ops@example.com"
STATIC = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.static-token-SECRET-4711"
PASSWORD = "Winter2026!-ews-secret"
EWS_PATH = "/EWS/Exchange.asmx"


@pytest.fixture
def graph(trust_ca):
    with FakeHTTPS(trust_ca) as srv:
        yield graph_fake(srv)


def app_profile(home, idp, graph, ca_pem, **over):
    values = {"type": "graph", "auth": "client-credentials", "username": MAILBOX, "from_address": MAILBOX,
              "tenant_id": TENANT, "client_id": CLIENT_ID, "authority": idp.authority,
              "graph_endpoint": graph.base_url, "ca_file": ca_pem}
    values.update(over)
    write_profiles(home, {"app": values}, default="app")


def probe(cli, *args):
    res = cli("test", *args, "--json")
    return res, json.loads(res.stdout) if res.stdout.strip() else None


def names(data):
    return [(s["stage"], s["status"]) for s in data["stages"]]


def stage(data, name):
    [found] = [s for s in data["stages"] if s["stage"] == name]
    return found


def token_posts(idp):
    return [r for r in idp.requests if r[0] == "POST" and r[2].get("grant_type") == "client_credentials"]


def assert_no_secret(res, *secrets):
    for value in secrets:
        assert value not in res.stdout and value not in res.stderr


def test_client_credentials_secret_then_token_then_the_api(cli, isolated_env, idp, graph, ca_pem):
    app_profile(isolated_env, idp, graph, ca_pem)
    keyring.set_password("mailctl", "app/client_secret", CLIENT_SECRET)
    res, data = probe(cli, "connect", "app")
    assert res.exit_code == 0, res.output
    assert names(data) == [("secret", "ok"), ("token", "ok"), ("connect", "ok"), ("tls", "ok"),
                           ("request", "ok"), ("response", "ok")]
    assert all(isinstance(s["duration_seconds"], float) and s["duration_seconds"] >= 0 for s in data["stages"])
    secret = stage(data, "secret")
    assert secret["data"]["kind"] == "client_secret" and secret["data"]["source"] == "keyring:app"
    assert secret["data"]["token_cache"] is None and "client_secret from keyring:app" in secret["detail"]
    token = stage(data, "token")
    assert token["data"]["new_token"] is True and token["data"]["static"] is False
    assert token["server"] == f"127.0.0.1:{idp.port}"
    assert len(token_posts(idp)) == 1  # one token per probe: the request used the token stage's
    [req] = graph.requests
    bearer = req.headers["authorization"].removeprefix("Bearer ")
    assert idp.check_access_token(bearer, f"app:{CLIENT_ID}")
    assert_no_secret(res, CLIENT_SECRET, bearer)

    # the token was cached in the keyring: the next probe reads it at `secret` and says so at `token`
    idp.requests.clear()
    res, data = probe(cli, "connect", "app")
    assert res.exit_code == 0, res.output
    assert stage(data, "secret")["data"]["token_cache"] == "keyring:app"
    token = stage(data, "token")
    assert token["data"]["new_token"] is False and "cached token still valid: no new token requested" in token["detail"]
    assert token_posts(idp) == []
    assert_no_secret(res, CLIENT_SECRET, bearer)


def test_missing_client_secret_fails_at_secret_without_network(cli, isolated_env, idp, graph, ca_pem):
    app_profile(isolated_env, idp, graph, ca_pem)
    res, data = probe(cli, "connect", "app")
    assert res.exit_code == 77, res.output
    assert data["failed_stage"] == "secret" and names(data) == [("secret", "failed")]
    assert "no client secret stored" in data["error"] and "MAILCTL_SECRET_APP_CLIENT_SECRET" in data["hint"]
    assert idp.requests == [] and graph.requests == []
    human = cli("test", "connect", "app")
    assert human.exit_code == 77 and "secret" in human.stdout and "Hint:" in human.stderr


def test_failing_secret_command_fails_at_secret(cli, isolated_env, idp, graph, ca_pem):
    command = f"{sys.executable} -c \"import sys; print('{CLIENT_SECRET}', file=sys.stderr); sys.exit(3)\""
    app_profile(isolated_env, idp, graph, ca_pem, secret_command=command)
    res, data = probe(cli, "connect", "app")
    assert res.exit_code == 78, res.output
    assert data["failed_stage"] == "secret" and "secret_command exited with status 3" in data["error"]
    assert idp.requests == [] and graph.requests == []
    assert_no_secret(res, CLIENT_SECRET)


def test_slow_secret_command_is_timed_at_secret_and_run_once(cli, isolated_env, idp, graph, ca_pem, tmp_path):
    runs = tmp_path / "runs"
    code = f"import time; open({str(runs)!r}, 'a').write('x'); time.sleep(0.6); print({CLIENT_SECRET!r})"
    app_profile(isolated_env, idp, graph, ca_pem, secret_command=f'{sys.executable} -c "{code}"', timeout=10)
    res, data = probe(cli, "connect", "app")
    assert res.exit_code == 0, res.output
    secret, token = stage(data, "secret"), stage(data, "token")
    assert secret["duration_seconds"] >= 0.55 and token["duration_seconds"] < 0.5
    assert secret["data"]["source"] == "secret_command:app"
    assert runs.read_text() == "x"  # the token stage and the request reused what `secret` read
    assert token["data"]["new_token"] is True
    assert_no_secret(res, CLIENT_SECRET)


class LockedKeyring(keyring.backend.KeyringBackend):
    priority = 1

    def get_password(self, service, username):
        raise KeyringLocked("the collection is locked")

    def set_password(self, service, username, password):
        raise KeyringLocked("the collection is locked")

    def delete_password(self, service, username):
        raise KeyringLocked("the collection is locked")


def test_locked_keyring_fails_at_secret_not_at_the_identity_provider(cli, isolated_env, idp, graph, ca_pem):
    app_profile(isolated_env, idp, graph, ca_pem)
    keyring.set_keyring(LockedKeyring())  # isolated_env puts its own back afterwards
    res, data = probe(cli, "connect", "app")
    assert res.exit_code == 78, res.output
    assert data["failed_stage"] == "secret" and "keyring is locked" in data["error"]
    assert "secret_command" in data["hint"] and "unlock" in data["hint"]
    assert idp.requests == [] and graph.requests == []


def test_static_access_token_needs_no_identity_provider(cli, isolated_env, idp, graph, ca_pem):
    app_profile(isolated_env, idp, graph, ca_pem, auth="oauth")
    keyring.set_password("mailctl", "app/access_token", STATIC)
    res, data = probe(cli, "connect", "app")
    assert res.exit_code == 0, res.output
    assert [n for n, _ in names(data)][:2] == ["secret", "token"]
    assert stage(data, "secret")["data"] == {"auth": "oauth", "kind": "access_token", "source": "keyring:app"}
    token = stage(data, "token")
    assert token["data"]["static"] is True and token["data"]["new_token"] is False
    assert "static access_token" in token["detail"] and "no identity provider call" in token["detail"]
    assert idp.requests == []
    [req] = graph.requests
    assert req.headers["authorization"] == f"Bearer {STATIC}"
    assert_no_secret(res, STATIC)
    human = cli("test", "connect", "app")
    assert human.exit_code == 0 and "secret" in human.stdout
    assert_no_secret(human, STATIC)


def test_static_token_from_the_environment_says_so(cli, isolated_env, idp, graph, ca_pem, monkeypatch):
    app_profile(isolated_env, idp, graph, ca_pem, auth="oauth")
    monkeypatch.setenv("MAILCTL_SECRET_APP_ACCESS_TOKEN", STATIC)
    res, data = probe(cli, "connect", "app")
    assert res.exit_code == 0, res.output
    assert stage(data, "secret")["data"]["source"].startswith("env")
    assert idp.requests == []
    assert_no_secret(res, STATIC)


def test_not_signed_in_fails_at_secret_with_the_login_fix(cli, isolated_env, idp, graph, ca_pem):
    app_profile(isolated_env, idp, graph, ca_pem, auth="oauth")
    res, data = probe(cli, "connect", "app")
    assert res.exit_code == 77, res.output
    assert data["failed_stage"] == "secret" and "mailctl auth login app" in data["hint"]
    assert idp.requests == [] and graph.requests == []


@pytest.mark.parametrize("quit_after, expected", [
    ("secret", ["secret"]),
    ("token", ["secret", "token"]),
])
def test_quit_after_secret_and_token(cli, isolated_env, idp, graph, ca_pem, quit_after, expected):
    app_profile(isolated_env, idp, graph, ca_pem)
    keyring.set_password("mailctl", "app/client_secret", CLIENT_SECRET)
    res, data = probe(cli, "send", "app", "--to", "x@example.net", "--quit-after", quit_after)
    assert res.exit_code == 0, res.output
    assert [n for n, _ in names(data)] == expected
    assert graph.requests == []  # nothing sent
    assert (token_posts(idp) == []) == (quit_after == "secret")


def test_quit_after_secret_is_refused_for_smtp(cli, isolated_env):
    write_profiles(isolated_env, {"s": {"type": "smtp", "host": "127.0.0.1", "port": 2525, "security": "none", "auth": "none"}})
    res = cli("test", "connect", "s", "--quit-after", "secret")
    assert res.exit_code == 2 and "graph and ews" in res.stderr and "--quit-after auth" in res.stderr


# --- EWS with a password: the `credentials` stage is now `secret` ---------------------------
def get_folder_ok() -> Reply:
    return Reply(200, soap_envelope(
        f'<m:GetFolderResponse xmlns:m="{M_NS}" xmlns:t="{T_NS}"><m:ResponseMessages>'
        '<m:GetFolderResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode><m:Folders>'
        '<t:Folder><t:FolderId Id="AAMkSENT=" ChangeKey="AQAAAA=="/><t:ParentFolderId Id="AAMkROOT=" ChangeKey="AQAAAA=="/>'
        "<t:FolderClass>IPF.Note</t:FolderClass><t:DisplayName>Sent Items</t:DisplayName><t:TotalCount>1</t:TotalCount>"
        "<t:ChildFolderCount>0</t:ChildFolderCount><t:UnreadCount>0</t:UnreadCount></t:Folder>"
        "</m:Folders></m:GetFolderResponseMessage></m:ResponseMessages></m:GetFolderResponse>"
    ), {"Content-Type": "text/xml; charset=utf-8"})


@pytest.fixture
def ews(trust_ca, isolated_env, ca_pem):
    with FakeHTTPS(trust_ca) as srv:
        ews_fake(srv, basic=(MAILBOX, PASSWORD))
        inner = srv.dispatch
        good = "Basic " + base64.b64encode(f"{MAILBOX}:{PASSWORD}".encode()).decode()

        def dispatch(rec):
            if soap_operation(rec.body) == "GetFolder" and rec.headers.get("authorization") == good:
                return get_folder_ok()
            return inner(rec)

        srv.dispatch = dispatch
        write_profiles(isolated_env, {"e": {"type": "ews", "auth": "password", "username": MAILBOX, "from_address": MAILBOX,
                                            "ews_url": srv.base_url + EWS_PATH, "ca_file": ca_pem}}, default="e")
        yield srv


def test_ews_password_is_the_secret_stage(cli, ews):
    keyring.set_password("mailctl", "e/password", PASSWORD)
    res, data = probe(cli, "connect", "e")
    assert res.exit_code == 0, res.output
    assert names(data) == [("secret", "ok"), ("connect", "ok"), ("tls", "ok"), ("request", "ok"), ("response", "ok")]
    secret = stage(data, "secret")
    assert secret["detail"] == f"password for {MAILBOX} from keyring:e"
    assert secret["data"] == {"auth": "password", "kind": "password", "source": "keyring:e"}
    assert_no_secret(res, PASSWORD)


@pytest.mark.parametrize("quit_after", ["secret", "token"])  # token: what stopped after `credentials` before
def test_ews_quit_after_secret_or_token_stops_before_any_request(cli, ews, quit_after):
    keyring.set_password("mailctl", "e/password", PASSWORD)
    res, data = probe(cli, "send", "e", "--to", "x@example.net", "--quit-after", quit_after)
    assert res.exit_code == 0, res.output
    assert names(data) == [("secret", "ok")] and ews.requests == []


def test_ews_missing_password_fails_at_secret(cli, ews):
    res, data = probe(cli, "connect", "e")
    assert res.exit_code == 77 and data["failed_stage"] == "secret"
    assert "--password-stdin" in data["hint"] and ews.requests == []


# --- a real Secret Service (gnome-keyring-daemon in the D-Bus session) ---------------------
@pytest.fixture(scope="module")
def secret_service_daemon():
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent / "integration"))
    from integration_services import running_secret_service, secret_service_skip_reason

    reason = secret_service_skip_reason()
    if reason:
        pytest.skip(reason)
    with running_secret_service() as svc:
        yield svc


@pytest.fixture
def secret_service(secret_service_daemon, monkeypatch):
    from keyring.backends import SecretService as SecretServiceBackend

    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", secret_service_daemon.bus_address)
    keyring.set_keyring(SecretServiceBackend.Keyring())  # isolated_env puts its own back afterwards
    yield
    for user in ("app/client_secret", "app/oauth_tokens"):
        try:
            keyring.delete_password("mailctl", user)
        except keyring.errors.PasswordDeleteError:
            pass


@pytest.mark.integration
def test_client_secret_from_a_real_secret_service(cli, isolated_env, idp, graph, ca_pem, secret_service):
    app_profile(isolated_env, idp, graph, ca_pem)
    keyring.set_password("mailctl", "app/client_secret", CLIENT_SECRET)
    res, data = probe(cli, "connect", "app")
    assert res.exit_code == 0, res.output
    assert [n for n, _ in names(data)][:2] == ["secret", "token"]
    assert stage(data, "secret")["data"]["source"] == "keyring:app"
    assert stage(data, "token")["data"]["new_token"] is True
    assert keyring.get_password("mailctl", "app/oauth_tokens")  # the app token was cached in gnome-keyring
    [req] = graph.requests
    assert_no_secret(res, CLIENT_SECRET, req.headers["authorization"].removeprefix("Bearer "))


def test_ews_client_credentials_secret_token_then_createitem(cli, isolated_env, idp, trust_ca, ca_pem):
    seen = []
    with FakeHTTPS(trust_ca) as srv:
        def create(rec):
            seen.append(rec.headers.get("authorization", "").removeprefix("Bearer "))
            return create_item_ok()

        srv.on("POST", EWS_PATH, create)
        write_profiles(isolated_env, {"app": {
            "type": "ews", "auth": "client-credentials", "provider": "microsoft365", "username": MAILBOX,
            "from_address": MAILBOX, "tenant_id": TENANT, "client_id": CLIENT_ID, "authority": idp.authority,
            "ews_url": srv.base_url + EWS_PATH, "ca_file": ca_pem}}, default="app")
        keyring.set_password("mailctl", "app/client_secret", CLIENT_SECRET)
        res, data = probe(cli, "send", "app", "--to", "alice@example.net")
    assert res.exit_code == 0, res.output
    assert names(data) == [("secret", "ok"), ("token", "ok"), ("connect", "ok"), ("tls", "ok"),
                           ("request", "ok"), ("response", "ok")]
    assert stage(data, "token")["data"]["new_token"] is True
    assert len(token_posts(idp)) == 1  # open() built its credentials from the token the stage stored
    assert seen and idp.check_access_token(seen[0], f"app:{CLIENT_ID}")
    assert_no_secret(res, CLIENT_SECRET, seen[0])
