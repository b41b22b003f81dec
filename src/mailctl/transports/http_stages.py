"""The stages of the HTTP API transports (graph, ews) for `mailctl test connect/send`.

Stages: lint warnings, token (or, for EWS basic auth, credentials) -> connect -> tls ->
request -> response. `--quit-after token|connect|tls` stops after that stage; the SMTP stage
names stop before the request (a profile switched from SMTP keeps working).
- token: the OAuth access token (delegated cache, client credentials or a stored static
  token) or, for EWS basic auth, where the password comes from. Never the value.
- connect / tls: a TCP connection and a TLS handshake to the API host with the profile's
  verification settings (ca_file, tls_verify), showing the protocol, cipher and certificate.
  Through a proxy these are folded into the request.
- request / response: `test connect` makes a harmless authenticated request (Graph: GET the
  mailbox; EWS: GetFolder Sent Items); `test send` sends the message (Graph sendMail / EWS
  CreateItem). A server that answered with an error passes `request` and fails `response`
  (with the API error code); a request that got no answer fails `request`.

The plans are generators of transports.base.Stage, driven by diagnostics.probe like the SMTP
transport's; nothing secret ever appears in a detail."""

from __future__ import annotations

import socket
import ssl
from typing import Any, Callable
from urllib.parse import urlsplit

from mailctl.errors import MailctlError, UnavailableError
from mailctl.knowledge.http import explain_ews, explain_graph
from mailctl.knowledge.smtp import Explanation, explain
from mailctl.net.certs import describe_shown
from mailctl.net.http import connect_within, redact_url
from mailctl.transports.base import Checkpoint, Stage, StageInfo
from mailctl.transports.http import bearer_token, proxies_for, tls_settings

# --quit-after names that stop before the API request: token stops after the credentials,
# connect before TLS; these (and the SMTP stage names) stop before the request.
BEFORE_REQUEST = ("token", "resolve", "connect", "tls", "banner", "ehlo", "starttls", "auth")


def probe_settings(transport) -> dict[str, Any]:
    profile = transport.profile
    values = profile.values
    out: dict[str, Any] = {
        "auth": values.get("auth") or None,
        "username": values.get("username") or None,
        "proxy": redact_url(values["proxy"]) if values.get("proxy") else None,
        "ca_file": values.get("ca_file") or None,
        "tls_verify": values.get("tls_verify", True),
        "save_to_sent_items": values.get("save_to_sent_items", True),
    }
    if profile.type == "graph":
        out["cloud"] = values.get("cloud") or "global"
        out["endpoint"] = transport.endpoint
    else:
        out["ews_url"] = transport.url or None
        out["autodiscover"] = bool(values.get("autodiscover"))
    out["warnings"] = warnings_of(profile)
    return out


def warnings_of(profile) -> list[str]:
    if profile.type != "ews":
        return []
    from mailctl.profiles.presets import ews_warnings

    return ews_warnings(profile)


def explain_http(profile, err: MailctlError, stage: str) -> Explanation | None:
    if err.explanation is not None:  # the stage knew better (a lookup without an answer)
        return err.explanation
    code = err.error_code
    status = err.http_status
    known = explain_graph(code, status) if profile.type == "graph" else explain_ews(code, status)
    if known is not None and (code or status):
        return Explanation(f"{profile.type}-{known.code}", known.meaning[0].upper() + known.meaning[1:] + ".",
                           (err.hint or known.hint).replace("PROFILE", profile.name), known.exit_code)
    if stage == "token" and isinstance(err, UnavailableError):
        return _identity_provider_unreachable(profile)
    host = urlsplit(profile.values.get("graph_endpoint") or profile.values.get("ews_url") or "").hostname
    return explain(err, stage=stage, context={"profile": profile.name, "host": host, "port": 443})


def _identity_provider_unreachable(profile) -> Explanation:
    """The token stage talks to the identity provider (login.microsoftonline.us for usgov),
    not to the Graph or EWS host: blame that host, and never suggest --host."""
    from mailctl.errors import ExitCode
    from mailctl.oauth.scopes import identity_provider_url

    host = urlsplit(identity_provider_url(profile)).hostname or "the identity provider"
    cloud = profile.values.get("cloud") or "global"
    where = (f"the login host follows cloud = {cloud} unless authority is set" if not profile.values.get("oauth_provider") == "generic"
             else "it is the token_url's host")
    return Explanation(
        "oauth-provider-unreachable",
        f"The identity provider {host} cannot be reached (DNS, network, firewall or proxy), so no token was "
        f"fetched; the {profile.type} host was not contacted.",
        f"Check that this machine resolves and reaches {host} (getent hosts {host}; {where}); if the network "
        f"needs a proxy: mailctl profile edit {profile.name} --proxy URL.",
        ExitCode.UNAVAILABLE,
    )


class _Plan:
    """The stages of one probe of a graph or ews transport."""

    def __init__(self, transport, message) -> None:
        self.transport = transport
        self.profile = transport.profile
        self.message = message
        self.target = transport.target

    def stage(self, name: str, run: Callable[[], Any] | None = None, describe=None, **kw: Any) -> Stage:
        kw.setdefault("server", self.target)
        return Stage(name, run, describe, explain=lambda err: explain_http(self.profile, err, name), **kw)

    def stages(self):
        for text in warnings_of(self.profile):
            yield self.stage("lint", lambda: None, lambda _v, t=text: StageInfo(f"warning: {t}"), stop_names=())
        yield self.credentials_stage()
        url = self.transport.endpoint if self.profile.type == "graph" else self.transport.url
        if url:
            yield from self.tls_stages(url)
        yield Checkpoint(self.target, BEFORE_REQUEST)
        if self.profile.type == "graph":
            yield from self.graph_request()
        else:
            yield from self.ews_request()

    # --- credentials ------------------------------------------------------------------
    def credentials_stage(self) -> Stage:
        profile, secrets, transport = self.profile, self.transport.secrets, self.transport
        auth = profile.values.get("auth") or ("password" if profile.type == "ews" else "oauth")
        if profile.type == "ews" and auth == "password":
            def password() -> str:
                secrets.require(profile, "password")
                return secrets.lookup(profile, "password")[1] or "secret store"

            who = profile.values.get("username") or transport.mailbox
            return self.stage("credentials", password,
                              lambda where: StageInfo(f"password for {who} from {where}", {"auth": "password", "source": where}),
                              stop_names=("token",))

        def token() -> tuple[bool, int]:
            value, static = bearer_token(profile, secrets)
            return static, len(value)

        def describe(v) -> StageInfo:
            static, _length = v
            kind = "static access_token secret" if static else (
                "client credentials (app-only)" if auth == "client-credentials" else "delegated token from `auth login`")
            return StageInfo(f"{kind}; token acquired (not shown)", {"auth": auth, "static": static})

        from mailctl.oauth.scopes import identity_provider_url

        # the token comes from the identity provider: that is the server of this stage
        return self.stage("token", token, describe, server=_host_of(identity_provider_url(profile)) or self.target)

    # --- connect and TLS ----------------------------------------------------------------
    def tls_stages(self, url: str):
        profile = self.profile
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
        proxies = proxies_for(profile, self.transport.secrets, url)
        proxy = proxies.get(parts.scheme) or proxies.get("https")
        if proxy:
            yield self.stage("connect", server=f"{host}:{port}", stop_names=(),
                             skipped=f"through the proxy {redact_url(proxy)}: checked by the request")
            return
        timeout = float(profile.values.get("timeout") or 30)

        def connect() -> socket.socket:
            from mailctl.net.http import connect_within, lookup_hint, lookup_timeout_message
            from mailctl.net.lookup import LookupTimeout

            try:
                return connect_within(host, port, timeout)  # the name's lookup within the timeout too
            except LookupTimeout as exc:
                err = UnavailableError(lookup_timeout_message(exc), hint=lookup_hint(exc, ""))
                err.explanation = Explanation(
                    "timeout", f"The DNS lookup of {host} got no answer within {timeout:g} s: the nameservers this "
                    "machine uses (/etc/resolv.conf) are slow, unreachable or not answering for this name.",
                    f"Check DNS with `getent hosts {host}` and the nameservers in /etc/resolv.conf; raise the timeout "
                    f"if DNS is slow here: mailctl profile edit {profile.name} --timeout 60.", err.exit_code)
                raise err from exc
            except socket.gaierror as exc:
                raise UnavailableError(f"cannot resolve {host}: {exc.strerror or exc}", hint="check the URL's host name and DNS") from exc
            except OSError as exc:
                raise UnavailableError(f"cannot connect to {host}:{port}: {exc.strerror or exc}",
                                       hint="check the URL, the network, a firewall, or set a proxy in the profile") from exc

        def peer(s: socket.socket) -> StageInfo:
            where = f"{s.getpeername()[0]}:{s.getpeername()[1]}"
            return StageInfo(where, {"peer": where})

        opened: list[socket.socket] = []  # closed however the plan ends (--quit-after connect too)

        def connect_once() -> socket.socket:
            opened.append(connect())
            return opened[0]

        try:
            sock = yield self.stage("connect", connect_once, peer)
            if parts.scheme != "https":
                yield self.stage("tls", server=f"{host}:{port}", stop_names=(),
                                 skipped="http:// URL: the connection is NOT encrypted")
                return
            yield from self.handshake_stage(sock, host, port, timeout)
        finally:
            for sock in opened:
                try:
                    sock.close()
                except OSError:
                    pass

    def handshake_stage(self, sock: socket.socket, host: str, port: int, timeout: float):
        profile = self.profile
        tls = tls_settings(profile)
        failed_facts: dict[str, Any] = {}

        def handshake() -> ssl.SSLSocket:
            if tls.verify is False:
                ctx = ssl._create_unverified_context()
            else:
                ctx = ssl.create_default_context(cafile=tls.verify if isinstance(tls.verify, str) else None)
            ctx.set_alpn_protocols(["http/1.1"])
            try:
                return ctx.wrap_socket(sock, server_hostname=host)
            except ssl.SSLCertVerificationError as exc:
                failed_facts.update(certificates=_unverified_chain(host, port, timeout),
                                    tls={"version": None, "cipher": None, "bits": None,
                                         "verification": f"FAILED: {exc.verify_message or exc.reason}"})
                raise UnavailableError(
                    f"TLS handshake with {host}:{port} failed: certificate verify failed: {exc.verify_message or exc.reason}",
                    hint="check the server certificate; for a private CA set ca_file in the profile (tls_verify = false only for testing)",
                ) from exc
            except (ssl.SSLError, OSError) as exc:
                raise UnavailableError(f"TLS handshake with {host}:{port} failed: {exc}", hint="check that the URL's port speaks HTTPS") from exc

        def describe(tsock: ssl.SSLSocket) -> StageInfo:
            cipher = tsock.cipher() or ("", "", 0)
            if tls.verify is False:
                verification = "NOT verified (tls_verify = false)"
            elif profile.values.get("ca_file"):
                verification = f"ok: chain verified (system store + ca_file {profile.values.get('ca_file')}), host name matches"
            else:
                verification = "ok: chain verified (system store), host name matches"
            info = {"version": tsock.version(), "cipher": cipher[0], "bits": cipher[2], "verification": verification}
            der = tsock.getpeercert(binary_form=True)
            tsock.close()
            return StageInfo(f"{info['version']} {info['cipher']}; {verification}", dict(info),
                             {"tls": info, "certificates": [describe_shown(der)] if der else []})

        try:
            yield self.stage("tls", handshake, describe, on_failure=lambda _err: dict(failed_facts))
        finally:
            tls.cleanup()

    # --- the request ----------------------------------------------------------------------
    def exchange(self, detail: str, fn: Callable[[], Any], describe: Callable[[Any], StageInfo]):
        """`request` times the HTTP exchange; `response` judges the reply."""
        box: dict[str, Any] = {}

        def request() -> None:
            try:
                box["value"] = fn()
            except MailctlError as err:
                if err.http_status is None and not err.error_code:
                    raise  # no answer: the request failed
                box["error"] = err

        def answered(_v) -> StageInfo:
            err = box.get("error")
            if err is None:
                return StageInfo(detail)
            return StageInfo(detail + (f" -> HTTP {err.http_status}" if err.http_status else " -> answered"))

        yield self.stage("request", request, answered, detail=detail)

        def response() -> Any:
            if "error" in box:
                raise box["error"]
            return box["value"]

        value = yield self.stage("response", response, describe)
        return value

    def graph_request(self):
        transport, message = self.transport, self.message
        yield self.stage("request", transport.open, None, hidden=True)  # the HTTPS session
        if message is None:
            from mailctl.transports.graph import graph_error, probe_mailbox

            def lookup():
                response = probe_mailbox(transport)
                if response.status_code >= 400 and response.status_code != 403:
                    # 403 only says the token may not read the user object (User.Read); sendMail may still work.
                    raise graph_error(response, server=transport.endpoint, stage="mailbox", profile_name=transport.profile.name,
                                      static_token=transport._static_token)  # a 401 after probe_mailbox's one refresh
                return response

            detail = f"GET {transport.mailbox_path} (Authorization: Bearer [redacted])"
            yield from self.exchange(detail, lookup, lambda r: _describe_mailbox(transport, r))
            return
        detail = (f"POST {transport.mailbox_path}/sendMail, {len(message.raw)} bytes of MIME "
                  f"for {len(message.recipients)} recipient(s) (Authorization: Bearer [redacted])")

        def sent(r) -> StageInfo:
            result = {"server": r.server, "reply": r.reply, "queue_id": None, "refused": {}, "used_alternate": False,
                      "route": transport.last_route}
            return StageInfo(f"{r.reply} via the {transport.last_route} route", {"route": transport.last_route, "reply": r.reply},
                             {"server": r.server, "result": result})

        yield from self.exchange(detail, lambda: transport.send(message.raw, message.sender, message.recipients), sent)

    def ews_request(self):
        transport, message = self.transport, self.message
        # builds the exchangelib account: no network unless autodiscover
        yield self.stage("request", transport.open, None, hidden=True)
        who = f"as {transport.mailbox} ({transport.auth})"
        if message is None:
            yield from self.exchange(f"GetFolder sentitems {who}", transport.check,
                                     lambda name: StageInfo(f"NoError: folder {name!r}", {"folder": name},
                                                            {"server": transport.url}))
            return
        disposition = "SendAndSaveCopy" if transport.profile.values.get("save_to_sent_items", True) else "SendOnly"

        def sent(r) -> StageInfo:
            result = {"server": r.server, "reply": r.reply, "queue_id": None, "refused": {}, "used_alternate": False}
            return StageInfo(r.reply, {"reply": r.reply}, {"server": r.server, "result": result})

        yield from self.exchange(f"CreateItem {disposition}, {len(message.raw)} bytes of MIME {who}",
                                 lambda: transport.send(message.raw, message.sender, message.recipients), sent)


def plan(transport, message=None):
    """The stages of a graph or ews transport (see the module's docstring)."""
    return _Plan(transport, message).stages()


def _host_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 443}" if parts.hostname else ""


def _unverified_chain(host: str, port: int, timeout: float) -> list[dict[str, Any]]:
    """After a verification failure: fetch the certificate without verifying, only to show it."""
    try:
        with connect_within(host, port, min(timeout, 10.0)) as raw:  # the lookup within the deadline too
            with ssl._create_unverified_context().wrap_socket(raw, server_hostname=host) as tsock:
                der = tsock.getpeercert(binary_form=True)
        return [describe_shown(der)] if der else []
    except Exception:
        return []


def _describe_mailbox(transport, response) -> StageInfo:
    if response.status_code == 403:
        return StageInfo("token accepted; reading the mailbox needs User.Read / User.Read.All (403): sendMail rights "
                         "are checked only by `test send`", {"status": 403})
    try:
        data = response.json()
    except ValueError:
        data = {}
    who = data.get("mail") or data.get("userPrincipalName") or "?"
    return StageInfo(f"{response.status_code} OK: mailbox {who}", {"status": response.status_code, "mailbox": who},
                     {"server": transport.endpoint})


class HttpStaged:
    """Mixin for the graph and ews transports: `mailctl test` drives plan(); the class sets
    `target` (what the report's header names)."""

    has_token_stage = True  # --quit-after token

    def probe_settings(self) -> dict[str, Any]:
        return probe_settings(self)

    def stages(self, message=None):
        return plan(self, message)

    def closing_stage(self) -> None:
        self.close()
        return None
