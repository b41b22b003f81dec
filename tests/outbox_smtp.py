"""A real SMTP server on 127.0.0.1 for outbox tests (aiosmtpd), recording what it accepted by
Message-ID and answering 4xx / 5xx for chosen recipients.

Also runnable as a process (`python tests/outbox_smtp.py PORTFILE [--discard]`) for benches."""

from __future__ import annotations

import re
import socket
import threading
from collections import Counter

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

_MID = re.compile(rb"^Message-ID:\s*(\S+)", re.I | re.M)


def journaled_ids(db) -> set[int]:
    """The messages whose plain success is on record but not folded into their row yet: in the
    results table (schema 005) or in a side file beside the outbox (mailctl.outbox.resultsfile).
    Either is committed: a crash after it never sends the message again."""
    import sqlite3
    from pathlib import Path

    from mailctl.outbox import resultsfile

    with sqlite3.connect(db, timeout=5) as conn:
        ids = {i for (i,) in conn.execute("SELECT message FROM results")}
    directory = resultsfile.results_dir(Path(db))
    if directory.is_dir():
        for f in directory.iterdir():
            if not f.name.startswith("."):
                try:
                    ids |= {e[0] for e in resultsfile.decode(f.read_bytes())}
                except OSError:  # emptied and removed meanwhile
                    pass
    return ids


def block_side_files(db) -> None:
    """A file where the outbox's side-file directory would be: plain successes then have to
    be committed to the database itself (what a test of a locked database needs)."""
    from pathlib import Path

    Path(f"{db}.results").write_text("")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RecordingHandler:
    """temp_fail / perm_fail: recipient addresses answered 451 / 550 at RCPT.
    discard: count only (benches)."""

    def __init__(self, *, temp_fail=(), perm_fail=(), discard: bool = False) -> None:
        self.temp_fail = set(temp_fail)
        self.perm_fail = set(perm_fail)
        self.discard = discard
        self.lock = threading.Lock()
        self.by_message_id: Counter[str] = Counter()
        self.messages: list[dict] = []
        self.count = 0
        self.connections = 0

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        with self.lock:
            self.connections += 1
        session.host_name = hostname
        return responses

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.temp_fail:
            return "451 4.3.0 Try again later"
        if address in self.perm_fail:
            return "550 5.1.1 No such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        data = envelope.original_content or envelope.content
        with self.lock:
            self.count += 1
            if not self.discard:
                m = _MID.search(data)
                self.by_message_id[m.group(1).decode() if m else ""] += 1
                self.messages.append({"from": envelope.mail_from, "to": list(envelope.rcpt_tos), "data": data})
        return "250 2.0.0 Ok: queued"


class SmtpServer:
    def __init__(self, handler: RecordingHandler | None = None, port: int | None = None) -> None:
        self.handler = handler or RecordingHandler()
        self.port = port or free_port()
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port,
                                     data_size_limit=0, ready_timeout=10)

    def __enter__(self) -> "SmtpServer":
        self.controller.start()
        return self

    def __exit__(self, *exc) -> None:
        self.controller.stop()

    def profile_toml(self, name: str = "local_smtp", **extra) -> str:
        lines = [f"[profiles.{name}]", 'type = "smtp"', 'host = "127.0.0.1"', f"port = {self.port}",
                 'security = "none"', 'auth = "none"', 'from_address = "app@example.com"', "timeout = 10"]
        lines += [f"{k} = {v!r}" if not isinstance(v, str) else f'{k} = "{v}"' for k, v in extra.items()]
        return "\n".join(lines) + "\n"


def write_profiles(home, servers: dict[str, "SmtpServer"], settings: dict | None = None, default: str | None = None) -> None:
    """A profiles.toml in MAILCTL_HOME with one smtp profile per server."""
    text = "schema_version = 1\n"
    if default:
        text += f'default = "{default}"\n'
    if settings:
        text += "\n[settings]\n" + "".join(
            f"{k} = {'true' if v is True else 'false' if v is False else repr(v) if not isinstance(v, str) else chr(34) + v + chr(34)}\n"
            for k, v in settings.items())
    for name, server in servers.items():
        text += "\n" + server.profile_toml(name)
    (home / "profiles.toml").write_text(text)


if __name__ == "__main__":  # a server process for benches
    import argparse
    import time

    ap = argparse.ArgumentParser()
    ap.add_argument("portfile")
    ap.add_argument("--discard", action="store_true")
    a = ap.parse_args()
    srv = SmtpServer(RecordingHandler(discard=a.discard))
    with srv:
        with open(a.portfile, "w") as fh:
            fh.write(str(srv.port))
        while True:
            time.sleep(3600)
