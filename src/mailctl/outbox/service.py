"""The outbox wired to profiles and transports: what the `queue flush`, `send` and `sendmail`
commands call. Kept apart from flush.py so the engine stays testable with fakes."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from mailctl.errors import AuthError, ConfigError, ExitCode
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
) -> FlushReport:
    """Flush with the settings and profiles of a loaded profiles document."""
    from mailctl.profiles.resolve import resolve_profile
    from mailctl.transports import open_transport

    return flush(
        box,
        policy=FlushPolicy.from_settings(doc.settings()),
        resolve=lambda name: resolve_profile(doc, name),
        open_transport=lambda profile: open_transport(profile, secrets),
        options=options,
        sleep=sleep,
        progress=progress,
    )


@dataclass
class SendOutcome:
    """What became of one message handed to `mailctl send` / `sendmail`."""

    id: int
    outcome: str  # sent | deferred | failed | expired | queued | held
    reply: str = ""
    server: str | None = None
    profile: str | None = None
    sending_enabled: bool = True

    @property
    def exit_code(self) -> ExitCode:
        """`mailctl send`'s exit status: 0 sent, or queued while sending is enabled; 75 deferred
        after a temporary failure, or queued because sending is disabled; 1 otherwise (rejected
        with 5xx, expired). sendmail(8) has its own rule: outbox.sendmail.sendmail_exit_code."""
        if self.outcome == "sent":
            return ExitCode.OK
        if self.outcome == "queued":
            return ExitCode.OK if self.sending_enabled else ExitCode.TEMPFAIL
        if self.outcome == "deferred":
            return ExitCode.TEMPFAIL
        return ExitCode.PROBLEMS

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "outcome": self.outcome, "reply": self.reply, "server": self.server,
                "profile": self.profile, "sending_enabled": self.sending_enabled}


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
) -> SendOutcome:
    """Queue a message, then (unless queue_only or sending is disabled) try it once right away.
    A temporary failure leaves it deferred in the outbox for the next flush."""
    from mailctl.profiles.resolve import resolve_profile

    resolved = resolve_profile(doc, profile)  # fail early on an unknown profile
    # keep the name only when one was asked for: rows without a profile follow the default
    queue_id = box.enqueue(raw, sender, recipients, profile if profile is not None else None)
    policy = FlushPolicy.from_settings(doc.settings())
    if queue_only or not policy.sending_enabled:
        return SendOutcome(queue_id, "queued", profile=resolved.name, sending_enabled=policy.sending_enabled)
    report = profile_flush(box, doc, secrets, FlushOptions(ids=[queue_id], keep_results=True, purge=False))
    result: MessageOutcome | None = next((r for r in report.results if r.id == queue_id), None)
    if result is None:  # another flush took it first; it is in its hands now
        return SendOutcome(queue_id, "queued", profile=resolved.name)
    if result.outcome == "deferred" and isinstance(result.error, (AuthError, ConfigError)):
        # not the server's 4xx but our configuration or credentials: say so with their exit code
        err = result.error
        err.hint = ((err.hint + "; ") if err.hint else "") + f"the message stays queued as {queue_id}; fix this, then run: mailctl queue flush"
        raise err
    return SendOutcome(queue_id, result.outcome, result.reply, result.server, result.profile or resolved.name)
