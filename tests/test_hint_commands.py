"""Every command line a hint, an error or a knowledge-base entry can print runs as printed.

The test reads every string of src/mailctl (f-strings with their holes filled in, the
knowledge base's {profile} placeholders too; docstrings are documentation and not read),
takes each `mailctl ...` command line out of it, and parses it with the real command tree
(Click's own parser: options, choices, types, arguments), without running it."""

from __future__ import annotations

import ast
import importlib
import re
import shlex
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "mailctl"
SAMPLE = "company"  # what a hole ({profile}, {name}, an f-string value) stands for
# A command line: "mailctl" and words up to the end of the clause. Quoted words count whole.
_WORD = r"(?:'[^']*'|\"[^\"]*\"|[^\s;,`()]+)"
_COMMAND = re.compile(rf"\bmailctl((?: {_WORD})+)")
# words that end a command line inside prose ("... then mailctl auth login P again")
_PROSE = {"again", "then", "and", "or", "to", "first", "instead", "once", "(or", "if", "when"}


def _strings(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = set()  # docstrings, and the pieces of f-strings (read whole below)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = getattr(node, "body", [])
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                skip.add(id(body[0].value))
        elif isinstance(node, ast.JoinedStr):
            skip.update(id(v) for v in ast.walk(node) if v is not node)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            yield node.lineno, node.value
        elif isinstance(node, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) else "{hole}" for v in node.values)
            yield node.lineno, text


# Strings that name the program but are not command lines, with the reason.
NOT_COMMANDS = {
    "mailctl/dns/render.py": "the JUnit report's suite name (`mailctl dns check example.com`)",
    "mailctl/commands/test.py": "the test message's subject (`mailctl test message (...)`)",
}


def _fill(text: str) -> str:
    text = re.sub(r"--\{[a-z_]*\}", "--host", text)  # --{field} VALUE: any field's option
    text = re.sub(r"\bID\b", "{hole}", text)  # a queue id's metavar
    return text.replace("PROFILE", "{hole}")


def _groups() -> set[str]:
    root = _root()
    with root.make_context("mailctl", ["--help"], resilient_parsing=True) as ctx:
        return set(root.list_commands(ctx))


def command_lines() -> list[tuple[str, str]]:
    """(command line without `mailctl`, where it is written). Prose that merely names the
    program ("mailctl never sends AUTH unencrypted") is not a command line: the first word
    must be a command or an option."""
    groups = _groups()
    found: dict[str, str] = {}
    for path in sorted(SRC.rglob("*.py")):
        if str(path.relative_to(SRC.parent)) in NOT_COMMANDS:
            continue
        for line, text in _strings(path):
            for match in _COMMAND.finditer(_fill(text)):
                words = []
                for word in match.group(1).split(" ")[1:]:
                    if word in _PROSE:
                        break
                    words.append(word)
                command = " ".join(words).rstrip(".:")
                if command and (words[0] in groups or words[0].startswith("-")):
                    found.setdefault(command, f"{path.relative_to(SRC.parent)}:{line}")
    return sorted(found.items())


def _root():
    import typer.main

    from mailctl.cli import app

    return typer.main.get_command(app)


def _click():
    """The Click that Typer builds on: click itself, or the copy newer Typer releases carry."""
    command_class = next(c for c in type(_root()).__mro__ if c.__name__ == "Command")
    return importlib.import_module(command_class.__module__.rpartition(".")[0] + ".exceptions")


CLICK = _click()
# Outcomes of parsing that are not refusals: --help/--version exit early, a bare group shows its help.
_FINE = ("Exit", "NoArgsIsHelpError")


def parse(command: str) -> None:
    """Parse `mailctl <command>` down to the leaf command, as Click would before running it;
    raises click.UsageError (or a subclass) when the line would be refused. A hole ({profile},
    an f-string's value) stands for a profile name or, where a number is wanted, a number."""
    errors = []
    for value in (SAMPLE, "1"):
        try:
            return _parse(re.sub(r"\{[a-z_]*\}", value, command))
        except CLICK.UsageError as exc:
            if type(exc).__name__ in _FINE:
                return None
            errors.append(exc)
    raise errors[0]


def _parse(command: str) -> None:
    args = shlex.split(command)
    if "<" in args:  # shell redirection: `mailctl queue add < message.eml`
        args = args[: args.index("<")]
    cmd = _root()
    ctx = cmd.make_context("mailctl", list(args))
    while hasattr(cmd, "get_command"):  # a group: the next word names the subcommand
        protected = getattr(ctx, "protected_args", None)
        if protected is None:  # Click 8.2+ keeps them private
            protected = getattr(ctx, "_protected_args", [])
        rest = [*protected, *ctx.args]
        if not rest:
            return
        name, rest = rest[0], rest[1:]
        sub = cmd.get_command(ctx, name)
        if sub is None:
            raise CLICK.UsageError(f"no such command {name!r}")
        cmd, ctx = sub, sub.make_context(name, rest, parent=ctx)


def test_the_collector_finds_hints():
    lines = dict(command_lines())
    assert "profile edit {hole} --host HOST" in lines  # transports/smtp.py
    assert "auth login {hole}" in lines
    assert len(lines) > 40


def test_the_parser_refuses_what_the_cli_refuses():
    parse("profile edit {hole} --allow-insecure-auth")
    parse("queue show {hole}")  # a number where a number is wanted
    for bad in ("profile edit {hole} --allow-insecure-auth true", "profile settings show", "queue list --state",
                f"test send {SAMPLE} --quit-after nowhere", "no-such-group"):
        with pytest.raises(CLICK.UsageError):
            parse(bad)


@pytest.mark.parametrize("command,where", command_lines())
def test_every_printed_command_line_parses(command, where):
    try:
        parse(command)
    except Exception as exc:
        if type(exc).__name__ in _FINE:
            return
        if not isinstance(exc, CLICK.UsageError):
            raise
        pytest.fail(f"{where}: `mailctl {command}` would be refused: {exc.format_message()}")
