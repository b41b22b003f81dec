"""Which store answers for a profile: environment, then the profile's secret_command, then
the keyring. A profile that inherits falls back to its parents' secrets (a company client
secret serves every user profile), so user profiles override credentials by setting their own."""

from __future__ import annotations

from typing import Callable, Iterable

from mailctl.errors import AuthError
from mailctl.secrets.base import SecretStore, check_kind
from mailctl.secrets.command import CommandStore
from mailctl.secrets.env import EnvStore, env_var_name
from mailctl.secrets.keyring_store import KeyringStore


SecretObserver = Callable[[str, str, str], None]
"""observer(profile, kind, source): told which store answered, never the value (mailctl -v)."""


class SecretResolver:
    def __init__(self, env: EnvStore | None = None, keyring: SecretStore | None = None,
                 observer: SecretObserver | None = None) -> None:
        self.env = env or EnvStore()
        self.keyring = keyring or KeyringStore()
        self.observer = observer

    def stores_for(self, profile) -> list[SecretStore]:
        stores: list[SecretStore] = [self.env]
        command = profile.values.get("secret_command") if hasattr(profile, "values") else None
        if command:
            stores.append(CommandStore(command))
        stores.append(self.keyring)
        return stores

    def lookup(self, profile, kind: str) -> tuple[str | None, str | None]:
        """(value, where) for a ResolvedProfile, searching its inheritance chain."""
        check_kind(kind)
        chain: Iterable[str] = getattr(profile, "chain", None) or [profile.name]
        stores = self.stores_for(profile)
        for name in chain:
            for store in stores:
                value = store.get(name, kind)
                if value is not None:
                    self.found(profile.name, kind, store, name)
                    return value, f"{store.name}:{name}"
        return None, None

    def found(self, profile: str, kind: str, store: SecretStore, owner: str | None = None) -> None:
        """Tell the observer (mailctl -v) that `store` answered for `kind`; for callers that
        read a store themselves (the OAuth token cache: mailctl.oauth.store)."""
        if self.observer is not None:
            self.observer(profile, kind, self.source_text(store, owner or profile, kind, profile))

    def source_text(self, store: SecretStore, owner: str, kind: str, asked_for: str) -> str:
        """Which store answered, in words, without the value: 'keyring (SecretService Keyring)',
        'environment ($MAILCTL_SECRET_CORP_PASSWORD)', 'secret_command'; plus 'stored for
        profile BASE' when an inherited profile's secret served."""
        if isinstance(store, EnvStore):
            text = f"environment (${env_var_name(owner, kind)})"
        elif isinstance(store, KeyringStore):
            text = f"keyring ({store.backend_name()})"
        else:
            text = str(getattr(store, "name", type(store).__name__))
        return text if owner == asked_for else f"{text}, stored for profile {owner!r} (inherited)"

    def describe(self, profile, kind: str) -> str:
        """Where the secret would come from, for `profile show` and `profile lint`, without
        running a secret_command: 'stored (keyring:NAME)', 'command configured, not run'
        (secret_command) or 'not stored'. Raises SecretStoreUnavailable like lookup()."""
        from mailctl.secrets.command import NOT_RUN

        check_kind(kind)
        chain: Iterable[str] = getattr(profile, "chain", None) or [profile.name]
        stores = self.stores_for(profile)
        for name in chain:
            for store in stores:
                if isinstance(store, CommandStore):
                    if store.answers(kind):
                        return NOT_RUN
                    continue
                if store.get(name, kind) is not None:
                    return f"stored ({store.name}:{name})"
        return "not stored"

    def get(self, profile, kind: str) -> str | None:
        return self.lookup(profile, kind)[0]

    def require(self, profile, kind: str) -> str:
        value = self.get(profile, kind)
        if value is None:
            raise AuthError(
                f"profile {profile.name!r} has no {kind.replace('_', ' ')} stored",
                hint=(
                    f"store it with: mailctl profile edit {profile.name} --password-stdin"
                    if kind == "password"
                    else f"store it in the keyring, or export {env_var_name(profile.name, kind)}"
                ),
            ).with_context(failure_id="secret-missing")
        return value

    def store(self, profile_name: str, kind: str, value: str) -> None:
        self.keyring.set(profile_name, kind, value)

    def delete_all(self, profile_name: str) -> list[str]:
        from mailctl.secrets.base import KINDS

        return [kind for kind in KINDS if self.keyring.delete(profile_name, kind)]

    def move_all(self, old: str, new: str) -> list[str]:
        from mailctl.secrets.base import KINDS

        moved = []
        for kind in KINDS:
            value = self.keyring.get(old, kind)
            if value is not None:
                self.keyring.set(new, kind, value)
                self.keyring.delete(old, kind)
                moved.append(kind)
        return moved
