"""Secret stores behind one interface, looked up in DESIGN.md's order: environment,
secret_command, keyring. Secret values never appear in messages raised from here."""

from __future__ import annotations

from mailctl.secrets.base import KINDS, SecretStore
from mailctl.secrets.command import CommandStore
from mailctl.secrets.env import EnvStore, env_var_name
from mailctl.secrets.keyring_store import KeyringStore
from mailctl.secrets.resolver import SecretResolver


def default_resolver() -> SecretResolver:
    return SecretResolver(env=EnvStore(), keyring=KeyringStore())


__all__ = [
    "KINDS",
    "SecretStore",
    "CommandStore",
    "EnvStore",
    "KeyringStore",
    "SecretResolver",
    "default_resolver",
    "env_var_name",
]
