"""SPF (RFC 7208): parse a record, walk its include/redirect tree counting the DNS-querying
terms and void lookups, and evaluate check_host() for given client addresses.

The static walk keeps going past the limits so the report can show the whole tree with the
lookup count of every term; the evaluation stops where a receiver would (permerror).
"""

from __future__ import annotations

import ipaddress
import re
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from mailctl.dns import findings as F
from mailctl.dns.findings import CheckResult, Finding, Report
from mailctl.dns.resolver import Lookup, Resolver, normalize, parse_nameserver

LOOKUP_LIMIT = 10
VOID_LIMIT = 2
MX_LIMIT = 10
PTR_LIMIT = 10
MAX_DEPTH = 25  # guards the static walk on pathological chains (loops are caught separately)

MECHANISMS = ("all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists")
DNS_TERMS = ("include", "a", "mx", "ptr", "exists", "redirect")
QUALIFIERS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
RESULTS = ("pass", "fail", "softfail", "neutral", "none", "permerror", "temperror")

_MACRO = re.compile(r"%\{([slodiphcrtvSLODIPHCRTV])(\d*)(r?)([.\-+,/_=]*)\}|%%|%_|%-", re.IGNORECASE)
# matched with fullmatch (never "$", which also matches before a trailing newline)
_MODIFIER = re.compile(r"([A-Za-z][A-Za-z0-9_.\-]*)=(.*)", re.DOTALL)
_MECHANISM = re.compile(r"([+\-~?]?)([A-Za-z][A-Za-z0-9_.\-]*)(.*)", re.DOTALL)
_CIDR = re.compile(r"(.*?)(?:/(\d+))?(?://(\d+))?", re.DOTALL)
_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_\-]*[A-Za-z0-9_])?")
# RFC 7208 7.1: toplabel = ( *alphanum ALPHA *alphanum ) / ( 1*alphanum "-" *( alphanum / "-" ) alphanum )
_TOPLABEL = re.compile(r"[A-Za-z0-9]*[A-Za-z][A-Za-z0-9]*|[A-Za-z0-9]+-[A-Za-z0-9\-]*[A-Za-z0-9]")


class SpfSyntaxError(ValueError):
    pass


# -- parsing ---------------------------------------------------------------------------------
@dataclass
class Term:
    text: str
    kind: str  # mechanism | modifier
    name: str
    qualifier: str = ""
    value: str = ""  # domain-spec, address or modifier value ("" when absent)
    cidr4: int | None = None
    cidr6: int | None = None

    @property
    def has_macro(self) -> bool:
        return "%" in self.value

    @property
    def queries_dns(self) -> bool:
        return self.name in DNS_TERMS

    def target(self, domain: str) -> str:
        return normalize(self.value) if self.value else domain

    def to_dict(self) -> dict[str, Any]:
        return {"term": self.text, "kind": self.kind, "name": self.name, "qualifier": self.qualifier or None,
                "value": self.value or None}


def is_spf_record(text: str) -> bool:
    return text[:6].lower() == "v=spf1" and (len(text) == 6 or text[6] == " ")


def parse_record(record: str) -> list[Term]:
    """Terms of a v=spf1 record; raises SpfSyntaxError naming the first bad term."""
    if not is_spf_record(record):
        raise SpfSyntaxError("record does not start with 'v=spf1'")
    terms: list[Term] = []
    seen_modifiers: set[str] = set()
    for text in record[6:].split(" "):
        if not text:
            continue
        terms.append(parse_term(text))
        t = terms[-1]
        if t.kind == "modifier" and t.name in ("redirect", "exp"):
            if t.name in seen_modifiers:
                raise SpfSyntaxError(f"'{t.name}=' appears more than once")
            seen_modifiers.add(t.name)
    return terms


def parse_term(text: str) -> Term:
    bad = next((c for c in text if not _visible(c)), None)
    if bad is not None:
        # terms are visible ASCII separated by spaces: a tab, CR, LF, NUL or non-ASCII
        # character is a syntax error (RFC 7208 3.1, 4.6.1), not part of a value
        raise SpfSyntaxError(f"{text!r}: character {bad!r} is not allowed in an SPF record")
    m = _MODIFIER.fullmatch(text)
    if m and not _MECHANISM_NAME_WITH_EQUALS(text):
        name, value = m.group(1).lower(), m.group(2)
        if name in ("redirect", "exp"):
            if not value:
                raise SpfSyntaxError(f"'{text}': {name}= needs a domain")
            check_domain_spec(value, text, exp=False)
        else:
            check_macro_string(value, text, exp=False)
        return Term(text, "modifier", name, "", value)
    m = _MECHANISM.fullmatch(text)
    if not m:
        raise SpfSyntaxError(f"'{text}' is not a mechanism or modifier")
    qualifier, name, rest = m.group(1), m.group(2).lower(), m.group(3)
    if name not in MECHANISMS:
        raise SpfSyntaxError(f"'{text}': unknown mechanism '{name}'")
    term = Term(text, "mechanism", name, qualifier or "+")
    if name == "all":
        if rest:
            raise SpfSyntaxError(f"'{text}': 'all' takes no argument")
        return term
    if name in ("ip4", "ip6"):
        if not rest.startswith(":") or len(rest) == 1:
            raise SpfSyntaxError(f"'{text}': {name} needs an address")
        value = rest[1:]
        try:
            net = ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise SpfSyntaxError(f"'{text}': invalid {name} network") from None
        if (name == "ip4") != (net.version == 4):
            raise SpfSyntaxError(f"'{text}': {name} with an IPv{net.version} address")
        if "/" in value and value.split("/", 1)[1].startswith("0") and value.split("/", 1)[1] != "0":
            raise SpfSyntaxError(f"'{text}': leading zero in prefix length")
        term.value = value
        if net.version == 4:
            term.cidr4 = net.prefixlen
        else:
            term.cidr6 = net.prefixlen
        return term
    # include, exists need ':domain'; a, mx, ptr take an optional one; a, mx take dual-cidr
    if rest.startswith(":"):
        spec = rest[1:]
        if not spec:
            raise SpfSyntaxError(f"'{text}': empty domain after ':'")
    elif rest and rest.startswith("/") and name in ("a", "mx"):
        spec = rest
    elif rest:
        raise SpfSyntaxError(f"'{text}': unexpected '{rest}'")
    else:
        spec = ""
    if name in ("a", "mx"):
        cm = _CIDR.fullmatch(spec)
        spec, c4, c6 = cm.group(1), cm.group(2), cm.group(3)
        if c4 is not None:
            if int(c4) > 32 or (len(c4) > 1 and c4.startswith("0")):
                raise SpfSyntaxError(f"'{text}': invalid IPv4 prefix length /{c4}")
            term.cidr4 = int(c4)
        if c6 is not None:
            if int(c6) > 128 or (len(c6) > 1 and c6.startswith("0")):
                raise SpfSyntaxError(f"'{text}': invalid IPv6 prefix length //{c6}")
            term.cidr6 = int(c6)
        if rest.startswith(":") and not spec:
            raise SpfSyntaxError(f"'{text}': empty domain after ':'")
    elif name in ("include", "exists") and not spec:
        raise SpfSyntaxError(f"'{text}': {name} needs a domain")
    if spec:
        check_domain_spec(spec, text, exp=False)
    term.value = spec
    return term


def _MECHANISM_NAME_WITH_EQUALS(text: str) -> bool:
    # "include:x=y" is a mechanism whose domain holds '=' (invalid later), not a modifier
    head = text.split("=", 1)[0]
    return ":" in head or "/" in head


def _visible(c: str) -> bool:
    return "!" <= c <= "~"


def check_macro_string(value: str, term: str, *, exp: bool) -> int:
    """Checks macro-string syntax (RFC 7208 7.1); returns where the last macro-expand ends
    (-1 when there is none). With exp=True (explanation text) spaces and %{c} %{r} %{t}
    are allowed too."""
    pos, last = 0, -1
    while True:
        i = value.find("%", pos)
        literal = value[pos:] if i < 0 else value[pos:i]
        bad = next((c for c in literal if not (_visible(c) or (exp and c == " "))), None)
        if bad is not None:
            raise SpfSyntaxError(f"'{term}': character {bad!r} is not allowed")
        if i < 0:
            return last
        m = _MACRO.match(value, i)
        if not m:
            raise SpfSyntaxError(f"'{term}': invalid macro at '{value[i:i + 6]}'")
        letter = (m.group(1) or "").lower()
        if letter in ("c", "r", "t") and not exp:
            raise SpfSyntaxError(f"'{term}': macro %{{{letter}}} is only allowed in exp=")
        if m.group(2) and int(m.group(2)) == 0:
            raise SpfSyntaxError(f"'{term}': macro '{m.group(0)}' keeps zero labels")
        pos = last = m.end()


def check_domain_spec(spec: str, term: str, *, exp: bool) -> None:
    """domain-spec = macro-string domain-end; domain-end = ( "." toplabel [ "." ] ) / macro-expand
    (RFC 7208 7.1): any visible character but '%' may come before the last label, so
    'a:foo:bar/baz.example.com' is valid and 'a:example.com:8080' is not."""
    last_macro = check_macro_string(spec, term, exp=exp)
    if last_macro == len(spec):
        return
    body = spec[:-1] if spec.endswith(".") else spec
    head, dot, top = body.rpartition(".")
    if not dot or not _TOPLABEL.fullmatch(top) or len(head) < last_macro:
        raise SpfSyntaxError(f"'{term}': '{spec}' is not a valid domain name (it must end in a macro or '.' and a top-level label)")


def checkable_domain(name: str) -> bool:
    """Whether check_host() can look <domain> up (RFC 7208 4.3): a multi-label name with no
    empty label and no label over 63 octets, not a domain literal or an address. Any other
    character is allowed: SPF names need not be host names."""
    name = name[:-1] if name.endswith(".") else name
    if not name or len(name) > 253 or name.startswith("["):
        return False
    labels = name.split(".")
    return len(labels) >= 2 and not labels[-1].isdigit() and all(0 < len(label.encode()) <= 63 for label in labels)


def valid_domain(name: str) -> bool:
    name = name[:-1] if name.endswith(".") else name
    if not name or len(name) > 253:
        return False
    labels = name.split(".")
    if len(labels) < 2 or labels[-1].isdigit():
        return False
    return all(len(label) <= 63 and _LABEL.fullmatch(label) for label in labels)


# -- the static walk -------------------------------------------------------------------------
@dataclass
class TermNode:
    term: Term
    lookups: int = 0  # this term's own lookup plus everything under it
    void_lookups: int = 0
    void: bool = False
    child: "SpfNode | None" = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = self.term.to_dict()
        d["lookups"] = self.lookups
        if self.void:
            d["void"] = True
        if self.note:
            d["note"] = self.note
        if self.child is not None:
            d["record"] = self.child.to_dict()
        return d


@dataclass
class SpfNode:
    domain: str
    status: str = "ok"  # ok | none | multiple | syntax | temperror | loop | depth | invalid
    record: str | None = None
    records: list[str] = field(default_factory=list)
    terms: list[TermNode] = field(default_factory=list)
    error: str = ""
    void: bool = False  # no TXT at all (NXDOMAIN / empty answer)

    @property
    def lookups(self) -> int:
        return sum(t.lookups for t in self.terms)

    @property
    def void_lookups(self) -> int:
        return sum(t.void_lookups for t in self.terms)

    def term(self, name: str) -> TermNode | None:
        return next((t for t in self.terms if t.term.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"domain": self.domain, "status": self.status, "record": self.record,
                             "lookups": self.lookups, "void_lookups": self.void_lookups,
                             "terms": [t.to_dict() for t in self.terms]}
        if len(self.records) > 1:
            d["records"] = self.records
        if self.error:
            d["error"] = self.error
        return d

    def walk(self):
        yield self
        for t in self.terms:
            if t.child is not None:
                yield from t.child.walk()


class SpfWalker:
    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver
        self.findings: list[Finding] = []

    def add(self, finding: Finding) -> None:
        if finding not in self.findings:
            self.findings.append(finding)

    def walk(self, domain: str, stack: tuple[str, ...] = ()) -> SpfNode:
        node = SpfNode(domain)
        lk = self.resolver.txt(domain)
        if lk.temporary:
            node.status = "temperror"
            self.add(F.dns_failure(lk, f"SPF record of {domain}"))
            return node
        node.records = [r for r in lk.records if is_spf_record(r)]
        if not node.records:
            node.status = "none"
            node.void = lk.void
            return node
        node.record = node.records[0]
        if len(node.records) > 1:
            node.status = "multiple"
            self.add(F.error("spf.multiple-records",
                             f"{domain} publishes {len(node.records)} v=spf1 records; receivers return permerror",
                             "merge them into a single TXT record starting with v=spf1", domain))
        try:
            terms = parse_record(node.record)
        except SpfSyntaxError as exc:
            node.status = "syntax"
            node.error = str(exc)
            self.add(F.error("spf.syntax", f"SPF record of {domain}: {exc}",
                             "fix the record per RFC 7208 section 12; receivers return permerror", domain))
            return node
        self._prefetch(domain, terms)
        has_all = any(t.name == "all" for t in terms)
        seen_all = False
        for term in terms:
            tn = TermNode(term)
            node.terms.append(tn)
            if seen_all and term.kind == "mechanism":
                self.add(F.warning("spf.terms-after-all", f"{domain}: '{term.text}' comes after 'all' and is never used",
                                   "move it before 'all' or remove it", term.text))
            if term.name == "all":
                seen_all = True
                if term.qualifier == "+" and stack:
                    self.add(F.error("spf.pass-all", f"{domain} (included from {stack[-1]}) ends with '+all': it authorizes every address on the Internet",
                                     "use '~all' or '-all'", f"{domain}: {term.text}"))
            if not term.queries_dns:
                continue
            tn.lookups = 1
            if term.name == "ptr":
                self.add(F.warning("spf.ptr-deprecated", f"{domain}: '{term.text}' uses the deprecated ptr mechanism (RFC 7208 5.5)",
                                   "replace ptr with ip4/ip6, a or include terms", term.text))
            if term.has_macro:
                tn.note = "macro: expanded per message, not followed"
                self.add(F.info("spf.macro", f"{domain}: '{term.text}' uses macros; its target depends on each message and is counted as one lookup",
                                "none needed; test real senders with --ip and --sender", term.text))
                continue
            target = term.target(domain)
            if term.name in ("include", "redirect"):
                if term.name == "redirect" and has_all:
                    tn.note = "ignored: the record has 'all'"
                    tn.lookups = 0  # receivers never follow it, so it costs nothing
                    self.add(F.warning("spf.redirect-ignored", f"{domain}: '{term.text}' is ignored because the record also has 'all'",
                                       "remove either the redirect or the 'all' term", term.text))
                    continue
                if target in stack or target == domain:
                    tn.note = "loop"
                    self.add(F.error("spf.include-loop",
                                     f"{' -> '.join(stack + (domain, target))}: include loop",
                                     "remove the include that points back up the chain", target))
                    continue
                if len(stack) >= MAX_DEPTH:
                    tn.note = "not followed: too deep"
                    continue
                child = self.walk(target, stack + (domain,))
                tn.child = child
                tn.lookups += child.lookups
                tn.void_lookups = child.void_lookups
                if child.status == "none":
                    tn.void = child.void
                    tn.void_lookups += int(child.void)
                    self.add(F.error("spf.include-no-record" if term.name == "include" else "spf.redirect-no-record",
                                     f"{domain}: '{term.text}' points at {target}, which has no SPF record; receivers return permerror",
                                     f"publish an SPF record at {target} or remove the term", target))
            elif term.name in ("a", "exists"):
                lookups = [self.resolver.lookup(target, "A")]
                if term.name == "a":
                    lookups.append(self.resolver.lookup(target, "AAAA"))
                self._void_check(domain, term, tn, lookups)
            elif term.name == "mx":
                lk = self.resolver.lookup(target, "MX")
                self._void_check(domain, term, tn, [lk])
                if len(lk.records) > MX_LIMIT:
                    self.add(F.error("spf.too-many-mx", f"{domain}: '{term.text}' finds {len(lk.records)} MX hosts; more than {MX_LIMIT} is a permerror",
                                     "use ip4/ip6 terms instead of mx", term.text))
        return node

    def _void_check(self, domain: str, term: Term, tn: TermNode, lookups: list[Lookup]) -> None:
        temps = [lk for lk in lookups if lk.temporary]
        for lk in temps:
            self.add(F.dns_failure(lk, f"SPF term '{term.text}' of {domain}"))
        if not temps and all(lk.void for lk in lookups):
            tn.void = True
            tn.void_lookups = 1
            self.add(F.warning("spf.void-lookup", f"{domain}: '{term.text}' finds nothing in DNS (a void lookup; more than {VOID_LIMIT} is a permerror)",
                               "remove the term or publish the missing record", term.text))

    def _prefetch(self, domain: str, terms: list[Term]) -> None:
        questions = []
        for t in terms:
            if not t.queries_dns or t.has_macro:
                continue
            target = t.target(domain)
            if t.name in ("include", "redirect"):
                questions.append((target, "TXT"))
            elif t.name == "a":
                questions += [(target, "A"), (target, "AAAA")]
            elif t.name == "exists":
                questions.append((target, "A"))
            elif t.name == "mx":
                questions.append((target, "MX"))
        self.resolver.prefetch(questions)


def effective_all(node: SpfNode) -> Term | None:
    for tn in node.terms:
        if tn.term.name == "all":
            return tn.term
    redirect = node.term("redirect")
    if redirect is not None and redirect.child is not None and redirect.child.status != "none":
        return effective_all(redirect.child)
    return None


# -- check_host() ----------------------------------------------------------------------------
class _Stop(Exception):
    def __init__(self, result: str, reason: str, term: str = "", domain: str = ""):
        super().__init__(reason)
        self.result, self.reason, self.term, self.domain = result, reason, term, domain


@dataclass
class Evaluation:
    ip: str
    sender: str
    result: str
    term: str = ""  # the term that decided, as written
    domain: str = ""  # the record that term belongs to
    path: list[str] = field(default_factory=list)  # top-level term -> ... -> deciding term
    reason: str = ""
    lookups: int = 0
    void_lookups: int = 0
    helo: str = ""  # the HELO identity given, for %{h}
    explanation: str = ""  # for fail: the deciding record's exp= text (RFC 7208 6.2); "" if none applies

    def to_dict(self) -> dict[str, Any]:
        return {"ip": self.ip, "sender": self.sender, "result": self.result, "term": self.term or None,
                "domain": self.domain or None, "path": self.path, "reason": self.reason,
                "lookups": self.lookups, "void_lookups": self.void_lookups, "helo": self.helo or None,
                "explanation": self.explanation or None}


@dataclass
class _Outcome:
    """What one check_host() level returns."""

    result: str
    term: str = ""
    domain: str = ""
    path: list[str] = field(default_factory=list)
    reason: str = ""
    exp: Term | None = None  # the exp= of the record that decided (a redirect hands over its target's)


class SpfEvaluator:
    """check_host(ip, domain, sender) as in RFC 7208 section 4."""

    def __init__(self, resolver: Resolver, ip: str, sender: str, helo: str = "") -> None:
        self.resolver = resolver
        self.ip = ipaddress.ip_address(ip)
        if self.ip.version == 6 and self.ip.ipv4_mapped is not None:
            self.ip = self.ip.ipv4_mapped
        self.sender = sender
        self.helo_given = helo
        self.helo = helo or "unknown"
        self.lookups = 0
        self.voids = 0

    def evaluate(self, domain: str) -> Evaluation:
        ev = Evaluation(str(self.ip), self.sender, "none", helo=self.helo_given)
        out = None
        try:
            out = self.check_host(normalize(domain), 0)
            ev.result, ev.term, ev.domain, ev.path, ev.reason = out.result, out.term, out.domain, out.path, out.reason
        except _Stop as stop:
            ev.result, ev.term, ev.domain, ev.reason = stop.result, stop.term, stop.domain, stop.reason
            ev.path = [stop.term] if stop.term else []
        ev.lookups, ev.void_lookups = self.lookups, self.voids
        if ev.result == "fail" and out is not None and out.exp is not None:
            ev.explanation = self.explain(out.exp, out.domain)
        return ev

    def check_host(self, domain: str, depth: int) -> _Outcome:
        if not checkable_domain(domain):
            return _Outcome("none", "", domain, [], f"'{domain}' is not a valid domain name (RFC 7208 4.3)")
        lk = self.resolver.txt(domain)
        if lk.temporary:
            raise _Stop("temperror", f"TXT {domain}: {lk.status}", "", domain)
        records = [r for r in lk.records if is_spf_record(r)]
        if not records:
            return _Outcome("none", "", domain, [], f"{domain} has no SPF record")
        if len(records) > 1:
            raise _Stop("permerror", f"{domain} has {len(records)} SPF records", "", domain)
        try:
            terms = parse_record(records[0])
        except SpfSyntaxError as exc:
            raise _Stop("permerror", f"{domain}: {exc}", "", domain) from None
        exp = next((t for t in terms if t.name == "exp"), None)
        for term in terms:
            if term.kind != "mechanism":
                continue
            matched, sub = self._mechanism(term, domain, depth)
            if matched:
                path = [term.text] + (sub.path if sub else [])
                if sub is not None and term.name == "include":
                    return _Outcome(QUALIFIERS[term.qualifier], term.text, domain, path,
                                    f"matched '{term.text}' in {domain} (via {' > '.join(path)})", exp)
                return _Outcome(QUALIFIERS[term.qualifier], term.text, domain, path, f"matched '{term.text}' in {domain}", exp)
        redirect = next((t for t in terms if t.name == "redirect"), None)
        if redirect is not None:
            self._count(redirect, domain)
            target = self.expand(redirect.value, domain)
            sub = self.check_host(target, depth + 1)
            if sub.result == "none":
                raise _Stop("permerror", f"redirect target {target} has no SPF record", redirect.text, domain)
            sub.path = [redirect.text] + sub.path
            return sub  # the target's exp= applies, not this record's (RFC 7208 6.2)
        return _Outcome("neutral", "", domain, [], f"no term of {domain} matched (default result neutral)", exp)

    def explain(self, exp: Term, domain: str) -> str:
        """The explanation for fail (RFC 7208 6.2): the TXT record at the expanded exp= name,
        macro-expanded. "" (the receiver's own text) when the name does not expand, the lookup
        fails or finds no or several records, or the text is not a valid explanation string.
        Not counted against the lookup limits."""
        try:
            target = self.expand(exp.value, domain)
        except _Stop:
            return ""
        if not checkable_domain(target):
            return ""
        lk = self.resolver.txt(target)
        if lk.temporary or len(lk.records) != 1:
            return ""
        try:
            check_macro_string(lk.records[0], exp.text, exp=True)
            return self.expand(lk.records[0], domain, exp=True)
        except (SpfSyntaxError, _Stop):
            return ""

    def _count(self, term: Term, domain: str) -> None:
        self.lookups += 1
        if self.lookups > LOOKUP_LIMIT:
            raise _Stop("permerror", f"more than {LOOKUP_LIMIT} DNS lookups (at '{term.text}' in {domain})", term.text, domain)

    def _void(self, lk: Lookup, term: Term, domain: str) -> None:
        if lk.temporary:
            raise _Stop("temperror", f"{lk.rdtype} {lk.name}: {lk.status}", term.text, domain)
        if lk.void:
            self.voids += 1
            if self.voids > VOID_LIMIT:
                raise _Stop("permerror", f"more than {VOID_LIMIT} void lookups (at '{term.text}' in {domain})", term.text, domain)

    def _addresses(self, name: str, term: Term, domain: str, count_void: bool = True) -> list:
        rdtype = "A" if self.ip.version == 4 else "AAAA"
        lk = self.resolver.lookup(name, rdtype)
        if count_void:
            self._void(lk, term, domain)
        elif lk.temporary:
            raise _Stop("temperror", f"{lk.rdtype} {lk.name}: {lk.status}", term.text, domain)
        out = []
        for r in lk.records:
            try:
                out.append(ipaddress.ip_address(r))
            except ValueError:
                pass
        return out

    def _in(self, addr, term: Term) -> bool:
        if addr.version != self.ip.version:
            return False
        prefix = term.cidr4 if self.ip.version == 4 else term.cidr6
        if prefix is None:
            return addr == self.ip
        return self.ip in ipaddress.ip_network(f"{addr}/{prefix}", strict=False)

    def _mechanism(self, term: Term, domain: str, depth: int) -> tuple[bool, _Outcome | None]:
        name = term.name
        if name == "all":
            return True, None
        if name in ("ip4", "ip6"):
            net = ipaddress.ip_network(term.value, strict=False)
            return self.ip.version == net.version and self.ip in net, None
        self._count(term, domain)
        target = self.expand(term.value, domain) if term.value else domain
        if name == "include":
            try:
                sub = self.check_host(target, depth + 1)
            except _Stop as stop:
                raise _Stop(stop.result, stop.reason, stop.term or term.text, stop.domain or target) from None
            if sub.result == "pass":
                return True, sub
            if sub.result in ("fail", "softfail", "neutral"):
                return False, None
            raise _Stop("permerror", f"include:{target}: {sub.reason}", term.text, domain)
        if name == "a":
            return any(self._in(a, term) for a in self._addresses(target, term, domain)), None
        if name == "mx":
            lk = self.resolver.lookup(target, "MX")
            self._void(lk, term, domain)
            hosts = [h for h in (r.split(" ", 1)[1] for r in lk.records) if h]  # "0 ." (null MX, RFC 7505) has none
            if len(lk.records) > MX_LIMIT:
                raise _Stop("permerror", f"{target} has more than {MX_LIMIT} MX hosts", term.text, domain)
            self.resolver.prefetch((h, "A" if self.ip.version == 4 else "AAAA") for h in hosts)
            for host in hosts:
                if any(self._in(a, term) for a in self._addresses(host, term, domain, count_void=False)):
                    return True, None
            return False, None
        if name == "exists":
            lk = self.resolver.lookup(target, "A")
            self._void(lk, term, domain)
            return bool(lk.records), None
        if name == "ptr":
            for host in self._validated_names():
                if host == target or host.endswith("." + target):
                    return True, None
            return False, None
        return False, None

    def _validated_names(self) -> list[str]:
        lk = self.resolver.lookup(self.ip.reverse_pointer, "PTR")
        if lk.temporary:
            return []  # RFC 7208 5.5: a temporary error here means no match
        names = []
        for host in lk.records[:PTR_LIMIT]:
            addrs = self.resolver.lookup(host, "A" if self.ip.version == 4 else "AAAA")
            if any(ipaddress.ip_address(a) == self.ip for a in addrs.records if _is_ip(a)):
                names.append(host)
        return names

    # -- macros (RFC 7208 section 7) ---------------------------------------------------------
    def expand(self, spec: str, domain: str, *, exp: bool = False) -> str:
        """A domain-spec expanded into a name to query, or with exp=True an explanation string
        expanded into text (kept as written: case, spaces, trailing dot)."""
        if "%" not in spec:
            return spec if exp else normalize(spec)
        local, _, sender_domain = self.sender.rpartition("@")
        local = local or "postmaster"

        def value(letter: str) -> str:
            if letter == "s":
                return f"{local}@{sender_domain}"
            if letter == "l":
                return local
            if letter == "o":
                return sender_domain
            if letter == "d":
                return domain
            if letter == "i":
                if self.ip.version == 4:
                    return str(self.ip)
                # dot-format nibbles, upper case as the openspf suite expects (DNS ignores case)
                return ".".join(self.ip.exploded.replace(":", "").upper())
            if letter == "p":
                names = self._validated_names()
                # RFC 7208 7.3: prefer <domain> itself, then a subdomain of it
                return next((n for n in names if n == domain), None) or next(
                    (n for n in names if n.endswith("." + domain)), names[0] if names else "unknown")
            if letter == "v":
                return "in-addr" if self.ip.version == 4 else "ip6"
            if letter == "h":
                return self.helo
            if letter == "c":
                return str(self.ip)
            if letter == "r":
                return "unknown"
            if letter == "t":
                return str(int(time.time()))
            return ""

        def repl(m: re.Match) -> str:
            whole = m.group(0)
            if whole == "%%":
                return "%"
            if whole == "%_":
                return " "
            if whole == "%-":
                return "%20"
            letter, digits, reverse, delims = m.group(1), m.group(2), m.group(3), m.group(4)
            raw = value(letter.lower())
            parts = re.split("[" + re.escape(delims or ".") + "]", raw)
            if reverse:
                parts.reverse()
            if digits:
                n = int(digits)
                if n == 0:
                    raise _Stop("permerror", f"macro '{whole}' keeps zero labels")
                parts = parts[-n:]
            out = ".".join(parts)
            if letter.isupper():
                out = urllib.parse.quote(out, safe="")
            return out

        expanded = _MACRO.sub(repl, spec)
        if exp:
            return expanded
        labels = expanded.rstrip(".").split(".")
        while len(".".join(labels)) > 253 and len(labels) > 1:
            labels.pop(0)
        return normalize(".".join(labels))


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


# -- the check -------------------------------------------------------------------------------
def check_spf(resolver: Resolver, domain: str, ips: list[str] = (), sender: str | None = None,
              helo: str | None = None) -> CheckResult:
    domain = normalize(domain)
    result = CheckResult("spf", domain)
    walker = SpfWalker(resolver)
    if checkable_domain(domain):
        root = walker.walk(domain)
    else:  # only check-spf --ip gets here: evaluated as a receiver would (none), not looked up
        root = SpfNode(domain, status="invalid")
        result.add(F.error("spf.invalid-domain",
                           f"'{domain}' is not a domain name SPF can check (RFC 7208 4.3): receivers return none",
                           "check the MAIL FROM domain or HELO name that the sender uses", domain))
    for f in walker.findings:
        result.add(f)
    result.data["record"] = root.record
    result.data["lookups"] = root.lookups
    result.data["void_lookups"] = root.void_lookups
    result.data["lookup_limit"] = LOOKUP_LIMIT
    result.data["tree"] = root.to_dict()
    if root.status == "none":
        result.add(F.error("spf.missing", f"{domain} has no SPF record",
                           f"publish a TXT record at {domain} such as 'v=spf1 include:<provider> -all'", domain))
    elif root.status not in ("syntax", "temperror", "invalid"):
        if root.lookups > LOOKUP_LIMIT:
            breakdown = ", ".join(f"{t.term.text}={t.lookups}" for t in root.terms if t.lookups)
            result.add(F.error("spf.too-many-lookups",
                               f"{domain}: the SPF tree needs {root.lookups} DNS lookups, over the limit of {LOOKUP_LIMIT} ({breakdown}); receivers return permerror",
                               "flatten includes into ip4/ip6 terms, drop unused includes, or move senders to a subdomain", domain))
        if root.void_lookups > VOID_LIMIT:
            result.add(F.error("spf.too-many-void-lookups",
                               f"{domain}: {root.void_lookups} void lookups, over the limit of {VOID_LIMIT}; receivers return permerror",
                               "remove terms that point at names without records", domain))
        last = effective_all(root)
        if last is None:
            result.add(F.warning("spf.missing-all", f"{domain}: the SPF record has no 'all' term, so unlisted senders get neutral",
                                 "end the record with '~all' or '-all'", domain))
        elif last.qualifier == "+":
            result.add(F.error("spf.pass-all", f"{domain}: '+all' authorizes every address on the Internet",
                               "end the record with '~all' or '-all'", last.text))
        elif last.qualifier == "?":
            result.add(F.warning("spf.neutral-all", f"{domain}: '?all' gives unlisted senders neutral, as if there were no SPF",
                                 "end the record with '~all' or '-all'", last.text))
    evaluations = []
    sender = sender or f"postmaster@{domain}"
    for ip in ips:
        ev = SpfEvaluator(resolver, ip, sender, helo or "").evaluate(domain)
        evaluations.append(ev.to_dict())
        if ev.result == "temperror":
            result.add(Finding(F.Severity.ERROR, "spf.temperror", f"SPF for {ip}: temperror ({ev.reason})",
                               "check that the nameserver answers, retry later or raise --timeout", ip, temporary=True))
        elif ev.result != "pass" and root.status != "invalid":  # spf.invalid-domain says it all
            where = f" at '{ev.term}' in {ev.domain}" if ev.term else ""
            explained = f"; explanation: {ev.explanation!r}" if ev.explanation else ""
            result.add(F.error("spf.ip-not-authorized", f"SPF for {ip} is {ev.result}{where}: {ev.reason}{explained}",
                               f"authorize {ip} in the SPF record of {domain} (ip4/ip6 or the sending service's include)", ip))
    if ips:
        result.data["evaluations"] = evaluations
    return result


def run_check_spf(domain: str, options, helo: str | None = None) -> Report:
    """`dns check-spf`: run_checks() for SPF alone (options: a check.CheckOptions), plus what
    only this command takes: the HELO identity for %{h}, and, with --ip, any name a receiver
    can be handed. A name that is not a valid domain is then evaluated (none, RFC 7208 4.3)
    and reported as spf.invalid-domain instead of refused as a usage error."""
    from mailctl.dns.check import checked_domain
    from mailctl.errors import UsageError

    name = normalize(domain)
    if not options.ips or valid_domain(name):
        name = checked_domain(domain)
    nameservers = [parse_nameserver(n) for n in options.nameservers]
    ips = [parse_ip(ip) for ip in options.ips]
    if options.timeout <= 0:
        raise UsageError("--timeout must be positive")
    started = time.perf_counter()
    with Resolver(nameservers, options.timeout) as resolver:
        result = check_spf(resolver, name, ips, options.sender, helo)
        queries = resolver.queries
    return Report(name, [result], strict=options.strict, nameservers=[str(n) for n in nameservers] or ["system"],
                  queries=queries, elapsed=time.perf_counter() - started)


def parse_ip(text: str) -> str:
    from mailctl.errors import UsageError

    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise UsageError(f"invalid --ip {text!r}: not an IPv4 or IPv6 address") from None
