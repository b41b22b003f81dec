"""Bench: enqueueing messages through the Python API (mailctl.outbox), one committed
transaction per message, into a fresh outbox file in a temp dir. Target: >= 5,000 per second.

    python bench/outbox_enqueue.py [--count 10000] [--synchronous NORMAL|FULL] [--batch N] [--message-api] [--dir DIR]

NORMAL is Outbox()'s default: each enqueue() is committed to the WAL when it returns and
survives any process crash, not a power cut. FULL also waits for the disk on every commit,
so enqueue() runs at the disk's fsync rate; enqueue_many() commits a batch with one sync.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from email.message import EmailMessage
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from mailctl.outbox import Outbox  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=10_000)
    ap.add_argument("--synchronous", default="NORMAL")
    ap.add_argument("--dir", default=None, help="where the outbox file goes (default: a temp dir)")
    ap.add_argument("--batch", type=int, default=0, help="use enqueue_many() with this many messages per transaction")
    ap.add_argument("--message-api", action="store_true", help="use enqueue_message(EmailMessage) instead of raw bytes")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=a.dir) as d:
        box = Outbox(Path(d) / "outbox.sqlite3", synchronous=a.synchronous)
        msg = EmailMessage()
        msg["From"] = "app@example.com"
        msg["To"] = "user@example.org"
        msg["Subject"] = "bench"
        msg.set_content("x" * 1000)
        raw = msg.as_bytes()
        t0 = time.perf_counter()
        if a.batch:
            for start in range(0, a.count, a.batch):
                box.enqueue_many([(raw, "app@example.com", ["user@example.org"])] * min(a.batch, a.count - start))
        for i in range(0 if a.batch else a.count):
            if a.message_api:
                del msg["Message-ID"]
                msg["Message-ID"] = f"<b{i}@bench>"
                box.enqueue_message(msg)
            else:
                box.enqueue(raw, "app@example.com", ["user@example.org"])
        elapsed = time.perf_counter() - t0
        box.close()
    rate = a.count / elapsed
    print(json.dumps({"bench": "outbox_enqueue", "count": a.count, "synchronous": a.synchronous,
                      "api": f"enqueue_many(batch={a.batch})" if a.batch else "enqueue_message" if a.message_api else "enqueue", "seconds": round(elapsed, 3),
                      "per_second": round(rate), "target_per_second": 5000, "ok": rate >= 5000}))


if __name__ == "__main__":
    main()
