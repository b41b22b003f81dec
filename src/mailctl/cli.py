"""The root Typer app: global options, command-group registration, and the ONE place where a
MailctlError becomes a message on stderr and an exit code."""

# No `from __future__ import annotations`: Typer evaluates the root callback's string
# annotations three times on every run (see mailctl/commands/send.py).

import os
import sys
from typing import Annotated, Optional

import typer
import typer.main
from typer.core import TyperGroup

from mailctl import __version__, _typer_fast
from mailctl.context import AppContext
from mailctl.errors import ExitCode, MailctlError
from mailctl.output import Output


def _debug() -> bool:
    return os.environ.get("MAILCTL_DEBUG", "") not in ("", "0")


def _passthrough_exceptions() -> tuple[type[BaseException], ...]:
    """Typer's (or Click's) own exits, aborts and usage errors keep their normal handling."""
    names = ("Exit", "Abort", "TyperException", "ClickException")
    found = [getattr(typer, n) for n in names if hasattr(typer, n)]
    if not hasattr(typer, "TyperException"):  # Typer built on Click (older releases)
        import click

        found += [click.exceptions.Exit, click.exceptions.Abort, click.ClickException]
    return tuple(found)


_PASSTHROUGH = _passthrough_exceptions()
_typer_fast.install()  # plain options without pydantic: ~90 ms off every command (never raises)


def _internals_changed(step: str, exc: BaseException) -> None:
    """A use of Typer internals failed and Typer's own path takes over: silent, but say so
    under MAILCTL_DEBUG=1."""
    if _debug():
        typer.echo(f"mailctl: debug: Typer internals changed ({step}: {type(exc).__name__}: {exc}); "
                   "building commands the way Typer does", err=True)


class MailctlGroup(TyperGroup):
    """Root group: converts domain errors into one-line messages and exit codes, and loads each
    command group (mailctl.commands.COMMAND_GROUPS) only when it is used: `mailctl profile
    list` neither imports nor builds the queue, dns, test, auth and send commands. Walk it
    with list_commands()/get_command() (Click's API), not the `.commands` dict."""

    def format_commands(self, ctx, formatter):
        _format_commands(self, ctx, formatter)

    def list_commands(self, ctx):
        from mailctl.commands import COMMAND_GROUPS

        groups = [name for name, _ in COMMAND_GROUPS]  # their order, whichever was loaded first
        return [name for name in super().list_commands(ctx) if name not in groups] + groups

    def get_command(self, ctx, cmd_name):
        cmd = super().get_command(ctx, cmd_name)
        if cmd is None:
            cmd = _load_command(cmd_name)
            if cmd is not None:
                self.commands[cmd_name] = cmd
        return cmd

    def parse_args(self, ctx, args):
        ctx.meta[_ARGS_SEEN] = list(args)  # read only when an error is reported (_json_seen)
        try:
            return super().parse_args(ctx, args)
        except _usage_error() as exc:  # a bad global option: Click reports it (stderr, exit 2)
            _report_json(ctx, exc.format_message(), _usage_hint(exc), int(ExitCode.USAGE))
            raise

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except _usage_error() as exc:  # a command's arguments did not parse
            _report_json(ctx, exc.format_message(), _usage_hint(exc), int(ExitCode.USAGE))
            raise
        except _PASSTHROUGH:
            raise
        except MailctlError as exc:
            if _debug():
                raise
            _report(exc.message, exc.hint)
            _report_json(ctx, exc.message, exc.hint, int(exc.exit_code), exc.context())
            raise typer.Exit(int(exc.exit_code))
        except KeyboardInterrupt:
            typer.echo("Interrupted.", err=True)
            _report_json(ctx, "interrupted", None, int(ExitCode.INTERRUPTED))
            raise typer.Exit(int(ExitCode.INTERRUPTED))
        except BrokenPipeError:
            raise typer.Exit(int(ExitCode.OK))
        except Exception as exc:  # the boundary: never a traceback unless asked for
            if _debug():
                raise
            message = f"unexpected {type(exc).__name__}: {exc}"
            hint = "this is a bug in mailctl; run again with MAILCTL_DEBUG=1 for a traceback and report it"
            _report(message, hint)
            _report_json(ctx, message, hint, int(ExitCode.PROBLEMS))
            raise typer.Exit(int(ExitCode.PROBLEMS))


_ARGS_SEEN = "mailctl.args_seen"


def _json_seen(ctx) -> bool:
    """Whether the command line that failed has the `--json` option (see _json_flag_in)."""
    if ctx is None:
        return False
    root = ctx.find_root()
    args = root.meta.get(_ARGS_SEEN)
    return bool(args) and _json_flag_in(args, root.command, root)


def _json_flag_in(args, command=None, ctx=None) -> bool:
    """Whether `--json` is on the command line as an option (the global flag or a command's
    own), before a `--` that ends the options: an error is then also an object on stdout.
    The words are walked as Click parses them, down the command tree, so that a "--json"
    that is the VALUE of an option taking one (`send --subject --json`) is not the flag.
    Without a command (or past a word that names no command) every option is taken for a
    flag."""
    takes_value = _value_options(command, ctx)
    words = iter(args)
    for arg in words:
        if arg == "--":
            return False
        if arg == "--json":
            return True
        if arg.startswith("--"):
            if "=" not in arg and arg in takes_value:
                next(words, None)  # its value, whatever it looks like
        elif arg.startswith("-") and len(arg) > 1:  # -v, -vv, -pNAME, -p NAME
            for i in range(1, len(arg)):
                if "-" + arg[i] in takes_value:
                    if i == len(arg) - 1:
                        next(words, None)
                    break
        elif command is not None and hasattr(command, "get_command"):  # a group: the word is its command
            try:
                command = command.get_command(ctx, arg)
            except Exception:  # a command that does not load: Click reports it
                command = None
            if command is None:
                takes_value = set()
            else:
                takes_value = _value_options(command, ctx)
    return False


def _value_options(command, ctx) -> set[str]:
    """The option names of `command` that take a value (not flags, not counters like -v)."""
    if command is None:
        return set()
    try:
        params = command.get_params(ctx) if ctx is not None else command.params
    except Exception:
        params = getattr(command, "params", [])
    return {name for p in params if getattr(p, "param_type_name", "") == "option"
            and not getattr(p, "is_flag", False) and not getattr(p, "count", False)
            for name in getattr(p, "opts", ())}


def _usage_error() -> tuple[type[BaseException], ...]:
    """Click's UsageError: Typer's own copy of Click (newer releases), and Click's."""
    found: list[type[BaseException]] = []
    try:
        from typer._click.exceptions import UsageError as vendored

        found.append(vendored)
    except ImportError:
        pass
    # Click itself only when something loaded it (no exception of a module never imported can
    # be raised), or when Typer has no copy of its own: importing it costs ~10 ms, and this
    # runs at every command's end (typer.Exit passes through these except clauses)
    click = sys.modules.get("click")
    if click is None and not found:
        try:
            import click
        except ImportError:
            click = None
    if click is not None:
        found.append(click.exceptions.UsageError)
    return tuple(found)


def _usage_hint(exc) -> str | None:
    """Where the usage is explained (Click prints the usage line itself on stderr)."""
    ctx = exc.ctx
    return f"see: {ctx.command_path} --help" if ctx is not None and ctx.command_path else None


def _report_json(ctx, message: str, hint: str | None, exit_code: int, context: dict | None = None) -> None:
    """Under --json, the error as one object on stdout as well (docs/json.md): a script reading
    stdout sees why the command failed without parsing stderr."""
    app_ctx = ctx.find_root().obj if ctx is not None else None
    output = app_ctx.output if isinstance(app_ctx, AppContext) else Output()
    if not (output.json_mode or _json_seen(ctx)):
        return
    from mailctl.output import error_document

    doc = error_document(message, hint, exit_code, context)
    try:
        output.json_error(doc)
    except (BrokenPipeError, ValueError):  # stdout gone: stderr has the message
        pass


def _format_commands(group, ctx, formatter) -> None:
    """The "Commands:" list with each command's first sentence whole (Click cuts it at ~45
    characters mid-phrase); Click's own list if that fails."""
    try:
        from mailctl.commands.helptext import format_commands
    except ImportError as exc:  # pragma: no cover - a broken install
        _internals_changed("listing commands", exc)
        return TyperGroup.format_commands(group, ctx, formatter)
    format_commands(group, ctx, formatter)


def _complete_profile(incomplete: str) -> list[str]:
    """--profile NAME: the profile names in the profiles file (Typer's dynamic completion; the
    static scripts in completions/ read the file themselves)."""
    try:
        from mailctl.paths import config_path
        from mailctl.profiles.store import ProfileStore

        names = ProfileStore(config_path()).load().profile_names()
    except Exception:  # completion must never fail loudly
        return []
    return [n for n in names if n.startswith(incomplete)]


def _report(message: str, hint: str | None) -> None:
    from mailctl.output import visible  # a server's reply or a file's text must not drive the terminal

    typer.echo(f"Error: {visible(message)}", err=True)
    if hint:
        typer.echo(f"Hint: {visible(hint)}", err=True)


app = typer.Typer(
    cls=MailctlGroup,
    name="mailctl",
    help="Administer outgoing mail: profiles and secrets, sending and diagnostics, an outbox, DNS checks.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    add_completion=False,  # static scripts instead: `mailctl completion install` (no Python per Tab)
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mailctl {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    config: Annotated[
        Optional[str],
        typer.Option("--config", metavar="FILE", envvar="MAILCTL_CONFIG", help="Profiles file; it must exist (default: the user file, else the system file; see: mailctl config)."),
    ] = None,
    profile: Annotated[
        Optional[str],
        typer.Option("--profile", "-p", metavar="NAME", envvar="MAILCTL_PROFILE", help="Profile to use instead of the default.", autocompletion=_complete_profile),
    ] = None,
    json_: Annotated[bool, typer.Option("--json", help="JSON on stdout: one object, or JSON Lines for a listing; an error as an object too (docs/json.md).")] = False,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="On stderr: the files, profile and secret store used and why, timings; -vv adds the transcript.")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only errors on stderr.")] = False,
    version: Annotated[
        Optional[bool],
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit."),
    ] = None,
) -> None:
    ctx.obj = AppContext(
        output=Output(json_mode=json_, quiet=quiet, verbose=verbose),
        config_override=config,
        profile_name=profile,
        profile_source=_profile_source(ctx),
    )


def _profile_source(ctx: typer.Context) -> str:
    """How --profile was given, for -v: "-p" on the command line, or "$MAILCTL_PROFILE"."""
    try:
        source = ctx.get_parameter_source("profile")
    except Exception:  # Click without parameter sources: the flag is the likelier one
        return "-p"
    return "$MAILCTL_PROFILE" if getattr(source, "name", "") == "ENVIRONMENT" else "-p"


def _load_command(name: str):
    """Build one top-level command or group from its module under mailctl.commands (only groups
    that work are listed there), with the root app's settings."""
    from mailctl.commands import COMMAND_GROUPS

    module_name = dict(COMMAND_GROUPS).get(name)
    if module_name is None:
        return None
    module = __import__(f"mailctl.commands.{module_name}", fromlist=["register"])
    holder = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)
    module.register(holder, name)
    try:
        group = _lazy_group(holder, name)
    except Exception as exc:  # Typer internals moved: build it all, as Typer does
        _internals_changed(f"deferring the commands of {name!r}", exc)
        group = None
    if group is None:
        group = typer.main.get_group(holder).commands.get(name)
        if type(group) is TyperGroup:  # Typer's own build: still list whole first sentences
            group.__class__ = _ListingGroup
    return group


class _ListingGroup(TyperGroup):
    """A group Typer built itself (the fallback path), listing its commands as mailctl's do."""

    def format_commands(self, ctx, formatter):
        _format_commands(self, ctx, formatter)


class _LazyGroup(TyperGroup):
    """A command group whose commands are built from their Typer CommandInfo on first use
    (`profile list` does not build the 40 field options of `profile add` and `edit`). If that
    build fails (Typer internals changed), every command of the group is built by Typer's own
    typer.main.get_group instead (_build_all)."""

    _pending: dict
    _order: list
    _build: object
    _build_all: object

    def format_commands(self, ctx, formatter):
        _format_commands(self, ctx, formatter)

    def list_commands(self, ctx):
        return list(self._order)

    def get_command(self, ctx, cmd_name):
        cmd = self.commands.get(cmd_name)
        if cmd is None and cmd_name in self._pending:
            try:
                cmd = self._build(self._pending[cmd_name])
            except Exception as exc:
                _internals_changed(f"building {self.name} {cmd_name}", exc)
                built = self._build_all()
                self.commands.update((n, c) for n, c in built.items() if n not in self.commands)
                self._pending.clear()
                return self.commands.get(cmd_name)
            del self._pending[cmd_name]
            self.commands[cmd_name] = cmd
        return cmd


def _lazy_group(holder: typer.Typer, name: str):
    """The group `name` that a command module registered on `holder` (add_typer), built the
    way typer.main.get_group would, but with its commands left for _LazyGroup.get_command."""
    import copy

    groups = [g for g in holder.registered_groups if g.name == name]
    if len(groups) != 1 or holder.registered_commands:
        return None  # a plain command (send, sendmail): nothing to defer
    info = groups[0]
    sub = info.typer_instance
    if sub is None:
        return None
    custom_cls = getattr(sub.info, "cls", None)
    if custom_cls is not None and not _is_default(custom_cls):
        return None  # the module asked for its own group class: leave it alone
    shadow = copy.copy(sub)
    shadow.registered_commands = []
    shadow_info = copy.copy(info)
    shadow_info.typer_instance = shadow
    shadow_info.cls = _LazyGroup
    settings = {"pretty_exceptions_short": holder.pretty_exceptions_short, "rich_markup_mode": holder.rich_markup_mode}
    group = typer.main.get_group_from_info(shadow_info, suggest_commands=holder.suggest_commands, **settings)
    pending = {(ci.name or typer.main.get_command_name(ci.callback.__name__)): ci for ci in sub.registered_commands}
    group._pending = pending
    group._order = list(pending) + [n for n in group.commands if n not in pending]
    group._build = lambda ci: typer.main.get_command_from_info(ci, **settings)
    group._build_all = lambda: typer.main.get_group(holder).commands[name].commands
    return group


def _is_default(value) -> bool:
    return type(value).__name__ == "DefaultPlaceholder"


def _dynamic_completion() -> None:
    """Scripts from an older `mailctl --install-completion` call back into mailctl on every Tab
    (_MAILCTL_COMPLETE=complete_bash ...): keep answering them. Typer registers its shells only
    with add_completion, which the static scripts replaced."""
    try:
        from typer.completion import completion_init

        completion_init()
    except Exception as exc:  # Typer internals moved: such a Tab completes nothing
        _internals_changed("answering a dynamic completion request", exc)


def main(argv: list[str] | None = None) -> None:
    if os.environ.get("_MAILCTL_COMPLETE"):
        _dynamic_completion()
    try:
        app(args=argv, prog_name="mailctl")
    finally:
        if argv is None:  # the program itself (`mailctl`, `python -m mailctl`), not a caller's main([...])
            _before_exit()


def _before_exit() -> None:
    """The command is done and the process exits next. gc.freeze(): the interpreter's final
    garbage collections (full passes over the objects of every imported module, 20-40 ms of a
    one-shot `mailctl send`) then skip what exists now. The rest of the shutdown is as before:
    atexit handlers, threads joined, modules cleared, objects freed by reference counting;
    only reference cycles left at exit are not collected, which Python does not promise anyway."""
    import gc

    gc.freeze()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
