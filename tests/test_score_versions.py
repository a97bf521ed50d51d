"""Scoring several versions of one dataset, each distinct call once, gives what scoring each alone gives.

`selftest` scores K noisy copies of the user's data. A metric that provably reads only its own box
(`agent.metrics.inputs`) is called once for a box all copies share; everything else is called per
scene. These tests hold the result to `score_dataset` on each copy, row for row, and hold the
static reading to what a metric can really see.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.data.coco import coco_from_document, read_coco_json
from agent.data.demo import generate_demo_dataset
from agent.data.inject import inject_errors
from agent.metrics.contract import list_builtin_metrics, load_metric_file
from agent.metrics.inputs import EVERYTHING, MetricInputs, metric_inputs
from agent.metrics.scoring import score_dataset, score_versions
from sandbox.engine import CallResult, ScoringEngine
from sandbox.isolation import SandboxConfig
from sandbox.protocol import Call, ImageTask, MetricCode

HEAD = '"""A probe."""\nNAME = "probe"\nLEVEL = "object"\nSUSPICIOUS = "high"\n'


def _object_metric(body: str, head: str = "") -> str:
    return f"{HEAD}{head}\ndef score(image, obj, scene):\n" + "".join(f"    {line}\n" for line in body.splitlines())


@pytest.mark.parametrize(
    ("body", "keys"),
    [
        ('return float(obj["bbox"][2])', {"bbox"}),
        ('return 1.0 if obj.get("category", "") == "panda" else float(obj["bbox"][0])', {"bbox", "category"}),
        ("return float(image.mean())", set()),
    ],
)
def test_an_object_metric_that_reads_only_named_keys_is_known_to(body: str, keys: set[str]) -> None:
    assert metric_inputs(_object_metric(body), "object") == MetricInputs(scene=False, obj_keys=frozenset(keys))


@pytest.mark.parametrize(
    ("body", "head"),
    [
        ('return float(len(scene["annotations"]))', ""),  # reads the scene
        ("return _width(obj)", "def _width(o):\n    return float(o['bbox'][2])\n"),  # obj goes to a helper
        ("return float(len(list(obj.values())))", ""),  # reads every value, the id among them
        ("return float(sum(len(k) for k in obj))", ""),  # iterates the object
        ('obj["bbox"] = [0, 0, 1, 1]\nreturn 1.0', ""),  # writes to it
        ("key = 'id'\nreturn float(obj[key])", ""),  # a key that is not a constant
        ("return float(len(locals()))", ""),  # reaches the frame's locals, scene among them
        ("return float(len(sys._getframe().f_locals))", "import sys\n"),
        ('obj = scene["annotations"][0]\nreturn float(obj["bbox"][0])', ""),
    ],
)
def test_anything_the_reading_cannot_follow_counts_as_reading_everything(body: str, head: str) -> None:
    assert metric_inputs(_object_metric(body, head), "object") == EVERYTHING


def test_a_score_bound_twice_counts_as_reading_everything() -> None:
    source = _object_metric('return float(obj["bbox"][2])') + "\ndef _other(image, obj, scene):\n    return 0.0\n"
    assert metric_inputs(source + "score = _other\n", "object") == EVERYTHING
    assert metric_inputs(source, "object").obj_keys == {"bbox"}


def test_image_metrics_that_never_name_the_scene_depend_on_the_pixels_alone() -> None:
    source = '"""A probe."""\nNAME = "p"\nLEVEL = "image"\nSUSPICIOUS = "high"\n'
    assert metric_inputs(source + "def score(image, scene):\n    return float(image.std())\n", "image").scene is False
    counting = source + 'def score(image, scene):\n    return float(len(scene["annotations"]))\n'
    assert metric_inputs(counting, "image") == EVERYTHING


def test_the_built_ins_that_look_at_one_box_are_recognised() -> None:
    inputs = {spec.name: metric_inputs(spec.source, spec.level) for spec in list_builtin_metrics()}
    assert inputs["box_tightness"].obj_keys == {"bbox"} and not inputs["box_tightness"].scene
    assert inputs["black_white_share"].obj_keys == {"bbox", "category"}
    assert inputs["sharpness"].scene is False
    # These compare a box with the others of its image, so they see the scene, ids and all.
    assert inputs["object_proximity"] == EVERYTHING and inputs["object_count"] == EVERYTHING


# Probes whose scores change with exactly what the reuse must respect: the id, the list position,
# the scene, the number format. If any reused call were wrong, its rows would differ.
PROBES = {
    "id_probe.py": 'return float(obj["id"])',
    "position_probe.py": 'return float([o["id"] for o in scene["annotations"]].index(obj["id"]))',
    "format_probe.py": 'return float(sum(type(v) is float for v in obj["bbox"]))',
    "helper_probe.py": "return _area(obj)",
    "class_probe.py": 'return float(sum(map(ord, obj["category"]))) * 1000 + float(obj["bbox"][0])',
}


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> tuple[list, list]:
    folder = tmp_path_factory.mktemp("versions")
    annotations = generate_demo_dataset(folder / "demo", n_images=14, seed=4)
    document = read_coco_json(annotations.parent / "clean.json")
    datasets = [
        coco_from_document(inject_errors(document, rate=0.3, seed=seed).document, annotations) for seed in range(3)
    ]
    specs = list(list_builtin_metrics())
    for name, body in PROBES.items():
        head = "def _area(o):\n    return float(o['bbox'][2] * o['bbox'][3])\n"
        source = _object_metric(body, head).replace('NAME = "probe"', f'NAME = "{name[:-3]}"')
        (folder / name).write_text(source, encoding="utf-8")
        specs.append(load_metric_file(str(folder / name)))
    return datasets, specs


def test_each_version_gets_the_rows_scoring_it_alone_would_give(versions: tuple[list, list]) -> None:
    datasets, specs = versions
    config = SandboxConfig(workers=2)
    together = score_versions(datasets, specs, config)
    for dataset, outcome in zip(datasets, together.outcomes, strict=True):
        alone = score_dataset(dataset, specs, config)
        assert [row.as_dict() for row in outcome.rows] == [row.as_dict() for row in alone.rows]
        assert outcome.expected_rows == alone.expected_rows == len(outcome.rows)
        assert all(summary.failed == 0 for summary in outcome.summaries), "every call should score"
        assert [(s.name, s.scored, s.failed) for s in outcome.summaries] == [
            (s.name, s.scored, s.failed) for s in alone.summaries
        ]
    # A learned file's metrics (one per error type) share one call per box: calls are counted per distinct code.
    codes = {(spec.code_sha256, spec.level) for spec in specs}
    per_image, per_box = (sum(level == wanted for _, level in codes) for wanted in ("image", "object"))
    assert len(codes) < len(specs)
    assert together.calls_needed == sum(len(d.images) * per_image + len(d.annotations) * per_box for d in datasets)
    # The box metrics and the pixel-only image metrics share most calls; nothing else does.
    assert together.calls_run < 0.8 * together.calls_needed


def test_the_versions_must_share_their_images(versions: tuple[list, list], tmp_path: Path) -> None:
    datasets, specs = versions
    document = json.loads(datasets[0].annotations_path.read_text())
    document["images"] = document["images"][:-1]
    document["annotations"] = [
        a for a in document["annotations"] if a["image_id"] in {i["id"] for i in document["images"]}
    ]
    fewer = coco_from_document(document, datasets[0].annotations_path, datasets[0].image_root)
    with pytest.raises(ValueError, match="the same images"):
        score_versions([datasets[0], fewer], specs[:1], SandboxConfig(workers=1))


def test_consecutive_tasks_on_one_image_share_its_decode_but_not_its_size_check(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    cv2.imwrite(str(path), np.full((6, 8, 3), 200, dtype=np.uint8))
    source = '"""Width."""\nNAME = "w"\nLEVEL = "image"\nSUSPICIOUS = "high"\n'
    source += "def score(image, scene):\n    return float(image.shape[1])\n"
    metric = MetricCode(name="w", level="image", source=source, filename="w.py")
    scenes = [{"image": {"id": 1, "file_name": "a.png", "width": w, "height": 6}, "annotations": []} for w in (8, 9, 8)]
    tasks = [
        ImageTask(image_id=n, path=str(path), scene=scene, calls=(Call(0, None),)) for n, scene in enumerate(scenes)
    ]
    results: list[CallResult] = []
    ScoringEngine(SandboxConfig(workers=1, read_only_paths=(str(tmp_path),))).run([metric], tasks, results.extend)
    by_task = {result.image_id: result for result in results}
    assert by_task[0].score == by_task[2].score == 8.0
    assert by_task[1].kind == "image_unreadable" and "the annotations say 9x6" in (by_task[1].error or "")
