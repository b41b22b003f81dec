"""Issue #15 items 2 and 5 against a real Postfix: the second EHLO is shown as Postfix said it
(no STARTTLS, AUTH only after TLS), the password is fetched in a stage of its own, and a refused
self-signed certificate says exactly why (no ca_file; a ca_file that did not sign it; a pin
that does not match, with both fingerprints)."""

from __future__ import annotations

import json

import keyring
import pytest

from integration_services import smtp_profile, write_profiles

pytestmark = pytest.mark.integration


def _connect(cli, home, server, **overrides):
    write_profiles(home, {"pf": smtp_profile(server, **overrides)})
    keyring.set_password("mailctl", "pf/password", server.password)
    res = cli("test", "connect", "pf", "--json")
    return res, json.loads(res.stdout)


def _stage(data, name):
    return next(s for s in data["stages"] if s["stage"] == name)


def test_second_ehlo_and_secret_stage_as_postfix_says(postfix_server, cli, isolated_env):
    res, data = _connect(cli, isolated_env, postfix_server)
    assert res.exit_code == 0, res.output
    first, second = _stage(data, "ehlo")["detail"], _stage(data, "ehlo_tls")["detail"]
    assert "STARTTLS" in first and "AUTH" not in first  # smtpd_tls_auth_only
    assert "STARTTLS" not in second and "AUTH" in second
    caps = data["capabilities"]
    assert caps["starttls"] is False and caps["starttls_before_tls"] is True and caps["auth"]
    names = [s["stage"] for s in data["stages"]]
    assert names[names.index("ehlo_tls") + 1:names.index("auth")] == ["secret"]
    assert _stage(data, "secret")["detail"] == "password from keyring:pf"
    assert data["client"]["local"].startswith("127.0.0.1:")
    assert postfix_server.password not in res.stdout + res.stderr


def test_self_signed_without_ca_file(postfix_server, cli, isolated_env):
    res, data = _connect(cli, isolated_env, postfix_server, port=postfix_server.selfsigned.port, ca_file=None)
    assert res.exit_code == 69 and data["tls"]["problem"]["kind"] == "self-signed"
    assert "self-signed" in data["explanation"]["cause"] and "no ca_file is set" in data["explanation"]["cause"]


def test_self_signed_with_a_ca_file_that_did_not_sign_it(postfix_server, cli, isolated_env):
    res, data = _connect(cli, isolated_env, postfix_server, port=postfix_server.selfsigned.port)
    assert res.exit_code == 69
    assert f"The CA in ca_file {postfix_server.ca_file} did not sign this certificate" in data["explanation"]["cause"]


def test_pin_mismatch_shows_both(postfix_server, cli, isolated_env):
    pinned = ":".join(["00"] * 32)
    res, data = _connect(cli, isolated_env, postfix_server, port=postfix_server.selfsigned.port, ca_file=None,
                         tls_fingerprint=pinned)
    assert res.exit_code == 69
    assert f"got SHA-256 {postfix_server.selfsigned_fingerprint}, pinned {pinned}" in data["error"]
    assert f"--tls-fingerprint {postfix_server.selfsigned_fingerprint}" in data["explanation"]["fix"]
