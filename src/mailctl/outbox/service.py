"""The outbox wired to profiles and transports: what the `queue flush`, `send` and `sendmail`
commands call. Kept apart from flush.py so the engine stays testable with fakes."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from mailctl.errors import AuthError, ConfigError, ExitCode, MailctlError
from mailctl.outbox.flush import FlushOptions, FlushPolicy, FlushReport, MessageOutcome, flush
from mailctl.outbox.store import Outbox


def profile_flush(
    box: Outbox,
    doc: Any,
    secrets: Any,
    options: FlushOptions | None = None,
    *,
    progress: Callable[..., None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    trace: Callable[[int, str], None] | None = None,
    explain_profiles: bool = True,
    stop: Callable[[], bool] | None = None,
) -> FlushReport:
    """Flush with the settings and profiles of a loaded profiles document. trace(level,
    text) hears, for mailctl -v, each profile used and why (unless explain_profiles is
    off: `send` said it already), timings, and at level 2 the redacted transcript."""
    from mailctl.transports.traced import traced_transport

    return flush(
        box,
        policy=FlushPolicy.from_settings(doc.settings()),
        resolve=_resolver(doc, trace if explain_profiles else None),
        open_transport=lambda profile: traced_transport(profile, secrets, trace),
        options=options,
        sleep=sleep,
        progress=progress,
        stop=stop,
    )


def _resolver(doc: Any, trace: Callable[[int, str], None] | None) -> Callable[[str | None], Any]:
    """resolve(name) for flush(); with a trace, each profile's first use is said with why
    (the name queued with the message, or the default's reason)."""
    from mailctl.profiles.resolve import default_reason, resolve_profile

    said: set[str | None] = set()

    def resolve(name: str | None) -> Any:
        resolved = resolve_profile(doc, name)
        if trace is not None and name not in said:
            said.add(name)
            why = "named when the message was queued" if name else default_reason(doc, resolved)
            trace(1, f"profile {resolved.name} ({why})")
        return resolved

    return resolve


@dataclass
class SendOutcome:
    """What became of one message handed to `mailctl send` / `sendmail`."""

    id: int
    outcome: str  # sent | deferred | failed | expired | queued | held
    reply: str = ""
    server: str | None = None
    profile: str | None = None
    sending_enabled: bool = True
    failed_recipients: dict[str, str] = field(default_factory=dict)  # refused for good (5xx), the others sent
    # queued, but delivering it right away met this (a configuration problem, the outbox busy...);
    # only with submit(accept_once_queued=True); not serialised but as its message
    delivery_error: MailctlError | None = None

    @property
    def exit_code(self) -> ExitCode:
        """`mailctl send`'s exit status: 0 sent, or queued while sending is enabled; 75 deferred
        after a temporary failure, or queued because sending is disabled; 1 otherwise (rejected
        with 5xx, expired, or some recipients refused for good). sendmail(8) has its own rule:
        outbox.sendmail.sendmail_exit_code."""
        if self.failed_recipients:
            return ExitCode.PROBLEMS
        if self.outcome == "sent":
            return ExitCode.OK
        if self.outcome == "queued":
            return ExitCode.OK if self.sending_enabled else ExitCode.TEMPFAIL
        if self.outcome == "deferred":
            return ExitCode.TEMPFAIL
        return ExitCode.PROBLEMS

    def to_dict(self) -> dict[str, Any]:
        d = {"id": self.id, "outcome": self.outcome, "reply": self.reply, "server": self.server,
             "profile": self.profile, "sending_enabled": self.sending_enabled,
             "failed_recipients": dict(self.failed_recipients)}
        if self.delivery_error is not None:
            d["delivery_error"] = self.delivery_error.message
        return d


def submit(
    box: Outbox,
    doc: Any,
    secrets: Any,
    raw: bytes,
    sender: str,
    recipients: Sequence[str],
    profile: str | None,
    *,
    queue_only: bool = False,
    accept_once_queued: bool = False,
    trace: Callable[[int, str], None] | None = None,
) -> SendOutcome:
    """Queue a message, then (unless queue_only or sending is disabled) try it once right away.
    A temporary failure leaves it deferred in the outbox for the next flush; a configuration
    problem (no secret store, a missing setting) leaves it queued untouched and is raised with
    its remedy, or, with accept_once_queued (sendmail: the message is safe, exit 0), returned
    as the outcome's delivery_error, like any other error after the message was queued."""
    from mailctl.profiles.resolve import resolve_profile

    resolved = resolve_profile(doc, profile)  # fail early on an unknown profile
    # keep the name only when one was asked for: rows without a profile follow the default
    queue_id = box.enqueue(raw, sender, recipients, profile if profile is not None else None)
    policy = FlushPolicy.from_settings(doc.settings())
    if queue_only or not policy.sending_enabled:
        return SendOutcome(queue_id, "queued", profile=resolved.name, sending_enabled=policy.sending_enabled)
    try:
        report = profile_flush(box, doc, secrets, FlushOptions(ids=[queue_id], keep_results=True, purge=False),
                               trace=trace, explain_profiles=False)
    except MailctlError as exc:
        if not accept_once_queued:
            raise
        return SendOutcome(queue_id, "queued", profile=resolved.name, delivery_error=exc)
    result: MessageOutcome | None = next((r for r in report.results if r.id == queue_id), None)
    err: MailctlError | None = None
    if result is None and report.config_errors:  # left queued, untouched: our configuration, not the server
        err = next(iter(report.config_errors.values()))
    elif result is not None and result.outcome == "deferred" and isinstance(result.error, (AuthError, ConfigError)):
        # not the server's 4xx but our credentials: say so with their exit code
        err = result.error
    if err is not None:
        if accept_once_queued:
            return SendOutcome(queue_id, "queued" if result is None else result.outcome, profile=resolved.name,
                               delivery_error=err)
        err.hint = ((err.hint + "; ") if err.hint else "") + f"the message stays queued as {queue_id}; fix this, then run: mailctl queue flush"
        raise err
    if result is None:  # another flush took it first; it is in its hands now
        return SendOutcome(queue_id, "queued", profile=resolved.name)
    return SendOutcome(queue_id, result.outcome, result.reply, result.server, result.profile or resolved.name,
                       failed_recipients=dict(result.failed_recipients))
