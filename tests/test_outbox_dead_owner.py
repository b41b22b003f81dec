"""A flush that dies does not park its claimed rows for the whole lease (600 s by default):
on one host the claim names its holder process (host, pid, start time) and the next flush
reclaims at once when that process is gone; on PostgreSQL the holder is the database session.
Real processes (`python -m mailctl queue flush`), SIGKILL, a real SMTP server, both backends."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from outbox_smtp import RecordingHandler, SmtpServer, write_profiles  # noqa: E402

N = 12


class SlowHandler(RecordingHandler):
    """0.3 s a message: the first flush is surely killed half-way."""

    async def handle_DATA(self, server, session, envelope):
        await asyncio.sleep(0.3)
        return await super().handle_DATA(server, session, envelope)


def message(i: int) -> bytes:
    return (f"From: app@example.com\r\nTo: user@example.org\r\nSubject: m{i}\r\n"
            f"Message-ID: <dead{i}@test.example>\r\n\r\nbody {i}\r\n").encode()


def _env(home: Path, location: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILCTL_")}
    env.update(MAILCTL_HOME=str(home), MAILCTL_OUTBOX=location, NO_COLOR="1")
    if os.environ.get("MAILCTL_PG_SCHEMA"):
        env["MAILCTL_PG_SCHEMA"] = os.environ["MAILCTL_PG_SCHEMA"]
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_a_killed_flush_gives_its_claims_back_at_once(outbox_factory, isolated_env, tmp_path):
    handler = SlowHandler()
    box = outbox_factory()
    location = box.url if outbox_factory.backend == "postgresql" else str(box.path)
    with SmtpServer(handler) as server:
        write_profiles(isolated_env, {"relay": server}, default="relay")
        box.enqueue_many([(message(i), "app@example.com", ["user@example.org"]) for i in range(N)])
        box.close()
        env = _env(isolated_env, location)
        cmd = [sys.executable, "-m", "mailctl", "queue", "flush"]  # default lease: 600 s
        first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while handler.count < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait()
        assert handler.count < N, "the first flush finished before it could be killed"
        start = time.monotonic()
        second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        took = time.monotonic() - start
    assert second.returncode == 0, second.stdout + second.stderr
    box = outbox_factory()
    try:
        counts = box.count_by_state()
        interrupted = [e for i in range(1, N + 1) for e in box.get(i).attempt_log if e["outcome"] == "interrupted"]
    finally:
        box.close()
    assert counts["sent"] == N and counts["sending"] == 0, counts
    missing = [i for i in range(N) if handler.by_message_id[f"<dead{i}@test.example>"] == 0]
    assert not missing
    assert sum(c - 1 for c in handler.by_message_id.values() if c > 1) <= 1  # at most the one in flight
    assert interrupted, "the killed flush's claims were taken back as interrupted"
    assert took < 60, f"the second flush waited for the lease ({took:.1f} s)"
