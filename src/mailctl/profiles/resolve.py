"""Inheritance, presets and defaults: the effective values of a profile and where each came from."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Callable

from mailctl.errors import ConfigError, MailctlError, NotFoundError
from mailctl.profiles.model import DEFAULT_PORTS, FIELDS_BY_NAME, ResolvedProfile
from mailctl.profiles.presets import graph_endpoint, preset_values
from mailctl.profiles.store import BUILTIN_LOCAL
from mailctl import paths


class InheritanceCycle(ConfigError):
    """The profiles file has an inheritance cycle (exit 78 when read from the file; the
    commands that create one from flags report it as a bad --inherits value, exit 65)."""


def builtin_local() -> ResolvedProfile:
    """The embedded default: deliver into a Maildir, no server needed."""
    values = {"type": "file", "maildir": str(paths.default_maildir()), "from_address": "mailctl@localhost"}
    return ResolvedProfile(BUILTIN_LOCAL, values, {k: "built-in" for k in values}, [BUILTIN_LOCAL])


class NoProfilesConfigured(ConfigError):
    """No profile was named and none is configured: mail must not go to the built-in local
    Maildir by accident (cron with another HOME, a typo in a path)."""


def implicit_local(doc, name: str | None) -> bool:
    """True when `name` resolves to the built-in local profile only because nothing is
    configured (no name, no default, no profiles)."""
    return name is None and doc.default is None and not doc.profile_names()


def no_profiles_error(doc) -> NoProfilesConfigured:
    lookup = getattr(doc, "lookup", None)
    where = f"looked at {lookup.searched_text()}" if lookup is not None else f"looked at {doc.path}"
    if getattr(doc, "exists", False):
        where = f"{doc.path} defines none"
    return NoProfilesConfigured(
        f"no profile configured ({where})",
        hint="add one (mailctl profile add NAME --host HOST), point MAILCTL_CONFIG at your profiles file, "
        "or choose the built-in Maildir profile explicitly: -p local (or: mailctl profile set-default local)",
    )


def check_delivery_config(doc, name: str | None, *, dry_run: bool = False) -> None:
    """Commands that deliver mail (send, sendmail, queue flush) never fall back to the built-in
    local profile: ConfigError (78) naming the files looked at, unless `local` is chosen. A
    run that delivers nothing (a dry run, sending disabled in [settings]) only looks."""
    if dry_run or not doc.settings().get("sending_enabled", True):
        return
    if implicit_local(doc, name):
        raise no_profiles_error(doc)


def resolve_profile(doc, name: str | None = None, *, allow_builtin_local: bool = False) -> ResolvedProfile:
    """The profile `name` (or the default) with inheritance, presets and defaults applied.

    The built-in `local` profile (a Maildir, no server) is used when chosen by name or by
    `default = "local"`. With no name, no default and no profiles at all it is used only with
    allow_builtin_local (test connect/send, profile show/list: the Quick start); otherwise that
    is NoProfilesConfigured (78), naming the files looked at."""
    names = doc.profile_names()
    if name is None:
        name = doc.default
        if name is None:
            if not names:
                if allow_builtin_local:
                    return builtin_local()
                raise no_profiles_error(doc)
            if len(names) == 1:
                name = names[0]
            else:
                raise ConfigError(
                    "no profile given and no default profile set",
                    hint="pass --profile NAME or run: mailctl profile set-default NAME",
                )
    if name not in names:
        if name == BUILTIN_LOCAL:
            return builtin_local()
        raise NotFoundError(
            f"no profile named {name!r} in {doc.path}",
            hint=("existing profiles: " + ", ".join(names)) if names else "create one with: mailctl profile add NAME",
        )

    chain: list[str] = []
    current: str | None = name
    while current:
        if current in chain:
            raise InheritanceCycle(
                f"profile {name!r}: inheritance cycle {' -> '.join(chain + [current])} in {doc.path}",
                hint=f"remove 'inherits' from one of them: mailctl profile edit {current} --unset inherits",
            )
        if current not in names:
            raise ConfigError(
                f"profile {chain[-1]!r} inherits {current!r}, which does not exist in {doc.path}",
                hint=f"create it or run: mailctl profile edit {chain[-1]} --unset inherits",
            )
        chain.append(current)
        current = doc.raw_profile(current).get("inherits") or None

    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for depth, pname in enumerate(reversed(chain)):
        own = pname == name
        for key, value in doc.raw_profile(pname).items():
            if key == "inherits":
                continue
            values[key] = value
            origin[key] = "profile" if own else f"inherited:{pname}"
    if doc.raw_profile(name).get("inherits"):
        values["inherits"] = doc.raw_profile(name)["inherits"]
        origin["inherits"] = "profile"

    transport = values.get("type") or "smtp"
    for key, value in preset_values(values.get("provider"), transport).items():
        if values.get(key) in (None, "", 0):
            values[key] = value
            origin[key] = f"preset:{values['provider']}"
    if transport == "smtp":
        if not values.get("security"):
            values["security"] = "starttls"
            origin["security"] = "default"
        if not values.get("port"):
            values["port"] = DEFAULT_PORTS[values["security"]]
            origin["port"] = f"default for security={values['security']}"
        if not values.get("auth"):
            values["auth"] = "password" if values.get("username") else "none"
            origin["auth"] = "default"
    if transport == "lmtp":  # RFC 2033: port 24, usually local and unencrypted (transports/lmtp.py)
        for key, value in (("security", "none"), ("port", 24), ("auth", "password" if values.get("username") else "none")):
            if not values.get(key):
                values[key] = value
                origin[key] = "default for lmtp"
    if transport == "graph" and not values.get("graph_endpoint"):
        values["graph_endpoint"] = graph_endpoint(values.get("cloud"))
        origin["graph_endpoint"] = f"default for cloud={values.get('cloud') or 'global'}"
    if transport == "file" and not values.get("maildir"):
        values["maildir"] = str(paths.default_maildir())
        origin["maildir"] = "default"
    for key in ("type", "tls_verify", "cloud", "timeout", "save_to_sent_items"):
        if key not in values:
            values[key] = FIELDS_BY_NAME[key].default
            origin[key] = "default"
    return ResolvedProfile(name, values, origin, chain)


REQUIRED: dict[str, tuple[str, ...]] = {
    "smtp": ("host",),
    "graph": ("client_id", "tenant_id"),
    "ews": ("username",),
    "file": (),
    "gmail-api": ("client_id",),
}


def check_complete(profile: ResolvedProfile, *, adding: bool = False) -> None:
    """Raise ConfigError (78) naming the first missing field a transport needs. The hint
    says how to set it: `profile edit`, or with adding=True (`profile add`, where nothing was
    saved yet) the add again with the missing flag."""

    name = profile.name
    for key in REQUIRED.get(profile.type, ()):
        if not profile.values.get(key):
            raise ConfigError(
                f"profile {name!r} ({profile.type}): missing required field {key}",
                hint=f"nothing was saved; add it again with the field: mailctl profile add {name} --{key.replace('_', '-')} VALUE (and the other fields)"
                if adding else f"set it with: mailctl profile edit {name} --{key.replace('_', '-')} VALUE",
            )
    auth = profile.values.get("auth")
    if profile.type == "ews" and not (profile.values.get("ews_url") or profile.values.get("autodiscover")):
        raise ConfigError(
            f"profile {profile.name!r} (ews): missing required field ews_url",
            hint=f"nothing was saved; add it again with the field: mailctl profile add {name} --ews-url https://HOST/EWS/Exchange.asmx (or --autodiscover)"
            if adding else f"set it with: mailctl profile edit {name} --ews-url https://HOST/EWS/Exchange.asmx (or --autodiscover)",
        )
    if auth in ("oauth", "client-credentials") and profile.values.get("provider") == "microsoft365" or (
        auth == "client-credentials"
    ):
        for key in ("client_id", "tenant_id"):
            if not profile.values.get(key):
                raise ConfigError(
                    f"profile {profile.name!r}: auth={auth} needs {key}",
                    hint="register an app in Microsoft Entra (App registrations), then: "
                    + (f"mailctl profile add {name} --{key.replace('_', '-')} VALUE (and the other fields)" if adding
                       else f"mailctl profile edit {name} --{key.replace('_', '-')} VALUE"),
                )


def primary_secret_kind(values: dict[str, Any]) -> str | None:
    """The secret a profile's authentication needs, if it is one the user supplies."""
    auth = values.get("auth")
    if values.get("type") == "file":
        return None
    return {
        "password": "password",
        "client-credentials": "client_secret",
        "service-account": "service_account_key",
    }.get(auth or "")


def relevant_secret_kinds(values: dict[str, Any]) -> list[str]:
    kinds = []
    primary = primary_secret_kind(values)
    if primary:
        kinds.append(primary)
    if values.get("auth") == "oauth":
        kinds.append("oauth_tokens")
    if values.get("proxy"):
        kinds.append("proxy_password")
    return kinds


def profile_for_sender(doc, name: str | None, addresses, *, on_choice: Callable[[str], None] | None = None) -> str | None:
    """The profile to send with when none was named, chosen by the sender as msmtp chooses an
    account by `from`: `name` when given; else, for the first of `addresses` (the envelope
    sender, then the From header's) that any profile claims, the first profile (file order)
    whose from_address is that address, else the first whose from_match has a glob matching
    it; None when no profile claims any of them (the caller then uses the default).
    Addresses compare without regard to case. A profile that does not resolve is skipped:
    choosing it would only turn its error into another's. on_choice(reason) hears why when
    the sender chose (mailctl -v)."""
    if name:
        return name
    match = match_sender(doc, addresses)
    if match is None:
        return None
    if on_choice is not None:
        on_choice(match.reason)
    return match.profile


@dataclass(frozen=True)
class SenderMatch:
    """The profile a sender address chose (profile_for_sender) and by which rule."""

    profile: str
    address: str
    rule: str  # "from_address", or the from_match glob that matched

    @property
    def reason(self) -> str:
        """'chosen by sender ops@corp.example matching from_match *@corp.example' (mailctl -v)."""
        if self.rule == "from_address":
            return f"chosen by sender {self.address}, its from_address"
        return f"chosen by sender {self.address} matching from_match {self.rule}"


def match_sender(doc, addresses) -> SenderMatch | None:
    """The first profile claiming one of `addresses` (see profile_for_sender), with the rule."""
    wanted = [a.strip().strip("<>").strip().casefold() for a in addresses if a and "@" in a]
    if not wanted:
        return None
    claims = _sender_claims(doc)
    for address in wanted:
        for pname, own, _patterns in claims:
            if own == address:
                return SenderMatch(pname, address, "from_address")
        for pname, _own, patterns in claims:
            hit = next((p for p in patterns if fnmatch.fnmatchcase(address, p)), None)
            if hit is not None:
                return SenderMatch(pname, address, hit)
    return None


def default_reason(doc, resolved: ResolvedProfile) -> str:
    """Why resolve_profile(doc, None) gave `resolved`, in words (mailctl -v): the default
    profile, the only profile, or the built-in local one."""
    if doc.default is not None and doc.default == resolved.name:
        return "the default profile"
    if resolved.name == BUILTIN_LOCAL and not doc.profile_names():
        return "the built-in local profile: no profiles configured"
    if doc.profile_names() == [resolved.name]:
        return "the only profile"
    return "the default profile"


def _sender_claims(doc) -> list[tuple[str, str, list[str]]]:
    """(profile, its from_address casefolded, its from_match patterns casefolded), file order."""
    out = []
    for pname in doc.profile_names():
        try:
            values = resolve_profile(doc, pname).values
        except MailctlError:
            continue
        own = str(values.get("from_address") or "").strip().casefold()
        patterns = [str(p).casefold() for p in values.get("from_match") or []]
        if own or patterns:
            out.append((pname, own, patterns))
    return out
