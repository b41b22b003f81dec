"""A server that expires an access token early: the identity provider's view ("still valid
for 50 minutes") is not the mail server's. `auth status --check` tries the token at the
server and `auth token` refreshes one the server rejects, against aiosmtpd checking every
token with the local identity provider (Microsoft-shaped and generic)."""

from __future__ import annotations

import json

import keyring
import pytest

from generic_idp import CLIENT_SECRET as GENERIC_SECRET, GenericAS, generic_profile
from idp import USER, ca_pem, idp, ms_profile, trust_ca, write_profiles  # noqa: F401  (fixtures)
from smtpserver import smtp_server
from test_auth_cli import assert_no_secrets
from test_auth_roundtrip import IdPCheckedHandler


@pytest.fixture
def signed_in(cli, isolated_env, idp, trust_ca, ca_pem):
    """An SMTP server that asks the identity provider about every token, and a profile signed in to both."""
    handler = IdPCheckedHandler(idp)
    with smtp_server(security="starttls", cert=trust_ca.issue_cert("127.0.0.1", "localhost"), handler=handler) as srv:
        write_profiles(isolated_env, {"rt": ms_profile(idp, ca_pem, port=srv.port, security="starttls", from_address=USER)})
        idp.device_script = ["approve"]
        login = cli("auth", "login", "rt", "--json")
        assert login.exit_code == 0, login.output
        yield srv, handler


def test_status_check_tries_the_token_and_replaces_one_the_server_dropped(cli, idp, signed_in, memory_keyring):
    srv, handler = signed_in
    dead = cli("auth", "token", "rt", "--no-check").stdout.strip()
    idp.expire_access_tokens()  # the server forgets it; the client's cache still says "valid"
    plain = cli("auth", "status", "rt", "--json")
    assert json.loads(plain.stdout.splitlines()[0])["access"]  # only the identity provider's view: unchanged
    assert handler.attempts_auth == []

    checked = cli("auth", "status", "rt", "--check", "--json")
    assert checked.exit_code == 0, checked.output
    row = json.loads(checked.stdout.splitlines()[0])
    assert row["access"] and row["server_check"]["accepted"] and row["server_check"]["refreshed"]
    assert any("rejected the stored access token; a new one was fetched" in w for w in row["warnings"])
    assert handler.attempts_auth == [("XOAUTH2", False), ("XOAUTH2", True)]
    assert srv.messages == []  # AUTH only, nothing sent

    human = cli("auth", "status", "rt", "--check")
    assert human.exit_code == 0 and "mail server:          accepted the token (127.0.0.1:" in human.stdout
    token = cli("auth", "token", "rt", "--no-check").stdout.strip()
    assert token != dead and idp.check_access_token(token, USER)
    assert_no_secrets(idp, memory_keyring, plain, checked, human)


def test_token_refreshes_when_the_server_rejects_the_stored_one(cli, idp, signed_in, memory_keyring):
    _srv, handler = signed_in
    dead = cli("auth", "token", "rt", "--no-check").stdout.strip()
    idp.expire_access_tokens()
    res = cli("auth", "token", "rt")
    assert res.exit_code == 0 and res.stderr == ""
    token = res.stdout.strip()
    assert token != dead and idp.check_access_token(token, USER) and res.stdout.count("\n") == 1
    assert handler.attempts_auth == [("XOAUTH2", False), ("XOAUTH2", True)]
    again = cli("auth", "token", "rt")  # accepted now: the same token, no refresh
    assert again.stdout.strip() == token and handler.attempts_auth[-1] == ("XOAUTH2", True)


def test_a_server_that_rejects_even_a_fresh_token(cli, isolated_env, idp, ca_pem, signed_in, memory_keyring):
    srv, handler = signed_in
    # the server checks the token against another user than the one signed in
    write_profiles(isolated_env, {"rt": ms_profile(idp, ca_pem, port=srv.port, security="starttls", username="eve@contoso.example")})
    doc = keyring.get_password("mailctl", "rt/oauth_tokens")
    assert doc
    status = cli("auth", "status", "rt", "--check")
    assert status.exit_code == 77, status.output
    assert "access:               no" in status.stdout and "rejects the access token, even a fresh one" in status.stdout
    token = cli("auth", "token", "rt")
    assert token.exit_code == 77 and token.stdout == "" and "rejects the access token, even a fresh one" in token.stderr
    assert "Traceback" not in token.output
    assert_no_secrets(idp, memory_keyring, status, token)


def test_unreachable_server_prints_the_token_with_a_warning(cli, isolated_env, idp, ca_pem, signed_in):
    from smtpserver import free_port

    write_profiles(isolated_env, {"rt": ms_profile(idp, ca_pem, port=free_port(), security="starttls")})
    res = cli("auth", "token", "rt")
    assert res.exit_code == 0 and idp.check_access_token(res.stdout.strip(), USER)
    assert "not tried at the mail server" in res.stderr and "printing it anyway" in res.stderr
    status = cli("auth", "status", "rt", "--check", "--json")
    row = json.loads(status.stdout.splitlines()[0])
    assert status.exit_code == 0 and row["access"] and not row["server_check"]["tried"]
    assert any("could not be tried at the mail server" in w for w in row["warnings"])
    both = cli("auth", "status", "rt", "--check", "--no-check")
    assert both.exit_code == 2


def test_generic_provider_status_check(cli, isolated_env, trust_ca, ca_pem):
    """The same for a generic OAuth 2.0 server: the check is the transport's, not the provider's."""
    from test_oauth_generic import BearerHandler, bearer_smtp, browser

    gas = GenericAS(trust_ca).start()
    try:
        handler = BearerHandler(gas)
        with bearer_smtp(trust_ca, handler, exclude=("XOAUTH2",)) as srv:
            write_profiles(isolated_env, {"g": generic_profile(gas, ca_pem, port=srv.port, security="starttls")})
            keyring.set_password("mailctl", "g/client_secret", GENERIC_SECRET)
            first = cli("auth", "login", "g", "--no-wait", "--json")
            final = browser(json.loads(first.stdout.splitlines()[0])["authorization_url"], ca_pem, follow=False)
            assert cli("auth", "login", "g", "--redirect-url", final).exit_code == 0
            gas.expire_access_tokens()
            res = cli("auth", "status", "g", "--check", "--json")
            row = json.loads(res.stdout.splitlines()[0])
            assert res.exit_code == 0 and row["server_check"]["refreshed"]
            assert handler.attempts_auth == [("OAUTHBEARER", False), ("OAUTHBEARER", True)]
    finally:
        gas.stop()


def test_graph_profile_status_check_and_token(cli, isolated_env, idp, trust_ca, ca_pem, memory_keyring):
    """Graph: the check is `test connect`'s GET of the mailbox; a 401 gets one refresh."""
    from httpfakes import FakeHTTPS, Reply, graph_error, graph_fake

    with FakeHTTPS(trust_ca) as srv:
        graph_fake(srv)

        def mailbox(rec):
            token = rec.headers.get("authorization", "").removeprefix("Bearer ")
            if not idp.check_access_token(token, USER):
                return graph_error(401, "InvalidAuthenticationToken", "Lifetime validation failed, the token is expired.")
            return Reply(200, {"mail": USER, "userPrincipalName": USER})

        srv.on("GET", r"/v1.0/me", mailbox)
        write_profiles(isolated_env, {"gr": ms_profile(idp, ca_pem, type="graph", graph_endpoint=srv.base_url, host="")})
        idp.device_script = ["approve"]
        assert cli("auth", "login", "gr").exit_code == 0
        idp.expire_access_tokens()
        res = cli("auth", "status", "gr", "--check", "--json")
        assert res.exit_code == 0, res.output
        row = json.loads(res.stdout.splitlines()[0])
        assert row["server_check"]["accepted"] and row["server_check"]["refreshed"]
        statuses = [r for r in srv.requests if r.method == "GET"]
        assert len(statuses) == 2  # 401, then 200 with the new token
        tok = cli("auth", "token", "gr")
        assert tok.exit_code == 0 and idp.check_access_token(tok.stdout.strip(), USER)
        assert_no_secrets(idp, memory_keyring, res)


def test_server_drops_the_token_and_the_refresh_token_is_dead_too(cli, idp, signed_in, memory_keyring):
    _srv, handler = signed_in
    idp.expire_access_tokens()
    idp.refresh_tokens.clear()  # revoked at the identity provider as well
    status = cli("auth", "status", "rt", "--check")
    assert status.exit_code == 77 and "NEEDS LOGIN" in status.stdout
    assert "rejected the access token, and refreshing the access token failed" in status.stdout
    assert "run: mailctl auth login rt" in status.stdout
    token = cli("auth", "token", "rt")
    assert token.exit_code == 77 and token.stdout == ""
    assert "Error: profile 'rt': 127.0.0.1:" in token.stderr and "Hint: run: mailctl auth login rt" in token.stderr
    assert_no_secrets(idp, memory_keyring, status, token)
