"""Findings (severity, stable id, message, fix), per-check results and the report a command
renders as a table, JSON or JUnit XML. The exit code is decided here, once."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from mailctl.errors import ExitCode


class Severity(str, Enum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


@dataclass(frozen=True)
class Finding:
    severity: Severity
    id: str  # stable: spf.too-many-lookups, dkim.weak-key, dmarc.policy-none, ...
    message: str
    fix: str = ""
    subject: str = ""  # the name or term concerned (a selector, an include target, a rua URI)
    temporary: bool = False  # a DNS timeout or SERVFAIL: the check could not complete

    def to_dict(self) -> dict[str, Any]:
        d = {"severity": self.severity.value, "id": self.id, "message": self.message, "fix": self.fix}
        if self.subject:
            d["subject"] = self.subject
        if self.temporary:
            d["temporary"] = True
        return d


def error(id: str, message: str, fix: str = "", subject: str = "") -> Finding:
    return Finding(Severity.ERROR, id, message, fix, subject)


def warning(id: str, message: str, fix: str = "", subject: str = "") -> Finding:
    return Finding(Severity.WARNING, id, message, fix, subject)


def info(id: str, message: str, fix: str = "", subject: str = "") -> Finding:
    return Finding(Severity.INFO, id, message, fix, subject)


def dns_failure(lookup, context: str) -> Finding:
    """A timeout or SERVFAIL: the answer is unknown, so the run exits 75, not 0 or 1."""
    kind = "timeout" if lookup.status == "timeout" else "servfail"
    what = "timed out" if kind == "timeout" else "failed (SERVFAIL)"
    return Finding(
        Severity.ERROR,
        f"dns.{kind}",
        f"{context}: DNS query {lookup.rdtype} {lookup.name} {what}",
        "check that the nameserver answers for this name, retry later or raise --timeout",
        lookup.name,
        temporary=True,
    )


@dataclass
class CheckResult:
    check: str  # spf | dkim | dmarc | mx | starttls | mta-sts | tls-rpt | bimi | dnssec | ns | profile
    domain: str
    findings: list[Finding] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def add(self, finding: Finding) -> None:
        if finding not in self.findings:
            self.findings.append(finding)

    def count(self, severity: Severity) -> int:
        return sum(1 for f in self.findings if f.severity is severity)

    @property
    def temporary(self) -> bool:
        return any(f.temporary for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "domain": self.domain,
            "status": self.status(),
            "findings": [f.to_dict() for f in self.findings],
            **self.data,
        }

    def status(self, strict: bool = False) -> str:
        if self.temporary:
            return "temperror"
        if self.count(Severity.ERROR) or (strict and self.count(Severity.WARNING)):
            return "fail"
        return "warn" if self.count(Severity.WARNING) else "pass"


@dataclass
class Report:
    domain: str
    checks: list[CheckResult] = field(default_factory=list)
    strict: bool = False
    nameservers: list[str] = field(default_factory=list)
    queries: int = 0
    elapsed: float = 0.0

    @property
    def findings(self) -> list[Finding]:
        return [f for c in self.checks for f in c.findings]

    def counts(self) -> dict[str, int]:
        return {s.value: sum(c.count(s) for c in self.checks) for s in Severity}

    @property
    def temporary(self) -> bool:
        return any(c.temporary for c in self.checks)

    def exit_code(self) -> ExitCode:
        if self.temporary:
            return ExitCode.TEMPFAIL
        counts = self.counts()
        if counts["error"] or (self.strict and counts["warning"]):
            return ExitCode.PROBLEMS
        return ExitCode.OK

    def summary(self) -> str:
        c = self.counts()
        return f"{c['error']} error(s), {c['warning']} warning(s), {c['info']} info"

    def to_dict(self) -> dict[str, Any]:
        return {
            "domain": self.domain,
            "ok": self.exit_code() == ExitCode.OK,
            "exit_code": int(self.exit_code()),
            "strict": self.strict,
            "counts": self.counts(),
            "checks": {c.check: c.to_dict() for c in self.checks},
            "nameservers": self.nameservers,
            "queries": self.queries,
            "elapsed_seconds": round(self.elapsed, 4),
        }
