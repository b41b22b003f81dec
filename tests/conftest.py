"""Every test runs against its own config dir, data dir and in-memory keyring."""

from __future__ import annotations

import os
from dataclasses import dataclass

import keyring
import pytest
from keyring.backend import KeyringBackend
from keyring.errors import PasswordDeleteError
from typer.testing import CliRunner


class MemoryKeyring(KeyringBackend):
    """A real keyring backend, registered through keyring's API, that keeps secrets in memory."""

    priority = 1

    def __init__(self) -> None:
        super().__init__()
        self.entries: dict[tuple[str, str], str] = {}

    def get_password(self, service, username):
        return self.entries.get((service, username))

    def set_password(self, service, username, password):
        self.entries[(service, username)] = password

    def delete_password(self, service, username):
        try:
            del self.entries[(service, username)]
        except KeyError:
            raise PasswordDeleteError(username) from None


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    home = tmp_path / "mailctl-home"
    home.mkdir()
    for var in list(os.environ):
        if var.startswith("MAILCTL_"):
            monkeypatch.delenv(var)
    monkeypatch.setenv("MAILCTL_HOME", str(home))
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "200")
    backend = MemoryKeyring()
    previous = keyring.get_keyring()
    keyring.set_keyring(backend)
    yield home
    keyring.set_keyring(previous)


@pytest.fixture
def memory_keyring(isolated_env) -> MemoryKeyring:
    return keyring.get_keyring()


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str
    exception: BaseException | None

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@pytest.fixture
def cli():
    """cli("profile", "list", input=...) -> Result with separate stdout and stderr."""
    from mailctl.cli import app

    def invoke(*args: str, input: str | bytes | None = None, env: dict | None = None) -> Result:
        runner = CliRunner()
        res = runner.invoke(app, list(args), input=input, env=env, catch_exceptions=True)
        exc = res.exception if not isinstance(res.exception, SystemExit) else None
        return Result(res.exit_code, res.stdout, res.stderr, exc)

    return invoke


# --- PostgreSQL (tests/pgserver.py): one throwaway cluster per session ----------------------
@pytest.fixture(scope="session")
def pg_server():
    import os

    import pgserver

    reason = pgserver.skip_reason()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the PostgreSQL tests: {reason}")
        pytest.skip(reason)
    try:
        import psycopg  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("CI must run the PostgreSQL tests: psycopg is not installed (the test extra has it)")
        pytest.skip("psycopg is not installed (pip install -e '.[test]')")
    with pgserver.running_postgres() as server:
        yield server


_PG_SCHEMAS = iter(range(1, 1_000_000))


@pytest.fixture
def pg_url(pg_server, monkeypatch) -> str:
    """A postgresql:// outbox URL of its own for this test (a fresh schema in the cluster)."""
    monkeypatch.setenv("MAILCTL_PG_SCHEMA", f"t{next(_PG_SCHEMAS)}")
    return pg_server.url()


@pytest.fixture(params=["sqlite", "postgresql"])
def outbox_factory(request, tmp_path):
    """make(**kwargs) -> a new handle on this test's outbox: an SQLite file, or a PostgreSQL
    schema of its own. Tests that take it are the contract both backends pass."""
    if request.param == "sqlite":
        from mailctl.outbox import Outbox

        path = tmp_path / "contract.sqlite3"

        def make(**kwargs):
            return Outbox(path, **kwargs)
    else:
        from mailctl.outbox.pg import PgOutbox

        url = request.getfixturevalue("pg_url")

        def make(**kwargs):
            return PgOutbox(url, **kwargs)
    make.backend = request.param
    return make
