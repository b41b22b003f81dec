"""The profiles file on disk: symlinks written through, locks that never follow links, stale
temp files cleaned, hostile content (deep nesting, broken URLs, huge numbers) refused with one
line instead of a traceback, and hints that run as printed."""

from __future__ import annotations

import json
import os
import stat
import time

import pytest
import tomlkit


def names(cli, *pre) -> list[str]:
    r = cli(*pre, "profile", "list", "--json")
    assert r.exit_code == 0, r.output
    return [row["name"] for row in (json.loads(line) for line in r.stdout.splitlines())]


# --- symlinks ---------------------------------------------------------------------------------
def test_a_symlinked_file_is_written_through_and_stays_a_link(cli, isolated_env, tmp_path):
    dotfiles = tmp_path / "dotfiles" / "mailctl"
    dotfiles.mkdir(parents=True)
    target = dotfiles / "profiles.toml"
    target.write_text("# managed by my dotfiles\nschema_version = 1\n")
    link = isolated_env / "profiles.toml"
    link.symlink_to(target)
    r = cli("profile", "add", "p", "--host", "smtp.example.com")
    assert r.exit_code == 0, r.output
    assert link.is_symlink() and os.readlink(link) == str(target)
    text = target.read_text()
    assert "# managed by my dotfiles" in text and tomlkit.parse(text)["profiles"]["p"]["host"] == "smtp.example.com"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert cli("profile", "edit", "p", "--port", "2525").exit_code == 0
    assert link.is_symlink() and tomlkit.parse(target.read_text())["profiles"]["p"]["port"] == 2525
    assert sorted(p.name for p in dotfiles.iterdir()) == ["profiles.toml"]  # no temp files, no lock in the dotfiles


def test_a_dangling_symlink_is_reported_on_read_and_created_on_add(cli, isolated_env, tmp_path):
    target = tmp_path / "missing" / "profiles.toml"
    link = isolated_env / "profiles.toml"
    link.symlink_to(target)
    r = cli("profile", "list")
    assert r.exit_code == 78 and str(link) in r.stderr and "symbolic link" in r.stderr and "Traceback" not in r.output
    assert cli("profile", "add", "p", "--host", "smtp.example.com").exit_code == 0
    assert link.is_symlink() and target.exists() and names(cli) == ["p"]


def test_the_lock_never_follows_a_symlink(cli, isolated_env, tmp_path):
    victim = tmp_path / "victim"
    (isolated_env / "profiles.toml.lock").symlink_to(victim)
    r = cli("profile", "add", "p", "--host", "smtp.example.com")
    assert r.exit_code == 78, r.output
    assert "lock" in r.stderr and "symbolic link" in r.stderr and "Traceback" not in r.output
    assert not victim.exists() and not (isolated_env / "profiles.toml").exists()


def test_stale_temp_files_of_a_killed_edit_are_removed(cli, isolated_env):
    stale = isolated_env / ".profiles.toml.abc123.tmp"
    fresh = isolated_env / ".profiles.toml.def456.tmp"
    other = isolated_env / ".other.toml.abc.tmp"
    for f in (stale, fresh, other):
        f.write_text("half a file")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    assert cli("profile", "add", "p", "--host", "smtp.example.com").exit_code == 0
    assert not stale.exists()
    assert fresh.exists() and other.exists()  # an edit in progress, someone else's file


# --- hostile content -----------------------------------------------------------------------------
@pytest.mark.parametrize("args", [("profile", "list"), ("profile", "show", "p"), ("profile", "lint"),
                                  ("profile", "add", "q", "--host", "h.example.com"), ("settings", "show")])
def test_deeply_nested_toml_is_78_not_recursion(cli, isolated_env, args):
    cfg = isolated_env / "profiles.toml"
    cfg.write_text('schema_version = 1\n[profiles.p]\nhost = "h.example.com"\nscopes = ' + "[" * 1000 + "]" * 1000 + "\n")
    before = cfg.read_bytes()
    r = cli(*args)
    assert r.exit_code == 78, r.output
    assert str(cfg) in r.stderr and "nested" in r.stderr
    assert "Traceback" not in r.output and "RecursionError" not in r.output
    assert cfg.read_bytes() == before


@pytest.mark.parametrize("proxy", ["http://[::1", "http://[::1]:99999", "socks5://h .example.com:1080", "http://[zz]:8080"])
def test_a_broken_proxy_url_is_refused_at_the_field(cli, isolated_env, proxy):
    r = cli("profile", "add", "p", "--host", "smtp.example.com", "--proxy", proxy)
    assert r.exit_code == 65, r.output
    assert "proxy" in r.stderr and "Traceback" not in r.output
    cfg = isolated_env / "profiles.toml"
    cfg.write_text(f'schema_version = 1\n[profiles.p]\nhost = "smtp.example.com"\nproxy = "{proxy}"\n')
    for args in (("profile", "list"), ("profile", "show", "p"), ("profile", "lint")):
        r = cli(*args)
        assert r.exit_code == 78, (args, r.output)
        assert f"{cfg}:4" in r.stderr and "proxy" in r.stderr and "Traceback" not in r.output


def test_a_proxy_url_error_does_not_echo_a_password(cli):
    r = cli("profile", "add", "p", "--host", "smtp.example.com", "--proxy", "http://u:hunter2@[::1")
    assert r.exit_code == 65 and "hunter2" not in r.output


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e308", "infinity", "3601", "0", "-5"])
def test_timeout_must_be_finite_and_sane(cli, isolated_env, value):
    r = cli("profile", "add", "p", "--host", "smtp.example.com", "--timeout", value)
    assert r.exit_code == 65, r.output
    assert "timeout" in r.stderr and "Traceback" not in r.output
    assert not (isolated_env / "profiles.toml").exists()


@pytest.mark.parametrize("toml_value", ["inf", "nan", "1e308", "-1.5", "7200"])
def test_timeout_from_the_file_must_be_finite_and_sane(cli, isolated_env, toml_value):
    cfg = isolated_env / "profiles.toml"
    cfg.write_text(f'schema_version = 1\n[profiles.p]\nhost = "smtp.example.com"\ntimeout = {toml_value}\n')
    r = cli("profile", "list")
    assert r.exit_code == 78 and f"{cfg}:4" in r.stderr and "timeout" in r.stderr, r.output


def test_sane_timeouts_still_work(cli, isolated_env):
    assert cli("profile", "add", "p", "--host", "smtp.example.com", "--timeout", "2.5").exit_code == 0
    assert cli("profile", "edit", "p", "--timeout", "3600").exit_code == 0
    assert json.loads(cli("profile", "show", "p", "--json").stdout)["values"]["timeout"] == 3600


@pytest.mark.parametrize("field,value", [("rate_limit_per_minute", str(10**30)), ("alternate_port", "1e5")])
def test_huge_counts_are_refused(cli, field, value):
    r = cli("profile", "add", "p", "--host", "smtp.example.com", f"--{field.replace('_', '-')}", value)
    assert r.exit_code == 65 and field in r.stderr, r.output


# --- hints that run as printed ------------------------------------------------------------------
def test_add_with_a_missing_field_suggests_add_not_edit(cli, isolated_env):
    r = cli("profile", "add", "p", "--security", "tls")
    assert r.exit_code == 78
    hint = r.stderr.split("Hint: ", 1)[1]
    assert "mailctl profile add p --host VALUE" in hint and "profile edit" not in hint
    assert cli("profile", "edit", "p", "--host", "x.example.com").exit_code == 66  # why edit cannot help
    assert cli("profile", "add", "p", "--security", "tls", "--host", "smtp.example.com").exit_code == 0


def test_ews_hint_uses_the_bare_autodiscover_flag(cli, isolated_env):
    r = cli("profile", "add", "e", "--type", "ews", "--username", "u@example.com", "--no-secret")
    assert r.exit_code == 78
    assert "(or --autodiscover)" in r.stderr and "--autodiscover true" not in r.stderr
    r = cli("profile", "add", "e", "--type", "ews", "--username", "u@example.com", "--autodiscover", "--no-secret")
    assert r.exit_code == 0, r.output


def test_default_local_is_a_valid_file_and_set_default_accepts_it(cli, isolated_env):
    assert cli("profile", "set-default", "local").exit_code == 0
    assert names(cli) == ["local"]
    data = json.loads(cli("profile", "show", "--json").stdout)
    assert data["name"] == "local" and data["builtin"] is True
    assert cli("profile", "set-default", "nosuch").exit_code == 66
