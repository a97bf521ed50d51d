"""Reply extraction and the static check: realistic replies in, code (or a precise correction) out."""

from __future__ import annotations

import pytest

from agent.authoring.extract import (
    Extraction,
    FormatProblem,
    Idea,
    check_code,
    corrective_message,
    extract_code,
    extract_ideas,
    parse_targets_reply,
)
from agent.metrics.contract import MetricSpec

GOOD = '''"""Box area relative to the image; tiny boxes are often stray clicks."""

NAME = "relative_box_area"
LEVEL = "object"
SUSPICIOUS = "low"


def score(image, obj, scene):
    _, _, w, h = obj["bbox"]
    return w * h / (scene["image"]["width"] * scene["image"]["height"])
'''

SNIPPET = """def area(box):
    return box[2] * box[3]
"""

FENCED = f"```python\n{GOOD}```"

REPLIES: list[tuple[str, str, str, str]] = [
    # (case, reply, how, expected rationale)
    ("chatty prose + fence", f"Sure! The idea is simple.\n\n{FENCED}\n\nLet me know if it helps.", "fence",
     "Sure! The idea is simple.\n\nLet me know if it helps."),
    ("two fences, only the second defines score", f"First a helper:\n```python\n{SNIPPET}```\nThe file:\n{FENCED}",
     "fence", f"First a helper:\n```python\n{SNIPPET}```\nThe file:"),
    ("tagged fence wins over a later plain one", f"```python metric\n{GOOD}```\nUsage:\n```python\n{GOOD}```",
     "tagged", f"Usage:\n```python\n{GOOD}```"),
    ("```metric tag", f"```metric\n{GOOD}```", "tagged", ""),
    ("no fence, valid code", GOOD, "whole", ""),
    ("unclosed fence, truncated reply", f"Here it is:\n```python\n{GOOD}", "fence", "Here it is:"),
    ("leftover <|im_end|>", f"{FENCED}<|im_end|>", "fence", ""),
    ("leftover </s> after prose", f"Done.\n{FENCED}\n</s>\nassistant: more", "fence", "Done."),
    ("leftover <end_of_turn>", f"{GOOD}<end_of_turn>\n<start_of_turn>user", "whole", ""),
    ("CRLF line endings", f"Here:\r\n{FENCED}\r\n".replace("\n", "\r\n").replace("\r\r\n", "\r\n"), "fence", "Here:"),
    ("```py fence", f"```py\n{GOOD}```", "fence", ""),
    ("~~~ fence, indented close", f"~~~python\n{GOOD}  ~~~\n", "fence", ""),
    ("non-python fences ignored", f"```bash\npip install numpy\n```\n{FENCED}", "fence",
     "```bash\npip install numpy\n```"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "reply", "how", "rationale"), REPLIES, ids=[r[0] for r in REPLIES])
def test_extracts_the_metric_file(case: str, reply: str, how: str, rationale: str) -> None:
    extraction = extract_code(reply)
    assert extraction.how == how
    assert extraction.code == GOOD
    assert extraction.rationale == rationale
    assert extraction.problem is None
    assert isinstance(check_code(extraction.code), MetricSpec)


def test_unclosed_fence_is_marked_truncated() -> None:
    assert extract_code(f"```python\n{GOOD}").truncated
    assert not extract_code(FENCED).truncated


def test_last_block_defining_score_wins() -> None:
    other = GOOD.replace("relative_box_area", "second_version")
    extraction = extract_code(f"Draft:\n```python\n{GOOD}```\nBetter:\n```python\n{other}```")
    assert extraction.code == other


def test_block_without_score_is_still_returned_for_the_check_to_name() -> None:
    extraction = extract_code(f"```python\n{SNIPPET}```")
    assert extraction.code == SNIPPET
    problem = check_code(extraction.code)
    assert isinstance(problem, FormatProblem)
    assert "defines no function score" in corrective_message(problem)


@pytest.mark.parametrize(
    ("tail", "stop"),
    [
        ("\n```", ()),  # a closing fence the server left on a fenceless reply
        ("\n``", ()),  # ... or half of one
        ("\n`", ()),
        ("\nif __name__", ("\nif __name__",)),
        ("\nif __na", ("\nif __name__",)),
        ("\n# --", ("\n# ---",)),
        ("\ndef score(", ("\ndef score(",)),
        ("<|im_e", ()),
        ("</", ()),
    ],
)
def test_strips_whole_and_partial_stop_sequences_at_the_end(tail: str, stop: tuple[str, ...]) -> None:
    extraction = extract_code(GOOD + tail, stop=stop)
    assert extraction.code == GOOD
    assert extraction.how == "whole"


def test_stop_sequences_inside_the_code_are_kept() -> None:
    # The completion prefix itself contains "\ndef score(": only a stop LEFT AT THE END is removed.
    extraction = extract_code(GOOD, stop=("\ndef score(",))
    assert extraction.code == GOOD


def test_completion_reply_prefix_plus_body_is_whole_code() -> None:
    prefix, body = GOOD.split("    _, _, w, h")
    extraction = extract_code(prefix + "    _, _, w, h" + body + "\nif __name__", stop=("\nif __name__",))
    assert extraction.how == "whole"
    assert extraction.code == GOOD


@pytest.mark.parametrize(
    ("reply", "kind", "message"),
    [
        ("", "empty", "your reply was empty"),
        ("   \n<|im_end|>", "empty", "your reply was empty"),
        ("I cannot help with that.", "no_code", "no ```python block defining score(image, obj, scene)"),
        ("hello", "no_code", "no ```python block defining score"),
        ("```python\n```", "no_code", "no ```python block defining score"),
    ],
)
def test_replies_without_code(reply: str, kind: str, message: str) -> None:
    extraction = extract_code(reply)
    assert extraction.code is None
    assert extraction.problem is not None and extraction.problem.kind == kind
    assert message in corrective_message(extraction.problem)


def _problem(code: str, *, truncated: bool = False) -> FormatProblem:
    result = check_code(code, truncated=truncated)
    assert isinstance(result, FormatProblem), result
    return result


@pytest.mark.parametrize(
    ("code", "kind", "message"),
    [
        (GOOD.replace('"relative_box_area"', '"BoxArea"'), "name",
         'line 3: NAME must be snake_case (lowercase letters, digits, underscores), e.g. NAME = "box_area"'),
        (GOOD.replace('LEVEL = "object"', 'LEVEL = "object"\nimport pandas'), "imports",
         "line 5: imports pandas: only numpy, cv2, math and the standard library; rewrite without pandas"),
        (GOOD.replace("(image, obj, scene)", "(img, ann)"), "signature",
         "line 8: score must take (image, obj, scene) for LEVEL 'object', got (img, ann): "
         "the signature must be exactly score(image, obj, scene)"),
        (GOOD.replace('LEVEL = "object"', 'LEVEL = "image"'), "signature",
         "the signature must be exactly score(image, scene)"),
        (GOOD.replace("def score(", "def compute("), "signature",
         "the file defines no function score: define score(image, obj, scene) at the top level"),
        (GOOD.replace('"""Box area', 'x = 1\n"""Box area'), "contract", "the file has no module docstring"),
        (GOOD.replace('SUSPICIOUS = "low"', 'SUSPICIOUS = "up"'), "contract",
         "line 5: SUSPICIOUS must be 'high' or 'low', got 'up'"),
        (GOOD + "    return (\n", "syntax", "the file must be valid Python 3"),
    ],
)  # fmt: skip
def test_check_failures_give_specific_corrections(code: str, kind: str, message: str) -> None:
    problem = _problem(code)
    assert problem.kind == kind
    assert message in corrective_message(problem)


def test_every_problem_is_listed_at_once() -> None:
    code = (
        GOOD.replace('"relative_box_area"', '"Box Area"')
        .replace("import", "")
        .replace('SUSPICIOUS = "low"', 'SUSPICIOUS = "low"\nimport torch')
    )
    message = corrective_message(_problem(code))
    assert message.count("\n- ") == 1
    assert "NAME must be snake_case" in message and "imports torch" in message


def test_truncated_syntax_error_asks_for_a_shorter_file() -> None:
    extraction = extract_code(f"```python\n{GOOD[:-30]}")
    assert extraction.truncated and extraction.code is not None
    problem = _problem(extraction.code, truncated=extraction.truncated)
    assert problem.kind == "truncated"
    assert "your reply was cut off" in corrective_message(problem)


def test_extraction_is_plain_data() -> None:
    extraction = extract_code(FENCED)
    assert Extraction.model_validate(extraction.model_dump()) == extraction


def test_a_brainstorm_line_carries_its_targets() -> None:
    ideas = extract_ideas(
        "1. box_edge_fit (object) [tight, loose] - sides off the edges.\n"
        "2. dark_frames (image) [property] - dark images hide objects.\n"
        "3. stray_boxes (object) [spurious, made_up] - a box on nothing.\n"
        "4. plain_idea (object) - no brackets at all."
    )
    # The canonical order (the error types'), unknown words dropped, no brackets: no target said.
    assert [idea.targets for idea in ideas] == [("loose", "tight"), ("property",), ("spurious",), ()]
    assert ideas[0].rationale == "sides off the edges." and ideas[0].level == "object"


def test_a_targets_reply_is_read_from_its_first_line_that_names_one() -> None:
    assert parse_targets_reply("Sure.\nshift, loose\nand more") == ("shift", "loose")
    assert parse_targets_reply(" Catches: property") == ("property",)
    assert parse_targets_reply("I cannot tell.") == ()


def test_extract_ideas_from_a_numbered_list() -> None:
    reply = (
        "Here are some ideas:\n\n"
        "1. relative_box_area (object) - tiny boxes are often stray clicks.\n"
        "2. **Blur Score** [image]: blurry images hide object edges.\n"
        "3) `class_colour` (object) — pandas should be black and white\n"
        "4. relative_box_area (object) - a duplicate name\n"
        "Some closing words.\n"
        "# 5. dark_frames (image) - completion-mode comment lines work too<end_of_turn>"
    )
    assert extract_ideas(reply) == [
        Idea(name="relative_box_area", level="object", rationale="tiny boxes are often stray clicks."),
        Idea(name="blur_score", level="image", rationale="blurry images hide object edges."),
        Idea(name="class_colour", level="object", rationale="pandas should be black and white"),
        Idea(name="dark_frames", level="image", rationale="completion-mode comment lines work too"),
    ]
