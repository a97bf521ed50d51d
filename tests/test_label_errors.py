"""Injected label errors: counts, geometry of each type, file consistency, determinism, schema."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from agent.data.coco import load_coco
from agent.data.demo import generate_demo_dataset
from agent.data.inject import inject_errors
from agent.data.label_errors import ERROR_TYPES, ErrorsFile, box_iou, load_errors
from agent.errors import UserError

N_IMAGES = 40
RATE = 0.3
# Small images render fast; 320×240 still holds one to six animals per image.
SIZE = {"width": 320, "height": 240}


class Demo:
    def __init__(self, path: Path) -> None:
        self.folder = path.parent
        self.noisy: dict[str, Any] = json.loads(path.read_text())
        self.clean: dict[str, Any] = json.loads((path.parent / "clean.json").read_text())
        self.errors = load_errors(path.parent / "errors.json")
        self.noisy_by_id = {ann["id"]: ann for ann in self.noisy["annotations"]}
        self.clean_by_id = {ann["id"]: ann for ann in self.clean["annotations"]}

    def of_type(self, kind: str) -> list[Any]:
        return [record for record in self.errors.errors if record.type == kind]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    root = tmp_path_factory.mktemp("noisy")
    return Demo(generate_demo_dataset(root / "data", n_images=N_IMAGES, seed=1, error_rate=RATE, **SIZE))


def _labelled_box(ann: dict[str, Any]) -> str:
    return json.dumps([ann["image_id"], ann["category_id"], ann["bbox"], ann["iscrowd"]])


def _own_iou(a: list[float], b: list[float]) -> float:
    # Written independently of agent.data.label_errors.box_iou, from corner coordinates.
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    inter = max(0.0, min(ax2, bx2) - max(a[0], b[0])) * max(0.0, min(ay2, by2) - max(a[1], b[1]))
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def test_box_iou_on_known_boxes() -> None:
    assert box_iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    assert box_iou([0, 0, 10, 10], [5, 0, 10, 10]) == pytest.approx(50 / 150)
    assert box_iou([0, 0, 10, 10], [20, 20, 5, 5]) == 0.0


def test_count_per_type_is_round_of_rate_times_n_over_the_types(demo: Demo) -> None:
    n_clean = len(demo.clean["annotations"])
    expected = round(RATE * n_clean / len(ERROR_TYPES))
    assert expected >= 3, "the sample should be large enough to hold several errors of each type"
    assert Counter(record.type for record in demo.errors.errors) == dict.fromkeys(ERROR_TYPES, expected)
    # Consumed types remove or replace one annotation each; duplicates and spurious boxes add one.
    assert len(demo.noisy["annotations"]) == n_clean - expected + 2 * expected


def test_error_counts_rounding_and_cap() -> None:
    def injected(n: int, rate: float) -> int:
        images = [{"id": 1, "file_name": "1.jpg", "width": 640, "height": 480}]
        boxes = [{"id": i, "image_id": 1, "category_id": 1 + i % 2, "bbox": [10 * i, 5, 8, 8], "area": 64, "iscrowd": 0}
                 for i in range(1, n + 1)]  # fmt: skip
        document = {
            "images": images,
            "annotations": boxes,
            "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
        }
        counts = Counter(r.type for r in inject_errors(document, rate=rate, seed=0).errors.errors)
        return counts["swap"]

    assert injected(21, 1 / 3 * 0.9999999) == 1  # 0.99 rounds up
    assert injected(21, 0.5) == 2  # 1.5 rounds to even
    assert injected(35, 0.5) == 2  # 2.5 rounds to even
    assert injected(5, 0.99) == 0  # 0.71 would round to 1, but six types need six annotations
    assert injected(30, 0.0) == 0


def test_each_annotation_gets_at_most_one_error(demo: Demo) -> None:
    touched = [record.clean_annotation_id for record in demo.errors.errors if record.clean_annotation_id is not None]
    assert len(touched) == len(set(touched))
    noisy_ids = [record.annotation_id for record in demo.errors.errors if record.annotation_id is not None]
    assert len(noisy_ids) == len(set(noisy_ids))


def test_annotations_json_is_valid_coco_with_ids_one_to_n(demo: Demo) -> None:
    dataset = load_coco(demo.folder / "annotations.json")
    assert len(dataset.annotations) == len(demo.noisy["annotations"])
    assert [ann["id"] for ann in demo.noisy["annotations"]] == list(range(1, len(demo.noisy["annotations"]) + 1))
    for ann in demo.noisy["annotations"]:
        assert ann["iscrowd"] == 0
        x, y, w, h = ann["bbox"]
        # Boxes only: a true mask or mask area next to a corrupted box would give it away.
        assert "segmentation" not in ann and ann["area"] == pytest.approx(w * h, abs=0.01)
        assert w > 1 and h > 1 and x >= 0 and y >= 0
        assert x + w <= SIZE["width"] + 1e-6 and y + h <= SIZE["height"] + 1e-6
    assert demo.noisy["images"] == demo.clean["images"]
    assert demo.noisy["categories"] == demo.clean["categories"]


def test_records_point_at_the_right_noisy_and_clean_annotations(demo: Demo) -> None:
    for record in demo.errors.errors:
        if record.annotation_id is not None:
            noisy = demo.noisy_by_id[record.annotation_id]
            assert noisy["image_id"] == record.image_id
            assert noisy["bbox"] == list(record.bbox)
            assert noisy["category_id"] == record.category_id
        if record.clean_annotation_id is not None:
            clean = demo.clean_by_id[record.clean_annotation_id]
            assert clean["image_id"] == record.image_id
            assert clean["bbox"] == list(record.original_bbox)
            assert clean["category_id"] == record.original_category_id


def test_untouched_annotations_are_unchanged(demo: Demo) -> None:
    changed = {record.annotation_id for record in demo.errors.errors}
    untouched = [ann for ann in demo.noisy["annotations"] if ann["id"] not in changed]
    clean_records = Counter(_labelled_box(ann) for ann in demo.clean["annotations"])
    for ann in untouched:
        assert clean_records[_labelled_box(ann)] > 0, ann


def test_swap_changes_only_the_class(demo: Demo) -> None:
    for record in demo.of_type("swap"):
        noisy, clean = demo.noisy_by_id[record.annotation_id], demo.clean_by_id[record.clean_annotation_id]
        assert noisy["category_id"] != clean["category_id"]
        assert noisy["category_id"] in (1, 2, 3)
        assert noisy["bbox"] == clean["bbox"]


def test_shift_iou_is_between_0_4_and_0_7(demo: Demo) -> None:
    for record in demo.of_type("shift"):
        noisy = demo.noisy_by_id[record.annotation_id]
        assert 0.4 <= _own_iou(noisy["bbox"], list(record.original_bbox)) < 0.7
        assert noisy["category_id"] == record.original_category_id
        assert "segmentation" not in noisy
        assert noisy["area"] == pytest.approx(noisy["bbox"][2] * noisy["bbox"][3], abs=0.01)


def test_loose_contains_the_truth_and_is_1_3_to_2_times_larger(demo: Demo) -> None:
    records = demo.of_type("loose")
    assert records
    for record in records:
        x, y, w, h = demo.noisy_by_id[record.annotation_id]["bbox"]
        ox, oy, ow, oh = record.original_bbox
        assert x <= ox + 1e-6 and y <= oy + 1e-6 and x + w >= ox + ow - 1e-6 and y + h >= oy + oh - 1e-6
        assert (w * h) / (ow * oh) <= 2.0 * 1.01
        # Growth is around the centre, so every side the border did not cut tells the side factor,
        # whose square is the area factor.
        cx, cy = ox + ow / 2, oy + oh / 2
        half_extents = [
            *([(cx - x) / (ow / 2)] if x > 0 else []),
            *([(x + w - cx) / (ow / 2)] if x + w < SIZE["width"] else []),
            *([(cy - y) / (oh / 2)] if y > 0 else []),
            *([(y + h - cy) / (oh / 2)] if y + h < SIZE["height"] else []),
        ]
        assert half_extents, "a box cut on all four sides would fill the image"
        for factor in half_extents:
            assert 1.3 * 0.98 <= factor**2 <= 2.0 * 1.02, (record, factor**2)


def test_spurious_boxes_overlap_no_true_box(demo: Demo) -> None:
    truth: dict[int, list[list[float]]] = {}
    for ann in demo.clean["annotations"]:
        truth.setdefault(ann["image_id"], []).append(ann["bbox"])
    sizes = {(ann["category_id"], ann["bbox"][2], ann["bbox"][3]) for ann in demo.clean["annotations"]}
    for record in demo.of_type("spurious"):
        box = demo.noisy_by_id[record.annotation_id]["bbox"]
        assert all(_own_iou(box, true_box) <= 0.1 for true_box in truth.get(record.image_id, []))
        # Sized like a real box of its class.
        assert (record.category_id, box[2], box[3]) in sizes
        assert record.original_bbox is None and record.clean_annotation_id is None


def test_duplicate_sits_on_its_original_with_the_same_class(demo: Demo) -> None:
    for record in demo.of_type("duplicate"):
        noisy = demo.noisy_by_id[record.annotation_id]
        assert _own_iou(noisy["bbox"], list(record.original_bbox)) > 0.7
        assert noisy["category_id"] == record.original_category_id
        # The original stays in annotations.json next to its duplicate.
        clean = demo.clean_by_id[record.clean_annotation_id]
        twins = [
            ann
            for ann in demo.noisy["annotations"]
            if ann["image_id"] == record.image_id and ann["bbox"] == clean["bbox"]
        ]
        assert len(twins) == 1 and twins[0]["category_id"] == clean["category_id"]


def test_drop_is_absent_from_annotations_and_present_in_clean(demo: Demo) -> None:
    noisy_keys = {(ann["image_id"], tuple(ann["bbox"])) for ann in demo.noisy["annotations"]}
    for record in demo.of_type("drop"):
        assert record.annotation_id is None and record.bbox is None
        clean = demo.clean_by_id[record.clean_annotation_id]
        assert clean["bbox"] == list(record.original_bbox) and clean["category_id"] == record.category_id
        assert (record.image_id, tuple(record.original_bbox)) not in noisy_keys


def test_same_seed_gives_identical_files_and_the_images_ignore_the_rate(tmp_path: Path) -> None:
    a = generate_demo_dataset(tmp_path / "a", n_images=6, seed=4, error_rate=0.5, **SIZE).parent
    b = generate_demo_dataset(tmp_path / "b", n_images=6, seed=4, error_rate=0.5, **SIZE).parent
    c = generate_demo_dataset(tmp_path / "c", n_images=6, seed=4, error_rate=0.0, **SIZE).parent
    for name in ("annotations.json", "clean.json", "errors.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / "annotations.json").read_bytes() != (a / "clean.json").read_bytes()
    # The error rate changes the labels only: same pixels, same truth.
    for image in (a / "images").iterdir():
        assert image.read_bytes() == (c / "images" / image.name).read_bytes()
    assert (
        json.loads((a / "clean.json").read_text())["annotations"]
        == json.loads((c / "clean.json").read_text())["annotations"]
    )


def test_rate_zero_writes_the_truth_and_no_errors(tmp_path: Path) -> None:
    folder = generate_demo_dataset(tmp_path / "z", n_images=4, seed=2, error_rate=0.0, **SIZE).parent
    noisy = json.loads((folder / "annotations.json").read_text())["annotations"]
    clean = json.loads((folder / "clean.json").read_text())["annotations"]
    assert [(a["id"], _labelled_box(a)) for a in noisy] == [(a["id"], _labelled_box(a)) for a in clean]
    errors = load_errors(folder / "errors.json")
    assert errors.errors == [] and errors.seed == 2 and errors.error_rate == 0.0


@pytest.mark.parametrize("rate", [1.0, -0.01, math.nan, 2.0])
def test_rejects_a_bad_error_rate(tmp_path: Path, rate: float) -> None:
    with pytest.raises(UserError, match="error rate"):
        generate_demo_dataset(tmp_path / "out", n_images=1, error_rate=rate)
    assert not (tmp_path / "out").exists()


def test_overwrites_an_interrupted_run_but_not_a_foreign_clean_json(tmp_path: Path) -> None:
    folder = generate_demo_dataset(tmp_path / "run", n_images=2, seed=1, **SIZE).parent
    # As if interrupted before annotations.json was renamed into place.
    (folder / "annotations.json").unlink()
    generate_demo_dataset(folder, n_images=2, seed=1, **SIZE)
    assert (folder / "annotations.json").is_file()

    foreign = tmp_path / "foreign"
    (foreign / "images").mkdir(parents=True)
    (foreign / "clean.json").write_text('{"images": []}')
    with pytest.raises(UserError, match="not empty"):
        generate_demo_dataset(foreign, n_images=1, **SIZE)
    assert (foreign / "clean.json").read_text() == '{"images": []}'


def _errors_document(**changes: Any) -> dict[str, Any]:
    record = {
        "type": "shift",
        "image_id": 1,
        "annotation_id": 3,
        "clean_annotation_id": 3,
        "category_id": 2,
        "original_category_id": 2,
        "bbox": [1.0, 2.0, 3.0, 4.0],
        "original_bbox": [1.5, 2.0, 3.0, 4.0],
    }
    return {"version": 1, "seed": 0, "error_rate": 0.2, "errors": [{**record, **changes}]}


def test_load_errors_reads_a_valid_file(tmp_path: Path) -> None:
    path = tmp_path / "errors.json"
    path.write_text(json.dumps(_errors_document()))
    loaded = load_errors(path)
    assert isinstance(loaded, ErrorsFile) and loaded.errors[0].bbox == (1.0, 2.0, 3.0, 4.0)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"version": 1, "seed": 0, "error_rate": 0.2}), "errors"),
        (json.dumps({**_errors_document(), "version": 2}), "version"),
        (json.dumps(_errors_document(type="typo")), "type"),
        (json.dumps(_errors_document(bbox=[1, 2, 0, 4])), "bbox"),
        (json.dumps(_errors_document(type="drop")), "annotation_id must be null"),
        (json.dumps(_errors_document(original_bbox=None)), "original_bbox is required"),
        (json.dumps({**_errors_document(), "error_rate": 1.5}), "error_rate"),
    ],
)
def test_load_errors_rejects_malformed_files_naming_the_file(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "my-errors.json"
    path.write_text(content)
    with pytest.raises(UserError, match=message) as caught:
        load_errors(path)
    assert str(path) in str(caught.value)


def test_load_errors_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"missing\.json"):
        load_errors(tmp_path / "missing.json")


def test_a_json_syntax_error_quotes_the_text_around_it(tmp_path: Path) -> None:
    document = json.dumps(_errors_document())
    broken = document.replace('"type"', '"type" "', 1)  # a second string where a colon belongs
    path = tmp_path / "errors.json"
    path.write_text(broken)
    with pytest.raises(UserError) as caught:
        load_errors(path)
    message = str(caught.value)
    column = broken.index('"type" "') + len('"type" ') + 1
    assert f"line 1, column {column}" in message
    assert '"type" <<HERE>>"' in message and "\n" not in message
