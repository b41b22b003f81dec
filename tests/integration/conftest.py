"""Fixtures for the integration suite; the services themselves live in integration_services.py
(importable by the tests under that unique name). See docs/testing.md."""

from __future__ import annotations

from typing import Iterator

import pytest

from integration_services import (
    PostfixServer,
    SecretService,
    postfix_skip_reason,
    running_postfix,
    running_secret_service,
    secret_service_skip_reason,
)


@pytest.fixture(scope="session")
def postfix_server() -> Iterator[PostfixServer]:
    reason = postfix_skip_reason()
    if reason:
        pytest.skip(reason)
    # Ports are picked free, then bound by Postfix: another test run on the machine may take
    # one in between. Such a start fails fast (master exits); try again with new ports.
    for attempt in range(3):
        services = running_postfix()
        try:
            server = services.__enter__()
        except RuntimeError:
            if attempt == 2:
                raise
            continue
        break
    try:
        yield server
    finally:
        services.__exit__(None, None, None)


@pytest.fixture(scope="session")
def secret_service_daemon() -> Iterator[SecretService]:
    reason = secret_service_skip_reason()
    if reason:
        pytest.skip(reason)
    with running_secret_service() as svc:
        yield svc


@pytest.fixture
def secret_service(secret_service_daemon, monkeypatch) -> Iterator[SecretService]:
    """The real Secret Service as keyring's backend for one test (restored afterwards; the
    autouse in-memory keyring of tests/conftest.py is what comes back)."""
    import keyring
    from keyring.backends import SecretService as SecretServiceBackend

    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", secret_service_daemon.bus_address)
    previous = keyring.get_keyring()
    backend = SecretServiceBackend.Keyring()
    keyring.set_keyring(backend)
    try:
        yield secret_service_daemon
    finally:
        keyring.set_keyring(previous)

