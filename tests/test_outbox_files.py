"""The SQLite outbox's files: a dangling symlink is refused (nothing is created where it
points), the directories it creates are 0700 (parents too), the file 0600 (issue #12, 14)."""

from __future__ import annotations

import os
import stat

import pytest

from mailctl.errors import ConfigError
from mailctl.outbox import Outbox


def test_a_dangling_symlink_is_refused_and_nothing_is_created(tmp_path):
    target = tmp_path / "elsewhere" / "outbox.sqlite3"
    link = tmp_path / "outbox.sqlite3"
    link.symlink_to(target)
    with pytest.raises(ConfigError) as info:
        Outbox(link)
    assert "symbolic link" in info.value.message and str(target) in info.value.message
    assert not target.exists() and not target.parent.exists()


def test_a_symlink_to_an_existing_outbox_is_followed(tmp_path):
    real = tmp_path / "real.sqlite3"
    with Outbox(real) as box:
        box.enqueue(b"Subject: s\r\n\r\nb\r\n", "a@example.com", ["b@example.org"])
    link = tmp_path / "link.sqlite3"
    link.symlink_to(real)
    with Outbox(link) as box:
        assert box.count_by_state()["queued"] == 1


def test_created_directories_are_private(tmp_path):
    path = tmp_path / "a" / "b" / "outbox.sqlite3"
    Outbox(path).close()
    for directory in (tmp_path / "a", tmp_path / "a" / "b"):
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700, directory
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
