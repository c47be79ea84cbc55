"""Which web_connectivity procedure decides a measurement: the one its test_version names.

A measurement keeps the evidence of the procedure that made it: 0.4 (and the older releases
OONI still stores) records ``requests`` newest first and one connect per address; 0.5 records
transactions joined by ``transaction_id`` and tagged ``depth=N``/``fetch_body=``. Re-deriving
an old measurement with the new rules would misread it, so analysis, benches and the probe
all come here and get v0.4's ``analyze`` below 0.5 and ``analyze_v05`` from 0.5 on.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from probes.fingerprints import Fingerprints
from probes.nettests.web_connectivity_analysis import AsnLookup, WebConnectivityVerdict, analyze
from probes.nettests.web_connectivity_v05 import V05Verdict, analyze_v05

V05 = (0, 5)
_VERSION_RE = re.compile(r"^\s*(\d+)\.(\d+)")


def uses_v05(test_version: Any) -> bool:
    """True for test_version 0.5.0 and later; an unreadable version means the old rules."""
    found = _VERSION_RE.match(test_version) if isinstance(test_version, str) else None
    return found is not None and (int(found.group(1)), int(found.group(2))) >= V05


def analyze_measurement(
    test_keys: Mapping[str, Any] | None,
    test_version: Any,
    *,
    url: str | None = None,
    fingerprints: Fingerprints | None = None,
    asn_lookup: AsnLookup | None = None,
) -> WebConnectivityVerdict | V05Verdict:
    """The verdict of one stored web_connectivity measurement, by its own procedure."""
    if uses_v05(test_version):
        return analyze_v05(test_keys, url=url, fingerprints=fingerprints, asn_lookup=asn_lookup)
    return analyze(test_keys, url=url, fingerprints=fingerprints, asn_lookup=asn_lookup)
