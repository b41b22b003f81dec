"""The repository stays consistent with the app: README reference and exit codes, completions,
the example profiles file, help text, and a fast startup path."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _gen_docs():
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_reference_exit_codes_and_completions_are_current():
    stale = _gen_docs().stale_files()
    assert not stale, f"run `python scripts/gen_docs.py`; stale: {[str(p) for p in stale]}"


def test_readme_lists_every_exit_code_and_every_command():
    from mailctl.errors import ExitCode

    readme = (ROOT / "README.md").read_text()
    for code in ExitCode:
        assert f"| {int(code)} |" in readme
    for path in _gen_docs().command_paths():
        assert f"### `{' '.join(['mailctl'] + path)}`" in readme


def _all_paths(cmd, ctx, prefix=()):
    yield prefix
    for name in cmd.list_commands(ctx) if hasattr(cmd, "list_commands") else ():
        yield from _all_paths(cmd.get_command(ctx, name), ctx, prefix + (name,))


def test_every_command_has_help_text():
    import typer.main

    from mailctl.cli import app

    missing = []

    root = typer.main.get_command(app)
    ctx = root.make_context("mailctl", ["--help"], resilient_parsing=True)

    def walk(cmd, prefix):
        if not (cmd.help or "").strip():
            missing.append(" ".join(prefix) or "mailctl")
        for name in cmd.list_commands(ctx) if hasattr(cmd, "list_commands") else ():
            walk(cmd.get_command(ctx, name), prefix + [name])

    walk(root, [])
    assert len(missing) + 30 < sum(1 for _ in _all_paths(root, ctx)), "the walk found too few commands"
    assert not missing, f"commands without help: {missing}"


def test_quick_start_first_command_installs_and_sends_on_the_builtin_profile():
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1]
    first_block = quick.split("```sh", 1)[1].split("```", 1)[0].strip().splitlines()[0]
    assert first_block.startswith("pip install .")
    assert "mailctl test send --to" in first_block


def test_testing_section_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    testing = readme.split("## Testing", 1)[1]
    command = testing.split("```sh", 1)[1].split("```", 1)[0].strip()
    assert command == "scripts/test"
    assert "scripts/test" in (ROOT / ".ci" / "run").read_text()


def test_example_profiles_file_loads_resolves_and_covers_every_field():
    from mailctl.profiles.model import PROFILE_FIELDS, SETTINGS_FIELDS
    from mailctl.profiles.resolve import check_complete, resolve_profile
    from mailctl.profiles.store import ProfileStore

    path = ROOT / "profiles.example.toml"
    doc = ProfileStore(path).load()
    assert len(doc.profile_names()) >= 8
    types = set()
    for name in doc.profile_names():
        profile = resolve_profile(doc, name)
        check_complete(profile)
        types.add(profile.type)
    assert {"smtp", "graph", "ews", "file"} <= types
    assert any(doc.raw_profile(n).get("inherits") for n in doc.profile_names())
    text = path.read_text()
    for field in PROFILE_FIELDS + SETTINGS_FIELDS:
        assert f"\n{field.name} =" in text, f"profiles.example.toml does not show {field.name}"


def test_profile_names_complete_dynamically(tmp_path, isolated_env):
    (isolated_env / "profiles.toml").write_text(
        'schema_version = 1\n[profiles.alpha]\nhost = "a.example"\n[profiles.alto]\nhost = "b.example"\n[profiles.beta]\nhost = "c.example"\n'
    )
    env = dict(os.environ, _MAILCTL_COMPLETE="complete_bash", COMP_WORDS="mailctl profile show al", COMP_CWORD="3")
    proc = subprocess.run([sys.executable, "-m", "mailctl"], env=env, capture_output=True, text=True, timeout=60)
    names = proc.stdout.split()
    assert sorted(names) == ["alpha", "alto"], proc.stdout + proc.stderr


# pydantic: Typer 0.22+ coerces options through it; mailctl._typer_fast keeps it off this path
HEAVY = ("msal", "exchangelib", "dns", "google", "requests", "smtplib", "sqlite3", "keyring", "pydantic")
PROBE = """
import json, sys
from mailctl.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
heavy = sorted({m.split('.')[0] for m in sys.modules} & set(json.loads(%r)))
sys.stderr.write('HEAVY=' + json.dumps(heavy) + '\\n')
"""


@pytest.mark.parametrize("args", [["--help"], ["profile", "list"], ["profile", "list", "--json"]])
def test_startup_path_imports_no_heavy_library(args, isolated_env):
    (isolated_env / "profiles.toml").write_text('schema_version = 1\n[profiles.a]\nhost = "a.example"\n')
    code = PROBE % json.dumps(HEAVY)
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60, env=dict(os.environ))
    line = [l for l in proc.stderr.splitlines() if l.startswith("HEAVY=")]
    assert line, proc.stderr
    assert json.loads(line[0][6:]) == [], f"`mailctl {' '.join(args)}` imported {line[0][6:]}"
    assert proc.stdout.strip()


def _section(text: str, title: str) -> list[str]:
    lines = text.split(f"\n{title}:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    return [l for l in lines if l.strip()]


def _listed(help_text: str) -> dict[str, str]:
    """The "Commands:" section of a --help as {name: its text, wrapped lines joined}."""
    rows: dict[str, str] = {}
    name = None
    for line in _section(help_text, "Commands"):
        if line.startswith("  ") and not line.startswith("   "):
            name, _, text = line.strip().partition(" ")
            rows[name] = text.strip()
        else:
            rows[name] += " " + line.strip()
    return rows


def test_command_lists_show_each_first_sentence_whole():
    import typer.main
    from typer.testing import CliRunner

    from mailctl.cli import app
    from mailctl.commands.reference import command_tree

    tree = command_tree(typer.main.get_command(app))
    groups = [c for c in tree if c.subcommands]
    assert len(groups) >= 7
    for group in groups:
        out = CliRunner().invoke(app, [*group.path, "--help"], env={"COLUMNS": "80"}, prog_name="mailctl").output
        listed = _listed(out)
        assert list(listed) == group.subcommands, group.key
        for name, text in listed.items():
            sub = next(c for c in tree if c.path == group.path + (name,))
            assert text == sub.help, f"{group.key} {name}: listed {text!r}, first sentence {sub.help!r}"
            assert text.endswith("."), f"{group.key} {name}: cut mid-phrase: {text!r}"
    queue = CliRunner().invoke(app, ["queue", "--help"], env={"COLUMNS": "80"}).output
    assert _listed(queue)["hold"] == "Keep queued/deferred messages from being sent until released (e.g. across maintenance)."


def test_sendmail_help_is_one_aligned_option_table():
    from typer.testing import CliRunner

    from mailctl.cli import app
    from mailctl.outbox.sendmail import HELP_OPTIONS

    out = CliRunner().invoke(app, ["sendmail", "--help"], env={"COLUMNS": "100"}).output
    assert out.startswith("Usage: mailctl sendmail [-t] [-i] [-f ADDR] [-F NAME] [-odq]")
    rows = _section(out, "Options")
    starts = [l[2:] for l in rows if not l.startswith("   ")]  # a row's first line (others: wrapped help)
    names = [l.split("  ")[0] for l in starts]
    assert names == [o for o, _ in HELP_OPTIONS] + ["--help"]
    columns = {2 + len(n) + len(l[len(n):]) - len(l[len(n):].lstrip()) for n, l in zip(names, starts)}
    wrapped = {len(l) - len(l.lstrip()) for l in rows if l.startswith("   ")}
    assert len(columns) == 1 and wrapped <= columns, f"not aligned: {rows}"
    assert "-odq" in out and "-f, -r ADDR" in out
    description = out.split("\nOptions:\n")[0].split("\n\n", 1)[1]
    assert "-F NAME" not in description  # not a hand-aligned block inside the description
