"""Provider presets and national-cloud endpoints (facts: ../shared/PROVIDERS.md)."""

from __future__ import annotations

from typing import Any

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
