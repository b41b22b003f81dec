"""The storage contract of backend.FlushStore, run against both backends: SQLite (a file) and
PostgreSQL (a throwaway cluster, tests/pgserver.py). Every test here takes `outbox_factory`
(tests/conftest.py), which is parametrized over the two.

What is PostgreSQL-only (SKIP LOCKED between sessions, a dead session's claims returning at
once, the advisory-locked migrations, password redaction) is at the end."""

from __future__ import annotations

import threading

import pytest

from mailctl.errors import MailctlError, NotFoundError, ValidationError
from mailctl.outbox import FlushStore
from mailctl.outbox.pg_schema import MIGRATIONS_PG
from mailctl.outbox.schema import MIGRATIONS

RAW = b"From: a@example.com\r\nTo: b@example.org\r\nSubject: contract\r\n\r\nbody\r\n"


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def box(outbox_factory, clock):
    b = outbox_factory(clock=clock)
    yield b
    b.close()


def test_both_backends_are_flush_stores(box):
    assert isinstance(box, FlushStore)


def test_enqueue_and_read_back_exactly(box):
    i = box.enqueue(RAW, "a@example.com", ["b@example.org", "c@example.org"], "main")
    info = box.get(i, with_raw=True)
    assert info.raw == RAW and info.sender == "a@example.com" and info.recipients == ["b@example.org", "c@example.org"]
    assert (info.state, info.profile, info.subject, info.size) == ("queued", "main", "contract", len(RAW))
    with pytest.raises(NotFoundError):
        box.get(i + 1000)


def test_enqueue_many_is_all_or_nothing(box):
    ids = box.enqueue_many([(RAW, "a@example.com", ["b@example.org"]), (RAW, "a@example.com", ["c@example.org"], "p")])
    assert len(ids) == 2 and box.count_by_state()["queued"] == 2
    with pytest.raises(MailctlError):
        box.enqueue_many([(RAW, "a@example.com", ["d@example.org"]), (b"", "a@example.com", ["e@example.org"])])
    assert box.count_by_state()["queued"] == 2


def test_claims_are_exclusive_and_an_expired_lease_is_reclaimed(outbox_factory, clock):
    a, b = outbox_factory(clock=clock), outbox_factory(clock=clock)
    try:
        ids = [a.enqueue(RAW, "a@example.com", [f"r{n}@example.org"]) for n in range(5)]
        first = a.claim_batch("A", 3, 60)
        second = b.claim_batch("B", 10, 600)
        assert {c.id for c in first}.isdisjoint({c.id for c in second})
        assert sorted(c.id for c in first + second) == ids
        assert b.claim_batch("B", 10, 60) == []
        clock.t += 61  # A's lease ran out: its rows are due again, logged as interrupted
        again = b.claim_batch("B", 10, 60)
        assert sorted(c.id for c in again) == sorted(c.id for c in first) and all(c.reclaimed for c in again)
        assert b.get(first[0].id).attempt_log[-1]["outcome"] == "interrupted"
        # A's late result no longer counts: the row is B's (an SQLite side-file line says True,
        # not knowing, and is not applied when folded)
        late = a.record_attempt(first[0], "A", "sent", reply="250 late", server="x:25")
        assert late is (getattr(a, "_results", None) is not None)
        assert b.get(first[0].id).state == "sending"
        assert b.record_attempt(again[0], "B", "sent", reply="250 ok", server="x:25") is True
    finally:
        a.close()
        b.close()


def test_results_state_machine(box, clock):
    ids = [box.enqueue(RAW, "a@example.com", [f"r{n}@example.org"]) for n in range(4)]
    claims = {c.id: c for c in box.claim_batch("F", 10, 60)}
    assert box.record_attempt(claims[ids[0]], "F", "sent", reply="250 2.0.0 Ok", server="mx:25", duration=0.1)
    assert box.record_attempt(claims[ids[1]], "F", "deferred", reply="451 later", server="mx:25",
                              next_attempt_at=clock.t + 300)
    assert box.record_attempt(claims[ids[2]], "F", "failed", reply="550 no", server="mx:25")
    assert box.release_claims("F") == 1  # the fourth was not tried
    states = {i: box.get(i).state for i in ids}
    assert states == {ids[0]: "sent", ids[1]: "deferred", ids[2]: "failed", ids[3]: "queued"}
    assert box.count_due() == 1  # the deferred one waits for its time
    clock.t += 301
    assert box.count_due() == 2
    assert [m.id for m in box.due_messages()] == [ids[1], ids[3]] or [m.id for m in box.due_messages()] == [ids[3], ids[1]]
    assert box.get(ids[0]).attempt_log[0]["outcome"] == "sent" and box.get(ids[0]).last_server == "mx:25"


def test_partial_refusal_is_kept(box):
    i = box.enqueue(RAW, "a@example.com", ["ok@example.org", "gone@example.org"])
    (claim,) = box.claim_batch("F", 10, 60)
    box.record_attempt(claim, "F", "sent", reply="250 ok", server="mx:25",
                       failed_recipients={"gone@example.org": "550 5.1.1 no such user"})
    info = box.get(i)
    assert info.failed_recipients == {"gone@example.org": "550 5.1.1 no such user"} and info.partially_failed
    assert [m.id for m in box.list(states=["failed"])] == [i]
    assert box.stats()["partially_failed"] == 1


def test_hold_release_retry_delete_purge(box, clock):
    a = box.enqueue(RAW, "a@example.com", ["b@example.org"])
    b = box.enqueue(RAW, "a@example.com", ["c@example.org"], hold=True)
    assert box.hold([a]) == [a] and box.count_due() == 0
    assert sorted(box.release()) == [a, b] and box.count_due() == 2
    with pytest.raises(ValidationError):
        box.retry([a])  # queued: nothing to retry
    claims = box.claim_batch("F", 10, 60)
    for c in claims:
        box.record_attempt(c, "F", "failed", reply="550 no", server="mx:25")
    assert sorted(box.retry()) == [a, b]
    assert box.delete([a]) == [a]
    claims = box.claim_batch("F", 10, 60)
    box.record_attempt(claims[0], "F", "sent", reply="250 ok", server="mx:25")
    assert box.purge(3600) == 0
    clock.t += 3601
    assert box.purge(3600) == 1 and sum(box.count_by_state().values()) == 0


def test_expiry_and_rate_history(box, clock):
    i = box.enqueue(RAW, "a@example.com", ["b@example.org"], "main")
    (claim,) = box.claim_batch("F", 10, 60)
    box.record_attempt(claim, "F", "deferred", reply="451 later", server="mx:25", profile="main",
                       next_attempt_at=clock.t + 10_000)
    assert box.sent_since(clock.t - 1, "main") == [clock.t] and box.sent_since(clock.t - 1, "other") == []
    clock.t += 2 * 86400 + 1
    assert box.expire_overdue(2 * 86400, skip_due=True) == []  # due now: the flush decides
    assert box.expire_overdue(2 * 86400) == [i]
    assert box.get(i).state == "expired"


def test_profiles_filter(box):
    a = box.enqueue(RAW, "a@example.com", ["b@example.org"], "one")
    b = box.enqueue(RAW, "a@example.com", ["b@example.org"], None)
    assert box.count_due(profiles=["one"]) == 1 and box.count_due(profiles=[None]) == 1
    assert box.count_due(profiles=[]) == 0
    assert [c.id for c in box.claim_batch("F", 10, 60, profiles=[None])] == [b]
    assert [m.id for m in box.list(profile="one")] == [a]


def test_migrations_have_the_same_names_in_both_backends():
    sqlite_names = [name for name, _ in MIGRATIONS]
    pg_names = [name for name, _ in MIGRATIONS_PG]
    assert pg_names == sqlite_names


# --- PostgreSQL only ----------------------------------------------------------------------
def test_pg_concurrent_claims_skip_locked_rows(pg_url):
    from mailctl.outbox.pg import PgOutbox

    with PgOutbox(pg_url) as box:
        ids = set(box.enqueue_many([(RAW, "a@example.com", [f"r{n}@example.org"]) for n in range(200)]))
    taken: dict[str, list[int]] = {}

    def worker(name: str) -> None:
        with PgOutbox(pg_url) as own:
            got = taken.setdefault(name, [])
            while True:
                batch = own.claim_batch(name, 7, 60)
                if not batch:
                    return
                got += [c.id for c in batch]
                for claim in batch:  # a worker that closes with rows unrecorded gives them back
                    assert own.record_attempt(claim, name, "sent", reply="250 ok", server="mx:25")

    threads = [threading.Thread(target=worker, args=(f"w{n}",)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    every = [i for got in taken.values() for i in got]
    assert sorted(every) == sorted(ids)  # all claimed, none twice
    with PgOutbox(pg_url) as box:
        assert box.count_by_state()["sent"] == 200


def test_pg_a_dead_sessions_claims_return_at_once(pg_url, pg_server):
    from mailctl.outbox.pg import PgOutbox

    with PgOutbox(pg_url) as box:
        box.enqueue_many([(RAW, "a@example.com", [f"r{n}@example.org"]) for n in range(3)])
        dying = PgOutbox(pg_url)
        held = dying.claim_batch("dying", 10, 600)
        assert len(held) == 3 and box.claim_batch("other", 10, 600) == []
        # the worker's database session ends (killed, its connection dropped): no waiting 600 s
        pg_server.psql(f"SELECT pg_terminate_backend({dying.holder.split(':')[0]})")
        back = box.claim_batch("other", 10, 600)
        assert sorted(c.id for c in back) == sorted(c.id for c in held) and all(c.reclaimed for c in back)
        dying.close()


def test_pg_two_hosts_opening_a_fresh_database_at_once(pg_url):
    from mailctl.outbox.pg import PgOutbox

    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            PgOutbox(pg_url).close()
        except BaseException as exc:  # pragma: no cover - the failure being tested for
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    with PgOutbox(pg_url) as box:
        applied = [name for (name,) in box.conn.execute("SELECT name FROM migrations ORDER BY name")]
    assert applied == [name for name, _ in MIGRATIONS_PG]


def test_pg_password_never_in_errors_or_display(pg_server, pg_url):
    from mailctl.outbox.pg import PgOutbox

    with PgOutbox(pg_url) as box:
        assert pg_server.password not in box.display and pg_server.password not in str(box.path)
    wrong = pg_url.replace(pg_server.password, "not-the-password-xyz")
    with pytest.raises(MailctlError) as info:
        PgOutbox(wrong)
    text = info.value.message + (info.value.hint or "")
    assert "not-the-password-xyz" not in text and pg_server.password not in text
    assert int(info.value.exit_code) == 78
