"""`mailctl queue stats --format openmetrics` (and `--output FILE` for node_exporter's textfile
collector) on both backends: counts by state, oldest queued age, attempts and failures."""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from outbox_smtp import RecordingHandler, SmtpServer, write_profiles  # noqa: E402
from worker_procs import location_of, message  # noqa: E402

_SAMPLE = re.compile(r'^([a-z_]+)(\{[a-z_]+="[a-z_]+"\})? (-?[0-9]+(\.[0-9]+)?)$')


def parse(text: str) -> dict[str, float]:
    """A strict reading of the exposition: metadata before samples, every sample of a declared
    gauge, `# EOF` last; returns {'name{labels}': value}."""
    lines = text.splitlines()
    assert lines[-1] == "# EOF" and text.endswith("\n")
    declared, samples = set(), {}
    for line in lines[:-1]:
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            assert kind == "gauge" and name not in declared
            declared.add(name)
        elif line.startswith("# UNIT "):
            name, unit = line.split()[2:4]
            assert name in declared and name.endswith("_" + unit)
        elif line.startswith("# HELP "):
            assert line.split()[2] in declared
        else:
            m = _SAMPLE.match(line)
            assert m, line
            assert m.group(1) in declared, line
            samples[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return samples


def test_openmetrics_counts_states_ages_attempts_and_failures(cli, outbox_factory, isolated_env, tmp_path):
    handler = RecordingHandler(temp_fail={"later@example.org"}, perm_fail={"nobody@example.org"})
    clock = [1_000_000.0]
    box = outbox_factory(clock=lambda: clock[0])
    with SmtpServer(handler) as server:
        write_profiles(isolated_env, {"relay": server}, default="relay")
        box.enqueue(message(1), "app@example.com", ["user@example.org"])
        box.enqueue(message(2), "app@example.com", ["later@example.org"])
        box.enqueue(message(3), "app@example.com", ["nobody@example.org"])
        box.enqueue(message(4), "app@example.com", ["user@example.org", "nobody@example.org"])
        from mailctl.outbox.service import profile_flush
        from mailctl.profiles.store import ProfileStore

        profile_flush(box, ProfileStore(isolated_env / "profiles.toml").load(), None)
        clock[0] += 30
        box.enqueue(message(5), "app@example.com", ["user@example.org"], hold=True)
        clock[0] += 90
        location = location_of(box)
        box.close()
        # the command reads the real clock: make the store's times 'now'-relative for the check
        r = cli("queue", "stats", "--format", "openmetrics", "--outbox", location)
    assert r.exit_code == 0, r.output
    m = parse(r.stdout)
    assert m['mailctl_outbox_messages{state="sent"}'] == 2  # 1, and 4 (partly failed)
    assert m['mailctl_outbox_messages{state="deferred"}'] == 1
    assert m['mailctl_outbox_messages{state="failed"}'] == 1
    assert m['mailctl_outbox_messages{state="held"}'] == 1
    assert m['mailctl_outbox_messages{state="queued"}'] == 0 and m['mailctl_outbox_messages{state="expired"}'] == 0
    assert m["mailctl_outbox_partially_failed_messages"] == 1 and m["mailctl_outbox_partially_failed_recipients"] == 1
    assert m['mailctl_outbox_attempts{outcome="sent"}'] == 2 and m['mailctl_outbox_attempts{outcome="failed"}'] == 1
    assert m['mailctl_outbox_attempts{outcome="deferred"}'] == 1 and m['mailctl_outbox_attempts{outcome="interrupted"}'] == 0
    assert m["mailctl_outbox_up"] == 1
    # the store's clock was 1970 + 11 days: the oldest message still to send is that old now
    import time

    assert abs(m["mailctl_outbox_oldest_queued_age_seconds"] - (time.time() - 1_000_000.0)) < 600
    assert m["mailctl_outbox_oldest_held_age_seconds"] > 0
    # the last hour's attempts: none (they were logged at the store's 1970 clock)
    assert m['mailctl_outbox_attempts_last_hour{outcome="sent"}'] == 0


def test_openmetrics_to_a_textfile_collector_file(cli, isolated_env, tmp_path):
    from mailctl.outbox import Outbox

    path = tmp_path / "o.sqlite3"
    with Outbox(path) as box:
        box.enqueue(message(1), "app@example.com", ["user@example.org"])
    (isolated_env / "profiles.toml").write_text("schema_version = 1\n")
    target = tmp_path / "textfile" / "mailctl.prom"
    target.parent.mkdir()
    r = cli("queue", "stats", "--format", "openmetrics", "--output", str(target), "--outbox", str(path))
    assert r.exit_code == 0 and r.stdout == "", r.output
    m = parse(target.read_text())
    assert m['mailctl_outbox_messages{state="queued"}'] == 1
    assert 0 <= m["mailctl_outbox_oldest_queued_age_seconds"] < 60
    assert m["mailctl_outbox_oldest_held_age_seconds"] == 0
    assert [p.name for p in target.parent.iterdir()] == ["mailctl.prom"]  # no temporary file left
    assert oct(target.stat().st_mode & 0o777) == "0o644"
    r = cli("queue", "stats", "--format", "openmetrics", "--output", str(tmp_path / "missing" / "x.prom"), "--outbox", str(path))
    assert r.exit_code == 78 and "Traceback" not in r.output
    r = cli("queue", "stats", "--format", "xml", "--outbox", str(path))
    assert r.exit_code == 2
    r = cli("queue", "stats", "--output", str(target), "--outbox", str(path))
    assert r.exit_code == 2
    r = cli("queue", "stats", "--format", "json", "--outbox", str(path))
    assert r.exit_code == 0 and '"by_state"' in r.stdout
