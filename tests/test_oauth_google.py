"""Google flows against the local HTTPS identity provider: loopback redirect with PKCE (the
"browser" step performed by the test), pasted address, device flow refusal, refresh,
service account with domain-wide delegation, revocation."""

from __future__ import annotations

import json
import threading

import keyring
import pytest
import requests

from idp import (  # noqa: F401  (fixtures)
    GOOGLE_CLIENT_SECRET, USER, ca_pem, google_profile, google_service_account_key, idp, resolved, trust_ca,
    write_profiles,
)
from mailctl.errors import AuthError, UsageError
from mailctl.oauth import get_access_token, google
from mailctl.secrets import default_resolver


@pytest.fixture
def gp(isolated_env, idp, ca_pem):
    write_profiles(isolated_env, {"g": google_profile(idp, ca_pem)})
    keyring.set_password("mailctl", "g/client_secret", GOOGLE_CLIENT_SECRET)
    return resolved(isolated_env, "g")


def browser(url: str, ca_pem: str, *, follow: bool = True) -> str:
    """What a browser does: open the authorization URL, follow the redirect to localhost."""
    s = requests.Session()
    s.trust_env = False
    resp = s.get(url, verify=ca_pem, allow_redirects=False, timeout=10)
    assert resp.status_code == 302, resp.text
    location = resp.headers["Location"]
    if follow:
        s.get(location, timeout=10)  # reaches mailctl's loopback listener
    return location


def test_loopback_redirect_reaches_listener(gp, idp, ca_pem):
    secrets = default_resolver()
    login = google.start_loopback_login(gp, secrets)
    assert "access_type=offline" in login.authorization_url and "prompt=consent" in login.authorization_url
    assert "code_challenge_method=S256" in login.authorization_url
    threading.Thread(target=browser, args=(login.authorization_url, ca_pem), daemon=True).start()
    final = google.wait_for_redirect(login, timeout=10)
    result = google.complete_login(login, final)
    assert result.refresh_token and result.scopes == ["https://mail.google.com/"]
    token = get_access_token(gp, secrets)
    assert idp.check_access_token(token, USER)
    refreshed = get_access_token(gp, secrets, force_refresh=True)
    assert refreshed != token and idp.check_access_token(refreshed, USER)


def test_pasted_address(gp, idp, ca_pem):
    secrets = default_resolver()
    login = google.start_loopback_login(gp, secrets, listen=False)
    location = browser(login.authorization_url, ca_pem, follow=False)
    lines = iter(["\n", "oops, wrong thing\n", location + "\n"])
    rejected = []
    final = google.wait_for_redirect(login, read_line=lambda: next(lines), timeout=10, on_rejected=rejected.append)
    assert rejected == ["oops, wrong thing"]
    google.complete_login(login, final)
    assert idp.check_access_token(get_access_token(gp, secrets), USER)


def test_paste_with_wrong_state_or_error(gp, idp, ca_pem):
    secrets = default_resolver()
    login = google.start_loopback_login(gp, secrets, listen=False)
    with pytest.raises(AuthError, match="another sign-in"):
        google.complete_login(login, "http://localhost:1/?state=other&code=x")
    with pytest.raises(UsageError):
        google.complete_login(login, "hello")
    idp.authorize_error = "access_denied"
    location = browser(login.authorization_url, ca_pem, follow=False)
    with pytest.raises(AuthError, match="declined"):
        google.complete_login(login, location)


def test_device_flow_invalid_scope_names_working_flows(gp):
    with pytest.raises(AuthError) as exc:
        google.start_device_login(gp, default_resolver())
    assert "invalid_scope" in exc.value.message and "device flow" in exc.value.message
    assert "--flow paste" in exc.value.hint and "service account" in exc.value.hint


def test_device_flow_when_scope_allowed(gp, idp):
    idp.google_device_scope_ok = True
    idp.device_script = ["authorization_pending", "slow_down", "approve"]
    login = google.start_device_login(gp, default_resolver())
    now = [0.0]

    def sleep(s):
        now[0] += s

    result = google.finish_device_login(login, sleep=sleep, clock=lambda: login.expires_at - 800 + now[0])
    assert result.refresh_token and idp.check_access_token(get_access_token(gp, default_resolver()), USER)


def test_revoked_refresh_token_says_login(gp, idp, ca_pem):
    secrets = default_resolver()
    login = google.start_loopback_login(gp, secrets, listen=False)
    google.complete_login(login, browser(login.authorization_url, ca_pem, follow=False))
    idp.refresh_tokens.clear()
    with pytest.raises(AuthError) as exc:
        get_access_token(gp, secrets, force_refresh=True)
    assert exc.value.exit_code == 77 and "mailctl auth login g" in exc.value.hint
    assert "no longer valid" in exc.value.message


def test_logout_revokes(gp, idp, ca_pem):
    secrets = default_resolver()
    login = google.start_loopback_login(gp, secrets, listen=False)
    google.complete_login(login, browser(login.authorization_url, ca_pem, follow=False))
    rt = json.loads(keyring.get_password("mailctl", "g/oauth_tokens"))["refresh_token"]
    out = google.logout(gp, secrets)
    assert out["revoked"] and out["removed"] and idp.revoked == [rt]
    assert keyring.get_password("mailctl", "g/oauth_tokens") is None
    with pytest.raises(AuthError, match="not signed in"):
        get_access_token(gp, secrets)


def test_service_account_subject_is_the_mailbox(isolated_env, idp, ca_pem):
    write_profiles(isolated_env, {"sa": google_profile(idp, ca_pem, auth="service-account", username="bob@corp.example")})
    sa = resolved(isolated_env, "sa")
    keyring.set_password("mailctl", "sa/service_account_key", google_service_account_key(idp))
    secrets = default_resolver()
    token = get_access_token(sa, secrets)
    assert idp.check_access_token(token, "bob@corp.example")
    assert get_access_token(sa, secrets) == token  # cached until near expiry
    assert get_access_token(sa, secrets, force_refresh=True) != token


def test_service_account_without_key(isolated_env, idp, ca_pem):
    write_profiles(isolated_env, {"sa": google_profile(idp, ca_pem, auth="service-account")})
    with pytest.raises(AuthError, match="key JSON"):
        get_access_token(resolved(isolated_env, "sa"), default_resolver())
