"""Writing score rows: CSV, JSON Lines or Parquet by extension, atomically, with a crash journal.

While a job runs, every row is appended to `OUT.partial` (JSON Lines) as it arrives, so a crash or
SIGKILL leaves the work done so far on disk. At the end the sorted rows are written to a temporary
file beside OUT and renamed over it, and the journal is removed.

A score file describes its own metrics, so that `eval` and `report` need neither the metric files
nor `--direction`: each row carries its metric's `level`, `suspicious` direction, `code_sha256` and
`origin`. They repeat on every row (CSV columns, JSON fields) rather than sitting in a header,
because a header would not survive `sort`, `grep` or `cat a.csv b.csv`. Parquet has the same
columns, dictionary-encoded so the repeats cost next to nothing, and also the per-metric table in
its schema metadata under `metricsmith` (JSON: `{"metrics": {NAME: {"level", "suspicious",
"code_sha256", "origin"}}}`) for tools that read a schema without reading rows; metricsmith itself
reads the columns. Files written before these columns existed still read: their rows have None there.

A directory of Parquet parts (`agent.metrics.parts`, `score --out DIR/`) has the same schema and
metadata on every part; `read_rows` reads it as one file, sorted as `write_rows` sorts.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import secrets
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any, Literal

import orjson
from pydantic import ValidationError

from agent.errors import UserError
from agent.metrics.contract import MetricSpec
from agent.metrics.scoring import ROW_COLUMNS, ROW_SCHEMA, ScoreRow

OutputFormat = Literal["csv", "jsonl", "parquet"]
COLUMNS = ROW_COLUMNS
PARQUET_METADATA_KEY = b"metricsmith"
# Columns whose values repeat on every row of a metric: read once per distinct value, not once per row.
_REPEATED = ("metric", "level", "error_kind", "suspicious", "code_sha256", "origin")


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


def check_output_folder(path: Path, folder: Path | None = None) -> None:
    """Refuse, before any scoring, an output whose folder can't be made or written: after the run it was an
    error about a temporary file (`OUT.partial`, `.OUT.xxxx`) the user never named.

    `path` is the `--out` as given; `folder` the folder its files go into (by default the one `path` is in).
    """
    folder = path.absolute().parent if folder is None else folder.absolute()
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"--out {path}: {existing} is a file, so no folder can be made in it")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"--out {path}: {existing} is not writable")
    # Permission bits don't tell everything (root may write anywhere they allow, yet not into /proc or a
    # read-only mount): a file made and removed at once does, in the folder or where its folders will be made.
    try:
        tempfile.TemporaryFile(dir=existing, prefix=".metricsmith-probe-").close()
    except OSError as error:
        raise UserError(f"--out {path}: no file can be made in {existing}: {error.strerror or error}") from error


def journal_path(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def readable_format(path: Path) -> OutputFormat:
    """The format of a score file to read: as `output_format`, and JSON Lines for a journal (`OUT.partial`,
    or `OUT.partial.N`, one kept from a run that stopped)."""
    if path.suffix == ".partial" or (path.suffix[1:].isdigit() and Path(path.stem).suffix == ".partial"):
        return "jsonl"
    if path.suffix.lower() not in (".csv", ".jsonl", ".ndjson", ".parquet"):
        raise UserError(
            f"{path}: not a score file by its name; score files are .csv, .jsonl or .parquet (or a folder of "
            "Parquet parts), as `metricsmith score --out` writes them"
        )
    return output_format(path)


class Journal:
    """Append-only JSON Lines record of rows as they arrive.

    A journal already there is an earlier run's that stopped before it finished (killed, or the machine
    went down): it is kept, renamed `OUT.partial.N` (`kept`), not overwritten; `eval` and `report` read it.
    """

    def __init__(self, path: Path) -> None:
        self.path = journal_path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.kept: Path | None = None
        if self.path.exists():
            number = 1
            while self.path.with_name(f"{self.path.name}.{number}").exists():
                number += 1
            self.kept = self.path.with_name(f"{self.path.name}.{number}")
            self.path.rename(self.kept)
        self._file: IO[bytes] = self.path.open("wb")

    def append(self, rows: list[ScoreRow]) -> None:
        self._file.writelines(json_line(row) for row in rows)
        self._file.flush()

    def discard(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)


def write_rows(path: Path, rows: list[ScoreRow]) -> None:
    """Write all rows to `path` atomically, in the format its extension names."""
    fmt = output_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _new_file_beside(path)
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


def _new_file_beside(path: Path) -> str:
    """A new, empty, hidden file in `path`'s folder, to be renamed over it once written.

    Made with mode 0666 less the umask, as `open()` makes files: mkstemp's 0600 made a score file that
    nobody else could read, unlike every other file a run writes.
    """
    for _ in range(100):
        candidate = path.parent / f".{path.name}.{secrets.token_hex(4)}"
        try:
            os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return str(candidate)
    raise FileExistsError(f"no free temporary name beside {path}")


def _write_csv(path: Path, rows: list[ScoreRow]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for row in rows:
            writer.writerow(["" if value is None else value for value in (getattr(row, c) for c in COLUMNS)])


def json_line(row: ScoreRow) -> bytes:
    """The row as one line of JSON Lines, in UTF-8.

    orjson, not the standard library's json: a run writes each row twice (journal, then file), and
    json.dumps cost about a tenth of a 2,000-image run with every built-in. orjson would write a score that
    is not finite as null; such a score is refused instead, as json.dumps(allow_nan=False) refused it.
    """
    if row.score is not None and not math.isfinite(row.score):
        raise ValueError(f"{row.metric}: score {row.score!r} is not a finite number")
    return orjson.dumps(row.as_dict(), option=orjson.OPT_APPEND_NEWLINE)


def _write_jsonl(path: Path, rows: list[ScoreRow]) -> None:
    with path.open("wb") as handle:
        handle.writelines(json_line(row) for row in rows)


def _write_parquet(path: Path, rows: list[ScoreRow]) -> None:
    import pyarrow.parquet as pq  # optional extra, checked by output_format()

    pq.write_table(parquet_table(rows, parquet_metadata(recorded_metrics(rows, str(path)).values())), path)


def parquet_metadata(metrics: Iterable[RecordedMetric]) -> str:
    """The `metricsmith` schema metadata of a Parquet score file (or each part of a directory): its metrics."""
    described = {
        m.name: {"level": m.level, "suspicious": m.suspicious, "code_sha256": m.code_sha256, "origin": m.origin}
        for m in metrics
    }
    return json.dumps({"metrics": described})


def parquet_table(rows: list[ScoreRow], metadata: str) -> Any:
    """The rows as a pyarrow Table with the score file's schema and `metadata` (`parquet_metadata`)."""
    import pyarrow as pa  # optional extra, checked by output_format()

    schema = _parquet_schema(pa).with_metadata({PARQUET_METADATA_KEY: metadata})
    return pa.Table.from_pylist([row.as_dict() for row in rows], schema=schema)


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
            ("suspicious", pa.string()),
            ("code_sha256", pa.string()),
            ("origin", pa.string()),
        ]
    )


def read_rows(path: Path) -> list[ScoreRow]:
    """Read rows back from a file written by `write_rows`, a journal, or a directory of Parquet parts
    (`agent.metrics.parts`); a bad row is a UserError naming it."""
    fmt = "parquet" if path.is_dir() else readable_format(path)
    if fmt == "jsonl":
        with path.open(encoding="utf-8") as handle:
            return _validated(path, _json_records(path, handle))
    if fmt == "csv":
        with path.open(newline="", encoding="utf-8") as handle:
            records = (
                {key: (value if value != "" else None) for key, value in record.items()}
                for record in csv.DictReader(handle)
            )
            return _validated(path, records)
    import pyarrow as pa  # optional extra, checked by output_format()
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except pa.ArrowException as error:
        raise UserError(f"{path}: not a readable Parquet file: {error}") from None
    rows = _validated(path, table.to_pylist())
    if path.is_dir():
        # Parts come in no order; sorted as `write_rows` sorts, by metric (as the metadata lists them), then item.
        metadata = json.loads((table.schema.metadata or {}).get(PARQUET_METADATA_KEY, b"{}"))
        order = {name: index for index, name in enumerate(metadata.get("metrics", {}))}
        rows.sort(key=lambda row: (order.get(row.metric, len(order)), row.metric, row.image_id, row.annotation_id or 0))
    return rows


def _json_records(path: Path, lines: Iterable[str]) -> Iterator[Any]:
    for number, line in enumerate((line for line in lines if line.strip()), start=1):
        try:
            yield json.loads(line)
        except json.JSONDecodeError as error:
            raise UserError(f"{path}: row {number}: not JSON: {error.msg}") from None


def _validated(path: Path, records: Iterable[Any]) -> list[ScoreRow]:
    """Rows from plain records, each checked by `ROW_SCHEMA`; the repeated strings are shared, not copied."""
    # Without sharing, every row would hold its own copy of its metric's 64-character sha256 and origin:
    # on a large dataset that is hundreds of bytes per row, more than the row itself.
    shared: dict[str, str] = {}
    rows = []
    for number, record in enumerate(records, start=1):
        if isinstance(record, dict):
            for key in _REPEATED:
                value = record.get(key)
                if isinstance(value, str):
                    record[key] = shared.setdefault(value, value)
        try:
            rows.append(ROW_SCHEMA.validate_python(record))
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "the row"
            raise UserError(f"{path}: row {number}: {where}: {first['msg']}") from None
    return rows


# -- what a score file says about its metrics -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class RecordedMetric:
    """One metric as its rows in a score file describe it; None where the file does not say."""

    name: str
    level: str
    suspicious: Literal["high", "low"] | None
    code_sha256: str | None
    origin: str | None
    where: str  # the file, for messages

    def code(self) -> str:
        """The code as messages show it: `sha256 0123456789ab from ORIGIN`."""
        shown = f"sha256 {(self.code_sha256 or '')[:12]}"
        return f"{shown} from {self.origin}" if self.origin else shown


# Fields two records of one metric must agree on, with the name a message gives each. The origin may
# differ: the same code scored from its file and, after promotion, from the library is the same metric.
_MUST_AGREE = (("level", "level"), ("suspicious", "SUSPICIOUS"), ("code_sha256", "code"))


def recorded_metrics(rows: Iterable[ScoreRow], where: str) -> dict[str, RecordedMetric]:
    """Each metric of one file's rows, in first-seen order; rows of one metric that disagree are a UserError."""
    found: dict[str, RecordedMetric] = {}
    last: dict[str, tuple[str, str | None, str | None, str | None]] = {}
    for row in rows:
        described = (row.level, row.suspicious, row.code_sha256, row.origin)
        # Nearly every row repeats the one before it; only a change needs a closer look.
        if last.get(row.metric) == described:
            continue
        last[row.metric] = described
        record = RecordedMetric(row.metric, *described, where=where)
        known = found.get(row.metric)
        found[row.metric] = record if known is None else _combined(known, record)
    return found


def combine_recorded(*tables: Mapping[str, RecordedMetric]) -> dict[str, RecordedMetric]:
    """The metrics of several score files by name; one name described differently by two files is a UserError.

    Two files may share a metric (one dataset scored in parts), as long as it is the same metric.
    """
    combined: dict[str, RecordedMetric] = {}
    for table in tables:
        for name, record in table.items():
            known = combined.get(name)
            combined[name] = record if known is None else _combined(known, record)
    return combined


def scored_twice(spec: MetricSpec, record: RecordedMetric) -> str:
    """Why a metric may not be both read from a score file and scored with --metric: its rows would mix."""
    if record.code_sha256 is None:
        return f"metric {spec.name} is both scored with --metric {spec.path} and read from --scores {record.where}"
    if record.code_sha256 == spec.code_sha256:
        return (
            f"metric {spec.name} is read from {record.where} and would be scored again with --metric {spec.path} "
            f"(the same code, sha256 {spec.code_sha256[:12]}); drop one of the two"
        )
    return (
        f"metric {spec.name}: {record.where} holds scores of other code ({record.code()}) "
        f"than --metric {spec.path} (sha256 {spec.code_sha256[:12]}); evaluate them separately"
    )


def distinct_score_files(paths: Sequence[Path]) -> None:
    """Refuse one score file given twice: its rows would count twice, and be refused as two rows for one item."""
    seen: dict[Path, Path] = {}
    for path in paths:
        first = seen.setdefault(path.resolve(), path)
        if first is not path:
            raise UserError(f"--scores {path} is given twice" + (f" (as {first})" if str(first) != str(path) else ""))


def _combined(known: RecordedMetric, other: RecordedMetric) -> RecordedMetric:
    """`known` completed by `other`, a record of the same metric; None is "not said" and never disagrees."""
    for field, label in _MUST_AGREE:
        mine, theirs = getattr(known, field), getattr(other, field)
        if mine is not None and theirs is not None and mine != theirs:
            if field == "code_sha256":
                mine, theirs = known.code(), other.code()
            if known.where == other.where:
                raise UserError(
                    f"{known.where}: metric {known.name} has rows with {label} {mine} and rows with {theirs}; "
                    "a score file must hold one version of each metric"
                )
            raise UserError(
                f"metric {known.name}: {known.where} has {label} {mine} but {other.where} has {theirs}; "
                "these are two different metrics under one name: evaluate them separately"
            )
    filled = {field: getattr(other, field) for field, _ in _MUST_AGREE if getattr(known, field) is None}
    if known.origin is None:
        filled["origin"] = other.origin
    return replace(known, **filled) if filled else known
