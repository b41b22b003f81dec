"""Microsoft identity platform through MSAL: device code sign-in (delegated), client
credentials (app-only), silent refresh from the stored SerializableTokenCache, status, logout.

MSAL and requests are imported here only, so `import mailctl.oauth` stays light."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import urlsplit

from mailctl.errors import AuthError, ConfigError, TemporaryFailure
from mailctl.oauth import store
from mailctl.oauth.result import LoginResult, _iso
from mailctl.oauth.hints import entra_error, needs_login
from mailctl.oauth.scopes import app_only, identity_provider_url, microsoft_authority, scopes_for

RESERVED = {"openid", "profile", "offline_access"}  # MSAL adds these itself and refuses them
RT_INACTIVITY_DAYS = 90


def _scopes(profile) -> list[str]:
    return [s for s in scopes_for(profile) if s not in RESERVED]


def _guard(profile, doing: str, fn: Callable[[], Any]) -> Any:
    """Run an MSAL call; turn transport failures into mailctl errors."""
    from msal.exceptions import MsalServiceError

    from mailctl.oauth.http import network_call

    # name the login host itself (login.microsoftonline.us for usgov): not the Graph host
    authority = urlsplit(identity_provider_url(profile)).hostname or "the Microsoft login endpoint"
    try:
        return network_call(profile, doing, fn, peer=authority)
    except MsalServiceError as exc:
        raise TemporaryFailure(
            f"profile {profile.name!r}: {doing}: the identity provider failed ({exc.error}: {str(exc.error_description or '')[:200]})",
            hint="retry later",
        ) from None
    except ValueError as exc:
        text = str(exc)
        if "OIDC Discovery failed" in text or "Unable to get authority configuration" in text:
            raise ConfigError(
                f"profile {profile.name!r}: {doing}: the login authority was not found (tenant id or authority wrong?)",
                hint=f"check: mailctl profile edit {profile.name} --tenant-id TENANT_ID (or --authority URL)",
            ) from None
        raise


def _build(profile, secrets, cache, *, confidential: bool):
    import msal

    authority = microsoft_authority(profile)
    kwargs: dict[str, Any] = dict(
        authority=authority,
        token_cache=cache,
        http_client=_http_client(profile),
    )
    if profile.values.get("authority"):
        # A custom authority (ADFS, tests): never ask login.microsoftonline.com about it.
        kwargs["instance_discovery"] = False
    client_id = profile.values["client_id"]
    if confidential:
        secret = secrets.get(profile, "client_secret")
        if not secret:
            raise AuthError(
                f"profile {profile.name!r}: auth=client-credentials needs the app's client secret, and none is stored",
                hint=f"store it (the secret's Value): mailctl profile edit {profile.name} --password-stdin",
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MSAL warns about /common; the profile names a tenant
            return _guard(profile, "connecting to the identity provider", lambda: msal.ConfidentialClientApplication(
                client_id, client_credential=secret, **kwargs))
    return _guard(profile, "connecting to the identity provider", lambda: msal.PublicClientApplication(client_id, **kwargs))


def _http_client(profile):
    from mailctl.oauth.http import session_for

    return session_for(profile)


def _cache(doc: dict | None):
    import msal

    cache = msal.SerializableTokenCache()
    if doc and doc.get("msal_cache"):
        cache.deserialize(doc["msal_cache"])
    return cache


def _persist(profile, secrets, doc: dict, cache, *, refreshed: bool, required: bool) -> bool:
    """Store the token cache; False when it could not be kept (required=False, no keyring)."""
    if not cache.has_state_changed and not required:
        return True
    doc["msal_cache"] = cache.serialize()
    if refreshed:
        doc["refreshed_at"] = time.time()
    return store.save(profile, secrets, doc, required=required)


# --- device code sign-in -------------------------------------------------------------
@dataclass
class DeviceLogin:
    profile: Any
    secrets: Any
    app: Any
    cache: Any
    flow: dict
    scopes: list[str]

    @property
    def verification_uri(self) -> str:
        return self.flow.get("verification_uri") or self.flow.get("verification_url") or ""

    @property
    def user_code(self) -> str:
        return self.flow["user_code"]

    @property
    def expires_at(self) -> float:
        return float(self.flow.get("expires_at") or 0)

    @property
    def message(self) -> str:
        return self.flow.get("message") or f"Open {self.verification_uri} and enter the code {self.user_code}"


def start_device_login(profile, secrets) -> DeviceLogin:
    if app_only(profile):
        raise ConfigError(f"profile {profile.name!r} uses client credentials: there is no user sign-in",
                          hint=f"check the app's access with: mailctl auth login {profile.name}")
    cache = _cache(None)
    app = _build(profile, secrets, cache, confidential=False)
    scopes = _scopes(profile)
    flow = _guard(profile, "starting the device code sign-in", lambda: app.initiate_device_flow(scopes=scopes))
    if "user_code" not in flow:
        raise entra_error(flow, profile.name, doing="starting the device code sign-in")
    return DeviceLogin(profile, secrets, app, cache, flow, scopes)


def finish_device_login(
    login: DeviceLogin,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.time,
    on_tick: Callable[[float], None] | None = None,
) -> LoginResult:
    """Poll until the user signs in, the code expires or the server refuses. Ctrl-C
    (KeyboardInterrupt) propagates after the flow is marked expired; nothing is stored."""
    profile = login.profile
    flow = login.flow
    try:
        while True:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "Attempted too soon" when our clock is not MSAL's
                result = _guard(profile, "waiting for the sign-in", lambda: login.app.acquire_token_by_device_flow(
                    flow, exit_condition=lambda f: True))
            if "access_token" in result:
                break
            if result.get("error") not in ("authorization_pending", "slow_down"):
                raise entra_error(result, profile.name, doing="device code sign-in")
            wait_until = clock() + max(1, int(flow.get("interval", 5)))  # MSAL adds 5 s on slow_down
            while True:
                now = clock()
                if now >= login.expires_at:
                    raise AuthError(
                        f"profile {profile.name!r}: the code {login.user_code} expired before the sign-in finished",
                        hint=f"start again: mailctl auth login {profile.name}",
                    )
                if now >= wait_until:
                    break
                if on_tick:
                    on_tick(login.expires_at - now)
                sleep(min(1.0, wait_until - now))
    except KeyboardInterrupt:
        flow["expires_at"] = 0
        raise
    account = (result.get("id_token_claims") or {}).get("preferred_username")
    doc = {
        "provider": "microsoft", "flow": "device", "account": account, "scopes": login.scopes,
        "created_at": time.time(), "refreshed_at": time.time(), "home_account_id": _home_account_id(login.app, account),
    }
    _persist(profile, login.secrets, doc, login.cache, refreshed=True, required=True)
    warnings_ = []
    username = profile.values.get("username")
    if username and account and username.lower() != account.lower():
        warnings_.append(
            f"signed in as {account}, but the profile's username is {username}; SMTP XOAUTH2 needs them to match "
            f"(mailctl profile edit {profile.name} --username {account})"
        )
    return LoginResult(profile.name, "microsoft", "device", account, login.scopes,
                       time.time() + float(result.get("expires_in") or 0), "refresh_token" in result, warnings_)


def _home_account_id(app, username: str | None) -> str | None:
    accounts = app.get_accounts(username=username) if username else app.get_accounts()
    return accounts[0].get("home_account_id") if accounts else None


# --- app-only -----------------------------------------------------------------------
def login_client_credentials(profile, secrets) -> LoginResult:
    """Check the app's credentials by getting a token now, and keep it."""
    doc = store.load(profile, secrets) or {}
    token, result, cache = _client_token(profile, secrets, doc, force=True)
    doc.update({"provider": "microsoft", "flow": "client-credentials", "account": f"app:{profile.values['client_id']}",
                "scopes": _scopes(profile), "created_at": time.time()})
    # app-only tokens are a cache: no usable keyring means no cache, not a failed login
    kept = _persist(profile, secrets, doc, cache, refreshed=True, required=False)
    notes = [] if kept else ["the app's credentials work, but the token could not be cached (no usable keyring); "
                             "each run fetches a new one"]
    return LoginResult(profile.name, "microsoft", "client-credentials", doc["account"], _scopes(profile),
                       time.time() + float(result.get("expires_in") or 0), False, notes)


def _client_token(profile, secrets, doc: dict, *, force: bool = False):
    cache = _cache(doc)
    app = _build(profile, secrets, cache, confidential=True)
    scopes = _scopes(profile)
    if force:
        # Drop cached app tokens so the identity provider checks the secret now.
        for at in list(cache.search(cache.CredentialType.ACCESS_TOKEN)):
            cache.remove_at(at)
    result = _guard(profile, "getting an app-only token", lambda: app.acquire_token_for_client(scopes=scopes))
    if "access_token" not in result:
        raise entra_error(result, profile.name, doing="getting an app-only token (client credentials)")
    return result["access_token"], result, cache


# --- silent use ---------------------------------------------------------------------
def get_access_token(profile, secrets, *, force_refresh: bool = False) -> str:
    if app_only(profile):
        doc = store.load(profile, secrets) or {"provider": "microsoft", "flow": "client-credentials"}
        token, result, cache = _client_token(profile, secrets, doc, force=force_refresh)
        if cache.has_state_changed:
            _persist(profile, secrets, doc, cache, refreshed=True, required=False)
        return token
    token, _ = _silent(profile, secrets, force_refresh=force_refresh)
    return token


def _silent(profile, secrets, *, force_refresh: bool = False) -> tuple[str, dict]:
    doc = store.load(profile, secrets, required=True)  # the refresh token is the credential
    if not doc or doc.get("provider") != "microsoft" or not doc.get("msal_cache"):
        raise needs_login(profile.name, "not signed in (no OAuth tokens stored)")
    cache = _cache(doc)
    app = _build(profile, secrets, cache, confidential=False)
    account = _account(app, doc)
    if account is None:
        raise needs_login(profile.name, "the stored tokens hold no account")
    scopes = _scopes(profile)
    result = _guard(profile, "refreshing the access token", lambda: app.acquire_token_silent_with_error(
        scopes, account, force_refresh=force_refresh))
    if not result:
        raise needs_login(profile.name, "no usable refresh token is stored (sign in again)")
    if "access_token" not in result:
        raise entra_error(result, profile.name, doing="refreshing the access token")
    refreshed = result.get("token_source") == "identity_provider"
    if cache.has_state_changed:
        _persist(profile, secrets, doc, cache, refreshed=refreshed, required=False)
    return result["access_token"], result


def _account(app, doc: dict):
    accounts = app.get_accounts()
    for acc in accounts:
        if doc.get("home_account_id") and acc.get("home_account_id") == doc["home_account_id"]:
            return acc
    for acc in accounts:
        if doc.get("account") and (acc.get("username") or "").lower() == doc["account"].lower():
            return acc
    return accounts[0] if accounts else None


# --- status / logout ----------------------------------------------------------------
def status(profile, secrets, *, check: bool = True, clock: Callable[[], float] = time.time) -> dict[str, Any]:
    """What is stored and whether it still works. With check=True, a silent token request
    (refreshing when needed) proves access; errors become `needs_login` with the reason."""
    now = clock()
    doc = store.load(profile, secrets, required=not app_only(profile))
    info: dict[str, Any] = {
        "profile": profile.name, "provider": "microsoft", "auth": profile.values.get("auth"),
        "flow": "client-credentials" if app_only(profile) else "device",
        "scopes": _scopes(profile), "account": None, "access": False, "needs_login": False,
        "access_token_expires_at": None, "refresh_token": False, "refresh_token_age_days": None,
        "signed_in_at": None, "source": (doc or {}).get("_source"), "warnings": [], "error": None, "hint": None,
    }
    if app_only(profile):
        info["account"] = f"app:{profile.values.get('client_id')}"
        info["client_secret"] = bool(secrets.get(profile, "client_secret"))
    if doc:
        info["account"] = doc.get("account") or info["account"]
        info["signed_in_at"] = _iso(doc.get("created_at"))
        cache = _cache(doc)
        ats = list(cache.search(cache.CredentialType.ACCESS_TOKEN, now=0))
        if ats:
            best = max(ats, key=lambda a: int(a.get("expires_on") or 0))
            info["access_token_expires_at"] = _iso(int(best.get("expires_on") or 0))
            info["scopes"] = (best.get("target") or "").split() or info["scopes"]
        rts = list(cache.search(cache.CredentialType.REFRESH_TOKEN))
        info["refresh_token"] = bool(rts)
        if rts and doc.get("refreshed_at"):
            age = (now - float(doc["refreshed_at"])) / 86400
            info["refresh_token_age_days"] = round(age, 1)
            if age > RT_INACTIVITY_DAYS - 15:
                info["warnings"].append(
                    f"the refresh token was last used {age:.0f} days ago; Microsoft refresh tokens die after "
                    f"{RT_INACTIVITY_DAYS} days unused (use the profile, or run: mailctl auth token {profile.name})"
                )
    elif not app_only(profile):
        info.update(needs_login=True, error="not signed in", hint=f"run: mailctl auth login {profile.name}")
        return info
    if check:
        from mailctl.errors import MailctlError

        try:
            if app_only(profile):
                get_access_token(profile, secrets)
                doc = store.load(profile, secrets) or doc
            else:
                _, result = _silent(profile, secrets)
                info["access_token_expires_at"] = _iso(now + float(result.get("expires_in") or 0))
                doc = store.load(profile, secrets) or doc
                if doc and doc.get("refreshed_at"):
                    info["refresh_token_age_days"] = round((now - float(doc["refreshed_at"])) / 86400, 1)
            info["access"] = True
        except AuthError as exc:
            info.update(needs_login=True, error=exc.message, hint=exc.hint)
        except MailctlError as exc:
            info.update(error=exc.message, hint=exc.hint, error_exit_code=int(exc.exit_code))
    else:
        info["access"] = bool(info["refresh_token"] or info["access_token_expires_at"])
    return info


def logout(profile, secrets) -> dict[str, Any]:
    removed = store.delete(profile, secrets)
    return {"profile": profile.name, "provider": "microsoft", "removed": removed, "revoked": False,
            "note": "Microsoft offers no token revocation endpoint for public clients; a tenant admin can "
                    "revoke sessions (Revoke-MgUserSignInSession)" if removed and not app_only(profile) else None}
