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


# --- the --json contract (docs/json.md, schemas/) -------------------------------------------
# Applied to every document Output.json / json_lines print, so the rules hold for every command
# in one place and the domain's to_dict() keep the names their other callers use.
_RENAMED = {"last_reply": "reply", "last_server": "server", "at": "attempted_at", "since": "since_at",
            "not_before": "not_before_at", "not_after": "not_after_at", "now": "checked_at",
            "duration": "duration_seconds", "expires_in": "expires_in_seconds", "t": "elapsed_seconds"}
"""Same names for the same things: the queue's last attempt is `reply`/`server` like every other
reply; a time (an attempt's `at`, failover's `since`, a certificate's validity) gets the `_at`
suffix; a duration (`duration`, a token's `expires_in`, a transcript line's `t`) `_seconds`."""
_SCALED = {"refresh_token_age_days": ("refresh_token_age_seconds", 86400),
           "days_left": ("expires_in_seconds", 86400)}
"""Durations counted in another unit than seconds, their name in seconds and the factor."""


def rfc3339(value: Any) -> Any:
    """A timestamp as RFC 3339 UTC with a `Z` (`2026-12-01T11:39:36Z`, fractions kept): from an
    epoch number, a datetime (naive is taken as UTC) or an ISO 8601 string; None and anything
    else unchanged."""
    from datetime import timezone

    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        value = datetime.fromtimestamp(float(value), tz=timezone.utc)
    elif isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
    elif isinstance(value, date) and not isinstance(value, datetime):
        return value.isoformat()
    if not isinstance(value, datetime):
        return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    value = value.astimezone(timezone.utc)
    spec = "microseconds" if value.microsecond else "seconds"
    return value.replace(tzinfo=None).isoformat(timespec=spec) + "Z"


def json_document(data: Any) -> Any:
    """`data` as the --json contract has it: every `*_at` (and datetime) an RFC 3339 UTC
    string, durations in seconds under a `_seconds` key (`*_ms` divided, `duration` renamed),
    the shared names of _RENAMED; maps keyed by data (addresses, setting names) pass as they
    are, since only the known field names are touched."""
    if hasattr(data, "to_dict") and not isinstance(data, type):
        data = data.to_dict()
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            name, value = _contract_field(str(key), value)
            if name != key and (name in data or name in out):  # the shared name is taken: keep the original
                name = key
            out[name] = json_document(value) if not name.endswith("_at") else _timestamps(value)
        return out
    if isinstance(data, (list, tuple, set, frozenset)):
        return [json_document(v) for v in data]
    if isinstance(data, datetime):
        return rfc3339(data)
    return data


def _contract_field(key: str, value: Any) -> tuple[str, Any]:
    """One key and value under the naming and unit rules (see json_document)."""
    if key in _SCALED:
        name, factor = _SCALED[key]
        return name, (value * factor if isinstance(value, (int, float)) and not isinstance(value, bool) else value)
    number = value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))
    if key.endswith("_ms") and number:
        return key[:-3] + "_seconds", (None if value is None else round(value / 1000.0, 6))
    name = _RENAMED.get(key, key)
    # Only values of the expected type: a DKIM or DMARC tag `t=y` in a record's tag map stays `t`.
    if name.endswith("_seconds") and not number:
        return key, value
    if name.endswith("_at") and not (number or isinstance(value, (str, datetime))):
        return key, value
    return name, value


def _timestamps(value: Any) -> Any:
    """The value of an `*_at` key: a timestamp, or a list/map of them."""
    if isinstance(value, dict):
        return {k: _timestamps(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_timestamps(v) for v in value]
    return rfc3339(value)


def error_document(message: str, hint: str | None, exit_code: int, context: dict[str, Any] | None = None) -> dict[str, Any]:
    """The object an error prints on stdout under --json: error, hint, exit_code and the
    error's declared context fields that are set (never a secret: those are not context)."""
    doc: dict[str, Any] = {"error": message, "hint": hint or None, "exit_code": int(exit_code)}
    for key, value in (context or {}).items():
        if value is not None and key not in doc:
            doc[key] = value
    return json_document(doc)


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


class Col:
    """A table column and what it may give up on a narrow terminal (Output.table).

    fit: "keep" (ids, dates, addresses, numbers, states: never wrapped or cut; the column is
    dropped first), "cut" (free text such as a server reply: one line, cut with an ellipsis,
    shown whole in `--json` and `show`), or "fold" (wrapped over lines, the default).
    drop: on a terminal too narrow for every column, the column with the highest `drop` is
    left out first (0: never). min_width: the least a "cut" or "fold" column gets."""

    __slots__ = ("header", "fit", "drop", "min_width")

    def __init__(self, header: str, fit: str = "fold", *, drop: int = 0, min_width: int = 10) -> None:
        if fit not in ("keep", "cut", "fold"):
            raise ValueError(fit)
        self.header, self.fit, self.drop, self.min_width = header, fit, drop, min_width


def fit_columns(columns: Sequence[Col], natural: Sequence[int], width: int, gap: int = 2) -> dict[int, int]:
    """Column index -> width for a terminal `width` cells wide: "keep" columns at their
    natural width, the others sharing what is left (at least min_width each, never more than
    they need); while that does not fit, the column with the highest `drop` is left out.
    Gives every column its natural width when nothing droppable is left (the line then
    overflows rather than break an id or an address)."""
    shown = list(range(len(columns)))

    def least(i: int) -> int:
        return natural[i] if columns[i].fit == "keep" else min(natural[i], columns[i].min_width)

    while sum(least(i) for i in shown) + gap * (len(shown) - 1) > width:
        droppable = [i for i in shown if columns[i].drop > 0]
        if not droppable:
            return {i: natural[i] for i in shown}
        shown.remove(max(droppable, key=lambda i: (columns[i].drop, i)))
    widths = {i: least(i) for i in shown}
    spare = width - sum(widths.values()) - gap * (len(shown) - 1)
    flexible = [i for i in shown if columns[i].fit != "keep"]
    while spare > 0 and flexible:  # share out the rest evenly, none beyond its need
        hungry = [i for i in flexible if widths[i] < natural[i]]
        if not hungry:
            break
        share = max(1, spare // len(hungry))
        for i in hungry:
            more = min(share, natural[i] - widths[i], spare)
            widths[i] += more
            spare -= more
    return widths


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
        self.result_printed = False

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
    def json(self, data: Any, *, exit_code: int = 0) -> None:
        """A single result: one JSON object carrying "exit_code" (the process's exit status:
        pass it when the command exits non-zero, unless the object has its own)."""
        doc = json_document(data)
        if not isinstance(doc, dict):
            raise TypeError("a single --json result is one object; a listing goes through json_lines")
        doc.setdefault("exit_code", int(exit_code))
        self.stdout.write(to_json(doc) + "\n")
        self.stdout.flush()
        self.result_printed = True  # a later error adds no second object (json_error)

    def json_lines(self, rows: Iterable[Any]) -> None:
        """A listing: one compact object per line (JSON Lines, like `postqueue -j`), nothing
        for an empty listing; records carry no exit_code."""
        for row in rows:
            self.stdout.write(to_json(json_document(row), indent=None) + "\n")
        self.stdout.flush()

    def json_error(self, document: dict[str, Any]) -> None:
        """The error object of a failed command under --json (error_document), on one line so
        that it also ends a JSON Lines listing cleanly. Nothing when the command already printed
        its result object: that object's exit_code tells the outcome, and stdout stays one object."""
        if self.result_printed:
            return
        self.stdout.write(to_json(document, indent=None) + "\n")
        self.stdout.flush()

    def line(self, text: str = "") -> None:
        """A plain line of data on stdout (no markup interpretation, controls made visible)."""
        self.stdout.write(visible(text) + "\n")
        self.stdout.flush()

    def print(self, *renderables: Any, **kwargs: Any) -> None:
        self.console().print(*renderables, **kwargs)

    @property
    def terminal_lines(self) -> int | None:
        """The terminal's height when stdout is one (a screenful for paged listings)."""
        if not self.is_terminal:
            return None
        import shutil

        return shutil.get_terminal_size().lines

    def table(self, columns: Sequence[str | Col], rows: Iterable[Sequence[Any]], *, title: str | None = None) -> list[str]:
        """A table on stdout: rich on a terminal, aligned plain text otherwise (never cut or
        wrapped: for scripts). Columns given as Col keep ids, dates and addresses whole on a
        narrow terminal (see fit_columns); returns the headers left out for lack of width."""
        cols = [c if isinstance(c, Col) else Col(c) for c in columns]
        if not self.is_terminal:
            self._plain_table([c.header for c in cols], rows, title)
            return []
        from rich.cells import cell_len
        from rich.table import Table
        from rich.text import Text

        cells = [[visible_cell(v) for v in row] for row in rows]
        shown = list(range(len(cols)))
        widths: dict[int, int] = {}
        if any(c.fit != "fold" for c in cols):
            natural = [max([cell_len(visible_cell(c.header))] + [cell_len(r[i]) for r in cells]) for i, c in enumerate(cols)]
            widths = fit_columns(cols, natural, self.console().width)
            shown = sorted(widths)
        # Text, not str: a cell's "[red]" or "[/]" is data, never rich markup.
        table = Table(title=Text(visible_cell(title)) if title else None, show_edge=False, pad_edge=False, box=None,
                      header_style="bold")
        for i in shown:
            c = cols[i]
            table.add_column(Text(visible_cell(c.header)), width=widths.get(i), no_wrap=c.fit != "fold",
                             overflow="ellipsis" if c.fit == "cut" else "fold")
        for r in cells:
            table.add_row(*[Text(r[i]) for i in shown])
        self.console().print(table)
        return [cols[i].header for i in range(len(cols)) if i not in shown]

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

    def debug(self, message: str, level: int = 1) -> None:
        """A -v line on stderr: shown when -v was given at least `level` times (1: -v, 2: -vv);
        --quiet wins. Never on stdout, so --json output stays as it is."""
        if self.verbose >= level and not self.quiet:
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
