"""The profile model: every field, its type and its rule. One table drives validation, the
CLI's --FIELD options, `profile show` and the example file's checks."""

from __future__ import annotations

import re
from dataclasses import dataclass, field as dc_field
from typing import Any, Callable, Sequence
from urllib.parse import urlsplit

from mailctl.errors import ValidationError

NAME_RE = re.compile(r"^[A-Za-z0-9_]{1,50}$")
# Deliberately simple: local@domain with a dotted or bracketed domain, no spaces or CR/LF.
ADDR_RE = re.compile(r"^[^@\s<>(),;:\"]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$")
HOST_RE = re.compile(r"^(?=.{1,253}$)(?:[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.?$")
FINGERPRINT_RE = re.compile(r"^(?:[0-9A-Fa-f]{2}:?){31}[0-9A-Fa-f]{2}$")
GUID_RE = re.compile(r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$")
DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)?\s*$")

TYPES = ("smtp", "graph", "ews", "file", "gmail-api", "lmtp")
PROVIDERS = ("microsoft365", "gmail", "custom")
SECURITIES = ("none", "starttls", "tls")
AUTHS = ("none", "password", "oauth", "client-credentials", "service-account")
CLOUDS = ("global", "usgov", "usgov-dod", "china")
FAILOVER_MODES = ("per-connection", "sticky")  # mailctl.profiles.failover
OAUTH_PROVIDERS = ("microsoft", "google", "generic")
DEFAULT_PORTS = {"starttls": 587, "tls": 465, "none": 25}


def validate_name(name: str, what: str = "profile name") -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ValidationError(
            f"invalid {what} {name!r}: use 1-50 letters, digits or underscores",
            field="name",
        )
    return name


# --- rules -----------------------------------------------------------------
def _no_crlf(name: str, value: str) -> None:
    if "\r" in value or "\n" in value:
        raise ValidationError(f"{name}: must not contain line breaks (CR or LF)", field=name)


def _str(max_len: int | None = None) -> Callable[[str, Any], str]:
    def check(name: str, value: Any) -> str:
        if not isinstance(value, str):
            raise ValidationError(f"{name}: expected text, got {type(value).__name__}", field=name)
        if max_len is not None and len(value) > max_len:
            raise ValidationError(f"{name}: at most {max_len} characters (got {len(value)})", field=name)
        return value

    return check


def _line(max_len: int = 998) -> Callable[[str, Any], str]:
    base = _str(max_len)

    def check(name: str, value: Any) -> str:
        value = base(name, value)
        _no_crlf(name, value)
        return value

    return check


def _outbox_location(name: str, value: Any) -> str:
    """A file path or a postgresql:// URL; a password never lives in the TOML."""
    value = _line(4096)(name, value)
    if "://" in value:
        from urllib.parse import urlsplit

        scheme = value.split("://", 1)[0].lower()
        if scheme not in ("postgresql", "postgres"):
            raise ValidationError(f"{name}: {scheme}:// is not an outbox backend", field=name,
                                  hint="a file path (SQLite) or postgresql://USER@HOST:PORT/DATABASE")
        try:
            has_password = urlsplit(value).password is not None
        except ValueError:
            raise ValidationError(f"{name}: not a valid URL", field=name,
                                  hint="postgresql://USER@HOST:PORT/DATABASE") from None
        if has_password:
            raise ValidationError(f"{name}: the URL holds a password, and secrets never go in the profiles file",
                                  field=name, hint="drop it from the URL; give it with PGPASSWORD or ~/.pgpass")
    return value


def _choice(choices: Sequence[str]) -> Callable[[str, Any], str]:
    def check(name: str, value: Any) -> str:
        if value not in choices:
            raise ValidationError(f"{name}: must be one of {', '.join(choices)} (got {value!r})", field=name)
        return value

    check.choices = tuple(choices)  # type: ignore[attr-defined]  # shell completion offers them
    return check


def _optional_choice(choices: Sequence[str]) -> Callable[[str, Any], str]:
    """One of the choices, or empty (the default decides)."""
    def check(name: str, value: Any) -> str:
        if value != "" and value not in choices:
            raise ValidationError(f"{name}: must be one of {', '.join(choices)} or empty (got {value!r})", field=name)
        return value

    check.choices = tuple(choices)  # type: ignore[attr-defined]  # shell completion offers them
    return check


def _port(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ValidationError(f"{name}: expected a port number 1-65535", field=name)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValidationError(f"{name}: expected a port number 1-65535 (got {value!r})", field=name)
    return value


def _optional_port(name: str, value: Any) -> int:
    if value in (0, "0"):
        return 0
    return _port(name, value)


MAX_TIMEOUT = 3600  # seconds; longer than an hour is no timeout, and inf / 1e308 overflow the socket layer
MAX_COUNT = 1_000_000  # rate limits, batch sizes
MAX_DAYS = 36_500  # retention_days
MAX_DURATION = 366 * 86400  # durations (max_retry_age, backoffs, batch_interval): at most a year


def _positive_number(name: str, value: Any, maximum: float = MAX_TIMEOUT) -> float | int:
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".eEnN") else int(value)
        except ValueError:
            raise ValidationError(f"{name}: expected a number (got {value!r})", field=name) from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or not 0 < value <= maximum:
        raise ValidationError(f"{name}: expected a number of seconds above 0 and at most {maximum:g} (got {value!r})", field=name)
    return value


def _non_negative_int(name: str, value: Any, maximum: int = MAX_COUNT) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise ValidationError(f"{name}: expected a whole number from 0 to {maximum} (got {value!r})", field=name)
    return value


def _days(name: str, value: Any) -> int:
    return _non_negative_int(name, value, MAX_DAYS)


MAX_CONNECTIONS = 64  # queue flush --connections, max_connections


def _connections(name: str, value: Any) -> int:
    value = _non_negative_int(name, value, MAX_CONNECTIONS)
    if value < 1:
        raise ValidationError(f"{name}: expected a whole number from 1 to {MAX_CONNECTIONS} (got {value!r})", field=name)
    return value


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
        return value.lower() in ("true", "yes", "1", "on")
    raise ValidationError(f"{name}: expected true or false (got {value!r})", field=name)


def _address(name: str, value: Any) -> str:
    value = _line(320)(name, value)
    from mailctl.addresses import is_address  # the one validator (RFC 5321, IDNA, SMTPUTF8)

    if value and not is_address(value):
        raise ValidationError(f"{name}: not an email address (expected user@domain, got {value!r})", field=name)
    return value


AUTH_MECHANISMS = ("PLAIN", "LOGIN", "CRAM-MD5", "XOAUTH2", "OAUTHBEARER")


def _source_address(name: str, value: Any) -> str:
    """An IPv4 or IPv6 address (no brackets, no port): the client end of the connection."""
    value = _line(64)(name, value).strip()
    if value:
        import ipaddress

        try:
            value = str(ipaddress.ip_address(value))
        except ValueError:
            raise ValidationError(f"{name}: not an IP address (got {value!r})", field=name,
                                  hint="give one of this machine's addresses, e.g. 192.0.2.10 or 2001:db8::10") from None
    return value


def _auth_mechanism(name: str, value: Any) -> str:
    value = _line(20)(name, value).strip().upper()
    if value and value not in AUTH_MECHANISMS:
        raise ValidationError(f"{name}: must be one of {', '.join(AUTH_MECHANISMS)} (got {value!r})", field=name)
    return value


def _socket_path(name: str, value: Any) -> str:
    value = _line(4096)(name, value)
    if value and not value.startswith(("/", "~")):
        raise ValidationError(f"{name}: expected an absolute path to a Unix socket (got {value!r})", field=name,
                              hint="e.g. /var/run/dovecot/lmtp")
    return value


def _host(name: str, value: Any) -> str:
    value = _line(253)(name, value)
    if value and not HOST_RE.match(value):
        # IPv6 literals are allowed as hosts too.
        import ipaddress

        try:
            ipaddress.ip_address(value.strip("[]"))
        except ValueError:
            raise ValidationError(f"{name}: not a host name or IP address (got {value!r})", field=name) from None
    return value


def _url(schemes: Sequence[str]) -> Callable[[str, Any], str]:
    def check(name: str, value: Any) -> str:
        value = _line(2048)(name, value)
        if not value:
            return value
        try:
            parts = urlsplit(value)
            parts.hostname  # noqa: B018 - raises on a broken [IPv6] literal
        except ValueError as exc:
            # the value is not echoed: it may carry a password
            raise ValidationError(f"{name}: not a valid URL ({exc})", field=name,
                                  hint="write it as scheme://host:port, an IPv6 address in brackets: http://[::1]:3128") from None
        if parts.password is not None:
            # Never echo the value: it carries a password.
            raise ValidationError(
                f"{name}: the URL must not contain a password (user:password@)",
                field=name,
                hint="secrets are not stored in the profiles file; use the keyring (proxy_password) or MAILCTL_SECRET_<PROFILE>_<KIND>",
            )
        if parts.scheme not in schemes or not parts.hostname:
            raise ValidationError(
                f"{name}: expected a {' or '.join(s + '://' for s in schemes)} URL with a host (got {value!r})",
                field=name,
            )
        try:
            parts.port
        except ValueError:
            raise ValidationError(f"{name}: the URL's port is not a number 1-65535", field=name) from None
        if any(ord(c) < 33 or 127 <= ord(c) < 160 for c in value):
            raise ValidationError(f"{name}: a URL must not contain spaces or control characters", field=name)
        return value

    return check


def _fingerprint(name: str, value: Any) -> str:
    value = _line(200)(name, value)
    if value and not FINGERPRINT_RE.match(value.replace(" ", "")):
        raise ValidationError(f"{name}: expected a SHA-256 fingerprint, 64 hex digits (colons allowed)", field=name)
    return value


def _tenant(name: str, value: Any) -> str:
    value = _line(253)(name, value)
    if value and not (GUID_RE.match(value) or HOST_RE.match(value) or value in ("common", "organizations", "consumers")):
        raise ValidationError(f"{name}: expected a tenant GUID or domain (e.g. contoso.onmicrosoft.com)", field=name)
    return value


def _client_id(name: str, value: Any) -> str:
    value = _line(200)(name, value)
    if value and not re.match(r"^[A-Za-z0-9._@:-]+$", value):
        raise ValidationError(f"{name}: expected an application (client) id", field=name)
    return value


def _scopes(name: str, value: Any) -> list[str]:
    if isinstance(value, str):
        value = [s for s in re.split(r"[\s,]+", value) if s]
    if not isinstance(value, (list, tuple)) or not all(isinstance(s, str) and s and not any(c.isspace() for c in s) for s in value):
        raise ValidationError(f"{name}: expected a list of scope strings without spaces", field=name)
    return list(value)


def _from_patterns(name: str, value: Any) -> list[str]:
    """Sender patterns (fnmatch globs: * ? [...]) for choosing a profile by the envelope sender or
    From, as msmtp chooses an account by `from`. Comma or space separated on the command line."""
    if isinstance(value, str):
        value = [s for s in re.split(r"[\s,]+", value) if s]
    if not isinstance(value, (list, tuple)) or not all(
            isinstance(s, str) and s and len(s) <= 320 and not any(c.isspace() for c in s) for s in value):
        raise ValidationError(f"{name}: expected a list of address patterns without spaces (e.g. [\"*@example.com\"])",
                              field=name)
    return list(value)


def _duration(name: str, value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValidationError(f"{name}: expected a duration like 30s, 15m, 2h, 2d or 1w (got {value!r})", field=name)
        value = f"{value}s"
    if not isinstance(value, str) or not DURATION_RE.match(value):
        raise ValidationError(f"{name}: expected a duration like 30s, 15m, 2h, 2d or 1w (got {value!r})", field=name)
    if parse_duration(value) > MAX_DURATION:
        raise ValidationError(f"{name}: at most a year (366d, 52w) (got {value!r})", field=name)
    return value.strip()


def parse_duration(value: str | int | float) -> float:
    """'2d' -> 172800.0 seconds; a bare number means seconds."""
    if isinstance(value, (int, float)):
        return float(value)
    m = DURATION_RE.match(value)
    if not m:
        raise ValidationError(f"expected a duration like 30s, 15m, 2h, 2d or 1w (got {value!r})")
    unit = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2) or "s"]
    return float(m.group(1)) * unit


@dataclass(frozen=True)
class Field:
    name: str
    kind: str  # str | int | bool | list | float
    check: Callable[[str, Any], Any]
    help: str
    default: Any = ""
    metavar: str = "TEXT"


PROFILE_FIELDS: tuple[Field, ...] = (
    Field("type", "str", _choice(TYPES), "Transport: " + " | ".join(TYPES) + ".", "smtp", "TYPE"),
    Field("provider", "str", _choice(PROVIDERS), "Preset that fills host, port, security and auth: microsoft365 | gmail | custom.", "", "PROVIDER"),
    Field("inherits", "str", lambda n, v: validate_name(_line(50)(n, v), "parent profile name") if v else v, "Parent (company) profile whose values this profile inherits.", "", "PROFILE"),
    Field("host", "str", _host, "SMTP server host name.", "", "HOST"),
    Field("port", "int", _port, "Server port (default from security: starttls 587, tls 465, none 25).", 0, "PORT"),
    Field("security", "str", _choice(SECURITIES), "Encryption: none | starttls | tls (implicit TLS, SMTPS).", "", "MODE"),
    Field("auth", "str", _choice(AUTHS), "Authentication: " + " | ".join(AUTHS) + ".", "", "METHOD"),
    Field("username", "str", _line(320), "Login name (for OAuth: the mailbox UPN).", "", "USER"),
    Field("mailbox", "str", _address, "Graph/EWS: the mailbox to send as when it is not the login (a shared mailbox; an EWS DOMAIN\\user login). Default: username.", "", "ADDR"),
    Field("from_address", "str", _address, "Sender address (From).", "", "ADDR"),
    Field("from_match", "list", _from_patterns, "Glob patterns (e.g. *@example.com) of sender addresses that choose this profile when send/sendmail get no profile.", [], "PATTERNS"),
    Field("sender_name", "str", _line(200), "Display name in From.", "", "NAME"),
    Field("reply_to", "str", _address, "Reply-To address.", "", "ADDR"),
    Field("signature", "str", _str(250), "Signature appended to text bodies (<= 250 characters).", "", "TEXT"),
    Field("description", "str", _str(1000), "Free text description (<= 1000 characters).", "", "TEXT"),
    Field("alternate_host", "str", _host, "Failover server used when the primary cannot be reached.", "", "HOST"),
    Field("alternate_port", "int", _optional_port, "Failover server port (0: same as port).", 0, "PORT"),
    Field("failover", "str", _choice(FAILOVER_MODES), "per-connection: every connection tries the primary first; sticky: after a failover keep the alternate until `mailctl profile failback`.", "per-connection", "MODE"),
    Field("proxy", "str", _url(("socks5", "socks5h", "http")), "Proxy URL: socks5://host:port or http://host:port (credentials come from the secret store).", "", "URL"),
    Field("tls_verify", "bool", _bool, "Verify TLS certificates (default true).", True, "BOOL"),
    Field("ca_file", "str", _line(4096), "Extra CA bundle (PEM) for every TLS connection of this profile.", "", "FILE"),
    Field("tls_fingerprint", "str", _fingerprint, "SHA-256 pin of the server certificate.", "", "SHA256"),
    Field("allow_insecure_auth", "bool", _bool, "Allow AUTH on an unencrypted connection (default false).", False, "BOOL"),
    Field("ehlo_name", "str", _host, "Name sent in EHLO (default: this machine's name).", "", "NAME"),
    Field("source_address", "str", _source_address, "SMTP/LMTP: the local IP address to connect from (msmtp's source_ip; default: the system's choice).", "", "IP"),
    Field("auth_mechanism", "str", _auth_mechanism, "SMTP: the AUTH mechanism to use: " + " | ".join(AUTH_MECHANISMS) + " (default: the best one the server offers).", "", "MECH"),
    Field("socket_path", "str", _socket_path, "LMTP: a Unix socket to connect to instead of host:port (e.g. /var/run/dovecot/lmtp).", "", "PATH"),
    Field("timeout", "float", _positive_number, "Connect and command timeout in seconds (default 30).", 30, "SECONDS"),
    Field("tenant_id", "str", _tenant, "Microsoft Entra tenant id (GUID or domain).", "", "TENANT"),
    Field("client_id", "str", _client_id, "OAuth application (client) id.", "", "ID"),
    Field("cloud", "str", _choice(CLOUDS), "Microsoft national cloud: " + " | ".join(CLOUDS) + " (picks Graph and login hosts).", "global", "CLOUD"),
    Field("authority", "str", _url(("https",)), "Override the login authority URL (on-premises ADFS, tests).", "", "URL"),
    Field("authorization_url", "str", _url(("https", "http")), "Override the OAuth authorization endpoint.", "", "URL"),
    Field("token_url", "str", _url(("https", "http")), "Override the OAuth token endpoint.", "", "URL"),
    Field("scopes", "list", _scopes, "OAuth scopes (empty: the preset's scopes for this transport).", [], "SCOPES"),
    Field("redirect_uri", "str", _url(("http", "https")), "Loopback redirect URI for browser/paste OAuth flows.", "", "URL"),
    Field("oauth_provider", "str", _optional_choice(OAUTH_PROVIDERS), "Identity provider: " + " | ".join(OAUTH_PROVIDERS) + " (generic: any OAuth 2.0 server at authorization_url / token_url; empty: from provider and host).", "", "IDP"),
    Field("device_authorization_url", "str", _url(("https",)), "Generic OAuth: the device authorization endpoint (RFC 8628); enables --flow device.", "", "URL"),
    Field("revocation_url", "str", _url(("https",)), "Generic OAuth: the token revocation endpoint (RFC 7009) used by auth logout.", "", "URL"),
    Field("graph_endpoint", "str", _url(("https", "http")), "Microsoft Graph endpoint (empty: from cloud).", "", "URL"),
    Field("ews_url", "str", _url(("https", "http")), "Exchange Web Services URL (https://host/EWS/Exchange.asmx).", "", "URL"),
    Field("autodiscover", "bool", _bool, "EWS: find the service URL by autodiscover (slow; default false).", False, "BOOL"),
    Field("save_to_sent_items", "bool", _bool, "Graph/EWS: keep a copy in Sent Items (default true).", True, "BOOL"),
    Field("maildir", "str", _line(4096), "file transport: the Maildir to deliver into.", "", "DIR"),
    Field("rate_limit_per_minute", "int", _non_negative_int, "Outbox: at most this many messages a minute (0: the global setting).", 0, "N"),
    Field("max_connections", "int", _connections, "Outbox: at most this many sessions at once for `queue flush --connections N` (default 1: Microsoft 365 and Gmail throttle parallel sessions).", 1, "N"),
    Field("secret_command", "str", _line(4096), "Command whose stdout is the secret (used instead of the keyring).", "", "COMMAND"),
)

FIELDS_BY_NAME: dict[str, Field] = {f.name: f for f in PROFILE_FIELDS}

SETTINGS_FIELDS: tuple[Field, ...] = (
    Field("sending_enabled", "bool", _bool, "false: a flush sends nothing and says so.", True, "BOOL"),
    Field("max_retry_age", "str", _duration, "A message still failing after this is expired.", "2d", "DURATION"),
    Field("retention_days", "int", _days, "purge removes sent/failed/expired mail older than this.", 30, "DAYS"),
    Field("rate_limit_per_minute", "int", _non_negative_int, "0 = unlimited; profiles may override.", 0, "N"),
    Field("batch_interval", "str", _duration, "Pause between batches of a flush.", "0s", "DURATION"),
    Field("batch_size", "int", _non_negative_int, "Messages per batch (0: no batching).", 0, "N"),
    Field("min_backoff", "str", _duration, "First retry delay after a temporary failure.", "5m", "DURATION"),
    Field("max_backoff", "str", _duration, "Longest retry delay.", "4000s", "DURATION"),
    Field("postmaster", "str", _address, "Address used when force_postmaster = true.", "", "ADDR"),
    Field("force_postmaster", "bool", _bool, "Send everything From the postmaster (Reply-To keeps the sender).", False, "BOOL"),
    Field("outbox", "str", _outbox_location, "The outbox: an SQLite file, or postgresql://USER@HOST/DB shared by many hosts.", "", "PATH|URL"),
    Field("hold_backlog_at_start", "bool", _bool, "queue worker: hold the mail queued before it started (release it by hand); new mail flows.", False, "BOOL"),
    Field("attempt_log", "str", _line(4096), "One line per delivery attempt (time, id, profile, server, tls, auth, from, recipients, size, reply, outcome) to stderr, syslog or an absolute file path; empty: off.", "", "stderr|syslog|FILE"),
)
SETTINGS_BY_NAME: dict[str, Field] = {f.name: f for f in SETTINGS_FIELDS}

# Secrets never live in the TOML: these keys are refused wherever they appear.
SECRET_KEYS = ("password", "client_secret", "token", "access_token", "refresh_token", "oauth_tokens", "service_account_key", "proxy_password",
               "outbox_password")


def validate_field(name: str, value: Any, *, table: dict[str, Field] = FIELDS_BY_NAME) -> Any:
    """Validate and normalise one value; raises ValidationError naming the field and rule."""
    if name in SECRET_KEYS:
        raise ValidationError(
            f"{name}: secrets are not stored in the profiles file",
            field=name,
            hint="use --password-stdin, the keyring, secret_command or MAILCTL_SECRET_<PROFILE>_<KIND>",
        )
    spec = table.get(name)
    if spec is None:
        raise ValidationError(f"unknown field {name!r}", field=name, hint=f"known fields: {', '.join(sorted(table))}")
    return spec.check(name, value)


def validate_profile_table(values: dict[str, Any]) -> dict[str, Any]:
    return {k: validate_field(k, v) for k, v in values.items()}


def coerce_cli_value(name: str, raw: str, *, table: dict[str, Field] = FIELDS_BY_NAME) -> Any:
    """A value typed on the command line (always text) -> the field's type, validated."""
    spec = table.get(name)
    if spec is None:
        return validate_field(name, raw, table=table)
    if spec.kind == "int":
        if not raw.strip().lstrip("-").isdigit():
            raise ValidationError(f"{name}: expected a whole number (got {raw!r})", field=name)
        return validate_field(name, int(raw), table=table)
    if spec.kind == "float":
        try:
            num = float(raw)
        except ValueError:
            raise ValidationError(f"{name}: expected a number (got {raw!r})", field=name) from None
        if num != num or num in (float("inf"), float("-inf")):
            raise ValidationError(f"{name}: expected a finite number (got {raw!r})", field=name)
        return validate_field(name, int(num) if num.is_integer() else num, table=table)
    if spec.kind == "bool":
        return validate_field(name, _bool(name, raw), table=table)
    if spec.kind == "list":
        return validate_field(name, raw, table=table)
    return validate_field(name, raw, table=table)


@dataclass
class ResolvedProfile:
    """A profile after inheritance, presets and defaults. `origin` says where each value
    came from: the profile itself, 'inherited:<parent>', 'preset:<provider>' or 'default'."""

    name: str
    values: dict[str, Any]
    origin: dict[str, str] = dc_field(default_factory=dict)
    chain: list[str] = dc_field(default_factory=list)  # [name, parent, grandparent...]

    def get(self, key: str, default: Any = None) -> Any:
        value = self.values.get(key)
        return default if value in (None, "") else value

    def __getitem__(self, key: str) -> Any:
        return self.values.get(key, FIELDS_BY_NAME[key].default if key in FIELDS_BY_NAME else None)

    @property
    def type(self) -> str:
        return self.values.get("type") or "smtp"

    @property
    def server(self) -> str:
        if self.type == "lmtp" and self.values.get("socket_path"):
            return f"unix:{self.values['socket_path']}"
        if self.type in ("smtp", "lmtp"):
            host = self.values.get("host") or ""
            port = self.values.get("port") or ""
            return f"{host}:{port}" if host else ""
        if self.type == "graph":
            return self.values.get("graph_endpoint") or ""
        if self.type == "ews":
            return self.values.get("ews_url") or ("autodiscover" if self.values.get("autodiscover") else "")
        if self.type == "file":
            return self.values.get("maildir") or ""
        return ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "values": dict(self.values), "origin": dict(self.origin), "chain": list(self.chain)}
