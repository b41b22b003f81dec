"""The guided `profile add`: on a terminal, ask for each field instead of requiring flags.

The questions and their defaults come from mailctl.profiles.presets (setup_questions,
setup_default); each answer goes through the same field check as its --FIELD flag, and a bad
one is asked again with that check's message. The secret is read hidden and kept in memory;
the connection test runs against the unsaved profile; nothing is written until the last step
(ops.add_profile: the secret to the keyring, then the file). Ctrl-C stops with exit 130,
input ending (Ctrl-D) with exit 2; either way nothing is saved."""

from __future__ import annotations

from typing import Any, NoReturn

import typer

from mailctl.errors import ExitCode, UsageError, ValidationError
from mailctl.profiles import operations as ops
from mailctl.profiles.model import FIELDS_BY_NAME, coerce_cli_value
from mailctl.profiles.presets import SETUP_OPTIONAL, setup_choices, setup_default, setup_questions

LABELS = {
    "type": "Transport",
    "provider": "Provider preset",
    "host": "Server host",
    "security": "Security",
    "port": "Port",
    "auth": "Authentication",
    "allow_insecure_auth": "Send the login over this unencrypted connection?",
    "tenant_id": "Microsoft Entra tenant id (GUID or domain)",
    "client_id": "Application (client) id",
    "username": "Login (username)",
    "ews_url": "EWS URL (https://HOST/EWS/Exchange.asmx)",
    "maildir": "Maildir to deliver into",
    "from_address": "From address (Enter: none)",
}
SECRET_LABELS = {"password": "Password", "client_secret": "Client secret"}
NOTHING_SAVED = "nothing was saved"


def guided_wanted(*, guided: bool, fields: dict, password_stdin: bool, json_: bool, output) -> bool:
    """Whether `profile add` asks its questions: --guided, or no field flags on a terminal
    (stdin and stdout). --guided without a terminal, or with --json / --password-stdin, is a
    usage error (2): the questions need someone to answer them."""
    terminal = output.stdin_is_terminal and output.is_terminal
    if guided:
        if not terminal:
            raise UsageError("--guided asks questions and needs a terminal (stdin and stdout)",
                             hint="give the fields as flags instead: mailctl profile add NAME --host HOST ...")
        if json_ or password_stdin:
            raise UsageError(f"--guided asks its questions on the terminal; {'--json' if json_ else '--password-stdin'} is for scripts",
                             hint="drop one of them")
        return True
    return terminal and not fields and not password_stdin and not json_


def guided_add(actx, name: str, given: dict[str, Any], *, no_secret: bool, make_default: bool) -> None:
    """Ask, show, offer the connection test, save (see the module's docstring)."""
    out = actx.output
    ops.check_new_name(actx.store, name)
    out.info(f"New profile {name!r}. Enter takes the [default]; Ctrl-C stops, and nothing is saved before the end.")
    answers = dict(given)
    credential: tuple[str | None, str | None] | None = None  # (kind, secret), asked after the login
    while (field := _next_question(answers)) is not None:
        if field == "from_address" and credential is None:
            credential = _credential(actx, name, answers, no_secret=no_secret)
        answers[field] = _ask(field, answers, out)
    fields = ops.minimal_fields(actx.store, name, _given(answers))
    profile = ops.unsaved_profile(actx.store, name, fields)
    kind, secret = credential if credential is not None else _credential(actx, name, answers, no_secret=no_secret)
    _show(out, name, fields, kind if secret is not None else None)
    from mailctl.profiles.presets import ews_warnings

    for warning in ews_warnings(profile):
        out.warn(warning)
    if _testable(actx, profile, kind, secret) and _confirm("Test the connection now?", default=True):
        _test_or_stop(actx, profile, kind, secret)
    result = ops.add_profile(actx.store, actx.secrets, name, fields, secret=secret, make_default=make_default)
    out.info(f"Added profile {name!r}" + (" (default)" if result["default"] else "") + ".")
    out.info(_next_step(name, profile.values, kind, stored=secret is not None))


def _next_question(answers: dict[str, Any]) -> str | None:
    return next((f for f in setup_questions(answers) if f not in answers), None)


def _given(answers: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in answers.items() if v is not None}


def _credential(actx, name: str, answers: dict[str, Any], *, no_secret: bool) -> tuple[str | None, str | None]:
    """The secret the profile answered so far needs (worked out on the unsaved profile, so a
    missing field is reported first) and, unless --no-secret, the value typed in hidden."""
    from mailctl.profiles.resolve import primary_secret_kind

    kind = primary_secret_kind(ops.unsaved_profile(actx.store, name, _given(answers)).values)
    return kind, (_ask_secret(kind, actx.output) if kind in SECRET_LABELS and not no_secret else None)


# --- the prompt layer ---------------------------------------------------------------------
def _stopped(exc: BaseException, question: str) -> NoReturn:
    """typer.prompt turns both Ctrl-C and end of input into Abort; the one it caught is its
    __context__. Ctrl-C: exit 130 as everywhere; end of input: a usage error (2)."""
    if isinstance(exc.__context__, EOFError):
        raise UsageError(f"the input ended at {question!r}; {NOTHING_SAVED}",
                         hint="answer every question, or give the fields as flags: mailctl profile add NAME --host HOST ...") from None
    typer.echo(f"Interrupted: {NOTHING_SAVED}.", err=True)
    raise typer.Exit(int(ExitCode.INTERRUPTED))


def _prompt(label: str, default: str, *, hide: bool = False) -> str:
    try:
        return typer.prompt(label, default=default, show_default=bool(default), hide_input=hide)
    except typer.Abort as exc:
        _stopped(exc, label)


def _confirm(label: str, *, default: bool) -> bool:
    try:
        return typer.confirm(label, default=default)
    except typer.Abort as exc:
        _stopped(exc, label)


def _ask(field: str, answers: dict[str, Any], out) -> Any:
    """One question until its answer passes the field's check (the flag's) and, for a choice,
    is one this transport takes; Enter gives the default, or nothing for an optional field."""
    default = setup_default(field, answers)
    if FIELDS_BY_NAME[field].kind == "bool":
        return _confirm(LABELS.get(field, field), default=bool(default))
    choices = setup_choices(field, answers)
    label = LABELS.get(field, field) + (f" ({', '.join(choices)})" if choices else "")
    while True:
        raw = _prompt(label, "" if default is None else str(default)).strip()
        if not raw:
            if field in SETUP_OPTIONAL:
                return None
            out.error(f"{field}: this one needs an answer", "Ctrl-C stops without saving anything")
            continue
        try:
            value = coerce_cli_value(field, raw)
            if choices and value not in choices:
                raise ValidationError(f"{field}: a {answers.get('type') or 'smtp'} profile takes one of {', '.join(choices)} (got {raw!r})",
                                      field=field)
            return value
        except ValidationError as exc:
            out.error(exc.message, exc.hint)


def _ask_secret(kind: str, out) -> str:
    """Hidden, never echoed, never in a message; asked again when empty."""
    label = SECRET_LABELS[kind] + " (hidden; it goes to the keyring, not the file)"
    while True:
        value = _prompt(label, "", hide=True)
        if value:
            return value
        out.error(f"the {kind.replace('_', ' ')} is empty", "type it again, or run with --no-secret to store it later")


# --- show, test, next step ----------------------------------------------------------------
def _show(out, name: str, fields: dict[str, Any], stored_kind: str | None) -> None:
    from mailctl.output import to_json

    out.line(f"Profile {name} will be saved as:")
    for key, value in fields.items():
        shown = to_json(value, indent=None)  # TOML's strings, numbers, booleans and arrays read the same
        out.line(f"  {key} = {shown}")
    if stored_kind:
        out.line(f"  ({stored_kind.replace('_', ' ')}: to the keyring, not shown)")


def _testable(actx, profile, kind: str | None, secret: str | None) -> bool:
    """A transport with stages (what `test connect` runs) and a credential available now: an
    OAuth profile has no token before `auth login`; with --no-secret (or a service account
    key, which is not typed in) the secret must already be in the environment or keyring."""
    from mailctl.errors import MailctlError
    from mailctl.transports.base import get_transport_class

    if profile.values.get("auth") == "oauth":
        return False
    try:
        if kind and secret is None and actx.secrets.describe(profile, kind) == "not stored":
            return False
        return callable(getattr(get_transport_class(profile.type), "stages", None))
    except MailctlError:
        return False


def _test_or_stop(actx, profile, kind: str | None, secret: str | None) -> None:
    """`test connect` on the unsaved profile, shown as `test connect` shows it; after a
    failure, saving needs a yes, else exit with the test's code and nothing saved."""
    from mailctl.commands.test import _render
    from mailctl.diagnostics.probe import probe

    out = actx.output
    secrets = ops.secrets_with(actx.secrets, profile.name, kind, secret) if kind and secret is not None else actx.secrets
    report = probe(profile, secrets, transcript=False)
    _render(out, report, False)
    if report.ok:
        out.info("The connection works.")
        return
    out.error(report.error or "the connection test failed", report.hint)
    if not _confirm("Save anyway?", default=False):
        out.info(f"Not saved: {NOTHING_SAVED}.")
        raise typer.Exit(report.exit_code or int(ExitCode.PROBLEMS))


def _next_step(name: str, values: dict[str, Any], kind: str | None, *, stored: bool) -> str:
    if values.get("auth") == "oauth":
        return f"Next: sign in, which stores its tokens in the keyring: mailctl auth login {name}"
    if kind == "service_account_key":
        return f"Next: store the service account key (JSON): mailctl profile edit {name} --password-stdin < KEY.json"
    if kind and not stored:
        return f"Next: store its {kind.replace('_', ' ')}: mailctl profile edit {name} --password-stdin"
    return f"Try it: mailctl test send {name} --to ADDR"
