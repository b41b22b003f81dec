"""The full round trip: sign in -> `mailctl test send` over XOAUTH2 (STARTTLS, trustme
certificate) to an aiosmtpd server that checks the token with the identity provider ->
status -> a rejected token is refreshed once and the send retried -> logout. No token or
secret appears in any output."""

from __future__ import annotations

import base64
import json

import keyring
import pytest
import requests
from aiosmtpd.smtp import MISSING, AuthResult

from idp import (  # noqa: F401  (fixtures)
    GOOGLE_CLIENT_SECRET, USER, ca_pem, google_profile, idp, ms_profile, trust_ca, write_profiles,
)
from smtpserver import RecordingHandler, smtp_server
from test_auth_cli import assert_no_secrets


class IdPCheckedHandler(RecordingHandler):
    """XOAUTH2 accepted only for a live access token the identity provider issued to the user."""

    def __init__(self, idp):
        super().__init__()
        self.idp = idp
        self.tokens_seen: list[str] = []

    async def auth_XOAUTH2(self, server, args):
        if len(args) < 2:
            blob = await server.challenge_auth("", encode_to_b64=False)
            if blob is MISSING:
                return AuthResult(success=False, handled=True)
        else:
            blob = args[1].encode()
        text = base64.b64decode(blob).decode()
        fields = dict(part.split("=", 1) for part in text.split("\x01") if "=" in part)
        user, token = fields.get("user", ""), fields.get("auth", "").removeprefix("Bearer ")
        self.tokens_seen.append(token)
        ok = self.idp.check_access_token(token, user)
        self.attempts_auth.append(("XOAUTH2", ok))
        if ok:
            return AuthResult(success=True, auth_data=user)
        return AuthResult(success=False, handled=False, message="535 5.7.3 Authentication unsuccessful")


def _google_login(cli, ca_pem):
    first = cli("auth", "login", "rt", "--no-wait", "--json")
    assert first.exit_code == 0, first.output
    url = json.loads(first.stdout.splitlines()[0])["authorization_url"]
    s = requests.Session()
    s.trust_env = False
    final = s.get(url, verify=ca_pem, allow_redirects=False, timeout=10).headers["Location"]
    second = cli("auth", "login", "rt", "--redirect-url", final)
    assert second.exit_code == 0, second.output
    return [first, second]


@pytest.mark.parametrize("provider", ["microsoft", "google"])
def test_login_send_status_refresh_logout(cli, isolated_env, idp, trust_ca, ca_pem, memory_keyring, provider):
    handler = IdPCheckedHandler(idp)
    with smtp_server(security="starttls", cert=trust_ca.issue_cert("127.0.0.1", "localhost"), handler=handler) as srv:
        make = ms_profile if provider == "microsoft" else google_profile
        write_profiles(isolated_env, {"rt": make(idp, ca_pem, port=srv.port, security="starttls", from_address=USER)}, default="rt")
        outputs = []
        if provider == "microsoft":
            idp.device_script = ["authorization_pending", "approve"]
            login = cli("auth", "login", "rt", "--json")
            assert login.exit_code == 0, login.output
            outputs.append(login)
        else:
            keyring.set_password("mailctl", "rt/client_secret", GOOGLE_CLIENT_SECRET)
            outputs += _google_login(cli, ca_pem)

        send = cli("test", "send", "--to", "bob@example.net", "--transcript")
        assert send.exit_code == 0, send.output
        assert handler.attempts_auth == [("XOAUTH2", True)] and len(srv.messages) == 1
        outputs.append(send)

        status = cli("auth", "status", "--json")
        assert status.exit_code == 0 and json.loads(status.stdout.splitlines()[0])["access"]
        outputs.append(status)

        # The server stops accepting the token (revoked early): 535 -> one refresh -> retry succeeds.
        idp.expire_access_tokens()
        send2 = cli("test", "send", "--to", "bob@example.net", "--json")
        assert send2.exit_code == 0, send2.output
        assert handler.attempts_auth[-2:] == [("XOAUTH2", False), ("XOAUTH2", True)]
        assert handler.tokens_seen[-1] != handler.tokens_seen[-2] and len(srv.messages) == 2
        assert any(r[2].get("grant_type") == "refresh_token" for r in idp.requests)
        outputs.append(send2)

        token = cli("auth", "token", "rt", "--force-refresh")
        assert token.exit_code == 0 and idp.check_access_token(token.stdout.strip(), USER)

        logout = cli("auth", "logout", "rt")
        assert logout.exit_code == 0
        outputs.append(logout)
        if provider == "google":
            assert idp.revoked
        after = cli("auth", "status", "rt")
        assert after.exit_code == 77
        send3 = cli("test", "send", "--to", "bob@example.net")
        assert send3.exit_code == 77 and "mailctl auth login rt" in send3.output
        outputs += [after, send3]
        assert_no_secrets(idp, memory_keyring, *outputs)
        for out in outputs:
            for tok in handler.tokens_seen:
                assert tok not in out.stdout + out.stderr
