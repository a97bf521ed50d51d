"""Score rows as a directory of Parquet parts, written where they are scored: `metricsmith score --out DIR/`.

The directory reads as one table (`pyarrow.parquet.read_table(DIR)`, `pandas.read_parquet`,
duckdb's `read_parquet('DIR/*.parquet')`, `ray.data.read_parquet`), with the single `.parquet`
file's schema and its `metricsmith` metadata on every part. Its rows are in no particular order.

Who writes what:
- `part-NNNNNN.parquet`: the ordinary metrics' rows of one batch. Under `--engine ray` the actor that
  scored the batch writes it, and NNNNNN is the batch's key; with the local engine the scoring
  process writes one part per 100,000 results as they come back.
- `part-features.parquet`: the feature metrics' rows, which only the driver can score (their
  neighbour step needs every vector). It is written even without feature metrics when no other
  part was, so that an empty run still reads as an (empty) table.

Exactly once: a part is written under a hidden temporary name (readers skip names starting with
`.`) and renamed over its final name, so a reader never sees half a part. The name comes from the
batch's key, so a batch Ray runs again after an actor died replaces its own part with the same rows
instead of adding them twice. A hidden marker file, made by the driver, tells an actor on a node
that does not share the directory to fail the job rather than write parts nobody will find.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from pydantic import BaseModel, PrivateAttr

from agent.data.coco import Dataset
from agent.errors import UserError
from agent.metrics.contract import MetricSpec
from agent.metrics.results import RecordedMetric, parquet_metadata, parquet_table
from agent.metrics.scoring import RowMaker, ScoreRow, Tally
from sandbox.engine import CallResult, OutputUnwritable
from sandbox.protocol import ImageTask

__all__ = ["FEATURES_PART", "PartWriter", "check_directory", "is_parts_directory", "part_name"]

FEATURES_PART = "part-features.parquet"
_MARKER_PREFIX = ".metricsmith-run-"
_TEMPORARY_SUFFIX = ".tmp"


def is_parts_directory(out: str) -> bool:
    """Whether `--out` names a directory of parts: it ends with a slash or is a directory already."""
    return out.endswith(("/", os.sep)) or Path(out).is_dir()


def part_name(batch: int) -> str:
    return f"part-{batch:06d}.parquet"


class PartWriter(BaseModel):
    """Writes a run's rows as parts of one directory; sent to every Ray actor, so plain data only.

    Made by `create` on the driver, which checks and prepares the directory. As a
    `sandbox.engine.BatchWriter` it writes a batch in the actor that scored it; `write` does the same
    for results that came back to this process, and `write_held` writes the feature metrics' rows.
    """

    directory: str
    marker: str  # the run's marker file, in the directory
    maker: RowMaker
    metadata: str  # `parquet_metadata` of the whole run, the same on every part
    _checked: bool = PrivateAttr(default=False)

    @classmethod
    def create(cls, directory: Path, specs: Sequence[MetricSpec], dataset: Dataset) -> PartWriter:
        """A writer of the specs' rows on the dataset into `directory`, made (or found empty) now."""
        maker = RowMaker.of(specs)
        # The single file's metadata names the metrics that have rows, in the specs' order: every image
        # metric when there are images, every object metric when there are boxes.
        levels = {"image"} if dataset.images else set()
        levels |= {"object"} if dataset.annotations else set()
        described = [
            RecordedMetric(c.name, c.level, c.suspicious, c.code_sha256, c.origin, str(directory))
            for c in maker.columns
            if c.level in levels
        ]
        return cls.prepared(directory, maker, parquet_metadata(described))

    @classmethod
    def prepared(cls, directory: Path, maker: RowMaker, metadata: str) -> PartWriter:
        """A writer into `directory`, made (or found empty) now, with the run's marker in it; else a UserError."""
        _prepare(directory)
        marker = f"{_MARKER_PREFIX}{uuid.uuid4().hex}"
        (directory / marker).touch()
        return cls(directory=str(directory), marker=marker, maker=maker, metadata=metadata)

    def __call__(
        self, batch: int, tasks: Sequence[ImageTask], results: list[CallResult]
    ) -> tuple[list[CallResult], str]:
        """In an actor: the batch's rows written as its part; (held results, the tally as JSON) for the driver."""
        # The scenes in the batch's tasks give each box's annotation id, in the order the calls number them.
        ids = {task.image_id: [obj["id"] for obj in task.scene["annotations"]] for task in tasks}
        held, tally = self.write(batch, results, ids.__getitem__)
        return held, tally.model_dump_json()

    def write(
        self, batch: int, results: list[CallResult], annotation_ids: Callable[[int], Sequence[int]]
    ) -> tuple[list[CallResult], Tally]:
        """Write the rows of `results` as part `batch`; (the held results, the rows' tally)."""
        rows, held, tally = self.maker.split(results, annotation_ids)
        if rows:
            self._write_part(part_name(batch), rows)
        return held, tally

    def write_held(self, rows: list[ScoreRow]) -> None:
        """Write the feature metrics' rows, scored here after every batch was in."""
        if rows or not any(self._parts()):
            self._write_part(FEATURES_PART, rows)

    def finish(self) -> None:
        """Remove the run's marker and any temporary part an actor killed mid-write left behind."""
        directory = Path(self.directory)
        (directory / self.marker).unlink(missing_ok=True)
        for leftover in directory.glob(f".part-*{_TEMPORARY_SUFFIX}"):
            leftover.unlink(missing_ok=True)

    def _write_part(self, name: str, rows: list[ScoreRow]) -> None:
        import pyarrow.parquet as pq  # optional extra, checked by `_prepare`

        directory = Path(self.directory)
        self._check_shared(directory)
        final = directory / name
        # Unique per writer, so two attempts at one batch never share a temporary file.
        writer = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        temporary = directory / f".{name}.{writer}{_TEMPORARY_SUFFIX}"
        try:
            pq.write_table(parquet_table(rows, self.metadata), temporary)
            os.replace(temporary, final)
        except OSError as error:
            temporary.unlink(missing_ok=True)
            raise OutputUnwritable(
                f"cannot write {final} on {socket.gethostname()}: {error.strerror or error}"
            ) from None

    def _check_shared(self, directory: Path) -> None:
        if self._checked:
            return
        if not (directory / self.marker).exists():
            raise OutputUnwritable(
                f"{directory} on {socket.gethostname()} is not the --out directory the driver made: "
                "--out must be on a filesystem every node shares, at the same path"
            )
        self._checked = True

    def _parts(self) -> Iterable[Path]:
        return Path(self.directory).glob("part-*.parquet")


def _prepare(directory: Path) -> None:
    """Make `directory` for a run's parts; a non-empty one or a file in the way is a UserError."""
    check_directory(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"{directory}/: cannot make the directory: {error.strerror or error}") from None


def check_directory(directory: Path) -> None:
    """Refuse, before any scoring, an --out directory the run can't use: not empty, or a file in its way."""
    if importlib.util.find_spec("pyarrow") is None:
        raise UserError(f"{directory}/: writing Parquet parts needs pyarrow; pip install 'metricsmith[parquet]'")
    for ancestor in (directory, *directory.parents):
        if ancestor.exists() and not ancestor.is_dir():
            raise UserError(f"{directory}/: {ancestor} is a file, not a directory; give --out a directory path")
    if directory.is_dir() and any(directory.iterdir()):
        raise UserError(
            f"{directory}/: the directory is not empty; its files would mix with this run's parts: "
            "remove them or give --out a new directory"
        )
