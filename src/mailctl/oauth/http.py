"""The requests.Session every identity-provider call uses, built from the profile by the one
session factory (mailctl.net.http.new_session).

trust_env is off: REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE would otherwise silently replace the
profile's CA bundle (PROVIDERS.md, "Testing against local HTTPS fakes"). Proxies come from the
profile, else from the environment (HTTPS_PROXY, NO_PROXY per request). ca_file is an *extra*
CA: the session trusts the system CAs plus the profile's, in a bundle shared by the process
(these sessions are handed to MSAL and google-auth, which never close them)."""

from __future__ import annotations

from typing import Any, Callable

from mailctl.errors import UnavailableError
from mailctl.net.http import DEFAULT_TIMEOUT, failure_reason, lookup_hint, lookup_timeout_of, new_session
from mailctl.net.tls import requests_verify

TIMEOUT = DEFAULT_TIMEOUT
USER_AGENT = "mailctl"


def verify_for(profile) -> bool | str:
    """requests' verify= for an identity-provider call of this profile."""
    return requests_verify(profile.values, profile.name, shared=True, check_pem=False).verify


def session_for(profile) -> "TimeoutSession":
    session = new_session(profile.values, profile.name, user_agent=USER_AGENT,
                          shared_ca_bundle=True, check_pem=False)
    return TimeoutSession(session, session.default_timeout)


class TimeoutSession:
    """Wraps a session so every request gets a timeout (MSAL passes none by default).
    .session is the requests.Session itself (for google-auth and requests-oauthlib)."""

    def __init__(self, session, timeout: float = TIMEOUT) -> None:
        self._session = session
        self._timeout = timeout

    def _kwargs(self, kwargs):
        kwargs.setdefault("timeout", self._timeout)
        return kwargs

    def get(self, url, **kwargs):
        return self._session.get(url, **self._kwargs(kwargs))

    def post(self, url, **kwargs):
        return self._session.post(url, **self._kwargs(kwargs))

    def request(self, method, url, **kwargs):
        return self._session.request(method, url, **self._kwargs(kwargs))

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
        # a host-name lookup without an answer in time says so (cannot resolve HOST within Ns)
        why = failure_reason(exc) if lookup_timeout_of(exc) is not None else type(exc).__name__
        raise UnavailableError(
            f"profile {profile.name!r}: {doing}: cannot reach {peer} ({why})",
            hint=lookup_hint(exc, "check the network, DNS and the profile's proxy setting"),
        ) from None
