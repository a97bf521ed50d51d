"""Learned feature metrics' scores: a classifier trained on errors injected into the dataset being scored.

A metric with `OUTPUT = "features"` and `COMBINE = "learned"` returns a vector per box. Its score for
a box is the probability that a classifier trained to tell corrupted boxes from the dataset's own
gives that box. The training data comes from the dataset itself, so the metric needs no labels:

1. `training_copies`: for each error type the metric learns, copies of the dataset with that type
   injected by `agent.data.inject` in a random stream of its own (`STREAM`), never the one that
   `inject` and `selftest` draw from. About `POSITIVES_WANTED` corrupted boxes per type: at most
   `MAX_RATE` of the boxes per copy, in up to `MAX_COPIES` copies.
2. The metric describes the corrupted boxes of those copies (the positives), in their copy's scene,
   and every box of the dataset (the negatives, and the boxes to score).
3. `cross_fitted_scores`: the images are dealt into folds (`FOLDS`, by a hash of the image id, so
   the folds depend on nothing but the ids), and each fold's boxes are scored by a model trained on
   the other folds' positives and negatives only (at most `MAX_NEGATIVES` of those, drawn at random).
   No box is scored by a model that saw its image, its own vector or any corruption drawn from its
   image; the tests prove it by changing those and finding the score unchanged.

The classifier is scikit-learn's HistGradientBoostingClassifier, with the box's class as one
categorical feature beside the vector (a swapped box looks unlike its class, not unlike boxes in
general). Each fit runs on one thread, in one of a pool of processes when the run has two workers
or more (`prepare_fits_in_background`), so the scores are the same however the fits are spread. 50
rounds at a learning rate of 0.1 over 63 bins per column (2026-12-06; before, 100 rounds at 0.05
over 255 bins) cost a third of the time; the README's tables moved within a few hundredths either way.

The negatives are the dataset as it is, with whatever real errors it holds: the classifier learns
how the boxes look when made wrong in these ways, against how they look as given.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import math
import multiprocessing
import multiprocessing.forkserver
import os
import re
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from agent.data.coco import AnnotationInfo, Dataset
from agent.data.inject import Injection, Injector
from agent.metrics import fitting_server
from sandbox.child_processes import die_with_parent, new_processes_start_without_sigint

__all__ = [
    "CLASS_CODES", "FOLDS", "MAX_COPIES", "MAX_NEGATIVES", "MAX_RATE", "POSITIVES_WANTED", "STREAM", "TrainingCopy",
    "cross_fitted_scores", "cross_fitted_scores_each", "fold_of", "prepare_fits_in_background",
    "training_copies",
]  # fmt: skip

STREAM = "learned-metrics"
POSITIVES_WANTED = 400
MAX_RATE = 0.3
MAX_COPIES = 4
FOLDS = 5
# A fit's clean boxes (its negatives), drawn at random from the other folds' beyond this many: four per
# positive wanted. On a large dataset a fit had some 16 negatives to a positive; past a few per positive
# they add time (the fits grow with their rows) more than they teach.
MAX_NEGATIVES = 4 * POSITIVES_WANTED
MIN_TRAINING = 10  # a fold's model needs at least this many positives and as many negatives
_CLASSIFIER = {
    "max_iter": 50,
    "learning_rate": 0.1,
    "max_bins": 63,
    "max_leaf_nodes": 8,
    "min_samples_leaf": 40,
    "l2_regularization": 1.0,
    "early_stopping": False,
    "random_state": 0,
}
# How many distinct values the box's class (a categorical feature) may take: HistGradientBoosting refuses a
# categorical feature with more categories than it has bins. COCO's 80 classes raised exactly that.
CLASS_CODES = int(_CLASSIFIER["max_bins"])


@dataclass(frozen=True)
class TrainingCopy:
    """A copy of the dataset with one error type injected, its corrupted boxes' ids (in the copy) and their images.

    `dataset` holds only the annotations of `images`: the training calls read nothing else (the scenes of
    those images), and building every untouched box anew for six copies cost a tenth of a second each.
    """

    error: str
    dataset: Dataset
    corrupted: frozenset[int]
    images: frozenset[int]  # the images that hold a corrupted box


def _document(dataset: Dataset) -> dict[str, Any]:
    """The dataset as a COCO document, for `inject_errors` (which copies what it changes)."""
    return {
        "images": [image.model_dump(mode="json") for image in dataset.images],
        "categories": [category.model_dump(mode="json", exclude_none=True) for category in dataset.categories],
        "annotations": [
            {**annotation.model_dump(mode="json", exclude={"segmentation"}), "bbox": list(annotation.bbox)}
            for annotation in dataset.annotations
        ],
    }


def training_copies(dataset: Dataset, errors: Sequence[str]) -> list[TrainingCopy]:
    """For each error type, the copies its classifier is trained on (none for a type the dataset can't take)."""
    corruptible = sum(not annotation.iscrowd for annotation in dataset.annotations)
    if corruptible == 0:
        return []
    rate = min(MAX_RATE, POSITIVES_WANTED / corruptible)
    count = min(MAX_COPIES, math.ceil(POSITIVES_WANTED / (rate * corruptible)))
    injector = Injector(_document(dataset))
    by_id = {annotation.id: annotation for annotation in dataset.annotations}
    copies = []
    for error in errors:
        for seed in range(count):
            injection = injector.inject(rate=rate, seed=seed, types=[error], stream=f"{STREAM}:{error}")
            records = [r for r in injection.errors.errors if r.annotation_id is not None]
            corrupted = frozenset(r.annotation_id for r in records)
            if not corrupted:
                break  # a single-class dataset has no swaps: every copy would be as empty
            images = frozenset(r.image_id for r in records)
            annotations = _copy_annotations(by_id, injection, corrupted, images)
            copies.append(TrainingCopy(error, dataclasses.replace(dataset, annotations=annotations), corrupted, images))
    return copies


def _copy_annotations(
    by_id: Mapping[int, AnnotationInfo], injection: Injection, corrupted: frozenset[int], images: frozenset[int]
) -> tuple[AnnotationInfo, ...]:
    """The copy's annotations on `images` as the dataset holds them (`by_id`): a box the injection left alone is the
    dataset's own, renumbered (and without a segmentation, as the copy has none); only changed and new ones are read."""
    return tuple(
        AnnotationInfo.model_validate(annotation)
        if annotation["id"] in corrupted or annotation["id"] not in injection.id_map
        else by_id[injection.id_map[annotation["id"]]].model_copy(update={"id": annotation["id"], "segmentation": None})
        for annotation in injection.document["annotations"]
        if annotation["image_id"] in images
    )


def fold_of(image_ids: Sequence[int], folds: int = FOLDS) -> dict[int, int]:
    """Each image's fold: the images ordered by a hash of their id, then dealt out in turn.

    The order depends on the ids alone, so neither the boxes nor any corruption moves an image to
    another fold, and the folds stay as even as the image count allows.
    """
    order = sorted(set(image_ids), key=lambda i: hashlib.blake2b(str(i).encode(), digest_size=8).digest())
    count = max(1, min(folds, len(order)))
    return {image_id: rank % count for rank, image_id in enumerate(order)}


_importing: threading.Thread | None = None  # the one import thread of this process, once started
_starting: threading.Thread | None = None  # the one thread that starts the fitting processes, once started
_processes: ProcessPoolExecutor | None = None  # the fitting processes, once started (None: fit on threads)


def prepare_fits_in_background(processes: int = 1) -> None:
    """Start what the fits need on a thread of its own, and return at once.

    With `processes` of 2 or more (a run's worker count), that is a pool of processes to fit in:
    the fits hold the GIL for a good part of their time, so threads ran them on about 1.6 of 2
    cores, processes on 2. The processes are forked from multiprocessing's fork server, a fresh
    interpreter started for it, never from this process (its threads, or a Ray driver's gRPC, must
    not be forked); the server imports scikit-learn once, while the sandbox workers score, and each
    fitting process starts with it imported. Where no fork server can start, the fits run on
    threads, with the same scores. With one process, scikit-learn is imported here, on a thread.
    Once per process: selftest trains a set of detectors per copy, and the later ones find it started.
    """
    global _importing, _starting
    if processes >= 2 and "forkserver" in multiprocessing.get_all_start_methods() and _main_module_runs_nothing():
        if _starting is None:
            _starting = threading.Thread(
                target=_start_processes, args=(processes,), name="fitting-processes", daemon=True
            )
            _starting.start()
    elif _importing is None:
        _importing = threading.Thread(target=_import_classifier, name="import-scikit-learn", daemon=True)
        _importing.start()


def _main_module_runs_nothing() -> bool:
    """Whether a process multiprocessing starts here can import the main module without running its work.

    Such a process imports it first, as `__mp_main__`: harmless for `python -m package` (skipped), an
    interactive session (nothing to import) and a script whose work sits under `if __name__ ==
    "__main__":` (console scripts' does), but a script that scores at its top level would score again
    in every fitting process. Its fits run on threads instead.
    """
    main = sys.modules.get("__main__")
    name = getattr(getattr(main, "__spec__", None), "name", None)
    path = getattr(main, "__file__", None)
    if (name is not None and name.endswith("__main__")) or path is None:
        return True
    try:
        source = Path(path).read_text(errors="replace")
    except OSError:
        return False
    return re.search(r"""^if\s+__name__\s*==\s*['"]__main__['"]\s*:""", source, re.MULTILINE) is not None


def _import_classifier() -> None:
    # A broken install must not print a thread's traceback: the fit imports it again and fails in its own words.
    with contextlib.suppress(ImportError):
        import sklearn.ensemble  # noqa: F401


def _start_processes(count: int) -> None:
    global _processes
    pool = None
    try:
        context = multiprocessing.get_context("forkserver")
        # Imported once, in the server; an import that fails there is tried again, and reported, by the fit.
        # The main module too, so that a console script's imports happen once there, not in each process
        # (Python 3.11 never tells its server the main module's path, so there each process imports it itself:
        # a tenth of a second). First `fitting_server`, which sends what the server and its processes would
        # print to /dev/null, and whose pid the fitting processes die with.
        preload = [f"{__package__}.fitting_server", "__main__", __name__, "sklearn.ensemble", "threadpoolctl"]
        context.set_forkserver_preload(preload)
        pool = ProcessPoolExecutor(count, mp_context=context, initializer=_fitting_process_setup)
        # The server starts with SIGINT blocked, which `fitting_server` unblocks once it has sent the server's
        # output to /dev/null: a Ctrl-C while it starts then ends it quietly.
        with new_processes_start_without_sigint():
            for started in [pool.submit(os.getpid) for _ in range(count)]:  # one call each starts them all now
                started.result()
    except Exception:  # no processes here (no process slots, a server that failed to start): fit on threads
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        return
    _processes = pool


def _fitting_process_setup() -> None:
    # Ctrl-C reaches the whole process group: the host stops the fits, and these must not print tracebacks.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Each process holds both ends of the pool's queues, so it would wait for work forever if the host left
    # without telling it to stop (a Ctrl-C while the pool starts can do that), holding the terminal open.
    # So these die with the server, and the server ends when the host does: when the last copy of the
    # host's end of a pipe to it closes. multiprocessing gives each forked process a copy (for processes
    # of its own, which these never start), which would keep the server, and so these, alive: closed here.
    die_with_parent(fitting_server.server_pid)
    server = multiprocessing.forkserver._forkserver  # private: a Python that names it otherwise keeps the copy
    if getattr(server, "_forkserver_alive_fd", None) is not None:
        os.close(server._forkserver_alive_fd)
        server._forkserver_alive_fd = None
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)  # for the process's life: BLAS and OpenMP on one thread, as on the host


def _fitting_pool() -> ProcessPoolExecutor | None:
    """The fitting processes, once started (waits for them), or None where the fits run on threads."""
    if _starting is not None:
        _starting.join()
    return _processes


def _forget_pool(pool: ProcessPoolExecutor) -> None:
    """Shut a pool down without waiting for it; the next fits start no other and run on threads."""
    global _processes
    if _processes is pool:
        _processes = None
    pool.shutdown(wait=False, cancel_futures=True)


def _classifier(columns: int) -> Any:
    from sklearn.ensemble import HistGradientBoostingClassifier  # scikit-learn takes a second to import

    return HistGradientBoostingClassifier(**_CLASSIFIER, categorical_features=[columns - 1])


def cross_fitted_scores(
    clean: NDArray[np.float64],
    clean_images: Sequence[int],
    corrupted: NDArray[np.float64],
    corrupted_images: Sequence[int],
    folds: dict[int, int],
) -> list[float | None]:
    """Each clean row's probability of being corrupted, by a model that saw none of its fold's images.

    `clean` and `corrupted` are feature rows whose last column is the box's class code (0, 1, ...);
    `folds` gives every image's fold. A fold whose training data has fewer than `MIN_TRAINING`
    positives or negatives leaves its rows None, as does having a single fold (nothing to train on).
    A fold's model learns from at most `MAX_NEGATIVES` of the other folds' clean rows, drawn by a seed
    of the fold's number alone, so which are drawn depends on nothing in the fold it scores.
    """
    from threadpoolctl import threadpool_limits

    clean_folds = np.asarray([folds[i] for i in clean_images], dtype=np.int64)
    corrupted_folds = np.asarray([folds[i] for i in corrupted_images], dtype=np.int64)
    scores: list[float | None] = [None] * len(clean)
    # One thread: a parallel sum of gradients may round differently from one run to the next. OpenMP's thread
    # count is the calling thread's own, so this holds inside a pool thread too. Set once for all the folds:
    # each setting looks through the process's libraries, a few milliseconds.
    with threadpool_limits(limits=1, user_api="openmp"):
        for fold in sorted(set(folds.values())):
            rows = np.flatnonzero(clean_folds == fold)
            negatives, positives = (
                _at_most(clean[clean_folds != fold], MAX_NEGATIVES, fold),
                corrupted[corrupted_folds != fold],
            )
            if not rows.size or len(negatives) < MIN_TRAINING or len(positives) < MIN_TRAINING:
                continue
            features = np.vstack([positives, negatives])
            target = np.r_[np.ones(len(positives)), np.zeros(len(negatives))]
            model = _classifier(features.shape[1]).fit(features, target)
            probabilities = model.predict_proba(clean[rows])[:, 1]
            for row, probability in zip(rows.tolist(), probabilities.tolist(), strict=True):
                scores[row] = float(probability)
    return scores


def _at_most(rows: NDArray[np.float64], count: int, seed: int) -> NDArray[np.float64]:
    """`rows`, or `count` of them drawn at random (seeded: the same rows every run), in their order."""
    if len(rows) <= count:
        return rows
    return rows[np.sort(np.random.default_rng(seed).choice(len(rows), size=count, replace=False))]


def cross_fitted_scores_each(
    clean: NDArray[np.float64],
    clean_images: Sequence[int],
    problems: Sequence[tuple[NDArray[np.float64], Sequence[int]] | None],
    folds: dict[int, int],
    threads: int = 1,
) -> list[list[float | None]]:
    """`cross_fitted_scores` of the same clean rows against each (corrupted rows, their images), `threads` at once.

    None in `problems` (nothing corrupted to learn from) gives every clean row None. Each fit runs on one
    thread of its own, so the scores are the same however they are spread: over the fitting processes
    of `prepare_fits_in_background` when they run, else over `threads` threads of this process.
    """
    scores: list[list[float | None]] = [[None] * len(clean) for _ in problems]
    work = [k for k, problem in enumerate(problems) if problem is not None]
    pool = _fitting_pool() if threads >= 2 and len(work) >= 2 else None
    fitted = _in_processes(pool, clean, clean_images, [problems[k] for k in work], folds) if pool else None
    if fitted is None:
        fitted = _in_threads(clean, clean_images, [problems[k] for k in work], folds, threads)
    for k, problem_scores in zip(work, fitted, strict=True):
        scores[k] = problem_scores
    return scores


def _in_processes(
    pool: ProcessPoolExecutor,
    clean: NDArray[np.float64],
    clean_images: Sequence[int],
    problems: Sequence[tuple[NDArray[np.float64], Sequence[int]]],
    folds: dict[int, int],
) -> list[list[float | None]] | None:
    """Each problem's scores from the fitting processes; None if one of them died (the fits then run here)."""
    futures = []
    try:
        futures = [pool.submit(_fit_one, clean, clean_images, problem, folds=folds) for problem in problems]
        return [future.result() for future in futures]
    except BrokenProcessPool:  # killed (the OOM killer, a signal): this process fits instead, the same way
        _forget_pool(pool)
        return None
    except KeyboardInterrupt:
        for future in futures:
            future.cancel()
        _forget_pool(pool)
        raise


def _fit_one(
    clean: NDArray[np.float64],
    clean_images: Sequence[int],
    problem: tuple[NDArray[np.float64], Sequence[int]],
    folds: dict[int, int],
) -> list[float | None]:
    return cross_fitted_scores(clean, clean_images, problem[0], problem[1], folds)


def _in_threads(
    clean: NDArray[np.float64],
    clean_images: Sequence[int],
    problems: Sequence[tuple[NDArray[np.float64], Sequence[int]]],
    folds: dict[int, int],
    threads: int,
) -> list[list[float | None]]:
    from threadpoolctl import threadpool_limits

    # BLAS's thread count is the process's, not a thread's: set once here, around every fit.
    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        return list(pool.map(functools.partial(_fit_one, clean, clean_images, folds=folds), problems))
