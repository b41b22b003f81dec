"""`mailctl settings show|set|unset`: the [settings] table, edited with the file's comments kept."""

from __future__ import annotations

import json

import tomlkit

RAW = "From: app@example.com\nTo: user@example.org\nSubject: hello\n\nbody\n"


def test_show_lists_every_setting_with_its_origin(cli, isolated_env):
    data = json.loads(cli("settings", "show", "--json").stdout)
    assert data["settings"]["sending_enabled"] is True and data["origin"]["sending_enabled"] == "default"
    assert data["file"] == str(isolated_env / "profiles.toml")
    r = cli("settings", "show")
    assert r.exit_code == 0 and "retention_days" in r.stdout and "default" in r.stdout


def test_set_and_unset_keep_comments(cli, isolated_env):
    cfg = isolated_env / "profiles.toml"
    cfg.write_text("# my notes\nschema_version = 1\n\n[settings]\nretention_days = 14   # two weeks\n")
    r = cli("settings", "set", "sending_enabled", "false")
    assert r.exit_code == 0, r.output
    text = cfg.read_text()
    assert "# my notes" in text and "# two weeks" in text
    assert tomlkit.parse(text)["settings"]["sending_enabled"] is False
    data = json.loads(cli("settings", "show", "--json").stdout)
    assert data["settings"]["sending_enabled"] is False and data["origin"]["sending_enabled"] == "file"
    assert data["origin"]["retention_days"] == "file" and data["settings"]["retention_days"] == 14
    assert json.loads(cli("settings", "set", "max-retry-age", "3d", "--json").stdout)["value"] == "3d"
    assert json.loads(cli("settings", "set", "batch_size", "10", "--json").stdout)["value"] == 10
    r = cli("settings", "unset", "sending_enabled", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout) == {"file": str(cfg), "key": "sending_enabled", "removed": True, "value": True, "exit_code": 0}
    assert "sending_enabled" not in tomlkit.parse(cfg.read_text())["settings"]


def test_unknown_key_is_usage_and_bad_value_is_bad_data(cli, isolated_env):
    r = cli("settings", "set", "nosuch", "1")
    assert r.exit_code == 2 and "nosuch" in r.stderr and "sending_enabled" in r.stderr
    assert cli("settings", "set", "password", "x").exit_code == 2
    assert cli("settings", "unset", "nosuch").exit_code == 2
    for key, value in (("retention_days", "-1"), ("retention_days", "ten"), ("sending_enabled", "maybe"),
                       ("max_retry_age", "forever"), ("max_retry_age", "9999d"), ("postmaster", "not an address")):
        r = cli("settings", "set", key, "--", value)
        assert r.exit_code == 65, (key, value, r.output)
        assert key in r.stderr and "Traceback" not in r.output
    assert not (isolated_env / "profiles.toml").exists()


def test_the_sending_disabled_hint_runs_as_printed(cli, isolated_env):
    (isolated_env / "profiles.toml").write_text('schema_version = 1\ndefault = "local"\n')
    assert cli("settings", "set", "sending_enabled", "false").exit_code == 0
    cli("queue", "add", input=RAW)
    r = cli("queue", "flush")
    assert r.exit_code == 0 and "Sending is disabled" in r.stderr
    hint = r.stderr.split("Enable with: mailctl ", 1)[1].split()
    assert hint == ["settings", "set", "sending_enabled", "true"]
    assert cli(*hint).exit_code == 0
    r = cli("queue", "flush")
    assert r.exit_code == 0 and "Sent 1" in r.stderr
