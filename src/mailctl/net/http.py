"""The one requests session factory, and what every HTTP caller shares: the request helper that
honours 429/503 Retry-After within bounds, and redaction of URLs and failure reasons.

new_session(values, profile, user_agent=...) builds a requests.Session for one profile:
- trust_env is off: REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE would otherwise silently replace the
  profile's CA bundle; `verify` comes from mailctl.net.tls (system CAs, system + ca_file, or
  False).
- proxies: the profile's proxy for every request; without one, the environment's (HTTPS_PROXY,
  HTTP_PROXY, ALL_PROXY) with NO_PROXY applied to each request's URL, as requests itself does.
- a default timeout on every request (the profile's `timeout`, else 30 s) and a User-Agent.
- close() also removes the session's temporary CA bundle.
- host names are looked up within the request's connect timeout (deadline_adapter_class):
  urllib3 would call getaddrinfo itself, outside its connect timeout, and a resolver that
  never answers would hold the request for as long as glibc retries.

requests and urllib3 are imported inside functions so that `mailctl --help` never loads them."""

from __future__ import annotations

import email.utils
import re
import socket
import ssl
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit, urlunsplit

from mailctl.errors import TemporaryFailure, UnavailableError
from mailctl.net.tls import RequestsVerify, tls_config

DEFAULT_TIMEOUT = 30.0
RETRY_STATUSES = (429, 503)
DEFAULT_MAX_ATTEMPTS = 4
DEFAULT_MAX_WAIT = 60.0  # longest single Retry-After we sleep through; longer -> defer

_session_class = None
_adapter_class = None


def _mailctl_session_class():
    """requests.Session with mailctl's defaults; defined on first use (requests is heavy)."""
    global _session_class
    if _session_class is not None:
        return _session_class
    import requests
    from requests.utils import should_bypass_proxies

    class MailctlSession(requests.Session):
        """A requests.Session that applies its default timeout and (for proxies from the
        environment) NO_PROXY to every request, and drops its CA bundle on close()."""

        tls: RequestsVerify | None = None
        default_timeout: float = DEFAULT_TIMEOUT
        explicit_proxy: str = ""  # the profile's proxy URL; "" when proxies come from the environment
        no_proxy: str | None = None  # NO_PROXY of the environment, when its proxies are used

        def request(self, method, url, *args, **kwargs):
            if len(args) < 7:  # else timeout came positionally (params, data, headers, cookies, files, auth, timeout)
                kwargs.setdefault("timeout", self.default_timeout)
            if "proxies" not in kwargs and self._bypass(url):
                kwargs["proxies"] = {key: None for key in self.proxies}  # None drops the session's
            return super().request(method, url, *args, **kwargs)

        def _bypass(self, url) -> bool:
            if self.explicit_proxy or not self.proxies:
                return False
            return bool(should_bypass_proxies(str(url), no_proxy=self.no_proxy))

        def proxies_for(self, url: str | None) -> dict[str, str]:
            """The proxies a request to `url` uses (for code that sends through its own
            sessions, like exchangelib). Without a URL: only the profile's proxy."""
            if self.explicit_proxy:
                return {"http": self.explicit_proxy, "https": self.explicit_proxy}
            if not url or self._bypass(url):
                return {}
            return dict(self.proxies)

        def close(self) -> None:
            try:
                super().close()
            finally:
                if self.tls is not None:
                    self.tls.cleanup()

    _session_class = MailctlSession
    return MailctlSession


def environment_proxies() -> tuple[dict[str, str], str | None]:
    """(scheme -> proxy URL, NO_PROXY) from the environment (and the OS settings urllib reads)."""
    import urllib.request

    proxies = dict(urllib.request.getproxies())
    no_proxy = proxies.pop("no", None)
    return proxies, no_proxy


def proxies_for(proxy: str, url: str | None) -> dict[str, str]:
    """The proxies a request to `url` uses: the given proxy URL for everything; without one, the
    environment's unless NO_PROXY covers the URL; {} without a URL (nothing to decide on)."""
    if proxy:
        return {"http": proxy, "https": proxy}
    if not url:
        return {}
    from requests.utils import should_bypass_proxies

    proxies, no_proxy = environment_proxies()
    if not proxies or should_bypass_proxies(url, no_proxy=no_proxy):
        return {}
    return proxies


def new_session(values: Mapping[str, Any], profile: str = "", *, user_agent: str, proxy: str | None = None,
                shared_ca_bundle: bool = False, check_pem: bool = True):
    """A requests.Session for one profile (see the module docstring); close it when done.

    values: the profile's values (tls_verify, ca_file, proxy, timeout); profile: its name.
    proxy: the proxy URL to use, already with its password (net.proxy.requests_proxy_url);
    None takes the profile's `proxy` as written; "" (or no proxy) uses the environment's.
    shared_ca_bundle / check_pem: see net.tls.TlsConfig.requests_verify."""
    session = _mailctl_session_class()()
    session.trust_env = False
    adapter = deadline_adapter_class()
    for prefix in ("https://", "http://"):
        session.mount(prefix, adapter())
    tls = tls_config(values, profile).requests_verify(shared=shared_ca_bundle, check_pem=check_pem)
    session.tls = tls
    session.verify = tls.verify
    session.default_timeout = float(values.get("timeout") or DEFAULT_TIMEOUT)
    proxy = (values.get("proxy") or "") if proxy is None else proxy
    if proxy:
        session.explicit_proxy = proxy
        session.proxies = {"http": proxy, "https": proxy}
    else:
        session.proxies, session.no_proxy = environment_proxies()
    session.headers["User-Agent"] = user_agent
    return session


# --- host-name lookups within the connect timeout -----------------------------------------
def deadline_adapter_class():
    """requests' HTTPAdapter whose connections (direct, to an HTTP(S) proxy, to a SOCKS proxy)
    look the host name up with net.lookup.resolve() within the request's connect timeout, the
    connect getting what is left. Only the sessions that mount it are affected (new_session's, and
    EWS's exchangelib sessions): urllib3 itself is left as it is for other users in the
    process. Defined on first use (requests is heavy)."""
    global _adapter_class
    if _adapter_class is None:
        _adapter_class = _define_adapter()
    return _adapter_class


def _define_adapter():
    import requests.adapters
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    def _new_conn(self) -> socket.socket:
        return _urllib3_new_conn(self)

    http_conn = type("MailctlHTTPConnection", (HTTPConnection,), {"_new_conn": _new_conn})
    https_conn = type("MailctlHTTPSConnection", (HTTPSConnection,), {"_new_conn": _new_conn})
    pools = {
        "http": type("MailctlHTTPConnectionPool", (HTTPConnectionPool,), {"ConnectionCls": http_conn}),
        "https": type("MailctlHTTPSConnectionPool", (HTTPSConnectionPool,), {"ConnectionCls": https_conn}),
    }

    class MailctlAdapter(requests.adapters.HTTPAdapter):
        """HTTPAdapter whose pool managers (the direct one, each HTTP(S) proxy's and each
        SOCKS proxy's) make mailctl's connections."""

        def init_poolmanager(self, *args, **kwargs) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = pools  # urllib3's per-manager override

        def proxy_manager_for(self, proxy, **proxy_kwargs):
            manager = super().proxy_manager_for(proxy, **proxy_kwargs)
            manager.pool_classes_by_scheme = _socks_pools() if proxy.lower().startswith("socks") else pools
            return manager

    return MailctlAdapter


_socks_pool_classes: dict | None = None


def _socks_pools() -> dict:
    """urllib3's SOCKS pools with the proxy's name looked up within the connect timeout
    (defined when a SOCKS proxy is first used: PySocks loads only then)."""
    global _socks_pool_classes
    if _socks_pool_classes is None:
        from urllib3.contrib.socks import (
            SOCKSConnection, SOCKSHTTPConnectionPool, SOCKSHTTPSConnection, SOCKSHTTPSConnectionPool,
        )

        def _new_conn(self) -> socket.socket:
            return _socks_new_conn(self, SOCKSConnection._new_conn)

        plain = type("MailctlSOCKSConnection", (SOCKSConnection,), {"_new_conn": _new_conn})
        tls = type("MailctlSOCKSHTTPSConnection", (SOCKSHTTPSConnection,), {"_new_conn": _new_conn})
        _socks_pool_classes = {
            "http": type("MailctlSOCKSHTTPConnectionPool", (SOCKSHTTPConnectionPool,), {"ConnectionCls": plain}),
            "https": type("MailctlSOCKSHTTPSConnectionPool", (SOCKSHTTPSConnectionPool,), {"ConnectionCls": tls}),
        }
    return _socks_pool_classes


def _socks_new_conn(conn, new_conn) -> socket.socket:
    """PySocks connects to the proxy by its name (getaddrinfo, outside any deadline): look the
    name up here within the connect timeout and let PySocks connect to the address with the
    time that is left (the server's name still goes to the proxy for socks5h://)."""
    from urllib3.exceptions import NewConnectionError

    from mailctl.net.lookup import LookupTimeout, is_ip_literal, resolve

    options, timeout = conn._socks_options, conn.timeout
    host = options["proxy_host"]
    if not isinstance(timeout, (int, float)) or not host or is_ip_literal(host):
        return new_conn(conn)
    end = time.monotonic() + timeout
    try:
        infos = resolve(host, options["proxy_port"], timeout=timeout, type=socket.SOCK_STREAM)
    except LookupTimeout as exc:
        raise _lookup_error_class()(conn, lookup_timeout_message(exc, proxy=True)) from exc
    except socket.gaierror as exc:
        raise NewConnectionError(conn, f"cannot resolve the proxy's host {host}: {exc.strerror or exc}") from exc
    conn._socks_options = {**options, "proxy_host": infos[0][4][0]}
    conn.timeout = max(0.01, end - time.monotonic())
    try:
        sock = new_conn(conn)
    finally:
        conn._socks_options, conn.timeout = options, timeout
    sock.settimeout(timeout)  # the TLS handshake keeps the whole timeout, as without a proxy
    return sock


def _urllib3_new_conn(conn) -> socket.socket:
    """urllib3.connection.HTTPConnection._new_conn over connect_within(): the same checks, the
    same urllib3 errors (NameResolutionError, ConnectTimeoutError, NewConnectionError), and a
    LookupDeadlineError when the name got no answer within the connect timeout."""
    from urllib3.exceptions import ConnectTimeoutError, LocationParseError, NameResolutionError, NewConnectionError
    from urllib3.util.connection import allowed_gai_family

    from mailctl.net.lookup import LookupTimeout

    try:
        conn._dns_host.encode("idna")
    except UnicodeError:
        raise LocationParseError(f"'{conn._dns_host}', label empty or too long") from None
    try:
        sock = connect_within(conn._dns_host, conn.port, conn.timeout, family=allowed_gai_family(),
                              source_address=conn.source_address, socket_options=conn.socket_options)
    except LookupTimeout as exc:
        raise _lookup_error_class()(conn, lookup_timeout_message(exc, proxy=conn.proxy is not None)) from exc
    except socket.gaierror as exc:
        raise NameResolutionError(conn.host, conn, exc) from exc
    except (TimeoutError, socket.timeout) as exc:
        raise ConnectTimeoutError(conn, f"Connection to {conn.host} timed out. (connect timeout={conn.timeout})") from exc
    except OSError as exc:
        raise NewConnectionError(conn, f"Failed to establish a new connection: {exc}") from exc
    sys.audit("http.client.connect", conn, conn.host, conn.port)
    return sock


_lookup_error = None


def _lookup_error_class():
    """urllib3's NewConnectionError for a lookup that got no answer in time: requests makes it
    a ConnectionError (a ProxyError for the proxy's name), request() a 'cannot connect' (69)."""
    global _lookup_error
    if _lookup_error is None:
        from urllib3.exceptions import HTTPError, NewConnectionError

        class LookupDeadlineError(NewConnectionError):
            """The message alone, without the connection object's repr in front."""

            def __init__(self, conn, message: str) -> None:
                HTTPError.__init__(self, message)
                self.conn = conn
                self._message = message

        _lookup_error = LookupDeadlineError
    return _lookup_error


def lookup_timeout_message(exc, *, proxy: bool = False) -> str:
    """The SMTP resolve stage's wording for a LookupTimeout: 'cannot resolve HOST within Ns:
    no answer from the resolver (waited ...)'."""
    from mailctl.net.lookup import MAX_PENDING

    what = f"the proxy's host {exc.host}" if proxy else exc.host
    busy = f"; {MAX_PENDING} earlier lookups are still pending" if exc.busy else ""
    return f"cannot resolve {what} within {exc.timeout:g}s: no answer from the resolver (waited {exc.waited:.1f}s{busy})"


def connect_within(host: str, port: int, timeout, *, family: int = 0, source_address=None,
                   socket_options=None) -> socket.socket:
    """socket.create_connection (urllib3's, with its socket_options), but the lookup
    (net.lookup.resolve) and the connects to the addresses in turn share one deadline of
    `timeout` seconds; the socket then keeps `timeout` for the TLS handshake, as urllib3's does.
    No timeout (None): no deadline. Raises LookupTimeout, socket.gaierror, TimeoutError or the
    first address's OSError."""
    from mailctl.net.lookup import resolve

    if host.startswith("["):
        host = host.strip("[]")
    if not isinstance(timeout, (int, float)):  # urllib3's "default" sentinel: the socket default
        timeout = socket.getdefaulttimeout()
    end = None if timeout is None else time.monotonic() + timeout
    if end is None:
        infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
    else:
        infos = resolve(host, port, timeout=timeout, type=socket.SOCK_STREAM, family=family)
    first: OSError | None = None
    for af, socktype, proto, _canon, sockaddr in infos:
        left = None if end is None else end - time.monotonic()
        if left is not None and left <= 0:
            raise first or TimeoutError("timed out")
        sock = socket.socket(af, socktype, proto)
        try:
            for option in socket_options or ():
                sock.setsockopt(*option)
            sock.settimeout(left)
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr)
        except OSError as exc:
            sock.close()
            first = first or exc
            continue
        sock.settimeout(timeout)
        return sock
    raise first or OSError("getaddrinfo returns an empty list")


def close_session(session) -> None:
    """Close a session from new_session() (None is fine), removing its temporary CA bundle."""
    if session is not None:
        session.close()


def redact_url(url: str) -> str:
    """A URL without credentials, for messages."""
    parts = urlsplit(url)
    if parts.password or parts.username:
        host = parts.hostname or ""
        netloc = host + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    return url


# --- requests with Retry-After ---------------------------------------------------------
def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass
class RetryPolicy:
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    max_wait: float = DEFAULT_MAX_WAIT  # one Retry-After longer than this: give up, defer
    max_total: float = 120.0  # all waits of one request together
    sleep: Callable[[float], None] = time.sleep


def request(
    session,
    method: str,
    url: str,
    *,
    retry: RetryPolicy | None = None,
    on_retry: Callable[[int, float, Any], None] | None = None,
    **kwargs: Any,
):
    """session.request() that maps transport failures to mailctl errors and waits out 429/503
    within `retry`'s bounds. Returns the last response (the caller judges its status)."""
    import requests

    retry = retry or RetryPolicy()
    kwargs.setdefault("timeout", getattr(session, "default_timeout", DEFAULT_TIMEOUT))
    waited = 0.0
    attempt = 0
    while True:
        attempt += 1
        try:
            with warnings.catch_warnings():
                if session.verify is False:  # tls_verify = false was the user's explicit choice
                    warnings.simplefilter("ignore")
                response = session.request(method, url, **kwargs)
        except requests.exceptions.SSLError as exc:
            raise UnavailableError(
                f"TLS handshake with {_host(url)} failed: {failure_reason(exc)}",
                hint="check the server certificate; for a private CA set ca_file in the profile "
                "(tls_verify = false only for testing)",
            ) from exc
        except requests.exceptions.ProxyError as exc:
            raise UnavailableError(
                f"proxy refused or failed the connection to {_host(url)}: {failure_reason(exc)}",
                hint=lookup_hint(exc, "check the profile's proxy URL and the proxy password (secret kind proxy_password)"),
            ) from exc
        except requests.exceptions.ConnectTimeout as exc:
            raise UnavailableError(
                f"timed out connecting to {_host(url)}",
                hint="check the network, a firewall or the profile's proxy; raise timeout if the link is slow",
            ) from exc
        except requests.exceptions.ReadTimeout as exc:
            raise TemporaryFailure(
                f"{_host(url)} did not answer within {_read_timeout(kwargs['timeout']):g} s",
                hint="the request may still have been processed; raise the profile's timeout",
            ) from exc
        except requests.exceptions.ConnectionError as exc:
            raise UnavailableError(
                f"cannot connect to {_host(url)}: {failure_reason(exc)}",
                hint=lookup_hint(exc, "check the host name, DNS, the network and the profile's proxy"),
            ) from exc
        if response.status_code not in RETRY_STATUSES or attempt >= retry.max_attempts:
            return response
        delay = parse_retry_after(response.headers.get("Retry-After"))
        if delay is None:
            delay = min(2.0 ** (attempt - 1), retry.max_wait)
        if delay > retry.max_wait or waited + delay > retry.max_total:
            return response  # too long to wait here: the caller reports a temporary failure
        if on_retry is not None:
            on_retry(attempt, delay, response)
        response.close()
        retry.sleep(delay)
        waited += delay


def _read_timeout(timeout) -> float:
    """The read part of requests' timeout (a number, or a (connect, read) tuple)."""
    if isinstance(timeout, tuple):
        timeout = timeout[-1]
    return float(timeout) if timeout is not None else float("inf")


# --- failure reasons -----------------------------------------------------------------
def lookup_hint(exc: BaseException, otherwise: str) -> str:
    """The hint for a failed request: the DNS one when a host-name lookup got no answer in
    time (net.lookup.LookupTimeout somewhere in its chain of reasons and causes)."""
    timeout = lookup_timeout_of(exc)
    if timeout is None:
        return otherwise
    return (f"the DNS lookup got no answer: check the nameservers in /etc/resolv.conf and `getent hosts {timeout.host}`; "
            "raise the profile's timeout if DNS is slow here")


def lookup_timeout_of(exc: BaseException):
    """The net.lookup.LookupTimeout behind a requests/urllib3 failure, or None."""
    from mailctl.net.lookup import LookupTimeout

    return _inner(exc, LookupTimeout)


def _inner(exc: BaseException, cls) -> BaseException | None:
    """The first exception of class `cls` in exc's chain of reasons, wrapped errors and causes."""
    todo, seen = [exc], set()
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, cls):
            return current
        todo.extend(inner for inner in (getattr(current, "reason", None), getattr(current, "original_error", None),
                                        current.__cause__, *getattr(current, "args", ()))
                    if isinstance(inner, BaseException))
    return None


def _host(url: str) -> str:
    parts = urlsplit(url)
    return parts.netloc.rpartition("@")[2] or url


def failure_reason(exc: BaseException) -> str:
    """The innermost useful reason of a requests/urllib3 exception, without URLs or secrets."""
    deadline = _inner(exc, _lookup_error) if _lookup_error is not None else None
    if deadline is not None:  # a lookup without an answer in time: its own message says it all
        return str(deadline)
    seen = exc
    text = str(exc)
    for _ in range(6):
        inner = getattr(seen, "reason", None) or (seen.args[0] if getattr(seen, "args", None) else None)
        if isinstance(inner, BaseException) and inner is not seen:
            seen = inner
            text = str(inner)
            continue
        break
    if isinstance(seen, ssl.SSLError) or "CERTIFICATE_VERIFY_FAILED" in text:
        if "CERTIFICATE_VERIFY_FAILED" in text:
            detail = text.split("certificate verify failed:", 1)[-1].split(")")[0].strip(" :")
            return f"certificate verify failed: {detail}" if detail else "certificate verify failed"
    return tidy_reason(text)


def tidy_reason(text: str) -> str:
    """A urllib3/requests failure text without pool and object reprs or URLs."""
    # urllib3 puts "HTTPSConnectionPool(host=..., port=...): Max retries exceeded ..." first.
    if "Max retries exceeded" in text and "(Caused by" in text:
        text = text.split("(Caused by", 1)[1].rstrip(")")
    text = text.replace("NewConnectionError(", "").strip()
    text = re.sub(r"\w*Connection(?:Pool)?\(host='[^']*', port=\d+\):\s*", "", text)
    text = re.sub(r"^\('Unable to connect to proxy', [\"']?(.*?)[\"']?\)+$", r"unable to connect to the proxy: \1", text)
    text = text.strip(" \"'")
    while text.endswith(")") and text.count(")") > text.count("("):
        text = text[:-1].rstrip(" \"'")
    if ": " in text and text.startswith("<"):
        text = text.split(": ", 1)[1]
    return text[:300]
