"""The MX STARTTLS probe (opt-in: `dns check --smtp`): connect to every MX host on port 25,
EHLO, STARTTLS, and check the certificate against the MX name (verified with mailctl.net.tls's
context), its expiry and the TLS version. Hosts are probed concurrently; every step (connect,
banner, each reply, the handshake) has the --connect-timeout. Nothing is sent after the second
EHLO but QUIT.

Certificate problems and a missing STARTTLS are warnings (senders fall back to unauthenticated
or plaintext delivery) unless the domain's MTA-STS policy is in mode enforce: then senders
refuse to deliver to that host, and they are errors."""

from __future__ import annotations

import smtplib
import socket
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from mailctl.dns import findings as F
from mailctl.dns.findings import CheckResult
from mailctl.dns.mtasts import policy_mode
from mailctl.dns.mx import mx_hosts
from mailctl.dns.resolver import Resolver, normalize
from mailctl.dns.tlsprobe import Deadline, Network, TlsResult, handshake, problem_text, reason

MAX_HOSTS = 10
BUDGET_STEPS = 4  # a probe takes at most this many --connect-timeouts in all


class _Session(smtplib.SMTP):
    """smtplib over a socket we connect ourselves (to an address from our resolver)."""

    def __init__(self, sock: socket.socket, local_hostname: str, timeout: float):
        super().__init__(host="", port=0, local_hostname=local_hostname, timeout=timeout)
        self.sock = sock
        self.file = None

    def reset(self, sock) -> None:
        self.sock = sock
        self.file = None
        self.helo_resp = self.ehlo_resp = None
        self.esmtp_features = {}
        self.does_esmtp = False


class _Refused(Exception):
    def __init__(self, stage: str, code: int, text: str):
        super().__init__(f"{stage}: {code} {text}")
        self.stage, self.code, self.text = stage, code, text


def probe_host(host: str, addresses: list[str], net: Network) -> dict[str, Any]:
    """One MX host: the first address that answers; what it offers; the verified handshake.
    Every step has net.timeout; the whole probe at most BUDGET_STEPS times that."""
    with Deadline(net.timeout * BUDGET_STEPS) as deadline:
        out = _probe(host, addresses, net, deadline)
    if deadline.expired and (out.get("unreachable") or out.get("refused")):
        out["error"] = f"no complete answer within {net.timeout * BUDGET_STEPS:g} s ({out.get('error', '')})"
    return out


def _probe(host: str, addresses: list[str], net: Network, deadline: Deadline) -> dict[str, Any]:
    out: dict[str, Any] = {"host": host, "port": net.smtp_port}
    ehlo_name = net.ehlo_name or socket.gethostname() or "localhost"
    errors = []
    for ip in addresses:
        out["address"] = ip
        sessions: list[_Session] = []

        def dial():
            """A new session up to the STARTTLS 220 reply: the socket, ready for TLS."""
            sock = deadline.watch(socket.create_connection((ip, net.smtp_port), timeout=net.timeout))
            session = _Session(sock, ehlo_name, net.timeout)
            sessions.append(session)
            code, msg = session.getreply()
            if code != 220:
                raise _Refused("banner", code, msg.decode("utf-8", "replace"))
            if not out.get("banner"):
                out["banner"] = msg.decode("utf-8", "replace").splitlines()[0][:200] if msg else ""
            code, msg = session.ehlo()
            if code != 250:
                raise _Refused("EHLO", code, msg.decode("utf-8", "replace"))
            out["starttls_offered"] = session.has_extn("starttls")
            if not out["starttls_offered"]:
                raise _NoStarttls()
            code, msg = session.docmd("STARTTLS")
            if code != 220:
                raise _Refused("STARTTLS", code, msg.decode("utf-8", "replace"))
            return session.sock

        try:
            tls, result = handshake(dial, host, net.context)
        except _NoStarttls:
            _quit(sessions)
            return out
        except _Refused as exc:
            _quit(sessions)
            out["error"] = f"{ip}: {exc}"
            out["refused"] = True
            return out
        except (OSError, smtplib.SMTPException) as exc:
            _close(sessions)
            errors.append(f"{ip} port {net.smtp_port}: {reason(exc)}")
            if deadline.expired:
                break
            continue
        out["tls"] = result.to_dict()
        out["_tls"] = result
        if tls is not None:
            session = sessions[-1]
            session.reset(deadline.watch(tls))
            try:
                code, _ = session.ehlo()
                out["ehlo_after_tls"] = code
            except (OSError, smtplib.SMTPException):
                pass
        _quit(sessions)
        return out
    out["error"] = "; ".join(errors) or "no address"
    out["unreachable"] = True
    return out


class _NoStarttls(Exception):
    pass


def _quit(sessions: list[_Session]) -> None:
    for s in sessions:
        try:
            if s.sock is not None:
                s.sock.settimeout(1.0)
                s.quit()
        except (OSError, smtplib.SMTPException):
            pass
        _close([s])


def _close(sessions: list[_Session]) -> None:
    for s in sessions:
        try:
            s.close()
        except OSError:
            pass


def check_starttls(resolver: Resolver, domain: str, net: Network) -> CheckResult:
    domain = normalize(domain)
    result = CheckResult("starttls", domain)
    with ThreadPoolExecutor(1, thread_name_prefix="mailctl-sts") as side:
        mode_future = side.submit(policy_mode, resolver, domain, net)  # in parallel with the probes
        mxset = mx_hosts(resolver, domain)
        if mxset.lookup.temporary:
            result.add(F.dns_failure(mxset.lookup, "MX records"))
            return result
        for lk in mxset.address_lookups:
            if lk.temporary:
                result.add(F.dns_failure(lk, "address of an MX host"))
        hosts = list({h.host: h for h in mxset.hosts if h.addresses and not h.ip_literal}.values())[:MAX_HOSTS]
        result.data["port"] = net.smtp_port
        if not hosts:
            if not result.temporary:
                result.add(F.info("starttls.no-mx-host", f"{domain} has no MX host with an address to probe", "see the mx check", domain))
            result.data["hosts"] = []
            return result
        with ThreadPoolExecutor(len(hosts), thread_name_prefix="mailctl-smtp") as pool:
            probes = list(pool.map(lambda h: probe_host(h.host, _ordered(h.addresses), net), hosts))
        try:
            mode = mode_future.result()
        except Exception:  # the mta-sts check reports what went wrong with the policy
            mode = None
    result.data["mta_sts_mode"] = mode
    enforced = mode == "enforce"
    strict = F.error if enforced else F.warning
    why = "; the MTA-STS policy is enforce, so senders do not deliver to it" if enforced else ""
    for p in probes:
        tls: TlsResult | None = p.pop("_tls", None)
        host = p["host"]
        if p.get("unreachable"):
            result.add(F.warning("starttls.unreachable", f"cannot reach MX host {host} on port {net.smtp_port}: {p['error']}",
                                 "check the host; outbound port 25 is blocked in many cloud and office networks, so run the probe from a host that can reach it", host))
        elif p.get("refused"):
            result.add(F.warning("starttls.smtp-refused", f"MX host {host} refused the session: {p['error']}",
                                 "the server may block this client; probe from another network", host))
        elif not p.get("starttls_offered"):
            result.add(strict("starttls.not-offered", f"MX host {host} does not offer STARTTLS: mail to {domain} travels unencrypted{why}",
                              f"enable STARTTLS on {host} with a certificate for {host}", host))
        elif tls is not None and not tls.verified:
            text = problem_text(tls, host)
            if tls.problem in ("handshake", "old-protocol"):
                fid = "starttls.old-tls" if tls.problem == "old-protocol" else "starttls.handshake-failed"
                result.add(F.error(fid, f"MX host {host} offers STARTTLS but {text}",
                                   f"fix the TLS configuration of {host} (TLS 1.2 or 1.3 with a current certificate)", host))
            else:
                fid = {"expired": "starttls.certificate-expired", "not-yet-valid": "starttls.certificate-expired",
                       "name-mismatch": "starttls.certificate-name-mismatch"}.get(tls.problem, "starttls.certificate-untrusted")
                result.add(strict(fid, f"MX host {host}: {text}{why}",
                                  f"install a certificate from a public CA that names {host} (and renew it before it expires)", host))
        elif tls is not None and tls.expiring:
            days = tls.certificate["days_left"]
            result.add(F.warning("starttls.certificate-expiring", f"the certificate of MX host {host} expires in {days} day(s)",
                                 f"renew the certificate of {host}", host))
    result.data["hosts"] = probes
    return result


def _ordered(addresses: list[str]) -> list[str]:
    """IPv4 first: IPv6 is missing on many CI networks, and one working address is enough."""
    return sorted(addresses, key=lambda ip: ":" in ip)
