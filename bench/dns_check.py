"""Bench: `mailctl dns check` vs checkdmarc on the same domains, same local servers, same run.

Two scenarios, each tool run interleaved with the other:

- default: bench.test (an SPF tree of exactly ten DNS lookups, DKIM, DMARC, an MX host) with
  each tool's default checks (mailctl: SPF, DKIM discovery, DMARC, MX, MTA-STS, TLS-RPT, BIMI,
  DNSSEC, NS/SOA; checkdmarc: SPF, DMARC, MX, NS, SOA, DNSSEC, MTA-STS, TLS-RPT, BIMI).
- full: benchfull.test, where both do all of it, network included: the same SPF tree, DMARC,
  MX with reverse DNS, NS/SOA, DNSSEC of a really signed zone, MTA-STS with the policy fetched
  over HTTPS (a local server, test CA), TLS-RPT, BIMI, and the STARTTLS probe of the MX host
  (a local aiosmtpd with a certificate from the test CA): `mailctl dns check --smtp` against
  `checkdmarc --check-mx-tls`. (mailctl also tries 27 DKIM selectors, which checkdmarc does
  not check at all.)

checkdmarc's CLI takes nameservers as bare IPs (port 53 only), so the DNS server listens on
127.0.0.1:53 when it can (root, or CAP_NET_BIND_SERVICE); otherwise on a free port, and
checkdmarc is driven through its Python API in a subprocess with a dnspython
Do53Nameserver(ip, port) - still one process per run, like the CLI. checkdmarc resolves the
MTA-STS policy host and the MX host with the system resolver and connects to ports 443 and 25,
so its process gets a sitecustomize.py that maps *.benchfull.test to the local servers' ports,
and SSL_CERT_FILE / REQUESTS_CA_BUNDLE holding the system CAs plus the test CA (the store
mailctl's --ca-file gives it); mailctl gets --nameserver, --smtp-port, --mta-sts-port and
--ca-file.

    python bench/dns_check.py [--repeat 9]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from dnsserver import ExtrasDNS, bench_full_zones, bench_zones  # noqa: E402

DOMAIN = "bench.test"
FULL = "benchfull.test"

SITECUSTOMIZE = """\
import socket
_getaddrinfo = socket.getaddrinfo
_PORTS = {ports!r}


def _local(host, port, *args, **kwargs):
    # the bench's servers stand in for *.{domain} on ports 25 and 443
    if isinstance(host, str) and host.rstrip(".").lower().endswith(".{domain}"):
        port = _PORTS.get(int(port), port) if port is not None else port
        host = "127.0.0.1"
    return _getaddrinfo(host, port, *args, **kwargs)


socket.getaddrinfo = _local
"""


def start_dns() -> tuple[ExtrasDNS, bool]:
    records = bench_zones() + bench_full_zones()
    try:
        return ExtrasDNS(records, port=53).start(), True
    except OSError:
        return ExtrasDNS(records).start(), False


def mailctl_cmd(server: ExtrasDNS, domain: str, *more: str) -> list[str]:
    exe = shutil.which("mailctl")
    base = [exe] if exe else [sys.executable, "-m", "mailctl"]
    return base + ["dns", "check", domain, "--nameserver", server.address, "--timeout", "2", "--json", *more]


def checkdmarc_cmd(server: ExtrasDNS, on_53: bool, domain: str, tls: bool) -> list[str]:
    if on_53 and shutil.which("checkdmarc"):
        return [shutil.which("checkdmarc"), domain, "--nameserver", server.host, "--timeout", "2"] + (["--check-mx-tls"] if tls else [])
    code = (
        "import json, sys, checkdmarc, dns.nameserver\n"
        f"ns = [dns.nameserver.Do53Nameserver({server.host!r}, {server.port})]\n"
        f"r = checkdmarc.check_domains([{domain!r}], nameservers=ns, timeout=2.0, check_mx_tls={tls!r})\n"
        "print(json.dumps(r, default=str))\n"
    )
    return [sys.executable, "-c", code]


def timed(cmd: list[str], env: dict) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    return time.perf_counter() - start, proc


def race(tools: dict[str, tuple[list[str], dict]], repeat: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in tools}
    for _ in range(repeat):  # interleaved, so drift hits both alike
        for name, (cmd, env) in tools.items():
            elapsed, proc = timed(cmd, env)
            if name == "mailctl" and proc.returncode not in (0, 1):
                print(proc.stderr, file=sys.stderr)
                raise SystemExit(1)
            times[name].append(elapsed)
    return times


def report(title: str, times: dict[str, list[float]]) -> float:
    med = {name: statistics.median(t) for name, t in times.items()}
    print(title)
    for name, t in times.items():
        print(f"  {name:10s} median {med[name] * 1000:7.1f} ms  min {min(t) * 1000:7.1f} ms  max {max(t) * 1000:7.1f} ms  (n={len(t)})")
    ratio = med["checkdmarc"] / med["mailctl"]
    print(f"  ratio checkdmarc/mailctl: {ratio:.2f}x")
    return ratio


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()

    import trustme

    from httpfakes import FakeHTTPS, Reply
    from smtpserver import smtp_server

    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["NO_COLOR"] = "1"
    work = Path(tempfile.mkdtemp(prefix="mailctl-bench-"))
    ca = trustme.CA()
    ca_file = work / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    # checkdmarc trusts what SSL_CERT_FILE / REQUESTS_CA_BUNDLE hold: the same store as
    # mailctl's --ca-file mode (the system CAs plus the test CA), so both load the same
    bundle = work / "bundle.pem"
    system = ssl.get_default_verify_paths().cafile
    bundle.write_bytes((Path(system).read_bytes() if system and Path(system).is_file() else b"") + b"\n" + ca_file.read_bytes())
    policy = f"version: STSv1\nmode: enforce\nmx: mx.{FULL}\nmax_age: 604800\n"
    server, on_53 = start_dns()
    try:
        with FakeHTTPS(ca, hostname=f"mta-sts.{FULL}") as https, \
                smtp_server(cert=ca.issue_cert(f"mx.{FULL}"), auth=False) as smtp:
            https.on("GET", r"/\.well-known/mta-sts\.txt", Reply(200, policy))
            site = work / "site"
            site.mkdir()
            (site / "sitecustomize.py").write_text(SITECUSTOMIZE.format(ports={25: smtp.port, 443: https.port}, domain=FULL))
            cd_env = dict(env, PYTHONPATH=str(site) + os.pathsep + env.get("PYTHONPATH", ""),
                          SSL_CERT_FILE=str(bundle), REQUESTS_CA_BUNDLE=str(bundle))
            full_args = ("--smtp", "--smtp-port", str(smtp.port), "--mta-sts-port", str(https.port), "--ca-file", str(ca_file))
            scenarios = {
                "default": {"mailctl": (mailctl_cmd(server, DOMAIN), env),
                            "checkdmarc": (checkdmarc_cmd(server, on_53, DOMAIN, tls=False), env)},
                "full": {"mailctl": (mailctl_cmd(server, FULL, *full_args), env),
                         "checkdmarc": (checkdmarc_cmd(server, on_53, FULL, tls=True), cd_env)},
            }
            print(f"DNS server {server.address} ({'port 53, checkdmarc CLI' if on_53 else 'free port, checkdmarc API in a subprocess'}); "
                  f"HTTPS {https.port}, SMTP {smtp.port}")
            sanity(scenarios)
            ratios = {}
            for name, tools in scenarios.items():
                domain = DOMAIN if name == "default" else FULL
                ratios[name] = report(f"{name} ({domain}):", race(tools, args.repeat))
            print(f"(server answered {server.resolver.queries} DNS queries, {len(https.requests)} policy fetches in total)")
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    slower = [n for n, r in ratios.items() if r < 1]
    if slower:
        print(f"mailctl is slower than checkdmarc in: {', '.join(slower)}", file=sys.stderr)
        return 1
    return 0


def sanity(scenarios) -> None:
    """Both tools saw the same zones and did the work (a bench of failures proves nothing)."""
    _, proc = timed(*scenarios["default"]["mailctl"])
    rep = json.loads(proc.stdout)
    assert proc.returncode == 0, proc.stderr
    assert rep["checks"]["spf"]["lookups"] == 10, rep["checks"]["spf"]["lookups"]
    _, proc = timed(*scenarios["default"]["checkdmarc"])
    cd = json.loads(proc.stdout)
    print(f"default: mailctl SPF lookups {rep['checks']['spf']['lookups']}, {rep['queries']} queries, checks {','.join(rep['checks'])}; "
          f"checkdmarc SPF dns_lookups {cd.get('spf', {}).get('dns_lookups')}")

    _, proc = timed(*scenarios["full"]["mailctl"])
    rep = json.loads(proc.stdout)
    c = rep["checks"]
    assert c["spf"]["lookups"] == 10, c["spf"]
    host = c["starttls"]["hosts"][0]
    assert host["tls"]["verified"] is True, host
    assert c["mta-sts"]["policy"]["mode"] == "enforce", c["mta-sts"]
    assert c["dnssec"]["signed"] is True and all(s["verified"] for s in c["dnssec"]["signatures"]), c["dnssec"]
    _, proc = timed(*scenarios["full"]["checkdmarc"])
    cd = json.loads(proc.stdout)
    mx_host = cd["mx"]["hosts"][0]
    assert mx_host.get("starttls") is True, cd["mx"]
    assert cd["mta_sts"]["valid"] is True, cd["mta_sts"]
    assert cd["dnssec"] is True, cd["dnssec"]
    print(f"full: mailctl {rep['queries']} queries, checks {','.join(c)} (STARTTLS {host['tls']['version']}, MTA-STS "
          f"{c['mta-sts']['policy']['mode']}, DNSSEC verified); checkdmarc STARTTLS {mx_host['starttls']}, "
          f"MTA-STS valid {cd['mta_sts']['valid']}, DNSSEC {cd['dnssec']}")


if __name__ == "__main__":
    sys.exit(main())
