"""What the flush engine needs from the storage under it, and the records it gets back.

`FlushStore` is the whole interface: the calls `FlushRun` (flush.py) makes and nothing else.
`Outbox` (store.py, one SQLite file) implements it; a second backend (PostgreSQL is the next
one) implements the same methods with the same guarantees and the flush runs on it unchanged.
The guarantees are the part that matters:

* `claim_batch` is atomic: no two owners ever hold the same row, and a row whose lease ran out
  (its flush died) can be claimed again, with an 'interrupted' entry in its attempt log.
* `record_attempt` is one committed write: when it returns, the result survives the death of
  the flush (the engine relies on this to repeat at most one message per connection and
  kill). It only changes a row that `owner` still holds. `record_attempts` commits several
  results in one write, all or none, with the same guarantee for each.
* Every other call is its own short transaction; none holds a lock between calls.

Times are the store's own clock (`clock`), in unix seconds; the flush reads the time there too,
so tests drive both with one fake clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol, Sequence, runtime_checkable


@dataclass
class ClaimedMessage:
    """A message this flush holds the lease on. `raw` is loaded with the claim."""

    id: int
    profile: str | None
    sender: str
    recipients: list[str]
    raw: bytes
    attempts: int
    created_at: float
    age_base: float
    message_id: str | None = None
    reclaimed: bool = False  # a previous flush died while holding it


@dataclass
class AttemptResult:
    """One delivery result for `record_attempts` (the arguments of `record_attempt`)."""

    claim: ClaimedMessage
    outcome: str  # sent | deferred | failed | expired
    reply: str = ""
    server: str | None = None
    profile: str | None = None
    duration: float | None = None
    next_attempt_at: float | None = None
    recipients: list[str] | None = None  # narrow the envelope to these (still to deliver)
    failed_recipients: dict[str, str] = field(default_factory=dict)  # add to those refused for good


@dataclass
class MessageInfo:
    id: int
    state: str
    created_at: float
    updated_at: float
    profile: str | None
    sender: str
    recipients: list[str]
    message_id: str | None
    subject: str | None
    size: int
    attempts: int
    next_attempt_at: float | None
    last_attempt_at: float | None
    last_reply: str | None
    last_server: str | None
    done_at: float | None
    attempt_log: list[dict[str, Any]] = field(default_factory=list)
    raw: bytes | None = None
    failed_recipients: dict[str, str] = field(default_factory=dict)  # refused for good (5xx): recipient -> reply

    @property
    def partially_failed(self) -> bool:
        """Some recipients refused for good while the message went out to the others (or still
        waits for them)."""
        return bool(self.failed_recipients) and self.state != "failed"

    @property
    def display_state(self) -> str:
        """The state for a table: `sent, 1 failed` for a partly failed message."""
        if self.partially_failed:
            return f"{self.state}, {len(self.failed_recipients)} failed"
        return self.state

    def to_dict(self) -> dict[str, Any]:
        d = {
            "id": self.id,
            "state": self.state,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
            "profile": self.profile,
            "sender": self.sender,
            "recipients": list(self.recipients),
            "message_id": self.message_id,
            "subject": self.subject,
            "size": self.size,
            "attempts": self.attempts,
            "next_attempt_at": _iso(self.next_attempt_at) if self.state in ("queued", "deferred") else None,
            "last_attempt_at": _iso(self.last_attempt_at),
            "last_reply": self.last_reply,
            "last_server": self.last_server,
            "done_at": _iso(self.done_at),
            "partially_failed": self.partially_failed,
            "failed_recipients": dict(self.failed_recipients),
        }
        if self.attempt_log:
            d["attempt_log"] = self.attempt_log
        return d


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


@runtime_checkable
class FlushStore(Protocol):
    """The storage calls of one flush (see the module docstring for the guarantees).

    `profiles`, where taken, restricts a call to rows queued for those profile names; None in
    the list stands for rows queued without a profile (the default profile's), and
    `profiles=None` means every row."""

    clock: Callable[[], float]

    # before the run: what is due, what is overdue, what the rate limits already spent
    def count_due(self, *, profiles: Sequence[str | None] | None = None) -> int:
        """Messages a claim would take now."""
        ...

    def due_messages(self, *, profiles: Sequence[str | None] | None = None,
                     limit: int | None = None) -> Iterator[MessageInfo]:
        """Those messages, in the order a claim takes them (for --dry-run); changes nothing."""
        ...

    def expire_overdue(self, max_age_seconds: float, *, profiles: Sequence[str | None] | None = None,
                       skip_due: bool = False) -> list[int]:
        """Deferred messages whose retry clock (age_base) started more than max_age ago become
        expired, with an 'expired' attempt logged; returns their ids. With skip_due, only the
        ones not due yet: the flush expires a due one itself once it knows that the message's
        profile works (a configuration problem must not run the expiry clock out)."""
        ...

    def sent_since(self, since: float, profile: str | None = None, *, limit: int = 1000) -> list[float]:
        """Times (ascending) of up to `limit` recent attempts that reached a server at or after
        `since`, all profiles' or one's: a rate limit holds across flushes."""
        ...

    # the run: claim, deliver, commit each result, give back what was not tried
    def claim_batch(self, owner: str, limit: int, lease_seconds: float, *,
                    profiles: Sequence[str | None] | None = None,
                    ids: Sequence[int] | None = None) -> list[ClaimedMessage]:
        """Atomically take up to `limit` due messages (queued or deferred and due, or sending
        with an expired lease) for `owner`, oldest due first, leased for `lease_seconds`."""
        ...

    def record_attempt(self, claim: ClaimedMessage, owner: str, outcome: str, *, reply: str = "",
                       server: str | None = None, profile: str | None = None, duration: float | None = None,
                       next_attempt_at: float | None = None, recipients: Sequence[str] | None = None,
                       renew_lease: float | None = None, failed_recipients: Mapping[str, str] | None = None) -> bool:
        """Commit one delivery result (sent | deferred | failed | expired) and log the attempt.
        `recipients` narrows the envelope to those still to deliver; `failed_recipients`
        (recipient -> reply) adds to the message's recipients refused for good; `renew_lease`
        extends the lease of the owner's other claimed rows in the same commit. False if the
        row was no longer the owner's."""
        ...

    def record_attempts(self, owner: str, results: Sequence[AttemptResult], *,
                        renew_lease: float | None = None) -> list[bool]:
        """Commit several results in ONE write (group commit: the results of several
        connections that came in while the previous commit ran), with the same guarantee as
        record_attempt for each; per result, whether the row was still the owner's."""
        ...

    def release_claims(self, owner: str, ids: Iterable[int] | None = None) -> int:
        """Give back the owner's claimed rows that were not tried (all of them, or `ids`)."""
        ...

    # after the run
    def purge(self, older_than_seconds: float, states: Sequence[str] = ...) -> int:
        """Delete finished messages (sent, failed, expired) finished more than that long ago."""
        ...

    def count_by_state(self, *, profiles: Sequence[str | None] | None = None) -> dict[str, int]:
        """Message counts for every state (zero included)."""
        ...
