"""Bench: peak memory (RSS) of a process flushing N queued messages (default 100,000) to a
local SMTP server that discards them (aiosmtpd in its own process). Target: < 100 MB.

    python bench/outbox_memory.py [--count 100000] [--cli]

The queue is filled first (enqueue_many, in this process); the flush runs in a fresh child
process (`python -m mailctl queue flush`, or with --engine the flush engine directly) whose
peak RSS is read from the kernel (ru_maxrss of the waited-for child)."""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from outbox_flush import messages, start_server  # noqa: E402

from mailctl.outbox import Outbox  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=100_000)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        server, port = start_server(tmp)
        try:
            path = tmp / "outbox.sqlite3"
            with Outbox(path) as box:
                for start in range(0, a.count, 5000):
                    box.enqueue_many([(m, "app@example.com", ["user@example.org"])
                                      for m in messages(min(5000, a.count - start))])
            home = tmp / "home"
            home.mkdir()
            (home / "profiles.toml").write_text(
                'schema_version = 1\ndefault = "bench"\n[settings]\nretention_days = 0\n'
                f'[profiles.bench]\ntype = "smtp"\nhost = "127.0.0.1"\nport = {port}\nsecurity = "none"\nauth = "none"\n'
                'from_address = "app@example.com"\n')
            env = {k: v for k, v in os.environ.items() if not k.startswith("MAILCTL_")}
            env.update(MAILCTL_HOME=str(home), MAILCTL_OUTBOX=str(path), PYTHONPATH=str(ROOT / "src"))
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "mailctl", "queue", "flush", "--json"], env=env,
                                  capture_output=True, text=True)
            elapsed = time.perf_counter() - t0
            usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        finally:
            server.kill()
            server.wait()
    report = json.loads(proc.stdout) if proc.stdout.strip() else {"error": proc.stderr}
    peak_mb = usage.ru_maxrss / 1024  # kilobytes on Linux
    print(json.dumps({
        "bench": "outbox_memory", "count": a.count, "sent": report.get("sent"), "exit_code": proc.returncode,
        "seconds": round(elapsed, 1), "peak_rss_mb": round(peak_mb, 1), "target_mb": 100, "ok": peak_mb < 100,
    }))


if __name__ == "__main__":
    main()
