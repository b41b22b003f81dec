"""Microsoft sign-in against the local HTTPS identity provider (MSAL, instance discovery off)."""

from __future__ import annotations

import time

import keyring
import pytest

from idp import (  # noqa: F401  (fixtures)
    CLIENT_ID, CLIENT_SECRET, USER, ca_pem, idp, ms_profile, resolved, trust_ca, write_profiles,
)
from mailctl.errors import AuthError, ConfigError, ExitCode
from mailctl.oauth import get_access_token, microsoft, scopes_for
from mailctl.secrets import default_resolver


class FakeClock:
    """Time that advances only when slept through (the polling waits cost nothing)."""

    def __init__(self):
        self.now = time.time()

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def _login(profile, secrets):
    login = microsoft.start_device_login(profile, secrets)
    clock = FakeClock()
    return login, microsoft.finish_device_login(login, sleep=clock.sleep, clock=clock)


@pytest.fixture
def ms(isolated_env, idp, ca_pem):
    write_profiles(isolated_env, {"m": ms_profile(idp, ca_pem)})
    return resolved(isolated_env, "m")


def test_device_login_stores_cache_and_refreshes_silently(ms, idp):
    secrets = default_resolver()
    idp.device_script = ["authorization_pending", "slow_down", "authorization_pending", "approve"]
    login, result = _login(ms, secrets)
    assert login.user_code == "ABCD-EFGH" and login.verification_uri.endswith("/devicelogin")
    assert result.account == USER and result.refresh_token
    assert result.scopes == ["https://outlook.office.com/SMTP.Send"]
    polls = [r for r in idp.requests if r[2].get("grant_type", "").endswith("device_code")]
    assert len(polls) == 4
    stored = keyring.get_password("mailctl", "m/oauth_tokens")
    assert stored  # (split into parts by the keyring store when large)
    token = get_access_token(ms, secrets)
    assert idp.check_access_token(token, USER)
    # a forced refresh uses the refresh token grant and yields a new, valid token
    fresh = get_access_token(ms, secrets, force_refresh=True)
    assert fresh != token and idp.check_access_token(fresh, USER)
    assert any(r[2].get("grant_type") == "refresh_token" for r in idp.requests)


@pytest.mark.parametrize("terminal, words", [("expired_token", "expired"), ("access_denied", "declined")])
def test_device_login_terminal_errors(ms, idp, terminal, words):
    idp.device_script = ["authorization_pending"]
    idp.device_terminal = terminal
    with pytest.raises(AuthError) as exc:
        _login(ms, default_resolver())
    assert words in exc.value.message and exc.value.exit_code == ExitCode.NOPERM
    assert "mailctl auth login m" in exc.value.hint
    assert keyring.get_password("mailctl", "m/oauth_tokens") is None


def test_ctrl_c_cancels_and_stores_nothing(ms, idp):
    secrets = default_resolver()
    login = microsoft.start_device_login(ms, secrets)

    def interrupt(_):
        raise KeyboardInterrupt

    idp.device_script = ["authorization_pending"] * 5
    with pytest.raises(KeyboardInterrupt):
        microsoft.finish_device_login(login, sleep=interrupt)
    assert login.flow["expires_at"] == 0
    assert keyring.get_password("mailctl", "m/oauth_tokens") is None


@pytest.mark.parametrize("code, words", [
    (700082, "90 days"), (70008, "expired or was revoked"), (50076, "multi-factor"),
    (53003, "Conditional Access"), (65001, "consent"), (50020, "personal Microsoft account"),
])
def test_refresh_failures_are_precise(ms, idp, code, words):
    secrets = default_resolver()
    _login(ms, secrets)
    idp.refresh_error = {"error": "invalid_grant", "error_description": f"AADSTS{code}: something. Trace ID: x", "error_codes": [code]}
    with pytest.raises(AuthError) as exc:
        get_access_token(ms, secrets, force_refresh=True)
    assert words in exc.value.message and f"AADSTS{code}" in exc.value.message
    assert exc.value.exit_code == 77
    assert "mailctl auth login m" in (exc.value.hint or "") or "admin" in (exc.value.hint or "")


def test_not_signed_in_says_what_to_run(ms):
    with pytest.raises(AuthError) as exc:
        get_access_token(ms, default_resolver())
    assert "not signed in" in exc.value.message and exc.value.hint == "run: mailctl auth login m"


def test_client_credentials_basic_auth_and_cache(isolated_env, idp, ca_pem):
    write_profiles(isolated_env, {"app": ms_profile(idp, ca_pem, auth="client-credentials")})
    app = resolved(isolated_env, "app")
    keyring.set_password("mailctl", "app/client_secret", CLIENT_SECRET)
    secrets = default_resolver()
    assert scopes_for(app) == ["https://outlook.office365.com/.default"]
    token = get_access_token(app, secrets)
    assert idp.check_access_token(token, f"app:{CLIENT_ID}")
    posts = [r for r in idp.requests if r[2].get("grant_type") == "client_credentials"]
    assert len(posts) == 1
    # second call: served from the stored cache, no new request
    assert get_access_token(app, secrets) == token
    assert len([r for r in idp.requests if r[2].get("grant_type") == "client_credentials"]) == 1
    assert get_access_token(app, secrets, force_refresh=True) != token


def test_client_credentials_wrong_or_missing_secret(isolated_env, idp, ca_pem):
    write_profiles(isolated_env, {"app": ms_profile(idp, ca_pem, auth="client-credentials")})
    app = resolved(isolated_env, "app")
    with pytest.raises(AuthError) as exc:
        get_access_token(app, default_resolver())
    assert "client secret" in exc.value.message and "--password-stdin" in exc.value.hint
    keyring.set_password("mailctl", "app/client_secret", "WrongSecretValue123")
    with pytest.raises(AuthError) as exc:
        get_access_token(app, default_resolver())
    assert "AADSTS7000215" in exc.value.message and "WrongSecretValue123" not in exc.value.message


def test_missing_client_id_explains_app_registration(isolated_env, idp, ca_pem):
    values = ms_profile(idp, ca_pem)
    del values["client_id"]
    write_profiles(isolated_env, {"m": values})
    with pytest.raises(ConfigError) as exc:
        microsoft.start_device_login(resolved(isolated_env, "m"), default_resolver())
    assert "client_id" in exc.value.message and "public client flows" in exc.value.hint


def test_scopes_follow_transport_and_cloud(isolated_env, idp, ca_pem):
    write_profiles(isolated_env, {
        "g": ms_profile(idp, ca_pem, type="graph", cloud="usgov"),
        "e": ms_profile(idp, ca_pem, type="ews", ews_url="https://ex.example/EWS/Exchange.asmx"),
        "ga": ms_profile(idp, ca_pem, type="graph", cloud="china", auth="client-credentials"),
    })
    assert scopes_for(resolved(isolated_env, "g")) == ["https://graph.microsoft.us/Mail.Send"]
    assert scopes_for(resolved(isolated_env, "e")) == ["https://outlook.office365.com/EWS.AccessAsUser.All"]
    assert scopes_for(resolved(isolated_env, "ga")) == ["https://microsoftgraph.chinacloudapi.cn/.default"]


def test_authority_defaults_to_cloud_login_host(isolated_env, idp, ca_pem):
    from mailctl.oauth.scopes import microsoft_authority

    values = ms_profile(idp, ca_pem, cloud="usgov")
    del values["authority"]
    write_profiles(isolated_env, {"m": values})
    assert microsoft_authority(resolved(isolated_env, "m")).startswith("https://login.microsoftonline.us/")


def test_untrusted_ca_is_a_tls_error(isolated_env, idp):
    values = ms_profile(idp, "")
    values.pop("ca_file")
    write_profiles(isolated_env, {"m": values})
    from mailctl.errors import UnavailableError

    with pytest.raises(UnavailableError) as exc:
        microsoft.start_device_login(resolved(isolated_env, "m"), default_resolver())
    assert "TLS certificate verification failed" in exc.value.message


def test_tokens_from_the_environment_for_cron(ms, idp, monkeypatch):
    """No keyring under cron: the stored document can come from MAILCTL_SECRET_<P>_OAUTH_TOKENS."""
    from mailctl.secrets import KeyringStore

    secrets = default_resolver()
    _login(ms, secrets)
    doc = KeyringStore().get("m", "oauth_tokens")
    KeyringStore().delete("m", "oauth_tokens")
    monkeypatch.setenv("MAILCTL_SECRET_M_OAUTH_TOKENS", doc)
    token = get_access_token(ms, default_resolver(), force_refresh=True)
    assert idp.check_access_token(token, USER)
    assert microsoft.status(ms, default_resolver(), check=False)["source"] == "environment"
