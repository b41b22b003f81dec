"""Helpers for the tests that run `mailctl queue worker` / `queue flush` as real processes:
an environment of their own (MAILCTL_HOME, MAILCTL_OUTBOX, the PostgreSQL schema), a slow
SMTP sink, bounded waits."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from outbox_smtp import RecordingHandler

SRC = str(Path(__file__).resolve().parents[1] / "src")


class SlowHandler(RecordingHandler):
    """`delay` seconds per message at DATA (other sessions go on meanwhile: asyncio)."""

    def __init__(self, delay: float = 0.3, **kw) -> None:
        super().__init__(**kw)
        self.delay = delay

    async def handle_DATA(self, server, session, envelope):
        await asyncio.sleep(self.delay)
        return await super().handle_DATA(server, session, envelope)


def message(i: int, tag: str = "w") -> bytes:
    return (f"From: app@example.com\r\nTo: user@example.org\r\nSubject: {tag} {i}\r\n"
            f"Message-ID: <{tag}{i}@test.example>\r\n\r\nbody {i}\r\n").encode()


def env_for(home: Path, location: str, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILCTL_") and k != "JOURNAL_STREAM"}
    env.update(MAILCTL_HOME=str(home), MAILCTL_OUTBOX=location, NO_COLOR="1")
    if os.environ.get("MAILCTL_PG_SCHEMA"):
        env["MAILCTL_PG_SCHEMA"] = os.environ["MAILCTL_PG_SCHEMA"]
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def mailctl(*args: str) -> list[str]:
    return [sys.executable, "-m", "mailctl", *args]


def start_worker(env: dict, *args: str, cwd: Path | None = None, log: Path | None = None) -> subprocess.Popen:
    """`mailctl queue worker ARGS` in the background; stderr (its log) to `log` or a pipe."""
    err = open(log, "ab") if log is not None else subprocess.PIPE
    try:
        return subprocess.Popen(mailctl("queue", "worker", *args), env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                                stderr=err)
    finally:
        if log is not None:
            err.close()


def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def log_has(path: Path, text: str) -> bool:
    try:
        return text in path.read_text()
    except FileNotFoundError:
        return False


def location_of(box) -> str:
    return box.url if getattr(box, "backend", "sqlite") == "postgresql" else str(box.path)
