"""A candidate measured on errors of its idea's targets, injected into the user's own data.

`UsefulnessBench` builds the run's usefulness set once (`agent.evaluation.usefulness`, seeded by
the run's seed), scores each draft on it in the sandbox and judges both halves. The loop decides on
the selection half (`Usefulness.cleared`, `Usefulness.figure`) and shows the model misses from it
only; the figure a person should read is the reporting half's, on which no choice was made.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel

from agent.data.coco import Dataset, coco_from_document, read_coco_json
from agent.evaluation.misses import worst_misses
from agent.evaluation.usefulness import SIGNIFICANCE, Verdict, judge, usefulness_set
from agent.metrics.contract import MetricSpec
from agent.metrics.scoring import score_dataset
from sandbox.isolation import SandboxConfig

__all__ = ["Usefulness", "UsefulnessBench"]

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
    random_high: float | None = None  # the bar: random rankings' 95th-percentile AP on these items
    p_value: float | None = None
    by_type: dict[str, tuple[float | None, float | None]]  # type -> (AP, random)
    line: str
    scope: str | None = None  # judged on the boxes labelled this class only (an idea about one class)

    @classmethod
    def of(cls, verdict: Verdict) -> HalfFigures:
        return cls(
            passed=verdict.passed, level=verdict.level, items=verdict.items, errors=verdict.positives,
            ap=verdict.ap, random=verdict.random, lower=verdict.lower, upper=verdict.upper,
            by_type=verdict.by_type, line=verdict.line(), random_high=verdict.random_high, p_value=verdict.p_value,
            scope=verdict.scope,
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
    # The selection half's worst misses in words (agent.evaluation.misses): what an improvement round shows.
    misses: list[str] = []

    @property
    def figure(self) -> float:
        """What drafts are compared on: the selection half's AP above the bar of random rankings (-inf: none)."""
        half = self.selection
        return -math.inf if half.ap is None or half.random_high is None else half.ap - half.random_high

    # How many drafts of the idea had been measured, this one included, and the p-value bar that makes:
    # best-of-N tries many drafts on one half, and at p < 0.05 each, one in three of eight random drafts
    # would clear it. So the bar is 0.05 divided by the tries (Bonferroni) on the selection half.
    tries: int = 1
    bar_p: float = SIGNIFICANCE

    @property
    def cleared(self) -> bool | None:
        """The loop's decision, on the selection half: cleared the bar, not, or too few errors to tell."""
        if self.selection.passed is None or self.selection.p_value is None:
            return None
        return self.selection.p_value < self.bar_p

    def decision(self) -> str:
        """The selection half's figures and what the loop made of them, against the bar its tries set."""
        half = self.selection
        if half.p_value is None or self.cleared is None:
            return f"{half.line} (selection half)"
        verdict = "clears the bar" if self.cleared else "does not clear it"
        tried = f"{self.tries} drafts tried" if self.tries != 1 else "1 draft tried"
        among = f" among {half.items} {half.scope} boxes" if half.scope else ""
        return (
            f"AP {half.ap:.3f} vs random {half.random:.3f} on the selection half ({half.errors} errors{among}): "
            f"p {half.p_value:.4f} against random rankings, bar {self.bar_p:.4f} with {tried}: {verdict}"
        )

    def verdict(self) -> str:
        """The reporting half's verdict in words, as review marks a candidate."""
        return {True: "shown useful", False: "runs, not shown useful", None: "too few errors to tell"}[
            self.reporting.passed
        ]

    def by_type_lines(self) -> list[str]:
        """Per target type, the reporting half's AP beside random's (the bar and the interval are for all types)."""
        lines = []
        for target, (ap, chance) in self.reporting.by_type.items():
            if ap is None or chance is None:
                lines.append(f"{target}: no such errors in the reporting half")
            else:
                lines.append(f"{target}: AP {ap:.3f} vs random {chance:.3f} (lift {ap / chance:.2f}x)")
        return lines

    def summary(self) -> str:
        """One line: the verdict, the reporting half's figures, and per type when there are several."""
        line = f"{', '.join(self.targets)}: {self.verdict()}; {self.reporting.line}"
        if len(self.targets) > 1:
            line += "; per type: " + "; ".join(self.by_type_lines())
        return line


class UsefulnessBench:
    """The run's usefulness set, built once, and the measurement of a draft on it.

    Built from the run's seed, kept in RUN_DIR/usefulness-set/ (annotations.json and errors.json,
    the images being the user's, never copied), so a replay measures on the very same set.
    """

    def __init__(self, dataset: Dataset, run_dir: Path, targets: Sequence[str], seed: int) -> None:
        self.seed = seed
        self.useful = usefulness_set(read_coco_json(dataset.annotations_path), targets, seed)
        folder = run_dir / SET_FOLDER
        annotations = folder / "annotations.json"
        if not annotations.exists():
            folder.mkdir(parents=True, exist_ok=True)
            annotations.write_text(json.dumps(self.useful.document), encoding="utf-8")
            if self.useful.errors_file is not None:
                errors = self.useful.errors_file.model_dump_json(indent=1) + "\n"
                (folder / "errors.json").write_text(errors, encoding="utf-8")
        self.noisy = coco_from_document(self.useful.document, annotations, dataset.image_root)

    def measure(self, spec: MetricSpec, sandbox: SandboxConfig, tries: int = 1, scope: str | None = None) -> Usefulness:
        """The draft's figures on both halves, and its worst misses on the selection half only.

        `tries`: the drafts of the idea measured so far, this one included (see `Usefulness.tries`).
        `scope`: the class an idea about one class's boxes is about; judged on those boxes only."""
        rows = score_dataset(self.noisy, [spec], sandbox).rows
        key = (lambda row: row.annotation_id) if spec.level == "object" else (lambda row: row.image_id)
        scores = {key(row): row.score for row in rows if row.error_kind is None}
        level = "object" if spec.level == "object" else "image"
        useful = self.useful
        halves = [
            judge(scores, level, spec.suspicious, useful, half, seed=self.seed, scope=scope)
            for half in (useful.selection, useful.reporting)
        ]
        # Only the selection half is described: the model never sees the half the user's figure comes from.
        misses = worst_misses(scores, level, spec.suspicious, useful, useful.selection, scope=scope)
        return Usefulness(
            targets=list(useful.targets),
            seed=self.seed,
            images=len(useful.document["images"]),
            selection=HalfFigures.of(halves[0]),
            reporting=HalfFigures.of(halves[1]),
            notes=list(useful.notes),
            misses=[miss.words for miss in misses],
            tries=tries,
            bar_p=SIGNIFICANCE / tries,
        )
