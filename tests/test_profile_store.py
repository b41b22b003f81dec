"""The profiles file: a person's formatting survives, writes are atomic (0600, no temp files),
a lock keeps concurrent edits, and broken files are refused (78) without being touched."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import tomlkit

from mailctl.errors import ConfigError, ExitCode, NotFoundError, ValidationError
from mailctl.profiles.store import SCHEMA_VERSION, ProfileStore, atomic_write

HAND_WRITTEN = """\
# My mail profiles -- maintained by hand, please keep this comment.
schema_version = 1   # do not touch
default = "work"

[settings]
retention_days = 14    # keep two weeks

# ---- company ----
[profiles.work]
host   =   "smtp.example.com"    # aligned on purpose
port   =   2525
security = "starttls"
# username below is the relay account
username = "relay@example.com"

# ---- personal ----
[profiles.home]
inherits = "work"   # server from work
from_address = "me@example.org"
"""


@pytest.fixture
def cfg(isolated_env) -> Path:
    path = isolated_env / "profiles.toml"
    path.write_text(HAND_WRITTEN, encoding="utf-8")
    return path


def ok(result):
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr, result.exception)
    return result


# --- formatting survives ---------------------------------------------------------------------
def test_add_appends_and_keeps_every_hand_written_byte(cli, cfg):
    ok(cli("profile", "add", "extra", "--host", "mx.example.net", "--port", "25"))
    text = cfg.read_text(encoding="utf-8")
    assert text.startswith(HAND_WRITTEN)
    added = text[len(HAND_WRITTEN):]
    assert "[profiles.extra]" in added and 'host = "mx.example.net"' in added and "port = 25" in added
    assert tomlkit.parse(text).unwrap()["default"] == "work"


def test_edit_changes_only_the_edited_value(cli, cfg):
    ok(cli("profile", "edit", "work", "--port", "587"))
    text = cfg.read_text(encoding="utf-8")
    expected = HAND_WRITTEN.replace('port   =   2525', 'port   =   587')
    assert text == expected


def test_edit_adding_a_field_keeps_the_rest(cli, cfg):
    ok(cli("profile", "edit", "home", "--sender-name", "Me"))
    text = cfg.read_text(encoding="utf-8")
    assert text.startswith(HAND_WRITTEN.rstrip("\n"))
    assert text[len(HAND_WRITTEN.rstrip("\n")):].strip() == 'sender_name = "Me"'


def test_unset_removes_only_that_line(cli, cfg):
    ok(cli("profile", "edit", "work", "--unset", "security"))
    text = cfg.read_text(encoding="utf-8")
    assert text == HAND_WRITTEN.replace('security = "starttls"\n', "")


def test_delete_keeps_the_other_profiles_formatting(cli, cfg):
    ok(cli("profile", "add", "spare", "--host", "spare.example.com"))
    ok(cli("profile", "delete", "spare", "--yes"))
    text = cfg.read_text(encoding="utf-8")
    assert text.rstrip("\n") == HAND_WRITTEN.rstrip("\n")
    head, _, _ = HAND_WRITTEN.partition("# ---- personal ----")
    ok(cli("profile", "delete", "home", "--yes"))
    after = cfg.read_text(encoding="utf-8")
    assert after.startswith(head.rstrip("\n"))
    assert "[profiles.home]" not in after and "from_address" not in after


def test_set_default_changes_only_the_default_line(cli, cfg):
    ok(cli("profile", "set-default", "home"))
    assert cfg.read_text(encoding="utf-8") == HAND_WRITTEN.replace('default = "work"', 'default = "home"')


def test_rename_keeps_comments(cli, cfg):
    ok(cli("profile", "rename", "work", "office"))
    text = cfg.read_text(encoding="utf-8")
    for comment in ("# My mail profiles", "# do not touch", "# keep two weeks", "# aligned on purpose",
                    "# username below is the relay account", "# server from work"):
        assert comment in text
    data = tomlkit.parse(text).unwrap()
    assert data["default"] == "office"
    assert data["profiles"]["home"]["inherits"] == "office"
    assert data["profiles"]["office"]["port"] == 2525


# --- atomic writes ---------------------------------------------------------------------------
def test_new_file_mode_0600_and_no_temp_files(cli, isolated_env):
    path = isolated_env / "sub" / "profiles.toml"
    ok(cli("--config", str(path), "profile", "add", "p", "--host", "smtp.example.com"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    leftovers = [p.name for p in path.parent.iterdir() if p.name not in ("profiles.toml", "profiles.toml.lock")]
    assert leftovers == []
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# mailctl profiles.")
    assert tomlkit.parse(text).unwrap()["schema_version"] == SCHEMA_VERSION


def test_rewrite_tightens_mode_to_0600(cli, cfg):
    os.chmod(cfg, 0o644)
    ok(cli("profile", "edit", "work", "--port", "25"))
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o600
    assert [p.name for p in cfg.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_atomic_write_failure_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "atomic" / "profiles.toml"
    path.parent.mkdir()
    path.write_text("old = 1\n", encoding="utf-8")

    def boom(src, dst):
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write(path, "new = 2\n")
    assert path.read_text(encoding="utf-8") == "old = 1\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["profiles.toml"]


def test_failed_edit_body_writes_nothing(cfg):
    store = ProfileStore(cfg)
    with pytest.raises(RuntimeError):
        with store.edit() as doc:
            doc.set_fields("work", {"port": 25})
            raise RuntimeError("abort")
    assert cfg.read_text(encoding="utf-8") == HAND_WRITTEN


def test_unchanged_edit_does_not_rewrite(cfg):
    os.chmod(cfg, 0o640)
    before = cfg.stat().st_mtime_ns
    with ProfileStore(cfg).edit():
        pass
    assert cfg.stat().st_mtime_ns == before
    assert cfg.read_text(encoding="utf-8") == HAND_WRITTEN


# --- the lock --------------------------------------------------------------------------------
def test_concurrent_processes_lose_no_profile(isolated_env):
    n = 8
    env = dict(os.environ, PYTHON_KEYRING_BACKEND="keyring.backends.null.Keyring")
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "mailctl", "profile", "add", f"p{i}", "--host", f"smtp{i}.example.com",
             "--port", str(2500 + i)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for i in range(n)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
    data = tomlkit.parse((isolated_env / "profiles.toml").read_text(encoding="utf-8")).unwrap()
    assert sorted(data["profiles"]) == sorted(f"p{i}" for i in range(n))
    for i in range(n):
        assert data["profiles"][f"p{i}"] == {"host": f"smtp{i}.example.com", "port": 2500 + i}
    assert data["default"] in data["profiles"]


def test_lock_is_exclusive(tmp_path):
    """A second process cannot take the lock while the first holds it."""
    path = tmp_path / "profiles.toml"
    code = (
        "import sys, fcntl, os\n"
        "fd = os.open(sys.argv[1], os.O_RDWR)\n"
        "try:\n"
        "    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "    print('got')\n"
        "except BlockingIOError:\n"
        "    print('blocked')\n"
    )
    store = ProfileStore(path)
    with store.lock():
        out = subprocess.run([sys.executable, "-c", code, str(path) + ".lock"], capture_output=True, text=True)
        assert out.stdout.strip() == "blocked"
    out = subprocess.run([sys.executable, "-c", code, str(path) + ".lock"], capture_output=True, text=True)
    assert out.stdout.strip() == "got"


# --- refusing broken files ---------------------------------------------------------------------
def _load_error(path: Path, text: str) -> ConfigError:
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        ProfileStore(path).load()
    assert info.value.exit_code == ExitCode.CONFIG
    return info.value


def test_newer_schema_version(tmp_path):
    err = _load_error(tmp_path / "p.toml", "# hi\nschema_version = 2\n")
    assert f"{tmp_path / 'p.toml'}:2" in err.message
    assert "schema_version" in err.message and "newer" in err.message


def test_schema_version_wrong_type(tmp_path):
    err = _load_error(tmp_path / "p.toml", 'schema_version = "one"\n')
    assert ":1:" in err.message and "schema_version" in err.message


@pytest.mark.parametrize("key", ["password", "client_secret", "token", "refresh_token", "proxy_password"])
def test_secret_like_keys_refused(tmp_path, key):
    path = tmp_path / "p.toml"
    err = _load_error(path, f'schema_version = 1\n\n[profiles.a]\nhost = "h.example.com"\n{key} = "hunter2"\n')
    assert f"{path}:5" in err.message
    assert key in err.message
    assert "hunter2" not in err.message and "hunter2" not in (err.hint or "")


def test_unknown_key_names_line_and_key(tmp_path):
    path = tmp_path / "p.toml"
    text = 'schema_version = 1\n[profiles.a]\nhost = "h.example.com"\n\n[profiles.b]\nhost = "h.example.com"\nprot = 25\n'
    err = _load_error(path, text)
    assert f"{path}:7" in err.message and "'prot'" in err.message


def test_wrong_type_names_line_and_key(tmp_path):
    path = tmp_path / "p.toml"
    err = _load_error(path, 'schema_version = 1\n[profiles.a]\nhost = "h.example.com"\ntls_verify = "maybe"\n')
    assert f"{path}:4" in err.message and "tls_verify" in err.message


def test_invalid_value_in_file(tmp_path):
    path = tmp_path / "p.toml"
    err = _load_error(path, 'schema_version = 1\n[profiles.a]\nhost = "h.example.com"\nport = 99999\n')
    assert f"{path}:4" in err.message and "port" in err.message and "1-65535" in err.message


def test_invalid_profile_name_in_file(tmp_path):
    path = tmp_path / "p.toml"
    err = _load_error(path, 'schema_version = 1\n[profiles."bad-name"]\nhost = "h.example.com"\n')
    assert "bad-name" in err.message


def test_default_must_exist(tmp_path):
    path = tmp_path / "p.toml"
    err = _load_error(path, 'schema_version = 1\ndefault = "ghost"\n[profiles.a]\nhost = "h.example.com"\n')
    assert f"{path}:2" in err.message and "ghost" in err.message


def test_malformed_names_line(tmp_path):
    path = tmp_path / "p.toml"
    err = _load_error(path, 'schema_version = 1\n[profiles.a]\nhost = = "x"\n')
    assert f"{path}:3" in err.message and "malformed TOML" in err.message


def test_bad_setting(tmp_path):
    path = tmp_path / "p.toml"
    err = _load_error(path, 'schema_version = 1\n[settings]\nmax_retry_age = "forever"\n')
    assert f"{path}:3" in err.message and "max_retry_age" in err.message


def test_not_utf8(tmp_path):
    path = tmp_path / "p.toml"
    path.write_bytes(b'schema_version = 1\n# \xff\xfe\n')
    with pytest.raises(ConfigError):
        ProfileStore(path).load()


def test_missing_file_loads_empty(tmp_path):
    doc = ProfileStore(tmp_path / "none.toml").load()
    assert doc.profile_names() == [] and doc.default is None
    assert not (tmp_path / "none.toml").exists()


# --- the document API --------------------------------------------------------------------------
def test_document_operations(cfg):
    store = ProfileStore(cfg)
    doc = store.load()
    assert doc.profile_names() == ["work", "home"]
    assert doc.default == "work"
    assert doc.children_of("work") == ["home"]
    assert doc.raw_profile("work")["port"] == 2525
    assert doc.settings()["retention_days"] == 14
    assert doc.settings()["max_retry_age"] == "2d"  # defaults fill the rest
    with pytest.raises(NotFoundError):
        doc.raw_profile("ghost")
    with pytest.raises(ValidationError):
        doc.add_profile("work", {"host": "x.example.com"})
    with pytest.raises(ValidationError) as info:
        doc.add_profile("new", {"password": "hunter2"})
    assert info.value.field == "password"
    with pytest.raises(NotFoundError):
        doc.set_default("ghost")


def test_settings_written_and_validated(cfg):
    store = ProfileStore(cfg)
    with store.edit() as doc:
        doc.set_setting("batch_size", 10)
    assert store.load().settings()["batch_size"] == 10
    assert "# keep two weeks" in cfg.read_text(encoding="utf-8")
    with pytest.raises(ValidationError):
        with store.edit() as doc:
            doc.set_setting("batch_size", -1)


@pytest.mark.parametrize(
    "text,line,key",
    [
        ('schema_version = 1\n[profiles]\na = { host = "h.example.com", bogus = 1 }\n', 3, "bogus"),
        ('schema_version = 1\n[profiles]\na.host = "h.example.com"\na.prot = 1\n', 4, "prot"),
        ('schema_version = 1\n[ profiles . "a" ]\nhost = "h.example.com"\nprot = 1\n', 4, "prot"),
        ('schema_version = 1\n[profiles]\nb.host = "h.example.com"\na.port = "x"\n', 4, "port"),
    ],
    ids=["inline table", "dotted keys", "spaced header", "dotted wrong type"],
)
def test_other_toml_layouts_still_name_the_line(tmp_path, text, line, key):
    path = tmp_path / "p.toml"
    err = _load_error(path, text)
    assert f"{path}:{line}:" in err.message and key in err.message


def test_inherits_missing_parent_in_file(cli, isolated_env):
    cfg = isolated_env / "profiles.toml"
    cfg.write_text('schema_version = 1\n[profiles.a]\nhost = "h.example.com"\ninherits = "ghost"\n', encoding="utf-8")
    before = cfg.read_bytes()
    r = cli("profile", "show", "a")
    assert r.exit_code == 78 and "ghost" in r.stderr
    r = cli("profile", "list", "--json")  # list still works and reports the broken row
    assert r.exit_code == 0 and "ghost" in r.stdout
    assert cfg.read_bytes() == before
