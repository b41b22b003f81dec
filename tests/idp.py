"""A local HTTPS identity provider for tests: Microsoft-shaped (OpenID discovery, device
authorization, token endpoint with device_code / refresh_token / client_credentials grants)
and Google-shaped (authorization endpoint that redirects to the loopback address, token with
authorization_code + PKCE / refresh_token / jwt-bearer grants, device code, revocation).

It speaks the wire protocol only; behaviour is scripted through attributes:

    idp.device_script = ["authorization_pending", "slow_down", "approve"]
    idp.device_terminal = "expired_token" | "access_denied" (replaces "approve")
    idp.refresh_error = {"error": "invalid_grant", "error_description": "AADSTS700082: ..."}
    idp.jwt_error = {"error": "invalid_client", "error_description": "The OAuth client was not found."}

Every access token issued is recorded so an SMTP authenticator can check it:
`idp.check_access_token(token, user)`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

TENANT = "11111111-2222-3333-4444-555555555555"
CLIENT_ID = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
CLIENT_SECRET = "s3cr3t-client-value-XYZ"
GOOGLE_CLIENT_ID = "1234-test.apps.googleusercontent.com"
GOOGLE_CLIENT_SECRET = "GOCSPX-google-secret-value"
USER = "alice@contoso.example"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class FakeIdP:
    def __init__(self, ca, *, host: str = "127.0.0.1") -> None:
        self.ca = ca
        cert = ca.issue_cert(host, "localhost")
        self.ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        cert.configure_cert(self.ssl_context)
        self.host = host
        self.lock = threading.Lock()
        # scripting
        self.device_script: list[str] = ["authorization_pending", "approve"]
        self.device_terminal: str | None = None
        self.device_interval = 1
        self.refresh_error: dict | None = None
        self.client_error: dict | None = None
        self.google_device_scope_ok = False
        self.authorize_error: str | None = None
        self.expires_in = 3600
        self.user = USER
        self.client_secret = CLIENT_SECRET
        self.google_client_secret = GOOGLE_CLIENT_SECRET
        self.service_account_public_pem: bytes | None = None
        self.jwt_error: dict | None = None  # the JWT-bearer grant's reply instead of a token
        # records
        self.access_tokens: dict[str, dict] = {}
        self.refresh_tokens: dict[str, dict] = {}
        self.codes: dict[str, dict] = {}
        self.device_codes: dict[str, dict] = {}
        self.revoked: list[str] = []
        self.requests: list[tuple[str, str, dict]] = []  # (method, path, form)
        self.basic_auth_seen = 0
        self.server = ThreadingHTTPServer((host, 0), self._handler_class())
        self.server.daemon_threads = True
        self.server.socket = self.ssl_context.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    # lifecycle ---------------------------------------------------------------
    def start(self) -> "FakeIdP":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def base(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def authority(self) -> str:
        return f"{self.base}/{TENANT}"

    @property
    def issuer(self) -> str:
        return f"{self.base}/{TENANT}/v2.0"

    @property
    def google_auth_url(self) -> str:
        return f"{self.base}/o/oauth2/auth"

    @property
    def google_token_url(self) -> str:
        return f"{self.base}/google/token"

    # token issuing -------------------------------------------------------------
    def _issue(self, *, user: str, scopes: list[str], client_id: str, refresh: bool, id_token: bool) -> dict:
        at = "at-" + secrets.token_urlsafe(24)
        self.access_tokens[at] = {"user": user, "scopes": scopes, "exp": time.time() + self.expires_in, "client_id": client_id}
        reply = {"token_type": "Bearer", "access_token": at, "expires_in": self.expires_in, "scope": " ".join(scopes)}
        if refresh:
            rt = "rt-" + secrets.token_urlsafe(24)
            self.refresh_tokens[rt] = {"user": user, "scopes": scopes, "client_id": client_id}
            reply["refresh_token"] = rt
        if id_token:
            now = int(time.time())
            claims = {
                "iss": self.issuer, "aud": client_id, "exp": now + 3600, "iat": now, "nbf": now,
                "sub": "sub-" + user, "oid": "oid-0001", "tid": TENANT,
                "preferred_username": user, "name": "Alice Example",
            }
            reply["id_token"] = ".".join(
                [_b64url(json.dumps({"alg": "RS256", "typ": "JWT"}).encode()), _b64url(json.dumps(claims).encode()), _b64url(b"sig")]
            )
            reply["client_info"] = _b64url(json.dumps({"uid": "oid-0001", "utid": TENANT}).encode())
        return reply

    def check_access_token(self, token: str, user: str | None = None) -> bool:
        info = self.access_tokens.get(token)
        if not info or info["exp"] < time.time() or token in self.revoked:
            return False
        return user is None or info["user"].lower() == user.lower()

    def expire_access_tokens(self) -> None:
        for info in self.access_tokens.values():
            info["exp"] = 0

    # request handling ---------------------------------------------------------
    def _handler_class(self):
        idp = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def _send(self, status: int, body: dict | None = None, headers: dict | None = None):
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                if body is not None:
                    self.send_header("Content-Type", "application/json")
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                parts = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                with idp.lock:
                    idp.requests.append(("GET", parts.path, query))
                if parts.path == f"/{TENANT}/v2.0/.well-known/openid-configuration":
                    base = f"{idp.base}/{TENANT}/oauth2/v2.0"
                    return self._send(200, {
                        "issuer": idp.issuer,
                        "authorization_endpoint": f"{base}/authorize",
                        "token_endpoint": f"{base}/token",
                        "device_authorization_endpoint": f"{base}/devicecode",
                    })
                if parts.path == "/o/oauth2/auth":
                    return self._google_authorize(query)
                return self._send(404, {"error": "not_found"})

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode()
                form = {k: v[0] for k, v in parse_qs(raw).items()}
                path = urlsplit(self.path).path
                auth = self.headers.get("Authorization", "")
                if auth.startswith("Basic "):
                    user, _, pw = base64.b64decode(auth[6:]).decode().partition(":")
                    from urllib.parse import unquote_plus

                    form.setdefault("client_id", unquote_plus(user))
                    form.setdefault("client_secret", unquote_plus(pw))
                    idp.basic_auth_seen += 1
                with idp.lock:
                    idp.requests.append(("POST", path, form))
                    if path == f"/{TENANT}/oauth2/v2.0/devicecode":
                        return self._device_authorization(form, google=False)
                    if path == f"/{TENANT}/oauth2/v2.0/token":
                        return self._token(form, google=False)
                    if path == "/google/token":
                        return self._token(form, google=True)
                    if path == "/google/device/code":
                        return self._device_authorization(form, google=True)
                    if path == "/google/revoke":
                        token = form.get("token", "")
                        idp.revoked.append(token)
                        idp.refresh_tokens.pop(token, None)
                        return self._send(200, {})
                return self._send(404, {"error": "not_found"})

            # Microsoft / RFC 8628 ------------------------------------------------
            def _device_authorization(self, form, google):
                scopes = form.get("scope", "").split()
                if google and not idp.google_device_scope_ok and "https://mail.google.com/" in scopes:
                    return self._send(400, {"error": "invalid_scope", "error_description": "Invalid device flow scope: https://mail.google.com/"})
                device_code = "dc-" + secrets.token_urlsafe(16)
                user_code = "ABCD-EFGH"
                idp.device_codes[device_code] = {"scopes": scopes, "client_id": form.get("client_id"), "polls": 0, "script": list(idp.device_script)}
                verification = f"{idp.base}/devicelogin"
                body = {
                    "device_code": device_code, "user_code": user_code, "expires_in": 900,
                    "interval": idp.device_interval,
                }
                if google:
                    body["verification_url"] = verification
                else:
                    body["verification_uri"] = verification
                    body["message"] = f"To sign in, use a web browser to open the page {verification} and enter the code {user_code} to authenticate."
                return self._send(200, body)

            def _token(self, form, google):
                grant = form.get("grant_type")
                client_id = form.get("client_id", "")
                if grant == "urn:ietf:params:oauth:grant-type:device_code":
                    entry = idp.device_codes.get(form.get("device_code", ""))
                    if entry is None:
                        return self._send(400, {"error": "invalid_grant", "error_description": "AADSTS70019: device code expired"})
                    entry["polls"] += 1
                    step = entry["script"].pop(0) if entry["script"] else (idp.device_terminal or "approve")
                    if step == "approve" and idp.device_terminal:
                        step = idp.device_terminal
                    if step == "approve":
                        del idp.device_codes[form["device_code"]]
                        scopes = [s for s in entry["scopes"] if s not in ("openid", "profile", "offline_access")]
                        return self._send(200, idp._issue(user=idp.user, scopes=scopes, client_id=client_id, refresh=True, id_token=not google))
                    descriptions = {
                        "authorization_pending": "AADSTS70016: OAuth 2.0 device flow error. Authorization is pending.",
                        "slow_down": "slow down",
                        "expired_token": "AADSTS70019: Verification code expired.",
                        "access_denied": "AADSTS70000: The user declined the authorization.",
                    }
                    return self._send(400, {"error": step, "error_description": descriptions.get(step, step)})
                if grant == "refresh_token":
                    if idp.refresh_error:
                        return self._send(400, idp.refresh_error)
                    entry = idp.refresh_tokens.pop(form.get("refresh_token", ""), None)
                    if entry is None:
                        return self._send(400, {"error": "invalid_grant", "error_description": "AADSTS70008: The refresh token has expired or is invalid.", "error_codes": [70008]})
                    scopes = entry["scopes"]
                    return self._send(200, idp._issue(user=entry["user"], scopes=scopes, client_id=client_id, refresh=True, id_token=not google))
                if grant == "client_credentials":
                    if idp.client_error:
                        return self._send(401, idp.client_error)
                    if form.get("client_secret") != idp.client_secret:
                        return self._send(401, {"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret provided.", "error_codes": [7000215]})
                    scopes = form.get("scope", "").split()
                    return self._send(200, idp._issue(user=f"app:{client_id}", scopes=scopes, client_id=client_id, refresh=False, id_token=False))
                if grant == "authorization_code":
                    entry = idp.codes.pop(form.get("code", ""), None)
                    if entry is None:
                        return self._send(400, {"error": "invalid_grant", "error_description": "Malformed auth code."})
                    if form.get("client_secret") != idp.google_client_secret:
                        return self._send(401, {"error": "invalid_client", "error_description": "Unauthorized"})
                    if form.get("redirect_uri") != entry["redirect_uri"]:
                        return self._send(400, {"error": "redirect_uri_mismatch", "error_description": "Bad Request"})
                    verifier = form.get("code_verifier", "")
                    challenge = _b64url(hashlib.sha256(verifier.encode()).digest())
                    if challenge != entry["code_challenge"]:
                        return self._send(400, {"error": "invalid_grant", "error_description": "Invalid code verifier."})
                    return self._send(200, idp._issue(user=idp.user, scopes=entry["scopes"], client_id=client_id, refresh=entry["offline"], id_token=False))
                if grant == "urn:ietf:params:oauth:grant-type:jwt-bearer":
                    return self._jwt_bearer(form)
                return self._send(400, {"error": "unsupported_grant_type"})

            def _jwt_bearer(self, form):
                import jwt

                if idp.jwt_error:
                    return self._send(401 if idp.jwt_error.get("error") == "invalid_client" else 400, idp.jwt_error)

                try:
                    claims = jwt.decode(
                        form.get("assertion", ""), idp.service_account_public_pem, algorithms=["RS256"],
                        audience=[idp.google_token_url, "https://oauth2.googleapis.com/token"],
                    )
                except Exception as exc:
                    return self._send(400, {"error": "invalid_grant", "error_description": f"Invalid JWT: {type(exc).__name__}"})
                subject = claims.get("sub")
                if not subject:
                    return self._send(400, {"error": "unauthorized_client", "error_description": "Client is unauthorized to retrieve access tokens using this method."})
                scopes = claims.get("scope", "").split()
                return self._send(200, idp._issue(user=subject, scopes=scopes, client_id=claims.get("iss", ""), refresh=False, id_token=False))

            # Google authorization endpoint (the "browser" step) ------------------
            def _google_authorize(self, q):
                redirect = q.get("redirect_uri", "")
                if not redirect.startswith("http://localhost") and not redirect.startswith("http://127.0.0.1"):
                    return self._send(400, {"error": "redirect_uri_mismatch"})
                if idp.authorize_error:
                    loc = redirect + "?" + urlencode({"error": idp.authorize_error, "state": q.get("state", "")})
                    return self._send(302, None, {"Location": loc})
                if q.get("code_challenge_method") != "S256" or not q.get("code_challenge"):
                    return self._send(400, {"error": "invalid_request", "error_description": "PKCE required"})
                code = "4/" + secrets.token_urlsafe(16)
                idp.codes[code] = {
                    "redirect_uri": redirect,
                    "code_challenge": q["code_challenge"],
                    "scopes": q.get("scope", "").split(),
                    "offline": q.get("access_type") == "offline" and q.get("prompt") == "consent",
                }
                loc = redirect + "?" + urlencode({"state": q.get("state", ""), "code": code, "scope": q.get("scope", "")})
                return self._send(302, None, {"Location": loc})

        return Handler


def google_service_account_key(idp: FakeIdP, email: str = "mailer@proj.iam.gserviceaccount.com") -> str:
    """A service-account key JSON whose token_uri is the fake IdP; registers its public key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    idp.service_account_public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return json.dumps({
        "type": "service_account", "project_id": "proj", "private_key_id": "kid1", "private_key": pem,
        "client_email": email, "client_id": "1000", "token_uri": idp.google_token_url,
    })


# --- pytest fixtures (import them into a test module: `from idp import *`) -------------
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def trust_ca():
    import trustme

    return trustme.CA()


@pytest.fixture(scope="session")
def ca_pem(trust_ca, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("ca") / "test-ca.pem"
    trust_ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
def idp(trust_ca):
    server = FakeIdP(trust_ca).start()
    yield server
    server.stop()


def write_profiles(home, profiles: dict[str, dict], default: str | None = None) -> None:
    """Write $MAILCTL_HOME/profiles.toml directly (tests own their profiles file)."""
    import tomlkit

    doc = {"schema_version": 1, "profiles": profiles}
    if default:
        doc["default"] = default
    (home / "profiles.toml").write_text(tomlkit.dumps(doc))


def ms_profile(idp: FakeIdP, ca_pem: str, **over) -> dict:
    values = {
        "type": "smtp", "provider": "microsoft365", "host": "127.0.0.1", "auth": "oauth",
        "username": USER, "tenant_id": TENANT, "client_id": CLIENT_ID, "authority": idp.authority, "ca_file": ca_pem,
    }
    values.update(over)
    return values


def google_profile(idp: FakeIdP, ca_pem: str, **over) -> dict:
    values = {
        "type": "smtp", "provider": "gmail", "host": "127.0.0.1", "auth": "oauth", "username": USER,
        "client_id": GOOGLE_CLIENT_ID, "authorization_url": idp.google_auth_url, "token_url": idp.google_token_url,
        "ca_file": ca_pem,
    }
    values.update(over)
    return values


def resolved(home, name: str):
    from mailctl.paths import config_path
    from mailctl.profiles.resolve import resolve_profile
    from mailctl.profiles.store import ProfileStore

    return resolve_profile(ProfileStore(config_path()).load(), name)
