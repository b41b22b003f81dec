"""Migration from msmtp and hand-over to other tools (issue #17).

import: an msmtprc (accounts, `defaults`, `account a : b` inheritance, `account default : x`)
becomes profiles. `passwordeval` becomes `secret_command` (a command, not a secret); a literal
`password` never reaches the TOML: it goes to the secret store like `profile add` stores one,
or, with store_passwords=False, is left out and reported.

export: a resolved smtp profile as an msmtp account, a swaks command line or shell environment
variables. Secrets are never exported; `secret_command` is (as msmtp's `passwordeval`), and an
OAuth profile gets `passwordeval "mailctl auth token NAME --no-check"` (msmtp's own login is
the check: trying the token first would log in twice a message)."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailctl.errors import ConfigError, NotFoundError, SecretStoreUnavailable, UsageError, ValidationError
from mailctl.profiles.model import FINGERPRINT_RE, validate_field

MAX_MSMTPRC_BYTES = 1024 * 1024
FORMATS = ("msmtp", "swaks", "env")
# msmtp commands mailctl has no equivalent for: reported, not imported
_IGNORED = {"logfile", "logfile_time_format", "syslog", "aliases", "auto_from", "maildomain", "dsn_notify",
            "dsn_return", "set_from_header", "set_date_header", "set_msgid_header", "remove_bcc_headers",
            "undisclosed_recipients", "tls_key_file", "tls_cert_file", "tls_crl_file", "tls_priorities",
            "tls_host_override", "tls_min_dh_prime_bits", "source_ip", "ntlmdomain", "socket", "protocol", "eval",
            "add_missing_from_header", "add_missing_date_header", "tls_trust_file_system"}
_KNOWN = {"host", "port", "tls", "tls_starttls", "tls_trust_file", "tls_fingerprint", "tls_certcheck", "auth", "user",
          "password", "passwordeval", "from", "domain", "timeout", "proxy_host", "proxy_port"}


@dataclass
class Account:
    """One `account` block: the `defaults` in force where it starts, its parents, its own lines."""

    name: str
    line: int
    parents: list[str] = field(default_factory=list)
    defaults: dict[str, tuple[str, int]] = field(default_factory=dict)  # command -> (value, line)
    own: dict[str, tuple[str, int]] = field(default_factory=dict)


@dataclass
class MsmtpImport:
    """What an msmtprc turns into: profiles (parents first), the default, secrets to store."""

    path: str
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    renamed: dict[str, str] = field(default_factory=dict)  # msmtp account -> profile name
    default: str | None = None
    passwords: dict[str, str] = field(default_factory=dict)  # profile -> password (never printed)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.path, "profiles": self.profiles, "renamed": self.renamed, "default_profile": self.default,
                "passwords": sorted(self.passwords), "notes": self.notes}


# --- reading --------------------------------------------------------------------------------
def read_msmtprc(path: str | Path) -> list[Account]:
    """The accounts of an msmtprc, `defaults` merged into each as msmtp does (a `defaults` block
    applies to the accounts after it). ValidationError (65) names the file and line."""
    p = Path(path).expanduser()
    try:
        with p.open("rb") as fh:
            data = fh.read(MAX_MSMTPRC_BYTES + 1)
    except FileNotFoundError:
        raise NotFoundError(f"{p}: no such file", hint="give the msmtp configuration: --msmtprc ~/.msmtprc") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read it ({exc.strerror or exc})") from None
    if len(data) > MAX_MSMTPRC_BYTES:
        raise ValidationError(f"{p}: larger than {MAX_MSMTPRC_BYTES // 1024} KiB; not an msmtprc", field="msmtprc")
    text = data.decode("utf-8", "replace")
    defaults: dict[str, tuple[str, int]] = {}
    accounts: list[Account] = []
    current: dict[str, tuple[str, int]] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        command, _, rest = line.partition(" ") if " " in line else line.partition("\t")
        value = _unquote(rest.strip(), p, number)
        if command == "defaults":
            current = defaults
        elif command == "account":
            accounts.append(_account(value, number, defaults, accounts, p))
            current = accounts[-1].own
        elif current is None:
            raise ValidationError(f"{p} line {number}: {command!r} before any 'defaults' or 'account' line", field="msmtprc")
        else:
            current[command] = (value, number)
    return accounts


def _unquote(value: str, path: Path, number: int) -> str:
    """msmtp's argument syntax: the rest of the line, or one double-quoted string (\\" and \\\\)."""
    if not value.startswith('"'):
        return value
    out, i = [], 1
    while i < len(value):
        c = value[i]
        if c == "\\" and i + 1 < len(value):
            out.append(value[i + 1])
            i += 2
            continue
        if c == '"':
            return "".join(out)
        out.append(c)
        i += 1
    raise ValidationError(f"{path} line {number}: unterminated double quote", field="msmtprc")


def _account(value: str, number: int, defaults, accounts: list[Account], path: Path) -> Account:
    name, _, parents_text = value.partition(":")
    name = name.strip()
    if not name:
        raise ValidationError(f"{path} line {number}: 'account' needs a name", field="msmtprc")
    if any(a.name == name for a in accounts):
        raise ValidationError(f"{path} line {number}: account {name!r} is defined twice", field="msmtprc")
    parents = [x.strip() for x in parents_text.split(",") if x.strip()]
    known = {a.name for a in accounts}
    for parent in parents:
        if parent not in known:
            raise ValidationError(f"{path} line {number}: account {name!r} inherits {parent!r}, which is not defined before it",
                                  field="msmtprc")
    return Account(name, number, parents, dict(defaults))


# --- msmtp -> profiles ------------------------------------------------------------------------
def plan_import(path: str | Path, *, prefix: str = "") -> MsmtpImport:
    """The profiles an msmtprc becomes (nothing written). A child of one parent gets `inherits`
    and only what it sets itself; several parents are flattened (mailctl inherits from one)."""
    accounts = read_msmtprc(path)
    plan = MsmtpImport(str(path))
    by_name = {a.name: a for a in accounts}
    for acc in accounts:
        if acc.name == "default" and len(acc.parents) == 1 and not acc.own:
            plan.default = plan.renamed[acc.parents[0]]  # `account default : x` only names the default
            continue
        pname = _profile_name(acc.name, prefix, plan)
        plan.renamed[acc.name] = pname
        settings = _child_settings(acc, by_name) if len(acc.parents) == 1 else _effective(acc, by_name)
        fields = _fields(pname, settings, plan, path)
        everything = _effective(acc, by_name)
        if not acc.parents and "auth" not in everything and "user" in everything:
            plan.notes.append(f"{pname}: msmtp's auth is not set (msmtp: off) but user is: mailctl authenticates "
                              "with a password (its default with a username)")
        if not acc.parents and "tls" not in everything and "tls_starttls" not in everything:
            plan.notes.append(f"{pname}: msmtp's tls is not set (msmtp: off); mailctl uses STARTTLS, its default "
                              f"(for a server without TLS: mailctl profile edit {pname} --security none)")
        if len(acc.parents) == 1:
            fields = {"inherits": plan.renamed[acc.parents[0]], **fields}
        elif len(acc.parents) > 1:
            plan.notes.append(f"account {acc.name}: several parents ({', '.join(acc.parents)}) flattened into one profile")
        plan.profiles[pname] = fields
        if acc.name == "default":
            plan.default = pname
    if plan.default is None and plan.profiles and len(plan.profiles) == 1:
        plan.default = next(iter(plan.profiles))
    return plan


def _effective(acc: Account, by_name: dict[str, Account]) -> dict[str, tuple[str, int]]:
    """msmtp's order: the defaults in force, then each parent's settings, then the account's own."""
    merged = dict(acc.defaults)
    for parent in acc.parents:
        merged.update(_effective(by_name[parent], by_name))
    merged.update(acc.own)
    return merged


def _child_settings(acc: Account, by_name: dict[str, Account]) -> dict[str, tuple[str, int]]:
    """What a single-parent child must set itself so that `inherits` gives msmtp's result: its
    own lines, and defaults (set after the parent) that the parent does not have."""
    parent = _effective(by_name[acc.parents[0]], by_name)
    extra = {k: v for k, v in acc.defaults.items() if k not in parent}
    return {**extra, **acc.own}


def _profile_name(account: str, prefix: str, plan: MsmtpImport) -> str:
    name = re.sub(r"[^A-Za-z0-9_]", "_", prefix + account)[:50] or "msmtp"
    if name in plan.profiles:
        raise ValidationError(f"{plan.path}: accounts {account!r} and another both become profile {name!r}",
                              field="msmtprc", hint="rename one of the accounts in a copy of the file")
    if name != account:
        plan.notes.append(f"account {account} is profile {name} (profile names are letters, digits and _)")
    return name


def _on(value: str) -> bool:
    return value.strip().lower() in ("on", "")


def _fields(pname: str, settings: dict[str, tuple[str, int]], plan: MsmtpImport, path) -> dict[str, Any]:
    """msmtp settings -> profile fields, each validated by the profile model (65 names the line)."""
    out: dict[str, Any] = {}
    get = {k: v[0] for k, v in settings.items()}
    if "host" in get:
        out["host"] = get["host"]
    if "port" in get:
        out["port"] = int(get["port"]) if get["port"].isdigit() else get["port"]
    if "tls" in get:
        out["security"] = "none" if not _on(get["tls"]) else ("starttls" if _on(get.get("tls_starttls", "on")) else "tls")
    elif "tls_starttls" in get:
        out["security"] = "starttls" if _on(get["tls_starttls"]) else "tls"
    if get.get("tls_trust_file") and get["tls_trust_file"] != "system":
        out["ca_file"] = get["tls_trust_file"]
        plan.notes.append(f"{pname}: tls_trust_file is ca_file, which mailctl trusts IN ADDITION to the system CAs")
    if "tls_certcheck" in get:
        out["tls_verify"] = _on(get["tls_certcheck"])
    if get.get("tls_fingerprint"):
        if FINGERPRINT_RE.match(get["tls_fingerprint"].replace(" ", "")):
            out["tls_fingerprint"] = get["tls_fingerprint"]
        else:
            plan.notes.append(f"{pname}: tls_fingerprint is not SHA-256 (mailctl pins SHA-256 only): left out")
    if "auth" in get:
        auth = get["auth"].strip().lower()
        out["auth"] = "none" if auth == "off" else "oauth" if auth in ("xoauth2", "oauthbearer") else "password"
        if out["auth"] == "oauth":
            plan.notes.append(f"{pname}: auth {auth}: mailctl gets the OAuth token itself; set tenant_id/client_id "
                              f"(or provider) and run: mailctl auth login {pname}")
    if "user" in get:
        out["username"] = get["user"]
    if "from" in get:  # msmtp's `from` may be a pattern for choosing the account: from_match here
        if any(c in get["from"] for c in "*?["):
            out["from_match"] = [get["from"]]
        else:
            out["from_address"] = get["from"]
    if "domain" in get:
        out["ehlo_name"] = get["domain"]
    if get.get("timeout", "off") != "off":
        out["timeout"] = int(get["timeout"]) if get["timeout"].isdigit() else get["timeout"]
    if get.get("proxy_host"):
        out["proxy"] = f"socks5://{get['proxy_host']}:{get.get('proxy_port') or 1080}"
    if get.get("passwordeval"):
        out["secret_command"] = get["passwordeval"]
        if out.get("auth") == "oauth":
            plan.notes.append(f"{pname}: passwordeval printed an OAuth token; mailctl's secret_command is the password, "
                              "so it was kept but mailctl's own OAuth flow is used")
    if "password" in get:
        plan.passwords[pname] = get["password"]
    for command in sorted(set(get) - _KNOWN):
        plan.notes.append(f"{pname}: msmtp's {command} has no mailctl equivalent: ignored" if command in _IGNORED
                          else f"{pname}: unknown msmtp command {command!r}: ignored")
    for key, value in list(out.items()):
        line = settings.get(_SOURCE.get(key, key), ("", 0))[1]
        try:
            out[key] = validate_field(key, value)
        except ValidationError as exc:
            raise ValidationError(f"{path} line {line}: {exc.message}", field=key, hint=exc.hint) from None
    return out


_SOURCE = {"security": "tls", "ca_file": "tls_trust_file", "tls_verify": "tls_certcheck", "username": "user",
           "from_address": "from", "from_match": "from", "ehlo_name": "domain", "proxy": "proxy_host",
           "secret_command": "passwordeval"}


def apply_import(store, secrets, plan: MsmtpImport, *, store_passwords: bool = True) -> dict[str, Any]:
    """Write the planned profiles (one locked edit; an existing name stops it before anything
    changes). Literal passwords go to the secret store first, as `profile add` does; when it is
    unusable, nothing is written and the error says how to go on."""
    from mailctl.profiles.operations import check_inherits
    from mailctl.profiles.resolve import check_complete, primary_secret_kind, resolve_profile

    stored: list[str] = []
    with store.edit(create=True) as doc:
        taken = [n for n in plan.profiles if doc.has(n)]
        if taken:
            raise ValidationError(f"profile {taken[0]!r} already exists in {store.path}", field="name",
                                  hint="import under other names: --prefix msmtp_ (or delete the existing profile)")
        for name, fields in plan.profiles.items():
            doc.add_profile(name, fields)
            check_inherits(doc, name, fields)
        for name in plan.profiles:
            try:
                check_complete(resolve_profile(doc, name))
            except ConfigError as exc:
                plan.notes.append(f"{name}: {exc.message} (imported anyway; mailctl profile lint shows it)")
        if plan.default and doc.default is None:
            doc.set_default(plan.default)
        elif plan.default and plan.default != doc.default:
            plan.notes.append(f"the msmtprc's default is {plan.default}; the default stays {doc.default} "
                              f"(change it: mailctl profile set-default {plan.default})")
        if store_passwords:
            for name, password in plan.passwords.items():
                if primary_secret_kind(resolve_profile(doc, name).values) != "password":
                    plan.notes.append(f"{name}: the msmtprc has a password, but the profile does not authenticate "
                                      "with one: not stored")
                    continue
                try:
                    secrets.store(name, "password", password)
                except SecretStoreUnavailable as exc:
                    raise SecretStoreUnavailable(
                        f"{plan.path} holds a password for {name!r}, and it cannot go to the secret store: {exc.message}; "
                        "nothing was imported",
                        hint="replace `password` with `passwordeval COMMAND` in the msmtprc, or import without it: "
                        f"--skip-passwords, then: mailctl profile edit {name} --password-stdin") from None
                stored.append(name)
        default = doc.default
    skipped = sorted(set(plan.passwords) - set(stored)) if not store_passwords else []
    return {**plan.to_dict(), "default_profile": default, "passwords_stored": stored, "passwords_skipped": skipped}


# --- profile -> other tools -------------------------------------------------------------------
def export_profile(profile, fmt: str) -> str:
    """The resolved smtp profile for msmtp, swaks or the environment. No secret is included."""
    if fmt not in FORMATS:
        raise UsageError(f"--format: one of {', '.join(FORMATS)} (got {fmt!r})")
    if profile.type != "smtp":
        raise ValidationError(f"profile {profile.name!r} is a {profile.type} profile; {fmt} speaks SMTP only",
                              field="type", hint="export an smtp profile")
    return {"msmtp": _to_msmtp, "swaks": _to_swaks, "env": _to_env}[fmt](profile)


def _quote_msmtp(value: str) -> str:
    if value and not any(c in value for c in ' \t"#\\'):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _to_msmtp(p) -> str:
    v = p.values
    name = p.name
    lines = [f"# profile {name} exported by mailctl (secrets are not exported)", f"account {name}", f"host {v.get('host')}",
             f"port {v.get('port')}"]
    security = v.get("security")
    lines += ["tls off"] if security == "none" else ["tls on", f"tls_starttls {'on' if security == 'starttls' else 'off'}"]
    if v.get("tls_verify") is False:
        lines.append("tls_certcheck off")
    elif v.get("tls_fingerprint"):
        lines.append(f"tls_fingerprint {v['tls_fingerprint']}")
    elif v.get("ca_file"):
        lines.append(f"tls_trust_file {_quote_msmtp(v['ca_file'])}")
    elif security != "none":
        lines.append("tls_trust_file system")
    auth = v.get("auth")
    if auth == "none":
        lines.append("auth off")
    elif auth == "oauth":
        lines += ["auth xoauth2", f"user {v.get('username') or v.get('from_address') or ''}",
                  f"passwordeval {_quote_msmtp('mailctl auth token ' + name + ' --no-check')}"]
    else:
        lines += ["auth on", f"user {_quote_msmtp(v.get('username') or '')}"]
        if v.get("secret_command"):
            lines.append(f"passwordeval {_quote_msmtp(v['secret_command'])}")
        else:
            lines.append("# the password is in mailctl's secret store: add passwordeval COMMAND")
    if v.get("from_address"):
        lines.append(f"from {v['from_address']}")
    if v.get("ehlo_name"):
        lines.append(f"domain {v['ehlo_name']}")
    if v.get("timeout"):
        lines.append(f"timeout {int(v['timeout'])}")
    proxy = v.get("proxy") or ""
    if proxy.startswith("socks5"):
        from urllib.parse import urlsplit

        parts = urlsplit(proxy)
        lines += [f"proxy_host {parts.hostname}", f"proxy_port {parts.port or 1080}"]
    return "\n".join(lines) + "\n"


def _to_swaks(p) -> str:
    v = p.values
    args = ["swaks", "--server", str(v.get("host")), "--port", str(v.get("port"))]
    security = v.get("security")
    if security == "starttls":
        args.append("--tls")
    elif security == "tls":
        args.append("--tls-on-connect")
    if security != "none" and v.get("tls_verify") is not False:
        args.append("--tls-verify")
        if v.get("ca_file"):
            args += ["--tls-ca-path", v["ca_file"]]
    if v.get("auth") == "password":
        args += ["--auth", "--auth-user", str(v.get("username") or "")]  # swaks asks for the password
    elif v.get("auth") not in ("none", None):
        raise ValidationError(f"profile {p.name!r} signs in with auth = {v.get('auth')}, which swaks cannot do "
                              "(it has no XOAUTH2)", field="auth", hint=f"mailctl profile export {p.name} --format msmtp")
    if v.get("from_address"):
        args += ["--from", v["from_address"]]
    if v.get("ehlo_name"):
        args += ["--helo", v["ehlo_name"]]
    if v.get("timeout"):
        args += ["--timeout", str(int(v["timeout"]))]
    return " ".join(shlex.quote(a) for a in args) + "\n"


def _to_env(p) -> str:
    v = p.values
    pairs = [("SMTP_HOST", v.get("host")), ("SMTP_PORT", v.get("port")), ("SMTP_SECURITY", v.get("security")),
             ("SMTP_AUTH", v.get("auth")), ("SMTP_USERNAME", v.get("username")), ("SMTP_FROM", v.get("from_address")),
             ("SMTP_SENDER_NAME", v.get("sender_name")), ("SMTP_TLS_VERIFY", "false" if v.get("tls_verify") is False else "true"),
             ("SMTP_CA_FILE", v.get("ca_file")), ("SMTP_EHLO_NAME", v.get("ehlo_name")),
             ("SMTP_PASSWORD_COMMAND", v.get("secret_command") or (f"mailctl auth token {p.name} --no-check" if v.get("auth") == "oauth" else ""))]
    lines = [f"# profile {p.name} exported by mailctl (no secrets; SMTP_PASSWORD_COMMAND prints the password or token)"]
    lines += [f"{k}={shlex.quote(str(val))}" for k, val in pairs if val not in (None, "")]
    return "\n".join(lines) + "\n"
