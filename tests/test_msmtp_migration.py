"""Issue #17: `profile import --msmtprc FILE` (accounts, defaults, `account a : b`, passwordeval,
tls settings; a literal password goes to the secret store, never the TOML) and `profile export
NAME --format msmtp|swaks|env` (no secrets). The exported swaks command line is run for real
against an aiosmtpd server on 127.0.0.1."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import keyring
import keyring.backends.fail
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from outbox_smtp import RecordingHandler, SmtpServer  # noqa: E402

PASSWORD = "s3cret-pw-do-not-leak"
MSMTPRC = f"""# a typical ~/.msmtprc
defaults
auth           on
tls            on
tls_trust_file /etc/ssl/certs/ca-certificates.crt
logfile        ~/.msmtp.log

account work
host smtp.corp.example
port 587
from alice@corp.example
user alice
passwordeval "pass show mail/work"
timeout 20

account work-sales : work
from *@sales.corp.example

account home
host mail.home.example
port 465
tls_starttls off
tls_certcheck off
user me@home.example
password {PASSWORD}
from me@home.example
domain laptop.home.example

account default : work
"""


@pytest.fixture
def rc(tmp_path):
    path = tmp_path / "msmtprc"
    path.write_text(MSMTPRC)
    return path


def show(cli, name):
    res = cli("profile", "show", name, "--json")
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_import_maps_accounts_defaults_inheritance_and_secrets(cli, isolated_env, rc, memory_keyring):
    res = cli("profile", "import", "--msmtprc", str(rc), "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["passwords_stored"] == ["home"] and data["default_profile"] == "work"
    assert data["renamed"]["work-sales"] == "work_sales"
    toml = (isolated_env / "profiles.toml").read_text()
    assert PASSWORD not in toml and PASSWORD not in res.output
    assert memory_keyring.entries[("mailctl", "home/password")] == PASSWORD

    work = show(cli, "work")["values"]
    assert work["host"] == "smtp.corp.example" and work["port"] == 587 and work["security"] == "starttls"
    assert work["auth"] == "password" and work["username"] == "alice" and work["timeout"] == 20
    assert work["secret_command"] == "pass show mail/work" and work["ca_file"] == "/etc/ssl/certs/ca-certificates.crt"
    sales = show(cli, "work_sales")
    assert sales["values"]["inherits"] == "work" and sales["origin"]["host"] == "inherited:work"
    assert sales["values"]["from_match"] == ["*@sales.corp.example"]  # a `from` pattern chooses the account
    home = show(cli, "home")
    assert home["values"]["security"] == "tls" and home["values"]["tls_verify"] is False
    assert home["values"]["ehlo_name"] == "laptop.home.example"
    assert home["secrets"]["password"].startswith("stored")
    assert 'default = "work"' in toml
    assert any("logfile" in n for n in data["notes"])


def test_without_a_usable_secret_store_nothing_is_imported_and_the_error_says_how(cli, isolated_env, rc):
    keyring.set_keyring(keyring.backends.fail.Keyring())
    res = cli("profile", "import", "--msmtprc", str(rc))
    assert res.exit_code == 78, res.output
    assert "nothing was imported" in res.stderr and "--skip-passwords" in res.stderr and "passwordeval" in res.stderr
    assert PASSWORD not in res.output
    assert not (isolated_env / "profiles.toml").exists()
    res = cli("profile", "import", "--msmtprc", str(rc), "--skip-passwords", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["passwords_skipped"] == ["home"]
    assert PASSWORD not in (isolated_env / "profiles.toml").read_text()


def test_dry_run_writes_nothing_and_hides_the_password(cli, isolated_env, rc):
    res = cli("profile", "import", "--msmtprc", str(rc), "--dry-run")
    assert res.exit_code == 0, res.output
    assert "work_sales" in res.stdout and "Would import 3 profile(s)" in res.stderr
    assert PASSWORD not in res.output and not (isolated_env / "profiles.toml").exists()


def test_an_existing_name_stops_the_import_and_prefix_avoids_it(cli, isolated_env, rc):
    (isolated_env / "profiles.toml").write_text('schema_version = 1\ndefault = "work"\n[profiles.work]\nhost = "old.example"\nauth = "none"\n')
    res = cli("profile", "import", "--msmtprc", str(rc))
    assert res.exit_code == 65 and "'work' already exists" in res.stderr and "--prefix" in res.stderr
    assert "old.example" in (isolated_env / "profiles.toml").read_text() and "home" not in (isolated_env / "profiles.toml").read_text()
    res = cli("profile", "import", "--msmtprc", str(rc), "--prefix", "m_")
    assert res.exit_code == 0, res.output
    assert show(cli, "m_work_sales")["values"]["inherits"] == "m_work"
    assert 'default = "work"' in (isolated_env / "profiles.toml").read_text()  # the existing default stays


@pytest.mark.parametrize("text, expect, code", [
    ("host x.example\n", "line 1: 'host' before any 'defaults' or 'account' line", 65),
    ("account a : nope\nhost x.example\n", "line 1: account 'a' inherits 'nope'", 65),
    ("account a\nhost x.example\nport many\n", "line 3: port", 65),
    ("account a\nhost x.example\nfrom \"unterminated\n", "line 3: unterminated double quote", 65),
    ("account a\nhost x.example\naccount a\nhost y.example\n", "account 'a' is defined twice", 65),
])
def test_bad_msmtprc_is_one_line_naming_file_and_line(cli, tmp_path, text, expect, code):
    path = tmp_path / "rc"
    path.write_text(text)
    res = cli("profile", "import", "--msmtprc", str(path))
    assert res.exit_code == code, res.output
    assert expect in res.stderr and str(path) in res.stderr and "Traceback" not in res.output


def test_missing_msmtprc_is_66(cli, tmp_path):
    res = cli("profile", "import", "--msmtprc", str(tmp_path / "none"))
    assert res.exit_code == 66 and "no such file" in res.stderr


# --- export ----------------------------------------------------------------------------------
def test_export_msmtp_round_trips_and_carries_no_secret(cli, isolated_env, rc, tmp_path, memory_keyring):
    assert cli("profile", "import", "--msmtprc", str(rc)).exit_code == 0
    for name in ("work", "home"):
        res = cli("profile", "export", name, "--format", "msmtp")
        assert res.exit_code == 0, res.output
        assert PASSWORD not in res.stdout
        again = tmp_path / f"{name}.rc"
        again.write_text(res.stdout)
        plan = json.loads(cli("profile", "import", "--msmtprc", str(again), "--dry-run", "--json").stdout)
        original = show(cli, name)["values"]
        for key, value in plan["profiles"][name].items():
            assert original[key] == value, (name, key)
    work = cli("profile", "export", "work").stdout
    assert 'passwordeval "pass show mail/work"' in work and "tls_starttls on" in work
    home = cli("profile", "export", "home").stdout
    assert "tls_certcheck off" in home and "tls_starttls off" in home
    assert "password" not in home.replace("passwordeval", "").replace("# the password is in mailctl's secret store", "")


def test_export_oauth_uses_mailctl_auth_token(cli, isolated_env):
    (isolated_env / "profiles.toml").write_text(
        'schema_version = 1\n[profiles.m365]\nprovider = "microsoft365"\nusername = "ops@contoso.com"\n'
        'tenant_id = "contoso.onmicrosoft.com"\nclient_id = "abc"\n[profiles.g]\ntype = "graph"\ntenant_id = "t.example"\nclient_id = "abc"\n')
    out = cli("profile", "export", "m365").stdout
    assert "auth xoauth2" in out and 'passwordeval "mailctl auth token m365 --no-check"' in out and "host smtp.office365.com" in out
    env = cli("profile", "export", "m365", "--format", "env").stdout
    assert "SMTP_PASSWORD_COMMAND='mailctl auth token m365 --no-check'" in env
    res = cli("profile", "export", "g")
    assert res.exit_code == 65 and "SMTP only" in res.stderr
    res = cli("profile", "export", "m365", "--format", "swaks")
    assert res.exit_code == 65 and "XOAUTH2" in res.stderr and "--format msmtp" in res.stderr
    res = cli("profile", "export", "m365", "--format", "postfix")
    assert res.exit_code == 2 and "msmtp, swaks, env" in res.stderr


def test_export_env_is_shell_variables(cli, isolated_env, rc, tmp_path, memory_keyring):
    assert cli("profile", "import", "--msmtprc", str(rc)).exit_code == 0
    env = cli("profile", "export", "work", "--format", "env").stdout
    script = tmp_path / "show.sh"
    script.write_text(env + 'printf "%s|%s|%s|%s" "$SMTP_HOST" "$SMTP_PORT" "$SMTP_SECURITY" "$SMTP_PASSWORD_COMMAND"\n')
    out = subprocess.run(["sh", str(script)], capture_output=True, text=True, timeout=10).stdout
    assert out == "smtp.corp.example|587|starttls|pass show mail/work"
    assert PASSWORD not in cli("profile", "export", "home", "--format", "env").stdout


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks is not installed")
def test_the_exported_swaks_command_sends_through_the_profiles_server(cli, isolated_env):
    with SmtpServer(RecordingHandler()) as srv:
        (isolated_env / "profiles.toml").write_text("schema_version = 1\n" + srv.profile_toml("relay", ehlo_name="box.example"))
        line = cli("profile", "export", "relay", "--format", "swaks").stdout
        argv = shlex.split(line) + ["--to", "ops@example.org", "--body", "hello from swaks", "--silent", "2"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stdout + done.stderr
        [got] = srv.handler.messages
    assert got["from"] == "app@example.com" and got["to"] == ["ops@example.org"]
    assert b"hello from swaks" in got["data"]


def test_several_parents_are_flattened_in_msmtps_order_and_unset_tls_is_said(cli, tmp_path):
    path = tmp_path / "rc"
    path.write_text("account a\nhost a.example\nuser u\n\naccount b\nhost b.example\ntls on\ntls_starttls off\n\n"
                    "defaults\ntimeout 7\n\naccount c : a, b\nport 2525\n")
    res = cli("profile", "import", "--msmtprc", str(path), "--dry-run", "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["profiles"]["c"] == {"host": "b.example", "port": 2525, "security": "tls", "username": "u", "timeout": 7}
    notes = "\n".join(data["notes"])
    assert "several parents (a, b) flattened" in notes
    assert "a: msmtp's tls is not set" in notes and "b: msmtp's tls is not set" not in notes
    assert "a: msmtp's auth is not set" in notes
