"""The per-request timeline: one row per request, written as CSV or Parquet by extension."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from runtime.execution.recorder import TIMELINE_COLUMNS


def write_timeline(rows: Sequence[tuple[Any, ...]], path: str | Path) -> Path:
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise ValueError(f"--timeline {path}: the file must end in .csv or .parquet")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".csv":
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(TIMELINE_COLUMNS)
            writer.writerows(rows)
        return path
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns: list[list[Any]] = [[] for _ in TIMELINE_COLUMNS]
    for row in rows:
        for column, value in zip(columns, row, strict=True):
            column.append(value)
    table = pa.table(dict(zip(TIMELINE_COLUMNS, columns, strict=True)))
    pq.write_table(table, path)
    return path
