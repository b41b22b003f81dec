"""1,000 messages over one connection: SmtpTransport vs raw smtplib, same local aiosmtpd
server, same run. Rounds alternate so neither side always runs on a warm server.

    python bench/smtp_throughput.py [--messages 1000] [--rounds 5] [--tls]

Target: the transport within 10% of raw smtplib (median of the rounds)."""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import smtplib
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from mailctl.message import build_message, envelope, message_bytes  # noqa: E402
from mailctl.profiles.model import ResolvedProfile  # noqa: E402
from mailctl.transports.smtp import SmtpTransport  # noqa: E402
from smtpserver import RecordingHandler, make_pki, smtp_server  # noqa: E402


class CountingHandler(RecordingHandler):
    async def handle_DATA(self, server, session, envelope):
        self.messages.append(None)  # keep memory flat
        return "250 2.0.0 Ok: queued"


class _Srv:
    def __init__(self, port: int) -> None:
        self.port = port


@contextlib.contextmanager
def server_process(pki_dir: Path | None):
    cmd = [sys.executable, __file__, "--serve"] + (["--pki-dir", str(pki_dir)] if pki_dir else [])
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        port = int(proc.stdout.readline())
        yield _Srv(port)
    finally:
        proc.stdin.close()
        proc.wait(timeout=10)


def serve(pki_dir: str | None) -> int:
    import logging
    import pickle  # noqa: F401

    logging.disable(logging.CRITICAL)
    cert = None
    if pki_dir:
        from smtpserver import _PemCert  # noqa: F401

        cert = SimpleCert(Path(pki_dir))
    with smtp_server(cert=cert, handler=CountingHandler(), auth=False) as srv:
        print(srv.port, flush=True)
        sys.stdin.read()  # until the parent closes our stdin
    return 0


class SimpleCert:
    def __init__(self, d: Path) -> None:
        self.d = d

    def configure_cert(self, ctx) -> None:
        ctx.load_cert_chain(str(self.d / "server.pem"), str(self.d / "server.key"))


CPU: dict[str, list[float]] = {"raw": [], "transport": []}


def raw_smtplib(port: int, n: int, raw: bytes, sender: str, rcpts: list[str], ctx) -> float:
    cpu = time.process_time()
    start = time.perf_counter()
    s = smtplib.SMTP("127.0.0.1" if ctx is None else "localhost", port, local_hostname="bench.local", timeout=30)
    if ctx is not None:
        s.starttls(context=ctx)
    for _ in range(n):
        s.sendmail(sender, rcpts, raw)
    s.quit()
    elapsed = time.perf_counter() - start
    CPU["raw"].append(time.process_time() - cpu)
    return elapsed


def transport(profile, n: int, raw: bytes, sender: str, rcpts: list[str]) -> float:
    cpu = time.process_time()
    start = time.perf_counter()
    with SmtpTransport(profile, None) as t:
        for _ in range(n):
            t.send(raw, sender, rcpts)
    elapsed = time.perf_counter() - start
    CPU["transport"].append(time.process_time() - cpu)
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--tls", action="store_true", help="STARTTLS with a trustme certificate")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--pki-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        return serve(args.pki_dir)

    tmp = Path(tempfile.mkdtemp())
    pki = make_pki(tmp) if args.tls else None
    if pki:
        pki.good.cert_chain_pems[0].write_to_path(str(tmp / "server.pem"))
        for pem in pki.good.cert_chain_pems[1:]:
            pem.write_to_path(str(tmp / "server.pem"), append=True)
        pki.good.private_key_pem.write_to_path(str(tmp / "server.key"))
    # The server runs in its own process: in-process it would share the GIL with the client
    # and the measurement would be mostly thread-switching noise.
    with server_process(tmp if pki else None) as srv:
        values = {"type": "smtp", "host": "localhost" if pki else "127.0.0.1", "port": srv.port, "security": "starttls" if pki else "none",
                  "auth": "none", "ehlo_name": "bench.local", "timeout": 30, "from_address": "bench@example.com"}
        if pki:
            values["ca_file"] = str(pki.ca_file)
        profile = ResolvedProfile("bench", values, {}, ["bench"])
        msg = build_message(profile, {}, to=["rcpt@example.net"], subject="bench", body="x" * 1000)
        raw = message_bytes(msg)
        sender, rcpts = envelope(msg)
        ctx = None
        if pki:
            ctx = ssl.create_default_context(cafile=str(pki.ca_file))
        # warm up both paths
        raw_smtplib(srv.port, 20, raw, sender, rcpts, ctx)
        transport(profile, 20, raw, sender, rcpts)
        r_raw, r_tr = [], []
        for i in range(args.rounds):
            pair = [("raw", lambda: raw_smtplib(srv.port, args.messages, raw, sender, rcpts, ctx)), ("transport", lambda: transport(profile, args.messages, raw, sender, rcpts))]
            if i % 2:
                pair.reverse()
            for name, fn in pair:
                (r_raw if name == "raw" else r_tr).append(fn())
    m_raw, m_tr = statistics.median(r_raw), statistics.median(r_tr)
    n = args.messages
    print(f"{n} messages x {args.rounds} rounds over one connection ({'STARTTLS' if args.tls else 'plaintext'}), {len(raw)} bytes each")
    print(f"  raw smtplib   median {m_raw:.3f}s  ({n / m_raw:,.0f} msg/s)  rounds {', '.join(f'{x:.3f}' for x in r_raw)}")
    print(f"  SmtpTransport median {m_tr:.3f}s  ({n / m_tr:,.0f} msg/s)  rounds {', '.join(f'{x:.3f}' for x in r_tr)}")
    print(f"  best rounds: raw {min(r_raw):.3f}s, transport {min(r_tr):.3f}s ({(min(r_tr) / min(r_raw) - 1) * 100:+.1f}%)")
    c_raw, c_tr = statistics.median(CPU["raw"][1:]), statistics.median(CPU["transport"][1:])
    print(f"  client CPU per message (median): raw {c_raw / n * 1e6:.0f} us, transport {c_tr / n * 1e6:.0f} us ({(c_tr / c_raw - 1) * 100:+.1f}%)")
    ratio = m_tr / m_raw
    print(f"  transport / raw = {ratio:.3f} ({(ratio - 1) * 100:+.1f}%) -> {'OK' if ratio <= 1.10 else 'SLOWER THAN TARGET'} (target <= +10%)")
    return 0 if ratio <= 1.10 else 1


if __name__ == "__main__":
    sys.exit(main())
