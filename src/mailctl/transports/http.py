"""What the HTTP API transports (Graph, EWS, Gmail API) share beyond the network layer: the
session/token lifecycle (SessionTransport), the bearer token of an OAuth profile, and the
profile -> mailctl.net glue (the proxy password from the secret store, mailctl's User-Agent).

Sessions, TLS, proxies and the Retry-After request helper live in mailctl.net (net.http,
net.tls, net.proxy); this module passes them a profile's values. requests is imported inside
functions only, so that `mailctl --help` never loads it."""

from __future__ import annotations

from mailctl.net.http import close_session, new_session
from mailctl.net.http import proxies_for as _net_proxies_for
from mailctl.net.proxy import needs_password, requests_proxy_url
from mailctl.net.tls import RequestsVerify, requests_verify


def user_agent() -> str:
    from mailctl import __version__

    return f"mailctl/{__version__}"


def proxy_url(profile, secrets=None) -> str:
    """The profile's proxy URL as requests gets it, with the password from the secret store."""
    proxy = profile.values.get("proxy") or ""
    password = None
    if proxy and secrets is not None and needs_password(proxy):
        password = secrets.get(profile, "proxy_password")
    return requests_proxy_url(proxy, password)


def proxies_for(profile, secrets=None, url: str | None = None) -> dict[str, str]:
    """The proxies a request of this profile to `url` uses (the profile's, else the environment's)."""
    return _net_proxies_for(proxy_url(profile, secrets), url)


def tls_settings(profile) -> RequestsVerify:
    """requests' verify= for this profile (.verify), with its temporary CA bundle (.cleanup())."""
    return requests_verify(profile.values, profile.name)


def build_session(profile, secrets=None):
    """A requests.Session for this profile (mailctl.net.http.new_session); close it when done."""
    return new_session(profile.values, profile.name, user_agent=user_agent(), proxy=proxy_url(profile, secrets))


class SessionTransport:
    """Lifecycle shared by the HTTP API transports (graph, gmail-api, ews): one requests session
    for the profile (proxy, CA bundle, timeout) and one bearer token, both made on open() and
    reused for every message until close(), which drops both. Subclasses set self.profile,
    self.secrets, self.session = None, self._token = None, and define _fetch_token()."""

    session = None
    _token: str | None = None

    def __enter__(self):
        try:
            self.open()
        except BaseException:
            self.close()  # __exit__ will not run: drop the session and its temporary CA bundle
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        if self.session is None:
            self.session = build_session(self.profile, self.secrets)
        if self._token is None:
            self._fetch_token()

    def close(self) -> None:
        close_session(self.session)
        self.session = None
        self._token = None

    def _fetch_token(self, force_refresh: bool = False) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


def bearer_token(profile, secrets, *, force_refresh: bool = False) -> tuple[str, bool]:
    """(access token, is_static) for an OAuth profile.

    A static token stored as the secret kind `access_token` wins when auth = oauth (handy for
    tokens minted elsewhere, and for tests); it cannot be refreshed. Otherwise the token comes
    from mailctl.oauth.get_access_token (delegated cache or client credentials)."""

    auth = profile.values.get("auth") or "oauth"
    if auth in ("oauth", "") and secrets is not None:
        static = secrets.get(profile, "access_token")
        if static:
            return static.strip(), True
    from mailctl.oauth import get_access_token

    return get_access_token(profile, secrets, force_refresh=force_refresh), False
