"""mailctl dns: SPF, DKIM and DMARC checks a CI job can gate on (parse, call, render)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from mailctl.commands._common import JsonOpt, app_context
from mailctl.errors import ChecksFailed, ExitCode, TemporaryFailure

dns_app = typer.Typer(
    help="Check SPF, DKIM, DMARC and the rest of a mail domain's DNS (MX, MTA-STS, TLS-RPT, BIMI, DNSSEC, NS). "
    "Exit 0: no errors; 1: errors (or warnings with "
    "--strict); 75: DNS timeout or SERVFAIL; 2: usage.",
    no_args_is_help=True,
)

DomainArg = Annotated[str, typer.Argument(metavar="DOMAIN", help="The domain to check (the From domain of your mail).")]
NameserverOpt = Annotated[
    Optional[list[str]],
    typer.Option("--nameserver", "-n", metavar="IP[:PORT]", help="Nameserver to query (repeatable; default: the system's)."),
]
TimeoutOpt = Annotated[float, typer.Option("--timeout", min=0.01, max=300, metavar="SECONDS", help="Seconds to wait for each DNS answer.")]
JunitOpt = Annotated[Optional[str], typer.Option("--junit", metavar="FILE", help="Also write a JUnit XML report to FILE.")]
StrictOpt = Annotated[bool, typer.Option("--strict", help="Exit 1 on warnings too.")]
IpOpt = Annotated[Optional[list[str]], typer.Option("--ip", metavar="IP", help="Evaluate SPF for this client address (repeatable).")]
SenderOpt = Annotated[Optional[str], typer.Option("--sender", metavar="ADDR", help="Envelope sender for --ip (default postmaster@DOMAIN).")]
HeloOpt = Annotated[Optional[str], typer.Option("--helo", metavar="NAME", help="HELO/EHLO name of the client for --ip (the %{h} macro).")]
SelectorOpt = Annotated[Optional[list[str]], typer.Option("--selector", "-s", metavar="SELECTOR", help="DKIM selector (repeatable; default: try common ones).")]


def _options(nameserver, timeout, strict, **more):
    from mailctl.dns.check import CheckOptions

    return CheckOptions(nameservers=nameserver or [], timeout=timeout, strict=strict, **more)


def _finish(ctx: typer.Context, report, command: str, json_: bool, junit: Optional[str]) -> None:
    from mailctl.dns.render import finding_rows, summary_lines, write_junit

    out = app_context(ctx).output
    if junit:
        write_junit(report, command, junit)
    if app_context(ctx).use_json(json_):
        out.json(report.to_dict())
    else:
        for line in summary_lines(report):
            out.line(line)
        rows = finding_rows(report)
        if rows:
            out.line()
            out.table(["severity", "id", "finding"], [
                row for sev, _check, id_, msg, fix in rows
                for row in ([(sev, id_, msg)] + ([("", "", f"fix: {fix}")] if fix else []))
            ])
    code = report.exit_code()
    if code == ExitCode.TEMPFAIL:
        raise TemporaryFailure(f"DNS lookups failed ({report.summary()})",
                               hint="check --nameserver, retry later or raise --timeout")
    if code == ExitCode.PROBLEMS:
        raise ChecksFailed(f"{command} {report.domain}: {report.summary()}" + (" (--strict)" if report.strict else ""))


@dns_app.command("check-spf")
def check_spf(ctx: typer.Context, domain: DomainArg, ip: IpOpt = None, sender: SenderOpt = None,
              helo: HeloOpt = None, nameserver: NameserverOpt = None, timeout: TimeoutOpt = 5.0,
              junit: JunitOpt = None, strict: StrictOpt = False, json_: JsonOpt = False) -> None:
    """Evaluate the SPF record (RFC 7208): syntax, lookup and void limits, the include tree, --ip results."""
    from mailctl.dns.spf import run_check_spf

    opts = _options(nameserver, timeout, strict, ips=ip or [], sender=sender)
    _finish(ctx, run_check_spf(domain, opts, helo=helo), "check-spf", json_, junit)


@dns_app.command("check-dkim")
def check_dkim(ctx: typer.Context, domain: DomainArg, selector: SelectorOpt = None,
               nameserver: NameserverOpt = None, timeout: TimeoutOpt = 5.0, junit: JunitOpt = None,
               strict: StrictOpt = False, json_: JsonOpt = False) -> None:
    """Check DKIM key records: found (TXT or CNAME chain), tags, key type and size, revoked, testing."""
    from mailctl.dns.check import run_checks

    opts = _options(nameserver, timeout, strict, selectors=selector or [])
    _finish(ctx, run_checks(domain, ("dkim",), opts), "check-dkim", json_, junit)


@dns_app.command("check-dmarc")
def check_dmarc(ctx: typer.Context, domain: DomainArg, nameserver: NameserverOpt = None,
                timeout: TimeoutOpt = 5.0, junit: JunitOpt = None, strict: StrictOpt = False,
                json_: JsonOpt = False) -> None:
    """Check the DMARC record (organizational-domain fallback), its tags and report destinations."""
    from mailctl.dns.check import run_checks

    opts = _options(nameserver, timeout, strict)
    _finish(ctx, run_checks(domain, ("dmarc",), opts), "check-dmarc", json_, junit)


@dns_app.command("check")
def check(ctx: typer.Context, domain: Annotated[Optional[str], typer.Argument(
              metavar="[DOMAIN]", help="The domain to check (default with --profile: the profile's From domain).")] = None,
          profile: Annotated[Optional[str], typer.Option("--profile", "-p", metavar="NAME", help="Also check this profile's DNS needs.")] = None,
          ip: IpOpt = None, sender: SenderOpt = None, selector: SelectorOpt = None,
          checks: Annotated[Optional[list[str]], typer.Option(
              "--checks", metavar="LIST", help="Checks to run, comma-separated (repeatable): spf,dkim,dmarc,mx,starttls,"
              "mta-sts,tls-rpt,bimi,dnssec,ns or all, and helo (not in all). Default: all but starttls.")] = None,
          skip: Annotated[Optional[list[str]], typer.Option("--skip", metavar="LIST", help="Checks not to run, comma-separated (repeatable).")] = None,
          smtp: Annotated[bool, typer.Option("--smtp", help="Also connect to every MX host on port 25: STARTTLS offered, "
                                             "certificate valid for the MX name, expiry, TLS version.")] = False,
          smtp_port: Annotated[int, typer.Option("--smtp-port", metavar="PORT", help="Port of the STARTTLS probe (tests; MX hosts listen on 25).")] = 25,
          mta_sts_port: Annotated[int, typer.Option("--mta-sts-port", metavar="PORT", hidden=True,
                                                    help="Port of the MTA-STS policy fetch (tests).")] = 443,
          ca_file: Annotated[Optional[str], typer.Option("--ca-file", metavar="FILE", help="Extra CA (PEM) trusted for the MX "
                                                         "certificates and the MTA-STS policy host, next to the system's.")] = None,
          connect_timeout: Annotated[float, typer.Option("--connect-timeout", min=0.01, metavar="SECONDS", help="Seconds for each "
                                                         "step of the STARTTLS probe and the MTA-STS fetch (connect, TLS, each reply).")] = 10.0,
          dnssec_resolver: Annotated[Optional[str], typer.Option("--dnssec-resolver", metavar="IP[:PORT]", help="A validating "
                                                                 "resolver whose AD bit says whether DNSSEC validates.")] = None,
          helo: Annotated[Optional[str], typer.Option("--helo", metavar="NAME", help="Also check this HELO/EHLO name as "
                                                      "receivers do: a fully-qualified name that resolves, and with --ip "
                                                      "forward-confirmed reverse DNS of the address matching it (also SPF's "
                                                      "%{h}). With --checks helo and no --helo: the profile's ehlo_name, "
                                                      "else this machine's name.")] = None,
          nameserver: NameserverOpt = None, timeout: TimeoutOpt = 5.0, junit: JunitOpt = None,
          strict: StrictOpt = False, json_: JsonOpt = False) -> None:
    """Run every check: SPF, DKIM, DMARC, MX, MTA-STS, TLS-RPT, BIMI, DNSSEC, NS/SOA (and with --smtp the MX
    STARTTLS probe; with --profile the profile's provider expectations and DMARC alignment; with --helo the
    HELO name and the --ip addresses' reverse DNS)."""
    from mailctl.dns.check import profile_expectation, run_checks, select_checks
    from mailctl.errors import UsageError

    expectation = None
    ehlo_name = None
    if profile or (domain is None and app_context(ctx).profile_name):
        from mailctl.profiles.resolve import resolve_profile

        resolved = resolve_profile(app_context(ctx).store.load(), profile or app_context(ctx).profile_name)
        expectation = profile_expectation(resolved.name, resolved.values)
        ehlo_name = resolved.values.get("ehlo_name") or None
    if domain is None and expectation is None:
        raise UsageError("missing DOMAIN", hint="mailctl dns check DOMAIN, or mailctl dns check --profile NAME")
    selected = select_checks(checks, skip, smtp, helo=helo is not None)
    if "helo" in selected and helo is None:
        helo = ehlo_name or _default_ehlo_name()
    opts = _options(nameserver, timeout, strict, ips=ip or [], sender=sender, selectors=selector or [],
                    smtp_port=smtp_port, https_port=mta_sts_port, ca_file=ca_file or "", connect_timeout=connect_timeout,
                    dnssec_resolver=dnssec_resolver, helo=helo)
    _finish(ctx, run_checks(domain or expectation.from_domain, selected, opts, expectation), "check", json_, junit)


def _default_ehlo_name() -> str:
    """The name the SMTP transport says in EHLO when the profile sets no ehlo_name."""
    from mailctl.transports.smtp import default_ehlo_name

    return default_ehlo_name()


def register(app: typer.Typer, name: str) -> None:
    app.add_typer(dns_app, name=name)
