"""The validation set: a small COCO dataset sampled from the user's, plus the edge cases real data holds.

About 64 items sampled from the dataset (images stratified so every class appears), plus hand-made
edge cases that real datasets hold by the thousand and that break naive code: an image without
boxes, a greyscale image, a 2×2 box, a box touching the border and a box partly outside the image.
The dataset layer accepts that last one with a warning (only a box lying entirely outside is
refused), so it is written unclipped. `agent.authoring.validation` runs candidates on it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import cv2

from agent.data.coco import AnnotationInfo, Dataset, ImageInfo, load_coco

EdgeCaseName = Literal["empty_image", "grey_image", "edge_boxes_image", "tiny_box", "border_box", "partly_outside_box"]
ItemKey = tuple[int, int | None]  # (image_id, annotation_id); annotation_id is None at image level

DEFAULT_SIZE = 64
_TINY_BOX_PX = 2
_EDGE_SOURCE_MIN_PX = 8  # a source box must be this large for its border/outside variants to make sense

_DESCRIPTIONS: dict[str, str] = {
    "empty_image": "the empty image (no annotations)",
    "grey_image": "the greyscale image (grey copied into 3 channels)",
    "edge_boxes_image": "the image holding the tiny, border and partly-outside boxes",
    "tiny_box": "the tiny {w:g}×{h:g} box",
    "border_box": "the box touching the image border",
    "partly_outside_box": "the box partly outside the image",
}


# -- the validation set -----------------------------------------------------------------------------


@dataclass
class ValidationSet:
    """A small COCO dataset on disk, and which of its items are edge cases.

    `library_scores` caches the scores of library metrics on this set by code hash: they are
    trusted and do not change between the repair rounds of one idea, so they are scored once.
    """

    dataset: Dataset
    edge_cases: dict[ItemKey, EdgeCaseName]
    library_scores: dict[str, dict[ItemKey, float | None]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._images = {image.id: image for image in self.dataset.images}
        self._annotations = {annotation.id: annotation for annotation in self.dataset.annotations}
        self._categories = {category.id: category.name for category in self.dataset.categories}
        self._boxes = Counter(annotation.image_id for annotation in self.dataset.annotations)

    def describe(self, image_id: int, annotation_id: int | None) -> str:
        """One phrase a model can act on, e.g. `the tiny 2×2 box at [..] in a 320×240 image (..), class fox`."""
        image = self._images[image_id]
        edge_case = self.edge_cases.get((image_id, annotation_id))
        if annotation_id is None:
            what = _DESCRIPTIONS.get(edge_case or "", "the image")
            boxes = self._boxes[image_id]
            return f"{what} {image.file_name} (image {image_id}, {image.width}×{image.height}, {boxes} boxes)"
        annotation = self._annotations[annotation_id]
        x, y, w, h = annotation.bbox
        if edge_case == "grey_image":
            what = "the box in the greyscale image"
        else:
            what = _DESCRIPTIONS.get(edge_case or "", "the box").format(w=w, h=h)
        category = self._categories.get(annotation.category_id, f"id {annotation.category_id}")
        return (
            f"{what} at [{x:g}, {y:g}, {w:g}, {h:g}] (annotation {annotation_id}) in a {image.width}×{image.height} "
            f"image ({image.file_name}, image {image_id}), class {category}"
        )


def build_validation_set(dataset: Dataset, out_dir: Path, size: int = DEFAULT_SIZE, seed: int = 0) -> ValidationSet:
    """Write a validation set (annotations.json, edge_cases.json, images/) into an empty `out_dir` and load it.

    Sampled images and annotations keep their ids, so an item can be found in the source dataset;
    edge-case images and boxes get new ids above the source's. Images are hard-linked when the file
    system allows it, copied otherwise (never symlinked: the sandbox may read only the set's folder).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty; a validation set needs a folder of its own")
    images_dir = out_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)

    by_image: dict[int, list[AnnotationInfo]] = {image.id: [] for image in dataset.images}
    for annotation in dataset.annotations:
        by_image[annotation.image_id].append(annotation)
    chosen = _sample_images(dataset, by_image, size, seed)
    writer = _SetWriter(dataset, by_image, images_dir)
    for image in chosen:
        writer.add_image(image, _link_or_copy(dataset.image_path(image.id), images_dir, f"{image.id:06d}"))
        writer.annotations.extend(writer.copy_annotation(a, a.id, image.id) for a in by_image[image.id])
    if chosen:
        writer.add_empty_image(chosen[0])
        writer.add_grey_image(chosen[1 % len(chosen)])
        writer.add_edge_boxes(chosen)

    document = {
        "info": {"description": "metricsmith validation set", "source": str(dataset.annotations_path), "seed": seed},
        "images": writer.images,
        "annotations": writer.annotations,
        "categories": [category.model_dump(exclude_none=True) for category in dataset.categories],
    }
    (out_dir / "annotations.json").write_text(json.dumps(document), encoding="utf-8")
    records = [{"name": name, "image_id": key[0], "annotation_id": key[1]} for key, name in writer.edge_cases.items()]
    (out_dir / "edge_cases.json").write_text(json.dumps(records, indent=1), encoding="utf-8")
    return load_validation_set(out_dir)


def load_validation_set(out_dir: Path) -> ValidationSet:
    """Load a set written by `build_validation_set`."""
    out_dir = Path(out_dir)
    dataset = load_coco(out_dir / "annotations.json", out_dir / "images")
    records = json.loads((out_dir / "edge_cases.json").read_text(encoding="utf-8"))
    edge_cases = {(record["image_id"], record["annotation_id"]): record["name"] for record in records}
    return ValidationSet(dataset=dataset, edge_cases=edge_cases)


def _sample_images(
    dataset: Dataset, by_image: dict[int, list[AnnotationInfo]], size: int, seed: int
) -> list[ImageInfo]:
    """Images whose boxes make about `size` items, every class present, chosen by `seed` alone.

    At least size/4 images too, so image-level metrics get a sample worth the name, and at most
    4×size boxes, so a dataset of crowded images does not make validation slow.
    """
    usable = [image for image in dataset.images if dataset.image_path(image.id).is_file()]
    order = sorted(usable, key=lambda image: image.id)
    random.Random(seed).shuffle(order)
    classes = {image.id: {annotation.category_id for annotation in by_image[image.id]} for image in usable}
    chosen: dict[int, ImageInfo] = {}
    covered: set[int] = set()
    for category in sorted(category.id for category in dataset.categories):
        if category in covered:
            continue
        image = next((image for image in order if category in classes[image.id]), None)
        if image is not None:
            chosen[image.id] = image
            covered |= classes[image.id]
    boxes = sum(len(by_image[image_id]) for image_id in chosen)
    for image in order:
        enough = boxes >= size and len(chosen) >= size // 4
        if enough or boxes >= 4 * size or len(chosen) >= size:
            break
        if image.id not in chosen:
            chosen[image.id] = image
            boxes += len(by_image[image.id])
    return sorted(chosen.values(), key=lambda image: image.id)


def _link_or_copy(source: Path, folder: Path, stem: str) -> str:
    name = stem + source.suffix
    target = folder / name
    try:
        os.link(os.path.realpath(source), target)
    except OSError:  # another file system, or links not allowed: 64 copies are cheap
        shutil.copyfile(source, target)
    return name


class _SetWriter:
    """Accumulates the set's COCO records; edge-case records get ids past the source's largest."""

    def __init__(self, dataset: Dataset, by_image: dict[int, list[AnnotationInfo]], images_dir: Path) -> None:
        self.dataset = dataset
        self.by_image = by_image
        self.images_dir = images_dir
        self.images: list[dict[str, object]] = []
        self.annotations: list[dict[str, object]] = []
        self.edge_cases: dict[ItemKey, EdgeCaseName] = {}
        self._next_image = max((image.id for image in dataset.images), default=0) + 1
        self._next_annotation = max((a.id for a in dataset.annotations), default=0) + 1

    def add_image(self, source: ImageInfo, file_name: str, image_id: int | None = None) -> int:
        image_id = source.id if image_id is None else image_id
        self.images.append({"id": image_id, "file_name": file_name, "width": source.width, "height": source.height})
        return image_id

    def _new_image_id(self) -> int:
        self._next_image += 1
        return self._next_image - 1

    def _new_annotation_id(self) -> int:
        self._next_annotation += 1
        return self._next_annotation - 1

    def copy_annotation(self, annotation: AnnotationInfo, annotation_id: int, image_id: int) -> dict[str, object]:
        record = annotation.model_dump(exclude_none=True)
        record.update(id=annotation_id, image_id=image_id)
        return record

    def add_empty_image(self, source: ImageInfo) -> None:
        image_id = self._new_image_id()
        name = _link_or_copy(self.dataset.image_path(source.id), self.images_dir, f"empty_{source.id:06d}")
        self.add_image(source, name, image_id)
        self.edge_cases[(image_id, None)] = "empty_image"

    def add_grey_image(self, source: ImageInfo) -> None:
        bgr = cv2.imread(str(self.dataset.image_path(source.id)), cv2.IMREAD_COLOR)
        if bgr is None or bgr.shape[:2] != (source.height, source.width):
            return  # an unreadable source would only test the image_unreadable path
        grey = cv2.cvtColor(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
        name = f"grey_{source.id:06d}.png"  # lossless, so the channels stay exactly equal
        cv2.imwrite(str(self.images_dir / name), grey)
        image_id = self.add_image(source, name, self._new_image_id())
        self.edge_cases[(image_id, None)] = "grey_image"
        for annotation in self.by_image[source.id]:
            annotation_id = self._new_annotation_id()
            self.annotations.append(self.copy_annotation(annotation, annotation_id, image_id))
            self.edge_cases[(image_id, annotation_id)] = "grey_image"

    def add_edge_boxes(self, chosen: Sequence[ImageInfo]) -> None:
        """A copy of an image holding three odd variants of one of its boxes (and nothing else)."""
        found = next(
            (
                (image, annotation)
                for image in chosen
                for annotation in self.by_image[image.id]
                if min(annotation.bbox[2], annotation.bbox[3]) >= _EDGE_SOURCE_MIN_PX
            ),
            None,
        )
        if found is None:
            return
        source, annotation = found
        width, height = source.width, source.height
        x, y, w, h = annotation.bbox
        w, h = min(w, width), min(h, height)
        y = min(max(y, 0.0), height - h)  # vertically inside, so only the intended side is odd
        centre_x = min(max(round(x + w / 2) - 1, 0), width - _TINY_BOX_PX)
        centre_y = min(max(round(y + h / 2) - 1, 0), height - _TINY_BOX_PX)
        boxes: list[tuple[EdgeCaseName, list[float]]] = [
            ("tiny_box", [float(centre_x), float(centre_y), float(_TINY_BOX_PX), float(_TINY_BOX_PX)]),
            ("border_box", [0.0, y, w, h]),
            # Half of it past the right border: a warning for the dataset layer, not an error.
            ("partly_outside_box", [width - w / 2, y, w, h]),
        ]
        image_id = self._new_image_id()
        name = _link_or_copy(self.dataset.image_path(source.id), self.images_dir, f"edge_boxes_{source.id:06d}")
        self.add_image(source, name, image_id)
        self.edge_cases[(image_id, None)] = "edge_boxes_image"
        for edge_case, bbox in boxes:
            annotation_id = self._new_annotation_id()
            self.annotations.append(
                {
                    "id": annotation_id,
                    "image_id": image_id,
                    "category_id": annotation.category_id,
                    "bbox": bbox,
                    "area": bbox[2] * bbox[3],
                    "iscrowd": 0,
                }
            )
            self.edge_cases[(image_id, annotation_id)] = edge_case
