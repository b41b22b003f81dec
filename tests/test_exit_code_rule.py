"""One rule for bad input (README, Exit codes): what the command line cannot accept is 2; a
field value that breaks a profile or setting rule is 65; the same value in the file is 78."""

from __future__ import annotations


def test_queue_list_unknown_state_and_limit_zero_agree(cli, isolated_env):
    r = cli("queue", "list", "--state", "bogus")
    assert r.exit_code == 2, r.output
    assert "bogus" in r.stderr and "queued" in r.stderr
    assert cli("queue", "list", "--state", "queued,bogus").exit_code == 2
    assert cli("queue", "list", "--limit", "0").exit_code == 2
    assert cli("queue", "list", "--state", "queued,held").exit_code == 0


def test_field_values_are_65_on_the_command_line_and_78_in_the_file(cli, isolated_env):
    assert cli("profile", "add", "p", "--host", "smtp.example.com", "--port", "70000").exit_code == 65
    assert cli("settings", "set", "retention_days", "--", "-1").exit_code == 65
    assert cli("settings", "set", "nosuch", "1").exit_code == 2
    (isolated_env / "profiles.toml").write_text('schema_version = 1\n[profiles.p]\nhost = "h.example.com"\nport = 70000\n')
    assert cli("profile", "list").exit_code == 78


def test_the_readme_states_the_rule():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Exit codes", 1)[1]
    assert "One rule for bad input" in section and "queue list --state bogus" in section
