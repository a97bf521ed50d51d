"""Writing score rows: CSV, JSON Lines or Parquet by extension, atomically, with a crash journal.

While a job runs, every row is appended to `OUT.partial` (JSON Lines) as it arrives, so a crash or
SIGKILL leaves the work done so far on disk. At the end the sorted rows are written to a temporary
file beside OUT and renamed over it, and the journal is removed.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Literal

from agent.errors import UserError
from agent.scoring import ROW_COLUMNS, ROW_SCHEMA, ScoreRow

OutputFormat = Literal["csv", "jsonl", "parquet"]
COLUMNS = ROW_COLUMNS


def output_format(path: Path) -> OutputFormat:
    """The format OUT's extension asks for; checked before any scoring starts."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".parquet":
        if importlib.util.find_spec("pyarrow") is None:
            raise UserError(f"{path}: writing .parquet needs pyarrow; pip install 'metricsmith[parquet]'")
        return "parquet"
    raise UserError(f"{path}: unknown output extension {suffix!r}; use .csv, .jsonl or .parquet")


def journal_path(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


class Journal:
    """Append-only JSON Lines record of rows as they arrive."""

    def __init__(self, path: Path) -> None:
        self.path = journal_path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] = self.path.open("w", encoding="utf-8")

    def append(self, rows: list[ScoreRow]) -> None:
        self._file.writelines(json.dumps(row.as_dict(), allow_nan=False) + "\n" for row in rows)
        self._file.flush()

    def discard(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)


def write_rows(path: Path, rows: list[ScoreRow]) -> None:
    """Write all rows to `path` atomically, in the format its extension names."""
    fmt = output_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(descriptor)
    try:
        if fmt == "csv":
            _write_csv(Path(temporary), rows)
        elif fmt == "jsonl":
            _write_jsonl(Path(temporary), rows)
        else:
            _write_parquet(Path(temporary), rows)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _write_csv(path: Path, rows: list[ScoreRow]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for row in rows:
            writer.writerow(["" if value is None else value for value in (getattr(row, c) for c in COLUMNS)])


def _write_jsonl(path: Path, rows: list[ScoreRow]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row.as_dict(), allow_nan=False) + "\n" for row in rows)


def _write_parquet(path: Path, rows: list[ScoreRow]) -> None:
    import pyarrow as pa  # optional extra, checked by output_format()
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist([row.as_dict() for row in rows], schema=_parquet_schema(pa))
    pq.write_table(table, path)


def _parquet_schema(pa):  # type: ignore[no-untyped-def]
    return pa.schema(
        [
            ("metric", pa.string()),
            ("level", pa.string()),
            ("image_id", pa.int64()),
            ("annotation_id", pa.int64()),
            ("score", pa.float64()),
            ("error_kind", pa.string()),
            ("error", pa.string()),
        ]
    )


def read_rows(path: Path) -> list[ScoreRow]:
    """Read rows back from a CSV or JSON Lines file written by `write_rows` (or a journal)."""
    fmt = output_format(path) if path.suffix != ".partial" else "jsonl"
    if fmt == "jsonl":
        with path.open(encoding="utf-8") as handle:
            return [ROW_SCHEMA.validate_json(line) for line in handle if line.strip()]
    if fmt == "csv":
        with path.open(newline="", encoding="utf-8") as handle:
            return [
                ROW_SCHEMA.validate_python({key: (value if value != "" else None) for key, value in record.items()})
                for record in csv.DictReader(handle)
            ]
    import pyarrow.parquet as pq

    return [ROW_SCHEMA.validate_python(record) for record in pq.read_table(path).to_pylist()]
