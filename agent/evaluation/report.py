"""`metricsmith report`: one self-contained HTML page showing what each metric flags, and why.

Two steps. `build_report` turns score rows, the dataset and, when known, the injected errors into
plain data: IQR fences and outlier counts, histogram geometry, the most and least suspicious items
with their thumbnails already encoded, and the eval tables of `agent.evaluation.ranking.evaluate`.
`render_html` fills the jinja2 template `templates/report.html.j2` (autoescaped) with it.

The page fetches nothing: CSS and SVG are inline and thumbnails are base64 JPEG `data:` URIs, so the
file can be mailed or archived and still shows everything. Thumbnails are at most `THUMB_PX` on
their long side, which keeps a report of 15 metrics at a few MB. An image that is missing or does
not decode becomes a grey "image missing" placeholder: a report about bad data must survive bad
data.
"""

from __future__ import annotations

import base64
import functools
import math
import os
import secrets
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import jinja2
import numpy as np
from numpy.typing import NDArray

from agent.data.coco import Dataset
from agent.errors import UserError
from agent.evaluation.ranking import (
    DEFAULT_BUDGET,
    ERROR_TYPES,
    Direction,
    ErrorLabel,
    EvaluationReport,
    MetricEvaluation,
    MetricScores,
    error_types,
    evaluate,
    ground_truth,
    image_error_types,
    object_error_types,
    scores_from_rows,
    suspicion,
)
from agent.evaluation.selftest import WEAK_LIFT, BestForType, Figure, MetricFigures, SelftestReport, best_by_type
from agent.evaluation.triage import TriageItem
from agent.metrics.contract import MetricSpec
from agent.metrics.scoring import ScoreRow

BGRImage = NDArray[np.uint8]
ImageReader = Callable[[int], BGRImage | None]

MODERATE_IQR = 1.5
SEVERE_IQR = 2.5
THUMB_PX = 160
JPEG_QUALITY = 80
# Context around a box in its crop: this share of the box's long side on each side, at least CONTEXT_MIN_PX.
CONTEXT_SHARE = 0.3
CONTEXT_MIN_PX = 8
_BOX_BGR = (0, 230, 255)  # the item's box: yellow
_OTHER_BOX_BGR = (255, 200, 0)  # the other boxes of its image: cyan
_TEMPLATES = Path(__file__).resolve().parent / "templates"


# -- statistics -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fences:
    """Quartiles and Tukey fences: moderate at 1.5 IQR beyond the quartiles, severe at 2.5 IQR."""

    q1: float
    median: float
    q3: float

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    @property
    def moderate_low(self) -> float:
        return self.q1 - MODERATE_IQR * self.iqr

    @property
    def moderate_high(self) -> float:
        return self.q3 + MODERATE_IQR * self.iqr

    @property
    def severe_low(self) -> float:
        return self.q1 - SEVERE_IQR * self.iqr

    @property
    def severe_high(self) -> float:
        return self.q3 + SEVERE_IQR * self.iqr


def fences(values: Sequence[float]) -> Fences | None:
    """Quartiles (linear interpolation, numpy's default) of the values; None when there are none."""
    if not values:
        return None
    q1, median, q3 = np.percentile(np.asarray(values, dtype=np.float64), [25, 50, 75]).tolist()
    return Fences(q1=q1, median=median, q3=q3)


@dataclass(frozen=True, slots=True)
class Outliers:
    """Outliers on the suspicious side: moderate lie between the two fences, severe beyond the severe one."""

    moderate: int
    severe: int


def count_outliers(values: Iterable[float], bounds: Fences, direction: Direction) -> Outliers:
    """Count the values past the moderate fence (but not the severe one) and past the severe fence."""
    array = np.asarray(list(values), dtype=np.float64)
    if direction == "high":
        beyond_moderate, beyond_severe = array > bounds.moderate_high, array > bounds.severe_high
    else:
        beyond_moderate, beyond_severe = array < bounds.moderate_low, array < bounds.severe_low
    return Outliers(moderate=int(np.sum(beyond_moderate & ~beyond_severe)), severe=int(np.sum(beyond_severe)))


def rank_extremes(scores: Mapping[int, float | None], direction: Direction, k: int) -> tuple[list[int], list[int]]:
    """The k most suspicious keys (most suspicious first) and the k least (least suspicious first).

    Only finite scores take part. Ties are broken by key: among equals the smaller key ranks as the
    more suspicious, so the top takes the smallest keys of a tied block and the bottom the largest.
    The two lists never share a key; with fewer than 2k items the bottom gets what the top left.
    """
    keys = [key for key, value in scores.items() if value is not None and math.isfinite(value)]
    values = suspicion([scores[key] for key in keys], direction)
    order = [keys[index] for index in sorted(range(len(keys)), key=lambda i: (-values[i], keys[i]))]
    top = order[:k]
    bottom = order[max(k, len(order) - k) :][::-1]
    return top, bottom


# -- histogram ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    count: int
    low: float
    high: float


@dataclass(frozen=True, slots=True)
class FenceLine:
    x: float
    value: float
    kind: Literal["moderate", "severe"]
    label: str


@dataclass(frozen=True, slots=True)
class Tick:
    x: float
    label: str


@dataclass(frozen=True, slots=True)
class Histogram:
    """Everything the template needs to draw one SVG histogram, in SVG user units."""

    width: int
    height: int
    left: float
    right: float
    top: float
    baseline: float
    max_count: int
    bars: tuple[Bar, ...]
    fences: tuple[FenceLine, ...]
    ticks: tuple[Tick, ...]


_SVG_W, _SVG_H = 640, 190
_MARGIN_LEFT, _MARGIN_RIGHT, _MARGIN_TOP, _MARGIN_BOTTOM = 44.0, 30.0, 22.0, 28.0


def histogram(values: Sequence[float], bounds: Fences, bins: int | None = None) -> Histogram:
    """Bins over the data and all four fences, so that every fence line falls inside the plot."""
    array = np.asarray(values, dtype=np.float64)
    lines = [
        (bounds.severe_low, "severe", f"−{SEVERE_IQR:g}×IQR"),
        (bounds.moderate_low, "moderate", f"−{MODERATE_IQR:g}×IQR"),
        (bounds.moderate_high, "moderate", f"+{MODERATE_IQR:g}×IQR"),
        (bounds.severe_high, "severe", f"+{SEVERE_IQR:g}×IQR"),
    ]
    low = min(float(array.min()), bounds.severe_low)
    high = max(float(array.max()), bounds.severe_high)
    if not high > low:  # every value equal (then the IQR is 0 too)
        low, high = low - 0.5, high + 0.5
    n_bins = bins or int(np.clip(math.ceil(math.sqrt(array.size)), 10, 40))
    counts, edges = np.histogram(array, bins=n_bins, range=(low, high))
    left, right = _MARGIN_LEFT, _SVG_W - _MARGIN_RIGHT
    top, baseline = _MARGIN_TOP, _SVG_H - _MARGIN_BOTTOM

    def x_of(value: float) -> float:
        return round(left + (value - low) / (high - low) * (right - left), 2)

    max_count = int(counts.max())
    bars = []
    for count, lo, hi in zip(counts.tolist(), edges[:-1].tolist(), edges[1:].tolist(), strict=True):
        if count == 0:
            continue
        bar_height = round(count / max_count * (baseline - top), 2)
        x0, x1 = x_of(lo), x_of(hi)
        bars.append(Bar(x=x0, y=round(baseline - bar_height, 2), width=max(round(x1 - x0 - 1, 2), 1.0),
                        height=bar_height, count=count, low=lo, high=hi))  # fmt: skip
    fence_lines = tuple(
        FenceLine(x=x_of(value), value=value, kind=kind, label=label)  # type: ignore[arg-type]
        for value, kind, label in lines
    )
    ticks = tuple(Tick(x=x_of(value), label=f"{value:.4g}") for value in np.linspace(low, high, 5).tolist())
    return Histogram(
        width=_SVG_W, height=_SVG_H, left=left, right=right, top=top, baseline=baseline,
        max_count=max_count, bars=tuple(bars), fences=fence_lines, ticks=ticks,
    )  # fmt: skip


# -- thumbnails -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Thumbnail:
    """A JPEG `data:` URI, or (data_uri None) a grey placeholder saying `note`."""

    data_uri: str | None
    width: int
    height: int
    note: str | None = None


def placeholder(note: str = "image missing") -> Thumbnail:
    return Thumbnail(data_uri=None, width=THUMB_PX, height=THUMB_PX * 3 // 4, note=note)


def encode_jpeg(image: BGRImage) -> Thumbnail:
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        return placeholder("image not encodable")
    data = base64.b64encode(buffer.tobytes()).decode("ascii")
    return Thumbnail(data_uri=f"data:image/jpeg;base64,{data}", width=image.shape[1], height=image.shape[0])


def _fit(image: BGRImage, size: int) -> tuple[BGRImage, float]:
    """The image scaled so its long side is `size` (up or down), and the scale used."""
    height, width = image.shape[:2]
    scale = size / max(height, width)
    shape = (max(1, round(width * scale)), max(1, round(height * scale)))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return np.ascontiguousarray(cv2.resize(image, shape, interpolation=interpolation)), scale


def _draw_box(
    canvas: BGRImage,
    bbox: Sequence[float],
    origin: tuple[float, float],
    scale: float,
    colour: tuple[int, int, int],
    thickness: int,
) -> None:
    x, y, w, h = bbox
    top_left = (round((x - origin[0]) * scale), round((y - origin[1]) * scale))
    bottom_right = (round((x + w - origin[0]) * scale), round((y + h - origin[1]) * scale))
    cv2.rectangle(canvas, top_left, bottom_right, colour, thickness, lineType=cv2.LINE_AA)


def object_thumbnail(
    image: BGRImage | None, bbox: Sequence[float], others: Iterable[Sequence[float]] = (), size: int = THUMB_PX
) -> Thumbnail:
    """A crop around the box with some context, the box drawn in yellow and the image's other boxes in cyan."""
    if image is None:
        return placeholder()
    height, width = image.shape[:2]
    x, y, w, h = bbox
    margin = max(CONTEXT_MIN_PX, CONTEXT_SHARE * max(w, h))
    x0, y0 = max(0, math.floor(x - margin)), max(0, math.floor(y - margin))
    x1, y1 = min(width, math.ceil(x + w + margin)), min(height, math.ceil(y + h + margin))
    if x1 <= x0 or y1 <= y0:
        return placeholder("box outside image")
    canvas, scale = _fit(image[y0:y1, x0:x1], size)
    for other in others:
        _draw_box(canvas, other, (x0, y0), scale, _OTHER_BOX_BGR, 1)
    _draw_box(canvas, bbox, (x0, y0), scale, _BOX_BGR, 2)
    return encode_jpeg(canvas)


def image_thumbnail(image: BGRImage | None, boxes: Iterable[Sequence[float]], size: int = THUMB_PX) -> Thumbnail:
    """The whole image downscaled, every box drawn."""
    if image is None:
        return placeholder()
    canvas, scale = _fit(image, size)
    for bbox in boxes:
        _draw_box(canvas, bbox, (0, 0), scale, _BOX_BGR, 1)
    return encode_jpeg(canvas)


def image_reader(dataset: Dataset, cache_size: int = 32, cache_bytes: int = 256 * 1024 * 1024) -> ImageReader:
    """Decode images by id (BGR), None when missing or corrupt; the last few are kept for reuse across metrics.

    At most `cache_size` images and `cache_bytes` of pixels are kept: 32 decoded 48-megapixel photos took
    4.6 GB for a report of thumbnails.
    """
    kept: OrderedDict[int, BGRImage | None] = OrderedDict()

    def decode(image_id: int) -> BGRImage | None:
        # Bytes first, then imdecode: cv2.imread would print a warning for every missing file.
        try:
            data = np.fromfile(dataset.image_path(image_id), dtype=np.uint8)
        except (OSError, ValueError):
            return None
        if data.size == 0:
            return None
        image = cv2.imdecode(data, cv2.IMREAD_COLOR)
        return image if image is not None and image.size else None

    def read(image_id: int) -> BGRImage | None:
        if image_id in kept:
            kept.move_to_end(image_id)
            return kept[image_id]
        image = decode(image_id)
        kept[image_id] = image
        held = sum(0 if other is None else other.nbytes for other in kept.values())
        while len(kept) > 1 and (len(kept) > cache_size or held > cache_bytes):
            _, dropped = kept.popitem(last=False)
            held -= 0 if dropped is None else dropped.nbytes
        return image

    return read


# -- report data ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tile:
    """One item shown as a thumbnail with its caption; `badges` is None when no errors file was given."""

    thumbnail: Thumbnail
    score: float
    file_name: str
    image_id: int
    annotation_id: int | None
    category: str | None
    n_boxes: int
    badges: tuple[str, ...] | None


@dataclass(frozen=True, slots=True)
class TriageTile:
    """A box at the top of the triage queue: its thumbnail, its place in the queue, why it is there."""

    thumbnail: Thumbnail
    item: TriageItem
    badges: tuple[str, ...] | None


@dataclass(frozen=True, slots=True)
class MetricSection:
    name: str
    title: str
    description: str | None
    level: str
    direction: Direction
    n_items: int
    n_scored: int
    n_failed: int
    n_not_applicable: int
    n_missing: int
    fences: Fences | None
    outliers: Outliers | None
    histogram: Histogram | None
    evaluation: MetricEvaluation | None
    baseline: MetricEvaluation | None
    selftest: MetricFigures | None  # its figures in the selftest given, if any
    top: tuple[Tile, ...]
    bottom: tuple[Tile, ...]

    @property
    def anchor(self) -> str:
        return f"metric-{self.name}"


@dataclass(frozen=True, slots=True)
class Report:
    annotations: str
    n_images: int
    n_annotations: int
    top_k: int
    sections: tuple[MetricSection, ...]
    evaluation: EvaluationReport | None
    error_types: tuple[str, ...]
    selftest: SelftestReport | None = None
    selftest_types: tuple[str, ...] = ()
    selftest_best: tuple[BestForType, ...] = ()  # per error type, the metric with the highest lift
    triage: tuple[TriageTile, ...] = ()  # the top of `metricsmith triage`'s box queue
    triage_method: str | None = None

    @property
    def weak_lift(self) -> float:
        return WEAK_LIFT

    @property
    def metric_names(self) -> frozenset[str]:
        """The metrics that have a section; other rows of the eval tables are baselines."""
        return frozenset(section.name for section in self.sections)


def build_report(
    dataset: Dataset,
    rows: Sequence[ScoreRow],
    directions: Mapping[str, Direction],
    *,
    errors: Sequence[ErrorLabel] | None = None,
    specs: Mapping[str, MetricSpec] | None = None,
    top_k: int = 8,
    read_image: ImageReader | None = None,
    selftest: SelftestReport | None = None,
    triage: Sequence[TriageItem] = (),
) -> Report:
    """The report's data. `errors` None means no errors file: no badges and no eval tables.

    `selftest` (what `metricsmith selftest --json` wrote, for this dataset) adds its table and, in
    each metric's section, that metric's figures: estimates on injected errors. `triage` (the items of
    a triage.jsonl of this dataset) adds the top `top_k` * 2 boxes of its queue, with their reasons.
    """
    if top_k < 1:
        raise UserError(f"--top must be at least 1, got {top_k}")
    metrics = scores_from_rows(rows, directions)
    if not metrics:
        raise UserError("no score rows to report on; the scores files are empty")
    specs = specs or {}
    read_image = read_image or image_reader(dataset)
    evaluation = None
    if errors is not None:
        evaluation = evaluate(ground_truth(dataset, errors), metrics, budget=DEFAULT_BUDGET)
    failed: dict[str, int] = {}
    not_applicable: dict[str, int] = {}
    for row in rows:
        if row.error_kind is not None or (row.score is not None and not math.isfinite(row.score)):
            failed[row.metric] = failed.get(row.metric, 0) + 1
        elif row.score is None:
            not_applicable[row.metric] = not_applicable.get(row.metric, 0) + 1
    tiles = _TileMaker(dataset, read_image, errors)
    sections = []
    for metric in metrics:
        n_items = len(dataset.annotations) if metric.level == "object" else len(dataset.images)
        spec = specs.get(metric.name)
        rows_seen = len(metric.scores)
        sections.append(
            _section(
                metric,
                spec,
                tiles,
                top_k,
                n_items=n_items,
                n_failed=failed.get(metric.name, 0),
                n_not_applicable=not_applicable.get(metric.name, 0),
                n_missing=max(0, n_items - rows_seen),
                evaluation=evaluation,
                selftest=selftest,
            )
        )
    return Report(
        annotations=str(dataset.annotations_path),
        n_images=len(dataset.images),
        n_annotations=len(dataset.annotations),
        top_k=top_k,
        sections=tuple(sections),
        evaluation=evaluation,
        error_types=tuple(error_types(errors or ())),
        selftest=selftest,
        selftest_types=tuple(t for t in ERROR_TYPES if selftest is not None and t in selftest.errors_by_type),
        selftest_best=tuple(best_by_type(selftest)) if selftest is not None else (),
        triage=tuple(_triage_tiles(dataset, triage, read_image, errors, 2 * top_k)),
        triage_method=triage[0].method if triage else None,
    )


def _triage_tiles(
    dataset: Dataset,
    items: Sequence[TriageItem],
    read_image: ImageReader,
    errors: Sequence[ErrorLabel] | None,
    count: int,
) -> list[TriageTile]:
    boxes = [item for item in items if item.level == "object"]
    if items and not boxes:
        raise UserError("the triage file holds no boxes: it is not a triage.jsonl of `metricsmith triage`")
    # Ids alone match across datasets (1, 2, 3 ...): each box must be the same box here, on the same image.
    here = {annotation.id: annotation for annotation in dataset.annotations}
    names = {image.id: image.file_name for image in dataset.images}
    classes = {category.id: category.name for category in dataset.categories}
    for item in boxes:
        annotation = here.get(item.annotation_id)  # type: ignore[arg-type]
        if annotation is None:
            what = "not in this dataset"
        elif annotation.image_id != item.image_id or names.get(item.image_id) != item.file_name:
            what = f"on {item.file_name} there, on {names.get(annotation.image_id)} here"
        elif classes.get(annotation.category_id, str(annotation.category_id)) != item.category:
            what = f"a {item.category} there, a {classes.get(annotation.category_id)} here"
        else:
            continue
        raise UserError(
            f"the triage file names annotation {item.annotation_id}, {what}: is it a triage of another dataset?"
        )
    types = object_error_types(errors or ())
    tiles = []
    for item in sorted(boxes, key=lambda item: item.rank)[:count]:
        assert item.annotation_id is not None and item.bbox is not None
        others = [obj["bbox"] for obj in dataset.objects_of(item.image_id) if obj["id"] != item.annotation_id]
        thumbnail = object_thumbnail(read_image(item.image_id), item.bbox, others)
        badges = None if errors is None else _badges(types.get(item.annotation_id, frozenset()))
        tiles.append(TriageTile(thumbnail=thumbnail, item=item, badges=badges))
    return tiles


def _section(
    metric: MetricScores,
    spec: MetricSpec | None,
    tiles: _TileMaker,
    top_k: int,
    *,
    n_items: int,
    n_failed: int,
    n_not_applicable: int,
    n_missing: int,
    evaluation: EvaluationReport | None,
    selftest: SelftestReport | None,
) -> MetricSection:
    values = [value for value in metric.scores.values() if value is not None and math.isfinite(value)]
    bounds = fences(values)
    top, bottom = rank_extremes(metric.scores, metric.direction, top_k)
    mine = baseline = None
    if evaluation is not None:
        mine = next((row for row in evaluation.metrics if row.metric == metric.name), None)
        baseline = next((r for r in evaluation.metrics if r.metric == "random" and r.level == metric.level), None)
    description = spec.description.strip().splitlines()[0] if spec is not None else None
    figures = None
    if selftest is not None:
        figures = next((f for f in selftest.metrics if f.metric == metric.name and f.level == metric.level), None)
    return MetricSection(
        name=metric.name,
        title=(spec.title if spec is not None and spec.title else metric.name),
        description=description,
        level=metric.level,
        direction=metric.direction,
        n_items=n_items,
        n_scored=len(values),
        n_failed=n_failed,
        n_not_applicable=n_not_applicable,
        n_missing=n_missing,
        fences=bounds,
        outliers=count_outliers(values, bounds, metric.direction) if bounds else None,
        histogram=histogram(values, bounds) if bounds else None,
        evaluation=mine,
        baseline=baseline,
        selftest=figures,
        top=tuple(tiles.tile(metric, key) for key in top),
        bottom=tuple(tiles.tile(metric, key) for key in bottom),
    )


class _TileMaker:
    """Builds the tile of an item (an annotation id or an image id) of a metric."""

    def __init__(self, dataset: Dataset, read_image: ImageReader, errors: Sequence[ErrorLabel] | None) -> None:
        self.dataset, self.read_image, self.errors = dataset, read_image, errors
        self.images = {image.id: image for image in dataset.images}
        self.annotations = {annotation.id: annotation for annotation in dataset.annotations}
        self.categories = {category.id: category.name for category in dataset.categories}
        self.object_types = object_error_types(errors or ())
        self.image_types = image_error_types(errors or ())

    def tile(self, metric: MetricScores, key: int) -> Tile:
        score = metric.scores[key]
        assert score is not None  # rank_extremes only returns scored keys
        if metric.level == "object":
            annotation = self.annotations[key]
            image_id = annotation.image_id
            boxes = [obj["bbox"] for obj in self.dataset.objects_of(image_id) if obj["id"] != key]
            thumbnail = object_thumbnail(self.read_image(image_id), annotation.bbox, boxes)
            types = self.object_types.get(key, frozenset())
            category = self.categories.get(annotation.category_id, str(annotation.category_id))
            n_boxes = 1
        else:
            image_id = key
            boxes = [obj["bbox"] for obj in self.dataset.objects_of(image_id)]
            thumbnail = image_thumbnail(self.read_image(image_id), boxes)
            types = self.image_types.get(key, frozenset())
            category, n_boxes = None, len(boxes)
        return Tile(
            thumbnail=thumbnail,
            score=score,
            file_name=self.images[image_id].file_name,
            image_id=image_id,
            annotation_id=key if metric.level == "object" else None,
            category=category,
            n_boxes=n_boxes,
            badges=None if self.errors is None else _badges(types),
        )


def _badges(types: frozenset[str]) -> tuple[str, ...]:
    if not types:
        return ("clean",)
    known = [t for t in ERROR_TYPES if t in types]
    return (*known, *sorted(types - set(known)))


# -- HTML -----------------------------------------------------------------------------------------


def _number(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}g}"


def _fixed(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _figure(figure: Figure) -> str:
    if figure.mean is None:
        return "–"
    return f"{figure.mean:.3f} ± {figure.spread:.3f}" if figure.spread else f"{figure.mean:.3f}"


def _lift(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


@functools.cache
def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["num"] = _number
    environment.filters["fixed"] = _fixed
    environment.filters["figure"] = _figure
    environment.filters["lift"] = _lift
    return environment


def render_html(report: Report) -> str:
    """The report as one self-contained HTML page."""
    return _environment().get_template("report.html.j2").render(report=report, budget_pct=f"{DEFAULT_BUDGET:.0%}")


def write_report(path: Path, html: str) -> int:
    """Write the page atomically (a temporary file beside it, then a rename); returns its size in bytes."""
    data = html.encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with temporary.open("xb") as handle:  # a plain open, so the file gets the usual umask permissions
            handle.write(data)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return len(data)


def human_size(n_bytes: int) -> str:
    if n_bytes < 1000:
        return f"{n_bytes} B"
    if n_bytes < 1_000_000:
        return f"{n_bytes / 1e3:.1f} kB"
    return f"{n_bytes / 1e6:.1f} MB"
