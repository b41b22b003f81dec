"""The network side of `mailctl profile discover` (issue #17): DNS questions through the run's
Resolver (MX, SRV; --nameserver applies) and HTTPS GETs of Mozilla autoconfig files, with the
host resolved through the same resolver, the certificate verified for its name with
mailctl.net.tls's context (system CAs plus --ca-file), no redirects followed, the body bounded
and the whole fetch under a deadline, as the MTA-STS policy fetch does. What the answers mean
is decided in mailctl.profiles.discover; nothing here sees a password.

Proxies: the environment's, with the rules every other mailctl HTTPS request follows
(mailctl.net.http.proxies_for: HTTPS_PROXY, else ALL_PROXY, NO_PROXY checked per URL). Through
a proxy the tunnel is opened by mailctl.net.proxy (HTTP CONNECT, SOCKS5; one deadline, bounded
replies), the host name goes to the proxy unresolved (it resolves, as with requests), and the
TLS and HTTP limits above are unchanged inside the tunnel. Every Fetched says which proxy it
went through, its URL without credentials (the password, from the URL as the environment
gives it, goes to the proxy only)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Callable
from urllib.parse import unquote, urlunsplit

from mailctl.dns.resolver import Lookup, Nameserver, Resolver
from mailctl.dns.tlsprobe import Deadline, Network, handshake, https_get, problem_text, reason
from mailctl.errors import MailctlError
from mailctl.net.proxy import ProxySpec

MAX_AUTOCONFIG_BYTES = 64 * 1024  # Thunderbird's ISPDB files are a few KiB
BUDGET_STEPS = 4  # one fetch takes at most this many timeouts in all


@dataclass
class Fetched:
    url: str
    status: int | None = None
    body: bytes | None = None
    content_type: str = ""
    error: str = ""  # unresolvable, connect, proxy, tls, http, too-large
    detail: str = ""
    proxy: str = ""  # the proxy it went through, without credentials ("": direct)
    proxy_source: str = ""  # where that proxy came from (HTTPS_PROXY, ...)


@dataclass(frozen=True)
class Route:
    """How one fetch leaves this host: directly (spec None), or through a proxy of the
    environment; `problem` when the environment names a proxy mailctl cannot use (then the
    fetch fails with it rather than silently going direct)."""

    spec: ProxySpec | None = None
    shown: str = ""  # the proxy URL without user name or password
    source: str = ""
    problem: str = ""


def proxy_route(url: str) -> Route:
    """The proxy of the environment for `url` (mailctl.net.http's rules: NO_PROXY applies)."""
    from mailctl.net.http import proxies_for

    proxies = proxies_for("", url)
    key = next((k for k in ("https", "all") if proxies.get(k)), "")
    if not key:
        return Route()
    source = next((v for v in (f"{key}_proxy", f"{key.upper()}_PROXY") if os.environ.get(v)), "the system proxy settings")
    return _route(proxies[key], source)


def _route(url: str, source: str) -> Route:
    """A Route for a proxy URL as the environment writes it: the scheme may be missing (http,
    as requests assumes) and the URL may carry user:password (split off here: net.proxy takes
    the password apart from the URL, and nothing shown ever contains either)."""
    from mailctl.errors import ConfigError
    from mailctl.net.proxy import parse_proxy

    url = url.strip()
    if "://" not in url:
        url = "http://" + url
    scheme, rest = url.split("://", 1)
    netloc = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    userinfo, at, hostport = netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    shown = f"{scheme}://{hostport}"
    try:
        bare = urlunsplit((scheme, f"{user}@{hostport}" if at and user else hostport, "", "", ""))
        spec = parse_proxy(bare, unquote(password) if password else None)
    except (ConfigError, ValueError) as exc:  # ValueError: urllib's, for a port that is not one
        why = exc.message if isinstance(exc, ConfigError) else str(exc)
        return Route(shown=shown, source=source, problem=f"the proxy {shown} ({source}) cannot be used: {why}")
    return Route(spec, ProxySpec(spec.scheme, spec.host, spec.port).display, source)


def _proxy_reason(route: Route, exc: MailctlError) -> str:
    """net.proxy's message with the proxy named without its user name, and where it came from."""
    assert route.spec is not None
    return exc.message.replace(route.spec.display, route.shown) + f" ({route.source})"


class DiscoveryNetwork:
    """lookup() and fetch() for profiles.discover.discover(); close() when done."""

    def __init__(self, *, nameservers: list[Nameserver] | None = None, timeout: float = 5.0, ca_file: str = "",
                 https_port: int = 443) -> None:
        self.resolver = Resolver(list(nameservers or []), timeout=timeout)
        self.net = Network(ca_file=ca_file, timeout=timeout, https_port=https_port)
        self.net.check_ca_file()
        self.timeout = timeout

    def close(self) -> None:
        self.resolver.close()

    def __enter__(self) -> "DiscoveryNetwork":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def prefetch(self, questions: list[tuple[str, str]]) -> None:
        self.resolver.prefetch(questions)

    def lookup(self, name: str, rdtype: str) -> Lookup:
        return self.resolver.lookup(name, rdtype)

    def fetch(self, host: str, path: str, *, accept: str = "application/xml, text/xml") -> Fetched:
        """GET https://host/path (the test port when set), bounded and under a deadline,
        through the environment's proxy for that URL when there is one."""
        port = self.net.https_port
        out = Fetched(f"https://{host}{'' if port == 443 else f':{port}'}{path}")
        route = proxy_route(out.url)
        out.proxy, out.proxy_source = route.shown, route.source
        with Deadline(self.timeout * BUDGET_STEPS) as deadline:
            self._fetch(out, route, host, path, accept, deadline)
        if deadline.expired and out.error in ("connect", "proxy", "http"):
            out.detail = f"no complete answer within {self.timeout * BUDGET_STEPS:g} s ({out.detail})"
        return out

    def _fetch(self, out: Fetched, route: Route, host: str, path: str, accept: str, deadline: Deadline) -> None:
        if route.problem:
            out.error, out.detail = "proxy", route.problem
            return
        dial = self._via_proxy(out, route, host, deadline) if route.spec else self._direct(out, host, deadline)
        if dial is None:
            return
        try:
            tls, result = handshake(dial, host, self.net.context)
        except OSError as exc:
            out.error, out.detail = "connect", reason(exc)
            return
        if tls is None:
            out.error, out.detail = "tls", problem_text(result, host)
            return
        self._get(out, deadline.watch(tls), host, path, accept)

    def _direct(self, out: Fetched, host: str, deadline: Deadline) -> Callable[[], socket.socket] | None:
        """dial() for a TCP connection to host's first address that answers, the first one
        already made; None (and out says why) when there is none."""
        port = self.net.https_port
        self.resolver.prefetch([(host, "A"), (host, "AAAA")])
        addresses = [r for t in ("A", "AAAA") for r in self.resolver.lookup(host, t).records]
        if not addresses:
            out.error, out.detail = "unresolvable", f"{host} has no A or AAAA record"
            return None
        sock, address = None, ""
        for ip in addresses:
            try:
                sock, address = deadline.watch(socket.create_connection((ip, port), timeout=self.timeout)), ip
                break
            except OSError as exc:
                out.detail = f"{ip} port {port}: {reason(exc)}"
        if sock is None:
            out.error = "connect"
            return None
        first = [sock]

        def dial():  # the second dial (after a failed verification) only describes the certificate
            return first.pop() if first else deadline.watch(socket.create_connection((address, port), timeout=self.timeout))
        return dial

    def _via_proxy(self, out: Fetched, route: Route, host: str, deadline: Deadline) -> Callable[[], socket.socket] | None:
        """dial() for a tunnel to host through the proxy (which resolves the name), the first
        already made; None (and out has the proxy's one-line reason) when it cannot be."""
        from mailctl.net.proxy import connect_via_proxy

        assert route.spec is not None
        spec, port = route.spec, self.net.https_port
        try:
            first = [deadline.watch(connect_via_proxy(spec, host, port, self.timeout))]
        except MailctlError as exc:
            out.error, out.detail = "proxy", _proxy_reason(route, exc)
            return None

        def dial():
            return first.pop() if first else deadline.watch(connect_via_proxy(spec, host, port, self.timeout))
        return dial

    def _get(self, out: Fetched, tls, host: str, path: str, accept: str) -> None:
        reply = https_get(tls, host, path, self.net, agent="mailctl-profile-discover", accept=accept,
                          limit=MAX_AUTOCONFIG_BYTES, redirect_note=": not followed")
        out.status, out.content_type = reply.status, reply.content_type
        if reply.error == "too-large":
            out.error, out.detail = "too-large", f"larger than {MAX_AUTOCONFIG_BYTES // 1024} KiB"
        elif reply.error:
            out.error, out.detail = reply.error, reply.detail
        else:
            out.body = reply.body
