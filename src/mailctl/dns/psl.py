"""Organizational domain (RFC 7489 3.2) from the Public Suffix List.

Uses the `publicsuffixlist` package (it ships the list, so it works offline) when installed;
otherwise a small built-in list of multi-label suffixes covers the common cases.
"""

from __future__ import annotations

from functools import lru_cache

from mailctl.dns.resolver import normalize

# Fallback only: multi-label public suffixes that matter most for mail domains.
_FALLBACK_SUFFIXES = frozenset(
    """co.uk org.uk ac.uk gov.uk ltd.uk plc.uk me.uk net.uk com.au net.au org.au edu.au gov.au
    co.nz org.nz net.nz co.jp ne.jp or.jp ac.jp go.jp co.kr or.kr com.br net.br org.br gov.br
    com.cn net.cn org.cn gov.cn com.mx org.mx com.ar com.tr co.za org.za co.in net.in org.in
    gov.in com.sg com.hk com.tw co.il org.il com.ua com.pl co.id or.id com.my com.ph com.vn
    gv.at co.at or.at com.es com.pt co.th in.th""".split()
)


@lru_cache(maxsize=1)
def _psl():
    try:
        from publicsuffixlist import PublicSuffixList
    except ImportError:
        return None
    return PublicSuffixList()


def organizational_domain(domain: str) -> str:
    domain = normalize(domain)
    psl = _psl()
    if psl is not None:
        org = psl.privatesuffix(domain)
        return org or domain
    labels = domain.split(".")
    if len(labels) >= 3 and ".".join(labels[-2:]) in _FALLBACK_SUFFIXES:
        return ".".join(labels[-3:])
    return ".".join(labels[-2:])
