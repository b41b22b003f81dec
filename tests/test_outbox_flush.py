"""The flush engine's state machine with an injected clock: backoff, expiry, 5xx, rate limits,
batch intervals, sending disabled, held mail, profile trouble. Transports here are scripted
fakes; tests/test_outbox_smtp.py runs the same engine against real SMTP servers."""

from __future__ import annotations

import pytest

from mailctl.errors import AuthError, DeliveryError, ExitCode, NotFoundError, UnavailableError
from mailctl.outbox import FlushOptions, FlushPolicy, FlushRun, FlushStore, Outbox, backoff_delay, flush
from mailctl.outbox.flush import partial_refusal
from mailctl.profiles.model import ResolvedProfile
from mailctl.transports.base import SendResult

RAW = b"From: a@example.com\r\nTo: b@example.org\r\nSubject: s\r\n\r\nbody\r\n"


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.t += seconds


class FakeTransport:
    """script: recipient -> 'ok' | DeliveryError | Exception raised for messages to them."""

    def __init__(self, name, log, script, clock, open_error=None):
        self.name = name
        self.log = log
        self.script = script
        self.clock = clock
        self.open_error = open_error
        self.opened = 0

    def open(self):
        if self.open_error:
            raise self.open_error
        self.opened += 1

    def send(self, raw, sender, recipients):
        self.log.append((self.name, self.clock(), tuple(recipients)))
        for r in recipients:
            outcome = self.script.get(r)
            if isinstance(outcome, BaseException):
                raise outcome
        refused = {r: self.script[r] for r in recipients if isinstance(self.script.get(r), str) and self.script[r][:1] in "45"}
        return SendResult(server=f"{self.name}:25", reply="250 2.0.0 Ok", refused=refused)

    def close(self):
        pass


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def box(outbox_factory, clock):
    """This file's tests run on both backends (SQLite, PostgreSQL): the storage contract."""
    b = outbox_factory(clock=clock)
    yield b
    b.close()


def run(box, clock, *, script=None, policy=None, options=None, profiles=("main",), default="main",
        open_errors=None, rate=None, log=None, progress=None):
    log = [] if log is None else log
    transports = []

    def resolve(name):
        name = name or default
        if name not in profiles:
            raise NotFoundError(f"no profile named {name!r}")
        values = {"type": "smtp", "host": name}
        if rate and name in rate:
            values["rate_limit_per_minute"] = rate[name]
        return ResolvedProfile(name, values)

    def open_transport(profile):
        t = FakeTransport(profile.name, log, script or {}, clock, (open_errors or {}).get(profile.name))
        transports.append(t)
        return t

    report = flush(box, policy=policy or FlushPolicy(), resolve=resolve, open_transport=open_transport,
                   options=options or FlushOptions(), sleep=clock.sleep, progress=progress)
    report.transports = transports
    report.log = log
    return report


def temp(rcpt="b@example.org"):
    return DeliveryError("451 later", permanent=False, code=451, enhanced="4.3.0", text="later", server="main:25")


def test_backoff_doubles_from_min_to_max():
    assert [backoff_delay(n) for n in range(1, 7)] == [300, 600, 1200, 2400, 4000, 4000]
    assert backoff_delay(3, 10, 25) == 25


def test_sends_everything_over_one_transport(box, clock):
    for _ in range(5):
        box.enqueue(RAW, "a@example.com", ["b@example.org"])
    events = []
    r = run(box, clock, progress=lambda ev, **d: events.append(ev))
    assert (r.sent, r.deferred, r.failed) == (5, 0, 0)
    assert len(r.transports) == 1 and r.transports[0].opened == 1
    assert r.exit_code == ExitCode.OK
    assert events[0] == "start" and events.count("message") == 5 and events[-1] == "done"
    assert box.count_by_state()["sent"] == 5


def test_temporary_failure_backs_off_then_expires(box, clock):
    i = box.enqueue(RAW, "a@example.com", ["b@example.org"])
    script = {"b@example.org": temp()}
    policy = FlushPolicy(max_retry_age=2 * 3600)
    r = run(box, clock, script=script, policy=policy)
    assert r.deferred == 1 and r.exit_code == ExitCode.TEMPFAIL
    info = box.get(i)
    assert info.state == "deferred" and info.next_attempt_at == pytest.approx(clock.t + 300)
    # not due yet: nothing is tried
    r = run(box, clock, script=script, policy=policy)
    assert r.attempted == 0 and r.exit_code == ExitCode.TEMPFAIL
    delays = []
    for _ in range(4):
        clock.t = box.get(i).next_attempt_at
        before = clock.t
        run(box, clock, script=script, policy=policy)
        delays.append(round(box.get(i).next_attempt_at - before))
    assert delays == [600, 1200, 2400, 4000]
    clock.t = box.get(i).next_attempt_at
    r = run(box, clock, script=script, policy=policy)
    assert box.get(i).state == "expired" and r.exit_code == ExitCode.PROBLEMS
    assert [a["outcome"] for a in box.get(i).attempt_log][-1] == "expired"


def test_overdue_deferred_mail_expires_without_a_try(box, clock):
    i = box.enqueue(RAW, "a@example.com", ["b@example.org"])
    run(box, clock, script={"b@example.org": temp()})
    clock.t += 3 * 86400
    r = run(box, clock)
    assert r.expired == 1 and r.attempted == 0 and box.get(i).state == "expired"


def test_permanent_failure_fails(box, clock):
    i = box.enqueue(RAW, "a@example.com", ["b@example.org"])
    box.enqueue(RAW, "a@example.com", ["ok@example.org"])
    perm = DeliveryError("550 no", permanent=True, code=550, enhanced="5.1.1", text="No such user", server="main:25")
    r = run(box, clock, script={"b@example.org": perm})
    assert (r.sent, r.failed) == (1, 1) and r.exit_code == ExitCode.PROBLEMS
    info = box.get(i)
    assert info.state == "failed" and info.last_reply == "550 5.1.1 No such user"


def test_partial_refusal_retries_only_temporary_recipients(box, clock):
    i = box.enqueue(RAW, "a@example.com", ["ok@x.org", "later@x.org", "gone@x.org"])
    r = run(box, clock, script={"later@x.org": "451 4.3.0 later", "gone@x.org": "550 5.1.1 gone"})
    info = box.get(i)
    assert r.deferred == 1 and info.state == "deferred" and info.recipients == ["later@x.org"]
    clock.t = info.next_attempt_at
    r = run(box, clock, script={})
    assert r.sent == 1 and r.log[-1][2] == ("later@x.org",)


def test_all_refused_mixed_codes_defers_the_4xx_ones(box, clock):
    i = box.enqueue(RAW, "a@example.com", ["later@x.org", "gone@x.org"])
    err = DeliveryError("refused", permanent=False, code=451, server="main:25")
    err.refused = {"later@x.org": "451 4.3.0 later", "gone@x.org": "550 5.1.1 gone"}
    run(box, clock, script={"later@x.org": err})
    info = box.get(i)
    assert info.state == "deferred" and info.recipients == ["later@x.org"]


def test_unreachable_server_defers_and_stops_using_the_profile(box, clock):
    for _ in range(3):
        box.enqueue(RAW, "a@example.com", ["b@example.org"])
    r = run(box, clock, open_errors={"main": UnavailableError("cannot connect to main:25")})
    assert r.deferred == 3 and len(r.transports) == 1
    assert "main" in r.profile_errors and r.exit_code == ExitCode.TEMPFAIL


def test_connection_lost_mid_run_reconnects(box, clock):
    box.enqueue(RAW, "a@example.com", ["drop@example.org"])
    box.enqueue(RAW, "a@example.com", ["b@example.org"])
    r = run(box, clock, script={"drop@example.org": UnavailableError("connection lost")})
    assert (r.sent, r.deferred) == (1, 1) and len(r.transports) == 2


def test_auth_failure_is_temporary(box, clock):
    i = box.enqueue(RAW, "a@example.com", ["b@example.org"])
    run(box, clock, open_errors={"main": AuthError("535 authentication failed")})
    assert box.get(i).state == "deferred"


def test_unknown_profile_leaves_its_mail_alone(box, clock):
    # issue #12 item 3: an unknown profile is a configuration problem, not a delivery attempt
    # (it used to defer the message, charge an attempt and exit 75)
    a = box.enqueue(RAW, "a@example.com", ["b@example.org"], profile="gone")
    b = box.enqueue(RAW, "a@example.com", ["b@example.org"], profile="main")
    r = run(box, clock)
    info = box.get(a)
    assert (info.state, info.attempts, info.attempt_log) == ("queued", 0, [])
    assert "gone" in r.config_errors["gone"].message and r.left == 1
    assert box.get(b).state == "sent" and r.exit_code == ExitCode.CONFIG


def test_sending_disabled_sends_nothing(box, clock):
    box.enqueue(RAW, "a@example.com", ["b@example.org"])
    r = run(box, clock, policy=FlushPolicy(sending_enabled=False))
    assert r.attempted == 0 and not r.transports and r.sending_enabled is False and r.due == 1
    assert r.exit_code == ExitCode.OK
    assert box.count_by_state()["queued"] == 1


def test_held_mail_is_skipped(box, clock):
    box.enqueue(RAW, "a@example.com", ["b@example.org"], hold=True)
    r = run(box, clock)
    assert r.attempted == 0 and box.count_by_state()["held"] == 1


def test_dry_run_changes_nothing(box, clock):
    i = box.enqueue(RAW, "a@example.com", ["b@example.org"])
    r = run(box, clock, options=FlushOptions(dry_run=True))
    assert [m["id"] for m in r.would_send] == [i] and not r.transports
    assert box.get(i).state == "queued" and box.get(i).attempts == 0


def test_limit_and_profile_filter(box, clock):
    for _ in range(3):
        box.enqueue(RAW, "a@example.com", ["b@example.org"], profile="main")
    other = box.enqueue(RAW, "a@example.com", ["b@example.org"], profile="other")
    r = run(box, clock, profiles=("main", "other"), options=FlushOptions(limit=2, profile="main"))
    assert r.sent == 2
    r = run(box, clock, profiles=("main", "other"), options=FlushOptions(profile="main"))
    assert r.sent == 1 and box.get(other).state == "queued"
    with pytest.raises(NotFoundError):
        run(box, clock, options=FlushOptions(profile="nope"))


def test_default_profile_rows_follow_the_profile_filter(box, clock):
    i = box.enqueue(RAW, "a@example.com", ["b@example.org"])  # no profile: the default
    run(box, clock, profiles=("main", "other"), default="main", options=FlushOptions(profile="other"))
    assert box.get(i).state == "queued"
    run(box, clock, profiles=("main", "other"), default="main", options=FlushOptions(profile="main"))
    assert box.get(i).state == "sent"


def test_global_rate_limit(box, clock):
    for _ in range(7):
        box.enqueue(RAW, "a@example.com", ["b@example.org"])
    start = clock.t
    r = run(box, clock, policy=FlushPolicy(rate_limit_per_minute=3))
    assert r.sent == 7
    times = [t - start for _, t, _ in r.log]
    assert times[:3] == [0, 0, 0] and times[3] == pytest.approx(60) and times[6] == pytest.approx(120)


def test_rate_limit_spans_flushes(box, clock):
    for _ in range(4):
        box.enqueue(RAW, "a@example.com", ["b@example.org"])
    run(box, clock, policy=FlushPolicy(rate_limit_per_minute=2), options=FlushOptions(limit=2))
    clock.t += 10
    r = run(box, clock, policy=FlushPolicy(rate_limit_per_minute=2))
    assert r.sent == 2 and clock.slept and clock.slept[0] == pytest.approx(50)


def test_per_profile_rate_limit(box, clock):
    for _ in range(3):
        box.enqueue(RAW, "a@example.com", ["b@example.org"], profile="m365")
    for _ in range(3):
        box.enqueue(RAW, "a@example.com", ["b@example.org"], profile="main")
    start = clock.t
    r = run(box, clock, profiles=("main", "m365"), rate={"m365": 2})
    by_profile = {}
    for name, t, _ in r.log:
        by_profile.setdefault(name, []).append(t - start)
    assert by_profile["m365"][2] >= 60
    assert by_profile["main"][0] < 60 or by_profile["main"] == sorted(by_profile["main"])


def test_batch_interval(box, clock):
    for _ in range(5):
        box.enqueue(RAW, "a@example.com", ["b@example.org"])
    r = run(box, clock, policy=FlushPolicy(batch_size=2, batch_interval=20))
    assert r.sent == 5 and clock.slept == [20, 20]


def test_flush_purges_old_finished_mail(box, clock):
    i = box.enqueue(RAW, "a@example.com", ["b@example.org"])
    run(box, clock)
    clock.t += 31 * 86400
    r = run(box, clock, policy=FlushPolicy(retention_days=30))
    assert r.purged == 1
    with pytest.raises(NotFoundError):
        box.get(i)


def test_interrupt_gives_claims_back(box, clock):
    for _ in range(3):
        box.enqueue(RAW, "a@example.com", ["b@example.org"])
    with pytest.raises(KeyboardInterrupt):
        run(box, clock, script={"b@example.org": KeyboardInterrupt()})
    assert box.count_by_state()["sending"] == 0


def test_every_attempt_is_logged(box, clock):
    i = box.enqueue(RAW, "a@example.com", ["b@example.org"])
    run(box, clock, script={"b@example.org": temp()})
    clock.t += 301
    run(box, clock)
    log = box.get(i).attempt_log
    assert [a["outcome"] for a in log] == ["deferred", "sent"]
    assert log[0]["server"] == "main:25" and log[0]["reply"].startswith("451")


def test_partial_refusal_rule():
    rcpts = ["ok@x.org", "later@x.org", "gone@x.org"]
    mixed = {"later@x.org": "451 4.3.0 later", "gone@x.org": "550 5.1.1 gone"}
    # accepted for some: retry the 4xx ones only
    assert partial_refusal(mixed, rcpts, accepted=True) == ["later@x.org"]
    assert partial_refusal({"gone@x.org": "550 gone"}, rcpts, accepted=True) is None
    assert partial_refusal({}, rcpts, accepted=True) is None and partial_refusal(None, rcpts, accepted=True) is None
    # every recipient refused: the 4xx ones when some were refused for good, else the message as a whole
    assert partial_refusal(mixed, ["later@x.org", "gone@x.org"], accepted=False) == ["later@x.org"]
    assert partial_refusal({"later@x.org": "451 later"}, ["later@x.org"], accepted=False) is None
    assert partial_refusal({"gone@x.org": "550 gone"}, ["gone@x.org"], accepted=False) is None


class OnlyTheProtocol:
    """A store that lets the flush reach nothing of the Outbox but FlushStore's members."""

    MEMBERS = set(FlushStore.__annotations__) | {
        name for name, value in vars(FlushStore).items() if callable(value) and not name.startswith("_")}

    def __init__(self, box):
        self._box = box
        self.calls = []

    def __getattr__(self, name):
        assert name in self.MEMBERS, f"the flush used {name}, which FlushStore does not declare"
        self.calls.append(name)
        return getattr(self._box, name)


def test_the_flush_uses_only_the_flush_store_interface(box, clock):
    assert OnlyTheProtocol.MEMBERS == {"clock", "count_due", "due_messages", "expire_overdue", "sent_since",
                                       "claim_batch", "record_attempt", "record_attempts", "release_claims", "purge",
                                       "count_by_state"}
    box.enqueue(RAW, "a@example.com", ["b@example.org"])
    box.enqueue(RAW, "a@example.com", ["later@x.org"])
    store = OnlyTheProtocol(box)
    r = run(store, clock, script={"later@x.org": temp()}, policy=FlushPolicy(rate_limit_per_minute=10))
    assert (r.sent, r.deferred) == (1, 1)
    assert {"claim_batch", "record_attempt", "release_claims", "sent_since", "expire_overdue"} <= set(store.calls)
    r = run(store, clock, options=FlushOptions(dry_run=True))
    assert "due_messages" in store.calls


def test_flush_run_is_what_flush_runs(box, clock):
    box.enqueue(RAW, "a@example.com", ["b@example.org"])
    events = []
    resolve = lambda name: ResolvedProfile(name or "main", {"type": "smtp", "host": "main"})  # noqa: E731
    run_ = FlushRun(box, policy=FlushPolicy(), resolve=resolve,
                    open_transport=lambda p: FakeTransport(p.name, [], {}, clock), sleep=clock.sleep,
                    progress=lambda ev, **d: events.append(ev))
    report = run_.run()
    assert report is run_.report and report.sent == 1 and not run_.pending
    assert events == ["start", "message", "done"]
    assert box.count_by_state()["sent"] == 1 and box.count_by_state()["sending"] == 0


def test_a_bug_in_the_transport_defers_instead_of_stopping_the_flush(box, clock):
    a = box.enqueue(RAW, "a@example.com", ["bug@example.org"])
    b = box.enqueue(RAW, "a@example.com", ["b@example.org"])
    r = run(box, clock, script={"bug@example.org": RuntimeError("boom")})
    assert (r.sent, r.deferred) == (1, 1)
    assert box.get(a).state == "deferred" and box.get(a).last_reply == "unexpected RuntimeError: boom"
    assert box.get(b).state == "sent"


def test_a_bug_opening_the_transport_defers_the_profile(box, clock):
    i = box.enqueue(RAW, "a@example.com", ["b@example.org"])
    r = run(box, clock, open_errors={"main": RuntimeError("boom")})
    assert r.deferred == 1 and r.profile_errors == {"main": "unexpected RuntimeError: boom"}
    assert box.get(i).state == "deferred" and box.get(i).attempt_log[-1]["server"] is None


# --- issue #12 item 3: a configuration problem is not a delivery attempt ---------------------
def test_no_secret_store_leaves_the_profiles_mail_as_it_was(box, clock):
    from mailctl.errors import SecretStoreUnavailable

    tried = box.enqueue(RAW, "a@example.com", ["later@example.org"])
    run(box, clock, script={"later@example.org": temp()})  # a real 4xx: deferred, one attempt
    clock.t = box.get(tried).next_attempt_at
    fresh = [box.enqueue(RAW, "a@example.com", ["b@example.org"]) for _ in range(3)]
    before = {i: box.get(i) for i in [*fresh, tried]}
    no_keyring = SecretStoreUnavailable("no usable keyring backend to read the secret", hint="export MAILCTL_SECRET_MAIN_PASSWORD")
    r = run(box, clock, open_errors={"main": no_keyring})
    assert r.exit_code == ExitCode.CONFIG and r.attempted == 0 and r.left == 4
    assert list(r.config_errors) == ["main"] and r.config_errors["main"] is no_keyring
    assert r.problems == [] and r.profile_errors == {}  # said once, for the profile, not per message
    assert len(r.transports) == 1  # tried to open once, not once per message
    for i, old in before.items():
        now = box.get(i)
        assert (now.state, now.attempts, now.next_attempt_at, now.attempt_log) == (
            old.state, old.attempts, old.next_attempt_at, old.attempt_log)
    data = r.to_dict()
    assert data["exit_code"] == 78 and data["config_errors"]["main"]["hint"] == "export MAILCTL_SECRET_MAIN_PASSWORD"
    r = run(box, clock)  # fixed: everything goes out
    assert r.sent == 4 and r.exit_code == ExitCode.OK


def test_a_configuration_problem_does_not_run_the_expiry_clock_out(box, clock):
    from mailctl.errors import ConfigError

    i = box.enqueue(RAW, "a@example.com", ["b@example.org"])
    run(box, clock, script={"b@example.org": temp()})
    clock.t += 3 * 86400  # long past max_retry_age, and due
    r = run(box, clock, open_errors={"main": ConfigError("profile 'main' (smtp): missing required field host")})
    assert r.expired == 0 and box.get(i).state == "deferred" and box.get(i).attempts == 1
    assert r.exit_code == ExitCode.CONFIG
    r = run(box, clock)  # the profile works again: now it expires, untried
    assert r.expired == 1 and r.attempted == 0 and box.get(i).state == "expired"
    assert len(r.log) == 0


def test_a_configuration_problem_does_not_count_for_limit(box, clock):
    box.enqueue(RAW, "a@example.com", ["b@example.org"], profile="gone")
    box.enqueue(RAW, "a@example.com", ["b@example.org"], profile="gone")
    ok = box.enqueue(RAW, "a@example.com", ["b@example.org"], profile="main")
    r = run(box, clock, options=FlushOptions(limit=1))
    assert r.sent == 1 and box.get(ok).state == "sent" and r.left == 2


def test_a_configuration_problem_on_reconnect_leaves_the_rest(box, clock):
    from mailctl.errors import ConfigError

    first = box.enqueue(RAW, "a@example.com", ["b@example.org"])
    second = box.enqueue(RAW, "a@example.com", ["cfg@example.org"])
    r = run(box, clock, script={"cfg@example.org": ConfigError("secret_command failed")})
    assert box.get(first).state == "sent"
    assert box.get(second).state == "queued" and box.get(second).attempt_log == []
    assert r.exit_code == ExitCode.CONFIG and "secret_command" in r.config_errors["main"].message


# --- issue #12 item 5: per-recipient outcomes ----------------------------------------------------
def test_partial_5xx_refusal_is_kept_per_recipient(box, clock):
    i = box.enqueue(RAW, "a@example.com", ["ok@x.org", "gone@x.org"])
    r = run(box, clock, script={"gone@x.org": "550 5.1.1 gone"})
    info = box.get(i)
    assert info.state == "sent" and info.failed_recipients == {"gone@x.org": "550 5.1.1 gone"}
    assert info.partially_failed and info.display_state == "sent, 1 failed"
    assert r.partially_failed == 1 and r.exit_code == ExitCode.PROBLEMS
    assert [p.id for p in r.problems] == [i] and r.problems[0].failed_recipients == {"gone@x.org": "550 5.1.1 gone"}
    assert [m.id for m in box.list(states=["failed"])] == [i]  # `queue list -s failed` shows it
    assert box.stats()["partially_failed"] == 1 and box.stats()["partially_failed_recipients"] == 1


def test_failed_recipients_accumulate_over_retries(box, clock):
    i = box.enqueue(RAW, "a@example.com", ["ok@x.org", "later@x.org", "gone@x.org"])
    run(box, clock, script={"later@x.org": "451 4.3.0 later", "gone@x.org": "550 5.1.1 gone"})
    assert box.get(i).failed_recipients == {"gone@x.org": "550 5.1.1 gone"} and box.get(i).state == "deferred"
    clock.t = box.get(i).next_attempt_at
    run(box, clock, script={"later@x.org": DeliveryError("550 no", permanent=True, code=550, server="main:25")})
    info = box.get(i)
    assert info.state == "failed" and set(info.failed_recipients) == {"gone@x.org", "later@x.org"}
    assert not info.partially_failed  # failed as a whole now


def test_a_non_ascii_address_without_smtputf8_fails_clearly(box, clock):
    i = box.enqueue(RAW, "a@example.com", ["ü@xn--cda.test"])

    class NoSmtputf8(FakeTransport):
        def send(self, raw, sender, recipients):
            ("rcpt TO:<%s>" % recipients[0]).encode("ascii")  # what smtplib does without SMTPUTF8

    r = flush(box, policy=FlushPolicy(), resolve=lambda n: ResolvedProfile("main", {"type": "smtp", "host": "h"}),
              open_transport=lambda p: NoSmtputf8("main", [], {}, clock), sleep=clock.sleep)
    info = box.get(i)
    assert r.failed == 1 and info.state == "failed" and "SMTPUTF8" in info.last_reply and "ü@xn--cda.test" in info.last_reply


def test_a_missing_credential_is_a_configuration_problem_not_an_attempt(box, clock):
    """No password stored / no token yet: nobody refused anything, the operator must act."""
    fresh = [box.enqueue(RAW, "a@example.com", ["b@example.org"]) for _ in range(2)]
    no_password = AuthError("profile 'main': no password stored", hint="mailctl profile edit main --password-stdin")
    no_password.failure_id = "secret-missing"  # as SecretResolver.require raises it
    r = run(box, clock, open_errors={"main": no_password})
    assert r.exit_code == ExitCode.CONFIG and r.attempted == 0
    assert all((box.get(i).state, box.get(i).attempts) == ("queued", 0) for i in fresh)
    refused = AuthError("AUTH PLAIN as a refused by mx:25: 535 5.7.8 bad credentials")
    r = run(box, clock, open_errors={"main": refused})  # a server said no: that is an attempt
    assert r.attempted == 2 and all(box.get(i).attempts == 1 for i in fresh)
