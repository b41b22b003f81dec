"""The `file` transport: delivers into a Maildir (local capture, the built-in `local` profile).

Maildir delivery as qmail specifies it: write into tmp/, fsync, rename into new/. The file gets
Return-Path and X-Mailctl-Envelope-To headers so the envelope (including Bcc) is visible."""

from __future__ import annotations

import itertools
import os
import socket
import time
from pathlib import Path

from mailctl.errors import ConfigError, UnavailableError
from mailctl.message import strip_bcc
from mailctl.transports.base import Reached, SendResult, Stage, StageInfo

_counter = itertools.count(1)


class FileTransport:
    name = "file"

    def __init__(self, profile, secrets=None, **options) -> None:
        self.profile = profile
        maildir = profile.get("maildir") if hasattr(profile, "get") else None
        if not maildir:
            raise ConfigError(
                f"profile {getattr(profile, 'name', '?')!r} (file): missing required field maildir",
                hint=f"set it with: mailctl profile edit {getattr(profile, 'name', 'NAME')} --maildir DIR",
            )
        self.maildir = Path(maildir).expanduser()
        self._host = (socket.gethostname() or "localhost").replace("/", "\\057").replace(":", "\\072")
        self._opened = False

    def open(self) -> None:
        try:
            self.maildir.mkdir(parents=True, exist_ok=True, mode=0o700)  # the top too, not just tmp/new/cur
            for sub in ("tmp", "new", "cur"):
                (self.maildir / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise UnavailableError(
                f"cannot create Maildir {self.maildir}: {exc.strerror or exc}",
                hint="check the maildir path and its permissions",
            ) from exc
        self._opened = True

    def _unique(self) -> str:
        now = time.time()
        sec = int(now)
        usec = int((now - sec) * 1_000_000)
        return f"{sec}.M{usec}P{os.getpid()}Q{next(_counter)}.{self._host}"

    def send(self, raw: bytes, sender: str, recipients: list[str]) -> SendResult:
        if not self._opened:
            self.open()
        start = time.perf_counter()
        body = strip_bcc(raw).replace(b"\r\n", b"\n")  # Maildir files use the local line end
        trace = (
            f"Return-Path: <{sender}>\n" f"X-Mailctl-Envelope-To: {', '.join(recipients)}\n"
        ).encode("utf-8", "replace")
        name = self._unique()
        tmp = self.maildir / "tmp" / name
        final = self.maildir / "new" / name
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, trace + body)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, final)
        except OSError as exc:
            try:
                tmp.unlink()
            except OSError:
                pass
            raise UnavailableError(f"cannot write into Maildir {self.maildir}: {exc.strerror or exc}") from exc
        return SendResult(
            server=str(self.maildir),
            reply=f"250 delivered to {final}",
            queue_id=name,
            duration=time.perf_counter() - start,
            location=str(final),
        )

    # --- stages (mailctl test) ---------------------------------------------------------------
    @property
    def target(self) -> str:
        return self.profile.get("maildir") or ""

    def probe_settings(self) -> dict:
        return {}

    def stages(self, message=None):
        where = str(self.maildir)
        yield Stage("maildir", self.open, lambda _v: StageInfo("Maildir ready (tmp, new, cur)"), where)
        if message is not None:
            yield Stage("deliver", lambda: self.send(message.raw, message.sender, message.recipients),
                        lambda result: StageInfo(result.location or "", facts={"result": result.to_dict()}), where)
        yield Reached(where)

    def closing_stage(self) -> None:
        self.close()
        return None

    def close(self) -> None:
        self._opened = False

    def __enter__(self) -> "FileTransport":
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
