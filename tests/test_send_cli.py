"""`mailctl send` and `mailctl sendmail`: messages go through the outbox, are tried at once,
and stay queued on a temporary failure."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from mailctl.outbox import Outbox
from mailctl.outbox.sendmail import parse_sendmail_args

sys.path.insert(0, str(Path(__file__).parent))
from outbox_smtp import RecordingHandler, SmtpServer, write_profiles  # noqa: E402


@pytest.fixture(autouse=True)
def local_chosen_explicitly(isolated_env):
    """These tests deliver into the built-in local Maildir: with no profiles configured,
    send, sendmail and queue flush refuse (78) unless `local` is chosen, as here."""
    (isolated_env / "profiles.toml").write_text('schema_version = 1\ndefault = "local"\n')


def box(home) -> Outbox:
    return Outbox(home / "data" / "outbox.sqlite3")


def maildir_files(home):
    new = home / "data" / "Maildir" / "new"
    return sorted(new.iterdir()) if new.exists() else []


def test_send_now_to_the_local_maildir(cli, isolated_env):
    r = cli("send", "--to", "bob@example.org", "--subject", "Hi", "--body", "hello there")
    assert r.exit_code == 0, r.output
    [f] = maildir_files(isolated_env)
    assert b"Subject: Hi" in f.read_bytes()
    with box(isolated_env) as b:
        assert b.count_by_state()["sent"] == 1


def test_send_body_from_stdin_with_attachment_json(cli, isolated_env, tmp_path):
    att = tmp_path / "report.csv"
    att.write_text("a,b\n1,2\n")
    r = cli("send", "--to", "bob@example.org", "--subject", "Report", "--attach", str(att), "--json", input="see attached\n")
    data = json.loads(r.stdout)
    assert r.exit_code == 0 and data["outcome"] == "sent" and data["message_id"].startswith("<")
    raw = maildir_files(isolated_env)[0].read_bytes()
    assert b"report.csv" in raw and b"see attached" in raw


def test_send_queue_only(cli, isolated_env):
    r = cli("send", "--to", "bob@example.org", "--subject", "Later", "--body", "x", "--queue")
    assert r.exit_code == 0 and r.stdout.strip().isdigit()
    assert not maildir_files(isolated_env)
    assert cli("queue", "flush").exit_code == 0
    assert len(maildir_files(isolated_env)) == 1


def test_send_needs_recipients(cli):
    assert cli("send", "--subject", "x", "--body", "y").exit_code == 2


def test_send_temporary_failure_queues_and_exits_75(cli, isolated_env):
    handler = RecordingHandler(temp_fail={"later@example.org"}, perm_fail={"nobody@example.org"})
    with SmtpServer(handler) as server:
        write_profiles(isolated_env, {"srv": server}, default="srv")
        r = cli("send", "--to", "later@example.org", "--subject", "s", "--body", "b")
        assert r.exit_code == 75, r.output
        assert "temporary failure" in r.stderr and "queued as" in r.stderr
        r = cli("send", "srv", "--to", "nobody@example.org", "--subject", "s", "--body", "b")
        assert r.exit_code == 1 and "550" in r.stderr
        r = cli("send", "--to", "ok@example.org", "--bcc", "hidden@example.org", "--subject", "s", "--body", "b")
        assert r.exit_code == 0, r.output
        with box(isolated_env) as b:
            counts = b.count_by_state()
        assert (counts["deferred"], counts["failed"], counts["sent"]) == (1, 1, 1)
        [accepted] = handler.messages
        assert sorted(accepted["to"]) == ["hidden@example.org", "ok@example.org"]
        assert b"hidden@example.org" not in accepted["data"]


def test_send_when_sending_is_disabled(cli, isolated_env):
    (isolated_env / "profiles.toml").write_text('schema_version = 1\ndefault = "local"\n[settings]\nsending_enabled = false\n')
    r = cli("send", "--to", "bob@example.org", "--subject", "s", "--body", "b")
    assert r.exit_code == 75 and "Sending is disabled" in r.stderr
    assert not maildir_files(isolated_env)
    with box(isolated_env) as b:
        assert b.count_by_state()["queued"] == 1


# --- sendmail -------------------------------------------------------------------------------
def test_sendmail_argument_conventions():
    o = parse_sendmail_args(["-t", "-oi", "-fbounce@example.com", "-F", "Cron Daemon", "-odq", "a@x.org", "--", "-b@x.org"])
    assert o.read_headers and not o.dot_ends and o.sender == "bounce@example.com" and o.full_name == "Cron Daemon"
    assert o.queue_only and o.recipients == ["a@x.org", "-b@x.org"]
    assert parse_sendmail_args(["-f", "<x@y.org>", "-i", "-oem", "-v", "r@x.org"]).sender == "x@y.org"


def test_sendmail_like_cron(cli, isolated_env):
    """cron pipes 'From: root (Cron Daemon)' style messages with bare LF and no Date/Message-ID."""
    msg = "From: root (Cron Daemon)\nTo: ops@example.org\nSubject: Cron <root@host> backup\n\nbackup done\n"
    r = cli("sendmail", "-FCronDaemon", "-i", "-B8BITMIME", "-oem", "ops@example.org", input=msg)
    assert r.exit_code == 0, r.output
    [f] = maildir_files(isolated_env)
    raw = f.read_bytes()
    assert b"Date: " in raw and b"Message-ID: " in raw and b"backup done" in raw


def test_sendmail_t_reads_headers_and_strips_bcc(cli, isolated_env):
    msg = "From: app@example.com\nTo: a@example.org\nBcc: b@example.org\nSubject: s\n\nline\n.\nnot part of it\n"
    r = cli("sendmail", "-t", "-odq", input=msg)
    assert r.exit_code == 0, r.output
    with box(isolated_env) as b:
        [info] = list(b.list())
        raw = b.get(info.id, with_raw=True).raw
    assert info.recipients == ["a@example.org", "b@example.org"] and info.sender == "app@example.com"
    assert b"Bcc" not in raw and b"not part of it" not in raw  # without -i a lone '.' ends input
    assert info.state == "queued"


def test_sendmail_errors(cli):
    assert cli("sendmail", input="Subject: x\n\nbody\n").exit_code == 65  # no recipients
    assert cli("sendmail", "-bs", "a@x.org", input="x").exit_code == 2
    assert cli("sendmail", "-Z", "a@x.org", input="x").exit_code == 2
    assert "sendmail-compatible" in cli("sendmail", "--help").stdout


def test_python_api_uses_mailctl_outbox(isolated_env, tmp_path, monkeypatch):
    from email.message import EmailMessage

    from mailctl.outbox import enqueue, enqueue_message

    monkeypatch.setenv("MAILCTL_OUTBOX", str(tmp_path / "api.sqlite3"))
    msg = EmailMessage()
    msg["From"] = "app@example.com"
    msg["To"] = "u@example.org"
    msg["Subject"] = "api"
    msg.set_content("x")
    a = enqueue_message(msg, "company")
    b = enqueue(b"Subject: raw\r\n\r\nx\r\n", "app@example.com", ["u@example.org"])
    with Outbox(tmp_path / "api.sqlite3") as o:
        assert [m.id for m in o.list()] == [a, b]
        assert o.get(a).profile == "company"


def test_send_with_a_broken_profile_says_what_is_wrong(cli, isolated_env):
    """A configuration problem is not a 4xx: exit 78 with the reason, the message kept queued."""
    (isolated_env / "profiles.toml").write_text(
        'schema_version = 1\ndefault = "broken"\n[profiles.broken]\ntype = "smtp"\nauth = "none"\nfrom_address = "a@example.com"\n')
    r = cli("send", "--to", "bob@example.org", "--subject", "s", "--body", "b")
    assert r.exit_code == 78, r.output
    assert "host" in r.stderr and "stays queued as" in r.stderr
    with box(isolated_env) as b:
        # issue #12 item 3: left queued as it was (it used to be deferred with an attempt charged)
        assert b.count_by_state()["queued"] == 1 and [m.attempts for m in b.list()] == [0]
