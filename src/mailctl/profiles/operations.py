"""Profile operations the commands call: each is one locked read-modify-write of the file,
with the secret store changes placed so a failure leaves nothing half-done."""

from __future__ import annotations

from typing import Any

from mailctl.errors import ConfigError, NotFoundError, SecretStoreUnavailable, ValidationError
from mailctl.profiles.model import FIELDS_BY_NAME, validate_name
from mailctl.profiles.resolve import (
    BUILTIN_LOCAL,
    InheritanceCycle,
    check_complete,
    primary_secret_kind,
    relevant_secret_kinds,
    resolve_profile,
)
from mailctl.profiles.store import ProfileStore


def _secret_kind_after(doc, name: str) -> str | None:
    return primary_secret_kind(resolve_profile(doc, name).values)


def add_profile(
    store: ProfileStore,
    secrets,
    name: str,
    fields: dict[str, Any],
    *,
    secret: str | None = None,
    make_default: bool = False,
) -> dict[str, Any]:
    validate_name(name)
    with store.edit(create=True) as doc:
        doc.add_profile(name, fields)
        check_inherits(doc, name, fields)
        resolved = resolve_profile(doc, name)
        check_complete(resolved, adding=True)
        if make_default or (doc.default is None and len(doc.profile_names()) == 1):
            doc.set_default(name)
        kind = primary_secret_kind(resolved.values)
        if secret is not None:
            if kind is None:
                raise ValidationError(
                    f"profile {name!r} (auth={resolved.values.get('auth')}) takes no password or client secret",
                    field="auth",
                    hint="drop --password-stdin, or set --auth password / client-credentials",
                )
            secrets.store(name, kind, secret)  # before the file is written: no profile without its secret
        default = doc.default
    return {"name": name, "default": default == name, "default_profile": default,
            "secret_stored": kind if secret is not None else None}


def edit_profile(
    store: ProfileStore,
    secrets,
    name: str,
    fields: dict[str, Any],
    unset: list[str],
    *,
    secret: str | None = None,
) -> dict[str, Any]:
    with store.edit() as doc:
        if not doc.has(name):
            raise NotFoundError(f"no profile named {name!r} in {store.path}", hint="list them with: mailctl profile list")
        overlap = set(fields) & set(unset)
        if overlap:
            raise ValidationError(f"{sorted(overlap)[0]}: given both a value and --unset", field=sorted(overlap)[0])
        doc.unset_fields(name, unset)
        doc.set_fields(name, fields)
        check_inherits(doc, name, fields)
        resolved = resolve_profile(doc, name)
        for child in doc.children_of(name):
            resolve_profile(doc, child)  # an edit must not break a child (cycles)
        check_complete(resolved)
        kind = primary_secret_kind(resolved.values)
        if secret is not None:
            if kind is None:
                raise ValidationError(
                    f"profile {name!r} (auth={resolved.values.get('auth')}) takes no password or client secret",
                    field="auth",
                )
            secrets.store(name, kind, secret)
    return {"name": name, "changed": sorted(fields), "unset": sorted(unset), "secret_stored": kind if secret is not None else None}


def duplicate_profile(store: ProfileStore, secrets, src: str, new: str | None, *, secret: str | None = None) -> dict[str, Any]:
    new = new or f"{src}_copied"
    validate_name(new)
    with store.edit() as doc:
        values = doc.raw_profile(src)
        doc.add_profile(new, values)
        kind = _secret_kind_after(doc, new)
        if secret is not None:
            if kind is None:
                raise ValidationError(
                    f"profile {src!r} takes no password or client secret; nothing to store for the copy",
                    field="auth",
                    hint="drop --password-stdin",
                )
            secrets.store(new, kind, secret)
    return {"name": new, "source": src, "secret_stored": kind if secret is not None and kind else None}


def delete_profile(store: ProfileStore, secrets, name: str, *, new_default: str | None = None) -> dict[str, Any]:
    warnings: list[str] = []
    with store.edit() as doc:
        if not doc.has(name):
            raise NotFoundError(f"no profile named {name!r} in {store.path}", hint="list them with: mailctl profile list")
        children = doc.children_of(name)
        if children:
            raise ValidationError(
                f"profile {name!r} is inherited by {', '.join(children)}",
                field="inherits",
                hint=f"delete those first, or re-parent them: mailctl profile edit {children[0]} --unset inherits",
            )
        was_default = doc.default == name
        others = [n for n in doc.profile_names() if n != name]
        if new_default is not None:
            if new_default == name or new_default not in others:
                raise NotFoundError(
                    f"--new-default: no other profile named {new_default!r}",
                    hint=("choose one of: " + ", ".join(others)) if others else None,
                )
        elif was_default and others:
            raise ValidationError(
                f"profile {name!r} is the default; name the new default",
                field="default",
                hint=f"mailctl profile delete {name} --new-default {others[0]}",
            )
        doc.remove_profile(name)
        if new_default:
            doc.set_default(new_default)
        default = doc.default
    try:
        removed = secrets.delete_all(name)
    except SecretStoreUnavailable as exc:
        removed = []
        warnings.append(f"profile deleted, but its keyring secrets could not be removed: {exc.message}")
    return {"name": name, "default_profile": default, "secrets_removed": removed, "warnings": warnings}


def rename_profile(store: ProfileStore, secrets, old: str, new: str) -> dict[str, Any]:
    validate_name(new)
    from mailctl.secrets.base import KINDS

    warnings: list[str] = []
    with store.edit() as doc:
        doc.rename_profile(old, new)
        # Copy secrets before the file changes; delete the old ones only after it has.
        moved = []
        try:
            for kind in KINDS:
                value = secrets.keyring.get(old, kind)
                if value is not None:
                    secrets.keyring.set(new, kind, value)
                    moved.append(kind)
        except SecretStoreUnavailable as exc:
            if moved:  # some copied, then the keyring failed: do not rename half-way
                raise
            # No usable keyring (secrets from the environment or secret_command): nothing to move.
            warnings.append(f"renamed, but keyring secrets could not be checked: {exc.message}")
    for kind in moved:
        secrets.keyring.delete(old, kind)
    return {"old": old, "new": new, "secrets_moved": moved, "warnings": warnings}


def set_default(store: ProfileStore, name: str) -> dict[str, Any]:
    with store.edit() as doc:
        doc.set_default(name)
    return {"name": name, "default": True, "default_profile": name}


def list_profiles(store: ProfileStore) -> list[dict[str, Any]]:
    doc = store.load()
    rows = []
    for name in doc.profile_names():
        try:
            p = resolve_profile(doc, name)
            rows.append(
                {
                    "name": name,
                    "type": p.type,
                    "server": p.server,
                    "auth": p.values.get("auth") or "",
                    "inherits": p.values.get("inherits") or "",
                    "default": doc.default == name,
                }
            )
        except ConfigError as exc:
            rows.append({"name": name, "type": "", "server": "", "auth": "", "inherits": "", "default": doc.default == name, "error": exc.message})
    if not rows:
        p = resolve_profile(doc, None, allow_builtin_local=True)
        rows.append({"name": p.name, "type": p.type, "server": p.server, "auth": "", "inherits": "", "default": True, "builtin": True})
    return rows


def show_profile(store: ProfileStore, secrets, name: str | None) -> dict[str, Any]:
    doc = store.load()
    p = resolve_profile(doc, name, allow_builtin_local=True)
    secret_state: dict[str, str] = {}
    for kind in relevant_secret_kinds(p.values):
        # Showing never runs a secret_command (it may prompt, hang or print anything).
        try:
            secret_state[kind] = secrets.describe(p, kind)
        except SecretStoreUnavailable:
            secret_state[kind] = "unknown (no usable keyring)"
        except ConfigError as exc:
            secret_state[kind] = f"error ({exc.message})"
    ordered = {k: p.values[k] for k in FIELDS_BY_NAME if k in p.values}
    return {
        "name": p.name,
        "default": doc.default == p.name or p.name == BUILTIN_LOCAL and not doc.profile_names(),
        "builtin": p.name == BUILTIN_LOCAL and not doc.has(BUILTIN_LOCAL),
        "chain": p.chain,
        "values": ordered,
        "origin": {k: p.origin.get(k, "profile") for k in ordered},
        "secrets": secret_state,
        "active_server": _active_server(p),
    }


def _active_server(profile) -> dict[str, Any] | None:
    """A sticky profile's alternate in use (mailctl.profiles.failover), else None."""
    from mailctl.profiles.failover import active_for

    active = active_for(profile)
    return active.to_dict() if active else None


def failback(store: ProfileStore, name: str | None) -> dict[str, Any]:
    """`profile failback`: the profile's next connection starts with its primary again."""
    from mailctl.profiles.failover import forget, servers_of

    p = resolve_profile(store.load(), name)
    servers = servers_of(p)
    if servers is None:
        raise ConfigError(f"profile {p.name!r} has no alternate_host, so there is nothing to fail back from",
                          hint=f"failover needs one: mailctl profile edit {p.name} --alternate-host HOST")
    dropped = forget(p.name)
    return {"profile": p.name, "primary": servers[0], "was": dropped.to_dict() if dropped else None}


def check_inherits(doc, name: str, fields: dict[str, Any]) -> None:
    """A bad --inherits given on the command line is bad input, not a broken file: a parent
    that does not exist is exit 66, a cycle exit 65, both naming the field."""
    parent = fields.get("inherits")
    if not parent:
        return
    if not doc.has(parent):
        others = [n for n in doc.profile_names() if n != name]
        raise NotFoundError(f"inherits: no profile named {parent!r} in {doc.path}",
                            hint=("existing profiles: " + ", ".join(others)) if others else "add the parent profile first")
    for member in [name, *doc.children_of(name)]:
        try:
            resolve_profile(doc, member)
        except InheritanceCycle as exc:
            raise ValidationError(f"inherits: {exc.message}", field="inherits",
                                  hint=f"a profile cannot inherit from itself or its descendants; {parent!r} inherits from {name!r}") from None


# --- [settings] ---------------------------------------------------------------------------
def show_settings(store: ProfileStore) -> dict[str, Any]:
    """Every setting's effective value and whether the file sets it or it is the default."""
    from mailctl.profiles.model import SETTINGS_FIELDS

    doc = store.load()
    values = doc.settings()
    in_file = set((doc.doc.get("settings") or {}).keys()) if doc.exists else set()
    return {
        "file": str(store.path),
        "settings": {f.name: values[f.name] for f in SETTINGS_FIELDS},
        "origin": {f.name: "file" if f.name in in_file else "default" for f in SETTINGS_FIELDS},
        "help": {f.name: f.help for f in SETTINGS_FIELDS},
    }


def check_setting_name(key: str) -> str:
    """A KEY the command line cannot accept is a usage error (2), like an unknown choice."""
    from mailctl.errors import UsageError
    from mailctl.profiles.model import SECRET_KEYS, SETTINGS_BY_NAME

    key = key.replace("-", "_")
    if key in SECRET_KEYS or key not in SETTINGS_BY_NAME:
        raise UsageError(f"unknown setting {key!r}", hint="settings are: " + ", ".join(SETTINGS_BY_NAME)
                         + " (a profile's own fields are changed with `profile edit`)")
    return key


def set_setting(store: ProfileStore, key: str, raw: str) -> dict[str, Any]:
    """Set one [settings] key from its command-line text; a value breaking the rule is 65."""
    from mailctl.profiles.model import SETTINGS_BY_NAME, coerce_cli_value

    key = check_setting_name(key)
    value = coerce_cli_value(key, raw, table=SETTINGS_BY_NAME)
    with store.edit() as doc:
        doc.set_setting(key, value)
    return {"file": str(store.path), "key": key, "value": value}


def unset_setting(store: ProfileStore, key: str) -> dict[str, Any]:
    from mailctl.profiles.model import SETTINGS_BY_NAME

    key = check_setting_name(key)
    with store.edit() as doc:
        removed = doc.unset_setting(key)
    return {"file": str(store.path), "key": key, "removed": removed, "value": SETTINGS_BY_NAME[key].default}


# --- guided `profile add` -----------------------------------------------------------------
def check_new_name(store: ProfileStore, name: str) -> None:
    """Before any question is asked: the name is valid and not taken (exit 65 either way)."""
    validate_name(name)
    doc = store.load(for_writing=True, create=True)
    if doc.has(name):
        raise ValidationError(f"profile {name!r} already exists", field="name",
                              hint=f"choose another name, or change it with: mailctl profile edit {name}")


def unsaved_profile(store: ProfileStore, name: str, fields: dict[str, Any]):
    """The profile `fields` would make, resolved (presets, inheritance, defaults) and checked
    as add_profile checks it, on a copy of the file that is never saved."""
    doc = store.load(for_writing=True, create=True)
    doc.add_profile(name, fields)
    check_inherits(doc, name, fields)
    resolved = resolve_profile(doc, name)
    check_complete(resolved, adding=True)
    return resolved


def minimal_fields(store: ProfileStore, name: str, fields: dict[str, Any]) -> dict[str, Any]:
    """`fields` without the answers the profile gets anyway (the preset's host, the port of its
    security, provider = custom), so a guided profile reads as if given with the fewest flags;
    the transport and the authentication stay, for the reader. The resolved profile is the
    same either way."""
    doc = store.load(for_writing=True, create=True)

    def resolved(values: dict[str, Any]) -> dict[str, Any]:
        doc.add_profile(name, values)
        try:
            return resolve_profile(doc, name).values
        finally:
            doc.remove_profile(name)

    kept = {k: v for k, v in fields.items() if not (k == "provider" and v == "custom")}
    target = resolved(kept)
    for key in [k for k in kept if k not in ("type", "auth")]:
        trial = {k: v for k, v in kept.items() if k != key}
        if resolved(trial) == target:
            kept = trial
    return kept


def secrets_with(secrets, name: str, kind: str, value: str):
    """`secrets` answering `kind` of the unsaved profile `name` with the value typed in (for
    the connection test before anything is stored); every other lookup as before."""
    from mailctl.secrets import EnvStore, SecretResolver, env_var_name

    environ = dict(secrets.env.environ)
    environ[env_var_name(name, kind)] = value
    return SecretResolver(env=EnvStore(environ), keyring=secrets.keyring)
