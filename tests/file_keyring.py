"""A keyring backend in a JSON file, for tests that run mailctl in another process (under a
pseudo-terminal): the child loads it with PYTHON_KEYRING_BACKEND=file_keyring.FileKeyring
(tests/ on PYTHONPATH) and keeps its secrets in $MAILCTL_TEST_KEYRING, which the test reads
back. Registered through keyring's own API, like conftest's MemoryKeyring."""

from __future__ import annotations

import json
import os
from pathlib import Path

from keyring.backend import KeyringBackend
from keyring.errors import PasswordDeleteError

ENV = "MAILCTL_TEST_KEYRING"


def read_entries(path: Path) -> dict[str, str]:
    """'service/user' -> secret, as the child stored them ({} before anything was stored)."""
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


class FileKeyring(KeyringBackend):
    priority = 1

    @property
    def path(self) -> Path:
        return Path(os.environ[ENV])

    def _write(self, entries: dict[str, str]) -> None:
        self.path.write_text(json.dumps(entries), encoding="utf-8")

    def get_password(self, service, username):
        return read_entries(self.path).get(f"{service}/{username}")

    def set_password(self, service, username, password):
        entries = read_entries(self.path)
        entries[f"{service}/{username}"] = password
        self._write(entries)

    def delete_password(self, service, username):
        entries = read_entries(self.path)
        if entries.pop(f"{service}/{username}", None) is None:
            raise PasswordDeleteError(username)
        self._write(entries)
