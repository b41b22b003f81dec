"""The knowledge base of known failures: an exception or a server reply -> cause, fix, exit code.

    explanation = explain(exc_or_reply, context={"profile": "company", "host": ..., "port": ...})
    if explanation: print(explanation.cause); print(explanation.fix)

Entries match on any combination of: reply code, enhanced status code, a text pattern,
exception class names (anywhere in the __cause__ chain), the protocol stage, a mailctl failure
id (set on errors mailctl raises itself), the TLS verify code, an HTTP status or an API error
code. All given criteria must match; the first matching entry wins, so specific entries come
before generic ones. Other transports (Graph, EWS) add their own entries with register().
Facts: ../shared/PROVIDERS.md; the table is rendered into docs/smtp.md."""

from __future__ import annotations

import re
import ssl
from fnmatch import fnmatchcase
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from mailctl.errors import ExitCode

_ENHANCED_RE = re.compile(r"^\s*([245]\.\d{1,3}\.\d{1,3})(?=\s|$)")


@dataclass(frozen=True)
class Explanation:
    id: str
    cause: str
    fix: str
    exit_code: ExitCode | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "cause": self.cause, "fix": self.fix, "exit_code": int(self.exit_code) if self.exit_code is not None else None}


@dataclass(frozen=True)
class Reply:
    """A server reply (SMTP code + text, or HTTP status + API error code) seen at a stage."""

    code: int | None = None
    text: str = ""
    stage: str | None = None
    enhanced: str | None = None
    http_status: int | None = None
    error_code: str | None = None


@dataclass
class Facts:
    """What the knowledge base matches on, normalised from an exception or a reply."""

    stage: str | None = None
    code: int | None = None
    enhanced: str | None = None
    text: str = ""
    exceptions: set[str] = field(default_factory=set)
    failure_id: str | None = None
    verify_code: int | None = None
    http_status: int | None = None
    error_code: str | None = None


@dataclass(frozen=True)
class KnownFailure:
    id: str
    cause: str
    fix: str
    exit_code: ExitCode | None = None
    codes: tuple[int, ...] = ()
    enhanced: tuple[str, ...] = ()  # exact, or a glob like "4.7.5*"
    pattern: str | None = None
    exceptions: tuple[str, ...] = ()
    stages: tuple[str, ...] = ()
    failure_ids: tuple[str, ...] = ()
    verify_codes: tuple[int, ...] = ()
    http_status: tuple[int, ...] = ()
    error_codes: tuple[str, ...] = ()
    # (stage, full reply line) a server would send: the tests script exactly this reply
    example: tuple[str, str] | None = None
    source: str = ""  # provider whose documentation / observed replies the entry comes from

    def matches(self, facts: Facts) -> bool:
        if not any(
            (self.codes, self.enhanced, self.pattern, self.exceptions, self.failure_ids, self.verify_codes, self.http_status, self.error_codes)
        ):
            return False  # an entry must say what it matches
        if self.codes and facts.code not in self.codes:
            return False
        if self.enhanced and not any(fnmatchcase(facts.enhanced or "", e) for e in self.enhanced):
            return False
        if self.stages and facts.stage not in self.stages:
            return False
        if self.failure_ids and facts.failure_id not in self.failure_ids:
            return False
        if self.verify_codes and facts.verify_code not in self.verify_codes:
            return False
        if self.http_status and facts.http_status not in self.http_status:
            return False
        if self.error_codes and facts.error_code not in self.error_codes:
            return False
        if self.exceptions and not facts.exceptions.intersection(self.exceptions):
            return False
        if self.pattern and not re.search(self.pattern, facts.text or "", re.IGNORECASE):
            return False
        return True

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "cause": self.cause,
            "fix": self.fix,
            "exit_code": int(self.exit_code) if self.exit_code is not None else None,
            "codes": list(self.codes),
            "enhanced": list(self.enhanced),
            "pattern": self.pattern,
            "exceptions": list(self.exceptions),
            "stages": list(self.stages),
        }


def split_enhanced(text: str) -> tuple[str | None, str]:
    """'5.7.8 Username and Password not accepted' -> ('5.7.8', 'Username and ...')."""
    m = _ENHANCED_RE.match(text or "")
    if not m:
        return None, (text or "").strip()
    return m.group(1), text[m.end():].strip()


def _chain(exc: BaseException) -> Iterable[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def facts_of(obj: Any, *, stage: str | None = None) -> Facts:
    """Facts from a Reply, a (code, text) tuple, or an exception (its whole cause chain)."""
    facts = Facts(stage=stage)
    if isinstance(obj, tuple) and len(obj) == 2:
        obj = Reply(code=obj[0], text=obj[1].decode("utf-8", "replace") if isinstance(obj[1], bytes) else obj[1], stage=stage)
    if isinstance(obj, Reply):
        facts.code = obj.code
        facts.http_status = obj.http_status
        facts.error_code = obj.error_code
        facts.stage = obj.stage or stage
        enhanced, rest = split_enhanced(obj.text)
        facts.enhanced = obj.enhanced or enhanced
        facts.text = obj.text
        return facts
    if not isinstance(obj, BaseException):
        return facts
    texts: list[str] = []
    for exc in _chain(obj):
        facts.exceptions.update(cls.__name__ for cls in type(exc).__mro__)
        for attr in ("stage", "failure_id", "code", "enhanced", "http_status", "error_code"):
            value = getattr(exc, attr, None)
            target = {"code": "code"}.get(attr, attr)
            if value not in (None, "") and getattr(facts, target) in (None, ""):
                setattr(facts, target, value)
        smtp_code = getattr(exc, "smtp_code", None)
        if isinstance(smtp_code, int) and smtp_code > 0 and facts.code is None:
            facts.code = smtp_code
            err = getattr(exc, "smtp_error", b"")
            texts.append(err.decode("utf-8", "replace") if isinstance(err, bytes) else str(err))
        if isinstance(exc, ssl.SSLCertVerificationError) and facts.verify_code is None:
            facts.verify_code = exc.verify_code
            texts.append(exc.verify_message or "")
        reply_text = getattr(exc, "text", None)
        if isinstance(reply_text, str) and reply_text:
            texts.append(reply_text)
        reason = getattr(exc, "reason", None)
        if isinstance(reason, str):
            texts.append(reason)
        texts.append(str(exc))
    if stage and not facts.stage:
        facts.stage = stage
    if stage:
        facts.stage = facts.stage or stage
    facts.text = " | ".join(t for t in texts if t)
    if facts.enhanced is None:
        for t in texts:
            enhanced, _ = split_enhanced(t)
            if enhanced:
                facts.enhanced = enhanced
                break
    return facts


class _Blank(dict):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


_PROFILE_DEFAULTS = {"profile": "NAME", "host": "HOST", "port": "PORT"}


def explain(obj: Any, *, stage: str | None = None, context: Mapping[str, Any] | None = None) -> Explanation | None:
    """The first known failure matching an exception or reply, with {profile}/{host}/{port}
    placeholders filled from context; None when nothing is known about it."""
    facts = obj if isinstance(obj, Facts) else facts_of(obj, stage=stage)
    for entry in KNOWLEDGE:
        if entry.matches(facts):
            values = _Blank(_PROFILE_DEFAULTS)
            values.update({k: v for k, v in (context or {}).items() if v not in (None, "")})
            return Explanation(entry.id, entry.cause.format_map(values), entry.fix.format_map(values), entry.exit_code)
    return None


def register(entry: KnownFailure, *, before: str | None = None) -> None:
    """Add an entry (other transports add theirs). `before` puts it ahead of a named entry;
    otherwise it goes before the generic fallbacks."""
    if any(e.id == entry.id for e in KNOWLEDGE):
        raise ValueError(f"duplicate knowledge-base id {entry.id!r}")
    target = before or "smtp-generic-4xx"
    for i, existing in enumerate(KNOWLEDGE):
        if existing.id == target:
            KNOWLEDGE.insert(i, entry)
            return
    KNOWLEDGE.append(entry)


E = ExitCode
_AUTH = ("auth",)
_MSG = ("mail", "rcpt", "data")

KNOWLEDGE: list[KnownFailure] = [
    # --- reaching the server ------------------------------------------------------------
    KnownFailure(
        "dns-not-found",
        "The host name {host} does not resolve (no such domain, a typo, or no DNS on this machine).",
        "Check the spelling of host: mailctl profile edit {profile} --host HOST; test DNS with `getent hosts {host}`.",
        E.UNAVAILABLE,
        exceptions=("gaierror",),
    ),
    KnownFailure(
        "proxy-auth-failed",
        "The proxy refused the credentials (HTTP 407 or SOCKS authentication failure).",
        "Store the proxy password with the secret store (kind proxy_password) and put the user name in the proxy URL: socks5://USER@HOST:PORT.",
        E.NOPERM,
        failure_ids=("proxy-auth-failed",),
    ),
    KnownFailure(
        "proxy-failed",
        "The proxy could not be used or could not reach {host}:{port}.",
        "Check the proxy URL (socks5://HOST:PORT or http://HOST:PORT), that the proxy runs, and that it allows CONNECT to port {port}.",
        E.UNAVAILABLE,
        failure_ids=("proxy-failed",),
    ),
    KnownFailure(
        "connection-refused",
        "Nothing listens on {host}:{port}: the connection was refused (server down, wrong port, or a firewall that rejects).",
        "Check host and port (587 = STARTTLS submission, 465 = implicit TLS, 25 = server-to-server relay) and that the server is running.",
        E.UNAVAILABLE,
        exceptions=("ConnectionRefusedError",),
    ),
    KnownFailure(
        "network-unreachable",
        "No route to {host}:{port} (network unreachable or host down).",
        "Check this machine's network and routing, or configure a proxy: mailctl profile edit {profile} --proxy socks5://HOST:PORT.",
        E.UNAVAILABLE,
        pattern=r"unreachable|no route to host",
        exceptions=("OSError",),
        stages=("connect",),
    ),
    KnownFailure(
        "connect-timeout",
        "No answer from {host}:{port}: the port is blocked by a firewall or the network (many ISPs and clouds block port 25), or the host/port is wrong.",
        "Try the submission ports (587 STARTTLS or 465 TLS), check firewalls between here and the server, or use a proxy; raise timeout if the link is slow.",
        E.UNAVAILABLE,
        exceptions=("TimeoutError", "timeout"),
        stages=("connect",),
    ),
    KnownFailure(
        "reply-too-long",
        "{host}:{port} sent a reply longer than any SMTP server sends (more than 100 lines or 64 KiB, or a line over 8 KiB): a broken or hostile server, or not an SMTP server at all; mailctl stopped reading and closed the connection.",
        "Check that host and port point at your mail server, and see the start of the reply with `mailctl test connect {profile} --transcript`; report it to the server's administrator.",
        E.PROTOCOL,
        failure_ids=("reply-too-long",),
    ),
    KnownFailure(
        "reply-too-slow",
        "{host}:{port} started its reply but did not complete it within the timeout: it sends too slowly (a byte or a line at a time) or stalled mid-reply. The timeout bounds each stage as a whole, however the reply trickles in.",
        "Retry later; if it repeats, the server or something in between (a proxy, a firewall that inspects SMTP) is misbehaving. Raise the timeout only for a really slow link: mailctl profile edit {profile} --timeout 60.",
        None,
        failure_ids=("reply-too-slow",),
    ),
    KnownFailure(
        "plaintext-to-tls-port",
        "Connected to {host}:{port} but no SMTP greeting came: the port most likely expects TLS at once (implicit TLS, \"SMTPS\", usually 465), or something accepts connections and stays silent.",
        "If the port is 465 use implicit TLS: mailctl profile edit {profile} --security tls; otherwise use port 587 with --security starttls.",
        E.UNAVAILABLE,
        exceptions=("TimeoutError", "timeout", "SMTPServerDisconnected", "ConnectionResetError"),
        stages=("banner",),
    ),
    KnownFailure(
        "tls-to-plaintext-port",
        "A TLS handshake was attempted but {host}:{port} speaks plaintext SMTP (it is a STARTTLS or relay port, not implicit TLS).",
        "Use STARTTLS on this port: mailctl profile edit {profile} --security starttls (or implicit TLS on port 465: --port 465).",
        E.UNAVAILABLE,
        pattern=r"wrong.version.number|record.layer.failure|packet.length.too.long|unknown.protocol|http.request",
        exceptions=("SSLError",),
        stages=("tls",),
    ),
    # --- certificates ---------------------------------------------------------------------
    KnownFailure(
        "tls-hostname-mismatch",
        "The server's certificate is not valid for the name {host} (see its SAN list).",
        "Connect with a name the certificate lists (mailctl profile edit {profile} --host NAME), or pin it: --tls-fingerprint SHA256.",
        E.UNAVAILABLE,
        verify_codes=(62,),
    ),
    KnownFailure(
        "tls-hostname-mismatch-text",
        "The server's certificate is not valid for the name {host} (see its SAN list).",
        "Connect with a name the certificate lists (mailctl profile edit {profile} --host NAME), or pin it: --tls-fingerprint SHA256.",
        E.UNAVAILABLE,
        pattern=r"hostname mismatch|doesn't match|does not match",
        exceptions=("SSLCertVerificationError", "CertificateError"),
    ),
    KnownFailure(
        "tls-expired",
        "The server's certificate has expired.",
        "The server's administrator must renew the certificate. Do not disable verification; if you must send now, pin this certificate: --tls-fingerprint SHA256.",
        E.UNAVAILABLE,
        verify_codes=(10,),
    ),
    KnownFailure(
        "tls-not-yet-valid",
        "The server's certificate is not valid yet (or this machine's clock is wrong).",
        "Check this machine's clock (timedatectl), then the certificate's not-before date.",
        E.UNAVAILABLE,
        verify_codes=(9,),
    ),
    KnownFailure(
        "tls-self-signed",
        "The server's certificate is self-signed or issued by a CA this machine does not trust (a private CA).",
        "Give mailctl the CA certificate: mailctl profile edit {profile} --ca-file /path/ca.pem, or pin the server certificate: --tls-fingerprint SHA256 (shown by `mailctl test connect`).",
        E.UNAVAILABLE,
        verify_codes=(18, 19, 20, 21, 2),
    ),
    KnownFailure(
        "tls-verify-failed",
        "The server's certificate could not be verified.",
        "Read the verification message above; give the CA with --ca-file, or pin the certificate with --tls-fingerprint.",
        E.UNAVAILABLE,
        exceptions=("SSLCertVerificationError",),
    ),
    KnownFailure(
        "tls-fingerprint-mismatch",
        "The server's certificate does not match the pinned tls_fingerprint: the certificate was renewed, or someone is intercepting the connection.",
        "Compare the SHA-256 fingerprint shown by `mailctl test connect` with the server's administrator, then: mailctl profile edit {profile} --tls-fingerprint NEW.",
        E.UNAVAILABLE,
        failure_ids=("tls-fingerprint-mismatch",),
    ),
    KnownFailure(
        "tls-protocol-too-old",
        "The server only offers TLS older than 1.2, which mailctl refuses.",
        "Ask the server's administrator to enable TLS 1.2 or 1.3.",
        E.UNAVAILABLE,
        pattern=r"unsupported.protocol|no.protocols.available|tlsv1.alert.protocol.version|version too low",
        exceptions=("SSLError",),
    ),
    KnownFailure(
        "tls-handshake-failed",
        "The TLS handshake with {host}:{port} failed.",
        "Check security/port (465 = implicit TLS, 587 = STARTTLS); run `mailctl test connect {profile} --transcript` for details.",
        E.UNAVAILABLE,
        exceptions=("SSLError",),
    ),
    KnownFailure(
        "starttls-not-offered",
        "security = starttls but the server does not offer STARTTLS (mailctl never falls back to plaintext).",
        "Use the server's submission port (587) or implicit TLS (--security tls --port 465). Only on a trusted private network: --security none.",
        E.PROTOCOL,
        failure_ids=("starttls-not-offered",),
    ),
    # --- authentication --------------------------------------------------------------------
    KnownFailure(
        "auth-plaintext-refused",
        "Authentication would send credentials over an unencrypted connection; mailctl refuses.",
        "Use --security starttls (587) or tls (465); only on a trusted network: mailctl profile edit {profile} --allow-insecure-auth.",
        E.CONFIG,
        failure_ids=("auth-plaintext-refused",),
    ),
    KnownFailure(
        "auth-before-tls",
        "The server does not accept AUTH before TLS (it asks for STARTTLS first).",
        "Encrypt first: mailctl profile edit {profile} --security starttls (or --security tls --port 465).",
        E.NOPERM,
        codes=(530, 538),
        pattern=r"starttls|encryption required|must issue|tls first",
        example=("auth", "530 5.7.0 Must issue a STARTTLS command first"),
    ),
    KnownFailure(
        "auth-not-offered",
        "The server does not offer AUTH on this connection (servers usually hide it before STARTTLS, or it is a relay that accepts by IP address).",
        "Use STARTTLS or TLS (--security starttls), or if the server relays by IP without login: mailctl profile edit {profile} --auth none.",
        E.PROTOCOL,
        failure_ids=("auth-not-offered",),
    ),
    KnownFailure(
        "auth-mechanism-unsupported",
        "The server offers none of the authentication mechanisms this profile can use.",
        "Compare the AUTH mechanisms shown by `mailctl test connect` with the profile's auth (password: PLAIN/LOGIN; oauth: XOAUTH2).",
        E.PROTOCOL,
        failure_ids=("auth-mechanism-unsupported",),
    ),
    KnownFailure(
        "m365-smtp-auth-disabled",
        "Microsoft 365: SMTP AUTH (client authentication) is disabled for the tenant or the mailbox.",
        "An Exchange admin enables it: Set-TransportConfig -SmtpClientAuthenticationDisabled $false (tenant) or Set-CASMailbox -Identity USER -SmtpClientAuthenticationDisabled $false (mailbox); or send with Graph (type = graph).",
        E.NOPERM,
        codes=(535,),
        enhanced=("5.7.139",),
        example=("auth", "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant."),
        source="microsoft365",
    ),
    KnownFailure(
        "m365-basic-auth-retired",
        "Microsoft 365: basic authentication (user name + password) is not supported for client submission.",
        "Switch the profile to OAuth: mailctl profile edit {profile} --auth oauth, then mailctl auth login {profile}.",
        E.NOPERM,
        codes=(550, 535),
        enhanced=("5.7.30",),
        example=("auth", "550 5.7.30 Basic authentication is not supported for Client Submission."),
        source="microsoft365",
    ),
    KnownFailure(
        "m365-auth-unsuccessful",
        "Microsoft 365 rejected the credentials or the OAuth token (535 5.7.3).",
        "With OAuth: run mailctl auth login {profile} again and check the token has the SMTP.Send scope and the user name is the mailbox UPN; with a password: check it, or whether SMTP AUTH / basic auth is allowed for the mailbox.",
        E.NOPERM,
        codes=(535,),
        enhanced=("5.7.3",),
        example=("auth", "535 5.7.3 Authentication unsuccessful [SN4PR0501CA0031.namprd05.prod.outlook.com]"),
        source="microsoft365",
    ),
    KnownFailure(
        "gmail-app-password-required",
        "Google: 2-Step Verification is on, so the account password is not accepted for SMTP (534 5.7.9).",
        "Create an app password (Google Account > Security > App passwords) and store it: mailctl profile edit {profile} --password-stdin; or use OAuth: --auth oauth.",
        E.NOPERM,
        codes=(534,),
        enhanced=("5.7.9",),
        example=("auth", "534 5.7.9 Application-specific password required. For more information, go to https://support.google.com/mail/?p=InvalidSecondFactor"),
        source="gmail",
    ),
    KnownFailure(
        "gmail-bad-credentials",
        "Google rejected the user name and password or the OAuth token (535 5.7.8 BadCredentials).",
        "Check username is the full address; with 2-Step Verification use an app password; with OAuth run mailctl auth login {profile} (the scope must be https://mail.google.com/).",
        E.NOPERM,
        codes=(535,),
        enhanced=("5.7.8",),
        # 5.7.8 is RFC 4954's generic "credentials invalid" (Postfix/Dovecot send it too):
        # only Google's own wording makes this the Gmail case.
        pattern=r"google|gsmtp|BadCredentials",
        example=("auth", "535 5.7.8 Username and Password not accepted. For more information, go to https://support.google.com/mail/?p=BadCredentials"),
        source="gmail",
    ),
    KnownFailure(
        "auth-failed",
        "The server rejected the user name or password (535).",
        "Check the user name and store the right password: mailctl profile edit {profile} --password-stdin.",
        E.NOPERM,
        codes=(535,),
        example=("auth", "535 Authentication failed"),
    ),
    KnownFailure(
        "too-many-logins",
        "Temporary: too many login attempts or connections from this client (rate limit).",
        "Wait a few minutes and try again; spread sending out (rate_limit_per_minute in [settings]).",
        E.TEMPFAIL,
        codes=(454, 421),
        enhanced=("4.7.0",),
        stages=_AUTH,
        example=("auth", "454 4.7.0 Too many login attempts, please try again later."),
        source="gmail",
    ),
    KnownFailure(
        "auth-temporary",
        "The server could not check the credentials right now (temporary authentication failure).",
        "Retry later; if it persists the server's authentication backend is down.",
        E.TEMPFAIL,
        codes=(454, 451, 432),
        stages=_AUTH,
        pattern=r"temporar|backend|unavailable",
        example=("auth", "451 4.3.0 Temporary authentication failure"),
    ),
    # --- submission policy ------------------------------------------------------------------
    KnownFailure(
        "m365-concurrent-connections",
        "Microsoft 365: more than 3 concurrent SMTP connections for this mailbox (432 4.3.2).",
        "Send over fewer connections at once (one flush at a time); retry later, the outbox defers this automatically.",
        E.TEMPFAIL,
        codes=(432,),
        example=("mail", "432 4.3.2 Concurrent connections limit exceeded. Visit https://aka.ms/concurrent_sending for more information."),
        source="microsoft365",
    ),
    KnownFailure(
        "rate-limited",
        "Temporary: the server is limiting this client (too many messages or connections; 421/454 4.7.0).",
        "Slow down and retry later: set rate_limit_per_minute in [settings] (Microsoft 365 allows 30 messages a minute); the outbox retries with backoff.",
        E.TEMPFAIL,
        codes=(421, 454, 451, 450),
        enhanced=("4.7.0",),
        example=("mail", "421 4.7.0 Try again later, closing connection. (MAIL) - gsmtp"),
        source="gmail",
    ),
    KnownFailure(
        "m365-temporary-restriction",
        "Microsoft 365: temporary restriction on this sender or tenant (4.7.5xx-6xx).",
        "Retry later; if it persists check the tenant's outbound spam and restricted-entities pages in the Microsoft 365 Defender portal.",
        E.TEMPFAIL,
        enhanced=("4.7.5??", "4.7.6??"),
        example=("mail", "451 4.7.500 Server busy. Please try again later."),
        source="microsoft365",
    ),
    KnownFailure(
        "not-authenticated",
        "The server requires authentication before it accepts mail from this sender (530 5.7.57 / 5.7.0).",
        "Set up authentication: mailctl profile edit {profile} --auth password --username USER (and --password-stdin), or --auth oauth.",
        E.NOPERM,
        codes=(530,),
        enhanced=("5.7.57",),
        example=("mail", "530 5.7.57 Client not authenticated to send mail. [BN0PR04CA0001.namprd04.prod.outlook.com]"),
        source="microsoft365",
    ),
    KnownFailure(
        "authentication-required",
        "The server requires authentication before it accepts mail (530).",
        "Set up authentication: mailctl profile edit {profile} --auth password --username USER (and --password-stdin), or --auth oauth.",
        E.NOPERM,
        codes=(530,),
        stages=_MSG,
        example=("mail", "530 5.7.0 Authentication required"),
    ),
    KnownFailure(
        "m365-tenant-attribution",
        "Microsoft 365 could not attribute the message to your tenant: connector-based relay is misconfigured (550 5.7.64 TenantAttribution; Relay Access Denied).",
        "Check the inbound connector from your organization (the certificate subject or this machine's public IP address it expects), or authenticate with SMTP AUTH instead of relaying.",
        E.NOPERM,
        enhanced=("5.7.64",),
        example=("rcpt", "550 5.7.64 TenantAttribution; Relay Access Denied [SN1NAM02FT0001.eop-nam02.prod.protection.outlook.com]"),
        source="microsoft365",
    ),
    KnownFailure(
        "m365-send-as-denied",
        "Microsoft 365: the From address is not the authenticated mailbox and the user has no Send As right for it (SendAsDenied).",
        "Send from the mailbox's own address (mailctl profile edit {profile} --from-address UPN), or an admin grants Send As: Add-RecipientPermission -Identity FROM -Trustee USER -AccessRights SendAs.",
        E.NOPERM,
        pattern=r"SendAsDenied",
        example=("data", "554 5.2.252 SendAsDenied; ops@example.com not allowed to send as boss@example.com; STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied"),
        source="microsoft365",
    ),
    KnownFailure(
        "m365-submission-quota",
        "Microsoft 365: the mailbox exceeded its submission quota (5.2.2: 10,000 recipients a day).",
        "Wait until the 24-hour window frees up, or spread the mail over more mailboxes.",
        E.PROBLEMS,
        enhanced=("5.2.2",),
        example=("rcpt", "554 5.2.2 mailbox full; STOREDRV.Submission.Exception:SubmissionQuotaExceededException"),
        source="microsoft365",
    ),
    KnownFailure(
        "m365-tenant-threshold",
        "Microsoft 365: the tenant exceeded its outbound threshold or this IP is not accepted (5.7.705/5.7.708).",
        "An admin checks the tenant's outbound spam status in the Microsoft 365 Defender portal; send from an accepted IP.",
        E.PROBLEMS,
        enhanced=("5.7.705", "5.7.708"),
        example=("mail", "550 5.7.708 Service unavailable. Access denied, traffic not accepted from this IP."),
        source="microsoft365",
    ),
    KnownFailure(
        "sender-unauthenticated",
        "The receiving server rejected the message because the sender domain is not authenticated: SPF, DKIM or DMARC missing or failing (550 5.7.26).",
        "Publish SPF and DKIM (and DMARC) for the From domain and send through a server they authorise; check with: mailctl dns check DOMAIN.",
        E.PROBLEMS,
        enhanced=("5.7.26",),
        example=("data", "550 5.7.26 This mail has been blocked because the sender is unauthenticated. Gmail requires all senders to authenticate with either SPF or DKIM."),
        source="gmail",
    ),
    KnownFailure(
        "relay-denied",
        "The server refuses to relay to this recipient for this client (554 5.7.1 Relay access denied): it only relays for authenticated users or its own networks.",
        "Authenticate (mailctl profile edit {profile} --auth password --username USER) or send through the server your domain uses; an admin can add this host to the relay networks.",
        E.NOPERM,
        pattern=r"relay(ing)? (access )?(denied|not permitted)|not permitted to relay|unable to relay",
        example=("rcpt", "554 5.7.1 <someone@example.net>: Relay access denied"),
    ),
    KnownFailure(
        "unknown-recipient",
        "The recipient address does not exist at the receiving domain (550 5.1.1).",
        "Check the spelling of the recipient address.",
        E.PROBLEMS,
        enhanced=("5.1.1",),
        example=("rcpt", "550 5.1.1 <nobody@example.com>: Recipient address rejected: User unknown in virtual mailbox table"),
    ),
    KnownFailure(
        "sender-rejected",
        "The server rejected the envelope sender address (5.1.7/5.1.8: invalid or unknown sender domain).",
        "Use a sender address in a domain that exists and that this server accepts: --from ADDR or mailctl profile edit {profile} --from-address ADDR.",
        E.PROBLEMS,
        enhanced=("5.1.7", "5.1.8", "5.1.0"),
        stages=("mail",),
        example=("mail", "553 5.1.8 <x@nonexistent.invalid>: Sender address rejected: Domain not found"),
    ),
    KnownFailure(
        "message-too-big",
        "The message is larger than the server accepts (552 5.3.4 / SIZE).",
        "Send smaller attachments (see the SIZE capability in `mailctl test connect`), or share a link.",
        E.PROBLEMS,
        codes=(552,),
        example=("data", "552 5.3.4 Message size exceeds fixed maximum message size"),
    ),
    KnownFailure(
        "mailbox-full",
        "The recipient's mailbox is full (temporary).",
        "Retry later: `mailctl send` and `queue flush` keep the message queued and retry it with backoff (`test send` queues nothing).",
        E.TEMPFAIL,
        enhanced=("4.2.2",),
        example=("rcpt", "452 4.2.2 Mailbox full"),
    ),
    KnownFailure(
        "service-unavailable-banner",
        "The server refused the session at once (421 / 554 greeting): it is busy, shutting down, or refuses this client.",
        "Retry later; if it persists, this host or its IP address may be blocked by the server.",
        E.TEMPFAIL,
        codes=(421,),
        stages=("banner", "ehlo"),
        example=("banner", "421 4.3.0 mail.example.com Service not available, closing transmission channel"),
    ),
    KnownFailure(
        "connection-lost",
        "The server closed the connection unexpectedly.",
        "Retry; if it repeats, run `mailctl test send {profile} --transcript` to see the last command the server answered.",
        E.TEMPFAIL,
        exceptions=("SMTPServerDisconnected", "ConnectionResetError", "BrokenPipeError"),
    ),
    # --- generic fallbacks (register() inserts new entries before these) -------------------
    KnownFailure(
        "smtp-generic-4xx",
        "The server answered with a temporary failure (4xx).",
        "Retry later: `mailctl send` and `queue flush` keep the message queued and retry it with backoff (`test send` queues nothing).",
        E.TEMPFAIL,
        codes=tuple(range(400, 500)),
    ),
    KnownFailure(
        "smtp-generic-5xx",
        "The server rejected the command permanently (5xx).",
        "Read the server's reply above; run with --transcript to see the whole conversation.",
        None,
        codes=tuple(range(500, 600)),
    ),
    KnownFailure(
        "timeout",
        "The server stopped answering (timeout).",
        "Retry; raise the profile's timeout if the link is slow: mailctl profile edit {profile} --timeout 60.",
        E.UNAVAILABLE,
        exceptions=("TimeoutError", "timeout"),
    ),
]


def table() -> list[dict[str, Any]]:
    """Every entry as data (for docs and `--json`)."""
    return [e.to_dict() for e in KNOWLEDGE]
