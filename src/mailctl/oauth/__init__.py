"""OAuth for mailctl: Microsoft (MSAL), Google and generic OAuth 2.0 flows, tokens kept in
the secret store.

The public surface other packages use:

- get_access_token(profile, secrets, force_refresh=False) -> str: a fresh access token from
  the stored tokens (refreshed silently), client credentials or a service account; raises
  AuthError (exit 77) with the command to run when a login is needed.
- xoauth2_string(user, token), oauthbearer_string(user, token, host=, port=): the SASL
  XOAUTH2 and OAUTHBEARER (RFC 7628) initial responses (not base64-encoded).

This module stays light: msal, google-auth and requests are imported inside functions.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

from mailctl.oauth.scopes import provider_of, scopes_for, uses_oauth


# Profiles whose token was refreshed with force_refresh=True (a server rejected it) inside a
# forced_refreshes() block: how `auth status --check` learns that a transport retried.
_FORCED: ContextVar[list[str] | None] = ContextVar("mailctl_forced_refreshes", default=None)


@contextmanager
def forced_refreshes() -> Iterator[list[str]]:
    """Collect, in the list yielded, the profiles whose token was fetched anew with
    force_refresh=True in this block (a transport does that after the server rejects one);
    a refresh that failed is not listed."""
    seen: list[str] = []
    reset = _FORCED.set(seen)
    try:
        yield seen
    finally:
        _FORCED.reset(reset)


def get_access_token(profile, secrets, *, force_refresh: bool = False) -> str:
    """A fresh access token for the profile (see module docstring)."""
    token = _provider_token(profile, secrets, force_refresh=force_refresh)
    if force_refresh and (seen := _FORCED.get()) is not None:
        seen.append(profile.name)  # only a refresh that worked
    return token


def _provider_token(profile, secrets, *, force_refresh: bool) -> str:
    if not uses_oauth(profile):
        from mailctl.errors import ConfigError

        raise ConfigError(
            f"profile {profile.name!r} uses auth={profile.values.get('auth') or 'none'}, not OAuth: it has no access token",
            hint=f"switch it to OAuth: mailctl profile edit {profile.name} --auth oauth, then mailctl auth login {profile.name}",
        )
    provider = provider_of(profile)
    if provider == "generic":
        from mailctl.oauth import generic

        return generic.get_access_token(profile, secrets, force_refresh=force_refresh)
    if provider == "google":
        from mailctl.oauth import google

        return google.get_access_token(profile, secrets, force_refresh=force_refresh)
    from mailctl.oauth import microsoft

    return microsoft.get_access_token(profile, secrets, force_refresh=force_refresh)


def xoauth2_string(user: str, token: str) -> str:
    """SASL XOAUTH2: 'user=<user>^Aauth=Bearer <token>^A^A' (the caller base64-encodes it,
    as smtplib.SMTP.auth does)."""
    return f"user={user}\x01auth=Bearer {token}\x01\x01"


def oauthbearer_string(user: str, token: str, *, host: str | None = None, port: int | None = None) -> str:
    """SASL OAUTHBEARER (RFC 7628): the GS2 header 'n,a=<user>,' then host, port and the
    bearer token as ^A-separated key=value pairs (the caller base64-encodes it). In the
    authzid, ',' and '=' are escaped as =2C and =3D (RFC 5801)."""
    authzid = user.replace("=", "=3D").replace(",", "=2C")
    parts = [f"n,a={authzid},"]
    if host:
        parts.append(f"host={host}")
    if port:
        parts.append(f"port={port}")
    parts.append(f"auth=Bearer {token}")
    return "\x01".join(parts) + "\x01\x01"


__all__ = ["forced_refreshes", "get_access_token", "oauthbearer_string", "xoauth2_string", "provider_of", "scopes_for", "uses_oauth"]
