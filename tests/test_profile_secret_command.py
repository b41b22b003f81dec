"""secret_command: `profile show` and `profile lint` never run it; when it runs, it sees no
other profile's MAILCTL_SECRET_* variables, non-UTF-8 output is a clear error, and a timeout
kills the command's children too."""

from __future__ import annotations

import json
import sys
import time

import pytest

from mailctl.errors import ConfigError, ExitCode
from mailctl.secrets import SecretResolver
from mailctl.secrets.command import CommandStore


def write(home, command: str) -> None:
    (home / "profiles.toml").write_text(
        'schema_version = 1\n[profiles.p]\nhost = "smtp.example.com"\nusername = "u@example.com"\n'
        f"secret_command = {json.dumps(command)}\n")


def test_show_does_not_run_the_command(cli, isolated_env, tmp_path):
    marker = tmp_path / "ran"
    write(isolated_env, f"touch {marker}; sleep 100")
    start = time.monotonic()
    r = cli("profile", "show", "p", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["secrets"]["password"] == "command configured, not run"
    r = cli("profile", "show", "p")
    assert r.exit_code == 0 and "command configured, not run" in r.stdout
    assert time.monotonic() - start < 10 and not marker.exists()


def test_lint_does_not_run_the_command(cli, isolated_env, tmp_path):
    marker = tmp_path / "ran"
    write(isolated_env, f"touch {marker}; sleep 100")
    start = time.monotonic()
    r = cli("profile", "lint", "p", "--json")
    assert r.exit_code == 0, r.output
    findings = {f["id"]: f for f in [json.loads(line) for line in r.stdout.splitlines()]}
    assert "secret.missing" not in findings
    assert "command configured, not run" in findings["secret.command-not-run"]["message"]
    assert time.monotonic() - start < 10 and not marker.exists()


def test_the_environment_overrides_the_command_in_show(cli, isolated_env):
    write(isolated_env, "sleep 100")
    r = cli("profile", "show", "p", "--json", env={"MAILCTL_SECRET_P_PASSWORD": "x"})
    assert json.loads(r.stdout)["secrets"]["password"] == "stored (environment:p)"


def test_non_utf8_output_is_a_config_error_without_the_bytes():
    store = CommandStore(f"{sys.executable} -c \"import sys; sys.stdout.buffer.write(b'\\xff\\xfesecret')\"")
    with pytest.raises(ConfigError) as exc:
        store.get("p", "password")
    assert exc.value.exit_code == ExitCode.CONFIG and "UTF-8" in exc.value.message
    assert "secret" not in exc.value.message.replace("secret_command", "")


def test_the_command_sees_only_its_own_profiles_secrets(monkeypatch):
    monkeypatch.setenv("MAILCTL_SECRET_OTHER_PASSWORD", "other-profiles-password")
    monkeypatch.setenv("MAILCTL_SECRET_P_CLIENT_SECRET", "own")
    monkeypatch.setenv("MAILCTL_SECRET_P_X_PASSWORD", "p_x is another profile")
    store = CommandStore("env | grep '^MAILCTL_' | sort | tr '\\n' ' '")
    value = store.get("p", "password")
    assert "other-profiles-password" not in value and "another profile" not in value
    assert "MAILCTL_SECRET_P_CLIENT_SECRET=own" in value
    assert "MAILCTL_PROFILE=p" in value and "MAILCTL_SECRET_KIND=password" in value


def test_a_timeout_kills_the_commands_children():
    start = time.monotonic()
    with pytest.raises(ConfigError) as exc:
        CommandStore("sleep 30; echo late", timeout=1).get("p", "password")
    assert "did not finish within 1s" in exc.value.message
    assert time.monotonic() - start < 10


def test_commands_that_need_the_secret_still_run_it(isolated_env):
    from mailctl.profiles.resolve import resolve_profile
    from mailctl.profiles.store import ProfileStore

    write(isolated_env, "printf 'pw-from-command\\n'")
    profile = resolve_profile(ProfileStore(isolated_env / "profiles.toml").load(), "p")
    assert SecretResolver().get(profile, "password") == "pw-from-command"
