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


# --- guided setup (`profile add` on a terminal) ------------------------------------------
# What a guided `profile add` asks, in order, and what it offers as each answer's default:
# the same facts the presets fill in, so Enter at every question gives what the flags would.
SETUP_AUTHS: dict[str, tuple[str, ...]] = {
    "smtp": ("none", "password", "oauth", "client-credentials"),
    "lmtp": ("none", "password"),
    "graph": ("oauth", "client-credentials"),
    "ews": ("password", "oauth", "client-credentials"),
    "gmail-api": ("oauth", "service-account"),
    "file": (),
}
SETUP_OPTIONAL = ("from_address",)  # every other question needs an answer (or its default)


def setup_providers(transport: str) -> tuple[str, ...]:
    """The presets offered for a transport: those that know it, then custom (none: no question)."""
    known = tuple(p for p, table in PRESETS.items() if transport in table)
    return known + ("custom",) if known else ()


def setup_questions(answers: dict[str, Any]) -> list[str]:
    """The fields to ask for, in order, given the answers so far. Later questions depend only
    on earlier answers (the transport decides the rest, auth whether a login is asked), so
    asking the first unanswered one and calling again walks the whole setup."""
    transport = answers.get("type") or "smtp"
    auth = answers.get("auth") or setup_default("auth", answers)
    provider = answers.get("provider") or setup_default("provider", answers)
    fields = ["type"] + (["provider"] if setup_providers(transport) else [])
    if transport == "file":
        return fields + ["maildir", "from_address"]
    if transport in ("smtp", "lmtp"):
        fields += ["host", "security", "port"]
    if transport == "ews":
        fields.append("ews_url")
    fields.append("auth")
    if transport in ("smtp", "lmtp") and auth != "none" and answers.get("security") == "none":
        fields.append("allow_insecure_auth")
    if auth in ("oauth", "client-credentials") and (provider == "microsoft365" or transport in ("graph", "ews")
                                                    or auth == "client-credentials"):
        fields += ["tenant_id", "client_id"]
    elif auth == "oauth" or transport == "gmail-api":
        fields.append("client_id")
    if auth != "none":
        fields.append("username")
    return fields + ["from_address"]


def setup_default(field: str, answers: dict[str, Any]) -> Any:
    """The answer Enter gives: the preset's value, else the transport's usual one, else None."""
    transport = answers.get("type") or "smtp"
    if field == "type":
        return "smtp"
    if field == "provider":
        offered = setup_providers(transport)
        return offered[0] if transport in ("graph", "gmail-api") else ("custom" if offered else None)
    preset = preset_values(answers.get("provider"), transport)
    if field == "port":
        from mailctl.profiles.model import DEFAULT_PORTS

        security = answers.get("security") or "starttls"
        if transport == "lmtp" and security == "none":
            return 24
        return preset["port"] if preset.get("port") and preset.get("security") == security else DEFAULT_PORTS[security]
    if field in preset:
        return preset[field]
    if field == "security":
        return "none" if transport == "lmtp" else "starttls"
    if field == "auth":
        choices = SETUP_AUTHS.get(transport, ())
        return "none" if transport == "lmtp" else ("password" if "password" in choices else (choices[0] if choices else None))
    if field == "allow_insecure_auth":
        return False
    if field == "maildir":
        from mailctl import paths

        return str(paths.default_maildir())
    if field == "from_address":
        login = str(answers.get("username") or "")
        return login if "@" in login else None
    return None


def setup_choices(field: str, answers: dict[str, Any]) -> tuple[str, ...]:
    """The answers a guided question accepts when it is a choice (shown with the question)."""
    transport = answers.get("type") or "smtp"
    if field == "type":
        from mailctl.profiles.model import TYPES

        return TYPES
    if field == "provider":
        return setup_providers(transport)
    if field == "security":
        from mailctl.profiles.model import SECURITIES

        return SECURITIES
    if field == "auth":
        return SETUP_AUTHS.get(transport, ())
    return ()
