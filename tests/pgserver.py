"""A throwaway PostgreSQL cluster for the tests: Debian's `postgresql` package, `initdb` and
`pg_ctl` in a temporary directory, run as an unprivileged user, listening on a free port of
127.0.0.1 only. Password (SCRAM) authentication over TCP, trust on its private Unix socket.

    with running_postgres() as pg:
        pg.url()            # postgresql://mailctl:<password>@127.0.0.1:<port>/mailctl
        pg.url(password=False)

Skips (or, under CI=true, fails) when the binaries are absent: scripts/test installs them."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

USER = "mailctl"
DATABASE = "mailctl"


def _bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def skip_reason() -> str | None:
    if _bindir() is None:
        return "PostgreSQL server binaries absent: install the Debian package postgresql (scripts/test does)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root needs the system user 'postgres' (created by the Debian package postgresql)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PgServer:
    host: str
    port: int
    user: str
    password: str
    dbname: str
    socket_dir: str
    bindir: Path
    run_as: str | None

    def url(self, *, password: bool = True, dbname: str | None = None) -> str:
        auth = f"{self.user}:{self.password}" if password else self.user
        return f"postgresql://{auth}@{self.host}:{self.port}/{dbname or self.dbname}"

    def psql(self, sql: str, *, dbname: str | None = None) -> str:
        """Run SQL as the superuser over the private socket; returns stdout."""
        cmd = [str(self.bindir / "psql"), "-h", self.socket_dir, "-p", str(self.port), "-U", self.user,
               "-d", dbname or self.dbname, "-v", "ON_ERROR_STOP=1", "-Atc", sql]
        return _run(cmd, self.run_as).stdout

    def create_database(self, name: str) -> str:
        self.psql(f'CREATE DATABASE "{name}"', dbname="postgres")
        return self.url(dbname=name)


def _run(cmd: list[str], run_as: str | None, **kw) -> subprocess.CompletedProcess:
    if run_as:
        cmd = ["runuser", "-u", run_as, "--", *cmd]
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120, **kw)


@contextlib.contextmanager
def running_postgres() -> Iterator[PgServer]:
    bindir = _bindir()
    assert bindir is not None, skip_reason()
    run_as = "postgres" if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="mailctl-pg-"))
    data, sockets = root / "data", root / "sock"
    sockets.mkdir()
    password = secrets.token_urlsafe(18)
    pwfile = root / "pw"
    pwfile.write_text(password + "\n")
    if run_as:
        entry = pwd.getpwnam(run_as)
        for path in (root, sockets, pwfile):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    os.chmod(pwfile, 0o600)
    _run([str(bindir / "initdb"), "-D", str(data), "-U", USER, "--pwfile", str(pwfile), "--auth-local=trust",
          "--auth-host=scram-sha-256", "-E", "UTF8", "--no-instructions"], run_as)
    port = _free_port()
    options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100"
    try:
        _run([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-o", options, "-w", "-t", "60", "start"], run_as)
        server = PgServer("127.0.0.1", port, USER, password, DATABASE, str(sockets), bindir, run_as)
        server.psql(f'CREATE DATABASE "{DATABASE}"', dbname="postgres")
        yield server
    finally:
        with contextlib.suppress(Exception):
            _run([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "-t", "30", "stop"], run_as)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (data / "postmaster.pid").exists():
            time.sleep(0.1)
        shutil.rmtree(root, ignore_errors=True)
