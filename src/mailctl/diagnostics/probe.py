"""Staged probes: `test connect` and `test send` as data.

probe(profile, secrets, message=None, quit_after=None) runs the transport's stages one by one,
timing each, and returns a ProbeReport: every stage with its result, the TLS session and the
certificate, the server's capabilities, the redacted transcript, the knowledge base's
explanation of a failure, and the exit code (docs/smtp.md has the table). It never raises for
a failure of the server: the failure is part of the report."""

from __future__ import annotations

import dataclasses
import hashlib
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from mailctl.diagnostics.knowledge import Explanation, explain
from mailctl.errors import ExitCode, MailctlError, UnavailableError, UsageError

SMTP_STAGES = ("resolve", "connect", "tls", "banner", "ehlo", "starttls", "ehlo_tls", "auth", "mail", "rcpt", "data", "quit")
QUIT_AFTER_CHOICES = ("resolve", "connect", "tls", "banner", "ehlo", "starttls", "auth", "mail", "rcpt", "data", "token")
# Graph/EWS stages one can stop after; the SMTP names stop an HTTP probe before its request.
HTTP_QUIT_AFTER = ("token", "connect", "tls")


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
            "result": self.result,
            "transcript": self.transcript if transcript else None,
        }


class _Stop(Exception):
    def __init__(self, err: MailctlError) -> None:
        super().__init__(err.message)
        self.err = err


# --- certificates ------------------------------------------------------------------------
def describe_certificate(der: bytes, *, now: datetime | None = None) -> dict[str, Any]:
    """Subject, SAN, issuer, validity (with days left) and SHA-256 fingerprint of a DER cert."""
    from cryptography import x509
    from cryptography.x509.oid import ExtensionOID

    now = now or datetime.now(timezone.utc)
    cert = x509.load_der_x509_certificate(der)
    try:
        san_ext = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
        san = [f"DNS:{n}" for n in san_ext.get_values_for_type(x509.DNSName)] + [
            f"IP:{ip}" for ip in san_ext.get_values_for_type(x509.IPAddress)
        ]
    except x509.ExtensionNotFound:
        san = []
    not_after = cert.not_valid_after_utc
    not_before = cert.not_valid_before_utc
    digest = hashlib.sha256(der).hexdigest().upper()
    return {
        "subject": cert.subject.rfc4514_string(),
        "san": san,
        "issuer": cert.issuer.rfc4514_string(),
        "self_signed": cert.subject == cert.issuer,
        "serial": format(cert.serial_number, "X"),
        "not_before": not_before.isoformat(),
        "not_after": not_after.isoformat(),
        "days_left": (not_after - now).days,
        "expired": not_after < now,
        "sha256": ":".join(digest[i:i + 2] for i in range(0, len(digest), 2)),
    }


def _peer_chain(sock) -> list[bytes]:
    """DER certificates of the peer: the chain where the ssl module exposes it, else the leaf."""
    sslobj = getattr(sock, "_sslobj", None)
    for name in ("get_verified_chain", "get_unverified_chain"):
        getter = getattr(sslobj, name, None)
        if getter is not None:
            try:
                chain = getter()
                if chain:
                    import ssl

                    out = []
                    for cert in chain:
                        data = cert.public_bytes() if hasattr(cert, "public_bytes") else cert
                        out.append(ssl.PEM_cert_to_DER_cert(data) if isinstance(data, str) else data)
                    return out
            except Exception:  # pragma: no cover - best effort
                pass
    der = sock.getpeercert(binary_form=True)
    return [der] if der else []


def _tls_info(transport, verification: str) -> dict[str, Any]:
    sock = transport.session.sock
    cipher = sock.cipher() or ("", "", 0)
    return {
        "version": sock.version(),
        "cipher": cipher[0],
        "bits": cipher[2],
        "verification": verification,
    }


def _verification_text(transport) -> str:
    mode = transport.tls_mode
    if mode == "fingerprint":
        return "ok: certificate matches the pinned SHA-256 fingerprint"
    if mode == "none":
        return "NOT verified (tls_verify = false)"
    if mode == "ca_file":
        return f"ok: chain verified (system store + ca_file {transport.profile.get('ca_file')}), host name matches"
    return "ok: chain verified (system store), host name matches"


def _fetch_certificate_unverified(profile, secrets, server) -> list[bytes]:
    """After a verification failure: connect again without verifying, only to show the
    certificate. Nothing but EHLO/STARTTLS is sent on that connection."""
    from mailctl.transports.smtp import SmtpTransport

    values = dict(profile.values)
    values.update({"tls_verify": False, "tls_fingerprint": "", "auth": "none"})
    try:
        copy = dataclasses.replace(profile, values=values)
    except TypeError:  # pragma: no cover - not a dataclass
        return []
    transport = SmtpTransport(copy, secrets)
    transport.timeout = min(transport.timeout, 10.0)
    try:
        transport.connect(server, None if transport.proxy_spec() else transport.resolve(server))
        if transport.security == "tls":
            transport.tls_handshake()
        else:
            transport.banner()
            transport.ehlo()
            transport.starttls()
        return _peer_chain(transport.session.sock)
    except Exception:
        return []
    finally:
        transport._drop()


CAPABILITY_KEYS = ("size", "auth", "pipelining", "smtputf8", "8bitmime", "starttls", "chunking", "dsn", "enhancedstatuscodes")


def capabilities_of(session) -> dict[str, Any]:
    features = dict(session.esmtp_features)
    caps: dict[str, Any] = {}
    if "size" in features:
        size = features["size"].strip()
        caps["size"] = int(size) if size.isdigit() else size or None
    caps["auth"] = features.get("auth", "").upper().split() if "auth" in features else []
    for key in ("pipelining", "smtputf8", "8bitmime", "starttls", "chunking", "dsn", "enhancedstatuscodes"):
        caps[key] = key in features
    caps["all"] = {k: v for k, v in features.items()}
    return caps


# --- the probes ----------------------------------------------------------------------------
def probe(profile, secrets, *, message: ProbeMessage | None = None, quit_after: str | None = None, transcript: bool = True) -> ProbeReport:
    if profile.type == "file":
        return _probe_file(profile, message)
    if profile.type in ("graph", "ews"):
        from mailctl.diagnostics.http_probe import probe_http

        return probe_http(profile, secrets, message=message, quit_after=quit_after)
    if quit_after == "token":
        raise UsageError("--quit-after token: only graph and ews profiles have a token stage",
                         hint="for an SMTP profile stop after the login with --quit-after auth")
    if profile.type != "smtp":
        report = ProbeReport(profile.name, profile.type, profile.server)
        report.exit_code = int(ExitCode.CONFIG)
        report.error = f"`test` supports smtp, file, graph and ews profiles; profile {profile.name!r} is {profile.type}"
        report.hint = "use `mailctl send` to try this transport"
        return report
    return _probe_smtp(profile, secrets, message, quit_after, transcript)


def _probe_file(profile, message: ProbeMessage | None) -> ProbeReport:
    from mailctl.transports.file import FileTransport

    start = time.perf_counter()
    report = ProbeReport(profile.name, "file", profile.get("maildir") or "")
    transport = FileTransport(profile, None)
    t0 = time.perf_counter()
    try:
        transport.open()
        report.stages.append(StageResult("maildir", "ok", time.perf_counter() - t0, str(transport.maildir), "Maildir ready (tmp, new, cur)"))
        if message is not None:
            t0 = time.perf_counter()
            result = transport.send(message.raw, message.sender, message.recipients)
            report.stages.append(StageResult("deliver", "ok", time.perf_counter() - t0, str(transport.maildir), result.location or ""))
            report.result = result.to_dict()
        report.server = str(transport.maildir)
    except MailctlError as err:
        explanation = explain(err)
        report.stages.append(StageResult("maildir", "failed", time.perf_counter() - t0, str(transport.maildir), error=err.message, explanation=explanation, exit_code=int(err.exit_code)))
        report.exit_code, report.error, report.hint = int(err.exit_code), err.message, err.hint
    finally:
        transport.close()
    report.duration = time.perf_counter() - start
    return report


def _probe_smtp(profile, secrets, message, quit_after, want_transcript) -> ProbeReport:
    from mailctl.transports.smtp import SmtpTransport, TranscriptRecorder

    start = time.perf_counter()
    recorder = TranscriptRecorder()
    transport = SmtpTransport(profile, secrets, recorder=recorder)
    report = ProbeReport(
        profile.name,
        "smtp",
        transport.servers[0].address,
        settings={
            "security": transport.security,
            "auth": transport.auth_method,
            "username": profile.get("username") or None,
            "ehlo_name": transport.ehlo_name,
            "timeout": transport.timeout,
            "proxy": None,
            "alternate": transport.servers[1].address if len(transport.servers) > 1 else None,
        },
    )

    def run(name: str, server, fn: Callable[[], Any], describe: Callable[[Any], tuple[str, dict]] | None = None) -> Any:
        t0 = time.perf_counter()
        try:
            value = fn()
        except MailctlError as err:
            duration = time.perf_counter() - t0
            explanation = getattr(err, "explanation", None) or explain(err, context={"profile": profile.name, "host": server.host, "port": server.port})
            report.stages.append(
                StageResult(name, "failed", duration, server.address, error=err.message, explanation=explanation, exit_code=int(err.exit_code),
                            data=_reply_data(err))
            )
            raise _Stop(err) from err
        detail, data = describe(value) if describe else ("", {})
        report.stages.append(StageResult(name, "ok", time.perf_counter() - t0, server.address, detail, data))
        return value

    def skip(name: str, server, why: str) -> None:
        report.stages.append(StageResult(name, "skipped", 0.0, server.address, why))

    if quit_after == "tls" and transport.security == "starttls":
        quit_after = "starttls"  # the TLS handshake of a STARTTLS profile is the starttls stage
    stop_error: MailctlError | None = None
    reached = None
    try:
        proxy = transport.proxy_spec()
        if proxy is not None:
            report.settings["proxy"] = proxy.display
        for index, server in enumerate(transport.servers):
            try:
                if proxy is not None:
                    addrs = None
                    skip("resolve", server, f"resolved by the proxy {proxy.display}" if proxy.scheme != "socks5" else "resolved when connecting through the proxy")
                else:
                    addrs = run("resolve", server, lambda: transport.resolve(server), _describe_addrs)
                if quit_after == "resolve":
                    reached = server
                    break
                run("connect", server, lambda: transport.connect(server, addrs), lambda _v: _describe_peer(transport))
                if transport.security == "tls":
                    try:
                        run("tls", server, transport.tls_handshake, lambda _v: _describe_tls(report, transport))
                    except _Stop as stop:
                        _attach_failed_certificate(report, profile, secrets, server, stop.err)
                        raise
                if quit_after in ("connect", "tls"):
                    reached = server
                    break
                run("banner", server, transport.banner, lambda v: (f"{v[0]} {v[1]}".replace("\n", " "), {"code": v[0], "text": v[1]}))
                if quit_after == "banner":
                    reached = server
                    break
                run("ehlo", server, transport.ehlo, lambda _v: _describe_caps(report, transport))
                if quit_after == "ehlo":
                    reached = server
                    break
                if transport.security == "starttls":
                    try:
                        run("starttls", server, transport.starttls, lambda _v: _describe_tls(report, transport))
                    except _Stop as stop:
                        _attach_failed_certificate(report, profile, secrets, server, stop.err)
                        raise
                    run("ehlo_tls", server, transport.ehlo, lambda _v: _describe_caps(report, transport))
                else:
                    skip("starttls", server, "security = tls (implicit TLS)" if transport.security == "tls" else "security = none: the connection is NOT encrypted")
                reached = server
                break
            except _Stop as stop:
                transport._drop()
                more = index + 1 < len(transport.servers)
                if isinstance(stop.err, UnavailableError) and more:
                    report.stages[-1].detail = f"failing over to the alternate server {transport.servers[index + 1].address}"
                    continue
                raise
        if reached is not None:
            report.server = reached.address
            report.used_alternate = reached.alternate
        if quit_after in ("resolve", "connect", "tls", "banner", "ehlo", "starttls") or reached is None:
            pass
        else:
            server = reached
            if transport.auth_method == "none":
                skip("auth", server, "auth = none")
            else:
                run("auth", server, transport.authenticate, lambda mech: (f"authenticated as {transport.authenticated_as} with {mech}", {"mechanism": mech, "username": transport.authenticated_as}))
            if message is not None and quit_after != "auth":
                from mailctl.message import strip_bcc

                raw = strip_bcc(message.raw)
                run("mail", server, lambda: transport.mail_from(message.sender, raw, message.recipients), lambda v: (f"{v[0]} {v[1]}", {"sender": message.sender}))
                if quit_after != "mail":
                    refused = run("rcpt", server, lambda: transport.rcpt_to(message.recipients),
                                  lambda r: (f"{len(message.recipients) - len(r)} accepted, {len(r)} refused" if r else f"{len(message.recipients)} accepted", {"recipients": message.recipients, "refused": r}))
                    if quit_after != "rcpt":
                        from mailctl.transports.smtp import queue_id_of

                        code, text = run("data", server, lambda: transport.send_data(raw), lambda v: (f"{v[0]} {v[1]}".replace("\n", " "), {"code": v[0], "text": v[1], "queue_id": queue_id_of(v[1])}))
                        report.result = {
                            "server": server.address,
                            "reply": f"{code} {text}".replace("\n", " "),
                            "queue_id": queue_id_of(text),
                            "refused": refused,
                            "used_alternate": server.alternate,
                        }
                        if refused:
                            report.exit_code = int(ExitCode.PROBLEMS)
                            report.error = f"{len(refused)} of {len(message.recipients)} recipients refused"
    except _Stop as stop:
        stop_error = stop.err
    except MailctlError as err:  # configuration problems before any stage (proxy URL, ca_file)
        stop_error = err
        report.stages.append(StageResult("config", "failed", 0.0, report.target, error=err.message, explanation=explain(err), exit_code=int(err.exit_code)))
    finally:
        if transport.session is not None:
            t0 = time.perf_counter()
            server = transport.server
            reply = transport.quit()
            report.stages.append(StageResult("quit", "ok" if reply else "skipped", time.perf_counter() - t0, server.address if server else "",
                                             f"{reply[0]} {_text(reply[1])}" if reply else "connection closed"))
    if stop_error is not None:
        report.exit_code = int(stop_error.exit_code)
        report.error = stop_error.message
        report.hint = stop_error.hint
        failed = report.failed_stage
        if failed and failed.explanation and not report.hint:
            report.hint = failed.explanation.fix
    report.transcript = recorder.to_list() if want_transcript else None
    report.duration = time.perf_counter() - start
    return report


def _text(v) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def _reply_data(err: MailctlError) -> dict[str, Any]:
    data = {}
    for key in ("code", "enhanced", "text", "failure_id", "refused"):
        value = getattr(err, key, None)
        if value not in (None, ""):
            data[key] = value
    return data


def _describe_addrs(addrs) -> tuple[str, dict]:
    seen: list[str] = []
    for *_rest, sockaddr in addrs:
        if sockaddr[0] not in seen:
            seen.append(sockaddr[0])
    return ", ".join(seen), {"addresses": seen}


def _describe_peer(transport) -> tuple[str, dict]:
    try:
        peer = transport.session.sock.getpeername()
        text = f"{peer[0]}:{peer[1]}"
    except (OSError, AttributeError):
        text = ""
    proxy = transport.proxy_spec()
    if proxy is not None:
        return f"through {proxy.display}", {"proxy": proxy.display, "peer": text}
    return text, {"peer": text}


def _describe_tls(report: ProbeReport, transport) -> tuple[str, dict]:
    info = _tls_info(transport, _verification_text(transport))
    report.tls = info
    report.certificates = [describe_certificate(der) for der in _peer_chain(transport.session.sock)]
    return f"{info['version']} {info['cipher']}; {info['verification']}", dict(info)


def _describe_caps(report: ProbeReport, transport) -> tuple[str, dict]:
    caps = capabilities_of(transport.session)
    if report.capabilities and report.capabilities.get("starttls"):
        caps["starttls"] = True  # offered before TLS; a server stops advertising it afterwards
    report.capabilities = caps
    names = []
    if caps.get("size") is not None:
        names.append(f"SIZE {caps['size']}")
    if caps["auth"]:
        names.append("AUTH " + " ".join(caps["auth"]))
    names += [k.upper() for k in ("starttls", "pipelining", "smtputf8", "8bitmime", "chunking") if caps.get(k)]
    return ", ".join(names), {"capabilities": {k: v for k, v in caps.items() if k != "all"}}


def _attach_failed_certificate(report: ProbeReport, profile, secrets, server, err: MailctlError) -> None:
    import ssl

    cause = err.__cause__
    if not isinstance(cause, ssl.SSLCertVerificationError) and getattr(err, "failure_id", None) != "tls-fingerprint-mismatch":
        return
    chain = _fetch_certificate_unverified(profile, secrets, server)
    if chain:
        report.certificates = [describe_certificate(der) for der in chain]
        failed = report.failed_stage
        report.tls = {"version": None, "cipher": None, "bits": None, "verification": f"FAILED: {failed.error if failed else 'verification failed'}"}
