"""The network side of `mailctl profile discover` (issue #17): DNS questions through the run's
Resolver (MX, SRV; --nameserver applies) and HTTPS GETs of Mozilla autoconfig files, with the
host resolved through the same resolver, the certificate verified for its name with
mailctl.net.tls's context (system CAs plus --ca-file), no redirects followed, the body bounded
and the whole fetch under a deadline, as the MTA-STS policy fetch does. What the answers mean
is decided in mailctl.profiles.discover; nothing here sees a password."""

from __future__ import annotations

import socket
from dataclasses import dataclass

from mailctl.dns.resolver import Lookup, Nameserver, Resolver
from mailctl.dns.tlsprobe import Deadline, Network, handshake, https_get, problem_text, reason

MAX_AUTOCONFIG_BYTES = 64 * 1024  # Thunderbird's ISPDB files are a few KiB
BUDGET_STEPS = 4  # one fetch takes at most this many timeouts in all


@dataclass
class Fetched:
    url: str
    status: int | None = None
    body: bytes | None = None
    content_type: str = ""
    error: str = ""  # unresolvable, connect, tls, http, too-large
    detail: str = ""


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

    def fetch(self, host: str, path: str) -> Fetched:
        """GET https://host/path (the test port when set), bounded and under a deadline."""
        with Deadline(self.timeout * BUDGET_STEPS) as deadline:
            out = self._fetch(host, path, deadline)
        if deadline.expired and out.error in ("connect", "http"):
            out.detail = f"no complete answer within {self.timeout * BUDGET_STEPS:g} s ({out.detail})"
        return out

    def _fetch(self, host: str, path: str, deadline: Deadline) -> Fetched:
        port = self.net.https_port
        out = Fetched(f"https://{host}{'' if port == 443 else f':{port}'}{path}")
        self.resolver.prefetch([(host, "A"), (host, "AAAA")])
        addresses = [r for t in ("A", "AAAA") for r in self.resolver.lookup(host, t).records]
        if not addresses:
            out.error, out.detail = "unresolvable", f"{host} has no A or AAAA record"
            return out
        sock, address = None, ""
        for ip in addresses:
            try:
                sock, address = deadline.watch(socket.create_connection((ip, port), timeout=self.timeout)), ip
                break
            except OSError as exc:
                out.detail = f"{ip} port {port}: {reason(exc)}"
        if sock is None:
            out.error = "connect"
            return out
        first = [sock]

        def dial():  # the second dial (after a failed verification) only describes the certificate
            return first.pop() if first else deadline.watch(socket.create_connection((address, port), timeout=self.timeout))

        try:
            tls, result = handshake(dial, host, self.net.context)
        except OSError as exc:
            out.error, out.detail = "connect", reason(exc)
            return out
        if tls is None:
            out.error, out.detail = "tls", problem_text(result, host)
            return out
        return self._get(out, deadline.watch(tls), host, path)

    def _get(self, out: Fetched, tls, host: str, path: str) -> Fetched:
        reply = https_get(tls, host, path, self.net, agent="mailctl-profile-discover", accept="application/xml, text/xml",
                          limit=MAX_AUTOCONFIG_BYTES, redirect_note=": not followed")
        out.status, out.content_type = reply.status, reply.content_type
        if reply.error == "too-large":
            out.error, out.detail = "too-large", f"larger than {MAX_AUTOCONFIG_BYTES // 1024} KiB"
        elif reply.error:
            out.error, out.detail = reply.error, reply.detail
        else:
            out.body = reply.body
        return out
