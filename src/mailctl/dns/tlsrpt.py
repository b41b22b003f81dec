"""SMTP TLS Reporting (RFC 8460): the `_smtp._tls` TXT record, `v=TLSRPTv1; rua=...` with
mailto: or https: report URIs, so senders tell the domain when TLS to its MX hosts fails
(essential with MTA-STS or DANE)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from mailctl.dns import findings as F
from mailctl.dns.findings import CheckResult
from mailctl.dns.resolver import Resolver, normalize

_PREFIX = re.compile(r"^v=TLSRPTv1[ \t]*(;|$)")
_MAILTO = re.compile(r"^mailto:[^@\s]+@[A-Za-z0-9.-]+\.[A-Za-z0-9-]+$", re.IGNORECASE)


def is_tlsrpt_record(text: str) -> bool:
    return _PREFIX.match(text) is not None


def _valid_uri(uri: str) -> bool:
    if uri.lower().startswith("mailto:"):
        return _MAILTO.match(uri) is not None
    parts = urlsplit(uri)
    return parts.scheme.lower() == "https" and bool(parts.hostname)


def check_tls_rpt(resolver: Resolver, domain: str) -> CheckResult:
    domain = normalize(domain)
    result = CheckResult("tls-rpt", domain)
    name = f"_smtp._tls.{domain}"
    resolver.prefetch([(name, "TXT"), (f"_mta-sts.{domain}", "TXT")])
    lk = resolver.txt(name)
    if lk.temporary:
        result.add(F.dns_failure(lk, "TLS-RPT record"))
        return result
    records = [r for r in lk.records if is_tlsrpt_record(r)]
    result.data["record"] = records[0] if records else None
    if not records:
        sts = resolver.txt(f"_mta-sts.{domain}")
        has_sts = any(r.startswith("v=STSv1") for r in sts.records)
        why = " although it publishes MTA-STS, so TLS failures toward its MX hosts go unnoticed" if has_sts else ""
        result.add(F.info("tls-rpt.missing", f"{domain} publishes no TLS-RPT record ({name}){why}",
                          f"publish TXT 'v=TLSRPTv1; rua=mailto:tls-reports@{domain}' at {name}", name))
        return result
    if len(records) > 1:
        result.add(F.error("tls-rpt.multiple-records", f"{name} has {len(records)} v=TLSRPTv1 records; senders then send no reports (RFC 8460 3)",
                           "keep exactly one record", name))
        return result
    fields: dict[str, str] = {}
    for part in (p.strip(" \t") for p in records[0].split(";")):
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            result.add(F.error("tls-rpt.syntax", f"{name}: '{part}' is not a name=value field", "publish 'v=TLSRPTv1; rua=mailto:...'", name))
            continue
        fields.setdefault(key.strip(), value.strip())
    result.data["fields"] = fields
    if "rua" not in fields or not fields["rua"]:
        result.add(F.error("tls-rpt.syntax", f"{name}: no rua= (the report destinations; RFC 8460 3 requires it)",
                           f"add rua=mailto:tls-reports@{domain}", name))
        return result
    uris = [u.strip() for u in fields["rua"].split(",") if u.strip()]
    result.data["rua"] = uris
    for uri in uris:
        if not _valid_uri(uri):
            result.add(F.error("tls-rpt.invalid-uri", f"{name}: rua URI '{uri}' is neither mailto: nor https:",
                               f"use rua=mailto:tls-reports@{domain} or an https:// endpoint", uri))
    return result
