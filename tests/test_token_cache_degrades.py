"""Token caches degrade gracefully: no usable keyring means no cache, not failure (issue #12,
item 10). App-only flows then fetch a token each time; delegated sign-ins still need a store
for their refresh token and say so."""

from __future__ import annotations

import json

import keyring
import keyring.backends.fail
import pytest

from idp import (  # noqa: F401  (fixtures)
    CLIENT_ID, CLIENT_SECRET, ca_pem, idp, ms_profile, resolved, trust_ca, write_profiles,
)
from mailctl.errors import ExitCode, SecretStoreUnavailable
from mailctl.oauth import get_access_token
from mailctl.secrets import default_resolver


@pytest.fixture
def no_keyring():
    keyring.set_keyring(keyring.backends.fail.Keyring())  # conftest restores the previous one


def grants(idp) -> int:
    return len([r for r in idp.requests if r[2].get("grant_type") == "client_credentials"])


def test_client_credentials_from_the_environment_without_a_keyring(isolated_env, idp, ca_pem, monkeypatch, no_keyring):
    write_profiles(isolated_env, {"app": ms_profile(idp, ca_pem, auth="client-credentials")})
    monkeypatch.setenv("MAILCTL_SECRET_APP_CLIENT_SECRET", CLIENT_SECRET)
    app = resolved(isolated_env, "app")
    token = get_access_token(app, default_resolver())
    assert idp.check_access_token(token, f"app:{CLIENT_ID}")
    # nothing could be cached: the next call asks the identity provider again, and works
    assert idp.check_access_token(get_access_token(app, default_resolver()), f"app:{CLIENT_ID}")
    assert grants(idp) == 2


def test_auth_login_and_token_for_client_credentials_without_a_keyring(cli, isolated_env, idp, ca_pem, monkeypatch, no_keyring):
    write_profiles(isolated_env, {"app": ms_profile(idp, ca_pem, auth="client-credentials")})
    monkeypatch.setenv("MAILCTL_SECRET_APP_CLIENT_SECRET", CLIENT_SECRET)
    r = cli("auth", "login", "app", "--json")
    assert r.exit_code == 0, r.output
    assert any("could not be cached" in w for w in json.loads(r.stdout)["warnings"])
    r = cli("auth", "token", "app")
    assert r.exit_code == 0, r.output
    assert idp.check_access_token(r.stdout.strip())
    r = cli("auth", "status", "app", "--json")
    assert r.exit_code == 0, r.output


def test_delegated_tokens_still_name_the_missing_keyring(isolated_env, idp, ca_pem, no_keyring):
    write_profiles(isolated_env, {"m": ms_profile(idp, ca_pem)})
    with pytest.raises(SecretStoreUnavailable) as exc:
        get_access_token(resolved(isolated_env, "m"), default_resolver())
    assert exc.value.exit_code == ExitCode.CONFIG and "keyring" in exc.value.message
