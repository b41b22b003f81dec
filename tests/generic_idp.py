"""A local HTTPS OAuth 2.0 authorization server that is neither Microsoft- nor Google-shaped:
no discovery document, no id_token, no tenant in the path, opaque tokens, its own paths
(/as/authorize, /as/token, /as/device, /as/revoke) and a registered client:

- authorization endpoint: exact registered redirect URIs only, PKCE S256 required, scopes
  checked against the client's (invalid_scope otherwise), 302 back with code + state;
- token endpoint: client authentication as configured (`client_auth` = "basic": HTTP Basic
  only, as RFC 6749 requires servers to support; "post": the secret in the form only, Basic
  is invalid_client; "public": no secret, PKCE only), grants authorization_code (code,
  redirect_uri, verifier all checked), refresh_token (rotated: the old one is spent), and the
  device code grant (RFC 8628; scripted like idp.FakeIdP's);
- device authorization endpoint with verification_uri_complete; revocation (RFC 7009).

Scripting: `token_status` forces an HTTP status with a non-JSON body (a broken gateway);
`omit_expires_in`; `refresh_error`. Records: `requests`, `basic_auth_seen`, `revoked`.
`check_access_token(token, user)` is what a mail server asks; `expire_access_tokens()`
makes the server forget the tokens early while the client still thinks they are fresh.
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
from urllib.parse import parse_qs, unquote_plus, urlencode, urlsplit

CLIENT_ID = "mailctl-relay.client"
CLIENT_SECRET = "gen-Secr3t=with/odd+chars"
USER = "carol@mail.example.org"
SCOPES = ("mail.submit", "offline")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class GenericAS:
    def __init__(self, ca, *, host: str = "127.0.0.1") -> None:
        cert = ca.issue_cert(host, "localhost")
        self.ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        cert.configure_cert(self.ssl_context)
        self.host = host
        self.lock = threading.Lock()
        self.client_auth = "basic"
        self.client_secret = CLIENT_SECRET
        self.registered_redirects: set[str] = set()
        self.allow_loopback_any_port = True  # RFC 8252 7.3: any port on a loopback redirect
        self.allowed_scopes = set(SCOPES)
        self.user = USER
        self.expires_in = 3600
        self.omit_expires_in = False
        self.refresh_error: dict | None = None
        self.token_status: int | None = None
        self.device_script: list[str] = ["authorization_pending", "approve"]
        self.device_interval = 1
        self.access_tokens: dict[str, dict] = {}
        self.refresh_tokens: dict[str, dict] = {}
        self.spent_refresh_tokens: set[str] = set()
        self.codes: dict[str, dict] = {}
        self.device_codes: dict[str, dict] = {}
        self.revoked: list[str] = []
        self.requests: list[tuple[str, str, dict]] = []
        self.basic_auth_seen = 0
        self.server = ThreadingHTTPServer((host, 0), self._handler())
        self.server.daemon_threads = True
        self.server.socket = self.ssl_context.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def start(self) -> "GenericAS":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def base(self) -> str:
        return f"https://{self.host}:{self.server.server_address[1]}"

    def urls(self) -> dict[str, str]:
        return {"authorization_url": f"{self.base}/as/authorize", "token_url": f"{self.base}/as/token",
                "device_authorization_url": f"{self.base}/as/device", "revocation_url": f"{self.base}/as/revoke"}

    # --- tokens ------------------------------------------------------------------------
    def _issue(self, scopes: list[str], *, refresh: bool) -> dict:
        at = "gat." + secrets.token_urlsafe(20)
        self.access_tokens[at] = {"user": self.user, "scopes": scopes, "exp": time.time() + self.expires_in}
        reply = {"access_token": at, "token_type": "bearer", "scope": " ".join(scopes)}
        if not self.omit_expires_in:
            reply["expires_in"] = self.expires_in
        if refresh and "offline" in scopes:
            rt = "grt." + secrets.token_urlsafe(20)
            self.refresh_tokens[rt] = {"user": self.user, "scopes": scopes}
            reply["refresh_token"] = rt
        return reply

    def check_access_token(self, token: str, user: str | None = None) -> bool:
        info = self.access_tokens.get(token)
        if not info or info["exp"] < time.time() or token in self.revoked:
            return False
        return user is None or info["user"].lower() == user.lower()

    def expire_access_tokens(self) -> None:
        for info in self.access_tokens.values():
            info["exp"] = 0

    def _redirect_ok(self, uri: str) -> bool:
        if uri in self.registered_redirects:
            return True
        parts = urlsplit(uri)
        return self.allow_loopback_any_port and parts.scheme == "http" and parts.hostname == "127.0.0.1" or (
            self.allow_loopback_any_port and parts.scheme == "http" and parts.hostname == "localhost")

    # --- HTTP ----------------------------------------------------------------------------
    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, status: int, body=None, headers: dict | None = None):
                data = json.dumps(body).encode() if isinstance(body, dict) else (body or b"")
                self.send_response(status)
                if isinstance(body, dict):
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Cache-Control", "no-store")
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                parts = urlsplit(self.path)
                q = {k: v[0] for k, v in parse_qs(parts.query).items()}
                with server.lock:
                    server.requests.append(("GET", parts.path, q))
                if parts.path != "/as/authorize":
                    return self._send(404, b"not found")
                redirect = q.get("redirect_uri", "")
                if q.get("client_id") != CLIENT_ID or not server._redirect_ok(redirect):
                    return self._send(400, b"unknown client or redirect_uri")  # never redirect to an unknown URI
                back = lambda **kv: self._send(302, None, {"Location": redirect + "?" + urlencode({**kv, "state": q.get("state", "")})})  # noqa: E731
                if q.get("response_type") != "code":
                    return back(error="unsupported_response_type")
                if q.get("code_challenge_method") != "S256" or len(q.get("code_challenge", "")) < 43:
                    return back(error="invalid_request", error_description="PKCE S256 is required")
                scopes = q.get("scope", "").split()
                if not set(scopes) <= server.allowed_scopes:
                    return back(error="invalid_scope", error_description="scope not allowed for this client")
                code = "gc." + secrets.token_urlsafe(16)
                server.codes[code] = {"redirect_uri": redirect, "challenge": q["code_challenge"], "scopes": scopes}
                return back(code=code)

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                form = {k: v[0] for k, v in parse_qs(raw).items()}
                path = urlsplit(self.path).path
                basic = None
                auth = self.headers.get("Authorization", "")
                if auth.startswith("Basic "):
                    user, _, pw = base64.b64decode(auth[6:]).decode().partition(":")
                    basic = (unquote_plus(user), unquote_plus(pw))
                    server.basic_auth_seen += 1
                with server.lock:
                    server.requests.append(("POST", path, dict(form, _basic=bool(basic))))
                    if path == "/as/token":
                        return self._token(form, basic)
                    if path == "/as/device":
                        return self._device(form, basic)
                    if path == "/as/revoke":
                        if not self._client_ok(form, basic):
                            return self._send(401, {"error": "invalid_client"})
                        token = form.get("token", "")
                        server.revoked.append(token)
                        server.refresh_tokens.pop(token, None)
                        return self._send(200, b"")
                return self._send(404, b"not found")

            def _client_ok(self, form, basic) -> bool:
                mode = server.client_auth
                if mode == "public":
                    return form.get("client_id") == CLIENT_ID and "client_secret" not in form and basic is None
                if mode == "basic":
                    return basic == (CLIENT_ID, server.client_secret) and "client_secret" not in form
                return basic is None and form.get("client_id") == CLIENT_ID and form.get("client_secret") == server.client_secret

            def _device(self, form, basic):
                if not self._client_ok(form, basic):
                    return self._send(401, {"error": "invalid_client", "error_description": "client authentication failed"})
                scopes = form.get("scope", "").split()
                if not set(scopes) <= server.allowed_scopes:
                    return self._send(400, {"error": "invalid_scope"})
                code = "gd." + secrets.token_urlsafe(16)
                server.device_codes[code] = {"scopes": scopes, "script": list(server.device_script)}
                return self._send(200, {
                    "device_code": code, "user_code": "WDJB-MJHT", "verification_uri": f"{server.base}/device",
                    "verification_uri_complete": f"{server.base}/device?user_code=WDJB-MJHT",
                    "expires_in": 600, "interval": server.device_interval,
                })

            def _token(self, form, basic):
                if server.token_status:
                    return self._send(server.token_status, b"<html>upstream error</html>", {"Content-Type": "text/html"})
                if not self._client_ok(form, basic):
                    return self._send(401, {"error": "invalid_client", "error_description": "client authentication failed"},
                                      {"WWW-Authenticate": 'Basic realm="as"'})
                grant = form.get("grant_type")
                if grant == "authorization_code":
                    entry = server.codes.pop(form.get("code", ""), None)
                    if entry is None:
                        return self._send(400, {"error": "invalid_grant", "error_description": "code unknown or used"})
                    if form.get("redirect_uri") != entry["redirect_uri"]:
                        return self._send(400, {"error": "invalid_grant", "error_description": "redirect_uri differs"})
                    if _b64url(hashlib.sha256(form.get("code_verifier", "").encode()).digest()) != entry["challenge"]:
                        return self._send(400, {"error": "invalid_grant", "error_description": "PKCE verification failed"})
                    return self._send(200, server._issue(entry["scopes"], refresh=True))
                if grant == "refresh_token":
                    if server.refresh_error:
                        return self._send(400, server.refresh_error)
                    rt = form.get("refresh_token", "")
                    entry = server.refresh_tokens.pop(rt, None)
                    if entry is None:
                        return self._send(400, {"error": "invalid_grant", "error_description": "refresh token unknown, spent or revoked"})
                    server.spent_refresh_tokens.add(rt)
                    return self._send(200, server._issue(entry["scopes"], refresh=True))
                if grant == "urn:ietf:params:oauth:grant-type:device_code":
                    entry = server.device_codes.get(form.get("device_code", ""))
                    if entry is None:
                        return self._send(400, {"error": "expired_token"})
                    step = entry["script"].pop(0) if entry["script"] else "approve"
                    if step != "approve":
                        return self._send(400, {"error": step})
                    del server.device_codes[form["device_code"]]
                    return self._send(200, server._issue(entry["scopes"], refresh=True))
                return self._send(400, {"error": "unsupported_grant_type"})

        return Handler


def generic_profile(srv: GenericAS, ca_pem: str, **over) -> dict:
    values = {
        "type": "smtp", "provider": "custom", "host": "127.0.0.1", "auth": "oauth", "oauth_provider": "generic",
        "username": USER, "client_id": CLIENT_ID, "scopes": list(SCOPES), "ca_file": ca_pem, **srv.urls(),
    }
    values.update(over)
    return values
