"""oauth_provider = "generic": any OAuth 2.0 server, configured as SupportCenter Plus does
(client id, client secret, authorization URL, token URL, scope, redirect URL), tested
against tests/generic_idp.py, an authorization server shaped like neither Microsoft nor
Google. Covers the code flow with PKCE (loopback listener, paste-back, --no-wait then
--redirect-url), the device flow, refresh with rotation, client authentication (Basic,
form fallback, public client), revocation, token endpoint errors as one-line messages, and
SMTP over XOAUTH2 and OAUTHBEARER (RFC 7628) with the refresh-and-retry after a 535."""

from __future__ import annotations

import base64
import json
import threading
from contextlib import contextmanager

import keyring
import pytest
import requests
from aiosmtpd.smtp import MISSING, AuthResult

from generic_idp import CLIENT_SECRET, SCOPES, USER, GenericAS, generic_profile
from idp import ca_pem, resolved, trust_ca, write_profiles  # noqa: F401  (fixtures)
from mailctl.errors import AuthError, ConfigError, ProtocolError, TemporaryFailure
from mailctl.oauth import generic, get_access_token, provider_of
from mailctl.secrets import default_resolver
from smtpserver import RecordingHandler, RunningServer, ScriptedController, free_port


@pytest.fixture
def gas(trust_ca):
    server = GenericAS(trust_ca).start()
    yield server
    server.stop()


@pytest.fixture
def gp(isolated_env, gas, ca_pem):
    write_profiles(isolated_env, {"g": generic_profile(gas, ca_pem)}, default="g")
    keyring.set_password("mailctl", "g/client_secret", CLIENT_SECRET)
    return resolved(isolated_env, "g")


def browser(url: str, ca_pem: str, *, follow: bool = True) -> str:
    """What the user's browser does: open the authorization URL, follow the 302."""
    s = requests.Session()
    s.trust_env = False
    resp = s.get(url, verify=ca_pem, allow_redirects=False, timeout=10)
    assert resp.status_code == 302, resp.text
    location = resp.headers["Location"]
    if follow:
        s.get(location, timeout=10)
    return location


def secrets_of(gas, memory_keyring) -> set[str]:
    found = set(gas.access_tokens) | set(gas.refresh_tokens) | gas.spent_refresh_tokens | set(gas.codes) | {CLIENT_SECRET}
    found |= {v for (_s, u), v in memory_keyring.entries.items() if u.endswith("/client_secret")}
    return found


def assert_no_secrets(gas, memory_keyring, *results) -> None:
    for res in results:
        text = res.stdout + res.stderr
        for s in secrets_of(gas, memory_keyring):
            assert s not in text, f"a secret leaked into output: {s[:6]}..."
        assert "Traceback" not in text


def sign_in(gp, gas, ca_pem) -> None:
    login = generic.start_code_login(gp, default_resolver(), listen=False)
    generic.complete_login(login, browser(login.authorization_url, ca_pem, follow=False))


# --- the code flow ---------------------------------------------------------------------
def test_code_flow_loopback_pkce_basic_auth_refresh_rotation(gp, gas, ca_pem):
    assert provider_of(gp) == "generic"
    secrets = default_resolver()
    login = generic.start_code_login(gp, secrets)
    url = login.authorization_url
    assert url.startswith(gas.urls()["authorization_url"] + "?")
    assert "code_challenge_method=S256" in url and "response_type=code" in url and "scope=mail.submit+offline" in url
    assert CLIENT_SECRET not in url and login.listener is not None
    threading.Thread(target=browser, args=(url, ca_pem), daemon=True).start()
    result = generic.complete_login(login, generic.wait_for_redirect(login, timeout=10))
    assert result.refresh_token and result.scopes == list(SCOPES) and result.provider == "generic"
    # the code went with HTTP Basic client authentication, the secret never in the form
    exchange = [r for r in gas.requests if r[1] == "/as/token"]
    assert exchange[-1][2]["_basic"] and "client_secret" not in exchange[-1][2]
    token = get_access_token(gp, secrets)
    assert gas.check_access_token(token, USER)
    assert get_access_token(gp, secrets) == token  # fresh: no request
    first_rt = json.loads(keyring.get_password("mailctl", "g/oauth_tokens"))["refresh_token"]
    refreshed = get_access_token(gp, secrets, force_refresh=True)
    assert refreshed != token and gas.check_access_token(refreshed, USER)
    stored = json.loads(keyring.get_password("mailctl", "g/oauth_tokens"))
    assert stored["refresh_token"] != first_rt and first_rt in gas.spent_refresh_tokens  # rotation kept
    assert gas.check_access_token(get_access_token(gp, secrets, force_refresh=True), USER)  # the rotated one works


def test_paste_back_to_a_registered_https_redirect(isolated_env, gas, ca_pem):
    gas.registered_redirects = {"https://helpdesk.example.org/oauth/callback"}
    gas.allow_loopback_any_port = False
    write_profiles(isolated_env, {"g": generic_profile(gas, ca_pem, redirect_uri="https://helpdesk.example.org/oauth/callback")})
    keyring.set_password("mailctl", "g/client_secret", CLIENT_SECRET)
    gp = resolved(isolated_env, "g")
    login = generic.start_code_login(gp, default_resolver())
    assert login.listener is None and "paste" in (login.listen_error or "")
    location = browser(login.authorization_url, ca_pem, follow=False)
    assert location.startswith("https://helpdesk.example.org/oauth/callback?")
    lines = iter(["not it\n", location + "\n"])
    rejected: list[str] = []
    final = generic.wait_for_redirect(login, read_line=lambda: next(lines), timeout=10, on_rejected=rejected.append)
    assert rejected == ["not it"]
    generic.complete_login(login, final)
    assert gas.check_access_token(get_access_token(gp, default_resolver()), USER)


def test_cli_no_wait_then_redirect_url(cli, gp, gas, ca_pem, memory_keyring):
    first = cli("auth", "login", "g", "--no-wait", "--json")
    assert first.exit_code == 0, first.output
    event = json.loads(first.stdout.splitlines()[0])
    assert event["event"] == "authorization_url" and event["authorization_url"].startswith(gas.base)
    final = browser(event["authorization_url"], ca_pem, follow=False)
    wrong = cli("auth", "login", "g", "--redirect-url", final.replace("state=", "state=x"))
    assert wrong.exit_code == 77 and "another sign-in" in wrong.stderr
    second = cli("auth", "login", "g", "--redirect-url", final)
    assert second.exit_code == 0, second.output
    assert "signed in as carol@mail.example.org (generic, paste)" in second.stdout
    status = cli("auth", "status", "g", "--json")
    row = json.loads(status.stdout.splitlines()[0])
    assert status.exit_code == 0 and row["access"] and row["provider"] == "generic" and row["refresh_token"]
    token = cli("auth", "token", "g", "--no-check")
    assert token.exit_code == 0 and gas.check_access_token(token.stdout.strip(), USER)
    again = cli("auth", "login", "g", "--redirect-url", final)  # the pending sign-in is used up
    assert again.exit_code == 2 and "no OAuth sign-in in progress" in again.stderr
    assert_no_secrets(gas, memory_keyring, first, wrong, second, status, again)


def test_cli_device_flow(cli, gp, gas, memory_keyring):
    gas.device_script = ["authorization_pending", "approve"]
    res = cli("auth", "login", "g", "--flow", "device", "--json")
    assert res.exit_code == 0, res.output
    events = [json.loads(line) for line in res.stdout.splitlines()]
    assert events[0]["event"] == "device_code" and events[0]["user_code"] == "WDJB-MJHT"
    assert events[0]["verification_uri"] == f"{gas.base}/device" and "user_code=WDJB-MJHT" in events[0]["message"]
    assert events[-1]["event"] == "signed_in" and events[-1]["flow"] == "device" and events[-1]["refresh_token"]
    polls = [r for r in gas.requests if r[2].get("grant_type", "").endswith("device_code")]
    assert len(polls) == 2
    assert gas.check_access_token(get_access_token(gp, default_resolver()), USER)
    assert_no_secrets(gas, memory_keyring, res)


def test_device_flow_needs_its_endpoint_and_declines_cleanly(isolated_env, cli, gas, ca_pem):
    values = generic_profile(gas, ca_pem)
    values.pop("device_authorization_url")
    write_profiles(isolated_env, {"g": values})
    keyring.set_password("mailctl", "g/client_secret", CLIENT_SECRET)
    res = cli("auth", "login", "g", "--flow", "device")
    assert res.exit_code == 78 and "device_authorization_url" in res.stderr and "--device-authorization-url" in res.stderr
    write_profiles(isolated_env, {"g": generic_profile(gas, ca_pem)})
    gas.device_script = ["slow_down", "access_denied"]
    gp = resolved(isolated_env, "g")
    pending = generic.start_device_login(gp, default_resolver())
    slept: list[float] = []
    now = [0.0]

    def sleep(s):
        slept.append(s)
        now[0] += s

    with pytest.raises(AuthError) as exc:
        generic.finish_device_login(pending, sleep=sleep, clock=lambda: pending.expires_at - 500 + now[0])
    assert "declined" in exc.value.message and exc.value.hint == "start again: mailctl auth login g"
    assert sum(slept) >= 6  # slow_down added 5 s to the 1 s interval


# --- client authentication ------------------------------------------------------------------
def test_form_only_server_gets_the_secret_in_the_form_after_one_basic_refusal(gp, gas, ca_pem):
    gas.client_auth = "post"
    sign_in(gp, gas, ca_pem)
    assert json.loads(keyring.get_password("mailctl", "g/oauth_tokens"))["client_auth"] == "post"
    before = len(gas.requests)
    assert gas.check_access_token(get_access_token(gp, default_resolver(), force_refresh=True), USER)
    refresh = gas.requests[before:]
    assert len(refresh) == 1 and refresh[0][2]["client_secret"] == CLIENT_SECRET and not refresh[0][2]["_basic"]


def test_public_client_without_secret(isolated_env, gas, ca_pem):
    gas.client_auth = "public"
    write_profiles(isolated_env, {"g": generic_profile(gas, ca_pem)})
    gp = resolved(isolated_env, "g")
    sign_in(gp, gas, ca_pem)
    assert gas.basic_auth_seen == 0
    assert gas.check_access_token(get_access_token(gp, default_resolver(), force_refresh=True), USER)


def test_wrong_client_secret_is_one_line_with_the_fix(cli, gp, gas, ca_pem, memory_keyring):
    gas.client_secret = "the-real-one"
    first = cli("auth", "login", "g", "--no-wait", "--json")
    final = browser(json.loads(first.stdout.splitlines()[0])["authorization_url"], ca_pem, follow=False)
    res = cli("auth", "login", "g", "--redirect-url", final)
    assert res.exit_code == 77
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert lines[0].startswith("Error: profile 'g': exchanging the code for tokens failed: the authorization server "
                               "rejected the client") and "(invalid_client" in lines[0]
    assert "--client-secret-stdin" in res.stderr and "--client-id" in res.stderr
    assert_no_secrets(gas, memory_keyring, first, res)


# --- errors ---------------------------------------------------------------------------------
def test_refresh_token_revoked_at_the_server_says_login(cli, gp, gas, ca_pem, memory_keyring):
    sign_in(gp, gas, ca_pem)
    gas.refresh_tokens.clear()
    res = cli("auth", "token", "g", "--force-refresh")
    assert res.exit_code == 77 and res.stdout == ""
    assert "refreshing the access token failed: the sign-in is no longer valid" in res.stderr
    assert "(invalid_grant: refresh token unknown, spent or revoked)" in res.stderr
    assert "Hint: run: mailctl auth login g" in res.stderr
    doc = json.loads(keyring.get_password("mailctl", "g/oauth_tokens"))
    keyring.set_password("mailctl", "g/oauth_tokens", json.dumps({**doc, "expires_at": 1}))  # the access token ran out
    status = cli("auth", "status", "g")
    assert status.exit_code == 77 and "NEEDS LOGIN" in status.stdout and "invalid_grant" in status.stdout
    assert_no_secrets(gas, memory_keyring, res, status)


def test_invalid_scope_at_authorization(gp, gas, ca_pem, isolated_env):
    write_profiles(isolated_env, {"g": generic_profile(gas, ca_pem, scopes=["mail.submit", "admin"])})
    gp = resolved(isolated_env, "g")
    login = generic.start_code_login(gp, default_resolver(), listen=False)
    with pytest.raises(ConfigError) as exc:
        generic.complete_login(login, browser(login.authorization_url, ca_pem, follow=False))
    assert "refused the requested scopes (invalid_scope" in exc.value.message and "--scopes" in exc.value.hint


def test_token_endpoint_without_oauth_replies(gp, gas, ca_pem):
    sign_in(gp, gas, ca_pem)
    gas.token_status = 502
    with pytest.raises(TemporaryFailure, match="answered HTTP 502"):
        get_access_token(gp, default_resolver(), force_refresh=True)
    gas.token_status = 404
    with pytest.raises(ConfigError, match="nothing answers OAuth at that URL"):
        get_access_token(gp, default_resolver(), force_refresh=True)
    gas.token_status = 200
    with pytest.raises(ProtocolError, match="without an OAuth reply"):
        get_access_token(gp, default_resolver(), force_refresh=True)


def test_endpoints_must_be_https(isolated_env, cli, gas, ca_pem):
    write_profiles(isolated_env, {"g": generic_profile(gas, ca_pem, token_url=gas.urls()["token_url"].replace("https", "http"))})
    res = cli("auth", "login", "g", "--no-wait")
    assert res.exit_code == 78 and "token_url must be an https:// URL" in res.stderr and "Traceback" not in res.output
    res = cli("profile", "edit", "g", "--revocation-url", "http://127.0.0.1/revoke")
    assert res.exit_code != 0 and "revocation_url" in res.stderr
    values = generic_profile(gas, ca_pem)
    values.pop("token_url")
    write_profiles(isolated_env, {"g": values})
    res = cli("auth", "login", "g", "--no-wait")
    assert res.exit_code == 78 and "needs token_url" in res.stderr


def test_token_url_changed_since_sign_in_never_sends_the_refresh_token_elsewhere(isolated_env, gp, gas, ca_pem, trust_ca):
    sign_in(gp, gas, ca_pem)
    other = GenericAS(trust_ca).start()
    try:
        write_profiles(isolated_env, {"g": generic_profile(gas, ca_pem, token_url=other.urls()["token_url"])})
        with pytest.raises(AuthError, match="token_url changed"):
            get_access_token(resolved(isolated_env, "g"), default_resolver(), force_refresh=True)
        assert other.requests == []
    finally:
        other.stop()


def test_expires_in_missing_means_an_hour(gp, gas, ca_pem):
    gas.omit_expires_in = True
    sign_in(gp, gas, ca_pem)
    doc = json.loads(keyring.get_password("mailctl", "g/oauth_tokens"))
    assert doc["expires_at"] is None
    before = len(gas.requests)
    assert gas.check_access_token(get_access_token(gp, default_resolver()), USER)
    assert len(gas.requests) == before  # assumed fresh, not refreshed


# --- logout -----------------------------------------------------------------------------------
def test_logout_revokes_with_client_auth_and_without_url_says_so(cli, isolated_env, gp, gas, ca_pem, memory_keyring):
    sign_in(gp, gas, ca_pem)
    rt = json.loads(keyring.get_password("mailctl", "g/oauth_tokens"))["refresh_token"]
    res = cli("auth", "logout", "g")
    assert res.exit_code == 0 and "tokens removed and revoked" in res.stdout
    assert gas.revoked == [rt] and keyring.get_password("mailctl", "g/oauth_tokens") is None
    revoke = [r for r in gas.requests if r[1] == "/as/revoke"][0][2]
    assert revoke["token_type_hint"] == "refresh_token" and revoke["_basic"]
    values = generic_profile(gas, ca_pem)
    values.pop("revocation_url")
    write_profiles(isolated_env, {"g": values})
    sign_in(resolved(isolated_env, "g"), gas, ca_pem)
    res2 = cli("auth", "logout", "g")
    assert res2.exit_code == 0 and "no revocation_url" in res2.stderr and len(gas.revoked) == 1
    assert_no_secrets(gas, memory_keyring, res, res2)


# --- SMTP: XOAUTH2 and OAUTHBEARER ---------------------------------------------------------------
class BearerHandler(RecordingHandler):
    """XOAUTH2 and OAUTHBEARER (RFC 7628) accepted for live tokens of the authorization server."""

    def __init__(self, gas):
        super().__init__()
        self.gas = gas
        self.bearer_fields: list[dict[str, str]] = []
        self.failure_answers: list[bytes] = []

    async def auth_XOAUTH2(self, server, args):
        text = base64.b64decode(args[1]).decode()
        fields = dict(p.split("=", 1) for p in text.split("\x01") if "=" in p)
        ok = self.gas.check_access_token(fields.get("auth", "").removeprefix("Bearer "), fields.get("user"))
        self.attempts_auth.append(("XOAUTH2", ok))
        if ok:
            return AuthResult(success=True, auth_data=fields["user"])
        return AuthResult(success=False, handled=False, message="535 5.7.8 Authentication credentials invalid")

    async def auth_OAUTHBEARER(self, server, args):
        if len(args) < 2:
            blob = await server.challenge_auth("", encode_to_b64=False)
            if blob is MISSING:
                return AuthResult(success=False, handled=True)
        else:
            blob = args[1].encode()
        gs2, _, rest = base64.b64decode(blob).decode().partition("\x01")
        fields = dict(p.split("=", 1) for p in rest.split("\x01") if "=" in p)
        fields["gs2"] = gs2
        self.bearer_fields.append(fields)
        user = gs2.removeprefix("n,a=").rstrip(",")
        ok = self.gas.check_access_token(fields.get("auth", "").removeprefix("Bearer "), user)
        self.attempts_auth.append(("OAUTHBEARER", ok))
        if ok:
            return AuthResult(success=True, auth_data=user)
        # RFC 7628 3.2.2: the error as a JSON challenge; the client answers with one ^A
        status = json.dumps({"status": "invalid_token", "scope": "mail.submit"}).encode()
        answer = await server.challenge_auth(status)
        self.failure_answers.append(answer)
        return AuthResult(success=False, handled=False, message="535 5.7.8 Authentication credentials invalid")


@contextmanager
def bearer_smtp(trust_ca, handler, *, exclude=()):
    import ssl

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trust_ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    port = free_port()
    controller = ScriptedController(handler, hostname="127.0.0.1", port=port, server_hostname="mail.test",
                                    tls_context=ctx, authenticator=handler.authenticator, auth_require_tls=True,
                                    auth_exclude_mechanism=list(exclude))
    controller.start()
    try:
        yield RunningServer("127.0.0.1", port, handler, controller, "starttls")
    finally:
        controller.stop()


@pytest.mark.parametrize("offered, expected", [(("XOAUTH2",), "OAUTHBEARER"), ((), "XOAUTH2")])
def test_smtp_send_refresh_and_retry_over_each_mechanism(cli, isolated_env, gas, trust_ca, ca_pem, memory_keyring,
                                                          offered, expected):
    """XOAUTH2 when offered, else OAUTHBEARER; a token the server dropped early gets a 535,
    one refresh, and the AUTH again."""
    handler = BearerHandler(gas)
    with bearer_smtp(trust_ca, handler, exclude=offered) as srv:
        write_profiles(isolated_env, {"g": generic_profile(gas, ca_pem, port=srv.port, security="starttls",
                                                           from_address=USER)}, default="g")
        keyring.set_password("mailctl", "g/client_secret", CLIENT_SECRET)
        sign_in(resolved(isolated_env, "g"), gas, ca_pem)
        send = cli("test", "send", "--to", "dave@example.net", "--transcript")
        assert send.exit_code == 0, send.output
        assert handler.attempts_auth == [(expected, True)] and len(srv.messages) == 1
        gas.expire_access_tokens()
        send2 = cli("test", "send", "--to", "dave@example.net", "--transcript")
        assert send2.exit_code == 0, send2.output
        assert handler.attempts_auth[-2:] == [(expected, False), (expected, True)] and len(srv.messages) == 2
        if expected == "OAUTHBEARER":
            first = handler.bearer_fields[0]
            assert first["gs2"] == f"n,a={USER}," and first["host"] == "127.0.0.1" and first["port"] == str(srv.port)
            assert handler.failure_answers == [b"\x01"]
        assert f"AUTH {expected}" in send.stdout + send.stderr
        assert_no_secrets(gas, memory_keyring, send, send2)


def test_auth_mechanism_oauthbearer_is_honoured_when_both_are_offered(cli, isolated_env, gas, trust_ca, ca_pem):
    handler = BearerHandler(gas)
    with bearer_smtp(trust_ca, handler) as srv:
        write_profiles(isolated_env, {"g": generic_profile(gas, ca_pem, port=srv.port, security="starttls", from_address=USER,
                                                           auth_mechanism="OAUTHBEARER")}, default="g")
        keyring.set_password("mailctl", "g/client_secret", CLIENT_SECRET)
        sign_in(resolved(isolated_env, "g"), gas, ca_pem)
        send = cli("test", "send", "--to", "dave@example.net")
        assert send.exit_code == 0, send.output
        assert handler.attempts_auth == [("OAUTHBEARER", True)]


def test_oauthbearer_string_escapes_the_authzid():
    from mailctl.oauth import oauthbearer_string

    assert oauthbearer_string("a,b=c@x", "T", host="h", port=587) == "n,a=a=2Cb=3Dc@x,\x01host=h\x01port=587\x01auth=Bearer T\x01\x01"
    assert oauthbearer_string("u@x", "T") == "n,a=u@x,\x01auth=Bearer T\x01\x01"


def test_app_only_auth_is_refused_with_the_field(cli, isolated_env, gas, ca_pem):
    write_profiles(isolated_env, {"g": generic_profile(gas, ca_pem, auth="client-credentials")})
    keyring.set_password("mailctl", "g/client_secret", CLIENT_SECRET)
    for args in (("auth", "login", "g"), ("auth", "token", "g")):
        res = cli(*args)
        assert res.exit_code == 78 and "auth = client-credentials is not available with oauth_provider = generic" in res.stderr
        assert "--auth oauth" in res.stderr and "Traceback" not in res.output


def test_google_and_generic_share_one_redirect_listener():
    from mailctl.oauth import google, loopback

    assert google.wait_for_redirect is loopback.wait_for_redirect is generic.wait_for_redirect
    assert not hasattr(google, "_Listener")
