"""Sticky failover (seed 002): once a profile's alternate server has been used, keep using it
until an operator returns to the primary (`mailctl profile failback NAME`) or reconfigures the
profile.

    failover = "per-connection"   # default: every connection tries the primary first
    failover = "sticky"           # after a failover, the alternate first until failback

The active server is remembered per profile in <data dir>/failover.json, for every process of
this user on this host (a cron flush, `mailctl send`, a worker): reachability is a property of
the host, so hosts sharing a PostgreSQL outbox each keep their own. A record names the primary
and the alternate it was made for; once the profile's host, port or alternate changes, the
record no longer applies (that is the reconfiguration) and is dropped at the next failback or
reconnect. Writes are atomic and serialised with a lock file, so concurrent flushes never leave
a torn file."""

from __future__ import annotations

import fcntl
import json
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from mailctl import paths
from mailctl.profiles.model import DEFAULT_PORTS

STATE_NAME = "failover.json"


@dataclass(frozen=True)
class ActiveServer:
    """The server a sticky profile uses instead of its primary, and since when."""

    profile: str
    server: str  # host:port of the alternate in use
    primary: str  # host:port of the primary it replaces
    since: float
    reason: str = ""  # why the primary was left (its error)

    def to_dict(self) -> dict:
        return asdict(self)


def address(host: str, port: int) -> str:
    """host:port as the SMTP transport names a server ([v6]:port)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def servers_of(profile) -> tuple[str, str] | None:
    """(primary, alternate) addresses of a resolved SMTP profile; None without an alternate."""
    host, alt = profile.get("host"), profile.get("alternate_host")
    if not host or not alt:
        return None
    port = int(profile.get("port") or DEFAULT_PORTS.get(profile.get("security") or "starttls", 25))
    return address(host, port), address(alt, int(profile.get("alternate_port") or port))


def active_for(profile) -> ActiveServer | None:
    """The alternate a sticky profile is using now (None: on its primary, or not sticky)."""
    servers = servers_of(profile) if profile.get("failover") == "sticky" else None
    return active_server(profile.name, *servers) if servers else None


def state_path() -> Path:
    return paths.data_dir() / STATE_NAME


def active_server(profile: str, primary: str, alternate: str) -> ActiveServer | None:
    """The remembered alternate of `profile`, if it was recorded for this primary and this
    alternate (a reconfigured profile starts over on its primary)."""
    entry = _read().get(profile)
    if not entry or entry.get("primary") != primary or entry.get("server") != alternate:
        return None
    return _entry(profile, entry)


def remember(profile: str, primary: str, alternate: str, reason: str = "") -> ActiveServer:
    """Record that `profile` now uses `alternate` (its primary could not be reached)."""
    active = ActiveServer(profile, alternate, primary, time.time(), reason[:300])
    with _locked() as state:
        current = state.get(profile)
        if current and current.get("primary") == primary and current.get("server") == alternate:
            return _entry(profile, current)  # already recorded: keep the first "since"
        state[profile] = {k: v for k, v in active.to_dict().items() if k != "profile"}
    return active


def forget(profile: str) -> ActiveServer | None:
    """Return `profile` to its primary; the record that was dropped, if any."""
    with _locked() as state:
        entry = state.pop(profile, None)
    return _entry(profile, entry) if entry else None


def all_active() -> dict[str, ActiveServer]:
    return {name: _entry(name, e) for name, e in _read().items()}


def _entry(profile: str, entry: dict) -> ActiveServer:
    return ActiveServer(profile, str(entry.get("server", "")), str(entry.get("primary", "")),
                        float(entry.get("since", 0.0)), str(entry.get("reason", "")))


def _read() -> dict[str, dict]:
    """The state; an unreadable or foreign file counts as empty (failover then starts on the
    primary, which is always safe)."""
    try:
        data = json.loads(state_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, dict)}


@contextmanager
def _locked() -> Iterator[dict[str, dict]]:
    """Read-modify-write under an exclusive lock; written atomically (temp file + rename)."""
    path = state_path()
    paths.private_dir(path.parent)
    fd = os.open(str(path) + ".lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        state = _read()
        before = dict(state)
        yield state
        if state != before:
            tmp = path.with_name(f".{STATE_NAME}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(state, indent=1, sort_keys=True) + "\n", encoding="utf-8")
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
    finally:
        os.close(fd)


def active_in(doc) -> list[ActiveServer]:
    """The sticky profiles of a profiles document that are on their alternate now (for
    `queue stats`); profiles that do not resolve are left out (lint reports them)."""
    from mailctl.errors import MailctlError
    from mailctl.profiles.resolve import resolve_profile

    state = _read()
    found = []
    for name in doc.profile_names():
        if name not in state:
            continue
        try:
            active = active_for(resolve_profile(doc, name))
        except MailctlError:
            continue
        if active is not None:
            found.append(active)
    return found
