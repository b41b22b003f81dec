"""A throwaway PgBouncer in front of the tests' PostgreSQL cluster (tests/pgserver.py): Debian's
`pgbouncer` package, its own pgbouncer.ini in a temporary directory, run in the foreground as
the cluster's unprivileged user, listening on a free port of 127.0.0.1 (and a Unix socket in its directory). Clients log in
with SCRAM (the cluster's user and password in a userlist); PgBouncer reaches the cluster over
its private Unix socket (trust).

    with running_pgbouncer(pg_server, "transaction") as bouncer:
        bouncer.url()           # postgresql://mailctl:<password>@127.0.0.1:<port>/mailctl

Skips when the binary is absent: scripts/test installs it."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator


def binary() -> str | None:
    return shutil.which("pgbouncer") or next((p for p in ("/usr/sbin/pgbouncer",) if os.access(p, os.X_OK)), None)


def skip_reason() -> str | None:
    if binary() is None:
        return "the pgbouncer binary is absent: install the Debian package pgbouncer (scripts/test does)"
    return None


@dataclass
class Bouncer:
    host: str
    port: int
    user: str
    password: str
    dbname: str
    pool_mode: str
    log: Path
    socket_dir: str

    def url(self, *, password: bool = True) -> str:
        auth = f"{self.user}:{self.password}" if password else self.user
        return f"postgresql://{auth}@{self.host}:{self.port}/{self.dbname}"

    def unix_url(self) -> str:
        """Through PgBouncer's own Unix socket (SCRAM with the password there too)."""
        return f"postgresql://{self.user}:{self.password}@/{self.dbname}?host={self.socket_dir}&port={self.port}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def database_line(pg, *, name: str | None = None, **params: object) -> str:
    """A [databases] entry for `pg` (its private Unix socket, trust); `params` override or add
    connection parameters (dbname=, user=, port=, password=...)."""
    values = {"host": pg.socket_dir, "port": pg.port, "dbname": pg.dbname, "user": pg.user, **params}
    return f"{name or pg.dbname} = " + " ".join(f"{k}={v}" for k, v in values.items())


def _ini(pg, port: int, pool_mode: str, root: Path, extra: str, databases: str | None) -> str:
    return f"""[databases]
{database_line(pg) if databases is None else databases}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir = {root}
auth_type = scram-sha-256
auth_file = {root / 'userlist.txt'}
pool_mode = {pool_mode}
max_client_conn = 100
default_pool_size = 10
server_reset_query = DISCARD ALL
logfile = {root / 'pgbouncer.log'}
pidfile = {root / 'pgbouncer.pid'}
{extra}
"""


def _wait_listening(port: int, proc: subprocess.Popen, log: Path, deadline: float) -> None:
    """Bounded start: the port accepts connections, or PgBouncer exited, or the deadline passed."""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"pgbouncer exited ({proc.returncode}): {log.read_text(errors='replace')[-2000:] if log.exists() else ''}")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"pgbouncer did not listen on 127.0.0.1:{port} within the start deadline")


@contextlib.contextmanager
def running_pgbouncer(pg, pool_mode: str, *, extra: str = "", databases: str | None = None,
                      start_timeout: float = 15.0) -> Iterator[Bouncer]:
    """PgBouncer in `pool_mode` (session, transaction) in front of `pg` (a pgserver.PgServer);
    `extra` adds [pgbouncer] settings, `databases` replaces the [databases] section's lines
    (default: one entry, `database_line(pg)`)."""
    exe = binary()
    assert exe is not None, skip_reason()
    root = Path(tempfile.mkdtemp(prefix="mailctl-pgbouncer-"))
    port = _free_port()
    (root / "userlist.txt").write_text(f'"{pg.user}" "{pg.password}"\n')
    (root / "pgbouncer.ini").write_text(_ini(pg, port, pool_mode, root, extra, databases))
    os.chmod(root / "userlist.txt", 0o600)
    if pg.run_as:  # root: PgBouncer refuses to run as root; it runs as the cluster's user
        entry = pwd.getpwnam(pg.run_as)
        for path in (root, root / "userlist.txt", root / "pgbouncer.ini"):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    # our own child (not through runuser), so terminate() reaches PgBouncer itself
    drop = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []} if pg.run_as else {}
    proc = subprocess.Popen([exe, str(root / "pgbouncer.ini")], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=root, **drop)
    log = root / "pgbouncer.log"
    try:
        _wait_listening(port, proc, log, time.monotonic() + start_timeout)
        yield Bouncer("127.0.0.1", port, pg.user, pg.password, pg.dbname, pool_mode, log, str(root))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def refusing_server(message: str, sqlstate: str = "08P01") -> Iterator[str]:
    """A loopback server that answers every PostgreSQL startup with one FATAL ErrorResponse,
    spelled as PgBouncer sends its refusals (SQLSTATE 08P01 unless told): the wire of the
    refusals newer PgBouncer versions say in words the installed one (1.18) does not. Yields
    a postgresql:// URL to it (sslmode=disable: the startup packet comes first)."""
    import struct
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    stop = threading.Event()
    fields = b"".join(code + value.encode() + b"\0" for code, value in
                      ((b"S", "FATAL"), (b"V", "FATAL"), (b"C", sqlstate), (b"M", message)))
    reply = b"E" + struct.pack("!i", 4 + len(fields) + 1) + fields + b"\0"

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(5)
                try:
                    (length,) = struct.unpack("!i", conn.recv(4, socket.MSG_WAITALL))
                    conn.recv(max(0, min(length - 4, 10000)), socket.MSG_WAITALL)  # the startup packet
                    conn.sendall(reply)
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"postgresql://mailctl:secret-not-shown@127.0.0.1:{listener.getsockname()[1]}/mailctl?sslmode=disable"
    finally:
        stop.set()
        thread.join(5)
        listener.close()
