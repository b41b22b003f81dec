"""Bench: the SMTP wire speed against Postfix's smtp-sink (C, advertises PIPELINING), three
clients interleaved in the same run, each over ONE connection, ~1 KB messages:

- raw smtplib (`SMTP.sendmail` in a loop: MAIL, RCPT, DATA, data: four round trips a message),
  as a whole Python process like the flush (the issue's measure), and in this process;
- `mailctl queue flush`, the whole process (interpreter start, profiles, claims, one committed
  result per message, QUIT), the messages enqueued into the outbox before the clock starts;
  it pipelines each message's envelope after the previous one's data: one round trip a message;
- `smtp-source -s 1 -m N -l 1024` (Postfix's C load generator, one session);
- for reference, `SmtpTransport.send()` in a loop in this process (the wire part alone).

With `--connections 1,2,4`, also `mailctl queue flush --connections N` against
`smtp-source -s N` (N parallel sessions each; the profile allows max_connections = N).

    python bench/flush_smtp_sink.py [--count 10000] [--rounds 3] [--connections 1,2,4]

Targets (issue #14): flush >= 1.0x raw smtplib and >= 0.5x smtp-source -s 1 over one connection.
Needs /usr/sbin/smtp-sink and /usr/sbin/smtp-source (Debian package postfix)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from mailctl.outbox import Outbox  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tool(name: str) -> str:
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
    if not path:
        raise SystemExit(f"{name} not found (apt-get install postfix)")
    return path


def start_sink(port: int) -> subprocess.Popen:
    cmd = [tool("smtp-sink")]
    if os.geteuid() == 0:
        cmd += ["-u", "nobody"]  # smtp-sink refuses to run as root without it
    proc = subprocess.Popen(cmd + [f"127.0.0.1:{port}", "1000"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.02)
    proc.kill()
    raise SystemExit("smtp-sink did not start: " + proc.stderr.read().decode())


def messages(count: int) -> list[bytes]:
    body = ("x" * 76 + "\r\n") * 11  # ~1 KB with the header
    return [(f"From: app@example.com\r\nTo: user@example.org\r\nSubject: bench {i}\r\n"
             f"Message-ID: <bench{i}@example.com>\r\n\r\n{body}").encode() for i in range(count)]


_RAW_SCRIPT = """
import smtplib, sys
port, count = int(sys.argv[1]), int(sys.argv[2])
body = ("x" * 76 + "\\r\\n") * 11
with smtplib.SMTP("127.0.0.1", port, local_hostname="bench") as s:
    s.ehlo("bench")
    for i in range(count):
        s.sendmail("app@example.com", ["user@example.org"],
                   (f"From: app@example.com\\r\\nTo: user@example.org\\r\\nSubject: bench {i}\\r\\n"
                    f"Message-ID: <bench{i}@example.com>\\r\\n\\r\\n{body}").encode())
"""


CPU: dict[str, list[float]] = {"raw": [], "flush": []}  # CPU seconds (user + system) of each whole process


def _children_cpu() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def raw_smtplib_process(port: int, count: int) -> float:
    """The same loop as a whole Python process, as mailctl's flush is one (interpreter start
    and smtplib's import included): the issue's measure."""
    c0, t0 = _children_cpu(), time.perf_counter()
    subprocess.run([sys.executable, "-c", _RAW_SCRIPT, str(port), str(count)], check=True)
    elapsed = time.perf_counter() - t0
    CPU["raw"].append(_children_cpu() - c0)
    return elapsed


def raw_smtplib(port: int, msgs: list[bytes]) -> float:
    t0 = time.perf_counter()
    with smtplib.SMTP("127.0.0.1", port, local_hostname="bench") as s:
        s.ehlo("bench")
        for m in msgs:
            s.sendmail("app@example.com", ["user@example.org"], m)
    return time.perf_counter() - t0


def transport_loop(port: int, msgs: list[bytes]) -> float:
    """SmtpTransport.send() in a loop, in this process (no outbox): the wire part alone."""
    from mailctl.profiles.model import ResolvedProfile
    from mailctl.transports.smtp import SmtpTransport

    profile = ResolvedProfile("bench", {"type": "smtp", "host": "127.0.0.1", "port": port, "security": "none",
                                        "auth": "none", "ehlo_name": "bench"})
    t0 = time.perf_counter()
    with SmtpTransport(profile, None) as t:
        for m in msgs:
            t.send(m, "app@example.com", ["user@example.org"])
    return time.perf_counter() - t0


def smtp_source(port: int, count: int, sessions: int = 1) -> float:
    t0 = time.perf_counter()
    subprocess.run([tool("smtp-source"), "-s", str(sessions), "-m", str(count), "-l", "1024", "-f", "app@example.com",
                    "-t", "user@example.org", f"127.0.0.1:{port}"], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def prepare_outbox(path: Path, msgs: list[bytes]) -> None:
    box = Outbox(path)
    box.enqueue_many([(m, "app@example.com", ["user@example.org"]) for m in msgs])
    box.close()


def mailctl_flush(env: dict, outbox: Path, count: int, connections: int = 1) -> float:
    c0, t0 = _children_cpu(), time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "mailctl", "queue", "flush", "--json", "--outbox", str(outbox),
                          "--connections", str(connections)], env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if connections == 1:
        CPU["flush"].append(_children_cpu() - c0)
    if res.returncode != 0:
        raise SystemExit(f"queue flush exited {res.returncode}: {res.stdout}{res.stderr}")
    sent = json.loads(res.stdout)["sent"]
    if sent != count:
        raise SystemExit(f"queue flush sent {sent} of {count}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", default="1", help="comma-separated session counts, e.g. 1,2,4")
    a = ap.parse_args()
    import compileall  # as a wheel install would: no module compiled again in every process

    compileall.compile_dir(str(ROOT / "src" / "mailctl"), quiet=1)
    ns = sorted({int(n) for n in a.connections.split(",")} | {1})
    port = free_port()
    sink = start_sink(port)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        (tmp / "profiles.toml").write_text(
            'schema_version = 1\ndefault = "sink"\n[settings]\nretention_days = 0\n[profiles.sink]\ntype = "smtp"\n'
            f'host = "127.0.0.1"\nport = {port}\nsecurity = "none"\nauth = "none"\nehlo_name = "bench"\n'
            f'from_address = "app@example.com"\ntimeout = 30\nmax_connections = {max(ns)}\n')
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAILCTL_")}
        env.update(MAILCTL_HOME=str(tmp), NO_COLOR="1",
                   PYTHONPATH=str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", ""))
        try:
            msgs = messages(a.count)
            raw_smtplib(port, msgs[:200])  # warm up
            raw, raw_process, transport = [], [], []
            flush: dict[int, list[float]] = {n: [] for n in ns}
            source: dict[int, list[float]] = {n: [] for n in ns}
            for r in range(a.rounds):  # interleaved, so drift hits all alike
                raw.append(raw_smtplib(port, msgs))
                raw_process.append(raw_smtplib_process(port, a.count))
                for n in ns:
                    outbox = tmp / f"outbox{r}-{n}.sqlite3"
                    prepare_outbox(outbox, msgs)
                    flush[n].append(mailctl_flush(env, outbox, a.count, n))
                    source[n].append(smtp_source(port, a.count, n))
                transport.append(transport_loop(port, msgs))
        finally:
            sink.terminate()
            sink.wait()
    report(a, raw_process, raw, flush, source, transport, ns)


def report(a, raw: list[float], raw_inproc: list[float], flush: dict[int, list[float]], source: dict[int, list[float]],
           transport: list[float], ns: list[int]) -> None:
    rate = {name: a.count / statistics.median(times) for name, times in
            (("raw_smtplib", raw), ("raw_smtplib_in_process", raw_inproc), ("mailctl_queue_flush", flush[1]),
             ("smtp_source", source[1]), ("smtp_transport_in_process", transport))}
    per_n = {str(n): {"flush_per_second": round(a.count / statistics.median(flush[n])),
                      "smtp_source_per_second": round(a.count / statistics.median(source[n])),
                      "flush_vs_smtp_source": round(statistics.median(source[n]) / statistics.median(flush[n]), 3),
                      "flush_seconds": [round(t, 2) for t in flush[n]],
                      "smtp_source_seconds": [round(t, 2) for t in source[n]]} for n in ns}
    vs_raw = rate["mailctl_queue_flush"] / rate["raw_smtplib"]
    vs_source = rate["mailctl_queue_flush"] / rate["smtp_source"]
    print(json.dumps({
        "bench": "flush_smtp_sink", "count": a.count, "rounds": a.rounds,
        **{f"{k}_per_second": round(v) for k, v in rate.items()},
        "flush_vs_raw_smtplib": round(vs_raw, 3), "target_vs_raw_smtplib": 1.0,
        "flush_vs_smtp_source": round(vs_source, 3), "target_vs_smtp_source": 0.5,
        "ok": vs_raw >= 1.0 and vs_source >= 0.5,
        "transport_vs_raw_smtplib": round(rate["smtp_transport_in_process"] / rate["raw_smtplib"], 3),
        "flush_vs_raw_smtplib_in_process": round(rate["mailctl_queue_flush"] / rate["raw_smtplib_in_process"], 3),
        # round by round (raw / flush in the same round: the drift between rounds cancels out)
        "flush_vs_raw_smtplib_by_round": [round(r / f, 3) for r, f in zip(raw, flush[1])],
        # the client's CPU a message, whole processes (user + system): what the wall time hides
        # of each (raw smtplib waits for four round trips; the flush is CPU-bound)
        "raw_smtplib_cpu_us_per_msg": round(statistics.median(CPU["raw"]) / a.count * 1e6, 1),
        "flush_cpu_us_per_msg": round(statistics.median(CPU["flush"]) / a.count * 1e6, 1),
        "raw_seconds": [round(t, 2) for t in raw], "raw_in_process_seconds": [round(t, 2) for t in raw_inproc],
        "flush_seconds": [round(t, 2) for t in flush[1]],
        "smtp_source_seconds": [round(t, 2) for t in source[1]],
        "connections": per_n,
        "load_average": os.getloadavg()[0],
    }))


if __name__ == "__main__":
    main()
