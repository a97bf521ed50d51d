"""The COCO dataset layer: load one annotations file, check it, and serve plain dicts to metrics.

Loading is all-or-nothing for errors and lenient for oddities. Every record is validated on its own,
so one broken record never hides the next, and every error in the file is raised together in one
`DatasetInvalid`: a user fixing a file by hand should not have to rerun once per mistake. Things that
are odd but usable (boxes spilling over the border, missing image files) become warnings on the
loaded `Dataset`.

Metric code never sees the pydantic models. It receives the plain, JSON-ready dicts built by
`Dataset.objects_of` and `Dataset.scene`, whose shape is part of the user-facing contract.
"""

from __future__ import annotations

import gc
import json
import math
import re
from collections.abc import Container, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from agent.errors import UserError

_SECTIONS = ("images", "annotations", "categories")
# A box may poke out of its image by up to this many pixels without a warning: exporters round
# coordinates, and a box ending at x=640.4 on a 640-wide image is not worth anyone's attention.
_BORDER_TOLERANCE_PX = 1.0
_SHOWN_VALUE_MAX = 60
# A JSON syntax error quotes this many characters of its line on each side of the error position.
_JSON_CONTEXT_CHARS = 30
_JSON_MARKER = "<<HERE>>"


Severity = Literal["error", "warning"]


class Problem(BaseModel):
    """One thing wrong with a dataset, located precisely enough to find it in the JSON file."""

    model_config = ConfigDict(frozen=True)

    severity: Severity
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


class DatasetInvalid(UserError):
    """Raised with ALL error-severity problems at once (not just the first)."""

    def __init__(self, path: Path, problems: list[Problem]) -> None:
        self.path = path
        self.problems = problems
        count = len(problems)
        if count == 0:
            summary = f"{path}: this COCO file is unusable"
        else:
            noun = "problem makes" if count == 1 else "problems make"
            summary = f"{path}: {count} {noun} this COCO file unusable; first: {problems[0]}"
        super().__init__(summary)

    def details(self, limit: int = 20) -> list[str]:
        """One line per problem, cut after `limit` lines with a count of the rest."""
        limit = max(limit, 0)
        lines = [str(problem) for problem in self.problems[:limit]]
        hidden = len(self.problems) - limit
        if hidden > 0:
            lines.append(f"... and {hidden} more")
        return lines


def _whole_number(value: Any) -> Any:
    # Some exporters (pandas, MATLAB) write every number as a float; 3.0 is still the integer 3.
    # Strings and booleans are left alone so the strict integer check below rejects them.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _crowd_flag(value: Any) -> Any:
    # Files written without crowd regions often omit iscrowd or write null; both mean "not a crowd".
    # Python-made files sometimes write the flag as true/false, which is unambiguous too.
    if value is None:
        return 0
    if isinstance(value, bool):
        return int(value)
    return _whole_number(value)


# Strict so that "57" or true are reported rather than silently coerced: a string id would never
# match the integer image_id that points at it. At most 2**63 - 1: score files hold ids as 64-bit
# integers (Parquet's int64, and the JSON writer's), so a larger one is refused here, said plainly.
_PositiveInt = Annotated[int, BeforeValidator(_whole_number), Field(strict=True, gt=0, le=2**63 - 1)]
_FiniteNumber = Annotated[float, Field(strict=True, allow_inf_nan=False)]


def _usable_file_name(name: str) -> str:
    """A file name that a path can hold: no NUL, at most 4096 bytes, no part over 255 (Linux's limits).

    Refused here, where the message names the image; at the file system it was an error about no image.
    """
    if "\x00" in name:
        raise ValueError("holds a NUL character, which no file name can")
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > _PATH_BYTES:
        raise ValueError(f"is {size} bytes long; a path holds at most {_PATH_BYTES}")
    longest = max(len(part.encode("utf-8", "surrogatepass")) for part in name.split("/"))
    if longest > _NAME_BYTES:
        raise ValueError(f"has a part of {longest} bytes; a file or folder name holds at most {_NAME_BYTES}")
    return name


_PATH_BYTES, _NAME_BYTES = 4096, 255


class ImageInfo(BaseModel):
    """One entry of `images`. Fields beyond the four used here (license, coco_url, ...) are kept."""

    model_config = ConfigDict(frozen=True, extra="allow")

    id: _PositiveInt
    file_name: Annotated[str, Field(min_length=1), AfterValidator(_usable_file_name)]
    width: _PositiveInt
    height: _PositiveInt


class CategoryInfo(BaseModel):
    """One entry of `categories`."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    id: _PositiveInt
    name: str
    supercategory: str | None = None


def _freeze_json(value: Any) -> Any:
    """Lists become tuples, all the way down; a flat list of numbers in one C-level step."""
    if isinstance(value, list):
        if value and isinstance(value[0], list | dict):
            return tuple(_freeze_json(item) for item in value)
        return tuple(value)
    if isinstance(value, dict):
        return {key: _freeze_json(item) for key, item in value.items()}
    return value


class AnnotationInfo(BaseModel):
    """One entry of `annotations`; `area` is always set (w*h when the file has none)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    id: _PositiveInt
    image_id: _PositiveInt
    category_id: _PositiveInt
    bbox: tuple[_FiniteNumber, _FiniteNumber, _FiniteNumber, _FiniteNumber]
    area: _FiniteNumber
    iscrowd: Annotated[int, BeforeValidator(_crowd_flag), Field(strict=True)] = 0
    # Polygons or RLE; None means the file had no segmentation. Lists are frozen into tuples once,
    # here, so every consumer can share them instead of copying thousands of points each time.
    segmentation: Annotated[Any, AfterValidator(_freeze_json)] = None

    @model_validator(mode="before")
    @classmethod
    def _area_from_box(cls, data: Any) -> Any:
        # Box-only exports often omit area; w*h is what COCO evaluation would use for a box.
        if isinstance(data, dict) and data.get("area") is None:
            return {**data, "area": _box_area(data.get("bbox"))}
        return data


def _box_area(bbox: Any) -> float:
    if (
        isinstance(bbox, list)
        and len(bbox) == 4
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in bbox)
        and math.isfinite(bbox[2] * bbox[3])
    ):
        return float(bbox[2] * bbox[3])
    # The bbox itself is reported by its own field check; a second complaint about area would
    # only be noise, so stand in a harmless value.
    return 0.0


@dataclass(frozen=True)
class Dataset:
    """A loaded, checked COCO dataset. Lookups by image id are O(1) via indexes built on creation.

    `annotations_path` is absolute and `image_root` fully resolved, so paths stay valid whatever the
    working directory later is. Unknown image ids raise `KeyError`.
    """

    annotations_path: Path
    image_root: Path
    images: tuple[ImageInfo, ...]
    categories: tuple[CategoryInfo, ...]
    annotations: tuple[AnnotationInfo, ...]
    warnings: tuple[Problem, ...] = ()
    _images_by_id: dict[int, ImageInfo] = field(init=False, repr=False, compare=False, hash=False)
    _category_names: dict[int, str] = field(init=False, repr=False, compare=False, hash=False)
    _annotations_by_image: dict[int, list[AnnotationInfo]] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        images_by_id: dict[int, ImageInfo] = {}
        for image in self.images:
            images_by_id.setdefault(image.id, image)
        category_names: dict[int, str] = {}
        for category in self.categories:
            category_names.setdefault(category.id, category.name)
        by_image: dict[int, list[AnnotationInfo]] = {image_id: [] for image_id in images_by_id}
        for annotation in self.annotations:
            by_image.setdefault(annotation.image_id, []).append(annotation)
        # The dataclass is frozen so that nobody swaps its contents; the indexes are derived data.
        object.__setattr__(self, "_images_by_id", images_by_id)
        object.__setattr__(self, "_category_names", category_names)
        object.__setattr__(self, "_annotations_by_image", by_image)

    def __repr__(self) -> str:
        # The generated repr would print every record; a dataset ends up in logs and tracebacks.
        return (
            f"Dataset({str(self.annotations_path)!r}, {len(self.images)} images, "
            f"{len(self.categories)} categories, {len(self.annotations)} annotations, "
            f"{len(self.warnings)} warnings)"
        )

    def _image(self, image_id: int) -> ImageInfo:
        try:
            return self._images_by_id[image_id]
        except KeyError:
            raise KeyError(f"no image with id {image_id} in {self.annotations_path}") from None

    def image_path(self, image_id: int) -> Path:
        """`image_root / file_name`; the root is already resolved, so this touches no file system."""
        return self.image_root / self._image(image_id).file_name

    def annotation_ids(self, image_id: int) -> list[int]:
        """The ids of the image's annotations in file order: the order of `objects_of`."""
        self._image(image_id)
        return [annotation.id for annotation in self._annotations_by_image[image_id]]

    def objects_of(self, image_id: int) -> list[dict[str, Any]]:
        """Fresh plain dicts for the image's annotations in file order; `[]` when it has none."""
        self._image(image_id)
        names = self._category_names
        return [
            _object_dict(annotation, names.get(annotation.category_id, ""))
            for annotation in self._annotations_by_image[image_id]
        ]

    def scene(self, image_id: int) -> dict[str, Any]:
        """The image, all its objects and every category of the dataset, as fresh plain dicts."""
        image = self._image(image_id)
        return {
            "image": {
                "id": image.id,
                "file_name": image.file_name,
                "width": image.width,
                "height": image.height,
            },
            "annotations": self.objects_of(image_id),
            "categories": [_category_dict(category) for category in self.categories],
        }


def _object_dict(annotation: AnnotationInfo, category_name: str) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "id": annotation.id,
        "image_id": annotation.image_id,
        "category_id": annotation.category_id,
        "category": category_name,
        "bbox": list(annotation.bbox),
        "area": annotation.area,
        "iscrowd": annotation.iscrowd,
    }
    segmentation = annotation.segmentation
    if segmentation is not None:
        # Polygons are frozen tuples and shared; an RLE dict gets a fresh dict around frozen counts.
        obj["segmentation"] = dict(segmentation) if isinstance(segmentation, dict) else segmentation
    return obj


def _category_dict(category: CategoryInfo) -> dict[str, Any]:
    result: dict[str, Any] = {"id": category.id, "name": category.name}
    if category.supercategory is not None:
        result["supercategory"] = category.supercategory
    return result


def default_image_root(annotations_path: Path) -> Path:
    """Where the images of a COCO file are looked for when no root is given.

    The JSON's own folder, unless that folder has an `images/` subfolder and the first image's
    `file_name` is not a file directly in the JSON's folder: then `images/`. Both layouts are common
    (`data/instances.json` + `data/*.jpg`, or `data/annotations.json` + `data/images/*.jpg`), and
    checking one real file name settles which one a folder uses without listing it. When the file
    has no usable first image, an existing `images/` wins. The JSON is read only when an `images/`
    folder exists, since otherwise the answer does not depend on it.
    """
    json_dir = _json_dir(Path(annotations_path))
    if not (json_dir / "images").is_dir():
        return json_dir
    document = read_coco_json(Path(annotations_path))
    first_name: str | None = None
    if isinstance(document, dict):
        images = document.get("images")
        if isinstance(images, list) and images and isinstance(images[0], dict):
            name = images[0].get("file_name")
            first_name = name if isinstance(name, str) and name else None
    return _choose_image_root(json_dir, first_name)


def _json_dir(annotations_path: Path) -> Path:
    # absolute(), not resolve(), on the file: a symlinked annotations file is meant to be read
    # together with the images next to the link, not next to its target.
    return annotations_path.absolute().parent.resolve()


def _choose_image_root(json_dir: Path, first_file_name: str | None) -> Path:
    images_dir = json_dir / "images"
    if not images_dir.is_dir():
        return json_dir
    if first_file_name and (json_dir / first_file_name).is_file():
        return json_dir
    # Resolved like a root given explicitly: `inject` writes `images` as a symlink, and a dataset read back
    # with this root must name the same root as one made from it (triage, selftest) with the root given.
    return images_dir.resolve()


def load_coco(annotations_path: Path, image_root: Path | None = None) -> Dataset:
    """Read and check a COCO annotations file; the file is only ever opened for reading.

    Raises `UserError` when the file cannot be read or is not JSON, and `DatasetInvalid` with every
    error found when its content is unusable. `image_root` defaults to `default_image_root`.
    """
    annotations_path = Path(annotations_path)
    explicit_root = _explicit_root(Path(image_root)) if image_root is not None else None
    with _gc_paused():
        return _load(annotations_path, explicit_root)


@contextmanager
def _gc_paused() -> Iterator[None]:
    # Parsing and validating a large file creates millions of containers, none of them garbage, and
    # the cyclic collector would rescan them all again and again: pausing it saves about a third of
    # the load time on 100k annotations.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def coco_from_document(document: Any, annotations_path: Path, image_root: Path | None = None) -> Dataset:
    """`load_coco` for a document already parsed (or made, as `inject` makes one) from `annotations_path`.

    `annotations_path` names the document in messages and, without `image_root`, locates the images.
    """
    explicit_root = _explicit_root(Path(image_root)) if image_root is not None else None
    with _gc_paused():
        return _dataset(document, Path(annotations_path), explicit_root)


def _load(annotations_path: Path, explicit_root: Path | None) -> Dataset:
    return _dataset(read_coco_json(annotations_path), annotations_path, explicit_root)


def _dataset(document: Any, annotations_path: Path, explicit_root: Path | None) -> Dataset:
    raw_images, raw_annotations, raw_categories = _top_level_lists(document, annotations_path)

    problems: list[Problem] = []
    images, image_ids = _check_images(raw_images, problems)
    categories, category_ids = _check_categories(raw_categories, problems)
    images_by_id: dict[int, ImageInfo] = {}
    for _, image in images:
        images_by_id.setdefault(image.id, image)
    annotations = _check_annotations(raw_annotations, images_by_id, image_ids, category_ids, problems)

    errors = [problem for problem in problems if problem.severity == "error"]
    if errors:
        raise DatasetInvalid(annotations_path, errors)

    if explicit_root is not None:
        root = explicit_root
    else:
        first_name = images[0][1].file_name if images else None
        root = _choose_image_root(_json_dir(annotations_path), first_name)
    # Only now, with the file known to be usable, is it worth touching the disk once per image.
    _check_image_files(raw_images, images, root, problems)

    return Dataset(
        annotations_path=annotations_path.absolute(),
        image_root=root,
        images=tuple(image for _, image in images),
        categories=tuple(category for _, category in categories),
        annotations=tuple(annotations),
        warnings=tuple(problems),
    )


def _explicit_root(image_root: Path) -> Path:
    if not image_root.exists():
        raise UserError(f"image root does not exist: {image_root}")
    if not image_root.is_dir():
        raise UserError(f"image root is not a directory: {image_root}")
    return image_root.resolve()


def read_coco_json(path: Path) -> Any:
    """The parsed JSON of a COCO file, or a UserError naming the file and what is wrong (before any schema check)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"COCO annotations file not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a directory, not a COCO annotations JSON file") from None
    except PermissionError:
        raise UserError(f"cannot read {path}: permission denied") from None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not data.strip():
        raise UserError(f"{path} is empty, expected a COCO annotations JSON file")
    try:
        # NaN and Infinity literals become non-finite floats on purpose: the field checks then
        # report them with the record and field they sit in, which a parse error could not do.
        document = json.loads(data, parse_constant=float)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON: {describe_json_error(exc)}") from None
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{path} is not readable text ({exc.encoding} decoding failed at byte {exc.start}: {exc.reason})"
        ) from None
    except RecursionError:
        raise UserError(f"{path} is nested too deeply to be a COCO annotations file") from None
    # A surrogate can only come from a \uD800-\uDFFF escape or from its UTF-8 bytes (ED A0-BF ..): when neither
    # is in the file, no string in it needs the walk.
    if _SURROGATE_ESCAPE.search(data) or _SURROGATE_BYTES.search(data):
        where = _lone_surrogate_at(document)
        if where is not None:
            raise UserError(
                f"{path}: {where} holds a lone UTF-16 surrogate (a \\uD800-\\uDFFF escape without its pair), "
                "which is not text; fix or remove that character"
            )
    return document


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE_BYTES = re.compile(rb"\xed[\xa0-\xbf]")


def _lone_surrogate_at(value: Any, where: str = "") -> str | None:
    """Where the first string (or key) holding a lone surrogate sits, as `categories[0].name`; None if nowhere.

    A surrogate pair written as two escapes decodes to one character outside the range: only a lone one is left.
    """
    if isinstance(value, str):
        return (where or "the top level") if any("\ud800" <= char <= "\udfff" for char in value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            inner = f"{where}.{key}" if where else str(key)
            if any("\ud800" <= char <= "\udfff" for char in key):
                return f"a key in {where or 'the top level'}"
            found = _lone_surrogate_at(item, inner)
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if isinstance(item, str | dict | list):
                found = _lone_surrogate_at(item, f"{where}[{index}]")
                if found is not None:
                    return found
    return None


def describe_json_error(exc: json.JSONDecodeError) -> str:
    """`MESSAGE at line L, column C: ...text<<HERE>>text...`, for any JSON file the user gave us."""
    # json's "Unterminated string starting at" and "Invalid control character at" already end in "at".
    message = exc.msg.removesuffix(" at")
    return f"{message} at line {exc.lineno}, column {exc.colno}: {_json_error_context(exc.doc, exc.pos)}"


def _json_error_context(document: str, position: int) -> str:
    """The text of the error's line around `position`, on one line, with `<<HERE>>` where the error is.

    COCO exporters often write the whole file on one line, so "column 14860" alone leaves the user
    counting characters. About `_JSON_CONTEXT_CHARS` characters are quoted on each side, never from
    another line, and `...` says the line goes on. The marker is plain ASCII so that it shows the same
    on every terminal. Characters that would break the one-line message or the terminal (newlines,
    tabs, control characters, lone surrogates from a file decoded as the wrong encoding) are shown as
    Python escapes such as \\t.
    """
    position = min(max(position, 0), len(document))
    line_start = document.rfind("\n", 0, position) + 1
    line_end = document.find("\n", position)
    if line_end == -1:
        line_end = len(document)
    elif line_end == position:
        # The error IS the newline (an unescaped line break inside a string): show it, not the next line.
        line_end += 1
    start = max(line_start, position - _JSON_CONTEXT_CHARS)
    end = min(line_end, position + _JSON_CONTEXT_CHARS)
    before = ("..." if start > line_start else "") + _visible(document[start:position])
    after = _visible(document[position:end]) + ("..." if end < line_end else "")
    if position == len(document):
        after = " (end of file)"
    return f"{before}{_JSON_MARKER}{after}"


def _visible(text: str) -> str:
    return "".join(char if char.isprintable() else char.encode("unicode_escape").decode("ascii") for char in text)


def _top_level_lists(document: Any, path: Path) -> tuple[list[Any], list[Any], list[Any]]:
    if not isinstance(document, dict):
        hint = " (a detection results file? a full COCO dataset file is needed)" if isinstance(document, list) else ""
        message = f"expected a JSON object with images, annotations and categories, got {_json_kind(document)}"
        raise DatasetInvalid(path, [_error("top level", message + hint)])
    problems: list[Problem] = []
    for key in _SECTIONS:
        if key not in document:
            problems.append(_error("top level", f"missing the '{key}' list"))
        elif not isinstance(document[key], list):
            problems.append(_error("top level", f"'{key}' must be a list, got {_json_kind(document[key])}"))
    if problems:
        raise DatasetInvalid(path, problems)
    return document["images"], document["annotations"], document["categories"]


_ModelT = TypeVar("_ModelT", bound=BaseModel)


def _validate_records(
    records: list[Any], section: str, model: type[_ModelT], problems: list[Problem]
) -> tuple[list[tuple[int, _ModelT]], dict[int, int]]:
    """Validate each record separately; return the valid ones with their index, and id -> first index.

    The id map also holds records that failed validation for other reasons, so an annotation that
    points at an image with, say, a bad width is not reported a second time as pointing nowhere.
    """
    valid: list[tuple[int, _ModelT]] = []
    first_index: dict[int, int] = {}
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            where = _where(section, index, record)
            problems.append(_error(where, f"expected a JSON object, got {_json_kind(record)}"))
            continue
        record_id = _whole_number(record.get("id"))
        if type(record_id) is int and record_id > 0:
            earlier = first_index.setdefault(record_id, index)
            if earlier != index:
                first = _where(section, earlier, records[earlier])
                problems.append(_error(_where(section, index, record), f"id {record_id} is already used by {first}"))
        try:
            item = model.model_validate(record)
        except ValidationError as exc:
            where = _where(section, index, record)
            problems.extend(_error(where, message) for message in _schema_messages(exc))
            continue
        valid.append((index, item))
    return valid, first_index


def _check_images(records: list[Any], problems: list[Problem]) -> tuple[list[tuple[int, ImageInfo]], dict[int, int]]:
    images, ids = _validate_records(records, "images", ImageInfo, problems)
    _warn_shared_values(records, "images", [(index, image.file_name) for index, image in images], "file_name", problems)
    return images, ids


def _check_categories(
    records: list[Any], problems: list[Problem]
) -> tuple[list[tuple[int, CategoryInfo]], dict[int, int]]:
    categories, ids = _validate_records(records, "categories", CategoryInfo, problems)
    # Metrics see categories by name, so two categories sharing one would be indistinguishable there.
    named = [(index, category.name) for index, category in categories]
    _warn_shared_values(records, "categories", named, "name", problems)
    return categories, ids


def _warn_shared_values(
    records: list[Any], section: str, values: list[tuple[int, str]], field_name: str, problems: list[Problem]
) -> None:
    """A warning for each record whose `field_name` repeats an earlier record's."""
    first_index: dict[str, int] = {}
    for index, value in values:
        earlier = first_index.setdefault(value, index)
        if earlier != index:
            first = _where(section, earlier, records[earlier])
            problems.append(_warning(_where(section, index, records[index]), f"{field_name} is also used by {first}"))


def _check_annotations(
    records: list[Any],
    images: Mapping[int, ImageInfo],
    image_ids: Container[int],
    category_ids: Container[int],
    problems: list[Problem],
) -> list[AnnotationInfo]:
    annotations, _ = _validate_records(records, "annotations", AnnotationInfo, problems)
    for index, annotation in annotations:
        found: list[tuple[Severity, str]] = []
        if annotation.image_id not in image_ids:
            found.append(("error", f"image_id {annotation.image_id} does not match any image"))
        if annotation.category_id not in category_ids:
            found.append(("error", f"category_id {annotation.category_id} does not match any category"))
        _, _, w, h = annotation.bbox
        if w <= 0:
            found.append(("error", f"bbox has non-positive width (w={w:g})"))
        if h <= 0:
            found.append(("error", f"bbox has non-positive height (h={h:g})"))
        image = images.get(annotation.image_id)
        if w > 0 and h > 0 and image is not None:
            placement = _box_placement(annotation.bbox, image)
            if placement is not None:
                found.append(placement)
        if annotation.segmentation is not None and _has_non_finite(annotation.segmentation):
            found.append(("error", "segmentation contains a non-finite number (NaN or Infinity)"))
        if found:
            # The location is only spelled out for the few records that need it; 100k f-strings
            # for clean records would be wasted time.
            where = _where("annotations", index, records[index])
            problems.extend(Problem(severity=severity, where=where, message=message) for severity, message in found)

    missing_area = sum(1 for record in records if isinstance(record, dict) and record.get("area") is None)
    if missing_area:
        # One summary instead of one line per annotation: box-only files omit area everywhere.
        noun = "annotation has" if missing_area == 1 else "annotations have"
        problems.append(_warning("annotations", f"{missing_area} {noun} no area; using w*h of the bbox"))
    return [annotation for _, annotation in annotations]


def _box_placement(bbox: tuple[float, float, float, float], image: ImageInfo) -> tuple[Severity, str] | None:
    """An error for a box with no overlap with its image, a warning for one spilling past its border."""
    x, y, w, h = bbox
    width, height = image.width, image.height
    if x >= width or y >= height or x + w <= 0 or y + h <= 0:
        return "error", f"{_show_box(bbox)} lies entirely outside {_show_image(image)}"
    overshoot = {"left": -x, "top": -y, "right": x + w - width, "bottom": y + h - height}
    # Nearly every box fits; decide that before building any message text.
    if max(overshoot.values()) <= _BORDER_TOLERANCE_PX:
        return None
    sides = [f"{amount:g} px on the {side}" for side, amount in overshoot.items() if amount > _BORDER_TOLERANCE_PX]
    return "warning", f"{_show_box(bbox)} extends past {_show_image(image)} by {', '.join(sides)}"


def _show_box(bbox: tuple[float, float, float, float]) -> str:
    return "bbox [" + ", ".join(f"{value:g}" for value in bbox) + "]"


def _show_image(image: ImageInfo) -> str:
    return f"image {image.id} ({image.width}x{image.height})"


def _has_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, list | tuple):
        if value and isinstance(value[0], list | tuple | dict):
            return any(_has_non_finite(item) for item in value)
        try:
            # Fast path for a flat polygon or RLE counts: one C-level pass, no Python recursion.
            return not all(map(math.isfinite, value))
        except TypeError:
            return any(_has_non_finite(item) for item in value)
    if isinstance(value, dict):
        return any(_has_non_finite(item) for item in value.values())
    return False


def _check_image_files(
    records: list[Any], images: list[tuple[int, ImageInfo]], root: Path, problems: list[Problem]
) -> None:
    checked: set[str] = set()
    missing: list[Problem] = []
    for index, image in images:
        if image.file_name in checked:
            continue
        checked.add(image.file_name)
        path = root / image.file_name
        if not path.is_file():
            missing.append(_warning(_where("images", index, records[index]), f"image file not found: {path}"))
    if len(checked) > 1 and len(missing) == len(checked):  # one line for a wrong folder, not one per image
        first = root / images[0][1].file_name
        missing = [
            _warning("images", f"none of the {len(checked)} image files is in {root} (the first would be {first})")
        ]
    problems.extend(missing)


def _error(where: str, message: str) -> Problem:
    return Problem(severity="error", where=where, message=message)


def _warning(where: str, message: str) -> Problem:
    return Problem(severity="warning", where=where, message=message)


def _where(section: str, index: int, record: Any) -> str:
    """`annotations[12] (id 57)`, `images[3] (id 4, 'a.jpg')` or `categories[0] (id 1, 'person')`."""
    if not isinstance(record, dict) or "id" not in record:
        return f"{section}[{index}]"
    label = f"id {_show(record['id'])}"
    name = record.get({"images": "file_name", "categories": "name"}.get(section, ""))
    if isinstance(name, str):
        label += f", {name if len(name) <= 80 else name[:50] + '...' + name[-20:]!r}"  # a line, not a page
    return f"{section}[{index}] ({label})"


def _schema_messages(exc: ValidationError) -> list[str]:
    """Pydantic's errors rephrased for someone editing the JSON file: field, rule, offending value."""
    messages: list[str] = []
    for error in exc.errors(include_url=False):
        loc = error["loc"]
        kind = error["type"]
        value = error.get("input")
        field_name = _field_label(loc)
        # pydantic reports a short bbox as one "missing" error per absent item and a long one as
        # "too_long"; either way the user needs one line saying how many numbers there were.
        wrong_length = loc[:1] == ("bbox",) and (
            kind in ("too_short", "too_long") or (kind == "missing" and len(loc) == 2)
        )
        if wrong_length:
            length_line = f"bbox must have 4 numbers [x, y, w, h], got {len(value)}"
            if length_line not in messages:
                messages.append(length_line)
        elif kind == "missing":
            messages.append(f"missing required field '{field_name}'")
        elif kind == "finite_number" or (isinstance(value, float) and not math.isfinite(value)):
            messages.append(f"{field_name} is not a finite number (got {_show(value)})")
        elif kind in ("int_type", "int_from_float", "int_parsing"):
            messages.append(f"{field_name} must be an integer, got {_show(value)}")
        elif kind == "greater_than" and error.get("ctx", {}).get("gt") == 0:
            messages.append(f"{field_name} must be positive, got {_show(value)}")
        elif kind == "less_than_equal" and error.get("ctx", {}).get("le") == 2**63 - 1:
            messages.append(f"{field_name} must fit in 64 bits (at most 2**63 - 1), got {_show(value)}")
        elif kind in ("float_type", "float_parsing"):
            messages.append(f"{field_name} must be a number, got {_show(value)}")
        elif kind in ("tuple_type", "list_type") and loc == ("bbox",):
            messages.append(f"bbox must be a list of 4 numbers [x, y, w, h], got {_show(value)}")
        elif kind == "string_type":
            messages.append(f"{field_name} must be a string, got {_show(value)}")
        elif kind == "string_too_short":
            messages.append(f"{field_name} must not be empty")
        elif kind == "value_error":  # our own validators' messages, whole sentences about the value
            messages.append(f"{field_name} {error['ctx']['error']}")
        else:
            messages.append(f"{field_name}: {error['msg']} (got {_show(value)})")
    return messages


def _field_label(loc: tuple[int | str, ...]) -> str:
    label = ""
    for part in loc:
        label += f"[{part}]" if isinstance(part, int) else (f".{part}" if label else str(part))
    return label or "record"


def _show(value: Any) -> str:
    # JSON spelling (null, true, NaN, "text"), because that is what the user sees in the file.
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    if len(text) > _SHOWN_VALUE_MAX:
        text = text[: _SHOWN_VALUE_MAX - 3] + "..."
    return text


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"
