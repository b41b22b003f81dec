"""Exit codes of `mailctl send` and `sendmail` are decided in the outbox (SendOutcome.exit_code,
outbox.sendmail.sendmail_exit_code); the command modules only render them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mailctl.errors import ExitCode
from mailctl.outbox.sendmail import sendmail_exit_code
from mailctl.outbox.service import SendOutcome

COMMANDS = Path(__file__).resolve().parents[1] / "src" / "mailctl" / "commands"


@pytest.mark.parametrize(
    ("outcome", "sending_enabled", "send", "sendmail"),
    [
        ("sent", True, ExitCode.OK, ExitCode.OK),
        ("queued", True, ExitCode.OK, ExitCode.OK),  # --queue / -odq, or another flush took it
        ("queued", False, ExitCode.TEMPFAIL, ExitCode.OK),  # sending disabled in the settings
        ("deferred", True, ExitCode.TEMPFAIL, ExitCode.OK),  # 4xx: stays queued for the next flush
        ("failed", True, ExitCode.PROBLEMS, ExitCode.PROBLEMS),  # 5xx
        ("expired", True, ExitCode.PROBLEMS, ExitCode.PROBLEMS),
    ],
)
def test_exit_codes_of_send_and_sendmail(outcome, sending_enabled, send, sendmail):
    result = SendOutcome(7, outcome, "reply", sending_enabled=sending_enabled)
    assert result.exit_code is send
    assert sendmail_exit_code(result) is sendmail


def test_exit_code_is_not_part_of_the_json():
    data = SendOutcome(1, "deferred", "451 try later").to_dict()
    assert "exit_code" not in data and data["outcome"] == "deferred"


def test_commands_raise_no_literal_exit_codes():
    literal = re.compile(r"typer\.Exit\(\s*\d")
    found = [f"{path.name}:{n}" for path in sorted(COMMANDS.glob("*.py"))
             for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if literal.search(line)]
    assert not found, f"use an ExitCode member or a report's exit_code: {found}"
