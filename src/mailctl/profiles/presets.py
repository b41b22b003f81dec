"""Provider presets and national-cloud endpoints (facts: ../shared/PROVIDERS.md)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "microsoft365": {
        "smtp": {"host": "smtp.office365.com", "port": 587, "security": "starttls", "auth": "oauth"},
        "graph": {"auth": "oauth"},
        "ews": {"ews_url": "https://outlook.office365.com/EWS/Exchange.asmx", "auth": "oauth"},
    },
    "gmail": {
        "smtp": {"host": "smtp.gmail.com", "port": 587, "security": "starttls", "auth": "oauth"},
        "gmail-api": {"auth": "oauth"},
    },
    "custom": {},
}

CLOUDS: dict[str, dict[str, str]] = {
    "global": {"graph": "https://graph.microsoft.com", "login": "https://login.microsoftonline.com"},
    "usgov": {"graph": "https://graph.microsoft.us", "login": "https://login.microsoftonline.us"},
    "usgov-dod": {"graph": "https://dod-graph.microsoft.us", "login": "https://login.microsoftonline.us"},
    "china": {"graph": "https://microsoftgraph.chinacloudapi.cn", "login": "https://login.chinacloudapi.cn"},
}


def preset_values(provider: str | None, transport: str) -> dict[str, Any]:
    if not provider:
        return {}
    return dict(PRESETS.get(provider, {}).get(transport, {}))


def graph_endpoint(cloud: str | None, override: str | None = None) -> str:
    if override:
        return override.rstrip("/")
    return CLOUDS.get(cloud or "global", CLOUDS["global"])["graph"]


def login_host(cloud: str | None) -> str:
    return CLOUDS.get(cloud or "global", CLOUDS["global"])["login"]


# --- Exchange Online facts (EWS retirement; PROVIDERS.md) -------------------------------
EXCHANGE_ONLINE_HOSTS = ("outlook.office365.com", "outlook.office.com", "outlook.office365.us",
                         "outlook-dod.office365.us", "partner.outlook.cn")
EWS_RETIREMENT_WARNING = (
    "Exchange Online blocks EWS from October 2026: {host} is Exchange Online. Use a graph profile "
    "(Graph sendMail) or smtp (smtp.office365.com) for Microsoft 365 mailboxes; EWS stays for "
    "on-premises Exchange."
)


def is_exchange_online(url: str | None) -> bool:
    host = (urlsplit(url).hostname or "").lower() if url else ""
    return host in EXCHANGE_ONLINE_HOSTS


def ews_warnings(profile) -> list[str]:
    """Warnings `profile lint` and `test connect` show for an ews profile."""
    values = profile.values if hasattr(profile, "values") else dict(profile)
    if (values.get("type") or "smtp") != "ews":
        return []
    warnings: list[str] = []
    url = values.get("ews_url") or ""
    if is_exchange_online(url):
        warnings.append(EWS_RETIREMENT_WARNING.format(host=urlsplit(url).hostname))
    elif values.get("autodiscover") and values.get("provider") == "microsoft365":
        warnings.append(EWS_RETIREMENT_WARNING.format(host="a microsoft365 mailbox"))
    if url.startswith("http://"):
        warnings.append("ews_url uses http://: credentials and mail would cross the network unencrypted; use https://")
    if values.get("autodiscover") and url:
        warnings.append("autodiscover = true is ignored while ews_url is set (autodiscover only runs without a URL)")
    if values.get("auth") == "password" and is_exchange_online(url):
        warnings.append("Exchange Online retired basic authentication for EWS: use auth = oauth or client-credentials")
    return warnings
