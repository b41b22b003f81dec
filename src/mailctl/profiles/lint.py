"""`profile lint`: configuration problems found without touching the network."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mailctl.errors import ConfigError, MailctlError, SecretStoreUnavailable
from mailctl.profiles.resolve import check_complete, primary_secret_kind, resolve_profile
from mailctl.profiles.presets import ews_warnings


@dataclass
class LintFinding:
    profile: str
    severity: str  # error | warning | info
    id: str
    message: str
    fix: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"profile": self.profile, "severity": self.severity, "id": self.id, "message": self.message, "fix": self.fix}


def lint_profile(doc, name: str, secrets=None) -> list[LintFinding]:
    out: list[LintFinding] = []

    def add(severity: str, id_: str, message: str, fix: str = "") -> None:
        out.append(LintFinding(name, severity, id_, message, fix))

    try:
        p = resolve_profile(doc, name)
    except MailctlError as exc:
        add("error", "profile.unresolvable", exc.message, exc.hint or "")
        return out
    try:
        check_complete(p)
    except ConfigError as exc:
        add("error", "profile.incomplete", exc.message, exc.hint or "")
    v = p.values
    edit = f"mailctl profile edit {name}"
    if p.type == "smtp":
        security, port, auth = v.get("security"), v.get("port"), v.get("auth")
        if security == "starttls" and port == 465:
            add("warning", "smtp.port-security-mismatch", "port 465 usually speaks implicit TLS, but security = starttls", f"{edit} --security tls")
        if security == "tls" and port in (25, 587):
            add("warning", "smtp.port-security-mismatch", f"port {port} usually speaks STARTTLS, but security = tls", f"{edit} --security starttls")
        if security == "none" and auth not in ("none", None):
            if v.get("allow_insecure_auth"):
                add("warning", "smtp.insecure-auth", "credentials will cross the network unencrypted (allow_insecure_auth = true)", f"{edit} --security starttls")
            else:
                add("error", "smtp.auth-without-tls", "auth is set but security = none: mailctl never sends AUTH unencrypted", f"{edit} --security starttls (or --allow-insecure-auth on a trusted network)")
        host = (v.get("host") or "").lower()
        if auth == "password" and host.endswith("office365.com"):
            add("warning", "m365.basic-auth", "Microsoft 365 has retired basic authentication for SMTP (550 5.7.30)", f"{edit} --auth oauth, then mailctl auth login {name}")
        if auth == "password" and host.endswith("gmail.com"):
            add("info", "gmail.app-password", "Gmail accepts only an app password (2-Step Verification) or OAuth here (534 5.7.9)", f"{edit} --auth oauth, or store an app password")
    if v.get("tls_verify") is False:
        add("warning", "tls.verify-off", "TLS certificates are not verified: anyone on the path can read the mail and the credentials", f"{edit} --tls-verify (and --ca-file for a private CA)")
    if not v.get("from_address") and p.type != "file":
        add("warning", "profile.no-from", "no from_address: every send must give --from", f"{edit} --from-address ADDR")
    if p.type == "ews":
        for message in ews_warnings(p):
            add("warning", "ews.warning", message)
    kind = primary_secret_kind(v)
    if kind and secrets is not None:
        # Linting never runs a secret_command (it may prompt, hang or print anything).
        try:
            state = secrets.describe(p, kind)
            if state == "not stored":
                add("error", "secret.missing", f"no {kind.replace('_', ' ')} stored", f"{edit} --password-stdin")
            elif not state.startswith("stored"):
                add("info", "secret.command-not-run", f"{kind.replace('_', ' ')}: secret_command {state}",
                    f"check it with: mailctl test connect {name}")
        except SecretStoreUnavailable as exc:
            add("info", "secret.unchecked", f"could not check the {kind.replace('_', ' ')}: {exc.message}", exc.hint or "")
        except ConfigError as exc:
            add("error", "secret.command-failed", exc.message, exc.hint or "")
    return out


def lint_profiles(doc, names: list[str] | None, secrets=None) -> list[LintFinding]:
    findings: list[LintFinding] = []
    for name in names or doc.profile_names():
        findings.extend(lint_profile(doc, name, secrets))
    return findings
