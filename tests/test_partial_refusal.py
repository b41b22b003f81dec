"""Partial refusals are visible (issue #12 item 5): one recipient accepted, one refused with
5xx. `send` exits 1 naming the refused recipient, `sendmail` says so on stderr, and the queue
shows the message as partly failed in list, show, stats and their JSON. Real aiosmtpd server."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from outbox_smtp import RecordingHandler, SmtpServer, write_profiles  # noqa: E402


@pytest.fixture
def server(isolated_env):
    with SmtpServer(RecordingHandler(perm_fail={"nobody@example.org"}, temp_fail={"later@example.org"})) as srv:
        write_profiles(isolated_env, {"srv": srv}, default="srv")
        yield srv


def test_send_exits_1_naming_the_refused_recipient(cli, server):
    r = cli("send", "--to", "ok@example.org", "--to", "nobody@example.org", "--subject", "s", "--body", "b")
    assert r.exit_code == 1, r.output
    assert "nobody@example.org" in r.stderr and "550" in r.stderr and "ok@example.org" not in r.stderr
    [got] = server.handler.messages
    assert got["to"] == ["ok@example.org"]  # delivered to the other one
    r = cli("send", "--to", "ok@example.org", "--subject", "s", "--body", "b", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["failed_recipients"] == {}


def test_send_json_names_the_refused_recipients(cli, server):
    r = cli("send", "--to", "ok@example.org", "--cc", "nobody@example.org", "--subject", "s", "--body", "b", "--json")
    data = json.loads(r.stdout)
    assert r.exit_code == 1 and data["outcome"] == "sent"
    assert list(data["failed_recipients"]) == ["nobody@example.org"] and "550" in data["failed_recipients"]["nobody@example.org"]


def test_sendmail_reports_the_refused_recipient(cli, server):
    r = cli("sendmail", "-i", "ok@example.org", "nobody@example.org", input="Subject: s\n\nx\n")
    assert r.exit_code == 0, r.output  # accepted for delivery (sendmail(8)); the refusal is reported
    assert "refused for good" in r.stderr and "nobody@example.org" in r.stderr


def test_the_queue_shows_the_message_as_partly_failed(cli, server):
    r = cli("send", "--to", "ok@example.org", "--to", "nobody@example.org", "--subject", "partial", "--body", "b")
    qid = 1
    assert r.exit_code == 1
    rows = [json.loads(line) for line in cli("queue", "list", "--state", "failed", "--json").stdout.splitlines()]
    assert [(row["id"], row["state"], row["partially_failed"]) for row in rows] == [(qid, "sent", True)]
    assert list(rows[0]["failed_recipients"]) == ["nobody@example.org"]
    table = cli("queue", "list", "-s", "failed").stdout
    assert "sent, 1 failed" in table
    shown = cli("queue", "show", str(qid)).stdout
    assert "Refused:" in shown and "nobody@example.org: 550" in shown and "sent, 1 failed" in shown
    data = json.loads(cli("queue", "show", str(qid), "--json").stdout)
    assert data["partially_failed"] and "nobody@example.org" in data["failed_recipients"]
    stats = json.loads(cli("queue", "stats", "--json").stdout)
    assert (stats["partially_failed"], stats["partially_failed_recipients"]) == (1, 1)
    assert "partly failed" in cli("queue", "stats").stdout


def test_flush_counts_partly_failed_mail_as_a_problem(cli, server):
    cli("queue", "add", input="From: app@example.com\nTo: ok@example.org, nobody@example.org, later@example.org\n\nx\n")
    r = cli("queue", "flush", "--json")
    data = json.loads(r.stdout)
    assert r.exit_code == 1 and data["partially_failed"] == 1 and data["deferred"] == 1
    [problem] = data["problems"]
    assert list(problem["failed_recipients"]) == ["nobody@example.org"]
    rows = [json.loads(line) for line in cli("queue", "list", "--json").stdout.splitlines()]
    # deferred for the 4xx recipient, kept as partly failed for the 5xx one
    assert rows[0]["state"] == "deferred" and rows[0]["recipients"] == ["later@example.org"]
    assert rows[0]["partially_failed"] and list(rows[0]["failed_recipients"]) == ["nobody@example.org"]
