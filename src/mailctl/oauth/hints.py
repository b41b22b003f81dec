"""Identity-provider error replies -> precise AuthError messages with the command to run.
The Entra table is PROVIDERS.md's 'Entra error codes worth a human hint'."""

from __future__ import annotations

import re

from typing import Any

from mailctl.errors import AuthError, ConfigError, ExitCode, MailctlError, ProtocolError, TemporaryFailure

# code -> (what happened, what to do); "{name}" is the profile name.
ENTRA_CODES: dict[int, tuple[str, str]] = {}


def _add(codes, meaning, hint):
    for code in codes:
        ENTRA_CODES[code] = (meaning, hint)


LOGIN = "run: mailctl auth login {name}"
_add((50020, 500208, 9002332, 500200), "a personal Microsoft account was used where a work or school account is required",
     "sign in with a business (work or school) account: mailctl auth login {name}")
_add((65001, 90094, 65004, 650057, 650056), "consent is missing: the app lacks admin consent or the user declined",
     "ask a tenant admin to grant consent for the app (Entra > App registrations > API permissions > Grant admin consent), then: mailctl auth login {name}")
_add((70008, 50173, 70043), "the refresh token has expired or was revoked", LOGIN)
_add((700082,), "the refresh token expired after 90 days without use", LOGIN)
_add((50076, 50079), "multi-factor authentication is required", "sign in interactively to satisfy MFA: mailctl auth login {name}")
_add((53003,), "access was blocked by a Conditional Access policy",
     "ask the tenant admin which policy blocks this sign-in (Entra sign-in logs), then: mailctl auth login {name}")
_add((7000218,), "'Allow public client flows' is off on the app registration",
     "enable it (Entra > App registrations > the app > Authentication > Allow public client flows = Yes) for the device code flow")
_add((700016,), "the application (client) id was not found in the tenant",
     "check the ids: mailctl profile edit {name} --client-id APP_ID --tenant-id TENANT_ID")
_add((7000215,), "the client secret is wrong",
     "store the right secret (the Value, not the Secret ID): mailctl profile edit {name} --password-stdin")
_add((7000222,), "the client secret has expired",
     "create a new secret (Entra > App registrations > Certificates & secrets) and store it: mailctl profile edit {name} --password-stdin")
_add((70016,), "the sign-in is still pending", "finish the sign-in in the browser")
_add((70019,), "the device code expired before the sign-in finished", "start again: mailctl auth login {name}")

NEEDS_LOGIN = {70008, 700082, 50173, 70043, 50076, 50079, 53003, 70019, 50020, 500208, 9002332, 500200}

_AADSTS = re.compile(r"AADSTS(\d+)")


def entra_codes(result: dict) -> list[int]:
    codes = [int(c) for c in (result.get("error_codes") or []) if str(c).isdigit()]
    codes += [int(m) for m in _AADSTS.findall(result.get("error_description") or "")]
    return codes


def _first_line(text: str) -> str:
    text = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    # Entra appends "Trace ID: ... Correlation ID: ... Timestamp: ..." on the same line.
    return re.split(r"\s+Trace ID:", text)[0].strip()


def entra_error(result: dict, profile_name: str, *, doing: str) -> MailctlError:
    """An MSAL error dict -> AuthError (77), or ConfigError (78) for app-registration faults."""
    error = result.get("error") or "error"
    description = _first_line(result.get("error_description") or "")
    for code in entra_codes(result):
        if code in ENTRA_CODES:
            meaning, hint = ENTRA_CODES[code]
            cls = ConfigError if code in (7000218, 700016) else AuthError
            return cls(f"profile {profile_name!r}: {doing} failed: {meaning} (AADSTS{code})",
                       hint=hint.format(name=profile_name))
    generic = {
        "invalid_grant": ("the stored sign-in is no longer valid (expired or revoked)", LOGIN),
        "interaction_required": ("an interactive sign-in is required", LOGIN),
        "invalid_client": ("the identity provider rejected the client credentials",
                           "check the client id and secret: mailctl profile edit {name} --password-stdin"),
        "unauthorized_client": ("the app is not allowed to use this flow", "check the app registration (docs/oauth.md)"),
        "invalid_scope": ("the identity provider refused the requested scopes", "check the profile's scopes: mailctl profile show {name}"),
        "access_denied": ("the sign-in was declined", "start again: mailctl auth login {name}"),
        "authorization_declined": ("the sign-in was declined", "start again: mailctl auth login {name}"),
        "expired_token": ("the code expired before the sign-in finished", "start again: mailctl auth login {name}"),
        "bad_verification_code": ("the device code was not recognised", "start again: mailctl auth login {name}"),
    }
    meaning, hint = generic.get(error, (f"{error}", LOGIN))
    detail = f": {description}" if description and description not in meaning else ""
    return AuthError(f"profile {profile_name!r}: {doing} failed: {meaning}{detail}", hint=hint.format(name=profile_name))


def google_error(error: str, description: str, profile_name: str, *, doing: str, service_account: bool = False) -> MailctlError:
    description = _first_line(description)
    if service_account and error == "invalid_client":
        # A service account has no client secret: the key (or the account) is what Google refused.
        return AuthError(
            f"profile {profile_name!r}: {doing} failed: Google does not accept this service account key "
            f"(invalid_client" + (f": {description}" if description else "") + "); the key or the account was deleted or disabled",
            hint="create a new JSON key (IAM & Admin > Service accounts > the account > Keys > Add key) and store it: "
            f"mailctl auth login {profile_name} --service-account-key key.json",
        )
    if service_account:
        return AuthError(
            f"profile {profile_name!r}: {doing} failed: Google refused the service account ({error}"
            + (f": {description}" if description else "") + ")",
            hint="check that the key is still active, the clock is right, and that domain-wide delegation grants this "
            "client id the scope (Workspace Admin console > Security > API controls > Domain-wide delegation); "
            "the profile's username must be a mailbox in that domain",
        )
    table = {
        "invalid_grant": ("the stored sign-in is no longer valid (expired or revoked; apps in 'Testing' publishing "
                          "status lose refresh tokens after 7 days)", "run: mailctl auth login {name}"),
        "invalid_client": ("Google rejected the client id or client secret",
                           "check the client id (mailctl profile edit {name} --client-id ID) and the stored client secret"),
        "unauthorized_client": ("the client is not allowed to do this (for a service account: domain-wide delegation "
                                "for this client id and scope is missing in the Workspace admin console)",
                                "see docs/oauth.md, 'Service accounts'"),
        "access_denied": ("the sign-in was declined", "start again: mailctl auth login {name}"),
        "admin_policy_enforced": ("the Workspace admin blocks this app", "ask the admin to allow it (Admin console > Security > API controls)"),
        "invalid_scope": ("Google refused the requested scopes", "check the profile's scopes: mailctl profile show {name}"),
        "expired_token": ("the code expired before the sign-in finished", "start again: mailctl auth login {name}"),
    }
    meaning, hint = table.get(error, (error or "error", "run: mailctl auth login {name}"))
    detail = f": {description}" if description else ""
    cls = AuthError
    return cls(f"profile {profile_name!r}: {doing} failed: {meaning}{detail}", hint=hint.format(name=profile_name))


# RFC 6749 5.2 / RFC 8628 3.5 error codes -> (what happened, what to do, exit class).
OAUTH_ERRORS: dict[str, tuple[str, str, type]] = {
    "invalid_grant": ("the sign-in is no longer valid (the refresh token expired or was revoked, or the code was used "
                      "already or expired)", LOGIN, AuthError),
    "invalid_client": ("the authorization server rejected the client (client_id unknown, or the client secret wrong or missing)",
                       "check the client id (mailctl profile edit {name} --client-id ID) and store the secret again: "
                       "mailctl auth login {name} --client-secret-stdin", AuthError),
    "unauthorized_client": ("this client is not allowed to use this grant", "allow the grant (authorization code, device "
                            "code, refresh token) for the client at the authorization server, then: mailctl auth login {name}", ConfigError),
    "unsupported_grant_type": ("the server does not support this grant", "use another flow (mailctl auth login {name} --flow "
                               "paste), or check that token_url is the token endpoint", ConfigError),
    "invalid_scope": ("the server refused the requested scopes", "set the scopes it issues: mailctl profile edit {name} "
                      "--scopes 'SCOPE ...', then: mailctl auth login {name}", ConfigError),
    "invalid_request": ("the server rejected the request as malformed", "check token_url / authorization_url (mailctl profile "
                        "show {name}), then: mailctl auth login {name}", ConfigError),
    "redirect_uri_mismatch": ("the redirect URI is not one registered for the client", "register it at the authorization "
                              "server, or set the registered one: mailctl profile edit {name} --redirect-uri URI", ConfigError),
    "access_denied": ("the sign-in was declined", "start again: mailctl auth login {name}", AuthError),
    "expired_token": ("the code expired before the sign-in finished", "start again: mailctl auth login {name}", AuthError),
    "server_error": ("the authorization server failed", "retry later", TemporaryFailure),
    "temporarily_unavailable": ("the authorization server is temporarily unavailable", "retry later", TemporaryFailure),
}


def _clean(text: Any, limit: int = 200) -> str:
    """A server-supplied string fit for a one-line message: first line, printable, bounded."""
    if not isinstance(text, str):
        return ""
    line = _first_line(text)
    line = "".join(c for c in line if c.isprintable())
    return line[:limit] + ("..." if len(line) > limit else "")


def oauth_error(error: Any, description: Any, profile_name: str, *, doing: str, status: int | None = None,
                server: str | None = None) -> MailctlError:
    """A token, device or authorization endpoint's error (RFC 6749 5.2) -> one line with the
    fix. With no error code the HTTP status decides (404: wrong URL; 5xx: retry later)."""
    code = _clean(error, 60)
    detail = _clean(description)
    where = f" ({server})" if server else ""
    if code in OAUTH_ERRORS:
        meaning, hint, cls = OAUTH_ERRORS[code]
        text = f"profile {profile_name!r}: {doing} failed: {meaning} ({code}" + (f": {detail}" if detail else "") + ")"
        return cls(text, hint=hint.format(name=profile_name))
    if code:
        return AuthError(f"profile {profile_name!r}: {doing} failed: {code}" + (f": {detail}" if detail else ""),
                         hint=LOGIN.format(name=profile_name))
    if status is not None and status >= 500:
        return TemporaryFailure(f"profile {profile_name!r}: {doing}: the server{where} answered HTTP {status}", hint="retry later")
    if status in (404, 405):
        return ConfigError(f"profile {profile_name!r}: {doing}: nothing answers OAuth at that URL{where} (HTTP {status})",
                           hint=f"check the endpoint URLs: mailctl profile show {profile_name}")
    return ProtocolError(f"profile {profile_name!r}: {doing}: the server{where} answered HTTP {status} without an OAuth "
                         "reply (no access_token, no error)",
                         hint=f"check that the endpoint URLs are the OAuth server's: mailctl profile show {profile_name}")


def needs_login(profile_name: str, why: str) -> AuthError:
    return AuthError(f"profile {profile_name!r}: {why}", hint=f"run: mailctl auth login {profile_name}").with_context(
        failure_id="login-needed")


__all__ = ["ENTRA_CODES", "OAUTH_ERRORS", "entra_error", "google_error", "oauth_error", "needs_login", "ExitCode"]
