"""The command tree as data, read from the Click commands Typer builds: the one-line help of
each command (mailctl.commands.helptext.short_help), and per command its subcommands, options (which take a value, which values) and
positional arguments. The command lists in --help, the static shell completion scripts
(mailctl.commands.shellscripts) and the man pages (scripts/gen_docs.py) all come from here,
so they say the same as --help and cannot drift from it.

Values are never written down here: they come from the parameter itself (a click Choice, a
Path, its completion callback, a metavar such as `table|json|openmetrics`) or, for the
`--FIELD` options of `profile add` / `edit`, from the profile field's own choices. Profile
names are the one dynamic value: a parameter whose completion callback returns the names in
the profiles file is marked `profile`, and the scripts read the file's `[profiles.NAME]`
headers themselves."""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

from mailctl.commands.helptext import short_help

PROFILE = "@profile"  # complete profile names (read from the profiles file)
FILE = "@file"  # complete file names
_SENTINEL = "zz_mailctl_sentinel_profile"  # the profile name that reveals a profile-name completer
_FILE_METAVARS = {"FILE", "PATH", "DIR", "PATH|URL"}
_PROFILE_METAVARS = {"PROFILE"}  # e.g. --inherits PROFILE (a field: no completion callback)
_CHOICE_METAVAR = re.compile(r"[a-z0-9][a-z0-9-]*(\|[a-z0-9][a-z0-9-]*)+")


@dataclass
class Option:
    names: tuple[str, ...]  # every spelling: -s, --state, and --no-x of a boolean flag
    takes_value: bool
    values: tuple[str, ...] = ()  # choices, or (PROFILE,) / (FILE,)
    help: str = ""


@dataclass
class Positional:
    name: str
    values: tuple[str, ...] = ()  # as Option.values
    many: bool = False  # nargs=-1: it repeats


@dataclass
class Command:
    path: tuple[str, ...]
    help: str  # short help
    subcommands: list[str] = field(default_factory=list)
    options: list[Option] = field(default_factory=list)
    positionals: list[Positional] = field(default_factory=list)

    @property
    def key(self) -> str:
        return " ".join(self.path)


def command_tree(root: Any) -> list[Command]:
    """Every command under the Click command `root` (the root first, registration order)."""
    out: list[Command] = []
    with _profile_probe(), root.make_context("mailctl", ["--help"], resilient_parsing=True) as ctx:
        _walk(root, (), ctx, out)
    return out


def _walk(cmd: Any, path: tuple[str, ...], ctx: Any, out: list[Command]) -> None:
    node = Command(path, short_help(cmd))
    out.append(node)
    for param in cmd.get_params(ctx):
        if getattr(param, "hidden", False):
            continue
        if param.param_type_name == "option":
            node.options.append(_option(param, ctx))
        elif param.param_type_name == "argument":
            node.positionals.append(Positional(param.name or "", _values(param, ctx), param.nargs == -1))
    if hasattr(cmd, "list_commands"):
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            if sub is not None and not getattr(sub, "hidden", False):
                node.subcommands.append(name)
                _walk(sub, path + (name,), ctx, out)


def _option(param: Any, ctx: Any) -> Option:
    takes_value = not (param.is_flag or param.count)
    # short spellings first, as Click's join_options lists them (the help option's come from a set)
    names = tuple(sorted(tuple(param.opts) + tuple(param.secondary_opts), key=lambda n: len(n) - len(n.lstrip("-"))))
    values = _values(param, ctx) if takes_value else ()
    return Option(names, takes_value, values, " ".join((param.help or "").split()))


def _values(param: Any, ctx: Any) -> tuple[str, ...]:
    """What a value of `param` completes to (see the module docstring for the sources)."""
    try:
        items = param.shell_complete(ctx, "")
    except Exception:  # a callback that needs more than the generator has: no static values
        items = []
    if any(getattr(i, "type", "plain") in ("file", "dir") for i in items):
        return (FILE,)
    words = tuple(str(i.value) for i in items if getattr(i, "type", "plain") == "plain")
    if _SENTINEL in words:
        return (PROFILE,)
    if words:
        return words
    field_choices = _field_choices(param)
    if field_choices:
        return field_choices
    metavar = getattr(param, "metavar", None) or ""
    if metavar in _PROFILE_METAVARS:
        return (PROFILE,)
    if metavar in _FILE_METAVARS:
        return (FILE,)
    if _CHOICE_METAVAR.fullmatch(metavar):
        return tuple(metavar.split("|"))
    return ()


def _field_choices(param: Any) -> tuple[str, ...]:
    """A `--FIELD` option made from a profile field (same name and help) takes its choices."""
    from mailctl.profiles.model import FIELDS_BY_NAME

    f = FIELDS_BY_NAME.get(param.name or "")
    if f is None or " ".join((param.help or "").split()) != " ".join(f.help.split()):
        return ()
    return tuple(getattr(f.check, "choices", ()))


@contextmanager
def _profile_probe() -> Iterator[None]:
    """While walking, MAILCTL_CONFIG names a file with one sentinel profile: a completion
    callback that returns it completes profile names, whatever it is called."""
    import tempfile

    saved = os.environ.get("MAILCTL_CONFIG")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "profiles.toml")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(f'schema_version = 1\n[profiles.{_SENTINEL}]\ntype = "file"\n')
        os.environ["MAILCTL_CONFIG"] = path
        try:
            yield
        finally:
            if saved is None:
                os.environ.pop("MAILCTL_CONFIG", None)
            else:
                os.environ["MAILCTL_CONFIG"] = saved
