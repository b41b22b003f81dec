"""Google: the loopback redirect flow with PKCE (paste or SSH-forward on a headless server, a
local browser on a desktop), the device flow (refused by Google for Gmail scopes: we explain),
service accounts with domain-wide delegation, silent refresh, revocation.

google-auth, google-auth-oauthlib and requests are imported inside functions."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

from mailctl.errors import AuthError, ConfigError, UnavailableError
from mailctl.oauth import loopback, store
from mailctl.oauth.hints import google_error, needs_login
from mailctl.oauth.result import LoginResult, _iso
from mailctl.oauth.scopes import GOOGLE_MAIL_SCOPE, google_endpoints, scopes_for

EARLY_REFRESH = 300  # refresh when under 5 minutes are left (MSAL's rule too)
TESTING_DAYS = 7
PENDING_TTL = loopback.PENDING_TTL

FLOWS_THAT_WORK = (
    "use --flow paste (the default on a server: open the URL on any machine, then paste the final "
    "http://localhost... address back, or forward the port with ssh -L), --flow browser on a desktop, "
    "or a service account with domain-wide delegation for Workspace (auth = service-account)"
)


def _client(profile, secrets) -> tuple[str, str | None]:
    client_id = profile.values.get("client_id")
    if not client_id:
        raise ConfigError(
            f"profile {profile.name!r}: OAuth with Google needs client_id",
            hint="create an OAuth client of type 'Desktop app' in Google Cloud console > APIs & Services > "
            f"Credentials, then: mailctl profile edit {profile.name} --client-id ID (see docs/oauth.md)",
        )
    return client_id, secrets.get(profile, "client_secret")


def _session(profile):
    from mailctl.oauth.http import session_for

    return session_for(profile)


def _network(profile, doing: str, fn: Callable[[], Any]) -> Any:
    from mailctl.oauth.http import network_call

    return network_call(profile, doing, fn, peer="Google")


# --- loopback / paste (the listener and the wait are provider-neutral: oauth.loopback) ---
wait_for_redirect = loopback.wait_for_redirect


GoogleLogin = loopback.PendingLogin


def _flow(profile, secrets, redirect_uri: str, *, code_verifier: str | None = None, state: str | None = None):
    from google_auth_oauthlib.flow import Flow

    client_id, client_secret = _client(profile, secrets)
    urls = google_endpoints(profile)
    config = {"installed": {
        "client_id": client_id, "client_secret": client_secret or "",
        "auth_uri": urls["auth"], "token_uri": urls["token"], "redirect_uris": [redirect_uri],
    }}
    flow = Flow.from_client_config(config, scopes=scopes_for(profile), redirect_uri=redirect_uri,
                                   code_verifier=code_verifier, state=state)
    session = _session(profile)
    flow.oauth2session.trust_env = False
    flow.oauth2session.verify = session.session.verify
    flow.oauth2session.proxies = session.session.proxies
    return flow


def start_loopback_login(profile, secrets, *, port: int | None = None, listen: bool = True, flow_name: str = "paste") -> GoogleLogin:
    """Build the authorization URL (offline access, consent, PKCE) and, with listen=True,
    listen on the loopback port for the redirect."""
    redirect_uri, listener, listen_error, got = loopback.listen(
        profile, profile.values.get("redirect_uri") or "", port=port, listen=listen)
    flow = _flow(profile, secrets, redirect_uri)
    url, state = flow.authorization_url(access_type="offline", prompt="consent", include_granted_scopes="true")
    return GoogleLogin(profile, secrets, url, redirect_uri, state, flow.code_verifier, scopes_for(profile), flow_name,
                       listener, listen_error, got)


def complete_login(login: GoogleLogin, redirect_url: str) -> LoginResult:
    """Check the redirect (state, error), exchange the code (PKCE), store the tokens."""
    profile = login.profile
    code = _code_from_redirect(profile, redirect_url, login.state)
    flow = _flow(profile, login.secrets, login.redirect_uri, code_verifier=login.code_verifier, state=login.state)
    os.environ.setdefault("OAUTHLIB_RELAX_TOKEN_SCOPE", "1")  # Google may add granted scopes
    token = _exchange(profile, lambda: flow.fetch_token(code=code))
    return _save_user_tokens(profile, login.secrets, token, login.flow_name)


def _code_from_redirect(profile, redirect_url: str, state: str) -> str:
    query = loopback.redirect_query(profile, redirect_url, state)
    if "error" in query:
        raise google_error(query["error"], query.get("error_description", ""), profile.name, doing="Google sign-in")
    return query["code"]


def _exchange(profile, fn):
    from oauthlib.oauth2.rfc6749.errors import OAuth2Error

    try:
        return _network(profile, "exchanging the code for tokens", fn)
    except OAuth2Error as exc:
        raise google_error(exc.error, exc.description or "", profile.name, doing="exchanging the code for tokens") from None


def _save_user_tokens(profile, secrets, token: dict, flow_name: str) -> LoginResult:
    now = time.time()
    expires_at = now + float(token.get("expires_in") or 0) if token.get("expires_in") else token.get("expires_at")
    scopes = token.get("scope") or scopes_for(profile)
    if isinstance(scopes, str):
        scopes = scopes.split()
    doc = {
        "provider": "google", "flow": flow_name, "account": profile.values.get("username") or None,
        "scopes": list(scopes), "access_token": token["access_token"], "refresh_token": token.get("refresh_token"),
        "expires_at": expires_at, "token_uri": google_endpoints(profile)["token"], "created_at": now, "refreshed_at": now,
    }
    store.save(profile, secrets, doc)
    warnings = []
    if not token.get("refresh_token"):
        warnings.append("Google sent no refresh token: mailctl must ask you to sign in again when this access token expires")
    warnings.append(f"if the app's OAuth consent screen is in 'Testing' status, Google revokes this refresh token after {TESTING_DAYS} days; publish the app to avoid it")
    return LoginResult(profile.name, "google", flow_name, doc["account"], list(scopes), expires_at, bool(token.get("refresh_token")), warnings)


# --- two-step paste for scripts -----------------------------------------------------
def save_pending(login: GoogleLogin) -> None:
    """Keep state + PKCE verifier so a later `auth login --redirect-url URL` can finish."""
    loopback.save_pending(login.profile, {"provider": "google", "state": login.state, "code_verifier": login.code_verifier,
                                          "redirect_uri": login.redirect_uri, "scopes": login.scopes})


def load_pending(profile, secrets) -> GoogleLogin:
    data = loopback.load_pending(profile, "google")
    return GoogleLogin(profile, secrets, "", data["redirect_uri"], data["state"], data["code_verifier"], data["scopes"], "paste")


def clear_pending(profile) -> None:
    loopback.clear_pending(profile)


# --- device flow (RFC 8628) ---------------------------------------------------------
@dataclass
class GoogleDeviceLogin:
    profile: Any
    secrets: Any
    device_code: str
    user_code: str
    verification_uri: str
    interval: int
    expires_at: float
    scopes: list[str]

    @property
    def message(self) -> str:
        return f"To sign in, open {self.verification_uri} and enter the code {self.user_code}"


def start_device_login(profile, secrets) -> GoogleDeviceLogin:
    client_id, _ = _client(profile, secrets)
    session = _session(profile)
    scopes = scopes_for(profile)
    resp = _network(profile, "starting the device sign-in", lambda: session.post(
        google_endpoints(profile)["device"], data={"client_id": client_id, "scope": " ".join(scopes)}))
    data = _json(resp)
    if data.get("error") == "invalid_scope":
        raise AuthError(
            f"profile {profile.name!r}: Google refuses the device flow for Gmail scopes ({' '.join(scopes)}); "
            "it answered invalid_scope",
            hint=FLOWS_THAT_WORK,
        )
    if "device_code" not in data:
        raise google_error(data.get("error", f"HTTP {resp.status_code}"), data.get("error_description", ""), profile.name,
                           doing="starting the device sign-in")
    return GoogleDeviceLogin(profile, secrets, data["device_code"], data["user_code"],
                             data.get("verification_url") or data.get("verification_uri", ""), int(data.get("interval", 5)),
                             time.time() + int(data.get("expires_in", 1800)), scopes)


def finish_device_login(login: GoogleDeviceLogin, *, sleep=time.sleep, clock=time.time, on_tick=None) -> LoginResult:
    profile = login.profile
    client_id, client_secret = _client(profile, login.secrets)
    session = _session(profile)
    interval = max(1, login.interval)
    while True:
        data = {"client_id": client_id, "device_code": login.device_code,
                "grant_type": "urn:ietf:params:oauth:grant-type:device_code"}
        if client_secret:
            data["client_secret"] = client_secret
        reply = _json(_network(profile, "waiting for the sign-in", lambda: session.post(google_endpoints(profile)["token"], data=data)))
        if "access_token" in reply:
            return _save_user_tokens(profile, login.secrets, reply, "device")
        error = reply.get("error")
        if error == "slow_down":
            interval += 5
        elif error != "authorization_pending":
            raise google_error(error or "error", reply.get("error_description", ""), profile.name, doing="device sign-in")
        loopback.wait_to_poll(profile, login, interval, clock=clock, sleep=sleep, on_tick=on_tick)


def _json(resp) -> dict:
    try:
        data = resp.json()
    except ValueError:
        data = {}
    return data if isinstance(data, dict) else {}


# --- silent use ---------------------------------------------------------------------
def get_access_token(profile, secrets, *, force_refresh: bool = False) -> str:
    if profile.values.get("auth") == "service-account":
        return _service_account_token(profile, secrets, force_refresh=force_refresh)
    return _user_token(profile, secrets, force_refresh=force_refresh)[0]


def _fresh(doc: dict | None, now: float) -> bool:
    return bool(doc and doc.get("access_token") and float(doc.get("expires_at") or 0) - EARLY_REFRESH > now)


def _user_token(profile, secrets, *, force_refresh: bool = False) -> tuple[str, dict]:
    doc = store.load(profile, secrets, required=True)  # the refresh token is the credential
    if not doc or doc.get("provider") != "google":
        raise needs_login(profile.name, "not signed in (no OAuth tokens stored)")
    now = time.time()
    if _fresh(doc, now) and not force_refresh:
        return doc["access_token"], doc
    if not doc.get("refresh_token"):
        raise needs_login(profile.name, "the access token expired and no refresh token is stored")
    client_id, client_secret = _client(profile, secrets)
    session = _session(profile)
    data = {"grant_type": "refresh_token", "refresh_token": doc["refresh_token"], "client_id": client_id}
    if client_secret:
        data["client_secret"] = client_secret
    resp = _network(profile, "refreshing the access token", lambda: session.post(doc.get("token_uri") or google_endpoints(profile)["token"], data=data))
    reply = _json(resp)
    if "access_token" not in reply:
        raise google_error(reply.get("error", f"HTTP {resp.status_code}"), reply.get("error_description", ""), profile.name,
                           doing="refreshing the access token")
    doc["access_token"] = reply["access_token"]
    doc["expires_at"] = now + float(reply.get("expires_in") or 3600)
    if reply.get("refresh_token"):
        doc["refresh_token"] = reply["refresh_token"]
    doc["refreshed_at"] = now
    store.save(profile, secrets, doc, required=False)
    return doc["access_token"], doc


def _service_account_token(profile, secrets, *, force_refresh: bool = False) -> str:
    doc = store.load(profile, secrets)
    now = time.time()
    if doc and doc.get("flow") == "service-account" and _fresh(doc, now) and not force_refresh:
        return doc["access_token"]
    token, expires_at = _service_account_fetch(profile, secrets)
    store.save(profile, secrets, {"provider": "google", "flow": "service-account", "account": profile.values.get("username"),
                                  "scopes": scopes_for(profile), "access_token": token, "expires_at": expires_at,
                                  "created_at": (doc or {}).get("created_at") or now, "refreshed_at": now}, required=False)
    return token


def _service_account_fetch(profile, secrets) -> tuple[str, float]:
    import google.auth.exceptions
    from google.auth.transport.requests import Request
    from google.oauth2 import service_account

    raw = secrets.get(profile, "service_account_key")
    if not raw:
        raise AuthError(
            f"profile {profile.name!r}: auth=service-account needs the service account's key JSON, and none is stored",
            hint=f"store it: mailctl auth login {profile.name} --service-account-key key.json",
        )
    subject = profile.values.get("username")
    if not subject:
        raise ConfigError(f"profile {profile.name!r}: a service account sends as a Workspace mailbox; set it as username",
                          hint=f"mailctl profile edit {profile.name} --username user@yourdomain")
    try:
        info = json.loads(raw)
        creds = service_account.Credentials.from_service_account_info(info, scopes=scopes_for(profile), subject=subject)
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"profile {profile.name!r}: the stored service account key is not a valid key JSON ({type(exc).__name__})",
                          hint=f"store the key file again: mailctl auth login {profile.name} --service-account-key key.json") from None
    session = _session(profile)
    try:
        _network(profile, "getting a service account token", lambda: creds.refresh(Request(session=session.session)))
    except google.auth.exceptions.RefreshError as exc:
        data = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], dict) else {}
        raise google_error(data.get("error", "error"), data.get("error_description", str(exc.args[0]) if exc.args else ""),
                           profile.name, doing="getting a service account token", service_account=True) from None
    except google.auth.exceptions.TransportError:
        raise UnavailableError(f"profile {profile.name!r}: cannot reach Google's token endpoint",
                               hint="check the network and the profile's proxy setting") from None
    expiry = creds.expiry.replace(tzinfo=timezone.utc).timestamp() if creds.expiry else time.time() + 3600
    return creds.token, expiry


def check_service_account_key(text: str) -> str:
    """The key JSON, compacted, after checking it is a service account key (never echoed)."""
    from mailctl.errors import ValidationError

    try:
        info = json.loads(text)
    except ValueError:
        raise ValidationError("the service account key is not JSON (expected the key file downloaded from Google Cloud)") from None
    missing = [k for k in ("type", "client_email", "private_key", "token_uri") if not (isinstance(info, dict) and info.get(k))]
    if missing or info.get("type") != "service_account":
        raise ValidationError(
            "not a service account key file" + (f" (missing {', '.join(missing)})" if missing else ""),
            hint="IAM & Admin > Service accounts > the account > Keys > Add key > JSON",
        )
    return json.dumps(info, separators=(",", ":"))


def login_service_account(profile, secrets) -> LoginResult:
    token = _service_account_token(profile, secrets, force_refresh=True)
    doc = store.load(profile, secrets) or {}
    return LoginResult(profile.name, "google", "service-account", profile.values.get("username"), scopes_for(profile),
                       doc.get("expires_at"), False, [])


# --- status / logout ----------------------------------------------------------------
def status(profile, secrets, *, check: bool = True) -> dict[str, Any]:
    now = time.time()
    sa = profile.values.get("auth") == "service-account"
    doc = store.load(profile, secrets, required=not sa)  # a service account's token is only a cache
    info: dict[str, Any] = {
        "profile": profile.name, "provider": "google", "auth": profile.values.get("auth"),
        "flow": "service-account" if sa else (doc or {}).get("flow"), "scopes": scopes_for(profile),
        "account": profile.values.get("username"), "access": False, "needs_login": False,
        "access_token_expires_at": None, "refresh_token": False, "refresh_token_age_days": None,
        "signed_in_at": None, "source": (doc or {}).get("_source"), "warnings": [], "error": None, "hint": None,
    }
    if sa:
        info["service_account_key"] = bool(secrets.get(profile, "service_account_key"))
    if doc:
        info["account"] = doc.get("account") or info["account"]
        info["scopes"] = doc.get("scopes") or info["scopes"]
        info["access_token_expires_at"] = _iso(doc.get("expires_at"))
        info["refresh_token"] = bool(doc.get("refresh_token"))
        info["signed_in_at"] = _iso(doc.get("created_at"))
        if doc.get("refresh_token") and doc.get("created_at"):
            age = (now - float(doc["created_at"])) / 86400
            info["refresh_token_age_days"] = round(age, 1)
            if age < TESTING_DAYS:
                until = datetime.fromtimestamp(float(doc["created_at"]) + TESTING_DAYS * 86400, timezone.utc)
                info["warnings"].append(
                    f"if the Google app is in 'Testing' publishing status, this refresh token dies on "
                    f"{until.strftime('%Y-%m-%d %H:%M')} UTC ({TESTING_DAYS} days after consent); publish the app to avoid it"
                )
    elif not sa:
        info.update(needs_login=True, error="not signed in", hint=f"run: mailctl auth login {profile.name}")
        return info
    if check:
        from mailctl.errors import MailctlError

        try:
            get_access_token(profile, secrets)
            doc = store.load(profile, secrets) or doc
            info["access_token_expires_at"] = _iso((doc or {}).get("expires_at"))
            info["access"] = True
        except AuthError as exc:
            info.update(needs_login=True, error=exc.message, hint=exc.hint)
        except MailctlError as exc:
            info.update(error=exc.message, hint=exc.hint, error_exit_code=int(exc.exit_code))
    else:
        info["access"] = bool(info["refresh_token"] or _fresh(doc, now))
    return info


def logout(profile, secrets, *, revoke: bool = True) -> dict[str, Any]:
    doc = store.load(profile, secrets)
    revoked = False
    warning = None
    if revoke and doc and doc.get("flow") != "service-account":
        token = doc.get("refresh_token") or doc.get("access_token")
        if token:
            try:
                session = _session(profile)
                resp = _network(profile, "revoking the token", lambda: session.post(
                    google_endpoints(profile)["revoke"], data={"token": token}))
                revoked = resp.status_code == 200
                if not revoked:
                    warning = f"Google did not revoke the token (HTTP {resp.status_code}); it was removed here anyway"
            except UnavailableError as exc:
                warning = f"{exc.message}; the token was removed here but not revoked (revoke it at https://myaccount.google.com/permissions)"
    removed = store.delete(profile, secrets)
    clear_pending(profile)
    return {"profile": profile.name, "provider": "google", "removed": removed, "revoked": revoked, "warning": warning}


__all__ = ["GOOGLE_MAIL_SCOPE", "FLOWS_THAT_WORK"]
