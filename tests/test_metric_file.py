"""The metric file contract is checked statically, with the right file, line and reason."""

from __future__ import annotations

import hashlib
import math
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agent import resources
from agent.errors import UserError
from agent.metrics.contract import (
    MetricFileError,
    MetricSpec,
    check_imports,
    list_builtin_metrics,
    load_metric_file,
    parse_metric_source,
)

# Line numbers matter below: OBJECT_LINES[i] is line i + 1 of the file.
OBJECT_LINES = [
    '"""Relative box area."""',  # 1
    "from __future__ import annotations",  # 2
    "",  # 3
    "import math",  # 4
    "",  # 5
    'NAME = "box_area"',  # 6
    'LEVEL = "object"',  # 7
    'SUSPICIOUS = "low"',  # 8
    'TITLE = "Box area"',  # 9
    "RANGE = (0, 1.0)",  # 10
    'TAGS = ["geometry", "size"]',  # 11
    "",  # 12
    "",  # 13
    "def score(image, obj, scene):",  # 14
    "    h, w = image.shape[:2]",  # 15
    '    _, _, bw, bh = obj["bbox"]',  # 16
    "    return float(bw * bh) / float(w * h) if w * h else math.nan",  # 17
]

IMAGE_SOURCE = '''\
"""Mean brightness.

Dark images are hard to label.
"""
import numpy as np

NAME = "brightness"
LEVEL = "image"
SUSPICIOUS = "low"


def score(image: np.ndarray, scene: dict) -> float | None:
    return float(image.mean() / 255.0)
'''

PATH = "metrics/box_area.py"


def object_source(replace: dict[int, str] | None = None, insert: dict[int, str] | None = None) -> str:
    """The object template with 1-based lines replaced, or new lines inserted *before* a line."""
    lines = list(OBJECT_LINES)
    for line, text in (replace or {}).items():
        lines[line - 1] = text
    for line, text in sorted((insert or {}).items(), reverse=True):
        lines.insert(line - 1, text)
    return "\n".join(lines) + "\n"


def parse_error(source: str, path: str = PATH) -> MetricFileError:
    with pytest.raises(MetricFileError) as info:
        parse_metric_source(source, path=path)
    return info.value


def test_valid_object_metric() -> None:
    source = object_source()
    spec = parse_metric_source(source, path=PATH)
    assert spec.name == "box_area"
    assert spec.level == "object"
    assert spec.suspicious == "low"
    assert spec.description == "Relative box area."
    assert spec.title == "Box area"
    assert spec.value_range == (0.0, 1.0)
    assert spec.tags == ("geometry", "size")
    assert spec.source == source
    assert spec.path == PATH
    assert spec.origin == "file"
    # __future__ is a compiler switch, not a dependency.
    assert spec.imports == ("math",)


def test_valid_image_metric_defaults_and_annotations() -> None:
    spec = parse_metric_source(IMAGE_SOURCE)
    assert (spec.name, spec.level, spec.suspicious) == ("brightness", "image", "low")
    assert spec.description == "Mean brightness.\n\nDark images are hard to label."
    assert spec.title is None
    assert spec.value_range is None
    assert spec.tags == ()
    assert spec.imports == ("numpy",)
    assert spec.path == "<metric>"


def test_spec_is_frozen() -> None:
    spec = parse_metric_source(IMAGE_SOURCE)
    with pytest.raises(ValueError):
        spec.name = "other"  # type: ignore[misc]


def test_open_range_and_annotated_constant() -> None:
    spec = parse_metric_source(object_source(replace={10: "RANGE: tuple = (0, None)", 11: "TAGS = ()"}))
    assert spec.value_range == (0.0, None)
    assert spec.tags == ()


def test_sha256_is_of_the_source_and_stable() -> None:
    source = object_source()
    first = parse_metric_source(source)
    assert first.code_sha256 == hashlib.sha256(source.encode("utf-8")).hexdigest()
    assert parse_metric_source(source, path="elsewhere.py").code_sha256 == first.code_sha256
    changed = parse_metric_source(source.replace("bw * bh", "bh * bw"))
    assert changed.code_sha256 != first.code_sha256


def test_identical_repeat_of_a_constant_is_allowed() -> None:
    spec = parse_metric_source(object_source(insert={12: 'NAME = "box_area"'}))
    assert spec.name == "box_area"


ERROR_CASES = [
    pytest.param({"replace": {7: 'LEVEL = "box"'}}, 7, "LEVEL must be 'image' or 'object', got 'box'", id="level"),
    pytest.param({"replace": {8: 'SUSPICIOUS = "medium"'}}, 8, "SUSPICIOUS must be 'high' or 'low'", id="susp"),
    pytest.param({"replace": {6: 'NAME = "BoxArea"'}}, 6, "NAME must be snake_case", id="name-case"),
    pytest.param({"replace": {6: 'NAME = "9box"'}}, 6, "got '9box'", id="name-digit"),
    pytest.param({"replace": {6: f'NAME = "{"a" * 65}"'}}, 6, "at most 64 characters, got 65", id="name-long"),
    pytest.param({"replace": {6: "NAME = 3"}}, 6, "NAME must be a string, got 3", id="name-type"),
    pytest.param(
        {"replace": {6: 'NAME = "random"'}},
        6,
        "NAME 'random' is a baseline's, which every evaluation shows",
        id="name-baseline",
    ),
    pytest.param({"replace": {6: 'NAME = "combined"'}}, 6, "NAME 'combined' is a baseline's", id="name-combined"),
    pytest.param({"replace": {6: 'NAME = "box" + "_area"'}}, 6, "NAME must be a literal value", id="name-computed"),
    pytest.param({"replace": {6: 'NAME = f"box_area"'}}, 6, "NAME must be a literal value", id="name-fstr"),
    pytest.param(
        {"insert": {12: 'NAME = "other"'}},
        12,
        "NAME is assigned again with a different value (first at line 6)",
        id="name-twice",
    ),
    pytest.param(
        {"replace": {6: 'if True:\n    NAME = "box_area"'}},
        7,
        "NAME must be set once by a plain top-level assignment",
        id="name-in-if",
    ),
    pytest.param({"replace": {6: "from os import sep as NAME"}}, 6, "NAME must be set once", id="name-import"),
    pytest.param({"insert": {12: "x = [(TITLE := 'Other')]"}}, 12, "TITLE must be set once", id="walrus"),
    pytest.param({"replace": {9: "TITLE = 3"}}, 9, "TITLE must be a non-empty string, got 3", id="title"),
    pytest.param({"replace": {10: "RANGE = (1, 0)"}}, 10, "low bound must be below the high bound", id="rng-ord"),
    pytest.param({"replace": {10: "RANGE = (0, 1, 2)"}}, 10, "RANGE must be (low, high)", id="rng-len"),
    pytest.param({"replace": {10: 'RANGE = "0..1"'}}, 10, "RANGE must be (low, high)", id="rng-str"),
    pytest.param({"replace": {10: "RANGE = (0, 1e999)"}}, 10, "RANGE bounds must be finite", id="rng-inf"),
    pytest.param({"replace": {10: "RANGE = (False, True)"}}, 10, "RANGE must be (low, high)", id="rng-bool"),
    pytest.param({"replace": {11: 'TAGS = "geometry"'}}, 11, "TAGS must be a list of non-empty strings", id="tags"),
    pytest.param({"replace": {1: '""" """'}}, 1, "module docstring is empty", id="doc-empty"),
    pytest.param(
        {"replace": {14: "def score(image, scene):"}},
        14,
        "score must take (image, obj, scene) for LEVEL 'object', got (image, scene)",
        id="params-level",
    ),
    pytest.param(
        {"replace": {14: "def score(image, object, scene):"}},
        14,
        "got (image, object, scene)",
        id="params-names",
    ),
    pytest.param(
        {"replace": {14: "def score(image, obj, scene, *rest, **kw):"}},
        14,
        "got (image, obj, scene, *rest, **kw)",
        id="params-varargs",
    ),
    pytest.param(
        {"replace": {14: "def score(image, obj=None, scene=None):"}},
        14,
        "got (image, obj=..., scene=...)",
        id="params-defaults",
    ),
    pytest.param(
        {"replace": {14: "def score(image, obj, scene, /):"}},
        14,
        "got (image, obj, scene, /)",
        id="params-posonly",
    ),
    pytest.param(
        {"replace": {14: "def score(image, obj, *, scene):"}},
        14,
        "got (image, obj, *, scene)",
        id="params-kwonly",
    ),
    pytest.param(
        {"replace": {14: "async def score(image, obj, scene):"}},
        14,
        "score must be a plain 'def', not 'async def'",
        id="async",
    ),
    pytest.param({"insert": {14: "@staticmethod"}}, 14, "score must not be decorated", id="decorated"),
    pytest.param(
        {"insert": {18: "def score(image, obj, scene):\n    return 1.0"}},
        18,
        "score is defined more than once (first at line 14)",
        id="score-twice",
    ),
    pytest.param(
        {"insert": {18: "score = lambda image, obj, scene: 1.0"}},
        18,
        "score must be defined once with a plain top-level 'def score(...)'",
        id="score-lambda",
    ),
    pytest.param(
        {"replace": {4: "import requests"}},
        4,
        "imports 'requests'; a metric may import only numpy, cv2, math and the standard library",
        id="import",
    ),
    pytest.param({"replace": {4: "from requests.adapters import HTTPAdapter"}}, 4, "imports 'requests'", id="from"),
    pytest.param({"replace": {4: "from . import helpers"}}, 4, "relative import", id="relative"),
    pytest.param({"replace": {4: "from .helpers import x"}}, 4, "self-contained", id="relative-module"),
    pytest.param({"insert": {15: "    import torch"}}, 15, "imports 'torch'", id="import-in-function"),
    pytest.param({"replace": {16: "    _, _, bw, bh = = obj"}}, 16, "syntax error", id="syntax"),
    pytest.param({"replace": {16: "  x = 1"}}, 16, "syntax error", id="indent"),
    pytest.param(
        {"insert": {18: "def helper():\n    global LEVEL\n    LEVEL = 'image'"}},
        19,
        "'global LEVEL' is not allowed",
        id="global",
    ),
]


@pytest.mark.parametrize(("edits", "line", "reason"), ERROR_CASES)
def test_error_names_file_line_and_reason(edits: dict[str, dict[int, str]], line: int, reason: str) -> None:
    err = parse_error(object_source(**edits))
    assert err.path == PATH
    assert err.line == line
    assert reason in err.reason
    assert str(err).startswith(f"{PATH}:{line}: ")
    assert reason in str(err)
    assert "\n" not in str(err)
    assert isinstance(err, UserError)


@pytest.mark.parametrize(
    ("edits", "reason"),
    [
        pytest.param({"replace": {6: ""}}, "NAME is not defined", id="no-name"),
        pytest.param({"replace": {7: ""}}, "LEVEL is not defined", id="no-level"),
        pytest.param({"replace": {8: ""}}, "SUSPICIOUS is not defined", id="no-suspicious"),
        pytest.param({"replace": {1: "# a comment, not a docstring"}}, "has no module docstring", id="no-doc"),
        pytest.param({"replace": {14: "def scores(image, obj, scene):"}}, "defines no function 'score'", id="no-score"),
    ],
)
def test_missing_pieces_have_no_line(edits: dict[str, dict[int, str]], reason: str) -> None:
    err = parse_error(object_source(**edits))
    assert err.line is None
    assert str(err) == f"{PATH}: {err.reason}"
    assert reason in err.reason
    assert re.search(r":\d+:", str(err)) is None


def test_computed_name_is_not_also_reported_missing() -> None:
    err = parse_error(object_source(replace={6: "NAME = str(1)"}))
    assert err.line == 6
    assert all("not defined" not in reason for _, reason in err.problems)


def test_first_problem_by_line_is_reported_and_all_are_kept() -> None:
    # Bad LEVEL (line 7) is found by an earlier check than the bad import (line 4) and a missing
    # SUSPICIOUS (no line); the one reported must still be line 4.
    err = parse_error(object_source(replace={4: "import requests", 7: 'LEVEL = "box"', 8: ""}))
    assert err.line == 4
    assert "requests" in err.reason
    assert [line for line, _ in err.problems] == [4, 7, None]


def test_empty_file_is_rejected() -> None:
    err = parse_error("")
    assert err.line is None
    assert len(err.problems) == 5  # three constants, docstring, score


def test_error_survives_pickling() -> None:
    err = parse_error(object_source(replace={7: 'LEVEL = "box"'}))
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.path, copy.line, copy.reason, str(copy)) == (err.path, err.line, err.reason, str(err))


# Five problems, each of which used to take a run of its own to discover: no docstring (line 1 is a
# comment), a forbidden import, and a bad NAME, LEVEL and SUSPICIOUS.
MANY_PROBLEMS = {
    1: "# a comment, not a docstring",
    4: "import requests",
    6: 'NAME = "Box Area"',
    7: 'LEVEL = "box"',
    8: 'SUSPICIOUS = "maybe"',
}
MANY_PROBLEMS_LINES = [
    "4: imports 'requests'; a metric may import only numpy, cv2, math and the standard library",
    "6: NAME must be snake_case (lowercase letters, digits and underscores, starting with a letter), got 'Box Area'",
    "7: LEVEL must be 'image' or 'object', got 'box'",
    "8: SUSPICIOUS must be 'high' or 'low', got 'maybe'",
    " has no module docstring; its text is the metric's description",
]


def test_every_problem_is_in_one_message_by_line() -> None:
    err = parse_error(object_source(replace=MANY_PROBLEMS))
    assert [line for line, _ in err.problems] == [4, 6, 7, 8, None]
    # The first problem stays available on its own for callers that show one.
    assert (err.line, err.reason) == (4, err.problems[0][1])
    listed = [f"  {PATH}:{line}" for line in MANY_PROBLEMS_LINES]
    assert str(err).splitlines() == [f"{PATH}: 5 problems break the metric contract:", *listed]
    assert str(pickle.loads(pickle.dumps(err))) == str(err)


def test_syntax_error_is_reported_alone() -> None:
    # Nothing can be checked without a tree, so the bad NAME on line 6 cannot be reported yet.
    err = parse_error(object_source(replace={6: 'NAME = "Box Area"', 16: "    _, _, bw, bh = = obj"}))
    assert err.problems == ((16, "syntax error: invalid syntax"),)
    assert str(err) == f"{PATH}:16: syntax error: invalid syntax"


def test_check_imports_lists_every_bad_import() -> None:
    import ast

    with pytest.raises(MetricFileError) as info:
        check_imports(ast.parse("import scipy\nimport math\nfrom torch import nn\n"), path="m.py")
    assert [line for line, _ in info.value.problems] == [1, 3]
    assert str(info.value).splitlines()[1:] == [
        "  m.py:1: imports 'scipy'; a metric may import only numpy, cv2, math and the standard library",
        "  m.py:3: imports 'torch'; a metric may import only numpy, cv2, math and the standard library",
    ]


def test_cli_shows_every_problem_in_one_run(tmp_path: Path) -> None:
    metric = tmp_path / "broken.py"
    metric.write_text(object_source(replace=MANY_PROBLEMS))
    annotations = tmp_path / "annotations.json"
    annotations.write_text('{"images": [], "annotations": [], "categories": [{"id": 1, "name": "thing"}]}')
    result = subprocess.run(
        [sys.executable, "-m", "agent.cli", "score", "--annotations", str(annotations), "--metric", str(metric),
         "--out", str(tmp_path / "scores.csv")],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 2
    listed = [f"  {metric}:{line}" for line in MANY_PROBLEMS_LINES]
    assert result.stderr.splitlines() == [f"error: {metric}: 5 problems break the metric contract:", *listed]
    assert not (tmp_path / "scores.csv").exists()


@pytest.mark.parametrize(
    "line",
    [
        "import os",
        "import os.path",
        "import numpy as np",
        "from cv2 import imread",
        "import cv2",
        "from collections import abc",
        "import json, re",
    ],
)
def test_allowed_imports(line: str) -> None:
    spec = parse_metric_source(object_source(replace={4: line + "\nimport math"}))
    top = line.split()[1].split(".")[0].rstrip(",")
    assert top in spec.imports


def test_check_imports_directly() -> None:
    import ast

    tree = ast.parse("import numpy as np\nimport os.path\ndef f():\n    from cv2 import imread\n")
    assert check_imports(tree) == ("cv2", "numpy", "os")
    with pytest.raises(MetricFileError) as info:
        check_imports(ast.parse("import math\n\nimport scipy.ndimage\n"), path="m.py")
    assert str(info.value) == (
        "m.py:3: imports 'scipy'; a metric may import only numpy, cv2, math and the standard library"
    )


def test_nothing_is_executed(tmp_path: Path) -> None:
    marker = tmp_path / "side_effect.txt"
    source = object_source(
        insert={12: f"open({str(marker)!r}, 'w').write('ran')\nraise SystemExit(3)"},
    )
    file = tmp_path / "boom.py"
    file.write_text(source)
    spec = parse_metric_source(source)
    assert load_metric_file(str(file)).name == spec.name == "box_area"
    assert not marker.exists()


def test_local_names_in_functions_and_classes_are_fine() -> None:
    extra = "\n".join(
        [
            "class Helper:",
            "    NAME = 'x'",
            "    def score(self):",
            "        return 1",
            "",
            "def helper(NAME=None):",
            "    LEVEL = 1",
            "    return [score for score in range(3)]",
        ]
    )
    spec = parse_metric_source(object_source(insert={12: extra}))
    assert spec.level == "object"


# --- files ---------------------------------------------------------------------------------------


def test_load_file_matches_parse(tmp_path: Path) -> None:
    file = tmp_path / "box_area.py"
    file.write_text(object_source(), encoding="utf-8")
    spec = load_metric_file(str(file))
    assert spec == parse_metric_source(object_source(), path=str(file))
    assert spec.code_sha256 == hashlib.sha256(file.read_bytes()).hexdigest()


def test_load_file_with_bom(tmp_path: Path) -> None:
    file = tmp_path / "bom.py"
    file.write_bytes(b"\xef\xbb\xbf" + object_source().encode())
    assert load_metric_file(str(file)).source == object_source()


def test_error_in_file_names_the_path_as_given(tmp_path: Path) -> None:
    file = tmp_path / "tight.py"
    file.write_text(object_source(replace={7: 'LEVEL = "box"'}))
    with pytest.raises(MetricFileError) as info:
        load_metric_file(str(file))
    assert str(info.value) == f"{file}:7: LEVEL must be 'image' or 'object', got 'box'"


def test_missing_file(tmp_path: Path) -> None:
    ref = str(tmp_path / "nope.py")
    with pytest.raises(MetricFileError) as info:
        load_metric_file(ref)
    assert str(info.value) == f"{ref}: no such metric file"


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(MetricFileError, match="is a directory"):
        load_metric_file(str(tmp_path))


def test_not_utf8(tmp_path: Path) -> None:
    file = tmp_path / "latin.py"
    file.write_bytes(object_source().encode() + b"# caf\xe9\n")
    with pytest.raises(MetricFileError) as info:
        load_metric_file(str(file))
    assert info.value.line == len(OBJECT_LINES) + 1
    assert "not UTF-8" in str(info.value)
    assert str(info.value).startswith(f"{file}:{len(OBJECT_LINES) + 1}: ")


# --- builtins ------------------------------------------------------------------------------------


@pytest.fixture
def builtin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "builtins"
    folder.mkdir()
    (folder / "box_area.py").write_text(object_source())
    (folder / "brightness.py").write_text(IMAGE_SOURCE)
    (folder / "README.txt").write_text("not a metric")
    monkeypatch.setattr(resources, "builtin_metrics_dir", lambda: folder)
    return folder


def test_builtin_resolution(builtin_dir: Path) -> None:
    spec = load_metric_file("builtin:brightness")
    assert spec.name == "brightness"
    assert spec.origin == "builtin"
    assert spec.path == "builtin:brightness"
    assert spec.source == IMAGE_SOURCE


def test_unknown_builtin_lists_available(builtin_dir: Path) -> None:
    with pytest.raises(MetricFileError) as info:
        load_metric_file("builtin:sharpness")
    assert str(info.value) == ("builtin:sharpness: unknown builtin metric 'sharpness'; available: box_area, brightness")


def test_builtin_cannot_escape_its_folder(builtin_dir: Path) -> None:
    (builtin_dir.parent / "outside.py").write_text(IMAGE_SOURCE)
    with pytest.raises(MetricFileError, match="unknown builtin metric"):
        load_metric_file("builtin:../outside")


def test_builtin_name_must_match_file(builtin_dir: Path) -> None:
    (builtin_dir / "dark.py").write_text(IMAGE_SOURCE)
    with pytest.raises(MetricFileError, match=r"declares NAME 'brightness' but its file is dark\.py"):
        load_metric_file("builtin:dark")


def test_list_builtins_sorted(builtin_dir: Path) -> None:
    specs = list_builtin_metrics()
    assert [s.name for s in specs] == ["box_area", "brightness"]
    assert all(s.origin == "builtin" and s.path == f"builtin:{s.name}" for s in specs)


def test_no_builtins_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resources, "builtin_metrics_dir", lambda: tmp_path / "missing")
    assert list_builtin_metrics() == []
    with pytest.raises(MetricFileError, match="available: none are installed"):
        load_metric_file("builtin:brightness")


def test_shipped_builtins_follow_the_contract() -> None:
    # Trivially true while the folder is empty; guards the shipped metrics once they exist.
    for spec in list_builtin_metrics():
        assert isinstance(spec, MetricSpec)
        assert spec.origin == "builtin"


# --- the contract document -----------------------------------------------------------------------


def contract_examples() -> list[str]:
    text = (resources.prompts_dir() / "CONTRACT.md").read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def test_contract_examples_pass_validation_and_run() -> None:
    examples = contract_examples()
    assert len(examples) == 3
    specs = [parse_metric_source(code, path="CONTRACT.md") for code in examples]
    assert sorted(s.level for s in specs) == ["image", "object", "object"]

    # The examples are ours, so running them here (unlike user metrics) is fine: it proves the
    # documented argument shapes and the documented code agree.
    image = np.full((100, 200, 3), 255, dtype=np.uint8)
    image.setflags(write=False)
    obj = {
        "id": 1,
        "image_id": 7,
        "category_id": 3,
        "category": "cat",
        "bbox": [10.0, 10.0, 20.0, 50.0],
        "area": 1000.0,
        "iscrowd": 0,
    }
    scene = {
        "image": {"id": 7, "file_name": "a.jpg", "width": 200, "height": 100},
        "annotations": [obj],
        "categories": [{"id": 3, "name": "cat"}],
    }
    for spec in specs:
        namespace: dict[str, object] = {}
        exec(compile(spec.source, "CONTRACT.md", "exec"), namespace)
        fn = namespace["score"]
        assert callable(fn)
        if "prepare" in namespace:  # the example of work done once per image
            painted = image.copy()
            painted[10:60, 10:30] = 55  # the box, darker than the white background
            painted.setflags(write=False)
            prepared = namespace["prepare"](painted, scene)  # type: ignore[operator]
            assert fn(painted, obj, scene, prepared) == pytest.approx(200 * math.sqrt(3))
            continue
        value = fn(image, obj, scene) if spec.level == "object" else fn(image, scene)
        expected = 0.05 if spec.level == "object" else 1.0
        assert value == pytest.approx(expected)
