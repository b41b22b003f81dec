"""Proxies. For sockets (SMTP): socks5:// (local DNS), socks5h:// (the proxy resolves) and
http:// CONNECT, both handshakes written by hand so that they have one deadline and bounded
replies (parse_proxy, connect_via_proxy). For requests (HTTP): the URL it gets
(requests_proxy_url). The user name comes from the URL, the password from the secret store
(kind proxy_password), never from the profiles file: callers look it up and pass it in.

PySocks is used by requests only (HTTP transports through a SOCKS proxy), not here."""

from __future__ import annotations

import base64
import socket
import struct
import time
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from mailctl.errors import AuthError, ConfigError, UnavailableError


@dataclass(frozen=True)
class ProxySpec:
    scheme: str  # socks5 | socks5h | http
    host: str
    port: int
    username: str | None = None
    password: str | None = None

    @property
    def display(self) -> str:
        user = f"{self.username}@" if self.username else ""
        return f"{self.scheme}://{user}{self.host}:{self.port}"


DEFAULT_PORTS = {"socks5": 1080, "socks5h": 1080, "http": 8080}


def parse_proxy(url: str, password: str | None = None) -> ProxySpec:
    parts = urlsplit(url)
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise ConfigError(f"proxy: expected socks5://HOST:PORT or http://HOST:PORT (got {parts.scheme}://...)")
    if parts.password:
        raise ConfigError(
            "proxy: the URL contains a password; secrets do not belong in the profiles file",
            hint="remove it from the URL and store it as the profile's proxy_password secret (keyring or MAILCTL_SECRET_<PROFILE>_PROXY_PASSWORD)",
        )
    check_password(password)
    return ProxySpec(
        parts.scheme,
        parts.hostname,
        parts.port or DEFAULT_PORTS[parts.scheme],
        unquote(parts.username) if parts.username else None,
        password,
    )


def check_password(password: str | None) -> None:
    """The proxy sees the password UTF-8 encoded (SOCKS5's RFC 1929 bytes, CONNECT's Basic):
    one read as bytes that are not UTF-8 (the environment, a keyring: lone surrogates) is a
    one-line error naming the secret, never an unexpected UnicodeEncodeError. Not shown."""
    if not password:
        return
    try:
        password.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ConfigError(
            f"proxy: the proxy_password is not valid text: character {exc.start + 1} has no UTF-8 form",
            hint="store it again as UTF-8 text (keyring, secret_command or MAILCTL_SECRET_<PROFILE>_PROXY_PASSWORD)",
        ) from None


def needs_password(url: str) -> bool:
    """Whether a proxy URL names a user but carries no password (look up proxy_password)."""
    parts = urlsplit(url)
    return bool(parts.username and not parts.password)


def requests_proxy_url(url: str, password: str | None = None) -> str:
    """The proxy URL requests gets: the password filled in (when the URL names a user and has
    none), and socks5:// as socks5h:// so that the proxy resolves names (the usual reason to
    use one). "" for no proxy."""
    proxy = url or ""
    if not proxy:
        return ""
    parts = urlsplit(proxy)
    check_password(password)
    if parts.username and not parts.password and password:
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{quote(parts.username, safe='')}:{quote(password, safe='')}@{host}"
        if parts.port:
            netloc += f":{parts.port}"
        proxy = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    if proxy.startswith("socks5://"):
        proxy = "socks5h://" + proxy[len("socks5://"):]
    return proxy


def _fail(message: str, failure_id: str, exc: BaseException | None = None, cls=UnavailableError):
    err = cls(message).with_context(failure_id=failure_id, stage="connect")
    if exc is not None:
        err.__cause__ = exc
    return err


def connect_via_proxy(proxy: ProxySpec, host: str, port: int, timeout: float) -> socket.socket:
    """A connected TCP socket to host:port through the proxy (TCP_NODELAY set by the caller).

    The whole handshake (the connection to the proxy, then the SOCKS5 greeting, authentication
    and connect reply, or the CONNECT request and the full response headers) completes within
    `timeout` in total: a proxy that trickles a byte just before each read would time out cannot
    stretch it, and what is read is bounded. The socket returned has `timeout` as its timeout."""
    deadline = _Deadline(proxy, timeout)
    sock = deadline.open_tcp()
    try:
        if proxy.scheme in ("socks5", "socks5h"):
            _socks5(sock, proxy, host, port, deadline)
        else:
            _http_connect(sock, proxy, host, port, deadline)
        sock.settimeout(timeout)
    except (TimeoutError, socket.timeout) as exc:
        sock.close()
        raise deadline.timed_out(exc) from exc
    except OSError as exc:
        sock.close()
        raise _fail(f"the proxy {proxy.display} failed during the {deadline.stage}: {exc.strerror or exc}", "proxy-failed", exc) from exc
    except BaseException:
        sock.close()
        raise
    return sock


class _Deadline:
    """The monotonic deadline of one proxy handshake. Every recv gets only what is left of it
    as its socket timeout (as transports.smtp's SmtpSession does for SMTP replies), so the
    stage as a whole, not each read, is bounded by `timeout`."""

    def __init__(self, proxy: ProxySpec, timeout: float):
        self.proxy = proxy
        self.timeout = timeout
        self.start = time.monotonic()
        self.end = self.start + timeout
        self.stage = "connection to the proxy"  # what is in progress, for the error

    def left(self) -> float:
        """Seconds left; TimeoutError once there are none."""
        left = self.end - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out")
        return left

    def timed_out(self, exc: BaseException | None = None) -> UnavailableError:
        waited = time.monotonic() - self.start
        return _fail(f"the proxy {self.proxy.display} did not complete the {self.stage} within {self.timeout:g}s (waited {waited:.1f}s)",
                     "proxy-failed", exc)

    def open_tcp(self) -> socket.socket:
        """The TCP connection to the proxy itself, within the deadline: the lookup of its name
        too (net.lookup; create_connection's own getaddrinfo would wait out glibc's timeouts),
        then its addresses in turn with what is left, the first error reported (as
        create_connection does)."""
        from mailctl.net.lookup import LookupTimeout, resolve

        try:
            infos = resolve(self.proxy.host, self.proxy.port, timeout=self.left(), type=socket.SOCK_STREAM)
            first: OSError | None = None
            for family, socktype, proto, _canon, sockaddr in infos:
                sock = socket.socket(family, socktype, proto)
                try:
                    sock.settimeout(self.left())
                    sock.connect(sockaddr)
                    return sock
                except BaseException as exc:
                    sock.close()
                    if not isinstance(exc, OSError) or self.end <= time.monotonic():
                        raise
                    first = first or exc
            raise first or OSError("getaddrinfo returned no address")
        except LookupTimeout as exc:
            raise _fail(f"cannot resolve the proxy's host {self.proxy.host} within {self.timeout:g}s: no answer from the "
                        f"resolver (waited {exc.waited:.1f}s; proxy {self.proxy.display})", "proxy-failed", exc) from exc
        except (TimeoutError, socket.timeout) as exc:
            raise self.timed_out(exc) from exc
        except OSError as exc:
            raise _fail(f"cannot connect to the proxy {self.proxy.display}: {exc.strerror or exc}", "proxy-failed", exc) from exc

    def recv(self, sock: socket.socket, size: int) -> bytes:
        """At most `size` bytes, waiting no longer than the deadline allows; b"" is refused
        (the proxy closed the connection mid-handshake)."""
        sock.settimeout(self.left())
        chunk = sock.recv(size)
        if not chunk:
            raise _fail(f"the proxy {self.proxy.display} closed the connection during the {self.stage}", "proxy-failed")
        return chunk

    def recv_exact(self, sock: socket.socket, size: int) -> bytes:
        buf = b""
        while len(buf) < size:
            buf += self.recv(sock, size - len(buf))
        return buf


_SOCKS5_REPLIES = {
    1: "general SOCKS server failure", 2: "connection not allowed by ruleset", 3: "network unreachable",
    4: "host unreachable", 5: "connection refused", 6: "TTL expired", 7: "command not supported",
    8: "address type not supported",
}


def _socks5(sock: socket.socket, proxy: ProxySpec, host: str, port: int, deadline: _Deadline) -> None:
    """RFC 1928 (and RFC 1929 user/password) over `sock`, written by hand so that every read
    has the stage's deadline; every reply is of fixed size (the bound address at most 255 bytes)."""
    deadline.stage = "SOCKS5 handshake"
    methods = b"\x00\x02" if proxy.username is not None else b"\x00"
    sock.settimeout(deadline.left())
    sock.sendall(b"\x05" + bytes([len(methods)]) + methods)
    version, method = deadline.recv_exact(sock, 2)
    if version != 5:
        raise _fail(f"the proxy {proxy.display} did not answer as a SOCKS5 proxy", "proxy-failed")
    if method == 0xFF or (method == 2 and proxy.username is None):
        raise _fail(f"SOCKS5 proxy {proxy.display} refused the credentials: it accepts none of the offered authentication methods",
                    "proxy-auth-failed", cls=AuthError)
    if method == 2:
        _socks5_auth(sock, proxy, deadline)
    elif method != 0:
        raise _fail(f"the proxy {proxy.display} chose an unknown SOCKS5 authentication method {method:#04x}", "proxy-failed")
    sock.settimeout(deadline.left())
    sock.sendall(b"\x05\x01\x00" + _socks5_address(proxy, host, port, deadline) + struct.pack("!H", port))
    version, reply, _reserved, atyp = deadline.recv_exact(sock, 4)
    if version != 5:
        raise _fail(f"the proxy {proxy.display} did not answer as a SOCKS5 proxy", "proxy-failed")
    if reply != 0:
        what = _SOCKS5_REPLIES.get(reply, "unknown error")
        raise _fail(f"SOCKS5 proxy {proxy.display} could not reach {host}:{port}: {what} ({reply:#04x})", "proxy-failed")
    if atyp == 3:
        size = deadline.recv_exact(sock, 1)[0]
    elif atyp in (1, 4):
        size = 4 if atyp == 1 else 16
    else:
        raise _fail(f"the proxy {proxy.display} sent a malformed SOCKS5 reply (address type {atyp})", "proxy-failed")
    deadline.recv_exact(sock, size + 2)  # the bound address and port: not needed


def _socks5_auth(sock: socket.socket, proxy: ProxySpec, deadline: _Deadline) -> None:
    user = (proxy.username or "").encode("utf-8")
    password = (proxy.password or "").encode("utf-8")
    if len(user) > 255 or len(password) > 255:
        raise ConfigError(f"proxy: SOCKS5 allows a user name and a password of at most 255 bytes each ({proxy.display})")
    sock.settimeout(deadline.left())
    sock.sendall(b"\x01" + bytes([len(user)]) + user + bytes([len(password)]) + password)
    _version, status = deadline.recv_exact(sock, 2)
    if status != 0:
        raise _fail(f"SOCKS5 proxy {proxy.display} refused the credentials", "proxy-auth-failed", cls=AuthError)


def _socks5_address(proxy: ProxySpec, host: str, port: int, deadline: _Deadline) -> bytes:
    """The destination as SOCKS5 wants it: an IP literal as such; a name as a name for
    socks5h:// (the proxy resolves), resolved here for socks5://."""
    for family, atyp in ((socket.AF_INET, b"\x01"), (socket.AF_INET6, b"\x04")):
        try:
            return atyp + socket.inet_pton(family, host)
        except OSError:
            pass
    if proxy.scheme == "socks5h":
        name = host.encode("idna")
        if len(name) > 255:
            raise ConfigError(f"host: {host} is too long for SOCKS5 (at most 255 bytes)")
        return b"\x03" + bytes([len(name)]) + name
    from mailctl.net.lookup import LookupTimeout, resolve

    try:
        infos = resolve(host, port, timeout=deadline.left(), type=socket.SOCK_STREAM)
    except LookupTimeout as exc:
        raise _fail(f"cannot resolve {host} within {deadline.timeout:g}s: no answer from the resolver (waited "
                    f"{time.monotonic() - deadline.start:.1f}s; socks5:// resolves here, socks5h:// lets the proxy "
                    f"{proxy.display} resolve)", "proxy-failed", exc) from exc
    except socket.gaierror as exc:
        raise _fail(f"cannot resolve {host} (socks5:// resolves here; socks5h:// lets the proxy resolve): {exc.strerror or exc}",
                    "proxy-failed", exc) from exc
    deadline.left()
    family, *_rest, sockaddr = infos[0]
    return (b"\x01" if family == socket.AF_INET else b"\x04") + socket.inet_pton(family, sockaddr[0])


MAX_CONNECT_REPLY_BYTES = 16384
MAX_CONNECT_REPLY_LINES = 100


def _http_connect(sock: socket.socket, proxy: ProxySpec, host: str, port: int, deadline: _Deadline) -> None:
    """CONNECT, and the response headers read to their end (at most 16 KiB, 100 lines),
    byte by byte: nothing after them may be consumed (it is the server's)."""
    deadline.stage = "HTTP CONNECT"
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
    if proxy.username is not None:
        token = base64.b64encode(f"{proxy.username}:{proxy.password or ''}".encode()).decode("ascii")
        lines.append(f"Proxy-Authorization: Basic {token}")
    sock.settimeout(deadline.left())
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("utf-8"))
    head = bytearray()
    count = 0
    while not head.endswith(b"\r\n\r\n"):
        head += deadline.recv(sock, 1)
        if head.endswith(b"\n"):
            count += 1
        if len(head) > MAX_CONNECT_REPLY_BYTES or count > MAX_CONNECT_REPLY_LINES:
            raise _fail(f"the proxy {proxy.display} sent an oversized CONNECT reply (more than {MAX_CONNECT_REPLY_BYTES // 1024} KiB "
                        f"or {MAX_CONNECT_REPLY_LINES} lines of headers)", "proxy-failed")
    status_line = bytes(head).split(b"\r\n", 1)[0].decode("latin-1")
    fields = status_line.split(" ", 2)
    status = int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else 0
    if status == 200:
        return
    if status == 407:
        raise _fail(f"the proxy {proxy.display} requires authentication or refused it: {status_line}", "proxy-auth-failed", cls=AuthError)
    raise _fail(f"the proxy {proxy.display} refused CONNECT to {target}: {status_line}", "proxy-failed")
