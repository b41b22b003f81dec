"""Organizational domain (RFC 7489 3.2) from the Public Suffix List.

The list comes from the `publicsuffixlist` package's data file (shipped with the package, so
this works offline). We read the file ourselves: building that package's PublicSuffixList
object costs ~40-130 ms per run (it punycodes every rule), a large share of a CLI check.
Without the package, a small built-in list of multi-label suffixes covers the common cases.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

from mailctl.dns.resolver import normalize

# Fallback only: multi-label public suffixes that matter most for mail domains.
_FALLBACK_SUFFIXES = frozenset(
    """co.uk org.uk ac.uk gov.uk ltd.uk plc.uk me.uk net.uk com.au net.au org.au edu.au gov.au
    co.nz org.nz net.nz co.jp ne.jp or.jp ac.jp go.jp co.kr or.kr com.br net.br org.br gov.br
    com.cn net.cn org.cn gov.cn com.mx org.mx com.ar com.tr co.za org.za co.in net.in org.in
    gov.in com.sg com.hk com.tw co.il org.il com.ua com.pl co.id or.id com.my com.ph com.vn
    gv.at co.at or.at com.es com.pt co.th in.th""".split()
)


def _data_file() -> Path | None:
    try:
        spec = importlib.util.find_spec("publicsuffixlist")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    path = Path(spec.origin).parent / "public_suffix_list.dat"
    return path if path.is_file() else None


@lru_cache(maxsize=1)
def _rules() -> frozenset[str] | None:
    path = _data_file()
    if path is None:
        return None
    rules = set()
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if line and not line.startswith("//"):
                rules.add(line.split()[0].lower())
    return frozenset(rules)


def _unicode_labels(domain: str) -> list[str]:
    labels = domain.split(".")
    if "xn--" not in domain:
        return labels
    out = []
    for label in labels:
        try:
            out.append(label.encode("ascii").decode("idna") if label.startswith("xn--") else label)
        except UnicodeError:
            out.append(label)
    return out


def public_suffix_length(labels: list[str], rules: frozenset[str]) -> int:
    """How many trailing labels form the public suffix (longest rule wins; '!' exceptions;
    the implicit '*' rule for unknown TLDs)."""
    n = len(labels)
    for i in range(n):
        suffix = ".".join(labels[i:])
        if "!" + suffix in rules:
            return n - i - 1
        if suffix in rules or (i + 1 < n and "*." + ".".join(labels[i + 1:]) in rules):
            return n - i
    return 1


def organizational_domain(domain: str) -> str:
    domain = normalize(domain)
    labels = domain.split(".")
    rules = _rules()
    if rules is not None:
        ps = public_suffix_length(_unicode_labels(domain), rules)
    else:
        ps = 2 if len(labels) >= 3 and ".".join(labels[-2:]) in _FALLBACK_SUFFIXES else 1
    if len(labels) <= ps:
        return domain  # the domain is itself a public suffix
    return ".".join(labels[-(ps + 1):])
