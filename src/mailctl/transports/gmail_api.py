"""Gmail API transport (users.messages.send), for Google profiles that cannot use SMTP.

The exact message mailctl built is uploaded as `message/rfc822` to
POST {endpoint}/upload/gmail/v1/users/me/messages/send?uploadType=media (up to 35 MB; the
JSON `raw` form is limited to about 5 MB). Scope `https://www.googleapis.com/auth/gmail.send`
(narrower than SMTP's https://mail.google.com/); tokens come from `mailctl auth login`
(loopback / paste flow) or a Workspace service account. Gmail keeps the copy in Sent Mail and
strips the Bcc header it reads recipients from."""

from __future__ import annotations

import time
from typing import Any, Callable

from mailctl.errors import AuthError, DeliveryError, ExitCode, MailctlError
from mailctl.net.http import RetryPolicy, request
from mailctl.transports.base import SendResult
from mailctl.transports.graph import with_envelope_recipients
from mailctl.transports.http import SessionTransport, bearer_token

GMAIL_ENDPOINT = "https://gmail.googleapis.com"
MAX_MESSAGE = 35 * 1024 * 1024

# reason (errors[0].reason) or status -> (exit code, permanent, hint)
_GOOGLE_ERRORS: dict[str, tuple[ExitCode, bool, str]] = {
    "insufficientPermissions": (ExitCode.NOPERM, True, "the token lacks the gmail.send scope: run mailctl auth login PROFILE again"),
    "PERMISSION_DENIED": (ExitCode.NOPERM, True, "the token lacks the gmail.send scope, or the Gmail API is not enabled for the project"),
    "UNAUTHENTICATED": (ExitCode.NOPERM, True, "the token was rejected: run mailctl auth login PROFILE"),
    "authError": (ExitCode.NOPERM, True, "the token was rejected: run mailctl auth login PROFILE"),
    "accessNotConfigured": (ExitCode.CONFIG, True, "enable the Gmail API for the Google Cloud project of the OAuth client"),
    "SERVICE_DISABLED": (ExitCode.CONFIG, True, "enable the Gmail API for the Google Cloud project of the OAuth client"),
    "failedPrecondition": (ExitCode.CONFIG, True, "the account has no Gmail mailbox (or Gmail is disabled for it)"),
    "rateLimitExceeded": (ExitCode.TEMPFAIL, False, "Gmail throttled the sender; the outbox retries later"),
    "userRateLimitExceeded": (ExitCode.TEMPFAIL, False, "Gmail throttled the sender; the outbox retries later"),
    "RESOURCE_EXHAUSTED": (ExitCode.TEMPFAIL, False, "Gmail sending limit reached; the outbox retries later"),
    "invalidArgument": (ExitCode.PROBLEMS, True, "Gmail refused the message (often an invalid To/Cc/Bcc header)"),
    "INVALID_ARGUMENT": (ExitCode.PROBLEMS, True, "Gmail refused the message (often an invalid To/Cc/Bcc header)"),
}


class GmailApiTransport(SessionTransport):
    name = "gmail-api"

    def __init__(self, profile, secrets, *, endpoint: str | None = None, retry: RetryPolicy | None = None,
                 trace: Callable[[str, str, float], None] | None = None, **options: Any):
        self.profile = profile
        self.secrets = secrets
        self.endpoint = (endpoint or options.get("gmail_endpoint") or GMAIL_ENDPOINT).rstrip("/")
        self.retry = retry or RetryPolicy()
        self.trace = trace
        self.session = None
        self._token: str | None = None
        self._static = False

    def _fetch_token(self, force_refresh: bool = False) -> None:
        self._token, self._static = bearer_token(self.profile, self.secrets, force_refresh=force_refresh)

    def send(self, raw: bytes, sender: str, recipients: list[str]) -> SendResult:
        self.open()
        raw = with_envelope_recipients(raw, recipients)
        if len(raw) > MAX_MESSAGE:
            from mailctl.errors import ValidationError

            raise ValidationError(f"message is {len(raw)} bytes; the Gmail API accepts at most {MAX_MESSAGE}")
        url = f"{self.endpoint}/upload/gmail/v1/users/me/messages/send"
        started = time.monotonic()
        refreshed = False
        while True:
            response = request(self.session, "POST", url, retry=self.retry, params={"uploadType": "media"}, data=raw,
                               headers={"Authorization": f"Bearer {self._token}", "Content-Type": "message/rfc822"})
            if response.status_code == 401 and not refreshed and not self._static:
                refreshed = True
                self._fetch_token(force_refresh=True)
                continue
            break
        if response.status_code >= 400:
            raise gmail_error(response, server=self.endpoint, profile_name=self.profile.name)
        try:
            data = response.json()
        except ValueError:
            data = {}
        return SendResult(server=self.endpoint, reply=f"{response.status_code} OK id {data.get('id', '?')}",
                          queue_id=data.get("id"), duration=time.monotonic() - started)


def gmail_error(response, *, server: str, profile_name: str = "PROFILE") -> MailctlError:
    try:
        err = response.json().get("error") or {}
    except (ValueError, AttributeError):
        err = {}
    reasons = [e.get("reason") for e in err.get("errors") or [] if isinstance(e, dict)]
    status_text = err.get("status") or ""
    text = str(err.get("message") or response.text or "")[:400].strip()
    key = next((r for r in reasons if r in _GOOGLE_ERRORS), None) or (status_text if status_text in _GOOGLE_ERRORS else None)
    code = key or status_text or f"HTTP {response.status_code}"
    message = f"Gmail API send failed: {response.status_code} {code}: {text}"
    if key:
        exit_code, permanent, hint = _GOOGLE_ERRORS[key]
    elif response.status_code == 401:
        exit_code, permanent, hint = ExitCode.NOPERM, True, "run mailctl auth login PROFILE"
    elif response.status_code in (429, 500, 502, 503, 504):
        exit_code, permanent, hint = ExitCode.TEMPFAIL, False, "try again later; the outbox retries"
    else:
        exit_code, permanent, hint = ExitCode.PROBLEMS, True, None
    hint = hint.replace("PROFILE", profile_name) if hint else None
    if exit_code == ExitCode.NOPERM and response.status_code in (401, 403) and key not in ("failedPrecondition",):
        out: MailctlError = AuthError(message, hint=hint)
    else:
        out = DeliveryError(message, permanent=permanent, code=response.status_code, enhanced=code, text=text,
                            server=server, stage="messages.send", hint=hint, exit_code=exit_code)
    out.http_status = response.status_code
    out.error_code = code
    return out
