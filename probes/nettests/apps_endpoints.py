"""The endpoints the messaging-app nettests measure: a dated TOML list the user can replace.

OONI's whatsapp, telegram, signal and facebook_messenger hard-code their endpoints (probe-cli
internal/experiment/*); ours come from ``testlists/apps.toml`` (the same endpoints, with the
probe-cli commit they were read from) or from ``--endpoints FILE``, so that a lab or a newer
list points them elsewhere. Each app is a table (one endpoint set, named ``default``) or an
array of tables with a ``name`` each (several sets: the nettest's ``--input NAME`` picks one).

Targets are URLs, as probe-cli's urlgetter inputs: ``tcpconnect://HOST:PORT`` (resolve,
connect), ``dnslookup://HOST`` (resolve), ``https://HOST[:PORT]/PATH`` (resolve, connect, TLS,
GET), ``http://HOST[:PORT]/PATH`` (resolve, connect, a request: telegram's POST to its data
centres). A bad file raises EndpointsError naming the file and the field.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

BUNDLED = Path(__file__).resolve().parent.parent.parent / "testlists" / "apps.toml"
DEFAULT_SET = "default"
KINDS = ("tcpconnect", "dnslookup", "https", "http")
# Each app's fields: name -> (kinds allowed, is a list). Facebook's services are OONI's names.
FB_SERVICES = ("stun", "b_api", "b_graph", "edge", "external_cdn", "scontent_cdn", "star")
SCHEMAS: dict[str, dict[str, tuple[tuple[str, ...], bool]]] = {
    "whatsapp": {
        "registration": (("https",), False),
        "web": (("https",), False),
        "endpoints": (("tcpconnect",), True),
    },
    "telegram": {"web": (("https",), False), "datacenters": (("http",), True)},
    "signal": {"backend": (("https",), True), "uptime": (("dnslookup",), False)},
    "facebook_messenger": {
        **{s: (("tcpconnect",), False) for s in FB_SERVICES},
        "stun": (("dnslookup",), False),
    },
}
APPS = tuple(SCHEMAS)


class EndpointsError(ValueError):
    """A list that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class Target:
    """One thing to measure, and the role (OONI test key family) it feeds."""

    role: str
    url: str
    kind: str
    host: str
    port: int | None
    path: str

    @property
    def method(self) -> str:
        return "POST" if self.kind == "http" else "GET"


@dataclass(frozen=True)
class EndpointSet:
    app: str
    name: str
    source: str
    updated: str
    targets: tuple[Target, ...]
    prefixes: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    ca_pem: tuple[str, ...] = ()


def parse_target(role: str, url: str, kinds: tuple[str, ...]) -> Target:
    """Raises ValueError saying what is wrong with ``url``."""
    parts = urlsplit(url.strip())
    kind = parts.scheme.lower()
    if kind not in kinds:
        raise ValueError(f"{url!r}: expected a {' or '.join(k + '://' for k in kinds)} URL")
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        raise ValueError(f"{url!r}: no host")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{url!r}: bad port ({exc})") from None
    if kind == "tcpconnect" and port is None:
        raise ValueError(f"{url!r}: tcpconnect needs a port")
    if kind == "dnslookup" and port is not None:
        raise ValueError(f"{url!r}: dnslookup takes no port")
    if kind in ("https", "http") and port is None:
        port = 443 if kind == "https" else 80
    return Target(role, url.strip(), kind, host, port, parts.path or "/")


def _text(table: dict[str, Any], key: str, where: str, *, required: bool = True) -> str:
    value = table.get(key)
    if value is None and not required:
        return ""
    if isinstance(value, dt.date):
        return value.isoformat()
    if not isinstance(value, str) or not value.strip():
        raise EndpointsError(f"{where}.{key}: missing or not a non-empty string")
    return value.strip()


def _date(value: str, where: str) -> str:
    try:
        dt.date.fromisoformat(value)
    except ValueError:
        raise EndpointsError(f"{where}: {value!r} is not a YYYY-MM-DD date") from None
    return value


def _strings(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise EndpointsError(f"{where}: expected a list of strings")
    return value


def _set(app: str, table: Any, where: str, updated: str) -> EndpointSet:
    if not isinstance(table, dict):
        raise EndpointsError(f"{where}: expected a table")
    schema = SCHEMAS[app]
    known = {*schema, "name", "source", "updated", "prefixes", "ca_pem"}
    unknown = sorted(set(table) - known)
    if unknown:
        raise EndpointsError(
            f"{where}.{unknown[0]}: unknown field (known: {', '.join(sorted(known))})"
        )
    name = _text(table, "name", where, required=False) or DEFAULT_SET
    source = _text(table, "source", where)
    when = _date(_text(table, "updated", where, required=False) or updated, f"{where}.updated")
    targets: list[Target] = []
    for role, (kinds, many) in schema.items():
        if role not in table:
            raise EndpointsError(f"{where}.{role}: missing")
        values = _strings(table[role], f"{where}.{role}") if many else [table[role]]
        if many and not values:
            raise EndpointsError(f"{where}.{role}: empty")
        for i, url in enumerate(values):
            field = f"{where}.{role}" + (f"[{i}]" if many else "")
            if not isinstance(url, str):
                raise EndpointsError(f"{field}: expected a URL string")
            try:
                targets.append(parse_target(role, url, kinds))
            except ValueError as exc:
                raise EndpointsError(f"{field}: {exc}") from None
    prefixes = []
    for i, text in enumerate(_strings(table.get("prefixes", []), f"{where}.prefixes")):
        try:
            prefixes.append(ipaddress.ip_network(text, strict=False))
        except ValueError as exc:
            raise EndpointsError(f"{where}.prefixes[{i}]: {exc}") from None
    pems = _strings(table.get("ca_pem", []), f"{where}.ca_pem")
    for i, pem in enumerate(pems):
        if "-----BEGIN CERTIFICATE-----" not in pem:
            raise EndpointsError(f"{where}.ca_pem[{i}]: not a PEM certificate")
    return EndpointSet(app, name, source, when, tuple(targets), tuple(prefixes), tuple(pems))


def load_sets(path: Path, app: str) -> list[EndpointSet]:
    """Every endpoint set of ``app`` in the file (raises EndpointsError)."""
    if app not in SCHEMAS:
        raise EndpointsError(f"{path}: unknown app {app!r} (known: {', '.join(APPS)})")
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise EndpointsError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise EndpointsError(f"{path}: not valid TOML: {exc}") from None
    updated = _date(_text(doc, "updated", f"{path}: (top level)"), f"{path}: updated")
    if app not in doc:
        raise EndpointsError(f"{path}: {app}: missing (no endpoints for this app)")
    value = doc[app]
    tables = value if isinstance(value, list) else [value]
    sets = [
        _set(app, t, f"{path}: {app}" + (f"[{i}]" if isinstance(value, list) else ""), updated)
        for i, t in enumerate(tables)
    ]
    names = [s.name for s in sets]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise EndpointsError(f"{path}: {app}: set name {dupes[0]!r} appears twice")
    return sets
