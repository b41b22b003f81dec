"""The SecretStore interface."""

from __future__ import annotations

from typing import Protocol

# password: SMTP/EWS password or app password; client_secret: OAuth app secret;
# oauth_tokens: serialized token cache; service_account_key: Google key JSON;
# proxy_password: the proxy's password; access_token: a static XOAUTH2 bearer token;
# outbox_password: the PostgreSQL outbox's password (under the name "outbox", not a profile).
KINDS = ("password", "client_secret", "oauth_tokens", "service_account_key", "proxy_password", "access_token",
         "outbox_password")


class SecretStore(Protocol):
    name: str
    writable: bool

    def get(self, profile: str, kind: str) -> str | None: ...

    def set(self, profile: str, kind: str, value: str) -> None: ...

    def delete(self, profile: str, kind: str) -> bool: ...


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown secret kind {kind!r}")
    return kind
