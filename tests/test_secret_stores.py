"""One contract every secret store passes (in the spirit of keyring/testing/backend.py), the
keyring store's split parts, the resolver's order, and what happens without a usable keyring."""

from __future__ import annotations

import json
import os
import sys
import textwrap

import keyring
import keyring.backends.fail
import keyring.errors
import pytest
from keyring.backend import KeyringBackend

from mailctl.errors import AuthError, ConfigError, ExitCode, SecretStoreUnavailable
from mailctl.profiles.model import ResolvedProfile
from mailctl.secrets import CommandStore, EnvStore, KeyringStore, SecretResolver, env_var_name
from mailctl.secrets.keyring_store import PARTS_MARKER

UNICODE = "pässwörd-密码-🔑 with spaces 'quotes' \"double\" $HOME `ls` \\ back"
KINDS_FOR_CONTRACT = ("password", "client_secret")


class SecretStoreContract:
    """Subclasses provide `store` and `put(profile, kind, value)` (which places a value where
    the store reads it: set() for writable stores, the environment or a command's source otherwise)."""

    writable: bool = False

    @pytest.fixture
    def store(self):  # pragma: no cover - overridden
        raise NotImplementedError

    @pytest.fixture
    def put(self, store):
        return store.set

    # read side: every store ---------------------------------------------------------------
    def test_missing_is_none(self, store):
        assert store.get("nobody", "password") is None

    def test_put_then_get(self, store, put):
        put("alice", "password", "s3cret")
        assert store.get("alice", "password") == "s3cret"

    def test_unicode_and_shell_characters(self, store, put):
        put("alice", "password", UNICODE)
        assert store.get("alice", "password") == UNICODE

    def test_profiles_and_kinds_are_independent(self, store, put):
        put("alice", "password", "alice-pw")
        put("bob", "password", "bob-pw")
        put("alice", "client_secret", "alice-cs")
        assert store.get("alice", "password") == "alice-pw"
        assert store.get("bob", "password") == "bob-pw"
        assert store.get("alice", "client_secret") == "alice-cs"
        assert store.get("bob", "client_secret") is None

    def test_large_value(self, store, put):
        value = "".join(chr(0x41 + i % 26) for i in range(6000)) + "é"
        put("alice", "client_secret", value)
        assert store.get("alice", "client_secret") == value

    def test_unknown_kind_rejected(self, store):
        with pytest.raises(ValueError):
            store.get("alice", "pin_code")

    def test_has_a_name(self, store):
        assert isinstance(store.name, str) and store.name
        assert store.writable is self.writable

    # write side -------------------------------------------------------------------------------
    def test_read_only_refuses_set_and_delete(self, store, put):
        if self.writable:
            pytest.skip("writable store")
        put("alice", "password", "s3cret")
        with pytest.raises(ConfigError) as info:
            store.set("alice", "password", "other-value")
        assert "other-value" not in info.value.message
        assert store.delete("alice", "password") is False
        assert store.get("alice", "password") == "s3cret"

    def test_overwrite(self, store):
        if not self.writable:
            pytest.skip("read-only store")
        store.set("alice", "password", "one")
        store.set("alice", "password", "two")
        assert store.get("alice", "password") == "two"

    def test_delete(self, store):
        if not self.writable:
            pytest.skip("read-only store")
        store.set("alice", "password", "one")
        store.set("alice", "client_secret", "keep")
        assert store.delete("alice", "password") is True
        assert store.get("alice", "password") is None
        assert store.get("alice", "client_secret") == "keep"
        assert store.delete("alice", "password") is False

    def test_value_looking_like_parts_marker_round_trips(self, store):
        if not self.writable:
            pytest.skip("read-only store")
        store.set("alice", "password", PARTS_MARKER + "3")
        assert store.get("alice", "password") == PARTS_MARKER + "3"


class TestKeyringStore(SecretStoreContract):
    writable = True

    @pytest.fixture
    def store(self, memory_keyring):
        return KeyringStore(part_chars=100)

    def _users(self, memory_keyring, prefix):
        return sorted(u for (s, u) in memory_keyring.entries if s == "mailctl" and u.startswith(prefix))

    def test_entries_use_service_and_profile_kind(self, store, memory_keyring):
        store.set("alice", "password", "pw")
        assert memory_keyring.entries == {("mailctl", "alice/password"): "pw"}

    def test_large_value_is_split_into_parts(self, store, memory_keyring):
        value = "x" * 250
        store.set("alice", "password", value)
        assert self._users(memory_keyring, "alice/password") == [
            "alice/password", "alice/password/part1", "alice/password/part2", "alice/password/part3",
        ]
        assert memory_keyring.entries[("mailctl", "alice/password")] == PARTS_MARKER + "3"
        assert all(len(v) <= 100 for v in memory_keyring.entries.values())
        assert store.get("alice", "password") == value

    def test_exactly_part_chars_is_not_split(self, store, memory_keyring):
        store.set("alice", "password", "y" * 100)
        assert self._users(memory_keyring, "alice/") == ["alice/password"]

    def test_large_then_small_cleans_old_parts(self, store, memory_keyring):
        store.set("alice", "password", "x" * 350)
        assert len(self._users(memory_keyring, "alice/password/part")) == 4
        store.set("alice", "password", "small")
        assert self._users(memory_keyring, "alice/") == ["alice/password"]
        assert store.get("alice", "password") == "small"

    def test_larger_then_less_large_cleans_surplus_parts(self, store, memory_keyring):
        store.set("alice", "password", "x" * 450)
        store.set("alice", "password", "z" * 150)
        assert self._users(memory_keyring, "alice/password/part") == ["alice/password/part1", "alice/password/part2"]
        assert store.get("alice", "password") == "z" * 150

    def test_delete_removes_parts(self, store, memory_keyring):
        store.set("alice", "password", "x" * 450)
        store.set("bob", "password", "x" * 450)
        assert store.delete("alice", "password") is True
        assert self._users(memory_keyring, "alice/") == []
        assert store.get("bob", "password") == "x" * 450

    def test_missing_part_is_an_error_without_the_value(self, store, memory_keyring):
        store.set("alice", "password", "abc" * 100)
        del memory_keyring.entries[("mailctl", "alice/password/part2")]
        with pytest.raises(SecretStoreUnavailable) as info:
            store.get("alice", "password")
        assert "abc" not in info.value.message

    @pytest.mark.parametrize(
        "value", ["€" * 5000, "🔑" * 2000, "a🔑" * 1500, "🔑" * 700], ids=["bmp", "astral", "mixed", "astral-short"]
    )
    def test_default_part_size_fits_windows_limit(self, memory_keyring, value):
        """Windows Credential Manager holds 2560 bytes of UTF-16; characters outside the BMP
        take four bytes there, so parts are measured in UTF-16, not code points."""
        store = KeyringStore()
        store.set("alice", "oauth_tokens", value)
        sizes = {user: len(stored.encode("utf-16-le")) for (_, user), stored in memory_keyring.entries.items()}
        assert max(sizes.values()) <= 2560, sizes
        assert store.get("alice", "oauth_tokens") == value


class TestEnvStore(SecretStoreContract):
    @pytest.fixture
    def store(self):
        return EnvStore()

    @pytest.fixture
    def put(self, monkeypatch):
        def put(profile, kind, value):
            monkeypatch.setenv(env_var_name(profile, kind), value)

        return put

    def test_variable_name(self):
        assert env_var_name("alice", "password") == "MAILCTL_SECRET_ALICE_PASSWORD"
        assert env_var_name("Work_2", "client_secret") == "MAILCTL_SECRET_WORK_2_CLIENT_SECRET"

    def test_empty_variable_is_missing(self, store, monkeypatch):
        monkeypatch.setenv("MAILCTL_SECRET_ALICE_PASSWORD", "")
        assert store.get("alice", "password") is None

    def test_explicit_mapping(self):
        store = EnvStore({"MAILCTL_SECRET_ALICE_PASSWORD": "from-mapping"})
        assert store.get("alice", "password") == "from-mapping"
        assert store.get("bob", "password") is None


SCRIPT = textwrap.dedent(
    """\
    import json, os, sys
    data = json.load(open(sys.argv[1], encoding="utf-8"))
    value = data.get(os.environ["MAILCTL_PROFILE"] + "/" + os.environ["MAILCTL_SECRET_KIND"])
    if value is not None:
        sys.stdout.buffer.write(value.encode("utf-8") + b"\\n")
    """
)


class TestCommandStore(SecretStoreContract):
    """The command is a script that answers from a JSON file, per profile and kind."""

    @pytest.fixture
    def source(self, tmp_path):
        path = tmp_path / "secrets.json"
        path.write_text("{}", encoding="utf-8")
        return path

    @pytest.fixture
    def store(self, tmp_path, source):
        script = tmp_path / "secret_source.py"
        script.write_text(SCRIPT, encoding="utf-8")
        return CommandStore(f'"{sys.executable}" "{script}" "{source}"')

    @pytest.fixture
    def put(self, source):
        def put(profile, kind, value):
            data = json.loads(source.read_text(encoding="utf-8"))
            data[f"{profile}/{kind}"] = value
            source.write_text(json.dumps(data), encoding="utf-8")

        return put

    def test_printf_from_environment(self, monkeypatch):
        monkeypatch.setenv("VALUE", UNICODE)
        assert CommandStore('printf %s "$VALUE"').get("alice", "password") == UNICODE

    def test_one_trailing_newline_is_stripped(self):
        assert CommandStore("printf 'abc\\n'").get("a", "password") == "abc"
        assert CommandStore("printf 'abc\\r\\n'").get("a", "password") == "abc"
        assert CommandStore("printf 'abc\\n\\n'").get("a", "password") == "abc\n"

    def test_nonzero_exit_is_config_error_without_stderr(self):
        store = CommandStore("echo 'leaked-by-password-manager' >&2; echo partial-secret; exit 3")
        with pytest.raises(ConfigError) as info:
            store.get("alice", "password")
        err = info.value
        assert err.exit_code == ExitCode.CONFIG
        assert "status 3" in err.message
        for text in (err.message, err.hint or ""):
            assert "leaked-by-password-manager" not in text
            assert "partial-secret" not in text

    def test_timeout_is_config_error(self):
        store = CommandStore("sleep 5", timeout=0.3)
        with pytest.raises(ConfigError) as info:
            store.get("alice", "password")
        assert "did not finish" in info.value.message

    def test_stdin_is_not_inherited(self):
        # A command waiting for input gets EOF at once instead of hanging.
        assert CommandStore("cat").get("alice", "password") is None

    def test_oauth_tokens_are_not_asked_of_the_command(self):
        assert CommandStore("echo should-not-be-used").get("alice", "oauth_tokens") is None


# --- the resolver --------------------------------------------------------------------------------
def profile(name, chain=None, **values):
    return ResolvedProfile(name, values, {}, chain or [name])


class TestResolver:
    @pytest.fixture
    def resolver(self, memory_keyring):
        return SecretResolver(env=EnvStore(), keyring=KeyringStore())

    def test_env_beats_command_beats_keyring(self, resolver, monkeypatch):
        p = profile("alice", secret_command="printf %s from-command")
        resolver.store("alice", "password", "from-keyring")
        assert resolver.lookup(p, "password") == ("from-command", "secret_command:alice")
        monkeypatch.setenv("MAILCTL_SECRET_ALICE_PASSWORD", "from-env")
        assert resolver.lookup(p, "password") == ("from-env", "environment:alice")
        monkeypatch.delenv("MAILCTL_SECRET_ALICE_PASSWORD")
        assert resolver.lookup(profile("alice"), "password") == ("from-keyring", "keyring:alice")

    def test_command_with_empty_output_falls_through_to_keyring(self, resolver):
        resolver.store("alice", "password", "from-keyring")
        p = profile("alice", secret_command="true")
        assert resolver.get(p, "password") == "from-keyring"

    def test_failing_command_is_an_error_not_a_fallback(self, resolver):
        resolver.store("alice", "password", "from-keyring")
        with pytest.raises(ConfigError):
            resolver.get(profile("alice", secret_command="exit 1"), "password")

    def test_child_falls_back_to_parent(self, resolver, monkeypatch):
        child = profile("alice", chain=["alice", "company"])
        resolver.store("company", "client_secret", "company-secret")
        assert resolver.lookup(child, "client_secret") == ("company-secret", "keyring:company")
        resolver.store("alice", "client_secret", "alice-secret")
        assert resolver.lookup(child, "client_secret") == ("alice-secret", "keyring:alice")
        monkeypatch.setenv("MAILCTL_SECRET_COMPANY_PASSWORD", "company-env")
        assert resolver.lookup(child, "password") == ("company-env", "environment:company")

    def test_require_missing_is_auth_error_naming_the_remedy(self, resolver):
        with pytest.raises(AuthError) as info:
            resolver.require(profile("alice"), "password")
        assert info.value.exit_code == ExitCode.NOPERM
        assert "--password-stdin" in info.value.hint
        with pytest.raises(AuthError) as info:
            resolver.require(profile("alice"), "client_secret")
        assert "MAILCTL_SECRET_ALICE_CLIENT_SECRET" in info.value.hint

    def test_store_and_delete_all(self, resolver, memory_keyring):
        resolver.store("alice", "password", "p" * 3000)
        resolver.store("alice", "oauth_tokens", "{}")
        resolver.store("bob", "password", "b")
        assert sorted(resolver.delete_all("alice")) == ["oauth_tokens", "password"]
        assert [u for _, u in memory_keyring.entries] == ["bob/password"]

    def test_move_all(self, resolver, memory_keyring):
        resolver.store("alice", "password", "p" * 3000)
        assert resolver.move_all("alice", "alicia") == ["password"]
        assert resolver.keyring.get("alicia", "password") == "p" * 3000
        assert not [u for _, u in memory_keyring.entries if u.startswith("alice/")]


# --- no usable keyring -----------------------------------------------------------------------------
class LockedKeyring(KeyringBackend):
    priority = 1

    def get_password(self, service, username):
        raise keyring.errors.KeyringLocked("locked")

    def set_password(self, service, username, password):
        raise keyring.errors.KeyringLocked("locked")

    def delete_password(self, service, username):
        raise keyring.errors.KeyringLocked("locked")


class DbusMissingKeyring(LockedKeyring):
    def get_password(self, service, username):
        raise RuntimeError("org.freedesktop.DBus.Error.ServiceUnknown")

    set_password = delete_password = lambda self, *a: self.get_password(None, None)


SECRET = "never-print-me-9f8e7d"


@pytest.mark.parametrize(
    "backend,word",
    [(keyring.backends.fail.Keyring, "no usable keyring"), (LockedKeyring, "locked"), (DbusMissingKeyring, "not usable")],
)
def test_add_without_usable_keyring_exit_78_with_remedies(cli, isolated_env, backend, word):
    cfg = isolated_env / "profiles.toml"
    cfg.write_text('# keep me\nschema_version = 1\n', encoding="utf-8")
    before = cfg.read_bytes()
    keyring.set_keyring(backend())
    r = cli("profile", "add", "p", "--host", "smtp.example.com", "--username", "u@example.com",
            "--password-stdin", input=SECRET + "\n")
    assert r.exit_code == 78, r.stderr
    assert word in r.stderr
    assert "secret_command" in r.stderr and "MAILCTL_SECRET_" in r.stderr
    assert SECRET not in r.output
    assert "Traceback" not in r.output
    assert cfg.read_bytes() == before


def test_show_and_delete_without_usable_keyring(cli, isolated_env):
    r = cli("profile", "add", "p", "--host", "smtp.example.com", "--username", "u@example.com", "--no-secret")
    assert r.exit_code == 0
    keyring.set_keyring(keyring.backends.fail.Keyring())
    r = cli("profile", "show", "p", "--json")
    assert r.exit_code == 0
    assert json.loads(r.stdout)["secrets"]["password"] == "unknown (no usable keyring)"
    # Deleting a profile still works; the keyring part becomes a warning.
    r = cli("profile", "delete", "p", "--yes")
    assert r.exit_code == 0
    assert "Warning:" in r.stderr
    import tomlkit

    data = tomlkit.parse((isolated_env / "profiles.toml").read_text(encoding="utf-8")).unwrap()
    assert not data.get("profiles")


def test_env_secret_serves_without_keyring(isolated_env, monkeypatch):
    keyring.set_keyring(keyring.backends.fail.Keyring())
    monkeypatch.setenv("MAILCTL_SECRET_ALICE_PASSWORD", "env-value")
    resolver = SecretResolver()
    assert resolver.get(profile("alice"), "password") == "env-value"
    with pytest.raises(SecretStoreUnavailable) as info:
        resolver.get(profile("bob"), "password")
    assert info.value.exit_code == ExitCode.CONFIG


def test_secret_value_never_in_toml(cli, isolated_env, memory_keyring):
    r = cli("profile", "add", "p", "--host", "smtp.example.com", "--username", "u@example.com",
            "--password-stdin", input=SECRET + "\n")
    assert r.exit_code == 0
    for path in isolated_env.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    assert os.environ.get("MAILCTL_SECRET_P_PASSWORD") is None
