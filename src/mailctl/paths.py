"""Where mailctl keeps its files. MAILCTL_CONFIG names the profiles file; MAILCTL_HOME, when
set, holds both the profiles file and the data directory (tests and portable installs)."""

from __future__ import annotations

import os
from pathlib import Path


def config_path(override: str | os.PathLike | None = None) -> Path:
    if override:
        return Path(override).expanduser()
    env = os.environ.get("MAILCTL_CONFIG")
    if env:
        return Path(env).expanduser()
    home = os.environ.get("MAILCTL_HOME")
    if home:
        return Path(home).expanduser() / "profiles.toml"
    import platformdirs

    return Path(platformdirs.user_config_dir("mailctl")) / "profiles.toml"


def data_dir() -> Path:
    home = os.environ.get("MAILCTL_HOME")
    if home:
        return Path(home).expanduser() / "data"
    import platformdirs

    return Path(platformdirs.user_data_dir("mailctl"))


def outbox_path(override: str | os.PathLike | None = None) -> Path:
    if override:
        return Path(override).expanduser()
    env = os.environ.get("MAILCTL_OUTBOX")
    if env:
        return Path(env).expanduser()
    return data_dir() / "outbox.sqlite3"


def default_maildir() -> Path:
    """Where the built-in `local` profile delivers."""
    return data_dir() / "Maildir"
