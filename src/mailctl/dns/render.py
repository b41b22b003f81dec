"""Report renderings that are plain data: text lines for the human view and JUnit XML for CI.
(The rich table itself is drawn by the command through Output.)"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from mailctl.dns.findings import Report, Severity
from mailctl.errors import UsageError


def finding_rows(report: Report) -> list[tuple[str, str, str, str, str]]:
    order = {Severity.ERROR: 0, Severity.WARNING: 1, Severity.INFO: 2}
    rows = []
    for check in report.checks:
        for f in sorted(check.findings, key=lambda f: order[f.severity]):
            rows.append((f.severity.value, check.check, f.id, f.message, f.fix))
    return rows


def summary_lines(report: Report) -> list[str]:
    """What was looked at: records, the SPF tree with per-term lookup counts, --ip results."""
    lines: list[str] = []
    for check in report.checks:
        d = check.data
        status = check.status(report.strict).upper()
        if check.check == "spf":
            lines.append(f"SPF {check.domain}: {status}  ({d.get('lookups', 0)}/{d.get('lookup_limit', 10)} lookups, "
                         f"{d.get('void_lookups', 0)} void)")
            tree = d.get("tree") or {}
            if tree.get("record"):
                _tree_lines(tree, lines, "  ")
            for ev in d.get("evaluations", []):
                decided = f" by '{ev['term']}' in {ev['domain']}" if ev.get("term") else ""
                lines.append(f"  --ip {ev['ip']}: {ev['result']}{decided}")
        elif check.check == "dkim":
            shown = d.get("selectors", [])
            found = [s for s in shown if s.get("status") not in ("missing", "temperror")]
            lines.append(f"DKIM {check.domain}: {status}  ({len(found)} of {len(d.get('selectors_tried', []))} selector(s) found)")
            for s in shown:
                bits = f", {s['key_type']} {s['key_bits']} bits" if s.get("key_bits") else ""
                chain = f" via CNAME {' -> '.join(s['cname_chain'])}" if s.get("cname_chain") else ""
                lines.append(f"  {s['selector']}: {s.get('status')}{bits}{chain}")
        elif check.check == "dmarc":
            where = d.get("record_domain")
            lines.append(f"DMARC {check.domain}: {status}" + (f"  (_dmarc.{where}: {d.get('record')})" if where else ""))
        elif check.check == "profile":
            lines.append(f"Profile {d.get('profile') or ''} ({d.get('provider')}) for {check.domain}: {status}")
            al = d.get("dmarc_alignment")
            if al:
                spf, dkim = al["spf"], al["dkim"]
                lines.append(f"  DMARC for this profile: {al['verdict'].upper()}  (SPF {_yes(spf.get('pass'))} for "
                             f"{spf.get('mail_from_domain')}, DKIM {_yes(dkim.get('pass'))} d={dkim.get('signing_domain') or '?'}; "
                             f"policy {al.get('policy') or 'none published'})")
        else:
            lines += _more_lines(check, status)
    return lines


def _yes(value) -> str:
    return {True: "aligned pass", False: "fails", None: "unknown"}[value]


def _more_lines(check, status: str) -> list[str]:
    """The checks beyond SPF/DKIM/DMARC: one line each, and the MX hosts / STARTTLS probes."""
    d = check.data
    name = {"mx": "MX", "starttls": "STARTTLS", "mta-sts": "MTA-STS", "tls-rpt": "TLS-RPT", "bimi": "BIMI",
            "dnssec": "DNSSEC", "ns": "NS/SOA", "helo": "HELO"}.get(check.check, check.check)
    head = f"{name} {check.domain}: {status}"
    lines = []
    if check.check == "mx":
        hosts = d.get("hosts", [])
        lines.append(head + ("  (null MX)" if d.get("null_mx") else f"  ({len(hosts)} host(s))"))
        for h in hosts:
            lines.append(f"  {h['preference']:>5} {h['host']}  {', '.join(h['addresses']) or 'no address'}")
    elif check.check == "starttls":
        lines.append(head + (f"  (port {d['port']}, MTA-STS {d['mta_sts_mode']})" if d.get("mta_sts_mode") else f"  (port {d.get('port', 25)})"))
        for h in d.get("hosts", []):
            tls = h.get("tls") or {}
            cert = tls.get("certificate") or {}
            if h.get("error"):
                what = h["error"]
            elif not h.get("starttls_offered"):
                what = "no STARTTLS"
            else:
                what = f"{tls.get('version')}, certificate {'valid' if tls.get('verified') else tls.get('problem')}" + (
                    f", expires in {cert['days_left']} days" if cert.get("days_left") is not None else "")
            lines.append(f"  {h['host']} ({h.get('address', '?')}): {what}")
    elif check.check == "mta-sts":
        policy = d.get("policy") or {}
        extra = f"  (mode {policy.get('mode')}, max_age {policy.get('max_age')}, mx {', '.join(policy.get('mx', []))})" if policy else (
            "  (no record)" if not d.get("record") else "")
        lines.append(head + extra)
    elif check.check == "tls-rpt":
        lines.append(head + (f"  (rua {', '.join(d.get('rua', []))})" if d.get("rua") else ""))
    elif check.check == "bimi":
        lines.append(head + (f"  ({d['record_name']}: {d.get('record')})" if d.get("record_name") else ""))
    elif check.check == "dnssec":
        state = "signed" if d.get("signed") else ("keys but no DS" if d.get("dnskey_count") else "unsigned")
        validated = d.get("validated")
        lines.append(head + f"  (zone {d.get('zone')}: {state}" + ("" if validated is None else f", validated: {'yes' if validated else 'no'}") + ")")
    elif check.check == "ns":
        servers = [n["host"] for n in d.get("nameservers", [])]
        lines.append(head + (f"  (zone {d.get('zone')}: {', '.join(servers) or 'no NS'})" if d.get("zone") else ""))
    elif check.check == "helo":
        lines.append(head + (f"  ({', '.join(d['addresses'])})" if d.get("addresses") else ""))
        for e in d.get("ips", []):
            state = ("forward-confirmed" if e["fcrdns"] else "not forward-confirmed") + (", matches HELO" if e["helo_matches_ptr"] else "")
            lines.append(f"  --ip {e['ip']}: " + (f"PTR {', '.join(e['ptr'])}, {state}" if e["ptr"] else "no PTR"))
    else:
        lines.append(head)
    return lines


def _tree_lines(node: dict, lines: list[str], indent: str) -> None:
    lines.append(f"{indent}{node['domain']}: \"{node['record']}\"")
    for t in node.get("terms", []):
        count = f"  [{t['lookups']} lookup{'s' if t['lookups'] != 1 else ''}]" if t.get("lookups") else ""
        notes = ", ".join(x for x in (("void" if t.get("void") else ""), t.get("note", "")) if x)
        lines.append(f"{indent}  {t['term']}{count}{'  (' + notes + ')' if notes else ''}")
        child = t.get("record")
        if child and child.get("record"):
            _tree_lines(child, lines, indent + "    ")


def junit_xml(report: Report, command: str) -> str:
    """One <testsuite> per run, one <testcase> per check; errors (and warnings under --strict)
    are <failure>, DNS timeouts/SERVFAIL are <error>, the rest goes to <system-out>."""
    suites = ET.Element("testsuites", name="mailctl dns")
    suite = ET.SubElement(suites, "testsuite", name=f"mailctl dns {command} {report.domain}",
                          timestamp="", hostname="localhost")
    failures = errors = 0
    for check in report.checks:
        case = ET.SubElement(suite, "testcase", classname=f"mailctl.dns.{report.domain}", name=check.check, time="0")
        bad = [f for f in check.findings if f.severity is Severity.ERROR or (report.strict and f.severity is Severity.WARNING)]
        temporary = [f for f in check.findings if f.temporary]
        if temporary:
            errors += 1
            el = ET.SubElement(case, "error", message=temporary[0].message, type=temporary[0].id)
            el.text = "\n".join(f"{f.id}: {f.message}" for f in temporary)
        elif bad:
            failures += 1
            el = ET.SubElement(case, "failure", message=f"{len(bad)} problem(s): " + ", ".join(dict.fromkeys(f.id for f in bad)),
                               type=bad[0].id)
            el.text = "\n".join(f"[{f.severity.value}] {f.id}: {f.message}\n  fix: {f.fix}" for f in bad)
        rest = [f for f in check.findings if f not in bad and f not in temporary]
        if rest:
            ET.SubElement(case, "system-out").text = "\n".join(f"[{f.severity.value}] {f.id}: {f.message}" for f in rest)
    suite.set("tests", str(len(report.checks)))
    suite.set("failures", str(failures))
    suite.set("errors", str(errors))
    suite.set("skipped", "0")
    suite.set("time", f"{report.elapsed:.3f}")
    del suite.attrib["timestamp"]
    suites.set("tests", str(len(report.checks)))
    suites.set("failures", str(failures))
    suites.set("errors", str(errors))
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def write_junit(report: Report, command: str, path: str) -> None:
    try:
        Path(path).write_text(junit_xml(report, command), encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write JUnit file {path}: {exc.strerror}") from None
