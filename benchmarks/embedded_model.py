"""The embedded model (Gemma 3 270M base) writing metrics, with and without the grammar, side by side.

    python benchmarks/embedded_model.py [--images 200] [--seeds 1]

On a demo dataset (made in a temporary folder, seed 0, known label errors), it runs the real
authoring loop with the local backend for each idea below and each sampling seed, twice: once held
to prompts/completion_grammar.gbnf.j2 (the default) and once free. Same budgets for both: 2 repairs,
2 drafts, temperature 0.7. It reports, per mode:
  - ideas that left a candidate (passed every validation check), and the exchanges spent;
  - the candidates' AP on the known label errors, beside the AP of a random ranking (the error
    prevalence): a candidate above it ranks real errors higher than chance would.
Whether a candidate measures its idea is a reviewer's call; the AP is the one figure a script can give.
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

from agent.authoring.candidates import candidate_dir  # noqa: E402
from agent.authoring.job import AuthorJob, run_author_job  # noqa: E402
from agent.authoring.loop import AuthoringSettings, model_defaults  # noqa: E402
from agent.data.demo import generate_demo_dataset  # noqa: E402
from agent.llm.backends.local import LocalBackend  # noqa: E402

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
    parser.add_argument("--modes", default="grammar,free", help="which of grammar,free to run")
    args = parser.parse_args()
    backend = LocalBackend()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        annotations = generate_demo_dataset(folder / "demo", n_images=args.images, seed=0)
        errors = annotations.parent / "errors.json"
        runs: dict[str, list[Attempt]] = {"grammar": [], "free": []}
        print(f"{'mode':8} {'seed':>4} {'verdict':8} {'exch':>4} {'AP':>6} {'random':>6}  idea")
        for idea_index, idea in enumerate(IDEAS):
            for seed in range(args.seeds):
                for mode, grammar in (("grammar", True), ("free", False)):
                    if mode not in args.modes.split(","):
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
    free = sum(a.passed for a in runs["free"])
    held = sum(a.passed for a in runs["grammar"])
    print(f"candidates, grammar / free: {held} / {free}")


if __name__ == "__main__":
    main()
