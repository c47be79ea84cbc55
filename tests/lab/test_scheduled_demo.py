"""Two scheduled vantages upload to one collector in the lab; the analysis compares them.

Runs the real processes (collector, two `censorscope schedule run` daemons, `censorscope
analyze`) and judges them only by what they stored and wrote, against the scenario.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from lab.demo import VANTAGES, ScheduledRun, run_scheduled
from lab.topology import LabInfo


def test_two_scheduled_vantages_one_collector(lab: LabInfo, tmp_path: Path) -> None:
    if not lab.helper_url:
        pytest.skip("the lab's control helper did not start")
    # 5 runs: the fewest whose blocks pass analyze's finding gates (lab.demo.run_scheduled)
    result = run_scheduled(lab, tmp_path / "scheduled", interval=2.0, runs=5)
    # Every daemon stopped on SIGTERM by itself (None: it had to be killed).
    assert result.daemon_status == {"cn": 0, "open": 0}, result.daemon_status
    want = 5 * len(result.inputs)
    for v in VANTAGES:
        stored = result.collected.get(v, [])
        assert len(stored) >= want, (v, len(stored), want)
        dupes = [uid for uid, n in Counter(stored).items() if n > 1]
        assert not dupes, f"{v}: stored more than once: {dupes[:3]}"
        # Exactly what the vantage measured, each once: nothing lost, nothing added.
        assert sorted(stored) == sorted(result.local[v]), v
    assert set(result.collected) == set(VANTAGES)

    assert result.analyze is not None and result.analyze.returncode == 0, result.analyze
    kinds = {result.expected[u] for u in result.inputs}
    assert kinds == {"blocked at cn", "accessible everywhere"}, "inputs must cover both"
    for url in result.inputs:
        assert result.findings.get(url) == result.expected[url], (
            url,
            result.mechanisms[url],
            result.findings.get(url),
        )
    _keyword_chain_holds(result)


def _keyword_chain_holds(result: ScheduledRun) -> None:
    """Scheduled keyword checks at both vantages, through the collector (issue 15 item 3):
    every planted platform rule, and the sentence holding one, is filtered at cn only; the
    benign words nowhere; isolation found the sentence's combination; the report says so."""
    assert result.keyword_inputs and result.keyword_findings is not None
    assert result.keyword_expected is not None and result.isolated is not None
    for keyword in result.keyword_inputs:
        got = result.keyword_findings.get((keyword, "relay"))
        assert got == result.keyword_expected[keyword], (keyword, got)
    sentence = result.keyword_inputs[-1]
    assert len(sentence.split()) > 2
    assert result.http_keyword_expected, "the lab helper serves echo ports"
    for (keyword, placement), expected in result.http_keyword_expected.items():
        got = result.keyword_findings.get((keyword, placement))
        assert got == expected, (keyword, placement, got)
    isolated = {rule for rules in result.isolated.values() for rule in rules}
    assert "tank+man" in isolated, result.isolated
    assert result.report is not None
    page = result.report.read_text(encoding="utf-8")
    assert "id='keyword-findings'" in page and "tank+man" in page
