"""Re-derive each measurement's verdict from its raw observations, and name fingerprints.

Why re-derive: a better heuristic should apply to old data, and OONI's measurements should get
the same classification as ours. web_connectivity verdicts come from the probe's own pure
function on the stored test keys, chosen by the measurement's test_version
(probes.nettests.web_connectivity_verdict: OONI's v0.4 procedure below 0.5, v0.5's from 0.5
on), dnscheck's from probes.nettests.dnscheck_analysis, whatsapp's, telegram's, signal's and
facebook_messenger's from probes.nettests.apps_analysis, ech_check's (and OONI echcheck's) from
probes.nettests.ech_check_analysis, quic_sni's from probes.nettests.quic_sni_analysis and
download's from probes.nettests.download_analysis (its transfers' byte curves); other nettests
keep the verdict
their probe wrote (`verdict_source` = "probe").
The probe's verdict always stays beside ours (`orig_blocking`, from analysis.load).

Fingerprints: OONI's blocking-fingerprints CSV (probes.fingerprints) are applied inside
analyze(); Censored Planet's JSON-lines signatures (blockpage and false-positive regexes,
censoredplanet-analysis pipeline/metadata/data/) are loaded here. As in Censored Planet's
pipeline, a response that matches a false-positive signature is not a block page, whatever else
it matches; the false-positive match is still recorded so an analyst sees why.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from analysis.load import CAT, STR, blocking_text
from probes.fingerprints import FingerprintError, Fingerprints
from probes.nettests.apps_analysis import analyze as analyze_app
from probes.nettests.apps_endpoints import APPS
from probes.nettests.dnscheck_analysis import analyze as analyze_dnscheck
from probes.nettests.download_analysis import analyze as analyze_download
from probes.nettests.ech_check_analysis import analyze as analyze_ech_check
from probes.nettests.quic_sni_analysis import analyze as analyze_quic_sni
from probes.nettests.web_connectivity_analysis import body_bytes, header_values
from probes.nettests.web_connectivity_verdict import analyze_measurement
from probes.provenance import LIST_KEYS

# The version of the rules that turn measurements into verdicts and findings, recorded with
# every finding and published dataset (analysis.provenance). Bump it in the same commit as any
# change that can turn the same measurements and fingerprints into a different verdict or
# finding: this module's re-derivation, probes.nettests' *_analysis/*_verdict functions it
# calls, fingerprint matching, analysis.compare's statuses, gates defaults, rates and change
# points, analysis.keywords' counting. Refactors that keep every verdict do not bump it.
# `censorscope verify` re-derives a dataset and names the rules version it was published with.
RULES_VERSION = 1

CP_BLOCKPAGES = "blockpage_signatures.json"
CP_FALSE_POSITIVES = "false_positive_signatures.json"
CP_PREFIX = "censoredplanet:"

# Columns the classifier adds to the measurements frame, and their dtypes.
VERDICT_COLUMNS: dict[str, Any] = {
    "blocking": CAT,  # ours: "false", a blocking type, or missing (inconclusive)
    "blocking_detail": STR,
    "blocking_fingerprint": STR,  # the named match that confirms blocking, if any
    "fingerprints": STR,  # every blocking fingerprint matched, ";"-joined
    "false_positives": STR,  # every false-positive pattern matched, ";"-joined
    "down": "bool",  # the site is down at the vantage and at the control
    "verdict_source": CAT,  # "rederived", "probe" or "probe_evidence" (see Classifier)
    "disagreement": STR,  # why our verdict differs from the probe's; missing when they agree
    "probe_lists": STR,  # the probe's list hashes from its annotations (probe_lists below)
}

PROBE_EVIDENCE = "probe_evidence"


class SignatureError(ValueError):
    """A signature file is malformed; the message names file:line and the field."""


@dataclass(frozen=True)
class Signature:
    name: str
    pattern: re.Pattern[str]
    is_false_positive: bool


def load_signatures(path: Path, *, false_positive: bool) -> list[Signature]:
    """One Censored Planet JSON-lines file: {"fingerprint": id, "pattern": regex} per line."""
    out: list[Signature] = []
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise SignatureError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    for number, line in enumerate(text.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            item = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise SignatureError(f"{path}:{number}: not valid JSON: {exc}") from exc
        name, pattern = item.get("fingerprint"), item.get("pattern")
        if not isinstance(name, str) or not name:
            raise SignatureError(f"{path}:{number}: field 'fingerprint': missing or empty")
        if not isinstance(pattern, str) or not pattern:
            raise SignatureError(f"{path}:{number}: field 'pattern': missing or empty")
        try:
            compiled = re.compile(pattern)
        except re.error as exc:
            raise SignatureError(f"{path}:{number}: field 'pattern': bad regex: {exc}") from exc
        out.append(Signature(CP_PREFIX + name, compiled, false_positive))
    return out


class CensoredPlanetSignatures:
    """Blockpage and false-positive signatures, matched against a response's text."""

    def __init__(self, blockpages: list[Signature], false_positives: list[Signature]) -> None:
        self.blockpages = blockpages
        self.false_positives = false_positives

    @classmethod
    def from_dir(cls, directory: Path) -> CensoredPlanetSignatures:
        return cls(
            load_signatures(directory / CP_BLOCKPAGES, false_positive=False),
            load_signatures(directory / CP_FALSE_POSITIVES, false_positive=True),
        )

    def match(self, text: str) -> tuple[list[str], list[str]]:
        """(blockpage names, false-positive names); no blockpage when a false positive hits."""
        fps = [s.name for s in self.false_positives if s.pattern.search(text)]
        if fps:
            return [], fps
        return [s.name for s in self.blockpages if s.pattern.search(text)], []


def response_text(response: Mapping[str, Any]) -> str:
    """Header lines then the body: what Censored Planet's patterns are written against."""
    lines = [
        f"{name}: {value}"
        for name, values in header_values(response.get("headers")).items()
        for value in values
    ]
    body = body_bytes(response.get("body"))
    if body:
        lines.append(body.decode("utf-8", errors="replace"))
    return "\n".join(lines)


def _text(value: Any) -> str | None:
    """A text value of test_keys, or None for a missing or mistyped one."""
    return value if isinstance(value, str) and value else None


@dataclass
class Classifier:
    """Callable on a decoded measurement; returns the VERDICT_COLUMNS values for its row."""

    fingerprints: Fingerprints | None = None
    signatures: CensoredPlanetSignatures | None = None

    def __call__(self, data: Mapping[str, Any]) -> dict[str, Any]:
        row = self._verdict(data)
        row["probe_lists"] = probe_lists(data)
        return row

    def _verdict(self, data: Mapping[str, Any]) -> dict[str, Any]:
        tk = data.get("test_keys")
        if data.get("test_name") == "dnscheck" and isinstance(tk, dict):
            return rederive_dnscheck(tk)
        if data.get("test_name") in APPS and isinstance(tk, dict):
            return rederive_app(str(data["test_name"]), tk)
        if data.get("test_name") in ECH_TESTS and isinstance(tk, dict):
            return rederive_ech_check(tk)
        if data.get("test_name") == "quic_sni" and isinstance(tk, dict):
            return rederive_quic_sni(tk)
        if data.get("test_name") == "download" and isinstance(tk, dict):
            return rederive_download(tk)
        if data.get("test_name") != "web_connectivity" or not isinstance(tk, dict):
            tk = tk if isinstance(tk, dict) else {}
            return {
                "blocking": blocking_text(tk.get("blocking")),
                "blocking_detail": _text(tk.get("blocking_detail")),
                "blocking_fingerprint": _text(tk.get("blocking_fingerprint")),
                "down": False,
                "verdict_source": "probe",
            }
        input_ = data.get("input")
        row = self._rederive(
            tk, input_ if isinstance(input_, str) else None, data.get("test_version")
        )
        row["disagreement"] = disagreement(
            tk, row, fingerprints_given=self.fingerprints is not None
        )
        return row

    def _rederive(
        self, tk: Mapping[str, Any], input_: str | None, test_version: Any = None
    ) -> dict[str, Any]:
        verdict = analyze_measurement(tk, test_version, url=input_, fingerprints=self.fingerprints)
        names = [m.name for m in verdict.fingerprint_matches if not m.is_false_positive]
        fps = [m.name for m in verdict.fingerprint_matches if m.is_false_positive]
        blocking = verdict.blocking
        detail = verdict.blocking_detail
        named = verdict.blocking_fingerprint
        if self.signatures is not None:
            cp_names, cp_fps = self._match_cp(tk)
            names.extend(cp_names)
            fps.extend(cp_fps)
            # A Censored Planet block page confirms blocking as an OONI one does in analyze().
            if cp_names and not verdict.website_down:
                if blocking is False or blocking == "http-diff":
                    blocking, detail = "http-diff", "http.blockpage"
                named = named or cp_names[0]
        source = "rederived"
        # The probe's own evidence counts: a fingerprint it matched (with the fingerprints it
        # was given) confirms blocking as one matched here would, so re-deriving without
        # --fingerprints does not turn a confirmed block page into "accessible".
        probe_fp = tk.get("blocking_fingerprint")
        if isinstance(probe_fp, str) and probe_fp and named is None and not verdict.website_down:
            probe_blocking = blocking_text(tk.get("blocking"))
            if blocking is False or blocking == probe_blocking:
                if probe_blocking == "dns":
                    blocking, detail = "dns", _text(tk.get("blocking_detail")) or "dns.known_forged"
                else:
                    blocking, detail = "http-diff", "http.blockpage"
                named = probe_fp
                names.append(probe_fp)
                source = PROBE_EVIDENCE
        return {
            "blocking": blocking_text(blocking),
            "blocking_detail": detail,
            "blocking_fingerprint": named,
            "fingerprints": ";".join(dict.fromkeys(names)) or None,
            "false_positives": ";".join(dict.fromkeys(fps)) or None,
            "down": verdict.website_down,
            "verdict_source": source,
        }

    def _match_cp(self, tk: Mapping[str, Any]) -> tuple[list[str], list[str]]:
        assert self.signatures is not None
        names: list[str] = []
        fps: list[str] = []
        for request in tk.get("requests") or ():
            response = request.get("response") if isinstance(request, dict) else None
            if isinstance(response, dict):
                found, false = self.signatures.match(response_text(response))
                names.extend(found)
                fps.extend(false)
        return names, fps


def probe_lists(data: Mapping[str, Any]) -> str | None:
    """The lists the probe measured with, as "kind:sha256" joined by ";" (None: not recorded).

    Read from the annotations probes.provenance writes (`testlists_sha256`, `keywords_sha256`,
    `fingerprints_sha256`, each comma-joined hex); kind is the key without `_sha256`.
    """
    annotations = data.get("annotations")
    if not isinstance(annotations, dict):
        return None
    parts = []
    for key in LIST_KEYS:
        value = annotations.get(key)
        if isinstance(value, str) and value:
            kind = key.removesuffix("_sha256")
            parts += [f"{kind}:{digest}" for digest in value.split(",") if digest]
    return ";".join(parts) or None


def disagreement(
    tk: Mapping[str, Any], row: Mapping[str, Any], *, fingerprints_given: bool
) -> str | None:
    """Why the re-derived verdict differs from the one the probe stored (None: they agree).

    The reason names the evidence on each side, so an analyst can tell a better heuristic
    from missing fingerprints or a site that was down.
    """
    probe = blocking_text(tk.get("blocking"))
    probe_detail = tk.get("blocking_detail")
    ours, detail = row["blocking"], row["blocking_detail"]
    if probe == ours and (probe_detail is None or detail is None or probe_detail == detail):
        return None
    if probe is None and "blocking" not in tk:
        return None  # the probe stored no verdict (OONI files before analysis keys)
    said = f"probe {probe or 'null'}" + (f"/{probe_detail}" if probe_detail else "")
    got = f"analysis {ours or 'null'}" + (f"/{detail}" if detail else "")
    why: list[str] = []
    probe_fp = tk.get("blocking_fingerprint")
    if row.get("verdict_source") == PROBE_EVIDENCE:
        why.append(f"probe's fingerprint {probe_fp} kept")
    elif probe_fp and row.get("blocking_fingerprint") != probe_fp:
        why.append(f"probe matched fingerprint {probe_fp}")
    if row.get("blocking_fingerprint") and row.get("blocking_fingerprint") != probe_fp:
        why.append(f"analysis matched fingerprint {row['blocking_fingerprint']}")
    if row.get("down"):
        why.append("site down at the probe and the control")
    if tk.get("control_failure") is not None:
        why.append("control failed")
    if not fingerprints_given and not row.get("fingerprints"):
        why.append("no fingerprints given to the analysis")
    if not why:
        why.append("the analysis' rules differ from the probe's")
    return f"{said}; {got}: " + "; ".join(why)


def describe_fingerprints(classifier: Classifier) -> str:
    """What fingerprints a re-derivation used, in words a dataset card can print."""
    parts: list[str] = []
    if classifier.fingerprints is not None:
        fps = classifier.fingerprints
        parts.append(f"OONI blocking fingerprints ({len(fps.dns)} DNS, {len(fps.http)} HTTP)")
    if classifier.signatures is not None:
        sigs = classifier.signatures
        parts.append(
            f"Censored Planet signatures ({len(sigs.blockpages)} block page, "
            f"{len(sigs.false_positives)} false positive)"
        )
    return "; ".join(parts) or "none"


def default_classifier(fingerprint_dir: Path | None) -> Classifier:
    """OONI CSVs from DIR and Censored Planet signatures from DIR/censoredplanet when present."""
    if fingerprint_dir is None:
        return Classifier()
    if fingerprint_dir.is_file():  # one OONI CSV, DNS or HTTP (e.g. the lab's block page)
        return Classifier(Fingerprints.from_files([fingerprint_dir]))
    fps = Fingerprints.from_dir(fingerprint_dir)
    cp_dir = fingerprint_dir / "censoredplanet"
    sigs = CensoredPlanetSignatures.from_dir(cp_dir) if cp_dir.is_dir() else None
    if len(fps.missing_files) == 2 and sigs is None:
        raise FingerprintError(
            f"{fingerprint_dir}: no fingerprints here (expected "
            f"{' and/or '.join(fps.missing_files)}, or a censoredplanet/ folder)"
        )
    return Classifier(fps, sigs)


def rederive_dnscheck(tk: Mapping[str, Any]) -> dict[str, Any]:
    """dnscheck's verdict from its stored lookups and controls (probes.nettests.
    dnscheck_analysis, the probe's own pure function), so that ours and OONI's dnscheck
    measurements are judged by today's rules; an abandoned input (no lookups) keeps the
    probe's null. OONI's dnscheck has no control, so its measurements come out null."""
    if not isinstance(tk.get("lookups"), dict):
        return _kept(tk)
    return _rederived(analyze_dnscheck(tk), tk)


def _kept(tk: Mapping[str, Any]) -> dict[str, Any]:
    """The probe's own verdict, for an input with nothing stored to re-derive it from."""
    return {
        "blocking": blocking_text(tk.get("blocking")),
        "blocking_detail": _text(tk.get("blocking_detail")),
        "down": False,
        "verdict_source": "probe",
    }


def _rederived(found: Any, tk: Mapping[str, Any]) -> dict[str, Any]:
    """The row of a verdict re-derived from stored keys, with the probe's differing verdict
    kept as the disagreement."""
    row: dict[str, Any] = {
        "blocking": blocking_text(found.blocking),
        "blocking_detail": found.blocking_detail,
        "blocking_fingerprint": None,
        "down": False,
        "verdict_source": "rederived",
    }
    said = (blocking_text(tk.get("blocking")), tk.get("blocking_detail"))
    if "blocking" in tk and said != (row["blocking"], row["blocking_detail"]):
        row["disagreement"] = f"probe said {said[0]} / {said[1]}"
    return row


def rederive_app(app: str, tk: Mapping[str, Any]) -> dict[str, Any]:
    """A messaging-app nettest's verdict from its stored keys (probes.nettests.apps_analysis):
    OONI's anomaly for the app (probe-cli's summary keys), typed by the failing step, so that
    OONI's whatsapp, telegram, signal and facebook_messenger measurements, which carry no
    `blocking`, are judged as ours are."""
    found = analyze_app(app, tk)
    row = _rederived(found, tk)
    row["down"] = found.down  # the anomaly is explained by targets down at the control too
    return row


# Our ech_check and OONI's echcheck (ooni/spec ts-039): the same handshake records.
ECH_TESTS = ("ech_check", "echcheck")


def rederive_ech_check(tk: Mapping[str, Any]) -> dict[str, Any]:
    """ech_check's verdict from its stored handshakes (probes.nettests.ech_check_analysis);
    OONI's echcheck has one round, so it comes out false or null. An input with no handshake
    (DNS failed, abandoned) keeps the probe's verdict."""
    if not tk.get("tls_handshakes") and not isinstance(tk.get("control"), dict):
        return _kept(tk)
    return _rederived(analyze_ech_check(tk), tk)


def rederive_quic_sni(tk: Mapping[str, Any]) -> dict[str, Any]:
    """quic_sni's verdict from its stored handshakes (probes.nettests.quic_sni_analysis, the
    probe's own pure function); an abandoned input (no handshakes) keeps the probe's null."""
    if not isinstance(tk.get("quic_handshakes"), list) or not tk["quic_handshakes"]:
        return _kept(tk)
    return _rederived(analyze_quic_sni(tk), tk)


def rederive_download(tk: Mapping[str, Any]) -> dict[str, Any]:
    """download's verdict from its stored transfers (probes.nettests.download_analysis, the
    probe's own pure function): a threshold changed later applies to old measurements. An
    input abandoned before any transfer keeps the probe's null."""
    if not isinstance(tk.get("transfers"), list) or not tk["transfers"]:
        return _kept(tk)
    return _rederived(analyze_download(tk), tk)
