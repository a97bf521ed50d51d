"""The built-in metrics on real photos: aerial RGB tiles of tree crowns with expert boxes, errors injected.

    python benchmarks/real_data.py [--seeds 3] [--rate 0.2] [--workers N] [--held-out]

The data: the `deepforest` wheel (2.1.0) on PyPI ships a few annotated aerial images (Pascal VOC XML
beside PNG) under deepforest/data/. This script downloads the wheel with `pip download --no-deps`
into metricsmith's cache (never into the repository), converts three of the images to COCO, tiled
to 400x400, and runs `metricsmith selftest`'s code on the tiles with every built-in metric.

`2019_YELL_2_528000_4978000_image_crop2` is held out on purpose: nothing is developed or tuned on
it, so that it can judge what was. Only `--held-out` reads it: the same measurement on its tiles
alone (into their own folder), which is the judgement, not a figure to develop against. It was first
run on 2026-12-07, after every built-in it measures had been written and frozen.

Tiling: non-overlapping 400x400 tiles (a last, shorter row or column of tiles is kept when it is at
least 200 px); a box cut by a tile edge is clipped to the tile and kept when at least half of its
area lies inside. Coordinates stay whole pixels, as in the XML, and `area` is w*h.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
import zipfile
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.data.coco import load_coco
from agent.data.inject import INJECT_TYPES
from agent.evaluation.selftest import ESTIMATE, SelftestReport, best_by_type, run_selftest
from agent.metrics.contract import list_builtin_metrics
from agent.resources import cache_dir
from sandbox.isolation import SandboxConfig

WHEEL = "deepforest==2.1.0"
DEVELOPMENT_IMAGES = ("2019_YELL_2_541000_4977000_image_crop", "OSBS_029", "SOAP_061")
HELD_OUT = "2019_YELL_2_528000_4978000_image_crop2"  # read only by --held-out: see the docstring
TILE = 400
MIN_TILE = 200
MARKERS = {
    False: ("<!-- real-data-table:start -->", "<!-- real-data-table:end -->"),
    True: ("<!-- held-out-table:start -->", "<!-- held-out-table:end -->"),
}


def fetch_wheel(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    found = sorted(folder.glob("deepforest-2.1.0-*.whl"))
    if not found:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(folder), WHEEL], check=True
        )
        found = sorted(folder.glob("deepforest-2.1.0-*.whl"))
    return found[0]


def _boxes(xml: bytes) -> list[tuple[str, int, int, int, int]]:
    root = ElementTree.fromstring(xml)
    boxes = []
    for item in root.iter("object"):
        box = item.find("bndbox")
        assert box is not None
        corners = [int(float(box.findtext(key) or 0)) for key in ("xmin", "ymin", "xmax", "ymax")]
        boxes.append((item.findtext("name") or "Tree", *corners))
    return boxes


def _starts(length: int) -> list[int]:
    starts = list(range(0, length - TILE + 1, TILE))
    if not starts or length - (starts[-1] + TILE) >= MIN_TILE:
        starts.append(starts[-1] + TILE if starts else 0)
    return starts


def build_tiles(wheel: Path, out: Path, stems: tuple[str, ...] = DEVELOPMENT_IMAGES) -> Path:
    """COCO tiles of the images `stems` (the development images unless given) in out/; returns out/annotations.json."""
    annotations_path = out / "annotations.json"
    if annotations_path.exists():
        return annotations_path
    (out / "images").mkdir(parents=True, exist_ok=True)
    images, annotations, names = [], [], {}
    with zipfile.ZipFile(wheel) as archive:
        for stem in stems:
            pixels = cv2.imdecode(
                np.frombuffer(archive.read(f"deepforest/data/{stem}.png"), np.uint8), cv2.IMREAD_COLOR
            )
            boxes = _boxes(archive.read(f"deepforest/data/{stem}.xml"))
            height, width = pixels.shape[:2]
            for top in _starts(height):
                for left in _starts(width):
                    tile = pixels[top : top + TILE, left : left + TILE]
                    image_id = len(images) + 1
                    file_name = f"{stem}_{top}_{left}.png"
                    cv2.imwrite(str(out / "images" / file_name), tile)
                    images.append(
                        {"id": image_id, "file_name": file_name, "width": tile.shape[1], "height": tile.shape[0]}
                    )
                    for name, x1, y1, x2, y2 in boxes:
                        cx1, cy1 = max(x1 - left, 0), max(y1 - top, 0)
                        cx2, cy2 = min(x2 - left, tile.shape[1]), min(y2 - top, tile.shape[0])
                        if cx2 - cx1 < 1 or cy2 - cy1 < 1 or (cx2 - cx1) * (cy2 - cy1) < 0.5 * (x2 - x1) * (y2 - y1):
                            continue
                        category = names.setdefault(name, len(names) + 1)
                        w, h = cx2 - cx1, cy2 - cy1
                        annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                                            "bbox": [cx1, cy1, w, h], "area": w * h, "iscrowd": 0})  # fmt: skip
    categories = [{"id": number, "name": name} for name, number in names.items()]
    document = {"images": images, "annotations": annotations, "categories": categories}
    annotations_path.write_text(json.dumps(document), encoding="utf-8")
    return annotations_path


def table(report: SelftestReport, command: str, held_out: bool = False) -> str:
    start, end = MARKERS[held_out]
    types = [t for t in INJECT_TYPES if t in report.errors_by_type and t != "drop"]
    lines = [
        start,
        f"| metric | level | AP (mean ± sd over {len(report.seeds)} seeds) | random | lift | "
        + " | ".join(types) + " |",
        "|---|---|---:|---:|---:|" + "---:|" * len(types),
    ]  # fmt: skip
    for row in report.metrics:
        if row.level != "object":  # every built-in that finds box errors works on boxes
            continue
        ap = f"{row.ap.mean:.3f} ± {row.ap.spread:.3f}" if row.ap.mean is not None else "–"
        random = f"{row.ap.random:.3f}" if row.ap.random is not None else "–"
        lift = f"{row.ap.lift:.2f}x" if row.ap.lift is not None else "–"
        cells = [
            f"{row.by_type[t].mean:.3f}" if t in row.by_type and row.by_type[t].mean is not None else "–" for t in types
        ]
        lines.append(f"| `{row.metric}` | {row.level} | {ap} | {random} | {lift} | " + " | ".join(cells) + " |")
    # The best of each column is the best of many on the very seeds it is shown on; this row is the same choice
    # made without each seed in turn, measured on that seed (`best_by_type`): nothing in it selected on itself.
    best = {b.error: b for b in best_by_type(report)}
    left_out = [best[t].left_out if t in best else None for t in types]
    cells = [f"{f.mean:.3f}" if f is not None and f.mean is not None else "–" for f in left_out]
    label = "*best per type, picked on the other seeds, on the seed left out*"
    lines.append(f"| {label} | | | | | " + " | ".join(cells) + " |")
    picks = "; ".join(
        f"{t} " + ", ".join(f"`{m}`" + (f" ×{n}" if n > 1 else "") for m, n in Counter(best[t].left_out_picks).items())
        for t in types
        if t in best and best[t].left_out_picks
    )
    counts = ", ".join(f"{report.errors_by_type[t]} {t}" for t in INJECT_TYPES if t in report.errors_by_type)
    lines += [
        "",
        f"{report.images} tiles, {report.annotations} boxes; per seed {counts} (rate {report.rate:g}); "
        f"{ESTIMATE}. Object-level rows; `{command}`. The last row's picks (one per left-out seed): {picks}.",
        end,
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=0.2)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--held-out", action="store_true", help=f"measure on the held-out image's tiles ({HELD_OUT}) instead"
    )
    args = parser.parse_args()
    folder = cache_dir() / "real-data"
    wheel = fetch_wheel(folder)
    if args.held_out:
        annotations = build_tiles(wheel, folder / "held-out-tiles", (HELD_OUT,))
    else:
        annotations = build_tiles(wheel, folder / "tiles")
    dataset = load_coco(annotations)
    report = run_selftest(
        json.loads(annotations.read_text()),
        annotations,
        dataset.image_root,
        list_builtin_metrics(),
        seeds=list(range(args.seeds)),
        rate=args.rate,
        sandbox=SandboxConfig(workers=args.workers),
    )
    for note in report.notes:
        print(f"note: {note}")
    command = "python benchmarks/real_data.py" + (" --held-out" if args.held_out else "")
    print(table(report, command, args.held_out))


if __name__ == "__main__":
    main()
