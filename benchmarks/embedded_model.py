"""The embedded model (Gemma 3 270M base) writing metrics: free, held to the grammar, and searching.

    python benchmarks/embedded_model.py [--images 200] [--seeds 1] [--modes grammar,free,search]
                                        [--data demo|real]

Modes, each the real authoring loop with the local backend, per idea and sampling seed:
  - grammar: held to prompts/completion_grammar.gbnf.j2 (the default), 2 repairs, 2 drafts;
  - free: the same without the grammar;
  - search: the grammar plus the usefulness-driven search: each idea has a target, every passing
    sample is measured on target errors injected into the data, 8 samples a round, improvement
    rounds for a draft that misses (at most 2), the best draft kept even when it did not clear
    (--keep-unproven) so that every idea shows its figure.
Temperature 0.7 for all. grammar and free report the candidates' AP on the demo's known errors
beside a random ranking's; search reports per idea the target, whether the bar was cleared on the
selection half, the AP on the reporting half (no choice was made on it) against random, the lift,
and the line. Every mode prints its seconds per idea: search spends more, and says how much.

--data real runs search on the real aerial tiles of benchmarks/real_data.py (one class, trees), with
ideas of its own; the demo's known-error modes need the demo.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from agent.authoring.candidates import candidate_dir  # noqa: E402
from agent.authoring.job import AuthorJob, run_author_job  # noqa: E402
from agent.authoring.loop import AuthoringSettings, model_defaults  # noqa: E402
from agent.data.demo import generate_demo_dataset  # noqa: E402
from agent.llm.backends.local import LocalBackend  # noqa: E402
from agent.resources import cache_dir  # noqa: E402

# None of them is one of the grammar's few-shot lines (prompts/_completion_lines.j2).
IDEAS = (
    "fox boxes that are not mostly orange",
    "images with a lot of green foliage",
    "bear boxes that are not brown",
    "boxes that are not on a panda",
    "boxes that hold mostly background",
    "images with sandy backgrounds",
)
DESCRIPTION = "Cartoon pandas (black and white), brown bears and orange foxes on textured backgrounds, 640x480."

# The search mode's ideas, each with what it should catch.
SEARCH_IDEAS: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "demo": (
        ("fox boxes that are not mostly orange", ("swap",)),
        ("bear boxes that are not brown", ("swap",)),
        ("boxes that are not on a panda", ("swap",)),
        ("boxes that hold mostly background", ("spurious",)),
        ("boxes much larger than the animal inside", ("loose",)),
        ("boxes that cut off part of the animal", ("tight",)),
    ),
    "real": (
        ("boxes on bare ground with no tree crown inside", ("spurious",)),
        ("boxes whose inside is not green", ("spurious",)),
        ("boxes much larger than the crown inside", ("loose",)),
        ("boxes that cut off part of the crown", ("tight",)),
        ("boxes shifted off their crown", ("shift",)),
        ("boxes drawn twice on one crown", ("duplicate",)),
    ),
}
REAL_DESCRIPTION = "Aerial RGB photographs of forest, 400x400 tiles; every box is one tree crown."


@dataclass(frozen=True)
class Attempt:
    idea: str
    seed: int
    passed: bool
    exchanges: int
    ap: float | None
    prevalence: float | None
    seconds: float
    line: str  # the candidate's last line, which with the grammar is the whole measurement


def attempt(
    backend: LocalBackend, annotations: Path, errors: Path, folder: Path, idea: str, seed: int, grammar: bool
) -> Attempt:
    settings = AuthoringSettings(max_repairs=2, max_drafts=2, temperature=0.7, seed=seed)
    settings = replace(settings, **model_defaults(backend, grammar=grammar))
    started = time.perf_counter()
    outcome = run_author_job(
        AuthorJob(
            idea=idea, annotations=annotations, errors=errors, run_dir=folder, backend=backend,
            description=DESCRIPTION, settings=settings,
        )
    )  # fmt: skip
    seconds = time.perf_counter() - started
    evaluation = (outcome.candidate.evaluation or {}) if outcome.candidate else {}
    ap = evaluation.get("evaluation", {}).get("ap")
    random = evaluation.get("random", {}).get("ap")
    line = ""
    if outcome.candidate is not None:
        code = (candidate_dir(folder, outcome.candidate.id) / "metric.py").read_text(encoding="utf-8")
        line = code.rstrip().splitlines()[-1].strip()
    return Attempt(idea, seed, outcome.verdict == "passed", outcome.exchanges, ap, random, seconds, line)


@dataclass(frozen=True)
class Search:
    idea: str
    targets: tuple[str, ...]
    cleared: bool | None  # on the selection half, against the bar the tries set
    shown: bool | None  # the reporting half's own verdict (p < 0.05 there): what review shows
    ap: float | None  # on the reporting half
    random: float | None
    exchanges: int
    seconds: float
    line: str
    level: str


def search(
    backend: LocalBackend,
    annotations: Path,
    folder: Path,
    idea: str,
    targets: tuple[str, ...],
    seed: int,
    description: str,
) -> Search:
    settings = AuthoringSettings(max_repairs=2, max_drafts=1, temperature=0.7, seed=seed, targets=targets,
                                 keep_unproven=True)  # fmt: skip
    settings = replace(settings, **model_defaults(backend, grammar=True))
    started = time.perf_counter()
    outcome = run_author_job(
        AuthorJob(idea=idea, annotations=annotations, run_dir=folder, backend=backend, description=description,
                  settings=settings)
    )  # fmt: skip
    seconds = time.perf_counter() - started
    record = outcome.candidate
    if record is None or record.usefulness is None:
        return Search(idea, targets, None, None, None, None, outcome.exchanges, seconds, "", "")
    code = (candidate_dir(folder, record.id) / "metric.py").read_text(encoding="utf-8")
    useful = record.usefulness
    return Search(
        idea, targets, not record.unproven, useful["reporting"]["passed"], useful["reporting"]["ap"],
        useful["reporting"]["random"],
        outcome.exchanges, seconds, code.rstrip().splitlines()[-1].strip(), record.level,
    )  # fmt: skip


def search_summary(results: list[Search]) -> None:
    cleared = sum(1 for r in results if r.cleared)
    shown = sum(1 for r in results if r.shown)
    lifts = [r.ap / r.random for r in results if r.ap is not None and r.random]
    box_lines = [r.line for r in results if r.level == "object" and r.line]
    shared = len(box_lines) - len(set(box_lines))
    median_lift = f"{statistics.median(lifts):.2f}x" if lifts else "–"
    print(
        f"search   cleared the bar (selection half) {cleared}/{len(results)}; shown useful on the reporting half "
        f"{shown}/{len(results)}; median lift there "
        f"{median_lift}; box ideas sharing a line with another: {shared}; "
        f"seconds/idea mean {statistics.mean(r.seconds for r in results):.0f}"
    )


def summary(label: str, attempts: list[Attempt]) -> None:
    passed = [a for a in attempts if a.passed]
    with_ap = [a for a in passed if a.ap is not None and a.prevalence is not None]
    above = sum(1 for a in with_ap if a.ap > a.prevalence)  # type: ignore[operator]
    print(
        f"{label:8} candidates {len(passed):2d}/{len(attempts)} "
        f"exchanges mean {statistics.mean(a.exchanges for a in attempts):.1f} "
        f"seconds/idea mean {statistics.mean(a.seconds for a in attempts):.0f}"
    )
    if with_ap:
        ap = statistics.median(a.ap for a in with_ap)  # type: ignore[type-var]
        chance = statistics.median(a.prevalence for a in with_ap)  # type: ignore[type-var]
        print(f"{'':8} candidate AP median {ap:.3f} vs random {chance:.3f}; above random: {above}/{len(with_ap)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--modes", default="grammar,free,search", help="which of grammar,free,search to run")
    parser.add_argument("--data", choices=("demo", "real"), default="demo")
    args = parser.parse_args()
    modes = args.modes.split(",")
    backend = LocalBackend()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if args.data == "real":
            from real_data import build_tiles, fetch_wheel

            cached = cache_dir() / "real-data"
            annotations, description = build_tiles(fetch_wheel(cached), cached / "tiles"), REAL_DESCRIPTION
            modes = [mode for mode in modes if mode == "search"]  # no known errors to give the other modes
        else:
            annotations, description = generate_demo_dataset(folder / "demo", n_images=args.images, seed=0), DESCRIPTION
        errors = annotations.parent / "errors.json"
        runs: dict[str, list[Attempt]] = {"grammar": [], "free": []}
        searched: list[Search] = []
        if "search" in modes:
            header = (
                f"{'target':10} {'seed':>4} {'cleared':7} {'shown':5} {'exch':>4} {'AP':>6} {'random':>6} {'lift':>6}"
            )
            print(f"{header}  idea / line")
            for idea_index, (idea, targets) in enumerate(SEARCH_IDEAS[args.data]):
                for seed in range(args.seeds):
                    run_dir = folder / f"search-{idea_index}-{seed}"
                    result = search(backend, annotations, run_dir, idea, targets, seed, description)
                    searched.append(result)
                    ap = f"{result.ap:.3f}" if result.ap is not None else "–"
                    chance = f"{result.random:.3f}" if result.random is not None else "–"
                    lift = f"{result.ap / result.random:.2f}x" if result.ap is not None and result.random else "–"
                    cleared = {True: "yes", False: "no", None: "–"}[result.cleared]
                    shown = {True: "yes", False: "no", None: "–"}[result.shown]
                    row = f"{','.join(targets):10} {seed:4d} {cleared:7} {shown:5} {result.exchanges:4d} {ap:>6}"
                    print(f"{row} {chance:>6} {lift:>6}  {idea}")
                    if result.line:
                        print(f"{'':56}{result.line}")
        if modes != ["search"]:
            print(f"{'mode':8} {'seed':>4} {'verdict':8} {'exch':>4} {'AP':>6} {'random':>6}  idea")
        for idea_index, idea in enumerate(IDEAS if modes != ["search"] else ()):
            for seed in range(args.seeds):
                for mode, grammar in (("grammar", True), ("free", False)):
                    if mode not in modes:
                        continue
                    run_dir = folder / f"run-{idea_index}-{seed}-{mode}"
                    result = attempt(backend, annotations, errors, run_dir, idea, seed, grammar)
                    runs[mode].append(result)
                    ap = f"{result.ap:.3f}" if result.ap is not None else "–"
                    chance = f"{result.prevalence:.3f}" if result.prevalence is not None else "–"
                    verdict = "passed" if result.passed else "gave_up"
                    print(f"{mode:8} {seed:4d} {verdict:8} {result.exchanges:4d} {ap:>6} {chance:>6}  {idea}")
                    if result.line:
                        print(f"{'':37}{result.line}")
    print()
    for mode, attempts in runs.items():
        if attempts:
            summary(mode, attempts)
    if runs["free"] or runs["grammar"]:
        free = sum(a.passed for a in runs["free"])
        held = sum(a.passed for a in runs["grammar"])
        print(f"candidates, grammar / free: {held} / {free}")
    if searched:
        search_summary(searched)


if __name__ == "__main__":
    main()
