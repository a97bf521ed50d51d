"""Write the hand-scripted fixture transcripts in this folder: the loop's scenarios that need a capable model.

    python transcripts/record_fixtures.py

Each scenario runs the real authoring loop (real prompts, real sandbox validation) on the demo
dataset (`metricsmith demo-data --images 24 --seed 0`), with `ScriptedModel` giving the replies
written below. The transcripts' meta lines say `origin: fixture`. The recordings of the embedded
local model (`local-*.jsonl`) are real sessions, made with `metricsmith author --backend local`.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from agent.authoring.job import AuthorJob, run_author_job  # noqa: E402
from agent.authoring.loop import AuthoringSettings  # noqa: E402
from agent.data.demo import generate_demo_dataset  # noqa: E402
from agent.llm.backends.scripted import ScriptedModel  # noqa: E402

IDEA = "boxes whose inside has almost no edges: empty or badly placed boxes"
DESCRIPTION = "Cartoon pandas, brown bears and red foxes on textured backgrounds."

HEADER = '''"""Edge density: the share of Canny edge pixels inside the box; an empty or misplaced box has few."""

import cv2
import numpy as np

NAME = "edge_density"
LEVEL = "object"
SUSPICIOUS = "low"
'''

GOOD = (
    HEADER
    + """

def score(image, obj, scene):
    x, y, w, h = obj["bbox"]
    height, width = image.shape[:2]
    x0, y0 = max(int(x), 0), max(int(y), 0)
    x1, y1 = min(int(x + w), width), min(int(y + h), height)
    if x1 - x0 < 3 or y1 - y0 < 3:
        return None
    grey = cv2.cvtColor(np.ascontiguousarray(image[y0:y1, x0:x1]), cv2.COLOR_RGB2GRAY)
    edges = cv2.Canny(grey, 50, 150)
    return float(np.count_nonzero(edges)) / edges.size
"""
)

# Divides by the box's inner area: zero for the 2×2 box of the validation set.
ZERO_DIVISION = (
    HEADER
    + """

def score(image, obj, scene):
    x, y, w, h = obj["bbox"]
    x0, y0 = int(x), int(y)
    x1, y1 = int(x + w), int(y + h)
    grey = cv2.cvtColor(np.ascontiguousarray(image[y0:y1, x0:x1]), cv2.COLOR_RGB2GRAY)
    edges = cv2.Canny(grey, 50, 150)
    return float(np.count_nonzero(edges)) / ((x1 - x0 - 2) * (y1 - y0 - 2))
"""
)

# Reads a key the contract does not have: every call fails.
WRONG_KEY = (
    HEADER
    + """

def score(image, obj, scene):
    x, y, w, h = obj["box"]
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return float(grey[int(y) : int(y + h), int(x) : int(x + w)].mean())
"""
)


def fenced(code: str, prose: str = "Here is the metric.") -> str:
    return f"{prose}\n\n```python\n{code}```\n"


SCENARIOS: dict[str, tuple[list[str], AuthoringSettings]] = {
    "fixture-success-first-time": ([fenced(GOOD)], AuthoringSettings()),
    "fixture-success-after-two-repairs": (
        [
            fenced(WRONG_KEY),
            fenced(ZERO_DIVISION, "The contract names the box `bbox`, not `box`; fixed."),
            fenced(GOOD, "A 2×2 box leaves no inner area: the division was by zero. Guard tiny boxes."),
        ],
        AuthoringSettings(),
    ),
    "fixture-give-up-after-budget": (
        [
            fenced(WRONG_KEY),
            fenced(ZERO_DIVISION, "Fixed the key."),
            fenced(WRONG_KEY + "\n# second draft\n"),
            fenced(ZERO_DIVISION + "\n# second draft\n", "Fixed the key again."),
        ],
        AuthoringSettings(max_repairs=1, max_drafts=2),
    ),
    "fixture-format-then-recovery": (
        [
            "I would count the edge pixels inside each box and divide by its area.",
            fenced("import pandas as pd\n" + GOOD),
            fenced(GOOD, "Without pandas this time."),
        ],
        AuthoringSettings(),
    ),
    "fixture-repeated-error-stops-early": (
        [
            fenced(ZERO_DIVISION),
            fenced(ZERO_DIVISION + "\n# now it surely works\n", "Fixed."),
        ],
        AuthoringSettings(max_repairs=3, max_drafts=1),
    ),
}


def main() -> None:
    data = Path(tempfile.mkdtemp(prefix="metricsmith-fixtures-"))
    generate_demo_dataset(data / "demo", n_images=24, seed=0)
    annotations = data / "demo" / "annotations.json"
    for name, (replies, settings) in SCENARIOS.items():
        target = HERE / f"{name}.jsonl"
        target.unlink(missing_ok=True)
        model = ScriptedModel(replies, name="scripted", model="hand-written")
        run_dir = data / name
        outcome = run_author_job(
            AuthorJob(
                idea=IDEA,
                annotations=annotations,
                run_dir=run_dir,
                backend=model,
                description=DESCRIPTION,
                errors=annotations.parent / "errors.json",
                settings=settings,
                workers=2,
                origin="fixture",
                transcript_path=target,
            )
        )
        assert model.remaining == 0, f"{name}: {model.remaining} scripted replies unused"
        print(f"{name}: {outcome.verdict} after {outcome.exchanges} exchanges ({outcome.reason})")
    # The replay side rebuilds the dataset from the recipe each meta line holds (agent.authoring.job.materialise).
    shutil.rmtree(data)


if __name__ == "__main__":
    main()
