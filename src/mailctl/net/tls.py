"""The one TLS builder: a profile's tls_verify, ca_file and tls_fingerprint -> how the peer is
verified, as an ssl.SSLContext for sockets (SMTP) and as the `verify=` value requests needs
(Graph, EWS, Gmail API, the identity providers).

Modes (TlsConfig.mode):
- system:      the system CA store, host name checked.
- ca_file:     the system CA store plus the profile's ca_file (an *extra* CA, never a
               replacement), host name checked.
- fingerprint: a SHA-256 pin of the server certificate replaces CA verification (like msmtp's
               tls_fingerprint): the context does not verify, the caller compares
               TlsConfig.matches(peer_der) right after the handshake.
- none:        tls_verify = false: nothing is verified (the user's explicit choice).

Sockets get TLS >= 1.2. requests cannot pin a certificate, so for HTTP a pin is not applied
and the chain is verified as the other two values say (as before: tls_fingerprint is an SMTP
setting). requests needs a file for `verify=`: the system bundle (system_ca_bundle()), or a
temporary PEM bundle of the system CAs plus ca_file, or False.

The two consumers word a bad ca_file differently, as they always have: the socket context
says "ca_file X: no such file" / "not a PEM CA bundle"; requests_verify() says
"profile 'p': cannot read ca_file X: ..." / "holds no PEM certificate" with a hint."""

from __future__ import annotations

import atexit
import hashlib
import hmac
import os
import re
import ssl
import sys
from dataclasses import dataclass
from typing import Any, Mapping

from mailctl.errors import ConfigError

SYSTEM = "system"
CA_FILE = "ca_file"
FINGERPRINT = "fingerprint"
NONE = "none"
MODES = (SYSTEM, CA_FILE, FINGERPRINT, NONE)

PEM_MARKER = b"-----BEGIN CERTIFICATE-----"
BUNDLE_PREFIX = "mailctl-ca-"

_shared_bundles: dict[str, str] = {}  # expanded ca_file path -> combined bundle (removed at exit)


def system_ca_bundle() -> str | None:
    """The system CA bundle as a file (what OpenSSL would load), else certifi's; None if neither."""
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile):
        if candidate and os.path.isfile(candidate):
            return candidate
    try:
        import certifi

        return certifi.where()
    except ImportError:  # pragma: no cover - requests depends on certifi
        return None


def normalise_fingerprint(value: str | None) -> str:
    """'AB:CD:...' or 'abcd...' -> lower-case hex without separators."""
    return re.sub(r"[^0-9a-f]", "", (value or "").lower())


def format_fingerprint(digest: bytes) -> str:
    return ":".join(f"{b:02X}" for b in digest)


def fingerprint_of(der: bytes) -> str:
    """The SHA-256 of a DER certificate, lower-case hex (what a pin is compared with)."""
    return hashlib.sha256(der).hexdigest()


def _flag(value: Any, default: bool = True) -> bool:
    if value is None or value == "":
        return default
    if isinstance(value, str):
        return value.strip().lower() not in ("false", "0", "no", "off")
    return bool(value)


@dataclass(frozen=True)
class TlsConfig:
    """How one profile verifies its peers. Build it with tls_config(values, profile)."""

    profile: str = ""  # the profile's name, for messages
    verify: bool = True  # tls_verify
    ca_file: str = ""  # as written in the profile
    fingerprint: str = ""  # tls_fingerprint as written (any separators; see normalise_fingerprint)

    @property
    def mode(self) -> str:
        """system, ca_file, fingerprint or none: how a socket's peer is verified."""
        if self.fingerprint:
            return FINGERPRINT
        if not self.verify:
            return NONE
        return CA_FILE if self.ca_file else SYSTEM

    @property
    def http_mode(self) -> str:
        """The mode requests_verify() gives: like mode, but without the pin (see module doc)."""
        if not self.verify:
            return NONE
        return CA_FILE if self.ca_file else SYSTEM

    # --- sockets -------------------------------------------------------------------
    def ssl_context(self) -> ssl.SSLContext:
        """A client context, TLS >= 1.2: system CAs (+ ca_file), host name checked; for a pin
        or none, CERT_NONE and no system CAs loaded at all (nothing would use them).

        Loading the system store costs tens of milliseconds, so each context is built once
        per process and shared (a context is never changed after it is built): the cache key
        is the mode, the ca_file with its size and modification time, and OpenSSL's
        SSL_CERT_FILE / SSL_CERT_DIR (what "the system store" means)."""
        verifying = self.mode in (SYSTEM, CA_FILE)
        key = _context_key(verifying, self.ca_file)
        ctx = _contexts.get(key) if key is not None else None
        if isinstance(ctx, _Prefetch):  # being built in the background (prefetch_context)
            try:
                ctx = ctx.result()  # waits; its error, if building it failed, is raised here
            except BaseException:
                _contexts.pop(key, None)  # not cached: the next use builds (and reports) it again
                raise
            _contexts[key] = ctx
        if ctx is None:
            ctx = _build_context(verifying, self.ca_file)
            if key is not None:
                _contexts[key] = ctx
        return ctx

    def matches(self, der: bytes | None) -> bool:
        """Whether a peer certificate (DER) matches the pin; False without a pin or certificate."""
        if not self.fingerprint or not der:
            return False
        return hmac.compare_digest(fingerprint_of(der), normalise_fingerprint(self.fingerprint))

    # --- requests ------------------------------------------------------------------
    def requests_verify(self, *, shared: bool = False, check_pem: bool = True) -> "RequestsVerify":
        """What requests gets as `verify=`.

        With ca_file, a combined PEM bundle (system CAs + ca_file) in a temporary file: owned by
        the result (RequestsVerify.cleanup() removes it; a session's close() calls it) or, with
        shared=True, one file per ca_file for the whole process, removed at exit (for sessions
        nobody closes). check_pem: refuse a ca_file without a PEM certificate."""
        mode = self.http_mode
        if mode == NONE:
            return RequestsVerify(False, NONE)
        if mode == SYSTEM:
            return RequestsVerify(system_ca_bundle() or True, SYSTEM)
        path = os.path.expanduser(self.ca_file)
        if shared and path in _shared_bundles:
            return RequestsVerify(_shared_bundles[path], CA_FILE)
        try:
            with open(path, "rb") as fh:
                extra = fh.read()
        except OSError as exc:
            raise ConfigError(
                f"profile {self.profile!r}: cannot read ca_file {self.ca_file}: {exc.strerror or exc}",
                hint=f"fix the path with: mailctl profile edit {self.profile} --ca-file PATH",
            ) from None
        if check_pem and PEM_MARKER not in extra:
            raise ConfigError(
                f"profile {self.profile!r}: ca_file {self.ca_file} holds no PEM certificate",
                hint="ca_file must be a PEM bundle (-----BEGIN CERTIFICATE----- ...)",
            )
        bundle = _write_bundle(extra)
        if not shared:
            return RequestsVerify(bundle, CA_FILE, temp_bundle=bundle)
        if not _shared_bundles:
            atexit.register(_remove_shared_bundles)
        _shared_bundles[path] = bundle
        return RequestsVerify(bundle, CA_FILE)


@dataclass
class RequestsVerify:
    """requests' `verify=` (False, True, or a bundle path), the mode it stands for, and a
    temporary bundle to delete afterwards (cleanup())."""

    verify: bool | str
    mode: str = SYSTEM
    temp_bundle: str | None = None

    def cleanup(self) -> None:
        if self.temp_bundle:
            try:
                os.unlink(self.temp_bundle)
            except OSError:
                pass
            self.temp_bundle = None


_contexts: dict[tuple, "ssl.SSLContext | _Prefetch"] = {}  # see TlsConfig.ssl_context and prefetch_context


class _Prefetch:
    """A verifying context being built in a background thread (prefetch_context). The thread
    is not a daemon: one nobody asked for is finished before the interpreter exits, never cut
    off inside OpenSSL."""

    def __init__(self, ca_file: str) -> None:
        import threading

        self._ca_file = ca_file
        self._ctx: ssl.SSLContext | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="mailctl-tls-context")
        self._thread.start()

    def _run(self) -> None:
        try:
            self._ctx = _build_context(True, self._ca_file)
        except BaseException as exc:  # handed to the thread that needs the context (result())
            self._error = exc

    def result(self) -> ssl.SSLContext:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._ctx is not None
        return self._ctx


def prefetch_context(values: Mapping[str, Any], profile: str = "") -> None:
    """Start building the socket context of this profile in a background thread, so that
    loading the system CA store (tens of milliseconds of OpenSSL parsing, which releases the
    GIL) overlaps with what a one-shot command does before its TLS handshake (imports, the
    message, the outbox, connect, banner, EHLO). TlsConfig.ssl_context() then takes it (and
    raises its error, if building it failed: the same error at the same point as without a
    prefetch). Nothing to do for a pin or tls_verify = false (a bare context costs nothing),
    for a context already built, or for a ca_file that is not there (reported when used)."""
    config = tls_config(values, profile)
    if config.mode not in (SYSTEM, CA_FILE):
        return
    key = _context_key(True, config.ca_file)
    if key is None or key in _contexts:
        return
    try:
        _contexts[key] = _Prefetch(config.ca_file)  # taken (and waited for) by ssl_context()
    except RuntimeError:  # no thread to be had: the context is built when it is used, as without this
        pass


def _context_key(verifying: bool, ca_file: str) -> tuple | None:
    """The inputs a context is built from; None: do not cache (a ca_file that is not there:
    building the context reports it)."""
    extra: tuple = ()
    if ca_file:
        try:
            st = os.stat(str(ca_file))
        except OSError:
            return None
        extra = (str(ca_file), st.st_size, st.st_mtime_ns, st.st_ino)
    system = (os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")) if verifying else ()
    return (verifying, extra, system)


_HASHED_NAME = re.compile(r"[0-9a-f]{8}\.[0-9]+")


def _load_system_store(ctx: ssl.SSLContext) -> None:
    """The system CAs, as create_default_context() would load them, but lazily where it can.

    OpenSSL reads a hashed directory (Debian's /etc/ssl/certs with its c_rehash links, or
    $SSL_CERT_DIR) one certificate at a time, only the issuers a handshake asks for; the
    bundle file costs about 30 ms to parse in every process, most of a one-shot send's TLS
    cost. Without such a directory, the usual full load; with $SSL_CERT_FILE set too (OpenSSL
    then trusts that file and the directory), the directory alone only when it already holds
    every certificate of that file (as Debian's ca-certificates.crt and /etc/ssl/certs do):
    the same CAs, trusted the same way."""
    cafile = os.environ.get("SSL_CERT_FILE")
    capath = os.environ.get("SSL_CERT_DIR") or ssl.get_default_verify_paths().capath
    if capath and _is_hashed_dir(capath) and (not cafile or _bundle_in_dir(cafile, capath)):
        ctx.load_verify_locations(capath=capath)
        return
    ctx.load_default_certs()


def _is_hashed_dir(path: str) -> bool:
    try:
        with os.scandir(path) as entries:
            return any(_HASHED_NAME.fullmatch(e.name) for e in entries)
    except OSError:
        return False


_BEGIN, _END = b"-----BEGIN CERTIFICATE-----", b"-----END CERTIFICATE-----"


def _pem_certificates(data: bytes) -> set[bytes] | None:
    """The DER certificates of a PEM file; None when it holds anything else OpenSSL would read
    from it too (a CRL, a TRUSTED CERTIFICATE with trust settings) or a block is cut off."""
    import base64

    if b"-----BEGIN " in data.replace(_BEGIN, b""):
        return None
    found = set()
    for chunk in data.split(_BEGIN)[1:]:
        body, end, _rest = chunk.partition(_END)
        if not end:
            return None
        found.add(base64.b64decode(body))
    return found


def _bundle_in_dir(cafile: str, capath: str) -> bool:
    """Whether every certificate of the bundle `cafile` is also a file of the hashed directory
    (compared as DER; ~5 ms for Debian's 140 CAs, where OpenSSL parses the bundle in ~50)."""
    try:
        with open(cafile, "rb") as fh:
            wanted = _pem_certificates(fh.read())
        if wanted is None:
            return False
        held: set[bytes] = set()
        with os.scandir(capath) as entries:
            names = [e.path for e in entries if _HASHED_NAME.fullmatch(e.name)]
        for name in names:
            try:
                with open(name, "rb") as fh:
                    held |= _pem_certificates(fh.read()) or set()
            except OSError:  # a dangling link: OpenSSL cannot read it either
                continue
            if wanted <= held:
                return True
    except (OSError, ValueError):  # an unreadable bundle or directory, or bad base64: OpenSSL's own load decides
        return False
    return wanted <= held


def _keylog(ctx: ssl.SSLContext) -> None:
    keylog = os.environ.get("SSLKEYLOGFILE")  # as create_default_context() honours it
    if keylog and not sys.flags.ignore_environment and hasattr(ctx, "keylog_filename"):
        ctx.keylog_filename = keylog


def _build_context(verifying: bool, ca_file: str) -> ssl.SSLContext:
    if verifying:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, host name checked
        _load_system_store(ctx)
        _keylog(ctx)
    else:
        # A pin replaces CA verification (the certificate's SHA-256 must match exactly,
        # checked by the caller right after the handshake: matches()); tls_verify = false
        # verifies nothing. Either way the system store would go unused: a bare context.
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        _keylog(ctx)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca_file:
        # loaded (and so checked) in every mode, as before: a broken ca_file is reported even
        # where a pin or tls_verify = false makes it unused
        try:
            ctx.load_verify_locations(cafile=str(ca_file))
        except (FileNotFoundError, IsADirectoryError):
            raise ConfigError(f"ca_file {ca_file}: no such file") from None
        except ssl.SSLError as exc:
            raise ConfigError(f"ca_file {ca_file}: not a PEM CA bundle ({exc.reason or exc})") from None
    return ctx


def tls_config(values: Mapping[str, Any], profile: str = "") -> TlsConfig:
    """The TlsConfig of a profile's values (tls_verify, ca_file, tls_fingerprint)."""
    return TlsConfig(
        profile=profile,
        verify=_flag(values.get("tls_verify"), True),
        ca_file=str(values.get("ca_file") or ""),
        fingerprint=str(values.get("tls_fingerprint") or "").strip(),
    )


def socket_context(values: Mapping[str, Any], profile: str = "") -> tuple[ssl.SSLContext, str]:
    """(ssl context, mode) for a socket connection of this profile."""
    config = tls_config(values, profile)
    return config.ssl_context(), config.mode


def requests_verify(values: Mapping[str, Any], profile: str = "", *, shared: bool = False,
                    check_pem: bool = True) -> RequestsVerify:
    """requests' `verify=` for this profile (see TlsConfig.requests_verify)."""
    return tls_config(values, profile).requests_verify(shared=shared, check_pem=check_pem)


def version_probe_context() -> ssl.SSLContext:
    """A context that accepts TLS 1.0 and 1.1 and weak keys (OpenSSL security level 0), only
    to find out what an old server speaks after it refused TLS >= 1.2: the caller completes the
    handshake, reads version() and the certificate, and closes the connection. Nothing is ever
    sent over it (the transports' contexts stay TLS >= 1.2, ssl_context())."""
    import warnings

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():  # TLSVersion.TLSv1 is deprecated: that is the point here
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            ctx.set_ciphers("ALL:@SECLEVEL=0")
            ctx.minimum_version = ssl.TLSVersion.TLSv1
        except (ssl.SSLError, ValueError):  # pragma: no cover - an OpenSSL built without them
            pass
    return ctx


# what a refusal of TLS >= 1.2 looks like (ssl.SSLError.reason), from either side
OLD_PROTOCOL_REASONS = ("UNSUPPORTED_PROTOCOL", "TLSV1_ALERT_PROTOCOL_VERSION", "NO_PROTOCOLS_AVAILABLE",
                        "WRONG_SSL_VERSION", "VERSION_TOO_LOW")


def _write_bundle(extra: bytes) -> str:
    parts = []
    system = system_ca_bundle()
    if system:
        with open(system, "rb") as fh:
            parts.append(fh.read())
    parts.append(extra)
    import tempfile  # here, not at import: a one-shot command that reads never needs it

    fd, path = tempfile.mkstemp(prefix=BUNDLE_PREFIX, suffix=".pem")
    with os.fdopen(fd, "wb") as fh:
        fh.write(b"\n".join(parts))
    return path


def _remove_shared_bundles() -> None:
    for path in _shared_bundles.values():
        try:
            os.unlink(path)
        except OSError:
            pass
    _shared_bundles.clear()
