"""Rendering: data to stdout (human tables via rich, or one JSON document / JSON Lines with
--json), messages to stderr. Domain code never prints; commands hand data to an Output."""

from __future__ import annotations

import json
import os
import sys
from datetime import date, datetime
from pathlib import Path
from typing import Any, Iterable, Sequence, TextIO


def _default(obj: Any) -> Any:
    if isinstance(obj, (datetime, date)):
        return obj.isoformat()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    return str(obj)


def to_json(data: Any, *, indent: int | None = 2) -> str:
    return json.dumps(data, default=_default, indent=indent, ensure_ascii=False)


class Output:
    def __init__(
        self,
        *,
        json_mode: bool = False,
        quiet: bool = False,
        verbose: int = 0,
        stdout: TextIO | None = None,
        stderr: TextIO | None = None,
    ) -> None:
        self.json_mode = json_mode
        self.quiet = quiet
        self.verbose = verbose
        self._stdout = stdout
        self._stderr = stderr
        self._console = None
        self._err_console = None

    @property
    def stdout(self) -> TextIO:
        return self._stdout or sys.stdout

    @property
    def stderr(self) -> TextIO:
        return self._stderr or sys.stderr

    @property
    def is_terminal(self) -> bool:
        try:
            return self.stdout.isatty()
        except (AttributeError, ValueError):
            return False

    @property
    def stdin_is_terminal(self) -> bool:
        try:
            return sys.stdin.isatty()
        except (AttributeError, ValueError):
            return False

    def console(self):
        if self._console is None:
            from rich.console import Console

            self._console = Console(
                file=self.stdout,
                no_color=bool(os.environ.get("NO_COLOR")) or None,
                highlight=False,
                # Piped output is for scripts: never wrap table cells.
                width=None if self.is_terminal else 1000,
            )
        return self._console

    def err_console(self):
        if self._err_console is None:
            from rich.console import Console

            self._err_console = Console(
                file=self.stderr, no_color=bool(os.environ.get("NO_COLOR")) or None, highlight=False
            )
        return self._err_console

    # data -----------------------------------------------------------------
    def json(self, data: Any) -> None:
        self.stdout.write(to_json(data) + "\n")
        self.stdout.flush()

    def json_lines(self, rows: Iterable[Any]) -> None:
        for row in rows:
            self.stdout.write(to_json(row, indent=None) + "\n")
        self.stdout.flush()

    def line(self, text: str = "") -> None:
        """A plain line of data on stdout (no markup interpretation)."""
        self.stdout.write(text + "\n")
        self.stdout.flush()

    def print(self, *renderables: Any, **kwargs: Any) -> None:
        self.console().print(*renderables, **kwargs)

    def table(self, columns: Sequence[str], rows: Iterable[Sequence[Any]], *, title: str | None = None) -> None:
        if not self.is_terminal:
            self._plain_table(columns, rows, title)
            return
        from rich.table import Table

        table = Table(title=title, show_edge=False, pad_edge=False, box=None, header_style="bold")
        for col in columns:
            table.add_column(col, overflow="fold")
        for row in rows:
            table.add_row(*["" if v is None else str(v) for v in row])
        self.console().print(table)

    def _plain_table(self, columns: Sequence[str], rows: Iterable[Sequence[Any]], title: str | None) -> None:
        """Aligned columns without rich, for pipes and scripts (and a fast `profile list`)."""
        cells = [[str(c) for c in columns]] + [["" if v is None else str(v).replace("\n", "\\n") for v in row] for row in rows]
        widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
        out = [title] if title else []
        for r in cells:
            out.append("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
        self.stdout.write("\n".join(out) + "\n")
        self.stdout.flush()

    # messages -------------------------------------------------------------
    def info(self, message: str) -> None:
        if not self.quiet:
            self.stderr.write(message + "\n")
            self.stderr.flush()

    def debug(self, message: str) -> None:
        if self.verbose and not self.quiet:
            self.stderr.write(message + "\n")
            self.stderr.flush()

    def warn(self, message: str) -> None:
        self.stderr.write(f"Warning: {message}\n")
        self.stderr.flush()

    def error(self, message: str, hint: str | None = None) -> None:
        self.stderr.write(f"Error: {message}\n")
        if hint:
            self.stderr.write(f"Hint: {hint}\n")
        self.stderr.flush()
