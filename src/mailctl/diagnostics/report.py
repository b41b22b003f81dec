"""What a probe reports: every stage with its result, the TLS session, the certificates, the
server's capabilities, the transcript, the explanation of a failure and the exit code.
Plain data, shared by the probe runner (diagnostics.probe) and the HTTP probe; --json is
to_dict()."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mailctl.errors import MailctlError

if TYPE_CHECKING:  # only failures carry one: mailctl.knowledge.smtp loads when a probe explains a failure
    from mailctl.knowledge.smtp import Explanation

# The reply fields of an error that a failed stage shows in its data.
REPLY_FIELDS = ("http_status", "error_code", "code", "enhanced", "text", "failure_id", "refused")


@dataclass
class ProbeMessage:
    raw: bytes
    sender: str
    recipients: list[str]


@dataclass
class StageResult:
    name: str
    status: str  # ok | failed | skipped
    duration: float = 0.0
    server: str = ""
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    explanation: Explanation | None = None
    exit_code: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.name,
            "status": self.status,
            "duration_ms": round(self.duration * 1000, 3),
            "server": self.server,
            "detail": self.detail,
            "data": self.data,
            "error": self.error,
            "explanation": self.explanation.to_dict() if self.explanation else None,
            "exit_code": self.exit_code,
        }


@dataclass
class ProbeReport:
    profile: str
    type: str
    target: str
    settings: dict[str, Any] = field(default_factory=dict)
    stages: list[StageResult] = field(default_factory=list)
    tls: dict[str, Any] | None = None
    certificates: list[dict[str, Any]] = field(default_factory=list)
    capabilities: dict[str, Any] | None = None
    # where the connection came from: local address, proxy, the address the server saw (EHLO)
    client: dict[str, Any] | None = None
    transcript: list[dict[str, Any]] | None = None
    result: dict[str, Any] | None = None
    server: str | None = None  # the server that answered (primary or alternate)
    used_alternate: bool = False
    exit_code: int = 0
    error: str | None = None
    hint: str | None = None
    duration: float = 0.0

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @property
    def failed_stage(self) -> StageResult | None:
        failed = [s for s in self.stages if s.status == "failed"]
        return failed[-1] if failed else None

    def to_dict(self, *, transcript: bool = True) -> dict[str, Any]:
        failed = self.failed_stage
        return {
            "profile": self.profile,
            "type": self.type,
            "target": self.target,
            "settings": self.settings,
            "ok": self.ok,
            "exit_code": self.exit_code,
            "failed_stage": failed.name if failed else None,
            "error": self.error,
            "hint": self.hint,
            "explanation": failed.explanation.to_dict() if failed and failed.explanation else None,
            "server": self.server,
            "used_alternate": self.used_alternate,
            "duration_ms": round(self.duration * 1000, 3),
            "stages": [s.to_dict() for s in self.stages],
            "tls": self.tls,
            "certificates": self.certificates,
            "capabilities": self.capabilities,
            "client": self.client,
            "result": self.result,
            "transcript": self.transcript if transcript else None,
        }


def reply_data(err: MailctlError) -> dict[str, Any]:
    """The reply fields an error carries (HTTP status and provider error code, SMTP code,
    enhanced code and text, failure id, refused recipients), for a failed stage's data."""
    context = err.context()
    return {key: context[key] for key in REPLY_FIELDS if key in context}
