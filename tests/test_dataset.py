"""The COCO dataset layer, exercised on real files written to a temporary folder."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from agent.data.coco import DatasetInvalid, Problem, coco_from_document, default_image_root, load_coco
from agent.errors import UserError


def _write_image(path: Path, width: int, height: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.zeros((height, width, 3), dtype=np.uint8))


def _write_json(path: Path, document: Any) -> Path:
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def _valid_document() -> dict[str, Any]:
    return {
        "info": {"description": "tiny"},
        "images": [
            {"id": 1, "file_name": "a.jpg", "width": 64, "height": 48, "license": 3},
            {"id": 2, "file_name": "b.jpg", "width": 32, "height": 32},
        ],
        "categories": [
            {"id": 1, "name": "cat", "supercategory": "animal"},
            {"id": 2, "name": "dog"},
        ],
        "annotations": [
            {
                "id": 10,
                "image_id": 1,
                "category_id": 1,
                "bbox": [1, 2, 10, 20],
                "area": 150.5,
                "iscrowd": 0,
                "segmentation": [[1, 2, 11, 2, 11, 22]],
            },
            # No area and no iscrowd: filled with w*h and 0.
            {"id": 11, "image_id": 1, "category_id": 2, "bbox": [5.5, 6, 4, 3]},
            {"id": 12, "image_id": 2, "category_id": 2, "bbox": [0, 0, 32, 32], "area": 1024, "iscrowd": 1},
        ],
    }


@pytest.fixture
def coco_dir(tmp_path: Path) -> Path:
    """A folder with annotations.json next to its two images."""
    _write_image(tmp_path / "a.jpg", 64, 48)
    _write_image(tmp_path / "b.jpg", 32, 32)
    _write_json(tmp_path / "annotations.json", _valid_document())
    return tmp_path


def _invalid(tmp_path: Path, document: Any) -> DatasetInvalid:
    path = _write_json(tmp_path / "annotations.json", document)
    with pytest.raises(DatasetInvalid) as info:
        load_coco(path)
    return info.value


def _messages(err: DatasetInvalid) -> list[str]:
    return [str(problem) for problem in err.problems]


def test_valid_dataset_round_trip(coco_dir: Path) -> None:
    dataset = load_coco(coco_dir / "annotations.json")

    assert dataset.image_root == coco_dir.resolve()
    assert dataset.image_path(1) == coco_dir.resolve() / "a.jpg"
    assert [image.id for image in dataset.images] == [1, 2]
    assert dataset.images[0].model_extra == {"license": 3}
    assert [str(w) for w in dataset.warnings] == ["annotations: 1 annotation has no area; using w*h of the bbox"]

    assert dataset.objects_of(1) == [
        {
            "id": 10,
            "image_id": 1,
            "category_id": 1,
            "category": "cat",
            "bbox": [1.0, 2.0, 10.0, 20.0],
            "area": 150.5,
            "iscrowd": 0,
            "segmentation": ((1, 2, 11, 2, 11, 22),),
        },
        {
            "id": 11,
            "image_id": 1,
            "category_id": 2,
            "category": "dog",
            "bbox": [5.5, 6.0, 4.0, 3.0],
            "area": 12.0,
            "iscrowd": 0,
        },
    ]
    scene = dataset.scene(2)
    assert scene == {
        "image": {"id": 2, "file_name": "b.jpg", "width": 32, "height": 32},
        "annotations": [
            {
                "id": 12,
                "image_id": 2,
                "category_id": 2,
                "category": "dog",
                "bbox": [0.0, 0.0, 32.0, 32.0],
                "area": 1024.0,
                "iscrowd": 1,
            }
        ],
        "categories": [{"id": 1, "name": "cat", "supercategory": "animal"}, {"id": 2, "name": "dog"}],
    }
    # Plain JSON types only: strict JSON survives the round trip unchanged, types included.
    assert json.loads(json.dumps(scene, allow_nan=False)) == scene
    assert type(scene["annotations"][0]["area"]) is float
    assert type(scene["image"]["width"]) is int


def test_returned_dicts_are_fresh_copies(coco_dir: Path) -> None:
    dataset = load_coco(coco_dir / "annotations.json")
    objects = dataset.objects_of(1)
    with pytest.raises(AttributeError):
        objects[0]["segmentation"][0].append(99)  # polygons are frozen tuples, shared, never copied
    objects[0]["segmentation"] = None
    objects[0]["bbox"][0] = -5.0
    dataset.scene(1)["categories"][0]["name"] = "changed"

    again = dataset.objects_of(1)
    assert again[0]["segmentation"] == ((1, 2, 11, 2, 11, 22),)
    assert again[0]["bbox"][0] == 1.0
    assert dataset.scene(1)["categories"][0]["name"] == "cat"


def test_unknown_image_id_is_a_key_error(coco_dir: Path) -> None:
    dataset = load_coco(coco_dir / "annotations.json")
    with pytest.raises(KeyError, match="no image with id 7"):
        dataset.objects_of(7)


def test_image_without_annotations_has_empty_objects(coco_dir: Path) -> None:
    document = _valid_document()
    document["annotations"] = [a for a in document["annotations"] if a["image_id"] == 1]
    dataset = load_coco(_write_json(coco_dir / "annotations.json", document))
    assert dataset.objects_of(2) == []
    assert dataset.scene(2)["annotations"] == []


def test_default_root_is_json_folder_without_images_subfolder(coco_dir: Path) -> None:
    assert default_image_root(coco_dir / "annotations.json") == coco_dir.resolve()


def test_default_root_uses_images_subfolder(tmp_path: Path) -> None:
    _write_image(tmp_path / "images" / "a.jpg", 64, 48)
    _write_image(tmp_path / "images" / "b.jpg", 32, 32)
    path = _write_json(tmp_path / "annotations.json", _valid_document())

    dataset = load_coco(path)

    assert dataset.image_root == (tmp_path / "images").resolve()
    assert default_image_root(path) == (tmp_path / "images").resolve()
    assert dataset.image_path(2) == (tmp_path / "images" / "b.jpg").resolve()
    assert not [w for w in dataset.warnings if "not found" in w.message]


def test_default_root_keeps_json_folder_when_images_are_there(coco_dir: Path) -> None:
    # An unrelated images/ folder must not win over images that sit right next to the JSON.
    (coco_dir / "images").mkdir()
    assert load_coco(coco_dir / "annotations.json").image_root == coco_dir.resolve()
    assert default_image_root(coco_dir / "annotations.json") == coco_dir.resolve()


def test_explicit_root_wins(tmp_path: Path) -> None:
    elsewhere = tmp_path / "pictures"
    _write_image(elsewhere / "a.jpg", 64, 48)
    _write_image(elsewhere / "b.jpg", 32, 32)
    (tmp_path / "images").mkdir()
    path = _write_json(tmp_path / "annotations.json", _valid_document())

    dataset = load_coco(path, image_root=elsewhere)

    assert dataset.image_root == elsewhere.resolve()
    assert dataset.image_path(1) == elsewhere.resolve() / "a.jpg"
    assert not [w for w in dataset.warnings if "not found" in w.message]


def test_missing_explicit_root_is_a_user_error(coco_dir: Path) -> None:
    with pytest.raises(UserError, match=r"image root does not exist: .*nowhere"):
        load_coco(coco_dir / "annotations.json", image_root=coco_dir / "nowhere")


def test_missing_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"not found: .*absent\.json"):
        load_coco(tmp_path / "absent.json")


def test_invalid_json_reports_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{\n  "images": [],\n  "annotations": [}\n', encoding="utf-8")
    with pytest.raises(UserError) as info:
        load_coco(path)
    message = str(info.value)
    assert not isinstance(info.value, DatasetInvalid)
    assert str(path) in message
    assert "line 3, column 19" in message
    assert "\n" not in message


def _json_error(tmp_path: Path, content: bytes) -> str:
    path = tmp_path / "broken.json"
    path.write_bytes(content)
    with pytest.raises(UserError) as info:
        load_coco(path)
    assert not isinstance(info.value, DatasetInvalid)
    message = str(info.value)
    assert message.startswith(f"{path} is not ")
    assert "\n" not in message
    return message


def test_json_error_on_a_long_line_quotes_the_text_around_it(tmp_path: Path) -> None:
    document = _valid_document()
    annotation = {"id": 999, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4]}
    # One line of several thousand characters, as exporters write it, with the mistake in the middle.
    document["annotations"] = document["annotations"] * 20 + [annotation] + document["annotations"] * 20
    text = json.dumps(document).replace('{"id": 999,', '{"id": 999;')
    column = text.index(";") + 1
    assert column > 1000
    message = _json_error(tmp_path, text.encode())
    assert message.endswith(
        f"Expecting ',' delimiter at line 1, column {column}: "
        '...024, "iscrowd": 1}, {"id": 999<<HERE>>; "image_id": 1, "category_id"...'
    )


def test_json_error_at_the_first_character(tmp_path: Path) -> None:
    message = _json_error(tmp_path, b'images: [], "annotations": [], "categories": []}')
    assert message.endswith('Expecting value at line 1, column 1: <<HERE>>images: [], "annotations": [],...')


def test_json_error_at_the_end_of_a_truncated_file(tmp_path: Path) -> None:
    text = json.dumps(_valid_document())[:-2]  # cut inside the annotations list
    message = _json_error(tmp_path, text.encode())
    column = len(text) + 1
    assert message.endswith(
        f"Expecting ',' delimiter at line 1, column {column}: "
        '...], "area": 1024, "iscrowd": 1}<<HERE>> (end of file)'
    )


def test_json_error_context_shows_control_characters_and_stays_on_its_line(tmp_path: Path) -> None:
    message = _json_error(tmp_path, b'{"images":\t[],\x0c "annotations": []}')
    assert message.endswith('quotes at line 1, column 15: {"images":\\t[],<<HERE>>\\x0c "annotations": []}')
    # The unescaped line break inside the string is the error; the next line's text is not quoted.
    message = _json_error(tmp_path, b'{"images": [{"file_name": "a\nb.jpg"}]}')
    assert message.endswith('Invalid control character at line 1, column 29: {"images": [{"file_name": "a<<HERE>>\\n')
    message = _json_error(tmp_path, b'{"images": []}\n{"annotations": []}')
    assert message.endswith('Extra data at line 2, column 1: <<HERE>>{"annotations": []}')


def test_json_error_context_never_carries_a_lone_surrogate(tmp_path: Path) -> None:
    # json decodes bytes with surrogatepass, so UTF-8-encoded surrogates (ED A0 80) survive into the text.
    message = _json_error(tmp_path, b'{"images": \xed\xa0\x80}')
    assert message.endswith('Expecting value at line 1, column 12: {"images": <<HERE>>\\ud800}')
    message.encode("utf-8")  # strict: a lone surrogate here would crash the terminal output


@pytest.mark.parametrize(
    ("written", "where"),
    [
        (b'"name": "pan\\ud800da"', "categories[0].name"),  # an escape without its pair
        (b'"name": "pan\xed\xa0\x80da"', "categories[0].name"),  # the surrogate's own UTF-8 bytes
        (b'"pan\\udc80da": 1, "name": "panda"', "a key in categories[0]"),
    ],
)
def test_a_lone_surrogate_is_one_line_naming_where_it_is(tmp_path: Path, written: bytes, where: str) -> None:
    # Not text: it broke the frames to the workers later, as an internal error.
    path = tmp_path / "annotations.json"
    document = b'{"images": [], "annotations": [], "categories": [{"id": 1, ' + written + b"}]}"
    path.write_bytes(document)
    with pytest.raises(UserError) as info:
        load_coco(path)
    assert str(info.value) == (
        f"{path}: {where} holds a lone UTF-16 surrogate (a \\uD800-\\uDFFF escape without its pair), which is "
        "not text; fix or remove that character"
    )


def test_a_surrogate_pair_is_text(tmp_path: Path) -> None:
    path = tmp_path / "annotations.json"
    path.write_bytes(b'{"images": [], "annotations": [], "categories": [{"id": 1, "name": "\\ud83d\\udc3c"}]}')
    assert load_coco(path).categories[0].name == "\N{PANDA FACE}"


def test_binary_file_is_a_user_error(tmp_path: Path) -> None:
    message = _json_error(tmp_path, b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    assert "is not readable text (utf-8 decoding failed at byte 0" in message


def test_top_level_list_is_invalid(tmp_path: Path) -> None:
    err = _invalid(tmp_path, [{"image_id": 1, "bbox": [0, 0, 1, 1]}])
    assert len(err.problems) == 1
    assert "got a list" in err.problems[0].message


def test_missing_sections_are_all_reported(tmp_path: Path) -> None:
    err = _invalid(tmp_path, {"images": {}, "info": {}})
    assert _messages(err) == [
        "top level: 'images' must be a list, got an object",
        "top level: missing the 'annotations' list",
        "top level: missing the 'categories' list",
    ]


def test_nan_and_infinity_literals_are_errors(tmp_path: Path) -> None:
    path = tmp_path / "annotations.json"
    text = json.dumps(_valid_document())
    text = text.replace('"bbox": [1, 2, 10, 20]', '"bbox": [1, 2, NaN, 20]')
    text = text.replace('"width": 32', '"width": Infinity')
    path.write_text(text, encoding="utf-8")

    with pytest.raises(DatasetInvalid) as info:
        load_coco(path)

    assert _messages(info.value) == [
        "images[1] (id 2, 'b.jpg'): width is not a finite number (got Infinity)",
        "annotations[0] (id 10): bbox[2] is not a finite number (got NaN)",
    ]


def test_duplicate_ids_in_each_section(tmp_path: Path) -> None:
    document = _valid_document()
    document["images"][1]["id"] = 1
    document["categories"][1]["id"] = 1
    document["annotations"][2]["id"] = 10
    err = _invalid(tmp_path, document)
    messages = _messages(err)
    assert "images[1] (id 1, 'b.jpg'): id 1 is already used by images[0] (id 1, 'a.jpg')" in messages
    assert "categories[1] (id 1, 'dog'): id 1 is already used by categories[0] (id 1, 'cat')" in messages
    assert "annotations[2] (id 10): id 10 is already used by annotations[0] (id 10)" in messages
    assert len([m for m in messages if "already used" in m]) == 3


def test_zero_negative_and_non_integer_ids(tmp_path: Path) -> None:
    document = _valid_document()
    document["annotations"][0]["id"] = 0
    document["annotations"][1]["id"] = -4
    document["annotations"][2]["id"] = "12"
    document["images"][1]["id"] = 2.5
    err = _invalid(tmp_path, document)
    messages = _messages(err)
    assert "annotations[0] (id 0): id must be positive, got 0" in messages
    assert "annotations[1] (id -4): id must be positive, got -4" in messages
    assert 'annotations[2] (id "12"): id must be an integer, got "12"' in messages
    assert "images[1] (id 2.5, 'b.jpg'): id must be an integer, got 2.5" in messages


def test_ids_beyond_64_bits_are_errors(tmp_path: Path) -> None:
    # Score files hold ids as 64-bit integers (Parquet's int64, the JSON writer's): refused at load, not mid-run.
    document = _valid_document()
    document["images"][0]["id"] = 2**63
    document["annotations"][0]["image_id"] = 2**63
    document["annotations"][1]["id"] = 2**63 - 1
    messages = _messages(_invalid(tmp_path, document))
    too_big = "id must fit in 64 bits (at most 2**63 - 1), got 9223372036854775808"
    assert f"images[0] (id 9223372036854775808, 'a.jpg'): {too_big}" in messages
    assert not any("64 bits" in m and "annotations[1]" in m for m in messages)  # 2**63 - 1 itself is fine


def test_whole_number_floats_count_as_integers(coco_dir: Path) -> None:
    # Exporters that write every number as a float (3.0) produce usable files.
    document = _valid_document()
    document["annotations"][0]["id"] = 10.0
    document["images"][0]["width"] = 64.0
    dataset = load_coco(_write_json(coco_dir / "annotations.json", document))
    assert dataset.objects_of(1)[0]["id"] == 10
    assert type(dataset.scene(1)["image"]["width"]) is int


def test_missing_image_and_category_references(tmp_path: Path) -> None:
    document = _valid_document()
    document["annotations"][1]["image_id"] = 99
    document["annotations"][2]["category_id"] = 77
    err = _invalid(tmp_path, document)
    assert _messages(err) == [
        "annotations[1] (id 11): image_id 99 does not match any image",
        "annotations[2] (id 12): category_id 77 does not match any category",
    ]


def test_reference_to_an_invalid_image_is_not_reported_twice(tmp_path: Path) -> None:
    document = _valid_document()
    document["images"][0]["height"] = 0
    err = _invalid(tmp_path, document)
    assert _messages(err) == ["images[0] (id 1, 'a.jpg'): height must be positive, got 0"]


def test_non_positive_box_size(tmp_path: Path) -> None:
    document = _valid_document()
    document["annotations"][0]["bbox"] = [1, 2, 0, 20]
    document["annotations"][1]["bbox"] = [1, 2, 3, -1.5]
    err = _invalid(tmp_path, document)
    assert _messages(err) == [
        "annotations[0] (id 10): bbox has non-positive width (w=0)",
        "annotations[1] (id 11): bbox has non-positive height (h=-1.5)",
    ]


def test_bbox_of_wrong_length(tmp_path: Path) -> None:
    document = _valid_document()
    document["annotations"][0]["bbox"] = [1, 2, 3]
    document["annotations"][1]["bbox"] = [1, 2, 3, 4, 5]
    document["annotations"][2]["bbox"] = [1, "a", 3]
    err = _invalid(tmp_path, document)
    assert _messages(err) == [
        "annotations[0] (id 10): bbox must have 4 numbers [x, y, w, h], got 3",
        "annotations[1] (id 11): bbox must have 4 numbers [x, y, w, h], got 5",
        'annotations[2] (id 12): bbox[1] must be a number, got "a"',
        "annotations[2] (id 12): bbox must have 4 numbers [x, y, w, h], got 3",
    ]


def test_box_entirely_outside_its_image_is_an_error(tmp_path: Path) -> None:
    document = _valid_document()
    document["annotations"][2]["bbox"] = [40, 5, 10, 10]  # image 2 is 32x32
    err = _invalid(tmp_path, document)
    assert _messages(err) == ["annotations[2] (id 12): bbox [40, 5, 10, 10] lies entirely outside image 2 (32x32)"]


def test_thin_box_just_past_the_edge_is_still_outside(tmp_path: Path) -> None:
    # It pokes out by less than the 1 px tolerance, yet it does not overlap the image at all.
    document = _valid_document()
    document["annotations"][2]["bbox"] = [32, 5, 0.5, 10]
    err = _invalid(tmp_path, document)
    assert _messages(err) == ["annotations[2] (id 12): bbox [32, 5, 0.5, 10] lies entirely outside image 2 (32x32)"]


def test_non_finite_segmentation_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "annotations.json"
    text = json.dumps(_valid_document()).replace("[[1, 2, 11, 2, 11, 22]]", "[[1, 2, 11, -Infinity, 11, 22]]")
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DatasetInvalid) as info:
        load_coco(path)
    assert _messages(info.value) == [
        "annotations[0] (id 10): segmentation contains a non-finite number (NaN or Infinity)"
    ]


def test_box_partly_outside_its_image_is_a_warning(coco_dir: Path) -> None:
    document = _valid_document()
    document["annotations"][2]["bbox"] = [-2.5, 4, 37.5, 10]  # 2.5 px left, 3 px right of a 32-wide image
    document["annotations"][0]["bbox"] = [54.5, 2, 10, 20]  # 0.5 px past the right edge: tolerated
    dataset = load_coco(_write_json(coco_dir / "annotations.json", document))
    box_warnings = [w for w in dataset.warnings if w.message.startswith("bbox")]
    assert box_warnings == [
        Problem(
            severity="warning",
            where="annotations[2] (id 12)",
            message="bbox [-2.5, 4, 37.5, 10] extends past image 2 (32x32) by 2.5 px on the left, 3 px on the right",
        )
    ]


def test_missing_image_file_is_a_warning(coco_dir: Path) -> None:
    (coco_dir / "b.jpg").unlink()
    dataset = load_coco(coco_dir / "annotations.json")
    missing = [w for w in dataset.warnings if "not found" in w.message]
    assert len(missing) == 1
    assert missing[0].severity == "warning"
    assert missing[0].where == "images[1] (id 2, 'b.jpg')"
    assert str(coco_dir.resolve() / "b.jpg") in missing[0].message


def test_duplicate_file_name_is_a_warning(coco_dir: Path) -> None:
    document = _valid_document()
    document["images"][1]["file_name"] = "a.jpg"
    dataset = load_coco(_write_json(coco_dir / "annotations.json", document))
    assert "images[1] (id 2, 'a.jpg'): file_name is also used by images[0] (id 1, 'a.jpg')" in [
        str(w) for w in dataset.warnings
    ]


def test_several_errors_are_reported_at_once(tmp_path: Path) -> None:
    document = _valid_document()
    document["images"][0]["width"] = -1
    document["categories"][1]["name"] = None
    document["annotations"][0]["bbox"] = "oops"
    document["annotations"][1]["category_id"] = 5
    document["annotations"][2]["area"] = float("nan")
    document["annotations"].append({"id": 13, "image_id": 2, "category_id": 1})
    document["annotations"].append([1, 2, 3])
    path = tmp_path / "annotations.json"

    err = _invalid(tmp_path, document)

    assert _messages(err) == [
        "images[0] (id 1, 'a.jpg'): width must be positive, got -1",
        "categories[1] (id 2): name must be a string, got null",
        'annotations[0] (id 10): bbox must be a list of 4 numbers [x, y, w, h], got "oops"',
        "annotations[2] (id 12): area is not a finite number (got NaN)",
        "annotations[3] (id 13): missing required field 'bbox'",
        "annotations[4]: expected a JSON object, got a list",
        "annotations[1] (id 11): category_id 5 does not match any category",
    ]
    assert all(problem.severity == "error" for problem in err.problems)
    assert str(err) == (
        f"{path}: 7 problems make this COCO file unusable; "
        "first: images[0] (id 1, 'a.jpg'): width must be positive, got -1"
    )
    assert err.path == path


def test_details_are_truncated(tmp_path: Path) -> None:
    document = _valid_document()
    for offset in range(25):
        document["annotations"].append({"id": 100 + offset, "image_id": 1, "category_id": 1, "bbox": [0, 0, 0, 1]})
    err = _invalid(tmp_path, document)

    assert len(err.problems) == 25
    details = err.details()
    assert len(details) == 21
    assert details[0] == "annotations[3] (id 100): bbox has non-positive width (w=0)"
    assert details[-1] == "... and 5 more"
    assert err.details(limit=3)[-1] == "... and 22 more"
    assert len(err.details(limit=25)) == 25


def test_single_problem_message_is_singular(tmp_path: Path) -> None:
    err = DatasetInvalid(tmp_path / "x.json", [Problem(severity="error", where="images[0]", message="bad")])
    assert str(err) == f"{tmp_path / 'x.json'}: 1 problem makes this COCO file unusable; first: images[0]: bad"
    assert err.details() == ["images[0]: bad"]


def test_user_file_is_left_untouched(coco_dir: Path) -> None:
    path = coco_dir / "annotations.json"
    document = _valid_document()
    del document["annotations"][0]["area"]
    _write_json(path, document)
    before = path.read_bytes()
    mtime = path.stat().st_mtime_ns
    original = copy.deepcopy(document)

    load_coco(path)

    assert path.read_bytes() == before
    assert path.stat().st_mtime_ns == mtime
    assert json.loads(before) == original


@pytest.mark.slow
def test_hundred_thousand_annotations_load_and_index(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 640, "height": 480} for i in range(1, 10_001)]
    xy = rng.uniform(0, 400, size=(100_000, 2)).round(2)
    annotations = [
        {
            "id": n + 1,
            "image_id": n % 10_000 + 1,
            "category_id": n % 80 + 1,
            "bbox": [float(x), float(y), 20.5, 30.25],
            "area": 620.125,
            "iscrowd": 0,
        }
        for n, (x, y) in enumerate(xy.tolist())
    ]
    categories = [{"id": c, "name": f"class{c}"} for c in range(1, 81)]
    path = _write_json(tmp_path / "big.json", {"images": images, "annotations": annotations, "categories": categories})

    dataset = load_coco(path)

    assert len(dataset.annotations) == 100_000
    assert len(dataset.objects_of(1)) == 10
    assert [obj["id"] for obj in dataset.objects_of(10_000)] == list(range(10_000, 100_001, 10_000))


def test_an_images_folder_that_is_a_symlink_gives_the_root_a_root_given_explicitly_gives(tmp_path: Path) -> None:
    # `inject` writes images/ as a symlink; triage and selftest rebuild the dataset with its root given,
    # and scoring both together needs both to name the same root (it was an internal error in triage).
    real = tmp_path / "real-images"
    _write_image(real / "a.jpg", 64, 48)
    _write_image(real / "b.jpg", 32, 32)
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "images").symlink_to(real)
    document = _valid_document()
    dataset = load_coco(_write_json(copy / "annotations.json", document))
    assert dataset.image_root == real.resolve()
    assert coco_from_document(document, dataset.annotations_path, dataset.image_root).image_root == dataset.image_root
    assert coco_from_document(document, dataset.annotations_path).image_root == dataset.image_root


@pytest.mark.parametrize(
    ("file_name", "message"),
    [
        ("a\x00b.jpg", "file_name holds a NUL character, which no file name can"),
        ("x" * 300 + ".jpg", "file_name has a part of 304 bytes; a file or folder name holds at most 255"),
        ("d/" * 2100 + "a.jpg", "file_name is 4205 bytes long; a path holds at most 4096"),
    ],
)
def test_a_file_name_no_path_can_hold_is_a_problem_of_that_image(tmp_path: Path, file_name: str, message: str) -> None:
    # Such a name was an internal error (a NUL) or a page-long line about a missing file.
    document = _valid_document()
    document["images"][1]["file_name"] = file_name
    with pytest.raises(DatasetInvalid) as info:
        load_coco(_write_json(tmp_path / "annotations.json", document))
    (problem,) = info.value.problems
    assert str(problem).startswith("images[1] (id 2, ") and str(problem).endswith(message), str(problem)
    assert len(str(info.value)) < 400
