"""Bench: `mailctl dns check` vs checkdmarc on the same domain, same local DNS server, same run.

The domain (bench.test) has an SPF tree of exactly ten DNS lookups, a DKIM selector and a
DMARC record, served by the loopback DNS server of the test suite (tests/dnsserver.py).

checkdmarc's CLI takes nameservers as bare IPs (port 53 only), so the server listens on
127.0.0.1:53 when it can (root, or CAP_NET_BIND_SERVICE). Otherwise it listens on a free port
and checkdmarc is driven through its Python API in a subprocess with a dnspython
Do53Nameserver(ip, port) - still one process per run, like the CLI.

    python bench/dns_check.py [--repeat 9]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from dnsserver import LocalDNS, bench_zones  # noqa: E402

DOMAIN = "bench.test"


def start_server() -> tuple[LocalDNS, bool]:
    try:
        return LocalDNS(bench_zones(), port=53).start(), True
    except OSError:
        return LocalDNS(bench_zones()).start(), False


def mailctl_cmd(server: LocalDNS) -> list[str]:
    exe = shutil.which("mailctl")
    base = [exe] if exe else [sys.executable, "-m", "mailctl"]
    return base + ["dns", "check", DOMAIN, "--nameserver", server.address, "--timeout", "2", "--json"]


def checkdmarc_cmd(server: LocalDNS, on_53: bool) -> list[str]:
    if on_53 and shutil.which("checkdmarc"):
        return [shutil.which("checkdmarc"), DOMAIN, "--nameserver", server.host, "--timeout", "2"]
    code = (
        "import json, sys, checkdmarc, dns.nameserver\n"
        f"ns = [dns.nameserver.Do53Nameserver({server.host!r}, {server.port})]\n"
        f"r = checkdmarc.check_domains([{DOMAIN!r}], nameservers=ns, timeout=2.0)\n"
        "print(json.dumps(r, default=str))\n"
    )
    return [sys.executable, "-c", code]


def timed(cmd: list[str], env: dict) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    return time.perf_counter() - start, proc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()

    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["NO_COLOR"] = "1"
    server, on_53 = start_server()
    try:
        tools = {"mailctl": mailctl_cmd(server), "checkdmarc": checkdmarc_cmd(server, on_53)}
        # sanity: both see the ten-lookup tree
        _, proc = timed(tools["mailctl"], env)
        report = json.loads(proc.stdout)
        assert proc.returncode == 0, proc.stderr
        assert report["checks"]["spf"]["lookups"] == 10, report["checks"]["spf"]["lookups"]
        _, proc = timed(tools["checkdmarc"], env)
        cd = json.loads(proc.stdout)
        cd_lookups = cd.get("spf", {}).get("dns_lookups")
        print(f"server {server.address} ({'port 53, checkdmarc CLI' if on_53 else 'free port, checkdmarc API in a subprocess'})")
        print(f"mailctl: SPF lookups {report['checks']['spf']['lookups']}, {report['queries']} queries; "
              f"checkdmarc: SPF dns_lookups {cd_lookups}")
        times: dict[str, list[float]] = {name: [] for name in tools}
        for _ in range(args.repeat):  # interleaved, so drift hits both alike
            for name, cmd in tools.items():
                elapsed, proc = timed(cmd, env)
                if name == "mailctl" and proc.returncode != 0:
                    print(proc.stderr, file=sys.stderr)
                    return 1
                times[name].append(elapsed)
        med = {name: statistics.median(t) for name, t in times.items()}
        for name, t in times.items():
            print(f"{name:10s} median {med[name] * 1000:7.1f} ms  min {min(t) * 1000:7.1f} ms  max {max(t) * 1000:7.1f} ms  (n={len(t)})")
        print(f"ratio checkdmarc/mailctl: {med['checkdmarc'] / med['mailctl']:.2f}x")
        queries_before = server.resolver.queries
        print(f"(server answered {queries_before} queries in total)")
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
