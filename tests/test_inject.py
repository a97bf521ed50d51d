"""`metricsmith inject`: known errors in a copy of any COCO dataset, and nothing but geometry or class to find them by.

The format-probe suite: metrics that read only how an annotation is written (coordinate decimals,
the area against w·h, its id and list position within the image, its key set, iscrowd) must score
within noise of random on every error type, averaged over 5 seeds, on datasets with integer,
float and mask-area annotations.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from agent.data.demo import boxes_only, generate_demo_dataset
from agent.data.inject import INJECT_TYPES, Injector, errors_per_type, inject_errors
from agent.data.label_errors import box_iou
from agent.errors import UserError
from agent.evaluation.ranking import average_precision

SEEDS = range(5)
MAX_LIFT = 1.3


def _decimals(value: Any) -> float:
    if isinstance(value, int):
        return -1.0  # an int is written differently from any float
    return float(len(repr(float(value)).partition(".")[2].rstrip("0")))


def _rank_in_image(annotations: list[dict[str, Any]]) -> dict[int, float]:
    """Each annotation's place among its image's annotations in list order, 0 (first) to 1 (last)."""
    by_image: dict[int, list[int]] = {}
    for annotation in annotations:
        by_image.setdefault(annotation["image_id"], []).append(annotation["id"])
    ranks = {}
    for ids in by_image.values():
        for place, annotation_id in enumerate(ids):
            ranks[annotation_id] = place / (len(ids) - 1) if len(ids) > 1 else 0.5
    return ranks


Probe = Callable[[dict[str, Any], dict[int, float], dict[int, float]], float]
PROBES: dict[str, Probe] = {
    "coordinate decimals": lambda a, _r, _p: sum(_decimals(v) for v in a["bbox"]),
    "area - w*h": lambda a, _r, _p: abs(a.get("area", 0.0) - a["bbox"][2] * a["bbox"][3]),
    "area / w*h": lambda a, _r, _p: a.get("area", 0.0) / (a["bbox"][2] * a["bbox"][3]),
    "id rank in image": lambda a, rank, _p: rank[a["id"]],
    "list position": lambda a, _r, position: position[a["id"]],
    "key set": lambda a, _r, _p: float(hash(tuple(sorted(a))) % 1000),
    "iscrowd": lambda a, _r, _p: float(a.get("iscrowd", 0)),
    "has segmentation": lambda a, _r, _p: float("segmentation" in a),
}


def _lifts(
    document: dict[str, Any], seed: int, rate: float = 0.3, probes: dict[str, Probe] = PROBES
) -> dict[tuple[str, str], float]:
    """Per (probe, type): the better of the two directions' AP, over the type's prevalence."""
    injection = inject_errors(document, rate=rate, seed=seed)
    annotations = injection.document["annotations"]
    ranks = _rank_in_image(annotations)
    positions = {a["id"]: index / len(annotations) for index, a in enumerate(annotations)}
    kinds = {r.annotation_id: r.type for r in injection.errors.errors if r.annotation_id is not None}
    lifts = {}
    for kind in INJECT_TYPES:
        items = [a for a in annotations if kinds.get(a["id"]) in (None, kind)]
        labels = [kinds.get(a["id"]) == kind for a in items]
        if not any(labels):
            continue
        prevalence = sum(labels) / len(labels)
        for name, probe in probes.items():
            scores = [probe(a, ranks, positions) for a in items]
            best = max(average_precision(scores, labels, direction) or 0.0 for direction in ("high", "low"))
            lifts[(name, kind)] = best / prevalence
    return lifts


def _synthetic(kind: str, n_images: int = 1500, seed: int = 7) -> dict[str, Any]:
    """A COCO document as exporters write them: `int` whole-pixel boxes, 2-decimal floats, or mask areas."""
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for image_id in range(1, n_images + 1):
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "width": 640, "height": 480})
        for _ in range(int(rng.integers(0, 8))):  # images with no box and with one box included
            w, h = rng.uniform(12, 200), rng.uniform(12, 160)
            x, y = rng.uniform(0, 640 - w), rng.uniform(0, 480 - h)
            annotation: dict[str, Any] = {"id": 1000 + 3 * len(annotations), "image_id": image_id}
            annotation["category_id"] = int(rng.choice([1, 2, 3], p=[0.5, 0.3, 0.2]))
            if kind == "int":
                box: list[Any] = [round(x), round(y), round(w), round(h)]
                annotation |= {"bbox": box, "area": box[2] * box[3], "iscrowd": 0}
            elif kind == "float":
                box = [round(v, 2) for v in (x, y, w, h)]
                annotation |= {"bbox": box, "area": round(box[2] * box[3], 2), "iscrowd": 0}
            else:  # polygons, mask areas, some crowd regions, and an exporter's extra field on some boxes
                box = [round(v, 1) for v in (x, y, w, h)]
                polygon = [box[0], box[1], box[0] + box[2], box[1], box[0], box[1] + box[3]]
                annotation |= {"bbox": box, "area": round(box[2] * box[3] * rng.uniform(0.5, 0.9), 1)}
                annotation |= {"segmentation": [polygon], "iscrowd": int(rng.random() < 0.05)}
                if rng.random() < 0.3:
                    annotation["attributes"] = {"occluded": bool(rng.random() < 0.5)}
            annotations.append(annotation)
    categories = [{"id": 1, "name": "car"}, {"id": 2, "name": "person"}, {"id": 3, "name": "dog"}]
    return {
        "info": {"description": "synthetic"},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


@pytest.fixture(scope="module")
def demo_clean(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The demo's true labels: whole-pixel float boxes, mask areas and polygons."""
    folder = generate_demo_dataset(tmp_path_factory.mktemp("inject") / "demo", n_images=300, seed=4).parent
    return json.loads((folder / "clean.json").read_text())


def _repeated(document: dict[str, Any], times: int) -> dict[str, Any]:
    """The same records `times` over under new ids: as many boxes as the probes need, written the same way.

    A random ranking's AP lies above the prevalence when positives are few (1.23x on average for ~55 of
    1,200); with ~200 positives per type it is within 1.15x, so the 1.3 bound then means a real leak.
    """
    images, annotations = [], []
    step_image = max(int(image["id"]) for image in document["images"])
    step_annotation = max(int(annotation["id"]) for annotation in document["annotations"])
    for copy_index in range(times):
        images += [{**image, "id": image["id"] + copy_index * step_image} for image in document["images"]]
        annotations += [
            {**a, "id": a["id"] + copy_index * step_annotation, "image_id": a["image_id"] + copy_index * step_image}
            for a in document["annotations"]
        ]
    return {**document, "images": images, "annotations": annotations}


@pytest.mark.parametrize("kind", ["int", "float", "masks", "demo", "demo-data"])
def test_format_probes_score_like_random_on_every_type(kind: str, demo_clean: dict[str, Any]) -> None:
    if kind == "demo-data":  # what `metricsmith demo-data` corrupts: its true labels as boxes only
        document = _repeated({**demo_clean, "annotations": boxes_only(demo_clean["annotations"])}, 5)
    else:
        document = _repeated(demo_clean, 5) if kind == "demo" else _synthetic(kind)
    # One area probe per area rule: where areas are w·h the field's rounding, where they come from masks
    # its ratio to w·h (the other one then measures box size, which the errors change by design).
    skip = "area / w*h" if kind in ("int", "float", "demo-data") else "area - w*h"
    probes = {name: probe for name, probe in PROBES.items() if name != skip}
    per_seed = [_lifts(document, seed, probes=probes) for seed in SEEDS]
    worst = {key: float(np.mean([lifts[key] for lifts in per_seed if key in lifts])) for key in per_seed[0]}
    leaks = {f"{probe} / {kind_}": round(lift, 2) for (probe, kind_), lift in worst.items() if lift > MAX_LIFT}
    assert leaks == {}, f"format gives injected errors away (AP lift over prevalence, mean of {len(SEEDS)} seeds)"
    assert {kind_ for _, kind_ in worst} == set(INJECT_TYPES) - ({"drop"}), "every type but drop has an annotation"


def test_the_probes_can_fail() -> None:
    # The demo's own noisy labels before this issue: 1/100 px boxes beside whole-pixel ones. A probe
    # that counts decimals must flag them, or the suite above proves nothing.
    document = _synthetic("int", n_images=100)
    injection = inject_errors(document, rate=0.3, seed=0)
    shifted = {r.annotation_id for r in injection.errors.errors if r.type == "shift"}
    for annotation in injection.document["annotations"]:
        if annotation["id"] in shifted:
            annotation["bbox"] = [float(v) + 0.01 for v in annotation["bbox"]]
    annotations = injection.document["annotations"]
    labels = [a["id"] in shifted for a in annotations if a["id"] in shifted or a["id"] not in _others(injection)]
    scores = [
        PROBES["coordinate decimals"](a, {}, {})
        for a in annotations
        if a["id"] in shifted or a["id"] not in _others(injection)
    ]
    assert average_precision(scores, labels, "high") == 1.0


def _others(injection: Any) -> set[int]:
    return {r.annotation_id for r in injection.errors.errors if r.annotation_id is not None and r.type != "shift"}


def test_number_formats_areas_and_keys_follow_the_dataset() -> None:
    for kind, number, rounding in (("int", int, 0.0), ("float", float, 0.005)):
        noisy = inject_errors(_synthetic(kind, n_images=60), rate=0.5, seed=1).document["annotations"]
        assert all(type(v) is number for a in noisy for v in a["bbox"]), kind
        assert all(type(a["area"]) is number for a in noisy), kind
        assert all(abs(a["area"] - a["bbox"][2] * a["bbox"][3]) <= rounding + 1e-9 for a in noisy), "area stays w*h"
        if kind == "float":
            assert all(round(v, 2) == v for a in noisy for v in a["bbox"]), "2 decimals, as the dataset writes them"
    masks = inject_errors(_synthetic("masks", n_images=60), rate=0.5, seed=1)
    assert all("segmentation" not in a for a in masks.document["annotations"]), "no annotation keeps a polygon"
    assert [a["id"] for a in masks.document["annotations"]] == list(range(1, len(masks.document["annotations"]) + 1))


def test_each_error_is_what_it_says(demo_clean: dict[str, Any]) -> None:
    injection = inject_errors(demo_clean, rate=0.35, seed=3)
    noisy = {a["id"]: a for a in injection.document["annotations"]}
    clean = {a["id"]: a for a in demo_clean["annotations"]}
    for record in injection.errors.errors:
        if record.type == "drop":
            assert record.clean_annotation_id not in injection.id_map.values()
            continue
        annotation = noisy[record.annotation_id]
        assert list(record.bbox) == [float(v) for v in annotation["bbox"]]
        if record.type == "spurious":
            others = [a for a in noisy.values() if a["image_id"] == record.image_id and a is not annotation]
            assert all(box_iou(annotation["bbox"], other["bbox"]) <= 0.1 for other in others)
            continue
        original = clean[record.clean_annotation_id]
        iou = box_iou(annotation["bbox"], original["bbox"])
        area, true_area = annotation["bbox"][2] * annotation["bbox"][3], original["bbox"][2] * original["bbox"][3]
        if record.type == "swap":
            assert annotation["category_id"] != original["category_id"] and iou == 1.0
        elif record.type == "shift":
            assert 0.35 <= iou < 0.75
        elif record.type == "loose":
            assert area > true_area
        elif record.type == "tight":
            assert area < true_area * 0.85
        elif record.type == "duplicate":
            assert iou > 0.75 and injection.id_map.get(record.annotation_id) is None
    assert {r.type for r in injection.errors.errors} == set(INJECT_TYPES)


def test_crowds_are_never_corrupted_and_the_result_is_deterministic() -> None:
    document = _synthetic("masks", n_images=120)
    crowds = {a["id"] for a in document["annotations"] if a["iscrowd"]}
    assert crowds
    first, again = inject_errors(document, seed=5), inject_errors(document, seed=5)
    assert first.document == again.document and first.errors == again.errors
    assert not crowds & {r.clean_annotation_id for r in first.errors.errors}
    assert inject_errors(document, seed=6).document != first.document


def test_a_single_class_dataset_gets_no_swaps_and_is_told_so() -> None:
    document = _synthetic("int", n_images=40)
    for annotation in document["annotations"]:
        annotation["category_id"] = 1
    injection = inject_errors(document, seed=0)
    assert "swap" not in {r.type for r in injection.errors.errors}
    assert any("no swap errors" in note for note in injection.notes)


def test_the_count_per_type_is_known_before_injecting_and_none_is_said() -> None:
    document = _synthetic("int", n_images=40)
    per_type, notes = errors_per_type(document, 0.2)
    injection = inject_errors(document, rate=0.2, seed=3)
    counts = {t: sum(r.type == t for r in injection.errors.errors) for t in INJECT_TYPES if t != "spurious"}
    assert per_type > 0 and set(counts.values()) == {per_type} and not notes
    tiny = {**document, "annotations": document["annotations"][:2]}
    assert errors_per_type(tiny, 0.2)[0] == 0
    empty = inject_errors(tiny, rate=0.2, seed=3)
    assert not empty.errors.errors
    assert any("no errors injected: 2 boxes" in note and "--rate" in note for note in empty.notes)


def test_copies_drawn_by_one_injector_are_those_of_inject_errors() -> None:
    # The injector learns the document once; what it draws must not depend on how many copies came before.
    document = _synthetic("float", n_images=30)
    injector = Injector(document)
    for seed, types in ((0, INJECT_TYPES), (1, ["shift"]), (0, INJECT_TYPES)):
        drawn, alone = (
            injector.inject(rate=0.3, seed=seed, types=types),
            inject_errors(document, rate=0.3, seed=seed, types=types),
        )
        assert drawn.document == alone.document and drawn.errors == alone.errors and drawn.id_map == alone.id_map


def test_bad_settings_are_user_errors() -> None:
    with pytest.raises(UserError, match="unknown error type 'blur'"):
        inject_errors(_synthetic("int", 5), types=["shift", "blur"])
    with pytest.raises(UserError, match="--rate"):
        inject_errors(_synthetic("int", 5), rate=1.5)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True, text=True, timeout=300)


def test_the_command_writes_a_copy_next_to_the_users_images_and_eval_reads_it(tmp_path: Path) -> None:
    document = _synthetic("int", n_images=6)
    (tmp_path / "data" / "images").mkdir(parents=True)
    for image in document["images"]:
        cv2.imwrite(str(tmp_path / "data" / "images" / image["file_name"]), np.full((480, 640, 3), 90, np.uint8))
    source = tmp_path / "data" / "annotations.json"
    source.write_text(json.dumps(document))
    before = source.read_bytes()
    out = tmp_path / "noisy"
    result = _cli("inject", "--annotations", str(source), "--out", str(out), "--seed", "2", "--rate", "0.3")
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr, result.stderr
    assert source.read_bytes() == before, "the user's file is left as it was"
    assert (out / "images").is_symlink() and (out / "images").resolve() == (tmp_path / "data" / "images").resolve()
    ids = json.loads((out / "ids.json").read_text())
    assert set(ids.values()) <= {a["id"] for a in document["annotations"]}
    evaluated = _cli("eval", "--annotations", str(out / "annotations.json"), "--errors", str(out / "errors.json"),
                     "--metric", "builtin:object_area_relative", "--json", "--workers", "1")  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["items"]["errors"] == len(
        json.loads((out / "errors.json").read_text())["errors"]
    )
    again = _cli("inject", "--annotations", str(source), "--out", str(out), "--seed", "2")
    assert again.returncode == 2 and "is not an empty folder" in again.stderr


def test_a_folder_without_the_images_is_warned_of_and_the_copy_still_written(tmp_path: Path) -> None:
    # inject reads no pixel, so it need not refuse; but the copy's images/ link would lead nowhere, which
    # the user used to learn only when the copy was scored.
    annotations = tmp_path / "a.json"
    annotations.write_text(json.dumps(_synthetic("int", 3)))
    (tmp_path / "elsewhere").mkdir()
    out = tmp_path / "noisy"
    result = _cli(
        "inject", "--annotations", str(annotations), "--images", str(tmp_path / "elsewhere"), "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning")]
    assert warnings == [f"warning: {annotations}: images: none of the 3 image files is in {tmp_path / 'elsewhere'} "
                        f"(the first would be {tmp_path / 'elsewhere' / '1.jpg'})"], result.stderr  # fmt: skip
    assert (out / "annotations.json").is_file() and (out / "images").resolve() == (tmp_path / "elsewhere").resolve()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--annotations", "missing.json"], "COCO annotations file not found"),
        (["--annotations", "{annotations}", "--types", "shift,blur"], "unknown error type 'blur'"),
        (["--annotations", "{annotations}", "--rate", "1"], "--rate must be at least 0 and below 1"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    annotations = tmp_path / "a.json"
    annotations.write_text(json.dumps(_synthetic("int", 3)))
    result = _cli("inject", *[arg.format(annotations=annotations) for arg in args], "--out", str(tmp_path / "o"))
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("seed", range(5))
def test_demo_data_writes_every_box_in_whole_pixels(tmp_path: Path, seed: int) -> None:
    # The leak this suite exists for: the demo once wrote corrupted boxes to 1/100 px beside whole-pixel
    # clean ones, so counting decimals found shift, loose and duplicate with AP 1.0.
    annotations = generate_demo_dataset(tmp_path / "demo", n_images=16, seed=seed, width=320, height=240)
    noisy = json.loads(annotations.read_text())["annotations"]
    errors = json.loads((tmp_path / "demo" / "errors.json").read_text())["errors"]
    assert errors and {e["type"] for e in errors} - {"drop"}
    assert all(float(v).is_integer() for a in noisy for v in a["bbox"])
    assert all(a["area"] == a["bbox"][2] * a["bbox"][3] and "segmentation" not in a for a in noisy)
    assert [a["id"] for a in noisy] == list(range(1, len(noisy) + 1))
