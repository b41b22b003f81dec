"""Startup wall time of `mailctl --help` and `mailctl profile list` (20 profiles), as ratios to
`python -c "import typer"` measured in the same run. Target: profile list <= 1.5.

    python bench/startup.py [--runs 15] [--no-compile]

The three commands run interleaved (typer, help, list, typer, help, list, ...), so drift in
the machine's load hits all of them alike; the figures are medians. CPU time (user + system
of the child) is printed too: it does not depend on scheduling, only on the work done.

Like a wheel install (pip compiles every module), mailctl's modules are byte-compiled first,
so both sides start from cached bytecode as the installed typer does; `--no-compile` measures
an editable checkout under PYTHONDONTWRITEBYTECODE=1 instead, which compiles mailctl's
sources on every start.
"""

from __future__ import annotations

import argparse
import compileall
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_once(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, child CPU seconds)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}")
    return wall, usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--no-compile", action="store_true", help="do not byte-compile mailctl first")
    args = parser.parse_args()
    import mailctl

    package = Path(mailctl.__file__).parent
    if not args.no_compile:
        compileall.compile_dir(str(package), quiet=1)
    with tempfile.TemporaryDirectory() as home:
        lines = ["schema_version = 1", 'default = "p0"']
        for i in range(20):
            lines += [f"[profiles.p{i}]", f'host = "smtp{i}.example.com"', 'username = "u@example.com"', 'from_address = "u@example.com"']
        Path(home, "profiles.toml").write_text("\n".join(lines) + "\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAILCTL_")}
        env["MAILCTL_HOME"] = home
        py = sys.executable
        commands = {
            "typer": [py, "-c", "import typer"],
            "help": [py, "-m", "mailctl", "--help"],
            "list": [py, "-m", "mailctl", "profile", "list"],
        }
        for cmd in commands.values():  # warm the OS cache once
            run_once(cmd, env)
        wall: dict[str, list[float]] = {k: [] for k in commands}
        cpu: dict[str, list[float]] = {k: [] for k in commands}
        for _ in range(args.runs):
            for key, cmd in commands.items():
                w, c = run_once(cmd, env)
                wall[key].append(w)
                cpu[key].append(c)
    w = {k: statistics.median(v) for k, v in wall.items()}
    c = {k: statistics.median(v) for k, v in cpu.items()}
    print(f"bytecode: {'as installed by pip (compiled first)' if not args.no_compile else 'as found (--no-compile)'}; "
          f"{args.runs} interleaved runs, medians; load average {os.getloadavg()[0]:.2f}")
    print(f"python -c 'import typer'   {w['typer'] * 1000:7.1f} ms            cpu {c['typer'] * 1000:6.1f} ms")
    print(f"mailctl --help             {w['help'] * 1000:7.1f} ms  ratio {w['help'] / w['typer']:.2f}  "
          f"cpu {c['help'] * 1000:6.1f} ms  ratio {c['help'] / c['typer']:.2f}")
    print(f"mailctl profile list (20)  {w['list'] * 1000:7.1f} ms  ratio {w['list'] / w['typer']:.2f}  "
          f"cpu {c['list'] * 1000:6.1f} ms  ratio {c['list'] / c['typer']:.2f}  (target: wall ratio <= 1.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
