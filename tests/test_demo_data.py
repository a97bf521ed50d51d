"""The procedural demo dataset: deterministic, valid COCO, exact ground truth, safe to write."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from process_helpers import child_of, ctrl_c_once_a_child_starts, start_as_from_a_terminal

from agent.data import demo as demo_data
from agent.data.demo import generate_demo_dataset
from agent.errors import UserError

N_IMAGES = 16


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    root = tmp_path_factory.mktemp("demo")
    # clean.json is the exact truth these tests check (annotations.json holds the same boxes when
    # no error is injected); the noisy labels have tests of their own in test_label_errors.py.
    path = generate_demo_dataset(root / "data", n_images=N_IMAGES, seed=0, error_rate=0.0)
    return path, json.loads((path.parent / "clean.json").read_text())


def _image(root: Path, file_name: str) -> np.ndarray:
    bgr = cv2.imread(str(root / "images" / file_name))
    assert bgr is not None, file_name
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _mask(ann: dict[str, Any], height: int, width: int) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    polygons = [np.round(np.asarray(p).reshape(-1, 2)).astype(np.int32) for p in ann["segmentation"]]
    cv2.fillPoly(mask, polygons, 1)
    return mask.astype(bool)


def test_returns_annotations_path_and_writes_images(dataset: tuple[Path, dict[str, Any]]) -> None:
    path, coco = dataset
    assert path.name == "annotations.json"
    files = sorted(p.name for p in (path.parent / "images").iterdir())
    assert files == [f"{i:06d}.jpg" for i in range(1, N_IMAGES + 1)]
    assert [img["file_name"] for img in coco["images"]] == files


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    a = generate_demo_dataset(tmp_path / "a", n_images=4, seed=7)
    b = generate_demo_dataset(tmp_path / "b", n_images=4, seed=7)
    c = generate_demo_dataset(tmp_path / "c", n_images=4, seed=8)
    assert a.read_bytes() == b.read_bytes()
    for name in ("000001.jpg", "000002.jpg", "000004.jpg"):
        assert (a.parent / "images" / name).read_bytes() == (b.parent / "images" / name).read_bytes()
        assert (a.parent / "images" / name).read_bytes() != (c.parent / "images" / name).read_bytes()
    assert json.loads(a.read_text())["annotations"] != json.loads(c.read_text())["annotations"]


def test_output_does_not_depend_on_worker_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Force the process pool even for a handful of images, so both code paths are compared.
    monkeypatch.setattr(demo_data, "_POOL_MIN_IMAGES", 2)
    serial = generate_demo_dataset(tmp_path / "serial", n_images=5, seed=3, workers=1)
    pooled = generate_demo_dataset(tmp_path / "pooled", n_images=5, seed=3, workers=2)
    assert serial.read_bytes() == pooled.read_bytes()
    for i in range(1, 6):
        name = f"{i:06d}.jpg"
        assert (serial.parent / "images" / name).read_bytes() == (pooled.parent / "images" / name).read_bytes()


def test_image_n_is_the_same_whatever_the_dataset_size(tmp_path: Path) -> None:
    small = generate_demo_dataset(tmp_path / "small", n_images=2, seed=5)
    large = generate_demo_dataset(tmp_path / "large", n_images=6, seed=5)
    name = "000002.jpg"
    assert (small.parent / "images" / name).read_bytes() == (large.parent / "images" / name).read_bytes()


def test_valid_coco_structure(dataset: tuple[Path, dict[str, Any]]) -> None:
    _, coco = dataset
    assert {"images", "annotations", "categories"} <= coco.keys()
    assert coco["categories"] == [
        {"id": 1, "name": "panda", "supercategory": "animal"},
        {"id": 2, "name": "bear", "supercategory": "animal"},
        {"id": 3, "name": "fox", "supercategory": "animal"},
    ]
    images = {img["id"]: img for img in coco["images"]}
    assert sorted(images) == list(range(1, N_IMAGES + 1))
    for img in coco["images"]:
        assert (img["width"], img["height"]) == (640, 480)

    ann_ids = [ann["id"] for ann in coco["annotations"]]
    assert ann_ids == list(range(1, len(ann_ids) + 1))
    per_image: dict[int, int] = {}
    for ann in coco["annotations"]:
        img = images[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        assert all(isinstance(v, float) for v in ann["bbox"])
        assert w > 0 and h > 0
        assert x >= 0 and y >= 0 and x + w <= img["width"] and y + h <= img["height"]
        assert ann["area"] > 0
        assert ann["area"] <= w * h
        assert ann["iscrowd"] == 0
        assert ann["category_id"] in (1, 2, 3)
        assert ann["segmentation"], "every annotation has a polygon"
        for polygon in ann["segmentation"]:
            assert len(polygon) >= 6 and len(polygon) % 2 == 0
        per_image[ann["image_id"]] = per_image.get(ann["image_id"], 0) + 1
    assert all(1 <= n <= 6 for n in per_image.values())
    assert len(per_image) == N_IMAGES, "every image holds at least one animal"


def test_annotations_json_holds_boxes_only(dataset: tuple[Path, dict[str, Any]]) -> None:
    path, clean = dataset
    noisy = json.loads(path.read_text())
    assert noisy["images"] == clean["images"] and noisy["categories"] == clean["categories"]
    assert len(noisy["annotations"]) == len(clean["annotations"])
    for box, truth in zip(noisy["annotations"], clean["annotations"], strict=True):
        assert "segmentation" not in box, "the true mask would give corrupted boxes away"
        assert box["bbox"] == truth["bbox"] and box["category_id"] == truth["category_id"]
        assert box["area"] == pytest.approx(box["bbox"][2] * box["bbox"][3], abs=0.01)


def test_images_match_the_declared_size(dataset: tuple[Path, dict[str, Any]]) -> None:
    path, coco = dataset
    for img in coco["images"][:4]:
        pixels = _image(path.parent, img["file_name"])
        assert pixels.shape == (img["height"], img["width"], 3)


def test_boxes_are_tight_around_the_polygons(dataset: tuple[Path, dict[str, Any]]) -> None:
    _, coco = dataset
    for ann in coco["annotations"]:
        points = np.concatenate([np.asarray(p).reshape(-1, 2) for p in ann["segmentation"]])
        x, y, w, h = ann["bbox"]
        # Contours run through pixel centres, the box spans whole pixels: up to 1 px apart.
        assert abs(points[:, 0].min() - x) <= 1.5
        assert abs(points[:, 1].min() - y) <= 1.5
        assert abs(points[:, 0].max() - (x + w)) <= 1.5
        assert abs(points[:, 1].max() - (y + h)) <= 1.5


def test_polygon_area_agrees_with_area(dataset: tuple[Path, dict[str, Any]]) -> None:
    _, coco = dataset
    images = {img["id"]: img for img in coco["images"]}
    for ann in coco["annotations"]:
        img = images[ann["image_id"]]
        filled = int(_mask(ann, img["height"], img["width"]).sum())
        # Outer contours only (COCO polygons have no holes), so filling may cover a little more.
        assert 0.9 * ann["area"] <= filled <= 1.3 * ann["area"] + 20


def test_pandas_are_black_and_white(dataset: tuple[Path, dict[str, Any]]) -> None:
    path, coco = dataset
    images = {img["id"]: img for img in coco["images"]}
    shares: dict[int, list[float]] = {1: [], 2: [], 3: []}
    for ann in coco["annotations"]:
        img = images[ann["image_id"]]
        hsv = cv2.cvtColor(_image(path.parent, img["file_name"]), cv2.COLOR_RGB2HSV)
        inside = _mask(ann, img["height"], img["width"])
        shares[ann["category_id"]].append(float(np.mean(hsv[..., 1][inside] < 64)))
    assert shares[1] and (shares[2] or shares[3]), "the sample should hold pandas and other animals"
    assert np.mean(shares[1]) > 0.8 and min(shares[1]) > 0.5
    others = shares[2] + shares[3]
    assert np.mean(others) < 0.3


def test_refuses_a_foreign_non_empty_folder(tmp_path: Path) -> None:
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not empty"):
        generate_demo_dataset(target, n_images=1)
    assert sorted(p.name for p in target.iterdir()) == ["notes.txt"]
    assert (target / "notes.txt").read_text() == "keep me"


def test_refuses_a_foreign_coco_dataset(tmp_path: Path) -> None:
    target = tmp_path / "real"
    target.mkdir()
    foreign = '{"images": [], "annotations": [], "categories": []}'
    (target / "annotations.json").write_text(foreign)
    with pytest.raises(UserError):
        generate_demo_dataset(target, n_images=1)
    assert (target / "annotations.json").read_text() == foreign


def test_refuses_a_file_as_output(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(UserError):
        generate_demo_dataset(target, n_images=1)


def test_overwrites_an_earlier_demo_dataset(tmp_path: Path) -> None:
    target = tmp_path / "demo"
    generate_demo_dataset(target, n_images=4, seed=1, width=160, height=120)
    path = generate_demo_dataset(target, n_images=2, seed=2, width=160, height=120)
    coco = json.loads(path.read_text())
    assert len(coco["images"]) == 2
    # Images of the larger earlier run are removed, not left behind unannotated.
    assert sorted(p.name for p in (target / "images").iterdir()) == ["000001.jpg", "000002.jpg"]
    assert sorted(p.name for p in target.iterdir()) == ["annotations.json", "clean.json", "errors.json", "images"]


def test_creates_missing_parents(tmp_path: Path) -> None:
    path = generate_demo_dataset(tmp_path / "a" / "b", n_images=1, width=128, height=96)
    assert path == tmp_path / "a" / "b" / "annotations.json"
    assert path.is_file()


@pytest.mark.parametrize(
    "kwargs",
    [{"n_images": 0}, {"seed": -1}, {"width": 10}, {"workers": 0}, {"error_rate": 1.0}, {"error_rate": -0.1}],
)
def test_rejects_bad_arguments(tmp_path: Path, kwargs: dict[str, float]) -> None:
    with pytest.raises(UserError):
        generate_demo_dataset(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_a_set_larger_than_the_free_space_is_refused_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent.cli.main import main

    out = tmp_path / "demo"
    assert main(["demo-data", str(out), "--images", str(10**12)]) == 2
    error = capsys.readouterr().err
    assert f"{10**12} demo images need about 65536000.0 GB" in error and "GB free" in error, error
    assert not out.exists()


def test_ctrl_c_while_the_render_processes_start_prints_no_traceback(tmp_path: Path) -> None:
    # A render process ignores SIGINT once its initializer runs, after it has imported the command's main
    # module (a second, in "spawn"); a Ctrl-C before that printed its traceback under "interrupted".
    command = [sys.executable, "-m", "agent.cli", "demo-data", str(tmp_path / "demo"), "--images", "400"]
    returncode, stdout, stderr = ctrl_c_once_a_child_starts(command, b"multiprocessing.spawn")
    assert returncode == 130, stderr
    assert "interrupted" in stderr
    assert "Traceback" not in stdout + stderr


def test_render_processes_leave_ctrl_c_to_the_parent() -> None:
    # Ctrl-C reaches every process of the group; a render process that took it printed its traceback.
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1, initializer=demo_data._init_worker) as pool:
        assert pool.apply(signal.getsignal, (signal.SIGINT,)) == signal.SIG_IGN


def _files(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def _images_written(folder: Path) -> int:
    return len(list((folder / "images").glob("*.jpg"))) if (folder / "images").is_dir() else 0


def test_a_killed_render_process_costs_time_not_the_dataset(tmp_path: Path) -> None:
    # multiprocessing.Pool lost a killed process's images and waited for them forever. Now the images not yet
    # returned are rendered in this process: the same files, byte for byte, as rendered in one process.
    images = 600
    out = tmp_path / "killed"
    outcome: list[object] = []
    worker = threading.Thread(
        target=lambda: outcome.append(generate_demo_dataset(out, n_images=images, workers=2)), daemon=True
    )
    worker.start()
    deadline = time.monotonic() + 60
    while _images_written(out) < 30 and time.monotonic() < deadline:
        time.sleep(0.01)
    render_process = child_of(os.getpid(), b"multiprocessing.spawn")
    assert render_process is not None and _images_written(out) < images, "killed before the rendering ended"
    os.kill(render_process, signal.SIGKILL)
    worker.join(timeout=120)
    assert not worker.is_alive(), "demo-data waited forever for the killed process's images"
    assert outcome == [out / "annotations.json"]
    reference = generate_demo_dataset(tmp_path / "one", n_images=images, workers=1).parent
    assert _files(out) == _files(reference)


def test_ctrl_c_while_rendering_stops_every_render_process(tmp_path: Path) -> None:
    # The render processes ignore SIGINT, so the parent must stop them: left to finish the chunks they held,
    # they wrote hundreds more images (a chunk is 2000 / 16 = 125 here) before the command could end.
    out = tmp_path / "demo"
    command = [sys.executable, "-m", "agent.cli", "demo-data", str(out), "--images", "2000"]
    process = start_as_from_a_terminal(command, own_group=True)
    deadline = time.monotonic() + 60
    while _images_written(out) < 30 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGINT)
    at_ctrl_c = _images_written(out)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130 and "interrupted" in stderr, stderr
    assert "Traceback" not in stderr, stderr
    at_exit = _images_written(out)
    time.sleep(1)
    assert at_exit - at_ctrl_c < 40, f"{at_exit - at_ctrl_c} images written after the Ctrl-C"
    assert _images_written(out) == at_exit, "a render process went on writing after the command ended"
