"""Checking what probes submit to the collector, with a message naming the problem.

Everything a submission carries is checked before anything is stored: the envelope of OONI's
collector protocol (`{"format": "json", "content": MEASUREMENT}`), the base keys the store
and the analysis rely on (their presence and JSON types), the test name, and the names that
become directory names in the store layout.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from probes.measurement import TIME_FORMAT
from probes.store import SAFE_NAME

# Our nettests (DESIGN 4) and OONI's, so that an OONI probe can submit to us as well.
KNOWN_TEST_NAMES = frozenset(
    {
        "web_connectivity",
        "dns_consistency",
        "tcp_connect",
        "sni_blocking",
        "tls_interception",
        "http_keyword",
        "censor_trace",
        "message_delivery",
        "keyword_isolation",
        "download",
        # OONI's nettests (ooni/spec nettests/).
        "dnscheck",
        "dash",
        "facebook_messenger",
        "http_header_field_manipulation",
        "http_invalid_request_line",
        "ndt",
        "psiphon",
        "riseupvpn",
        "signal",
        "stunreachability",
        "telegram",
        "tor",
        "torsf",
        "urlgetter",
        "vanilla_tor",
        "whatsapp",
    }
)

# Base keys every stored measurement must have, with the JSON types allowed for each.
_STR = (str,)
REQUIRED_KEYS: dict[str, tuple[type, ...]] = {
    "measurement_uid": _STR,
    "report_id": _STR,
    "test_name": _STR,
    "test_version": _STR,
    "software_name": _STR,
    "software_version": _STR,
    "data_format_version": _STR,
    "probe_cc": _STR,
    "probe_asn": _STR,
    "test_start_time": _STR,
    "measurement_start_time": _STR,
    "annotations": (dict,),
    "test_keys": (dict, type(None)),
}
_TYPE_NAMES = {str: "a string", dict: "an object", type(None): "null"}
UID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_TIME_PATTERN = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")
_CC_PATTERN = re.compile(r"^[A-Z]{2}$")
_ASN_PATTERN = re.compile(r"^AS\d{1,10}$")


class Invalid(ValueError):
    """A submission we refuse; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Submission:
    """A checked measurement and the facts the store needs from it."""

    uid: str
    report_id: str
    test_name: str
    vantage: str
    date: str
    test_start_time: str
    line: bytes


def _known_test_names() -> frozenset[str]:
    from probes.nettests import REGISTRY

    return KNOWN_TEST_NAMES | frozenset(REGISTRY)


def _describe(types: tuple[type, ...]) -> str:
    return " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)


def parse_json_object(body: bytes, what: str) -> dict[str, Any]:
    """Decode a request body that must be a JSON object."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Invalid(f"{what}: not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise Invalid(f"{what}: expected a JSON object, got {type(data).__name__}")
    return data


def check_test_name(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise Invalid(f"{field}: missing or not a string")
    if value not in _known_test_names():
        raise Invalid(f"{field}: unknown test name {value[:64]!r}")
    return value


def check_open(data: dict[str, Any]) -> dict[str, str]:
    """The body of `POST /report` (ooni/spec bk-003): what the report is."""
    test_name = check_test_name(data.get("test_name"), "test_name")
    fmt = data.get("format", "json")
    if fmt != "json":
        raise Invalid(f"format: only 'json' is supported, got {str(fmt)[:32]!r}")
    out = {"test_name": test_name}
    for key in ("software_name", "software_version", "test_version", "probe_cc", "probe_asn"):
        value = data.get(key, "")
        if not isinstance(value, str) or len(value) > 128:
            raise Invalid(f"{key}: expected a string of at most 128 characters")
        out[key] = value
    return out


def check_submission(data: dict[str, Any]) -> Submission:
    """The body of `POST /report/{id}`: the envelope and the measurement inside it."""
    fmt = data.get("format")
    if fmt != "json":
        raise Invalid(f"format: expected 'json', got {str(fmt)[:32]!r}")
    content = data.get("content")
    if not isinstance(content, dict):
        raise Invalid("content: missing or not a JSON object (the measurement)")
    for key, types in REQUIRED_KEYS.items():
        if key not in content:
            raise Invalid(f"content.{key}: missing")
        if not isinstance(content[key], types) or isinstance(content[key], bool):
            raise Invalid(f"content.{key}: expected {_describe(types)}")
    if "input" in content and not isinstance(content["input"], str | list | type(None)):
        raise Invalid("content.input: expected a string, a list or null")
    uid = content["measurement_uid"]
    if not UID_PATTERN.match(uid):
        raise Invalid("content.measurement_uid: use 1-128 letters, digits, '.', '_' or '-'")
    report_id = content["report_id"]
    if not SAFE_NAME.match(report_id):
        raise Invalid("content.report_id: use 1-64 letters, digits, '.', '_' or '-'")
    test_name = check_test_name(content["test_name"], "content.test_name")
    for key in ("test_start_time", "measurement_start_time"):
        if not _TIME_PATTERN.match(content[key]):
            raise Invalid(f"content.{key}: expected 'YYYY-MM-DD HH:MM:SS' (UTC)")
    if not _CC_PATTERN.match(content["probe_cc"]):
        raise Invalid("content.probe_cc: expected two capital letters (ZZ when unknown)")
    if not _ASN_PATTERN.match(content["probe_asn"]):
        raise Invalid("content.probe_asn: expected 'AS' and a number (AS0 when unknown)")
    vantage = content["annotations"].get("vantage")
    if not isinstance(vantage, str):
        raise Invalid("content.annotations.vantage: missing or not a string")
    if not SAFE_NAME.match(vantage):
        raise Invalid("content.annotations.vantage: use 1-64 letters, digits, '.', '_' or '-'")
    try:
        day = datetime.strptime(content["test_start_time"], TIME_FORMAT).strftime("%Y-%m-%d")
    except ValueError as exc:
        raise Invalid("content.test_start_time: not a valid date and time") from exc
    try:
        line = orjson.dumps(content, option=orjson.OPT_APPEND_NEWLINE)
    except (orjson.JSONEncodeError, TypeError) as exc:  # pragma: no cover - decoded JSON
        raise Invalid(f"content: cannot be stored as JSON: {exc}") from exc
    return Submission(
        uid=uid,
        report_id=report_id,
        test_name=test_name,
        vantage=vantage,
        date=day,
        test_start_time=content["test_start_time"],
        line=line,
    )
