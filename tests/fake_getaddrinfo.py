"""A fake libc getaddrinfo for the host-name lookup deadline tests (test_lookup_deadline.py,
test_http_lookup_deadline.py): only the resolver is faked, every server and proxy is real.

Names: `*.stuck.test` blocks until released (far longer than any timeout there), then fails
as a resolver that never answered; `*.alias.test` answers with 127.0.0.1's addresses, and
`*.slow.test` too but after SLOW seconds; `nosuch.test` is EAI_NONAME; anything else goes to
the real getaddrinfo. Every call is recorded, the name as asked, with the thread it ran in."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from mailctl.net import lookup

REAL_GETADDRINFO = socket.getaddrinfo
SLOW = 0.7  # a lookup that answers, but takes most of a 1 s timeout
UNKNOWN = "nosuch.test"


class FakeResolver:
    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls: list[tuple[str, str]] = []

    def __call__(self, host, port, family=0, type=0, proto=0, flags=0):
        self.calls.append((host, threading.current_thread().name))  # as asked: case kept
        name = host.lower() if isinstance(host, str) else ""
        if ".stuck.test" in name:
            self.release.wait(30)
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        if name.endswith(".slow.test"):
            time.sleep(SLOW)
            return REAL_GETADDRINFO("127.0.0.1", port, family, type, proto, flags)
        if name.endswith(".alias.test"):
            return REAL_GETADDRINFO("127.0.0.1", port, family, type, proto, flags)
        if name == UNKNOWN:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return REAL_GETADDRINFO(host, port, family, type, proto, flags)

    def lookups_of(self, host: str) -> list[str]:
        """The threads the lookups of `host` ran in (mailctl's lookup threads or the test's own;
        the loopback servers' and proxies' threads resolve through the fake too)."""
        return [thread for name, thread in self.calls
                if name == host and (thread.startswith("mailctl-lookup ") or thread == threading.main_thread().name)]


def lookup_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("mailctl-lookup ") and t.is_alive()]


@pytest.fixture
def resolver(monkeypatch):
    """The fake in place (net.lookup and urllib3 share the socket module, so this is what both
    would call); afterwards the stuck lookups are released and their threads have ended, so no
    test inherits another's."""
    fake = FakeResolver()
    monkeypatch.setattr(lookup.socket, "getaddrinfo", fake)
    yield fake
    fake.release.set()
    for thread in lookup_threads():
        thread.join(5)
    assert not lookup_threads()
