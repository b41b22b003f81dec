"""The command line on a PostgreSQL outbox: `MAILCTL_OUTBOX`, `--outbox` and `[settings]
outbox` take a postgresql:// URL (a real throwaway cluster, tests/pgserver.py); any other
scheme is a configuration error, never a file name; the password never shows."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from outbox_smtp import RecordingHandler, SmtpServer, write_profiles  # noqa: E402

RAW = "From: app@example.com\nTo: user@example.org\nSubject: shared\nMessage-ID: <pg1@example.com>\n\nbody\n"


def test_queue_add_list_flush_on_postgresql(cli, isolated_env, pg_url, pg_server, monkeypatch, tmp_path):
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    handler = RecordingHandler()
    with SmtpServer(handler) as srv:
        write_profiles(isolated_env, {"relay": srv}, default="relay")
        monkeypatch.setenv("MAILCTL_OUTBOX", pg_url)
        r = cli("queue", "add", input=RAW)
        assert r.exit_code == 0, r.output
        qid = int(r.stdout.strip())
        rows = [json.loads(line) for line in cli("queue", "list", "--json").stdout.splitlines()]
        assert [(row["id"], row["state"]) for row in rows] == [(qid, "queued")]
        r = cli("queue", "flush", "--json")
        assert r.exit_code == 0, r.output
        assert cli("queue", "show", str(qid), "--json").stdout.count('"sent"') >= 1
        everything = r.output + cli("queue", "stats", "--json").output + cli("queue", "show", str(qid)).output
    assert len(handler.messages) == 1
    assert pg_server.password not in everything
    # a URL is never taken for a file name: nothing named postgresql: appears here
    assert list(work.iterdir()) == []
    assert not (isolated_env / "data" / "outbox.sqlite3").exists()


def test_settings_outbox_names_the_database(cli, isolated_env, pg_url, pg_server):
    with SmtpServer() as srv:
        write_profiles(isolated_env, {"relay": srv}, default="relay", settings={"outbox": pg_url.replace(f":{pg_server.password}", "")})
        os.environ["PGPASSWORD"] = pg_server.password
        try:
            r = cli("queue", "add", input=RAW)
            assert r.exit_code == 0, r.output
            from mailctl.outbox.pg import PgOutbox

            with PgOutbox(pg_url) as box:
                assert box.count_by_state()["queued"] == 1
        finally:
            del os.environ["PGPASSWORD"]


def test_settings_outbox_refuses_a_password_in_the_file(cli, isolated_env):
    (isolated_env / "profiles.toml").write_text(
        'schema_version = 1\ndefault = "local"\n[settings]\noutbox = "postgresql://u:hunter2@127.0.0.1/db"\n')
    r = cli("queue", "list")
    assert r.exit_code == 78 and "hunter2" not in r.output and "password" in r.output


@pytest.mark.parametrize("url", ["mysql://u:p@127.0.0.1/db", "redis://127.0.0.1:6379/0"])
def test_another_scheme_is_a_config_error_not_a_file(cli, isolated_env, monkeypatch, tmp_path, url):
    (isolated_env / "profiles.toml").write_text('schema_version = 1\ndefault = "local"\n')
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("MAILCTL_OUTBOX", url)
    r = cli("queue", "add", input=RAW)
    assert r.exit_code == 78, r.output
    assert "not an outbox backend" in r.output and ":p@" not in r.output
    assert list(work.iterdir()) == []
    r = cli("queue", "list", "--outbox", url)
    assert r.exit_code == 78


def test_an_unreachable_database_is_one_line_without_the_password(cli, isolated_env, monkeypatch):
    (isolated_env / "profiles.toml").write_text('schema_version = 1\ndefault = "local"\n')
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MAILCTL_OUTBOX", f"postgresql://mailctl:s3cret-pw@127.0.0.1:{port}/mailctl")
    r = cli("queue", "list")
    assert r.exit_code == 69, r.output
    assert "s3cret-pw" not in r.output and "Traceback" not in r.output
    assert "127.0.0.1" in r.output


def test_the_password_can_come_from_the_secret_store(cli, isolated_env, pg_url, pg_server, monkeypatch, memory_keyring):
    """secret kind outbox_password (name "outbox"): the environment or the keyring; never shown."""
    bare = pg_url.replace(f":{pg_server.password}", "")
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(isolated_env / "no-pgpass"))
    (isolated_env / "profiles.toml").write_text('schema_version = 1\ndefault = "local"\n')
    monkeypatch.setenv("MAILCTL_OUTBOX", bare)
    r = cli("queue", "list")
    assert r.exit_code == 78, r.output  # no password anywhere: the server refuses (authentication)
    monkeypatch.setenv("MAILCTL_SECRET_OUTBOX_OUTBOX_PASSWORD", pg_server.password)
    r = cli("queue", "add", input=RAW)
    assert r.exit_code == 0, r.output
    monkeypatch.delenv("MAILCTL_SECRET_OUTBOX_OUTBOX_PASSWORD")
    memory_keyring.set_password("mailctl", "outbox/outbox_password", pg_server.password)
    r = cli("queue", "list", "--json")
    assert r.exit_code == 0 and len(r.stdout.splitlines()) == 1, r.output
    assert pg_server.password not in r.output


def test_mailctl_config_names_the_database_without_its_password(cli, isolated_env, monkeypatch):
    (isolated_env / "profiles.toml").write_text('schema_version = 1\ndefault = "local"\n')
    monkeypatch.setenv("MAILCTL_OUTBOX", "postgresql://mailctl:sup3r-secret@db.example.com:5432/mail")
    r = cli("config", "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["outbox"]["path"] == "postgresql://mailctl@db.example.com:5432/mail"
    assert data["outbox"]["reason"] == "named by $MAILCTL_OUTBOX"
    r = cli("config")
    assert "sup3r-secret" not in r.output and "db.example.com" in r.output
