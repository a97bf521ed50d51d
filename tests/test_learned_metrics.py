"""Learned feature metrics (COMBINE = "learned"): the contract, the cross-fitting's honesty, and runs in the sandbox."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import pytest

from agent.data.coco import Dataset, coco_from_document, load_coco
from agent.data.demo import generate_demo_dataset
from agent.data.inject import Injector
from agent.data.label_errors import load_errors
from agent.evaluation.ranking import evaluate, ground_truth, scores_from_rows
from agent.metrics import learned, scoring
from agent.metrics.contract import (
    LEARNABLE_ERRORS,
    MetricFileError,
    MetricSpec,
    file_metrics,
    list_builtin_metrics,
    load_metric_file,
    load_metric_files,
    parse_metric_source,
)
from agent.metrics.learned import (
    CLASS_CODES,
    TrainingCopy,
    cross_fitted_scores,
    cross_fitted_scores_each,
    fold_of,
)
from agent.metrics.scoring import _class_codes, score_dataset
from sandbox.isolation import SandboxConfig

# A cheap learned metric for the sandbox runs: the box's geometry, and its overlap with the others.
GEOMETRY_METRIC = '''"""Box geometry for a learned detector, in the tests."""

import math

NAME = "test_learned"
LEVEL = "object"
SUSPICIOUS = "high"
OUTPUT = "features"
COMBINE = "learned"
ERRORS = ERRORS_HERE


def score(image, obj, scene):
    x, y, w, h = (float(v) for v in obj["bbox"])
    best = 0.0
    for other in scene["annotations"]:
        if other["id"] == obj["id"]:
            continue
        ox, oy, ow, oh = (float(v) for v in other["bbox"])
        ix = max(0.0, min(x + w, ox + ow) - max(x, ox))
        iy = max(0.0, min(y + h, oy + oh) - max(y, oy))
        union = w * h + ow * oh - ix * iy
        best = max(best, ix * iy / union if union > 0 else 0.0)
    return [math.log(max(w, 1.0)), math.log(max(h, 1.0)), w / max(h, 1.0), best, len(scene["annotations"])]
'''


def _geometry_metric(errors: list[str]) -> str:
    return GEOMETRY_METRIC.replace("ERRORS_HERE", json.dumps(errors))


# --- the contract ------------------------------------------------------------------------------


def test_the_builtin_file_declares_one_metric_per_error_type() -> None:
    family = load_metric_files("builtin:learned")
    assert [spec.name for spec in family] == [f"learned_{error}" for error in LEARNABLE_ERRORS]
    assert [spec.learns for spec in family] == [(error,) for error in LEARNABLE_ERRORS]
    assert {spec.code_sha256 for spec in family} == {load_metric_file("builtin:learned_shift").code_sha256}
    assert {spec.name for spec in family} <= {spec.name for spec in list_builtin_metrics()}
    assert load_metric_file("builtin:learned_tight").learns == ("tight",)
    with pytest.raises(MetricFileError, match=r"declares 6 metrics \(learned_swap, .*\); name one of them"):
        load_metric_file("builtin:learned")
    with pytest.raises(MetricFileError, match="unknown builtin metric 'learned_drop'"):
        load_metric_file("builtin:learned_drop")


def test_a_learned_file_without_errors_is_one_metric_learning_every_type() -> None:
    source = _geometry_metric(["shift"]).replace('ERRORS = ["shift"]\n', "")
    spec = parse_metric_source(source)
    assert (spec.name, spec.combine, spec.learns, spec.family) == ("test_learned", "learned", LEARNABLE_ERRORS, None)
    assert file_metrics(spec) == [spec]
    one = parse_metric_source(_geometry_metric(["loose"]))
    assert file_metrics(one) == [one] and one.learns == ("loose",), "one type: the file's own NAME"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('OUTPUT = "features"\n', ""), "COMBINE applies only to OUTPUT = 'features'"),
        (('COMBINE = "learned"', 'COMBINE = "neighbours"'), "ERRORS applies only to COMBINE = 'learned'"),
        (('COMBINE = "learned"', 'COMBINE = "boosted"'), "COMBINE must be 'neighbours' or 'learned'"),
        (('ERRORS = ["shift"]', 'ERRORS = ["drop"]'), "ERRORS must be a list of distinct error types"),
        (('ERRORS = ["shift"]', 'ERRORS = ["shift", "shift"]'), "ERRORS must be a list of distinct error types"),
        (('ERRORS = ["shift"]', "ERRORS = []"), "ERRORS must be a list of distinct error types"),
        (('ERRORS = ["shift"]', 'ERRORS = ["shift"]\nNEIGHBOURS = 5'), "NEIGHBOURS applies only to COMBINE"),
    ],
)
def test_the_contract_refuses_what_does_not_fit(change: tuple[str, str], message: str) -> None:
    source = _geometry_metric(["shift"]).replace(*change)
    with pytest.raises(MetricFileError, match=message):
        parse_metric_source(source)


# --- cross-fitting, on plain arrays -------------------------------------------------------------


def _synthetic(seed: int = 0) -> tuple[np.ndarray, list[int], np.ndarray, list[int], dict[int, int]]:
    """40 images of 10 clean boxes; 3 corrupted boxes per image, shifted along the first feature."""
    rng = np.random.default_rng(seed)
    clean_images = [image for image in range(1, 41) for _ in range(10)]
    clean = np.column_stack([rng.normal(0, 1, (400, 3)), np.zeros(400)])
    corrupted_images = [image for image in range(1, 41) for _ in range(3)]
    shifted = rng.normal(0, 1, (120, 3)) + np.asarray([2.5, 0.0, 0.0])
    corrupted = np.column_stack([shifted, np.zeros(120)])
    return clean, clean_images, corrupted, corrupted_images, fold_of(range(1, 41))


def test_folds_depend_on_the_ids_alone_and_are_even() -> None:
    folds = fold_of(range(1, 41))
    assert sorted(np.bincount(list(folds.values())).tolist()) == [8] * 5
    assert fold_of(reversed(range(1, 41))) == folds, "the order given does not matter"
    assert {i: folds[i] for i in range(1, 21)} != {i: i % 5 for i in range(1, 21)}, "not the ids' own order"
    assert set(fold_of([7, 9]).values()) == {0, 1}, "two images: two folds"


def test_the_classifier_finds_what_the_corruptions_share() -> None:
    clean, clean_images, corrupted, corrupted_images, folds = _synthetic()
    clean[:20, 0] += 2.5  # 20 real boxes that look like the corrupted ones
    scores = np.asarray(cross_fitted_scores(clean, clean_images, corrupted, corrupted_images, folds), dtype=float)
    assert scores[:20].mean() > 3 * scores[20:].mean()


def test_a_box_score_does_not_change_when_the_corruptions_drawn_from_its_own_image_change() -> None:
    clean, clean_images, corrupted, corrupted_images, folds = _synthetic()
    before = cross_fitted_scores(clean, clean_images, corrupted, corrupted_images, folds)
    image = 7
    own = [k for k, i in enumerate(corrupted_images) if i == image]
    changed = corrupted.copy()
    changed[own, :3] = np.random.default_rng(1).normal(-3, 1, (len(own), 3))  # other corruptions, elsewhere
    after = cross_fitted_scores(clean, clean_images, changed, corrupted_images, folds)
    rows = [k for k, i in enumerate(clean_images) if i == image]
    assert [before[k] for k in rows] == [after[k] for k in rows]
    others = [k for k, i in enumerate(clean_images) if folds[i] != folds[image]]
    assert any(before[k] != after[k] for k in others), "the change must reach the models that trained on it"
    # And without any corruption from its image at all.
    kept = [k for k, i in enumerate(corrupted_images) if i != image]
    dropped = cross_fitted_scores(clean, clean_images, corrupted[kept], [corrupted_images[k] for k in kept], folds)
    assert [before[k] for k in rows] == [dropped[k] for k in rows]


def test_a_box_score_does_not_depend_on_its_own_image_boxes() -> None:
    clean, clean_images, corrupted, corrupted_images, folds = _synthetic()
    before = cross_fitted_scores(clean, clean_images, corrupted, corrupted_images, folds)
    image = 12
    rows = [k for k, i in enumerate(clean_images) if i == image]
    changed = clean.copy()
    changed[rows[1:], :3] += 2.5  # the image's other boxes now look corrupted
    after = cross_fitted_scores(changed, clean_images, corrupted, corrupted_images, folds)
    assert before[rows[0]] == after[rows[0]]


def test_with_negatives_capped_a_box_score_still_ignores_its_own_image(monkeypatch: pytest.MonkeyPatch) -> None:
    clean, clean_images, corrupted, corrupted_images, folds = _synthetic()
    full = cross_fitted_scores(clean, clean_images, corrupted, corrupted_images, folds)
    monkeypatch.setattr(learned, "MAX_NEGATIVES", 100)  # each fold has 320 clean rows outside it
    before = cross_fitted_scores(clean, clean_images, corrupted, corrupted_images, folds)
    assert before != full, "the models must have learned from fewer negatives"
    assert before == cross_fitted_scores(clean, clean_images, corrupted, corrupted_images, folds), "drawn the same"
    image = 12
    rows = [k for k, i in enumerate(clean_images) if i == image]
    changed = clean.copy()
    changed[rows, :3] += 2.5  # the image's own boxes, and which negatives could be drawn from it, change
    own = [k for k, i in enumerate(corrupted_images) if i == image]
    changed_corrupted = corrupted.copy()
    changed_corrupted[own, :3] -= 3.0
    after = cross_fitted_scores(clean, clean_images, changed_corrupted, corrupted_images, folds)
    assert [before[k] for k in rows] == [after[k] for k in rows]
    others = [k for k, i in enumerate(clean_images) if folds[i] == folds[image] and i != image]
    moved = cross_fitted_scores(changed, clean_images, corrupted, corrupted_images, folds)
    assert [before[k] for k in others] == [moved[k] for k in others], "its fold's models never drew its boxes"


@pytest.mark.parametrize("where", ["processes", "threads"])
def test_fits_side_by_side_give_the_scores_of_fits_one_after_another(
    monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    for name in ("_starting", "_processes"):
        monkeypatch.setattr(learned, name, None)
    if where == "processes":
        learned.prepare_fits_in_background(3)
        assert learned._fitting_pool() is not None, "this machine starts no fitting processes"
    clean, clean_images, corrupted, corrupted_images, folds = _synthetic()
    problems = []
    for seed in range(3):  # three error types: other corruptions against the same real boxes
        rng = np.random.default_rng(seed + 10)
        moved = corrupted.copy()
        moved[:, seed % 3] += rng.normal(0.0, 1.0, len(moved))
        problems.append((moved, corrupted_images))
    alone = [cross_fitted_scores(clean, clean_images, rows, images, folds) for rows, images in problems]
    each = cross_fitted_scores_each(clean, clean_images, [*problems, None], folds, threads=3)
    assert each[:-1] == alone, "fitting side by side changed a score"
    assert each[-1] == [None] * len(clean), "nothing corrupted to learn from: no scores"
    assert len({tuple(scores) for scores in alone}) == 3, "three different problems, three different rankings"
    if where == "processes":
        learned._fitting_pool().shutdown()  # type: ignore[union-attr]


def test_a_fitting_process_killed_leaves_its_fits_to_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("_starting", "_processes"):
        monkeypatch.setattr(learned, name, None)
    learned.prepare_fits_in_background(2)
    pool = learned._fitting_pool()
    assert pool is not None
    os.kill(pool.submit(os.getpid).result(), signal.SIGKILL)
    with pytest.raises(BrokenProcessPool):  # once the pool has seen the death (within milliseconds)
        for _ in range(100):
            pool.submit(os.getpid).result()
            time.sleep(0.05)
    clean, clean_images, corrupted, corrupted_images, folds = _synthetic()
    problems = [(corrupted, corrupted_images), (corrupted[::-1].copy(), corrupted_images[::-1])]
    each = cross_fitted_scores_each(clean, clean_images, problems, folds, threads=2)
    assert each == [cross_fitted_scores(clean, clean_images, rows, images, folds) for rows, images in problems]
    assert learned._fitting_pool() is None, "a broken pool is not used again"


def _running(pid: int) -> bool:
    """Whether process `pid` exists and has not ended (a zombie waits only for its parent to read its status)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_fitting_processes_end_with_a_host_that_left_without_stopping_them(tmp_path: Path) -> None:
    # Each fitting process holds both ends of the pool's queues, so a host that left without telling it
    # to stop (a Ctrl-C while the pool starts can do that) left it waiting for work forever, holding
    # whatever the host's terminal was. They die with their fork server, which ends with the host.
    script = tmp_path / "host.py"
    script.write_text(
        "import os, sys\n"
        "from agent.metrics import learned\n"
        "if __name__ == '__main__':\n"
        "    learned.prepare_fits_in_background(2)\n"
        "    pool = learned._fitting_pool()\n"
        "    print(*pool._processes, flush=True)\n"
        "    os._exit(0)  # no shutdown: the processes are left as they are\n"
    )
    printed = tmp_path / "printed.txt"
    with printed.open("w") as output:  # a file, not a pipe: a process left running must not hold the test up
        host = subprocess.run(
            [sys.executable, str(script)], stdout=output, stderr=subprocess.STDOUT, timeout=120,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        )  # fmt: skip
    assert host.returncode == 0, printed.read_text()
    pids = [int(pid) for pid in printed.read_text().split()]
    assert len(pids) == 2, printed.read_text()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_running(pid) for pid in pids):
        time.sleep(0.05)
    alive = [pid for pid in pids if _running(pid)]
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    assert alive == [], "fitting processes outlived their host"


def test_too_little_to_train_on_leaves_the_scores_none() -> None:
    clean, clean_images, corrupted, corrupted_images, _ = _synthetic()
    one_fold = dict.fromkeys(range(1, 41), 0)
    assert set(cross_fitted_scores(clean, clean_images, corrupted, corrupted_images, one_fold)) == {None}
    few = cross_fitted_scores(clean, clean_images, corrupted[:5], corrupted_images[:5], fold_of(range(1, 41)))
    assert set(few) == {None}


# --- through the sandbox --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_demo_dataset(tmp_path_factory.mktemp("learned") / "demo", n_images=40, seed=11)


def _spec(tmp_path: Path, errors: list[str]) -> list[MetricSpec]:
    path = tmp_path / "test_learned.py"
    path.write_text(_geometry_metric(errors), encoding="utf-8")
    return load_metric_files(str(path))


def test_scores_in_the_sandbox_do_not_change_when_the_corruptions_of_their_image_change(
    demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset = load_coco(demo)
    specs = _spec(tmp_path, ["duplicate"])
    config = SandboxConfig(workers=2)
    before = {row.annotation_id: row.score for row in score_dataset(dataset, specs, config).rows}
    image = dataset.images[5].id
    real_copies = learned.training_copies

    def without_image(dataset: Dataset, errors: Sequence[str]) -> list[TrainingCopy]:
        copies = real_copies(dataset, errors)
        return [
            dataclasses.replace(
                copy, corrupted=frozenset(a for a in copy.corrupted if _image_of(copy.dataset, a) != image)
            )
            for copy in copies
        ]

    monkeypatch.setattr(scoring, "training_copies", without_image)
    after = {row.annotation_id: row.score for row in score_dataset(dataset, specs, config).rows}
    own = dataset.annotation_ids(image)
    assert own and all(before[a] is not None for a in own)
    assert [before[a] for a in own] == [after[a] for a in own]
    assert any(before[a] != after[a] for a in before if a not in own), "the other folds' models did change"


def test_training_copies_made_late_give_the_same_scores(
    demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The copies are made on a thread while the workers start; images the engine takes before they are ready
    # send their training tasks later, and the classifiers see the corrupted boxes in the tasks' order whatever
    # order they came back in: copies that take long to make change the timing, not the scores.
    dataset = load_coco(demo)
    specs = _spec(tmp_path, ["shift", "duplicate"])
    config = SandboxConfig(workers=2)
    prompt = [(row.metric, row.annotation_id, row.score) for row in score_dataset(dataset, specs, config).rows]
    real_copies = learned.training_copies
    late: list[int] = []

    def slow(dataset: Dataset, errors: Sequence[str]) -> list[TrainingCopy]:
        time.sleep(1.5)
        late.append(1)
        return real_copies(dataset, errors)

    monkeypatch.setattr(scoring, "training_copies", slow)
    training = scoring._Training(dataset, specs, scoring._Codes.of(specs), 1)
    tasks = list(
        scoring._with_training(dataset, scoring.build_tasks(dataset, specs), training, scoring.image_paths(dataset))
    )
    own = [task.image_id for task in tasks if task.image_id >= 0]
    first_training = next(index for index, task in enumerate(tasks) if task.image_id < 0)
    assert own == [image.id for image in dataset.images] and first_training == len(own), "all waited for the copies"
    delayed = [(row.metric, row.annotation_id, row.score) for row in score_dataset(dataset, specs, config).rows]
    assert late == [1, 1] and delayed == prompt
    assert sum(score is not None for _, _, score in prompt) > len(prompt) // 2


def test_a_failure_making_the_training_copies_reaches_the_run(
    demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(dataset: Dataset, errors: Sequence[str]) -> list[TrainingCopy]:
        raise ValueError("no copies today")

    monkeypatch.setattr(scoring, "training_copies", broken)
    dataset = load_coco(demo)
    specs = _spec(tmp_path, ["shift"])
    training = scoring._Training(dataset, specs, scoring._Codes.of(specs), 1)
    with pytest.raises(ValueError, match="no copies today"):
        list(
            scoring._with_training(dataset, scoring.build_tasks(dataset, specs), training, scoring.image_paths(dataset))
        )


def _image_of(dataset: Dataset, annotation_id: int) -> int:
    return next(a.image_id for a in dataset.annotations if a.id == annotation_id)


def test_a_training_copy_shows_each_image_it_corrupted_as_the_injected_document_does(demo: Path) -> None:
    dataset = load_coco(demo)
    copies = learned.training_copies(dataset, ["shift", "spurious"])
    corruptible = sum(not a.iscrowd for a in dataset.annotations)
    rate = min(learned.MAX_RATE, learned.POSITIVES_WANTED / corruptible)
    injector = Injector(learned._document(dataset))
    per_type = len(copies) // 2
    for index, copy in enumerate(copies):
        error, seed = ("shift", "spurious")[index // per_type], index % per_type
        injection = injector.inject(rate=rate, seed=seed, types=[error], stream=f"{learned.STREAM}:{error}")
        plain = coco_from_document(injection.document, demo)  # every box read anew, the straightforward way
        assert copy.error == error and copy.images
        assert copy.images == {r.image_id for r in injection.errors.errors}
        for image_id in copy.images:
            assert copy.dataset.scene(image_id) == plain.scene(image_id)
        assert {a.image_id for a in copy.dataset.annotations} == set(copy.images), "only the images it corrupted"


def test_one_metric_per_type_and_a_single_class_dataset_gets_no_swap_scores(demo: Path, tmp_path: Path) -> None:
    document = json.loads(demo.read_text())
    document["annotations"] = [{**a, "category_id": 1} for a in document["annotations"]]
    single = coco_from_document(document, demo)
    specs = _spec(tmp_path, ["swap", "duplicate"])
    assert [spec.name for spec in specs] == ["test_learned_swap", "test_learned_duplicate"]
    outcome = score_dataset(single, specs, SandboxConfig(workers=2))
    by_metric = {s.name: s for s in outcome.summaries}
    assert by_metric["test_learned_swap"].scored == 0
    assert by_metric["test_learned_swap"].not_applicable == len(single.annotations)
    assert by_metric["test_learned_duplicate"].scored == len(single.annotations)
    assert outcome.failed == 0
    # The n/a column alone would leave the user guessing why: the summary says it.
    assert by_metric["test_learned_swap"].note is not None and "single-class" in by_metric["test_learned_swap"].note
    assert by_metric["test_learned_duplicate"].note is None


def test_a_dataset_of_more_classes_than_the_classifier_has_bins_is_scored(demo: Path, tmp_path: Path) -> None:
    # COCO's 80 classes: HistGradientBoosting refused the class feature (more categories than its 63 bins), and
    # the whole run ended in an internal error, its scores unwritten.
    document = json.loads(demo.read_text())
    document["categories"] = [{"id": c, "name": f"class{c}"} for c in range(1, 81)]
    document["annotations"] = [{**a, "category_id": 1 + i % 80} for i, a in enumerate(document["annotations"])]
    many = coco_from_document(document, demo)
    codes = _class_codes(many)
    assert max(codes.values()) == CLASS_CODES - 1 < len(codes) - 1  # the rarest share the last code
    outcome = score_dataset(many, _spec(tmp_path, ["swap"]), SandboxConfig(workers=2))
    assert outcome.failed == 0
    assert outcome.summaries[0].scored > 0.9 * len(many.annotations)


def test_the_builtin_detectors_find_their_type_on_the_demo(demo: Path) -> None:
    dataset = load_coco(demo)
    specs = load_metric_files("builtin:learned")
    outcome = score_dataset(dataset, specs, SandboxConfig(workers=2))
    assert outcome.failed == 0
    errors = load_errors(demo.parent / "errors.json")
    scores = scores_from_rows(outcome.rows, {spec.name: "high" for spec in specs})
    report = evaluate(ground_truth(dataset, errors.errors), scores)
    rows = {row.metric: row for row in report.metrics}
    chance = rows["random"].ap_by_type
    for error in ("spurious", "loose", "tight", "duplicate"):
        found, random = rows[f"learned_{error}"].ap_by_type[error], chance[error]
        assert found is not None and random is not None and found > 3 * random, (error, found, random)


@pytest.mark.parametrize("processes", [1, 2])
def test_the_fits_are_prepared_on_one_thread_however_many_trainings_start_them(
    monkeypatch: pytest.MonkeyPatch, processes: int
) -> None:
    import threading

    started: list[threading.Thread] = []

    class Counted(threading.Thread):
        def start(self) -> None:
            started.append(self)
            super().start()

    for name in ("_importing", "_starting", "_processes"):
        monkeypatch.setattr(learned, name, None)
    monkeypatch.setattr(learned.threading, "Thread", Counted)
    for _ in range(3):  # selftest starts a training per copy
        learned.prepare_fits_in_background(processes)
    assert len(started) == 1
    assert started[0].name == ("import-scikit-learn" if processes == 1 else "fitting-processes")
    started[0].join(timeout=60)
    pool = learned._fitting_pool()
    if processes == 1:
        assert pool is None, "one worker: the fits run in this process"
    else:
        assert pool is not None, "two workers: the fits run in processes of their own"
        pids = {future.result() for future in [pool.submit(os.getpid) for _ in range(8)]}
        assert os.getpid() not in pids
        pool.shutdown()
