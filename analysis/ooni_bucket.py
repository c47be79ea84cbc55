"""Files of a local mirror of OONI's measurement bucket, as OONI lays it out.

OONI publishes raw measurements as `raw/YYYYMMDD/HH/CC/testname/*.jsonl.gz` (s3://ooni-data-eu-fra;
`testname` is the nettest's name without underscores, e.g. `webconnectivity`, as
oonidata's dataclient builds the prefix). `--ooni DIR` takes such a tree (or any folder of
JSON/JSONL files, gzipped or not); date and nettest filters prune it by path before any file is
opened, as the store's `date=`/`test_name=` layout is pruned. A published dataset's `raw/`
(analysis.bulk writes it in this layout, with the same folder names) reads back the same way.

The layout's naming rules live here, for the reader and for analysis.bulk's writer: the folder
name of a nettest (`bucket_test_name`), a file's key (`bucket_key`: OONI's uploader names files
`YYYYMMDDHH_CC_testname.<host_id>.<counter>.jsonl.gz`, ooni/backend docs/MeasurementUploader.md)
and the hour a file was filed under (`bucket_hour`: its measurements' arrival).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime
from pathlib import Path, PurePosixPath

from analysis.load import Filters
from probes.measurement import compact_test_name

SUFFIXES = (".jsonl.gz", ".jsonl", ".json.gz", ".json")
RAW_DIR = "raw"  # the bucket's top folder (s3://ooni-data-eu-fra/raw/)
FILE_SUFFIX = ".jsonl.gz"
_DAY = re.compile(r"^\d{8}$")
_HOUR = re.compile(r"^\d{2}$")
# A file of the layout: raw/YYYYMMDD/HH/CC/testname/NAME (the country in capitals, as OONI's).
_KEY = re.compile(r"(?:^|/)raw/([0-9]{8})/([0-9]{2})/[A-Z]{2}/[a-z0-9_]+/[^/]+$")


def bucket_test_name(test_name: str) -> str:
    """The bucket's folder name of a nettest: `web_connectivity` -> `webconnectivity`."""
    return compact_test_name(test_name).lower()


def bucket_key(stamp: str, cc: str, testname: str, host: str, counter: int) -> PurePosixPath:
    """raw/YYYYMMDD/HH/CC/testname/YYYYMMDDHH_CC_testname.HOST.COUNTER.jsonl.gz (`stamp`:
    YYYYMMDDHH; `testname` already a folder name, see bucket_test_name)."""
    name = f"{stamp}_{cc}_{testname}.{host}.{counter}{FILE_SUFFIX}"
    return PurePosixPath(RAW_DIR, stamp[:8], stamp[8:], cc, testname, name)


def bucket_hour(path: str | Path) -> datetime | None:
    """The hour a file of the layout was filed under (UTC), None for a path outside it."""
    found = _KEY.search(Path(path).as_posix())
    if found is None:
        return None
    try:
        return datetime.strptime(found.group(1) + found.group(2), "%Y%m%d%H").replace(tzinfo=UTC)
    except ValueError:
        return None


def _kept(relative: tuple[str, ...], filters: Filters) -> bool:
    """Whether a file at raw/DAY/HOUR/CC/TEST/... can hold measurements the filters keep."""
    if len(relative) < 5 or not _DAY.match(relative[0]) or not _HOUR.match(relative[1]):
        return True  # not the bucket layout: read it and let the loader filter
    text = relative[0]
    try:
        day = date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return True
    # A measurement is filed under the hour it was uploaded, never before it was made: days
    # before `since` are pruned; days after `until` can hold late uploads and are read.
    if filters.since and day < filters.since:
        return False
    if filters.test_names:
        wanted = {bucket_test_name(t) for t in filters.test_names}
        if relative[3].lower() not in wanted:
            return False
    return True


def ooni_files(paths: Sequence[Path], filters: Filters | None = None) -> Iterator[Path]:
    """Each path as given if it is a file; a folder's measurement files in sorted order."""
    f = filters or Filters()
    for path in paths:
        path = Path(path)
        if not path.is_dir():
            yield path
            continue
        for found in sorted(p for p in path.rglob("*") if p.is_file()):
            if not found.name.endswith(SUFFIXES):
                continue
            parts = found.relative_to(path).parts
            # the bucket's tree below `raw/` (DIR may be the mirror's root or raw/ itself)
            relative = parts[1:] if parts and parts[0] == RAW_DIR else parts
            if _kept(relative, f):
                yield found
