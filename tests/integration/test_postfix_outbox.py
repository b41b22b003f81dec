"""The outbox against a real Postfix (issue 6): messages queued for recipients that Postfix
accepts, rejects with 5xx and defers with 4xx; `mailctl queue flush` marks them sent / failed
/ deferred, exits 1 when some failed permanently and 75 when some remain deferred, reuses one
connection, and what Postfix delivered is exactly what was queued."""

from __future__ import annotations

import json
import re
import uuid
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

import keyring
import pytest

from integration_services import smtp_profile, write_profiles

pytestmark = pytest.mark.integration


@pytest.fixture
def pf(postfix_server, isolated_env):
    write_profiles(isolated_env, {"pf": smtp_profile(postfix_server)})
    keyring.set_password("mailctl", "pf/password", postfix_server.password)
    return postfix_server


def _raw(server, to: str, subject: str, *, bcc: str | None = None) -> bytes:
    msg = EmailMessage()
    msg["From"] = server.username
    msg["To"] = to
    if bcc:
        msg["Bcc"] = bcc
    msg["Subject"] = subject
    msg["Date"] = formatdate(localtime=True)
    msg["Message-ID"] = make_msgid(domain="outbox.mailctl.test")
    msg["X-Mailctl-Test"] = "kept verbatim"
    msg.set_content(f"queued message {subject}\n")
    return bytes(msg)


def _enqueue(cli, raw: bytes) -> int:
    res = cli("queue", "add", "pf", input=raw)
    assert res.exit_code == 0, res.output + repr(res.exception)
    return int(res.stdout.strip().splitlines()[0])


def _states(cli) -> dict[int, str]:
    res = cli("queue", "list", "--json", "--state", "all")  # finished mail too (the default: pending only)
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.stdout.splitlines() if line.strip()]
    return {row["id"]: row["state"] for row in rows}


def _flush(cli):
    res = cli("queue", "flush", "--json")
    assert res.exception is None, repr(res.exception)
    return res, json.loads(res.stdout)


def _no_secret(res, server):
    assert server.password not in res.stdout and server.password not in res.stderr


def _connections(server, since: int) -> int:
    return len(re.findall(r"postfix/submission/smtpd\[\d+\]: connect from", server.log()[since:]))


def test_flush_sent_failed_deferred_exit_1(pf, cli):
    tag = uuid.uuid4().hex[:8]
    ok = [_enqueue(cli, _raw(pf, pf.accept, f"outbox ok {i} {tag}")) for i in range(3)]
    rejected = _enqueue(cli, _raw(pf, pf.reject, f"outbox rejected {tag}"))
    deferred = _enqueue(cli, _raw(pf, pf.defer, f"outbox deferred {tag}"))
    assert set(_states(cli).values()) == {"queued"}

    before = len(pf.log())
    res, report = _flush(cli)
    assert res.exit_code == 1, res.output  # some failed permanently (takes precedence over 75)
    _no_secret(res, pf)
    assert (report["sent"], report["failed"], report["deferred"]) == (3, 1, 1), report
    assert report["exit_code"] == 1

    states = _states(cli)
    assert [states[i] for i in ok] == ["sent"] * 3
    assert states[rejected] == "failed"
    assert states[deferred] == "deferred"

    # What Postfix delivered: exactly the three accepted messages, byte-faithful headers.
    delivered = pf.wait_for_messages(lambda m: tag in (m["Subject"] or ""), count=3)
    assert sorted(m["Subject"] for m in delivered) == sorted(f"outbox ok {i} {tag}" for i in range(3))
    assert all(m["X-Mailctl-Test"] == "kept verbatim" for m in delivered)
    assert all(m["Message-ID"].endswith("@outbox.mailctl.test>") for m in delivered)
    assert not pf.wait_for_messages(lambda m: m["Subject"] in (f"outbox rejected {tag}", f"outbox deferred {tag}"), timeout=1)

    # The server's replies are kept with the messages.
    shown = cli("queue", "show", str(rejected))
    assert shown.exit_code == 0, shown.output
    assert "550" in shown.stdout and "5.1.1" in shown.stdout
    shown = cli("queue", "show", str(deferred))
    assert "450" in shown.stdout and "4.2.0" in shown.stdout

    # One connection for the whole flush (the server is shared by every message).
    assert _connections(pf, before) == 1, pf.log()[before:]


def test_flush_deferred_remain_exit_75(pf, cli):
    tag = uuid.uuid4().hex[:8]
    sent = _enqueue(cli, _raw(pf, pf.accept, f"outbox 75 ok {tag}"))
    deferred = _enqueue(cli, _raw(pf, pf.defer, f"outbox 75 deferred {tag}"))
    res, report = _flush(cli)
    assert res.exit_code == 75, res.output
    assert (report["sent"], report["failed"], report["deferred"]) == (1, 0, 1), report
    assert _states(cli) == {sent: "sent", deferred: "deferred"}
    pf.by_subject(f"outbox 75 ok {tag}")

    # Not due yet (backoff): a second flush sends nothing, and the deferred one still counts.
    res, report = _flush(cli)
    assert res.exit_code == 75, res.output
    assert report["sent"] == 0 and report["deferred"] == 0

    # Forced retry: deferred again by the server, still 75.
    assert cli("queue", "retry", str(deferred)).exit_code == 0
    res, report = _flush(cli)
    assert res.exit_code == 75, res.output
    assert report["deferred"] == 1
    assert _states(cli)[deferred] == "deferred"


def test_flush_all_delivered_exit_0_one_connection(pf, cli):
    tag = uuid.uuid4().hex[:8]
    ids = [_enqueue(cli, _raw(pf, pf.accept, f"outbox batch {i} {tag}")) for i in range(10)]
    before = len(pf.log())
    res, report = _flush(cli)
    assert res.exit_code == 0, res.output
    assert report["sent"] == 10 and report["failed"] == 0 and report["deferred"] == 0
    assert set(_states(cli)[i] for i in ids) == {"sent"}
    assert len(pf.wait_for_messages(lambda m: tag in (m["Subject"] or ""), count=10)) == 10
    assert _connections(pf, before) == 1
    # Nothing left: another flush is a no-op with exit 0 and nothing re-sent.
    res, report = _flush(cli)
    assert res.exit_code == 0 and report["sent"] == 0
    assert len(pf.wait_for_messages(lambda m: tag in (m["Subject"] or ""), count=11, timeout=1)) == 10


def test_bcc_is_delivered_but_not_disclosed(pf, cli):
    tag = uuid.uuid4().hex[:8]
    hidden = f"hidden-{tag}@{pf.domain}"
    _enqueue(cli, _raw(pf, pf.accept, f"outbox bcc {tag}", bcc=hidden))
    res, _report = _flush(cli)
    assert res.exit_code == 0, res.output
    copies = pf.wait_for_messages(lambda m: m["Subject"] == f"outbox bcc {tag}", count=2)
    assert sorted(m["Delivered-To"] for m in copies) == sorted([pf.accept, hidden])
    assert all(m["Bcc"] is None for m in copies)


def test_send_now_sent_failed_deferred(pf, cli):
    tag = uuid.uuid4().hex[:8]
    res = cli("send", "pf", "--to", pf.accept, "--subject", f"send ok {tag}", "--body", "now\n")
    assert res.exit_code == 0, res.output + repr(res.exception)
    _no_secret(res, pf)
    pf.by_subject(f"send ok {tag}")

    res = cli("send", "pf", "--to", pf.reject, "--subject", f"send rejected {tag}", "--body", "no\n")
    assert res.exit_code == 1, res.output
    assert "550" in res.output
    _no_secret(res, pf)

    res = cli("send", "pf", "--to", pf.defer, "--subject", f"send deferred {tag}", "--body", "later\n")
    assert res.exit_code == 75, res.output
    assert "450" in res.output
    _no_secret(res, pf)

    assert sorted(_states(cli).values()) == ["deferred", "failed", "sent"]


def test_queue_only_then_flush(pf, cli):
    tag = uuid.uuid4().hex[:8]
    res = cli("send", "pf", "--to", pf.accept, "--subject", f"send queued {tag}", "--body", "later\n", "--queue")
    assert res.exit_code == 0, res.output
    assert not pf.wait_for_messages(lambda m: m["Subject"] == f"send queued {tag}", timeout=1)
    res, report = _flush(cli)
    assert res.exit_code == 0 and report["sent"] == 1, res.output
    pf.by_subject(f"send queued {tag}")


def test_wrong_password_defers_nothing_lost(pf, cli):
    """An authentication failure is the profile's problem, not the message's: nothing is
    marked failed or sent, and once the password is fixed the flush delivers."""
    tag = uuid.uuid4().hex[:8]
    keyring.set_password("mailctl", "pf/password", "definitely-wrong")
    qid = _enqueue(cli, _raw(pf, pf.accept, f"outbox authfail {tag}"))
    res, report = _flush(cli)
    assert res.exit_code == 75, res.output
    assert report["sent"] == 0 and report["failed"] == 0
    assert _states(cli)[qid] == "deferred"
    assert "535" in res.output
    assert "definitely-wrong" not in res.output

    keyring.set_password("mailctl", "pf/password", pf.password)
    assert cli("queue", "retry", str(qid)).exit_code == 0
    res, report = _flush(cli)
    assert res.exit_code == 0, res.output
    assert report["sent"] == 1
    pf.by_subject(f"outbox authfail {tag}")
