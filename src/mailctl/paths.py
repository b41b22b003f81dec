"""Where mailctl keeps its files, and why.

The profiles file is looked up in this order (the first that exists is used, like msmtp's
~/.msmtprc before /etc/msmtprc):

1. the file named by --config or $MAILCTL_CONFIG: it must exist (a typo is an error, never a
   silent fallback);
2. the user file: $MAILCTL_HOME/profiles.toml when MAILCTL_HOME is set, else the platform's
   user config dir (~/.config/mailctl/profiles.toml on Linux);
3. the system file, for services and cron jobs whose HOME has no profiles:
   $MAILCTL_SYSTEM_CONFIG when set (empty: none), else /etc/mailctl/profiles.toml on Linux and
   other Unixes and the platform's site config dir on macOS and Windows. A self-contained
   MAILCTL_HOME (tests, portable installs) has no system file unless MAILCTL_SYSTEM_CONFIG
   names one.

When none exists, the user file is where the first `profile add` writes."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path


def user_config_path() -> Path:
    home = os.environ.get("MAILCTL_HOME")
    if home:
        return Path(home).expanduser() / "profiles.toml"
    import platformdirs

    return Path(platformdirs.user_config_dir("mailctl")) / "profiles.toml"


def system_config_path() -> Path | None:
    """The system-wide profiles file, or None when there is none to look at."""
    env = os.environ.get("MAILCTL_SYSTEM_CONFIG")
    if env is not None:
        return Path(env).expanduser() if env else None
    if os.environ.get("MAILCTL_HOME"):
        return None
    if sys.platform.startswith(("win", "darwin")):
        import platformdirs

        return Path(platformdirs.site_config_dir("mailctl")) / "profiles.toml"
    return Path("/etc/mailctl/profiles.toml")


def _present(path: Path) -> bool:
    """A file (or a symlink, even a dangling one: it is the user's file, to be reported)."""
    return os.path.lexists(path)


@dataclass(frozen=True)
class ConfigLookup:
    """Which profiles file is in use, and why. `searched` lists (what, path) in lookup order
    up to the one used; `source` is --config, MAILCTL_CONFIG, user, system or none."""

    path: Path
    source: str
    searched: tuple[tuple[str, Path], ...] = ()

    @property
    def named(self) -> bool:
        """Named explicitly (--config / MAILCTL_CONFIG): it must exist."""
        return self.source in ("--config", "MAILCTL_CONFIG")

    @property
    def exists(self) -> bool:
        return _present(self.path)

    @property
    def reason(self) -> str:
        return {
            "--config": "named by --config",
            "MAILCTL_CONFIG": "named by $MAILCTL_CONFIG",
            "user": "the user file" + (" ($MAILCTL_HOME)" if os.environ.get("MAILCTL_HOME") else ""),
            "system": "the system file (no user file)" + (" ($MAILCTL_SYSTEM_CONFIG)" if os.environ.get("MAILCTL_SYSTEM_CONFIG") else ""),
            "none": "no profiles file exists; the first `mailctl profile add NAME` creates this user file",
            "given": "given",
        }.get(self.source, self.source)

    def searched_text(self) -> str:
        """'$MAILCTL_CONFIG (not set), /home/u/.config/mailctl/profiles.toml (not found), ...'"""
        parts = []
        if not self.named and self.source != "given":
            parts.append("$MAILCTL_CONFIG and --config (not set)")
        for what, path in self.searched:
            parts.append(f"{path} ({what}, {'found' if _present(path) else 'not found'})")
        return ", ".join(parts)

    def to_dict(self) -> dict:
        return {"path": str(self.path), "source": self.source, "reason": self.reason, "exists": self.exists,
                "searched": [{"what": what, "path": str(path), "exists": _present(path)} for what, path in self.searched]}


def find_config(override: str | os.PathLike | None = None) -> ConfigLookup:
    """The profiles file to use (see the module docstring for the order)."""
    if override:
        env = os.environ.get("MAILCTL_CONFIG")
        source = "MAILCTL_CONFIG" if env and os.fspath(override) == env else "--config"
        path = Path(override).expanduser()
        return ConfigLookup(path, source, ((source, path),))
    env = os.environ.get("MAILCTL_CONFIG")
    if env:
        path = Path(env).expanduser()
        return ConfigLookup(path, "MAILCTL_CONFIG", (("MAILCTL_CONFIG", path),))
    user = user_config_path()
    searched: list[tuple[str, Path]] = [("user file", user)]
    if _present(user):
        return ConfigLookup(user, "user", tuple(searched))
    system = system_config_path()
    if system is not None:
        searched.append(("system file", system))
        if _present(system):
            return ConfigLookup(system, "system", tuple(searched))
    return ConfigLookup(user, "none", tuple(searched))


def config_path(override: str | os.PathLike | None = None) -> Path:
    return find_config(override).path


def data_dir() -> Path:
    home = os.environ.get("MAILCTL_HOME")
    if home:
        return Path(home).expanduser() / "data"
    import platformdirs

    return Path(platformdirs.user_data_dir("mailctl"))


def data_dir_reason() -> str:
    return "$MAILCTL_HOME/data" if os.environ.get("MAILCTL_HOME") else "the platform's user data dir"


def outbox_path(override: str | os.PathLike | None = None) -> Path:
    if override:
        return Path(override).expanduser()
    env = os.environ.get("MAILCTL_OUTBOX")
    if env:
        return Path(env).expanduser()
    return data_dir() / "outbox.sqlite3"


def outbox_reason(override: str | os.PathLike | None = None) -> str:
    if override:
        return "named by --outbox"
    if os.environ.get("MAILCTL_OUTBOX"):
        return "named by $MAILCTL_OUTBOX"
    return "in the data dir"


def default_maildir() -> Path:
    """Where the built-in `local` profile delivers."""
    return data_dir() / "Maildir"


def private_dir(path: Path) -> Path:
    """Create `path` and every missing parent with mode 0700 (mkdir(parents=True) would give
    the parents the umask's mode, often 0755)."""
    missing = []
    current = path
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:
            pass
    return path
