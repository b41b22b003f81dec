import json

import keyring


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
    findings = json.loads(res.stdout)
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
    assert {f["id"] for f in json.loads(res.stdout)} == {"profile.unresolvable"}


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
