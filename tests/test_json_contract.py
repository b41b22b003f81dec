"""The --json contract (docs/json.md, schemas/): every command with a --json option, run in
realistic states (an outbox with messages in several states, profiles of several types, a
real aiosmtpd server for send/test/flush, the local HTTPS identity provider for auth, the
loopback DNS server for dns and discover, error cases), its stdout parsed by the rules
(JSON Lines for listings, one object for single results), each document validated against
its JSON Schema, and the generic rules checked on every key: no `_ms`, no bare `duration`,
every `*_at` an RFC 3339 UTC timestamp with Z, every `*_seconds` a number, exit_code equal
to the process's exit status on single results and absent from listing records.

The last test walks the app's commands (as scripts/gen_docs.py does) and fails when a
command with a --json option is not run here, so a new command cannot drift."""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dnsserver import LocalDNS, mx, shared_server
from idp import ca_pem, idp, ms_profile, trust_ca  # noqa: F401  (fixtures)

sys.path.insert(0, str(Path(__file__).parent))
from outbox_smtp import RecordingHandler, SmtpServer  # noqa: E402

jsonschema = pytest.importorskip("jsonschema")
referencing = pytest.importorskip("referencing")

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "schemas"
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")
PASSWORD = "pw-Json-contract-7f3a!"
RAW = "From: app@example.com\nTo: {to}\nSubject: hello\nMessage-ID: <{mid}@example.com>\n\nbody\n"


# --- the rules --------------------------------------------------------------------------------
def _registry():
    from referencing import Registry, Resource

    resources = []
    for path in sorted(SCHEMAS.glob("*.json")):
        contents = json.loads(path.read_text())
        resources.append((path.name, Resource.from_contents(contents)))
    return Registry().with_resources(resources)


REGISTRY = None


def validate(doc: dict, schema: str) -> list[str]:
    """Schema violations of one document, as text."""
    global REGISTRY
    REGISTRY = REGISTRY or _registry()
    contents = json.loads((SCHEMAS / f"{schema}.json").read_text())
    validator = jsonschema.Draft202012Validator(contents, registry=REGISTRY)
    return [f"{schema}: {'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def generic_problems(value, where: str = "$") -> list[str]:
    """Rules 3 and 4 on every key, however deep."""
    out: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            here = f"{where}.{key}"
            if key.endswith("_ms"):
                out.append(f"{here}: milliseconds (durations are seconds, key suffix _seconds)")
            if key == "duration":
                out.append(f"{here}: a duration without the _seconds suffix")
            if key.endswith("_at") and item is not None and not (isinstance(item, str) and TIMESTAMP.match(item)):
                out.append(f"{here}: {item!r} is not an RFC 3339 UTC timestamp with Z")
            if key.endswith("_seconds") and item is not None and (isinstance(item, bool) or not isinstance(item, (int, float))):
                out.append(f"{here}: {item!r} is not a number of seconds")
            out += generic_problems(item, here)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out += generic_problems(item, f"{where}[{i}]")
    return out


def _error_keys() -> set[str]:
    return set(json.loads((SCHEMAS / "error.json").read_text())["properties"])


def _is_error_object(doc: dict) -> bool:
    """The error object: error (a message), exit_code, and nothing but the error's context."""
    return isinstance(doc.get("error"), str) and "exit_code" in doc and set(doc) <= _error_keys()


@dataclass
class Run:
    command: str  # the command path, "queue list"
    argv: list[str]
    schema: str
    listing: bool
    exit_code: int
    stdout: str
    stderr: str
    docs: list = field(default_factory=list)

    def problems(self) -> list[str]:
        label = f"mailctl {' '.join(self.argv)} (exit {self.exit_code})"
        out: list[str] = []
        try:
            if self.listing:
                self.docs = [json.loads(line) for line in self.stdout.splitlines()]  # one object a line
                if self.stdout and not self.stdout.endswith("\n"):
                    out.append("a JSON Lines listing ends every line with a newline")
            else:
                self.docs = [json.loads(self.stdout)] if self.stdout.strip() else []
                if len(self.docs) != 1:
                    out.append(f"a single result is one object on stdout, got {self.stdout!r}")
        except json.JSONDecodeError as exc:
            return [f"{label}: stdout is not {'JSON Lines' if self.listing else 'one JSON document'}: {exc}: {self.stdout[:300]!r}"]
        for doc in self.docs:
            if not isinstance(doc, dict):
                out.append(f"not an object: {doc!r}"[:200])
                continue
            is_error = self.exit_code != 0 and doc is self.docs[-1] and _is_error_object(doc)
            out += validate(doc, "error" if is_error else self.schema)
            out += generic_problems(doc)
            if is_error or not self.listing:
                if doc.get("exit_code") != self.exit_code:
                    out.append(f"exit_code {doc.get('exit_code')!r} is not the exit status {self.exit_code}")
            elif "exit_code" in doc:
                out.append("a listing record carries no exit_code")
        if PASSWORD in self.stdout or PASSWORD in self.stderr:
            out.append("the password is in the output")
        return [f"{label}: {p}" for p in out]


class World:
    """Runs commands through the CLI and keeps what each printed."""

    def __init__(self, cli) -> None:
        self.cli = cli
        self.runs: list[Run] = []

    def run(self, command: str, *args: str, schema: str, listing: bool = False, input: str | None = None,
            status: int | None = 0, env: dict | None = None) -> Run:
        argv = [*args]
        res = self.cli(*argv, input=input, env=env)
        assert res.exception is None, (argv, repr(res.exception), res.output)
        if status is not None:
            assert res.exit_code == status, (argv, res.exit_code, res.output)
        run = Run(command, argv, schema, listing, res.exit_code, res.stdout, res.stderr)
        self.runs.append(run)
        return run

    def covered(self) -> set[str]:
        return {r.command for r in self.runs}


# --- the states -------------------------------------------------------------------------------
def _profiles(home: Path, server: SmtpServer, idp, ca_pem: str) -> None:
    import tomlkit

    doc = {"schema_version": 1, "default": "srv", "settings": {"max_retry_age": "2d"}, "profiles": {
        "srv": {"type": "smtp", "host": "127.0.0.1", "port": server.port, "security": "none", "auth": "none",
                "from_address": "app@example.com", "timeout": 10},
        "odd": {"type": "smtp", "host": "127.0.0.1", "port": 465, "security": "starttls", "auth": "none",
                "from_address": "app@example.com", "alternate_host": "127.0.0.2", "timeout": 5},
        "m": ms_profile(idp, ca_pem),
        "g": {"type": "graph", "auth": "oauth", "tenant_id": "contoso.onmicrosoft.com",
              "client_id": "11111111-2222-3333-4444-555555555555", "from_address": "a@contoso.example"},
        "drop": {"type": "file", "maildir": str(home / "drop"), "from_address": "app@example.com"},
    }}
    (home / "profiles.toml").write_text(tomlkit.dumps(doc))


def _profile_commands(w: World, home: Path, discover_dns: LocalDNS) -> None:
    w.run("profile add", "profile", "add", "p1", "--type", "smtp", "--host", "mail.example.com", "--port", "587",
          "--security", "starttls", "--auth", "password", "--username", "u@example.com", "--from-address",
          "u@example.com", "--password-stdin", "--json", input=PASSWORD + "\n", schema="profile-change")
    w.run("profile edit", "profile", "edit", "p1", "--port", "465", "--security", "tls", "--json", schema="profile-change")
    w.run("profile duplicate", "profile", "duplicate", "p1", "p2", "--no-secret", "--json", schema="profile-change")
    w.run("profile rename", "profile", "rename", "p2", "p3", "--json", schema="profile-change")
    w.run("profile set-default", "profile", "set-default", "p3", "--json", schema="profile-change")
    w.run("profile set-default", "profile", "set-default", "srv", "--json", schema="profile-change")
    w.run("profile delete", "profile", "delete", "p3", "--yes", "--json", schema="profile-change")
    rows = w.run("profile list", "profile", "list", "--json", schema="profile", listing=True)
    w.run("profile show", "profile", "show", "srv", "--json", schema="profile-detail")
    w.run("profile show", "profile", "show", "p1", "--json", schema="profile-detail")
    w.run("profile lint", "profile", "lint", "--json", schema="lint-finding", listing=True, status=None)
    w.run("profile lint", "profile", "lint", "odd", "--strict", "--json", schema="lint-finding", listing=True, status=1)
    w.run("profile lint", "profile", "lint", "srv", "--json", schema="lint-finding", listing=True)
    rc = home / "msmtprc"
    rc.write_text("defaults\nauth on\ntls on\naccount work\nhost smtp.example.com\nport 587\nfrom me@example.com\n"
                  "user me\npasswordeval pass show x\naccount default : work\n")
    w.run("profile import", "profile", "import", "--msmtprc", str(rc), "--dry-run", "--json", schema="profile-import")
    w.run("profile import", "profile", "import", "--msmtprc", str(rc), "--prefix", "m_", "--json", schema="profile-import")
    w.run("profile discover", "profile", "discover", "alice@contoso.test", "--nameserver", discover_dns.address,
          "--timeout", "2", "--json", schema="profile-discover")
    w.run("profile failback", "profile", "failback", "odd", "--json", schema="profile-failback")
    w.run("settings show", "settings", "show", "--json", schema="settings")
    w.run("settings set", "settings", "set", "retention_days", "10", "--json", schema="setting-change")
    w.run("settings unset", "settings", "unset", "retention_days", "--json", schema="setting-change")
    assert len(rows.stdout.splitlines()) >= 5


def _queue_commands(w: World, home: Path) -> None:
    w.run("queue add", "queue", "add", "--json", input=RAW.format(to="user@example.org", mid="a"), schema="queue-message-result")
    w.run("queue add", "queue", "add", "--json", input=RAW.format(to="later@example.org", mid="b"), schema="queue-message-result")
    w.run("queue add", "queue", "add", "--json", input=RAW.format(to="nobody@example.org", mid="c"), schema="queue-message-result")
    w.run("queue add", "queue", "add", "--hold", "--json", input=RAW.format(to="user@example.org", mid="d"), schema="queue-message-result")
    w.run("queue flush", "queue", "flush", "--dry-run", "--json", schema="flush-report")
    w.run("queue flush", "queue", "flush", "--json", schema="flush-report", status=1)  # one sent, one deferred, one failed
    listing = w.run("queue list", "queue", "list", "--state", "all", "--json", schema="queue-message", listing=True)
    assert {d["state"] for d in map(json.loads, listing.stdout.splitlines())} >= {"sent", "deferred", "failed", "held"}
    empty = w.run("queue list", "queue", "list", "--state", "expired", "--json", schema="queue-message", listing=True)
    assert empty.stdout == ""  # an empty listing prints nothing
    w.run("queue show", "queue", "show", "2", "--json", schema="queue-show")
    w.run("queue stats", "queue", "stats", "--json", schema="queue-stats")
    w.run("queue stats", "queue", "stats", "--format", "json", schema="queue-stats")
    w.run("queue hold", "queue", "hold", "2", "--json", schema="queue-change")
    w.run("queue release", "queue", "release", "2", "4", "--json", schema="queue-change")
    w.run("queue retry", "queue", "retry", "3", "--json", schema="queue-change")
    w.run("queue delete", "queue", "delete", "4", "--json", schema="queue-change")
    w.run("queue migrate", "queue", "migrate", "--to", str(home / "copy.sqlite3"), "--json", schema="queue-migrate")
    w.run("queue purge", "queue", "purge", "--older-than", "0s", "--json", schema="queue-purge")


def _send_and_test(w: World, server: SmtpServer) -> None:
    w.run("send", "send", "--to", "user@example.org", "--subject", "x", "--json", input="body\n", schema="send-outcome")
    w.run("send", "send", "--to", "nobody@example.org", "--subject", "x", "--json", input="body\n", schema="send-outcome", status=1)
    w.run("send", "send", "--to", "later@example.org", "--subject", "x", "--json", input="body\n", schema="send-outcome", status=75)
    w.run("send", "send", "--queue", "--to", "user@example.org", "--subject", "x", "--json", input="body\n", schema="send-outcome")
    w.run("test connect", "test", "connect", "srv", "--json", schema="probe-report")
    w.run("test send", "test", "send", "srv", "--to", "user@example.org", "--json", schema="probe-report")
    w.run("test send", "test", "send", "srv", "--to", "nobody@example.org", "--json", schema="probe-report", status=None)
    w.run("test connect", "test", "connect", "odd", "--json", schema="probe-report", status=None)  # nothing listens there


def _auth_commands(w: World) -> None:
    w.run("auth status", "auth", "status", "--json", schema="auth-status", listing=True, status=77)  # nobody signed in
    w.run("auth login", "auth", "login", "m", "--json", schema="auth-event", listing=True)
    w.run("auth status", "auth", "status", "m", "--json", schema="auth-status", listing=True)
    w.run("auth logout", "auth", "logout", "m", "--json", schema="auth-logout")


def _dns_commands(w: World) -> None:
    ns = shared_server().address
    for cmd, extra in (("check-spf", ["--ip", "192.0.2.1"]), ("check-dkim", ["--selector", "selector1"]),
                       ("check-dmarc", []), ("check", [])):
        w.run(f"dns {cmd}", "dns", cmd, "valid.test", *extra, "--nameserver", ns, "--timeout", "3", "--json",
              schema="dns-report", status=None)
    w.run("dns check-spf", "dns", "check-spf", "twospf.test", "--nameserver", ns, "--timeout", "3", "--json",
          schema="dns-report", status=1)
    w.run("dns check", "dns", "check", "valid.test", "--checks", "helo", "--helo", "host.ptr.test", "--ip", "192.0.2.5",
          "--nameserver", ns, "--timeout", "3", "--json", schema="dns-report", status=0)


def _misc_commands(w: World, home: Path) -> None:
    w.run("config", "config", "--json", schema="config")
    w.run("completion install", "completion", "install", "--shell", "bash", "--json", schema="completion-install",
          env={"XDG_DATA_HOME": str(home / "xdg"), "BASH_COMPLETION_USER_DIR": ""})
    broken = home / "broken.toml"
    broken.write_text("schema_version = 1\n[profiles.x\n")
    w.run("config", "--config", str(broken), "config", "--json", schema="config", status=78)


def _error_cases(w: World) -> None:
    """An error under --json: the error object on stdout (rule 6), the global flag or the command's."""
    w.run("profile show", "profile", "show", "nosuch", "--json", schema="error", status=66)
    w.run("queue show", "--json", "queue", "show", "999", schema="error", status=66)
    w.run("queue list", "queue", "list", "--state", "bogus", "--json", schema="error", status=2)
    w.run("queue migrate", "queue", "migrate", "--json", schema="error", status=2)  # Click's usage error
    w.run("settings set", "settings", "set", "nosuch", "1", "--json", schema="error", status=2)
    w.run("profile lint", "profile", "lint", "nosuch", "--json", schema="lint-finding", listing=True, status=66)


@pytest.fixture
def world(cli, isolated_env, idp, ca_pem):  # noqa: F811
    handler = RecordingHandler(temp_fail={"later@example.org"}, perm_fail={"nobody@example.org"})
    discover_dns = LocalDNS([mx("contoso.test", "contoso-test.mail.protection.outlook.com")]).start()
    idp.device_script = ["approve"]
    w = World(cli)
    try:
        with SmtpServer(handler) as server:
            _profiles(isolated_env, server, idp, ca_pem)
            _profile_commands(w, isolated_env, discover_dns)
            _queue_commands(w, isolated_env)
            _send_and_test(w, server)
            _auth_commands(w)
            _dns_commands(w)
            _misc_commands(w, isolated_env)
            _error_cases(w)
    finally:
        discover_dns.stop()
    return w


# --- the tests --------------------------------------------------------------------------------
def test_every_json_document_follows_the_contract(world):
    problems = [p for run in world.runs for p in run.problems()]
    assert not problems, "\n".join(problems)


def test_listing_and_single_result_shapes(world):
    by_cmd = {}
    for run in world.runs:
        run.problems()
        by_cmd.setdefault(run.command, []).append(run)
    status = by_cmd["auth status"][0]
    assert status.exit_code == 77 and {d["profile"] for d in status.docs} == {"m", "g"}
    assert all(d["needs_login"] for d in status.docs)
    signed_in = by_cmd["auth status"][1].docs
    assert len(signed_in) == 1 and signed_in[0]["refresh_token_age_seconds"] == 0 and signed_in[0]["access"]
    events = by_cmd["auth login"][0].docs
    assert events[0]["event"] == "device_code" and events[-1]["event"] == "signed_in"
    shown = by_cmd["queue show"][0].docs[0]
    assert shown["reply"] == "451 4.3.0 Try again later" and shown["server"].startswith("127.0.0.1:")
    assert shown["attempt_log"][0]["duration_seconds"] >= 0 and shown["attempt_log"][0]["attempted_at"].endswith("Z")
    flushed = [r for r in by_cmd["queue flush"] if not r.docs[0]["dry_run"]][0].docs[0]
    deferred = [p for p in flushed["problems"] if p["outcome"] == "deferred"][0]
    assert deferred["next_attempt_at"].endswith("Z")  # was an epoch float
    failed = [p for p in flushed["problems"] if p["outcome"] == "failed"][0]
    assert failed["failed_recipients"] == {"nobody@example.org": "550 5.1.1 No such user"}
    probe = by_cmd["test connect"][0].docs[0]
    assert probe["duration_seconds"] < 10 and all("duration_seconds" in s for s in probe["stages"])
    lint = by_cmd["profile lint"][1]
    assert lint.exit_code == 1 and any(d["id"] == "smtp.port-security-mismatch" for d in lint.docs)
    assert by_cmd["profile lint"][2].stdout == ""  # nothing to report: an empty listing


def test_errors_are_objects_on_stdout(world):
    errors = [r for r in world.runs if r.schema == "error"]
    assert len(errors) >= 5
    for run in errors:
        doc = json.loads(run.stdout)
        assert doc["exit_code"] == run.exit_code != 0
        assert run.stderr.startswith(("Error:", "Usage:")) and doc["error"] in run.stderr
    usage = [r for r in errors if r.argv[:2] == ["queue", "migrate"]][0]
    assert json.loads(usage.stdout)["error"] == "Missing option '--to'."
    lint = [r for r in world.runs if r.argv[:3] == ["profile", "lint", "nosuch"]][0]
    assert json.loads(lint.stdout.splitlines()[-1])["exit_code"] == 66  # a listing ends with the error object


def test_error_object_carries_the_error_context(cli, isolated_env):
    """A server's refusal keeps its stage, server and codes in the object (rule 6), no secret."""
    from smtpserver import PASSWORD as SERVER_PASSWORD, USER, smtp_server, store_secret, write_profiles

    with smtp_server(auth=True, auth_require_tls=False) as server:
        write_profiles(isolated_env, {"s": {"type": "smtp", "host": server.host, "port": server.port, "security": "none",
                                            "allow_insecure_auth": True, "auth": "password", "username": USER,
                                            "from_address": USER, "timeout": 5}})
        store_secret("s", "password", SERVER_PASSWORD + "-wrong")
        res = cli("--json", "send", "--to", "bob@example.org", "--subject", "x", input="body\n")
    assert res.exit_code == 77, res.output
    doc = json.loads(res.stdout)
    assert not validate(doc, "error") and not generic_problems(doc)
    assert doc["exit_code"] == 77 and doc["stage"] == "auth" and doc["code"] == 535
    assert doc["server"].endswith(f":{server.port}")
    assert SERVER_PASSWORD not in res.stdout + res.stderr


def test_without_json_an_error_prints_nothing_on_stdout(cli):
    res = cli("profile", "show", "nosuch")
    assert res.exit_code == 66 and res.stdout == "" and res.stderr.startswith("Error:")
    res = cli("queue", "migrate")
    assert res.exit_code == 2 and res.stdout == ""
    res = cli("profile", "show", "--", "--json")  # after `--`, "--json" is an argument, not the flag
    assert res.exit_code == 66 and res.stdout == ""


def test_conversions_to_the_contract():
    """What json_document does to the domain's dicts: the rules, not a command's shape."""
    from mailctl.output import json_document, rfc3339

    assert rfc3339(0) == "1970-01-01T00:00:00Z" and rfc3339(1.25) == "1970-01-01T00:00:01.250000Z"
    assert rfc3339("2026-12-01T13:39:36+02:00") == "2026-12-01T11:39:36Z"  # local offsets become UTC
    doc = json_document({"duration": 1.5, "stages": [{"duration_ms": 250.0}], "last_reply": "250 OK",
                         "last_server": "h:25", "next_attempt_at": 1796127092.5, "done_at": None,
                         "failed_recipients": {"a@example.org": "550 no"}, "refresh_token_age_days": 2,
                         "reply": "kept", "attempt_log": [{"at": "2026-12-01T11:39:36+00:00"}]})
    assert doc["duration_seconds"] == 1.5 and doc["stages"] == [{"duration_seconds": 0.25}]
    assert doc["next_attempt_at"] == "2026-12-01T12:11:32.500000Z" and doc["done_at"] is None
    assert doc["server"] == "h:25" and doc["reply"] == "kept" and doc["last_reply"] == "250 OK"  # no clobbering
    assert doc["failed_recipients"] == {"a@example.org": "550 no"} and doc["refresh_token_age_seconds"] == 2 * 86400
    assert doc["attempt_log"] == [{"attempted_at": "2026-12-01T11:39:36Z"}]
    tags = json_document({"tags": {"v": "DKIM1", "t": "y"}, "transcript": [{"line": "220 hi", "t": 0.5}]})
    assert tags == {"tags": {"v": "DKIM1", "t": "y"}, "transcript": [{"line": "220 hi", "elapsed_seconds": 0.5}]}
    assert not generic_problems({k: v for k, v in doc.items() if k != "last_reply"})


def _json_commands() -> set[str]:
    sys.path.insert(0, str(ROOT / "scripts"))
    from gen_docs import command_paths

    import typer.main

    from mailctl.cli import app

    root = typer.main.get_command(app)
    found = set()
    with root.make_context("mailctl", ["--help"], resilient_parsing=True) as ctx:
        for path in command_paths():
            if not path:
                continue
            cmd = root
            for name in path:
                cmd = cmd.get_command(ctx, name)
            if any("--json" in getattr(p, "opts", ()) for p in cmd.params):
                found.add(" ".join(path))
    return found


def test_every_command_with_json_is_covered(world):
    missing = sorted(_json_commands() - world.covered())
    assert not missing, f"commands with --json that tests/test_json_contract.py does not run: {missing}"


def test_every_schema_is_used_and_well_formed(world):
    used = {r.schema for r in world.runs}
    for path in SCHEMAS.glob("*.json"):
        schema = json.loads(path.read_text())
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["$schema"].endswith("/draft/2020-12/schema") and schema.get("additionalProperties") is True, path.name
        assert schema["required"], path.name
        if path.stem not in ("queue-message",):  # queue-message is used through queue-show / queue-message-result
            assert path.stem in used, f"{path.name} validates no command's output here"
