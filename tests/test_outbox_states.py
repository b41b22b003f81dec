"""The outbox's own connection does not evaluate the schema's CHECK on messages.state (SQLite
builds a temporary index of the seven states for every row whose state changes: a sixth of a
flush's bookkeeping), so the code must never write another state. These tests hold it to that:
the CHECK is still there for every other writer, each way in refuses an unknown state, and
every state the SQL of store.py writes is one of STATES."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

import mailctl.outbox.store as store
from mailctl.errors import ValidationError
from mailctl.outbox import STATES, Outbox


def test_the_check_stays_in_the_file_for_other_writers(tmp_path):
    box = Outbox(tmp_path / "o.sqlite3")
    qid = box.enqueue(b"Subject: x\r\n\r\nhi\r\n", "a@example.com", ["b@example.org"])
    assert box.conn.execute("PRAGMA ignore_check_constraints").fetchone()[0] == 1
    box.close()
    other = sqlite3.connect(tmp_path / "o.sqlite3")  # the sqlite3 shell, another tool, an old mailctl
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
        other.execute("UPDATE messages SET state='bogus' WHERE id=?", (qid,))
    other.close()


def test_record_attempt_refuses_an_unknown_outcome(tmp_path):
    box = Outbox(tmp_path / "o.sqlite3")
    box.enqueue(b"Subject: x\r\n\r\nhi\r\n", "a@example.com", ["b@example.org"])
    (claim,) = box.claim_batch("me", 10, 60.0)
    with pytest.raises(ValueError):
        box.record_attempt(claim, "me", "bogus")
    from mailctl.outbox.backend import AttemptResult

    with pytest.raises(ValueError):
        box.record_attempts("me", [AttemptResult(claim, "queued")])
    assert box.get(claim.id).state == "sending"
    box.close()


def test_import_refuses_an_unknown_state_and_writes_nothing(tmp_path):
    src = Outbox(tmp_path / "src.sqlite3")
    for i in range(3):
        src.enqueue(f"Subject: {i}\r\n\r\nhi\r\n".encode(), "a@example.com", ["b@example.org"])
    messages, bodies, attempts = src.export_batch(0)
    messages[1]["state"] = "bogus"
    dst = Outbox(tmp_path / "dst.sqlite3")
    with pytest.raises(ValidationError, match=r"message 2 has an unknown state 'bogus'"):
        dst.import_batch(messages, bodies, attempts)
    assert dst.conn.execute("SELECT count(*) FROM messages").fetchone()[0] == 0
    messages[1]["state"] = "held"
    assert dst.import_batch(messages, bodies, attempts)["added"] == 3
    assert [m.state for m in dst.list(states=STATES)] == ["queued", "held", "queued"][::-1]
    src.close()
    dst.close()


def test_every_state_the_sql_writes_is_a_known_one():
    text = Path(store.__file__).read_text()
    # state='x' wherever it is set (in WHERE clauses it only reads)
    written = set(re.findall(r"(?:SET |, |THEN |ELSE )state='(\w+)'", text))
    written |= set(re.findall(r"(?:THEN|ELSE) '(\w+)'", text))
    assert written and written <= set(STATES), written - set(STATES)
    # the only state taken from a variable: a result's outcome, which record_attempt checks
    assert len(re.findall(r"\"state=\?\"", text)) == 1
    assert "sets = [\"state=?\", _RESULT_COMMON]" in text
    # and the rows enqueue writes: "held" or "queued"
    assert "\"held\" if hold else \"queued\"" in text
