"""`[settings] attempt_log`: one line per delivery attempt (msmtp's logfile idea) with the time,
queue id, profile, server, tls, auth, from, recipients, size, reply and outcome, to a file,
stderr or syslog; from `queue flush` (and so from the worker, send and sendmail, which run
the same flush)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from outbox_smtp import RecordingHandler, SmtpServer, write_profiles  # noqa: E402
from smtpserver import PASSWORD, USER, assert_no_secret, make_pki, smtp_server, store_secret  # noqa: E402

from mailctl.outbox import Outbox  # noqa: E402


def message(i: int, to: str = "user@example.org") -> bytes:
    return (f"From: app@example.com\r\nTo: {to}\r\nSubject: m {i}\r\n"
            f"Message-ID: <al{i}@test.example>\r\n\r\nbody {i}\r\n").encode()


def fields(line: str) -> dict[str, str]:
    out = {}
    for key, quoted, bare in re.findall(r'(\w+)=(?:"((?:[^"\\]|\\.)*)"|(\S+))', line):
        out[key] = quoted.replace('\\"', '"').replace("\\\\", "\\") if quoted else bare
    return out


def test_attempt_log_file_has_one_line_per_attempt(cli, isolated_env, tmp_path):
    handler = RecordingHandler(temp_fail={"later@example.org"}, perm_fail={"nobody@example.org"})
    log = tmp_path / "logs" / "attempts.log"
    outbox = tmp_path / "o.sqlite3"
    with SmtpServer(handler) as server:
        write_profiles(isolated_env, {"relay": server}, default="relay", settings={"attempt_log": str(log)})
        with Outbox(outbox) as box:
            sent = box.enqueue(message(1), "app@example.com", ["user@example.org", "second@example.org"])
            later = box.enqueue(message(2, "later@example.org"), "app@example.com", ["later@example.org"])
            nobody = box.enqueue(message(3, "nobody@example.org"), "app@example.com", ["nobody@example.org"])
            size = box.get(sent).size
        r = cli("queue", "flush", "--outbox", str(outbox))
        assert r.exit_code == 1, r.output
    lines = log.read_text().splitlines()
    assert len(lines) == 3, lines
    assert all(re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00 attempt ", line) for line in lines)
    by_id = {int(fields(line)["id"]): fields(line) for line in lines}
    first = by_id[sent]
    assert first["profile"] == "relay" and first["server"].endswith(f":{server.port}")
    assert (first["tls"], first["auth"]) == ("off", "off")
    assert first["from"] == "app@example.com" and first["recipients"] == "user@example.org,second@example.org"
    assert first["size"] == str(size) and first["outcome"] == "sent" and first["reply"].startswith("250")
    assert float(first["duration"]) >= 0
    assert by_id[later]["outcome"] == "deferred" and by_id[later]["reply"].startswith("451")
    assert by_id[nobody]["outcome"] == "failed" and "550" in by_id[nobody]["reply"]
    assert oct(log.stat().st_mode & 0o777) == "0o600"
    # appended, not rewritten, by the next run
    with Outbox(outbox) as box:
        box.retry([nobody])
    with SmtpServer(handler, port=server.port):
        cli("queue", "flush", "--outbox", str(outbox))
    assert len(log.read_text().splitlines()) == 4


def test_attempt_log_names_tls_and_the_sasl_mechanism_and_never_the_password(cli, isolated_env, tmp_path):
    (tmp_path / "pki").mkdir()
    pki = make_pki(tmp_path / "pki")
    store_secret("secure", "password", PASSWORD)
    outbox = tmp_path / "o.sqlite3"
    with smtp_server(cert=pki.good) as srv:
        (isolated_env / "profiles.toml").write_text(
            'schema_version = 1\ndefault = "secure"\n[settings]\nattempt_log = "stderr"\n[profiles.secure]\n'
            f'type = "smtp"\nhost = "localhost"\nport = {srv.port}\nsecurity = "starttls"\nauth = "password"\n'
            f'username = "{USER}"\nca_file = "{pki.ca_file}"\nfrom_address = "{USER}"\ntimeout = 10\n')
        with Outbox(outbox) as box:
            box.enqueue(message(1), USER, ["bob@example.net"])
        r = cli("queue", "flush", "--outbox", str(outbox))
    assert r.exit_code == 0, r.output
    lines = [line for line in r.stderr.splitlines() if " attempt " in line]
    assert len(lines) == 1, r.stderr
    f = fields(lines[0])
    assert f["tls"].startswith("TLSv1.") and f["auth"] == "PLAIN" and f["outcome"] == "sent"
    assert f["from"] == USER and f["recipients"] == "bob@example.net"
    assert_no_secret(r.stderr)


def test_attempt_log_to_syslog_and_bad_targets(cli, isolated_env, tmp_path):
    outbox = tmp_path / "o.sqlite3"
    with SmtpServer() as server:
        write_profiles(isolated_env, {"relay": server}, default="relay", settings={"attempt_log": "syslog"})
        with Outbox(outbox) as box:
            box.enqueue(message(1), "app@example.com", ["user@example.org"])
        r = cli("queue", "flush", "--outbox", str(outbox))
        assert r.exit_code == 0, r.output  # whether or not a syslog daemon listens
        write_profiles(isolated_env, {"relay": server}, default="relay", settings={"attempt_log": "relative.log"})
        with Outbox(outbox) as box:
            box.enqueue(message(2), "app@example.com", ["user@example.org"])
        r = cli("queue", "flush", "--outbox", str(outbox))
        assert r.exit_code == 78 and "attempt_log" in r.output and "Traceback" not in r.output
        with Outbox(outbox) as box:
            assert box.count_by_state()["queued"] == 1  # nothing was tried
    r = cli("settings", "set", "attempt_log", str(tmp_path / "a.log"))
    assert r.exit_code == 0, r.output
    assert "attempt_log" in (isolated_env / "profiles.toml").read_text()
