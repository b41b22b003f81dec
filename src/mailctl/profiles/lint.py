"""`profile lint`: configuration problems found without touching the network."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from mailctl.errors import ConfigError, MailctlError, SecretStoreUnavailable
from mailctl.profiles.resolve import check_complete, primary_secret_kind, resolve_profile
from mailctl.profiles.presets import ews_warnings, is_exchange_online


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
    sender_findings(p, add)
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


# --- From vs login, business vs personal accounts (seeds 000, 001) ----------------------------
# Consumer mail domains: a Microsoft account (outlook.com, hotmail.*, live.*, msn.com) is not a
# work or school account; gmail.com / googlemail.com are not Google Workspace.
_PERSONAL_MICROSOFT = re.compile(r"^(outlook|hotmail|live|msn|passport|windowslive)\.(com|[a-z]{2}|co\.[a-z]{2}|com\.[a-z]{2})$")
_PERSONAL_GOOGLE = ("gmail.com", "googlemail.com")


def provider_family(values: dict[str, Any]) -> str | None:
    """microsoft365 | gmail | None: whose sending rules apply, from the preset or the endpoints."""
    provider, kind = values.get("provider"), values.get("type") or "smtp"
    host = (values.get("host") or "").lower().rstrip(".")
    if provider == "microsoft365" or host.endswith(".office365.com") or host.endswith(".office365.us") or kind == "graph" \
            or (kind == "ews" and is_exchange_online(values.get("ews_url"))):
        return "microsoft365"
    if provider == "gmail" or host in ("smtp.gmail.com", "smtp.googlemail.com") or kind == "gmail-api":
        return "gmail"
    return None


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower().rstrip(".")


def is_personal_account(address: str, family: str) -> bool:
    domain = _domain(address)
    if family == "microsoft365":
        return bool(_PERSONAL_MICROSOFT.fullmatch(domain))
    return domain in _PERSONAL_GOOGLE


def sender_findings(p, add: Callable[..., None]) -> None:
    """Microsoft 365 and Gmail send only as the signed-in mailbox unless it has been granted
    another address (Send As / "Send mail as"); the business-only sign-ins refuse personal
    accounts. Both fail at send time with codes that do not say so plainly (5.2.252
    SendAsDenied, AADSTS50020), so lint says it first."""
    v, name = p.values, p.name
    family = provider_family(v)
    if family is None:
        return
    edit = f"mailctl profile edit {name}"
    login = str(v.get("username") or "")
    identity = str((v.get("mailbox") if p.type in ("graph", "ews") else "") or login)
    sender = str(v.get("from_address") or "")
    if sender and identity and "@" in identity and sender.casefold() != identity.casefold():
        if family == "microsoft365":
            add("warning", "m365.send-as",
                f"from_address {sender} differs from the mailbox {identity}: Microsoft 365 sends it only when {identity} "
                f"has Send As (or Send on Behalf) permission on {sender}; without it the server answers 554 5.2.252 SendAsDenied",
                f"ask an Exchange admin: Add-RecipientPermission -Identity {sender} -Trustee {identity} -AccessRights SendAs "
                f"(or: {edit} --from-address {identity})")
        else:
            add("warning", "gmail.send-mail-as",
                f"from_address {sender} differs from the login {identity}: Gmail rewrites From to {identity} unless "
                f"{sender} is a verified \"Send mail as\" address of that account",
                f"add it in Gmail: Settings > Accounts (and Import) > Send mail as > Add another email address "
                f"(or: {edit} --from-address {identity})")
    if v.get("from_match"):
        what = "Send As permission" if family == "microsoft365" else "a verified \"Send mail as\" entry"
        add("info", f"{'m365' if family == 'microsoft365' else 'gmail'}.send-as-patterns",
            f"from_match sends mail From any matching address; each needs {what} for {identity or 'the login'}")
    _personal_findings(p, family, identity or sender, add)


def _personal_findings(p, family: str, account: str, add: Callable[..., None]) -> None:
    v, name = p.values, p.name
    if not account or not is_personal_account(account, family):
        return
    edit = f"mailctl profile edit {name}"
    auth = v.get("auth")
    if family == "microsoft365" and str(v.get("tenant_id") or "") not in ("consumers", "common"):
        add("error", "m365.personal-account",
            f"{account} is a personal Microsoft account; Microsoft 365 (tenant sign-in, SMTP AUTH, Graph for a "
            "tenant) accepts only work or school accounts (AADSTS50020)",
            f"use a business account: {edit} --username USER@YOURCOMPANY --from-address USER@YOURCOMPANY")
    elif family == "gmail" and auth == "service-account":
        add("error", "gmail.personal-account",
            f"{account} is a personal Google account; a service account with domain-wide delegation works only "
            "for Google Workspace users",
            f"for a personal account use OAuth: {edit} --auth oauth, then mailctl auth login {name} "
            "(or an app password: --auth password)")


def lint_profiles(doc, names: list[str] | None, secrets=None) -> list[LintFinding]:
    findings: list[LintFinding] = []
    for name in names or doc.profile_names():
        findings.extend(lint_profile(doc, name, secrets))
        findings.extend(_claimed_elsewhere(doc, name))
    return findings


def _claimed_elsewhere(doc, name: str) -> list[LintFinding]:
    """Two profiles that set the same from_address themselves: send and sendmail without -p
    choose the first in the file for that sender (profiles.resolve.profile_for_sender)."""
    own = str(doc.raw_profile(name).get("from_address") or "").casefold()
    if not own:
        return []
    for other in doc.profile_names():
        if other != name and str(doc.raw_profile(other).get("from_address") or "").casefold() == own:
            first = min((name, other), key=doc.profile_names().index)
            if first == name:
                return []
            return [LintFinding(name, "info", "profile.from-claimed-twice",
                                f"profile {first!r} has the same from_address: send and sendmail without -p choose "
                                f"{first!r} for mail from it", f"use -p {name}, or give the profiles different from_address")]
    return []
