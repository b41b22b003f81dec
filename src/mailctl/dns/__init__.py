"""A domain's mail health from DNS: SPF (RFC 7208), DKIM (RFC 6376), DMARC (RFC 7489 /
DMARCbis), MX (and null MX, RFC 7505), STARTTLS on the MX hosts, MTA-STS (RFC 8461), TLS-RPT
(RFC 8460), BIMI, DNSSEC and NS/SOA, plus DMARC alignment for a profile's provider.

Library code only: no typer, no rich. dnspython is imported lazily inside resolver.py so that
importing this package (and `mailctl --help`) stays cheap.
"""

from mailctl.dns.findings import Finding, Severity, CheckResult, Report

__all__ = ["Finding", "Severity", "CheckResult", "Report"]
