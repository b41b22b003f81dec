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
    # beyond DNS: the MX STARTTLS probe and the MTA-STS policy fetch
    connect_timeout: float = 10.0
    ca_file: str = ""
    smtp_port: int = 25
    https_port: int = 443
    dnssec_resolver: str | None = None
    helo: str | None = None  # the HELO/EHLO name for the helo check (and SPF's %{h} for --ip)


# Every check `dns check` knows, in report order. starttls connects to the MX hosts on port 25,
# so it runs only when asked for (--smtp, or named in --checks).
ALL_CHECKS = ("spf", "dkim", "dmarc", "mx", "starttls", "mta-sts", "tls-rpt", "bimi", "dnssec", "ns")
DEFAULT_CHECKS = tuple(c for c in ALL_CHECKS if c != "starttls")
# Checks of the sending host rather than of the domain: not part of `all`, run when named
# (or, for helo, when --helo gives the name).
HOST_CHECKS = ("helo",)


def select_checks(checks: list[str] | None = None, skip: list[str] | None = None, smtp: bool = False,
                  helo: bool = False) -> tuple[str, ...]:
    """The checks of `dns check`: --checks (comma-separated, repeatable; default all but
    starttls), minus --skip, plus starttls with --smtp and helo with --helo. Unknown names
    are a usage error."""

    def names(values: list[str] | None, option: str) -> list[str]:
        out = []
        for value in values or []:
            for name in (n.strip().lower() for n in value.split(",")):
                if not name:
                    continue
                if name == "all":
                    out += list(ALL_CHECKS)
                elif name in ALL_CHECKS or name in HOST_CHECKS:
                    out.append(name)
                else:
                    raise UsageError(f"{option}: unknown check {name!r}", hint="checks: " + ",".join(ALL_CHECKS + HOST_CHECKS))
        return out

    chosen = set(names(checks, "--checks") or DEFAULT_CHECKS)
    if smtp:
        chosen.add("starttls")
    if helo:
        chosen.add("helo")
    chosen -= set(names(skip, "--skip"))
    if not chosen:
        raise UsageError("no check left to run", hint="--skip removed every check of --checks")
    return tuple(c for c in ALL_CHECKS + HOST_CHECKS if c in chosen)


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
        jobs["spf"] = lambda r: check_spf(r, domain, ips, options.sender, helo=options.helo)
    if "dkim" in checks:
        jobs["dkim"] = lambda r: check_dkim(r, domain, options.selectors, provider)
    if "dmarc" in checks:
        jobs["dmarc"] = lambda r: check_dmarc(r, domain)
    jobs.update(_more_jobs(domain, checks, options))
    if "helo" in checks:
        jobs["helo"] = _helo_job(options.helo, ips)
    if profile is not None:
        jobs["profile"] = lambda r: check_profile(r, profile.from_domain, provider=profile.provider, host=profile.host,
                                                  transport=profile.transport, profile=profile.name,
                                                  selectors=options.selectors)
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


def _more_jobs(domain: str, checks: tuple[str, ...], options: CheckOptions) -> dict[str, Callable[[Resolver], CheckResult]]:
    """The checks beyond SPF/DKIM/DMARC; their modules load only when selected."""
    jobs: dict[str, Callable[[Resolver], CheckResult]] = {}
    net = None
    if "starttls" in checks or "mta-sts" in checks:
        from mailctl.dns.tlsprobe import Network

        if options.connect_timeout <= 0:
            raise UsageError("--connect-timeout must be positive")
        for port, option in ((options.smtp_port, "--smtp-port"), (options.https_port, "--mta-sts-port")):
            if not 0 < port < 65536:
                raise UsageError(f"{option} must be 1-65535")
        net = Network(ca_file=options.ca_file, timeout=options.connect_timeout, smtp_port=options.smtp_port,
                      https_port=options.https_port)
        net.check_ca_file()  # a bad --ca-file is a usage error now, not a finding later
        if "starttls" in checks or options.ca_file:
            net.warm()  # the TLS context will be needed: build it while the DNS queries run
    validating = [parse_nameserver(options.dnssec_resolver)] if options.dnssec_resolver else None
    for name in checks:
        if name == "mx":
            from mailctl.dns.mx import check_mx

            jobs[name] = lambda r: check_mx(r, domain)
        elif name == "starttls":
            from mailctl.dns.smtp_probe import check_starttls

            jobs[name] = lambda r: check_starttls(r, domain, net)
        elif name == "mta-sts":
            from mailctl.dns.mtasts import check_mta_sts

            jobs[name] = lambda r: check_mta_sts(r, domain, net)
        elif name == "tls-rpt":
            from mailctl.dns.tlsrpt import check_tls_rpt

            jobs[name] = lambda r: check_tls_rpt(r, domain)
        elif name == "bimi":
            from mailctl.dns.bimi import check_bimi

            jobs[name] = lambda r: check_bimi(r, domain)
        elif name == "dnssec":
            from mailctl.dns.dnssec import check_dnssec

            jobs[name] = lambda r: check_dnssec(r, domain, validating)
        elif name == "ns":
            from mailctl.dns.nssoa import check_ns

            jobs[name] = lambda r: check_ns(r, domain)
    return jobs


def _helo_job(helo: str | None, ips: list[str]) -> Callable[[Resolver], CheckResult]:
    """The helo check of the name (given by the command: --helo, the profile's ehlo_name or
    the transport's default) from the --ip addresses."""
    from mailctl.dns.helo import check_helo

    if not helo or not helo.strip() or any(c.isspace() for c in helo.strip()):
        raise UsageError(f"invalid --helo {helo!r}: expected a host name such as mail.example.com",
                         hint="give a host name, e.g.: mailctl dns check DOMAIN --helo mail.example.com --ip 192.0.2.25")
    return lambda r: check_helo(r, helo.strip(), ips)


def profile_expectation(name: str, values: dict) -> ProfileExpectation:
    """From a resolved profile's values: provider, SMTP host, transport and From domain."""
    sender = values.get("from_address") or values.get("username") or ""
    if "@" not in sender:
        raise UsageError(f"profile {name!r} has no from_address, so there is no domain to check",
                         hint=f"pass DOMAIN, or set it: mailctl profile edit {name} --from-address ADDR")
    return ProfileExpectation(name=name, provider=values.get("provider") or None,
                              host=values.get("host") or None, transport=values.get("type") or "smtp",
                              from_domain=checked_domain(sender.rsplit("@", 1)[1]))
