"""Content hashes of the lists a run measured with, stored in each measurement's annotations.

OONI notes that a verdict cannot be re-derived once nobody knows which test list, keyword list
or fingerprints produced it. A path says nothing once the file changes, so each measurement
names the SHA-256 of the bytes of every list it was measured with. Annotations are
string-to-string in OONI's format (probe-cli `model.Measurement.Annotations`), so several files
of one kind are comma-joined in the order they were given; a kind not used is left out.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

# Annotation keys (docs/data-format.md).
TESTLISTS = "testlists_sha256"
KEYWORDS = "keywords_sha256"
FINGERPRINTS = "fingerprints_sha256"
LIST_KEYS = (TESTLISTS, KEYWORDS, FINGERPRINTS)

_CHUNK = 1 << 20


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks (lists can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def list_annotations(
    testlists: Iterable[str | Path] = (),
    keywords: str | Path | None = None,
    fingerprints: Iterable[str | Path] = (),
) -> dict[str, str]:
    """The annotations naming the lists of a run (read now: a resumed run hashes what it reads).

    A file that cannot be read is left out rather than failing: the run checks its lists
    itself and says what is wrong with them.
    """
    out: dict[str, str] = {}
    for key, paths in (
        (TESTLISTS, list(testlists)),
        (KEYWORDS, [keywords] if keywords else []),
        (FINGERPRINTS, list(fingerprints)),
    ):
        hashes = []
        for path in paths:
            try:
                hashes.append(file_sha256(path))
            except OSError:
                continue
        if hashes:
            out[key] = ",".join(hashes)
    return out
