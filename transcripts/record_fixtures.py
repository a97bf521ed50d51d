"""Write the hand-scripted fixture transcripts in this folder: the loop's scenarios that need a capable model.

    python transcripts/record_fixtures.py [SCENARIO ...]

Each scenario runs the real authoring loop (real prompts, real sandbox validation) on the demo
dataset (`metricsmith demo-data --images 24 --seed 0`), with `ScriptedModel` giving the replies
written below. The transcripts' meta lines say `origin: fixture`. The recordings of the embedded
local model (`local-*.jsonl`) are real sessions, made with `metricsmith author --backend local`.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from dataclasses import replace
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


# The targeted scenarios: an idea that should catch `spurious` boxes (boxes on background, where no
# animal is), measured on spurious boxes injected into the data. Three metrics with measured figures
# on the fixture demo's selection half (12 errors; random rankings reach about 0.38 one time in 20):
SPURIOUS_IDEA = "boxes drawn on background, where no animal is"
SPURIOUS_HEADER = '''"""{doc}"""

import cv2
import numpy as np

NAME = "background_box"
LEVEL = "object"
SUSPICIOUS = "{suspicious}"


def score(image, obj, scene):
'''

# Mean saturation inside the box: runs, but grey pandas and colourful foxes blur it (AP about 0.24).
SATURATION = (
    SPURIOUS_HEADER.format(doc="A box on background is less colourful than an animal.", suspicious="low")
    + """\
    x, y, w, h = (int(v) for v in obj["bbox"])
    crop = np.ascontiguousarray(image[max(y, 0) : y + h + 1, max(x, 0) : x + w + 1])
    if crop.size == 0:
        return None
    return float(cv2.cvtColor(crop, cv2.COLOR_RGB2HSV)[:, :, 1].mean())
"""
)

# How much another box overlaps this one: most spurious boxes overlap nothing (AP about 0.17).
OVERLAP = (
    SPURIOUS_HEADER.format(doc="A stray box is one drawn over another box.", suspicious="high")
    + """\
    x, y, w, h = obj["bbox"]
    best = 0.0
    for other in scene["annotations"]:
        if other["bbox"] == obj["bbox"]:
            continue
        ox, oy, ow, oh = other["bbox"]
        iw = min(x + w, ox + ow) - max(x, ox)
        ih = min(y + h, oy + oh) - max(y, oy)
        if iw > 0 and ih > 0:
            best = max(best, iw * ih / (w * h + ow * oh - iw * ih))
    return float(best)
"""
)

# The box's centre against its rim: an animal differs from what surrounds it, background does not
# (AP about 0.74: clears the bar).
CENTRE_RIM = (
    SPURIOUS_HEADER.format(doc="A box on background looks the same in its centre as on its rim.", suspicious="high")
    + """\
    x, y, w, h = obj["bbox"]
    height, width = image.shape[:2]
    x0, y0 = max(int(x), 0), max(int(y), 0)
    x1, y1 = min(int(x + w), width), min(int(y + h), height)
    if x1 - x0 < 8 or y1 - y0 < 8:
        return None
    crop = np.ascontiguousarray(image[y0:y1, x0:x1]).astype(np.float32)
    bw, bh = max((x1 - x0) // 6, 1), max((y1 - y0) // 6, 1)
    centre = crop[bh:-bh, bw:-bw].reshape(-1, 3).mean(axis=0)
    rim = np.ones(crop.shape[:2], bool)
    rim[bh:-bh, bw:-bw] = False
    return float(-np.abs(centre - crop[rim].mean(axis=0)).sum())
"""
)

TARGETED = AuthoringSettings(targets=("spurious",))
TARGETED_SCENARIOS: dict[str, tuple[list[str], AuthoringSettings]] = {
    # Runs but misses, then an improvement round finds the centre-rim contrast.
    "fixture-improvement-succeeds": (
        [
            fenced(SATURATION),
            fenced(CENTRE_RIM, "Saturation mixes up grey pandas and background; compare the centre with the rim."),
        ],
        TARGETED,
    ),
    # An improvement that does no better stops the draft; the best draft is kept, marked, on request.
    "fixture-improvement-plateaus": (
        [fenced(SATURATION), fenced(OVERLAP, "Stray boxes are drawn over real ones; use the overlap.")],
        replace(TARGETED, max_drafts=1, keep_unproven=True),
    ),
    # Three samples of the first round: the second is the one that clears the bar, and it is kept.
    "fixture-best-of-n-picks-the-second": (
        [fenced(SATURATION), fenced(CENTRE_RIM), fenced(OVERLAP)],
        replace(TARGETED, samples=3),
    ),
}


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


def main(names: list[str]) -> None:
    """Record the named scenarios (all of them when none is named)."""
    scenarios = {name: (IDEA, *entry) for name, entry in SCENARIOS.items()}
    scenarios |= {name: (SPURIOUS_IDEA, *entry) for name, entry in TARGETED_SCENARIOS.items()}
    unknown = sorted(set(names) - set(scenarios))
    if unknown:
        raise SystemExit(f"no scenario {unknown[0]!r}; the scenarios are: {', '.join(scenarios)}")
    data = Path(tempfile.mkdtemp(prefix="metricsmith-fixtures-"))
    generate_demo_dataset(data / "demo", n_images=24, seed=0)
    annotations = data / "demo" / "annotations.json"
    for name, (idea, replies, settings) in scenarios.items():
        if names and name not in names:
            continue
        target = HERE / f"{name}.jsonl"
        target.unlink(missing_ok=True)
        model = ScriptedModel(replies, name="scripted", model="hand-written")
        run_dir = data / name
        outcome = run_author_job(
            AuthorJob(
                idea=idea,
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
    main(sys.argv[1:])
