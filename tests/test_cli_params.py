"""Option values through mailctl._typer_fast (plain str/int/float/bool/list[str] without
pydantic) and the lazily loaded command groups: what a user sees must not depend on which
path converted the value."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

RAW = "From: a@example.com\nTo: b@example.org\nSubject: s\n\nbody\n"


def test_the_fast_path_is_active_on_pydantic_typer():
    import typer

    from mailctl import _typer_fast

    try:
        from typer import _coercion  # noqa: F401
    except ImportError:
        pytest.skip(f"typer {typer.__version__} is Click-based: nothing to speed up")
    assert _typer_fast.install() is True


def test_integers_are_parsed_and_checked(cli, isolated_env):
    for _ in range(5):
        assert cli("queue", "add", input=RAW).exit_code == 0
    r = cli("queue", "list", "--limit", "3", "--json")
    assert r.exit_code == 0 and len(r.stdout.splitlines()) == 3
    r = cli("queue", "list", "--limit", " 2 ", "--json")
    assert r.exit_code == 0 and len(r.stdout.splitlines()) == 2
    r = cli("queue", "list", "--limit", "three")
    assert r.exit_code == 2 and "--limit" in r.stderr and "'three' is not an integer" in r.stderr
    r = cli("queue", "list", "--limit", "0")
    assert r.exit_code == 2 and "--limit" in r.stderr and ">= 1" in r.stderr
    r = cli("queue", "list", "--limit", "2.5")
    assert r.exit_code == 2 and "--limit" in r.stderr


def test_floats_are_parsed_and_checked(cli, isolated_env):
    r = cli("dns", "check-spf", "example.com", "--timeout", "0")
    assert r.exit_code == 2 and "--timeout" in r.stderr and ">= 0.01" in r.stderr
    r = cli("dns", "check-spf", "example.com", "--timeout", "soon")
    assert r.exit_code == 2 and "'soon' is not a number" in r.stderr
    r = cli("queue", "flush", "--lease", "1e3", "--dry-run", "--json")
    assert r.exit_code == 0, r.stderr


def test_repeated_string_options_and_counts(cli, isolated_env):
    assert cli("queue", "add", input=RAW).exit_code == 0
    assert cli("queue", "add", "--hold", input=RAW).exit_code == 0
    r = cli("queue", "list", "--state", "queued", "--state", "held", "--json")
    assert r.exit_code == 0 and sorted(json.loads(line)["state"] for line in r.stdout.splitlines()) == ["held", "queued"]
    r = cli("queue", "list", "--state", "queued", "--json")
    assert [json.loads(line)["state"] for line in r.stdout.splitlines()] == ["queued"]
    assert cli("-v", "-v", "profile", "list").exit_code == 0


def test_string_options_from_the_environment(cli, isolated_env, tmp_path):
    cfg = tmp_path / "other.toml"
    cfg.write_text('schema_version = 1\ndefault = "envprof"\n[profiles.envprof]\nhost = "env.example.com"\n')
    r = cli("profile", "list", "--json", env={"MAILCTL_CONFIG": str(cfg)})
    assert r.exit_code == 0 and [p["name"] for p in (json.loads(line) for line in r.stdout.splitlines())][0] == "envprof"


def test_unknown_command_and_lazy_groups(cli, isolated_env):
    r = cli("nosuch")
    assert r.exit_code == 2 and "nosuch" in r.stderr
    r = cli("--help")
    for name in ("profile", "test", "auth", "dns", "queue", "send", "sendmail"):
        assert f"  {name} " in r.stdout
    assert cli("sendmail", "--help").exit_code == 0


def test_profile_list_loads_only_what_it_needs(isolated_env):
    (isolated_env / "profiles.toml").write_text('schema_version = 1\n[profiles.a]\nhost = "a.example"\n')
    code = (
        "import sys, json\n"
        "from mailctl.cli import main\n"
        "try:\n    main(['profile', 'list'])\nexcept SystemExit:\n    pass\n"
        "mods = sorted(m for m in sys.modules if m.startswith(('mailctl.commands.', 'pydantic', 'tomlkit')))\n"
        "sys.stderr.write('MODS=' + json.dumps(mods) + '\\n')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=dict(os.environ))
    line = [x for x in proc.stderr.splitlines() if x.startswith("MODS=")]
    assert line, proc.stderr
    mods = json.loads(line[0][5:])
    expected = ["mailctl.commands._common", "mailctl.commands.profile"]
    if sys.version_info < (3, 11):  # no tomllib: reading needs tomlkit
        mods = [m for m in mods if not m.startswith("tomlkit")]
    assert mods == expected and "a.example" in proc.stdout


def test_groups_build_only_the_command_that_runs():
    import typer.main

    from mailctl.cli import app

    root = typer.main.get_command(app)
    ctx = root.make_context("mailctl", ["profile", "list"], resilient_parsing=True)
    group = root.get_command(ctx, "profile")
    assert group.list_commands(ctx)[:4] == ["add", "edit", "show", "list"]
    assert group.get_command(ctx, "list").name == "list"
    assert "list" in group.commands and "add" not in group.commands
    assert len([p for p in group.get_command(ctx, "add").params if p.name == "host"]) == 1
    assert group.get_command(ctx, "nosuch") is None
