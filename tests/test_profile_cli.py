"""CliRunner tests for every `mailctl profile` command and its error paths.

Each test runs in its own MAILCTL_HOME with an in-memory keyring (tests/conftest.py)."""

from __future__ import annotations

import json

import pytest
import tomlkit

SECRET = "Sup3r-s3cret/value+with spaces&ünïcode"
OTHER_SECRET = "an0ther-Secret-Value-42"


@pytest.fixture
def cfg(isolated_env):
    return isolated_env / "profiles.toml"


def read_toml(path) -> dict:
    return tomlkit.parse(path.read_text(encoding="utf-8")).unwrap()


def ok(result):
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr, result.exception)
    return result


def assert_no_secret(result, *secrets: str) -> None:
    for secret in secrets or (SECRET,):
        assert secret not in result.stdout
        assert secret not in result.stderr


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("Error:")]


@pytest.fixture
def company(cli):
    """A company profile with password auth and a stored secret, plus a user profile inheriting it."""

    ok(cli("profile", "add", "company", "--host", "smtp.example.com", "--security", "tls",
           "--username", "relay@example.com", "--password-stdin", input=SECRET + "\n"))
    ok(cli("profile", "add", "alice", "--inherits", "company", "--from-address", "alice@example.com",
           "--username", "alice@example.com", "--no-secret"))
    return "company"


# --- add -------------------------------------------------------------------------------------
class TestAdd:
    def test_first_profile_becomes_default(self, cli, cfg):
        r = ok(cli("profile", "add", "first", "--host", "smtp.example.com"))
        data = read_toml(cfg)
        assert data["default"] == "first"
        assert data["profiles"]["first"] == {"host": "smtp.example.com"}
        assert data["schema_version"] == 1
        assert "default" in r.stderr
        ok(cli("profile", "add", "second", "--host", "smtp2.example.com"))
        assert read_toml(cfg)["default"] == "first"

    def test_default_flag_moves_default(self, cli, cfg):
        ok(cli("profile", "add", "first", "--host", "smtp.example.com"))
        ok(cli("profile", "add", "second", "--host", "smtp2.example.com", "--default"))
        assert read_toml(cfg)["default"] == "second"

    @pytest.mark.parametrize("security,port", [("starttls", 587), ("tls", 465), ("none", 25)])
    def test_port_follows_security(self, cli, security, port):
        ok(cli("profile", "add", "p", "--host", "smtp.example.com", "--security", security))
        data = json.loads(ok(cli("profile", "show", "p", "--json")).stdout)
        assert data["values"]["port"] == port
        assert data["values"]["security"] == security
        assert data["origin"]["port"] == f"default for security={security}"

    def test_explicit_port_wins_over_security_default(self, cli):
        ok(cli("profile", "add", "p", "--host", "smtp.example.com", "--security", "tls", "--port", "2465"))
        data = json.loads(ok(cli("profile", "show", "p", "--json")).stdout)
        assert data["values"]["port"] == 2465
        assert data["origin"]["port"] == "profile"

    def test_preset_microsoft365_fills_server(self, cli, cfg):
        ok(cli("profile", "add", "m365", "--provider", "microsoft365", "--client-id", "app-id-1",
               "--tenant-id", "contoso.onmicrosoft.com"))
        # Presets are applied when resolving; the file keeps only what the person chose.
        assert "host" not in read_toml(cfg)["profiles"]["m365"]
        data = json.loads(ok(cli("profile", "show", "m365", "--json")).stdout)
        v, o = data["values"], data["origin"]
        assert (v["host"], v["port"], v["security"], v["auth"]) == ("smtp.office365.com", 587, "starttls", "oauth")
        for key in ("host", "port", "security", "auth"):
            assert o[key] == "preset:microsoft365"

    def test_preset_gmail_fills_server_and_own_values_win(self, cli):
        ok(cli("profile", "add", "g", "--provider", "gmail", "--port", "465", "--security", "tls"))
        data = json.loads(ok(cli("profile", "show", "g", "--json")).stdout)
        assert data["values"]["host"] == "smtp.gmail.com"
        assert data["origin"]["host"] == "preset:gmail"
        assert data["values"]["port"] == 465 and data["origin"]["port"] == "profile"
        assert data["values"]["security"] == "tls" and data["origin"]["security"] == "profile"

    def test_password_stdin_goes_to_keyring_not_toml(self, cli, cfg, memory_keyring):
        r = ok(cli("profile", "add", "p", "--host", "smtp.example.com", "--username", "u@example.com",
                   "--password-stdin", "--json", input=SECRET + "\n"))
        assert json.loads(r.stdout)["secret_stored"] == "password"
        assert memory_keyring.entries[("mailctl", "p/password")] == SECRET
        assert SECRET not in cfg.read_text(encoding="utf-8")
        assert_no_secret(r)

    def test_missing_secret_without_terminal_names_flag(self, cli, cfg):
        r = cli("profile", "add", "p", "--host", "smtp.example.com", "--username", "u@example.com")
        assert r.exit_code == 2
        assert "--password-stdin" in r.stderr and "--no-secret" in r.stderr
        assert not cfg.exists()

    def test_no_secret_stores_nothing(self, cli, cfg, memory_keyring):
        ok(cli("profile", "add", "p", "--host", "smtp.example.com", "--username", "u@example.com", "--no-secret"))
        assert memory_keyring.entries == {}
        assert "p" in read_toml(cfg)["profiles"]

    def test_password_stdin_with_no_secret_is_usage_error(self, cli, cfg):
        r = cli("profile", "add", "p", "--host", "smtp.example.com", "--username", "u@example.com",
                "--password-stdin", "--no-secret", input=SECRET + "\n")
        assert r.exit_code == 2
        assert "--password-stdin" in r.stderr and "--no-secret" in r.stderr
        assert not cfg.exists()
        assert_no_secret(r)

    def test_empty_stdin_is_rejected(self, cli, cfg):
        r = cli("profile", "add", "p", "--host", "smtp.example.com", "--username", "u@example.com",
                "--password-stdin", input="")
        assert r.exit_code == 65
        assert not cfg.exists()

    def test_secret_for_auth_none_is_rejected_and_nothing_written(self, cli, cfg, memory_keyring):
        r = cli("profile", "add", "p", "--host", "smtp.example.com", "--auth", "none", "--password-stdin",
                input=SECRET + "\n")
        assert r.exit_code == 65
        assert "auth" in r.stderr
        assert not cfg.exists()
        assert memory_keyring.entries == {}
        assert_no_secret(r)

    @pytest.mark.parametrize(
        "args,field,rule",
        [
            (["--port", "70000"], "port", "1-65535"),
            (["--port", "abc"], "port", "whole number"),
            (["--security", "ssl"], "security", "one of"),
            (["--from-address", "not-an-address"], "from_address", "email address"),
            (["--reply-to", "a b@example.com"], "reply_to", "email address"),
            (["--signature", "x" * 251], "signature", "250"),
            (["--description", "x" * 1001], "description", "1000"),
            (["--proxy", "ftp://proxy.example.com"], "proxy", "URL"),
            (["--ews-url", "not a url"], "ews_url", "URL"),
            (["--tls-fingerprint", "abcd"], "tls_fingerprint", "SHA-256"),
            (["--sender-name", "Eve\r\nBcc: x@example.com"], "sender_name", "line breaks"),
            (["--host", "bad host!"], "host", "host name"),
            (["--type", "carrier-pigeon"], "type", "one of"),
        ],
    )
    def test_invalid_field_exit_65_names_field_and_rule(self, cli, cfg, args, field, rule):
        r = cli("profile", "add", "p", "--host", "smtp.example.com", "--no-secret", *args)
        assert r.exit_code == 65, r.stderr
        lines = error_lines(r)
        assert len(lines) == 1
        assert field in lines[0] and rule in lines[0]
        assert not cfg.exists()

    @pytest.mark.parametrize("name", ["", "has-dash", "has space", "x" * 51, "ünï"])
    def test_invalid_name_exit_65(self, cli, cfg, name):
        r = cli("profile", "add", name, "--host", "smtp.example.com")
        assert r.exit_code == 65
        assert "1-50 letters, digits or underscores" in r.stderr
        assert not cfg.exists()

    def test_duplicate_name_rejected_and_file_untouched(self, cli, cfg):
        ok(cli("profile", "add", "p", "--host", "smtp.example.com"))
        before = cfg.read_bytes()
        r = cli("profile", "add", "p", "--host", "other.example.com")
        assert r.exit_code == 65
        assert "already exists" in r.stderr
        assert cfg.read_bytes() == before

    def test_password_in_proxy_url_rejected_and_not_echoed(self, cli, cfg):
        r = cli("profile", "add", "p", "--host", "smtp.example.com", "--proxy", "http://u:Pr0xyPw99@proxy.example.com:3128")
        assert r.exit_code == 65
        assert "proxy" in r.stderr
        assert "Pr0xyPw99" not in r.output
        assert not cfg.exists()

    def test_missing_parent_rejected(self, cli, cfg):
        ok(cli("profile", "add", "p", "--host", "smtp.example.com"))
        before = cfg.read_bytes()
        r = cli("profile", "add", "child", "--inherits", "nobody")
        assert r.exit_code == 66
        assert "inherits" in r.stderr and "nobody" in r.stderr and "existing profiles: p" in r.stderr
        assert cfg.read_bytes() == before

    def test_smtp_without_host_is_missing_required_field(self, cli, cfg):
        r = cli("profile", "add", "p", "--security", "tls")
        assert r.exit_code == 78
        assert "host" in r.stderr and "--host" in r.stderr
        assert not cfg.exists()


# --- edit ------------------------------------------------------------------------------------
class TestEdit:
    def test_set_and_unset(self, cli, cfg):
        ok(cli("profile", "add", "p", "--host", "smtp.example.com", "--port", "2525", "--description", "old"))
        ok(cli("profile", "edit", "p", "--description", "new text", "--unset", "port"))
        table = read_toml(cfg)["profiles"]["p"]
        assert table == {"host": "smtp.example.com", "description": "new text"}
        data = json.loads(ok(cli("profile", "show", "p", "--json")).stdout)
        assert data["values"]["port"] == 587  # defaulted again once unset

    def test_unset_accepts_dashed_name(self, cli, cfg):
        ok(cli("profile", "add", "p", "--host", "smtp.example.com", "--from-address", "a@example.com"))
        ok(cli("profile", "edit", "p", "--unset", "from-address"))
        assert "from_address" not in read_toml(cfg)["profiles"]["p"]

    def test_unknown_unset_field_exit_65_file_untouched(self, cli, cfg):
        ok(cli("profile", "add", "p", "--host", "smtp.example.com"))
        before = cfg.read_bytes()
        r = cli("profile", "edit", "p", "--unset", "bogus")
        assert r.exit_code == 65
        assert "bogus" in r.stderr
        assert cfg.read_bytes() == before

    def test_invalid_value_exit_65_file_untouched(self, cli, cfg):
        ok(cli("profile", "add", "p", "--host", "smtp.example.com"))
        before = cfg.read_bytes()
        r = cli("profile", "edit", "p", "--port", "0", "--description", "would be lost")
        assert r.exit_code == 65
        assert "port" in r.stderr and "1-65535" in r.stderr
        assert cfg.read_bytes() == before

    def test_no_such_profile_exit_66(self, cli, cfg):
        ok(cli("profile", "add", "p", "--host", "smtp.example.com"))
        before = cfg.read_bytes()
        r = cli("profile", "edit", "ghost", "--port", "25")
        assert r.exit_code == 66
        assert "ghost" in r.stderr
        assert cfg.read_bytes() == before

    def test_nothing_to_change_is_usage_error(self, cli, cfg):
        ok(cli("profile", "add", "p", "--host", "smtp.example.com"))
        r = cli("profile", "edit", "p")
        assert r.exit_code == 2

    def test_self_inheritance_rejected(self, cli, cfg):
        ok(cli("profile", "add", "p", "--host", "smtp.example.com"))
        before = cfg.read_bytes()
        r = cli("profile", "edit", "p", "--inherits", "p")
        assert r.exit_code == 65
        assert "inherits" in r.stderr
        assert cfg.read_bytes() == before

    def test_cycle_rejected_file_untouched(self, cli, cfg, company):
        before = cfg.read_bytes()
        r = cli("profile", "edit", "company", "--inherits", "alice")
        assert r.exit_code == 65
        assert "inherits" in r.stderr and "cycle" in r.stderr
        assert cfg.read_bytes() == before
        assert "Traceback" not in r.output

    def test_set_and_unset_same_field_rejected(self, cli, cfg):
        ok(cli("profile", "add", "p", "--host", "smtp.example.com"))
        before = cfg.read_bytes()
        r = cli("profile", "edit", "p", "--port", "25", "--unset", "port")
        assert r.exit_code == 65
        assert "port" in r.stderr
        assert cfg.read_bytes() == before

    def test_password_stdin_replaces_secret(self, cli, cfg, memory_keyring, company):
        r = ok(cli("profile", "edit", "company", "--password-stdin", input=OTHER_SECRET + "\n"))
        assert memory_keyring.entries[("mailctl", "company/password")] == OTHER_SECRET
        assert_no_secret(r, SECRET, OTHER_SECRET)
        assert OTHER_SECRET not in cfg.read_text(encoding="utf-8")

    def test_bool_fields(self, cli, cfg):
        ok(cli("profile", "add", "p", "--host", "smtp.example.com"))
        ok(cli("profile", "edit", "p", "--no-tls-verify"))
        assert read_toml(cfg)["profiles"]["p"]["tls_verify"] is False
        ok(cli("profile", "edit", "p", "--tls-verify"))
        assert read_toml(cfg)["profiles"]["p"]["tls_verify"] is True


# --- show ------------------------------------------------------------------------------------
class TestShow:
    def test_values_and_inherited_origins(self, cli, company):
        data = json.loads(ok(cli("profile", "show", "alice", "--json")).stdout)
        assert data["name"] == "alice"
        assert data["chain"] == ["alice", "company"]
        assert data["values"]["host"] == "smtp.example.com"
        assert data["origin"]["host"] == "inherited:company"
        assert data["origin"]["security"] == "inherited:company"
        assert data["values"]["username"] == "alice@example.com"
        assert data["origin"]["username"] == "profile"
        assert data["default"] is False

    def test_child_falls_back_to_parents_secret(self, cli, company):
        r = ok(cli("profile", "show", "alice", "--json"))
        data = json.loads(r.stdout)
        assert data["secrets"]["password"] == "stored (keyring:company)"
        assert_no_secret(r)

    def test_table_marks_origins_and_masks_secret(self, cli, company):
        r = ok(cli("profile", "show", "company"))
        assert "smtp.example.com" in r.stdout
        assert "********" in r.stdout
        assert "stored (keyring:company)" in r.stdout
        assert_no_secret(r)
        r = ok(cli("profile", "show", "alice"))
        host_line = next(line for line in r.stdout.splitlines() if line.startswith("host "))
        assert "inherited:company" in host_line

    def test_preset_origin_in_table(self, cli):
        ok(cli("profile", "add", "m365", "--provider", "microsoft365", "--client-id", "app-id-1",
               "--tenant-id", "contoso.onmicrosoft.com"))
        r = ok(cli("profile", "show", "m365"))
        host_line = next(line for line in r.stdout.splitlines() if line.startswith("host "))
        assert "smtp.office365.com" in host_line and "preset:microsoft365" in host_line

    def test_secret_never_printed_anywhere(self, cli, company, monkeypatch):
        monkeypatch.setenv("MAILCTL_SECRET_ALICE_PASSWORD", OTHER_SECRET)
        for args in (
            ("profile", "show", "alice"),
            ("profile", "show", "alice", "--json"),
            ("--json", "profile", "show", "company"),
            ("profile", "list"),
            ("profile", "list", "--json"),
            ("-v", "profile", "show", "company"),
        ):
            r = ok(cli(*args))
            assert_no_secret(r, SECRET, OTHER_SECRET)
        data = json.loads(ok(cli("profile", "show", "alice", "--json")).stdout)
        assert data["secrets"]["password"] == "stored (environment:alice)"

    def test_missing_secret_shown_as_not_stored(self, cli):
        ok(cli("profile", "add", "p", "--host", "smtp.example.com", "--username", "u@example.com", "--no-secret"))
        data = json.loads(ok(cli("profile", "show", "p", "--json")).stdout)
        assert data["secrets"] == {"password": "not stored"}

    def test_default_is_shown_without_name(self, cli, company):
        data = json.loads(ok(cli("profile", "show", "--json")).stdout)
        assert data["name"] == "company" and data["default"] is True

    def test_no_such_profile_exit_66(self, cli, company):
        r = cli("profile", "show", "ghost")
        assert r.exit_code == 66
        assert "ghost" in r.stderr
        assert "company" in r.stderr  # the hint lists existing profiles

    def test_builtin_local_when_empty(self, cli):
        data = json.loads(ok(cli("profile", "show", "--json")).stdout)
        assert data["name"] == "local" and data["builtin"] is True
        assert data["values"]["type"] == "file"


# --- list ------------------------------------------------------------------------------------
class TestList:
    def test_builtin_local_when_empty(self, cli, cfg):
        rows = [json.loads(line) for line in ok(cli("profile", "list", "--json")).stdout.splitlines()]
        assert len(rows) == 1
        assert rows[0]["name"] == "local" and rows[0]["type"] == "file" and rows[0]["builtin"] is True
        assert rows[0]["default"] is True
        r = ok(cli("profile", "list"))
        assert "local (built-in)" in r.stdout
        assert not cfg.exists()  # listing never creates the file

    def test_json_rows(self, cli, company):
        ok(cli("profile", "add", "g", "--type", "graph", "--client-id", "app-id", "--tenant-id",
               "contoso.onmicrosoft.com", "--auth", "oauth"))
        rows = {row["name"]: row for row in [json.loads(line) for line in ok(cli("profile", "list", "--json")).stdout.splitlines()]}
        assert list(rows) == ["company", "alice", "g"]
        for row in rows.values():
            assert {"name", "type", "server", "auth", "default"} <= set(row)
        assert rows["company"] == {**rows["company"], "type": "smtp", "server": "smtp.example.com:465",
                                   "auth": "password", "default": True}
        assert rows["alice"]["server"] == "smtp.example.com:465" and rows["alice"]["default"] is False
        assert rows["alice"]["inherits"] == "company"
        assert rows["g"]["type"] == "graph" and rows["g"]["server"] == "https://graph.microsoft.com"
        assert rows["g"]["auth"] == "oauth"

    def test_table(self, cli, company):
        r = ok(cli("profile", "list"))
        header = r.stdout.splitlines()[0].split()
        assert header[:4] == ["name", "type", "server", "auth"] and "default" in header
        company_line = next(line for line in r.stdout.splitlines() if line.startswith("company"))
        assert "smtp.example.com:465" in company_line and "*" in company_line
        alice_line = next(line for line in r.stdout.splitlines() if line.startswith("alice"))
        assert "*" not in alice_line

    def test_global_json_flag(self, cli, company):
        rows = [json.loads(line) for line in ok(cli("--json", "profile", "list")).stdout.splitlines()]
        assert [row["name"] for row in rows] == ["company", "alice"]


# --- duplicate -------------------------------------------------------------------------------
class TestDuplicate:
    def test_default_name_copies_everything_but_secrets(self, cli, cfg, memory_keyring, company):
        r = ok(cli("profile", "duplicate", "company", "--no-secret"))
        data = read_toml(cfg)
        assert data["profiles"]["company_copied"] == data["profiles"]["company"]
        assert data["default"] == "company"
        assert ("mailctl", "company_copied/password") not in memory_keyring.entries
        assert memory_keyring.entries[("mailctl", "company/password")] == SECRET
        assert "no secret stored" in r.stderr

    def test_explicit_name_and_password_stdin(self, cli, cfg, memory_keyring, company):
        r = ok(cli("profile", "duplicate", "company", "company2", "--password-stdin", "--json",
                   input=OTHER_SECRET + "\n"))
        assert json.loads(r.stdout) == {"name": "company2", "source": "company", "secret_stored": "password", "exit_code": 0}
        assert memory_keyring.entries[("mailctl", "company2/password")] == OTHER_SECRET
        assert memory_keyring.entries[("mailctl", "company/password")] == SECRET
        assert_no_secret(r, SECRET, OTHER_SECRET)
        assert OTHER_SECRET not in cfg.read_text(encoding="utf-8")

    def test_inheritance_is_copied(self, cli, cfg, company):
        ok(cli("profile", "duplicate", "alice", "bob", "--no-secret"))
        assert read_toml(cfg)["profiles"]["bob"]["inherits"] == "company"

    def test_without_terminal_names_flag(self, cli, cfg, company):
        before = cfg.read_bytes()
        r = cli("profile", "duplicate", "company")
        assert r.exit_code == 2
        assert "--password-stdin" in r.stderr
        assert cfg.read_bytes() == before

    def test_password_stdin_and_no_secret_exclusive(self, cli, cfg, company):
        before = cfg.read_bytes()
        r = cli("profile", "duplicate", "company", "--password-stdin", "--no-secret", input=OTHER_SECRET + "\n")
        assert r.exit_code == 2
        assert cfg.read_bytes() == before

    def test_no_such_source_exit_66(self, cli, cfg, company):
        before = cfg.read_bytes()
        r = cli("profile", "duplicate", "ghost", "--no-secret")
        assert r.exit_code == 66
        assert cfg.read_bytes() == before

    def test_target_exists_exit_65(self, cli, cfg, company):
        before = cfg.read_bytes()
        r = cli("profile", "duplicate", "company", "alice", "--no-secret")
        assert r.exit_code == 65
        assert "already exists" in r.stderr
        assert cfg.read_bytes() == before

    def test_invalid_target_name_exit_65(self, cli, cfg, company):
        before = cfg.read_bytes()
        r = cli("profile", "duplicate", "company", "bad-name", "--no-secret")
        assert r.exit_code == 65
        assert cfg.read_bytes() == before


# --- delete ----------------------------------------------------------------------------------
class TestDelete:
    def test_requires_yes_without_terminal(self, cli, cfg, company):
        before = cfg.read_bytes()
        r = cli("profile", "delete", "alice")
        assert r.exit_code == 2
        assert "--yes" in r.stderr
        assert cfg.read_bytes() == before

    def test_delete_removes_profile_and_secrets(self, cli, cfg, memory_keyring):
        ok(cli("profile", "add", "keep", "--host", "smtp.example.com"))
        ok(cli("profile", "add", "p", "--host", "smtp.example.com", "--username", "u@example.com",
               "--password-stdin", input=SECRET + "\n"))
        from mailctl.secrets.keyring_store import KeyringStore

        KeyringStore().set("p", "oauth_tokens", "t" * 5000)  # split into parts
        KeyringStore().set("keep", "password", OTHER_SECRET)
        assert any(user.startswith("p/oauth_tokens/part") for _, user in memory_keyring.entries)
        r = ok(cli("profile", "delete", "p", "--yes", "--json"))
        assert sorted(json.loads(r.stdout)["secrets_removed"]) == ["oauth_tokens", "password"]
        assert "p" not in read_toml(cfg)["profiles"]
        assert not [u for _, u in memory_keyring.entries if u.startswith("p/")]
        assert memory_keyring.entries[("mailctl", "keep/password")] == OTHER_SECRET

    def test_default_needs_new_default(self, cli, cfg, company):
        ok(cli("profile", "add", "other", "--host", "smtp.example.com"))
        ok(cli("profile", "delete", "alice", "--yes"))
        before = cfg.read_bytes()
        r = cli("profile", "delete", "company", "--yes")
        assert r.exit_code == 65
        assert "--new-default" in r.output
        assert cfg.read_bytes() == before
        ok(cli("profile", "delete", "company", "--yes", "--new-default", "other"))
        data = read_toml(cfg)
        assert data["default"] == "other" and list(data["profiles"]) == ["other"]

    def test_new_default_must_exist(self, cli, cfg, company):
        ok(cli("profile", "delete", "alice", "--yes"))
        ok(cli("profile", "add", "other", "--host", "smtp.example.com"))
        before = cfg.read_bytes()
        r = cli("profile", "delete", "company", "--yes", "--new-default", "ghost")
        assert r.exit_code == 66
        assert cfg.read_bytes() == before
        r = cli("profile", "delete", "company", "--yes", "--new-default", "company")
        assert r.exit_code == 66
        assert cfg.read_bytes() == before

    def test_last_profile_may_be_deleted_even_if_default(self, cli, cfg, memory_keyring):
        ok(cli("profile", "add", "only", "--host", "smtp.example.com", "--username", "u@example.com",
               "--password-stdin", input=SECRET + "\n"))
        ok(cli("profile", "delete", "only", "--yes"))
        data = read_toml(cfg)
        assert "default" not in data and not data.get("profiles")
        assert memory_keyring.entries == {}
        rows = [json.loads(line) for line in ok(cli("profile", "list", "--json")).stdout.splitlines()]
        assert rows[0]["name"] == "local"

    def test_refuses_when_children_inherit(self, cli, cfg, memory_keyring, company):
        ok(cli("profile", "add", "other", "--host", "smtp.example.com"))
        before = cfg.read_bytes()
        r = cli("profile", "delete", "company", "--yes", "--new-default", "other")
        assert r.exit_code == 65
        assert "alice" in r.stderr
        assert cfg.read_bytes() == before
        assert memory_keyring.entries[("mailctl", "company/password")] == SECRET

    def test_no_such_profile_exit_66(self, cli, cfg, company):
        before = cfg.read_bytes()
        r = cli("profile", "delete", "ghost", "--yes")
        assert r.exit_code == 66
        assert cfg.read_bytes() == before


# --- set-default -----------------------------------------------------------------------------
class TestSetDefault:
    def test_set_default(self, cli, cfg, company):
        r = ok(cli("profile", "set-default", "alice", "--json"))
        assert json.loads(r.stdout) == {"name": "alice", "default": True, "default_profile": "alice", "exit_code": 0}
        assert read_toml(cfg)["default"] == "alice"
        data = json.loads(ok(cli("profile", "show", "--json")).stdout)
        assert data["name"] == "alice"

    def test_no_such_profile_exit_66(self, cli, cfg, company):
        before = cfg.read_bytes()
        r = cli("profile", "set-default", "ghost")
        assert r.exit_code == 66
        assert cfg.read_bytes() == before


# --- rename ----------------------------------------------------------------------------------
class TestRename:
    def test_rename_moves_secrets_default_and_children(self, cli, cfg, memory_keyring, company):
        from mailctl.secrets.keyring_store import KeyringStore

        big = "B" * 3000
        KeyringStore().set("company", "oauth_tokens", big)
        r = ok(cli("profile", "rename", "company", "corp", "--json"))
        assert sorted(json.loads(r.stdout)["secrets_moved"]) == ["oauth_tokens", "password"]
        data = read_toml(cfg)
        assert list(data["profiles"]) == ["alice", "corp"] or set(data["profiles"]) == {"alice", "corp"}
        assert data["default"] == "corp"
        assert data["profiles"]["alice"]["inherits"] == "corp"
        assert memory_keyring.entries[("mailctl", "corp/password")] == SECRET
        assert KeyringStore().get("corp", "oauth_tokens") == big
        assert not [u for _, u in memory_keyring.entries if u.startswith("company/")]
        shown = json.loads(ok(cli("profile", "show", "alice", "--json")).stdout)
        assert shown["origin"]["host"] == "inherited:corp"
        assert shown["secrets"]["password"] == "stored (keyring:corp)"

    def test_rename_to_existing_exit_65(self, cli, cfg, memory_keyring, company):
        before = cfg.read_bytes()
        r = cli("profile", "rename", "company", "alice")
        assert r.exit_code == 65
        assert cfg.read_bytes() == before
        assert memory_keyring.entries[("mailctl", "company/password")] == SECRET

    def test_rename_invalid_name_exit_65(self, cli, cfg, company):
        before = cfg.read_bytes()
        r = cli("profile", "rename", "company", "no way")
        assert r.exit_code == 65
        assert cfg.read_bytes() == before

    def test_rename_missing_exit_66(self, cli, cfg, company):
        before = cfg.read_bytes()
        r = cli("profile", "rename", "ghost", "spirit")
        assert r.exit_code == 66
        assert cfg.read_bytes() == before


# --- broken files: every command exits 78 and leaves the file alone ---------------------------
BROKEN_FILES = [
    ("malformed", 'schema_version = 1\n\n[profiles.a]\nhost = "smtp.example.com\n', 4, None),
    ("unknown key", 'schema_version = 1\n\n[profiles.a]\nhost = "smtp.example.com"\nhots = "typo"\n', 5, "hots"),
    ("wrong type", 'schema_version = 1\n\n[profiles.a]\nhost = "smtp.example.com"\nport = "587x"\n', 5, "port"),
    ("bool as port", '# mine\nschema_version = 1\n[profiles.a]\nport = true\nhost = "h.example.com"\n', 4, "port"),
    ("unknown top", 'schema_version = 1\ncolour = "blue"\n', 2, "colour"),
    ("secret in toml", 'schema_version = 1\n[profiles.a]\nhost = "smtp.example.com"\npassword = "hunter2"\n', 4, "password"),
    ("newer schema", 'schema_version = 99\n[profiles.a]\nhost = "smtp.example.com"\n', 1, "schema_version"),
]

COMMANDS = [
    ("profile", "list"),
    ("profile", "show", "a"),
    ("profile", "add", "b", "--host", "smtp.example.com"),
    ("profile", "edit", "a", "--port", "25"),
    ("profile", "duplicate", "a", "--no-secret"),
    ("profile", "delete", "a", "--yes"),
    ("profile", "set-default", "a"),
    ("profile", "rename", "a", "c"),
]


@pytest.mark.parametrize("label,text,line,key", BROKEN_FILES, ids=[b[0] for b in BROKEN_FILES])
@pytest.mark.parametrize("args", COMMANDS, ids=[" ".join(c[1:3]) for c in COMMANDS])
def test_broken_file_exit_78_names_file_line_key_and_is_untouched(cli, cfg, label, text, line, key, args):
    cfg.write_text(text, encoding="utf-8")
    before = cfg.read_bytes()
    r = cli(*args)
    assert r.exit_code == 78, (r.stdout, r.stderr)
    lines = error_lines(r)
    assert len(lines) == 1
    assert f"{cfg}:{line}" in lines[0]
    if key:
        assert key in lines[0]
    assert "hunter2" not in r.output
    assert "Traceback" not in r.output
    assert cfg.read_bytes() == before


# --- global options --------------------------------------------------------------------------
class TestGlobalOptions:
    def test_config_option_and_env_pick_the_file(self, cli, cfg, tmp_path, monkeypatch):
        other = tmp_path / "elsewhere" / "mine.toml"
        ok(cli("--config", str(other), "profile", "add", "x", "--host", "smtp.example.com"))
        assert "x" in read_toml(other)["profiles"]
        assert not cfg.exists()
        rows = [json.loads(line) for line in ok(cli("--config", str(other), "profile", "list", "--json")).stdout.splitlines()]
        assert [row["name"] for row in rows] == ["x"]
        monkeypatch.setenv("MAILCTL_CONFIG", str(other))
        rows = [json.loads(line) for line in ok(cli("profile", "list", "--json")).stdout.splitlines()]
        assert [row["name"] for row in rows] == ["x"]
        # --config beats MAILCTL_CONFIG; a named file that does not exist is an error, not "no profiles"
        r = cli("--config", str(cfg), "profile", "list", "--json")
        assert r.exit_code == 78 and str(cfg) in r.stderr and "--config" in r.stderr
        cfg.write_text("schema_version = 1\n")
        rows = [json.loads(line) for line in ok(cli("--config", str(cfg), "profile", "list", "--json")).stdout.splitlines()]
        assert [row["name"] for row in rows] == ["local"]

    def test_profile_option_and_env_pick_the_profile(self, cli, company, monkeypatch):
        assert json.loads(ok(cli("--profile", "alice", "profile", "show", "--json")).stdout)["name"] == "alice"
        assert json.loads(ok(cli("-p", "alice", "profile", "show", "--json")).stdout)["name"] == "alice"
        monkeypatch.setenv("MAILCTL_PROFILE", "alice")
        assert json.loads(ok(cli("profile", "show", "--json")).stdout)["name"] == "alice"
        # an explicit argument beats --profile
        assert json.loads(ok(cli("-p", "alice", "profile", "show", "company", "--json")).stdout)["name"] == "company"
        r = cli("-p", "ghost", "profile", "show")
        assert r.exit_code == 66

    def test_version(self, cli):
        from mailctl import __version__

        r = ok(cli("--version"))
        assert r.stdout.strip() == f"mailctl {__version__}"

    def test_quiet_silences_info_but_not_errors(self, cli, company):
        r = ok(cli("-q", "profile", "add", "q", "--host", "smtp.example.com"))
        assert r.stderr == "" and r.stdout == ""
        r = cli("-q", "profile", "show", "ghost")
        assert r.exit_code == 66 and r.stderr.startswith("Error:")

    def test_json_is_one_document_on_stdout(self, cli, company):
        for args in (("--json", "profile", "set-default", "alice"), ("profile", "set-default", "company", "--json")):
            r = ok(cli(*args))
            json.loads(r.stdout)

    def test_help_lists_profile_commands(self, cli):
        r = ok(cli("profile", "--help"))
        for command in ("add", "edit", "show", "list", "duplicate", "delete", "set-default", "rename"):
            assert command in r.stdout

    def test_unknown_option_is_usage_error(self, cli):
        r = cli("profile", "list", "--bogus")
        assert r.exit_code == 2
