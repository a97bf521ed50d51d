"""What each built-in costs per call: score() timed in this process, on the demo and the real tiles.

    python benchmarks/metric_cost.py [--images 200] [--repeat 5]

The metrics are loaded from prompts/metrics/ as plain modules (our own trusted files) and called on
every box, or every image, of the demo (`demo-data --images N --seed 0`, generated into
metricsmith's cache) and of the aerial tiles of `benchmarks/real_data.py` (built there first; this
script only reads them). No sandbox, no process start, no image decoding in the timings: only the
calls, so the figures compare metrics with each other, not with `metricsmith score`'s wall time.
It runs under the workers' malloc settings (`sandbox.host.WORKER_MALLOC`).
Each round times every metric once over the same items, in turn; the fastest round per call is
printed (the least disturbed by other jobs on a shared machine), with `box_tightness` for scale.
`learned` is the learned detectors' one file: its call describes the box (their classifier fits, on
the host, are not timed here).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent.data.demo import generate_demo_dataset  # noqa: E402
from agent.resources import cache_dir  # noqa: E402
from sandbox.host import WORKER_MALLOC  # noqa: E402

METRICS = REPO / "prompts" / "metrics"


def load_module(path: Path) -> ModuleType:
    """A metric file as a plain module (our own trusted files: no sandbox)."""
    spec = importlib.util.spec_from_file_location(f"cost_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def scenes(document: dict[str, Any]) -> list[dict[str, Any]]:
    """One scene per image of a COCO document, as `Dataset.scene` makes them (each box with its class's name)."""
    names = {c["id"]: c["name"] for c in document["categories"]}
    boxes: dict[int, list[dict[str, Any]]] = {}
    for annotation in document["annotations"]:
        boxes.setdefault(annotation["image_id"], []).append(
            {**annotation, "category": names[annotation["category_id"]]}
        )
    return [
        {"image": image, "annotations": boxes.get(image["id"], []), "categories": document["categories"]}
        for image in document["images"]
    ]


def decoded(document: dict[str, Any], root: Path) -> dict[int, np.ndarray]:
    """Each image as the sandbox's workers give it to a metric: RGB, read-only."""
    pixels = {}
    for image in document["images"]:
        rgb = cv2.cvtColor(cv2.imread(str(root / image["file_name"])), cv2.COLOR_BGR2RGB)
        rgb.setflags(write=False)
        pixels[image["id"]] = rgb
    return pixels


def _items(annotations: Path) -> list[tuple[np.ndarray, dict[str, Any], list[dict[str, Any]]]]:
    """(image, scene, boxes) per image, the images decoded once, before any timing."""
    document = json.loads(annotations.read_text(encoding="utf-8"))
    root = annotations.parent / "images" if (annotations.parent / "images").is_dir() else annotations.parent
    pixels = decoded(document, root)
    return [(pixels[scene["image"]["id"]], scene, scene["annotations"]) for scene in scenes(document)]


def _per_call(module: ModuleType, items: list) -> float:
    calls = 0
    started = time.perf_counter()
    for pixels, scene, boxes in items:
        if module.LEVEL == "image":
            module.score(pixels, scene)
            calls += 1
            continue
        # A metric with prepare() is timed as the worker runs it: once per image, shared by the image's calls.
        prepared = (module.prepare(pixels, scene),) if hasattr(module, "prepare") and boxes else ()
        for box in boxes:
            module.score(pixels, box, scene, *prepared)
            calls += 1
    return (time.perf_counter() - started) / max(calls, 1)


def main() -> None:
    # The sandbox's workers run under fixed malloc thresholds, which glibc reads when a process starts; without
    # them an image-sized temporary's cost depends on what the process allocated before (sharpness: 0.3 or 1.2 ms).
    if any(os.environ.get(name) != value for name, value in WORKER_MALLOC.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **WORKER_MALLOC})
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    demo = cache_dir() / f"metric-cost-demo-{args.images}"
    if not (demo / "annotations.json").exists():
        generate_demo_dataset(demo, n_images=args.images, seed=0)
    tiles = cache_dir() / "real-data" / "tiles" / "annotations.json"
    datasets = {"demo": demo / "annotations.json"}
    if tiles.exists():
        datasets["tiles"] = tiles
    else:
        print("no tiles yet: run benchmarks/real_data.py once to build them")
    modules = [load_module(path) for path in sorted(METRICS.glob("*.py"))]
    print("| metric | level | " + " | ".join(f"{name} ms/call" for name in datasets) + " |")
    print("|---|---|" + "---:|" * len(datasets))
    timings = {name: {m.NAME: [] for m in modules} for name in datasets}
    for name, path in datasets.items():
        items = _items(path)
        for _ in range(args.repeat):
            for module in modules:
                timings[name][module.NAME].append(_per_call(module, items))
    for module in modules:
        cells = [f"{1000 * min(timings[name][module.NAME]):.3f}" for name in datasets]
        print(f"| `{module.NAME}` | {module.LEVEL} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
