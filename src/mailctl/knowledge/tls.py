"""Exact explanations of TLS failures and timeouts: facts the transport measured -> cause and fix.

The entries of knowledge.smtp are general ("the certificate is not valid for the name"): they
match an error. These functions take what was actually seen (the names a certificate is valid
for, its dates, its issuer and the ca_file, the TLS version an old server speaks, the stage
that timed out and after how long) and say it, with the exact fix. The ids are knowledge.smtp's
(tls-hostname-mismatch, tls-expired, ... connect-timeout), so --json consumers and the table in
docs/smtp.md keep one vocabulary; the transport sets the result as the error's explanation.

Facts come as plain mappings (net.certs.CertificateProblem.to_dict()): knowledge imports
nothing of mailctl's but errors (and its own modules)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Mapping

from mailctl.errors import ExitCode
from mailctl.knowledge.smtp import Explanation

_NAMES_SHOWN = 5  # a certificate for 40 names: the first few, then "and N more"


def _when(iso: str | None) -> str:
    """'2026-09-29 12:00 UTC' from an ISO timestamp."""
    if not iso:
        return "?"
    try:
        value = datetime.fromisoformat(iso).astimezone(timezone.utc)
    except ValueError:
        return iso
    return value.strftime("%Y-%m-%d %H:%M UTC")


def _span(a: str | None, b: str | None) -> str:
    """How long from a to b, in the largest unit that says it: '62 days', '5 hours', '3 minutes'."""
    try:
        seconds = abs((datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds())  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "?"
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = int(seconds // size)
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return f"{int(seconds)} seconds"


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:_NAMES_SHOWN])
    more = len(names) - _NAMES_SHOWN
    return shown + (f" and {more} more" if more > 0 else "")


def _host_suggestion(names: list[str]) -> str:
    """A name to set host to: the first exact name, else a name under the first wildcard."""
    for name in names:
        if not name.startswith("*."):
            return name
    return f"a name under {names[0][2:]}" if names else "NAME"


_IDS = {
    "name-mismatch": "tls-hostname-mismatch",
    "expired": "tls-expired",
    "not-yet-valid": "tls-not-yet-valid",
    "unknown-issuer": "tls-self-signed",
    "self-signed": "tls-self-signed",
    "ca-file-did-not-sign": "tls-self-signed",
    "weak-key": "tls-verify-failed",
    "weak-signature": "tls-verify-failed",
}


def certificate_explanation(problem: Mapping[str, Any], context: Mapping[str, Any]) -> Explanation:
    """The cause and fix of a refused certificate, from net.certs.CertificateProblem.to_dict()."""
    profile = context.get("profile") or "NAME"
    kind = problem.get("kind", "other")
    cause, fix = _CERT_TEXTS.get(kind, _other)(problem, str(profile))
    for extra in problem.get("also") or ():
        cause += " " + _ALSO[extra](problem)
    return Explanation(_IDS.get(kind, "tls-verify-failed"), cause, fix, ExitCode.UNAVAILABLE)


def _name_mismatch(p: Mapping[str, Any], profile: str) -> tuple[str, str]:
    names = list(p.get("names") or [])
    host = p.get("host", "")
    target = _host_suggestion(names)
    if not names:
        return (f"The server's certificate names no host at all (no SAN, no CN); the name used was {host}.",
                "The server's administrator must issue a certificate for the server's name; meanwhile pin this one after checking it with them: "
                f"mailctl profile edit {profile} --tls-fingerprint SHA256.")
    cause = f"The server's certificate is valid for {_names(names)}, not for {host} (the name mailctl connected to)."
    if target.startswith("a name under"):
        fix = f"Connect to one of them: set host to {target}: mailctl profile edit {profile} --host HOST."
    else:
        fix = f"Connect to one of them, or set host to {target}: mailctl profile edit {profile} --host {target}."
    return cause, fix


def _expired(p: Mapping[str, Any], profile: str) -> tuple[str, str]:
    return (f"The server's certificate expired on {_when(p.get('not_after'))}, {_span(p.get('not_after'), p.get('now'))} ago "
            f"(this machine's clock says {_when(p.get('now'))}).",
            "The server's administrator must renew it. Do not turn verification off; if you must send before that, pin this "
            f"certificate after checking it with them: mailctl profile edit {profile} --tls-fingerprint SHA256 (the SHA-256 below).")


def _not_yet_valid(p: Mapping[str, Any], profile: str) -> tuple[str, str]:
    return (f"The server's certificate is valid only from {_when(p.get('not_before'))}, {_span(p.get('now'), p.get('not_before'))} "
            f"from now by this machine's clock ({_when(p.get('now'))}).",
            "If this machine's clock is wrong, fix it (timedatectl; an NTP client); otherwise the server's administrator installed "
            "a certificate too early.")


def _unknown_issuer(p: Mapping[str, Any], profile: str) -> tuple[str, str]:
    return (f"The server's certificate was issued by {p.get('issuer') or 'an unnamed CA'}, which this machine's trust store "
            "does not hold; no ca_file is set.",
            f"Get that CA's certificate from the server's administrator and give it: mailctl profile edit {profile} --ca-file /path/ca.pem "
            "(or pin the server certificate: --tls-fingerprint SHA256).")


def _self_signed(p: Mapping[str, Any], profile: str) -> tuple[str, str]:
    leaf = p.get("issuer") or "itself"
    return (f"The server's certificate is self-signed ({leaf}): no CA vouches for it, and no ca_file is set.",
            f"Check its SHA-256 (below) with the server's administrator, then pin it: mailctl profile edit {profile} "
            "--tls-fingerprint SHA256; or, if it is the CA itself, --ca-file /path/cert.pem.")


def _ca_file_did_not_sign(p: Mapping[str, Any], profile: str) -> tuple[str, str]:
    held = "; ".join(p.get("ca_file_subjects") or []) or "no readable certificate"
    issuer = p.get("issuer") or "?"
    return (f"The CA in ca_file {p.get('ca_file')} did not sign this certificate: it was issued by {issuer}, "
            f"and the ca_file holds {held}.",
            f"Ask the server's administrator for the CA that issued it ({issuer}) and set it: mailctl profile edit {profile} "
            "--ca-file /path/ca.pem; check that host points at the server you mean.")


def _weak_key(p: Mapping[str, Any], profile: str) -> tuple[str, str]:
    key = f"{p.get('key') or 'a'} key of {p.get('key_bits')} bits" if p.get("key_bits") else f"{p.get('key') or 'a'} key"
    return (f"The server's certificate (or a CA in its chain) has a weak {key}, which OpenSSL on this machine refuses "
            f"({p.get('verify_message') or 'key too small'}).",
            "The server's administrator must issue a certificate with an RSA key of at least 2048 bits or an EC key.")


def _weak_signature(p: Mapping[str, Any], profile: str) -> tuple[str, str]:
    alg = p.get("signature_hash") or "a weak digest"
    return (f"The server's certificate chain is signed with {alg.upper() if alg != 'a weak digest' else alg}, which OpenSSL on this "
            f"machine refuses ({p.get('verify_message') or 'signature too weak'}).",
            "The server's administrator must reissue the certificate signed with SHA-256 or better.")


def _other(p: Mapping[str, Any], profile: str) -> tuple[str, str]:
    return (f"The server's certificate could not be verified: {p.get('verify_message') or 'unknown reason'}.",
            f"Check the certificate shown below with the server's administrator; a private CA: mailctl profile edit {profile} "
            "--ca-file /path/ca.pem.")


_CERT_TEXTS = {
    "name-mismatch": _name_mismatch, "expired": _expired, "not-yet-valid": _not_yet_valid,
    "unknown-issuer": _unknown_issuer, "self-signed": _self_signed, "ca-file-did-not-sign": _ca_file_did_not_sign,
    "weak-key": _weak_key, "weak-signature": _weak_signature,
}
_ALSO = {
    "name-mismatch": lambda p: f"It is also not valid for {p.get('host')} (it names {_names(list(p.get('names') or []))}).",
    "expired": lambda p: f"It also expired on {_when(p.get('not_after'))}.",
}


def pin_mismatch_explanation(got: str, want: str, context: Mapping[str, Any]) -> Explanation:
    """The certificate's SHA-256 and the pinned one, side by side."""
    profile = context.get("profile") or "NAME"
    return Explanation(
        "tls-fingerprint-mismatch",
        f"The server's certificate has SHA-256 {got}; the profile pins {want}. The certificate was renewed, "
        "or something between here and the server is intercepting the connection.",
        f"Check the new SHA-256 with the server's administrator, then: mailctl profile edit {profile} --tls-fingerprint {got}.",
        ExitCode.UNAVAILABLE,
    )


def old_protocol_explanation(version: str | None, context: Mapping[str, Any]) -> Explanation:
    """The server refused TLS >= 1.2; `version`: what it speaks (a second handshake found out),
    None when even that failed."""
    spoken = f"only {version}" if version else "only TLS older than 1.2 (or no TLS mailctl can speak)"
    return Explanation(
        "tls-protocol-too-old",
        f"{context.get('host')}:{context.get('port')} offers {spoken}; mailctl requires TLS 1.2 or newer.",
        "Ask the server's administrator to enable TLS 1.2 or 1.3 (every supported mail server has them); there is no setting "
        "to allow older TLS.",
        ExitCode.UNAVAILABLE,
    )


def weak_tls_explanation(version: str, cipher: str | None, context: Mapping[str, Any]) -> Explanation:
    """The server completed a handshake only when weak ciphers or keys were allowed."""
    return Explanation(
        "tls-handshake-failed",
        f"{context.get('host')}:{context.get('port')} completes a {version} handshake only with settings OpenSSL on this "
        f"machine refuses as weak (it chose {cipher or 'a weak cipher'}: a weak cipher, a short Diffie-Hellman or RSA key).",
        "Ask the server's administrator to offer modern ciphers (ECDHE with AES-GCM or ChaCha20) and keys of 2048 bits or more.",
        ExitCode.UNAVAILABLE,
    )


# --- timeouts -------------------------------------------------------------------------------
# What each stage waits for, and the likely causes when it does not come.
_TIMEOUT_CAUSES: dict[str, tuple[str, str, str]] = {
    "connect": (
        "connect-timeout",
        "no answer to the TCP connection request: a firewall on the way drops the packets (many networks block port 25, "
        "some 465/587), the host is down, or host/port are wrong",
        "Check host and port; try the submission ports (587 STARTTLS, 465 TLS) or a proxy (--proxy socks5://HOST:PORT).",
    ),
    "tls": (
        "timeout",
        "the TCP connection was accepted but the TLS handshake got no answer: the port is not an implicit-TLS port (it waits "
        "for the client in plaintext, or it is no mail server), or a firewall or proxy accepts connections and drops them",
        "Check the port: 465 is implicit TLS (--security tls), 587 is STARTTLS (--security starttls).",
    ),
    "banner": (
        "plaintext-to-tls-port",
        "the TCP connection was accepted but no greeting came: the port expects TLS at once (implicit TLS, usually 465) "
        "while mailctl waited for a plaintext greeting, or the server delays its greeting on purpose (a tarpit, a greet pause for unknown clients), "
        "or a firewall or load balancer accepts connections and drops them",
        "If the port is 465: mailctl profile edit {profile} --security tls; a deliberate delay longer than the timeout: "
        "--timeout 60; otherwise ask the mail admins whether this address may connect.",
    ),
    "ehlo": (
        "timeout",
        "the server did not answer EHLO: it may look up this machine's address in DNS (reverse DNS) slowly, or tarpit clients it "
        "does not know",
        "Retry; raise the timeout (--timeout 60) if the server is slow, and ask its admins about this address.",
    ),
    "ehlo_tls": (
        "timeout",
        "the server did not answer EHLO after STARTTLS",
        "Retry; raise the timeout (--timeout 60) if the server is slow.",
    ),
    "starttls": (
        "timeout",
        "no answer to STARTTLS or in the TLS handshake after it: something between here and the server (a firewall that "
        "inspects SMTP) may interfere with STARTTLS",
        "Try implicit TLS on port 465 (--security tls --port 465), or check the network path.",
    ),
    "auth": (
        "timeout",
        "the server did not answer AUTH: its account backend (LDAP, Active Directory, a cloud login) is slow or down",
        "Retry later; raise the timeout (--timeout 60) if logins are slow there.",
    ),
    "mail": ("timeout", "the server did not answer MAIL FROM: it may check the sender slowly, or tarpit",
             "Retry later; raise the timeout (--timeout 60)."),
    "rcpt": ("timeout", "the server did not answer RCPT TO: it may verify recipients slowly (callouts), or tarpit",
             "Retry later; raise the timeout (--timeout 60)."),
    "data": ("timeout", "the server did not answer after the message data: it may scan the content slowly. It may have "
             "accepted the message all the same",
             "Check whether the message arrived before sending it again; raise the timeout (--timeout 120) for large messages."),
}


def timeout_explanation(stage: str, waited: float, timeout: float, context: Mapping[str, Any], *,
                        exit_code: ExitCode | None = ExitCode.UNAVAILABLE) -> Explanation:
    """A stage that timed out: which, after how long, and the likely causes for that stage.
    The ids are knowledge.smtp's (connect-timeout, plaintext-to-tls-port, timeout)."""
    failure_id, causes, fix = _TIMEOUT_CAUSES.get(stage, ("timeout", "the server stopped answering", "Retry; raise the timeout."))
    where = f"{context.get('host')}:{context.get('port')}"
    cause = f"Timed out at {stage} after {waited:.1f} s (timeout {timeout:g} s) waiting for {where}: {causes}."
    profile = context.get("profile") or "NAME"
    if stage == "banner" and str(context.get("port")) == "465":
        fix = f"Port 465 is implicit TLS: mailctl profile edit {profile} --security tls."
    return Explanation(failure_id, cause, fix.format(profile=profile), exit_code)
