"""`metricsmith report`: the pure pieces, the command, and the page as headless Chromium shows it."""

from __future__ import annotations

import base64
import csv
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from test_cli_score import BOX_AREA, make_dataset

from agent.data.coco import load_coco
from agent.data.demo import generate_demo_dataset
from agent.evaluation.ranking import ERROR_TYPES, image_error_types, load_error_labels, object_error_types
from agent.evaluation.report import (
    Fences,
    build_report,
    count_outliers,
    fences,
    histogram,
    image_reader,
    image_thumbnail,
    object_thumbnail,
    rank_extremes,
    render_html,
    write_report,
)
from agent.metrics.scoring import ScoreRow

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args], capture_output=True, text=True, timeout=300, check=False
    )


# -- pure pieces ----------------------------------------------------------------------------------


def test_fences_are_tukey_fences_of_the_quartiles() -> None:
    bounds = fences([5.0, 1.0, 4.0, 2.0, 3.0])
    assert bounds == Fences(q1=2.0, median=3.0, q3=4.0)
    assert (bounds.moderate_low, bounds.moderate_high) == (-1.0, 7.0)
    assert (bounds.severe_low, bounds.severe_high) == (-3.0, 9.0)
    assert fences([]) is None


def test_outliers_are_counted_on_the_suspicious_side_only() -> None:
    bounds = Fences(q1=2.0, median=3.0, q3=4.0)
    values = [3.0, 5.0, 7.0, 8.0, 9.0, 9.5, 30.0, -2.0, -3.0, -4.0]
    # High: 7 is on the fence (not beyond), 8 and 9 are moderate (9 is on the severe fence), 9.5 and 30 severe.
    high = count_outliers(values, bounds, "high")
    assert (high.moderate, high.severe) == (2, 2)
    low = count_outliers(values, bounds, "low")
    assert (low.moderate, low.severe) == (2, 1)


def test_top_and_bottom_break_ties_by_id_and_never_overlap() -> None:
    scores: dict[int, float | None] = {1: 0.5, 2: 0.9, 3: 0.9, 4: 0.1, 5: None, 6: 0.1, 7: 0.3}
    assert rank_extremes(scores, "high", 2) == ([2, 3], [6, 4])
    assert rank_extremes(scores, "high", 1) == ([2], [6])
    assert rank_extremes(scores, "low", 2) == ([4, 6], [3, 2])
    # Fewer than 2k scored items: the bottom gets what the top left; unscored items are never shown.
    assert rank_extremes(scores, "high", 4) == ([2, 3, 1, 7], [6, 4])
    assert rank_extremes(scores, "high", 10) == ([2, 3, 1, 7, 4, 6], [])
    assert rank_extremes({1: None}, "low", 3) == ([], [])


def test_histogram_holds_every_value_and_every_fence() -> None:
    values = [0.1 * i for i in range(50)] + [20.0]
    bounds = fences(values)
    assert bounds is not None
    drawn = histogram(values, bounds)
    assert sum(bar.count for bar in drawn.bars) == len(values)
    assert all(bar.height > 0 and drawn.top <= bar.y < drawn.baseline for bar in drawn.bars)
    assert max(bar.height for bar in drawn.bars) == pytest.approx(drawn.baseline - drawn.top)
    assert [line.kind for line in drawn.fences] == ["severe", "moderate", "moderate", "severe"]
    assert all(drawn.left <= line.x <= drawn.right for line in drawn.fences)
    # All values equal: still one visible bar.
    constant = histogram([2.0] * 5, Fences(2.0, 2.0, 2.0))
    assert [bar.count for bar in constant.bars] == [5]


def _decode(uri: str) -> np.ndarray:
    prefix = "data:image/jpeg;base64,"
    assert uri.startswith(prefix)
    image = cv2.imdecode(np.frombuffer(base64.b64decode(uri[len(prefix) :]), np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image


def test_thumbnails_are_small_jpegs_and_placeholders_when_there_is_no_image() -> None:
    image = np.full((480, 640, 3), 90, np.uint8)
    crop = object_thumbnail(image, [300.0, 200.0, 40.0, 20.0])
    assert crop.data_uri is not None and crop.note is None
    assert max(crop.width, crop.height) == 160
    assert _decode(crop.data_uri).shape == (crop.height, crop.width, 3)
    whole = image_thumbnail(image, [[0.0, 0.0, 10.0, 10.0]])
    assert (whole.width, whole.height) == (160, 120)
    assert whole.data_uri is not None and len(whole.data_uri) < 20_000
    for missing in (object_thumbnail(None, [1.0, 1.0, 5.0, 5.0]), image_thumbnail(None, [])):
        assert missing.data_uri is None and missing.note == "image missing"
    outside = object_thumbnail(np.zeros((50, 50, 3), np.uint8), [100.0, 100.0, 10.0, 10.0])
    assert outside.data_uri is None and outside.note == "box outside image"


def _tiny_dataset(root: Path) -> Path:
    """Three images: 1.png is real, 2.png is missing, 3.png is not an image. Two boxes each."""
    root.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(root / "1.png"), np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    (root / "3.png").write_bytes(b"not a png")
    images = [{"id": i, "file_name": f"{i}.png", "width": 64, "height": 48} for i in (1, 2, 3)]
    annotations = [
        {"id": 10 * i + k, "image_id": i, "category_id": 1, "bbox": [2 + 20 * k, 2, 10, 10], "area": 100.0}
        for i in (1, 2, 3)
        for k in range(2)
    ]
    path = root / "annotations.json"
    categories = [{"id": 1, "name": "cat<b>"}]  # markup in a name must come out escaped
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def test_missing_and_corrupt_images_become_placeholders(tmp_path: Path) -> None:
    dataset = load_coco(_tiny_dataset(tmp_path / "data"))
    rows = [ScoreRow("boxes", "object", key // 10, key, float(key)) for key in (10, 11, 20, 21, 30)]
    rows.append(ScoreRow("boxes", "object", 3, 31, None, "exception", "boom"))
    rows += [ScoreRow("light", "image", 1, None, 0.5), ScoreRow("light", "image", 2, None, None)]
    report = build_report(dataset, rows, {"boxes": "high", "light": "low"}, top_k=2)
    boxes, light = report.sections
    assert [tile.annotation_id for tile in boxes.top] == [30, 21]
    assert [tile.thumbnail.note for tile in boxes.top] == ["image missing", "image missing"]
    assert [tile.annotation_id for tile in boxes.bottom] == [10, 11]
    assert all(tile.thumbnail.data_uri for tile in boxes.bottom) and boxes.top[0].badges is None
    assert (boxes.n_scored, boxes.n_failed, boxes.n_not_applicable, boxes.n_missing) == (5, 1, 0, 0)
    assert (light.n_scored, light.n_failed, light.n_not_applicable, light.n_missing) == (1, 0, 1, 1)
    html = render_html(report)
    assert html.startswith("<!DOCTYPE html>")
    assert "image missing" in html and "1 failed / not applicable" in html
    assert "cat&lt;b&gt;" in html and "cat<b>" not in html
    assert 'class="badge' not in html and "AUROC" not in html  # no errors file: no badges, no eval tables
    out = tmp_path / "out" / "report.html"
    assert write_report(out, html) == len(html.encode())
    assert [path.name for path in out.parent.iterdir()] == ["report.html"]


# -- the command ----------------------------------------------------------------------------------


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    annotations = _tiny_dataset(tmp_path / "data")
    scores = tmp_path / "scores.csv"
    with scores.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["metric", "level", "image_id", "annotation_id", "score", "error_kind", "error"])
        writer.writerow(["mine", "object", 1, 10, 0.5, "", ""])
    cases = [
        ((), "give at least one --scores FILE or --metric FILE"),
        (("--scores", str(scores)), "unknown SUSPICIOUS direction of metric mine; pass --direction mine=high|low"),
        (("--scores", str(scores), "--direction", "mine=high", "--top", "0"), "must be at least 1"),
        (("--scores", str(tmp_path / "nope.csv"), "--direction", "mine=high"), "No such file"),
    ]
    for extra, message in cases:
        result = run_cli("report", "--annotations", str(annotations), "--out", str(tmp_path / "r.html"), *extra)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], lines
    result = run_cli("report", "--annotations", str(annotations), "--scores", str(scores), "--direction",
                     "mine=high", "--out", str(tmp_path / "r.pdf"))  # fmt: skip
    assert result.returncode == 2 and "name it with .html" in result.stderr
    assert not (tmp_path / "r.html").exists()


def test_report_takes_each_metrics_direction_from_its_score_file(tmp_path: Path) -> None:
    annotations = make_dataset(tmp_path / "data", n_images=2)
    metric = tmp_path / "box_area.py"  # not a built-in: nothing but the score file knows its direction
    metric.write_text(BOX_AREA)
    scores = tmp_path / "scores.jsonl"
    result = run_cli("score", "--annotations", str(annotations), "--metric", str(metric), "--out", str(scores))
    assert result.returncode == 0, result.stderr
    out = tmp_path / "report.html"
    for extra, shown in (((), "low"), (("--direction", "box_area=high"), "high")):
        result = run_cli("report", "--annotations", str(annotations), "--scores", str(scores), "--top", "1",
                         "--out", str(out), *extra)  # fmt: skip
        assert result.returncode == 0, result.stderr
        html = out.read_text()
        assert 'id="metric-box_area"' in html and f"suspicious when <b>{shown}</b>" in html


# -- end to end, in a real browser ----------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """30 demo images scored with two built-ins; one image corrupted before scoring, one deleted after."""
    root = tmp_path_factory.mktemp("report")
    annotations = generate_demo_dataset(root / "demo", n_images=30, seed=7, workers=1)
    images = annotations.parent / "images"
    (images / "000030.jpg").write_bytes(b"corrupt")  # fails scoring: counted as failed
    scores = root / "scores.csv"
    result = run_cli("score", "--annotations", str(annotations), "--metric", "builtin:box_tightness",
                     "--metric", "builtin:brightness", "--workers", "2", "--out", str(scores))  # fmt: skip
    assert result.returncode == 1, result.stderr  # 1: the corrupt image's items failed
    with scores.open(newline="") as handle:
        brightness = [row for row in csv.DictReader(handle) if row["metric"] == "brightness" and row["score"]]
    darkest = min(brightness, key=lambda row: float(row["score"]))  # the top item of a "low" metric
    missing = load_coco(annotations).image_path(int(darkest["image_id"]))
    missing.unlink()  # gone after scoring: its thumbnail must become a placeholder
    out = root / "report.html"
    result = run_cli("report", "--annotations", str(annotations), "--scores", str(scores), "--errors",
                     str(annotations.parent / "errors.json"), "--out", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(rf"wrote {re.escape(str(out))} \(\d+\.\d kB\)\n", result.stderr), result.stderr
    return {"root": root, "annotations": annotations, "scores": scores, "out": out,
            "missing_image": int(darkest["image_id"])}  # fmt: skip


def test_report_is_self_contained_and_small(demo: dict[str, Any]) -> None:
    html = demo["out"].read_text()
    text = re.sub(r"data:image/jpeg;base64,[A-Za-z0-9+/=]+", "", html)
    assert not re.search(r"\b(https?|ftp|file):|//[a-z]", text, flags=re.I)
    sources = re.findall(r'src="([^"]*)"', html)
    assert sources and all(source.startswith("data:image/jpeg;base64,") for source in sources)
    assert "<link" not in html and "@import" not in html and "url(" not in html
    assert len(html.encode()) < 600_000  # 2 metrics x 16 thumbnails


def test_report_scores_metric_files_too(demo: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    result = run_cli("report", "--annotations", str(demo["annotations"]), "--metric", "builtin:object_count",
                     "--top", "3", "--workers", "1", "--out", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    html = out.read_text()
    assert 'id="metric-object_count"' in html and html.count('class="tile"') == 6
    assert 'class="badge' not in html


@pytest.fixture(scope="module")
def browser() -> Any:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is missing: pip install -e '.[test]'")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def _expected_badges(demo: dict[str, Any], figure: dict[str, str | None]) -> list[str]:
    errors = load_error_labels(demo["annotations"].parent / "errors.json")
    if figure["annotation"] is not None:
        types = object_error_types(errors).get(int(figure["annotation"]), frozenset())
    else:
        types = image_error_types(errors).get(int(figure["image"] or 0), frozenset())
    return [t for t in ERROR_TYPES if t in types] or ["clean"]


def test_report_as_seen_in_chromium(demo: dict[str, Any], browser: Any) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))

    def block(route: Any) -> None:
        requests.append(route.request.url)
        route.abort()

    page.route("**/*", block)
    page.set_content(demo["out"].read_text(), wait_until="load")

    # The table of contents links to one visible section per metric.
    assert page.locator("nav#toc a").all_inner_texts() == ["Box tightness (edge alignment)", "Brightness"]
    for name in ("box_tightness", "brightness"):
        section = page.locator(f"section#metric-{name}")
        assert section.is_visible()
        assert "failed / not applicable" in section.inner_text()
        assert "Outliers on the suspicious (low) side" in section.inner_text()
        svg = section.locator("svg.histogram")
        assert svg.is_visible()
        bars = svg.locator("rect.bar")
        assert bars.count() >= 3
        for index in range(bars.count()):
            box = bars.nth(index).bounding_box()
            assert box is not None and box["height"] > 0 and box["width"] > 0
        # A vertical line has a zero-width box, which playwright calls invisible: check its height and stroke.
        fence_lines = svg.locator("line.fence")
        assert fence_lines.count() == 4
        for index in range(4):
            box = fence_lines.nth(index).bounding_box()
            assert box is not None and box["height"] > 50
            style = "l => [getComputedStyle(l).stroke, getComputedStyle(l).strokeWidth]"
            stroke = fence_lines.nth(index).evaluate(style)
            assert stroke[0] not in ("none", "") and stroke[1] == "2px"
        assert section.locator(".tiles.top figure").count() == 8
        assert section.locator(".tiles.bottom figure").count() == 8
        assert re.fullmatch(r"0\.\d{3}|1\.000", section.locator("table.eval tr.metric-row td.ap").inner_text())
    # The corrupt image failed scoring: counted, for brightness once.
    assert "1 failed / not applicable" in page.locator("section#metric-brightness p.counts").inner_text()

    # Every image decoded and is on screen with a real size.
    images = page.locator("img")
    assert images.count() >= 24
    assert page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
    for index in range(images.count()):
        image = images.nth(index)
        image.scroll_into_view_if_needed()
        box = image.bounding_box()
        assert image.is_visible() and box is not None and box["width"] > 20 and box["height"] > 20

    # The image deleted after scoring is the darkest one: first in brightness's top, as a placeholder.
    first = page.locator("section#metric-brightness .tiles.top figure").first
    assert first.get_attribute("data-image-id") == str(demo["missing_image"])
    placeholder = first.locator(".placeholder")
    assert placeholder.is_visible() and placeholder.inner_text() == "image missing"

    # Each thumbnail carries a visible, coloured badge with its true error types.
    figures = page.locator("figure.tile")
    assert figures.count() == 32
    seen_types: set[str] = set()
    for index in range(figures.count()):
        figure = figures.nth(index)
        ids = {"annotation": figure.get_attribute("data-annotation-id"), "image": figure.get_attribute("data-image-id")}
        badges = figure.locator(".badge")
        texts = badges.all_inner_texts()
        assert texts == _expected_badges(demo, ids)
        seen_types.update(texts)
        for badge_index in range(badges.count()):
            badge = badges.nth(badge_index)
            assert badge.is_visible()
            colour = badge.evaluate("b => getComputedStyle(b).backgroundColor")
            assert colour not in ("rgba(0, 0, 0, 0)", "transparent", "rgb(255, 255, 255)")
    assert "clean" in seen_types and len(seen_types) >= 3

    # The summary table: both metrics and the baselines, AP as numbers.
    summary = page.locator("section#summary table")
    assert summary.is_visible()
    names = summary.locator("tbody tr td:first-child").all_inner_texts()
    assert names[:2] == ["box_tightness", "brightness"] and {"random", "combined"} <= set(names[2:])
    assert summary.locator("tbody tr.baseline").count() == len(names) - 2
    for text in summary.locator("tbody td.ap").all_inner_texts():
        assert 0.0 <= float(text) <= 1.0

    # Nothing left the page, and the page is not blank.
    assert [url for url in requests if not url.startswith("data:")] == []
    page.evaluate("window.scrollTo(0, 0)")
    shot = cv2.imdecode(np.frombuffer(page.screenshot(), np.uint8), cv2.IMREAD_COLOR)
    assert shot is not None and shot.shape[:2] == (900, 1280)
    assert float(shot.std()) > 20 and len(np.unique(shot.reshape(-1, 3), axis=0)) > 100
    page.close()


def test_chromium_is_installed_in_ci() -> None:
    """CI installs what the browser test needs with apt, next to the sandbox's packages."""
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert re.search(r"apt-get install .*\bchromium\b", ci)


def test_the_image_cache_holds_no_more_pixels_than_its_bound(tmp_path: Path) -> None:
    # 32 decoded photos of 48 megapixels each took 4.6 GB for a page of thumbnails.
    for bound, kept in ((2 * 320 * 240 * 3, [True, True, False]), (None, [True, True, True])):
        demo = generate_demo_dataset(tmp_path / str(bound), n_images=3, seed=0, width=320, height=240)
        dataset = load_coco(demo)
        ids = [image.id for image in dataset.images]
        read = image_reader(dataset) if bound is None else image_reader(dataset, cache_bytes=bound)  # two images
        assert all(read(image_id) is not None for image_id in ids)
        for image_id in ids:
            Path(dataset.image_path(image_id)).unlink()  # from here on, only what is kept can be read
        assert [read(image_id) is not None for image_id in reversed(ids)] == kept  # the oldest went first
