"""MTA-STS (RFC 8461): the `_mta-sts` TXT record (v=STSv1, id), the policy fetched over HTTPS
from https://mta-sts.<domain>/.well-known/mta-sts.txt (certificate verified for that name, no
redirects, HTTP 200, text/plain), its syntax, `mode` and `max_age`, and whether every MX host
matches an `mx:` pattern (under mode enforce a host that does not match gets no mail).

The policy host is resolved through the run's resolver (so --nameserver applies to it too) and
the TLS context is the one of mailctl.net.tls (system CAs plus --ca-file)."""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass, field
from typing import Any

from mailctl.dns import findings as F
from mailctl.dns.findings import CheckResult
from mailctl.dns.mx import mx_hosts
from mailctl.dns.resolver import Lookup, Resolver, normalize
from mailctl.dns.tlsprobe import Deadline, Network, TlsResult, handshake, https_get, problem_text, reason

POLICY_PATH = "/.well-known/mta-sts.txt"
MAX_POLICY_BYTES = 64 * 1024  # RFC 8461 3.3: senders may refuse larger policies
MAX_AGE_LIMIT = 31557600
SHORT_MAX_AGE = 86400
BUDGET_STEPS = 4  # the fetch takes at most this many --connect-timeouts in all
_RECORD_PREFIX = re.compile(r"^v=STSv1[ \t]*(;|$)")
_ID = re.compile(r"^[A-Za-z0-9]{1,32}$")
_FIELD = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.-]{0,31})=([\x21-\x3a\x3c\x3e-\x7e]+)$")
_MX_PATTERN = re.compile(r"^(\*\.)?[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)+$")


def is_sts_record(text: str) -> bool:
    return _RECORD_PREFIX.match(text) is not None


def parse_record(text: str) -> tuple[dict[str, str], list[str]]:
    """(fields, problems) of a `v=STSv1; id=...` record (RFC 8461 3.1)."""
    problems = []
    fields: dict[str, str] = {}
    parts = [p.strip(" \t") for p in text.split(";")]
    if parts and parts[-1] == "":
        parts.pop()
    for part in parts:
        m = _FIELD.match(part)
        if not m:
            problems.append(f"'{part}' is not a name=value field")
            continue
        fields.setdefault(m.group(1), m.group(2))
    if fields.get("v") != "STSv1":
        problems.append("the record must start with 'v=STSv1'")
    if "id" not in fields:
        problems.append("no id= field (RFC 8461 3.1 requires it)")
    elif not _ID.match(fields["id"]):
        problems.append(f"id={fields['id']} must be 1-32 letters and digits")
    return fields, problems


def parse_policy(text: str) -> tuple[dict[str, Any], list[str], list[str]]:
    """(policy, errors, notes) of a policy file (RFC 8461 3.2): version, mode, max_age, mx."""
    policy: dict[str, Any] = {"mx": []}
    errors: list[str] = []
    notes: list[str] = []
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw[:-1] if raw.endswith("\r") else raw
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep or key != key.strip() or not key:
            errors.append(f"line {number}: '{line[:60]}' is not 'key: value'")
            continue
        value = value.strip()
        if key == "mx":
            if _MX_PATTERN.match(value.lower()):
                policy["mx"].append(value.lower())
            else:
                errors.append(f"line {number}: mx: '{value}' is not a host name or *.domain pattern")
            continue
        if key in policy:
            notes.append(f"line {number}: {key} appears again; the first value counts")
            continue
        if key == "version":
            policy["version"] = value
            if value != "STSv1":
                errors.append(f"line {number}: version: {value} (must be STSv1)")
        elif key == "mode":
            policy["mode"] = value
            if value not in ("enforce", "testing", "none"):
                errors.append(f"line {number}: mode: {value} (must be enforce, testing or none)")
        elif key == "max_age":
            if not re.fullmatch(r"[0-9]{1,10}", value) or int(value) > MAX_AGE_LIMIT:
                errors.append(f"line {number}: max_age: {value} (must be 0-{MAX_AGE_LIMIT} seconds)")
            else:
                policy["max_age"] = int(value)
        else:
            notes.append(f"line {number}: unknown key {key} is ignored")
    for key in ("version", "mode", "max_age"):
        if key not in policy and not any(e.split(": ", 1)[-1].startswith(key) for e in errors):
            errors.append(f"no {key}: line (required)")
    if policy.get("mode") in ("enforce", "testing") and not policy["mx"]:
        errors.append(f"mode {policy['mode']} needs at least one mx: line")
    return policy, errors, notes


def mx_matches(host: str, pattern: str) -> bool:
    """RFC 8461 4.1: exact, or '*.' plus exactly one more label on the left."""
    host, pattern = normalize(host), normalize(pattern)
    if pattern.startswith("*."):
        head, _, rest = host.partition(".")
        return bool(head) and rest == pattern[2:]
    return host == pattern


@dataclass
class PolicyFetch:
    url: str
    host: str
    address: str = ""
    lookups: list[Lookup] = field(default_factory=list)  # temporary failures resolving the host
    error: str = ""  # unresolvable, connect, tls, http
    detail: str = ""
    tls: TlsResult | None = None
    status: int | None = None
    content_type: str = ""
    body: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"url": self.url, "address": self.address or None, "http_status": self.status}
        if self.content_type:
            d["content_type"] = self.content_type
        if self.error:
            d["error"] = self.error
            d["detail"] = self.detail
        if self.tls is not None:
            d["tls"] = self.tls.to_dict()
        return d


def fetch_policy(resolver: Resolver, domain: str, net: Network) -> PolicyFetch:
    """The policy of `domain`, fetched once per run (the STARTTLS probe asks for it too)."""
    return net.once(("mta-sts-policy", domain), lambda: _fetch(resolver, domain, net))


def _fetch(resolver: Resolver, domain: str, net: Network) -> PolicyFetch:
    with Deadline(net.timeout * BUDGET_STEPS) as deadline:
        out = _fetch_within(resolver, domain, net, deadline)
    if deadline.expired and out.error in ("connect", "http"):
        out.detail = f"no complete answer within {net.timeout * BUDGET_STEPS:g} s ({out.detail})"
    return out


def _fetch_within(resolver: Resolver, domain: str, net: Network, deadline: Deadline) -> PolicyFetch:

    host = f"mta-sts.{domain}"
    port = "" if net.https_port == 443 else f":{net.https_port}"
    out = PolicyFetch(f"https://{host}{port}{POLICY_PATH}", host)
    resolver.prefetch([(host, "A"), (host, "AAAA")])
    lookups = [resolver.lookup(host, "A"), resolver.lookup(host, "AAAA")]
    out.lookups = [lk for lk in lookups if lk.temporary]
    addresses = [r for lk in lookups for r in lk.records]
    if not addresses:
        out.error = "unresolvable"
        out.detail = f"{host} has no A or AAAA record"
        return out
    sock = None
    for ip in addresses:
        try:
            sock = deadline.watch(socket.create_connection((ip, net.https_port), timeout=net.timeout))
            out.address = ip
            break
        except OSError as exc:
            out.detail = f"{ip} port {net.https_port}: {reason(exc)}"
    if sock is None:
        out.error = "connect"
        return out
    first = [sock]

    def dial():
        if first:
            return first.pop()
        return deadline.watch(socket.create_connection((out.address, net.https_port), timeout=net.timeout))

    try:
        tls, out.tls = handshake(dial, host, net.context)
    except OSError as exc:
        out.error, out.detail = "connect", f"{out.address}: {reason(exc)}"
        return out
    if tls is None:
        out.error, out.detail = "tls", problem_text(out.tls, host)
        return out
    reply = https_get(deadline.watch(tls), host, POLICY_PATH, net, agent="mailctl-dns-check", accept="text/plain",
                      limit=MAX_POLICY_BYTES, redirect_note="; RFC 8461 3.3: senders do not follow redirects")
    out.status, out.content_type = reply.status, reply.content_type
    if reply.error == "too-large":
        out.error, out.detail = "http", f"the policy is larger than {MAX_POLICY_BYTES // 1024} KiB"
    elif reply.error:
        out.error, out.detail = reply.error, reply.detail
    else:
        out.body = (reply.body or b"").decode("utf-8", "replace")
    return out


def sts_record(resolver: Resolver, domain: str) -> tuple[Lookup, list[str]]:
    lk = resolver.txt(f"_mta-sts.{domain}")
    return lk, [r for r in lk.records if is_sts_record(r)]


def policy_mode(resolver: Resolver, domain: str, net: Network) -> str | None:
    """The mode of the domain's valid policy (enforce, testing, none), or None without one."""
    lk, records = sts_record(resolver, domain)
    if len(records) != 1 or parse_record(records[0])[1]:
        return None
    fetch = fetch_policy(resolver, domain, net)
    if fetch.body is None:
        return None
    policy, errors, _ = parse_policy(fetch.body)
    return None if errors else policy.get("mode")


def check_mta_sts(resolver: Resolver, domain: str, net: Network) -> CheckResult:
    domain = normalize(domain)
    result = CheckResult("mta-sts", domain)
    name = f"_mta-sts.{domain}"
    resolver.prefetch([(name, "TXT"), (domain, "MX")])
    lk, records = sts_record(resolver, domain)
    if lk.temporary:
        result.add(F.dns_failure(lk, "MTA-STS record"))
        return result
    result.data["record"] = records[0] if records else None
    if not records:
        root = resolver.txt(domain)
        if any(is_sts_record(r) for r in root.records):
            result.add(F.error("mta-sts.misplaced-record", f"the MTA-STS record is published at {domain}, where senders do not look",
                               f"move it to {name}", domain))
        else:
            result.add(F.info("mta-sts.missing", f"{domain} publishes no MTA-STS policy ({name}), so senders fall back to opportunistic TLS that an attacker can strip",
                              f"publish a policy at https://mta-sts.{domain}{POLICY_PATH} (start with mode: testing) and TXT 'v=STSv1; id=<timestamp>' at {name}", name))
        return result
    if len(records) > 1:
        result.add(F.error("mta-sts.multiple-records", f"{name} has {len(records)} v=STSv1 records; senders then assume there is no policy (RFC 8461 3.1)",
                           "keep exactly one record", name))
        return result
    fields, problems = parse_record(records[0])
    result.data["id"] = fields.get("id")
    for p in problems:
        result.add(F.error("mta-sts.record-syntax", f"{name}: {p}", "publish 'v=STSv1; id=20240101T000000' (change the id with every policy change)", name))
    if problems:
        return result
    fetch = fetch_policy(resolver, domain, net)
    result.data["policy_fetch"] = fetch.to_dict()
    for failed in fetch.lookups:
        result.add(F.dns_failure(failed, "address of the MTA-STS policy host"))
    if fetch.error == "tls":
        result.add(F.error("mta-sts.policy-certificate", f"{fetch.url}: {fetch.detail}; senders ignore the policy",
                           f"serve {fetch.host} with a certificate from a public CA that names {fetch.host}", fetch.host))
        return result
    if fetch.error and not (fetch.error == "unresolvable" and result.temporary):
        result.add(F.error("mta-sts.policy-unavailable", f"the MTA-STS policy cannot be fetched from {fetch.url}: {fetch.detail}",
                           f"serve the policy over HTTPS at {fetch.url} (HTTP 200, no redirect)", fetch.url))
        return result
    if fetch.body is None:
        return result
    if fetch.tls is not None and fetch.tls.expiring:
        days = fetch.tls.certificate["days_left"]
        result.add(F.warning("mta-sts.certificate-expiring", f"the certificate of {fetch.host} expires in {days} day(s); once expired, senders ignore the policy",
                             f"renew the certificate of {fetch.host}", fetch.host))
    if fetch.content_type != "text/plain":
        result.add(F.warning("mta-sts.policy-content-type", f"{fetch.url} is served as '{fetch.content_type or 'no Content-Type'}', not text/plain (RFC 8461 3.2)",
                             "serve the policy with Content-Type: text/plain", fetch.url))
    policy, errors, notes = parse_policy(fetch.body)
    result.data["policy"] = policy
    for e in errors:
        result.add(F.error("mta-sts.policy-syntax", f"{fetch.url}: {e}; senders ignore the policy",
                           "write 'version: STSv1', 'mode: testing|enforce', 'max_age: 604800' and one 'mx: HOST' per MX", fetch.url))
    if errors:
        return result
    mode = policy["mode"]
    if mode == "testing":
        result.add(F.info("mta-sts.testing", f"MTA-STS policy of {domain} is in mode testing: failures are reported (TLS-RPT), not enforced",
                          "switch to mode: enforce once the TLS reports are clean", fetch.url))
    elif mode == "none":
        result.add(F.info("mta-sts.mode-none", f"MTA-STS policy of {domain} is mode none: the policy is withdrawn",
                          "publish mode: testing or enforce to protect inbound mail", fetch.url))
    if policy["max_age"] < SHORT_MAX_AGE:
        result.add(F.warning("mta-sts.max-age-short", f"max_age {policy['max_age']} s is under a day; senders forget the policy quickly (RFC 8461 recommends weeks)",
                             "set max_age: 604800 (a week) or more", fetch.url))
    if mode in ("enforce", "testing"):
        mxset = mx_hosts(resolver, domain, addresses=False)
        if mxset.lookup.temporary:
            result.add(F.dns_failure(mxset.lookup, "MX records"))
            return result
        coverage = []
        for h in mxset.hosts:
            matched = next((p for p in policy["mx"] if mx_matches(h.host, p)), None)
            coverage.append({"host": h.host, "pattern": matched})
            if matched is None:
                sev = F.error if mode == "enforce" else F.warning
                effect = "senders that enforce MTA-STS do not deliver to it" if mode == "enforce" else "mail to it is reported as a failure"
                result.add(sev("mta-sts.mx-not-covered", f"MX host {h.host} matches no mx: line of the MTA-STS policy ({', '.join(policy['mx'])}): {effect}",
                               f"add 'mx: {h.host}' to the policy (and change the id of {name})", h.host))
        result.data["mx_coverage"] = coverage
    return result
