"""What a dataset holds, in numbers a model can be told: classes, box sizes, images, sample annotations.

Computed from the loaded dataset (`dataset_facts`), rendered as short text for prompts (`facts_text`).
Deterministic: the same annotations give the same facts, so a replayed prompt is the same prompt.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from agent.data.coco import Dataset

__all__ = [
    "BoxesPerImage",
    "ClassCount",
    "DatasetFacts",
    "Quantiles",
    "SampleAnnotation",
    "SizeCount",
    "compact_number",
    "dataset_facts",
    "facts_text",
]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def compact_number(value: Any) -> str:
    """Compact numbers for prompts: 12.0 -> "12", 0.123456 -> "0.1235", 1234567.0 -> "1.235e+06"."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if float(value).is_integer() and abs(value) < 1e9:
        return str(int(value))
    return f"{value:.4g}"


class Quantiles(_Frozen):
    """Distribution summary (linear interpolation, as numpy's default)."""

    min: float
    p05: float
    p25: float
    median: float
    p75: float
    p95: float
    max: float


class ClassCount(_Frozen):
    id: int
    name: str
    boxes: int
    images: int


class SizeCount(_Frozen):
    width: int
    height: int
    images: int


class SampleAnnotation(_Frozen):
    """One annotation as a metric sees it (segmentation summarised), with its image's size."""

    id: int
    image_id: int
    category_id: int
    category: str
    bbox: tuple[float, float, float, float]
    area: float
    iscrowd: int
    has_segmentation: bool
    image_width: int
    image_height: int


class BoxesPerImage(_Frozen):
    min: int
    median: float
    max: int
    share_without_boxes: float


class DatasetFacts(_Frozen):
    """Facts about a dataset computed from its annotations (no image is read). Deterministic."""

    images: int
    annotations: int
    classes: tuple[ClassCount, ...]
    image_sizes: tuple[SizeCount, ...]  # every distinct size, most frequent first
    boxes_per_image: BoxesPerImage
    box_width: Quantiles | None  # pixels; None when there are no annotations
    box_height: Quantiles | None
    box_area: Quantiles | None
    relative_width: Quantiles | None  # box width / image width
    relative_height: Quantiles | None
    relative_area: Quantiles | None
    aspect_ratio: Quantiles | None  # width / height
    with_segmentation: int
    crowd: int
    samples: tuple[SampleAnnotation, ...]


def _round(value: float) -> float:
    # Four significant digits: enough to reason about, and stable against float noise across platforms.
    return float(f"{value:.4g}")


def _quantiles(values: Sequence[float]) -> Quantiles | None:
    finite = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
    if finite.size == 0:
        return None
    q = np.quantile(finite, [0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0])
    return Quantiles(**dict(zip(Quantiles.model_fields, (_round(float(v)) for v in q), strict=True)))


def _spread(indices: int, count: int) -> list[int]:
    """`count` indices spread evenly over range(indices): first, ..., last."""
    if indices <= count:
        return list(range(indices))
    return sorted({round(i * (indices - 1) / (count - 1)) for i in range(count)}) if count > 1 else [0]


def dataset_facts(dataset: Dataset, samples: int = 3) -> DatasetFacts:
    """Counts, sizes and distributions of `dataset`'s annotations, and `samples` example annotations."""
    images_by_id = {image.id: image for image in dataset.images}
    names = {category.id: category.name for category in dataset.categories}
    boxes = Counter(annotation.category_id for annotation in dataset.annotations)
    image_sets: dict[int, set[int]] = {}
    per_image = Counter(annotation.image_id for annotation in dataset.annotations)
    for annotation in dataset.annotations:
        image_sets.setdefault(annotation.category_id, set()).add(annotation.image_id)
    classes = tuple(
        ClassCount(id=c.id, name=c.name, boxes=boxes[c.id], images=len(image_sets.get(c.id, ())))
        for c in sorted(dataset.categories, key=lambda c: c.id)
    )
    sizes = Counter((image.width, image.height) for image in dataset.images)
    image_sizes = tuple(
        SizeCount(width=w, height=h, images=n) for (w, h), n in sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0]))
    )
    counts = [per_image.get(image.id, 0) for image in dataset.images]
    boxes_per_image = BoxesPerImage(
        min=min(counts, default=0),
        median=_round(float(np.median(counts))) if counts else 0.0,
        max=max(counts, default=0),
        share_without_boxes=_round(sum(1 for c in counts if c == 0) / len(counts)) if counts else 0.0,
    )

    widths, heights, areas, rel_w, rel_h, rel_a, ratios = [], [], [], [], [], [], []
    for annotation in dataset.annotations:
        _, _, w, h = annotation.bbox
        image = images_by_id[annotation.image_id]
        widths.append(w)
        heights.append(h)
        areas.append(w * h)
        rel_w.append(w / image.width)
        rel_h.append(h / image.height)
        rel_a.append(w * h / (image.width * image.height))
        if h > 0:
            ratios.append(w / h)

    ordered = sorted(dataset.annotations, key=lambda a: a.id)
    chosen = [ordered[i] for i in _spread(len(ordered), samples)] if samples > 0 else []
    return DatasetFacts(
        images=len(dataset.images),
        annotations=len(dataset.annotations),
        classes=classes,
        image_sizes=image_sizes,
        boxes_per_image=boxes_per_image,
        box_width=_quantiles(widths),
        box_height=_quantiles(heights),
        box_area=_quantiles(areas),
        relative_width=_quantiles(rel_w),
        relative_height=_quantiles(rel_h),
        relative_area=_quantiles(rel_a),
        aspect_ratio=_quantiles(ratios),
        with_segmentation=sum(1 for a in dataset.annotations if a.segmentation is not None),
        crowd=sum(1 for a in dataset.annotations if a.iscrowd),
        samples=tuple(
            SampleAnnotation(
                id=a.id,
                image_id=a.image_id,
                category_id=a.category_id,
                category=names.get(a.category_id, ""),
                bbox=a.bbox,
                area=a.area,
                iscrowd=a.iscrowd,
                has_segmentation=a.segmentation is not None,
                image_width=images_by_id[a.image_id].width,
                image_height=images_by_id[a.image_id].height,
            )
            for a in chosen
        ),
    )


def _show_quantiles(q: Quantiles | None, compact: bool) -> str:
    if q is None:
        return "none"
    if compact:
        shown = {"min": q.min, "p5": q.p05, "median": q.median, "p95": q.p95, "max": q.max}
        return ", ".join(f"{label} {compact_number(value)}" for label, value in shown.items())
    parts = ("min", "p05", "p25", "median", "p75", "p95", "max")
    labels = {"p05": "p5"}
    return ", ".join(f"{labels.get(p, p)} {compact_number(getattr(q, p))}" for p in parts)


def _show_sample(s: SampleAnnotation) -> str:
    bbox = ", ".join(compact_number(v) for v in s.bbox)
    segmentation = ", segmentation" if s.has_segmentation else ""
    return (
        f'id {s.id}, image {s.image_id} ({s.image_width}x{s.image_height}), "{s.category}", '
        f"bbox [{bbox}], area {compact_number(s.area)}, iscrowd {s.iscrowd}{segmentation}"
    )


def facts_text(facts: DatasetFacts, *, compact: bool = False, max_classes: int = 30) -> str:
    """The facts as short lines of text for a prompt. `compact`: fewer quantiles, one sample (for small models)."""
    lines = [f"{facts.images} images, {facts.annotations} annotations, {len(facts.classes)} classes"]
    shown = facts.classes[:max_classes]
    classes = "; ".join(f"{c.name} {c.boxes} boxes in {c.images} images" for c in shown)
    if len(facts.classes) > len(shown):
        classes += f"; and {len(facts.classes) - len(shown)} more"
    lines.append(f"classes: {classes}")
    sizes = ", ".join(f"{s.width}x{s.height} ({s.images})" for s in facts.image_sizes[:5])
    if len(facts.image_sizes) > 5:
        sizes += f", and {len(facts.image_sizes) - 5} other sizes"
    lines.append(f"image sizes: {sizes}")
    b = facts.boxes_per_image
    lines.append(
        f"boxes per image: min {b.min}, median {compact_number(b.median)}, max {b.max}; "
        f"{compact_number(round(100 * b.share_without_boxes, 1))}% of images have none"
    )
    rows = [
        ("box width px", facts.box_width),
        ("box height px", facts.box_height),
        ("box area px", facts.box_area),
        ("box width / image width", facts.relative_width),
        ("box height / image height", facts.relative_height),
        ("box area / image area", facts.relative_area),
        ("aspect ratio w/h", facts.aspect_ratio),
    ]
    if compact:
        rows = [rows[0], rows[1], rows[5], rows[6]]
    lines.extend(f"{label}: {_show_quantiles(q, compact)}" for label, q in rows)
    lines.append(f"with segmentation: {facts.with_segmentation} of {facts.annotations}; crowd: {facts.crowd}")
    samples = facts.samples[:1] if compact else facts.samples
    if samples:
        lines.append("sample annotations:" if len(samples) > 1 else "sample annotation:")
        lines.extend(f"  {_show_sample(s)}" for s in samples)
    return "\n".join(lines)
