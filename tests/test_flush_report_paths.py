"""What the flush engine's per-message bookkeeping keeps, on its fast path (a plain success)
and off it: the report's counters, problems and --keep-results outcomes, the progress events,
and the lease renewal of the claimed rows still to try during a long run. A real SQLite
outbox; the transport is a scripted fake (tests/test_outbox_smtp.py runs real servers)."""

from __future__ import annotations

import sqlite3

from mailctl.errors import DeliveryError
from mailctl.outbox import FlushOptions, FlushPolicy, Outbox, flush
from mailctl.profiles.model import ResolvedProfile
from mailctl.transports.base import SendResult

RAW = b"From: a@example.com\r\nTo: b@example.org\r\nSubject: s\r\n\r\nbody\r\n"
SENDER = "a@example.com"


class Clock:
    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds


class Scripted:
    """Refuses or accepts by recipient: 'ok', a reply string (a refusal of that recipient in
    an accepted message), or a DeliveryError raised for the whole message."""

    def __init__(self, script: dict, on_send=None) -> None:
        self.script = script
        self.on_send = on_send

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def send(self, raw, sender, recipients):
        if self.on_send is not None:
            self.on_send(recipients)
        for r in recipients:
            if isinstance(self.script.get(r), BaseException):
                raise self.script[r]
        refused = {r: why for r in recipients if isinstance(why := self.script.get(r), str) and why != "ok"}
        return SendResult(server="mx:25", reply="250 2.0.0 Ok", refused=refused)


def resolve(name):
    return ResolvedProfile("main", {"type": "smtp", "host": "mx"})


SCRIPT = {
    "ok@example.org": "ok",
    "gone@example.org": "550 5.1.1 no such user",
    "later@example.org": "451 4.3.0 try later",
    "bad@example.org": DeliveryError("554 5.7.1 rejected", permanent=True, code=554, enhanced="5.7.1", text="rejected",
                                     server="mx:25"),
}
MESSAGES = [  # (recipients, outcome, partly failed)
    (["ok@example.org"], "sent", False),
    (["ok@example.org", "gone@example.org"], "sent", True),  # delivered to one, refused for good to the other
    (["ok@example.org", "later@example.org"], "deferred", False),  # delivered to one, retried for the other
    (["bad@example.org"], "failed", False),
    (["ok@example.org"], "sent", False),
]


def queue(box):
    return [box.enqueue(RAW, SENDER, rcpts) for rcpts, _, _ in MESSAGES]


def test_keep_results_and_progress_see_every_message_and_problems_only_the_others(tmp_path):
    clock = Clock()
    box = Outbox(tmp_path / "o.sqlite3", clock=clock)
    ids = queue(box)
    events = []
    report = flush(box, policy=FlushPolicy(), resolve=resolve, open_transport=lambda p: Scripted(SCRIPT),
                   options=FlushOptions(keep_results=True), sleep=clock.sleep,
                   progress=lambda ev, **d: events.append((ev, d)))
    assert [(r.id, r.outcome) for r in report.results] == [(i, m[1]) for i, m in zip(ids, MESSAGES)]
    assert (report.sent, report.deferred, report.failed, report.partially_failed) == (3, 1, 1, 1)
    # the problems are the very outcomes kept, less the plain successes
    assert [r.id for r in report.problems] == ids[1:4]
    assert all(p is r for p, r in zip(report.problems, report.results[1:4]))
    partly = report.results[1]
    assert partly.failed_recipients == {"gone@example.org": "550 5.1.1 no such user"}
    assert partly.reply == "250 2.0.0 Ok; refused: gone@example.org: 550 5.1.1 no such user"
    assert report.results[0].reply == "250 2.0.0 Ok" and report.results[0].failed_recipients == {}
    assert report.results[0].server == "mx:25" and report.results[0].profile == "main"
    assert report.results[2].next_attempt_at == clock.t + 300
    assert report.results[3].failed_recipients == {"bad@example.org": "554 5.7.1 rejected"}
    messages = [(d["id"], d["outcome"], d["reply"]) for ev, d in events if ev == "message"]
    assert messages == [(r.id, r.outcome, r.reply) for r in report.results]
    assert box.get(ids[2]).recipients == ["later@example.org"] and box.get(ids[4]).state == "sent"
    box.close()


def test_without_keep_results_or_progress_the_report_holds_the_same(tmp_path):
    clock = Clock()
    box = Outbox(tmp_path / "o.sqlite3", clock=clock)
    ids = queue(box)
    report = flush(box, policy=FlushPolicy(), resolve=resolve, open_transport=lambda p: Scripted(SCRIPT),
                   sleep=clock.sleep)
    assert report.results == []
    assert [(r.id, r.outcome) for r in report.problems] == [(i, m[1]) for i, m in zip(ids[1:4], MESSAGES[1:4])]
    assert (report.sent, report.deferred, report.failed, report.partially_failed) == (3, 1, 1, 1)
    assert [box.get(i).state for i in ids] == ["sent", "sent", "deferred", "failed", "sent"]
    box.close()


def test_a_long_flush_keeps_renewing_the_leases_of_the_claims_it_has_not_tried(tmp_path):
    """30 s a message with a 100 s lease: without a renewal every 25 s (a quarter of it) the
    rows claimed with the first would be anyone's from the fourth message on."""
    clock = Clock()
    path = tmp_path / "o.sqlite3"
    box = Outbox(path, clock=clock)
    ids = [box.enqueue(RAW, SENDER, ["ok@example.org"]) for _ in range(10)]
    seen: list[float] = []
    tried = 0

    def on_send(recipients):
        nonlocal tried
        tried += 1
        clock.t += 30.0
        untried = ids[tried:]  # sent in the order queued
        db = sqlite3.connect(path)  # what another flush would see now
        try:
            rows = db.execute(f"SELECT state, lease_until FROM messages WHERE id IN ({','.join('?' * len(untried))})",
                              untried).fetchall() if untried else []
        finally:
            db.close()
        assert len(rows) == len(untried) and all(state == "sending" for state, _ in rows)
        seen.extend(until - clock.t for _, until in rows)

    report = flush(box, policy=FlushPolicy(), resolve=resolve, sleep=clock.sleep,
                   open_transport=lambda p: Scripted(SCRIPT, on_send), options=FlushOptions(lease_seconds=100.0))
    assert report.sent == 10 and tried == 10
    assert len(seen) == 9 * 10 // 2  # every untried row at every send
    assert min(seen) > 0  # never ran out: every row still ours
    box.close()
