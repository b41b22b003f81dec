"""When Typer's internals change under mailctl, its shortcuts (mailctl._typer_fast, the lazily
built command groups in mailctl.cli) must give way to Typer's own path: slower, never a crash.

Each scenario patches Typer in a fresh interpreter *before* mailctl.cli is imported (as an
upgraded Typer would be), runs the same commands there as on an unpatched Typer, and compares
exit codes, stdout and stderr; then runs `mailctl --version` through the real entry point."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

typer_coercion = pytest.importorskip("typer._coercion", reason="Click-based Typer: no fast path to fall back from")

PATCHES = {
    "unchanged": "",
    # the plausible upstream change: a new field (with a default) on RuntimeParam makes
    # mailctl's dataclass subclass impossible to define
    "runtime-param-new-field-with-default": """
import dataclasses, typer._coercion as c
@dataclasses.dataclass(frozen=True)
class RuntimeParam(c.RuntimeParam):
    origin: object = None
c.RuntimeParam = RuntimeParam
""",
    # a new required field: the class is defined, building one (_plain) fails
    "runtime-param-new-required-field": """
import dataclasses, typer._coercion as c
@dataclasses.dataclass(frozen=True)
class RuntimeParam(c.RuntimeParam):
    origin: object
c.RuntimeParam = RuntimeParam
""",
    # a new abstract method: instances cannot be made
    "runtime-param-new-abstract-method": """
import abc, typer._coercion as c
class RuntimeParam(c.RuntimeParam):
    @abc.abstractmethod
    def convert(self, value): ...
c.RuntimeParam = RuntimeParam
""",
    # the private attribute is gone (a rename)
    "runtime-param-gone": """
import typer._coercion as c
del c.RuntimeParam
""",
    # the private module raises on access (anything but AttributeError)
    "coercion-module-raises": """
import types, typer
class Moved(types.ModuleType):
    def __getattr__(self, name):
        raise RuntimeError(f"typer._coercion.{name} has moved")
typer._coercion = Moved("typer._coercion")
""",
    # the fast conversion fails (here: BadParameter's signature changed for outside callers)
    "bad-parameter-changed": """
import sys, typer._click.exceptions as e
class BadParameter(e.BadParameter):
    def __init__(self, *args, **kwargs):
        if sys._getframe(1).f_globals.get("__name__") == "mailctl._typer_fast":
            raise TypeError("BadParameter() got an unexpected keyword argument 'ctx'")
        super().__init__(*args, **kwargs)
e.BadParameter = BadParameter
""",
    # the private builders mailctl.cli calls change their signature for outside callers
    # (Typer's own calls, from typer.main, keep working)
    "group-builder-changed": """
import sys, typer.main as m
_orig_group = m.get_group_from_info
def get_group_from_info(*args, **kwargs):
    if not sys._getframe(1).f_globals.get("__name__", "").startswith("typer"):
        CALLS.append("get_group_from_info")
        raise TypeError("get_group_from_info() got an unexpected keyword argument 'suggest_commands'")
    return _orig_group(*args, **kwargs)
m.get_group_from_info = get_group_from_info
""",
    "deferred-build-changed": """
import sys, typer.main as m
_orig_command = m.get_command_from_info
def get_command_from_info(*args, **kwargs):
    if not sys._getframe(1).f_globals.get("__name__", "").startswith("typer"):
        CALLS.append("get_command_from_info")
        raise TypeError("get_command_from_info() missing 1 required keyword-only argument: 'context'")
    return _orig_command(*args, **kwargs)
m.get_command_from_info = get_command_from_info
""",
}
FAST_PATH_SCENARIOS = [
    "runtime-param-new-field-with-default", "runtime-param-new-required-field", "runtime-param-new-abstract-method",
    "runtime-param-gone", "coercion-module-raises", "bad-parameter-changed",
]
LAZY_GROUP_SCENARIOS = ["group-builder-changed", "deferred-build-changed"]
# rejected by both paths with exit 2, in different words
BAD_VALUES = [["--limit", "0"], ["--limit", "three"]]

RUNNER = r"""
import json, sys
CALLS = []
exec(compile(sys.argv[1], "<patch>", "exec"))
from typer.testing import CliRunner
from mailctl import _typer_fast
from mailctl.cli import app, main
results = []
for args in json.loads(sys.argv[2]):
    r = CliRunner().invoke(app, args)
    error = None if r.exception is None or isinstance(r.exception, SystemExit) else repr(r.exception)
    results.append({"args": args, "exit_code": r.exit_code, "stdout": r.stdout, "stderr": r.stderr, "error": error})
with open(sys.argv[3], "w") as fh:
    json.dump({"results": results, "fast": _typer_fast.install(), "calls": CALLS,
               "pydantic": "pydantic" in sys.modules}, fh)
main(["--version"])
"""


def _commands(tmp_path) -> list[list[str]]:
    cfg = tmp_path / "profiles.toml"
    cfg.write_text('schema_version = 1\ndefault = "b"\n[profiles.a]\nhost = "a.example"\n[profiles.b]\nhost = "b.example"\nport = 2525\n')
    return [
        ["--version"],
        ["profile", "list"],  # no profiles file yet
        ["profile", "list", "--json"],
        ["--config", str(cfg), "profile", "list"],
        ["--config", str(cfg), "-v", "-v", "profile", "show", "b", "--json"],
        ["profile", "--help"],
        ["profile", "show"],  # missing argument: usage error
        ["queue", "list", "--limit", "2", "--json"],
        ["queue", "list", *BAD_VALUES[0]],
        ["queue", "list", *BAD_VALUES[1]],
        ["queue", "list", "--state", "queued", "--state", "held", "--json"],
        ["nosuch"],
    ]


def _run(scenario: str, tmp_path, *, debug: bool = False) -> tuple[subprocess.CompletedProcess, dict]:
    """Run the commands in a fresh interpreter with the scenario's patch; paths under tmp_path
    read TMP in the results (tmp_path names have one length, so tables line up alike)."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILCTL_")}
    env.update(MAILCTL_HOME=str(home), NO_COLOR="1", COLUMNS="200")
    if debug:
        env["MAILCTL_DEBUG"] = "1"
    out = tmp_path / f"{scenario}.json"
    commands = json.dumps(_commands(tmp_path))
    proc = subprocess.run([sys.executable, "-c", RUNNER, PATCHES[scenario], commands, str(out)],
                          capture_output=True, text=True, timeout=120, env=env)
    assert out.exists(), f"{scenario}: the interpreter died before running commands:\n{proc.stderr}"
    data = json.loads(out.read_text().replace(json.dumps(str(tmp_path))[1:-1], "TMP"))
    return proc, data


@pytest.fixture
def short_tmp():
    """A temporary directory whose name has the same length in every test."""
    path = tempfile.mkdtemp(prefix="mailctl-fallback-")
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def baseline():
    path = tempfile.mkdtemp(prefix="mailctl-fallback-")
    try:
        proc, data = _run("unchanged", Path(path))
    finally:
        shutil.rmtree(path, ignore_errors=True)
    assert proc.returncode == 0 and proc.stdout == "mailctl 0.1.0\n" and proc.stderr == "", proc.stderr
    assert data["fast"] is True and not data["calls"]
    assert not data["pydantic"], "the unpatched run should never need pydantic for these commands"
    return data


@pytest.mark.parametrize("scenario", FAST_PATH_SCENARIOS + LAZY_GROUP_SCENARIOS)
def test_changed_typer_internals_fall_back_to_typers_own_path(scenario, baseline, short_tmp):
    proc, data = _run(scenario, short_tmp)
    assert proc.returncode == 0 and proc.stdout == "mailctl 0.1.0\n", proc.stderr
    assert proc.stderr == "", "the fallback is silent without MAILCTL_DEBUG"
    for result in data["results"]:
        assert result["error"] is None, result
    assert len(data["results"]) == len(baseline["results"])
    for got, want in zip(data["results"], baseline["results"]):
        where = f"{scenario}: mailctl {' '.join(want['args'])} differs from unpatched Typer"
        if want["args"][-2:] in BAD_VALUES:  # Typer words it its own way (pydantic's message)
            assert (got["exit_code"], got["stdout"]) == (want["exit_code"], want["stdout"]) == (2, ""), where
            assert got["stderr"].splitlines()[:3] == want["stderr"].splitlines()[:3], where
            assert "Error: Invalid value for '--limit': " in got["stderr"], where
        else:
            assert got == want, where
    # the scenario really took the fallback (otherwise this test proves nothing)
    if scenario in FAST_PATH_SCENARIOS:
        assert data["fast"] is False and data["pydantic"], "options should have gone through Typer's own conversion"
    else:
        assert data["calls"], "the patched Typer builder was never called"
        assert data["fast"] is True


@pytest.mark.parametrize("scenario", ["runtime-param-new-field-with-default", "bad-parameter-changed", "deferred-build-changed"])
def test_the_fallback_is_noted_under_mailctl_debug(scenario, short_tmp):
    proc, data = _run(scenario, short_tmp, debug=True)
    assert proc.returncode == 0 and proc.stdout == "mailctl 0.1.0\n"
    notes = [text.count("Typer internals changed") for text in [proc.stderr] + [r["stderr"] for r in data["results"]]]
    assert sum(notes) >= 1
    assert max(notes) == 1, "one note per fallback, not one per option or command"
    assert [r["exit_code"] for r in data["results"][:5]] == [0, 0, 0, 0, 0]
