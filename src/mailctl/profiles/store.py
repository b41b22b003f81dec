"""The profiles file: tomlkit (a person's comments, order and formatting survive every edit),
atomic writes (temp file, fsync, rename), mode 0600, and a lock around read-modify-write."""

from __future__ import annotations

import contextlib
import os
import re
import time
from pathlib import Path
from typing import Any, Iterator

try:  # reading without tomlkit: ~10 ms less on every start (Python >= 3.11)
    import tomllib as _tomllib
except ImportError:  # pragma: no cover - Python 3.10
    _tomllib = None

from mailctl.errors import ConfigError, MailctlError, NotFoundError, ValidationError
from mailctl.profiles.model import FIELDS_BY_NAME, SETTINGS_BY_NAME, SETTINGS_FIELDS, validate_field, validate_name

SCHEMA_VERSION = 1
BUILTIN_LOCAL = "local"  # the built-in Maildir profile; `default = "local"` chooses it explicitly
TEMP_MAX_AGE = 300  # seconds: a temp file of an edit older than this was left by a killed edit
TOP_LEVEL_KEYS = ("schema_version", "default", "settings", "profiles")

NEW_FILE_HEADER = """\
# mailctl profiles. Secrets (passwords, client secrets, tokens) are never stored here:
# they live in the OS keyring, a secret_command, or MAILCTL_SECRET_<PROFILE>_<KIND>.
# Reference: profiles.example.toml, installed in share/doc/mailctl/ under mailctl's prefix
# (/usr/local, ~/.local, the virtualenv) and in the mailctl repository; also: man mailctl-profile.
"""

_HEADER_RE = re.compile(r"^\s*\[\s*([^\]\[]+?)\s*\]\s*(?:#.*)?$")


def _plain(value: Any) -> Any:
    """tomlkit items -> plain Python values."""
    if hasattr(value, "unwrap"):
        return value.unwrap()
    return value


def _norm_header(header: str) -> str:
    return ".".join(part.strip().strip('"').strip("'") for part in header.split("."))


def _line_of(text: str, table: str | None, key: str | None = None) -> int | None:
    """1-based line of `key` inside `[table]` (or of the table header when key is None)."""
    current = ""
    header_line = None
    for number, line in enumerate(text.splitlines(), 1):
        m = _HEADER_RE.match(line)
        if m and not line.lstrip().startswith("[["):
            current = _norm_header(m.group(1))
            if table is not None and current == table:
                header_line = number
                if key is None:
                    return number
            continue
        if key is not None and current == (table or ""):
            stripped = line.lstrip()
            if re.match(rf"^[\"']?{re.escape(key)}[\"']?\s*=", stripped):
                return number
    if header_line is None and key is not None and table:
        # The table written as dotted keys (a.key = ...) or an inline table (a = { key = ... }).
        leaf, k = re.escape(table.split(".")[-1]), re.escape(key)
        for number, line in enumerate(text.splitlines(), 1):
            stripped = line.lstrip()
            if re.match(rf"^[\"']?{leaf}[\"']?\s*\.\s*[\"']?{k}[\"']?\s*=", stripped) or (
                re.match(rf"^[\"']?{leaf}[\"']?\s*=\s*\{{", stripped) and re.search(rf"[{{,]\s*[\"']?{k}[\"']?\s*=", stripped)
            ):
                return number
    return header_line


class ProfileDocument:
    """A parsed, validated profiles file. Mutations keep the tomlkit document's formatting."""

    def __init__(self, path: Path, text: str, doc: Any, exists: bool, lookup: Any = None) -> None:
        self.path = path
        self.text = text
        self.doc = doc
        self.exists = exists
        self.lookup = lookup  # mailctl.paths.ConfigLookup: which file, why, what else was looked at

    # reading ----------------------------------------------------------------
    def _profiles(self):
        return self.doc.get("profiles") or {}

    def profile_names(self) -> list[str]:
        return list(self._profiles().keys())

    @property
    def default(self) -> str | None:
        value = self.doc.get("default")
        return str(value) if value else None

    def has(self, name: str) -> bool:
        return name in self._profiles()

    def raw_profile(self, name: str) -> dict[str, Any]:
        table = self._profiles().get(name)
        if table is None:
            raise NotFoundError(f"no profile named {name!r} in {self.path}")
        return {k: _plain(v) for k, v in table.items()}

    def settings(self) -> dict[str, Any]:
        values = {f.name: f.default for f in SETTINGS_FIELDS}
        values.update({k: _plain(v) for k, v in (self.doc.get("settings") or {}).items()})
        return values

    def children_of(self, name: str) -> list[str]:
        return [n for n in self.profile_names() if self.raw_profile(n).get("inherits") == name]

    # writing ----------------------------------------------------------------
    def _profiles_table(self):
        import tomlkit

        if "profiles" not in self.doc:
            self.doc.add("profiles", tomlkit.table(is_super_table=True))
        return self.doc["profiles"]

    def add_profile(self, name: str, values: dict[str, Any]) -> None:
        validate_name(name)
        if self.has(name):
            raise ValidationError(f"profile {name!r} already exists", field="name", hint=f"edit it with: mailctl profile edit {name}")
        import tomlkit

        table = tomlkit.table()
        for key, value in values.items():
            if value is not None:
                table[key] = validate_field(key, value)
        self._profiles_table()[name] = table

    def set_fields(self, name: str, values: dict[str, Any]) -> None:
        table = self._profiles().get(name)
        if table is None:
            raise NotFoundError(f"no profile named {name!r} in {self.path}")
        for key, value in values.items():
            if key == "inherits" and value == name:
                raise ValidationError("inherits: a profile cannot inherit itself", field="inherits")
            table[key] = validate_field(key, value)

    def unset_fields(self, name: str, keys: list[str]) -> None:
        table = self._profiles().get(name)
        if table is None:
            raise NotFoundError(f"no profile named {name!r} in {self.path}")
        for key in keys:
            if key not in FIELDS_BY_NAME:
                raise ValidationError(f"--unset: unknown field {key!r}", field=key, hint=f"known fields: {', '.join(FIELDS_BY_NAME)}")
            if key in table:
                del table[key]

    def remove_profile(self, name: str) -> None:
        if not self.has(name):
            raise NotFoundError(f"no profile named {name!r} in {self.path}")
        del self._profiles_table()[name]
        if self.default == name:
            del self.doc["default"]

    def rename_profile(self, old: str, new: str) -> None:
        validate_name(new)
        if not self.has(old):
            raise NotFoundError(f"no profile named {old!r} in {self.path}")
        if self.has(new):
            raise ValidationError(f"profile {new!r} already exists", field="name")
        profiles = self._profiles_table()
        table = profiles[old]
        del profiles[old]
        profiles[new] = table
        for child in self.children_of(old):
            profiles[child]["inherits"] = new
        if self.default == old:
            self.set_default(new)

    def set_default(self, name: str | None) -> None:
        if name is None:
            if "default" in self.doc:
                del self.doc["default"]
            return
        if not self.has(name) and name != BUILTIN_LOCAL:
            raise NotFoundError(f"no profile named {name!r} in {self.path}")
        # tomlkit places a new top-level key before the first table, where it belongs.
        self.doc["default"] = name

    def set_setting(self, key: str, value: Any) -> None:
        value = validate_field(key, value, table=SETTINGS_BY_NAME)
        if "settings" not in self.doc:
            import tomlkit

            self.doc.add("settings", tomlkit.table())
        self.doc["settings"][key] = value

    def unset_setting(self, key: str) -> bool:
        if key not in SETTINGS_BY_NAME:
            raise ValidationError(f"unknown setting {key!r}", field=key, hint=f"settings are: {', '.join(SETTINGS_BY_NAME)}")
        table = self.doc.get("settings")
        if table is None or key not in table:
            return False
        del table[key]
        return True

    def dumps(self) -> str:
        import tomlkit

        return tomlkit.dumps(self.doc)


class ProfileStore:
    def __init__(self, path: Path | str, lookup: Any = None) -> None:
        self.path = Path(path)
        self.lookup = lookup  # mailctl.paths.ConfigLookup, when the path came from the lookup

    def _named_missing(self) -> ConfigError:
        source = self.lookup.source
        where = "--config" if source == "--config" else "$MAILCTL_CONFIG"
        return ConfigError(
            f"{self.path}: no such profiles file (named by {where})",
            hint=f"check the path; or create it with: mailctl --config {self.path} profile add NAME --host HOST; "
            + ("or unset MAILCTL_CONFIG to use the usual files" if where != "--config" else "or leave out --config to use the usual files"),
        )

    def _check_writable(self) -> None:
        """The system file is read by everyone and written by its administrator: refuse an
        edit by a user who cannot write it, naming the file an edit would otherwise need."""
        if self.lookup is None or self.lookup.source != "system":
            return
        target = Path(os.path.realpath(self.path))
        if os.access(target, os.W_OK) and os.access(target.parent, os.W_OK | os.X_OK):
            return
        from mailctl.paths import user_config_path

        user = user_config_path()
        raise ConfigError(
            f"{self.path}: the profiles in use come from the system file, which this user cannot change",
            hint=f"edit it as its owner (e.g. with sudo), or start a file of your own, which then replaces it for you: "
            f"mkdir -p {user.parent} && cp {self.path} {user}",
        )

    # reading ----------------------------------------------------------------
    def load(self, *, for_writing: bool = False, create: bool = False) -> ProfileDocument:
        """Read and validate the file. Only edit() needs the tomlkit document (comments and
        formatting kept for the write); a plain read parses with the standard library's
        tomllib where it exists, and falls back to tomlkit for the error message of a
        malformed file, so both paths report the same line.

        A file named by --config / MAILCTL_CONFIG must exist, except for `create` (profile
        add makes it)."""
        if for_writing:
            self._check_writable()
        try:
            text = self.path.read_text(encoding="utf-8")
            exists = True
        except FileNotFoundError:
            text, exists = "", False
            if self.path.is_symlink() and not for_writing:
                raise ConfigError(
                    f"{self.path}: a symbolic link to {os.readlink(self.path)}, which does not exist",
                    hint="fix the link (your dotfile manager?), or remove it to start a new file",
                ) from None
        except IsADirectoryError:
            raise ConfigError(f"{self.path}: is a directory, expected the profiles TOML file") from None
        except PermissionError:
            raise ConfigError(f"{self.path}: permission denied reading the profiles file") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{self.path}: not UTF-8 text", hint="the profiles file must be UTF-8 TOML") from None
        except OSError as exc:
            raise ConfigError(f"{self.path}: cannot read the profiles file ({exc.strerror or exc})") from None
        if not exists:
            if self.lookup is not None and self.lookup.named and not (for_writing and create):
                raise self._named_missing()
            if not for_writing:
                return ProfileDocument(self.path, "", {"schema_version": SCHEMA_VERSION}, exists=False, lookup=self.lookup)
            import tomlkit

            doc = tomlkit.parse(NEW_FILE_HEADER)
            doc.add("schema_version", SCHEMA_VERSION)
            return ProfileDocument(self.path, "", doc, exists=False, lookup=self.lookup)
        if not for_writing and _tomllib is not None:
            try:
                plain = _tomllib.loads(text)
            except _tomllib.TOMLDecodeError:
                pass  # tomlkit below words the error
            except RecursionError:
                raise _too_deep(self.path) from None
            else:
                _check_depth(self.path, plain)
                validate_document(self.path, text, plain)
                return ProfileDocument(self.path, text, plain, exists=True, lookup=self.lookup)
        import tomlkit
        from tomlkit.exceptions import TOMLKitError

        try:
            doc = tomlkit.parse(text)
        except TOMLKitError as exc:
            line = getattr(exc, "line", None)
            col = getattr(exc, "col", None)
            where = f"{self.path}:{line}" + (f":{col}" if col else "") if line else str(self.path)
            msg = str(exc).split(" at line ")[0]
            raise ConfigError(f"{where}: malformed TOML: {msg}", hint="fix the file by hand; mailctl left it untouched") from None
        except RecursionError:
            raise _too_deep(self.path) from None
        try:
            _check_depth(self.path, doc)
            validate_document(self.path, text, doc)
        except RecursionError:
            raise _too_deep(self.path) from None
        return ProfileDocument(self.path, text, doc, exists=True, lookup=self.lookup)

    # writing ----------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        from mailctl.paths import private_dir

        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            private_dir(self.path.parent)
            # O_NOFOLLOW: a symlink planted (or left dangling) at the lock path is refused,
            # never followed to create or truncate a file elsewhere.
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
        except OSError as exc:
            if os.path.islink(lock_path):
                raise ConfigError(f"{lock_path}: the lock file is a symbolic link; mailctl does not follow it",
                                  hint=f"remove it: rm {lock_path}") from None
            raise ConfigError(f"{lock_path}: cannot create the lock file ({exc.strerror or exc})",
                              hint=f"check the permissions of {self.path.parent}") from None
        try:
            try:
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_EX)
            except ImportError:  # pragma: no cover - Windows
                import msvcrt

                msvcrt.locking(fd, msvcrt.LK_LOCK, 1)
            yield
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def edit(self, *, create: bool = False) -> Iterator[ProfileDocument]:
        """Read-modify-write under the lock; the file is replaced only when the body succeeds
        and the result validates. `create`: a missing file named by --config may be created."""
        import tomlkit

        self._check_writable()
        with self.lock():
            doc = self.load(for_writing=True, create=create)
            yield doc
            text = doc.dumps()
            # Re-validate what we are about to write: never leave a file we cannot read.
            try:
                validate_document(self.path, text, tomlkit.parse(text))
            except MailctlError as exc:
                raise ValidationError(exc.message, hint=exc.hint) from None
            if text != doc.text or not doc.exists:
                mode = 0o600
                if doc.exists and self.lookup is not None and self.lookup.source == "system":
                    # the system file is read by every user: its owner's edit keeps its mode
                    mode = os.stat(self.path).st_mode & 0o777
                try:
                    atomic_write(self.path, text, mode)
                except OSError as exc:
                    raise ConfigError(f"{self.path}: cannot write the profiles file ({exc.strerror or exc})",
                                      hint="check the permissions of the file and its directory") from None


MAX_DEPTH = 20  # arrays and tables nested deeper than this are no profile file


def _too_deep(path: Path) -> ConfigError:
    return ConfigError(f"{path}: arrays or tables nested too deeply (more than {MAX_DEPTH} levels)",
                       hint="a profiles file is a few flat tables; fix the file by hand")


def _check_depth(path: Path, value: Any, depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        raise _too_deep(path)
    if isinstance(value, dict):
        for item in value.values():
            _check_depth(path, item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_depth(path, item, depth + 1)


def _clean_stale_temp_files(directory: Path, name: str) -> None:
    """Remove temp files that an edit killed mid-write left behind (older than TEMP_MAX_AGE:
    a live edit holds its temp file for milliseconds)."""
    prefix = f".{name}."
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    now = time.time()
    for entry in entries:
        if entry.name.startswith(prefix) and entry.name.endswith(".tmp"):
            try:
                if entry.is_file(follow_symlinks=False) and now - entry.stat(follow_symlinks=False).st_mtime > TEMP_MAX_AGE:
                    os.unlink(entry.path)
            except OSError:
                pass


def atomic_write(path: Path, text: str, mode: int = 0o600) -> None:
    """Write `text` to `path` atomically (temp file, fsync, rename). A symlinked path is
    written through: the link's target is replaced and the link stays (dotfile managers)."""
    from mailctl.paths import private_dir

    path = Path(os.path.realpath(path)) if os.path.islink(path) else path
    private_dir(path.parent)
    _clean_stale_temp_files(path.parent, path.name)
    import tempfile  # here, not at import: a one-shot command that reads never needs it

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode) if hasattr(os, "fchmod") else None
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    try:
        dfd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _type_name(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "table"}.get(type(value), type(value).__name__)


def validate_document(path: Path, text: str, doc) -> None:
    """Unknown keys, wrong types and broken rules -> ConfigError naming file, line and key."""

    def fail(table: str | None, key: str | None, message: str, hint: str | None = None):
        line = _line_of(text, table, key)
        where = f"{path}:{line}" if line else str(path)
        raise ConfigError(f"{where}: {message}", hint=hint or "fix the file (mailctl left it untouched) or use: mailctl profile edit NAME")

    for key, value in doc.items():
        if key not in TOP_LEVEL_KEYS:
            fail(None, key, f"unknown key {key!r}", f"top-level keys are: {', '.join(TOP_LEVEL_KEYS)}")
    version = _plain(doc.get("schema_version", SCHEMA_VERSION))
    if isinstance(version, bool) or not isinstance(version, int):
        fail(None, "schema_version", f"schema_version: expected an integer, got {_type_name(version)}")
    if version > SCHEMA_VERSION:
        fail(None, "schema_version", f"schema_version {version} was written by a newer mailctl (this one reads {SCHEMA_VERSION})", "upgrade mailctl")
    default = _plain(doc.get("default"))
    if default is not None and not isinstance(default, str):
        fail(None, "default", f"default: expected a profile name string, got {_type_name(default)}")
    settings = doc.get("settings")
    if settings is not None:
        if not isinstance(_plain(settings), dict):
            fail(None, "settings", "settings: expected a table")
        for key, value in settings.items():
            try:
                validate_field(key, _plain(value), table=SETTINGS_BY_NAME)
            except ValidationError as exc:
                fail("settings", key, exc.message, exc.hint)
    profiles = doc.get("profiles")
    if profiles is None:
        if default and default != BUILTIN_LOCAL:
            fail(None, "default", f"default: no profile named {default!r}")
        return
    if not isinstance(_plain(profiles), dict):
        fail(None, "profiles", "profiles: expected a table of profiles")
    for name, table in profiles.items():
        if not isinstance(_plain(table), dict):
            fail("profiles", name, f"profiles.{name}: expected a table")
        try:
            validate_name(name)
        except ValidationError as exc:
            fail(f"profiles.{name}", None, exc.message)
        for key, value in table.items():
            plain = _plain(value)
            spec = FIELDS_BY_NAME.get(key)
            if spec is None:
                try:
                    validate_field(key, plain)
                except ValidationError as exc:
                    fail(f"profiles.{name}", key, f"profiles.{name}: {exc.message}", exc.hint)
            expected = {"str": str, "int": int, "bool": bool, "list": list, "float": (int, float)}[spec.kind]
            if isinstance(plain, bool) and spec.kind != "bool" or not isinstance(plain, expected):
                fail(f"profiles.{name}", key, f"profiles.{name}.{key}: expected {spec.kind}, got {_type_name(plain)}")
            try:
                validate_field(key, plain)
            except ValidationError as exc:
                fail(f"profiles.{name}", key, f"profiles.{name}.{exc.message}", exc.hint)
    if default and default not in profiles and default != BUILTIN_LOCAL:
        fail(None, "default", f"default: no profile named {default!r}", f"run: mailctl profile set-default NAME")
