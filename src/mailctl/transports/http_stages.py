"""The stages of the HTTP API transports (graph, ews) for `mailctl test connect/send`.

Stages: lint warnings, secret -> token (OAuth only) -> connect -> tls -> request -> response.
`--quit-after secret|token|connect|tls` stops after that stage; the SMTP stage names stop
before the request (a profile switched from SMTP keeps working).
- secret: what the credential needs from the secret store, read and timed on its own (as
  SMTP's secret stage): the EWS password, the client_secret (client credentials), the stored
  tokens of `auth login` (delegated) or a static access_token; the detail says where each came
  from (environment, secret_command, keyring), never the value. A locked or slow keyring, a
  failing secret_command or a missing secret fails here, before any network call.
- token (OAuth): the identity provider alone, on what the secret stage read (the stores are
  not asked again during the probe); a static access_token says so without a network call, a
  cached token still valid says that no new token was requested (MSAL still reads the
  authority's metadata).
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

import copy
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

# --quit-after names that stop before the API request: secret and token stop after the
# credentials, connect before TLS; these (and the SMTP stage names) stop before the request.
BEFORE_REQUEST = ("secret", "token", "resolve", "connect", "tls", "banner", "ehlo", "starttls", "auth")
TOKEN_KIND = "oauth_tokens"  # the secret kind of the stored tokens (mailctl.oauth.store.KIND)


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
    if stage == "secret":  # the secret store's failure, explained as for SMTP's secret stage
        return explain(err, stage="secret", context={"profile": profile.name})
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
        self.remembered = _RememberedSecrets.around(transport)
        values = self.profile.values
        self.auth = values.get("auth") or ("password" if self.profile.type == "ews" else "oauth")

    def stage(self, name: str, run: Callable[[], Any] | None = None, describe=None, **kw: Any) -> Stage:
        kw.setdefault("server", self.target)
        return Stage(name, run, describe, explain=lambda err: explain_http(self.profile, err, name), **kw)

    def stages(self):
        for text in warnings_of(self.profile):
            yield self.stage("lint", lambda: None, lambda _v, t=text: StageInfo(f"warning: {t}"), stop_names=())
        if self.auth == "password":
            yield self.password_stage()
        else:
            yield self.secret_stage()
            yield self.token_stage()
        url = self.transport.endpoint if self.profile.type == "graph" else self.transport.url
        if url:
            yield from self.tls_stages(url)
        yield Checkpoint(self.target, BEFORE_REQUEST)
        if self.profile.type == "graph":
            yield from self.graph_request()
        else:
            yield from self.ews_request()

    # --- secret and token -----------------------------------------------------------
    def password_stage(self) -> Stage:
        """EWS basic auth: the password is the credential, read from the store (no token).
        `--quit-after token` stops here too, as it did when this stage was `credentials`."""
        profile, secrets = self.profile, self.transport.secrets

        def password() -> str:
            value, where = secrets.lookup(profile, "password")
            if value is None:
                secrets.require(profile, "password")  # raises: not stored (secret-missing)
            return where or "secret store"

        who = profile.values.get("username") or self.transport.mailbox
        return self.stage("secret", password,
                          lambda where: StageInfo(f"password for {who} from {where}",
                                                  {"auth": "password", "kind": "password", "source": where}),
                          stop_names=("secret", "token"))

    def secret_stage(self) -> Stage:
        """OAuth: read what the token stage needs from the secret store, timed apart from the
        identity provider (a hanging keyring is not an identity-provider problem)."""
        profile, secrets, auth = self.profile, self.transport.secrets, self.auth

        def describe(read: dict[str, Any]) -> StageInfo:
            words = {"access_token": "static access_token", "client_secret": "client_secret",
                     TOKEN_KIND: "stored tokens of `auth login`"}
            how = {"client-credentials": "client credentials: "}.get(auth, "delegated: " if read["kind"] == TOKEN_KIND else "")
            parts = [f"{how}{words[read['kind']]} from {read['source']}"]
            if read["kind"] == "client_secret":
                parts.append(f"token cache from {read['token_cache']}" if read["token_cache"] else "no token cache stored")
            return StageInfo("; ".join(parts) + " (not shown)", {"auth": auth, **read})

        return self.stage("secret", lambda: _read_oauth_secrets(profile, secrets, auth), describe)

    def token_stage(self) -> Stage:
        """OAuth: the access token from the identity provider, on what the secret stage read;
        the transport keeps it for the request (one token per probe)."""
        profile, transport, remembered = self.profile, self.transport, self.remembered
        from mailctl.oauth.scopes import identity_provider_url

        idp = urlsplit(identity_provider_url(profile)).hostname or "the identity provider"

        def token() -> dict[str, Any]:
            written = remembered.token_writes if remembered is not None else 0
            if profile.type == "graph":  # the transport keeps it: the request uses this token, not a second one
                transport._fetch_token()
                static = transport._static_token
            else:  # EWS builds its credentials on open(), from the same stores (the token cache: no new call)
                static = bearer_token(profile, transport.secrets)[1]
            fetched = remembered is None or remembered.token_writes > written  # a new token was stored
            return {"static": static, "new_token": not static and fetched}

        def describe(v: dict[str, Any]) -> StageInfo:
            if v["static"]:
                text = "static access_token: used as stored, no identity provider call"
            elif not v["new_token"]:
                text = "cached token still valid: no new token requested"
            else:
                text = ("client credentials (app-only)" if self.auth == "client-credentials"
                        else "delegated token from `auth login`") + f": token acquired from {idp} (not shown)"
            return StageInfo(text, {"auth": self.auth, **v})

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


def _read_oauth_secrets(profile, secrets, auth: str) -> dict[str, Any]:
    """What the token needs from the secret store, and where each came from (never a value):
    a static access_token (auth = oauth), else the client_secret and the app-token cache
    (client credentials), else the stored tokens of `auth login` (delegated; none stored
    means a sign-in is needed)."""
    from mailctl.oauth import store
    from mailctl.oauth.hints import needs_login

    if auth in ("oauth", ""):
        value, where = secrets.lookup(profile, "access_token")
        if value:
            return {"kind": "access_token", "source": where}
    if auth == "client-credentials":
        value, where = secrets.lookup(profile, "client_secret")
        if not value:
            secrets.require(profile, "client_secret")  # raises: not stored (secret-missing)
        doc = store.load(profile, secrets)  # a cache: none (or no keyring) only means a new token
        return {"kind": "client_secret", "source": where,
                "token_cache": f"{doc['_source']}:{profile.name}" if doc else None}
    doc = store.load(profile, secrets, required=True)  # the refresh token is the credential
    if not doc:
        raise needs_login(profile.name, "not signed in (no OAuth tokens stored)")
    if _generic_provider(profile):
        secrets.lookup(profile, "client_secret")  # a confidential client's secret, read here too
    return {"kind": TOKEN_KIND, "source": f"{doc['_source']}:{profile.name}"}


def _generic_provider(profile) -> bool:
    """A generic OAuth provider's client may be confidential: its client_secret is read too."""
    from mailctl.oauth.scopes import provider_of

    return provider_of(profile) == "generic"


class _RememberedSecrets:
    """The transport's secret store for one probe: each store is asked once per (profile,
    kind), so the token stage and the request reuse what the secret stage read (one keyring
    access, one secret_command run) and time only the identity provider. Writes go through
    to the real store (a refreshed token cache is kept as ever) and are counted: a token that
    was stored is one the identity provider just issued."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, str, str], Any] = {}
        self.token_writes = 0

    @classmethod
    def around(cls, transport) -> "_RememberedSecrets | None":
        inner = transport.secrets
        if not callable(getattr(inner, "stores_for", None)) or not callable(getattr(inner, "store", None)):
            return None  # not a SecretResolver: used as it is
        self = cls()
        clone = copy.copy(inner)  # the resolver's lookup/require/get now ask the remembering stores
        clone.stores_for = lambda profile: [_RememberedStore(s, self.values) for s in inner.stores_for(profile)]
        clone.found = lambda profile, kind, store, owner=None: inner.found(profile, kind, getattr(store, "inner", store), owner)
        clone.store = lambda name, kind, value: self.write(inner, name, kind, value)
        transport.secrets = clone
        return self

    def write(self, inner, name: str, kind: str, value: str) -> None:
        if kind == TOKEN_KIND:
            self.token_writes += 1  # counted before the write: a keyring that refuses it still saw a new token
        inner.store(name, kind, value)
        self.values[(getattr(inner.keyring, "name", "keyring"), name, kind)] = (value, None)


class _RememberedStore:
    """One secret store whose answers (a value, None, or its failure) are kept for the probe."""

    def __init__(self, inner, values: dict[tuple[str, str, str], Any]) -> None:
        self.inner = inner
        self.values = values

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def get(self, profile: str, kind: str) -> str | None:
        key = (self.inner.name, profile, kind)
        if key not in self.values:
            try:
                self.values[key] = (self.inner.get(profile, kind), None)
            except MailctlError as err:
                self.values[key] = (None, err)
        value, err = self.values[key]
        if err is not None:
            raise err
        return value


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
    has_secret_stage = True  # --quit-after secret

    def probe_settings(self) -> dict[str, Any]:
        return probe_settings(self)

    def stages(self, message=None):
        return plan(self, message)

    def closing_stage(self) -> None:
        self.close()
        return None
