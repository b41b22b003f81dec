"""Defects found in the feature run (issue #17), each against the local identity provider:

- graph_endpoint overridden: the token is still for the cloud's Graph resource;
- a service-account failure names the key, not a client id and secret;
- an unreachable login endpoint (usgov) is blamed, not the Graph host, and no --host fix."""

from __future__ import annotations

import json

import keyring
import pytest

from httpfakes import FakeHTTPS, Reply, graph_error, graph_fake
from idp import (  # noqa: F401  (fixtures)
    CLIENT_ID, CLIENT_SECRET, TENANT, ca_pem, google_profile, google_service_account_key, idp, resolved, trust_ca,
    write_profiles,
)
from mailctl.oauth import scopes_for
from smtpserver import free_port

MAILBOX = "ops@example.com"


def graph_profile(idp, ca_pem, **over) -> dict:
    values = {"type": "graph", "auth": "client-credentials", "username": MAILBOX, "from_address": MAILBOX,
              "tenant_id": TENANT, "client_id": CLIENT_ID, "authority": idp.authority, "ca_file": ca_pem}
    values.update(over)
    return values


@pytest.mark.parametrize("cloud, resource", [("global", "https://graph.microsoft.com"), ("usgov", "https://graph.microsoft.us")])
def test_overridden_graph_endpoint_still_asks_for_the_clouds_graph_resource(cli, isolated_env, idp, trust_ca, ca_pem,
                                                                           cloud, resource):
    with FakeHTTPS(trust_ca) as srv:
        graph_fake(srv)

        def send_mail(rec):
            # like Graph behind a gateway: only a token for the Graph resource is any good
            token = rec.headers.get("authorization", "").removeprefix("Bearer ")
            info = idp.access_tokens.get(token) or {}
            if info.get("scopes") != [f"{resource}/.default"]:
                return graph_error(401, "InvalidAuthenticationToken", "Access token validation failure. Invalid audience.")
            return Reply(202, b"")

        srv.on("POST", r"/v1.0/users/[^/]+/sendMail", send_mail)
        write_profiles(isolated_env, {"g": graph_profile(idp, ca_pem, cloud=cloud, graph_endpoint=srv.base_url)}, default="g")
        keyring.set_password("mailctl", "g/client_secret", CLIENT_SECRET)
        assert scopes_for(resolved(isolated_env, "g")) == [f"{resource}/.default"]
        res = cli("send", "--to", "alice@example.net", "--subject", "gateway", "--body", "hi")
        assert res.exit_code == 0, res.output
        asked = [r[2].get("scope", "") for r in idp.requests if r[2].get("grant_type") == "client_credentials"]
        assert asked and all(f"{resource}/.default" in scope.split() for scope in asked)
        assert not any(srv.base_url in scope for scope in asked)


def test_delegated_graph_scopes_ignore_the_endpoint_override(isolated_env, idp, ca_pem):
    write_profiles(isolated_env, {"d": graph_profile(idp, ca_pem, auth="oauth", cloud="usgov-dod",
                                                     graph_endpoint="https://graph-gw.corp.example")})
    assert scopes_for(resolved(isolated_env, "d")) == ["https://dod-graph.microsoft.us/Mail.Send"]


def test_service_account_failure_names_the_key_not_a_client_secret(cli, isolated_env, idp, ca_pem, tmp_path):
    write_profiles(isolated_env, {"ws": google_profile(idp, ca_pem, auth="service-account", username="bob@corp.example")})
    key = tmp_path / "key.json"
    key.write_text(google_service_account_key(idp))
    idp.jwt_error = {"error": "invalid_client", "error_description": "The OAuth client was not found."}
    res = cli("auth", "login", "ws", "--service-account-key", str(key))
    assert res.exit_code == 77, res.output
    assert "service account key" in res.stderr and "--service-account-key" in res.stderr
    assert "client secret" not in res.stderr and "--client-id" not in res.stderr
    idp.jwt_error = {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
    res = cli("auth", "token", "ws")
    assert res.exit_code == 77 and "Google refused the service account" in res.stderr
    assert "client secret" not in res.stderr


def test_unreachable_login_endpoint_is_blamed_not_the_graph_host(cli, isolated_env, idp, trust_ca, ca_pem):
    closed = free_port()  # nothing listens: the login endpoint is unreachable
    with FakeHTTPS(trust_ca) as srv:
        graph_fake(srv)
        write_profiles(isolated_env, {"gov": graph_profile(idp, ca_pem, cloud="usgov", graph_endpoint=srv.base_url,
                                                           authority=f"https://127.0.0.1:{closed}/{TENANT}")})
        keyring.set_password("mailctl", "gov/client_secret", CLIENT_SECRET)
        res = cli("test", "connect", "gov", "--json")
        assert res.exit_code == 69, res.output
        report = json.loads(res.stdout)
        [token] = [s for s in report["stages"] if s["stage"] == "token"]
        assert token["status"] == "failed" and token["server"] == f"127.0.0.1:{closed}"
        assert token["explanation"]["id"] == "oauth-provider-unreachable"
        assert f"127.0.0.1:{closed}" in report["error"] or "127.0.0.1" in report["error"]
        assert "--host" not in res.stdout + res.stderr and srv.requests == []
        human = cli("test", "connect", "gov")
        assert "identity provider 127.0.0.1 cannot be reached" in human.stdout and "--host" not in human.output


def test_usgov_login_host_is_named_without_an_authority(isolated_env, idp, ca_pem):
    from mailctl.errors import UnavailableError
    from mailctl.transports.http_stages import explain_http

    values = graph_profile(idp, ca_pem, cloud="usgov")
    values.pop("authority")
    write_profiles(isolated_env, {"gov": values})
    profile = resolved(isolated_env, "gov")
    from mailctl.oauth.scopes import identity_provider_url

    assert identity_provider_url(profile) == f"https://login.microsoftonline.us/{TENANT}"
    explanation = explain_http(profile, UnavailableError("cannot reach login.microsoftonline.us"), "token")
    assert "login.microsoftonline.us" in explanation.cause and "graph.microsoft.us" not in explanation.cause + explanation.fix
    assert "--host" not in explanation.fix and "cloud = usgov" in explanation.fix
