"""Is the certificate the probe saw the one the control saw? (TLS interception evidence)

Pure functions. The probe's side is a df-006 ``tls_handshakes`` entry plus our summary
(``x_leaf_spki_sha256``, ``x_issuer``, ``x_verified``); the control's side is the helper's
``x_tls_certificates`` entry for the same ``ip:port`` and SNI (``leaf_spki_sha256``, ``issuer``,
``verified``). A middlebox that re-signs traffic shows a different leaf key under an issuer the
control never sees, and its chain does not validate to the public roots. A CDN that serves
another certificate in another region shows a different key too, but its chain validates to the
same public roots: that is not interception.

A root the user was made to install (Kazakhstan's "Qaznet Trust Network", 2019) makes the
re-signed chain validate on the device: validation alone cannot tell it from a CDN. What the
control sees can: the re-signed leaf's issuer belongs to another organisation than the issuer of
the genuine leaf (``other_issuer``, interception). Only the issuing *organisation* is compared,
because one CA signs with several intermediates (Let's Encrypt's R10 and R11 hand out
certificates at random), so two edges of one CDN can differ in the issuer's CN.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

INTERCEPTED = "tls.intercepted"
SAME = "same"  # same leaf key
OTHER_VALID = "other_valid"  # other key, but it validates to the public roots (CDN, rotation)
OTHER_INVALID = "other_invalid"  # other key that does not validate: interception
OTHER_ISSUER = "other_issuer"  # other key from another issuing organisation: interception
UNKNOWN = "unknown"  # one side has no certificate to compare


@dataclass(frozen=True)
class Comparison:
    outcome: str
    probe_spki: str | None
    control_spki: str | None
    probe_issuer: str | None
    control_issuer: str | None

    @property
    def intercepted(self) -> bool:
        return self.outcome in (OTHER_INVALID, OTHER_ISSUER)

    def as_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "probe_leaf_spki_sha256": self.probe_spki,
            "control_leaf_spki_sha256": self.control_spki,
            "probe_issuer": self.probe_issuer,
            "control_issuer": self.control_issuer,
        }


def compare(probe: Mapping[str, Any], control: Mapping[str, Any] | None) -> Comparison:
    """Compare the probe's handshake summary with the control's for the same endpoint and SNI."""
    control = control or {}
    p_spki, c_spki = probe.get("x_leaf_spki_sha256"), control.get("leaf_spki_sha256")
    p_issuer, c_issuer = probe.get("x_issuer"), control.get("issuer")
    if not p_spki or not c_spki:
        outcome = UNKNOWN
    elif p_spki == c_spki:
        outcome = SAME
    elif probe.get("x_verified") and control.get("verified"):
        same_org = not p_issuer or not c_issuer or issuer_org(p_issuer) == issuer_org(c_issuer)
        outcome = OTHER_VALID if same_org else OTHER_ISSUER
    elif not control.get("verified"):
        # The control's own chain does not validate either (a self-signed site): nothing to
        # hold the probe's chain against.
        outcome = UNKNOWN
    else:
        outcome = OTHER_INVALID
    return Comparison(outcome, p_spki, c_spki, p_issuer, c_issuer)


def issuer_org(issuer: str) -> str:
    """The O= of an RFC 4514 issuer string (the whole string when it has none)."""
    try:
        from cryptography import x509
        from cryptography.x509.oid import NameOID

        name = x509.Name.from_rfc4514_string(issuer)
    except (ImportError, ValueError):
        return issuer
    orgs = name.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return str(orgs[0].value) if orgs else issuer


def probe_summary(
    record: Mapping[str, Any], spki: str | None, issuer: str | None, verified: bool
) -> dict[str, Any]:
    """A df-006 record with the fields `compare` reads (kept in the measurement as evidence)."""
    return {**record, "x_leaf_spki_sha256": spki, "x_issuer": issuer, "x_verified": verified}
