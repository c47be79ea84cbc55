"""OONI's pipeline scores our web_connectivity measurements as it scores OONI's.

tests/ooni_pipeline_model.py reproduces, from ooni/data's source (commit c8fcc729, cited there
file by file), what the pipeline reads: DNS rows per engine and failure, the TLS certificate
reading (``no_tls_verify``), ``probe_asn`` as ``AS<number>``, ``blocking`` as
``probe_analysis``, and the DNS layer's rule cascade. The reproduction is first held to the
output of the real pipeline on OONI's own measurements
(``../shared/data/ooni/oonipipeline_v5_fuzzy_analysis.jsonl``), then run on measurements our
nettest takes on loopback with the system resolver (tests/loopback/pipeline_world.py), where
the truth is known. ``bench/ooni_pipeline.py`` runs the real pipeline on both.
"""

from __future__ import annotations

import copy
import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.loopback.pipeline_world import loopback_measurements
from tests.ooni_pipeline_model import (
    OONI_BLOCKING,
    SYSTEM_ENGINES,
    Observed,
    cert_valid,
    dns_blocked_max,
    dns_fingerprints,
    observe,
)
from tests.shared_data import SHARED_DATA

OONI = SHARED_DATA / "ooni"
REFERENCE = OONI / "oonipipeline_v5_fuzzy_analysis.jsonl"
FILES = ("web_connectivity_real.jsonl", "web_connectivity_netem_qa_synthetic.jsonl")
FINGERPRINTS = SHARED_DATA / "fingerprints" / "fingerprints_dns.csv"
BLOCKED_AT = 0.5  # a layer counts as blocked from this score on


def _lines(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (OONI / name).read_text().splitlines() if line]


def _reference() -> dict[tuple[str, int], dict[str, Any]]:
    out = {}
    for line in REFERENCE.read_text().splitlines():
        r = json.loads(line)
        if r["analysis"] is not None:  # 3 lines oonidata could not parse
            out[(r["file"], r["line"])] = r["analysis"]
    return out


def field_problems(m: dict[str, Any]) -> list[str]:
    """What in a web_connectivity measurement the pipeline would misread or fail on."""
    problems = []
    if not re.fullmatch(r"AS\d+", str(m.get("probe_asn"))):
        problems.append(f"probe_asn {m.get('probe_asn')!r} is not AS<number>")
    try:
        datetime.strptime(m["measurement_start_time"], "%Y-%m-%d %H:%M:%S")
    except (KeyError, ValueError):
        problems.append("measurement_start_time is not YYYY-MM-DD HH:MM:SS")
    if not all(isinstance(v, str) for v in (m.get("annotations") or {}).values()):
        problems.append("annotations must map strings to strings")
    tk = m.get("test_keys") or {}
    if tk.get("blocking") not in OONI_BLOCKING:
        problems.append(f"blocking {tk.get('blocking')!r} is not one of OONI's values")
    system = [q for q in tk.get("queries") or [] if q.get("engine") in SYSTEM_ENGINES]
    resolved = {q["hostname"] for q in system if q.get("answers")}
    for q in system:
        if q.get("failure") and q["hostname"] in resolved:
            problems.append(f"{q['hostname']} resolved, yet a {q['engine']} query failed")
    for h in tk.get("tls_handshakes") or []:
        if not isinstance(h.get("no_tls_verify"), bool):
            problems.append("a TLS handshake without no_tls_verify: its certificate goes unread")
    for addr in (tk.get("control") or {}).get("tcp_connect") or {}:
        if urlsplit("//" + addr).hostname is None:
            problems.append(f"control endpoint {addr!r} is not ip:port")
    return problems


# --- the reproduction, held to the real pipeline on OONI's measurements ----------------------


def _observe_file(name: str, reference: dict[tuple[str, int], dict[str, Any]]) -> list[Observed]:
    return [
        observe(m, f"{name}:{n}") for n, m in enumerate(_lines(name), 1) if (name, n) in reference
    ]


@pytest.mark.parametrize("name", FILES)
def test_reproduction_scores_oonis_measurements_as_the_real_pipeline(name: str) -> None:
    reference = _reference()
    observed = _observe_file(name, reference)  # one analysis pool per file, as the reference
    assert len(observed) >= 25
    scores = dns_blocked_max(observed, dns_fingerprints(FINGERPRINTS))
    for m in observed:
        file, line = m.uid.rsplit(":", 1)
        ref = reference[(file, int(line))]
        assert scores[m.uid][0] == pytest.approx(ref["dns_blocked_max"]), (m.uid, scores[m.uid])
        assert m.probe_asn == ref["probe_asn"]
        assert m.probe_analysis == ref["top_probe_analysis"]
        any_valid = any(r.tls and r.tls.cert_valid for r in m.rows)
        assert (ref["tls_ok_max"] == 1) == any_valid, m.uid


@pytest.mark.parametrize("name", FILES)
def test_oonis_measurements_meet_the_field_expectations(name: str) -> None:
    """The expectations we hold ours to are OONI's own probe's practice."""
    for n, m in enumerate(_lines(name), 1):
        if m.get("test_keys") is None or str(m.get("test_version", "")).startswith("0.0"):
            continue  # Measurement Kit's format predates engines and no_tls_verify
        assert field_problems(m) == [], f"{name}:{n}"


# --- our measurements ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ours(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    measurements = loopback_measurements(tmp_path_factory.mktemp("pipeline-world"))
    assert len(measurements) == 5
    return measurements


def _alone(m: dict[str, Any]) -> float:
    """The DNS score of one measurement analysed alone: our loopback sites all share the
    hostname "localhost" (on different ports), which OONI's pooled control would mix."""
    observed = observe(m, m["measurement_uid"])
    return dns_blocked_max([observed])[observed.uid][0]


def test_our_measurements_meet_the_field_expectations(ours: list[dict[str, Any]]) -> None:
    for m in ours:
        assert field_problems(m) == [], m["input"]
        queries = m["test_keys"]["queries"]
        assert [(q["engine"], q["query_type"]) for q in queries] == [("getaddrinfo", "ANY")]
        # Read into ProbeMeta; a missing one is filed as "unknown" (network_type: we cannot tell).
        assert {"architecture", "engine_name", "engine_version", "platform"} <= set(
            m["annotations"]
        )


def test_pipeline_scores_our_dns_layer_by_the_truth(ours: list[dict[str, Any]]) -> None:
    for m in ours:
        blocked = _alone(m) >= BLOCKED_AT
        assert blocked == (m["x_expected"] == "dns"), (m["input"], _alone(m))


def test_pipeline_reads_our_certificates(ours: list[dict[str, Any]]) -> None:
    # Each address's flow and the GET record a handshake (web_connectivity 0.5); all of one
    # measurement read the same.
    readings = {
        m["input"]: sorted({cert_valid(h) for h in m["test_keys"]["tls_handshakes"]}) for m in ours
    }
    assert sorted(map(str, readings.values())) == ["[False]", "[True]", "[]", "[]", "[]"]


def _old_shape(m: dict[str, Any]) -> dict[str, Any]:
    """Our recording before the fix: one getaddrinfo per family, the missing one failed."""
    old = copy.deepcopy(m)
    (lookup,) = old["test_keys"]["queries"]
    v4 = [a for a in lookup["answers"] if a["answer_type"] == "A"]
    v6 = [a for a in lookup["answers"] if a["answer_type"] == "AAAA"]
    old["test_keys"]["queries"] = [
        {**lookup, "query_type": "A", "answers": v4, "failure": None if v4 else "dns_no_answer"},
        {**lookup, "query_type": "AAAA", "answers": v6, "failure": None if v6 else "dns_no_answer"},
    ]
    return old


def test_the_old_recording_reads_as_dns_blocking(ours: list[dict[str, Any]]) -> None:
    """The reproduction tells the two shapes apart: split per family, every measurement of a
    name with one family scores DNS-blocked (the 88 of 106 of issue 12)."""
    one_family = [
        m
        for m in ours
        if len({a["answer_type"] for a in m["test_keys"]["queries"][0]["answers"]}) == 1
    ]
    if not one_family:
        pytest.skip("this machine's /etc/hosts gives localhost both families")
    for m in one_family:
        assert field_problems(_old_shape(m))
        assert _alone(_old_shape(m)) >= BLOCKED_AT, m["input"]


def test_bench_script_is_importable_without_oonipipeline() -> None:
    """bench/ooni_pipeline.py runs the real pipeline when it is installed; without it, it
    says so and exits 2 rather than failing obscurely."""
    import importlib.util

    if importlib.util.find_spec("oonipipeline") is not None:
        pytest.skip("oonipipeline is installed here: the bench runs it")
    from bench.ooni_pipeline import main

    assert main([str(Path(OONI / FILES[0]))]) == 2


def test_our_analysis_reads_both_recordings_alike(ours: list[dict[str, Any]]) -> None:
    """Stored measurements of either shape (per-family queries before, one "ANY" lookup
    now) get the same verdict from our own analysis."""
    from probes.nettests.web_connectivity_analysis import analyze

    for m in ours:
        new = analyze(m["test_keys"]).as_test_keys()
        old = analyze(_old_shape(m)["test_keys"]).as_test_keys()
        assert (new["blocking"], new["dns_consistency"]) == (
            old["blocking"],
            old["dns_consistency"],
        ), m["input"]
        assert new["blocking"] == m["test_keys"]["blocking"]
