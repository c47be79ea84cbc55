"""ech_check verdicts from test keys alone (pure functions: stored measurements can be re-judged).

Per outer SNI (``x_outer_sni``), the hello without ECH is the control for the hellos with ECH
(GREASE, real) sent with the same SNI to the same address in the same round:

- every hello with ECH got an answer (ServerHello, HelloRetryRequest or an alert: the server
  saw it): ``false``;
- the control got an answer and a hello with ECH was reset, timed out or closed in round 1,
  and again in round 2 (or every round-2 connection failed: the censor's residual blocking
  of the endpoint after the trigger): ``tls`` with ``tls.ech_reset``, ``tls.ech_dropped``
  (timeout) or ``tls.ech_eof``;
- anything else is null: the control failed too (the name or the endpoint is blocked, not
  ECH), the failure did not repeat, a failure no censor leaves (an answer that is not TLS).

The measurement is ``tls`` when any SNI is, with the first blocked SNI's detail in
``x_outer_sni`` order; else ``false`` when any SNI is false; else null.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from probes.nettests.verdict import Verdict

DETAILS = {
    "connection_reset": "tls.ech_reset",
    "generic_timeout_error": "tls.ech_dropped",
    "eof_error": "tls.ech_eof",
}


@dataclass
class Analysis:
    blocking: str | bool | None
    blocking_detail: str | None
    per_sni: dict[str, Verdict] = field(default_factory=dict)


def reached(failure: Any) -> bool:
    """The server answered the hello (an alert is an answer: the hello got through)."""
    return failure is None or (isinstance(failure, str) and failure.startswith("ssl_"))


def _entries(tk: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    value = tk.get(key)
    return [e for e in value if isinstance(e, Mapping)] if isinstance(value, list) else []


def _of(entries: list[Mapping[str, Any]], sni: str, round_no: int) -> list[Mapping[str, Any]]:
    return [
        e
        for e in entries
        if e.get("x_round") == round_no
        and (e.get("outer_server_name") or e.get("x_server_name") or e.get("server_name")) == sni
    ]


def _round_one(hs: list[Mapping[str, Any]]) -> tuple[Verdict | None, list[Mapping[str, Any]]]:
    """Round 1 alone: a final verdict, or None and the ECH hellos that failed."""
    controls = [e for e in hs if e.get("x_ech") == "none"]
    ech = [e for e in hs if e.get("x_ech") in ("grease", "real")]
    if not controls or not ech:
        return Verdict(None, None, "no hello with and without ECH completed a connect"), []
    if not all(reached(e.get("failure")) for e in controls):
        return Verdict(None, None, "the hello without ECH failed too: not ECH blocking"), []
    failed = [e for e in ech if not reached(e.get("failure"))]
    if not failed:
        return Verdict(False, None, "every hello with ECH was answered"), []
    if any(e.get("failure") not in DETAILS for e in failed):
        return Verdict(None, None, f"{failed[0].get('failure')}: not a censor's signature"), []
    return None, failed


def confirm_snis(tk: Mapping[str, Any]) -> set[str]:
    """The SNIs whose round 1 calls for a second round (ECH failed, the control passed)."""
    hs = _entries(tk, "tls_handshakes")
    out: set[str] = set()
    for sni in tk.get("x_outer_sni") or []:
        verdict, failed = _round_one(_of(hs, str(sni), 1))
        if verdict is None and failed:
            out.add(str(sni))
    return out


def sni_verdict(tk: Mapping[str, Any], sni: str) -> Verdict:
    hs = _entries(tk, "tls_handshakes")
    verdict, failed = _round_one(_of(hs, sni, 1))
    if verdict is not None:
        return verdict
    detail = DETAILS[str(failed[0].get("failure"))]
    again = _of(hs, sni, 2)
    connects = _of(_entries(tk, "tcp_connects"), sni, 2)
    if not again and connects and all(c.get("status", {}).get("failure") for c in connects):
        return Verdict("tls", detail, "ECH failed, then every new connection failed (residual)")
    kinds = {e.get("x_ech") for e in failed}
    repeated = [e for e in again if e.get("x_ech") in kinds]
    if not repeated:
        return Verdict(None, None, "ECH failed once; no second round to confirm it")
    if all(reached(e.get("failure")) for e in repeated):
        return Verdict(None, None, "ECH failed in round 1 but was answered in round 2")
    return Verdict("tls", detail, "ECH failed twice while the same SNI without ECH was answered")


def from_ooni(tk: Mapping[str, Any]) -> dict[str, Any]:
    """OONI echcheck's keys in ours: 0.2.0 and 0.3.0 (``tls_handshakes``, the kind told by
    ``echconfig``) and 0.1.0 (``control`` without ECH, ``target`` with GREASE, both to the
    input's name). One round cannot confirm a failure: false or null, never tls."""
    entries = _entries(tk, "tls_handshakes")
    if not entries and isinstance(tk.get("control"), Mapping):
        target = tk.get("target")
        entries = [tk["control"]]
        if isinstance(target, Mapping):
            entries.append({**target, "echconfig": "GREASE"})
    handshakes = []
    for e in entries:
        config = e.get("echconfig")
        kind = "grease" if config == "GREASE" else "real" if config else "none"
        handshakes.append({**e, "x_ech": kind, "x_round": 1})
    snis = [str(e.get("outer_server_name") or e.get("server_name")) for e in handshakes]
    return {**tk, "tls_handshakes": handshakes, "x_outer_sni": list(dict.fromkeys(snis))}


def analyze(tk: Mapping[str, Any]) -> Analysis:
    """The measurement's verdict (ours, or OONI echcheck's keys read by from_ooni)."""
    if "x_outer_sni" not in tk:
        tk = from_ooni(tk)
    snis = [str(s) for s in tk.get("x_outer_sni") or []]
    per_sni = {sni: sni_verdict(tk, sni) for sni in snis}
    blocked = [v for v in per_sni.values() if v.blocking not in (False, None)]
    if blocked:
        return Analysis(blocked[0].blocking, blocked[0].blocking_detail, per_sni)
    if any(v.blocking is False for v in per_sni.values()):
        return Analysis(False, None, per_sni)
    return Analysis(None, None, per_sni)
