"""A flush's plain successes in an append-only side file, beside an SQLite outbox.

A plain success (sent to every recipient) must be on record before the connection's next
message goes out: that is the outbox's crash guarantee. An SQLite commit costs some ten
system calls however small it is; one `write()` to a file opened O_APPEND costs one, and is
just as safe from the death of the process: once it returns, the kernel has the bytes. (From a
power cut or kernel crash neither is safe without a sync: the outbox's default
`synchronous=NORMAL` does not sync a commit either; with FULL the store writes no side file.)

Layout: the directory `<outbox>.results/`, one file per open Outbox handle that has recorded a
result, named `<pid>-<random>`, created under a dot name, locked (flock, exclusive) and only then
renamed into view, so a file anyone can see is locked for as long as its writer lives. Root
writing another user's outbox gives both to the outbox file's owner (as SQLite does its -wal),
and a link in the directory's place is never written or read through. One line a
result: the CRC-32 of the rest, then message, at, duration, reply, owner, profile, server (the
results table's columns; the times as the hex of their IEEE 754 bits), tab-separated,
escaped, \\N for none; a torn line (a power cut mid-write) fails its check and is skipped.

The handle keeps what it wrote in memory and folds it into the database in its next write
transaction (store.py: Outbox._fold_results), then empties the file. Any other handle's write
transaction folds the files it can see too, a line only while its message is still the
owner's: a flush killed before its fold has its deliveries applied, not repeated. A file whose
lock can be taken is a dead writer's: removed once its lines are committed."""

from __future__ import annotations

import binascii
import fcntl
import os
import re
import stat
import struct
from pathlib import Path
from typing import Any

# one result: (message, owner, at, profile, server, reply, duration), the results table's columns
Entry = tuple[int, str, float, Any, Any, str, Any]

_NULL = "\\N"
_UNESCAPE = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}
_ESCAPED = re.compile(r"\\(.)")


def results_dir(db_path: Path) -> Path:
    return Path(f"{db_path}.results")


class ResultsFile:
    """This handle's side file: written by `append`, emptied by `clear` once the lines it
    holds are committed to the database. `usable` turns False for good on the first error (a
    directory that cannot be written, a full disk): the store then journals in SQLite."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self.dir = results_dir(db_path)
        self.path: Path | None = None
        self.name: str | None = None  # of the file in `dir`, once made
        self.fd = -1
        self.usable = True
        self.pending: list[Entry] = []  # written to the file, not folded yet

    def append(self, entries: list[Entry]) -> bool:
        """Write `entries` in one write(); True when the file has them (and `pending` too)."""
        if not self.usable:
            return False
        try:
            data = encode(entries[0]) if len(entries) == 1 else b"".join([encode(e) for e in entries])
        except (ValueError, TypeError, AttributeError):  # text the database could not store either
            return False  # (a lone surrogate): written there instead, it fails there, as it always did
        try:
            if self.fd < 0:
                self._open()
            written = os.write(self.fd, data)
        except OSError:
            written = -1
        if written != len(data):
            # a torn line stays torn (its check fails); nothing more is written after it
            self._give_up()
            return False
        self.pending.extend(entries)
        return True

    def _open(self) -> None:
        owner = _owner_to_match(self.db_path)
        try:
            self.dir.mkdir(mode=0o700)
        except FileExistsError:
            pass
        _check_dir(self.dir, owner)
        name = f"{os.getpid()}-{os.urandom(6).hex()}"
        hidden = self.dir / f".{name}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC | _NOFOLLOW
        fd = os.open(hidden, flags, 0o600)
        try:
            if owner is not None:
                os.fchown(fd, *owner)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(hidden, self.dir / name)
        except BaseException:
            os.close(fd)
            _unlink(hidden)
            raise
        self.fd, self.path, self.name = fd, self.dir / name, name

    def _give_up(self) -> None:
        self.usable = False  # pending lines stay pending: folded from memory as before

    def clear(self, folded: int) -> None:
        """The first `folded` pending entries are committed: forget them, and empty the file
        once nothing it holds is pending."""
        del self.pending[:folded]
        if not self.pending and self.fd >= 0 and self.usable:
            try:
                os.ftruncate(self.fd, 0)
            except OSError:
                self._give_up()

    def close(self) -> None:
        """At the handle's close: nothing pending (folded, or no result since), the file goes;
        otherwise it stays for the next write transaction of any handle to fold."""
        if self.fd < 0:
            return
        if not self.pending and self.path is not None:
            _unlink(self.path)
        os.close(self.fd)
        self.fd = -1


class Others:
    """What the other handles' files hold, read for one write transaction (or one read):
    `entries` to fold, and `dead`, the files whose writer is gone, held locked by this handle
    until `remove()` after the commit. `directory` and `own` are strings: this runs in every
    write transaction, where pathlib's objects would cost more than the listing. Everything is
    done relative to the directory opened once without following a link: a link planted in its
    place (by whoever owns the outbox's directory) is never read through, and nothing where it
    points is ever removed, whoever runs this (root too)."""

    def __init__(self, directory: str, own: str | None) -> None:
        self.entries: list[Entry] = []
        self.dead: list[tuple[str, int]] = []
        self._dir = -1
        try:
            self._dir = os.open(directory, _DIR_FLAGS)
            names = os.listdir(self._dir)
        except OSError:  # no directory yet (no flush has written one), unreadable, or a link
            self._close_dir()
            return
        for name in names:
            if name == own:
                continue
            if name.startswith("."):
                _drop_unborn(name, self._dir)
            else:
                self._read(name)
        if not self.dead:
            self._close_dir()

    def _read(self, name: str) -> None:
        try:
            fd = os.open(name, _FILE_FLAGS, dir_fd=self._dir)
        except OSError:
            return  # removed meanwhile
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            dead = True
        except OSError:
            dead = False  # its writer lives: read only, it empties the file itself
        try:
            data = _read_all(fd)
        except OSError:  # not a file (a directory someone made there): nothing of ours
            os.close(fd)
            return
        self.entries.extend(decode(data))
        if dead:
            self.dead.append((name, fd))
        else:
            os.close(fd)

    def remove(self) -> None:
        """After the commit that applied them: the dead writers' files go."""
        for name, fd in self.dead:
            _unlink(name, self._dir)
            os.close(fd)
        self.dead = []
        self._close_dir()

    def release(self) -> None:
        """Nothing committed (a rollback): keep the files for the next writer."""
        for _name, fd in self.dead:
            os.close(fd)
        self.dead = []
        self._close_dir()

    def _close_dir(self) -> None:
        if self._dir >= 0:
            os.close(self._dir)
            self._dir = -1


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | _NOFOLLOW
_FILE_FLAGS = os.O_RDONLY | os.O_CLOEXEC | _NOFOLLOW


def _owner_to_match(db_path: Path) -> tuple[int, int] | None:
    """Running as root on another user's outbox (a system cron flushing a user's queue): the
    owner and group the side files get, the outbox file's, as SQLite gives its -wal and -shm
    files, so that the owner's own flush can read, fold and remove them (a root-owned file in a
    root-owned 0700 directory is out of its reach: it would journal in SQLite for good, and a
    killed root flush's deliveries would be sent again). None otherwise: nothing to change."""
    if os.geteuid() != 0:
        return None
    try:
        st = os.stat(db_path)
    except OSError:
        return None
    return None if st.st_uid == 0 else (st.st_uid, st.st_gid)


def _check_dir(directory: Path, owner: tuple[int, int] | None) -> None:
    """The side-file directory must be a directory, not a link (whoever owns the outbox's
    directory could plant one pointing anywhere): OSError otherwise, and the handle journals in
    SQLite instead. Running as root on another user's outbox (`owner`), it is given to that
    user, one an earlier root flush left as root's too."""
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode):
        raise OSError(f"{directory} is not a directory")
    if owner is not None and (st.st_uid, st.st_gid) != owner:
        os.chown(directory, *owner, follow_symlinks=False)


def pending_elsewhere(directory: str, own: str | None) -> bool:
    """Whether any other handle's file holds a line (a cheap test before a read folds)."""
    try:
        with os.scandir(directory) as it:
            for entry in it:
                if entry.name.startswith(".") or entry.name == own:
                    continue
                try:
                    if entry.stat(follow_symlinks=False).st_size:
                        return True
                except OSError:
                    continue
    except OSError:
        return False
    return False


def encode(e: Entry) -> bytes:
    """One line: the check, then message, at, duration (the IEEE 754 bits of the float in hex:
    exact, and a fraction of repr()'s cost), reply, owner, profile, server. The last three are
    the same line after line: escaped and encoded once (_tail)."""
    message, owner, at, profile, server, reply, duration = e
    tail = _TAILS.get((owner, profile, server)) or _tail(owner, profile, server)
    if reply is None or not reply.isprintable() or "\\" in reply:
        reply = _esc(reply)
    # both times in one pack, split by hex() itself: "<at>\t<duration>"
    times = _pack_two(at, duration).hex("\t", -8) if duration is not None else f"{_pack(at).hex()}\t{_NULL}"
    data = f"{message:d}\t{times}\t{reply}".encode("utf-8") + tail
    return b"%08x\t%s" % (binascii.crc32(data), data)


_pack = struct.Struct("<d").pack
_pack_two = struct.Struct("<dd").pack
_unpack = struct.Struct("<d").unpack
_TAILS: dict[tuple[Any, Any, Any], bytes] = {}


def _tail(owner: Any, profile: Any, server: Any) -> bytes:
    if len(_TAILS) > 256:
        _TAILS.clear()
    text = _TAILS[(owner, profile, server)] = (
        f"\t{_esc(owner)}\t{_esc(profile)}\t{_esc(server)}\n".encode("utf-8"))
    return text


def decode(data: bytes) -> list[Entry]:
    """The whole lines of `data` that pass their check; anything else is skipped."""
    entries: list[Entry] = []
    for line in data.split(b"\n")[:-1]:  # the last piece is "" or a line still being written
        crc, _, rest = line.partition(b"\t")
        try:
            if int(crc, 16) != binascii.crc32(rest + b"\n"):
                continue
            f = rest.decode("utf-8").split("\t")
            if len(f) != 7:
                continue
            entries.append((int(f[0]), _unesc(f[4]) or "", _float(f[1]), _unesc(f[5]), _unesc(f[6]),
                            _unesc(f[3]), None if f[2] == _NULL else _float(f[2])))
        except ValueError:
            continue
    return entries


def _float(text: str) -> float:
    if len(text) != 16:
        raise ValueError(f"not a packed float: {text!r}")
    return _unpack(bytes.fromhex(text))[0]


def _esc(s: Any) -> str:
    if s is None:
        return _NULL
    s = str(s)
    # printable text has no tab, newline or carriage return; only a backslash is left to find
    if not s.isprintable() or "\\" in s:
        s = s.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return s


def _unesc(s: str) -> str | None:
    if s == _NULL:
        return None
    return _ESCAPED.sub(lambda m: _UNESCAPE.get(m.group(1), m.group(1)), s) if "\\" in s else s


def _drop_unborn(name: str, directory: int) -> None:
    """A dot file is a side file not renamed into view yet: empty by construction. Unlocked,
    its writer died between creating and renaming it (or has not locked it yet: its rename
    then fails and it journals in SQLite instead); either way it can go."""
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=directory)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        _unlink(name, directory)
    except OSError:
        pass
    finally:
        os.close(fd)


def _read_all(fd: int) -> bytes:
    chunks = []
    while True:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _unlink(path: str | Path, directory: int | None = None) -> None:
    try:
        os.unlink(path, dir_fd=directory)
    except OSError:
        pass
