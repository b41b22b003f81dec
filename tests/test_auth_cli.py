"""`mailctl auth` end to end through the CLI, against the local HTTPS identity provider.
Every test also checks that no token or secret leaks into stdout or stderr."""

from __future__ import annotations

import json
import threading

import keyring
import pytest
import requests

from idp import (  # noqa: F401  (fixtures)
    CLIENT_SECRET, GOOGLE_CLIENT_SECRET, USER, ca_pem, google_profile, idp, ms_profile, trust_ca, write_profiles,
)


def assert_no_secrets(idp, memory_keyring, *results):
    secrets = set(idp.access_tokens) | set(idp.refresh_tokens) | set(idp.revoked) | {CLIENT_SECRET, GOOGLE_CLIENT_SECRET}
    secrets |= {code for code in idp.codes}
    for (service, user), value in memory_keyring.entries.items():
        if user.endswith(("/client_secret", "/service_account_key")):
            secrets.add(value)
    for res in results:
        text = res.stdout + res.stderr
        for s in secrets:
            assert s not in text, f"a secret leaked into output: {s[:6]}..."


@pytest.fixture
def ms_home(isolated_env, idp, ca_pem):
    write_profiles(isolated_env, {
        "m": ms_profile(idp, ca_pem),
        "app": ms_profile(idp, ca_pem, auth="client-credentials"),
        "pw": {"type": "smtp", "host": "127.0.0.1", "auth": "password", "username": "x@example.com"},
    }, default="m")
    idp.device_script = ["approve"]
    return isolated_env


def test_device_login_json_status_token_logout(cli, ms_home, idp, memory_keyring):
    res = cli("auth", "login", "m", "--json")
    assert res.exit_code == 0, res.output
    events = [json.loads(line) for line in res.stdout.splitlines()]
    assert events[0]["event"] == "device_code" and events[0]["user_code"] == "ABCD-EFGH"
    assert events[0]["verification_uri"].endswith("/devicelogin")
    assert events[-1]["event"] == "signed_in" and events[-1]["account"] == USER and events[-1]["refresh_token"]

    st = cli("auth", "status", "m", "--json")
    assert st.exit_code == 0, st.output
    row = json.loads(st.stdout.splitlines()[0])
    assert row["access"] and row["account"] == USER and row["refresh_token"]
    assert row["scopes"] == ["https://outlook.office.com/SMTP.Send"] and row["access_token_expires_at"]
    assert row["refresh_token_age_seconds"] == 0

    tok = cli("auth", "token", "m", "--no-check")  # no SMTP server here: print the stored token untried
    assert tok.exit_code == 0 and tok.stderr == ""
    assert idp.check_access_token(tok.stdout.strip(), USER) and tok.stdout.count("\n") == 1

    human = cli("auth", "status")
    assert "access:               yes" in human.stdout
    # all OAuth profiles: m is fine, app has no client secret stored -> needs login, exit 77
    assert human.exit_code == 77 and "app (microsoft" in human.stdout and "pw (" not in human.stdout

    out = cli("auth", "logout", "m")
    assert out.exit_code == 0 and "tokens removed" in out.stdout
    gone = cli("auth", "status", "m")
    assert gone.exit_code == 77 and "NEEDS LOGIN" in gone.stdout and "mailctl auth login m" in gone.stdout
    tok2 = cli("auth", "token", "m")
    assert tok2.exit_code == 77 and "Error: profile 'm': not signed in" in tok2.stderr
    assert "Hint: run: mailctl auth login m" in tok2.stderr
    assert_no_secrets(idp, memory_keyring, res, st, human, out, gone, tok2)


def test_human_device_login_prints_url_and_code(cli, ms_home, idp, memory_keyring):
    idp.device_script = ["authorization_pending", "approve"]
    res = cli("auth", "login", "m")
    assert res.exit_code == 0, res.output
    assert "ABCD-EFGH" in res.stderr and "/devicelogin" in res.stderr and "Ctrl-C" in res.stderr
    assert f"signed in as {USER}" in res.stdout
    assert_no_secrets(idp, memory_keyring, res)


def test_ctrl_c_cancels_cleanly(cli, ms_home, monkeypatch):
    from mailctl.oauth import microsoft

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(microsoft, "finish_device_login", interrupted)
    res = cli("auth", "login", "m")
    assert res.exit_code == 130 and "cancelled; nothing was stored" in res.stderr
    assert keyring.get_password("mailctl", "m/oauth_tokens") is None


def test_device_login_declined(cli, ms_home, idp):
    idp.device_script = []
    idp.device_terminal = "access_denied"
    res = cli("auth", "login", "m")
    assert res.exit_code == 77 and "declined" in res.stderr


def test_expired_refresh_token_exit_77_with_command(cli, ms_home, idp, memory_keyring):
    assert cli("auth", "login", "m").exit_code == 0
    idp.refresh_error = {"error": "invalid_grant", "error_description": "AADSTS700082: The refresh token has expired due to inactivity.", "error_codes": [700082]}
    res = cli("auth", "token", "m", "--force-refresh")
    assert res.exit_code == 77 and res.stdout == ""
    assert "90 days without use (AADSTS700082)" in res.stderr and "Hint: run: mailctl auth login m" in res.stderr
    st = cli("auth", "status", "m", "--json")
    assert st.exit_code == 0  # the cached access token is still valid
    idp.expire_access_tokens()
    assert_no_secrets(idp, memory_keyring, res, st)


def test_client_credentials_login_and_token(cli, ms_home, idp, memory_keyring):
    res = cli("auth", "login", "app")
    assert res.exit_code == 77 and "client secret" in res.stderr and "--password-stdin" in res.stderr
    keyring.set_password("mailctl", "app/client_secret", CLIENT_SECRET)
    res = cli("auth", "login", "app", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["flow"] == "client-credentials"
    tok = cli("auth", "token", "app")
    assert idp.check_access_token(tok.stdout.strip())
    assert idp.basic_auth_seen or any(r[2].get("client_secret") for r in idp.requests)
    assert_no_secrets(idp, memory_keyring, res)


def test_token_for_password_profile_is_config_error(cli, ms_home):
    res = cli("auth", "token", "pw")
    assert res.exit_code == 78 and "not OAuth" in res.stderr


# --- Google ------------------------------------------------------------------------------
@pytest.fixture
def g_home(isolated_env, idp, ca_pem):
    write_profiles(isolated_env, {"g": google_profile(idp, ca_pem)})
    return isolated_env


def _browser(url, ca_pem, follow=True):
    s = requests.Session()
    s.trust_env = False
    resp = s.get(url, verify=ca_pem, allow_redirects=False, timeout=10)
    if follow:
        s.get(resp.headers["Location"], timeout=10)
    return resp.headers["Location"]


def test_google_two_step_paste(cli, g_home, idp, ca_pem, memory_keyring):
    first = cli("auth", "login", "g", "--no-wait", "--json", "--client-secret-stdin", input=GOOGLE_CLIENT_SECRET + "\n")
    assert first.exit_code == 0, first.output
    lines = [json.loads(line) for line in first.stdout.splitlines()]
    url = lines[0]["authorization_url"]
    assert lines[-1]["event"] == "pending"
    final = _browser(url, ca_pem, follow=False)
    second = cli("auth", "login", "g", "--redirect-url", final)
    assert second.exit_code == 0, second.output
    assert "Refresh token stored" in second.stdout and "Testing" in second.stderr
    again = cli("auth", "login", "g", "--redirect-url", final)
    assert again.exit_code == 2 and "no Google sign-in in progress" in again.stderr
    tok = cli("auth", "token", "g")
    assert idp.check_access_token(tok.stdout.strip(), USER)
    st = cli("auth", "status", "g", "--json")
    row = json.loads(st.stdout.splitlines()[0])
    assert row["access"] and any("Testing" in w for w in row["warnings"])
    out = cli("auth", "logout", "g", "--json")
    assert json.loads(out.stdout)["revoked"] is True and len(idp.revoked) == 1
    assert_no_secrets(idp, memory_keyring, first, second, st, out)


def test_google_browser_flow_via_loopback(cli, g_home, idp, ca_pem, monkeypatch, memory_keyring):
    keyring.set_password("mailctl", "g/client_secret", GOOGLE_CLIENT_SECRET)
    import webbrowser

    def fake_open(url, *a, **k):
        threading.Thread(target=_browser, args=(url, ca_pem), daemon=True).start()
        return True

    monkeypatch.setattr(webbrowser, "open", fake_open)
    res = cli("auth", "login", "g", "--flow", "browser", "--timeout", "20")
    assert res.exit_code == 0, res.output
    assert "signed in" in res.stdout
    out = cli("auth", "logout", "g", "--local-only")
    assert out.exit_code == 0 and idp.revoked == []
    assert_no_secrets(idp, memory_keyring, res, out)


def test_google_device_flow_refused_plainly(cli, g_home):
    keyring.set_password("mailctl", "g/client_secret", GOOGLE_CLIENT_SECRET)
    res = cli("auth", "login", "g", "--flow", "device")
    assert res.exit_code == 77
    assert "refuses the device flow for Gmail scopes" in res.stderr and "--flow paste" in res.stderr


def test_microsoft_rejects_google_flows(cli, ms_home):
    res = cli("auth", "login", "m", "--flow", "paste")
    assert res.exit_code == 2 and "device code" in res.stderr


def test_auth_help_is_light():
    import subprocess
    import sys

    code = ("import sys, mailctl.cli; from mailctl.commands import auth; import mailctl.oauth; "
            "bad=[m for m in sys.modules if m.split('.')[0] in ('msal','google','requests','oauthlib','requests_oauthlib')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_google_service_account_via_key_file(cli, isolated_env, idp, ca_pem, tmp_path, memory_keyring):
    from idp import google_service_account_key

    write_profiles(isolated_env, {"ws": google_profile(idp, ca_pem, auth="service-account", username="bob@corp.example")})
    bad = tmp_path / "bad.json"
    bad.write_text('{"type": "authorized_user"}')
    res = cli("auth", "login", "ws", "--service-account-key", str(bad))
    assert res.exit_code == 65 and "not a service account key" in res.stderr
    missing = cli("auth", "token", "ws")
    assert missing.exit_code == 77 and "--service-account-key" in missing.stderr
    key = tmp_path / "key.json"
    key.write_text(json.dumps(json.loads(google_service_account_key(idp)), indent=2))  # multi-line, as downloaded
    res = cli("auth", "login", "ws", "--service-account-key", str(key), "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["flow"] == "service-account"
    tok = cli("auth", "token", "ws")
    assert idp.check_access_token(tok.stdout.strip(), "bob@corp.example")
    st = cli("auth", "status", "ws", "--json")
    row = json.loads(st.stdout.splitlines()[0])
    assert st.exit_code == 0 and row["access"] and row["service_account_key"]
    private_key = json.loads(key.read_text())["private_key"]
    for r in (res, st, missing):
        assert "PRIVATE KEY" not in r.output and private_key[40:80] not in r.output
    assert_no_secrets(idp, memory_keyring, res, st)


def test_status_warns_about_90_days_unused(cli, ms_home, idp, memory_keyring):
    assert cli("auth", "login", "m").exit_code == 0
    from mailctl.secrets import KeyringStore

    store = KeyringStore()
    doc = json.loads(store.get("m", "oauth_tokens"))
    import time

    doc["refreshed_at"] = time.time() - 80 * 86400
    store.set("m", "oauth_tokens", json.dumps(doc))
    st = cli("auth", "status", "m", "--no-check", "--json")
    row = json.loads(st.stdout.splitlines()[0])
    assert row["refresh_token_age_seconds"] == 80 * 86400 and any("90 days unused" in w for w in row["warnings"])


def test_google_paste_on_a_fixed_port_for_ssh_forward(cli, g_home, idp, ca_pem, monkeypatch):
    """Human mode: the URL and the ssh -L hint go to stderr; the browser reaches the port."""
    keyring.set_password("mailctl", "g/client_secret", GOOGLE_CLIENT_SECRET)
    from smtpserver import free_port
    from mailctl.commands import auth as auth_cmd

    port = free_port()
    shown = {}

    original = auth_cmd.TerminalUI.authorization_url

    def spy(self, **kw):
        shown.update(kw)
        threading.Thread(target=_browser, args=(kw["url"], ca_pem), daemon=True).start()
        return original(self, **kw)

    monkeypatch.setattr(auth_cmd.TerminalUI, "authorization_url", spy)
    res = cli("auth", "login", "g", "--flow", "paste", "--port", str(port), "--timeout", "20")
    assert res.exit_code == 0, res.output
    assert shown["redirect_uri"] == f"http://localhost:{port}/" and shown["listening"]
    assert f"ssh -L {port}:127.0.0.1:{port}" in res.stderr and "paste here" in res.stderr


def test_countdown_only_on_a_terminal():
    import io

    from mailctl.commands.auth import TerminalUI
    from mailctl.output import Output

    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty = Tty()
    ui = TerminalUI(Output(stderr=tty), False, "m")
    ui.tick(754)
    ui.done()
    assert "12:34 left (Ctrl-C cancels)" in tty.getvalue()
    plain = io.StringIO()
    ui = TerminalUI(Output(stderr=plain), False, "m")
    ui.tick(754)
    assert plain.getvalue() == ""
    jsonish = Tty()
    ui = TerminalUI(Output(stderr=jsonish), True, "m")
    ui.tick(754)
    assert jsonish.getvalue() == ""


def test_default_google_flow_depends_on_a_display():
    from mailctl.oauth.flows import browser_available

    assert not browser_available({"SSH_CONNECTION": "1 2 3 4", "DISPLAY": ":0"}, "linux")
    assert not browser_available({}, "linux")
    assert browser_available({"DISPLAY": ":0"}, "linux")
    assert browser_available({}, "darwin")
