"""A candidate measured on errors of its idea's targets, injected into the user's own data.

`measure_usefulness` builds the run's usefulness set once (`agent.evaluation.usefulness`, seeded by
the run's seed, so a replay measures on the very same set), keeps it in RUN_DIR/usefulness-set/
(annotations.json and errors.json, the images being the user's, never copied), scores the
candidate on it in the sandbox and judges both halves. The figure a person should read is the
reporting half's: choices between drafts are made on the selection half only.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel

from agent.data.coco import Dataset, coco_from_document, read_coco_json
from agent.evaluation.usefulness import UsefulnessSet, Verdict, judge, usefulness_set
from agent.metrics.contract import MetricSpec
from agent.metrics.scoring import score_dataset
from sandbox.isolation import SandboxConfig

__all__ = ["Usefulness", "measure_usefulness"]

SET_FOLDER = "usefulness-set"


class HalfFigures(BaseModel):
    passed: bool | None
    level: str
    items: int
    errors: int
    ap: float | None
    random: float | None
    lower: float | None  # 5th percentile over image resamples of AP - random
    upper: float | None
    by_type: dict[str, tuple[float | None, float | None]]  # type -> (AP, random)
    line: str

    @classmethod
    def of(cls, verdict: Verdict) -> HalfFigures:
        return cls(
            passed=verdict.passed, level=verdict.level, items=verdict.items, errors=verdict.positives,
            ap=verdict.ap, random=verdict.random, lower=verdict.lower, upper=verdict.upper,
            by_type=verdict.by_type, line=verdict.line(),
        )  # fmt: skip


class Usefulness(BaseModel):
    """What usefulness.json of a candidate holds."""

    estimate: str = "on errors injected into a sample of your data, not on its real errors"
    targets: list[str]
    seed: int
    images: int
    selection: HalfFigures  # what drafts are chosen on
    reporting: HalfFigures  # what to read: no choice was made on it
    notes: list[str] = []

    def verdict(self) -> str:
        """The reporting half's verdict in words, as review marks a candidate."""
        return {True: "shown useful", False: "runs, not shown useful", None: "too few errors to tell"}[
            self.reporting.passed
        ]

    def summary(self) -> str:
        return f"{', '.join(self.targets)}: {self.verdict()}; {self.reporting.line}"


def _the_set(dataset: Dataset, run_dir: Path, targets: Sequence[str], seed: int) -> tuple[UsefulnessSet, Dataset]:
    useful = usefulness_set(read_coco_json(dataset.annotations_path), targets, seed)
    folder = run_dir / SET_FOLDER
    annotations = folder / "annotations.json"
    if not annotations.exists():
        folder.mkdir(parents=True, exist_ok=True)
        annotations.write_text(json.dumps(useful.document), encoding="utf-8")
        if useful.errors_file is not None:
            (folder / "errors.json").write_text(useful.errors_file.model_dump_json(indent=1) + "\n", encoding="utf-8")
    return useful, coco_from_document(useful.document, annotations, dataset.image_root)


def measure_usefulness(
    spec: MetricSpec, dataset: Dataset, run_dir: Path, targets: Sequence[str], seed: int, sandbox: SandboxConfig
) -> Usefulness:
    """The candidate's figures on both halves of the run's usefulness set."""
    useful, noisy = _the_set(dataset, run_dir, targets, seed)
    rows = score_dataset(noisy, [spec], sandbox).rows
    key = (lambda row: row.annotation_id) if spec.level == "object" else (lambda row: row.image_id)
    scores = {key(row): row.score for row in rows if row.error_kind is None}
    level = "object" if spec.level == "object" else "image"
    halves = [
        judge(scores, level, spec.suspicious, useful, half, seed=seed) for half in (useful.selection, useful.reporting)
    ]
    return Usefulness(
        targets=list(useful.targets),
        seed=seed,
        images=len(useful.document["images"]),
        selection=HalfFigures.of(halves[0]),
        reporting=HalfFigures.of(halves[1]),
        notes=list(useful.notes),
    )
