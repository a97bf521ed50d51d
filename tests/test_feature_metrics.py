"""Feature metrics (OUTPUT = "features"): the contract, the k-NN scoring, and runs in the sandbox."""

from __future__ import annotations

import json
from array import array
from pathlib import Path

import numpy as np
import pytest

from agent.data.coco import load_coco
from agent.data.demo import generate_demo_dataset
from agent.metrics import neighbours, scoring
from agent.metrics.contract import MetricFileError, load_metric_file, parse_metric_source
from agent.metrics.neighbours import class_disagreement, in_threads, nearest_neighbours
from agent.metrics.scoring import score_dataset
from sandbox.isolation import SandboxConfig

FEATURE_HEADER = '''"""A feature metric for the tests: returns a small vector per box."""

NAME = "test_features"
LEVEL = "object"
SUSPICIOUS = "high"
OUTPUT = "features"
'''
# Small classes: with k larger than a class, even a perfectly separating feature finds other classes.
FEW_NEIGHBOURS = "NEIGHBOURS = 3\n"

# --- k-NN scoring ------------------------------------------------------------------------------


def test_an_outlier_label_inside_a_cluster_scores_1_its_neighbours_low() -> None:
    rng = np.random.default_rng(0)
    cluster_a = rng.normal(0.0, 0.1, (10, 2))
    cluster_b = rng.normal(5.0, 0.1, (10, 2))
    vectors = np.vstack([cluster_a, cluster_b]).tolist()
    classes = [1] * 10 + [2] * 10
    classes[3] = 2  # a "swap": looks like cluster a, labelled b
    scores = class_disagreement(vectors, classes, k=5)
    assert scores[3] == 1.0
    assert all(score is not None and score <= 0.2 for i, score in enumerate(scores) if i != 3)
    assert all(score == 0.0 for score in scores[10:])


def test_an_item_is_never_its_own_neighbour() -> None:
    vectors = [[0.0], [0.0], [10.0], [10.5]]
    found = nearest_neighbours(np.asarray(vectors), k=1)
    assert found[:, 0].tolist() == [1, 0, 3, 2]
    # Two items: each is the other's only neighbour, whatever k asks for.
    assert class_disagreement([[0.0], [1.0]], [1, 2], k=10) == [1.0, 1.0]
    assert class_disagreement([[0.0]], [1], k=10) == [None]
    assert class_disagreement([], [], k=10) == []


def test_features_are_standardised_so_units_do_not_dominate() -> None:
    # Feature 0 separates the classes by 1 unit; feature 1 is noise a thousand times larger.
    rng = np.random.default_rng(1)
    classes = [1] * 20 + [2] * 20
    separating = [0.0] * 20 + [1.0] * 20
    noise = rng.uniform(0, 1000, 40)
    vectors = np.column_stack([separating, noise]).tolist()
    scores = class_disagreement(vectors, classes, k=3)
    assert np.mean(scores) < 0.25  # raw distances would be all noise: about 0.5
    raw = nearest_neighbours(np.asarray(vectors), k=3)
    assert np.mean(np.asarray(classes)[raw] != np.asarray(classes)[:, None]) > 0.3


def test_blocked_search_equals_one_block_and_is_deterministic(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(2)
    vectors = rng.normal(size=(300, 6))
    whole = nearest_neighbours(vectors, k=7)
    monkeypatch.setattr(neighbours, "_BLOCK_BYTES", 8 * 300 * 7)  # blocks of 7 rows
    assert np.array_equal(nearest_neighbours(vectors, k=7), whole)
    distances = np.linalg.norm(vectors[:, None] - vectors[None], axis=2)
    np.fill_diagonal(distances, np.inf)
    assert np.array_equal(whole, np.argsort(distances, axis=1, kind="stable")[:, :7])


@pytest.mark.parametrize("threads", [1, 2, 3, 8])
def test_the_search_split_over_threads_is_the_search_in_one_range(threads: int) -> None:
    rng = np.random.default_rng(5)
    for count in (2, 5, 301):  # fewer rows than threads, too
        vectors = rng.normal(size=(count, 4))
        vectors[1::3] = vectors[0]  # exact ties, which go to the lower index whichever range holds the row
        k = min(6, count - 1)
        assert np.array_equal(nearest_neighbours(vectors, k, in_threads(threads)), nearest_neighbours(vectors, k))


def _reference_neighbours(vectors: np.ndarray, k: int) -> list[list[int]]:
    """Plain Python: the sequential sum of squared differences, ties to the lower index."""
    table = []
    for row in range(len(vectors)):
        distances = []
        for other in range(len(vectors)):
            total = 0.0
            for a, b in zip(vectors[row], vectors[other], strict=True):
                total += (float(a) - float(b)) ** 2
            distances.append((total, other))
        table.append([other for _, other in sorted(d for d in distances if d[1] != row)[:k]])
    return table


def test_vectors_too_long_for_the_product_take_the_exact_path() -> None:
    # Squared lengths past 1e100 could overflow the product's terms: every pair's exact sums decide alone.
    rng = np.random.default_rng(8)
    vectors = rng.integers(0, 3, size=(60, 3)) * 1e60
    assert nearest_neighbours(vectors, k=5).tolist() == _reference_neighbours(vectors, 5)


def test_the_products_candidates_hold_every_exact_neighbour_even_at_near_ties() -> None:
    # Many distances equal in exact arithmetic and a hair apart in floating point, with large and small
    # lengths side by side: the product's rounding reorders them, the candidates' exact sums must not.
    rng = np.random.default_rng(9)
    base = rng.integers(0, 3, size=(200, 6)) / 10
    vectors = np.vstack([base, base[:40] + 1e-9, base[:40] * 1000])
    for k in (1, 4, 9):
        found = nearest_neighbours(vectors, k)
        assert found.tolist() == _reference_neighbours(vectors, k)
        assert np.array_equal(found, neighbours._exact_rows(np.ascontiguousarray(vectors.T), 0, len(vectors), k))


@pytest.mark.parametrize("blas_threads", [1, 2, 4])
def test_the_table_does_not_depend_on_how_blas_computes_the_product(blas_threads: int) -> None:
    # The product's rounding changes with BLAS's threads and kernels; it only proposes candidates, so the table
    # must not. (`nearest_neighbours` itself runs BLAS on one thread: here the row function runs under others.)
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(10)
    vectors = np.vstack([rng.integers(0, 3, size=(400, 8)) / 10, rng.normal(size=(400, 8))])
    columns = np.ascontiguousarray(vectors.T)
    expected = neighbours._exact_rows(columns, 0, len(vectors), 7)
    with threadpool_limits(limits=blas_threads, user_api="blas"):
        assert np.array_equal(neighbours.neighbours_of_rows(columns, 0, len(vectors), 7), expected)


def test_a_constant_feature_is_ignored() -> None:
    scores = class_disagreement([[1.0, 0.0], [1.0, 0.1], [1.0, 5.0], [1.0, 5.1]], [1, 1, 2, 2], k=1)
    assert scores == [0.0, 0.0, 0.0, 0.0]


# --- the contract ------------------------------------------------------------------------------


def test_feature_declarations_are_parsed() -> None:
    spec = parse_metric_source(FEATURE_HEADER + "NEIGHBOURS = 7\n\ndef score(image, obj, scene):\n    return [1.0]\n")
    assert (spec.output, spec.neighbours) == ("features", 7)
    plain = load_metric_file("builtin:box_tightness")
    assert (plain.output, plain.neighbours) == ("score", 10)
    assert load_metric_file("builtin:appearance_neighbours").output == "features"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('LEVEL = "object"', 'LEVEL = "image"'), "needs LEVEL = 'object'"),
        (('SUSPICIOUS = "high"', 'SUSPICIOUS = "low"'), "needs SUSPICIOUS = 'high'"),
        (('OUTPUT = "features"', 'OUTPUT = "vector"'), "OUTPUT must be 'score' or 'features'"),
        (('OUTPUT = "features"', 'OUTPUT = "features"\nNEIGHBOURS = 0'), "NEIGHBOURS must be a whole number"),
        (('OUTPUT = "features"', 'OUTPUT = "features"\nNEIGHBOURS = 2.5'), "NEIGHBOURS must be a whole number"),
        (('OUTPUT = "features"', "NEIGHBOURS = 5"), "NEIGHBOURS applies only to OUTPUT = 'features'"),
    ],
)
def test_feature_declarations_are_checked(change: tuple[str, str], message: str) -> None:
    source = FEATURE_HEADER.replace(*change)
    level_args = "image, scene" if 'LEVEL = "image"' in source else "image, obj, scene"
    with pytest.raises(MetricFileError, match=message):
        parse_metric_source(source + f"\n\ndef score({level_args}):\n    return [1.0]\n")


# --- in the sandbox ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("features")
    return generate_demo_dataset(root / "demo", n_images=12, seed=3, error_rate=0.3, width=320, height=240)


def _run(annotations: Path, tmp_path: Path, body: str) -> list:
    file = tmp_path / "test_features.py"
    file.write_text(
        FEATURE_HEADER + FEW_NEIGHBOURS + "\nimport numpy as np\n\n\ndef score(image, obj, scene):\n" + body
    )
    dataset = load_coco(annotations)
    outcome = score_dataset(dataset, [load_metric_file(str(file))], SandboxConfig(workers=2, timeout_s=5))
    assert len(outcome.rows) == len(dataset.annotations)
    return outcome.rows


def test_reference_feature_metric_scores_every_box_in_0_1(demo: Path) -> None:
    dataset = load_coco(demo)
    outcome = score_dataset(dataset, [load_metric_file("builtin:appearance_neighbours")], SandboxConfig(workers=2))
    rows = outcome.rows
    assert [row.annotation_id for row in rows] == sorted(a.id for a in dataset.annotations)
    scores = [row.score for row in rows]
    assert all(row.error_kind is None for row in rows)
    assert all(score is not None and 0.0 <= score <= 1.0 for score in scores)
    assert len(set(scores)) > 2, "a real dataset gives varied disagreement shares"
    # The scores are multiples of 1/k: shares of k = 10 neighbours.
    assert all(abs(score * 10 - round(score * 10)) < 1e-9 for score in scores if score is not None)
    assert outcome.summaries[0].scored == len(rows)


def test_feature_scores_do_not_depend_on_worker_order(demo: Path) -> None:
    dataset = load_coco(demo)
    spec = load_metric_file("builtin:appearance_neighbours")
    runs = [score_dataset(dataset, [spec], SandboxConfig(workers=workers, chunk_images=1)) for workers in (1, 3)]
    assert [row.score for row in runs[0].rows] == [row.score for row in runs[1].rows]


def test_feature_scores_follow_the_labels(demo: Path, tmp_path: Path) -> None:
    # The vector is the box's category as the scene says it: every neighbour agrees, so all 0.
    rows = _run(demo, tmp_path, '    return [float(obj["category_id"]), 0.5]\n')
    assert {row.score for row in rows} == {0.0}


def test_bad_vectors_are_per_item_errors(demo: Path, tmp_path: Path) -> None:
    body = (
        '    if obj["id"] % 4 == 0:\n        return [float("nan"), 1.0]\n'
        '    if obj["id"] % 4 == 1:\n        return "abc"\n'
        '    if obj["id"] % 4 == 2:\n        return np.zeros(5000)\n'
        "    return np.array([obj['bbox'][2], obj['bbox'][3]])\n"
    )
    rows = _run(demo, tmp_path, body)
    for row in rows:
        if row.annotation_id % 4 == 3:
            assert row.error_kind is None and row.score is not None
        else:
            assert row.error_kind == "invalid_output" and row.score is None, row
    messages = {row.annotation_id % 4: row.error for row in rows if row.error}
    assert "NaN" in messages[0] and "list of floats" in messages[1] and "(5000,)" in messages[2]


def test_vectors_of_different_lengths_fail_the_whole_metric(demo: Path, tmp_path: Path) -> None:
    rows = _run(demo, tmp_path, '    return [1.0] * (2 + obj["id"] % 2)\n')
    assert {row.error_kind for row in rows} == {"invalid_output"}
    assert "different lengths (2, 3)" in (rows[0].error or "")


def test_not_applicable_boxes_stay_out_of_the_neighbourhood(demo: Path, tmp_path: Path) -> None:
    rows = _run(demo, tmp_path, '    return None if obj["id"] % 2 else [float(obj["category_id"])]\n')
    odd = [row for row in rows if row.annotation_id % 2]
    even = [row for row in rows if not row.annotation_id % 2]
    assert all(row.score is None and row.error_kind is None for row in odd)
    categories = {a.id: a.category_id for a in load_coco(demo).annotations}
    alone = class_disagreement(
        [[float(categories[r.annotation_id])] for r in even], [categories[r.annotation_id] for r in even], 3
    )
    assert [row.score for row in even] == alone


def test_cli_writes_feature_scores(demo: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    out = tmp_path / "scores.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "agent.cli", "score", "--annotations", str(demo), "--metric",
         "builtin:appearance_neighbours", "--out", str(out), "--workers", "2"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == len(json.loads(demo.read_text())["annotations"])
    assert all(row["metric"] == "appearance_neighbours" and 0 <= row["score"] <= 1 for row in rows)


def test_neighbours_follow_feature_by_feature_arithmetic_whatever_the_blas() -> None:
    # Values on a 0.1 grid make many distances equal in exact arithmetic; which of them a machine
    # sees as smaller then depends on rounding alone. A BLAS product (|a|² + |b|² - 2a·b) rounds
    # by kernel and thread count; the search must instead match the plain sequential sum of
    # squared differences, ties going to the lower index, which every IEEE machine computes alike.
    rng = np.random.default_rng(5)
    vectors = rng.integers(0, 4, size=(120, 5)) / 10
    assert nearest_neighbours(vectors, k=6).tolist() == _reference_neighbours(vectors, 6)


def test_vectors_reach_the_host_as_8_byte_floats(demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A run holds every box's vector until its end: as Python floats they took four times the space.
    seen: list = []
    real = scoring.class_disagreement

    def spy(vectors: list, *args: object, **kwargs: object) -> list[float | None]:
        seen.extend(vectors)
        return real(vectors, *args, **kwargs)

    monkeypatch.setattr(scoring, "class_disagreement", spy)
    rows = _run(demo, tmp_path, '    return [obj["bbox"][2], obj["bbox"][3], 0.1 * obj["id"]]\n')
    assert len(seen) == len(rows) and all(isinstance(v, array) and v.typecode == "d" for v in seen)
    widths = {float(a["bbox"][2]) for a in json.loads(demo.read_text())["annotations"]}
    assert {v[0] for v in seen} == widths, "the values are the metric's own"


def test_feature_rows_are_the_vectors_and_their_class_exactly() -> None:
    rng = np.random.default_rng(4)
    vectors = [array("d", rng.normal(size=7).tolist()) for _ in range(30)]
    classes = rng.integers(0, 5, 30).tolist()
    made = scoring._feature_rows(vectors, classes)
    expected = np.asarray([[*vector, category] for vector, category in zip(vectors, classes, strict=True)])
    assert made.shape == (30, 8) and made.tobytes() == expected.tobytes()
