"""The error tree. Every domain failure is a MailctlError carrying an exit code and an
optional hint; cli.py is the one place that turns them into stderr lines and exit codes."""

from __future__ import annotations

from enum import IntEnum
from typing import Any


class ExitCode(IntEnum):
    OK = 0
    PROBLEMS = 1  # a check ran and found problems; 5xx on test send; failed mail after flush
    USAGE = 2
    DATAERR = 65  # invalid message or field value
    NOINPUT = 66  # no such profile / file / queue entry
    UNAVAILABLE = 69  # cannot resolve, connect, TLS handshake failed
    TEMPFAIL = 75  # 4xx, DNS timeout, mail left deferred
    PROTOCOL = 76  # unexpected reply, STARTTLS required but not offered
    NOPERM = 77  # authentication failed, token expired/revoked, consent missing
    CONFIG = 78  # malformed TOML, missing required field, no usable secret store
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, as shells report it)


EXIT_CODE_MEANINGS: dict[ExitCode, str] = {
    ExitCode.OK: "success",
    ExitCode.PROBLEMS: "a check ran and found problems (dns checks, lint, test send rejected with 5xx, mail failed permanently in a flush)",
    ExitCode.USAGE: "usage error (bad flags or arguments)",
    ExitCode.DATAERR: "bad data: invalid message, invalid field value",
    ExitCode.NOINPUT: "no such profile, file or queue entry",
    ExitCode.UNAVAILABLE: "service unavailable: cannot resolve or connect, TLS handshake failed",
    ExitCode.TEMPFAIL: "temporary failure: 4xx reply, DNS timeout or SERVFAIL, messages left deferred after a flush",
    ExitCode.PROTOCOL: "protocol error: unexpected reply, STARTTLS required but not offered",
    ExitCode.NOPERM: "permission: authentication failed, token expired or revoked, consent missing",
    ExitCode.CONFIG: "configuration: malformed TOML, missing required field, no usable secret store",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C)",
}


class MailctlError(Exception):
    """Base of every error mailctl reports to a user.

    Besides the message, the hint and the exit code, an error may carry context that the
    code raising it knows and the code reporting it shows. Every field is optional (None when
    unknown) and set by whoever knows it, usually the transport (with_context())."""

    exit_code: ExitCode = ExitCode.PROBLEMS

    # --- optional context -------------------------------------------------------------
    stage: str | None = None  # protocol step: resolve, connect, tls, ehlo, auth, mail, rcpt, data, request...
    server: str | None = None  # host:port, URL or path that answered (or did not)
    failure_id: str | None = None  # a knowledge-base id set by mailctl itself (starttls-not-offered...)
    explanation: Any = None  # mailctl.knowledge.smtp.Explanation, when the knowledge base knows it
    code: int | None = None  # SMTP reply code
    enhanced: str | None = None  # RFC 3463 enhanced status code
    text: str | None = None  # the reply text without the codes
    permanent: bool | None = None  # retrying cannot help (5xx); None when it does not apply
    refused: dict[str, str] | None = None  # recipient -> reply, when recipients were refused
    http_status: int | None = None  # HTTP status of an API reply (Graph, EWS, Gmail API)
    error_code: str | None = None  # the provider's error code (ErrorAccessDenied, invalid_grant...)

    def __init__(self, message: str, *, hint: str | None = None, exit_code: ExitCode | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code

    def with_context(self, **context: Any) -> "MailctlError":
        """Set context fields (only the ones declared above) and return self, to raise."""
        for key, value in context.items():
            if key not in _CONTEXT_FIELDS:
                raise TypeError(f"MailctlError has no context field {key!r}")
            setattr(self, key, value)
        return self

    def context(self) -> dict[str, Any]:
        """The context fields that are set (not None or empty), for reports and --json."""
        out: dict[str, Any] = {}
        for key in _CONTEXT_FIELDS:
            value = getattr(self, key)
            if value not in (None, "", {}):
                out[key] = value
        return out

    def __str__(self) -> str:  # pragma: no cover - trivial
        return self.message


_CONTEXT_FIELDS = ("stage", "server", "failure_id", "explanation", "code", "enhanced", "text", "permanent",
                   "refused", "http_status", "error_code")


class UsageError(MailctlError):
    exit_code = ExitCode.USAGE


class ValidationError(MailctlError):
    """A field value or message is invalid (exit 65)."""

    exit_code = ExitCode.DATAERR

    def __init__(self, message: str, *, field: str | None = None, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.field = field


class NotFoundError(MailctlError):
    exit_code = ExitCode.NOINPUT


class UnavailableError(MailctlError):
    exit_code = ExitCode.UNAVAILABLE


class TemporaryFailure(MailctlError):
    exit_code = ExitCode.TEMPFAIL


class ProtocolError(MailctlError):
    exit_code = ExitCode.PROTOCOL


class AuthError(MailctlError):
    exit_code = ExitCode.NOPERM


class ConfigError(MailctlError):
    exit_code = ExitCode.CONFIG


class SecretStoreUnavailable(ConfigError):
    """No usable secret store (no keyring backend, locked keyring, no D-Bus session)."""


class ChecksFailed(MailctlError):
    """A check ran and found problems; output already rendered, exit 1."""

    exit_code = ExitCode.PROBLEMS


class DeliveryError(MailctlError):
    """A server (or API) refused or failed a message. `permanent` says whether retrying can
    help; code/enhanced/text carry the reply; `server` is host:port (or URL) that answered;
    `stage` names the protocol step (connect, tls, ehlo, auth, mail, rcpt, data, request...)."""

    def __init__(
        self,
        message: str,
        *,
        permanent: bool,
        code: int | None = None,
        enhanced: str | None = None,
        text: str | None = None,
        server: str | None = None,
        stage: str | None = None,
        hint: str | None = None,
        exit_code: ExitCode | None = None,
    ):
        if exit_code is None:
            exit_code = ExitCode.PROBLEMS if permanent else ExitCode.TEMPFAIL
        super().__init__(message, hint=hint, exit_code=exit_code)
        self.permanent = permanent
        self.code = code
        self.enhanced = enhanced
        self.text = text
        self.server = server
        self.stage = stage

    @property
    def reply(self) -> str:
        parts = [str(self.code) if self.code else "", self.enhanced or "", self.text or ""]
        return " ".join(p for p in parts if p)
