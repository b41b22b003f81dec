"""`mailctl queue ...` end to end: real outbox files, the built-in local (Maildir) profile and
real aiosmtpd servers; exit codes asserted directly."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from mailctl.outbox import Outbox

sys.path.insert(0, str(Path(__file__).parent))
from outbox_smtp import RecordingHandler, SmtpServer, write_profiles  # noqa: E402


@pytest.fixture(autouse=True)
def local_chosen_explicitly(isolated_env):
    """These tests deliver into the built-in local Maildir: with no profiles configured,
    send, sendmail and queue flush refuse (78) unless `local` is chosen, as here."""
    (isolated_env / "profiles.toml").write_text('schema_version = 1\ndefault = "local"\n')

RAW = "From: app@example.com\nTo: user@example.org\nBcc: hidden@example.net\nSubject: hello\nMessage-ID: <q1@example.com>\n\nbody\n"


def outbox(home) -> Outbox:
    return Outbox(home / "data" / "outbox.sqlite3")


def test_add_list_show(cli, isolated_env):
    r = cli("queue", "add", input=RAW)
    assert r.exit_code == 0, r.output
    qid = int(r.stdout.strip())
    r = cli("queue", "list", "--json")
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 1 and rows[0]["id"] == qid and rows[0]["state"] == "queued"
    assert rows[0]["recipients"] == ["user@example.org", "hidden@example.net"]
    r = cli("queue", "show", str(qid), "--json")
    data = json.loads(r.stdout)
    assert ["Subject", "hello"] in data["headers"] and not any(k == "Bcc" for k, _ in data["headers"])
    r = cli("queue", "show", str(qid))
    assert "Envelope to:" in r.stdout and "No delivery attempts yet." in r.stdout
    r = cli("queue", "show", str(qid), "--raw")
    assert "Bcc" not in r.stdout and "body" in r.stdout
    assert cli("queue", "show", "999").exit_code == 66
    assert cli("queue", "list").exit_code == 0


def test_add_refuses_empty_or_recipientless_input(cli):
    assert cli("queue", "add", input="").exit_code == 2
    assert cli("queue", "add", input="Subject: x\n\nbody\n").exit_code == 65
    assert cli("queue", "add", "nosuchprofile", input=RAW).exit_code == 66


def test_add_with_explicit_envelope(cli, isolated_env):
    r = cli("queue", "add", "--from", "bounce@example.com", "--to", "x@example.net", "--hold", "--json", input=RAW)
    data = json.loads(r.stdout)
    assert data["state"] == "held" and data["sender"] == "bounce@example.com" and data["recipients"] == ["x@example.net"]


def test_quiet_flush_prints_nothing_when_all_is_well(cli, isolated_env):
    cli("queue", "add", input=RAW)
    r = cli("-q", "queue", "flush")
    assert (r.exit_code, r.stdout, r.stderr) == (0, "", "")


def test_flush_into_the_local_maildir(cli, isolated_env):
    cli("queue", "add", input=RAW)
    r = cli("queue", "flush")
    assert r.exit_code == 0, r.output
    assert "Sent 1" in r.stderr
    files = list((isolated_env / "data" / "Maildir" / "new").iterdir())
    assert len(files) == 1
    assert cli("queue", "list", "--state", "sent", "--json").stdout.count("\n") == 1


def test_flush_exit_codes_with_a_real_server(cli, isolated_env):
    handler = RecordingHandler(temp_fail={"later@example.org"}, perm_fail={"nobody@example.org"})
    with SmtpServer(handler) as server:
        write_profiles(isolated_env, {"srv": server}, default="srv")
        cli("queue", "add", input=RAW)
        r = cli("queue", "flush", "--json")
        assert r.exit_code == 0 and json.loads(r.stdout)["sent"] == 1
        cli("queue", "add", input=RAW.replace("user@example.org", "later@example.org"))
        r = cli("queue", "flush")
        assert r.exit_code == 75, r.output
        assert "451" in r.stdout and "deferred 1" in r.stderr
        cli("queue", "add", input=RAW.replace("user@example.org", "nobody@example.org").replace("Bcc: hidden@example.net\n", ""))
        r = cli("queue", "flush", "--json")
        data = json.loads(r.stdout)
        assert r.exit_code == 1 and data["failed"] == 1 and data["exit_code"] == 1
        assert handler.connections >= 1


def test_flush_when_sending_is_disabled(cli, isolated_env):
    (isolated_env / "profiles.toml").write_text("schema_version = 1\n[settings]\nsending_enabled = false\n")
    cli("queue", "add", input=RAW)
    r = cli("queue", "flush")
    assert r.exit_code == 0
    assert "Sending is disabled" in r.stderr and "1 message(s) due" in r.stderr
    assert not (isolated_env / "data" / "Maildir" / "new").exists()
    r = cli("queue", "flush", "--json")
    assert json.loads(r.stdout)["sending_enabled"] is False
    r = cli("-q", "queue", "flush")
    assert r.exit_code == 0 and r.stdout == "" and r.stderr == ""


def test_flush_dry_run_and_limit(cli, isolated_env):
    for _ in range(3):
        cli("queue", "add", input=RAW)
    r = cli("queue", "flush", "--dry-run", "--json")
    data = json.loads(r.stdout)
    assert len(data["would_send"]) == 3 and data["sent"] == 0
    r = cli("queue", "flush", "--limit", "2", "--json")
    assert json.loads(r.stdout)["sent"] == 2
    r = cli("queue", "flush", "--profile", "nosuch")
    assert r.exit_code == 66


def test_hold_release_retry_delete(cli, isolated_env):
    ids = [int(cli("queue", "add", input=RAW).stdout) for _ in range(3)]
    r = cli("queue", "hold", "--all", "--json")
    assert json.loads(r.stdout)["ids"] == ids
    r = cli("queue", "flush", "--json")
    assert json.loads(r.stdout)["sent"] == 0  # held mail is skipped
    assert cli("queue", "release", str(ids[0])).exit_code == 0
    assert json.loads(cli("queue", "flush", "--json").stdout)["sent"] == 1
    assert cli("queue", "retry", str(ids[1])).exit_code == 65  # held, not retryable
    assert cli("queue", "delete", str(ids[2])).exit_code == 0
    assert cli("queue", "delete", "12345").exit_code == 66
    assert cli("queue", "hold").exit_code == 2
    assert cli("queue", "hold", "1", "--all").exit_code == 2
    # the default lists pending mail only (#14); finished mail with --state
    r = cli("queue", "list", "--json")
    assert [json.loads(line)["id"] for line in r.stdout.splitlines()] == [ids[1]]
    r = cli("queue", "list", "--json", "--state", "sent,held")
    states = {json.loads(line)["id"]: json.loads(line)["state"] for line in r.stdout.splitlines()}
    assert states == {ids[0]: "sent", ids[1]: "held"}


def test_purge_defaults_to_retention_days(cli, isolated_env):
    cli("queue", "add", input=RAW)
    cli("queue", "flush")
    r = cli("queue", "purge", "--json")
    data = json.loads(r.stdout)
    assert {k: data[k] for k in ("purged", "older_than_seconds", "states")} == {
        "purged": 0, "older_than_seconds": 30 * 86400.0, "states": ["sent", "failed", "expired"]}
    assert data["exit_code"] == 0
    r = cli("queue", "purge", "--older-than", "0s", "--state", "sent", "--json")
    assert json.loads(r.stdout)["purged"] == 1
    assert cli("queue", "purge", "--state", "queued").exit_code == 2  # #12 item 16: a choice the command line cannot accept


def test_stats(cli, isolated_env):
    cli("queue", "add", input=RAW)
    r = cli("queue", "stats", "--json")
    data = json.loads(r.stdout)
    assert data["by_state"]["queued"] == 1 and data["by_domain"][0]["domain"] in ("example.org", "example.net")
    r = cli("queue", "stats")
    assert r.exit_code == 0 and "example.org" in r.stdout and "1280m+" in r.stdout


def test_outbox_option_and_env(cli, isolated_env, tmp_path, monkeypatch):
    path = tmp_path / "other.sqlite3"
    cli("queue", "add", "--outbox", str(path), input=RAW)
    with Outbox(path) as box:
        assert box.count_by_state()["queued"] == 1
    monkeypatch.setenv("MAILCTL_OUTBOX", str(path))
    assert len(cli("queue", "list", "--json").stdout.splitlines()) == 1


def test_maintenance_hold_and_release_procedure(cli, isolated_env):
    """docs/outbox.md: hold the backlog before maintenance, release it afterwards."""
    for _ in range(2):
        cli("queue", "add", input=RAW)
    assert cli("queue", "hold", "--all").exit_code == 0
    new = int(cli("queue", "add", input=RAW).stdout)  # mail queued during maintenance still flows
    r = cli("queue", "flush", "--json")
    assert json.loads(r.stdout)["sent"] == 1
    assert json.loads(cli("queue", "show", str(new), "--json").stdout)["state"] == "sent"
    assert cli("queue", "release", "--all").exit_code == 0
    assert json.loads(cli("queue", "flush", "--json").stdout)["sent"] == 2


def test_progress_bar_on_a_terminal(monkeypatch):
    """The command layer renders the engine's progress events as a rich bar on a terminal."""
    import io

    from mailctl.commands.queue import _ProgressBar
    from mailctl.context import AppContext
    from mailctl.output import Output

    err = io.StringIO()
    err.isatty = lambda: True  # type: ignore[method-assign]
    monkeypatch.setattr(sys, "stderr", err)
    app = AppContext(output=Output(stderr=err))
    with _ProgressBar(app, enabled=True) as bar:
        bar.update("start", total=3)
        for i in range(3):
            bar.update("message", id=i, outcome="sent", reply="250")
        bar.update("wait", seconds=20, reason="batch interval")
        assert bar.progress.tasks[0].completed == 3
    quiet = AppContext(output=Output(stderr=err, quiet=True))
    assert _ProgressBar(quiet, enabled=True).enabled is False
    assert _ProgressBar(app, enabled=False).enabled is False


def test_an_outbox_path_that_is_not_an_outbox(cli, isolated_env, tmp_path):
    bogus = tmp_path / "profiles.toml"
    bogus.write_text("[profiles.x]\nhost = 'example.com'\n" * 100)
    for args in (("queue", "list"), ("queue", "flush"), ("queue", "add")):
        r = cli(*args, "--outbox", str(bogus), input=RAW)
        assert r.exit_code == 78, (args, r.output)
        assert str(bogus) in r.stderr and "Traceback" not in r.stderr
        assert r.stderr.startswith("Error: ") and r.stderr.count("Error:") == 1
    assert bogus.read_text().startswith("[profiles.x]")
