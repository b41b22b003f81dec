"""Startup wall time of `mailctl --help` and `mailctl profile list` (20 profiles), as ratios to
`python -c "import typer"` measured in the same run. Target: profile list <= 1.5.

    python bench/startup.py [--runs 15]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(cmd: list[str], env: dict[str, str], runs: int) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        lines = ["schema_version = 1", 'default = "p0"']
        for i in range(20):
            lines += [f"[profiles.p{i}]", f'host = "smtp{i}.example.com"', 'username = "u@example.com"', 'from_address = "u@example.com"']
        Path(home, "profiles.toml").write_text("\n".join(lines) + "\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAILCTL_")}
        env["MAILCTL_HOME"] = home
        py = sys.executable
        # warm the OS cache once
        subprocess.run([py, "-m", "mailctl", "--help"], env=env, stdout=subprocess.DEVNULL, check=True)
        base = timed([py, "-c", "import typer"], env, args.runs)
        help_t = timed([py, "-m", "mailctl", "--help"], env, args.runs)
        list_t = timed([py, "-m", "mailctl", "profile", "list"], env, args.runs)
    print(f"python -c 'import typer'   {base * 1000:7.1f} ms")
    print(f"mailctl --help             {help_t * 1000:7.1f} ms  ratio {help_t / base:.2f}")
    print(f"mailctl profile list (20)  {list_t * 1000:7.1f} ms  ratio {list_t / base:.2f}  (target <= 1.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
