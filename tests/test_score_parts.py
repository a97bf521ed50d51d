"""A directory of Parquet parts (`agent.metrics.parts`): each batch's part written once, whatever Ray retries."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("pyarrow", reason="a directory of parts needs pyarrow")

from agent.metrics.parts import PartWriter, part_name
from agent.metrics.results import read_rows
from agent.metrics.scoring import RowColumns, RowMaker
from sandbox.engine import CallResult, OutputUnwritable
from sandbox.protocol import Call, ImageTask

MAKER = RowMaker(
    columns=(
        RowColumns(name="brightness", level="image", suspicious="low", code_sha256="0" * 64, origin="builtin:b"),
        RowColumns(name="area", level="object", suspicious="high", code_sha256="1" * 64, origin="file:area.py"),
    ),
    specs_of=((0,), (1,)),
    held=frozenset(),
)


def _batch(images: range) -> tuple[list[ImageTask], list[CallResult]]:
    """Tasks of one image metric and one object metric on two boxes per image, and their results."""
    tasks, results = [], []
    for image in images:
        scene = {"image": {"id": image}, "annotations": [{"id": 10 * image + k} for k in range(2)], "categories": []}
        calls = (Call(0, None), Call(1, 0), Call(1, 1))
        tasks.append(ImageTask.model_construct(image_id=image, path=f"/{image}.png", scene=scene, calls=calls))
        results += [CallResult(0, image, None, image / 7), CallResult(1, image, 0, 1.5), CallResult(1, image, 1, None)]
    return tasks, results


def test_a_batch_written_twice_replaces_its_own_part(tmp_path: Path) -> None:
    writer = PartWriter.prepared(tmp_path / "out", MAKER, '{"metrics": {}}')
    first = _batch(range(0, 3))
    writer(0, *first)
    writer(1, *_batch(range(3, 5)))
    # Batch 0 again, as Ray runs it again after its actor died: its part is replaced, not added to.
    held, summary = writer(0, *first)
    writer.finish()
    assert held == [] and '"rows":9' in summary
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == [part_name(0), part_name(1)]
    keys = [(row.metric, row.image_id, row.annotation_id) for row in read_rows(tmp_path / "out")]
    assert len(keys) == len(set(keys)) == 15
    assert ("area", 4, 41) in keys and ("brightness", 2, None) in keys


def test_a_node_that_does_not_share_the_directory_fails_instead_of_writing(tmp_path: Path) -> None:
    writer = PartWriter.prepared(tmp_path / "out", MAKER, '{"metrics": {}}')
    # Another node sees its own, empty, directory at the same path: no marker from the driver there.
    (tmp_path / "out" / writer.marker).unlink()
    with pytest.raises(OutputUnwritable, match="a filesystem every node shares"):
        writer(0, *_batch(range(1)))
    assert list((tmp_path / "out").iterdir()) == []
