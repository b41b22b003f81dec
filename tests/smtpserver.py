"""Real SMTP servers on 127.0.0.1 for the tests: aiosmtpd in-process (plaintext, STARTTLS,
implicit TLS; AUTH PLAIN/LOGIN/XOAUTH2 checked against known credentials; scripted replies at
any stage), plus certificates from trustme (and a truly self-signed one from cryptography),
a silent listener, a SOCKS5 proxy and an HTTP CONNECT proxy."""

from __future__ import annotations

import base64
import contextlib
import datetime
import select
import socket
import socketserver
import ssl
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomlkit
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, LoginPassword

USER = "alice@example.com"
PASSWORD = "s3cr3t-Passw0rd!xyz"
TOKEN = "ya29.test-bearer-token-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- handler / server ----------------------------------------------------------------------
class RecordingHandler:
    """Accepts mail into .messages; `script` maps a stage (banner, ehlo, auth, mail, rcpt,
    data) to the reply to send instead. rcpt may be a dict address -> reply."""

    def __init__(self, script: dict[str, Any] | None = None, users: dict[str, str] | None = None, tokens: dict[str, str] | None = None, refuse_tokens: set[str] | None = None):
        self.script = script or {}
        self.users = users if users is not None else {USER: PASSWORD}
        self.tokens = tokens if tokens is not None else {USER: TOKEN}
        self.messages: list[dict[str, Any]] = []
        self.attempts_auth: list[tuple[str, bool]] = []
        self.connections = 0

    # AUTH PLAIN / LOGIN
    def authenticator(self, server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and self.users.get(auth_data.login.decode()) == auth_data.password.decode()
        self.attempts_auth.append((mechanism, ok))
        return AuthResult(success=ok, handled=False)

    async def auth_XOAUTH2(self, server, args):
        if len(args) < 2:
            blob = await server.challenge_auth("", encode_to_b64=False)
            if blob is MISSING:
                return AuthResult(success=False, handled=True)
        else:
            blob = args[1].encode()
        try:
            text = base64.b64decode(blob).decode()
            fields = dict(part.split("=", 1) for part in text.split("\x01") if "=" in part)
            user, token = fields.get("user", ""), fields.get("auth", "").removeprefix("Bearer ")
        except Exception:
            user, token = "", ""
        ok = bool(user) and self.tokens.get(user) == token
        self.attempts_auth.append(("XOAUTH2", ok))
        if ok:
            return AuthResult(success=True, auth_data=user)
        return AuthResult(success=False, handled=False, message="535 5.7.3 Authentication unsuccessful")

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        if "ehlo" in self.script:
            return [self.script["ehlo"]]
        session.host_name = hostname
        return responses

    async def handle_AUTH(self, server, session, envelope, args):
        if "auth" in self.script:
            self.attempts_auth.append((args[0], False))
            return self.script["auth"]
        return MISSING

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if "mail" in self.script:
            return self.script["mail"]
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        script = self.script.get("rcpt")
        if isinstance(script, dict):
            script = script.get(address)
        if script:
            return script
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server, session, envelope):
        if "data" in self.script:
            return self.script["data"]
        self.messages.append(
            {"from": envelope.mail_from, "to": list(envelope.rcpt_tos), "data": envelope.original_content or envelope.content, "options": list(envelope.mail_options), "auth": session.authenticated}
        )
        return f"250 2.0.0 Ok: queued as Q{len(self.messages):05d}"


class ScriptedSMTP(SMTP):
    def __init__(self, handler, **kwargs):
        super().__init__(handler, **kwargs)
        self._greeted = False

    async def push(self, status):
        if not self._greeted:
            self._greeted = True
            self.event_handler.connections += 1
            banner = self.event_handler.script.get("banner")
            if banner and str(status).startswith("220"):
                await super().push(banner)
                self.transport.close()
                return
        await super().push(status)


class ScriptedController(Controller):
    def factory(self):
        return ScriptedSMTP(self.handler, **self.SMTP_kwargs)


@dataclass
class RunningServer:
    host: str
    port: int
    handler: RecordingHandler
    controller: Controller | None = None
    security: str = "none"

    @property
    def messages(self):
        return self.handler.messages


@contextlib.contextmanager
def smtp_server(*, security: str = "none", cert=None, script=None, auth: bool = True, auth_require_tls: bool = True, handler: RecordingHandler | None = None, offer_starttls: bool = True):
    """A running aiosmtpd on 127.0.0.1: security none (plaintext, STARTTLS offered if a cert is
    given and offer_starttls), starttls, or tls (implicit)."""
    handler = handler or RecordingHandler(script)
    port = free_port()
    kwargs: dict[str, Any] = {"hostname": "127.0.0.1", "port": port, "server_hostname": "mail.test", "ident": "mailctl-test ESMTP"}
    server_ctx = None
    if cert is not None:
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(server_ctx)
    if security == "tls":
        kwargs["ssl_context"] = server_ctx
    elif server_ctx is not None and offer_starttls:
        kwargs["tls_context"] = server_ctx
    if auth:
        kwargs["authenticator"] = handler.authenticator
        # aiosmtpd only knows STARTTLS as "TLS"; on an implicit-TLS listener everything is encrypted.
        kwargs["auth_require_tls"] = auth_require_tls and security != "tls"
    controller = ScriptedController(handler, **kwargs)
    controller.start()
    try:
        yield RunningServer("127.0.0.1", port, handler, controller, security)
    finally:
        controller.stop()


# --- certificates --------------------------------------------------------------------------
@dataclass
class Pki:
    ca: trustme.CA
    ca_file: Path
    good: Any  # localhost + 127.0.0.1
    wrong_name: Any
    expired: Any
    other_ca_cert: Any  # issued by a CA nobody trusts
    self_signed: Any


class _PemCert:
    """Quacks like trustme.LeafCert for configure_cert()."""

    def __init__(self, cert_pem: bytes, key_pem: bytes, tmp: Path, name: str):
        self.cert_file = tmp / f"{name}.crt"
        self.key_file = tmp / f"{name}.key"
        self.cert_file.write_bytes(cert_pem)
        self.key_file.write_bytes(key_pem)

    def configure_cert(self, ctx: ssl.SSLContext) -> None:
        ctx.load_cert_chain(str(self.cert_file), str(self.key_file))


def make_self_signed(tmp: Path, name: str = "localhost") -> _PemCert:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return _PemCert(cert.public_bytes(serialization.Encoding.PEM), key_pem, tmp, "selfsigned")


def make_pki(tmp: Path) -> Pki:
    ca = trustme.CA()
    ca_file = tmp / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    now = datetime.datetime.now(datetime.timezone.utc)
    good = ca.issue_cert("localhost", "127.0.0.1")
    wrong = ca.issue_cert("mail.other.test")
    expired = ca.issue_cert("localhost", "127.0.0.1", not_before=now - datetime.timedelta(days=60), not_after=now - datetime.timedelta(days=2))
    other = trustme.CA().issue_cert("localhost", "127.0.0.1")
    return Pki(ca, ca_file, good, wrong, expired, other, make_self_signed(tmp))


# --- other endpoints -----------------------------------------------------------------------
@contextlib.contextmanager
def silent_listener():
    """A socket that accepts TCP connections (kernel backlog) and never says anything."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    try:
        yield s.getsockname()[1]
    finally:
        s.close()


def closed_port() -> int:
    return free_port()  # nothing listens there once the probe socket is closed


class _Relay(socketserver.BaseRequestHandler):
    def relay(self, upstream: socket.socket) -> None:
        client = self.request
        try:
            while True:
                readable, _, _ = select.select([client, upstream], [], [], 5)
                if not readable:
                    return
                for s in readable:
                    data = s.recv(65536)
                    if not data:
                        return
                    (upstream if s is client else client).sendall(data)
        except OSError:
            return
        finally:
            upstream.close()


class _Socks5Handler(_Relay):
    def _recv(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.request.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("closed")
            buf += chunk
        return buf

    def handle(self) -> None:
        server: Socks5Server = self.server  # type: ignore[assignment]
        try:
            ver, nmethods = self._recv(2)
            methods = self._recv(nmethods)
            if server.credentials:
                if 2 not in methods:
                    self.request.sendall(b"\x05\xff")
                    return
                self.request.sendall(b"\x05\x02")
                _v, ulen = self._recv(2)
                user = self._recv(ulen).decode()
                (plen,) = self._recv(1)
                password = self._recv(plen).decode()
                ok = (user, password) == server.credentials
                server.auth_seen.append((user, ok))
                self.request.sendall(b"\x01\x00" if ok else b"\x01\x01")
                if not ok:
                    return
            else:
                self.request.sendall(b"\x05\x00")
            _ver, cmd, _rsv, atyp = self._recv(4)
            if atyp == 1:
                host = socket.inet_ntoa(self._recv(4))
            elif atyp == 3:
                (length,) = self._recv(1)
                host = self._recv(length).decode()
            else:
                host = socket.inet_ntop(socket.AF_INET6, self._recv(16))
            (port,) = struct.unpack("!H", self._recv(2))
            server.targets.append((host, port))
            try:
                upstream = socket.create_connection((host, port), timeout=5)
            except OSError:
                self.request.sendall(b"\x05\x05\x00\x01" + b"\x00" * 6)
                return
            self.request.sendall(b"\x05\x00\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack("!H", 0))
            self.relay(upstream)
        except ConnectionError:
            return


class Socks5Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, credentials: tuple[str, str] | None = None):
        super().__init__(("127.0.0.1", 0), _Socks5Handler)
        self.credentials = credentials
        self.targets: list[tuple[str, int]] = []
        self.auth_seen: list[tuple[str, bool]] = []


class _ConnectHandler(_Relay):
    def handle(self) -> None:
        server: HttpConnectProxy = self.server  # type: ignore[assignment]
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.request.recv(1)
            if not chunk:
                return
            head += chunk
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:] if l)}
        if server.credentials:
            want = "Basic " + base64.b64encode(f"{server.credentials[0]}:{server.credentials[1]}".encode()).decode()
            if headers.get("proxy-authorization") != want:
                self.request.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\n\r\n")
                return
        host, _, port = target.rpartition(":")
        server.targets.append((host.strip("[]"), int(port)))
        try:
            upstream = socket.create_connection((host.strip("[]"), int(port)), timeout=5)
        except OSError:
            self.request.sendall(b"HTTP/1.1 502 Bad Gateway\r\n\r\n")
            return
        self.request.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        self.relay(upstream)


class HttpConnectProxy(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, credentials: tuple[str, str] | None = None):
        super().__init__(("127.0.0.1", 0), _ConnectHandler)
        self.credentials = credentials
        self.targets: list[tuple[str, int]] = []


@contextlib.contextmanager
def running(server: socketserver.TCPServer):
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


# --- profiles ------------------------------------------------------------------------------
def write_profiles(home: Path, profiles: dict[str, dict[str, Any]], *, default: str | None = None, settings: dict | None = None) -> Path:
    doc: dict[str, Any] = {"schema_version": 1}
    if default or len(profiles) == 1:
        doc["default"] = default or next(iter(profiles))
    if settings:
        doc["settings"] = settings
    doc["profiles"] = profiles
    path = home / "profiles.toml"
    path.write_text(tomlkit.dumps(doc), encoding="utf-8")
    return path


def store_secret(profile: str, kind: str, value: str) -> None:
    import keyring

    keyring.set_password("mailctl", f"{profile}/{kind}", value)


def assert_no_secret(*texts: str, secrets=(PASSWORD, TOKEN)) -> None:
    forms = []
    for s in secrets:
        forms += [s, base64.b64encode(s.encode()).decode()]
    forms += [base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode(), base64.b64encode(f"user={USER}\x01auth=Bearer {TOKEN}\x01\x01".encode()).decode()]
    for text in texts:
        for form in forms:
            assert form not in (text or ""), "a secret leaked into output"
    assert_no_secret_form(*texts, secrets=secrets)  # and every other encoding (unpadded, OAUTHBEARER)


# --- raw, scripted servers (broken or hostile) -----------------------------------------------
class RawConn:
    """One client connection of raw_server(): line reads and writes that give up (return
    None / False) when the client is gone, the test is over (`stop`) or nothing came in time."""

    def __init__(self, sock: socket.socket, stop: threading.Event):
        self.sock = sock
        self.stop = stop
        self.buf = b""
        self.sent = 0
        sock.settimeout(0.2)

    def send(self, data: bytes) -> bool:
        try:
            self.sock.sendall(data)
        except OSError:
            return False
        self.sent += len(data)
        return not self.stop.is_set()

    def send_slowly(self, data: bytes, delay: float) -> bool:
        """One byte every `delay` seconds."""
        for i in range(len(data)):
            if not self.send(data[i:i + 1]) or self.stop.wait(delay):
                return False
        return True

    def line(self, wait: float = 10.0) -> str | None:
        deadline = time.monotonic() + wait
        while b"\n" not in self.buf:
            if self.stop.is_set() or time.monotonic() > deadline or len(self.buf) > 65536:
                return None
            try:
                chunk = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return None
            if not chunk:
                return None
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.rstrip(b"\r").decode("utf-8", "replace")


@contextlib.contextmanager
def raw_server(behaviour):
    """A TCP listener on 127.0.0.1 that runs behaviour(RawConn) in a daemon thread for every
    connection, for servers no real SMTP implementation would be (endless replies, a byte at a
    time, echoing what it was sent). Behaviours must end by themselves: on a closed client, on
    conn.stop (set when the context exits) or after a bound of their own. Yields a RawServer
    (port, connections accepted)."""
    stop = threading.Event()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.2)
    conns: list[socket.socket] = []

    def serve_one(sock: socket.socket) -> None:
        try:
            behaviour(RawConn(sock, stop))
        except OSError:
            pass
        finally:
            sock.close()

    def accept_loop() -> None:
        while not stop.is_set():
            try:
                sock, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conns.append(sock)
            threading.Thread(target=serve_one, args=(sock,), daemon=True).start()

    acceptor = threading.Thread(target=accept_loop, daemon=True)
    acceptor.start()
    try:
        yield RawServer(listener.getsockname()[1], conns)
    finally:
        stop.set()
        acceptor.join(5)
        listener.close()
        for sock in conns:
            try:
                sock.close()
            except OSError:
                pass


@dataclass
class RawServer:
    port: int
    conns: list

    @property
    def connections(self) -> int:
        return len(self.conns)


def oauthbearer_string(user: str, token: str) -> str:
    return f"n,a={user},\x01auth=Bearer {token}\x01\x01"


def secret_forms(secrets=(PASSWORD, TOKEN), user: str = USER) -> list[str]:
    """Every encoding of the secrets that mailctl may send: each value, its base64 with and
    without padding, the AUTH PLAIN, XOAUTH2 and OAUTHBEARER payloads and their base64."""
    forms: list[str] = []

    def add(value: str) -> None:
        b64 = base64.b64encode(value.encode()).decode()
        forms.extend([value, b64, b64.rstrip("=")])

    for s in secrets:
        add(s)
        for payload in (f"\0{user}\0{s}", f"user={user}\x01auth=Bearer {s}\x01\x01", oauthbearer_string(user, s)):
            b64 = base64.b64encode(payload.encode()).decode()
            forms.extend([b64, b64.rstrip("=")])
    return forms


def assert_no_secret_form(*texts: str, secrets=(PASSWORD, TOKEN), user: str = USER) -> None:
    """assert_no_secret over every form of secret_forms(), saying which form leaked where."""
    forms = secret_forms(secrets, user)
    for i, text in enumerate(texts):
        for form in forms:
            assert form not in (text or ""), f"text #{i} holds a secret form {form[:6]!r}...: {text[:300]!r}"
