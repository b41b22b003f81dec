"""Numbers the command line cannot use are usage errors (2) at once: never a hang or a crash
later (inf, nan and huge timeouts once made every connection raise OverflowError or wait
forever); a finished-state choice outside its set is 2 as well (the usage rule, README)."""

from __future__ import annotations

import time

import pytest


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e308"])
def test_dns_timeout_must_be_finite_and_sane(cli, value):
    start = time.monotonic()
    r = cli("dns", "check-spf", "example.com", "--timeout", value)
    assert r.exit_code == 2, r.output
    assert "--timeout" in r.output and "Traceback" not in r.output
    assert time.monotonic() - start < 10


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_auth_login_timeout_must_be_finite(cli, value):
    r = cli("auth", "login", "company", "--timeout", value)
    assert r.exit_code == 2, r.output


def test_queue_purge_state_outside_the_choice_is_usage(cli):
    r = cli("queue", "purge", "--state", "queued")
    assert r.exit_code == 2, r.output
    assert "sent, failed, expired" in r.output
