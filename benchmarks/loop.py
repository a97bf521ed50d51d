"""The authoring loop, measured by replaying the shipped transcripts (no model time at all).

    python benchmarks/loop.py [--workers N]

For every transcripts/*.jsonl it rebuilds the recorded job, replays it offline and reports:
  - rounds to verdict (model exchanges until the loop passed or gave up);
  - the share of drafts that passed after 0, 1, 2 and 3 repairs;
  - tokens per accepted metric (as recorded; marked when the server sent no counts);
  - the loop's own time per round: replay wall time divided by rounds. A replayed model answers
    instantly, so this is everything but the model: prompt building, extraction, two sandbox runs
    per validation (fresh workers each), the library correlation and the transcript. Goal: < 1 s.
The first replay also pays for scoring the built-in library on the validation set once; it is
reported apart ("cold"), the others run with that cache and the OS's file cache warm.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent.authoring.job import (  # noqa: E402
    AuthorJob,
    authoring_settings,
    job_settings_from_transcript,
    materialise,
    run_author_job,
)
from agent.llm.backends.replay import ReplayBackend  # noqa: E402
from agent.llm.transcript import read_transcript  # noqa: E402

GOAL_OVERHEAD_S = 1.0


def replay(path: Path, workers: int) -> tuple[object, float]:
    transcript = read_transcript(path)
    settings = job_settings_from_transcript(transcript)
    annotations, images, errors = materialise(settings.dataset)
    backend = ReplayBackend(transcript)
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        outcome = run_author_job(
            AuthorJob(
                idea=settings.idea,
                annotations=annotations,
                images=images,
                run_dir=Path(folder) / "run",
                backend=backend,
                description=settings.description,
                errors=errors,
                settings=authoring_settings(settings.authoring),
                validation_size=settings.validation_size,
                workers=workers,
                origin=transcript.meta.origin,
            )
        )
        elapsed = time.perf_counter() - started
    backend.finish()
    return outcome, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    paths = sorted((REPO / "transcripts").glob("*.jsonl"))
    rows = []
    passed_after: Counter[int] = Counter()
    drafts = 0
    accepted_tokens: list[int] = []
    estimated = False
    per_round: list[float] = []
    for index, path in enumerate(paths):
        outcome, elapsed = replay(path, args.workers)
        rounds = outcome.exchanges  # type: ignore[attr-defined]
        verdict = outcome.verdict  # type: ignore[attr-defined]
        rows.append((path.stem, verdict, rounds, outcome.tokens, elapsed))  # type: ignore[attr-defined]
        by_draft: dict[int, list] = {}
        for record in outcome.rounds:  # type: ignore[attr-defined]
            by_draft.setdefault(record.draft, []).append(record)
        drafts += len(by_draft)
        for records in by_draft.values():
            if records[-1].outcome == "passed":
                passed_after[records[-1].repair] += 1
        if verdict == "passed":
            accepted_tokens.append(outcome.tokens)  # type: ignore[attr-defined]
            estimated |= outcome.tokens_estimated  # type: ignore[attr-defined]
        if index > 0 and rounds:
            per_round.append(elapsed / rounds)

    print(f"{'transcript':42} {'verdict':8} {'rounds':>6} {'tokens':>7} {'replay s':>9} {'s/round':>8}")
    for name, verdict, rounds, tokens, elapsed in rows:
        print(f"{name:42} {verdict:8} {rounds:6d} {tokens:7d} {elapsed:9.2f} {elapsed / max(rounds, 1):8.2f}")
    print()
    print(f"rounds to verdict: mean {statistics.mean(r[2] for r in rows):.2f}, max {max(r[2] for r in rows)}")
    shares = ", ".join(f"{k} repairs {passed_after[k] / drafts:.0%}" for k in range(4))
    print(f"drafts passing after: {shares} (of {drafts} drafts)")
    if accepted_tokens:
        mark = " (estimated counts)" if estimated else ""
        print(f"tokens per accepted metric: mean {statistics.mean(accepted_tokens):.0f}{mark}")
    if per_round:
        median = statistics.median(per_round)
        verdict = "PASS" if median < GOAL_OVERHEAD_S else "MISS"
        print(f"loop overhead per round (warm): median {median:.2f} s (goal < {GOAL_OVERHEAD_S:g} s): {verdict}")
    print(f"cold first replay: {rows[0][4]:.2f} s for {rows[0][2]} rounds ({rows[0][0]})")


if __name__ == "__main__":
    main()
