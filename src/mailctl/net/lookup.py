"""Host-name lookups with a deadline.

getaddrinfo() cannot be interrupted, and glibc's resolver waits its own timeouts (5 s a try,
per nameserver, `attempts` times) whatever the caller's deadline. resolve() runs it in a
daemon thread and waits at most `timeout`; on expiry it raises LookupTimeout, which the
calling stage turns into its own error (transports.smtp at the resolve stage, net.proxy in
the proxy handshake, net.http in the connect of every HTTP request and of its proxy).

A lookup that outlives its caller goes on in the background. Threads are bounded: a caller
asking for the same (host, port) while a lookup of it is pending waits for that one instead of
starting another, and at most MAX_PENDING lookups are alive at once (a stuck resolver cannot
pile up threads across retries). IP literals, and names this machine answers from /etc/hosts
before asking DNS, are looked up in the calling thread: they cannot hang, and cost no thread."""

from __future__ import annotations

import os
import socket
import threading
import time

MAX_PENDING = 4  # lookups alive at once; more wait for one of them to end
HOSTS_FILE = "/etc/hosts"
NSSWITCH_FILE = "/etc/nsswitch.conf"


class LookupTimeout(TimeoutError):
    """getaddrinfo gave no answer within the deadline. `waited` is how long this caller
    waited; `busy` is True when it waited for a free lookup slot, not for its own lookup."""

    def __init__(self, host: str, timeout: float, waited: float, *, busy: bool = False):
        why = f" ({MAX_PENDING} earlier lookups are still waiting for the resolver)" if busy else ""
        super().__init__(f"no answer from the resolver for {host} within {timeout:g}s{why}")
        self.host = host
        self.timeout = timeout
        self.waited = waited
        self.busy = busy


class _Lookup:
    """One getaddrinfo call in flight: its outcome, once `done` is set."""

    __slots__ = ("done", "result", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: list[tuple] = []
        self.error: BaseException | None = None


_pending: dict[tuple, _Lookup] = {}
_slots = threading.Condition()  # guards _pending; notified when a lookup ends


def resolve(host: str, port: int | str | None, *, timeout: float, type: int = socket.SOCK_STREAM,
            family: int = 0) -> list[tuple]:
    """socket.getaddrinfo(host, port, family, type), the same addresses in the same order and
    the same socket.gaierror for an unknown name, but waiting at most `timeout` seconds:
    LookupTimeout (a TimeoutError) after that."""
    if answers_at_once(host):
        return socket.getaddrinfo(host, port, family, type)
    start = time.monotonic()
    end = start + timeout
    lookup = _join_or_start((host, port, family, type), host, timeout, start, end)
    if not lookup.done.wait(max(0.0, end - time.monotonic())):
        raise LookupTimeout(host, timeout, time.monotonic() - start)
    if lookup.error is not None:
        raise lookup.error
    return list(lookup.result)


def _join_or_start(key: tuple, host: str, timeout: float, start: float, end: float) -> _Lookup:
    """The pending lookup of `key`, or a new one once fewer than MAX_PENDING are alive
    (LookupTimeout when none ends before `end`)."""
    with _slots:
        while key not in _pending and len(_pending) >= MAX_PENDING:
            left = end - time.monotonic()
            if left <= 0:
                raise LookupTimeout(host, timeout, time.monotonic() - start, busy=True)
            _slots.wait(left)
        lookup = _pending.get(key)
        if lookup is None:
            lookup = _pending[key] = _Lookup()
            threading.Thread(target=_run, args=(key, lookup), name=f"mailctl-lookup {host}", daemon=True).start()
        return lookup


def _run(key: tuple, lookup: _Lookup) -> None:
    """The thread's body: the libc call, its outcome kept for every caller waiting for it."""
    host, port, family, type_ = key
    try:
        lookup.result = socket.getaddrinfo(host, port, family, type_)
    except Exception as exc:  # gaierror, UnicodeError for a bad IDNA name...: the callers' to raise
        lookup.error = exc
    finally:
        with _slots:
            _pending.pop(key, None)
            _slots.notify_all()
        lookup.done.set()


def answers_at_once(host: str) -> bool:
    """Whether getaddrinfo answers `host` without asking DNS: an IP literal, or a name of
    /etc/hosts when the hosts line of /etc/nsswitch.conf consults files first."""
    return is_ip_literal(host) or host.lower() in _hosts_first_names()


def is_ip_literal(host: str) -> bool:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
            return True
        except (OSError, ValueError, TypeError):
            pass
    return False


_hosts_cache: tuple[tuple, frozenset[str]] = ((), frozenset())


def _hosts_first_names() -> frozenset[str]:
    """The names of /etc/hosts (lower case) if glibc looks there before DNS, else none;
    read again only when either file changes."""
    global _hosts_cache
    stamp = (_stamp(NSSWITCH_FILE), _stamp(HOSTS_FILE))
    if stamp != _hosts_cache[0]:
        names = _hosts_names(HOSTS_FILE) if _files_first(NSSWITCH_FILE) else frozenset()
        _hosts_cache = (stamp, names)
    return _hosts_cache[1]


def _stamp(path: str) -> tuple:
    try:
        st = os.stat(path)
    except OSError:
        return (None,)
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _read(path: str) -> list[list[str]]:
    """The fields of each line, comments dropped ([] when the file cannot be read)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return [line.split("#", 1)[0].split() for line in fh]
    except OSError:
        return []


def _files_first(path: str) -> bool:
    """Whether the `hosts:` database's first source is `files` (glibc's default without the
    file is DNS first: False)."""
    for fields in _read(path):
        if fields and fields[0] == "hosts:":
            return len(fields) > 1 and fields[1] == "files"
    return False


def _hosts_names(path: str) -> frozenset[str]:
    names: set[str] = set()
    for fields in _read(path):
        if len(fields) >= 2 and is_ip_literal(fields[0].split("%", 1)[0]):
            names.update(name.lower() for name in fields[1:])
    return frozenset(names)
