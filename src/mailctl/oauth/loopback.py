"""The authorization-code redirect, provider-neutral: a one-shot listener on 127.0.0.1 that
catches the browser's redirect, or the final address pasted into the terminal (both at once,
so a browser on this machine, an SSH port forward and copy-paste from another machine all
work), the state check, PKCE (RFC 7636), and the pending sign-in kept between
`auth login --no-wait` and `auth login --redirect-url` (state + verifier, mode 0600).

Google and the generic provider both use it; no library beyond the standard one."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import queue
import secrets as _random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol
from urllib.parse import parse_qs, urlsplit

from mailctl.errors import AuthError, ConfigError, UsageError

PENDING_TTL = 900  # a --no-wait sign-in can be finished for 15 minutes
MAX_REQUEST_LINE = 8192
LABELS = {"google": "Google", "generic": "OAuth"}


class Listener:
    """A one-shot HTTP listener on 127.0.0.1 that catches the OAuth redirect: the first
    request carrying code= or error= is put on `got` as an http://localhost address."""

    def __init__(self, port: int, got: "queue.Queue[str]") -> None:
        from http.server import BaseHTTPRequestHandler, HTTPServer

        listener = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 10  # a browser that connects and says nothing cannot hold the listener

            def log_message(self, *args):
                pass

            def do_GET(self):
                query = parse_qs(urlsplit(self.path).query)
                if "code" not in query and "error" not in query:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = b"mailctl: sign-in received. You can close this window and return to the terminal.\n"
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                got.put(f"http://localhost:{listener.port}{self.path}")

        self.server = HTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class PendingLogin:
    """A sign-in by authorization code + PKCE waiting for its redirect (any provider): the
    authorization URL to open, the loopback listener (or why there is none), and the redirect
    addresses that arrive, from the listener or pasted (wait_for_redirect reads them)."""

    profile: Any
    secrets: Any
    authorization_url: str
    redirect_uri: str
    state: str
    code_verifier: str
    scopes: list[str]
    flow_name: str
    listener: Listener | None = None
    listen_error: str | None = None
    redirects: "queue.Queue[str]" = field(default_factory=queue.Queue)

    @property
    def port(self) -> int | None:
        return urlsplit(self.redirect_uri).port

    def close(self) -> None:
        if self.listener:
            self.listener.close()
            self.listener = None


class Waiting(Protocol):
    """What wait_for_redirect needs of a sign-in in progress."""

    profile: Any
    redirects: "queue.Queue[str]"

    def close(self) -> None: ...


def is_loopback(uri: str) -> bool:
    parts = urlsplit(uri)
    return parts.scheme == "http" and parts.hostname in ("localhost", "127.0.0.1")


def listen(profile, configured: str, *, port: int | None, listen: bool,
           allow_remote: bool = False) -> tuple[str, Listener | None, str | None, "queue.Queue[str]"]:
    """The redirect URI and, when it is a loopback one and listen=True, a listener on it.

    configured is the profile's redirect_uri ('' = http://localhost:<free port>/). A
    non-loopback https redirect (allow_remote, the generic provider) gets no listener: the
    user pastes the address the browser ends on. Returns (redirect_uri, listener, why
    there is no listener, the queue redirects arrive on)."""
    got: "queue.Queue[str]" = queue.Queue()
    if configured and not is_loopback(configured):
        if allow_remote and urlsplit(configured).scheme == "https":
            return configured, None, "the redirect URI is not on this machine: paste the address the browser ends on", got
        raise ConfigError(
            f"profile {profile.name!r}: redirect_uri must be http://localhost:PORT/ or http://127.0.0.1:PORT/ for this flow",
            hint=f"mailctl profile edit {profile.name} --redirect-uri http://127.0.0.1:8765/",
        )
    if configured:
        port = port or urlsplit(configured).port or 80
    listener = None
    listen_error = None
    if listen:
        try:
            listener = Listener(port or 0, got)
            port = listener.port
        except OSError as exc:
            listen_error = f"cannot listen on 127.0.0.1:{port} ({exc.strerror}); paste the address instead"
    if not port:
        port = free_port()
    return configured or f"http://localhost:{port}/", listener, listen_error, got


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pkce_pair() -> tuple[str, str]:
    """(code_verifier, S256 code_challenge): 43+ characters of base64url, RFC 7636."""
    verifier = _random.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=").decode()
    return verifier, challenge


def new_state() -> str:
    return _random.token_urlsafe(24)


def wait_for_redirect(
    login: Waiting,
    *,
    read_line: Callable[[], str] | None = None,
    timeout: float = 600,
    clock: Callable[[], float] = time.monotonic,
    on_tick: Callable[[float], None] | None = None,
    on_rejected: Callable[[str], None] | None = None,
) -> str:
    """The final redirect address: from the listener (browser on this machine or an SSH
    forward) or pasted (read_line, run in a thread so both can happen). Closes the listener."""
    got = login.redirects
    if read_line is not None:
        def reader():
            while True:
                try:
                    line = read_line()
                except (EOFError, OSError, ValueError):
                    return
                if not line:
                    return  # EOF: keep waiting for the listener
                line = line.strip()
                if "code=" in line or "error=" in line:
                    got.put(line)
                    return
                if line and on_rejected:
                    on_rejected(line)

        threading.Thread(target=reader, daemon=True).start()
    deadline = clock() + timeout
    try:
        while True:
            left = deadline - clock()
            if left <= 0:
                raise AuthError(
                    f"profile {login.profile.name!r}: no sign-in arrived within {timeout:.0f} s",
                    hint=f"start again: mailctl auth login {login.profile.name}",
                )
            if on_tick:
                on_tick(left)
            try:
                return got.get(timeout=min(1.0, left))
            except queue.Empty:
                continue
    finally:
        login.close()


def wait_to_poll(profile, login, interval: float, *, clock: Callable[[], float], sleep: Callable[[float], None],
                 on_tick: Callable[[float], None] | None = None) -> None:
    """The device flow's (RFC 8628) wait before the next token poll, any provider: `interval`
    seconds in one-second slices (on_tick hears the time left on the code), or an AuthError
    once the user code has expired."""
    wait_until = clock() + interval
    while clock() < wait_until:
        if clock() >= login.expires_at:
            raise AuthError(f"profile {profile.name!r}: the code {login.user_code} expired before the sign-in finished",
                            hint=f"start again: mailctl auth login {profile.name} --flow device")
        if on_tick:
            on_tick(login.expires_at - clock())
        sleep(min(1.0, wait_until - clock()))


def redirect_query(profile, redirect_url: str, state: str) -> dict[str, str]:
    """The redirect's query after checking it answers this sign-in (state). The caller turns
    an error= into its provider's message and reads code=."""
    text = redirect_url.strip()
    if len(text) > MAX_REQUEST_LINE:
        raise UsageError("that address is too long to be a sign-in redirect",
                         hint="copy the whole address from the browser's address bar")
    parts = urlsplit(text)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    if not query and "code=" not in text:
        raise UsageError(
            "that is not the address the browser ended on (expected http://localhost...?state=...&code=...)",
            hint="copy the whole address from the browser's address bar, even if the page says it cannot be reached",
        )
    if query.get("state") != state:
        raise AuthError(
            f"profile {profile.name!r}: the pasted address belongs to another sign-in (state does not match)",
            hint=f"start again: mailctl auth login {profile.name}",
        )
    if "error" not in query and not query.get("code"):
        raise UsageError("the address has no code parameter", hint="copy the whole address from the browser's address bar")
    return query


# --- the pending sign-in between `--no-wait` and `--redirect-url` ---------------------
def _pending_path(profile):
    from mailctl import paths

    return paths.data_dir() / "oauth-pending" / f"{profile.name}.json"


def save_pending(profile, data: dict[str, Any]) -> None:
    """Keep state + PKCE verifier (and what the provider needs) so a later
    `auth login --redirect-url URL` can finish; the file is the user's alone (0600)."""
    path = _pending_path(profile)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({**data, "created_at": time.time()}, fh)


def load_pending(profile, provider: str) -> dict[str, Any]:
    """The pending sign-in of this profile and provider, or a UsageError saying how to start one."""
    try:
        data = json.loads(_pending_path(profile).read_text())
    except (OSError, ValueError):
        data = None
    fresh = isinstance(data, dict) and time.time() - float(data.get("created_at", 0)) <= PENDING_TTL
    if not fresh or data.get("provider", "google") != provider:
        raise UsageError(
            f"no {LABELS.get(provider, provider)} sign-in in progress for profile {profile.name!r} "
            f"(or it is older than {PENDING_TTL // 60} minutes)",
            hint=f"start one with: mailctl auth login {profile.name} --no-wait, open the URL, then pass the final address with --redirect-url",
        )
    return data


def clear_pending(profile) -> None:
    try:
        _pending_path(profile).unlink()
    except OSError:
        pass
