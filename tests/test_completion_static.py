"""The static completion scripts in completions/ run in the real shells, start no Python (PATH
holds only a fake `python`/`mailctl` that fails loudly), offer every command, option and choice
value the commands define, and read profile names from the file mailctl itself would use
(mailctl.paths.find_config), proved by completing names from real files under every lookup
step. `mailctl completion install` writes them where the shells look, idempotently, and edits
no rc file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BASH_SCRIPT = ROOT / "completions" / "mailctl.bash"
ZSH_SCRIPT = ROOT / "completions" / "_mailctl"
FISH_SCRIPT = ROOT / "completions" / "mailctl.fish"
BASH = shutil.which("bash")
ZSH = shutil.which("zsh")
FISH = shutil.which("fish")
BASH_COMPLETION = Path("/usr/share/bash-completion/bash_completion")


@pytest.fixture(scope="module")
def tree():
    import typer.main

    from mailctl.cli import app
    from mailctl.commands.reference import command_tree

    return {c.key: c for c in command_tree(typer.main.get_command(app))}


def _rendered(shell: str) -> str:
    """The script as the installed commands render it (completions/ holds the same while it is
    current: tests/test_repository.py checks that)."""
    import typer.main

    from mailctl.cli import app
    from mailctl.commands.shellscripts import render

    return render(typer.main.get_command(app), shell)


@pytest.fixture
def tripwire(tmp_path):
    """A PATH dir whose python, python3 and mailctl record that they ran and fail."""
    bin_dir = tmp_path / "tripwire-bin"
    bin_dir.mkdir()
    marker = tmp_path / "tripwire-ran"
    for name in ("python", "python3", "mailctl", "mailctl-sendmail"):
        exe = bin_dir / name
        exe.write_text(f"#!/bin/sh\necho \"$0 $*\" >> '{marker}'\necho 'TRIPWIRE: {name} started' >&2\nexit 99\n")
        exe.chmod(0o755)
    return bin_dir, marker


def _profiles(path: Path, *names: str, quoted: tuple[str, ...] = ()) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = ["schema_version = 1", f'default = "{(names or quoted)[0]}"']
    for n in names:
        body += [f"[profiles.{n}]", 'type = "file"', f'maildir = "/tmp/{n}"']
    for n in quoted:
        body += [f'  [ profiles . "{n}" ]  # a comment', 'type = "file"']
    body += ["# [profiles.commented_out]", "[settings]", 'postmaster = "root@example.com"']
    path.write_text("\n".join(body) + "\n")
    return path


def _clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """No MAILCTL_* or XDG_* from the outer environment; a private HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAILCTL_", "XDG_"))}
    env["HOME"] = str(tmp_path / "home")
    (tmp_path / "home").mkdir(exist_ok=True)
    env.update(extra)
    return env


BASH_DRIVER = r"""
source "$SCRIPT"
complete -p mailctl >/dev/null || { echo "no complete spec" >&2; exit 3; }
read -r -a COMP_WORDS <<< "$LINE"
[[ $LINE == *" " ]] && COMP_WORDS+=("")
COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
COMPREPLY=()
_mailctl mailctl
printf '%s\n' "${COMPREPLY[@]}"
"""


def bash_complete(line: str, tmp_path: Path, tripwire, env: dict[str, str] | None = None) -> list[str]:
    """Complete `line` (a trailing space: complete a new word) in a real bash whose PATH is only
    the tripwire: the script must need no external program at all, Python least of all."""
    bin_dir, marker = tripwire
    run_env = dict(env if env is not None else _clean_env(tmp_path))
    run_env.update(PATH=str(bin_dir), SCRIPT=str(BASH_SCRIPT), LINE=line)
    proc = subprocess.run([BASH, "--norc", "--noprofile", "-c", BASH_DRIVER], env=run_env, capture_output=True,
                          text=True, timeout=30, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert not marker.exists(), f"completion started a program: {marker.read_text()}"
    assert "TRIPWIRE" not in proc.stderr and "command not found" not in proc.stderr, proc.stderr
    return [w for w in proc.stdout.split("\n") if w]


needs_bash = pytest.mark.skipif(BASH is None, reason="bash is not installed")


@needs_bash
def test_bash_completes_every_command_group_from_the_command_tree(tmp_path, tripwire, tree):
    assert bash_complete("mailctl ", tmp_path, tripwire) == tree[""].subcommands
    for key, cmd in tree.items():
        if key and cmd.subcommands:
            assert bash_complete(f"mailctl {key} ", tmp_path, tripwire) == cmd.subcommands, key
    assert bash_complete("mailctl qu", tmp_path, tripwire) == ["queue"]
    assert bash_complete("mailctl queue re", tmp_path, tripwire) == ["release", "retry"]
    assert "completion" in tree[""].subcommands


@needs_bash
def test_bash_completes_options_after_global_options_and_their_values(tmp_path, tripwire, tree):
    words = bash_complete("mailctl --json -v --config /nonexistent queue list --", tmp_path, tripwire)
    assert set(words) == {n for o in tree["queue list"].options for n in o.names if n.startswith("--")}
    assert "--state" in words and "--limit" in words
    # a value that looks like a command is the option's value, not the command
    assert bash_complete("mailctl --profile queue ", tmp_path, tripwire) == tree[""].subcommands
    assert "--quit-after" in bash_complete("mailctl test connect --q", tmp_path, tripwire)


@needs_bash
def test_bash_completes_choice_values_taken_from_the_domain(tmp_path, tripwire):
    from mailctl.outbox.store import FINISHED_STATES, STATES
    from mailctl.profiles.model import AUTHS, SECURITIES, TYPES

    assert bash_complete("mailctl profile add new --security ", tmp_path, tripwire) == list(SECURITIES)
    assert bash_complete("mailctl profile edit p --type ", tmp_path, tripwire) == list(TYPES)
    assert bash_complete("mailctl profile add new --auth o", tmp_path, tripwire) == [a for a in AUTHS if a.startswith("o")]
    assert bash_complete("mailctl queue list --state ", tmp_path, tripwire) == list(STATES)
    assert bash_complete("mailctl queue list -s de", tmp_path, tripwire) == ["deferred"]
    assert bash_complete("mailctl queue purge --state ", tmp_path, tripwire) == list(FINISHED_STATES)
    assert bash_complete("mailctl queue stats --format ", tmp_path, tripwire) == ["table", "json", "openmetrics"]
    assert bash_complete("mailctl completion install --shell ", tmp_path, tripwire) == ["bash", "zsh", "fish"]
    # a value with nothing to offer completes nothing (not the option list, not files)
    assert bash_complete("mailctl profile add new --host ", tmp_path, tripwire) == []


@needs_bash
def test_bash_completes_setting_keys_and_files(tmp_path, tripwire):
    from mailctl.profiles.model import SETTINGS_FIELDS

    assert bash_complete("mailctl settings set ", tmp_path, tripwire) == [f.name for f in SETTINGS_FIELDS]
    (tmp_path / "message.eml").write_text("x")
    assert bash_complete("mailctl send --attach mess", tmp_path, tripwire) == ["message.eml"]


def _expected_names(env: dict[str, str], override: str | None = None) -> list[str]:
    """The profile names mailctl itself sees under `env` (its own lookup, its own reader)."""
    from mailctl.paths import find_config
    from mailctl.profiles.store import ProfileStore

    saved = dict(os.environ)
    try:
        os.environ.clear()
        os.environ.update(env)
        lookup = find_config(override)
        return ProfileStore(lookup.path).load().profile_names() if lookup.exists else []
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _lookup_cases(tmp_path: Path):
    """(what, env, --config or None, the names that file holds) for each lookup step."""
    home = tmp_path / "home"
    named = _profiles(tmp_path / "named.toml", "named_one", "named_two")
    envfile = _profiles(tmp_path / "env.toml", "from_env")
    mhome = tmp_path / "mhome"
    _profiles(mhome / "profiles.toml", "home_a", quoted=("home_q",))
    xdg = tmp_path / "xdg"
    _profiles(xdg / "mailctl" / "profiles.toml", "xdg_user")
    system = _profiles(tmp_path / "etc" / "profiles.toml", "sys_only")
    dotconfig_home = tmp_path / "home2"
    _profiles(dotconfig_home / ".config" / "mailctl" / "profiles.toml", "dot_config")
    yield "--config beats everything", _clean_env(tmp_path, MAILCTL_CONFIG=str(envfile), MAILCTL_HOME=str(mhome)), str(named), ["named_one", "named_two"]
    yield "MAILCTL_CONFIG beats the user file", _clean_env(tmp_path, MAILCTL_CONFIG=str(envfile), MAILCTL_HOME=str(mhome)), None, ["from_env"]
    yield "MAILCTL_HOME's file (quoted and spaced headers)", _clean_env(tmp_path, MAILCTL_HOME=str(mhome), MAILCTL_SYSTEM_CONFIG=str(system)), None, ["home_a", "home_q"]
    yield "XDG_CONFIG_HOME's user file", _clean_env(tmp_path, XDG_CONFIG_HOME=str(xdg), MAILCTL_SYSTEM_CONFIG=str(system)), None, ["xdg_user"]
    yield "~/.config's user file", dict(_clean_env(tmp_path, MAILCTL_SYSTEM_CONFIG=str(system)), HOME=str(dotconfig_home)), None, ["dot_config"]
    yield "the system file when there is no user file", _clean_env(tmp_path, XDG_CONFIG_HOME=str(tmp_path / "empty"), MAILCTL_SYSTEM_CONFIG=str(system)), None, ["sys_only"]
    yield "MAILCTL_HOME without a file: no system file", _clean_env(tmp_path, MAILCTL_HOME=str(tmp_path / "nohome")), None, []
    yield "MAILCTL_SYSTEM_CONFIG empty: no system file", _clean_env(tmp_path, XDG_CONFIG_HOME=str(tmp_path / "empty"), MAILCTL_SYSTEM_CONFIG=""), None, []
    assert home.is_dir()


@needs_bash
def test_bash_profile_names_follow_mailctls_config_lookup(tmp_path, tripwire):
    cases = list(_lookup_cases(tmp_path))
    assert len(cases) == 8
    for what, env, override, names in cases:
        assert _expected_names(env, override) == names, f"{what}: the test's files are not what mailctl reads"
        prefix = f"mailctl --config {override} " if override else "mailctl "
        for line in (prefix + "profile show ", prefix + "send ", prefix + "queue flush --profile ", prefix + "--profile "):
            assert bash_complete(line, tmp_path, tripwire, env) == names, f"{what}: {line!r}"


@needs_bash
def test_bash_profile_names_filter_by_prefix_and_tilde(tmp_path, tripwire):
    home = tmp_path / "home"
    _profiles(home / "p.toml", "alpha", "alto", "beta")
    env = _clean_env(tmp_path, MAILCTL_CONFIG="~/p.toml")
    assert _expected_names(env) == ["alpha", "alto", "beta"]
    assert bash_complete("mailctl profile lint al", tmp_path, tripwire, env) == ["alpha", "alto"]
    assert bash_complete("mailctl profile lint alpha b", tmp_path, tripwire, env) == ["beta"]
    assert bash_complete("mailctl profile rename alpha ", tmp_path, tripwire, env) == []  # the new name: free text
    assert bash_complete("mailctl profile add kid --inherits a", tmp_path, tripwire, env) == ["alpha", "alto"]


@needs_bash
@pytest.mark.skipif(not BASH_COMPLETION.exists(), reason="the bash-completion package is not installed")
def test_installed_script_loads_through_bash_completion_on_demand(tmp_path, tripwire):
    """`mailctl completion install` writes to bash-completion's user dir; bash-completion loads
    it on the first Tab (its __load_completion), with no rc file edited."""
    bin_dir, marker = tripwire
    env = _clean_env(tmp_path, XDG_DATA_HOME=str(tmp_path / "data"))
    proc = _mailctl(["completion", "install", "--shell", "bash"], env)
    path = Path(proc.stdout.strip())
    assert path == tmp_path / "data" / "bash-completion" / "completions" / "mailctl"
    script = f"""
source {BASH_COMPLETION}
__load_completion mailctl || exit 4
complete -p mailctl
COMP_WORDS=(mailctl queue list --state he); COMP_CWORD=4; COMPREPLY=()
_mailctl mailctl
echo "REPLY=${{COMPREPLY[*]}}"
"""
    run_env = dict(env, PATH=f"{bin_dir}:/usr/bin:/bin")
    out = subprocess.run([BASH, "--norc", "--noprofile", "-c", script], env=run_env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "-F _mailctl mailctl" in out.stdout
    assert "REPLY=held" in out.stdout
    assert not marker.exists()


# --- mailctl completion install / show -----------------------------------------------------
def _mailctl(args: list[str], env: dict[str, str], code: int = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "mailctl", *args], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == code, proc.stdout + proc.stderr
    return proc


def _files_under(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()}


@pytest.mark.parametrize("shell, where", [
    ("bash", ".local/share/bash-completion/completions/mailctl"),
    ("zsh", ".local/share/zsh/site-functions/_mailctl"),
    ("fish", ".config/fish/completions/mailctl.fish"),
])
def test_install_writes_the_script_to_the_standard_place_idempotently(tmp_path, shell, where):
    shipped = _rendered(shell)
    env = _clean_env(tmp_path, SHELL=f"/bin/{shell}")
    home = Path(env["HOME"])
    for rc in (".bashrc", ".zshrc"):
        (home / rc).write_text("# mine\n")
    first = _mailctl(["completion", "install"], env)
    assert first.stdout.strip() == str(home / where)
    assert "Installed" in first.stderr
    assert (home / where).read_text() == shipped
    mtime = (home / where).stat().st_mtime_ns
    again = json.loads(_mailctl(["completion", "install", "--shell", shell, "--json"], env).stdout)
    assert again == {"shell": shell, "path": str(home / where), "changed": False, "exit_code": 0}
    assert (home / where).stat().st_mtime_ns == mtime
    assert _files_under(home) == {where, ".bashrc", ".zshrc"}
    assert (home / ".bashrc").read_text() == (home / ".zshrc").read_text() == "# mine\n"
    (home / where).write_text("# an older mailctl's script\n")
    assert json.loads(_mailctl(["completion", "install", "--shell", shell, "--json"], env).stdout)["changed"] is True
    assert (home / where).read_text() == shipped


def test_show_prints_the_scripts_and_unknown_shells_are_usage_errors(tmp_path):
    env = _clean_env(tmp_path, SHELL="/bin/tcsh")
    for shell in ("bash", "zsh", "fish"):
        assert _mailctl(["completion", "show", "--shell", shell], env).stdout == _rendered(shell)
    proc = _mailctl(["completion", "install"], env, code=2)
    assert proc.stderr.splitlines()[0] == "Error: $SHELL (/bin/tcsh): no completion for that shell"
    assert "--shell bash" in proc.stderr and "Traceback" not in proc.stderr
    assert _files_under(Path(env["HOME"])) == set()


def test_root_help_has_no_typer_completion_options():
    from typer.testing import CliRunner

    from mailctl.cli import app

    out = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "100"}).output
    assert "--install-completion" not in out and "--show-completion" not in out
    assert "completion" in out


# --- zsh and fish ------------------------------------------------------------------------------
@pytest.mark.skipif(ZSH is None, reason="zsh is not installed")
def test_zsh_script_parses_and_its_walk_completes(tmp_path, tripwire):
    from mailctl.outbox.store import STATES

    bin_dir, marker = tripwire
    assert subprocess.run([ZSH, "-n", str(ZSH_SCRIPT)], capture_output=True, timeout=30).returncode == 0
    assert ZSH_SCRIPT.read_text().startswith("#compdef mailctl\n")
    conf = _profiles(tmp_path / "z.toml", "zed", "zulu")
    # compsys's builtins replaced by recorders: the script's own walk and lookup are what runs
    script = f"""
compdef() {{ :; }}
source {ZSH_SCRIPT}
compadd() {{ [[ $1 == -- ]] && shift; print -r -- "compadd $*"; }}
_describe() {{ print -r -- "describe $2 ${{(P)4}}"; }}
_files() {{ print files; }}
c() {{ words=("$@"); CURRENT=$#words; _mailctl; }}
c mailctl queue list --state ''
c mailctl --config {conf} send ''
c mailctl queue ''
c mailctl queue hold --o
c mailctl profile edit zed --unset ''
c mailctl profile edit zed --host h --unset tls_verify --unset ''
c mailctl test connect zed --quit-after ''
c mailctl --config {conf} test send --quit-after ''
"""
    proc = subprocess.run([ZSH, "-f", "-c", script], env=dict(_clean_env(tmp_path), PATH=str(bin_dir)),
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "compadd " + " ".join(STATES)
    assert lines[1] == "compadd zed zulu"
    assert lines[2].startswith("describe commands add:Queue a complete RFC 5322 message read from stdin. flush:")
    assert lines[3].startswith("describe options --all:") and "--outbox:" in lines[3]
    fields, (connect_stages, send_stages) = _unset_fields(), _quit_after_stages()
    assert lines[4] == lines[5] == "compadd " + " ".join(fields)  # --unset: the profile fields
    assert lines[6] == "compadd " + " ".join(connect_stages)  # --quit-after: the stages
    assert lines[7] == "compadd " + " ".join(send_stages)
    assert not marker.exists()


def _unset_fields() -> list[str]:
    """What `profile edit --unset` accepts: every profile field (the store refuses the rest)."""
    from mailctl.profiles.model import FIELDS_BY_NAME

    return list(FIELDS_BY_NAME)


def _quit_after_stages() -> tuple[list[str], list[str]]:
    """What --quit-after accepts (the probe's stages); `test connect` sends no MAIL, RCPT or DATA."""
    from mailctl.diagnostics.probe import QUIT_AFTER_CHOICES

    return [s for s in QUIT_AFTER_CHOICES if s not in ("mail", "rcpt", "data")], list(QUIT_AFTER_CHOICES)


@needs_bash
def test_bash_completes_unset_fields_and_quit_after_stages(tmp_path, tripwire):
    fields, (connect_stages, send_stages) = _unset_fields(), _quit_after_stages()
    assert bash_complete("mailctl profile edit x --unset ", tmp_path, tripwire) == fields
    assert bash_complete("mailctl profile edit x --unset tls_", tmp_path, tripwire) == ["tls_verify", "tls_fingerprint"]
    assert bash_complete("mailctl test connect x --quit-after ", tmp_path, tripwire) == connect_stages
    assert bash_complete("mailctl test send --quit-after ", tmp_path, tripwire) == send_stages
    assert bash_complete("mailctl test send --quit-after r", tmp_path, tripwire) == ["resolve", "rcpt"]


def fish_complete(line: str, tmp_path: Path, tripwire, env: dict[str, str] | None = None) -> list[str]:
    bin_dir, marker = tripwire
    run_env = dict(env if env is not None else _clean_env(tmp_path))
    run_env["PATH"] = f"{bin_dir}:/usr/bin:/bin"  # fish needs uname for the macOS paths
    cmd = f"source {FISH_SCRIPT}; complete -C {_fish_quote(line)}"
    proc = subprocess.run([FISH, "--no-config", "-c", cmd], env=run_env, capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert not marker.exists(), marker.read_text()
    return [w.split("\t")[0] for w in proc.stdout.splitlines()]


def _fish_quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


@pytest.mark.skipif(FISH is None, reason="fish is not installed")
def test_fish_script_parses_and_completes(tmp_path, tripwire, tree):
    from mailctl.profiles.model import SECURITIES

    assert subprocess.run([FISH, "--no-execute", str(FISH_SCRIPT)], capture_output=True, timeout=30).returncode == 0
    assert sorted(fish_complete("mailctl queue ", tmp_path, tripwire)) == sorted(tree["queue"].subcommands)
    assert sorted(fish_complete("mailctl profile add x --security ", tmp_path, tripwire)) == sorted(SECURITIES)
    assert "--state" in fish_complete("mailctl queue list --", tmp_path, tripwire)
    assert sorted(fish_complete("mailctl profile edit x --unset ", tmp_path, tripwire)) == sorted(_unset_fields())
    assert sorted(fish_complete("mailctl test connect x --quit-after ", tmp_path, tripwire)) == sorted(_quit_after_stages()[0])
    for what, env, override, names in _lookup_cases(tmp_path):
        prefix = f"mailctl --config {override} " if override else "mailctl "
        assert sorted(fish_complete(prefix + "profile show ", tmp_path, tripwire, env)) == sorted(names), what
