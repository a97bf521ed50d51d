"""How well shifted boxes can be found on the real tiles if the boxes agreed with the imagery.

    python benchmarks/shift_ceiling.py [--seeds 10-19] [--jitter 0,0.025,0.05,0.075,0.1,0.15] [--rounds 4]

No metric finds shifted crowns on the aerial tiles of `benchmarks/real_data.py` well (issue 14 asks
for AP 0.3; the best is about 0.12). This asks whether the metrics or the boxes are to blame:

1. Every expert box is moved to where `examples/metrics/crown_template.py` puts its crown: the
   offset at which the image's other crowns, averaged, match it best (`--rounds` times, the
   template made again from the moved boxes each time).
2. Those boxes are then jittered: each box's centre moved by a normal draw of sd s times its width
   and height, per axis (`--jitter`), to stand for an annotator's imprecision.
3. Errors are injected into each version as selftest injects them (rate 0.2, every type, inject's
   own stream) under the `--seeds`, and `crown_template`'s shift AP is measured with the evaluation
   selftest uses (`agent.evaluation.ranking.evaluate`), beside random's (the prevalence), and on
   the expert's own boxes under the same seeds.

Circular by design: the metric judges with the very cue that placed the boxes, so the figures are a
ceiling for that cue, not what any metric would reach. What they show is how fast that ceiling
falls as the boxes disagree with the imagery. In process, no sandbox (our own files); the held-out
image of the real data is never read (the tiles are made from the other three). Default seeds are
development seeds, not selftest's 0-2.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from metric_cost import decoded, load_module, scenes  # noqa: E402

from agent.data.coco import coco_from_document  # noqa: E402
from agent.data.inject import Injector  # noqa: E402
from agent.evaluation.ranking import ErrorLabel, MetricScores, evaluate, ground_truth  # noqa: E402
from agent.resources import cache_dir  # noqa: E402

TILES = cache_dir() / "real-data" / "tiles" / "annotations.json"
TEMPLATE = REPO / "examples" / "metrics" / "crown_template.py"
MIN_SIDE = 2  # a jittered box cut down to less than this at the image's edge is left out


def _clipped(box: Sequence[float], width: int, height: int) -> list[int]:
    """The box in whole pixels (as the tiles' boxes are), inside the image."""
    x0, y0 = max(round(box[0]), 0), max(round(box[1]), 0)
    x1, y1 = min(round(box[0] + box[2]), width), min(round(box[1] + box[3]), height)
    return [x0, y0, x1 - x0, y1 - y0]


def _moved(document: dict[str, Any], moves: dict[int, tuple[float, float]]) -> dict[str, Any]:
    """A copy of the document with each box moved by (dx, dy) times its size; boxes that became too thin left out."""
    sizes = {image["id"]: (image["width"], image["height"]) for image in document["images"]}
    annotations = []
    for annotation in document["annotations"]:
        x, y, w, h = annotation["bbox"]
        dx, dy = moves.get(annotation["id"], (0.0, 0.0))
        bbox = _clipped((x + dx * w, y + dy * h, w, h), *sizes[annotation["image_id"]])
        if bbox[2] >= MIN_SIDE and bbox[3] >= MIN_SIDE:
            annotations.append({**annotation, "bbox": bbox, "area": bbox[2] * bbox[3]})
    return {**document, "annotations": annotations}


def snapped(
    document: dict[str, Any], pixels: dict[int, np.ndarray], template: ModuleType, rounds: int
) -> dict[str, Any]:
    """Every box moved to where the template puts its crown, `rounds` times."""
    for _ in range(rounds):
        moves = {}
        for scene in scenes(document):
            prepared = template.prepare(pixels[scene["image"]["id"]], scene)
            for annotation in scene["annotations"]:
                offset = template.best_offset(annotation, prepared)
                if offset is not None:
                    moves[annotation["id"]] = offset
        document = _moved(document, moves)
    return document


def jittered(document: dict[str, Any], spread: float, seed: int) -> dict[str, Any]:
    """Each box's centre moved by normal draws of sd `spread` times its width and height."""
    rng = np.random.default_rng([seed, round(spread * 1000)])
    draws = rng.normal(0.0, spread, size=(len(document["annotations"]), 2)) if spread > 0 else None
    moves = {
        annotation["id"]: (float(draws[i, 0]), float(draws[i, 1])) if draws is not None else (0.0, 0.0)
        for i, annotation in enumerate(document["annotations"])
    }
    return _moved(document, moves)


def shift_aps(
    document: dict[str, Any], pixels: dict[int, np.ndarray], metric: ModuleType, seeds: Sequence[int]
) -> tuple[list[float], list[float]]:
    """The metric's shift AP and random's, per seed, with errors injected as selftest injects them."""
    injector = Injector(document)
    aps, randoms = [], []
    for seed in seeds:
        injection = injector.inject(rate=0.2, seed=seed)
        noisy = injection.document
        scores: dict[int, float | None] = {}
        for scene in scenes(noisy):
            image = pixels[scene["image"]["id"]]
            prepared = metric.prepare(image, scene)
            for annotation in scene["annotations"]:
                scores[annotation["id"]] = metric.score(image, annotation, scene, prepared)
        labels = [
            ErrorLabel(type=r.type, image_id=r.image_id, annotation_id=r.annotation_id) for r in injection.errors.errors
        ]
        truth = ground_truth(coco_from_document(noisy, TILES), labels)
        report = evaluate(truth, [MetricScores(name=metric.NAME, level="object", direction="high", scores=scores)])
        figures = {row.metric: row for row in report.metrics}
        aps.append(figures[metric.NAME].ap_by_type["shift"])
        randoms.append(report.prevalence.object_by_type["shift"])
    return aps, randoms


def _seeds(text: str) -> list[int]:
    first, _, last = text.partition("-")
    return list(range(int(first), int(last or first) + 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=_seeds, default=_seeds("10-19"), help="e.g. 10-19 (not selftest's 0-2)")
    parser.add_argument("--jitter", default="0,0.025,0.05,0.075,0.1,0.15", help="sd of each box's move, in box sizes")
    parser.add_argument("--rounds", type=int, default=4, help="times the boxes are moved to the template's crowns")
    args = parser.parse_args()
    if not TILES.is_file():
        parser.error(f"{TILES} not found: run `python benchmarks/real_data.py` first (it builds the tiles)")
    document = json.loads(TILES.read_text(encoding="utf-8"))
    pixels = decoded(document, coco_from_document(document, TILES).image_root)
    template = load_module(TEMPLATE)

    def shown(values: list[float]) -> str:
        return (
            f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"
        )

    seeds = f"seeds {args.seeds[0]}-{args.seeds[-1]}"
    print(f"{TILES}: {len(document['annotations'])} boxes; crown_template's shift AP (mean ± sd over {seeds})")
    print()
    print("| boxes | shift AP | random |")
    print("|---|---:|---:|")
    aps, randoms = shift_aps(document, pixels, template, args.seeds)
    print(f"| the expert's own | {shown(aps)} | {statistics.mean(randoms):.3f} |", flush=True)
    placed = snapped(document, pixels, template, args.rounds)
    for spread in (float(value) for value in args.jitter.split(",")):
        aps, randoms = shift_aps(jittered(placed, spread, seed=7), pixels, template, args.seeds)
        print(
            f"| moved to the template's crowns, jitter sd {spread:g} | {shown(aps)} | {statistics.mean(randoms):.3f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
