"""The openspf SPF test suites (rfc7208-tests.yml, rfc4408-tests.yml) as data for our tests.

The suites are not in this repository: the source distribution of pyspf on PyPI ships them in
test/, so the first run downloads it with pip into a cache (`$MAILCTL_TEST_CACHE`, default
`~/.cache/mailctl-tests/`) and later runs reuse the extracted files. Each scenario's zonedata
becomes the zone of its own loopback DNS server (tests/dnsserver.py), built the way the
suites' reference driver (pyspf's test/testspf.py) reads it:

- `SPF: ...` records are served as type 99, and also as TXT when the name lists no TXT
  record at all (`TXT: NONE` says "no TXT here");
- a string list is one TXT record of several strings; an empty list is a TXT record with no
  strings;
- `TIMEOUT` makes the name's queries go unanswered, except for the record types listed
  before it (whose records are answered; records after it are never reached).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

PYSPF = "pyspf==2.0.14"
SDIST = "pyspf-2.0.14"
SUITES = ("rfc7208", "rfc4408")


class SuiteUnavailable(RuntimeError):
    pass


def cache_dir() -> Path:
    return Path(os.environ.get("MAILCTL_TEST_CACHE") or Path.home() / ".cache" / "mailctl-tests")


_fetch_lock = threading.Lock()


def suite_file(suite: str) -> Path:
    """The path of `<suite>-tests.yml`, downloading pyspf's sdist once if needed."""
    target = cache_dir() / SDIST / f"{suite}-tests.yml"
    with _fetch_lock:
        if not target.exists():
            _fetch(target.parent)
    return target


def _fetch(dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--disable-pip-version-check", PYSPF, "-d", tmp]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SuiteUnavailable(f"'{' '.join(cmd)}' did not run: {exc}") from None
        archives = list(Path(tmp).glob(f"{SDIST}.tar.gz"))
        if proc.returncode != 0 or not archives:
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
            raise SuiteUnavailable(f"'{' '.join(cmd)}' failed (exit {proc.returncode}):\n{tail}")
        staging = Path(tmp) / "extracted"
        staging.mkdir()
        with tarfile.open(archives[0]) as tar:
            for suite in SUITES:
                for name in (f"{suite}-tests.yml", f"{suite}-tests.LICENSE"):
                    member = tar.getmember(f"{SDIST}/test/{name}")
                    with tar.extractfile(member) as src, open(staging / name, "wb") as out:
                        shutil.copyfileobj(src, out)
        try:
            staging.rename(dest)  # atomic: a concurrent run sees all files or none
        except OSError:
            if not (dest / f"{SUITES[0]}-tests.yml").exists():
                raise


# -- the suites ----------------------------------------------------------------------------------
@dataclass
class Scenario:
    suite: str
    slug: str
    description: str
    zonedata: dict
    tests: list["SuiteTest"] = field(default_factory=list)


@dataclass
class SuiteTest:
    scenario: Scenario
    name: str
    host: str
    mailfrom: str
    helo: str
    results: tuple[str, ...]  # acceptable results, the preferred one first
    explanation: str | None
    spec: str
    description: str

    @property
    def id(self) -> str:
        return f"{self.scenario.suite}/{self.scenario.slug}/{self.name}"

    @property
    def domain(self) -> str:
        """The identity checked: the MAIL FROM domain, or the HELO name for a null sender
        (RFC 7208 2.4)."""
        return self.mailfrom.rpartition("@")[2] if self.mailfrom else self.helo

    @property
    def sender(self) -> str:
        """<sender> for macros: MAIL FROM, or postmaster@HELO for a null sender (RFC 7208 2.4)."""
        return self.mailfrom or f"postmaster@{self.helo}"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def load(suite: str) -> list[Scenario]:
    import yaml

    scenarios: list[Scenario] = []
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(suite_file(suite), "rb") as f:
        for doc in yaml.load_all(f, Loader=loader):
            slug = _slug(doc["description"])
            scenario = Scenario(suite, slug, doc["description"], doc.get("zonedata") or {})
            for name, t in doc["tests"].items():
                result = t["result"]
                scenario.tests.append(SuiteTest(
                    scenario, name, str(t["host"]), str(t.get("mailfrom") or ""), str(t.get("helo") or ""),
                    tuple(result) if isinstance(result, list) else (result,),
                    t.get("explanation"), str(t.get("spec", "")), str(t.get("description") or "").strip()))
            scenarios.append(scenario)
    return scenarios


# -- zones -----------------------------------------------------------------------------------------
def zone(zonedata: dict):
    """(records, timeouts) for tests/dnsserver.py's LocalDNS from a scenario's zonedata."""
    from dnslib import QTYPE

    from dnsserver import a, aaaa, cname, mx, ptr, txt_strings

    records, timeouts = [], {}
    for name, entries in zonedata.items():
        has_txt = any(isinstance(e, dict) and "TXT" in e for e in entries)
        generated, answered = [], set()
        for entry in entries:
            if entry == "TIMEOUT":
                timeouts[name] = frozenset(answered)
                generated = []  # listed after TIMEOUT: never reached
                break
            (rtype, value), = entry.items()
            if value == "TIMEOUT":
                raise ValueError(f"{name}: a per-type TIMEOUT ({rtype}) is not supported")
            if rtype in ("TXT", "SPF"):
                strings = [value] if isinstance(value, str) else list(value)
                if strings == ["NONE"]:
                    continue
                records.append(txt_strings(name, strings, rtype))
                if rtype == "SPF" and not has_txt:
                    generated.append(txt_strings(name, strings, "TXT"))
            elif rtype == "A":
                records.append(a(name, value))
            elif rtype == "AAAA":
                records.append(aaaa(name, value))
            elif rtype == "MX":
                pref, host = value
                records.append(mx(name, host or ".", int(pref)))
            elif rtype == "PTR":
                records.append(ptr(name, value))
            elif rtype == "CNAME":
                records.append(cname(name, value))
            else:
                raise ValueError(f"{name}: record type {rtype} is not supported")
            answered.add(getattr(QTYPE, rtype))
        records += generated
    return records, timeouts


_servers: dict[tuple[str, str], object] = {}
_servers_lock = threading.Lock()


def scenario_server(scenario: Scenario):
    """The loopback DNS server of one scenario, started on first use (stop_servers() ends them)."""
    from dnsserver import LocalDNS

    key = (scenario.suite, scenario.slug)
    with _servers_lock:
        if key not in _servers:
            records, timeouts = zone(scenario.zonedata)
            _servers[key] = LocalDNS(records, timeouts=timeouts).start()
        return _servers[key]


def stop_servers() -> None:
    # in parallel: each stop waits out socketserver's half-second poll
    with _servers_lock:
        servers = list(_servers.values())
        _servers.clear()
    threads = [threading.Thread(target=s.stop) for s in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
