"""The one error boundary (MailctlGroup.invoke): a domain error becomes exactly one "Error:"
line (plus an optional "Hint:" line) and its exit code; no traceback unless MAILCTL_DEBUG=1."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mailctl.errors import (
    AuthError,
    ConfigError,
    ExitCode,
    MailctlError,
    NotFoundError,
    SecretStoreUnavailable,
    UsageError,
    ValidationError,
)
from mailctl.profiles import operations as ops


def raise_in_list(monkeypatch, exc: BaseException) -> None:
    def boom(store):
        raise exc

    monkeypatch.setattr(ops, "list_profiles", boom)


@pytest.mark.parametrize(
    "exc,code",
    [
        (UsageError("bad usage"), 2),
        (ValidationError("port: expected a port number 1-65535", field="port"), 65),
        (NotFoundError("no profile named 'x'"), 66),
        (AuthError("authentication failed"), 77),
        (ConfigError("profiles.toml:3: unknown key 'hots'"), 78),
        (SecretStoreUnavailable("no usable keyring"), 78),
        (MailctlError("checks found problems"), 1),
        (MailctlError("custom", exit_code=ExitCode.TEMPFAIL), 75),
    ],
)
def test_domain_error_is_one_line_with_exit_code(cli, monkeypatch, exc, code):
    raise_in_list(monkeypatch, exc)
    r = cli("profile", "list")
    assert r.exit_code == code
    assert r.stderr == f"Error: {exc.message}\n"
    assert r.stdout == ""
    assert r.exception is None


def test_hint_is_a_second_line(cli, monkeypatch):
    raise_in_list(monkeypatch, ConfigError("it broke", hint="fix it like this"))
    r = cli("profile", "list")
    assert r.exit_code == 78
    assert r.stderr.splitlines() == ["Error: it broke", "Hint: fix it like this"]


def test_real_domain_error_has_no_traceback(cli):
    r = cli("profile", "show", "ghost")
    assert r.exit_code == 66
    lines = r.stderr.splitlines()
    assert lines[0].startswith("Error: no profile named 'ghost'")
    assert len([line for line in lines if line.startswith("Error:")]) == 1
    assert all(line.startswith(("Error:", "Hint:")) for line in lines)
    assert "Traceback" not in r.output


def test_unexpected_exception_is_reported_as_a_bug(cli, monkeypatch):
    raise_in_list(monkeypatch, RuntimeError("kaboom"))
    r = cli("profile", "list")
    assert r.exit_code == 1
    lines = r.stderr.splitlines()
    assert lines[0] == "Error: unexpected RuntimeError: kaboom"
    assert lines[1].startswith("Hint:") and "MAILCTL_DEBUG=1" in lines[1]
    assert len(lines) == 2
    assert "Traceback" not in r.output


def test_keyboard_interrupt_exits_130(cli, monkeypatch):
    raise_in_list(monkeypatch, KeyboardInterrupt())
    r = cli("profile", "list")
    assert r.exit_code == 130
    assert r.stderr.strip() == "Interrupted."


def test_broken_pipe_exits_quietly(cli, monkeypatch):
    raise_in_list(monkeypatch, BrokenPipeError())
    r = cli("profile", "list")
    assert r.exit_code == 0
    assert "Error" not in r.stderr


@pytest.mark.parametrize("exc", [NotFoundError("no profile named 'x'"), RuntimeError("kaboom")])
def test_debug_lets_the_exception_propagate(cli, monkeypatch, exc):
    raise_in_list(monkeypatch, exc)
    monkeypatch.setenv("MAILCTL_DEBUG", "1")
    r = cli("profile", "list")
    assert r.exception is exc
    assert "Error:" not in r.stderr


def test_debug_zero_is_off(cli, monkeypatch):
    raise_in_list(monkeypatch, NotFoundError("no profile named 'x'"))
    monkeypatch.setenv("MAILCTL_DEBUG", "0")
    r = cli("profile", "list")
    assert r.exit_code == 66 and r.exception is None


def test_quiet_does_not_hide_errors(cli):
    r = cli("-q", "profile", "show", "ghost")
    assert r.exit_code == 66
    assert r.stderr.startswith("Error: ")


def test_json_mode_errors_still_go_to_stderr(cli):
    """Under --json the error is on stderr as usual, and also one object on stdout (docs/json.md)."""
    r = cli("--json", "profile", "show", "ghost")
    assert r.exit_code == 66
    assert r.stderr.startswith("Error: ")
    doc = json.loads(r.stdout)
    assert doc["exit_code"] == 66 and doc["error"].startswith("no profile named 'ghost'") and r.stdout.count("\n") == 1


def test_click_usage_errors_keep_exit_2(cli):
    r = cli("profile", "add")
    assert r.exit_code == 2
    assert "Traceback" not in r.output


# --- in a real process ---------------------------------------------------------------------------
def run(args, env_extra=None, home=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILCTL_")}
    env.update({"MAILCTL_HOME": str(home), "PYTHON_KEYRING_BACKEND": "keyring.backends.null.Keyring", "NO_COLOR": "1"})
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "mailctl", *args], capture_output=True, text=True, env=env, timeout=60)


def test_process_error_output_and_debug_traceback(isolated_env):
    cfg = isolated_env / "profiles.toml"
    cfg.write_text('schema_version = 1\n[profiles.a]\nhost = "h.example.com"\nhots = "typo"\n', encoding="utf-8")
    before = cfg.read_bytes()
    p = run(["profile", "list"], home=isolated_env)
    assert p.returncode == 78
    assert p.stdout == ""
    lines = p.stderr.splitlines()
    assert lines[0] == f"Error: {cfg}:4: profiles.a: unknown field 'hots'"
    assert len(lines) <= 2 and all(line.startswith(("Error:", "Hint:")) for line in lines)
    p = run(["profile", "list"], {"MAILCTL_DEBUG": "1"}, home=isolated_env)
    assert p.returncode != 0
    assert "Traceback" in p.stderr and "ConfigError" in p.stderr
    assert cfg.read_bytes() == before
