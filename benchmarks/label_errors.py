"""How well the reference metrics find the demo dataset's injected label errors: the README's table.

    python benchmarks/label_errors.py [--images 1000] [--seed 0] [--data DIR] [--workers N]

Generates `metricsmith demo-data DIR --images N --seed S` (into the user's cache unless --data is
given; an existing copy from an earlier run is reused), scores it with every built-in metric in the
sandbox, evaluates them against errors.json, and prints a Markdown table: AP over all non-drop
errors, AP per error type, and image-level AP, for each metric, then `random`, `combined` (learned,
cross-validated by image) and `rank_average`. Then the goals, met or missed. Everything is
deterministic: the same command prints the same table on any machine.

The table in README.md is this script's output for the defaults; tests/test_benchmark_table.py
checks that they agree.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent.data.coco import load_coco  # noqa: E402
from agent.data.demo import generate_demo_dataset  # noqa: E402
from agent.evaluation.ranking import (  # noqa: E402
    ERROR_TYPES,
    EvaluationReport,
    evaluate,
    ground_truth,
    load_error_labels,
    scores_from_rows,
)
from agent.metrics.contract import list_builtin_metrics  # noqa: E402
from agent.metrics.scoring import score_dataset  # noqa: E402
from agent.resources import cache_dir  # noqa: E402
from sandbox.isolation import SandboxConfig  # noqa: E402

GOAL_COMBINED_AP = 0.6
GOAL_TYPE_AP = 0.5
TABLE_START = "<!-- label-error-table:start -->"
TABLE_END = "<!-- label-error-table:end -->"


def default_data_dir(images: int, seed: int) -> Path:
    return cache_dir() / f"label-errors-{images}-{seed}"


def run(images: int, seed: int, data: Path, workers: int) -> EvaluationReport:
    annotations = data / "annotations.json"
    if not (annotations.exists() and (data / "errors.json").exists()):
        generate_demo_dataset(data, n_images=images, seed=seed)
    dataset = load_coco(annotations)
    specs = list_builtin_metrics()
    outcome = score_dataset(dataset, specs, SandboxConfig(workers=workers))
    if outcome.metric_errors or outcome.interrupted:
        raise SystemExit(f"scoring failed: {outcome.metric_errors or 'interrupted'}")
    truth = ground_truth(dataset, load_error_labels(data / "errors.json"))
    directions = {spec.name: spec.suspicious for spec in specs}
    return evaluate(truth, scores_from_rows(outcome.rows, directions))


def _cell(value: float | None, best: bool = False) -> str:
    if value is None:
        return "–"
    text = f"{value:.3f}"
    return f"**{text}**" if best else text


def markdown_table(report: EvaluationReport) -> str:
    """One row per metric: level, AP, AP per error type, image AP; the best object-level AP per column in bold."""
    types = [t for t in ERROR_TYPES if t in report.items.errors_by_type]
    header = ["metric", "level", "AP", *types, "image AP"]
    rows = report.metrics
    best: dict[str, float] = {}
    for row in rows:
        if row.level != "object":
            continue
        for key, value in [("AP", row.ap), *row.ap_by_type.items()]:
            if value is not None:
                best[key] = max(best.get(key, 0.0), value)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---", "---", *["---:"] * (len(header) - 2)]) + "|"]
    for row in rows:
        is_object = row.level == "object"
        cells = [
            f"`{row.metric}`",
            row.level,
            _cell(row.ap, is_object and row.ap == best.get("AP")),
            *(_cell(row.ap_by_type.get(t), is_object and row.ap_by_type.get(t) == best.get(t)) for t in types),
            _cell(row.image_ap),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    counts = ", ".join(f"{count} {name}" for name, count in report.items.errors_by_type.items())
    lines.append("")
    lines.append(
        f"{report.items.images} images, {report.items.annotations} annotations, "
        f"{report.items.errors} injected errors ({counts})."
    )
    return "\n".join(lines)


def goals(report: EvaluationReport) -> list[str]:
    combined = next(row for row in report.metrics if row.metric == "combined" and row.level == "object")
    verdicts = [
        f"combined AP {combined.ap:.3f} (goal >= {GOAL_COMBINED_AP}): {_verdict(combined.ap, GOAL_COMBINED_AP)}"
    ]
    for error_type in report.items.errors_by_type:
        if error_type == "drop":
            continue
        candidates = [
            (row.ap_by_type.get(error_type) or 0.0, row.metric)
            for row in report.metrics
            if row.level == "object" and row.metric not in ("random", "combined", "rank_average")
        ]
        value, name = max(candidates)
        verdicts.append(f"best {error_type} AP {value:.3f} ({name}; goal >= {GOAL_TYPE_AP}): {_verdict(value, 0.5)}")
    return verdicts


def _verdict(value: float | None, goal: float) -> str:
    return "PASS" if value is not None and value >= goal else "MISS"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=None, help="dataset folder (default: in the user's cache)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    data = args.data or default_data_dir(args.images, args.seed)
    report = run(args.images, args.seed, data, args.workers)
    print(TABLE_START)
    print(markdown_table(report))
    print(TABLE_END)
    print()
    for line in goals(report):
        print(line)


if __name__ == "__main__":
    main()
