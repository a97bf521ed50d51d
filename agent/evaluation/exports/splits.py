"""Stratified train/val/test splits, balanced along metrics (quantile bins) and classes, as COCO files.

Each image falls in a stratum: its most frequent class (0 for an image without boxes) and, per
chosen metric, the quantile bin (`BINS` of them) of the image's value: an image metric's score, an
object metric's most suspicious box, or the triage suspicion itself (`triage`). Each stratum's
images are shuffled (seeded) and dealt out so that every split's running count stays at its share
(largest remainder), so each split holds about its share of every stratum.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agent.errors import UserError
from agent.evaluation.ranking import MetricScores, pool_to_images, suspicion
from agent.evaluation.triage import TriageResult

__all__ = ["BINS", "DEFAULT_SHARES", "assign_splits", "image_values", "write_splits"]

BINS = 4
DEFAULT_SHARES = {"train": 0.8, "val": 0.1, "test": 0.1}


def image_values(
    result: TriageResult, metrics: Sequence[MetricScores], annotation_image: Mapping[int, int], names: Sequence[str]
) -> dict[str, dict[int, float]]:
    """Per chosen name, each image's suspicion value on it (higher = more suspicious); unscored images absent."""
    by_name = {metric.name: metric for metric in metrics}
    values: dict[str, dict[int, float]] = {}
    for name in names:
        if name == "triage":
            values[name] = {item.image_id: item.suspicion for item in result.images}
            continue
        metric = by_name.get(name)
        if metric is None:
            raise UserError(f"--split-metric {name}: no such metric among {', '.join(['triage', *by_name])}")
        scores = metric.scores
        if metric.level == "object":
            scores = pool_to_images(scores, annotation_image, metric.direction)
        keys = list(scores)
        shown = suspicion([scores[key] for key in keys], metric.direction)
        values[name] = {key: float(v) for key, v in zip(keys, shown.tolist(), strict=True) if np.isfinite(v)}
    return values


def _bins(values: Mapping[int, float], images: Sequence[int]) -> dict[int, int]:
    """Each image's quantile bin 0..BINS-1 (an image without a value: bin -1)."""
    known = np.array(sorted(values.values()))
    out = {}
    for image_id in images:
        if image_id not in values:
            out[image_id] = -1
            continue
        below = np.searchsorted(known, values[image_id], side="left")
        out[image_id] = min(BINS - 1, int(BINS * below / max(len(known), 1)))
    return out


def assign_splits(
    images: Sequence[int],
    image_classes: Mapping[int, Sequence[int]],
    values: Mapping[str, Mapping[int, float]],
    shares: Mapping[str, float] = DEFAULT_SHARES,
    seed: int = 0,
) -> dict[int, str]:
    """Each image's split."""
    bins = {name: _bins(per_image, images) for name, per_image in values.items()}
    strata: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for image_id in images:
        classes = Counter(image_classes.get(image_id, ()))
        main = min(classes, key=lambda c: (-classes[c], c)) if classes else 0
        strata[(main, *(bins[name][image_id] for name in sorted(bins)))].append(image_id)
    rng = np.random.default_rng(seed)
    names = list(shares)
    target = np.array([shares[name] for name in names])
    counts = np.zeros(len(names))  # over all strata, so small strata don't all round to train
    assigned: dict[int, str] = {}
    for key in sorted(strata):
        members = sorted(strata[key])
        for index in rng.permutation(len(members)).tolist():
            total = counts.sum() + 1
            pick = int(np.argmax(target * total - counts))
            counts[pick] += 1
            assigned[members[index]] = names[pick]
    return assigned


def write_splits(folder: Path, document: dict[str, Any], assigned: Mapping[int, str]) -> list[Path]:
    """One COCO file per split (the user's document, cut to the split's images), and splits.json."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name in dict.fromkeys(assigned.values()):
        images = [image for image in document["images"] if assigned.get(image["id"]) == name]
        ids = {image["id"] for image in images}
        annotations = [a for a in document["annotations"] if a["image_id"] in ids]
        path = folder / f"{name}.json"
        path.write_text(json.dumps({**document, "images": images, "annotations": annotations}), encoding="utf-8")
        written.append(path)
    summary = folder / "splits.json"
    summary.write_text(json.dumps({str(k): v for k, v in sorted(assigned.items())}, indent=0), encoding="utf-8")
    return [*written, summary]
