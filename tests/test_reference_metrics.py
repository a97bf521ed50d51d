"""The reference metrics in prompts/metrics, called directly on small crafted images.

They are our own trusted files, so they are imported in-process here; running untrusted metrics
in the sandbox is tested elsewhere.
"""

from __future__ import annotations

import ast
import importlib.util
import math
import sys
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import cv2
import numpy as np
import pytest

METRICS_DIR = Path(__file__).resolve().parents[1] / "prompts" / "metrics"
METRIC_FILES = sorted(METRICS_DIR.glob("*.py"))
EXPECTED = {
    "brightness": ("image", "low"),
    "contrast": ("image", "low"),
    "sharpness": ("image", "low"),
    "object_count": ("image", "high"),
    "object_area_relative": ("object", "low"),
    "border_closeness": ("object", "high"),
    "annotation_duplicates": ("object", "high"),
    "black_white_share": ("object", "low"),
    "box_tightness": ("object", "low"),
    "object_aspect_ratio": ("object", "high"),
    "object_area_absolute": ("object", "low"),
    "frame_object_density": ("image", "high"),
    "object_proximity": ("object", "low"),
    "appearance_neighbours": ("object", "high"),
    "duplicate_copy": ("object", "high"),
    "boundary_fit": ("object", "low"),
    "object_spill": ("object", "high"),
    "class_geometry_outlier": ("object", "high"),
    "background_likeness": ("object", "high"),
}
# Feature metrics return a vector per box; metricsmith turns the vectors into scores.
FEATURE_METRICS = {"appearance_neighbours": 24}
ALLOWED_IMPORTS = {"numpy", "cv2", "math"}


@cache
def metric(name: str) -> ModuleType:
    return _module(METRICS_DIR / f"{name}.py", f"reference_metric_{name}")


def _module(path: Path, module_name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # No __pycache__ next to the metrics: prompts/ ships inside the wheel as it is on disk.
    previous, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = previous
    return module


def frozen(image: np.ndarray) -> np.ndarray:
    image = np.ascontiguousarray(image, dtype=np.uint8)
    image.setflags(write=False)
    return image


def flat(value: int, height: int = 48, width: int = 64) -> np.ndarray:
    return frozen(np.full((height, width, 3), value, np.uint8))


def obj(bbox: list[float], category: str = "panda", category_id: int = 1, ann_id: int = 1) -> dict[str, Any]:
    return {
        "id": ann_id,
        "image_id": 1,
        "category_id": category_id,
        "category": category,
        "bbox": bbox,
        "area": float(bbox[2] * bbox[3]),
        "iscrowd": 0,
    }


def scene(image: np.ndarray, annotations: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    height, width = image.shape[:2]
    return {
        "image": {"id": 1, "file_name": "000001.jpg", "width": width, "height": height},
        "annotations": annotations or [],
        "categories": [{"id": 1, "name": "panda"}, {"id": 2, "name": "bear"}, {"id": 3, "name": "fox"}],
    }


def call(name: str, image: np.ndarray, ann: dict[str, Any] | None = None, sc: dict[str, Any] | None = None) -> Any:
    module = metric(name)
    sc = sc if sc is not None else scene(image, [ann] if ann else [])
    if module.LEVEL == "image":
        return module.score(image, sc)
    assert ann is not None
    if hasattr(module, "prepare"):  # as the worker does: once per image, its result handed to each call
        return module.score(image, ann, sc, module.prepare(image, sc))
    return module.score(image, ann, sc)


def valid_output(name: str, value: Any) -> bool:
    """None, or what the metric's OUTPUT promises: one finite number, or a fixed-length finite vector."""
    if value is None:
        return True
    if name in FEATURE_METRICS:
        return (
            isinstance(value, list)
            and len(value) == FEATURE_METRICS[name]
            and all(isinstance(v, float) and math.isfinite(v) for v in value)
        )
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def textured(height: int = 120, width: int = 160, seed: int = 0) -> np.ndarray:
    """Mid-grey background with mild noise, so gradients exist everywhere but are weak."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(110, 6, (height, width, 3)), 0, 255).astype(np.uint8)


# --- the contract -----------------------------------------------------------------------------


def test_the_reference_set_is_complete() -> None:
    assert {p.stem for p in METRIC_FILES} >= set(EXPECTED)


@pytest.mark.parametrize("path", METRIC_FILES, ids=lambda p: p.stem)
def test_file_follows_the_contract(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstring = ast.get_docstring(tree)
    assert docstring and len(docstring.split()) >= 8, "the docstring is the metric's description"

    constants: dict[str, Any] = {}
    for stmt in tree.body:
        if (
            isinstance(stmt, ast.Assign)
            and len(stmt.targets) == 1
            and isinstance(stmt.targets[0], ast.Name)
            and stmt.targets[0].id in {"NAME", "LEVEL", "SUSPICIOUS", "TITLE", "RANGE"}
        ):
            constants[stmt.targets[0].id] = ast.literal_eval(stmt.value)
    assert constants.get("NAME") == path.stem
    assert constants.get("LEVEL") in ("image", "object")
    assert constants.get("SUSPICIOUS") in ("high", "low")
    if path.stem in EXPECTED:
        assert (constants["LEVEL"], constants["SUSPICIOUS"]) == EXPECTED[path.stem]
    if "TITLE" in constants:
        assert isinstance(constants["TITLE"], str) and constants["TITLE"]
    if constants.get("RANGE") is not None:
        low, high = constants["RANGE"]
        assert all(b is None or isinstance(b, int | float) for b in (low, high))
        assert low is None or high is None or low < high

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative imports"
            modules = [node.module or ""]
        else:
            continue
        for module in modules:
            top = module.split(".")[0]
            assert top in ALLOWED_IMPORTS or top in sys.stdlib_module_names, f"imports {top}"

    scores = [s for s in tree.body if isinstance(s, ast.FunctionDef) and s.name == "score"]
    assert len(scores) == 1
    expected_args = ["image", "scene"] if constants["LEVEL"] == "image" else ["image", "obj", "scene"]
    prepares = [s for s in tree.body if isinstance(s, ast.FunctionDef) and s.name == "prepare"]
    if prepares:  # work on the whole image, once per image: its result is score()'s fourth argument
        assert constants["LEVEL"] == "object" and len(prepares) == 1
        assert [a.arg for a in prepares[0].args.args] == ["image", "scene"]
        expected_args.append("prepared")
    assert [a.arg for a in scores[0].args.args] == expected_args


# --- image level ----------------------------------------------------------------------------


def test_brightness_black_is_0_white_is_1() -> None:
    assert call("brightness", flat(0)) == 0.0
    assert call("brightness", flat(255)) == pytest.approx(1.0)
    assert call("brightness", flat(51)) == pytest.approx(0.2)


def test_contrast_flat_is_0_and_grows_with_spread() -> None:
    assert call("contrast", flat(128)) == 0.0
    half = np.zeros((40, 40, 3), np.uint8)
    half[:, 20:] = 255
    assert call("contrast", frozen(half)) == pytest.approx(0.5, abs=1e-3)


def test_sharpness_checkerboard_beats_blurred_checkerboard() -> None:
    board = (np.indices((64, 64)).sum(axis=0) // 4 % 2 * 255).astype(np.uint8)
    board = np.repeat(board[..., None], 3, axis=2)
    blurred = cv2.GaussianBlur(board, (0, 0), 2.0)
    assert call("sharpness", flat(90)) == 0.0
    assert call("sharpness", frozen(board)) > 4 * call("sharpness", frozen(blurred)) > 0


def test_object_count_counts_annotations() -> None:
    image = flat(0)
    anns = [obj([1, 1, 5, 5], ann_id=i) for i in range(1, 4)]
    assert call("object_count", image, sc=scene(image, anns)) == 3
    assert call("object_count", image, sc=scene(image, [])) == 0


def test_frame_object_density_counts_the_union_once() -> None:
    image = flat(0, height=10, width=20)
    two_overlapping = [obj([0, 0, 10, 10], ann_id=1), obj([5, 0, 10, 10], ann_id=2)]
    assert call("frame_object_density", image, sc=scene(image, two_overlapping)) == pytest.approx(150 / 200)
    assert call("frame_object_density", image, sc=scene(image, [obj([-5, -5, 100, 100])])) == 1.0
    assert call("frame_object_density", image, sc=scene(image, [])) == 0.0


# --- object level ----------------------------------------------------------------------------


def test_absolute_area_is_exact_and_clipped() -> None:
    image = flat(0, height=100, width=200)
    assert call("object_area_absolute", image, obj([10, 20, 50, 40])) == pytest.approx(2000.0)
    assert call("object_area_absolute", image, obj([-25, 0, 50, 40])) == pytest.approx(1000.0)
    assert call("object_area_absolute", image, obj([300, 0, 5, 5])) is None


def test_relative_area_is_exact() -> None:
    image = flat(0, height=100, width=200)
    assert call("object_area_relative", image, obj([10, 20, 50, 40])) == pytest.approx(2000 / 20000)
    assert call("object_area_relative", image, obj([0, 0, 200, 100])) == pytest.approx(1.0)
    # Clipped to the image: only the half inside counts.
    assert call("object_area_relative", image, obj([-25, 0, 50, 40])) == pytest.approx(1000 / 20000)
    assert call("object_area_relative", image, obj([10, 10, 0, 5])) == 0.0


def test_border_closeness_is_1_touching_and_lower_in_the_middle() -> None:
    image = flat(0, height=100, width=200)
    assert call("border_closeness", image, obj([0, 40, 20, 20])) == pytest.approx(1.0)
    assert call("border_closeness", image, obj([180, 40, 20, 20])) == pytest.approx(1.0)
    assert call("border_closeness", image, obj([-5, -5, 20, 20])) == pytest.approx(1.0)
    middle = call("border_closeness", image, obj([90, 40, 20, 20]))
    # The nearest side is top or bottom: 40 px from a border at most 50 px away.
    assert middle == pytest.approx(1 - 40 / 50)
    assert call("border_closeness", image, obj([100, 50, 0, 0])) == pytest.approx(0.0)
    near = call("border_closeness", image, obj([5, 40, 20, 20]))
    assert middle < near < 1.0


def test_duplicates_iou_is_exact_and_class_aware() -> None:
    image = flat(0, height=100, width=100)
    a = obj([0, 0, 10, 10], category="fox", category_id=3, ann_id=1)
    b = obj([5, 0, 10, 10], category="fox", category_id=3, ann_id=2)
    c = obj([0, 0, 10, 10], category="bear", category_id=2, ann_id=3)
    sc = scene(image, [a, b, c])
    assert call("annotation_duplicates", image, a, sc) == pytest.approx(50 / 150)
    assert call("annotation_duplicates", image, dict(b), sc) == pytest.approx(50 / 150)
    # c overlaps a perfectly, but is another class.
    assert call("annotation_duplicates", image, c, sc) == 0.0
    exact = obj([0, 0, 10, 10], category="fox", category_id=3, ann_id=4)
    assert call("annotation_duplicates", image, exact, scene(image, [a, b, c, exact])) == pytest.approx(1.0)
    assert call("annotation_duplicates", image, a, scene(image, [a])) == 0.0


def test_black_white_share_panda_patch_high_orange_low_others_none() -> None:
    patch = np.zeros((40, 40, 3), np.uint8)
    patch[:, :20] = 240
    patch[:, 20:] = (22, 20, 24)
    panda_like = frozen(patch)
    orange = flat(0, 40, 40).copy()
    orange[:] = (220, 110, 30)
    orange = frozen(orange)
    box = [0, 0, 40, 40]
    assert call("black_white_share", panda_like, obj(box)) > 0.95
    assert call("black_white_share", orange, obj(box)) < 0.05
    assert call("black_white_share", panda_like, obj(box, category="fox", category_id=3)) is None
    # Dark brown is dark but clearly coloured: not "black".
    brown = np.full((40, 40, 3), (67, 41, 22), np.uint8)
    assert call("black_white_share", frozen(brown), obj(box)) < 0.05


def test_object_proximity_in_box_diagonals() -> None:
    image = flat(0, height=200, width=200)
    a = obj([0, 0, 30, 40], ann_id=1)  # diagonal 50, centre (15, 20)
    b = obj([60, 0, 30, 40], category="bear", category_id=2, ann_id=2)  # centre (75, 20): 60 px away
    far = obj([150, 150, 30, 40], ann_id=3)
    sc = scene(image, [a, b, far])
    assert call("object_proximity", image, a, sc) == pytest.approx(60 / 50)
    twin = obj([3, 4, 30, 40], ann_id=4)  # 5 px from a
    assert call("object_proximity", image, a, scene(image, [a, b, twin])) == pytest.approx(5 / 50)
    assert call("object_proximity", image, dict(a), scene(image, [dict(a)])) is None
    empty = obj([100, 100, 0, 10], ann_id=5)
    assert call("object_proximity", image, a, scene(image, [a, empty])) is None


def test_duplicate_copy_flags_the_looser_twin_only() -> None:
    image = rectangle_image()  # the object spans columns 50..109, rows 40..79
    tight = obj([50, 40, 60, 40], ann_id=1)
    jittered = obj([52, 38, 61, 43], ann_id=2)
    other_class = obj([50, 40, 60, 40], category="bear", category_id=2, ann_id=3)
    sc = scene(image, [tight, jittered, other_class])
    overlap = call("annotation_duplicates", image, jittered, scene(image, [tight, jittered]))
    assert overlap > 0.8
    assert call("duplicate_copy", image, jittered, sc) == pytest.approx(overlap)
    assert call("duplicate_copy", image, tight, sc) == 0.0
    # Alone, beside another class, or beside a box that overlaps too little: no twin.
    assert call("duplicate_copy", image, tight, scene(image, [tight])) == 0.0
    assert call("duplicate_copy", image, other_class, sc) == 0.0
    far = obj([80, 40, 60, 40], ann_id=4)  # IoU 1/3 with tight
    assert call("duplicate_copy", image, far, scene(image, [tight, far])) == 0.0


def _panda_bear_fox() -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Three cartoon animals side by side on grass: black-and-white, brown and orange blobs."""
    image = np.zeros((100, 300, 3), np.uint8)
    image[:] = (60, 120, 40)
    cv2.ellipse(image, (50, 50), (40, 35), 0, 0, 360, (235, 235, 235), -1)
    cv2.circle(image, (35, 40), 8, (20, 20, 20), -1)
    cv2.circle(image, (65, 40), 8, (20, 20, 20), -1)
    cv2.ellipse(image, (150, 50), (40, 35), 0, 0, 360, (110, 70, 35), -1)
    cv2.ellipse(image, (250, 50), (40, 35), 0, 0, 360, (225, 105, 25), -1)
    boxes = [[10, 15, 80, 70], [110, 15, 80, 70], [210, 15, 80, 70]]
    anns = [obj(box, ann_id=i + 1) for i, box in enumerate(boxes)]
    return frozen(image), anns


def test_appearance_features_describe_colours_not_size() -> None:
    image, anns = _panda_bear_fox()
    panda, bear, fox = (np.asarray(call("appearance_neighbours", image, ann)) for ann in anns)
    for vector in (panda, bear, fox):
        assert vector.sum() == pytest.approx(2.0)  # hue+grey bins share one whole, saturation bins another
        assert (vector >= 0).all()
    # The panda is all grey levels (no hue), the fox mostly one hue bin, and it differs from the bear.
    assert panda[:12].sum() < 0.3 < fox[:12].sum()
    assert np.linalg.norm(panda - bear) > 0.3 and np.linalg.norm(bear - fox) > 0.3
    # Half the size, same look: nearly the same vector.
    small = obj([30, 32, 40, 36], ann_id=9)
    assert np.linalg.norm(np.asarray(call("appearance_neighbours", image, small)) - panda) < 0.35


@pytest.mark.parametrize(("height", "width"), [(100, 73), (48, 48), (30, 7), (2, 2)])
def test_appearance_cells_are_exact_integer_means(height: int, width: int) -> None:
    # The vector must not depend on the CPU: each cell is the mean of its pixels, rounded half up, in
    # integers. Checked against the plain definition, one cell at a time.
    module = metric("appearance_neighbours")
    crop = np.random.default_rng(height * width).integers(0, 256, size=(height, width, 3)).astype(np.uint8)
    side = module._SIDE
    cells = module._cell_means(crop)
    assert cells.shape == (side, side, 3) and cells.dtype == np.uint8
    for row in range(side):
        top, bottom = row * height // side, (row + 1) * height // side
        for column in range(side):
            left, right = column * width // side, (column + 1) * width // side
            block = crop[top : max(bottom, top + 1), left : max(right, left + 1)].reshape(-1, 3).astype(int)
            expected = [(2 * int(total) + len(block)) // (2 * len(block)) for total in block.sum(axis=0)]
            assert cells[row, column].tolist() == expected, (row, column)
    assert (np.rint(module._WEIGHTS) == module._WEIGHTS).all(), "whole-number weights: exact sums in any order"


def rectangle_image() -> np.ndarray:
    image = textured()
    image[40:80, 50:110] = 230  # the object: rows 40..79, columns 50..109
    return frozen(image)


def test_box_tightness_ranks_tight_above_loose_and_shifted() -> None:
    image = rectangle_image()
    tight = call("box_tightness", image, obj([50, 40, 60, 40]))
    loose = call("box_tightness", image, obj([35, 25, 90, 70]))
    shifted = call("box_tightness", image, obj([62, 48, 60, 40]))
    # 3 px inside the object on every side: the object's edges fall in the outside bands.
    too_small = call("box_tightness", image, obj([53, 43, 54, 34]))
    assert tight > 0.9
    assert tight > loose + 0.2
    assert tight > shifted + 0.2
    assert tight > too_small + 0.2
    assert loose == pytest.approx(0.5, abs=0.1)
    # A box that cuts through the object has the strong edges outside it.
    assert too_small < 0.5


def test_box_tightness_on_flat_image_is_neutral() -> None:
    assert call("box_tightness", flat(100, 80, 80), obj([20, 20, 30, 30])) == pytest.approx(0.5)


# --- boundaries, spill, class geometry and background on crafted "aerial" images -----------------

CROWN_BOXES = [[20, 20, 40, 40], [100, 24, 40, 40], [170, 30, 40, 40], [30, 130, 40, 40], [120, 140, 40, 40]]


def crowns(seed: int = 0) -> np.ndarray:
    """Green, rough discs (tree crowns seen from above) on sandy, smoother ground, both noisy.

    The ground is busy too (noise everywhere), so a side sitting on any strong edge proves nothing; only
    the change from crown to ground does. Each disc fills its box in CROWN_BOXES, corners aside.
    """
    rng = np.random.default_rng(seed)
    image = np.clip(rng.normal((170, 150, 110), 12, (220, 240, 3)), 0, 255)
    crown = np.clip(rng.normal((60, 120, 50), 30, (220, 240, 3)), 0, 255)
    mask = np.zeros((220, 240), np.uint8)
    for x, y, w, h in CROWN_BOXES:
        cv2.ellipse(mask, (x + w // 2, y + h // 2), (w // 2, h // 2), 0, 0, 360, 1, -1)
    image[mask == 1] = crown[mask == 1]
    return frozen(image.astype(np.uint8))


def crown_scene(image: np.ndarray, extra: list[dict[str, Any]] | None = None) -> tuple[list[dict[str, Any]], dict]:
    anns = [obj(box, category="tree", ann_id=i + 1) for i, box in enumerate(CROWN_BOXES)]
    anns += extra or []
    return anns, scene(image, anns)


def test_boundary_fit_is_highest_on_the_boundary() -> None:
    image = crowns()
    anns, sc = crown_scene(image)
    fitting = call("boundary_fit", image, anns[4], sc)  # the crown at [120, 140, 40, 40]
    loose = call("boundary_fit", image, obj([110, 130, 60, 60]), sc)
    shifted = call("boundary_fit", image, obj([132, 150, 40, 40]), sc)
    tight = call("boundary_fit", image, obj([128, 148, 24, 24]), sc)
    assert fitting > 0.9
    for wrong in (loose, shifted, tight):
        assert wrong < fitting - 0.2
    assert min(loose, shifted, tight) >= 0.0


def test_boundary_fit_is_not_fooled_by_a_busy_background() -> None:
    # A smooth object on a checkerboard of 2 px squares: the background's edges are far stronger than
    # the object's, so an edge detector finds more edge outside the fitting box than inside it, and ranks
    # it below a loose box. Averaged over a band, the checkerboard is a steady, rough grey and the object
    # a smooth green: the position that separates them best is the object's boundary.
    checks = (np.indices((120, 160)) // 2).sum(axis=0) % 2 == 0
    image = np.repeat(np.where(checks, 60, 200).astype(np.uint8)[..., None], 3, axis=2)
    image[40:80, 50:110] = (60, 140, 50)
    image = frozen(image)
    fitting, loose, shifted = obj([50, 40, 60, 40]), obj([40, 30, 80, 60]), obj([60, 45, 60, 40])
    assert call("boundary_fit", image, fitting) > 0.95
    assert call("boundary_fit", image, loose) < 0.3
    assert call("boundary_fit", image, shifted) < 0.3
    assert call("box_tightness", image, fitting) < call("box_tightness", image, loose)  # the edge detector is fooled
    assert call("boundary_fit", flat(100, 80, 80), obj([20, 20, 30, 30])) is None  # nothing anywhere


def test_object_spill_flags_a_box_inside_its_object() -> None:
    image = crowns()
    tight = obj([128, 148, 24, 24], category="tree", ann_id=9)  # well inside the crown at [120, 140, 40, 40]
    others = [obj(box, category="tree", ann_id=i + 1) for i, box in enumerate(CROWN_BOXES[:4])]
    sc = scene(image, [*others, tight])
    spill = call("object_spill", image, tight, sc)
    fitting_anns, fitting_scene = crown_scene(image)
    fitting = call("object_spill", image, fitting_anns[4], fitting_scene)
    loose = call("object_spill", image, obj([110, 130, 60, 60], ann_id=9), scene(image, [*others]))
    assert spill > 0.8
    assert fitting < spill - 0.3
    assert loose < spill - 0.3
    # Alone in its image: nothing to learn the object's colours from.
    assert call("object_spill", image, tight, scene(image, [tight])) is None


def test_background_likeness_tells_background_from_crowns() -> None:
    image = crowns()
    anns, sc = crown_scene(image, [obj([190, 160, 40, 40], category="tree", ann_id=9)])  # on bare ground
    on_ground = call("background_likeness", image, anns[-1], sc)
    on_crowns = [call("background_likeness", image, ann, sc) for ann in anns[:-1]]
    assert on_ground > 0.6
    assert max(on_crowns) < 0.4
    assert call("background_likeness", image, anns[0], scene(image, [anns[0]])) is None  # no other box


def test_class_geometry_outlier_is_a_robust_z_within_the_class() -> None:
    image = flat(0, 200, 300)
    trees = [obj([10 + 40 * i, 10, 20 + i % 2, 20], category="tree", ann_id=i + 1) for i in range(6)]
    big = obj([10, 100, 40, 40], category="tree", ann_id=7)
    wide = obj([100, 100, 60, 15], category="tree", ann_id=8)
    other_class = obj([200, 100, 80, 80], category="bear", category_id=2, ann_id=9)
    sc = scene(image, [*trees, big, wide, other_class])
    # The median and MAD of the class barely move with one wrong box among the others.
    assert call("class_geometry_outlier", image, trees[0], sc) < 1.0
    assert call("class_geometry_outlier", image, big, sc) > 5.0
    assert call("class_geometry_outlier", image, wide, sc) > 5.0
    # A class with too few boxes in the image is measured against all the image's other boxes.
    assert call("class_geometry_outlier", image, other_class, sc) > 5.0
    bear_among_bears = obj([200, 100, 80, 80], category="bear", category_id=2, ann_id=10)
    bears = [obj([20 + 50 * i, 150, 80, 80], category="bear", category_id=2, ann_id=20 + i) for i in range(3)]
    assert (
        call("class_geometry_outlier", image, bear_among_bears, scene(image, [*trees, *bears, bear_among_bears])) < 1.0
    )
    assert call("class_geometry_outlier", image, big, scene(image, [*trees[:2], big])) is None  # too few boxes


def test_aspect_ratio() -> None:
    image = flat(0)
    assert call("object_aspect_ratio", image, obj([0, 0, 30, 10])) == pytest.approx(3.0)
    assert call("object_aspect_ratio", image, obj([0, 0, 10, 40])) == pytest.approx(0.25)
    assert call("object_aspect_ratio", image, obj([0, 0, 10, 0])) is None


OBJECT_METRICS = [name for name, (level, _) in EXPECTED.items() if level == "object"]
AWKWARD_BOXES = [
    [-50, -50, 20, 20],  # entirely outside, top-left
    [500, 400, 30, 30],  # entirely outside, bottom-right
    [-10, -10, 30, 30],  # partly outside
    [150, 100, 40, 40],  # overflowing bottom-right
    [0, 0, 160, 120],  # the whole image
    [20, 20, 0, 0],  # empty
    [20, 20, 0.4, 0.4],  # sub-pixel
    [159.5, 119.5, 3, 3],  # a sliver of the last pixel
    [20, 20, -5, 10],  # negative width
    [10.3, 7.7, 33.3, 21.9],  # fractional
]


@pytest.mark.parametrize("name", OBJECT_METRICS)
@pytest.mark.parametrize("bbox", AWKWARD_BOXES, ids=str)
def test_awkward_boxes_give_none_or_a_finite_number(name: str, bbox: list[float]) -> None:
    image = rectangle_image()
    ann = obj(bbox)
    other = obj([12, 9, 30, 20], ann_id=2)
    value = call(name, image, ann, scene(image, [ann, other]))
    assert valid_output(name, value)


def test_boxes_entirely_outside_are_not_applicable() -> None:
    image = rectangle_image()
    for name in (
        "object_area_relative",
        "border_closeness",
        "black_white_share",
        "box_tightness",
        "boundary_fit",
        "object_spill",
        "background_likeness",
        *FEATURE_METRICS,
    ):
        assert call(name, image, obj([-50, -50, 20, 20])) is None, name
        assert call(name, image, obj([500, 400, 30, 30])) is None, name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_metrics_never_modify_the_image(name: str) -> None:
    image = rectangle_image()
    before = image.copy()
    anns = [obj([50, 40, 60, 40]), obj([55, 42, 50, 36], ann_id=2)]
    value = call(name, image, anns[0], scene(image, anns))
    assert valid_output(name, value)
    assert np.array_equal(image, before)
    assert not image.flags.writeable


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_metrics_on_a_tiny_image(name: str) -> None:
    image = flat(128, height=1, width=1)
    value = call(name, image, obj([0, 0, 1, 1]))
    assert valid_output(name, value)


# --- examples/metrics: candidate metrics shipped as files, not built-ins ----------------------------

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "examples" / "metrics"


def example(name: str) -> ModuleType:
    return _module(EXAMPLES_DIR / f"{name}.py", f"example_metric_{name}")


def test_example_metrics_pass_the_contract_check() -> None:
    from agent.metrics.contract import load_metric_file

    for path in sorted(EXAMPLES_DIR.glob("*.py")):
        assert load_metric_file(str(path)).name == path.stem


def _among_crowns(bbox: list[float], neighbours: int = 4) -> tuple[np.ndarray, dict[str, Any], dict[str, Any]]:
    """The crafted crowns, a tree box at `bbox` (id 9) and its scene, with the first `neighbours` crowns' boxes."""
    image = crowns()
    others = [obj(box, category="tree", ann_id=i + 1) for i, box in enumerate(CROWN_BOXES[:neighbours])]
    box = obj(bbox, category="tree", ann_id=9)
    return image, box, scene(image, [*others, box])


def _prepared_score(metric: ModuleType, bbox: list[float], neighbours: int = 4) -> float | None:
    """A metric with prepare() on a box among the crafted crowns, as the worker calls it."""
    image, box, sc = _among_crowns(bbox, neighbours)
    return metric.score(image, box, sc, metric.prepare(image, sc))


def test_translation_fit_flags_a_moved_box_not_a_resized_one() -> None:
    translation_fit = example("translation_fit")

    def fit(bbox: list[float], neighbours: int = 4) -> float | None:
        return _prepared_score(translation_fit, bbox, neighbours)

    fitting = fit([120, 140, 40, 40])  # the crown's own box
    shifted = fit([132, 150, 40, 40])  # a third of the crown outside it, ground inside
    loose, tight = fit([110, 130, 60, 60]), fit([128, 148, 24, 24])  # wrong in size, centred on the crown
    assert fitting is not None and shifted is not None and loose is not None and tight is not None
    assert fitting < 0.05
    assert shifted > fitting + 0.15
    assert max(loose, tight) < shifted - 0.1  # resizing in place mends them: no move is needed
    assert fit([132, 150, 40, 40], neighbours=0) is None  # alone: nothing to learn the colours from


def test_crown_template_flags_a_moved_box() -> None:
    crown_template = example("crown_template")

    def moved(bbox: list[float], neighbours: int = 4) -> float | None:
        return _prepared_score(crown_template, bbox, neighbours)

    fitting = moved([120, 140, 40, 40])  # the crown's own box: sits as the other crowns' boxes sit
    shifted = moved([132, 150, 40, 40])  # moved by 30% of its size: a third of the crown outside it
    shifted_left = moved([110, 140, 40, 40])  # moved by a quarter, the other way
    assert fitting is not None and shifted is not None and shifted_left is not None
    assert fitting < 0.05
    assert shifted > fitting + 0.1
    assert shifted_left > fitting + 0.1
    # Fewer than 3 boxes of any class (this one included): no template to match.
    assert moved([132, 150, 40, 40], neighbours=1) is None
    # Where it puts the moved box back: to the left and up, about as far as it was moved (30%, 25%).
    image, box, sc = _among_crowns([132, 150, 40, 40])
    offset = crown_template.best_offset(box, crown_template.prepare(image, sc))
    assert offset is not None and offset[0] < -0.15 and offset[1] < -0.1
