"""How OONI's own tools read a raw file of the bucket, reproduced for our tests.

Written by us from ooni/data `oonidata/src/oonidata/dataclient.py` (commit
40ecc64cfcf0c84606a37c27bd474789b69ee88f), which lists `s3://ooni-data-eu-fra/raw/YYYYMMDD/`
and turns each key into a `FileEntry`:

- `get_file_entry_ext`: the extension is the first of `jsonl.gz`, `json.gz`, `tar.gz`,
  `tar.lz4`, `json.lz4`, `yaml.lz4` the file name ends with (after a dot);
- `get_filename_meta_v2` (for `jsonl.gz` and `tar.gz`): the name split on `_`; the first part is
  the bucket timestamp `%Y%m%d%H` (an 8-digit one gets hour 00), the second the probe_cc, the
  third up to its first `.` the test name;
- `FileEntry.matches_filter`: a file is kept when its probe_cc is among the countries asked for
  (or none were), its test name among the test names (or none), and its timestamp in
  [start, end);
- `stream_jsonl`: gzip, then one JSON document per line.

The layout itself (`raw/<timestamp>/<hour>/<cc>/<testname>/<ts2>_<cc>_<testname>.<host_id>.
<counter>.jsonl.gz`, test names without underscores) is ooni/backend docs/MeasurementUploader.md.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

EXTENSIONS = ("jsonl.gz", "json.gz", "tar.gz", "tar.lz4", "json.lz4", "yaml.lz4")


def file_entry_ext(filename: str) -> str:
    for ext in EXTENSIONS:
        if filename.endswith("." + ext):
            return ext
    return filename.split(".")[-1]


@dataclass(frozen=True)
class FileEntry:
    s3path: str
    timestamp: datetime
    probe_cc: str
    testname: str
    ext: str

    @classmethod
    def from_key(cls, key: str) -> FileEntry:
        filename = key.split("/")[-1]
        ext = file_entry_ext(filename)
        if ext not in ("jsonl.gz", "tar.gz"):
            raise ValueError(f"unsupported file entry extension: {ext}")
        parts = filename.split("_")
        stamp = parts[0] + ("00" if len(parts[0]) == 8 else "")
        return cls(
            s3path=key,
            timestamp=datetime.strptime(stamp, "%Y%m%d%H"),
            probe_cc=parts[1],
            testname=parts[2].split(".")[0],
            ext=ext,
        )

    def matches_filter(
        self, ccs: set[str], testnames: set[str], start: datetime, end: datetime
    ) -> bool:
        if self.probe_cc and ccs and self.probe_cc not in ccs:
            return False
        if self.testname and testnames and self.testname not in testnames:
            return False
        return start <= self.timestamp < end


def stream_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with gzip.open(path, "rb") as handle:
        for line in handle:
            if line == b"":
                continue
            yield orjson.loads(line)
