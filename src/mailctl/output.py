"""Rendering: data to stdout (human tables via rich, or one JSON document / JSON Lines with
--json), messages to stderr. Domain code never prints; commands hand data to an Output.

Human output shows control characters visibly (`\x1b`, `\x07`, `\x00`): a queued subject, a
profile description, a DNS TXT record or a server's reply cannot retitle, clear or rewrite the
operator's terminal. JSON stays exact (json.dumps escapes them its own way)."""

from __future__ import annotations

import json
import os
import re
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
    text = json.dumps(data, default=_default, indent=indent, ensure_ascii=False)
    # json.dumps escapes C0 controls itself; DEL and C1 (\x9b is a CSI to some terminals) only
    # with ensure_ascii. Outside strings JSON is ASCII, so this escapes inside strings only.
    return _DEL_AND_C1.sub(lambda m: f"\\u{ord(m.group(0)):04x}", text)


_DEL_AND_C1 = re.compile("[\x7f-\x9f]")
# C0 controls, DEL and C1 controls; tab and line feed are kept in running text.
_CONTROLS_IN_TEXT = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_CONTROLS_IN_CELL = re.compile("[\x00-\x1f\x7f-\x9f]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: "re.Match[str]") -> str:
    ch = match.group(0)
    return _NAMED.get(ch) or f"\\x{ord(ch):02x}"


def visible(text: str) -> str:
    """Running text (lines, messages) with control characters shown as escapes; line feeds
    and tabs stay, a CRLF line end becomes LF."""
    if "\r\n" in text:
        text = text.replace("\r\n", "\n")
    return _CONTROLS_IN_TEXT.sub(_escape, text)


def visible_cell(value: Any) -> str:
    """One table cell: every control character escaped, line breaks too (one row, one line)."""
    text = "" if value is None else str(value)
    return _CONTROLS_IN_CELL.sub(_escape, text)


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
        """A plain line of data on stdout (no markup interpretation, controls made visible)."""
        self.stdout.write(visible(text) + "\n")
        self.stdout.flush()

    def print(self, *renderables: Any, **kwargs: Any) -> None:
        self.console().print(*renderables, **kwargs)

    def table(self, columns: Sequence[str], rows: Iterable[Sequence[Any]], *, title: str | None = None) -> None:
        if not self.is_terminal:
            self._plain_table(columns, rows, title)
            return
        from rich.table import Table
        from rich.text import Text

        # Text, not str: a cell's "[red]" or "[/]" is data, never rich markup.
        table = Table(title=Text(visible_cell(title)) if title else None, show_edge=False, pad_edge=False, box=None,
                      header_style="bold")
        for col in columns:
            table.add_column(Text(visible_cell(col)), overflow="fold")
        for row in rows:
            table.add_row(*[Text(visible_cell(v)) for v in row])
        self.console().print(table)

    def _plain_table(self, columns: Sequence[str], rows: Iterable[Sequence[Any]], title: str | None) -> None:
        """Aligned columns without rich, for pipes and scripts (and a fast `profile list`)."""
        cells = [[visible_cell(c) for c in columns]] + [[visible_cell(v) for v in row] for row in rows]
        widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
        out = [visible_cell(title)] if title else []
        for r in cells:
            out.append("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
        self.stdout.write("\n".join(out) + "\n")
        self.stdout.flush()

    # messages -------------------------------------------------------------
    def info(self, message: str) -> None:
        if not self.quiet:
            self.stderr.write(visible(message) + "\n")
            self.stderr.flush()

    def debug(self, message: str) -> None:
        if self.verbose and not self.quiet:
            self.stderr.write(visible(message) + "\n")
            self.stderr.flush()

    def warn(self, message: str) -> None:
        self.stderr.write(f"Warning: {visible(message)}\n")
        self.stderr.flush()

    def error(self, message: str, hint: str | None = None) -> None:
        self.stderr.write(f"Error: {visible(message)}\n")
        if hint:
            self.stderr.write(f"Hint: {visible(hint)}\n")
        self.stderr.flush()
