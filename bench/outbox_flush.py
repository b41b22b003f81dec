"""Bench: flushing N queued messages over one connection to a local SMTP server (aiosmtpd in
its own process) vs raw smtplib sending the same messages over one connection to the same
server, in the same run. Target: outbox >= 0.8x raw smtplib's rate.

    python bench/outbox_flush.py [--count 10000] [--rounds 3] [--pin]
    python bench/outbox_flush.py --slow-server-ms 10 --connections 1,2,4 [--count 400]

The outbox side is the real flush engine with the real SMTP transport (claims, one committed
result per message, attempt log), timed from the first claim to the last commit; enqueueing
happens before the clock starts.

`--slow-server-ms MS --connections 1,2,4`: instead, a server that takes MS milliseconds a
message (aiosmtpd in this process, as a real relay's round trip), and the flush with N
connections (FlushOptions.connections, max_connections = N): messages a second per N and
the speed-up over one connection (the target: close to N while the server is the limit)."""

from __future__ import annotations

import argparse
import json
import os
import smtplib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from mailctl.outbox import FlushOptions, FlushPolicy, Outbox, flush  # noqa: E402
from mailctl.profiles.model import ResolvedProfile  # noqa: E402
from mailctl.transports import open_transport  # noqa: E402


def start_server(tmp: Path, cpu: int | None = None) -> tuple[subprocess.Popen, int]:
    portfile = tmp / "port"
    pin = (lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "outbox_smtp.py"), str(portfile), "--discard"],
                            preexec_fn=pin)
    for _ in range(200):
        if portfile.exists() and portfile.read_text().strip():
            return proc, int(portfile.read_text())
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("SMTP server did not start")


def messages(count: int) -> list[bytes]:
    body = ("x" * 76 + "\r\n") * 13  # ~1 KB
    return [(f"From: app@example.com\r\nTo: user@example.org\r\nSubject: bench {i}\r\n"
             f"Message-ID: <bench{i}@example.com>\r\n\r\n{body}").encode() for i in range(count)]


def raw_smtplib(port: int, msgs: list[bytes]) -> float:
    global LAST_CPU
    t0, c0 = time.perf_counter(), time.process_time()
    with smtplib.SMTP("127.0.0.1", port) as s:
        s.ehlo("bench")
        for m in msgs:
            s.sendmail("app@example.com", ["user@example.org"], m)
    LAST_CPU = time.process_time() - c0
    return time.perf_counter() - t0


LAST_CPU = 0.0


def outbox_flush(port: int, msgs: list[bytes], tmp: Path, n: int) -> tuple[float, dict]:
    path = tmp / f"outbox{n}.sqlite3"
    box = Outbox(path)
    box.enqueue_many([(m, "app@example.com", ["user@example.org"]) for m in msgs])
    box.close()
    box = Outbox(path, synchronous="NORMAL")  # as `mailctl queue flush` opens it
    profile = ResolvedProfile("bench", {"type": "smtp", "host": "127.0.0.1", "port": port, "security": "none",
                                        "auth": "none", "ehlo_name": "bench"})
    global LAST_CPU
    t0, c0 = time.perf_counter(), time.process_time()
    report = flush(box, policy=FlushPolicy(retention_days=0), resolve=lambda name: profile,
                   open_transport=lambda p: open_transport(p, None), options=FlushOptions())
    elapsed = time.perf_counter() - t0
    LAST_CPU = time.process_time() - c0
    box.close()
    assert report.sent == len(msgs), report.to_dict()
    return elapsed, report.to_dict()


def slow_server_connections(count: int, delay_ms: float, ns: list[int], tmp: Path) -> dict:
    """Flushes with N connections against a server taking `delay_ms` a message."""
    import asyncio

    from outbox_smtp import RecordingHandler, SmtpServer

    class Slow(RecordingHandler):
        async def handle_DATA(self, server, session, envelope):
            await asyncio.sleep(delay_ms / 1000)
            return await super().handle_DATA(server, session, envelope)

    rates = {}
    with SmtpServer(Slow(discard=True)) as server:
        for n in ns:
            path = tmp / f"slow{n}.sqlite3"
            with Outbox(path) as box:
                box.enqueue_many([(m, "app@example.com", ["user@example.org"]) for m in messages(count)])
            box = Outbox(path, synchronous="NORMAL")
            profile = ResolvedProfile("bench", {"type": "smtp", "host": "127.0.0.1", "port": server.port,
                                                "security": "none", "auth": "none", "ehlo_name": "bench",
                                                "max_connections": n})
            t0 = time.perf_counter()
            report = flush(box, policy=FlushPolicy(retention_days=0), resolve=lambda name: profile,
                           open_transport=lambda p: open_transport(p, None), options=FlushOptions(connections=n))
            rates[n] = count / (time.perf_counter() - t0)
            box.close()
            assert report.sent == count, report.to_dict()
    return {"bench": "outbox_flush_connections", "count": count, "server_ms_per_message": delay_ms,
            "per_second": {str(n): round(r) for n, r in rates.items()},
            "speedup_vs_one": {str(n): round(r / rates[ns[0]], 2) for n, r in rates.items()},
            "load_average": os.getloadavg()[0]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pin", action="store_true", help="server on CPU 1, client on CPU 0 (each side its own core)")
    ap.add_argument("--slow-server-ms", type=float, default=0.0, help="a server taking this long a message (see above)")
    ap.add_argument("--connections", default="1", help="with --slow-server-ms: comma-separated N, e.g. 1,2,4")
    a = ap.parse_args()
    if a.slow_server_ms:
        with tempfile.TemporaryDirectory() as d:
            ns = sorted({int(n) for n in a.connections.split(",")} | {1})
            print(json.dumps(slow_server_connections(a.count, a.slow_server_ms, ns, Path(d))))
        return
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        server, port = start_server(tmp, 1 if a.pin else None)
        if a.pin:
            os.sched_setaffinity(0, {0})
        try:
            msgs = messages(a.count)
            raw_smtplib(port, msgs[:200])  # warm up both sides
            raw_times, box_times, raw_cpu, box_cpu = [], [], [], []
            for n in range(a.rounds):  # interleaved, so drift hits both alike
                raw_times.append(raw_smtplib(port, msgs))
                raw_cpu.append(LAST_CPU)
                box_times.append(outbox_flush(port, msgs, tmp, n)[0])
                box_cpu.append(LAST_CPU)
        finally:
            server.kill()
            server.wait()
    raw_rate = a.count / statistics.median(raw_times)
    box_rate = a.count / statistics.median(box_times)
    print(json.dumps({
        "bench": "outbox_flush", "count": a.count, "rounds": a.rounds, "pinned": a.pin,
        "raw_smtplib_per_second": round(raw_rate), "outbox_flush_per_second": round(box_rate),
        "ratio": round(box_rate / raw_rate, 3), "target_ratio": 0.8, "ok": box_rate / raw_rate >= 0.8,
        "raw_seconds": [round(t, 2) for t in raw_times], "outbox_seconds": [round(t, 2) for t in box_times],
        # client CPU per message: what each side costs, independent of the server and of load
        "raw_client_cpu_us_per_msg": round(statistics.median(raw_cpu) / a.count * 1e6),
        "outbox_client_cpu_us_per_msg": round(statistics.median(box_cpu) / a.count * 1e6),
        "load_average": os.getloadavg()[0],
    }))


if __name__ == "__main__":
    main()
