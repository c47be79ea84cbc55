"""The same comparison on Dask DataFrame over Parquet partitioned by date and test.

For stores too large for one pandas frame: measurements are written (or published) as Parquet
partitioned `date=/test_name=`, Dask reads them lazily and analysis.compare runs unchanged
(its per-measurement step is a group-by sum that Dask distributes). Needs the `dask` extra.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from analysis.compare import DEFAULT_WINDOW, Comparison, Gates, compare

PARTITIONS = ["date", "test_name"]


def _arrow_table(frame: pd.DataFrame) -> pa.Table:
    out = frame.copy()
    out["date"] = out["time"].dt.strftime("%Y-%m-%d").fillna("unknown")
    # Categories become plain strings so every partition file has the same schema.
    for name in out.columns:
        if isinstance(out[name].dtype, pd.CategoricalDtype):
            out[name] = out[name].astype(pd.ArrowDtype(pa.string()))
    return pa.Table.from_pandas(out, preserve_index=False)


def write_partitioned(frame: pd.DataFrame, root: Path) -> None:
    """Parquet under ROOT/date=YYYY-MM-DD/test_name=NAME/, one file per partition."""
    pq.write_to_dataset(
        _arrow_table(frame),
        root_path=str(root),
        partition_cols=PARTITIONS,
        basename_template="part-{i}.parquet",
        existing_data_behavior="delete_matching",
    )


def write_piece(frame: pd.DataFrame, path: Path) -> None:
    """One chunk of a streamed load as one Parquet file (date and test_name as columns).

    A chunk split by date and test makes many tiny files (a 1M-line run made 10,000), and
    Dask pays per file; `read_partitioned` reads a directory of these the same way.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(_arrow_table(frame), str(path))


def read_partitioned(root: Path) -> Any:
    import dask.dataframe as dd

    frame = dd.read_parquet(str(root), dataset={"partitioning": "hive"})
    return frame


@contextmanager
def dask_client(
    scheduler: str | None = None, workers: int = 2, processes: bool = True
) -> Iterator[Any]:
    """A Dask client: of the cluster at `scheduler`, or of a LocalCluster of `workers`
    single-threaded workers started here (processes, or threads with `processes=False`)."""
    from dask.distributed import Client, LocalCluster

    if scheduler:
        with Client(scheduler) as client:
            yield client
        return
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=processes,
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def compare_parquet(
    root: Path, window: str | None = DEFAULT_WINDOW, gates: Gates | None = None
) -> Comparison:
    """analysis.compare over the partitioned dataset, on the current Dask scheduler."""
    frame = read_partitioned(root)
    frame = frame.map_partitions(_restore, meta=_restore(frame._meta))
    return compare(frame, window, gates)


def _restore(part: pd.DataFrame) -> pd.DataFrame:
    """Give Parquet partitions back the loader's column types (time in UTC, test_name text)."""
    part = part.copy()
    part["test_name"] = part["test_name"].astype(pd.ArrowDtype(pa.string()))
    part["time"] = pd.to_datetime(part["time"], utc=True)
    return part
