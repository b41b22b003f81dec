"""DNS authentication checks: SPF (RFC 7208), DKIM (RFC 6376) and DMARC (RFC 7489 / DMARCbis).

Library code only: no typer, no rich. dnspython is imported lazily inside resolver.py so that
importing this package (and `mailctl --help`) stays cheap.
"""

from mailctl.dns.findings import Finding, Severity, CheckResult, Report

__all__ = ["Finding", "Severity", "CheckResult", "Report"]
