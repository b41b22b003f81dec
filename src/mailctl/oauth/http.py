"""The requests.Session every identity-provider call uses, built from the profile.

trust_env is off: REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE would otherwise silently replace the
profile's CA bundle (PROVIDERS.md, "Testing against local HTTPS fakes"). Proxies come from the
profile, else from the environment (HTTPS_PROXY, NO_PROXY) as before. ca_file is an *extra* CA:
the session trusts the system CAs plus the profile's."""

from __future__ import annotations

import atexit
import os
import tempfile

from typing import Any, Callable

from mailctl.errors import ConfigError, UnavailableError
from mailctl.transports.http import _system_bundle  # one definition of the system CA bundle

TIMEOUT = 30.0
_bundles: dict[str, str] = {}


def _remove_bundles() -> None:
    for path in _bundles.values():
        try:
            os.unlink(path)
        except OSError:
            pass


def verify_for(profile) -> bool | str:
    if not profile.values.get("tls_verify", True):
        return False
    ca_file = profile.values.get("ca_file") or ""
    if not ca_file:
        return _system_bundle() or True
    path = os.path.expanduser(ca_file)
    if path in _bundles:
        return _bundles[path]
    try:
        with open(path, "rb") as fh:
            extra = fh.read()
    except OSError as exc:
        raise ConfigError(
            f"profile {profile.name!r}: cannot read ca_file {ca_file}: {exc.strerror or exc}",
            hint=f"fix the path with: mailctl profile edit {profile.name} --ca-file PATH",
        ) from None
    system = _system_bundle()
    data = b""
    if system:
        with open(system, "rb") as fh:
            data = fh.read() + b"\n"
    fd, combined = tempfile.mkstemp(prefix="mailctl-ca-", suffix=".pem")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data + extra)
    if not _bundles:
        atexit.register(_remove_bundles)
    _bundles[path] = combined
    return combined


def session_for(profile) -> "TimeoutSession":
    import requests
    import urllib.request

    session = requests.Session()
    session.trust_env = False
    session.verify = verify_for(profile)
    proxy = profile.values.get("proxy") or ""
    if proxy:
        session.proxies = {"http": proxy, "https": proxy}
    else:
        env = urllib.request.getproxies()
        session.proxies = {k: v for k, v in env.items() if k in ("http", "https", "no")}
    session.headers["User-Agent"] = "mailctl"
    return TimeoutSession(session, float(profile.values.get("timeout") or TIMEOUT))


class TimeoutSession:
    """Wraps a session so every request gets a timeout (MSAL passes none by default)."""

    def __init__(self, session, timeout: float = TIMEOUT) -> None:
        self._session = session
        self._timeout = timeout

    def _kwargs(self, url, kwargs):
        from requests.utils import should_bypass_proxies

        kwargs.setdefault("timeout", self._timeout)
        no_proxy = self._session.proxies.get("no")
        if no_proxy and should_bypass_proxies(url, no_proxy=no_proxy):
            kwargs.setdefault("proxies", {"http": None, "https": None})
        return kwargs

    def get(self, url, **kwargs):
        return self._session.get(url, **self._kwargs(url, kwargs))

    def post(self, url, **kwargs):
        return self._session.post(url, **self._kwargs(url, kwargs))

    def request(self, method, url, **kwargs):
        return self._session.request(method, url, **self._kwargs(url, kwargs))

    @property
    def session(self):
        return self._session

    def close(self):
        self._session.close()


def network_call(profile, doing: str, fn: Callable[[], Any], *, peer: str) -> Any:
    """Run an identity-provider request; TLS and connection failures become exit 69 with a hint."""
    import requests

    try:
        return fn()
    except requests.exceptions.SSLError:
        raise UnavailableError(
            f"profile {profile.name!r}: {doing}: TLS certificate verification failed talking to {peer}",
            hint=f"if a proxy or private CA intercepts TLS, give its CA: mailctl profile edit {profile.name} --ca-file PATH",
        ) from None
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
        raise UnavailableError(
            f"profile {profile.name!r}: {doing}: cannot reach {peer} ({type(exc).__name__})",
            hint="check the network, DNS and the profile's proxy setting",
        ) from None
