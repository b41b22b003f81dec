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
from fnmatch import translate
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
    # the registry's meaning of the reply's enhanced status code, "5.7.1 Delivery not
    # authorized, message refused (RFC 3463)"; None when the reply carried none
    status: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "cause": self.cause, "fix": self.fix,
                "exit_code": int(self.exit_code) if self.exit_code is not None else None, "status": self.status}


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
    plain: bool = False  # only a reply without an enhanced status code (one with a code gets the registry's meaning)
    pattern: str | None = None
    exceptions: tuple[str, ...] = ()
    stages: tuple[str, ...] = ()
    failure_ids: tuple[str, ...] = ()
    verify_codes: tuple[int, ...] = ()
    http_status: tuple[int, ...] = ()
    error_codes: tuple[str, ...] = ()
    # (stage, full reply line) a server would send: the tests script exactly this reply
    example: tuple[str, str] | None = None
    # more real wordings of the same failure (other servers): scripted by the tests too
    also: tuple[tuple[str, str], ...] = ()
    source: str = ""  # provider whose documentation / observed replies the entry comes from

    def _compiled(self) -> tuple[bool, frozenset[int], re.Pattern | None, re.Pattern | None]:
        """(says what it matches, codes, enhanced globs, text pattern), compiled on first use
        (not at import: startup stays fast) and kept, since explain() walks every entry."""
        compiled = self.__dict__.get("_compiled_criteria")
        if compiled is None:
            says = any((self.codes, self.enhanced, self.pattern, self.exceptions, self.failure_ids, self.verify_codes,
                        self.http_status, self.error_codes))
            enhanced = re.compile("|".join(translate(e) for e in self.enhanced)) if self.enhanced else None
            pattern = re.compile(self.pattern, re.IGNORECASE) if self.pattern else None
            compiled = (says, frozenset(self.codes), enhanced, pattern)
            object.__setattr__(self, "_compiled_criteria", compiled)  # a cache, not a field: frozen stays frozen
        return compiled

    def matches(self, facts: Facts) -> bool:
        says, codes, enhanced, pattern = self._compiled()
        if not says:
            return False  # an entry must say what it matches
        if codes and facts.code not in codes:
            return False
        if enhanced is not None and not enhanced.match(facts.enhanced or ""):
            return False
        if self.plain and facts.enhanced:
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
        if pattern is not None and not pattern.search(facts.text or ""):
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
            "plain": self.plain,
            "examples": [list(x) for x in ([self.example] if self.example else []) + list(self.also)],
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
    placeholders filled from context; None when nothing is known about it.

    A reply no specific entry knows gets the registry's meaning of its enhanced status code
    (exact X.Y.Z, else the X.Y subject, else the class) and a fix for that class and subject;
    only a reply without an enhanced code falls back on the generic 4xx/5xx entries."""
    facts = obj if isinstance(obj, Facts) else facts_of(obj, stage=stage)
    values = _Blank(_PROFILE_DEFAULTS)
    values.update({k: v for k, v in (context or {}).items() if v not in (None, "")})
    status = _status(facts)
    for entry in KNOWLEDGE:
        if entry.matches(facts):
            if entry.id in _GENERIC_REPLY_IDS:
                if status is not None and status.klass in (4, 5):
                    return _registry_explanation(status, facts, values)
                values["reply"] = _reply_words(facts.code)
            return Explanation(entry.id, entry.cause.format_map(values), entry.fix.format_map(values),
                               _class_exit(entry.exit_code, facts.code), status.describe() if status else None)
    return None


def _class_exit(exit_code: ExitCode | None, code: int | None) -> ExitCode | None:
    """A 4xx reply is temporary whatever an entry says about the refusal (exit 75): the same
    words with a 5xx are a refusal for good."""
    if exit_code is not None and isinstance(code, int) and 400 <= code < 500:
        return E.TEMPFAIL
    return exit_code


def _status(facts: Facts):
    """The registry entry of the enhanced code, when the reply has one (imported on demand:
    explanations without a reply never load the registry)."""
    if not facts.enhanced:
        return None
    from mailctl.knowledge.enhanced_status import lookup

    return lookup(facts.enhanced)


def _reply_words(code: Any) -> str:
    from mailctl.knowledge.enhanced_status import reply_meaning

    if not isinstance(code, int):
        return "no reply code"
    meaning = reply_meaning(code)
    return f"{code} {meaning}" if meaning else f"{code // 100}xx"


_GENERIC_REPLY_IDS = ("smtp-generic-4xx", "smtp-generic-5xx")
# Stages where a refusal is about who is sending (the client, its login, its sender address),
# not about a recipient or the message: a permanent policy refusal there is exit 77.
SENDER_STAGES = ("banner", "ehlo", "starttls", "ehlo_tls", "auth", "mail")

# (class, subject) -> the fix for a refusal no specific entry knows; subject None: any subject
CLASS_FIXES: dict[tuple[int, int | None], str] = {
    (4, None): "Retry later: `mailctl send` and `queue flush` keep the message queued and retry it with backoff (`test send` queues nothing).",
    (4, 4): "A network or routing problem beyond the server (it could not reach the next system, or its DNS failed): retry later; the outbox retries with backoff. If it lasts, the server's administrator must look at its queue.",
    (4, 7): "A temporary security or policy refusal (greylisting, a rate limit, a reputation check): retry in a few minutes and send more slowly (rate_limit_per_minute in [settings]); the outbox retries with backoff.",
    (5, 0): "Read the server's reply for the reason; see the whole conversation with: mailctl test send {profile} --transcript; ask the server's administrator if it is unclear.",
    (5, 1): "Check the addresses: the recipient's spelling and domain, and the sender (--from ADDR, or mailctl profile edit {profile} --from-address ADDR) must be a mailbox in a domain that exists.",
    (5, 2): "The recipient's mailbox cannot take the message (disabled, full, or over its size limit): reach the recipient another way, or send a smaller message.",
    (5, 3): "The receiving mail system cannot take this message (full, not accepting mail, missing a feature, or the message is over its size limit): send a smaller or simpler message, or tell the server's administrator.",
    (5, 4): "A routing problem beyond the server (the recipient's domain cannot be reached or routed): check the recipient's domain with mailctl dns check DOMAIN, and tell the server's administrator.",
    (5, 5): "The server refused a command of the SMTP conversation (syntax, arguments, too many recipients or an extension it lacks): see it with mailctl test send {profile} --transcript, send to fewer recipients at once, and report it if it persists.",
    (5, 6): "The server refused the message's content or encoding (media type, conversion, non-ASCII addresses or headers): send plain ASCII addresses to a server without SMTPUTF8, or simplify the message.",
    (5, 7): "A security or policy check refused it: check that this login may send from this address (mailctl profile edit {profile} --from-address ADDR), that the session is authenticated (--auth password or oauth) and encrypted, and that the From domain publishes SPF, DKIM and DMARC (mailctl dns check DOMAIN).",
}


def class_fix(klass: int, subject: int | None) -> str:
    """The class-level fix: for this subject if there is one, else for the class."""
    return CLASS_FIXES.get((klass, subject)) or CLASS_FIXES.get((klass, None)) or CLASS_FIXES[(5, 0)]


def registry_exit_code(klass: int, subject: int, stage: str | None) -> ExitCode | None:
    """Exit code of a refusal known only by its class: 4xx is temporary (75); a permanent
    security/policy refusal (5.7.x) of the sender (greeting, EHLO, AUTH, MAIL) is 77; any other
    permanent refusal keeps the stage's own code (None: 1 at RCPT/DATA, 69 at the greeting...)."""
    if klass == 4:
        return E.TEMPFAIL
    if klass == 5 and subject == 7 and stage in SENDER_STAGES:
        return E.NOPERM
    return None


def _registry_explanation(status, facts: Facts, values: Mapping[str, str]) -> Explanation:
    from mailctl.knowledge.enhanced_status import CLASSES, SUBJECTS

    subject = SUBJECTS.get(status.subject)
    if status.registered:
        ident = f"registry-{status.code}"
    elif subject:
        ident = f"registry-{status.klass}.{status.subject}.x"
    else:
        ident = f"registry-{status.klass}.x.x"
    # the reply code decides permanent or temporary when a server's two codes disagree ("550 4.7.1")
    klass = facts.code // 100 if isinstance(facts.code, int) and 400 <= facts.code < 600 else status.klass
    how = "permanently" if klass == 5 else "for now"
    about = f", about {subject[1]}" if subject else ""
    cause = (f"The server refused it {how}: {status.code} \"{status.meaning}\" "
             f"({status.reference or 'not in the IANA registry'}){about}; {CLASSES[status.klass][1]}.")
    fix = class_fix(klass, status.subject if subject else None).format_map(values)
    return Explanation(ident, cause, fix, registry_exit_code(klass, status.subject, facts.stage), status.describe())


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
_4XX = tuple(range(400, 500))
_5XX = tuple(range(500, 600))

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
        "Compare the AUTH mechanisms shown by `mailctl test connect` with the profile's auth (password: PLAIN/LOGIN/CRAM-MD5; oauth: XOAUTH2 or OAUTHBEARER).",
        E.PROTOCOL,
        failure_ids=("auth-mechanism-unsupported",),
    ),
    KnownFailure(
        "auth-mechanism-not-offered",
        "The server does not offer the AUTH mechanism that auth_mechanism (or --auth-mechanism) asks for, so the login cannot happen as configured.",
        "Pick one the server offers (listed above, also by `mailctl test connect {profile}`): mailctl profile edit {profile} --auth-mechanism MECH, or leave auth_mechanism empty to use the best one offered.",
        E.NOPERM,
        failure_ids=("auth-mechanism-not-offered",),
    ),
    KnownFailure(
        "outlook-basic-auth-disabled",
        "Outlook.com / Microsoft 365: basic authentication (user name + password) is turned off for this account, so SMTP AUTH with a password is refused (535 5.7.139).",
        "Switch the profile to OAuth: mailctl profile edit {profile} --auth oauth, then mailctl auth login {profile}.",
        E.NOPERM,
        codes=(535,),
        enhanced=("5.7.139",),
        pattern=r"basic authentication is disabled",
        example=("auth", "535 5.7.139 Authentication unsuccessful, basic authentication is disabled. [DB8PR06CA0013.eurprd06.prod.outlook.com]"),
        source="outlook.com",
    ),
    KnownFailure(
        "m365-security-defaults",
        "Microsoft 365: the tenant's security defaults block password sign-in for SMTP (535 5.7.139 user is locked by your organization's security defaults policy).",
        "Use OAuth: mailctl profile edit {profile} --auth oauth, then mailctl auth login {profile}; or an admin turns security defaults off in Entra ID and allows SMTP AUTH for the mailbox.",
        E.NOPERM,
        codes=(535,),
        enhanced=("5.7.139",),
        pattern=r"security defaults",
        example=("auth", "535 5.7.139 Authentication unsuccessful, user is locked by your organization's security defaults policy. Contact your administrator. [AM0PR10CA0030.EURPRD10.PROD.OUTLOOK.COM]"),
        source="microsoft365",
    ),
    KnownFailure(
        "m365-conditional-access",
        "Microsoft 365: the sign-in did not meet the tenant's Conditional Access or multi-factor criteria (535 5.7.139 the request did not meet the criteria to be authenticated successfully).",
        "Use OAuth: mailctl profile edit {profile} --auth oauth, then mailctl auth login {profile}; an admin finds the policy that blocked it in the Entra ID sign-in log.",
        E.NOPERM,
        codes=(535,),
        enhanced=("5.7.139",),
        pattern=r"did not meet the criteria",
        example=("auth", "535 5.7.139 Authentication unsuccessful, the request did not meet the criteria to be authenticated successfully. Contact your administrator."),
        source="microsoft365",
    ),
    KnownFailure(
        "m365-credentials-incorrect",
        "Microsoft 365 / Outlook.com: the user name or the password is wrong (535 5.7.139 the user credentials were incorrect).",
        "Check that the user name is the full address and store the right password: mailctl profile edit {profile} --password-stdin; accounts with multi-factor sign-in need OAuth: --auth oauth.",
        E.NOPERM,
        codes=(535,),
        enhanced=("5.7.139",),
        pattern=r"credentials were incorrect",
        example=("auth", "535 5.7.139 Authentication unsuccessful, the user credentials were incorrect. [AM0PR02CA0095.eurprd02.prod.outlook.com]"),
        source="microsoft365",
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
        "gmail-web-login-required",
        "Google wants a sign-in in a web browser before it accepts this login for SMTP (534 5.7.14: a sign-in from a new place, or a security check).",
        "Sign in at https://accounts.google.com from this network and confirm it was you, then retry; better, use an app password (mailctl profile edit {profile} --password-stdin) or OAuth (--auth oauth).",
        E.NOPERM,
        codes=(534,),
        enhanced=("5.7.14",),
        example=("auth", "534 5.7.14 <https://accounts.google.com/signin/continue?sarp=1&scc=1> Please log in via your web browser and then try again. Learn more at https://support.google.com/mail/answer/78754 - gsmtp"),
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
        also=(
            ("auth", "535 5.7.8 Error: authentication failed: authentication failure"),
            ("auth", "535 Incorrect authentication data"),
        ),
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
        "starttls-temporary",
        "The server offers STARTTLS but cannot start TLS right now (454: its certificate or key cannot be read, or its TLS library failed).",
        "Retry later and tell the server's administrator (Postfix logs the reason, e.g. cannot load certificate); mailctl never falls back to plaintext.",
        E.TEMPFAIL,
        codes=(454,),
        stages=("starttls",),
        source="postfix",
    ),
    KnownFailure(
        "greylisted",
        "Temporary: greylisting. The server refuses the first attempt from a client/sender/recipient combination it has not seen, and accepts the same message when it is retried a few minutes later (postgrey, milter-greylist, sqlgrey, greylistd).",
        "Nothing to change: `mailctl send` and `queue flush` keep the message and retry it; for `mailctl test send`, run it again in 5 minutes.",
        E.TEMPFAIL,
        codes=_4XX,
        pattern=r"gr[ae]y.?list|come back (later|in)",
        example=("rcpt", "450 4.2.0 <bob@example.com>: Recipient address rejected: Greylisted, see http://postgrey.schweikert.ch/help/example.com.html"),
        also=(
            ("rcpt", "451 4.7.1 Greylisting in action, please come back in 00:05:00"),
            ("rcpt", "451 4.7.1 Greylisted for 300 seconds (see http://www.example.net/greylisting.html)"),
        ),
        source="postfix",
    ),
    KnownFailure(
        "gmail-ip-rate-limited",
        "Google: an unusual rate of mail, or of unsolicited mail, comes from this IP address, so Gmail rate-limits it for now (4.7.28).",
        "Send more slowly and retry later (rate_limit_per_minute in [settings]); check the From domain's SPF, DKIM and DMARC (mailctl dns check DOMAIN) and that the recipients want the mail.",
        E.TEMPFAIL,
        enhanced=("4.7.28",),
        example=("rcpt", "421 4.7.28 [192.0.2.10] Our system has detected an unusual rate of unsolicited mail originating from your IP address. To protect our users from spam, mail sent from your IP address has been temporarily rate limited. - gsmtp"),
        source="gmail",
    ),
    KnownFailure(
        "gmail-low-reputation",
        "Google is holding back mail from this sender for now because of the low reputation of its IP address or domain (421 4.7.0).",
        "Retry later and send more slowly (rate_limit_per_minute in [settings]); make sure SPF, DKIM and DMARC pass for the From domain (mailctl dns check DOMAIN).",
        E.TEMPFAIL,
        enhanced=("4.7.0",),
        pattern=r"reputation|suspicious|unsolicited",
        example=("data", "421 4.7.0 [192.0.2.10] Our system has detected that this message is suspicious due to the very low reputation of the sending IP address. To best protect our users from spam, the message has been blocked. - gsmtp"),
        source="gmail",
    ),
    KnownFailure(
        "outlook-rate-limited",
        "Outlook.com: this IP address or account exceeded the messages or connections Outlook.com allows per hour or per day (RP-001/RP-002/RP-003).",
        "Retry later and send more slowly (rate_limit_per_minute in [settings]); the outbox retries with backoff.",
        E.TEMPFAIL,
        codes=_4XX,
        pattern=r"\bRP-00[1-3]\b",
        example=("mail", "421 RP-001 (BAY004-IBSMTPSVC) Unfortunately, some messages from 192.0.2.10 weren't sent. Please try again. We have limits for how many messages can be sent per hour and per day."),
        source="outlook.com",
    ),
    KnownFailure(
        "recipient-rate-limited",
        "The recipient receives mail faster than their provider accepts for them (Gmail 4.2.1): their mailbox is the bottleneck, not your sending.",
        "Retry later; `mailctl send` and `queue flush` keep the message queued and retry it with backoff.",
        E.TEMPFAIL,
        enhanced=("4.2.1",),
        pattern=r"receiving mail at a rate",
        example=("rcpt", "450 4.2.1 The user you are trying to contact is receiving mail at a rate that prevents additional messages from being delivered. Please resend your message at a later time. - gsmtp"),
        source="gmail",
    ),
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
        "connection-limit",
        "Temporary: the server limits how many connections this client may have open at once or open per minute, and this one is over the limit.",
        "Retry in a minute with fewer connections at once (one `queue flush` at a time rather than many `send` processes in parallel); set rate_limit_per_minute in [settings].",
        E.TEMPFAIL,
        codes=_4XX,
        pattern=r"too many (concurrent |open |simultaneous )?(smtp )?connections|connection (rate )?limit|maximum number of concurrent",
        example=("banner", "421 4.7.0 mail.example.com Error: too many connections from 192.0.2.10"),
        also=(
            ("banner", "421 Too many concurrent SMTP connections from this IP address; please try again later."),
            ("banner", "421 4.3.2 Connection rate limit exceeded."),
            ("banner", "421 4.3.2 The maximum number of concurrent server connections has exceeded a limit, closing transmission channel"),
        ),
        source="postfix",
    ),
    KnownFailure(
        "server-timeout",
        "The server ended the session because it waited too long for this client (its own idle timeout, 421).",
        "Retry; if it repeats, something between here and the server holds data back (a proxy, a firewall that inspects SMTP) or the link is very slow: see where with mailctl test send {profile} --transcript.",
        E.TEMPFAIL,
        codes=(421,),
        pattern=r"timeout exceeded|timed out|idle too long",
        example=("mail", "421 4.4.2 mail.example.com Error: timeout exceeded"),
        source="postfix",
    ),
    KnownFailure(
        "too-many-errors",
        "The server ended the session after too many errors on this connection (refused commands or recipients before, 421).",
        "Look at the refusals before it with mailctl test send {profile} --transcript and fix those first (often many refused recipients in one session); then retry.",
        E.TEMPFAIL,
        codes=(421,),
        pattern=r"too many (errors|bad commands|invalid commands|unrecognized commands|protocol errors)",
        example=("rcpt", "421 4.7.0 mail.example.com Error: too many errors"),
        source="postfix",
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
        also=(("mail", "530 5.7.0 Authentication Required. Learn more at https://support.google.com/mail/?p=WantAuthError - gsmtp"),),
    ),
    KnownFailure(
        "sender-login-mismatch",
        "The server lets this login send only from the addresses it owns, and the sender address is not one of them (Postfix reject_sender_login_mismatch: Sender address rejected: not owned by user).",
        "Send from an address this login owns (usually its own): --from ADDR, or mailctl profile edit {profile} --from-address ADDR; or the server's administrator adds the address to this login (Postfix smtpd_sender_login_maps).",
        E.NOPERM,
        codes=_5XX,
        pattern=r"not owned by (user|you)|sender login mismatch|login .* not (allowed|authorized) to send as",
        example=("rcpt", "553 5.7.1 <ceo@example.com>: Sender address rejected: not owned by user alice@example.com"),
        source="postfix",
    ),
    KnownFailure(
        "sender-not-logged-in",
        "The server accepts this sender address only from an authenticated session, and this session did not log in (Postfix reject_sender_login_mismatch: Sender address rejected: not logged in).",
        "Authenticate: mailctl profile edit {profile} --auth password --username USER, then store the password with --password-stdin.",
        E.NOPERM,
        codes=_5XX,
        pattern=r"not logged in",
        example=("rcpt", "553 5.7.1 <alice@example.com>: Sender address rejected: not logged in"),
        source="postfix",
    ),
    KnownFailure(
        "send-as-no-permission",
        "Exchange: the login has no Send As right for the sender address (5.7.60 Client does not have permissions to send as this sender).",
        "Send from the mailbox's own address (mailctl profile edit {profile} --from-address ADDR), or an Exchange admin grants Send As: Add-RecipientPermission -Identity FROM -Trustee USER -AccessRights SendAs (on-premises: Add-ADPermission FROM -User USER -ExtendedRights Send-As).",
        E.NOPERM,
        codes=_5XX,
        pattern=r"(does not|doesn't) have permissions? to send as|no permission to send as",
        example=("mail", "550 5.7.60 SMTP; Client does not have permissions to send as this sender"),
        also=(("mail", "550 5.7.1 Client does not have permissions to send as this sender"),),
        source="microsoft365",
    ),
    KnownFailure(
        "m365-bad-outbound-sender",
        "Microsoft 365: the sending account is blocked from sending (550 5.1.8 bad outbound sender: it sent mail Microsoft judged to be spam, or the account is compromised).",
        "An admin secures the account (reset its password, check its sign-ins) and releases it from Restricted entities in the Microsoft 365 Defender portal (https://security.microsoft.com/restrictedentities).",
        E.NOPERM,
        pattern=r"bad outbound sender",
        example=("mail", "550 5.1.8 Access denied, bad outbound sender"),
        source="microsoft365",
    ),
    KnownFailure(
        "m365-sender-banned",
        "Microsoft: the sender is banned for spam or abuse (5.7.501-5.7.503, 5.7.511 banned sender).",
        "Mail from this sender keeps failing until the abuse stops and Microsoft delists it: follow the removal steps in the reply (https://sender.office.com).",
        E.NOPERM,
        enhanced=("5.7.501", "5.7.502", "5.7.503", "5.7.511"),
        example=("mail", "550 5.7.511 Access denied, banned sender[192.0.2.10]. To request removal from this list, forward this message to delist@microsoft.com."),
        source="microsoft365",
    ),
    KnownFailure(
        "m365-unregistered-domain",
        "Microsoft 365: the tenant may not send from a domain it has not added and verified (5.7.750 Client blocked from sending from unregistered domains).",
        "An admin adds and verifies the From domain in the Microsoft 365 admin center (Settings > Domains), or send from an accepted domain: mailctl profile edit {profile} --from-address ADDR.",
        E.NOPERM,
        enhanced=("5.7.750",),
        example=("mail", "550 5.7.750 Service unavailable. Client blocked from sending from unregistered domains."),
        source="microsoft365",
    ),
    KnownFailure(
        "m365-banned-ip",
        "Microsoft: the sending IP address is on Microsoft's block list (5.7.606-5.7.649 banned sending IP).",
        "Delist the IP at https://sender.office.com, or send through a relay with a clean IP (your provider's submission server).",
        E.NOPERM,
        codes=_5XX,
        enhanced=("5.7.6??",),
        example=("mail", "550 5.7.606 Access denied, banned sending IP [192.0.2.10]. To request removal from this list please visit https://sender.office.com/ and follow the directions."),
        source="microsoft365",
    ),
    KnownFailure(
        "outlook-account-suspended",
        "Outlook.com / Microsoft 365 suspended sending for this account (OutboundSpamException: it was judged to send spam, or it must be verified first).",
        "Sign in at https://outlook.live.com and complete the verification it asks for (Outlook.com), or an admin releases the user from Restricted entities (Microsoft 365); then retry.",
        E.NOPERM,
        pattern=r"OutboundSpamException|UserAction verdict",
        example=("data", "554 5.2.0 STOREDRV.Submission.Exception:OutboundSpamException; Failed to process message due to a permanent exception with message [BeginDiagnosticData]WASCL UserAction verdict is not None. Actual verdict is Suspend, ShowTierUpgrade.[EndDiagnosticData]"),
        source="outlook.com",
    ),
    KnownFailure(
        "client-blocklisted",
        "The server refuses this client's IP address because it is on a block list (a DNSBL such as Spamhaus, or the provider's own list).",
        "Look the IP up on the list the reply names and request delisting, or send through a relay with a clean IP: your provider's submission server with AUTH (mailctl profile edit {profile} --host HOST --port 587 --security starttls).",
        E.NOPERM,
        codes=_5XX,
        pattern=r"blocked using|block ?list|black ?list|\bDNSBL\b|\bRBL\b|spamhaus|\bS3150\b",
        example=("rcpt", "554 5.7.1 Service unavailable; Client host [192.0.2.10] blocked using zen.spamhaus.org; https://www.spamhaus.org/query/ip/192.0.2.10"),
        also=(
            ("rcpt", "550 5.7.1 Unfortunately, messages from [192.0.2.10] weren't sent. Please contact your Internet service provider since part of their network is on our block list (S3150). You can also refer your provider to http://mail.live.com/mail/troubleshooting.aspx#errors."),
            ("rcpt", "550 Rejected because 192.0.2.10 is in a black list at zen.spamhaus.org"),
        ),
        source="postfix",
    ),
    KnownFailure(
        "outlook-policy-block",
        "Outlook.com refuses mail from this IP address for policy reasons (DY-001: a dynamic or residential IP; SC-/OU- codes: its reputation or spam-like mail).",
        "Send through your provider's submission server instead of straight from this IP (mailctl profile edit {profile} --host HOST --port 587 --security starttls), and ask for delisting at https://sender.office.com.",
        E.NOPERM,
        codes=_5XX,
        pattern=r"\b(SC-00[1-5]|DY-00[12]|OU-00[12])\b",
        example=("rcpt", "550 DY-001 (SNT004-MC1F43) Unfortunately, messages from 192.0.2.10 weren't sent. Please contact your Internet service provider. You can tell them that Hotmail does not relay dynamically-assigned IP ranges."),
        source="outlook.com",
    ),
    KnownFailure(
        "gmail-ip-not-authorized",
        "Google refuses mail sent straight from this IP address (a home or cloud address): it must come through a mail server (550 5.7.1 not authorized to send email directly to our servers).",
        "Send through your provider's submission server or smtp.gmail.com with AUTH: mailctl profile edit {profile} --host smtp.gmail.com --port 587 --security starttls --auth password.",
        E.NOPERM,
        pattern=r"not authorized to send email directly",
        example=("rcpt", "550 5.7.1 [192.0.2.10] The IP you're using to send mail is not authorized to send email directly to our servers. Please use the SMTP relay at your service provider instead. For more information, go to https://support.google.com/mail/?p=NotAuthorizedError - gsmtp"),
        source="gmail",
    ),
    KnownFailure(
        "reverse-dns-missing",
        "The server refuses this client because its IP address has no matching reverse DNS name (PTR record), as home and many cloud addresses do not.",
        "Send through a mail server whose IP has reverse DNS (your provider's submission server: mailctl profile edit {profile} --host HOST --port 587 --security starttls), or ask the IP's owner for a PTR record.",
        E.NOPERM,
        codes=_5XX,
        pattern=r"PTR record|reverse (DNS|hostname)|cannot find your hostname",
        example=("rcpt", "550 5.7.25 [192.0.2.10] The IP address sending this message does not have a PTR record setup, or the corresponding forward DNS entry does not point to the sending IP. - gsmtp"),
        also=(("rcpt", "550 5.7.25 Client host rejected: cannot find your reverse hostname, [192.0.2.10]"),),
        source="gmail",
    ),
    KnownFailure(
        "client-host-rejected",
        "The server's access policy refuses this client's IP address or host name (Postfix smtpd_client_restrictions: Client host rejected: Access denied).",
        "Send from a network the server accepts, or through the server your domain uses (mailctl profile edit {profile} --host HOST); the server's administrator can allow this IP (check_client_access, mynetworks).",
        E.NOPERM,
        codes=_5XX,
        pattern=r"Client host rejected",
        example=("banner", "554 5.7.1 <unknown[192.0.2.10]>: Client host rejected: Access denied"),
        source="postfix",
    ),
    KnownFailure(
        "helo-rejected",
        "The server refuses the name this client gave in EHLO (not a fully-qualified domain name, a name without DNS, or an invalid one).",
        "Set the EHLO name to this machine's fully-qualified name, one with DNS: mailctl profile edit {profile} --ehlo-name mail.example.com.",
        E.NOPERM,
        codes=_5XX,
        pattern=r"Helo command rejected|invalid (HELO|EHLO)|(HELO|EHLO) (name|hostname) (rejected|invalid|not accepted)",
        example=("rcpt", "504 5.5.2 <localhost>: Helo command rejected: need fully-qualified hostname"),
        also=(("rcpt", "550 5.7.1 <bad_name>: Helo command rejected: Host not found"),),
        source="postfix",
    ),
    KnownFailure(
        "banner-refused",
        "The server refused the session in its greeting (554/521, no enhanced status code): it takes no mail from this client, or none at all on this port.",
        "Check host and port (587 with --security starttls is the submission port); if they are right, this client's IP address is refused: send from a network the server accepts.",
        None,
        codes=(554, 521, 550, 553),
        stages=("banner",),
        plain=True,
        example=("banner", "554 mail.example.com ESMTP not accepting messages"),
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
        pattern=r"submission.?quota|STOREDRV",
        example=("rcpt", "554 5.2.2 mailbox full; STOREDRV.Submission.Exception:SubmissionQuotaExceededException"),
        source="microsoft365",
    ),
    KnownFailure(
        "m365-tenant-threshold",
        "Microsoft 365: the tenant exceeded its outbound threshold or this IP is not accepted (5.7.700-5.7.749, e.g. 5.7.705 tenant has exceeded threshold, 5.7.708 traffic not accepted from this IP).",
        "An admin checks the tenant's outbound spam status in the Microsoft 365 Defender portal; send from an accepted IP.",
        E.NOPERM,
        enhanced=("5.7.7[0-4]?",),
        example=("mail", "550 5.7.708 Service unavailable. Access denied, traffic not accepted from this IP."),
        source="microsoft365",
    ),
    KnownFailure(
        "m365-recipient-not-found",
        "Microsoft 365: the recipient address does not exist in the receiving organization (5.1.10 RecipientNotFound, or 5.4.1 Recipient address rejected: Access denied from Directory-Based Edge Blocking).",
        "Check the spelling of the recipient address; if it is right, the receiving organization must create it or fix its accepted-domain settings.",
        E.PROBLEMS,
        pattern=r"RecipientNotFound|RecipNotFound|Access denied\. AS\(",
        example=("rcpt", "550 5.4.1 Recipient address rejected: Access denied. AS(201806281) [DM6NAM12FT003.eop-nam12.prod.protection.outlook.com]"),
        also=(("rcpt", "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup"),),
        source="microsoft365",
    ),
    KnownFailure(
        "m365-recipient-restricted",
        "Microsoft 365: the recipient (often a group or distribution list) accepts mail only from some senders, and this sender is not one of them (RESOLVER.RST.NotAuthorized; 5.7.1, 5.7.124, 5.7.133-5.7.136).",
        "Ask the recipient's administrator to allow this sender (the group's delivery management: senders outside the organization, or this address), or send from an allowed address.",
        E.PROBLEMS,
        pattern=r"RESOLVER\.RST|not in allowed.senders",
        example=("rcpt", "550 5.7.1 RESOLVER.RST.NotAuthorized; not authorized [BN8NAM12FT004.eop-nam12.prod.protection.outlook.com]"),
        also=(("rcpt", "550 5.7.124 Sender not in allowed-senders list"),),
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
        "dmarc-failed",
        "The receiving server refused the message because DMARC fails for the From domain: neither SPF nor DKIM passes aligned with the From address, and the domain's DMARC policy says reject.",
        "Sign the mail with DKIM for the From domain, or send through a server the domain's SPF record lists; check the records with mailctl dns check DOMAIN.",
        None,
        codes=_5XX,
        pattern=r"\bDMARC\b",
        example=("data", "550 5.7.509 Access denied, sending domain example.com does not pass DMARC verification and has a DMARC policy of reject."),
        also=(("data", "550 5.7.1 Unauthenticated email from example.com is not accepted due to domain's DMARC policy. Please contact the administrator of example.com domain."),),
        source="microsoft365",
    ),
    KnownFailure(
        "sender-spf-failed",
        "The receiving server refused the message (with a 4xx: rate-limited it) because SPF fails: the sender domain's SPF record does not list the server the message came from.",
        "Send through a server the domain's SPF record lists, or add that server to the record; check it with mailctl dns check DOMAIN.",
        None,
        pattern=r"\bSPF\b|Sender Policy Framework",
        example=("data", "550 5.7.23 The message was rejected because of Sender Policy Framework violation"),
        also=(
            ("data", "550 5.7.27 This message was blocked because it didn't pass SPF authentication. Gmail requires bulk email senders to authenticate their email with SPF. - gsmtp"),
            ("data", "421 4.7.27 Your email has been rate limited because SPF authentication didn't pass for this message. Gmail requires all bulk email senders to authenticate their email with SPF. - gsmtp"),
        ),
        source="microsoft365",
    ),
    KnownFailure(
        "message-rate-limit",
        "Temporary: the server limits how much mail this client or login may send per time unit (messages or recipients a minute or an hour), and this message is over it.",
        "Slow down and retry later: set rate_limit_per_minute in [settings]; `mailctl send` and `queue flush` keep the message queued and retry it with backoff.",
        E.TEMPFAIL,
        codes=_4XX,
        pattern=r"too much mail|too many (messages|mails|recipients) (from|in|per|for)|(message|sending|recipient|send) rate|rate.?limit|exceeded the rate",
        example=("mail", "450 4.7.1 Error: too much mail from 192.0.2.10"),
        also=(("rcpt", "452 4.5.3 Error: too many recipients from 192.0.2.10"),),
        source="postfix",
    ),
    KnownFailure(
        "message-not-rfc5322",
        "The receiving server refused the message as malformed: a header RFC 5322 requires (From, Date, Message-ID) is missing, repeated or invalid.",
        "Messages mailctl builds are compliant; for a message handed to queue add or sendmail, fix its headers (exactly one valid From, a Date, a Message-ID).",
        E.PROBLEMS,
        codes=_5XX,
        pattern=r"RFC ?5322|RFC ?2822|missing (a |the )?(From|Date|Message-ID) header",
        example=("data", "550 5.7.512 Access denied, message must be RFC 5322 section 3.6.2 compliant and include a valid From address."),
        source="microsoft365",
    ),
    KnownFailure(
        "content-spam",
        "The receiving server's filter judged the message to be spam or unsafe (its content, links or attachments, or the sender's reputation).",
        "Check the From domain's SPF, DKIM and DMARC (mailctl dns check DOMAIN), avoid link shorteners and executable attachments, and send only mail the recipients asked for; the link in the reply explains the provider's rules.",
        E.PROBLEMS,
        codes=_5XX,
        pattern=r"unsolicited|\bspam\b|suspicious|reputation|content (filter|rejected)|virus|malware",
        example=("data", "550 5.7.1 [192.0.2.10] Our system has detected that this message is likely unsolicited mail. To reduce the amount of spam sent to Gmail, this message has been blocked. For more information, go to https://support.google.com/mail/?p=UnsolicitedMessageError - gsmtp"),
        also=(("data", "550 5.7.350 Remote server returned message detected as spam -> 554 5.7.1 Message rejected as spam by Content Filtering."),),
        source="gmail",
    ),
    KnownFailure(
        "sending-limit-exceeded",
        "The account reached its sending limit for the day (Gmail 5.4.5 Daily user sending limit exceeded, Microsoft 365 5.1.90).",
        "Wait until the limit resets (24 hours), or spread the mail over more accounts; bulk mail needs a bulk-mail service.",
        E.PROBLEMS,
        codes=_5XX,
        pattern=r"sending limit exceeded|daily (user )?sending (quota|limit)|daily limit for message recipients",
        example=("mail", "550 5.4.5 Daily user sending limit exceeded. For more information on Gmail sending limits go to https://support.google.com/a/answer/166852 - gsmtp"),
        also=(("rcpt", "550 5.1.90 Your message can't be sent because you've reached your daily limit for message recipients"),),
        source="gmail",
    ),
    KnownFailure(
        "relay-denied",
        "The server refuses to relay to this recipient for this client (554 5.7.1 Relay access denied): it only relays for authenticated users or its own networks.",
        "Authenticate (mailctl profile edit {profile} --auth password --username USER) or send through the server your domain uses; an admin can add this host to the relay networks.",
        E.NOPERM,
        codes=_5XX,
        pattern=r"relay(ing)? (access )?(denied|not permitted)|not permitted to relay|unable to relay",
        example=("rcpt", "554 5.7.1 <someone@example.net>: Relay access denied"),
        also=(
            ("rcpt", "550 5.7.1 <someone@example.net>... Relaying denied"),
            ("rcpt", "550 relay not permitted"),
            ("rcpt", "550 5.7.54 SMTP; Unable to relay recipient in non-accepted domain"),
        ),
    ),
    KnownFailure(
        "unknown-recipient",
        "The recipient address does not exist at the receiving domain (550 5.1.1).",
        "Check the spelling of the recipient address.",
        E.PROBLEMS,
        enhanced=("5.1.1",),
        example=("rcpt", "550 5.1.1 <nobody@example.com>: Recipient address rejected: User unknown in virtual mailbox table"),
        also=(
            ("rcpt", "550 5.1.1 The email account that you tried to reach does not exist. Please try double-checking the recipient's email address for typos or unnecessary spaces. For more information, go to https://support.google.com/mail/?p=NoSuchUser - gsmtp"),
            ("rcpt", "550 5.1.1 <nobody@example.com>... User unknown"),
        ),
    ),
    KnownFailure(
        "sender-rejected",
        "The server rejected the envelope sender address (5.1.7/5.1.8: invalid or unknown sender domain).",
        "Use a sender address in a domain that exists and that this server accepts: --from ADDR or mailctl profile edit {profile} --from-address ADDR.",
        E.PROBLEMS,
        enhanced=("5.1.7", "5.1.8", "5.1.0"),
        stages=("mail",),
        example=("mail", "553 5.1.8 <x@nonexistent.invalid>: Sender address rejected: Domain not found"),
        also=(("mail", "553 5.1.8 <x@nonexistent.invalid>... Domain of sender address x@nonexistent.invalid does not exist"),),
    ),
    KnownFailure(
        "sender-domain-not-found",
        "The server could not find the sender address's domain in DNS (4xx: it could not look it up for now).",
        "Send from an address in a domain that exists (its MX or A record resolves): --from ADDR, or mailctl profile edit {profile} --from-address ADDR; check it with mailctl dns check DOMAIN.",
        None,
        pattern=r"Sender address rejected: Domain not found|Domain of sender address .* does not exist|sender domain (does not exist|not found)",
        example=("rcpt", "450 4.1.8 <x@nonexistent.invalid>: Sender address rejected: Domain not found"),
        source="postfix",
    ),
    KnownFailure(
        "sender-verify-failed",
        "The server tried to verify the sender address (a call-back to the sender domain's mail server) and that failed: the address takes no mail, or its server could not be reached.",
        "Send from an address that exists and receives mail: --from ADDR, or mailctl profile edit {profile} --from-address ADDR.",
        None,
        pattern=r"sender verify failed|sender verification failed|could not verify sender|Sender address rejected: unverified address",
        example=("rcpt", "550 Sender verify failed"),
        also=(("rcpt", "450 4.1.7 <x@example.org>: Sender address rejected: unverified address: host mx.example.org[192.0.2.20] said: 550 5.1.1 User unknown"),),
        source="exim",
    ),
    KnownFailure(
        "sender-policy-rejected",
        "The server's policy refuses this sender address (Postfix smtpd_sender_restrictions: Sender address rejected: Access denied).",
        "Send from an address the server accepts for this login or network: --from ADDR, or mailctl profile edit {profile} --from-address ADDR; the server's administrator can say which (check_sender_access).",
        E.NOPERM,
        codes=_5XX,
        pattern=r"Sender address rejected",
        example=("rcpt", "554 5.7.1 <spammer@example.org>: Sender address rejected: Access denied"),
        source="postfix",
    ),
    KnownFailure(
        "unknown-recipient-text",
        "The recipient address does not exist at the receiving server (it says so without the 5.1.1 code).",
        "Check the spelling of the recipient address.",
        E.PROBLEMS,
        codes=_5XX,
        stages=("rcpt",),
        pattern=r"user unknown|unknown (user|recipient)|no such (user|mailbox|recipient)|mailbox (unavailable|not found|does not exist)|recipient not found|invalid recipient",
        example=("rcpt", "550 5.5.0 Requested action not taken: mailbox unavailable (S2017062302). [AM0EUR02FT001.eop-EUR02.prod.protection.outlook.com]"),
        also=(("rcpt", "550 No Such User Here"),),
        source="outlook.com",
    ),
    KnownFailure(
        "recipient-disabled",
        "The recipient's mailbox exists but is disabled or inactive and takes no mail (5.2.1).",
        "Reach the recipient another way; the address takes no mail until its owner reactivates it.",
        E.PROBLEMS,
        codes=_5XX,
        pattern=r"account .*(is|has been) (disabled|inactive|suspended)|mailbox (is )?(disabled|inactive)",
        example=("rcpt", "550 5.2.1 The email account that you tried to reach is disabled. Learn more at https://support.google.com/mail/?p=DisabledUser - gsmtp"),
        source="gmail",
    ),
    KnownFailure(
        "recipient-domain-not-found",
        "The recipient's domain does not exist or has no mail server (no MX or A record), or the server could not look it up for now.",
        "Check the spelling of the recipient's domain and its mail records: mailctl dns check DOMAIN.",
        None,
        pattern=r"Recipient address rejected: Domain not found|Unrouteable address|Host or domain name not found",
        example=("rcpt", "450 4.1.2 <bob@nonexistent.invalid>: Recipient address rejected: Domain not found"),
        also=(("rcpt", "550 Unrouteable address"),),
        source="postfix",
    ),
    KnownFailure(
        "recipient-access-denied",
        "The server's policy refuses this recipient (Postfix smtpd_recipient_restrictions: Recipient address rejected), for this sender or this client.",
        "Check the recipient address; the reply says why (Access denied: the server's administrator refuses mail to it from this sender or network).",
        None,
        pattern=r"Recipient address rejected",
        example=("rcpt", "554 5.7.1 <bob@example.com>: Recipient address rejected: Access denied"),
        source="postfix",
    ),
    KnownFailure(
        "exim-administrative-prohibition",
        "Exim's access rules (an ACL deny) refused this without saying why (550 Administrative prohibition).",
        "Ask the server's administrator which rule refused it (Exim's reject log names the ACL); often this client or sender may not relay, or may not send to this recipient.",
        None,
        pattern=r"administrative prohibition",
        example=("rcpt", "550 Administrative prohibition"),
        source="exim",
    ),
    KnownFailure(
        "message-too-big",
        "The message is larger than the server accepts (552 5.3.4 / SIZE).",
        "Send smaller attachments (see the SIZE capability in `mailctl test connect`), or share a link.",
        E.PROBLEMS,
        codes=_5XX,
        enhanced=("5.3.4", "5.2.3"),
        example=("data", "552 5.3.4 Message size exceeds fixed maximum message size"),
        also=(
            ("data", "552 5.2.3 Your message exceeded Google's message size limits. For more information, visit https://support.google.com/mail/?p=MaxSizeError - gsmtp"),
            ("data", "552 5.2.3 Message exceeds maximum fixed size (10485760)"),
            ("data", "552 5.3.4 Error: message file too big"),
        ),
    ),
    KnownFailure(
        "message-too-big-text",
        "The message is larger than the server accepts (it says so without the 5.3.4 code).",
        "Send smaller attachments (see the SIZE capability in `mailctl test connect`), or share a link.",
        E.PROBLEMS,
        codes=_5XX,
        pattern=r"message size|size (exceeds|limit)|too (big|large)|exceeds? (the )?(fixed |maximum )?(message )?size|message length exceeds",
        example=("data", "552 Message size exceeds maximum permitted"),
        source="exim",
    ),
    KnownFailure(
        "mailbox-full",
        "The recipient's mailbox is full (temporary).",
        "Retry later: `mailctl send` and `queue flush` keep the message queued and retry it with backoff (`test send` queues nothing).",
        E.TEMPFAIL,
        enhanced=("4.2.2",),
        example=("rcpt", "452 4.2.2 Mailbox full"),
        also=(("rcpt", "452 4.2.2 The email account that you tried to reach is over quota. Please direct the recipient to https://support.google.com/mail/?p=OverQuotaTemp - gsmtp"),),
    ),
    KnownFailure(
        "server-storage-full",
        "Temporary: the server is out of disk space or resources and cannot queue the message now.",
        "Retry later (the outbox retries with backoff) and tell the server's administrator: its queue file system is full.",
        E.TEMPFAIL,
        codes=_4XX,
        pattern=r"insufficient (system )?(storage|disk|resources)|disk space|no space left|queue file write error",
        example=("mail", "452 4.3.1 Insufficient system storage"),
        also=(("mail", "452 4.4.5 Insufficient disk space; try again later"),),
        source="postfix",
    ),
    KnownFailure(
        "temporary-server-error",
        "Temporary: the server failed on its own side (a lookup table, its DNS, or a local error) while handling this command.",
        "Retry later (the outbox retries with backoff); if it lasts, tell the server's administrator (its mail log says what failed).",
        E.TEMPFAIL,
        codes=_4XX,
        pattern=r"temporary lookup failure|temporary local problem|local error in processing|server configuration (error|problem)",
        example=("rcpt", "451 4.3.0 <bob@example.com>: Temporary lookup failure"),
        also=(("rcpt", "451 Temporary local problem - please try later"),),
        source="postfix",
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
        "service-closing",
        "The server closed the session (421): it is shutting down, overloaded, or will not serve this session any further now.",
        "Retry later: `mailctl send` and `queue flush` keep the message queued and retry it with backoff (`test send` queues nothing).",
        E.TEMPFAIL,
        codes=(421,),
        example=("mail", "421 4.3.2 Service shutting down, closing transmission channel"),
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
        "The server answered with a temporary failure ({reply}).",
        "Retry later: `mailctl send` and `queue flush` keep the message queued and retry it with backoff (`test send` queues nothing).",
        E.TEMPFAIL,
        codes=tuple(range(400, 500)),
    ),
    KnownFailure(
        "smtp-generic-5xx",
        "The server rejected the command permanently ({reply}).",
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
