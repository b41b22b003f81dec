"""Wall time of `mailctl test connect` (a fresh interpreter each run, as a user runs it)
against a local aiosmtpd server with STARTTLS + AUTH PLAIN, next to `python -c pass` and
`mailctl --version` for scale.

    python bench/test_connect.py [--runs 10]"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))

from smtpserver import PASSWORD, USER, make_pki, smtp_server, write_profiles  # noqa: E402


def timed(cmd: list[str], env: dict, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        res = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        out.append(time.perf_counter() - start)
        if res.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} exited {res.returncode}: {res.stderr}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp())
    pki = make_pki(home)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILCTL_")}
    env.update({"MAILCTL_HOME": str(home), "MAILCTL_SECRET_BENCH_PASSWORD": PASSWORD, "NO_COLOR": "1",
                "PYTHONPATH": str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")})
    with smtp_server(cert=pki.good) as srv:
        write_profiles(home, {"bench": {"type": "smtp", "host": "localhost", "port": srv.port, "security": "starttls", "auth": "password",
                                        "username": USER, "ca_file": str(pki.ca_file), "timeout": 10}})
        py = [sys.executable]
        rows = [
            ("python -c pass", timed(py + ["-c", "pass"], env, args.runs)),
            ("mailctl --version", timed(py + ["-m", "mailctl", "--version"], env, args.runs)),
            ("mailctl test connect", timed(py + ["-m", "mailctl", "test", "connect"], env, args.runs)),
            ("mailctl test connect --json", timed(py + ["-m", "mailctl", "test", "connect", "--json"], env, args.runs)),
        ]
    print(f"{args.runs} runs each, local aiosmtpd with STARTTLS + AUTH PLAIN")
    for name, times in rows:
        print(f"  {name:<30} median {statistics.median(times) * 1000:7.0f} ms   min {min(times) * 1000:7.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
