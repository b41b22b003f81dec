import json

import keyring
import pytest


def write(home, text):
    (home / "profiles.toml").write_text("schema_version = 1\n" + text)


def test_lint_reports_errors_and_exits_1(cli, isolated_env):
    write(
        isolated_env,
        '[profiles.plain]\nhost = "mail.example.com"\nsecurity = "none"\nauth = "password"\nusername = "u"\nfrom_address = "u@example.com"\n'
        '[profiles.m365]\nhost = "smtp.office365.com"\nauth = "password"\nusername = "u@contoso.com"\nfrom_address = "u@contoso.com"\n'
        '[profiles.ews]\ntype = "ews"\nusername = "u@contoso.com"\nauth = "oauth"\nfrom_address = "u@contoso.com"\n'
        'ews_url = "https://outlook.office365.com/EWS/Exchange.asmx"\n',
    )
    keyring.set_password("mailctl", "m365/password", "pw-not-shown-123")
    res = cli("profile", "lint", "--json")
    assert res.exit_code == 1, res.output
    findings = [json.loads(line) for line in res.stdout.splitlines()]
    ids = {(f["profile"], f["id"]) for f in findings}
    assert ("plain", "smtp.auth-without-tls") in ids
    assert ("plain", "secret.missing") in ids
    assert ("m365", "m365.basic-auth") in ids
    assert ("m365", "secret.missing") not in ids  # its password is stored
    assert any(p == "ews" and i == "ews.warning" for p, i in ids)
    ews_msgs = [f["message"] for f in findings if f["profile"] == "ews"]
    assert any("2026" in m for m in ews_msgs)
    assert "pw-not-shown-123" not in res.output


def test_lint_clean_profile_exits_0_and_strict_fails_on_warnings(cli, isolated_env):
    write(isolated_env, '[profiles.ok]\nhost = "mail.example.com"\nauth = "none"\nfrom_address = "a@example.com"\n'
          '[profiles.noverify]\nhost = "mail.example.com"\nauth = "none"\nfrom_address = "a@example.com"\ntls_verify = false\n')
    assert cli("profile", "lint", "ok").exit_code == 0
    res = cli("profile", "lint", "noverify")
    assert res.exit_code == 0 and "tls.verify-off" in res.stdout
    assert cli("profile", "lint", "noverify", "--strict").exit_code == 1
    assert cli("profile", "lint", "missing").exit_code == 66


def test_lint_reports_inheritance_cycle(cli, isolated_env):
    write(isolated_env, '[profiles.a]\ninherits = "b"\nhost = "x.example"\n[profiles.b]\ninherits = "a"\n')
    res = cli("profile", "lint", "--json")
    assert res.exit_code == 1
    assert {f["id"] for f in [json.loads(line) for line in res.stdout.splitlines()]} == {"profile.unresolvable"}


def test_duplicate_with_secret_of_a_profile_that_takes_none_is_refused(cli, isolated_env):
    write(isolated_env, '[profiles.relay]\nhost = "relay.example"\nauth = "none"\n')
    before = (isolated_env / "profiles.toml").read_text()
    res = cli("profile", "duplicate", "relay", "--password-stdin", input="s3cr3t-value\n")
    assert res.exit_code == 65
    assert (isolated_env / "profiles.toml").read_text() == before
    assert "s3cr3t-value" not in res.output


def test_rename_without_a_usable_keyring_still_renames_and_warns(cli, isolated_env):
    import keyring.backends.fail

    write(isolated_env, 'default = "old"\n[profiles.old]\nhost = "relay.example"\nauth = "none"\n')
    keyring.set_keyring(keyring.backends.fail.Keyring())
    res = cli("profile", "rename", "old", "new")
    assert res.exit_code == 0, res.output
    assert "keyring" in res.stderr
    text = (isolated_env / "profiles.toml").read_text()
    assert "[profiles.new]" in text and "[profiles.old]" not in text and 'default = "new"' in text


# --- issue #17: From vs login, business vs personal accounts (seeds 000, 001) -------------------
def _lint(cli, home, text, *names):
    write(home, text)
    res = cli("profile", "lint", *names, "--json")
    return res, {(f["profile"], f["id"]): f for f in [json.loads(line) for line in res.stdout.splitlines()]}


def test_m365_from_other_than_the_login_explains_send_as(cli, isolated_env):
    res, found = _lint(cli, isolated_env,
                       '[profiles.ops]\nprovider = "microsoft365"\nusername = "robot@contoso.com"\nfrom_address = "sales@contoso.com"\n'
                       'tenant_id = "contoso.onmicrosoft.com"\nclient_id = "11111111-2222-3333-4444-555555555555"\n'
                       '[profiles.same]\nprovider = "microsoft365"\nusername = "Robot@Contoso.com"\nfrom_address = "robot@contoso.com"\n'
                       'tenant_id = "contoso.onmicrosoft.com"\nclient_id = "11111111-2222-3333-4444-555555555555"\n'
                       '[profiles.shared]\ntype = "graph"\nauth = "client-credentials"\nmailbox = "desk@contoso.com"\n'
                       'from_address = "desk@contoso.com"\ntenant_id = "contoso.onmicrosoft.com"\nclient_id = "abc"\n')
    f = found[("ops", "m365.send-as")]
    assert f["severity"] == "warning"
    assert "Send As" in f["message"] and "5.2.252" in f["message"] and "robot@contoso.com" in f["message"]
    assert "Add-RecipientPermission -Identity sales@contoso.com -Trustee robot@contoso.com" in f["fix"]
    assert ("same", "m365.send-as") not in found  # case does not make another address
    assert ("shared", "m365.send-as") not in found  # Graph sends as the mailbox it names
    assert cli("profile", "lint", "ops").exit_code == 0  # a warning: the permission may well be granted
    assert cli("profile", "lint", "ops", "--strict").exit_code == 1


def test_gmail_from_other_than_the_login_explains_send_mail_as(cli, isolated_env):
    res, found = _lint(cli, isolated_env,
                       '[profiles.g]\nhost = "smtp.gmail.com"\nauth = "oauth"\nclient_id = "x.apps.googleusercontent.com"\n'
                       'username = "me@example.org"\nfrom_address = "news@example.org"\nfrom_match = ["*@example.org"]\n'
                       '[profiles.other]\nhost = "mail.example.net"\nauth = "none"\nusername = "a@example.net"\nfrom_address = "b@example.net"\n')
    f = found[("g", "gmail.send-mail-as")]
    assert "Send mail as" in f["message"] and "Send mail as" in f["fix"]
    assert found[("g", "gmail.send-as-patterns")]["severity"] == "info"
    assert not [k for k in found if k[0] == "other"]  # other servers have no such rule


@pytest.mark.parametrize("login", ["alice@outlook.com", "bob@hotmail.co.uk", "carol@live.fr"])
def test_personal_microsoft_account_in_a_microsoft365_profile_is_an_error(cli, isolated_env, login):
    res, found = _lint(cli, isolated_env,
                       f'[profiles.p]\nprovider = "microsoft365"\nusername = "{login}"\nfrom_address = "{login}"\n'
                       'tenant_id = "contoso.onmicrosoft.com"\nclient_id = "abc"\n')
    f = found[("p", "m365.personal-account")]
    assert f["severity"] == "error" and "work or school" in f["message"] and "AADSTS50020" in f["message"]
    assert res.exit_code == 1


def test_business_accounts_and_personal_gmail_with_oauth_pass(cli, isolated_env):
    res, found = _lint(cli, isolated_env,
                       '[profiles.biz]\nprovider = "microsoft365"\nusername = "a@outlook-partners.com"\nfrom_address = "a@outlook-partners.com"\n'
                       'tenant_id = "contoso.onmicrosoft.com"\nclient_id = "abc"\n'
                       '[profiles.home]\nprovider = "gmail"\nclient_id = "x.apps.googleusercontent.com"\nusername = "me@gmail.com"\nfrom_address = "me@gmail.com"\n')
    assert not [k for k in found if k[1].endswith("personal-account")], found
    assert res.exit_code == 0, res.output


def test_personal_gmail_with_a_service_account_is_an_error(cli, isolated_env):
    res, found = _lint(cli, isolated_env,
                       '[profiles.sa]\ntype = "gmail-api"\nprovider = "gmail"\nauth = "service-account"\nclient_id = "1234"\n'
                       'username = "me@gmail.com"\nfrom_address = "me@gmail.com"\n')
    f = found[("sa", "gmail.personal-account")]
    assert "Workspace" in f["message"] and "--auth oauth" in f["fix"]


def test_the_same_from_address_set_twice_says_which_profile_sendmail_picks(cli, isolated_env):
    res, found = _lint(cli, isolated_env,
                       '[profiles.first]\nhost = "a.example"\nauth = "none"\nfrom_address = "ops@example.com"\n'
                       '[profiles.second]\nhost = "b.example"\nauth = "none"\nfrom_address = "OPS@example.com"\n'
                       '[profiles.child]\ninherits = "first"\n')
    f = found[("second", "profile.from-claimed-twice")]
    assert f["severity"] == "info" and "'first'" in f["message"]
    assert ("first", "profile.from-claimed-twice") not in found
    assert ("child", "profile.from-claimed-twice") not in found  # inherited, not set twice
    assert res.exit_code == 0
