"""A TLS handshake as the MX STARTTLS probe and the MTA-STS policy fetch need it: verified with
mailctl.net.tls's context (system CAs plus --ca-file, host name checked, TLS >= 1.2), and, when
that fails, once more without verification to say what the server offers (its certificate,
described by mailctl.net.certs, and its protocol version)."""

from __future__ import annotations

import ssl
import warnings
from dataclasses import dataclass
from typing import Any, Callable

from mailctl.errors import ConfigError, UsageError

EXPIRING_DAYS = 14
OLD_PROTOCOLS = ("SSLv2", "SSLv3", "TLSv1", "TLSv1.1")

# OpenSSL X509_V_ERR_* codes -> what went wrong
_VERIFY_KINDS = {9: "not-yet-valid", 10: "expired", 62: "name-mismatch"}


@dataclass
class TlsResult:
    verified: bool = False
    version: str | None = None
    cipher: str | None = None
    certificate: dict[str, Any] | None = None
    problem: str = ""  # "", expired, not-yet-valid, name-mismatch, untrusted, old-protocol, handshake
    detail: str = ""

    @property
    def expiring(self) -> bool:
        cert = self.certificate or {}
        return self.verified and cert.get("days_left") is not None and cert["days_left"] < EXPIRING_DAYS

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"verified": self.verified, "version": self.version, "cipher": self.cipher}
        if self.problem:
            d["problem"] = self.problem
            d["detail"] = self.detail
        if self.certificate:
            c = self.certificate
            d["certificate"] = {k: c.get(k) for k in ("subject", "san", "issuer", "not_after", "days_left", "expired", "sha256")}
        return d


def verifying_context(ca_file: str = "") -> ssl.SSLContext:
    """The one TLS builder's context (mailctl.net.tls): system CAs plus ca_file, host name checked."""
    from mailctl.net.tls import socket_context

    try:
        ctx, _mode = socket_context({"ca_file": ca_file} if ca_file else {}, "dns check")
    except ConfigError as exc:
        raise UsageError(f"--ca-file: {exc}", hint="pass a PEM CA bundle") from None
    return ctx


def _lenient_context() -> ssl.SSLContext:
    """No verification and every protocol OpenSSL still speaks: only to describe what a server
    offers after the verified handshake failed."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            ctx.minimum_version = ssl.TLSVersion.TLSv1
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        except (ValueError, ssl.SSLError):  # a build without the old protocols
            pass
    return ctx


def describe(der: bytes | None) -> dict[str, Any] | None:
    if not der:
        return None
    from mailctl.net.certs import describe_certificate

    try:
        return describe_certificate(der)
    except Exception:  # a certificate cryptography cannot parse: report without details
        return None


def handshake(dial: Callable[[], Any], server_name: str, context: ssl.SSLContext) -> tuple[ssl.SSLSocket | None, TlsResult]:
    """dial() gives a connected socket ready for the TLS handshake (after STARTTLS for SMTP).
    Returns the verified TLS socket (None when verification or the handshake failed) and what
    was learned. OSError from dial() or a timeout or reset during the handshake propagates
    (the caller reports the connection)."""
    sock = dial()
    try:
        tls = context.wrap_socket(sock, server_hostname=server_name)
    except ssl.SSLCertVerificationError as exc:
        sock.close()
        result = TlsResult(problem=_VERIFY_KINDS.get(exc.verify_code, "untrusted"),
                           detail=exc.verify_message or exc.reason or str(exc))
        _look(dial, server_name, result)
        return None, result
    except ssl.SSLError as exc:
        sock.close()
        result = TlsResult(problem="handshake", detail=exc.reason or str(exc))
        _look(dial, server_name, result)
        if result.version in OLD_PROTOCOLS:
            result.problem = "old-protocol"
        return None, result
    except OSError:  # a timeout or reset during the handshake: a connection problem
        sock.close()
        raise
    cipher = tls.cipher()
    result = TlsResult(verified=True, version=tls.version(), cipher=cipher[0] if cipher else None,
                       certificate=describe(tls.getpeercert(binary_form=True)))
    return tls, result


def _look(dial: Callable[[], Any], server_name: str, result: TlsResult) -> None:
    try:
        sock = dial()
    except Exception:
        return
    try:
        tls = _lenient_context().wrap_socket(sock, server_hostname=server_name)
    except (ssl.SSLError, OSError):
        sock.close()
        return
    try:
        cipher = tls.cipher()
        result.version, result.cipher = tls.version(), (cipher[0] if cipher else None)
        result.certificate = describe(tls.getpeercert(binary_form=True))
    finally:
        tls.close()


def reason(exc: BaseException) -> str:
    """A connection failure in a few words (timed out, connection refused, ...)."""
    if isinstance(exc, TimeoutError):  # socket.timeout too
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def problem_text(result: TlsResult, name: str) -> str:
    cert = result.certificate or {}
    if result.problem == "expired":
        return f"the certificate expired on {cert.get('not_after', '?')[:10]}"
    if result.problem == "not-yet-valid":
        return "the certificate is not valid yet"
    if result.problem == "name-mismatch":
        names = ", ".join(n.removeprefix("DNS:") for n in cert.get("san", [])) or cert.get("subject", "?")
        return f"the certificate is not valid for {name} (it names {names})"
    if result.problem == "untrusted":
        return f"the certificate is not trusted ({result.detail}; issuer {cert.get('issuer', '?')})"
    if result.problem == "old-protocol":
        return f"the server speaks only {result.version} (TLS 1.2 or newer is required)"
    return f"the TLS handshake failed ({result.detail})"


class Network:
    """What the probes that leave DNS share in one run: the TLS context, the per-step timeout,
    the ports (25 and 443; tests point them at local servers) and a once-per-key memo, so that
    concurrent checks needing the same thing (the MTA-STS policy) fetch it once."""

    def __init__(self, *, ca_file: str = "", timeout: float = 10.0, smtp_port: int = 25, https_port: int = 443,
                 ehlo_name: str = "") -> None:
        import threading

        self.ca_file = ca_file
        self.timeout = timeout
        self.smtp_port = smtp_port
        self.https_port = https_port
        self.ehlo_name = ehlo_name
        self._context: ssl.SSLContext | None = None
        self._lock = threading.Lock()
        self._build_lock = threading.Lock()
        self._memo: dict[Any, Any] = {}

    @property
    def context(self) -> ssl.SSLContext:
        with self._build_lock:
            if self._context is None:
                self._context = verifying_context(self.ca_file)
            return self._context

    def check_ca_file(self) -> None:
        """A usage error now for an unreadable or non-PEM --ca-file (cheap: no system CAs)."""
        if not self.ca_file:
            return
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=self.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise UsageError(f"--ca-file {self.ca_file}: {getattr(exc, 'strerror', None) or getattr(exc, 'reason', None) or exc}",
                             hint="pass a PEM CA bundle") from None

    def warm(self) -> None:
        """Build the context in the background (loading the system CA store takes tens of ms),
        so that it is ready when the first probe needs it."""
        import threading

        def build():
            try:
                self.context
            except Exception:  # the probe that needs it reports it
                pass

        threading.Thread(target=build, name="mailctl-tls-context", daemon=True).start()

    def once(self, key: Any, fn: Callable[[], Any]) -> Any:
        from concurrent.futures import Future

        with self._lock:
            fut = self._memo.get(key)
            owner = fut is None
            if owner:
                fut = self._memo[key] = Future()
        if owner:
            try:
                fut.set_result(fn())
            except BaseException as exc:
                fut.set_exception(exc)
        return fut.result()


class Deadline:
    """An overall bound for one probe, on top of the per-step socket timeouts: a server that
    drips a byte per step (or sends endless continuation lines) would otherwise keep a probe
    alive forever. When the budget is spent, every socket handed to watch() is shut down, so
    the blocked read fails at once."""

    def __init__(self, seconds: float) -> None:
        import threading

        self.expired = False
        self._socks: list = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def watch(self, sock):
        with self._lock:
            self._socks.append(sock)
            if self.expired:
                self._shut(sock)
        return sock

    def _fire(self) -> None:
        with self._lock:
            self.expired = True
            for s in self._socks:
                self._shut(s)

    @staticmethod
    def _shut(sock) -> None:
        import socket as _socket

        try:
            sock.shutdown(_socket.SHUT_RDWR)
        except OSError:
            pass

    def __enter__(self) -> "Deadline":
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()


@dataclass
class HttpsReply:
    """One GET over a verified socket: status and content type, the body when it came whole
    (200 and within the limit), else error ("http" | "too-large") and detail."""

    status: int | None = None
    content_type: str = ""
    body: bytes | None = None
    error: str = ""
    detail: str = ""


def https_get(tls, host: str, path: str, net: "Network", *, agent: str, accept: str, limit: int,
              redirect_note: str) -> HttpsReply:
    """GET https://host/path over `tls` (already verified for host): no redirects followed
    (`redirect_note` says why, after the Location), at most `limit` bytes read."""
    import http.client

    out = HttpsReply()
    # the verified socket is handed in; passing the context only spares http.client building
    # (and loading the CA store for) a default one it would not use
    conn = http.client.HTTPSConnection(host, net.https_port, timeout=net.timeout, context=net.context)
    conn.sock = tls
    try:
        conn.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host)
        conn.putheader("User-Agent", agent)
        conn.putheader("Accept", accept)
        conn.endheaders()
        resp = conn.getresponse()
        out.status = resp.status
        out.content_type = (resp.getheader("Content-Type") or "").split(";")[0].strip().lower()
        if resp.status != 200:
            location = resp.getheader("Location")
            out.error = "http"
            out.detail = f"HTTP {resp.status} {resp.reason}" + (f" (redirect to {location}{redirect_note})" if location else "")
            return out
        body = resp.read(limit + 1)
        if len(body) > limit:
            out.error = "too-large"
            return out
        out.body = body
    except (OSError, http.client.HTTPException) as exc:
        out.error, out.detail = "http", reason(exc)
    finally:
        conn.close()
    return out
