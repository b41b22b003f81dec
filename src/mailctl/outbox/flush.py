"""The flush engine: claim due messages, deliver them over one transport per profile, commit
each result before the next message goes out (over SMTP, while the server works on the next
MAIL FROM), back off on temporary failures.

Everything from outside comes in as arguments (the clock, sleep, how to resolve a profile and
open its transport, a progress callback), so tests drive it with a fake clock and the command
layer renders progress however it likes.

`FlushRun` is one run, one method per step; `flush()` builds one and runs it. It reaches the
storage only through the calls listed in backend.FlushStore (Outbox, SQLite, is one).

With `FlushOptions.connections` N > 1 the run delivers in N threads (lanes, `_Lanes`), each
with its own sessions, sharing the claims, the report, the rate limits and one serialised
store handle; every lane keeps the one-connection guarantee, and results that are pending
at the same time are committed together (`_Results`).
"""

from __future__ import annotations

import copy
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from mailctl.errors import AuthError, ConfigError, DeliveryError, ExitCode, MailctlError, NotFoundError
from mailctl.outbox.backend import AttemptResult, ClaimedMessage, FlushStore

# Postfix: minimal_backoff_time = 300s, maximal_backoff_time = 4000s, doubling in between.
DEFAULT_MIN_BACKOFF = 300.0
DEFAULT_MAX_BACKOFF = 4000.0
DEFAULT_LEASE = 600.0  # a claimed row is ours this long after our last commit
CLAIM_SIZE = 100  # rows claimed per write transaction
MAX_FAILURES_IN_A_ROW = 3  # connection-level failures before a flush stops using a profile


def backoff_delay(attempts: int, min_backoff: float = DEFAULT_MIN_BACKOFF, max_backoff: float = DEFAULT_MAX_BACKOFF) -> float:
    """Delay before the next try after `attempts` failed tries: min, 2*min, 4*min ... capped at max."""
    if attempts <= 1:
        return float(min(min_backoff, max_backoff))
    return float(min(max_backoff, min_backoff * (2 ** min(attempts - 1, 40))))


@dataclass
class FlushPolicy:
    """The [settings] that shape a flush, in seconds."""

    sending_enabled: bool = True
    max_retry_age: float = 2 * 86400.0
    min_backoff: float = DEFAULT_MIN_BACKOFF
    max_backoff: float = DEFAULT_MAX_BACKOFF
    rate_limit_per_minute: int = 0
    batch_size: int = 0
    batch_interval: float = 0.0
    retention_days: int = 30
    attempt_log: str = ""  # one line per attempt: stderr, syslog or a file (attemptlog.py); "" off

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> "FlushPolicy":
        from mailctl.profiles.model import parse_duration

        def dur(key: str, default: float) -> float:
            value = settings.get(key)
            return default if value in (None, "") else parse_duration(value)

        return cls(
            sending_enabled=bool(settings.get("sending_enabled", True)),
            max_retry_age=dur("max_retry_age", 2 * 86400.0),
            min_backoff=dur("min_backoff", DEFAULT_MIN_BACKOFF),
            max_backoff=dur("max_backoff", DEFAULT_MAX_BACKOFF),
            rate_limit_per_minute=int(settings.get("rate_limit_per_minute") or 0),
            batch_size=int(settings.get("batch_size") or 0),
            batch_interval=dur("batch_interval", 0.0),
            retention_days=int(settings.get("retention_days") or 0),
            attempt_log=str(settings.get("attempt_log") or ""),
        )


@dataclass
class FlushOptions:
    profile: str | None = None  # only messages for this profile
    limit: int | None = None  # at most this many delivery attempts
    dry_run: bool = False
    ids: Sequence[int] | None = None  # only these queue ids (mailctl send)
    lease_seconds: float = DEFAULT_LEASE
    claim_size: int = CLAIM_SIZE
    keep_results: bool = False  # keep every per-message outcome in the report
    purge: bool = True  # the seed: each run also purges mail older than retention_days
    # SMTP sessions (transports) per profile at once, each in its own thread; capped by the
    # profile's max_connections (default 1: Microsoft 365 and Gmail throttle parallel sessions)
    connections: int = 1


@dataclass
class MessageOutcome:
    id: int
    outcome: str  # sent | deferred | failed | expired
    reply: str = ""
    server: str | None = None
    profile: str | None = None
    next_attempt_at: float | None = None
    error: MailctlError | None = None  # what kept it from the server, when not a reply (not serialised)
    failed_recipients: dict[str, str] = field(default_factory=dict)  # refused for good in this attempt

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "outcome": self.outcome, "reply": self.reply, "server": self.server,
                "profile": self.profile, "next_attempt_at": self.next_attempt_at,
                "failed_recipients": dict(self.failed_recipients)}


@dataclass
class FlushReport:
    sending_enabled: bool = True
    dry_run: bool = False
    sent: int = 0
    deferred: int = 0
    failed: int = 0
    expired: int = 0
    reclaimed: int = 0
    purged: int = 0
    would_send: list[dict[str, Any]] = field(default_factory=list)  # dry run
    due: int = 0
    remaining: dict[str, int] = field(default_factory=dict)  # queue counts by state afterwards
    problems: list[MessageOutcome] = field(default_factory=list)  # failed/expired (and deferred) details, capped
    results: list[MessageOutcome] = field(default_factory=list)  # with keep_results
    profile_errors: dict[str, str] = field(default_factory=dict)
    # configuration problems (unknown profile, missing setting, no secret store...): profile ->
    # the error; that profile's messages were left as they were (`left` of them), no attempt made
    config_errors: dict[str, MailctlError] = field(default_factory=dict)
    left: int = 0
    partially_failed: int = 0  # sent (or deferred) with some recipients refused for good (5xx)
    duration: float = 0.0
    stopped: bool = False  # asked to stop (SIGTERM): untried claims were given back
    # --connections asked for more than a profile's max_connections: profile -> the connections used
    connections_capped: dict[str, int] = field(default_factory=dict)

    @property
    def attempted(self) -> int:
        return self.sent + self.deferred + self.failed

    @property
    def exit_code(self) -> ExitCode:
        if self.config_errors:  # nothing a retry fixes: say so to cron, whatever else happened
            return ExitCode.CONFIG
        if self.failed or self.expired or self.partially_failed:
            return ExitCode.PROBLEMS
        if self.remaining.get("deferred") or self.stopped:  # stopped: the rest waits for the next flush
            return ExitCode.TEMPFAIL
        return ExitCode.OK

    def to_dict(self) -> dict[str, Any]:
        d = {
            "sending_enabled": self.sending_enabled,
            "dry_run": self.dry_run,
            "sent": self.sent,
            "deferred": self.deferred,
            "failed": self.failed,
            "expired": self.expired,
            "reclaimed": self.reclaimed,
            "purged": self.purged,
            "due": self.due,
            "remaining": dict(self.remaining),
            "problems": [p.to_dict() for p in self.problems],
            "profile_errors": dict(self.profile_errors),
            "config_errors": {name: {"message": err.message, "hint": err.hint, "exit_code": int(ExitCode.CONFIG)}
                              for name, err in self.config_errors.items()},
            "left": self.left,
            "partially_failed": self.partially_failed,
            "connections_capped": dict(self.connections_capped),
            "stopped": self.stopped,
            "duration": round(self.duration, 3),
            "exit_code": int(self.exit_code),
        }
        if self.dry_run:
            d["would_send"] = self.would_send
        if self.results:
            d["results"] = [r.to_dict() for r in self.results]
        return d


class RateLimiter:
    """At most `per_minute` sends in any sliding 60 seconds (0: unlimited)."""

    def __init__(self, per_minute: int, history: Sequence[float] = ()) -> None:
        self.per_minute = int(per_minute or 0)
        self.window: deque[float] = deque(sorted(history)[-self.per_minute:] if self.per_minute else ())

    def wait_time(self, now: float) -> float:
        if not self.per_minute:
            return 0.0
        while self.window and self.window[0] <= now - 60.0:
            self.window.popleft()
        if len(self.window) < self.per_minute:
            return 0.0
        return self.window[0] + 60.0 - now

    def record(self, now: float) -> None:
        if self.per_minute:
            self.window.append(now)


class SharedRateLimits:
    """Rate limiters that several FlushRuns use at once (the lanes of one `queue worker`):
    one per (profile, limit), seeded from the attempt log when first used; a slot is taken
    under one lock together with the check, so two lanes never take the same one."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.limiters: dict[tuple[str | None, int], RateLimiter] = {}


ProgressFn = Callable[..., None]


class _Pending:
    """One connection's result, handed to the run's _Results; committed (`done`), or its
    write failed (`error`). It carries the AttemptResult's fields itself (one object a
    message, not two); `result` builds the AttemptResult when several go in one commit."""

    __slots__ = ("claim", "outcome", "reply", "server", "profile", "duration", "next_attempt_at", "recipients",
                 "failed_recipients", "done", "error")

    def __init__(self, claim: ClaimedMessage, outcome: str, reply: str, server: str | None, profile: str | None,
                 duration: float | None, next_attempt_at: float | None, recipients: list[str] | None,
                 failed_recipients: dict[str, str]) -> None:
        self.claim = claim
        self.outcome = outcome
        self.reply = reply
        self.server = server
        self.profile = profile
        self.duration = duration
        self.next_attempt_at = next_attempt_at
        self.recipients = recipients
        self.failed_recipients = failed_recipients
        self.done = False
        self.error: BaseException | None = None

    @property
    def result(self) -> AttemptResult:
        return AttemptResult(self.claim, self.outcome, self.reply, self.server, self.profile, self.duration,
                             self.next_attempt_at, self.recipients, self.failed_recipients)


class _Results:
    """The results a run has not written yet, of all its connections, and the one lock for
    its storage (`lock`: every store call of a run with several connections takes it).

    A connection writes its pending result before its next message's data goes out; the
    write takes every result pending at that moment, of every connection, in ONE commit
    (group commit): under load the other connections find theirs already written. One
    connection: one result a commit, as before."""

    def __init__(self, store: FlushStore, owner: str, lease_seconds: float) -> None:
        self.store = store
        self.owner = owner
        self.lease_seconds = lease_seconds
        # renew the lease on the rest of our claim now and then (not on every commit: that
        # would rewrite those rows' pages each time); a quarter of the lease leaves ample margin
        self.renew_every = min(60.0, lease_seconds / 4)
        self.lock = threading.RLock()
        # several threads (the lanes of --connections) use these results and the run's report:
        # their locks are taken (FlushRun.deliver_in_lanes sets it before the lanes start).
        # One connection: the run's own thread alone uses them, and no lock is taken (a `with`
        # on a lock costs ~300 ns on the bench's VM, and a message took three)
        self.shared = False
        self.waiting: list[_Pending] = []  # appended to under `lock` when shared (FlushRun.commit)
        self.renewed = 0.0  # when the owner's claimed rows' leases were last pushed forward

    def write(self, p: _Pending) -> None:
        """Make sure `p` is committed: written already by another connection's commit, or
        now, together with everything else pending. A failed write fails all it carried."""
        if not self.shared:
            self._write(p)
            return
        with self.lock:
            self._write(p)

    def _write(self, p: _Pending) -> None:
        """write(), under `lock` when shared."""
        if p.done:
            return
        if p.error is not None:
            raise p.error
        batch, self.waiting = self.waiting, []
        try:
            store = self.store
            now = store.clock()  # the renewal, inline (once a commit: the hot path)
            renew = None
            if now - self.renewed >= self.renew_every:
                self.renewed = now
                renew = self.lease_seconds
            if len(batch) == 1:  # one connection: always
                r = batch[0]
                store.record_attempt(
                    r.claim, self.owner, r.outcome, reply=r.reply, server=r.server, profile=r.profile,
                    duration=r.duration, next_attempt_at=r.next_attempt_at, recipients=r.recipients,
                    renew_lease=renew, failed_recipients=r.failed_recipients or None)
            else:
                store.record_attempts(self.owner, [q.result for q in batch], renew_lease=renew)
        except BaseException as exc:
            for q in batch:
                q.error = exc
            raise
        for q in batch:
            q.done = True


class _Session:
    """One profile's transport for the whole flush, opened on first use."""

    def __init__(self, name: str | None, profile: Any = None, error: MailctlError | None = None) -> None:
        self.name = name
        self.profile = profile
        self.error = error
        self.transport: Any = None
        self.limiter: RateLimiter | None = None
        # the limiters in force for its messages (the run's and its own, those with a limit),
        # worked out on its first message: the same for every message after
        self.limiters: list[RateLimiter] | None = None
        self.failures = 0  # connection-level failures in a row


def flush(
    outbox: FlushStore,
    *,
    policy: FlushPolicy,
    resolve: Callable[[str | None], Any],
    open_transport: Callable[[Any], Any],
    options: FlushOptions | None = None,
    sleep: Callable[[float], None] = time.sleep,
    progress: ProgressFn | None = None,
    stop: Callable[[], bool] | None = None,
) -> FlushReport:
    """Deliver due messages. `resolve(name or None)` -> ResolvedProfile (None: the default);
    `open_transport(profile)` -> an unopened Transport. The clock is the outbox's. `stop()`
    True (a SIGTERM) ends the run after the messages in flight, the rest given back."""
    return FlushRun(outbox, policy=policy, resolve=resolve, open_transport=open_transport, options=options,
                    sleep=sleep, progress=progress, stop=stop).run()


def partial_refusal(refused: Mapping[str, str] | None, recipients: Sequence[str], *,
                    accepted: bool) -> list[str] | None:
    """The partial-refusal rule, for a reply that accepted the message (`accepted`) and for a
    refusal of every recipient alike: when some recipients got a 4xx and the others were
    accepted or refused for good (5xx), the message is deferred for the 4xx recipients only.
    Returns them; None when the rule does not apply (no 4xx, or nothing accepted and every
    recipient a 4xx: then the message is deferred, or failed, as a whole)."""
    temporary = [r for r, why in (refused or {}).items() if str(why).startswith("4")]
    if not temporary or (not accepted and len(temporary) >= len(recipients)):
        return None
    return temporary


def _refusals(refused: Mapping[str, str]) -> str:
    return "; ".join(f"{r}: {why}" for r, why in refused.items())


def _permanent(refused: Mapping[str, str] | None) -> dict[str, str]:
    """The recipients refused for good (5xx) among `refused`."""
    return {r: str(why) for r, why in (refused or {}).items() if not str(why).startswith("4")}


def config_problem(error: BaseException | None) -> bool:
    """Trouble on our side that no retry fixes and no server saw: an unknown profile, a missing
    setting, no usable secret store, a secret_command that fails (ConfigError and its
    SecretStoreUnavailable, NotFoundError from resolving a profile). Not a delivery attempt:
    the flush leaves those messages as they were and exits 78.

    So is an AuthError about a credential we do not have (failure ids secret-missing: no
    password stored; login-needed: no token until someone runs `mailctl auth login`); a server
    that refused the credentials (535, HTTP 401) is a delivery attempt."""
    if isinstance(error, AuthError):
        return error.failure_id in LOCAL_CREDENTIAL_FAILURES
    return isinstance(error, (ConfigError, NotFoundError))


# AuthErrors that no server produced: the credential is missing on our side (failure ids)
LOCAL_CREDENTIAL_FAILURES = ("secret-missing", "login-needed")


def _quiet(*args: Any, **kwargs: Any) -> None:
    pass


_monotonic = time.monotonic  # durations, read twice a message: one global lookup, not two


class FlushRun:
    """One flush, step by step: resolve its scope, expire overdue mail, then claim due
    messages and deliver each over its profile's session, committing every result; finally
    give back what was not tried, purge and count. Build it, call run() once.

    The run's state lives here: the report being filled, one _Session per profile, the claim
    owner, `results` (what is not written yet, and when the leases were last renewed), and
    `pending`, this connection's one result not known to be written. Storage goes through `store` (a FlushStore: backend.py) only."""

    def __init__(
        self,
        store: FlushStore,
        *,
        policy: FlushPolicy,
        resolve: Callable[[str | None], Any],
        open_transport: Callable[[Any], Any],
        options: FlushOptions | None = None,
        sleep: Callable[[float], None] = time.sleep,
        progress: ProgressFn | None = None,
        stop: Callable[[], bool] | None = None,
        shared_limits: SharedRateLimits | None = None,
    ) -> None:
        self.store = store
        self.shared_limits = shared_limits
        self.policy = policy
        self.resolve = resolve
        self.open_transport = open_transport
        self.options = options or FlushOptions()
        self.sleep = sleep
        self.notify: ProgressFn = progress or _quiet
        # asked between two messages (and during waits): True ends the run as if nothing more
        # were due; the message in flight is finished and committed first (queue worker)
        self.stop = stop
        self.clock = store.clock
        self.started = time.monotonic()
        self.report = FlushReport(sending_enabled=policy.sending_enabled, dry_run=self.options.dry_run)
        self.default_name: str | None = None
        self.default_error: MailctlError | None = None
        self.profiles: list[str | None] | None = None  # None: every profile's mail
        self.owner = uuid.uuid4().hex  # the lease owner of our claims
        self.results = _Results(store, self.owner, self.options.lease_seconds)
        self.sessions: dict[str | None, _Session] = {}
        self.global_limiter = RateLimiter(0)
        self.pending: _Pending | None = None  # this connection's result not known to be written yet
        self.lanes: _Lanes | None = None  # with several connections: the hand-out of messages to them
        self.held: set[str | None] = set()  # a lane's connection slots: the profiles it may send for
        self.report_lock = threading.Lock()  # lanes count into one report
        self.attempt_log: Any = None  # attemptlog.AttemptLog while delivering, when [settings] asks
        self.processed = 0  # messages tried (the --limit count)
        self.in_batch = 0  # messages tried in the current batch (batch_size)

    # the run -----------------------------------------------------------------
    def run(self) -> FlushReport:
        """Deliver due messages; returns the report."""
        self.started = time.monotonic()
        self.resolve_scope()
        if not self.policy.sending_enabled or self.options.dry_run:
            if self.options.dry_run:
                self.list_due()
            return self.tally()
        self.expire_overdue()
        self.results.renewed = self.clock()
        if self.options.connections > 1 and self.shared_limits is None:
            self.shared_limits = SharedRateLimits()  # the connections' threads keep the limits together
        self.global_limiter = self.rate_limiter(self.policy.rate_limit_per_minute)
        self.notify("start", total=self.report.due)
        if self.policy.attempt_log:
            from mailctl.outbox.attemptlog import AttemptLog

            self.attempt_log = AttemptLog(self.policy.attempt_log)
        try:
            self.deliver_all()
        finally:
            if self.attempt_log is not None:
                self.attempt_log.close()
        return self.finish()

    def resolve_scope(self) -> None:
        """The default profile, the profiles whose mail this run takes, how much is due."""
        try:
            self.default_name = self.resolve(None).name
        except MailctlError as exc:  # rows queued without a profile cannot go anywhere until fixed
            self.default_error = exc
        if self.options.profile is not None:
            self.resolve(self.options.profile)  # unknown profile: a usage problem, raise now
            self.profiles = [self.options.profile] + ([None] if self.default_name == self.options.profile else [])
        self.report.due = self.store.count_due(profiles=self.profiles)
        if self.options.limit is not None:
            self.report.due = min(self.report.due, self.options.limit)

    def list_due(self) -> None:
        """--dry-run: what would be sent, in order; nothing changes."""
        for info in self.store.due_messages(profiles=self.profiles, limit=self.options.limit):
            self.report.would_send.append({
                "id": info.id, "profile": info.profile or self.default_name, "sender": info.sender,
                "recipients": info.recipients, "subject": info.subject, "attempts": info.attempts,
                "state": info.state,
            })

    def expire_overdue(self) -> None:
        # a flush of chosen ids (mailctl send) leaves the rest of the queue alone
        if self.options.ids is not None:
            return
        # the rows due now are left to deliver(): it expires them once their profile is known
        # to work, so a configuration problem never runs a message's expiry clock out
        expired = self.store.expire_overdue(self.policy.max_retry_age, profiles=self.profiles, skip_due=True)
        self.report.expired += len(expired)
        for i in expired[:100]:
            self.report.problems.append(MessageOutcome(i, "expired", "still undelivered after max_retry_age"))

    def deliver_all(self) -> None:
        """Claim and deliver until nothing is due or --limit is reached; always give back the
        claims not tried and close the sessions."""
        if self.options.connections > 1:
            self.deliver_in_lanes()
            return
        limit = self.options.limit
        try:
            while limit is None or self.processed < limit:
                self.check_stop()
                claims = self.claim()
                if not claims:
                    break
                stop, deliver = self.stop, self.deliver  # the per-message loop: no lookups it need not make
                for c, nxt in zip(claims, [*claims[1:], None]):
                    if stop is not None and stop():
                        raise _Stop()
                    if deliver(c, nxt):
                        self.processed += 1
                self.in_batch += len(claims)
                if self.policy.batch_size and self.in_batch >= self.policy.batch_size:
                    self.end_batch()
            self.settle()
        except _Stop:
            self.report.stopped = True  # the finally below writes the last result and gives back the rest
        except _SettleFailed as exc:
            raise exc.error from None
        finally:
            # stopped early (Ctrl-C, an error, a stop request): the last result is written if it
            # can be, and rows we claimed but never tried go back at once
            try:
                self.settle()  # a failed write was taken off the list before it ran: no retry here
            finally:
                try:
                    self.store.release_claims(self.owner)
                finally:  # the storage gone (a dropped connection) must not leave transports open
                    for s in self.sessions.values():
                        _close(s)

    def deliver_in_lanes(self) -> None:
        """--connections N: N threads (lanes), each with its own sessions (its own connection
        to a profile's server), taking messages from one stream of claims (_Lanes); no profile
        is used by more lanes at once than its max_connections allows. A lane commits its
        result before its next message's data, exactly as one connection does; results that
        come in while a commit runs go into the next one together (_Results). Ctrl-C (in
        this, the main thread) or a stop request: every lane finishes the message in flight
        and commits it, then the untried claims go back."""
        self.store = _Serialized(self.store, self.results.lock)  # one handle, one caller at a time
        self.results.shared = True  # before the lanes start: from now on every use takes the lock
        lanes = self.lanes = _Lanes(self)
        # A lane says it is done with an Event, not by ending its thread: on Python 3.11 a
        # Thread.join() that Ctrl-C interrupts can leave a running thread marked as stopped,
        # so joins would return while a lane still writes to the outbox we then close.
        done = [threading.Event() for _ in range(self.options.connections)]
        threads = [threading.Thread(target=lanes.run_lane, args=(self.lane_copy(), done[k]), name=f"mailctl-flush-{k}",
                                    daemon=True) for k in range(self.options.connections)]
        started: list[threading.Event] = []
        try:
            for t, d in zip(threads, done):
                t.start()
                started.append(d)
            for d in done:  # waited for in slices: Ctrl-C reaches this thread
                while not d.wait(0.2):
                    pass
        except BaseException:
            lanes.halt()
            for d in started:
                d.wait()
            raise
        finally:
            self.store.release_claims(self.owner)
        if lanes.error is not None:
            raise lanes.error
        self.report.stopped = lanes.asked_to_stop

    def lane_copy(self) -> "FlushRun":
        """A lane: this run with sessions, a pending result and connection slots of its own;
        the report, store, results, rate limiters, owner and options are shared."""
        lane = copy.copy(self)
        lane.sessions = {}
        lane.pending = None
        lane.held = set()
        assert self.lanes is not None
        lane.stop = self.lanes.should_stop
        return lane

    def connection_cap(self, key: str | None) -> int:
        """How many lanes may use profile `key` at once: --connections, capped by the
        profile's max_connections (default 1); a cap is noted in the report."""
        want = self.options.connections
        if key is None and self.default_error is not None:
            return 1
        try:
            prof = self.resolve(key)
        except MailctlError:
            return 1  # its messages are deferred or left without a connection anyway
        most = int(prof.values.get("max_connections") or 1)
        if most < want:
            with self.report_lock:
                self.report.connections_capped[prof.name or "(default)"] = most
        return max(1, min(want, most))

    def check_stop(self) -> None:
        if self.stop is not None and self.stop():
            raise _Stop()

    def pause(self, seconds: float) -> None:
        """Sleep `seconds` (a rate limit, the batch interval); with a stop callback, in short
        slices, ending the run as soon as a stop is asked for."""
        if self.stop is None:
            self.sleep(seconds)
            return
        end = time.monotonic() + seconds
        while True:
            self.check_stop()
            left = end - time.monotonic()
            if left <= 0:
                return
            self.sleep(min(left, 0.25))

    def claim(self) -> list[ClaimedMessage]:
        """The next claim: at most claim_size rows, and no more than --limit or the batch leave."""
        want = self.options.claim_size
        if self.options.limit is not None:
            want = min(want, self.options.limit - self.processed)
        if self.policy.batch_size:
            want = min(want, self.policy.batch_size - self.in_batch)
        self.settle()
        claims = self.store.claim_batch(self.owner, want, self.options.lease_seconds, profiles=self.profiles,
                                        ids=self.options.ids)
        self.results.renewed = self.clock()
        self.report.reclaimed += sum(1 for c in claims if c.reclaimed)
        return claims

    def end_batch(self) -> None:
        """batch_size reached: wait batch_interval before the next batch, if more is due."""
        self.in_batch = 0
        more = self.options.limit is None or self.processed < self.options.limit
        self.settle()
        if self.policy.batch_interval > 0 and more and self.store.count_due(profiles=self.profiles):
            self.notify("wait", seconds=self.policy.batch_interval, reason="batch interval")
            self.pause(self.policy.batch_interval)

    def finish(self) -> FlushReport:
        if self.options.purge and self.policy.retention_days > 0:
            self.report.purged = self.store.purge(self.policy.retention_days * 86400.0)
        self.tally()
        self.notify("done", report=self.report)
        return self.report

    def tally(self) -> FlushReport:
        """What is left in the queue (in this run's profile scope), and how long the run took."""
        self.report.remaining = self.store.count_by_state(profiles=self.profiles)
        self.report.duration = time.monotonic() - self.started
        return self.report

    # sessions and rate limits ------------------------------------------------
    def session_for(self, name: str | None) -> _Session:
        """The session of profile `name` (None: the default), made on its first message
        (deliver() looks an existing one up itself: once a message)."""
        key = name if name is not None else self.default_name
        s = self.sessions.get(key)
        if s is None:
            s = self.sessions[key] = self.new_session(name, key)
        return s

    def new_session(self, name: str | None, key: str | None) -> _Session:
        if name is None and self.default_error is not None:
            return _Session(None, error=self.default_error)
        try:
            prof = self.resolve(key)
            s = _Session(prof.name, prof)
            s.limiter = self.rate_limiter(int(prof.values.get("rate_limit_per_minute") or 0), prof.name)
        except MailctlError as exc:
            s = _Session(key, error=exc)
        return s

    def rate_limiter(self, per_minute: int, profile: str | None = None) -> RateLimiter:
        """A limiter that already counts the last minute's attempts (all profiles', or one's)."""
        shared = self.shared_limits
        if shared is not None and per_minute:
            with shared.lock:
                lim = shared.limiters.get((profile, per_minute))
                if lim is None:
                    history = self.store.sent_since(self.clock() - 60, profile, limit=per_minute)
                    lim = shared.limiters[(profile, per_minute)] = RateLimiter(per_minute, history)
                return lim
        history = self.store.sent_since(self.clock() - 60, profile, limit=per_minute) if per_minute else ()
        return RateLimiter(per_minute, history)

    def wait_for_rate_limits(self, limiters: Sequence[RateLimiter]) -> None:
        """Wait until every limiter has room. With shared limits (lanes), the slot is taken
        here, under the lock that checked it; otherwise deliver() records it when it sends."""
        shared = self.shared_limits
        while limiters:
            if shared is None:
                wait = max(lim.wait_time(self.clock()) for lim in limiters)
            else:
                with shared.lock:
                    now = self.clock()
                    wait = max(lim.wait_time(now) for lim in limiters)
                    if wait <= 0:
                        for lim in limiters:
                            lim.record(now)
            if wait <= 0:
                break
            self.settle()
            self.notify("wait", seconds=wait, reason="rate limit")
            self.pause(wait)

    # results -----------------------------------------------------------------
    def settle(self) -> None:
        """Make sure this connection's pending result is committed (taken off before the
        write: a failed write is not tried again)."""
        p, self.pending = self.pending, None
        if p is not None:
            self.results.write(p)

    def settle_while_waiting(self) -> None:
        # runs inside the transport; a failure must stop the flush, not count as this
        # message's delivery trouble (settle(), inline: once a message)
        p, self.pending = self.pending, None
        if p is not None:
            try:
                self.results.write(p)
            except BaseException as exc:
                raise _SettleFailed(exc) from exc

    def commit(self, c: ClaimedMessage, outcome: str, reply: str, server: str | None, profile: str | None,
               duration: float | None, *, recipients: Sequence[str] | None = None,
               error: MailctlError | None = None, failed_recipients: Mapping[str, str] | None = None) -> None:
        next_at = None
        if outcome == "deferred":
            outcome, reply, next_at = self.retry_or_expire(c, reply)
        # The write is deferred until the next message's MAIL FROM is on the wire (or sooner,
        # see settle()): only ever one result a connection is uncommitted, and it is always
        # committed before that connection sends another message's data, so a kill at any
        # instant repeats at most that one (per connection).
        if self.pending is not None:
            self.settle()
        failed = dict(failed_recipients) if failed_recipients else {}
        p = _Pending(c, outcome, reply, server, profile, duration, next_at,
                     None if recipients is None else list(recipients), failed)
        results = self.results
        if results.shared:  # lanes share the results and the report
            with results.lock:
                results.waiting.append(p)
        else:  # one connection: this thread alone uses them, no lock to take
            results.waiting.append(p)
        self.pending = p
        if results.shared:
            with self.report_lock:
                self.count(c.id, outcome, reply, server, profile, next_at, error, failed)
        else:
            self.count(c.id, outcome, reply, server, profile, next_at, error, failed)
        if self.attempt_log is not None:
            with self.report_lock:
                self.log_attempt(c, outcome, reply, server, profile, duration)

    def log_attempt(self, c: ClaimedMessage, outcome: str, reply: str, server: str | None, profile: str | None,
                    duration: float | None) -> None:
        from mailctl.outbox.attemptlog import transport_security

        s = self.sessions.get(profile)
        tls, auth = transport_security(s.transport if s else None, s.profile if s else None)
        self.attempt_log.record(id=c.id, profile=profile, server=server, tls=tls, auth=auth, sender=c.sender,
                                recipients=c.recipients, size=len(c.raw), outcome=outcome, reply=reply,
                                duration=duration)

    def retry_or_expire(self, c: ClaimedMessage, reply: str) -> tuple[str, str, float | None]:
        """A deferral: (outcome, reply, next attempt time), expired once past max_retry_age."""
        now = self.clock()
        if now - c.age_base >= self.policy.max_retry_age:
            return "expired", f"{reply} (expired: undelivered after max_retry_age)".strip(), None
        return "deferred", reply, now + backoff_delay(c.attempts + 1, self.policy.min_backoff, self.policy.max_backoff)

    def count(self, message_id: int, outcome: str, reply: str, server: str | None, profile: str | None,
              next_at: float | None, error: MailctlError | None, failed: dict[str, str]) -> None:
        """Count one result into the report (commit() holds report_lock when lanes share it).
        The MessageOutcome is built only when the report keeps it (a problem, --keep-results),
        and the progress callback called only when there is one: a plain success costs a
        counter."""
        report = self.report
        if outcome == "sent":
            report.sent += 1
        else:
            setattr(report, outcome, getattr(report, outcome) + 1)
        if failed and outcome != "failed":
            report.partially_failed += 1
        problem = (outcome != "sent" or bool(failed)) and len(report.problems) < 100
        keep = self.options.keep_results
        if problem or keep:
            result = MessageOutcome(message_id, outcome, reply, server, profile, next_at, error, failed)
            if problem:
                report.problems.append(result)
            if keep:
                report.results.append(result)
        if self.notify is not _quiet:
            self.notify("message", id=message_id, outcome=outcome, reply=reply)

    # delivering one message ----------------------------------------------------
    def deliver(self, c: ClaimedMessage, nxt: ClaimedMessage | None = None) -> bool:
        """Deliver one claimed message; True when that was a delivery attempt (--limit counts
        those), False when it was left alone (a configuration problem) or expired untried.
        `nxt`: the message after it in this claim, whose envelope may follow this one's data
        on the wire (then_on_wire). The hot path, run once a message: it reads each thing once
        and builds nothing a plain success does not need."""
        s = self.sessions.get(c.profile if c.profile is not None else self.default_name) or self.session_for(c.profile)
        if s.error is not None:
            if config_problem(s.error):
                self.leave(c, s)
                return False
            self.settle()
            self.commit(c, "deferred", f"profile {s.name or '(default)'}: {s.error.message}", None, s.name, None,
                        error=s.error)
            return True
        transport = s.transport
        overlap = transport is not None and getattr(transport, "overlaps_work", False)
        if not overlap and self.pending is not None:
            self.settle()
        overdue = c.attempts > 0 and self.overdue(c)
        limiters = s.limiters
        if limiters is None:
            limiters = s.limiters = [lim for lim in (self.global_limiter, s.limiter) if lim and lim.per_minute]
        if limiters and not overdue:
            self.wait_for_rate_limits(limiters)
        t0 = _monotonic()
        if transport is None:
            if not self.connect(s, c, t0):
                return not config_problem(s.error)
            transport = s.transport
        if overdue:
            # still deferred after max_retry_age, and its profile works: give up without a try
            self.commit(c, "expired", "still undelivered after max_retry_age", None, s.name, None)
            return False
        try:
            if limiters and self.shared_limits is None:  # shared ones were taken in wait_for_rate_limits
                for lim in limiters:
                    lim.record(self.clock())
            # (also on a connection just opened for this message: no result is pending then)
            then = self.then_on_wire(s, nxt, limiters) if getattr(transport, "announces_next", False) else None
            if then is not None:  # a transport that announces_next takes both
                result = transport.send(c.raw, c.sender, list(c.recipients), then=then,
                                        while_waiting=self.settle_while_waiting if self.pending is not None else None)
            elif overlap and self.pending is not None:
                result = transport.send(c.raw, c.sender, list(c.recipients), while_waiting=self.settle_while_waiting)
            else:
                result = transport.send(c.raw, c.sender, list(c.recipients))
        except DeliveryError as exc:
            s.failures = 0
            self.refused(c, s, exc, t0)
            return True
        except UnicodeEncodeError as exc:
            if c.sender.isascii() and all(r.isascii() for r in c.recipients):
                self.connection_trouble(c, s, exc, t0)
            else:
                self.needs_smtputf8(c, s, t0)
            return True
        except Exception as exc:
            self.connection_trouble(c, s, exc, t0)
            return not config_problem(s.error)
        s.failures = 0
        self.accepted(c, s, result, _monotonic() - t0)
        return True

    def then_on_wire(self, s: _Session, nxt: ClaimedMessage | None, limiters: Sequence[RateLimiter]) -> tuple | None:
        """The next message to announce after this one's data (SmtpTransport.send(then=)):
        only when nothing can come between the two on this connection: the same session (a
        lane's own, with --connections), no rate limit to wait for, not due to expire untried,
        no --limit about to end the run. Its data still waits for this message's result to be
        committed."""
        if nxt is None or limiters or (nxt.attempts > 0 and self.overdue(nxt)):  # overdue needs a try before
            return None
        if self.options.limit is not None and self.processed + 1 >= self.options.limit:
            return None
        key = nxt.profile if nxt.profile is not None else self.default_name
        if self.sessions.get(key) is not s:
            return None
        return (nxt.raw, nxt.sender, list(nxt.recipients))

    def overdue(self, c: ClaimedMessage) -> bool:
        """A message that was deferred (tried before) and is past max_retry_age. A flush of
        chosen ids (mailctl send) expires nothing."""
        return (self.options.ids is None and c.attempts > 0 and not c.reclaimed
                and self.clock() - c.age_base > self.policy.max_retry_age)

    def leave(self, c: ClaimedMessage, s: _Session) -> None:
        """A configuration problem is not a delivery attempt: no attempt logged, no backoff, no
        expiry. The row stays claimed until the run ends and then goes back as it was
        (release_claims); the problem is reported once, for its profile."""
        assert s.error is not None
        with self.report_lock:
            self.report.config_errors.setdefault(s.name or "(default)", s.error)
            self.report.left += 1
            self.notify("message", id=c.id, outcome="left", reply=s.error.message)

    def connect(self, s: _Session, c: ClaimedMessage, t0: float) -> bool:
        """Open the session's transport; on failure defer `c` (and the profile), or leave it
        alone for a configuration problem, and say False."""
        try:
            s.transport = self.open_transport(s.profile)
            s.transport.open()
            return True
        except Exception as exc:
            # whatever goes wrong before a message is on the wire (even a 5xx greeting) is
            # about the server, not this message: defer, and leave this profile alone for now
            _close(s)
            s.error = exc if isinstance(exc, MailctlError) else MailctlError(f"unexpected {type(exc).__name__}: {exc}")
            if config_problem(s.error):  # no secret store, a missing setting: not the server's doing
                self.leave(c, s)
                return False
            self.report.profile_errors[s.name or "(default)"] = s.error.message
            reply = exc.reply if isinstance(exc, DeliveryError) and exc.reply else s.error.message
            self.commit(c, "deferred", reply, s.error.server, s.name, time.monotonic() - t0, error=s.error)
            return False

    def refused(self, c: ClaimedMessage, s: _Session, exc: DeliveryError, t0: float) -> None:
        """The server refused the message: failed (5xx) or deferred, or, when every recipient
        was refused with mixed codes, deferred for the 4xx ones (the partial-refusal rule)."""
        retry = None if exc.permanent else partial_refusal(exc.refused, c.recipients, accepted=False)
        if retry is not None:
            # every recipient refused, some for good (5xx): retry only the 4xx ones
            reply = "refused: " + _refusals(exc.refused or {})
            self.commit(c, "deferred", reply, exc.server, s.name, time.monotonic() - t0, recipients=retry,
                        failed_recipients=_permanent(exc.refused))
        elif exc.permanent:
            reply = exc.reply or exc.message
            failed = _permanent(exc.refused) or {r: reply for r in c.recipients}
            self.commit(c, "failed", reply, exc.server, s.name, time.monotonic() - t0, failed_recipients=failed)
        else:
            self.commit(c, "deferred", exc.reply or exc.message, exc.server, s.name, time.monotonic() - t0)

    def needs_smtputf8(self, c: ClaimedMessage, s: _Session, t0: float) -> None:
        """A non-ASCII address (local part: the domain is IDNA-encoded when queued) to a server
        that does not offer SMTPUTF8 (RFC 6531): no retry can help, as Postfix bounces it."""
        server = getattr(getattr(s.transport, "server", None), "address", None)
        _close(s)  # the transaction may be half-way (MAIL FROM accepted): start afresh
        bad = [a for a in [c.sender, *c.recipients] if not a.isascii()]
        reply = (f"the server does not offer SMTPUTF8, which the non-ASCII address {bad[0]!r} needs "
                 "(ask for SMTPUTF8 support, or use an ASCII address)")
        self.commit(c, "failed", reply, server, s.name, time.monotonic() - t0,
                    failed_recipients={r: reply for r in c.recipients})

    def connection_trouble(self, c: ClaimedMessage, s: _Session, exc: Exception, t0: float) -> None:
        # connection lost, protocol trouble, or a bug: nothing is known to be delivered, so
        # retry later. Reconnect for the next message, but give up on this profile for this
        # run after a few failures in a row.
        _close(s)
        if isinstance(exc, MailctlError) and config_problem(exc):  # e.g. no secret store on a reconnect
            s.error = exc
            self.leave(c, s)
            return
        s.failures += 1
        err = exc if isinstance(exc, MailctlError) else None
        message = err.message if err is not None else f"unexpected {type(exc).__name__}: {exc}"
        if s.failures >= MAX_FAILURES_IN_A_ROW or isinstance(exc, (AuthError, ConfigError)):
            s.error = err if err is not None else MailctlError(message)
            self.report.profile_errors[s.name or "(default)"] = message
        self.commit(c, "deferred", message, err.server if err is not None else None, s.name, time.monotonic() - t0,
                    error=err)

    def accepted(self, c: ClaimedMessage, s: _Session, result: Any, duration: float) -> None:
        """The server accepted the message, for every recipient or (partial refusal) some."""
        refused = getattr(result, "refused", None)
        if not refused:  # every recipient (nearly always): no refusal to work out
            self.commit(c, "sent", result.reply or "", result.server, s.name, duration)
            return
        refused = dict(refused)
        reply = (result.reply or "") + "; refused: " + _refusals(refused)
        retry = partial_refusal(refused, c.recipients, accepted=True)
        failed = _permanent(refused)  # delivered to the others: kept, shown as partly failed
        if retry is not None:
            # delivered to some; retry only the recipients that got a 4xx
            self.commit(c, "deferred", reply, result.server, s.name, duration, recipients=retry,
                        failed_recipients=failed)
        else:
            self.commit(c, "sent", reply, result.server, s.name, duration, failed_recipients=failed)


class _Serialized:
    """A store whose every call holds one lock: the lanes of a run share one store handle,
    and an sqlite3 or psycopg connection serves one caller (one transaction) at a time."""

    def __init__(self, store: Any, lock: threading.RLock) -> None:
        self._store = store
        self._lock = lock
        self.clock = store.clock

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if not callable(attr):
            return attr
        lock = self._lock

        def call(*args: Any, **kwargs: Any) -> Any:
            with lock:
                return attr(*args, **kwargs)

        return call


class _Lanes:
    """The hand-out of one run's messages to its lanes (--connections): one stream of claims
    (the run's owner, claim_size rows at a time) shared by all, --limit and batch_size counted
    across them. A lane takes a message of a profile only while it holds one of that
    profile's connection slots (connection_cap); a message whose profile has no free slot is
    parked for the lanes that hold one, which take their parked messages first. A lane that
    finds nothing to take gives its slots back in the same step, so nothing parked is ever
    left without a lane."""

    def __init__(self, run: FlushRun) -> None:
        self.run = run
        # the hand-out's one lock (nothing waits on it: a plain RLock, whose `with` costs no
        # Python call, where a Condition's does; taken twice a message)
        self.cond = threading.RLock()
        self.ready: deque[ClaimedMessage] = deque()
        self.parked: dict[str | None, deque[ClaimedMessage]] = {}
        self.busy: dict[str | None, int] = {}  # lanes holding a slot of each profile
        self.caps: dict[str | None, int] = {}
        self.exhausted = False  # a claim found nothing more
        self.used = 0  # messages handed out that count toward --limit
        self.in_batch = 0  # messages claimed in the current batch (batch_size)
        self.halted = False
        self.error: BaseException | None = None  # the first lane's failure; the others stop
        self.user_stop = run.stop
        self.asked_to_stop = False

    def should_stop(self) -> bool:
        if self.halted or self.error is not None:
            return True
        if self.user_stop is not None and self.user_stop():
            self.asked_to_stop = True
            return True
        return False

    def halt(self) -> None:
        self.halted = True

    def fail(self, exc: BaseException) -> None:
        with self.cond:
            if self.error is None:
                self.error = exc

    def run_lane(self, lane: FlushRun, done: threading.Event | None = None) -> None:
        """One lane's thread: take, deliver, until nothing is left or a stop; its last result
        committed, its sessions closed; then `done` is set (nothing of it runs after)."""
        try:
            self._lane(lane)
        finally:
            if done is not None:
                done.set()

    def _lane(self, lane: FlushRun) -> None:
        try:
            c = None
            while True:
                lane.check_stop()
                c = c or self.next(lane)
                if c is None:
                    break
                # the lane's next message, taken now if one is ready, so that its envelope can
                # follow this one's data (then_on_wire); untried at a stop, it goes back with
                # the run's other claims
                nxt = self.take_ready(lane)
                if not lane.deliver(c, nxt):  # not a delivery attempt: --limit does not count it
                    with self.cond:
                        self.used -= 1
                c = nxt
            lane.settle()
        except _Stop:
            pass
        except _SettleFailed as exc:
            self.fail(exc.error)
        except BaseException as exc:
            self.fail(exc)
        finally:
            try:
                lane.settle()
            except BaseException as exc:
                self.fail(exc)
            finally:
                for s in lane.sessions.values():
                    _close(s)
                self.give_back(lane)

    def next(self, lane: FlushRun) -> ClaimedMessage | None:
        """The lane's next message, claiming more when none is ready; None: nothing is left
        for it (its connection slots are given back at once)."""
        run = self.run
        with self.cond:
            while True:
                c = self.take(lane)
                if c is not None:
                    return c
                limit = run.options.limit
                if self.exhausted or (limit is not None and self.used >= limit):
                    self.give_back(lane)
                    return None
                if run.policy.batch_size and self.in_batch >= run.policy.batch_size:
                    self.end_batch(lane)
                self.claim(lane)

    def take_ready(self, lane: FlushRun) -> ClaimedMessage | None:
        """A message for this lane from what is claimed already (no claim made), or None."""
        with self.cond:
            return None if self.halted or self.error is not None else self.take(lane)

    def take(self, lane: FlushRun) -> ClaimedMessage | None:
        for key in lane.held:
            q = self.parked.get(key)
            if q:
                return q.popleft()
        ready, default = self.ready, self.run.default_name
        while ready:
            c = ready.popleft()
            key = c.profile if c.profile is not None else default  # its session's key (session_for)
            if key in lane.held or self.grant(lane, key):
                return c
            self.parked.setdefault(key, deque()).append(c)
        for key, q in self.parked.items():
            if q and self.grant(lane, key):
                return q.popleft()
        return None

    def grant(self, lane: FlushRun, key: str | None) -> bool:
        if key not in self.caps:
            self.caps[key] = self.run.connection_cap(key)
        if self.busy.get(key, 0) >= self.caps[key]:
            return False
        self.busy[key] = self.busy.get(key, 0) + 1
        lane.held.add(key)
        return True

    def give_back(self, lane: FlushRun) -> None:
        with self.cond:
            for key in lane.held:
                self.busy[key] -= 1
            lane.held = set()

    def claim(self, lane: FlushRun) -> None:
        run = self.run
        want = run.options.claim_size
        if run.options.limit is not None:
            want = min(want, run.options.limit - self.used)
        if run.policy.batch_size:
            want = min(want, run.policy.batch_size - self.in_batch)
        lane.settle()  # this lane's result first, as one connection does before a claim
        claims = run.store.claim_batch(run.owner, want, run.options.lease_seconds, profiles=run.profiles,
                                       ids=run.options.ids)
        if not claims:
            self.exhausted = True
            return
        with run.report_lock:
            run.report.reclaimed += sum(1 for c in claims if c.reclaimed)
        self.used += len(claims)
        self.in_batch += len(claims)
        self.ready.extend(claims)

    def end_batch(self, lane: FlushRun) -> None:
        """batch_size claimed: wait batch_interval before the next batch, if more is due (the
        other lanes wait here too, for their next message)."""
        run = self.run
        self.in_batch = 0
        lane.settle()
        more = run.options.limit is None or self.used < run.options.limit
        if run.policy.batch_interval > 0 and more and run.store.count_due(profiles=run.profiles):
            lane.notify("wait", seconds=run.policy.batch_interval, reason="batch interval")
            lane.pause(run.policy.batch_interval)


class _Stop(Exception):
    """A stop was asked for (FlushRun.stop): end the run between two messages."""


class _SettleFailed(BaseException):
    """Writing a result failed inside the transport: stop the flush (BaseException, so no
    transport or delivery handler mistakes it for trouble with the message being sent)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(error)
        self.error = error


def _close(s: _Session) -> None:
    if s.transport is not None:
        try:
            s.transport.close()
        except Exception:  # closing a broken connection must not hide the real outcome
            pass
        s.transport = None
