"""`metricsmith selftest`: metrics measured on errors injected into the user's data, over seeds, beside random."""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from agent.data.demo import generate_demo_dataset
from agent.evaluation.ranking import EvaluationReport, ItemCounts, MetricEvaluation, Prevalence
from agent.evaluation.selftest import (
    ESTIMATE,
    Calls,
    Figure,
    MetricFigures,
    SelftestReport,
    best_by_type,
    summarise,
)


def _row(metric: str, ap: float | None, shift: float | None) -> MetricEvaluation:
    return MetricEvaluation(
        metric=metric, level="object", direction="high", n_items=10, n_positive=2, ap=ap, auroc=None,
        precision_at_k=None, recall_at_5pct=None, ap_by_type={"shift": shift}, image_ap=None,
    )  # fmt: skip


def _report(*rows: MetricEvaluation) -> EvaluationReport:
    return EvaluationReport(
        items=ItemCounts(annotations=10, images=2, errors=2, errors_by_type={"shift": 2}),
        prevalence=Prevalence(object=0.2, image=None, object_by_type={"shift": 0.2}, image_by_type={}),
        budget=0.05,
        metrics=list(rows),
    )


def test_figures_are_the_mean_and_spread_over_seeds_beside_random() -> None:
    reports = [
        _report(_row("tightness", 0.6, 0.5), _row("random", 0.2, 0.2)),
        _report(_row("tightness", 0.4, None), _row("random", 0.2, 0.2)),
    ]
    figures = {f.metric: f for f in summarise(reports)}
    tightness = figures["tightness"]
    assert tightness.ap.per_seed == [0.6, 0.4]
    assert tightness.ap.mean == pytest.approx(0.5)
    assert tightness.ap.spread == pytest.approx(statistics.stdev([0.6, 0.4]))
    assert tightness.ap.random == pytest.approx(0.2) and tightness.ap.lift == pytest.approx(2.5)
    # A seed without positives of a type says nothing about it: the mean is over the seeds that had some.
    shift = tightness.by_type["shift"]
    assert shift.per_seed == [0.5, None] and shift.mean == 0.5 and shift.spread == 0.0
    assert figures["random"].ap.lift == pytest.approx(1.0)


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's true labels: a dataset with no known errors of its own, like a user's."""
    folder = generate_demo_dataset(tmp_path_factory.mktemp("selftest") / "demo", n_images=16, seed=2).parent
    return folder / "clean.json"


def _metricsmith(command: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", command, *args, "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=600,
    )


def _selftest(*args: str) -> subprocess.CompletedProcess[str]:
    return _metricsmith("selftest", *args)


def test_selftest_reports_each_metric_over_the_seeds_and_says_it_is_an_estimate(clean: Path) -> None:
    args = ["--annotations", str(clean), "--metric", "builtin:box_tightness",
            "--metric", "builtin:object_area_relative", "--seeds", "2"]  # fmt: skip
    result = _selftest(*args, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["estimate"] == ESTIMATE and report["seeds"] == [0, 1]
    assert set(report["errors_by_type"]) == {"swap", "shift", "loose", "tight", "spurious", "duplicate", "drop"}
    rows = {row["metric"]: row for row in report["metrics"]}
    assert {"box_tightness", "object_area_relative", "random", "combined", "rank_average"} <= set(rows)
    for row in rows.values():
        assert len(row["ap"]["per_seed"]) == 2 and row["ap"]["spread"] >= 0
        assert row["ap"]["random"] == rows["random"]["ap"]["mean"]
    # Box tightness reads the pixels at the box's edges: loose boxes are what it exists to find.
    assert rows["box_tightness"]["by_type"]["loose"]["lift"] > 2
    assert _selftest(*args, "--json").stdout == result.stdout, "the same seeds give the same figures"

    shown = _selftest(*args)
    assert shown.returncode == 0 and "an estimate on injected errors" in shown.stdout
    assert "box_tightness" in shown.stdout and "lift" in shown.stdout
    loose = rows["box_tightness"]["by_type"]["loose"]
    assert f"loose box_tightness {loose['mean']:.3f} ({loose['lift']:.1f}x)" in shown.stdout.replace("\n", " ")
    # And the same pick judged on seeds it was not made on (each seed left out in turn).
    judged = {b.error: b for b in best_by_type(SelftestReport.model_validate(report))}["loose"]
    assert judged.left_out is not None and len(judged.left_out_picks) == 2
    assert "picked on the other seeds, measured on the seed left out" in shown.stdout
    assert f"loose {judged.left_out.mean:.3f} ({judged.left_out.lift:.1f}x" in shown.stdout.replace("\n", " ")


def _figures(metric: str, level: str, by_type: dict[str, tuple[float, float]]) -> MetricFigures:
    def figure(mean: float, random: float) -> Figure:
        return Figure(mean=mean, spread=0.0, per_seed=[mean], random=random, lift=mean / random)

    overall = figure(0.5, 0.25)
    return MetricFigures(metric=metric, level=level, ap=overall, by_type={t: figure(*v) for t, v in by_type.items()})


def test_the_best_metric_per_type_is_the_one_with_the_highest_lift_and_never_a_baseline() -> None:
    report = SelftestReport(
        dataset="a.json", dataset_sha256="0" * 64, seeds=[0], rate=0.2, images=10, annotations=40,
        errors_by_type={"shift": 2, "drop": 2, "swap": 2}, calls=Calls(run=1, without_reuse=1),
        metrics=[
            _figures("edges", "object", {"shift": (0.30, 0.05), "swap": (0.10, 0.05)}),
            # A higher AP on images, whose prevalence is higher: a lower lift, so not the best for shift.
            _figures("brightness", "image", {"shift": (0.60, 0.40), "drop": (0.50, 0.40), "swap": (0.10, 0.05)}),
            _figures("combined", "object", {"shift": (0.90, 0.05)}),  # a baseline, however good
            _figures("aardvark", "object", {"swap": (0.10, 0.05)}),  # the same lift and AP as two others
        ],
    )  # fmt: skip
    best = {b.error: (b.metric, b.level) for b in best_by_type(report)}
    assert best == {"shift": ("edges", "object"), "drop": ("brightness", "image"), "swap": ("aardvark", "object")}


def _seeded(metric: str, per_seed: list[float | None], random: float = 0.05) -> MetricFigures:
    known = [v for v in per_seed if v is not None]
    mean = sum(known) / len(known)
    figure = Figure(mean=mean, spread=0.0, per_seed=per_seed, random=random, lift=mean / random)
    return MetricFigures(metric=metric, level="object", ap=figure, by_type={"shift": figure})


def test_the_best_per_type_is_also_judged_on_seeds_it_was_not_picked_on() -> None:
    # "lucky" is best on the three seeds together only by its first seed; picked without that seed, "steady" wins.
    report = SelftestReport(
        dataset="a.json", dataset_sha256="0" * 64, seeds=[0, 1, 2], rate=0.2, images=10, annotations=40,
        errors_by_type={"shift": 2}, calls=Calls(run=1, without_reuse=1),
        metrics=[_seeded("lucky", [0.9, 0.1, 0.1]), _seeded("steady", [0.3, 0.3, 0.3]),
                 _seeded("combined", [0.95, 0.95, 0.95])],
    )  # fmt: skip
    (best,) = best_by_type(report)
    assert (best.metric, round(best.figure.lift or 0, 2)) == ("lucky", 7.33)
    assert best.left_out_picks == ("steady", "lucky", "lucky")  # seed 0 left out, then 1, then 2
    assert best.left_out is not None and best.left_out.per_seed == [0.3, 0.1, 0.1]
    assert round(best.left_out.mean or 0, 4) == 0.1667 and round(best.left_out.lift or 0, 2) == 3.33
    assert best.judged_lift == best.left_out.lift
    assert best.picks_vary  # "steady" was picked once: the picks are shown
    one_seed = report.model_copy(update={"seeds": [0], "metrics": [_seeded("lucky", [0.9]), _seeded("steady", [0.3])]})
    (alone,) = best_by_type(one_seed)
    assert alone.left_out is None and alone.left_out_picks == () and alone.judged_lift == alone.figure.lift
    # A seed where the pick has no AP (no positive of the type) is left out of the mean, not counted as 0.
    gap = report.model_copy(
        update={"metrics": [_seeded("lucky", [0.9, None, 0.1]), _seeded("steady", [0.3, 0.3, 0.3])]}
    )
    (with_gap,) = best_by_type(gap)
    assert with_gap.left_out is not None and with_gap.left_out.per_seed == [0.3, None, 0.1]


def test_a_sample_of_images_is_what_gets_measured(clean: Path) -> None:
    result = _selftest("--annotations", str(clean), "--metric", "builtin:brightness", "--seeds", "1",
                       "--sample-images", "5", "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["images"] == 5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--annotations", "missing.json"], "COCO annotations file not found"),
        (["--annotations", "{clean}", "--rate", "0"], "--rate must be above 0 and below 1"),
        (["--annotations", "{clean}", "--metric", "builtin:nope"], "nope"),
        (["--annotations", "{clean}", "--rate", "0.001"], "nothing to measure: no errors injected"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(clean: Path, args: list[str], message: str) -> None:
    result = _selftest(*[arg.format(clean=clean) for arg in args])
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


_FLAKY = '''"""The box's width; fails on boxes in the right half of the image."""
NAME = "flaky"
TITLE = "Flaky width"
LEVEL = "object"
SUSPICIOUS = "high"
RANGE = (0.0, 10000.0)
TAGS = ["test"]


def score(image, obj, scene):
    if obj["bbox"][0] > scene["image"]["width"] / 2:
        raise ValueError("a box in the right half")
    return float(obj["bbox"][2])
'''


def test_failed_calls_and_unreadable_images_are_said(clean: Path, tmp_path: Path) -> None:
    # An item whose call failed has no score and ranks as least suspicious: the figures are the worse for it.
    folder = Path(shutil.copytree(clean.parent, tmp_path / "data"))
    document = json.loads((folder / clean.name).read_text())
    unreadable = document["images"][3]
    image_path = next(path for path in folder.rglob(unreadable["file_name"]))
    image_path.write_bytes(b"not an image")
    (tmp_path / "flaky.py").write_text(_FLAKY)
    result = _selftest("--annotations", str(folder / clean.name), "--metric", "builtin:box_tightness",
                       "--metric", str(tmp_path / "flaky.py"), "--seeds", "1", "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    notes = json.loads(result.stdout)["notes"]
    assert any(
        note.startswith(f"1 of {len(document['images'])} images could not be read")
        and f"image {unreadable['id']} ({unreadable['file_name']})" in note
        for note in notes
    ), notes
    assert any(
        note.startswith("flaky: ") and "exception" in note and "ValueError: a box in the right half" in note
        for note in notes
    ), notes
    assert not any(note.startswith("box_tightness:") for note in notes), "it failed only where the image was unreadable"


def _html_report(*args: str) -> subprocess.CompletedProcess[str]:
    return _metricsmith("report", *args)


def test_report_shows_the_selftest_as_an_estimate_for_its_own_dataset(clean: Path, tmp_path: Path) -> None:
    measured = _selftest("--annotations", str(clean), "--metric", "builtin:box_tightness", "--seeds", "2", "--json")
    assert measured.returncode == 0, measured.stderr
    figures = json.loads(measured.stdout)
    assert figures["dataset_sha256"] and figures["calls"]["run"] < figures["calls"]["without_reuse"]
    selftest = tmp_path / "selftest.json"
    # Its notes (an unreadable image, a failing metric) travel with the table, escaped like any text.
    note = "1 of 16 images could not be read <b>here</b>"
    selftest.write_text(json.dumps({**figures, "notes": [*figures["notes"], note]}), encoding="utf-8")
    page = tmp_path / "report.html"
    made = _html_report("--annotations", str(clean), "--metric", "builtin:box_tightness", "--selftest", str(selftest),
                   "--out", str(page))  # fmt: skip
    assert made.returncode == 0, made.stderr
    html = page.read_text(encoding="utf-8")
    section = html[html.index('<section id="selftest">') : html.index("</section>", html.index('id="selftest"'))]
    assert "an estimate on injected errors" in section and '<a href="#metric-box_tightness">' in section
    assert "<li>1 of 16 images could not be read &lt;b&gt;here&lt;/b&gt;</li>" in section
    tightness = next(row for row in figures["metrics"] if row["metric"] == "box_tightness")
    assert f"{tightness['ap']['mean']:.3f} ± {tightness['ap']['spread']:.3f}" in section
    assert "Selftest (an estimate on injected errors" in html[html.index('id="metric-box_tightness"') :]
    assert "Best per error type, by lift over random's AP: <b>swap</b> <code>box_tightness</code>" in section
    # One metric: every left-out pick is the overall best, so no "picked ..." list, only the left-out figures.
    swap = {b.error: b for b in best_by_type(SelftestReport.model_validate(figures))}["swap"]
    assert swap.left_out is not None and swap.left_out.mean is not None
    assert "Picked on the other seeds and measured on the seed left out (each in turn): <b>swap</b> " \
           f"{swap.left_out.mean:.3f} (" in section and "; picked" not in section  # fmt: skip

    # Figures about another file, or a file that is not a selftest, are one line and exit 2.
    noisy = clean.parent / "annotations.json"
    other = _html_report("--annotations", str(noisy), "--metric", "builtin:box_tightness", "--selftest", str(selftest),
                    "--out", str(page))  # fmt: skip
    assert other.returncode == 2 and "run selftest on this annotations file" in other.stderr
    broken = tmp_path / "broken.json"
    broken.write_text('{"seeds": [0]}', encoding="utf-8")
    bad = _html_report("--annotations", str(clean), "--metric", "builtin:box_tightness", "--selftest", str(broken),
                  "--out", str(page))  # fmt: skip
    assert bad.returncode == 2 and "not a valid selftest file" in bad.stderr and "Traceback" not in bad.stderr
