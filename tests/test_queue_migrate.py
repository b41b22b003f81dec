"""`mailctl queue migrate --to`: an outbox copied between backends (SQLite -> PostgreSQL and
back, file -> file) keeps ids, states, attempts, attempt logs and bodies; running it again
changes nothing; a destination that holds other messages under the same ids is refused; the
copy goes on working (new ids after the copied ones, flushes)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from outbox_smtp import RecordingHandler, SmtpServer, write_profiles  # noqa: E402

from mailctl.outbox import Outbox  # noqa: E402

SENDER = "app@example.com"


def message(i: int) -> bytes:
    return (f"From: app@example.com\r\nTo: user@example.org\r\nSubject: m {i}\r\n"
            f"Message-ID: <mig{i}@test.example>\r\n\r\nbody {i}\r\n").encode()


def _fill(isolated_env, path: Path) -> None:
    """An outbox with every state: sent, deferred (with attempts), failed, held, queued."""
    handler = RecordingHandler(temp_fail={"later@example.org"}, perm_fail={"nobody@example.org"})
    with SmtpServer(handler) as server:
        write_profiles(isolated_env, {"relay": server}, default="relay")
        with Outbox(path) as box:
            for i in range(5):
                box.enqueue(message(i), SENDER, ["user@example.org"])
            box.enqueue(message(5), SENDER, ["later@example.org"])
            box.enqueue(message(6), SENDER, ["nobody@example.org"])
            box.enqueue(message(7), SENDER, ["user@example.org", "nobody@example.org"])
        from mailctl.outbox.service import profile_flush
        from mailctl.profiles.store import ProfileStore

        doc = ProfileStore(isolated_env / "profiles.toml").load()
        with Outbox(path) as box:
            profile_flush(box, doc, None)
            box.enqueue(message(8), SENDER, ["user@example.org"], hold=True)
            box.enqueue(message(9), SENDER, ["user@example.org"], profile="relay")


def _snapshot(box) -> list[dict]:
    rows = []
    for info in box.list():
        full = box.get(info.id, with_raw=True)
        d = full.to_dict()
        d["raw"] = full.raw
        d["log"] = [(a["at"], a["outcome"], a["server"], a["reply"]) for a in full.attempt_log]
        d.pop("attempt_log", None)
        rows.append(d)
    return rows


def test_migrate_sqlite_to_postgresql_and_back_keeps_everything(cli, isolated_env, tmp_path, pg_url, pg_server):
    src = tmp_path / "o.sqlite3"
    _fill(isolated_env, src)
    with Outbox(src) as box:
        before = _snapshot(box)
    assert {r["state"] for r in before} >= {"sent", "deferred", "failed", "held", "queued"}
    r = cli("queue", "migrate", "--outbox", str(src), "--to", pg_url, "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["added"] == 10 and out["messages"] == 10 and out["attempts"] >= 8
    assert out["destination"] == out["source"]
    assert pg_server.password not in r.output
    from mailctl.outbox.pg import PgOutbox

    with PgOutbox(pg_url) as pg:
        assert _snapshot(pg) == before
        # the copy goes on: a new message takes the next id, not one of the copied ones
        new_id = pg.enqueue(message(10), SENDER, ["user@example.org"])
        assert new_id == 11
    # again: nothing changes (idempotent), the new PostgreSQL message is left alone
    r = cli("queue", "migrate", "--outbox", str(src), "--to", pg_url, "--json")
    assert r.exit_code == 0, r.output
    again = json.loads(r.stdout)
    assert (again["added"], again["updated"], again["unchanged"], again["attempts"]) == (0, 0, 10, 0)
    # and back, into a fresh file and into the original (which takes the new message and states)
    back = tmp_path / "back.sqlite3"
    r = cli("queue", "migrate", "--outbox", pg_url, "--to", str(back))
    assert r.exit_code == 0, r.output
    assert "11 added" in r.stderr or "Copied 11" in r.stderr
    with Outbox(back) as box:
        snap = _snapshot(box)
        assert snap[:10] == before and snap[10]["id"] == 11
        assert box.enqueue(message(12), SENDER, ["user@example.org"]) == 12
    r = cli("queue", "migrate", "--outbox", pg_url, "--to", str(src), "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["added"] == 1


def test_migrate_refuses_a_destination_with_other_messages_under_the_same_ids(cli, isolated_env, tmp_path):
    a, b = tmp_path / "a.sqlite3", tmp_path / "b.sqlite3"
    with Outbox(a) as box:
        box.enqueue(message(1), SENDER, ["user@example.org"])
    with Outbox(b, clock=lambda: 1_000_000.0) as box:
        box.enqueue(message(2), "other@example.com", ["user@example.org"])
    (isolated_env / "profiles.toml").write_text('schema_version = 1\n')
    r = cli("queue", "migrate", "--outbox", str(a), "--to", str(b))
    assert r.exit_code == 65, r.output
    assert "another message" in r.output and "Traceback" not in r.output
    with Outbox(b) as box:
        assert [(i.id, i.sender) for i in box.list()] == [(1, "other@example.com")]  # untouched
    r = cli("queue", "migrate", "--outbox", str(a), "--to", str(a))
    assert r.exit_code == 2
    r = cli("queue", "migrate", "--outbox", str(a), "--to", "mysql://x@127.0.0.1/db")
    assert r.exit_code == 78


def test_a_message_being_sent_comes_over_due_again(isolated_env, tmp_path):
    from mailctl.outbox.transfer import copy_outbox

    with Outbox(tmp_path / "a.sqlite3") as src, Outbox(tmp_path / "b.sqlite3") as dst:
        src.enqueue(message(1), SENDER, ["user@example.org"])
        claims = src.claim_batch("someone", 10, 600)
        assert [c.id for c in claims] == [1] and src.get(1).state == "sending"
        totals = copy_outbox(src, dst)
        assert totals["was_sending"] == 1
        assert dst.get(1).state == "queued" and dst.count_due() == 1


@pytest.mark.parametrize("n", [1201])
def test_migrate_copies_in_batches(isolated_env, tmp_path, n):
    from mailctl.outbox.transfer import copy_outbox

    with Outbox(tmp_path / "a.sqlite3") as src, Outbox(tmp_path / "b.sqlite3") as dst:
        src.enqueue_many([(message(i), SENDER, ["user@example.org"]) for i in range(n)])
        seen = []
        totals = copy_outbox(src, dst, batch=500, progress=seen.append)
        assert seen == [500, 1000, n] and totals["added"] == n
        assert dst.get(n).raw is None and dst.get(n, with_raw=True).raw == src.get(n, with_raw=True).raw
