"""Running checks: build the resolver from the options, run the requested checks concurrently,
return one Report. The commands call run_checks() and render the result."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from mailctl.dns.findings import CheckResult, Report
from mailctl.dns.resolver import Resolver, normalize, parse_nameserver
from mailctl.dns.spf import parse_ip, valid_domain
from mailctl.errors import UsageError


@dataclass
class CheckOptions:
    nameservers: list[str] = field(default_factory=list)
    timeout: float = 5.0
    strict: bool = False
    ips: list[str] = field(default_factory=list)
    sender: str | None = None
    selectors: list[str] = field(default_factory=list)
    provider: str | None = None  # for DKIM selector discovery and profile expectations
    host: str | None = None
    transport: str | None = None
    profile: str | None = None


@dataclass(frozen=True)
class ProfileExpectation:
    """The parts of a profile the DNS checks need (built by the command from the profile)."""

    name: str
    provider: str | None
    host: str | None
    transport: str | None
    from_domain: str


def checked_domain(domain: str) -> str:
    d = normalize(domain)
    if not valid_domain(d):
        raise UsageError(f"invalid domain {domain!r}", hint="pass a domain name such as example.com")
    return d


def run_checks(domain: str, checks: tuple[str, ...], options: CheckOptions,
               profile: ProfileExpectation | None = None) -> Report:
    from mailctl.dns.dkim import check_dkim, valid_selector
    from mailctl.dns.dmarc import check_dmarc
    from mailctl.dns.expectations import check_profile
    from mailctl.dns.spf import check_spf

    domain = checked_domain(domain)
    nameservers = [parse_nameserver(n) for n in options.nameservers]
    ips = [parse_ip(ip) for ip in options.ips]
    for s in options.selectors:
        if not valid_selector(s):
            raise UsageError(f"invalid DKIM selector {s!r}")
    if options.timeout <= 0:
        raise UsageError("--timeout must be positive")
    provider = options.provider or (profile.provider if profile else None)
    jobs: dict[str, Callable[[Resolver], CheckResult]] = {}
    if "spf" in checks:
        jobs["spf"] = lambda r: check_spf(r, domain, ips, options.sender)
    if "dkim" in checks:
        jobs["dkim"] = lambda r: check_dkim(r, domain, options.selectors, provider)
    if "dmarc" in checks:
        jobs["dmarc"] = lambda r: check_dmarc(r, domain)
    if profile is not None:
        jobs["profile"] = lambda r: check_profile(r, profile.from_domain, provider=profile.provider, host=profile.host,
                                                  transport=profile.transport, profile=profile.name)
    started = time.perf_counter()
    with Resolver(nameservers, options.timeout) as resolver:
        if len(jobs) == 1:
            results = [fn(resolver) for fn in jobs.values()]
        else:
            with ThreadPoolExecutor(len(jobs), thread_name_prefix="mailctl-check") as pool:
                futures = [pool.submit(fn, resolver) for fn in jobs.values()]
                results = [f.result() for f in futures]
        queries = resolver.queries
    return Report(domain, results, strict=options.strict, nameservers=[str(n) for n in nameservers] or ["system"],
                  queries=queries, elapsed=time.perf_counter() - started)


def profile_expectation(name: str, values: dict) -> ProfileExpectation:
    """From a resolved profile's values: provider, SMTP host, transport and From domain."""
    sender = values.get("from_address") or values.get("username") or ""
    if "@" not in sender:
        raise UsageError(f"profile {name!r} has no from_address, so there is no domain to check",
                         hint=f"pass DOMAIN, or set it: mailctl profile edit {name} --from-address ADDR")
    return ProfileExpectation(name=name, provider=values.get("provider") or None,
                              host=values.get("host") or None, transport=values.get("type") or "smtp",
                              from_domain=checked_domain(sender.rsplit("@", 1)[1]))
