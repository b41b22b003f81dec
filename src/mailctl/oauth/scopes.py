"""Which identity provider a profile talks to, which scopes it asks for, and where its login
authority is (facts: ../shared/PROVIDERS.md)."""

from __future__ import annotations

from mailctl.errors import ConfigError
from mailctl.profiles.presets import graph_endpoint, login_host

OAUTH_AUTHS = ("oauth", "client-credentials", "service-account")

# Exchange Online host per national cloud (SMTP.Send / EWS scopes live on it).
OUTLOOK_HOSTS = {
    "global": ("https://outlook.office.com", "https://outlook.office365.com"),
    "usgov": ("https://outlook.office365.us", "https://outlook.office365.us"),
    "usgov-dod": ("https://outlook-dod.office365.us", "https://outlook-dod.office365.us"),
    "china": ("https://partner.outlook.cn", "https://partner.outlook.cn"),
}

GOOGLE_MAIL_SCOPE = "https://mail.google.com/"
GOOGLE_SEND_SCOPE = "https://www.googleapis.com/auth/gmail.send"
GOOGLE_AUTH_URL = "https://accounts.google.com/o/oauth2/auth"
GOOGLE_TOKEN_URL = "https://oauth2.googleapis.com/token"


def uses_oauth(profile) -> bool:
    auth = profile.values.get("auth")
    # Graph and the Gmail API only speak OAuth: an unset auth there means oauth.
    return auth in OAUTH_AUTHS or (not auth and profile.type in ("graph", "gmail-api"))


def provider_of(profile) -> str:
    """'generic', 'google' or 'microsoft': oauth_provider when set, else guessed from the
    provider preset, the auth type and the host."""
    v = profile.values
    if v.get("oauth_provider"):
        return v["oauth_provider"]
    if v.get("provider") == "gmail" or v.get("auth") == "service-account" or profile.type == "gmail-api":
        return "google"
    if v.get("provider") == "microsoft365":
        return "microsoft"
    host = (v.get("host") or "").lower()
    if host.endswith("gmail.com") or host.endswith("google.com") or "googleapis" in (v.get("token_url") or ""):
        return "google"
    return "microsoft"


def app_only(profile) -> bool:
    return profile.values.get("auth") in ("client-credentials", "service-account")


def _other_mailbox(profile) -> bool:
    mailbox = (profile.values.get("mailbox") or "").lower()
    return bool(mailbox) and mailbox != (profile.values.get("username") or "").lower()


def scopes_for(profile) -> list[str]:
    """The profile's own scopes, else the provider's scopes for its transport."""
    own = profile.values.get("scopes") or []
    if own:
        return list(own)
    cloud = profile.values.get("cloud") or "global"
    provider = provider_of(profile)
    if provider == "generic":
        return []  # the server's default scopes: only the profile knows better
    if provider == "google":
        return [GOOGLE_SEND_SCOPE] if profile.type == "gmail-api" else [GOOGLE_MAIL_SCOPE]
    smtp_host, ews_host = OUTLOOK_HOSTS.get(cloud, OUTLOOK_HOSTS["global"])
    # The token is for the cloud's Graph resource; graph_endpoint only says where requests go
    # (a proxy, a gateway, a test double), and a token for its host is refused (AADSTS500011).
    graph = graph_endpoint(cloud)
    if app_only(profile):
        if profile.type == "graph":
            return [f"{graph}/.default"]
        return [f"{ews_host}/.default"]
    if profile.type == "graph":
        if _other_mailbox(profile):  # /users/{mailbox}/sendMail on behalf of the signed-in user
            return [f"{graph}/Mail.Send", f"{graph}/Mail.Send.Shared"]
        return [f"{graph}/Mail.Send"]
    if profile.type == "ews":
        return [f"{ews_host}/EWS.AccessAsUser.All"]
    return [f"{smtp_host}/SMTP.Send"]


REGISTER_HINT = (
    "register an app in Microsoft Entra admin center > App registrations (for device code: "
    "Authentication > 'Allow public client flows' = Yes; API permissions: the mail scope), then: "
    "mailctl profile edit {name} --client-id APP_ID --tenant-id TENANT_ID (see docs/oauth.md)"
)


def microsoft_authority(profile) -> str:
    """The login authority URL: the profile's override, else the cloud's login host + tenant."""
    v = profile.values
    for key in ("client_id", "tenant_id"):
        if not v.get(key) and not (key == "tenant_id" and v.get("authority")):
            raise ConfigError(
                f"profile {profile.name!r}: OAuth with Microsoft needs {key}",
                hint=REGISTER_HINT.format(name=profile.name),
            )
    if v.get("authority"):
        return v["authority"].rstrip("/")
    return f"{login_host(v.get('cloud'))}/{v['tenant_id']}"


def google_endpoints(profile) -> dict[str, str]:
    """Authorization, token, device-code and revocation URLs (token_url / authorization_url
    override Google's; the others sit next to the token endpoint)."""
    v = profile.values
    token = v.get("token_url") or GOOGLE_TOKEN_URL
    base = token.rsplit("/", 1)[0]
    return {
        "auth": v.get("authorization_url") or GOOGLE_AUTH_URL,
        "token": token,
        "device": f"{base}/device/code",
        "revoke": f"{base}/revoke",
    }


def identity_provider_url(profile) -> str:
    """Where the profile's tokens come from (for messages: which host to blame when it cannot
    be reached): the Microsoft authority, Google's or the generic server's token endpoint."""
    provider = provider_of(profile)
    v = profile.values
    if provider == "generic":
        return v.get("token_url") or ""
    if provider == "google":
        return google_endpoints(profile)["token"]
    if v.get("authority"):
        return v["authority"].rstrip("/")
    return f"{login_host(v.get('cloud'))}/{v.get('tenant_id') or 'organizations'}"
