"""Proxies. For sockets (SMTP): socks5:// (local DNS), socks5h:// (the proxy resolves) via
PySocks, and http:// with CONNECT written by hand (parse_proxy, connect_via_proxy). For
requests (HTTP): the URL it gets (requests_proxy_url). The user name comes from the URL, the
password from the secret store (kind proxy_password), never from the profiles file: callers
look it up and pass it in.

PySocks is imported inside functions only."""

from __future__ import annotations

import base64
import socket
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
    return ProxySpec(
        parts.scheme,
        parts.hostname,
        parts.port or DEFAULT_PORTS[parts.scheme],
        unquote(parts.username) if parts.username else None,
        password,
    )


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
    """A connected TCP socket to host:port through the proxy (TCP_NODELAY set by the caller)."""
    if proxy.scheme in ("socks5", "socks5h"):
        return _socks5(proxy, host, port, timeout)
    return _http_connect(proxy, host, port, timeout)


def _socks5(proxy: ProxySpec, host: str, port: int, timeout: float) -> socket.socket:
    import socks  # PySocks

    sock = socks.socksocket(socket.AF_INET if ":" not in proxy.host else socket.AF_INET6, socket.SOCK_STREAM)
    sock.set_proxy(socks.SOCKS5, proxy.host, proxy.port, rdns=proxy.scheme == "socks5h", username=proxy.username, password=proxy.password)
    sock.settimeout(timeout)
    try:
        sock.connect((host, port))
    except socks.SOCKS5AuthError as exc:
        sock.close()
        raise _fail(f"SOCKS5 proxy {proxy.display} refused the credentials: {exc.msg}", "proxy-auth-failed", exc, AuthError) from exc
    except socks.ProxyConnectionError as exc:
        sock.close()
        inner = exc.socket_err if isinstance(exc.socket_err, BaseException) else None
        err = _fail(f"cannot connect to the proxy {proxy.display}: {inner or exc.msg}", "proxy-failed", inner or exc)
        raise err from (inner or exc)
    except socks.GeneralProxyError as exc:
        sock.close()
        inner = exc.socket_err if isinstance(exc.socket_err, BaseException) else None
        if isinstance(inner, socks.SOCKS5AuthError):
            raise _fail(f"SOCKS5 proxy {proxy.display} refused the credentials: {inner.msg}", "proxy-auth-failed", inner, AuthError) from inner
        if isinstance(inner, socks.SOCKS5Error):
            raise _fail(f"SOCKS5 proxy {proxy.display} could not reach {host}:{port}: {inner.msg}", "proxy-failed", inner) from inner
        if isinstance(inner, (TimeoutError, socket.timeout)):
            raise _fail(f"the proxy {proxy.display} did not answer in {timeout:g}s", "proxy-failed", inner) from inner
        raise _fail(f"SOCKS5 proxy {proxy.display}: {exc.msg}", "proxy-failed", exc) from exc
    except socks.SOCKS5Error as exc:
        sock.close()
        raise _fail(f"SOCKS5 proxy {proxy.display} could not reach {host}:{port}: {exc.msg}", "proxy-failed", exc) from exc
    except OSError:
        sock.close()
        raise
    return sock


def _http_connect(proxy: ProxySpec, host: str, port: int, timeout: float) -> socket.socket:
    try:
        sock = socket.create_connection((proxy.host, proxy.port), timeout=timeout)
    except OSError as exc:
        raise _fail(f"cannot connect to the proxy {proxy.display}: {exc.strerror or exc}", "proxy-failed", exc) from exc
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
    if proxy.username is not None:
        token = base64.b64encode(f"{proxy.username}:{proxy.password or ''}".encode()).decode("ascii")
        lines.append(f"Proxy-Authorization: Basic {token}")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")
    try:
        sock.sendall(request)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(1)  # byte by byte: nothing after the headers may be consumed
            if not chunk:
                raise _fail(f"the proxy {proxy.display} closed the connection during CONNECT", "proxy-failed")
            head += chunk
            if len(head) > 16384:
                raise _fail(f"the proxy {proxy.display} sent an oversized CONNECT reply", "proxy-failed")
    except OSError as exc:
        sock.close()
        raise _fail(f"the proxy {proxy.display} failed during CONNECT: {exc}", "proxy-failed", exc) from exc
    except BaseException:
        sock.close()
        raise
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    fields = status_line.split(" ", 2)
    status = int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else 0
    if status == 200:
        return sock
    sock.close()
    if status == 407:
        raise _fail(f"the proxy {proxy.display} requires authentication or refused it: {status_line}", "proxy-auth-failed", cls=AuthError)
    raise _fail(f"the proxy {proxy.display} refused CONNECT to {target}: {status_line}", "proxy-failed")
