"""A candidate shown on a terminal: code, rationale, validation, score histogram, correlations, eval figures.

`metricsmith review` and the `chat` REPL (`/show`) both render a candidate with `show_candidate`,
onto whichever rich Console they were given.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.syntax import Syntax
from rich.table import Table

from agent.authoring.candidates import CandidateRecord
from agent.authoring.usefulness_check import Usefulness
from agent.metrics.results import read_rows

__all__ = ["histogram", "show_candidate"]


def histogram(values: list[float], bins: int = 12, width: int = 40) -> list[str]:
    """A terminal histogram: one bar per bin, scaled to the fullest bin."""
    if not values:
        return ["(no scores)"]
    low, high = min(values), max(values)
    if high == low:
        return [f"{low:>10.4g} | {'█' * width} {len(values)}"]
    counts = [0] * bins
    for value in values:
        counts[min(bins - 1, int((value - low) / (high - low) * bins))] += 1
    top = max(counts)
    step = (high - low) / bins
    return [
        f"{low + i * step:>10.4g} | {'█' * round(count / top * width):<{width}} {count}"
        for i, count in enumerate(counts)
    ]


def show_candidate(console: Console, run: Path, record: CandidateRecord) -> None:
    """Everything a reviewer needs to decide on one candidate of the authoring run `run`."""
    folder = run / "candidates" / record.id
    validation_path = folder / "validation.json"
    validation = json.loads(validation_path.read_text()) if validation_path.exists() else None
    console.rule(f"{record.id}  ({record.level}, suspicious {record.suspicious})")
    console.print(f"idea: {record.idea}", markup=False)
    console.print(Syntax((folder / "metric.py").read_text(encoding="utf-8"), "python", line_numbers=True))
    rationale = (folder / "rationale.md").read_text(encoding="utf-8") if (folder / "rationale.md").exists() else ""
    console.print(rationale.strip(), markup=False)
    if validation is None:  # an edit removed the old code's validation, and the new code broke the contract
        console.print("validation: none for this code (it was edited, and it did not load as a metric)")
        return
    checks = ", ".join(f"{check['name']} {check['status']}" for check in validation["checks"])
    console.print(f"validation: {'passed' if validation['passed'] else 'FAILED'} ({checks})")
    stats = validation["stats"]
    console.print(
        f"scores on {stats['n_items']} validation items: {stats['n_scored']} scored, {stats['n_none']} none, "
        f"{stats['n_errors']} errors; min {stats['min']}, median {stats['median']}, max {stats['max']}"
    )
    scores_file = folder / "scores.csv"
    if scores_file.exists():
        values = [row.score for row in read_rows(scores_file) if row.score is not None]
        console.print(f"scores on the whole dataset ({len(values)} scored):")
        for line in histogram(values):
            console.print(line, markup=False)
    if validation.get("correlations"):
        table = Table("library metric", "Spearman ρ", "items", "duplicate?")
        for row in validation["correlations"]:
            rho = "–" if row["rho"] is None else f"{row['rho']:+.2f}"
            table.add_row(row["metric"], rho, str(row["n_items"]), "YES" if row["duplicate"] else "")
        console.print(table)
    if record.evaluation:
        figures = record.evaluation["evaluation"]
        by_type = ", ".join(f"{t} {v:.3f}" for t, v in figures["ap_by_type"].items() if v is not None)
        overall = "–" if figures["ap"] is None else f"{figures['ap']:.3f}"
        chance = (record.evaluation.get("random") or {}).get("ap")
        versus = f" (a random ranking: {chance:.3f})" if chance is not None else ""
        console.print(f"eval on the known errors: AP {overall}{versus}, per type: {by_type}")
    if record.usefulness:
        useful = Usefulness.model_validate(record.usefulness)
        console.print(
            f"usefulness on injected {', '.join(useful.targets)} (an estimate on errors injected "
            f"into {useful.images} of your images; the half no choice was made on): "
            f"{useful.verdict()}. {useful.reporting.line}",
            markup=False,
        )
        for line in useful.by_type_lines():
            console.print(f"  {line}", markup=False)
    if record.unproven:
        console.print(
            "[yellow]runs, not shown useful[/]: no draft of this idea cleared its target on the selection half; "
            "it was kept because --keep-unproven asked for it",
            markup=True,
        )
