"""OAuth for mailctl: Microsoft (MSAL) and Google flows, tokens kept in the secret store.

The public surface other packages use:

- get_access_token(profile, secrets, force_refresh=False) -> str: a fresh access token from
  the stored tokens (refreshed silently), client credentials or a service account; raises
  AuthError (exit 77) with the command to run when a login is needed.
- xoauth2_string(user, token): the SASL XOAUTH2 initial response (not base64-encoded).

This module stays light: msal, google-auth and requests are imported inside functions.
"""

from __future__ import annotations

from mailctl.oauth.scopes import provider_of, scopes_for, uses_oauth


def get_access_token(profile, secrets, *, force_refresh: bool = False) -> str:
    """A fresh access token for the profile (see module docstring)."""
    if not uses_oauth(profile):
        from mailctl.errors import ConfigError

        raise ConfigError(
            f"profile {profile.name!r} uses auth={profile.values.get('auth') or 'none'}, not OAuth: it has no access token",
            hint=f"switch it to OAuth: mailctl profile edit {profile.name} --auth oauth, then mailctl auth login {profile.name}",
        )
    if provider_of(profile) == "google":
        from mailctl.oauth import google

        return google.get_access_token(profile, secrets, force_refresh=force_refresh)
    from mailctl.oauth import microsoft

    return microsoft.get_access_token(profile, secrets, force_refresh=force_refresh)


def xoauth2_string(user: str, token: str) -> str:
    """SASL XOAUTH2: 'user=<user>^Aauth=Bearer <token>^A^A' (the caller base64-encodes it,
    as smtplib.SMTP.auth does)."""
    return f"user={user}\x01auth=Bearer {token}\x01\x01"


__all__ = ["get_access_token", "xoauth2_string", "provider_of", "scopes_for", "uses_oauth"]
