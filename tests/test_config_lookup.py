"""Which profiles file is used (--config / MAILCTL_CONFIG, the user file, the system file),
`mailctl config`, and the built-in local profile as a quick start, never a fallback."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

RAW = "From: app@example.com\nTo: ops@example.org\nSubject: important\n\nbody\n"
SRC = Path(__file__).resolve().parents[1] / "src"


def maildir_files(home: Path) -> list[Path]:
    new = home / "data" / "Maildir" / "new"
    return sorted(new.iterdir()) if new.exists() else []


def file_profile(name: str, maildir: Path, *, default: bool = True) -> str:
    head = f'schema_version = 1\ndefault = "{name}"\n' if default else "schema_version = 1\n"
    return head + f'[profiles.{name}]\ntype = "file"\nmaildir = "{maildir}"\nfrom_address = "{name}@example.com"\n'


# --- a named file must exist ---------------------------------------------------------------------
@pytest.mark.parametrize("via", ["env", "option"])
@pytest.mark.parametrize("args", [
    ("send", "-t", "ops@example.com", "-s", "important", "-b", "x"),
    ("sendmail", "-t"),
    ("queue", "flush"),
    ("profile", "list"),
    ("profile", "show"),
    ("profile", "edit", "x", "--host", "h.example.com"),
    ("profile", "set-default", "x"),
    ("settings", "show"),
    ("settings", "set", "sending_enabled", "false"),
    ("test", "send", "--to", "a@example.com"),
    ("config",),
])
def test_a_named_config_that_does_not_exist_is_78_for_every_command(cli, isolated_env, tmp_path, via, args):
    typo = tmp_path / "etc" / "mailctl" / "typo.toml"
    env = {"MAILCTL_CONFIG": str(typo)} if via == "env" else None
    argv = (("--config", str(typo)) if via == "option" else ()) + args
    r = cli(*argv, input=RAW, env=env)
    assert r.exit_code == 78, r.output
    assert str(typo) in r.stderr and ("$MAILCTL_CONFIG" if via == "env" else "--config") in r.stderr
    assert "Traceback" not in r.output and "Sent via" not in r.output
    assert not typo.exists() and not maildir_files(isolated_env)


def test_profile_add_creates_a_named_file(cli, tmp_path):
    new = tmp_path / "cfg" / "mine.toml"
    r = cli("--config", str(new), "profile", "add", "x", "--host", "smtp.example.com")
    assert r.exit_code == 0, r.output
    assert new.exists() and [json.loads(line) for line in cli("--config", str(new), "profile", "list", "--json").stdout.splitlines()][0]["name"] == "x"


# --- no config: deliveries refuse, the tests may use local -----------------------------------
def test_send_without_any_config_exits_78_naming_the_files_looked_at(cli, isolated_env):
    r = cli("send", "-t", "ops@example.com", "-s", "important", "-b", "x")
    assert r.exit_code == 78, r.output
    assert "no profile configured" in r.stderr and str(isolated_env / "profiles.toml") in r.stderr
    assert "-p local" in r.stderr and "Sent via" not in r.output
    assert not maildir_files(isolated_env)


def test_sendmail_and_flush_without_any_config_exit_78(cli, isolated_env):
    r = cli("sendmail", "-t", input=RAW)
    assert r.exit_code == 78 and "no profile configured" in r.stderr, r.output
    assert cli("queue", "add", input=RAW).exit_code == 0
    r = cli("queue", "flush")
    assert r.exit_code == 78 and str(isolated_env / "profiles.toml") in r.stderr, r.output
    assert not maildir_files(isolated_env)
    # a dry run delivers nothing: it only looks
    assert cli("queue", "flush", "--dry-run").exit_code == 0


@pytest.mark.parametrize("how", ["option", "env", "default"])
def test_local_chosen_explicitly_delivers(cli, isolated_env, how):
    env = {"MAILCTL_PROFILE": "local"} if how == "env" else None
    pre = ("-p", "local") if how == "option" else ()
    if how == "default":
        assert cli("profile", "set-default", "local").exit_code == 0
        assert 'default = "local"' in (isolated_env / "profiles.toml").read_text()
    r = cli(*pre, "send", "-t", "ops@example.com", "-s", "important", "-b", "x", env=env)
    assert r.exit_code == 0, r.output
    r = cli(*pre, "sendmail", "-t", input=RAW, env=env)
    assert r.exit_code == 0, r.output
    assert len(maildir_files(isolated_env)) == 2


def test_test_send_may_use_local_and_says_so(cli, isolated_env):
    r = cli("test", "send", "--to", "someone@example.com")
    assert r.exit_code == 0, r.output
    assert "built-in local profile" in r.stderr and str(isolated_env / "profiles.toml") in r.stderr
    assert "Delivered to the Maildir" in r.stdout and len(maildir_files(isolated_env)) == 1
    r = cli("test", "connect")
    assert r.exit_code == 0 and "built-in local profile" in r.stderr
    # chosen explicitly, nothing to say
    r = cli("-p", "local", "test", "connect")
    assert r.exit_code == 0 and "built-in local" not in r.stderr


def test_the_quick_start_command_works(isolated_env, tmp_path):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    first = readme.split("## Quick start", 1)[1].split("```sh", 1)[1].split("```", 1)[0].strip().splitlines()[0]
    command = first.split("&&", 1)[1].strip()  # after `pip install .`
    assert command.startswith("MAILCTL_PROFILE=local mailctl ")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILCTL_")}
    env.update(MAILCTL_HOME=str(isolated_env), MAILCTL_PROFILE="local", PYTHONPATH=str(SRC))
    args = command.split()[2:]
    proc = subprocess.run([sys.executable, "-m", "mailctl", *args], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert len(maildir_files(isolated_env)) == 1


# --- the system file ----------------------------------------------------------------------------
@pytest.fixture
def system_file(tmp_path, monkeypatch):
    path = tmp_path / "etc" / "mailctl" / "profiles.toml"
    path.parent.mkdir(parents=True)
    path.write_text(file_profile("relay", tmp_path / "relay-maildir"))
    monkeypatch.setenv("MAILCTL_SYSTEM_CONFIG", str(path))
    return path


def test_the_system_file_serves_a_user_without_profiles(cli, isolated_env, system_file, tmp_path):
    rows = [json.loads(line) for line in cli("profile", "list", "--json").stdout.splitlines()]
    assert [r["name"] for r in rows] == ["relay"]
    r = cli("sendmail", "ops@example.org", input=RAW)
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "relay-maildir" / "new").iterdir())) == 1
    data = json.loads(cli("config", "--json").stdout)
    assert data["profiles"]["path"] == str(system_file) and data["profiles"]["source"] == "system"
    assert [s["what"] for s in data["profiles"]["searched"]] == ["user file", "system file"]
    assert data["profiles"]["count"] == 1 and data["profiles"]["default"] == "relay"


def test_a_user_file_replaces_the_system_file(cli, isolated_env, system_file, tmp_path):
    (isolated_env / "profiles.toml").write_text(file_profile("mine", tmp_path / "mine-maildir"))
    assert [r["name"] for r in [json.loads(line) for line in cli("profile", "list", "--json").stdout.splitlines()]] == ["mine"]
    data = json.loads(cli("config", "--json").stdout)
    assert data["profiles"]["source"] == "user" and data["profiles"]["path"] == str(isolated_env / "profiles.toml")
    # a named file beats both
    named = tmp_path / "named.toml"
    named.write_text(file_profile("named", tmp_path / "n"))
    assert [r["name"] for r in [json.loads(line) for line in cli("--config", str(named), "profile", "list", "--json").stdout.splitlines()]] == ["named"]


def test_the_owner_of_the_system_file_edits_it_and_its_mode_stays(cli, isolated_env, system_file):
    os.chmod(system_file, 0o644)
    r = cli("profile", "edit", "relay", "--description", "the host's relay")
    assert r.exit_code == 0, r.output
    assert stat.S_IMODE(system_file.stat().st_mode) == 0o644  # still readable by the service users
    assert "the host's relay" in system_file.read_text()
    assert not (isolated_env / "profiles.toml").exists()


def test_the_default_system_path(monkeypatch):
    from mailctl import paths

    monkeypatch.delenv("MAILCTL_HOME")
    if sys.platform.startswith(("win", "darwin")):
        pytest.skip("the site config dir of the platform")
    assert paths.system_config_path() == Path("/etc/mailctl/profiles.toml")
    monkeypatch.setenv("MAILCTL_SYSTEM_CONFIG", "")
    assert paths.system_config_path() is None


def test_a_self_contained_home_has_no_system_file(monkeypatch):
    from mailctl import paths

    assert paths.system_config_path() is None  # MAILCTL_HOME is set by conftest
    lookup = paths.find_config()
    assert [what for what, _ in lookup.searched] == ["user file"]


def test_sendmail_as_a_service_user_in_a_real_process(tmp_path):
    """cron / a service: another HOME without profiles, no MAILCTL_HOME; the system file serves."""
    system = tmp_path / "etc" / "profiles.toml"
    system.parent.mkdir()
    system.write_text(file_profile("relay", tmp_path / "maildir"))
    home = tmp_path / "service-home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAILCTL_", "XDG_"))}
    env.update(HOME=str(home), MAILCTL_SYSTEM_CONFIG=str(system), PYTHONPATH=str(SRC))
    proc = subprocess.run([sys.executable, "-m", "mailctl", "sendmail", "-t"], input=RAW, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert len(list((tmp_path / "maildir" / "new").iterdir())) == 1
    proc = subprocess.run([sys.executable, "-m", "mailctl", "config"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and str(system) in proc.stdout and "system file" in proc.stdout
    # without the system file: 78, naming both places looked at
    system.unlink()
    proc = subprocess.run([sys.executable, "-m", "mailctl", "sendmail", "-t"], input=RAW, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 78, proc.stderr
    assert str(system) in proc.stderr and str(home) in proc.stderr and "Traceback" not in proc.stderr


def _run_unprivileged(args: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str]:
    """Run the CLI as a user who cannot write the system file: a real process; when we are
    root (who may write anything), a forked child that drops to nobody first (the interpreter
    and the modules it needs are loaded before the fork: nobody cannot read root's Python)."""
    if os.geteuid() != 0:
        proc = subprocess.run([sys.executable, "-m", "mailctl", *args], env=env, capture_output=True, text=True,
                              timeout=60, cwd=str(cwd))
        return proc.returncode, proc.stderr
    import mailctl.cli
    import mailctl.commands.profile  # noqa: F401
    import mailctl.commands.settings  # noqa: F401
    import mailctl.profiles.operations  # noqa: F401
    import tomlkit  # noqa: F401

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 99
        try:
            os.close(read)
            sys.stdout = sys.stderr = os.fdopen(write, "w")  # pytest's capture is not fd 1/2
            os.environ.clear()
            os.environ.update(env)
            os.chdir(cwd)
            os.setgid(65534)
            os.setuid(65534)
            try:
                mailctl.cli.main(args)
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    os.close(write)
    chunks = []
    while True:
        data = os.read(read, 65536)
        if not data:
            break
        chunks.append(data)
    os.close(read)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), b"".join(chunks).decode()


def test_editing_a_read_only_system_file_is_refused_clearly():
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="mailctl-sys-"))  # outside pytest's 0700 tmp dir
    try:
        os.chmod(base, 0o755)
        etc = base / "etc"
        etc.mkdir()
        system = etc / "profiles.toml"
        system.write_text(file_profile("relay", base / "maildir"))
        os.chmod(system, 0o444)
        os.chmod(etc, 0o555)
        home = base / "home"
        home.mkdir()
        os.chmod(home, 0o777)
        before = system.read_bytes()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MAILCTL_", "XDG_"))}
        env.update(HOME=str(home), MAILCTL_SYSTEM_CONFIG=str(system), PYTHONPATH=str(SRC), PYTHONDONTWRITEBYTECODE="1")
        for args in (["profile", "add", "mine", "--host", "smtp.example.com"],
                     ["profile", "edit", "relay", "--description", "x"],
                     ["settings", "set", "sending_enabled", "false"]):
            code, stderr = _run_unprivileged(args, env, base)
            assert code == 78, (args, stderr)
            assert str(system) in stderr and "system file" in stderr and "cp " in stderr
            assert "Traceback" not in stderr
        assert system.read_bytes() == before
        assert not (home / ".config" / "mailctl" / "profiles.toml").exists()
        # reading it works for that user
        code, out = _run_unprivileged(["profile", "list"], env, base)
        assert code == 0 and "relay" in out, out
    finally:
        os.chmod(base / "etc", 0o755)
        shutil.rmtree(base, ignore_errors=True)


# --- mailctl config ---------------------------------------------------------------------------
def test_config_prints_files_in_use_and_why(cli, isolated_env, tmp_path):
    r = cli("config")
    assert r.exit_code == 0, r.output
    assert str(isolated_env / "profiles.toml") in r.stdout and "does not exist" in r.stdout
    assert str(isolated_env / "data" / "outbox.sqlite3") in r.stdout and "$MAILCTL_HOME" in r.stdout
    data = json.loads(cli("config", "--json").stdout)
    assert data["profiles"]["source"] == "none" and data["profiles"]["exists"] is False
    assert data["data_dir"]["path"] == str(isolated_env / "data")
    other = tmp_path / "box.sqlite3"
    data = json.loads(cli("config", "--outbox", str(other), "--json").stdout)
    assert data["outbox"] == {"path": str(other), "reason": "named by --outbox"}
    data = json.loads(cli("config", "--json", env={"MAILCTL_OUTBOX": str(other)}).stdout)
    assert data["outbox"]["reason"] == "named by $MAILCTL_OUTBOX"


def test_config_names_a_broken_file_and_exits_78(cli, isolated_env):
    (isolated_env / "profiles.toml").write_text("schema_version = [[[\n")
    r = cli("config", "--json")
    assert r.exit_code == 78
    assert "malformed TOML" in json.loads(r.stdout)["profiles"]["error"]


def test_directories_are_created_0700(cli, isolated_env, tmp_path):
    cfg = tmp_path / "a" / "b" / "profiles.toml"
    assert cli("--config", str(cfg), "profile", "add", "x", "--host", "smtp.example.com").exit_code == 0
    for d in (tmp_path / "a", tmp_path / "a" / "b"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    box = tmp_path / "m" / "Maildir"
    (isolated_env / "profiles.toml").write_text(file_profile("f", box))
    old = os.umask(0)
    try:
        assert cli("send", "-t", "a@example.com", "-s", "s", "-b", "b").exit_code == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(box.stat().st_mode) == 0o700
