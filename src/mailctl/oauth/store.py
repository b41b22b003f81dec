"""Tokens in the secret store (kind oauth_tokens, under the profile's own name): one JSON
document with our bookkeeping around the provider's own format (MSAL's serialized
SerializableTokenCache, Google's authorized-user credentials). The keyring store splits large
values into parts transparently."""

from __future__ import annotations

import json
import time
from typing import Any

from mailctl.errors import SecretStoreUnavailable

KIND = "oauth_tokens"
VERSION = 1


def load(profile, secrets, *, required: bool = False) -> dict[str, Any] | None:
    """The profile's token document, from the environment or the keyring (own name only:
    delegated tokens belong to one mailbox, so a child profile never uses its parent's).

    A cache degrades gracefully: with no usable keyring there is no cache (None), not a
    failure; app-only tokens (client credentials, service accounts) are then fetched anew.
    required=True (delegated sign-ins, whose refresh token is the credential) raises
    SecretStoreUnavailable instead, so the error names the keyring, not "not signed in"."""
    for store in secrets.stores_for(profile):
        try:
            raw = store.get(profile.name, KIND)
        except SecretStoreUnavailable:
            if required:
                raise
            continue
        if raw:
            try:
                doc = json.loads(raw)
            except ValueError:
                return None
            if isinstance(doc, dict) and doc.get("version") == VERSION:
                doc["_source"] = store.name
                if hasattr(secrets, "found"):  # mailctl -v: which store held the tokens
                    secrets.found(profile.name, KIND, store)
                return doc
            return None
    return None


def save(profile, secrets, doc: dict[str, Any], *, required: bool = True) -> bool:
    """Write the document to the keyring. With required=False (a silent refresh), a keyring
    that cannot be written is not an error: the old refresh token stays valid for a while."""
    clean = {k: v for k, v in doc.items() if not k.startswith("_")}
    clean["version"] = VERSION
    clean["saved_at"] = time.time()
    try:
        secrets.store(profile.name, KIND, json.dumps(clean, separators=(",", ":")))
        return True
    except SecretStoreUnavailable:
        if required:
            raise
        return False


def delete(profile, secrets) -> bool:
    return bool(secrets.keyring.delete(profile.name, KIND))
