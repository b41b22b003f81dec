"""KeyringStore and the CLI against a REAL Secret Service: gnome-keyring-daemon, unlocked,
inside the D-Bus session that CI's dbus-run-session provides (or a private dbus-daemon).
The same contract as the in-memory store, through keyring's SecretService backend."""

from __future__ import annotations

import uuid

import keyring
import pytest

from mailctl.secrets.keyring_store import PART_CHARS, PARTS_MARKER, KeyringStore

pytestmark = pytest.mark.integration


@pytest.fixture
def store(secret_service) -> KeyringStore:
    # A service name per test: entries of one test never meet another's.
    return KeyringStore(service=f"mailctl-test-{uuid.uuid4().hex[:8]}")


def _raw(store: KeyringStore, user: str) -> str | None:
    return keyring.get_password(store.service, user)


def test_backend_is_the_real_secret_service(secret_service):
    from keyring.backends import SecretService

    assert isinstance(keyring.get_keyring(), SecretService.Keyring)
    # The item really lives in gnome-keyring: read it back through secretstorage directly.
    import secretstorage

    keyring.set_password("mailctl-test-direct", "probe", "value-1")
    conn = secretstorage.dbus_init()
    try:
        items = list(secretstorage.get_default_collection(conn).search_items({"service": "mailctl-test-direct", "username": "probe"}))
        assert [i.get_secret() for i in items] == [b"value-1"]
    finally:
        keyring.delete_password("mailctl-test-direct", "probe")
        conn.close()


def test_set_get_delete(store):
    assert store.get("work", "password") is None
    store.set("work", "password", "s3cret")
    assert store.get("work", "password") == "s3cret"
    assert _raw(store, "work/password") == "s3cret"
    assert store.delete("work", "password") is True
    assert store.get("work", "password") is None
    assert store.delete("work", "password") is False


def test_missing_is_none(store):
    assert store.get("nobody", "password") is None
    assert store.get("nobody", "client_secret") is None


def test_unicode(store):
    value = "pässwörd-秘密-🔑-\u00a0end"
    store.set("uni", "password", value)
    assert store.get("uni", "password") == value


def test_overwrite(store):
    store.set("p", "password", "first")
    store.set("p", "password", "second")
    assert store.get("p", "password") == "second"


def test_large_value_is_split_into_parts_and_joined(store):
    value = ("ÄbC-" * ((3 * store.part_chars) // 4 + 10))[: 2 * store.part_chars + 17]
    assert len(value) > store.part_chars == PART_CHARS
    store.set("big", "oauth_tokens", value)
    assert store.get("big", "oauth_tokens") == value
    head = _raw(store, "big/oauth_tokens")
    assert head == f"{PARTS_MARKER}3"
    assert _raw(store, "big/oauth_tokens/part1") == value[: store.part_chars]
    assert _raw(store, "big/oauth_tokens/part3") == value[2 * store.part_chars :]
    assert _raw(store, "big/oauth_tokens/part4") is None


def test_overwrite_large_with_small_cleans_parts(store):
    store.set("big", "password", "x" * (3 * store.part_chars + 1))
    assert _raw(store, "big/password/part4") is not None
    store.set("big", "password", "small")
    assert store.get("big", "password") == "small"
    for i in range(1, 5):
        assert _raw(store, f"big/password/part{i}") is None


def test_overwrite_large_with_fewer_parts(store):
    store.set("big", "password", "a" * (4 * store.part_chars))
    store.set("big", "password", "b" * (store.part_chars + 1))
    assert store.get("big", "password") == "b" * (store.part_chars + 1)
    assert _raw(store, "big/password/part3") is None and _raw(store, "big/password/part4") is None


def test_delete_large_removes_every_part(store):
    store.set("big", "password", "z" * (2 * store.part_chars + 5))
    assert store.delete("big", "password") is True
    for user in ("big/password", "big/password/part1", "big/password/part2", "big/password/part3"):
        assert _raw(store, user) is None


def test_value_that_looks_like_the_marker_round_trips(store):
    value = f"{PARTS_MARKER}7"
    store.set("odd", "password", value)
    assert store.get("odd", "password") == value


def test_kinds_are_separate(store):
    store.set("k", "password", "pw")
    store.set("k", "client_secret", "cs")
    assert store.get("k", "password") == "pw"
    assert store.get("k", "client_secret") == "cs"
    store.delete("k", "password")
    assert store.get("k", "client_secret") == "cs"


# --- the CLI path --------------------------------------------------------------------------
def test_profile_add_password_stdin_goes_to_the_secret_service(secret_service, cli, isolated_env):
    secret = f"cli-secret-{uuid.uuid4().hex}"
    name = f"ss_{uuid.uuid4().hex[:8]}"
    res = cli(
        "profile", "add", name,
        "--host", "smtp.example.com", "--security", "starttls", "--auth", "password",
        "--username", "alice@example.com", "--from-address", "alice@example.com",
        "--password-stdin",
        input=secret + "\n",
    )
    assert res.exit_code == 0, res.output + repr(res.exception)
    try:
        assert keyring.get_password("mailctl", f"{name}/password") == secret
        assert KeyringStore().get(name, "password") == secret
        toml = (isolated_env / "profiles.toml").read_text()
        assert name in toml
        assert secret not in toml
        assert secret not in res.output

        shown = cli("profile", "show", name, "--json")
        assert shown.exit_code == 0, shown.output
        assert secret not in shown.output

        # Deleting the profile removes its secret from the Secret Service too.
        gone = cli("profile", "delete", name, "--yes")
        assert gone.exit_code == 0, gone.output
        assert keyring.get_password("mailctl", f"{name}/password") is None
    finally:
        KeyringStore().delete(name, "password")


def test_profile_add_large_secret_via_cli(secret_service, cli, isolated_env):
    secret = "T" * (PART_CHARS * 2 + 3)
    name = f"ss_{uuid.uuid4().hex[:8]}"
    res = cli(
        "profile", "add", name,
        "--host", "smtp.example.com", "--security", "starttls", "--auth", "password",
        "--username", "bob@example.com", "--password-stdin",
        input=secret + "\n",
    )
    assert res.exit_code == 0, res.output + repr(res.exception)
    try:
        assert KeyringStore().get(name, "password") == secret
        assert keyring.get_password("mailctl", f"{name}/password") == f"{PARTS_MARKER}3"
        assert secret not in (isolated_env / "profiles.toml").read_text()
        assert secret not in res.output
    finally:
        KeyringStore().delete(name, "password")


# --- no usable keyring -> exit 78 with remedies ----------------------------------------
def _assert_remedies(res) -> None:
    assert res.exit_code == 78, res.output + repr(res.exception)
    assert "Traceback" not in res.output
    assert "secret_command" in res.stderr
    assert "MAILCTL_SECRET_" in res.stderr


def test_fail_backend_exit_78_with_remedies(cli, isolated_env):
    from keyring.backends import fail

    previous = keyring.get_keyring()
    keyring.set_keyring(fail.Keyring())
    try:
        res = cli(
            "profile", "add", "nokeyring",
            "--host", "smtp.example.com", "--auth", "password", "--username", "u@example.com",
            "--password-stdin",
            input="never-stored-secret\n",
        )
    finally:
        keyring.set_keyring(previous)
    _assert_remedies(res)
    assert "never-stored-secret" not in res.output
    toml = isolated_env / "profiles.toml"
    assert not toml.exists() or "never-stored-secret" not in toml.read_text()


def test_no_dbus_session_exit_78_with_remedies(cli, isolated_env, monkeypatch, tmp_path):
    """The SecretService backend selected, but there is no D-Bus session bus."""
    pytest.importorskip("secretstorage")
    from keyring.backends import SecretService

    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", f"unix:path={tmp_path}/no-such-bus")
    previous = keyring.get_keyring()
    keyring.set_keyring(SecretService.Keyring())
    try:
        res = cli(
            "profile", "add", "nobus",
            "--host", "smtp.example.com", "--auth", "password", "--username", "u@example.com",
            "--password-stdin",
            input="never-stored-secret\n",
        )
    finally:
        keyring.set_keyring(previous)
    _assert_remedies(res)
    assert "never-stored-secret" not in res.output
