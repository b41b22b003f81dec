"""The Transport protocol and the name -> class registry."""

from __future__ import annotations

import base64
import importlib
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Generator, Protocol, Union

from mailctl.errors import ConfigError, MailctlError, UsageError


@dataclass
class SendResult:
    server: str  # host:port, URL or path that took the message
    reply: str = ""  # the final reply (e.g. "250 2.0.0 Ok: queued as 4Xyz")
    queue_id: str | None = None
    refused: dict[str, str] = field(default_factory=dict)  # recipient -> reply, for partial refusals
    used_alternate: bool = False
    duration: float = 0.0
    location: str | None = None  # file transport: where the message was written

    def to_dict(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "reply": self.reply,
            "queue_id": self.queue_id,
            "refused": dict(self.refused),
            "used_alternate": self.used_alternate,
            "duration": round(self.duration, 6),
            "location": self.location,
        }


def _wire_bytes(value: str) -> bytes:
    """The bytes a secret goes out as, for its base64 form: UTF-8, or for text read from bytes
    that were not UTF-8 (lone surrogates) those bytes themselves; masking never fails."""
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        try:
            return value.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            return value.encode("utf-8", "surrogatepass")


class Redactor:
    """The one place secrets are masked: a transport adds every secret it sends (password,
    token, proxy password, the AUTH PLAIN / XOAUTH2 / OAUTHBEARER payloads) and passes every
    server text through redact() before it is shown, logged or stored (errors, stage details,
    SendResult.reply, the transcript). Masked: each value as is, its base64 with and without
    padding, and an echo of an encoded form cut short (its first ECHO characters or more)."""

    MARK = "[redacted]"
    MIN_LENGTH = 3  # shorter values are not masked: they would mask ordinary words
    ECHO = 16  # a truncated echo of an encoded form is masked from this many characters on

    def __init__(self) -> None:
        self._forms: list[str] = []  # longest first, so a form never masks part of a longer one
        self._encoded: list[str] = []  # base64 forms, for truncated echoes
        self._probe: re.Pattern[str] | None = None  # any of them: one scan when there is nothing to mask

    def __bool__(self) -> bool:
        return bool(self._forms)

    def add(self, value: str | None, *, plain: bool = True) -> None:
        """Mask `value` and its base64 forms; plain=False: only the base64 forms (a value sent
        encoded that is no secret by itself, like the user name of AUTH LOGIN)."""
        if not value:
            return
        b64 = base64.b64encode(_wire_bytes(value)).decode("ascii")
        forms = [b64, b64.rstrip("=")] + ([value] if plain else [])
        new = [f for f in forms if len(f) >= self.MIN_LENGTH and f not in self._forms]
        if new:
            self._forms = sorted(set(self._forms).union(new), key=len, reverse=True)
        if len(b64) >= self.ECHO and b64 not in self._encoded:
            self._encoded.append(b64)
        self._probe = None  # compiled when next needed: AUTH adds several values in a row

    def redact(self, text: str) -> str:
        if not self._forms or not text:
            return text
        if self._probe is None:
            self._probe = re.compile("|".join(re.escape(f) for f in self._forms + [e[: self.ECHO] for e in self._encoded]))
        if self._probe.search(text) is None:
            return text
        for form in self._forms:
            if form in text:
                text = text.replace(form, self.MARK)
        for form in self._encoded:
            head = form[: self.ECHO]
            start = text.find(head)
            while start >= 0:
                end, i = start + self.ECHO, self.ECHO
                while end < len(text) and i < len(form) and text[end] == form[i]:
                    end, i = end + 1, i + 1
                text = text[:start] + self.MARK + text[end:]
                start = text.find(head, start + len(self.MARK))
        return text


class TranscriptRecorder:
    """Collects a conversation: ("C"|"S"|"*", text, seconds since start). AUTH payloads are
    replaced by a marker; known secrets are masked by the recorder's Redactor (which the
    transport shares, so its errors and results are masked alike)."""

    REDACTED = Redactor.MARK

    def __init__(self, redactor: Redactor | None = None) -> None:
        self.lines: list[tuple[str, str, float]] = []
        self._start = time.perf_counter()
        self.redactor = redactor if redactor is not None else Redactor()

    def add_secret(self, value: str | None) -> None:
        self.redactor.add(value)

    def redact(self, text: str) -> str:
        return self.redactor.redact(text)

    def add(self, direction: str, text: str) -> None:
        self.lines.append((direction, self.redact(text), time.perf_counter() - self._start))

    def to_list(self) -> list[dict[str, Any]]:
        return [{"dir": d, "line": t, "t": round(s, 6)} for d, t, s in self.lines]

    def render(self) -> list[str]:
        return [f"{d}: {t}" for d, t, _ in self.lines]


# --- stages ------------------------------------------------------------------------------
# A transport that can be diagnosed declares its session as a plan of named stages: a
# generator of Stage objects. Whoever drives the plan runs each stage's `run` (the transport's
# own handshake() untimed; `mailctl test` timed, stopping at --quit-after) and sends the result
# back into the generator; a stage's failure is thrown back into it, so the transport alone
# decides what happens next (fail over to the alternate server, or give up).
@dataclass
class StageInfo:
    """What a finished stage says: a one-line detail, structured data for --json, and facts
    for the whole report (tls, certificates, capabilities, result)."""

    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)
    status: str = "ok"


@dataclass
class Stage:
    name: str
    run: Callable[[], Any] | None = None  # None: the stage is skipped, `skipped` says why
    describe: Callable[[Any], StageInfo] | None = None
    server: str = ""
    skipped: str = ""
    # the --quit-after names that stop after this stage (None: its own name)
    stop_names: tuple[str, ...] | None = None
    on_failure: Callable[[MailctlError], dict[str, Any]] | None = None  # report facts after a failure
    alternate: bool = False  # the server is the profile's alternate
    explain: Callable[[MailctlError], Any] | None = None  # the transport's own explanation of a failure
    detail: str = ""  # what the stage was doing, shown when it fails
    hidden: bool = False  # shown only when it fails (set-up work that is part of the next stage)

    def stops_at(self, name: str | None) -> bool:
        return name is not None and name in (self.stop_names if self.stop_names is not None else (self.name,))


@dataclass
class Failover:
    """Yielded by a plan after a failed stage when it moves on to another server."""

    detail: str


@dataclass
class Checkpoint:
    """Yielded by a plan where --quit-after names that have no stage of their own stop (an
    HTTP transport stops before its request for the SMTP stage names)."""

    server: str
    stop_names: tuple[str, ...]
    alternate: bool = False

    def stops_at(self, name: str | None) -> bool:
        return name is not None and name in self.stop_names


@dataclass
class Reached:
    """Yielded by a plan once the connection stages of a server are done."""

    server: str
    alternate: bool = False


Plan = Generator[Union[Stage, Failover, Checkpoint, Reached], Any, None]


def drive(plan: Plan, call: Callable[[Stage], Any], *, on_event: Callable[[Any], None] | None = None,
          stop_after: str | None = None) -> Stage | Checkpoint | None:
    """Run a plan: call(stage) runs one stage and returns its value (sent back into the plan);
    a MailctlError it raises is thrown back into the plan. Events (Failover, Reached) go to
    on_event. Stops at a Checkpoint for `stop_after`, or after the first stage that
    stops_at(`stop_after`), and returns it; returns None when the plan ran to its end. An error the plan does not handle propagates."""
    try:
        step = next(plan)
        while True:
            if isinstance(step, Checkpoint) and step.stops_at(stop_after):
                plan.close()
                return step
            if not isinstance(step, Stage):
                if on_event is not None:
                    on_event(step)
                step = next(plan)
                continue
            try:
                value = call(step)
            except MailctlError as err:
                step = plan.throw(err)
                continue
            if step.stops_at(stop_after):
                plan.close()
                return step
            step = plan.send(value)
    except StopIteration:
        return None


def run_untimed(stage: Stage) -> Any:
    """call() for drive() when nothing is measured: run the stage (skipped ones do nothing)."""
    return stage.run() if stage.run is not None else None


class Transport(Protocol):
    """Opened once, reused for many messages (the outbox sends a batch over one connection).

    send() raises mailctl.errors.DeliveryError (permanent or temporary), AuthError,
    UnavailableError (cannot reach any server), ProtocolError, ConfigError."""

    name: str

    def open(self) -> None: ...

    def send(self, raw: bytes, sender: str, recipients: list[str]) -> SendResult: ...

    def close(self) -> None: ...

    def __enter__(self) -> "Transport": ...

    def __exit__(self, *exc: object) -> None: ...


class StagedTransport(Transport, Protocol):
    """A transport `mailctl test connect/send` can diagnose. Optional: flush and send need only
    Transport; a registered transport with these methods gets `test` for free.

    target: what the profile points at (host:port, URL, directory), for the report's header.
    probe_settings(): the settings that shape the session, for the report.
    stages(message): the plan (see drive()); with a message, it is sent too.
    closing_stage(): the stage that ends the session (QUIT), or None when nothing is open.
    Optional class flags: records_transcript (the constructor takes recorder=, a
    TranscriptRecorder), has_token_stage (--quit-after token is meaningful)."""

    target: str

    def probe_settings(self) -> dict[str, Any]: ...

    def stages(self, message: Any = None) -> Plan: ...

    def closing_stage(self) -> Stage | None: ...


# name -> "module:Class"; modules load only when a profile of that type is used.
_REGISTRY: dict[str, str] = {
    "smtp": "mailctl.transports.smtp:SmtpTransport",
    "file": "mailctl.transports.file:FileTransport",
    "graph": "mailctl.transports.graph:GraphTransport",
    "ews": "mailctl.transports.ews:EwsTransport",
    "gmail-api": "mailctl.transports.gmail_api:GmailApiTransport",
    "lmtp": "mailctl.transports.lmtp:LmtpTransport",
}


def register_transport(name: str, target: str) -> None:
    _REGISTRY[name] = target


def get_transport_class(name: str):
    target = _REGISTRY.get(name)
    if target is None:
        raise ConfigError(f"unknown transport type {name!r}", hint=f"type must be one of: {', '.join(_REGISTRY)}")
    module_name, _, cls_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise ConfigError(f"transport {name!r} is not available in this version of mailctl") from None
        raise
    return getattr(module, cls_name)


def open_transport(profile, secrets, **options: Any) -> Transport:
    """A transport instance for a ResolvedProfile (not yet connected; use it as a context manager)."""
    cls = get_transport_class(profile.type)
    return cls(profile, secrets, **options)


def prefetch_tls(profile) -> None:
    """A one-shot command that is about to connect with this profile calls this as soon as
    it has resolved it: an smtp or lmtp profile that verifies its server gets its TLS context
    (the system CA store) built in the background meanwhile (mailctl.net.tls.prefetch_context).
    Best effort: nothing changes but when the store is read."""
    values = getattr(profile, "values", None) or {}
    default = "none" if profile.type == "lmtp" else "starttls"  # as LmtpTransport / SmtpTransport read it
    if profile.type not in ("smtp", "lmtp") or (values.get("security") or default) == "none":
        return
    from mailctl.net.tls import prefetch_context

    prefetch_context(values, profile.name)


def save_draft(profile, secrets, raw: bytes, sender: str, recipients: list[str]) -> SendResult:
    """Create the message unsent in the profile's mailbox (Drafts), for transports that have a
    mailbox (`save_draft`); any other type is a usage error naming the types that can."""
    cls = get_transport_class(profile.type)
    if not hasattr(cls, "save_draft"):
        able = [name for name in _REGISTRY if name != profile.type and _has_drafts(name)]
        raise UsageError(f"--draft: profile {profile.name!r} is type {profile.type!r}, which has no mailbox to keep a draft in",
                         hint=f"use a profile of type {' or '.join(able)}, or send without --draft")
    with cls(profile, secrets) as transport:
        return transport.save_draft(raw, sender, recipients)


def _has_drafts(name: str) -> bool:
    try:
        return hasattr(get_transport_class(name), "save_draft")
    except ConfigError:
        return False
