"""`mailctl profile discover ADDRESS`: propose a profile from what the address's domain
publishes, as Thunderbird and himalaya do (issue #17).

In order of trust:
1. MX: Microsoft 365 (*.mail.protection.outlook.com and the national clouds) and Google
   (smtp.google.com, *.aspmx.l.google.com, *.googlemail.com) -> the provider preset (OAuth);
2. Mozilla autoconfig: https://autoconfig.<domain>/mail/config-v1.1.xml, then
   https://<domain>/.well-known/autoconfig/mail/config-v1.1.xml (HTTPS only, no redirects,
   at most 64 KiB, no DTD: entities are refused before parsing);
3. RFC 6186 SRV: _submissions._tcp (implicit TLS, preferred by RFC 8314), _submission._tcp
   (STARTTLS); a target of "." means the service is not offered.

For Microsoft 365 the tenant is looked up: GET https://<login host of the MX's cloud>/<domain>
/v2.0/.well-known/openid-configuration, whose `issuer` (else `token_endpoint`) names the tenant
GUID; when that fails (offline, HTTP 400 for an unknown tenant, a timeout) tenant_id stays the
domain, which Entra accepts too, and a note says why.

The network is given (`net`: lookup(name, rdtype), fetch(host, path, accept=...),
prefetch(questions)); mailctl.dns.autoconfig.DiscoveryNetwork is the real one (it goes through
the environment's HTTPS proxy, and each Fetched says so). A fetch through a proxy is noted, and
a proxy that fails is a one-line note, never a silent fallback; when nothing is found and a
proxy failed, that is the error (69). Only the domain is sent anywhere: no password, not even
the address (Thunderbird adds ?emailaddress=; we do not)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

from mailctl.errors import ConfigError, NotFoundError, TemporaryFailure, UnavailableError, ValidationError

AUTOCONFIG_PATHS = (("autoconfig.{domain}", "/mail/config-v1.1.xml"),
                    ("{domain}", "/.well-known/autoconfig/mail/config-v1.1.xml"))
# MX host suffix -> (provider, cloud)
_M365_MX = ((".mail.protection.outlook.com", "global"), (".mail.protection.outlook.de", "global"),
            (".mail.protection.office365.us", "usgov"), (".mail.protection.partner.outlook.cn", "china"))
_GOOGLE_MX_HOSTS = ("smtp.google.com", "aspmx.l.google.com", "gmail-smtp-in.l.google.com")
_GOOGLE_MX_SUFFIXES = (".aspmx.l.google.com", ".googlemail.com", ".gmail-smtp-in.l.google.com")
TENANT_PATH = "/{domain}/v2.0/.well-known/openid-configuration"
_GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_SOCKET = {"ssl": "tls", "tls": "tls", "starttls": "starttls", "plain": "none"}
_AUTH = {"password-cleartext": "password", "plain": "password", "password-encrypted": "password",
         "secure": "password", "oauth2": "oauth", "none": "none", "client-ip-address": "none"}


class Net(Protocol):
    def prefetch(self, questions: list[tuple[str, str]]) -> None: ...
    def lookup(self, name: str, rdtype: str) -> Any: ...  # .status, .records, .temporary
    def fetch(self, host: str, path: str, *, accept: str = ...) -> Any: ...  # .url .status .body .error .detail .proxy .proxy_source


@dataclass
class Discovery:
    address: str
    domain: str
    source: str = ""  # mx:microsoft365, autoconfig:URL, srv:NAME
    fields: dict[str, Any] = field(default_factory=dict)
    evidence: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    alternatives: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"address": self.address, "domain": self.domain, "source": self.source, "fields": self.fields,
                "alternatives": self.alternatives, "evidence": self.evidence, "notes": self.notes}


def check_addable(found: Discovery, name: str) -> None:
    """A Microsoft 365 proposal needs the app registration's client id before it can be saved;
    say so in terms of this command (ConfigError, 78) instead of `profile add`'s hint."""
    if found.fields.get("provider") == "microsoft365" and not found.fields.get("client_id"):
        raise ConfigError(
            f"{found.address} is on Microsoft 365: the profile needs client_id (an app registration) to sign in",
            hint="register an app in Microsoft Entra (App registrations, with \"Allow public client flows\"), then: "
            f"mailctl profile discover {found.address} --add {name} --client-id ID")


def split_address(address: str) -> tuple[str, str]:
    from mailctl.addresses import check_address

    addr = check_address(address.strip(), "profile discover ADDRESS")
    local, _, domain = addr.rpartition("@")
    return local, domain.rstrip(".").lower()


def discover(address: str, net: Net) -> Discovery:
    """The proposal for `address`; NotFoundError (66) when the domain publishes nothing usable,
    TemporaryFailure (75) when that may be because a lookup timed out or failed."""
    local, domain = split_address(address)
    out = Discovery(address, domain)
    srv_names = (f"_submissions._tcp.{domain}", f"_submission._tcp.{domain}")
    net.prefetch([(domain, "MX")] + [(n, "SRV") for n in srv_names])
    found = [_from_mx(out, net, domain)]
    if found[0] is None:
        found.append(_from_autoconfig(out, net, local, domain))
    found += [_from_srv(out, net, name) for name in srv_names]
    proposals = [p for p in (_valid(out, f) for f in found) if p is not None]
    if not proposals:
        temporary = [e for e in out.evidence if e.get("temporary")]
        if temporary:
            raise TemporaryFailure(f"{domain}: nothing found, and {temporary[0]['name']} ({temporary[0]['type']}) "
                                   f"failed: {temporary[0]['status']}", hint="retry later, or check --nameserver / --timeout")
        proxied = [e for e in out.evidence if e.get("status") == "proxy"]
        if proxied:
            raise UnavailableError(f"{domain}: nothing found, and {proxied[0]['name']} failed: {proxied[0]['detail']}",
                                   hint="check the proxy, or HTTPS_PROXY / ALL_PROXY and NO_PROXY (hosts to reach directly)")
        failed = [f"{e['name']}: {e['detail']}" for e in out.evidence if e.get("detail")]
        raise NotFoundError(f"{domain} publishes no mail submission settings (no known MX provider, autoconfig or SRV)"
                            + (f"; {'; '.join(failed)}" if failed else ""),
                            hint=f"add the profile by hand: mailctl profile add NAME --host HOST --from-address {address}")
    out.source, out.fields = proposals[0]
    out.alternatives = [{"source": s, "fields": f} for s, f in proposals[1:]]
    return out


def _valid(out: Discovery, proposal: tuple[str, dict[str, Any]] | None) -> tuple[str, dict[str, Any]] | None:
    """A proposal whose every value passes the profile model, else None (and a note): what a
    server publishes is data from the network."""
    from mailctl.profiles.model import validate_field

    if proposal is None:
        return None
    source, fields = proposal
    try:
        return source, {k: validate_field(k, v) for k, v in fields.items()}
    except ValidationError as exc:
        out.notes.append(f"{source}: ignored, {exc.message}")
        return None


def _record(out: Discovery, lookup: Any, name: str, rdtype: str) -> None:
    out.evidence.append({"name": name, "type": rdtype, "status": lookup.status, "records": list(lookup.records),
                         "temporary": bool(lookup.temporary)})


def _identity(address: str) -> dict[str, Any]:
    return {"username": address, "from_address": address}


# --- MX -------------------------------------------------------------------------------------
def _from_mx(out: Discovery, net: Net, domain: str) -> tuple[str, dict[str, Any]] | None:
    lookup = net.lookup(domain, "MX")
    _record(out, lookup, domain, "MX")
    hosts = [r.split()[-1].rstrip(".").lower() for r in lookup.records if r.split()]
    for host in hosts:
        for suffix, cloud in _M365_MX:
            if host.endswith(suffix):
                out.notes.append(f"MX {host} is Microsoft 365: OAuth (auth login) with an app registration (client_id)")
                fields = {"provider": "microsoft365", **_identity(out.address), "tenant_id": _tenant(out, net, domain, cloud)}
                if cloud != "global":
                    fields["cloud"] = cloud
                return "mx:microsoft365", fields
        if host in _GOOGLE_MX_HOSTS or host.endswith(_GOOGLE_MX_SUFFIXES):
            out.notes.append(f"MX {host} is Google: OAuth with a Google OAuth client (client_id), or an app password")
            return "mx:gmail", {"provider": "gmail", **_identity(out.address)}
    return None


def _tenant(out: Discovery, net: Net, domain: str, cloud: str) -> str:
    """The tenant GUID from the cloud's login host, else the domain (Entra takes either as
    tenant_id; the GUID survives a rename of the domain) with the reason in the notes."""
    from mailctl.profiles.presets import login_host

    host = urlsplit(login_host(cloud)).hostname or "login.microsoftonline.com"
    got = net.fetch(host, TENANT_PATH.format(domain=_url_domain(domain)), accept="application/json")
    entry = _record_fetch(out, got, "tenant")
    if got.body is not None:
        try:
            guid = parse_tenant(got.body)
        except ValidationError as exc:
            entry["detail"] = exc.message
        else:
            entry["records"] = [guid]
            out.notes.append(f"tenant_id {guid}: the Microsoft Entra tenant of {domain}, from {got.url}{_via(got)}")
            return guid
    why = entry.get("detail", "no answer") + (f" (Microsoft knows no tenant {domain})" if got.status == 400 else "")
    out.notes.append(f"tenant_id is the domain {domain} (the tenant's GUID works too): the tenant lookup {got.url} "
                     f"failed: {why}{_via(got)}")
    return domain


def parse_tenant(body: bytes) -> str:
    """The tenant GUID of an OpenID configuration: the first path segment of `issuer`
    (https://login.microsoftonline.com/<GUID>/v2.0), else of `token_endpoint`. ValidationError
    when neither names one (a placeholder such as {tenantid}, or not JSON at all)."""
    import json

    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ValidationError("the answer is not JSON", field="tenant_id") from None
    for key in ("issuer", "token_endpoint"):
        value = doc.get(key) if isinstance(doc, dict) else None
        try:
            segment = urlsplit(value).path.strip("/").split("/")[0].lower() if isinstance(value, str) else ""
        except ValueError:
            continue
        if _GUID.fullmatch(segment):
            return segment
    raise ValidationError("no tenant GUID in its issuer or token_endpoint", field="tenant_id")


def _url_domain(domain: str) -> str:
    """The domain as it goes into a URL path: its IDNA A-label form (percent-encoded if it has none)."""
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return quote(domain, safe=".-")


# --- HTTPS fetches --------------------------------------------------------------------------
def _record_fetch(out: Discovery, got: Any, kind: str) -> dict[str, Any]:
    """The evidence entry of one fetch; a note for every fetch that went through a proxy (that
    it did, or the proxy's one-line reason for failing), so that a proxy is never silent."""
    entry: dict[str, Any] = {"name": got.url, "type": kind, "status": got.status if got.status is not None else got.error,
                             "records": [], "temporary": False}
    if got.proxy:
        entry["proxy"] = got.proxy
    if got.error or got.body is None:
        entry["detail"] = got.detail
    out.evidence.append(entry)
    if kind == "autoconfig" and got.error == "proxy":
        out.notes.append(f"{got.url}: {got.detail}")
    elif kind == "autoconfig" and got.proxy:
        out.notes.append(f"{got.url}: " + ("fetched" if got.body is not None else got.detail) + _via(got))
    return entry


def _via(got: Any) -> str:
    """How a fetch that reached its server went, when through a proxy (a failing proxy names itself)."""
    if not got.proxy or got.error == "proxy":
        return ""
    return f" (through the proxy {got.proxy}, {got.proxy_source})"


# --- RFC 6186 SRV ---------------------------------------------------------------------------
def _from_srv(out: Discovery, net: Net, name: str) -> tuple[str, dict[str, Any]] | None:
    lookup = net.lookup(name, "SRV")
    _record(out, lookup, name, "SRV")
    records = []
    for text in lookup.records:
        parts = text.split()
        if len(parts) == 4 and all(p.isdigit() for p in parts[:3]):
            records.append((int(parts[0]), -int(parts[1]), int(parts[2]), parts[3].rstrip(".").lower()))
    if not records:
        return None
    priority, _weight, port, target = min(records)
    if not target or target == "." or port == 0:
        out.notes.append(f"{name}: the domain says this service is not offered (target \".\")")
        return None
    security = "tls" if name.startswith("_submissions.") else "starttls"
    out.notes.append(f"{name}: {target}:{port} from unsigned DNS; check that it is your provider's server")
    return f"srv:{name}", {"host": target, "port": port, "security": security, "auth": "password", **_identity(out.address)}


# --- Mozilla autoconfig ---------------------------------------------------------------------
def _from_autoconfig(out: Discovery, net: Net, local: str, domain: str) -> tuple[str, dict[str, Any]] | None:
    for host_t, path in AUTOCONFIG_PATHS:
        host = host_t.format(domain=domain)
        got = net.fetch(host, path)
        entry = _record_fetch(out, got, "autoconfig")
        if got.error or got.body is None:
            continue
        try:
            fields = parse_autoconfig(got.body, local, domain)
        except ValidationError as exc:
            entry["detail"] = exc.message
            out.notes.append(f"{got.url}: {exc.message}")
            continue
        if fields is None:
            entry["detail"] = "no usable outgoingServer"
            continue
        return f"autoconfig:{got.url}", {**fields, "from_address": out.address}
    return None


def parse_autoconfig(body: bytes, local: str, domain: str) -> dict[str, Any] | None:
    """The best SMTP server of a config-v1.1.xml (TLS before STARTTLS before plain), as profile
    fields; None when it has none. ValidationError for a file that is not safe or not XML."""
    import xml.etree.ElementTree as ET

    if re.search(rb"<!\s*(DOCTYPE|ENTITY)", body, re.IGNORECASE):
        raise ValidationError("autoconfig: a DTD or entity declaration is refused (entity expansion attacks)", field="autoconfig")
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise ValidationError(f"autoconfig: not well-formed XML ({exc})", field="autoconfig") from None
    if _local_name(root.tag) != "clientConfig":
        raise ValidationError(f"autoconfig: the root element is <{_local_name(root.tag)}>, not <clientConfig>", field="autoconfig")
    servers = []
    for server in root.iter():
        if _local_name(server.tag) != "outgoingServer" or (server.get("type") or "smtp").lower() != "smtp":
            continue
        text = {_local_name(c.tag): (c.text or "").strip() for c in server}
        security = _SOCKET.get(text.get("socketType", "").lower())
        host = _expand(text.get("hostname", ""), local, domain)
        if not host or security is None or not text.get("port", "").isdigit():
            continue
        auths = [(c.text or "").strip().lower() for c in server if _local_name(c.tag) == "authentication"]
        auth = next((_AUTH[a] for a in auths if a in _AUTH), "password")
        fields = {"host": host, "port": int(text["port"]), "security": security, "auth": auth}
        if auth != "none":
            fields["username"] = _expand(text.get("username") or "%EMAILADDRESS%", local, domain)
        servers.append(({"tls": 0, "starttls": 1, "none": 2}[security], len(servers), fields))
    return min(servers)[2] if servers else None


def _local_name(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _expand(template: str, local: str, domain: str) -> str:
    return (template.replace("%EMAILADDRESS%", f"{local}@{domain}").replace("%EMAILLOCALPART%", local)
            .replace("%EMAILDOMAIN%", domain))
