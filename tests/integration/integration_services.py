"""Real system services for the integration suite: Postfix + Dovecot SASL, and a
gnome-keyring Secret Service.

Everything runs on 127.0.0.1 high ports out of a private temporary directory, is started by a
fixture and stopped by PID afterwards (also when a test fails). The system configuration in
/etc/postfix and /etc/dovecot is never read for settings nor written. docs/testing.md explains
how to run these services by hand.

Postfix layout (one private `master -c DIR -d`, session-scoped, several smtpd listeners):

- submission: STARTTLS with a certificate from a test CA (trustme), AUTH only after TLS
  (smtpd_tls_auth_only=yes) through Dovecot SASL;
- selfsigned: the same, but a self-signed certificate that no CA vouches for;
- plainauth: no TLS at all and AUTH offered in plaintext (to prove mailctl refuses to send
  AUTH on an unencrypted connection by itself);
- notls: no TLS, AUTH not offered (STARTTLS-not-offered and plain relay checks).

Recipients at test.example are delivered by virtual(8) into one Maildir
(`PostfixServer.maildir`); `reject@test.example` is refused with 550 5.1.1 and
`defer@test.example` with 450 4.2.0 at RCPT time; any other domain is refused as relaying
for unauthenticated clients and never leaves the machine (default_transport = error).
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import os
import pwd
import grp
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator


POSTFIX_DAEMON_DIR = Path("/usr/lib/postfix/sbin")
POSTFIX_MASTER = POSTFIX_DAEMON_DIR / "master"
DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"

DOMAIN = "test.example"
USER = f"alice@{DOMAIN}"
PASSWORD = "Corr3ct-h0rse-b4ttery-st4ple"
ACCEPT = f"bob@{DOMAIN}"
REJECT = f"reject@{DOMAIN}"
DEFER = f"defer@{DOMAIN}"
HOST = "127.0.0.1"


# --- helpers -----------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen | None = None, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((HOST, port), timeout=0.5) as s:
                s.settimeout(2)
                banner = s.recv(512)
                if banner.startswith(b"220"):
                    s.sendall(b"QUIT\r\n")
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{what} is not answering on {HOST}:{port} after {timeout}s")


def wait_for_path(path: Path, timeout: float, proc: subprocess.Popen | None = None, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode} before creating {path}")
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not create {path} within {timeout}s")


def _die_with_parent() -> None:
    """preexec_fn: the service gets SIGTERM when the pytest process dies, even by SIGKILL
    (Linux PR_SET_PDEATHSIG), so a killed test run leaves no daemons behind."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # not Linux/glibc: teardown still stops it by PID
        pass


def spawn(args: list[str], **kwargs) -> subprocess.Popen:
    """Start a service in its own session (so a stop can take its whole process group)."""
    return subprocess.Popen(args, start_new_session=True, preexec_fn=_die_with_parent, **kwargs)


WATCHDOG = r"""
import ctypes, os, signal, sys, time
pids = [int(p) for p in sys.argv[1:]]
def stop(*_):
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.killpg(pid, sig)
            except OSError:
                pass
        time.sleep(2)
    os._exit(0)
signal.signal(signal.SIGTERM, stop)
try:
    ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)
except Exception:
    pass
parent = int(os.environ["MAILCTL_WATCHDOG_PARENT"])
while True:
    if os.getppid() != parent:
        stop()
    time.sleep(1)
"""


def start_watchdog(procs: list[subprocess.Popen]) -> subprocess.Popen:
    """A small process that stops the services' process groups if pytest dies without its
    teardown (SIGKILL, a CI timeout). Needed because Postfix's master changes its effective
    uid, which clears PR_SET_PDEATHSIG. Normal teardown kills the watchdog first."""
    import sys

    env = dict(os.environ, MAILCTL_WATCHDOG_PARENT=str(os.getpid()))
    return subprocess.Popen(
        [sys.executable, "-c", WATCHDOG, *(str(p.pid) for p in procs)],
        stdin=subprocess.DEVNULL, env=env, start_new_session=True,
    )


def stop_watchdog(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait(5)


def private_tempdir(prefix: str) -> Path:
    """A 0755 temporary directory whose parents the unprivileged service users can traverse
    (pytest's tmp_path lives under a 0700 directory)."""
    base = Path(tempfile.gettempdir())
    for parent in [base, *base.parents]:
        if not os.stat(parent).st_mode & 0o001:
            base = Path("/tmp")
            break
    root = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    os.chmod(root, 0o755)
    return root


def stop_pid(proc: subprocess.Popen, timeout: float = 10) -> None:
    """SIGTERM the process (Postfix's master and Dovecot stop their children on TERM),
    then SIGKILL its whole process group if it lingers."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    # Children that ignored TERM (started in the same new session) go with the group.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no {path})"


def make_ca_and_certs(root: Path) -> dict[str, Path]:
    """A test CA with a server certificate for 127.0.0.1/localhost, and a self-signed
    certificate for the same names that no CA vouches for."""
    import trustme

    tls = root / "tls"
    tls.mkdir(mode=0o755)
    ca = trustme.CA(organization_name="mailctl integration test CA")
    leaf = ca.issue_cert(HOST, "localhost", f"mail.{DOMAIN}")
    paths = {
        "ca": tls / "ca.pem",
        "cert": tls / "server-chain.pem",
        "key": tls / "server.key",
        "self_cert": tls / "selfsigned.pem",
        "self_key": tls / "selfsigned.key",
    }
    ca.cert_pem.write_to_path(str(paths["ca"]))
    leaf.private_key_pem.write_to_path(str(paths["key"]))
    with open(paths["cert"], "wb") as f:
        for blob in leaf.cert_chain_pems:
            f.write(blob.bytes())
    # A truly self-signed server certificate (its own issuer) that no CA vouches for.
    cert_pem, key_pem = self_signed_cert([HOST, "localhost"])
    paths["self_cert"].write_bytes(cert_pem)
    paths["self_key"].write_bytes(key_pem)
    for p in (paths["key"], paths["self_key"]):
        os.chmod(p, 0o600)
    return paths


def self_signed_cert(names: list[str]) -> tuple[bytes, bytes]:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    sans = []
    for n in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(key, hashes.SHA256())
    )
    return (
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )


def cert_sha256(pem_path: Path) -> str:
    import hashlib
    import ssl

    der = ssl.PEM_cert_to_DER_cert(pem_path.read_text().split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n")
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


# --- Postfix + Dovecot ---------------------------------------------------------
@dataclass
class SmtpEndpoint:
    """One smtpd listener of the test Postfix."""

    name: str
    host: str
    port: int
    starttls: bool
    auth_before_tls: bool


@dataclass
class PostfixServer:
    root: Path
    host: str
    port: int  # submission: STARTTLS, AUTH (Dovecot SASL) only after TLS
    ca_file: Path  # the CA that signed the submission certificate
    cert_file: Path
    selfsigned_cert: Path
    selfsigned_fingerprint: str  # SHA-256 of the self-signed certificate, colon-separated
    username: str
    password: str
    domain: str
    accept: str  # a recipient that is delivered to the Maildir
    reject: str  # refused with 550 5.1.1 at RCPT
    defer: str  # refused with 450 4.2.0 at RCPT
    maildir: Path
    maillog: Path
    dovecot_log: Path
    endpoints: dict[str, SmtpEndpoint] = field(default_factory=dict)
    master_pid: int = 0
    dovecot_pid: int = 0

    # -- other listeners -----------------------------------------------------
    @property
    def selfsigned(self) -> SmtpEndpoint:
        return self.endpoints["selfsigned"]

    @property
    def plainauth(self) -> SmtpEndpoint:
        return self.endpoints["plainauth"]

    @property
    def notls(self) -> SmtpEndpoint:
        return self.endpoints["notls"]

    # -- delivered mail ------------------------------------------------------
    def message_files(self) -> list[Path]:
        found = []
        for sub in ("new", "cur"):
            d = self.maildir / sub
            if d.is_dir():
                found.extend(p for p in d.iterdir() if p.is_file())
        return sorted(found)

    def messages(self) -> list[email.message.EmailMessage]:
        out = []
        for p in self.message_files():
            with contextlib.suppress(FileNotFoundError):
                out.append(email.message_from_bytes(p.read_bytes(), policy=email.policy.default))
        return out

    def wait_for_messages(
        self, predicate: Callable[[email.message.EmailMessage], bool], count: int = 1, timeout: float = 20
    ) -> list[email.message.EmailMessage]:
        """Delivered messages matching predicate, waiting until at least `count` arrived."""
        deadline = time.monotonic() + timeout
        while True:
            hits = [m for m in self.messages() if predicate(m)]
            if len(hits) >= count or time.monotonic() > deadline:
                return hits
            time.sleep(0.1)

    def wait_for_message(self, predicate, timeout: float = 20) -> email.message.EmailMessage:
        hits = self.wait_for_messages(predicate, 1, timeout)
        if not hits:
            raise AssertionError(
                f"no matching message delivered to {self.maildir} within {timeout}s\n"
                f"--- maillog ---\n{tail(self.maillog)}"
            )
        return hits[0]

    def by_subject(self, subject: str, timeout: float = 20) -> email.message.EmailMessage:
        return self.wait_for_message(lambda m: m["Subject"] == subject, timeout)

    def log(self) -> str:
        return self.maillog.read_text(errors="replace") if self.maillog.exists() else ""

    def wait_for_log(self, pattern: str, since: int = 0, timeout: float = 10) -> str:
        """The maillog text after offset `since`, once a line matches `pattern` (Postfix logs
        through postlogd, a moment after the fact)."""
        import re

        deadline = time.monotonic() + timeout
        while True:
            text = self.log()[since:]
            if re.search(pattern, text) or time.monotonic() > deadline:
                if not re.search(pattern, text):
                    raise AssertionError(f"no log line matching {pattern!r} within {timeout}s:\n{text[-3000:]}")
                return text
            time.sleep(0.05)

    def dovecot_log_text(self) -> str:
        return self.dovecot_log.read_text(errors="replace") if self.dovecot_log.exists() else ""


def postfix_skip_reason() -> str | None:
    missing = [p for p in (str(POSTFIX_MASTER), DOVECOT, "/usr/sbin/postconf") if not Path(p).exists()]
    if missing:
        return (
            "Postfix/Dovecot binaries absent (" + ", ".join(missing) + "): install the Debian "
            "packages postfix and dovecot-core (.ci/run does)"
        )
    for user in ("postfix", "dovecot", "dovenull"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            return f"system user {user!r} missing: reinstall the Debian packages postfix and dovecot-core"
    if os.geteuid() != 0:
        return "Postfix's master(8) must be started as root (CI runs as root); run the integration suite as root"
    return None


MAIN_CF = """\
# Private test instance written by tests/integration/conftest.py. Not the system Postfix.
compatibility_level = 3.6
config_directory = {root}/etc
queue_directory = {root}/spool
data_directory = {root}/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
meta_directory = /etc/postfix
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
maillog_file_prefixes = {root}
maillog_file = {root}/maillog
myhostname = mail.{domain}
mydomain = {domain}
myorigin = $mydomain
mydestination =
inet_interfaces = {host}
inet_protocols = ipv4
mynetworks = {host}/32
alias_maps =
alias_database =
local_recipient_maps =
biff = no
append_dot_mydomain = no
smtputf8_enable = yes
# Nothing ever leaves this machine.
default_transport = error:mail to other domains is disabled in the mailctl test server
relay_transport = error:mail to other domains is disabled in the mailctl test server
relayhost =
# Local delivery: every address at the test domain goes to one Maildir.
virtual_mailbox_domains = {domain}
virtual_mailbox_base = {root}/mail
virtual_mailbox_maps = static:inbox/
virtual_minimum_uid = 1
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
# Recipients refused with 5xx / 4xx at RCPT time.
smtpd_relay_restrictions = permit_sasl_authenticated, reject_unauth_destination
smtpd_recipient_restrictions = check_recipient_access texthash:{root}/etc/recipient_access, permit
# TLS + SASL (per listener overrides in master.cf).
smtpd_tls_cert_file = {cert}
smtpd_tls_key_file = {key}
smtpd_tls_security_level = may
smtpd_tls_auth_only = yes
smtpd_tls_loglevel = 1
smtpd_sasl_type = dovecot
smtpd_sasl_path = {root}/sasl/auth
smtpd_sasl_auth_enable = yes
smtpd_sasl_authenticated_header = no
broken_sasl_auth_clients = no
smtpd_banner = $myhostname ESMTP mailctl-test-postfix
# Fast tests: no long waits on errors, queue runs often.
smtpd_error_sleep_time = 0
smtpd_soft_error_limit = 100
smtpd_hard_error_limit = 200
queue_run_delay = 2s
minimal_backoff_time = 2s
maximal_backoff_time = 10s
maximal_queue_lifetime = 1h
bounce_queue_lifetime = 1h
delay_warning_time = 0
in_flow_delay = 0
message_size_limit = 20480000
"""

MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command + args
{host}:{submission} inet n - n - - smtpd
  -o syslog_name=postfix/submission
{host}:{selfsigned} inet n - n - - smtpd
  -o syslog_name=postfix/selfsigned
  -o smtpd_tls_cert_file={self_cert}
  -o smtpd_tls_key_file={self_key}
{host}:{plainauth} inet n - n - - smtpd
  -o syslog_name=postfix/plainauth
  -o smtpd_tls_security_level=none
  -o smtpd_tls_auth_only=no
{host}:{notls} inet n - n - - smtpd
  -o syslog_name=postfix/notls
  -o smtpd_tls_security_level=none
  -o smtpd_sasl_auth_enable=no
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

DOVECOT_CONF = """\
# Private test instance written by tests/integration/conftest.py: SASL only, no IMAP/POP3.
protocols = none
listen = 127.0.0.1
base_dir = {root}/dovecot/run
state_dir = {root}/dovecot/state
instance_name = mailctl-test-{port}
log_path = {root}/dovecot.log
info_log_path = {root}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_verbose = yes
auth_failure_delay = 0
default_internal_user = dovecot
default_login_user = dovenull
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/dovecot/users
}}
userdb {{
  driver = static
  args = uid=dovecot gid=dovecot home={root}/dovecot/home/%u
}}
service auth {{
  unix_listener {root}/sasl/auth {{
    mode = 0666
  }}
}}
# No auth penalty (doubling delays per failed login from 127.0.0.1 would slow every later test).
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
service stats {{
  unix_listener stats-reader {{
    mode = 0600
  }}
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
"""

RECIPIENT_ACCESS = """\
{reject}  550 5.1.1 User unknown (mailctl test)
{defer}   450 4.2.0 Try again later (mailctl test)
"""


def _mkdir(path: Path, mode: int, owner: str = "root", group: str | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, pwd.getpwnam(owner).pw_uid, grp.getgrnam(group).gr_gid if group else pwd.getpwnam(owner).pw_gid)
    os.chmod(path, mode)
    return path


def _write_postfix(root: Path, tls: dict[str, Path], ports: dict[str, int]) -> None:
    pf = pwd.getpwnam("postfix")
    etc = _mkdir(root / "etc", 0o755)
    spool = _mkdir(root / "spool", 0o755)
    _mkdir(root / "spool" / "pid", 0o755)
    # The queue layout of Postfix's postfix-files (what `postfix set-permissions` creates).
    for sub in ("active", "bounce", "corrupt", "defer", "deferred", "flush", "hold", "incoming", "private", "saved", "trace"):
        _mkdir(spool / sub, 0o700, "postfix")
    _mkdir(spool / "maildrop", 0o730, "postfix", "postdrop")
    _mkdir(spool / "public", 0o710, "postfix", "postdrop")
    _mkdir(root / "data", 0o700, "postfix")
    _mkdir(root / "mail", 0o755, "postfix")
    _mkdir(root / "sasl", 0o755)
    (etc / "main.cf").write_text(
        MAIN_CF.format(root=root, domain=DOMAIN, host=HOST, uid=pf.pw_uid, gid=pf.pw_gid, cert=tls["cert"], key=tls["key"])
    )
    (etc / "master.cf").write_text(MASTER_CF.format(host=HOST, self_cert=tls["self_cert"], self_key=tls["self_key"], **ports))
    (etc / "recipient_access").write_text(RECIPIENT_ACCESS.format(reject=REJECT, defer=DEFER))


def _write_dovecot(root: Path, port: int) -> Path:
    _mkdir(root / "dovecot", 0o755)
    _mkdir(root / "dovecot" / "run", 0o755)
    _mkdir(root / "dovecot" / "state", 0o755)
    users = root / "dovecot" / "users"
    users.write_text(f"{USER}:{{PLAIN}}{PASSWORD}::::::\n")
    os.chown(users, 0, grp.getgrnam("dovecot").gr_gid)
    os.chmod(users, 0o640)
    conf = root / "dovecot" / "dovecot.conf"
    conf.write_text(DOVECOT_CONF.format(root=root, port=port))
    return conf


@contextlib.contextmanager
def running_postfix() -> Iterator[PostfixServer]:
    """Start Dovecot (SASL only) and a private Postfix master; stop both by PID on exit."""
    # Not pytest's tmp_path: its parents are 0700 and Postfix's daemons run as `postfix`.
    root = private_tempdir("mailctl-postfix-")
    procs: list[subprocess.Popen] = []
    watchdog = None
    try:
        tls = make_ca_and_certs(root)
        ports = {name: free_port() for name in ("submission", "selfsigned", "plainauth", "notls")}
        _write_postfix(root, tls, ports)
        conf = _write_dovecot(root, ports["submission"])

        dovecot = spawn(
            [DOVECOT, "-F", "-c", str(conf)],
            stdin=subprocess.DEVNULL, stdout=open(root / "dovecot.out", "wb"), stderr=subprocess.STDOUT,
        )
        procs.append(dovecot)
        try:
            wait_for_path(root / "sasl" / "auth", 15, dovecot, "dovecot")
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{tail(root / 'dovecot.out')}\n{tail(root / 'dovecot.log')}") from None

        master = spawn(
            [str(POSTFIX_MASTER), "-c", str(root / "etc"), "-d"],
            stdin=subprocess.DEVNULL, stdout=open(root / "master.out", "wb"), stderr=subprocess.STDOUT,
            cwd=str(root / "spool"),
        )
        procs.append(master)
        watchdog = start_watchdog(procs)
        try:
            for name, port in ports.items():
                wait_for_port(port, 20, master, f"postfix master ({name})")
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{tail(root / 'master.out')}\n{tail(root / 'maillog')}") from None

        server = PostfixServer(
            root=root,
            host=HOST,
            port=ports["submission"],
            ca_file=tls["ca"],
            cert_file=tls["cert"],
            selfsigned_cert=tls["self_cert"],
            selfsigned_fingerprint=cert_sha256(tls["self_cert"]),
            username=USER,
            password=PASSWORD,
            domain=DOMAIN,
            accept=ACCEPT,
            reject=REJECT,
            defer=DEFER,
            maildir=root / "mail" / "inbox",
            maillog=root / "maillog",
            dovecot_log=root / "dovecot.log",
            endpoints={
                "submission": SmtpEndpoint("submission", HOST, ports["submission"], True, False),
                "selfsigned": SmtpEndpoint("selfsigned", HOST, ports["selfsigned"], True, False),
                "plainauth": SmtpEndpoint("plainauth", HOST, ports["plainauth"], False, True),
                "notls": SmtpEndpoint("notls", HOST, ports["notls"], False, False),
            },
            master_pid=master.pid,
            dovecot_pid=dovecot.pid,
        )
        yield server
    finally:
        stop_watchdog(watchdog)
        for proc in reversed(procs):
            stop_pid(proc)
        if os.environ.get("MAILCTL_KEEP_SERVICES"):
            print(f"\n[mailctl] integration services' files kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


# --- a Postfix configured the way production relays refuse (issue #15) ----------------
# Each listener carries one production restriction; tests/integration/test_postfix_refusals.py
# checks that mailctl names the cause of each refusal and exits with the code of its class.
REFUSAL_LISTENERS = """\
{host}:{senderlogin} inet n - n - - smtpd
  -o syslog_name=postfix/senderlogin
  -o smtpd_sender_login_maps=texthash:{root}/etc/sender_logins
  -o smtpd_sender_restrictions=reject_sender_login_mismatch
{host}:{clientdenied} inet n - n - - smtpd
  -o syslog_name=postfix/clientdenied
  -o smtpd_tls_security_level=none
  -o smtpd_sasl_auth_enable=no
  -o smtpd_delay_reject=no
  -o smtpd_client_restrictions=check_client_access,texthash:{root}/etc/client_access
{host}:{policy} inet n - n - - smtpd
  -o syslog_name=postfix/policy
  -o smtpd_tls_security_level=none
  -o smtpd_sasl_auth_enable=no
  -o smtpd_sender_restrictions=check_sender_access,texthash:{root}/etc/sender_access
  -o smtpd_recipient_restrictions=check_recipient_access,texthash:{root}/etc/policy_recipients,permit
{host}:{helo} inet n - n - - smtpd
  -o syslog_name=postfix/helo
  -o smtpd_tls_security_level=none
  -o smtpd_sasl_auth_enable=no
  -o smtpd_helo_required=yes
  -o smtpd_helo_restrictions=reject_non_fqdn_helo_hostname
{host}:{small} inet n - n - - smtpd
  -o syslog_name=postfix/small
  -o smtpd_tls_security_level=none
  -o smtpd_sasl_auth_enable=no
  -o message_size_limit={size_limit}
{host}:{conncount} inet n - n - - smtpd
  -o syslog_name=postfix/conncount
  -o smtpd_tls_security_level=none
  -o smtpd_sasl_auth_enable=no
  -o smtpd_client_connection_count_limit=1
  -o smtpd_client_event_limit_exceptions=192.0.2.1
{host}:{msgrate} inet n - n - - smtpd
  -o syslog_name=postfix/msgrate
  -o smtpd_tls_security_level=none
  -o smtpd_sasl_auth_enable=no
  -o smtpd_client_message_rate_limit=1
  -o smtpd_client_event_limit_exceptions=192.0.2.1
"""
REFUSAL_PORTS = ("senderlogin", "clientdenied", "policy", "helo", "small", "conncount", "msgrate")
NOT_OWNED = f"ceo@{DOMAIN}"  # an address alice's login does not own (sender login maps)
BLOCKED_SENDER = f"blocked@{DOMAIN}"  # refused by check_sender_access
DENIED_RCPT = f"denied@{DOMAIN}"  # refused by check_recipient_access (REJECT)
GREY_RCPT = f"grey@{DOMAIN}"  # deferred the way postgrey words it
SIZE_LIMIT = 4096


@dataclass
class RefusalPostfix:
    """A private Postfix whose listeners refuse as production relays do (see REFUSAL_LISTENERS)."""

    root: Path
    host: str
    ports: dict[str, int]
    ca_file: Path
    username: str
    password: str
    domain: str
    accept: str
    not_owned: str
    blocked_sender: str
    denied_rcpt: str
    grey_rcpt: str
    defer_rcpt: str
    size_limit: int
    maildir: Path
    maillog: Path

    def log(self) -> str:
        return self.maillog.read_text(errors="replace") if self.maillog.exists() else ""

    def message_count(self) -> int:
        return sum(1 for sub in ("new", "cur") if (self.maildir / sub).is_dir() for p in (self.maildir / sub).iterdir())


def wait_for_greeting(port: int, timeout: float, proc: subprocess.Popen, what: str) -> bytes:
    """Like wait_for_port, but any greeting counts (a listener may refuse in its greeting)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((HOST, port), timeout=0.5) as s:
                s.settimeout(2)
                banner = s.recv(512)
                if banner[:3].isdigit():
                    s.sendall(b"QUIT\r\n")
                    return banner
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{what} is not answering on {HOST}:{port} after {timeout}s")


def _write_refusal_maps(root: Path) -> None:
    etc = root / "etc"
    (etc / "sender_logins").write_text(f"{USER} {USER}\n")
    (etc / "client_access").write_text(f"{HOST} REJECT\n")
    (etc / "sender_access").write_text(f"{BLOCKED_SENDER} REJECT\n")
    (etc / "policy_recipients").write_text(
        f"{DENIED_RCPT} REJECT\n"
        f"{GREY_RCPT} 450 4.2.0 Greylisted, see http://postgrey.schweikert.ch/help/{DOMAIN}.html\n"
        f"{DEFER} 450 4.2.0 Try again later (mailctl test)\n"
    )


@contextlib.contextmanager
def running_refusal_postfix() -> Iterator[RefusalPostfix]:
    """Start Dovecot (SASL) and a private Postfix whose listeners refuse as production relays
    do; stop both by PID on exit. Its own directory, ports and PIDs: independent of
    running_postfix()."""
    root = private_tempdir("mailctl-postfix-refusals-")
    procs: list[subprocess.Popen] = []
    watchdog = None
    try:
        tls = make_ca_and_certs(root)
        ports = {name: free_port() for name in ("submission", "selfsigned", "plainauth", "notls", *REFUSAL_PORTS)}
        _write_postfix(root, tls, ports)  # main.cf, maps; master.cf is replaced below
        tail_services = MASTER_CF[MASTER_CF.index("cleanup "):]
        (root / "etc" / "master.cf").write_text(
            REFUSAL_LISTENERS.format(host=HOST, root=root, size_limit=SIZE_LIMIT, **ports) + tail_services)
        _write_refusal_maps(root)
        conf = _write_dovecot(root, ports["senderlogin"])
        dovecot = spawn([DOVECOT, "-F", "-c", str(conf)], stdin=subprocess.DEVNULL,
                        stdout=open(root / "dovecot.out", "wb"), stderr=subprocess.STDOUT)
        procs.append(dovecot)
        try:
            wait_for_path(root / "sasl" / "auth", 15, dovecot, "dovecot")
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{tail(root / 'dovecot.out')}\n{tail(root / 'dovecot.log')}") from None
        master = spawn([str(POSTFIX_MASTER), "-c", str(root / "etc"), "-d"], stdin=subprocess.DEVNULL,
                       stdout=open(root / "master.out", "wb"), stderr=subprocess.STDOUT, cwd=str(root / "spool"))
        procs.append(master)
        watchdog = start_watchdog(procs)
        try:
            for name in REFUSAL_PORTS:
                wait_for_greeting(ports[name], 20, master, f"postfix master ({name})")
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{tail(root / 'master.out')}\n{tail(root / 'maillog')}") from None
        yield RefusalPostfix(
            root=root, host=HOST, ports={n: ports[n] for n in REFUSAL_PORTS}, ca_file=tls["ca"], username=USER,
            password=PASSWORD, domain=DOMAIN, accept=ACCEPT, not_owned=NOT_OWNED, blocked_sender=BLOCKED_SENDER,
            denied_rcpt=DENIED_RCPT, grey_rcpt=GREY_RCPT, defer_rcpt=DEFER, size_limit=SIZE_LIMIT,
            maildir=root / "mail" / "inbox", maillog=root / "maillog",
        )
    finally:
        stop_watchdog(watchdog)
        for proc in reversed(procs):
            stop_pid(proc)
        if os.environ.get("MAILCTL_KEEP_SERVICES"):
            print(f"\n[mailctl] refusal Postfix's files kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


# --- mailctl profiles against the test server ------------------------------------
def write_profiles(home: Path, profiles: dict[str, dict], default: str | None = None, settings: dict | None = None) -> Path:
    """Write $MAILCTL_HOME/profiles.toml directly (the profile store reads it like any file)."""
    import tomlkit

    doc = tomlkit.document()
    doc["schema_version"] = 1
    if default or profiles:
        doc["default"] = default or next(iter(profiles))
    if settings:
        doc["settings"] = settings
    table = tomlkit.table()
    for name, values in profiles.items():
        table[name] = {k: (str(v) if isinstance(v, Path) else v) for k, v in values.items()}
    doc["profiles"] = table
    path = home / "profiles.toml"
    path.write_text(tomlkit.dumps(doc))
    os.chmod(path, 0o600)
    return path


def smtp_profile(server: PostfixServer, **overrides) -> dict:
    values = {
        "type": "smtp",
        "host": server.host,
        "port": server.port,
        "security": "starttls",
        "auth": "password",
        "username": server.username,
        "from_address": server.username,
        "ca_file": str(server.ca_file),
        "timeout": 10,
    }
    values.update(overrides)
    return {k: v for k, v in values.items() if v is not None}


# --- Secret Service (gnome-keyring) ----------------------------------------------
@dataclass
class SecretService:
    bus_address: str
    keyring_pid: int
    bus_pid: int | None  # a private dbus-daemon we started, or None (the session's bus)
    home: Path


def secret_service_skip_reason() -> str | None:
    missing = [b for b in ("gnome-keyring-daemon", "dbus-daemon") if not shutil.which(b)]
    if missing:
        return (
            "Secret Service binaries absent (" + ", ".join(missing) + "): install the Debian "
            "packages gnome-keyring and dbus (.ci/run does)"
        )
    try:
        import secretstorage  # noqa: F401
    except ImportError:
        return "the Python package secretstorage (a keyring dependency on Linux) is not installed"
    return None


def _bus_call(address: str, method: str, signature: str, args: tuple):
    from jeepney import DBusAddress, new_method_call
    from jeepney.io.blocking import open_dbus_connection

    with open_dbus_connection(bus=address) as conn:
        bus = DBusAddress("/org/freedesktop/DBus", bus_name="org.freedesktop.DBus", interface="org.freedesktop.DBus")
        reply = conn.send_and_get_reply(new_method_call(bus, method, signature, args), timeout=5)
        return reply.body[0]


def _secrets_owner_pid(address: str) -> int | None:
    """PID of the process that owns org.freedesktop.secrets on this bus, or None. Asks the
    bus itself: talking to the Secret Service before someone owns the name would make the bus
    *activate* one (gnome-keyring-daemon --start, locked, no password) instead of ours."""
    try:
        if not _bus_call(address, "NameHasOwner", "s", ("org.freedesktop.secrets",)):
            return None
        return int(_bus_call(address, "GetConnectionUnixProcessID", "s", ("org.freedesktop.secrets",)))
    except Exception:
        return None


def _start_private_bus(env: dict) -> tuple[subprocess.Popen, str]:
    proc = spawn(
        ["dbus-daemon", "--session", "--nofork", "--print-address=1", "--nopidfile"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
    )
    address = proc.stdout.readline().strip()
    if not address:
        stop_pid(proc)
        raise RuntimeError(f"dbus-daemon printed no address: {proc.stderr.read()}")
    return proc, address


def _wait_secret_service(address: str, timeout: float, proc: subprocess.Popen) -> None:
    from jeepney.io.blocking import open_dbus_connection

    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gnome-keyring-daemon exited with status {proc.returncode}")
        owner = _secrets_owner_pid(address)
        if owner is None:
            time.sleep(0.05)
            continue
        if owner != proc.pid:
            raise RuntimeError(
                f"org.freedesktop.secrets is owned by PID {owner}, not by our gnome-keyring-daemon ({proc.pid})"
            )
        try:
            import secretstorage

            with open_dbus_connection(bus=address) as conn:
                coll = secretstorage.get_default_collection(conn)
                if not coll.is_locked():
                    return
                last = "the default collection is locked"
        except Exception as exc:
            last = exc
        time.sleep(0.1)
    raise RuntimeError(f"the Secret Service did not come up within {timeout}s ({last!r})")


@contextlib.contextmanager
def running_secret_service() -> Iterator[SecretService]:
    """gnome-keyring-daemon --unlock --components=secrets in the current D-Bus session (CI:
    dbus-run-session), or in a private dbus-daemon when there is no session bus or when a
    Secret Service already serves it (never touch a desktop user's real keyring)."""
    home = Path(tempfile.mkdtemp(prefix="mailctl-keyring-"))  # 0700: it holds the keyring file
    runtime = home / "runtime"
    runtime.mkdir(mode=0o700)
    procs: list[subprocess.Popen] = []
    env = dict(os.environ, HOME=str(home), XDG_DATA_HOME=str(home / "data"), XDG_RUNTIME_DIR=str(runtime),
               XDG_CONFIG_HOME=str(home / "config"), XDG_CACHE_HOME=str(home / "cache"))
    bus_pid = None
    watchdog = None
    try:
        address = os.environ.get("DBUS_SESSION_BUS_ADDRESS", "")
        if not address or _secrets_owner_pid(address) is not None:
            bus, address = _start_private_bus(env)
            procs.append(bus)
            bus_pid = bus.pid
        env["DBUS_SESSION_BUS_ADDRESS"] = address
        daemon = spawn(
            ["gnome-keyring-daemon", "--foreground", "--unlock", "--components=secrets"],
            stdin=subprocess.PIPE, stdout=open(home / "gnome-keyring.out", "wb"), stderr=subprocess.STDOUT,
            env=env,
        )
        procs.append(daemon)
        watchdog = start_watchdog(procs)
        daemon.stdin.write(b"mailctl-test-keyring-password")
        daemon.stdin.close()
        try:
            _wait_secret_service(address, 20, daemon)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{tail(home / 'gnome-keyring.out')}") from None
        yield SecretService(bus_address=address, keyring_pid=daemon.pid, bus_pid=bus_pid, home=home)
    finally:
        stop_watchdog(watchdog)
        for proc in reversed(procs):
            stop_pid(proc)
        shutil.rmtree(home, ignore_errors=True)


# --- by hand ------------------------------------------------------------------------
def _main(argv: list[str]) -> int:
    """python tests/integration/integration_services.py [postfix|keyring|all]: start the
    services, print how to reach them, wait for Ctrl-C, stop them (docs/testing.md)."""
    what = argv[0] if argv else "all"
    if what not in ("postfix", "keyring", "all"):
        print("usage: integration_services.py [postfix|keyring|all]")
        return 2
    with contextlib.ExitStack() as stack:
        if what in ("postfix", "all"):
            reason = postfix_skip_reason()
            if reason:
                print(f"cannot start Postfix: {reason}")
                return 1
            pf = stack.enter_context(running_postfix())
            print(f"Postfix (master PID {pf.master_pid}, Dovecot PID {pf.dovecot_pid}), files in {pf.root}")
            for ep in pf.endpoints.values():
                print(f"  {ep.name:<11} {ep.host}:{ep.port}  STARTTLS={'yes' if ep.starttls else 'no'}")
            print(f"  user {pf.username}  password {pf.password}")
            print(f"  CA file {pf.ca_file}; self-signed SHA-256 {pf.selfsigned_fingerprint}")
            print(f"  deliver to {pf.accept} (Maildir {pf.maildir}); {pf.reject} -> 550, {pf.defer} -> 450")
            print(f"  maillog {pf.maillog}; dovecot log {pf.dovecot_log}")
            print("  profile:")
            print(f"    mailctl profile add itest --host {pf.host} --port {pf.port} --security starttls "
                  f"--auth password --username {pf.username} --from-address {pf.username} "
                  f"--ca-file {pf.ca_file} --password-stdin <<< '{pf.password}'")
        if what in ("keyring", "all"):
            reason = secret_service_skip_reason()
            if reason:
                print(f"cannot start the Secret Service: {reason}")
                return 1
            ss = stack.enter_context(running_secret_service())
            print(f"Secret Service: gnome-keyring-daemon PID {ss.keyring_pid} on")
            print(f"  export DBUS_SESSION_BUS_ADDRESS='{ss.bus_address}'")
            print("  export PYTHON_KEYRING_BACKEND=keyring.backends.SecretService.Keyring")
        print("Running; Ctrl-C (or SIGTERM) stops everything.", flush=True)

        def interrupt(*_):
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, interrupt)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("\nstopping")
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(_main(sys.argv[1:]))
