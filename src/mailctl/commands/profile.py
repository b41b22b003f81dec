"""`mailctl profile ...`: parse, call mailctl.profiles.operations, render."""

import functools
import inspect
import sys
import typing
from typing import Annotated, Any, Callable, List, Optional

import typer

from mailctl.commands._common import JsonLinesOpt, JsonOpt, ProfileNameArg, app_context, complete_profile_name
from mailctl.errors import ExitCode, UsageError, ValidationError
from mailctl.profiles import operations as ops
from mailctl.profiles.model import PROFILE_FIELDS, coerce_cli_value

profile_app = typer.Typer(help="Manage named profiles (TOML file) and their secrets (OS keyring).", no_args_is_help=True)

PasswordStdinOpt = Annotated[
    bool, typer.Option("--password-stdin", help="Read the password / client secret from stdin (first line).")
]
NoSecretOpt = Annotated[bool, typer.Option("--no-secret", help="Do not ask for or store a secret.")]


def register(app: typer.Typer, name: str) -> None:
    app.add_typer(profile_app, name=name)


# --- one --FIELD option per profile field, shared by add and edit -----------------------
def _field_parameters() -> list[inspect.Parameter]:
    params = []
    for f in PROFILE_FIELDS:
        flag = "--" + f.name.replace("_", "-")
        if f.kind == "bool":
            option = typer.Option(f"{flag}/--no-{f.name.replace('_', '-')}", help=f.help, rich_help_panel="Fields")
            annotation = Annotated[Optional[bool], option]
        else:
            option = typer.Option(flag, help=f.help, metavar=f.metavar, rich_help_panel="Fields")
            annotation = Annotated[Optional[str], option]
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation))
    return params


def with_field_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add --host, --port, ... to a command; the function receives them as `fields`."""
    names = [f.name for f in PROFILE_FIELDS]
    sig = inspect.signature(fn)
    hints = typing.get_type_hints(fn, include_extras=True)
    own = [p.replace(annotation=hints.get(n, p.annotation)) for n, p in sig.parameters.items() if n != "fields"]

    @functools.wraps(fn)
    def wrapper(**kwargs: Any) -> Any:
        given = {n: kwargs.pop(n) for n in names}
        fields = {}
        for key, raw in given.items():
            if raw is None:
                continue
            fields[key] = raw if isinstance(raw, bool) else coerce_cli_value(key, raw)
        return fn(fields=fields, **kwargs)

    params = own + _field_parameters()
    wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    del wrapper.__wrapped__  # Typer must read __signature__, not the original function
    return wrapper


def _read_secret(*, password_stdin: bool, no_secret: bool, needed: str | None, prompt: str) -> str | None:
    """The secret from stdin, a hidden prompt on a terminal, or None when not wanted."""
    if password_stdin and no_secret:
        raise UsageError("--password-stdin and --no-secret exclude each other")
    if password_stdin:
        data = sys.stdin.readline()
        value = data.rstrip("\r\n")
        if not value:
            raise ValidationError("--password-stdin: stdin was empty", field="password")
        return value
    if no_secret or needed is None:
        return None
    if sys.stdin.isatty():
        value = typer.prompt(prompt, hide_input=True, confirmation_prompt=False, default="", show_default=False)
        return value or None
    raise UsageError(
        f"no terminal to ask for the {needed.replace('_', ' ')}: pass --password-stdin (secret on stdin) or --no-secret"
    )


def _needed_kind(ctx: typer.Context, name: str, fields: dict[str, Any], *, new: bool) -> str | None:
    """Which secret the profile will need after this change, worked out on an unsaved copy
    (so presets, inheritance and defaults apply exactly as they will)."""
    from mailctl.profiles.resolve import primary_secret_kind, resolve_profile

    doc = app_context(ctx).store.load(for_writing=True, create=new)  # changed below, never saved
    if new:
        doc.add_profile(name, fields)
    elif fields:
        doc.set_fields(name, fields)
    ops.check_inherits(doc, name, fields)
    return primary_secret_kind(resolve_profile(doc, name).values)


def _flags_secret_kind(actx, name: str, fields: dict[str, Any]) -> str | None:
    """`profile add` with flags: a missing field is named (as the flag to give) before any
    secret is asked for; then which secret the new profile needs."""
    from mailctl.errors import ConfigError
    from mailctl.profiles.resolve import primary_secret_kind

    try:
        profile = ops.unsaved_profile(actx.store, name, fields)
    except ConfigError as exc:
        if not fields and exc.hint:  # nothing given at all, and no terminal to ask on
            exc.hint += f"; on a terminal, `mailctl profile add {name}` asks for each field"
        raise
    return primary_secret_kind(profile.values)


# --- commands ------------------------------------------------------------------------------
@profile_app.command("add")
@with_field_options
def add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="New profile name (1-50 letters, digits, underscore).")],
    fields: dict,
    password_stdin: PasswordStdinOpt = False,
    no_secret: NoSecretOpt = False,
    default: Annotated[bool, typer.Option("--default", help="Make it the default profile.")] = False,
    guided: Annotated[bool, typer.Option("--guided", help="Ask for each field not given as a flag (the default on a terminal when no field flag is given).")] = False,
    json_: JsonOpt = False,
) -> None:
    """Add a profile: on a terminal without field flags, question by question. Secrets go to the keyring (hidden prompt, --password-stdin), never the TOML."""
    from mailctl.commands.guided import guided_add, guided_wanted

    actx = app_context(ctx)
    if guided_wanted(guided=guided, fields=fields, password_stdin=password_stdin, json_=json_, output=actx.output):
        guided_add(actx, name, fields, no_secret=no_secret, make_default=default)
        return
    kind = _flags_secret_kind(actx, name, fields)
    secret = _read_secret(password_stdin=password_stdin, no_secret=no_secret, needed=kind, prompt="Password")
    result = ops.add_profile(actx.store, actx.secrets, name, fields, secret=secret, make_default=default)
    if actx.use_json(json_):
        actx.output.json(result)
    else:
        actx.output.info(f"Added profile {name!r}" + (" (default)" if result["default"] else "") + ".")


def _complete_field(incomplete: str) -> list[str]:
    """--unset of `profile edit`: the profile fields it removes (shell completion, and the static scripts)."""
    return [f.name for f in PROFILE_FIELDS if f.name.startswith(incomplete)]


@profile_app.command("edit")
@with_field_options
def edit(
    ctx: typer.Context,
    name: ProfileNameArg,
    fields: dict,
    unset: Annotated[List[str], typer.Option("--unset", metavar="FIELD", help="Remove a field (repeatable).", autocompletion=_complete_field)] = [],
    password_stdin: PasswordStdinOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Change fields of a profile; --unset FIELD removes one (it is then inherited or defaulted)."""
    actx = app_context(ctx)
    secret = _read_secret(password_stdin=password_stdin, no_secret=False, needed=None, prompt="Password")
    unset_fields = [u.replace("-", "_") for u in unset]
    if not fields and not unset_fields and secret is None:
        raise UsageError("nothing to change: give --FIELD VALUE, --unset FIELD or --password-stdin")
    result = ops.edit_profile(actx.store, actx.secrets, name, fields, unset_fields, secret=secret)
    if actx.use_json(json_):
        actx.output.json(result)
    else:
        actx.output.info(f"Updated profile {name!r}.")


@profile_app.command("show")
def show(
    ctx: typer.Context,
    name: Annotated[Optional[str], typer.Argument(metavar="[NAME]", help="Profile (default: --profile or the default).", autocompletion=complete_profile_name)] = None,
    json_: JsonOpt = False,
) -> None:
    """Show a profile's effective values, where each comes from, and whether its secrets are stored."""
    actx = app_context(ctx)
    data = ops.show_profile(actx.store, actx.secrets, name or actx.profile_name)
    if actx.use_json(json_):
        actx.output.json(data)
        return
    title = f"{data['name']}" + (" (default)" if data["default"] else "") + (" (built-in)" if data["builtin"] else "")
    rows = []
    for key, value in data["values"].items():
        origin = data["origin"][key]
        shown = ", ".join(value) if isinstance(value, list) else ("true" if value is True else "false" if value is False else value)
        rows.append((key, shown, "" if origin == "profile" else origin))
    for kind, state in data["secrets"].items():
        rows.append((kind, "********" if state.startswith("stored") else "", state))
    if data.get("active_server"):
        active = data["active_server"]
        rows.append(("active server", f"{active['server']} (alternate) since {_when(active['since'])}",
                     f"sticky failover; back with: mailctl profile failback {data['name']}"))
    actx.output.table(("field", "value", "from"), rows, title=title)


def _when(ts: float) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


@profile_app.command("list")
def list_(ctx: typer.Context, json_: JsonLinesOpt = False) -> None:
    """List profiles: name, type, server, auth, default."""
    actx = app_context(ctx)
    rows = ops.list_profiles(actx.store)
    if actx.use_json(json_):
        actx.output.json_lines(rows)
        return
    actx.output.table(
        ("name", "type", "server", "auth", "inherits", "default"),
        [
            (r["name"] + (" (built-in)" if r.get("builtin") else ""), r["type"], r.get("error") or r["server"], r["auth"], r["inherits"], "*" if r["default"] else "")
            for r in rows
        ],
    )


@profile_app.command("duplicate")
def duplicate(
    ctx: typer.Context,
    source: ProfileNameArg,
    new_name: Annotated[Optional[str], typer.Argument(metavar="[NEW]", help="Name of the copy (default: SOURCE_copied).")] = None,
    password_stdin: PasswordStdinOpt = False,
    no_secret: NoSecretOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Copy a profile without its secrets; asks for the copy's secret (or --password-stdin / --no-secret)."""
    actx = app_context(ctx)
    kind = _needed_kind(ctx, source, {}, new=False)
    secret = _read_secret(password_stdin=password_stdin, no_secret=no_secret, needed=kind, prompt="Password for the copy")
    result = ops.duplicate_profile(actx.store, actx.secrets, source, new_name, secret=secret)
    if actx.use_json(json_):
        actx.output.json(result)
    else:
        actx.output.info(f"Copied {source!r} to {result['name']!r}" + ("" if result["secret_stored"] else " (no secret stored)") + ".")


@profile_app.command("delete")
def delete(
    ctx: typer.Context,
    name: ProfileNameArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    new_default: Annotated[Optional[str], typer.Option("--new-default", metavar="NAME", help="New default when deleting the default.", autocompletion=complete_profile_name)] = None,
    json_: JsonOpt = False,
) -> None:
    """Delete a profile and its secrets."""
    actx = app_context(ctx)
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError(f"refusing to delete {name!r} without confirmation: pass --yes")
        if not typer.confirm(f"Delete profile {name!r} and its secrets?", default=False):
            raise typer.Exit(int(ExitCode.PROBLEMS))
    result = ops.delete_profile(actx.store, actx.secrets, name, new_default=new_default)
    for warning in result["warnings"]:
        actx.output.warn(warning)
    if actx.use_json(json_):
        actx.output.json(result)
    else:
        actx.output.info(f"Deleted profile {name!r}." + (f" Default is now {result['default_profile']!r}." if new_default else ""))


@profile_app.command("set-default")
def set_default(ctx: typer.Context, name: ProfileNameArg, json_: JsonOpt = False) -> None:
    """Make NAME the default profile."""
    actx = app_context(ctx)
    result = ops.set_default(actx.store, name)
    if actx.use_json(json_):
        actx.output.json(result)
    else:
        actx.output.info(f"Default profile is now {name!r}.")


@profile_app.command("rename")
def rename(
    ctx: typer.Context,
    old: ProfileNameArg,
    new: Annotated[str, typer.Argument(metavar="NEW", help="New name.")],
    json_: JsonOpt = False,
) -> None:
    """Rename a profile; its secrets, the default and children's `inherits` follow."""
    actx = app_context(ctx)
    result = ops.rename_profile(actx.store, actx.secrets, old, new)
    for warning in result["warnings"]:
        actx.output.warn(warning)
    if actx.use_json(json_):
        actx.output.json(result)
    else:
        actx.output.info(f"Renamed {old!r} to {new!r}.")


@profile_app.command("lint")
def lint(
    ctx: typer.Context,
    names: Annotated[Optional[List[str]], typer.Argument(metavar="[NAME]...", help="Profiles to check (default: all).", autocompletion=complete_profile_name)] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 1 on warnings too.")] = False,
    json_: JsonLinesOpt = False,
) -> None:
    """Check profiles for configuration problems without touching the network (exit 1 on errors)."""
    from mailctl.profiles.lint import lint_profiles

    actx = app_context(ctx)
    doc = actx.store.load()
    for name in names or []:
        if not doc.has(name):
            from mailctl.errors import NotFoundError

            raise NotFoundError(f"no profile named {name!r} in {doc.path}")
    findings = lint_profiles(doc, names, actx.secrets)
    if actx.use_json(json_):
        actx.output.json_lines(f.to_dict() for f in findings)
    elif findings:
        actx.output.table(("profile", "severity", "id", "message", "fix"), [(f.profile, f.severity, f.id, f.message, f.fix) for f in findings])
    else:
        actx.output.info("No problems found.")
    failing = {"error", "warning"} if strict else {"error"}
    if any(f.severity in failing for f in findings):
        raise typer.Exit(int(ExitCode.PROBLEMS))


@profile_app.command("import")
def import_(
    ctx: typer.Context,
    msmtprc: Annotated[str, typer.Option("--msmtprc", metavar="FILE", help="msmtp configuration to import (accounts, defaults, inheritance).")],
    prefix: Annotated[str, typer.Option("--prefix", metavar="TEXT", help="Put TEXT before every profile name (to avoid clashes).")] = "",
    skip_passwords: Annotated[bool, typer.Option("--skip-passwords", help="Do not store literal `password` values (set them later with profile edit --password-stdin).")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the profiles it would create; write nothing.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Create profiles from an msmtprc (accounts, defaults, inheritance, passwordeval).

    passwordeval becomes secret_command; a literal password goes to the secret store (never
    the TOML), or with --skip-passwords nowhere."""
    from mailctl.profiles.msmtp import apply_import, plan_import

    actx = app_context(ctx)
    plan = plan_import(msmtprc, prefix=prefix)
    result = plan.to_dict() if dry_run else apply_import(actx.store, actx.secrets, plan, store_passwords=not skip_passwords)
    if actx.use_json(json_):
        actx.output.json({**result, "dry_run": dry_run})
        return
    for note in result["notes"]:
        actx.output.warn(note)
    actx.output.table(("profile", "inherits", "server", "from"), [
        (name, f.get("inherits", ""), f"{f.get('host', '')}" + (f":{f['port']}" if f.get("port") else ""), f.get("from_address", ""))
        for name, f in result["profiles"].items()])
    verb = "Would import" if dry_run else "Imported"
    actx.output.info(f"{verb} {len(result['profiles'])} profile(s) from {msmtprc}"
                     + (f"; default {result['default_profile']!r}" if result.get("default_profile") else "")
                     + (f"; passwords stored for {', '.join(result['passwords_stored'])}" if result.get("passwords_stored") else "")
                     + (f"; passwords NOT stored for {', '.join(result['passwords_skipped'])}" if result.get("passwords_skipped") else "") + ".")


@profile_app.command("export")
def export(
    ctx: typer.Context,
    name: ProfileNameArg,
    format_: Annotated[str, typer.Option("--format", metavar="msmtp|swaks|env", help="msmtp account, swaks command line, or shell variables.")] = "msmtp",
) -> None:
    """Print an smtp profile as an msmtp account, a swaks command line or shell variables.

    Secrets are never included; secret_command is (as msmtp's passwordeval), and an OAuth
    profile uses `mailctl auth token NAME`."""
    from mailctl.profiles.msmtp import export_profile
    from mailctl.profiles.resolve import resolve_profile

    actx = app_context(ctx)
    text = export_profile(resolve_profile(actx.store.load(), name), format_)
    for line in text.splitlines():
        actx.output.line(line)


@profile_app.command("discover")
def discover(
    ctx: typer.Context,
    address: Annotated[str, typer.Argument(metavar="ADDRESS", help="The mailbox address to find settings for.")],
    add_name: Annotated[Optional[str], typer.Option("--add", metavar="NAME", help="Create the proposed profile under NAME.")] = None,
    client_id: Annotated[Optional[str], typer.Option("--client-id", metavar="ID", help="OAuth application (client) id for a Microsoft 365 / Google proposal.")] = None,
    nameserver: Annotated[Optional[List[str]], typer.Option("--nameserver", "-n", metavar="IP[:PORT]", help="Nameserver to query (repeatable; default: the system's).")] = None,
    timeout: Annotated[float, typer.Option("--timeout", min=0.1, max=60, help="Seconds for each DNS query and HTTPS step.")] = 5.0,
    ca_file: Annotated[Optional[str], typer.Option("--ca-file", metavar="FILE", help="Also trust this CA (PEM) for the HTTPS fetches (autoconfig, Microsoft tenant).")] = None,
    https_port: Annotated[int, typer.Option("--https-port", min=1, max=65535, help="Port of the HTTPS fetches: autoconfig, Microsoft tenant (tests, port forwards).")] = 443,
    json_: JsonOpt = False,
) -> None:
    """Propose a profile from the domain's MX, Mozilla autoconfig or SRV records; --add saves it.

    MX names Microsoft 365 (its tenant looked up) and Google Workspace; autoconfig is fetched
    over verified HTTPS, through HTTPS_PROXY / ALL_PROXY unless NO_PROXY covers the host;
    RFC 6186 SRV gives submission servers. Only the domain is looked up; no password is sent."""
    from mailctl.dns.autoconfig import DiscoveryNetwork
    from mailctl.dns.resolver import parse_nameserver
    from mailctl.profiles.discover import check_addable, discover as run_discovery

    actx = app_context(ctx)
    servers = [parse_nameserver(n) for n in nameserver or []]
    with DiscoveryNetwork(nameservers=servers, timeout=timeout, ca_file=ca_file or "", https_port=https_port) as net:
        found = run_discovery(address, net)
    if client_id:
        found.fields["client_id"] = coerce_cli_value("client_id", client_id)
    data = found.to_dict()
    if add_name:
        check_addable(found, add_name)
        data["added"] = ops.add_profile(actx.store, actx.secrets, add_name, found.fields)
    if actx.use_json(json_):
        actx.output.json(data)
        return
    actx.output.table(("field", "value"), [(k, ", ".join(v) if isinstance(v, list) else v) for k, v in found.fields.items()],
                      title=f"{address}: from {found.source}")
    for note in found.notes:
        actx.output.info(f"Note: {note}")
    if add_name:
        actx.output.info(f"Added profile {add_name!r}." + (f" Store its password: mailctl profile edit {add_name} --password-stdin"
                                                          if found.fields.get("auth") == "password" else ""))
    else:
        actx.output.info(f"Create it with: mailctl profile discover {address} --add NAME")


@profile_app.command("failback")
def failback(
    ctx: typer.Context,
    name: Annotated[Optional[str], typer.Argument(metavar="[NAME]", help="Profile (default: --profile or the default).", autocompletion=complete_profile_name)] = None,
    json_: JsonOpt = False,
) -> None:
    """Return a sticky-failover profile to its primary server (its next connection tries the primary first)."""
    actx = app_context(ctx)
    data = ops.failback(actx.store, name or actx.profile_name)
    if actx.use_json(json_):
        actx.output.json(data)
    elif data["was"]:
        actx.output.info(f"{data['profile']}: back on the primary {data['primary']} "
                         f"(the alternate {data['was']['server']} was in use since {_when(data['was']['since'])})")
    else:
        actx.output.info(f"{data['profile']}: already on the primary {data['primary']}")
