"""Record the embedded model's sessions in this folder again (`local-*.jsonl`), each from its own meta line.

    python transcripts/record_local.py [NAME ...]

Each recording's meta line holds the idea, the description, how its demo dataset was made and the
loop's settings; this runs the same job again with the local backend (Gemma 3 270M, the `local`
extra) and the loop as it is now, and writes the new session over the old. Settings added since a
session was recorded take today's defaults for the model: an idea without targets gets the model's
proposal, and a targeted one best-of-N sampling. These are real sessions: what the model writes is
its own, so a re-recording may end differently from the one it replaces.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from agent.authoring.job import (  # noqa: E402
    AuthorJob,
    authoring_settings,
    job_settings_from_transcript,
    materialise,
    run_author_job,
)
from agent.authoring.loop import model_defaults  # noqa: E402
from agent.llm.backends.local import LocalBackend  # noqa: E402
from agent.llm.transcript import read_transcript  # noqa: E402


def main(names: list[str]) -> None:
    paths = sorted(HERE.glob("local-*.jsonl"))
    unknown = sorted(set(names) - {path.stem for path in paths})
    if unknown:
        raise SystemExit(f"no recording {unknown[0]!r}; there are: {', '.join(p.stem for p in paths)}")
    backend = LocalBackend()
    work = Path(tempfile.mkdtemp(prefix="metricsmith-local-"))
    for path in paths:
        if names and path.stem not in names:
            continue
        recorded = job_settings_from_transcript(read_transcript(path))
        annotations, images, errors = materialise(recorded.dataset)
        settings = authoring_settings(recorded.authoring)
        defaults = model_defaults(backend, grammar=settings.grammar)
        settings = dataclasses.replace(
            settings,
            samples=defaults["samples"] if "samples" not in recorded.authoring else settings.samples,
            propose_targets=not settings.targets,
        )
        outcome = run_author_job(
            AuthorJob(
                idea=recorded.idea, annotations=annotations, images=images, errors=errors,
                run_dir=work / path.stem, backend=backend, description=recorded.description, settings=settings,
                validation_size=recorded.validation_size, workers=2, transcript_path=work / f"{path.stem}.jsonl",
            )
        )  # fmt: skip
        shutil.copyfile(work / f"{path.stem}.jsonl", path)
        print(f"{path.stem}: {outcome.verdict} after {outcome.exchanges} exchanges ({outcome.reason[:160]})")
    shutil.rmtree(work)


if __name__ == "__main__":
    main(sys.argv[1:])
