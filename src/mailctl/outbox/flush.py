"""The flush engine: claim due messages, deliver them over one transport per profile, commit
each result before the next message goes out (over SMTP, while the server works on the next
MAIL FROM), back off on temporary failures.

Everything from outside comes in as arguments (the clock, sleep, how to resolve a profile and
open its transport, a progress callback), so tests drive it with a fake clock and the command
layer renders progress however it likes.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from mailctl.errors import AuthError, ConfigError, DeliveryError, ExitCode, MailctlError
from mailctl.outbox.store import ClaimedMessage, Outbox

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


@dataclass
class MessageOutcome:
    id: int
    outcome: str  # sent | deferred | failed | expired
    reply: str = ""
    server: str | None = None
    profile: str | None = None
    next_attempt_at: float | None = None
    error: MailctlError | None = None  # what kept it from the server, when not a reply (not serialised)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "outcome": self.outcome, "reply": self.reply, "server": self.server,
                "profile": self.profile, "next_attempt_at": self.next_attempt_at}


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
    duration: float = 0.0

    @property
    def attempted(self) -> int:
        return self.sent + self.deferred + self.failed

    @property
    def exit_code(self) -> ExitCode:
        if self.failed or self.expired:
            return ExitCode.PROBLEMS
        if self.remaining.get("deferred"):
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


ProgressFn = Callable[..., None]


class _Session:
    """One profile's transport for the whole flush, opened on first use."""

    def __init__(self, name: str | None, profile: Any = None, error: MailctlError | None = None) -> None:
        self.name = name
        self.profile = profile
        self.error = error
        self.transport: Any = None
        self.limiter: RateLimiter | None = None
        self.failures = 0  # connection-level failures in a row


def flush(
    outbox: Outbox,
    *,
    policy: FlushPolicy,
    resolve: Callable[[str | None], Any],
    open_transport: Callable[[Any], Any],
    options: FlushOptions | None = None,
    sleep: Callable[[float], None] = time.sleep,
    progress: ProgressFn | None = None,
) -> FlushReport:
    """Deliver due messages. `resolve(name or None)` -> ResolvedProfile (None: the default);
    `open_transport(profile)` -> an unopened Transport. The clock is the outbox's."""
    options = options or FlushOptions()
    clock = outbox.clock
    started = time.monotonic()
    report = FlushReport(sending_enabled=policy.sending_enabled, dry_run=options.dry_run)
    notify = progress or (lambda *a, **k: None)

    default_name: str | None = None
    default_error: MailctlError | None = None
    try:
        default_name = resolve(None).name
    except MailctlError as exc:  # rows queued without a profile cannot go anywhere until fixed
        default_error = exc

    profiles: list[str | None] | None = None
    if options.profile is not None:
        resolve(options.profile)  # unknown profile: a usage problem, raise now
        profiles = [options.profile] + ([None] if default_name == options.profile else [])

    report.due = outbox.count_due(profiles=profiles)
    if options.limit is not None:
        report.due = min(report.due, options.limit)

    if not policy.sending_enabled or options.dry_run:
        if options.dry_run:
            for info in outbox.due_messages(profiles=profiles, limit=options.limit):
                report.would_send.append({
                    "id": info.id, "profile": info.profile or default_name, "sender": info.sender,
                    "recipients": info.recipients, "subject": info.subject, "attempts": info.attempts,
                    "state": info.state,
                })
        report.remaining = outbox.count_by_state(profiles=profiles)
        report.duration = time.monotonic() - started
        return report

    # a flush of chosen ids (mailctl send) leaves the rest of the queue alone
    expired = [] if options.ids is not None else outbox.expire_overdue(policy.max_retry_age, profiles=profiles)
    report.expired += len(expired)
    for i in expired[:100]:
        report.problems.append(MessageOutcome(i, "expired", "still undelivered after max_retry_age"))

    owner = uuid.uuid4().hex
    lease_renewed = [clock()]  # when our claimed rows' leases were last pushed forward
    sessions: dict[str | None, _Session] = {}
    global_limiter = RateLimiter(policy.rate_limit_per_minute,
                                 outbox.sent_since(clock() - 60, limit=policy.rate_limit_per_minute) if policy.rate_limit_per_minute else ())

    def session_for(name: str | None) -> _Session:
        key = name if name is not None else default_name
        s = sessions.get(key)
        if s is None:
            if name is None and default_error is not None:
                s = _Session(None, error=default_error)
            else:
                try:
                    prof = resolve(key)
                    s = _Session(prof.name, prof)
                    limit = int(prof.values.get("rate_limit_per_minute") or 0)
                    s.limiter = RateLimiter(limit, outbox.sent_since(clock() - 60, prof.name, limit=limit) if limit else ())
                except MailctlError as exc:
                    s = _Session(key, error=exc)
            sessions[key] = s
        return s

    pending: list[Callable[[], Any]] = []  # at most one result waiting to be written

    def settle() -> None:
        """Write the pending result now."""
        while pending:
            pending.pop()()

    def settle_while_waiting() -> None:
        # runs inside the transport; a failure must stop the flush, not count as this
        # message's delivery trouble
        try:
            settle()
        except BaseException as exc:
            raise _SettleFailed(exc) from exc

    def commit(c: ClaimedMessage, outcome: str, reply: str, server: str | None, profile: str | None,
               duration: float | None, *, recipients: Sequence[str] | None = None,
               error: MailctlError | None = None) -> None:
        next_at = None
        if outcome == "deferred":
            now = clock()
            if now - c.age_base >= policy.max_retry_age:
                outcome = "expired"
                reply = f"{reply} (expired: undelivered after max_retry_age)".strip()
            else:
                next_at = now + backoff_delay(c.attempts + 1, policy.min_backoff, policy.max_backoff)
        # renew the lease on the rest of our claim now and then (not on every commit: that
        # would rewrite those rows' pages each time); a quarter of the lease leaves ample margin
        renew = None
        if clock() - lease_renewed[0] >= min(60.0, options.lease_seconds / 4):
            renew = options.lease_seconds
            lease_renewed[0] = clock()
        # The write is deferred until the next message's MAIL FROM is on the wire (or sooner,
        # see settle()): only ever one result is uncommitted, and it is always committed before
        # another message's data is sent, so a kill at any instant repeats at most that one.
        settle()
        pending.append(lambda: outbox.record_attempt(
            c, owner, outcome, reply=reply, server=server, profile=profile, duration=duration,
            next_attempt_at=next_at, recipients=recipients, renew_lease=renew))
        setattr(report, outcome, getattr(report, outcome) + 1)
        result = MessageOutcome(c.id, outcome, reply, server, profile, next_at, error)
        if outcome != "sent" and len(report.problems) < 100:
            report.problems.append(result)
        if options.keep_results:
            report.results.append(result)
        notify("message", id=c.id, outcome=outcome, reply=reply)

    def deliver(c: ClaimedMessage) -> None:
        s = session_for(c.profile)
        overlap = s.error is None and s.transport is not None and getattr(s.transport, "overlaps_work", False)
        if not overlap:
            settle()
        if s.error is not None:
            commit(c, "deferred", f"profile {s.name or '(default)'}: {s.error.message}", None, s.name, None, error=s.error)
            return
        limiters = [lim for lim in (global_limiter, s.limiter) if lim and lim.per_minute]
        while limiters:
            wait = max(lim.wait_time(clock()) for lim in limiters)
            if wait <= 0:
                break
            settle()
            notify("wait", seconds=wait, reason="rate limit")
            sleep(wait)
        t0 = time.monotonic()
        if s.transport is None:
            try:
                s.transport = open_transport(s.profile)
                s.transport.open()
            except Exception as exc:
                # whatever goes wrong before a message is on the wire (even a 5xx greeting) is
                # about the server, not this message: defer, and leave this profile alone for now
                _close(s)
                s.error = exc if isinstance(exc, MailctlError) else MailctlError(f"unexpected {type(exc).__name__}: {exc}")
                report.profile_errors[s.name or "(default)"] = s.error.message
                reply = exc.reply if isinstance(exc, DeliveryError) and exc.reply else s.error.message
                commit(c, "deferred", reply, getattr(exc, "server", None), s.name, time.monotonic() - t0, error=s.error)
                return
        try:
            for lim in limiters:
                lim.record(clock())
            if overlap and pending:
                result = s.transport.send(c.raw, c.sender, list(c.recipients), while_waiting=settle_while_waiting)
            else:
                result = s.transport.send(c.raw, c.sender, list(c.recipients))
        except DeliveryError as exc:
            s.failures = 0
            reply = exc.reply or exc.message
            refused = dict(getattr(exc, "refused", None) or {})
            temporary = [r for r, why in refused.items() if str(why).startswith("4")]
            if not exc.permanent and refused and 0 < len(temporary) < len(c.recipients):
                # every recipient refused, some for good (5xx): retry only the 4xx ones
                reply = "refused: " + "; ".join(f"{r}: {why}" for r, why in refused.items())
                commit(c, "deferred", reply, exc.server, s.name, time.monotonic() - t0, recipients=temporary)
            else:
                commit(c, "failed" if exc.permanent else "deferred", reply, exc.server, s.name, time.monotonic() - t0)
            return
        except Exception as exc:
            # connection lost, protocol trouble, or a bug: nothing is known to be delivered, so
            # retry later. Reconnect for the next message, but give up on this profile for this
            # run after a few failures in a row.
            _close(s)
            s.failures += 1
            message = exc.message if isinstance(exc, MailctlError) else f"unexpected {type(exc).__name__}: {exc}"
            if s.failures >= MAX_FAILURES_IN_A_ROW or isinstance(exc, (AuthError, ConfigError)):
                s.error = exc if isinstance(exc, MailctlError) else MailctlError(message)
                report.profile_errors[s.name or "(default)"] = message
            commit(c, "deferred", message, getattr(exc, "server", None), s.name, time.monotonic() - t0,
                   error=exc if isinstance(exc, MailctlError) else None)
            return
        s.failures = 0
        duration = time.monotonic() - t0
        refused = dict(getattr(result, "refused", None) or {})
        temporary = [r for r, reply in refused.items() if str(reply).startswith("4")]
        reply = result.reply or ""
        if refused:
            reply += "; refused: " + "; ".join(f"{r}: {why}" for r, why in refused.items())
        if temporary:
            # delivered to some; retry only the recipients that got a 4xx
            commit(c, "deferred", reply, result.server, s.name, duration, recipients=temporary)
        else:
            commit(c, "sent", reply, result.server, s.name, duration)

    notify("start", total=report.due)
    processed = 0
    in_batch = 0
    try:
        while options.limit is None or processed < options.limit:
            want = options.claim_size
            if options.limit is not None:
                want = min(want, options.limit - processed)
            if policy.batch_size:
                want = min(want, policy.batch_size - in_batch)
            settle()
            claims = outbox.claim_batch(owner, want, options.lease_seconds, profiles=profiles, ids=options.ids)
            lease_renewed[0] = clock()
            if not claims:
                break
            report.reclaimed += sum(1 for c in claims if c.reclaimed)
            for c in claims:
                deliver(c)
                processed += 1
            in_batch += len(claims)
            if policy.batch_size and in_batch >= policy.batch_size:
                in_batch = 0
                more = options.limit is None or processed < options.limit
                settle()
                if policy.batch_interval > 0 and more and outbox.count_due(profiles=profiles):
                    notify("wait", seconds=policy.batch_interval, reason="batch interval")
                    sleep(policy.batch_interval)
        settle()
    except _SettleFailed as exc:
        raise exc.error from None
    finally:
        # stopped early (Ctrl-C, an error): the last result is written if it can be, and rows
        # we claimed but never tried go back at once
        try:
            settle()  # a failed write was taken off the list before it ran: no retry here
        finally:
            outbox.release_claims(owner)
            for s in sessions.values():
                _close(s)

    if options.purge and policy.retention_days > 0:
        report.purged = outbox.purge(policy.retention_days * 86400.0)
    report.remaining = outbox.count_by_state(profiles=profiles)
    report.duration = time.monotonic() - started
    notify("done", report=report)
    return report


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
