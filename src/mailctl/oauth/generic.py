"""Any OAuth 2.0 authorization server (oauth_provider = "generic"): the endpoints come from
the profile, as in SupportCenter Plus's form (client id, client secret, authorization URL,
token URL, scope, redirect URL), not from a provider's discovery document.

- authorization code with PKCE (RFC 7636) over the loopback redirect, a pasted address, or
  `--no-wait` then `--redirect-url` (oauth.loopback, shared with Google);
- the device authorization grant (RFC 8628) when device_authorization_url is set;
- refresh (rotated refresh tokens are kept), revocation (RFC 7009) when revocation_url is set;
- client authentication: HTTP Basic with the client secret (RFC 6749 2.3.1, which servers
  must support), falling back once to the secret in the form when the server answers
  invalid_client; no secret: a public client (client_id in the form, PKCE).

Every endpoint must be https. Replies are read up to MAX_REPLY bytes; token endpoint errors
become one-line messages with the fix (oauth.hints.oauth_error). requests is imported
inside functions (through oauth.http)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from mailctl.errors import AuthError, ConfigError, ProtocolError, UnavailableError
from mailctl.oauth import loopback, store
from mailctl.oauth.hints import needs_login, oauth_error
from mailctl.oauth.result import LoginResult, _iso
from mailctl.oauth.scopes import scopes_for

PROVIDER = "generic"
EARLY_REFRESH = 300  # refresh when under 5 minutes are left (as for Microsoft and Google)
ASSUMED_LIFETIME = 3600  # a token reply without expires_in: assume an hour
MAX_REPLY = 64 * 1024  # a token endpoint's JSON reply is a few hundred bytes
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
ENDPOINT_FIELDS = {"auth": "authorization_url", "token": "token_url",
                   "device": "device_authorization_url", "revoke": "revocation_url"}


# --- configuration ------------------------------------------------------------------
def endpoints(profile) -> dict[str, str | None]:
    """The profile's endpoints; each must be https, and the token endpoint is required."""
    out: dict[str, str | None] = {}
    for key, name in ENDPOINT_FIELDS.items():
        url = profile.values.get(name) or ""
        if url and urlsplit(url).scheme != "https":
            raise ConfigError(
                f"profile {profile.name!r}: {name} must be an https:// URL for oauth_provider = generic "
                "(tokens and secrets never cross the network unencrypted)",
                hint=f"mailctl profile edit {profile.name} --{name.replace('_', '-')} https://...",
            )
        out[key] = url or None
    if not out["token"]:
        raise ConfigError(
            f"profile {profile.name!r}: oauth_provider = generic needs token_url (the authorization server's token endpoint)",
            hint=f"mailctl profile edit {profile.name} --token-url https://... --authorization-url https://... (see docs/oauth.md)",
        )
    return out


def check_auth(profile) -> None:
    """A user signs in (auth = oauth): app-only grants are Microsoft's and Google's here."""
    auth = profile.values.get("auth") or "oauth"
    if auth != "oauth":
        raise ConfigError(
            f"profile {profile.name!r}: auth = {auth} is not available with oauth_provider = generic (a user signs in)",
            hint=f"mailctl profile edit {profile.name} --auth oauth, then: mailctl auth login {profile.name}",
        )


def require(profile, key: str, flow: str) -> str:
    url = endpoints(profile)[key]
    if not url:
        name = ENDPOINT_FIELDS[key]
        raise ConfigError(f"profile {profile.name!r}: the {flow} flow needs {name}",
                          hint=f"mailctl profile edit {profile.name} --{name.replace('_', '-')} https://...")
    return url


def default_flow(profile, browser: bool) -> str:
    """browser on a desktop, else the device flow when the server has one, else paste."""
    urls = endpoints(profile)
    if urls["auth"] and browser:
        return "browser"
    if urls["device"]:
        return "device"
    return "paste"


@dataclass
class Client:
    client_id: str
    secret: str | None

    def auth(self, method: str, form: dict[str, str]) -> tuple[dict[str, str], Any]:
        """The form and requests' auth= for this client authentication method."""
        form = {**form, "client_id": self.client_id}
        if not self.secret:
            return form, None
        if method == "post":
            return {**form, "client_secret": self.secret}, None
        from urllib.parse import quote_plus

        from requests.auth import HTTPBasicAuth

        # RFC 6749 2.3.1: both are form-urlencoded before they go into Basic.
        return form, HTTPBasicAuth(quote_plus(self.client_id), quote_plus(self.secret))


def client(profile, secrets) -> Client:
    client_id = profile.values.get("client_id")
    if not client_id:
        raise ConfigError(
            f"profile {profile.name!r}: OAuth needs client_id (the id the authorization server gave this app)",
            hint=f"mailctl profile edit {profile.name} --client-id ID; a client secret goes in with: "
            f"mailctl auth login {profile.name} --client-secret-stdin",
        )
    return Client(client_id, secrets.get(profile, "client_secret"))


# --- talking to the server ------------------------------------------------------------
def _peer(url: str) -> str:
    parts = urlsplit(url)
    return parts.hostname + (f":{parts.port}" if parts.port else "") if parts.hostname else url


def post(profile, url: str, form: dict[str, str], *, auth=None, doing: str) -> tuple[int, dict[str, Any]]:
    """POST a form; (HTTP status, the JSON object replied, {} when it is not JSON). The reply
    is read up to MAX_REPLY bytes; redirects are not followed (a token must not wander)."""
    from mailctl.oauth.http import network_call, session_for

    session = session_for(profile)

    def call() -> tuple[int, bytes]:
        resp = session.post(url, data=form, auth=auth, headers={"Accept": "application/json"},
                            stream=True, allow_redirects=False)
        try:
            return resp.status_code, resp.raw.read(MAX_REPLY + 1, decode_content=True) or b""
        finally:
            resp.close()

    try:
        status, body = network_call(profile, doing, call, peer=_peer(url))
    finally:
        session.close()
    if len(body) > MAX_REPLY:
        raise ProtocolError(f"profile {profile.name!r}: {doing}: {_peer(url)} sent a reply over {MAX_REPLY // 1024} KiB; gave up",
                            hint="check that the URL is the OAuth endpoint, not a web page")
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        data = {}
    return status, data if isinstance(data, dict) else {}


def token_request(profile, cl: Client, form: dict[str, str], *, doing: str, method: str = "basic") -> tuple[dict[str, Any], str]:
    """POST to the token endpoint with client authentication; (the reply, the method that
    the server took). A Basic attempt answered invalid_client is retried once in the form."""
    url = endpoints(profile)["token"] or ""
    body, auth = cl.auth(method, form)
    status, reply = post(profile, url, body, auth=auth, doing=doing)
    if cl.secret and method == "basic" and reply.get("error") == "invalid_client":
        body, auth = cl.auth("post", form)
        status, retried = post(profile, url, body, auth=auth, doing=doing)
        if retried.get("error") != "invalid_client":
            return _checked(profile, status, retried, url, doing), "post"
    return _checked(profile, status, reply, url, doing), method


def _checked(profile, status: int, reply: dict[str, Any], url: str, doing: str) -> dict[str, Any]:
    """The reply unless it is an error (then raised as the error it is)."""
    if status == 200 and reply.get("access_token"):
        kind = str(reply.get("token_type") or "bearer").lower()
        if kind != "bearer":
            raise ProtocolError(f"profile {profile.name!r}: {doing}: the server issued a {kind!r} token; "
                                "mail servers take Bearer tokens only",
                                hint="ask the authorization server's admin for Bearer tokens (RFC 6750) for this client")
        return reply
    if reply.get("error") in ("authorization_pending", "slow_down"):
        return reply  # the device flow's poll decides
    raise oauth_error(reply.get("error"), reply.get("error_description"), profile.name, doing=doing,
                      status=status, server=_peer(url))


# --- tokens in the store ----------------------------------------------------------------
def _save_tokens(profile, secrets, reply: dict[str, Any], flow: str, method: str, scopes: list[str]) -> LoginResult:
    now = time.time()
    granted = reply.get("scope")
    granted = granted.split() if isinstance(granted, str) and granted else list(scopes)
    doc = {
        "provider": PROVIDER, "flow": flow, "account": profile.values.get("username") or None, "scopes": granted,
        "access_token": reply["access_token"], "refresh_token": reply.get("refresh_token"),
        "expires_at": _expiry(reply, now), "token_url": endpoints(profile)["token"], "client_auth": method,
        "created_at": now, "refreshed_at": now,
    }
    store.save(profile, secrets, doc)
    notes = [] if reply.get("refresh_token") else [
        "the server sent no refresh token: mailctl must ask you to sign in again when this access token expires "
        "(many servers need a scope such as offline_access for one)"]
    return LoginResult(profile.name, PROVIDER, flow, doc["account"], granted, doc["expires_at"],
                       bool(reply.get("refresh_token")), notes)


def _expiry(reply: dict[str, Any], now: float) -> float | None:
    try:
        seconds = float(reply.get("expires_in"))
    except (TypeError, ValueError):
        return None
    return now + seconds if seconds > 0 else None


def _fresh(doc: dict[str, Any] | None, now: float) -> bool:
    if not doc or not doc.get("access_token"):
        return False
    expires_at = doc.get("expires_at") or float(doc.get("refreshed_at") or 0) + ASSUMED_LIFETIME
    return float(expires_at) - EARLY_REFRESH > now


# --- authorization code + PKCE ------------------------------------------------------------
CodeLogin = loopback.PendingLogin


def start_code_login(profile, secrets, *, port: int | None = None, listen: bool = True, flow_name: str = "paste") -> CodeLogin:
    """The authorization URL (PKCE S256, state) and, with listen=True and a loopback
    redirect, a listener for the redirect. An https redirect_uri elsewhere is pasted back."""
    auth_url = require(profile, "auth", flow_name)
    cl = client(profile, secrets)
    redirect_uri, listener, listen_error, got = loopback.listen(
        profile, profile.values.get("redirect_uri") or "", port=port, listen=listen, allow_remote=True)
    verifier, challenge = loopback.pkce_pair()
    state = loopback.new_state()
    scopes = scopes_for(profile)
    params = {"response_type": "code", "client_id": cl.client_id, "redirect_uri": redirect_uri, "state": state,
              "code_challenge": challenge, "code_challenge_method": "S256"}
    if scopes:
        params["scope"] = " ".join(scopes)
    return CodeLogin(profile, secrets, _with_query(auth_url, params), redirect_uri, state, verifier, scopes, flow_name,
                     listener, listen_error, got)


def _with_query(url: str, params: dict[str, str]) -> str:
    """The URL with params added to the query it already has (ours win)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in params]
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query + list(params.items())), ""))


wait_for_redirect = loopback.wait_for_redirect


def complete_login(login: CodeLogin, redirect_url: str) -> LoginResult:
    """Check the redirect (state, error), exchange the code with the PKCE verifier, store."""
    profile = login.profile
    query = loopback.redirect_query(profile, redirect_url, login.state)
    if "error" in query:
        raise oauth_error(query["error"], query.get("error_description"), profile.name, doing="the sign-in")
    cl = client(profile, login.secrets)
    form = {"grant_type": "authorization_code", "code": query["code"], "redirect_uri": login.redirect_uri,
            "code_verifier": login.code_verifier}
    reply, method = token_request(profile, cl, form, doing="exchanging the code for tokens")
    return _save_tokens(profile, login.secrets, reply, login.flow_name, method, login.scopes)


def save_pending(login: CodeLogin) -> None:
    loopback.save_pending(login.profile, {"provider": PROVIDER, "state": login.state, "code_verifier": login.code_verifier,
                                          "redirect_uri": login.redirect_uri, "scopes": login.scopes})


def load_pending(profile, secrets) -> CodeLogin:
    data = loopback.load_pending(profile, PROVIDER)
    return CodeLogin(profile, secrets, "", data["redirect_uri"], data["state"], data["code_verifier"], data["scopes"], "paste")


# --- device authorization grant (RFC 8628) ------------------------------------------------
@dataclass
class DeviceLogin:
    profile: Any
    secrets: Any
    device_code: str
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    interval: int
    expires_at: float
    scopes: list[str]

    @property
    def message(self) -> str:
        text = f"To sign in, open {self.verification_uri} and enter the code {self.user_code}"
        return text + (f" (or open {self.verification_uri_complete})" if self.verification_uri_complete else "")


def start_device_login(profile, secrets) -> DeviceLogin:
    url = require(profile, "device", "device")
    cl = client(profile, secrets)
    scopes = scopes_for(profile)
    body, auth = cl.auth("basic", {"scope": " ".join(scopes)} if scopes else {})
    status, data = post(profile, url, body, auth=auth, doing="starting the device sign-in")
    if status != 200 or not data.get("device_code") or not data.get("user_code"):
        raise oauth_error(data.get("error"), data.get("error_description"), profile.name,
                          doing="starting the device sign-in", status=status, server=_peer(url))
    return DeviceLogin(profile, secrets, str(data["device_code"]), str(data["user_code"]),
                       str(data.get("verification_uri") or data.get("verification_url") or ""),
                       data.get("verification_uri_complete"), _int(data.get("interval"), 5),
                       time.time() + _int(data.get("expires_in"), 1800), scopes)


def _int(value: Any, default: int) -> int:
    try:
        return max(1, int(value))
    except (TypeError, ValueError):
        return default


def finish_device_login(login: DeviceLogin, *, sleep: Callable[[float], None] = time.sleep,
                        clock: Callable[[], float] = time.time, on_tick: Callable[[float], None] | None = None) -> LoginResult:
    """Poll the token endpoint (authorization_pending: keep going; slow_down: +5 s) until the
    user approves, declines or the code expires. Ctrl-C propagates; nothing is stored."""
    profile = login.profile
    cl = client(profile, login.secrets)
    interval = login.interval
    method = "basic"
    while True:
        reply, method = token_request(profile, cl, {"grant_type": DEVICE_GRANT, "device_code": login.device_code},
                                      doing="waiting for the device sign-in", method=method)
        if reply.get("access_token"):
            return _save_tokens(profile, login.secrets, reply, "device", method, login.scopes)
        if reply.get("error") == "slow_down":
            interval += 5
        loopback.wait_to_poll(profile, login, interval, clock=clock, sleep=sleep, on_tick=on_tick)


# --- silent use -------------------------------------------------------------------------
def get_access_token(profile, secrets, *, force_refresh: bool = False) -> str:
    return _token(profile, secrets, force_refresh=force_refresh)[0]


def _token(profile, secrets, *, force_refresh: bool = False) -> tuple[str, dict[str, Any]]:
    check_auth(profile)
    doc = store.load(profile, secrets, required=True)  # the refresh token is the credential
    if not doc or doc.get("provider") != PROVIDER:
        raise needs_login(profile.name, "not signed in (no OAuth tokens stored)")
    now = time.time()
    if _fresh(doc, now) and not force_refresh:
        return doc["access_token"], doc
    if not doc.get("refresh_token"):
        raise needs_login(profile.name, "the access token expired and no refresh token is stored")
    if doc.get("token_url") != endpoints(profile)["token"]:
        # A refresh token belongs to the server that issued it: never send it elsewhere.
        raise needs_login(profile.name, "the profile's token_url changed since the sign-in")
    reply, method = token_request(profile, client(profile, secrets),
                                  {"grant_type": "refresh_token", "refresh_token": doc["refresh_token"]},
                                  doing="refreshing the access token", method=doc.get("client_auth") or "basic")
    doc.update(access_token=reply["access_token"], expires_at=_expiry(reply, now), refreshed_at=now, client_auth=method)
    if reply.get("refresh_token"):
        doc["refresh_token"] = reply["refresh_token"]  # rotated: the old one is spent
    store.save(profile, secrets, doc, required=False)
    return doc["access_token"], doc


# --- status / logout ----------------------------------------------------------------------
def status(profile, secrets, *, check: bool = True) -> dict[str, Any]:
    from mailctl.errors import MailctlError

    doc = store.load(profile, secrets, required=True)
    info: dict[str, Any] = {
        "profile": profile.name, "provider": PROVIDER, "auth": profile.values.get("auth"),
        "flow": (doc or {}).get("flow"), "scopes": scopes_for(profile), "account": profile.values.get("username"),
        "access": False, "needs_login": False, "access_token_expires_at": None, "refresh_token": False,
        "refresh_token_age_days": None, "signed_in_at": None, "source": (doc or {}).get("_source"),
        "warnings": [], "error": None, "hint": None,
    }
    if not doc or doc.get("provider") != PROVIDER:
        info.update(needs_login=True, error="not signed in", hint=f"run: mailctl auth login {profile.name}")
        return info
    info.update(account=doc.get("account") or info["account"], scopes=doc.get("scopes") or info["scopes"],
                access_token_expires_at=_iso(doc.get("expires_at")), refresh_token=bool(doc.get("refresh_token")),
                signed_in_at=_iso(doc.get("created_at")))
    if doc.get("refreshed_at"):
        info["refresh_token_age_days"] = round((time.time() - float(doc["refreshed_at"])) / 86400, 1)
    if not check:
        info["access"] = bool(info["refresh_token"] or _fresh(doc, time.time()))
        return info
    try:
        _, doc = _token(profile, secrets)
        info.update(access=True, access_token_expires_at=_iso(doc.get("expires_at")))
    except AuthError as exc:
        info.update(needs_login=True, error=exc.message, hint=exc.hint)
    except MailctlError as exc:
        info.update(error=exc.message, hint=exc.hint, error_exit_code=int(exc.exit_code))
    return info


def logout(profile, secrets, *, revoke: bool = True) -> dict[str, Any]:
    """Revoke the refresh token (RFC 7009) when revocation_url is set, then remove the tokens
    here whatever the server said."""
    doc = store.load(profile, secrets)
    revoked = False
    warning = None
    note = None
    url = profile.values.get("revocation_url") or ""
    token = (doc or {}).get("refresh_token") or (doc or {}).get("access_token")
    if revoke and token and not url:
        note = "no revocation_url is set: the tokens were removed here; revoke the app's access at the authorization server"
    elif revoke and token:
        warning = _revoke(profile, secrets, url, token, "refresh_token" if doc.get("refresh_token") else "access_token")
        revoked = warning is None
    removed = store.delete(profile, secrets)
    loopback.clear_pending(profile)
    return {"profile": profile.name, "provider": PROVIDER, "removed": removed, "revoked": revoked,
            "warning": warning, "note": note}


def _revoke(profile, secrets, url: str, token: str, hint: str) -> str | None:
    """None when revoked, else why not (the tokens are removed here anyway)."""
    try:
        endpoints(profile)
        body, auth = client(profile, secrets).auth("basic", {"token": token, "token_type_hint": hint})
        status, reply = post(profile, url, body, auth=auth, doing="revoking the token")
    except (UnavailableError, ConfigError, ProtocolError) as exc:
        return f"{exc.message}; the tokens were removed here but not revoked"
    if status == 200:
        return None
    detail = f" ({reply['error']})" if isinstance(reply.get("error"), str) else ""
    return f"the server did not revoke the token (HTTP {status}{detail}); it was removed here anyway"
