"""Where the outbox is, and opening it: an SQLite file or a PostgreSQL database.

The location comes from, in order: the caller (`--outbox`), `$MAILCTL_OUTBOX`, the
`[settings] outbox` key of the profiles file, else `outbox.sqlite3` in the data dir. A
`postgresql://` (or `postgres://`) URL opens the PostgreSQL backend (outbox/pg.py; psycopg is
imported only then); any other `scheme://` is a configuration error rather than a file name;
everything else is a file path."""

from __future__ import annotations

import os
import re
from typing import Any, Mapping

from mailctl.errors import ConfigError

POSTGRES_SCHEMES = ("postgresql://", "postgres://")
_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_postgres_url(location: object) -> bool:
    return isinstance(location, str) and location.lower().startswith(POSTGRES_SCHEMES)


def looks_like_url(location: object) -> bool:
    return isinstance(location, str) and bool(_URL_RE.match(location))


def redact(url: str) -> str:
    """A URL without its password (user, host, port, database and options stay)."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
        password, host, port = parts.password, parts.hostname or "", parts.port
    except ValueError:  # a malformed netloc: show the scheme only
        return url.split("://", 1)[0] + "://[unparsable URL]"
    if password is None:
        return url
    if ":" in host:
        host = f"[{host}]"
    netloc = (f"{parts.username}@" if parts.username else "") + host + (f":{port}" if port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def outbox_location(location: str | os.PathLike | None = None,
                    settings: Mapping[str, Any] | None = None) -> tuple[str, str]:
    """(location, why): the URL or path of the outbox in use and where that came from."""
    from mailctl.paths import data_dir

    if location:
        found, why = os.fspath(location), "named by --outbox"
    elif os.environ.get("MAILCTL_OUTBOX"):
        found, why = os.environ["MAILCTL_OUTBOX"], "named by $MAILCTL_OUTBOX"
    elif settings and settings.get("outbox"):
        found, why = str(settings["outbox"]), "named by [settings] outbox"
    else:
        return str(data_dir() / "outbox.sqlite3"), "in the data dir"
    check_location(found, why)
    return found, why


def check_location(location: str, why: str = "") -> None:
    if looks_like_url(location) and not is_postgres_url(location):
        scheme = location.split("://", 1)[0]
        raise ConfigError(f"outbox {redact(location)} ({why or 'given'}): {scheme}:// is not an outbox backend",
                          hint="use a file path (SQLite) or a postgresql://USER@HOST:PORT/DATABASE URL")


def display(location: str) -> str:
    """The location as messages and --json show it (a URL without its password)."""
    return redact(location) if looks_like_url(location) else location


def open_outbox(location: str | os.PathLike | None = None, *, settings: Mapping[str, Any] | None = None,
                **kwargs: Any):
    """An open outbox (Outbox or PgOutbox) for `location` (see outbox_location())."""
    found, _why = outbox_location(location, settings)
    if is_postgres_url(found):
        from mailctl.outbox.pg import PgOutbox

        kwargs.pop("timeout", None)
        if "password" not in kwargs:
            kwargs["password"] = stored_password(found)
        return PgOutbox(found, **kwargs)
    from mailctl.outbox.store import Outbox

    return Outbox(found, **kwargs)


SECRET_NAME = "outbox"  # the secret store's name for the outbox: MAILCTL_SECRET_OUTBOX_OUTBOX_PASSWORD,
#                         keyring service "mailctl", user "outbox/outbox_password"


def stored_password(url: str) -> str | None:
    """The PostgreSQL outbox's password from the secret store (kind outbox_password), when the
    URL carries none; None lets libpq look further (PGPASSWORD, ~/.pgpass, PGSERVICE). A
    keyring that cannot be used is not an error here: libpq may still find the password."""
    from types import SimpleNamespace
    from urllib.parse import urlsplit

    from mailctl.errors import MailctlError
    from mailctl.secrets import default_resolver

    try:
        if urlsplit(url).password is not None:
            return None
    except ValueError:
        return None
    try:
        return default_resolver().get(SimpleNamespace(name=SECRET_NAME, values={}, chain=[SECRET_NAME]), "outbox_password")
    except MailctlError:
        return None
