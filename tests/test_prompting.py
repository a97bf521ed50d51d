"""Prompt rendering, dataset facts, example selection and the requests built for each mode."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from agent.authoring.extract import Idea, check_code, extract_code
from agent.authoring.prompting import (
    COMPLETION_STOPS,
    FailedItem,
    ImprovementContext,
    MetricTask,
    Prompts,
    RepairContext,
    build_brainstorm_request,
    build_format_retry,
    build_implement_request,
    build_improve_request,
    build_repair_request,
    build_targets_request,
    choose_examples,
    head_tail,
    idea_level,
    system_prompt,
)
from agent.data.coco import Dataset, load_coco
from agent.data.demo import generate_demo_dataset
from agent.data.facts import DatasetFacts, dataset_facts, facts_text
from agent.llm.model import Message, ModelRequest
from agent.metrics.contract import MetricSpec, list_builtin_metrics
from agent.resources import prompts_dir

TEMPLATES = {
    "system.j2", "brainstorm.j2", "implement.j2", "repair.j2", "format_retry.j2",
    "completion.j2", "completion_repair.j2", "completion_brainstorm.j2", "_completion_file.j2", "chat.j2",
    "completion_grammar.gbnf.j2", "_completion_lines.j2", "brainstorm_grammar.gbnf.j2", "improve.j2",
    "completion_improve.j2", "_completion_dataset.j2", "targets.j2", "completion_targets.j2", "targets_grammar.gbnf.j2",
}  # fmt: skip
BROKEN = '''"""Box area."""

NAME = "box_area"
LEVEL = "object"
SUSPICIOUS = "low"


def score(image, obj, scene):
    return obj["bbox"][2] * obj["bbox"][3] / obj["area"] - float("nan")
'''


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_demo_dataset(tmp_path_factory.mktemp("demo"), n_images=8, width=320, height=240)


@pytest.fixture(scope="module")
def dataset(demo: Path) -> Dataset:
    return load_coco(demo)


@pytest.fixture(scope="module")
def facts(dataset: Dataset) -> DatasetFacts:
    return dataset_facts(dataset)


@pytest.fixture(scope="module")
def prompts() -> Prompts:
    return Prompts()


@pytest.fixture
def task(facts: DatasetFacts) -> MetricTask:
    idea = Idea(name="loose_box", level="object", rationale="boxes much larger than the animal inside are loose labels")
    return MetricTask(
        idea=idea,
        description="Pandas, brown bears and red foxes on textured backgrounds.",
        facts=facts,
        examples=tuple(choose_examples(idea.text, level="object")),
    )


FAILURE = RepairContext(
    check="returns a finite float",
    message="score returned NaN for 32 of 32 boxes",
    item=FailedItem(
        image_id=3, file_name="000003.jpg", width=320, height=240, annotation_id=11,
        category="panda", bbox=(10.0, 20.5, 30.0, 40.0), got="nan",
    ),
    traceback=(
        'Traceback (most recent call last):\n  File "metric.py", line 9, in score\nZeroDivisionError: float division'
    ),
    stdout="x" * 5000,
    stderr=None,
)  # fmt: skip


# --- templates -------------------------------------------------------------------------------


def test_every_template_ships_and_is_hashed(prompts: Prompts) -> None:
    hashes = prompts.template_hashes()
    assert TEMPLATES | {"CONTRACT.md"} == set(hashes)
    assert all(len(value) == 64 for value in hashes.values())


def test_system_prompt_holds_the_contract_verbatim(prompts: Prompts) -> None:
    system = system_prompt(prompts)
    contract = (prompts_dir() / "CONTRACT.md").read_text(encoding="utf-8")
    assert contract in system.text
    assert "```python" in system.text and "numpy, cv2, math" in system.text
    assert set(system.templates) == {"system.j2", "CONTRACT.md"}
    assert system.sha256 == prompts.template_hashes()["system.j2"]


def test_missing_context_variable_is_an_error(prompts: Prompts) -> None:
    import jinja2

    with pytest.raises(jinja2.UndefinedError):
        prompts.render("implement.j2", description="d", facts="f", examples=[])  # no idea


def test_hashes_change_when_a_template_or_the_contract_changes(tmp_path: Path) -> None:
    copy = tmp_path / "prompts"
    shutil.copytree(prompts_dir(), copy)
    before = Prompts(copy).template_hashes()
    (copy / "format_retry.j2").write_text((copy / "format_retry.j2").read_text() + "Thanks.\n")
    (copy / "CONTRACT.md").write_text((copy / "CONTRACT.md").read_text() + "\nOne more rule.\n")
    after = Prompts(copy).template_hashes()
    changed = {name for name in before if before[name] != after[name]}
    assert changed == {"format_retry.j2", "CONTRACT.md"}
    assert Prompts(copy).render("format_retry.j2", correction="- x").text.endswith("Thanks.\n")
    assert "One more rule." in system_prompt(Prompts(copy)).text


def test_templates_render_without_html_escaping(prompts: Prompts, task: MetricTask) -> None:
    text = prompts.render("repair.j2", failure=FAILURE, code='x = "<a & b>"\n').text
    assert 'x = "<a & b>"' in text


def test_repair_prompt_describes_the_failure(prompts: Prompts, task: MetricTask) -> None:
    request = build_repair_request(prompts, task, (), FAILURE, BROKEN, mode="chat", temperature=0.2, max_tokens=900)
    text = request.messages[-1].content
    assert 'The metric failed the check "returns a finite float": score returned NaN for 32 of 32 boxes' in text
    assert (
        'The item that failed: image 3 (000003.jpg, 320x240 px), annotation 11, class "panda", '
        "bbox [x, y, w, h] = [10, 20.5, 30, 40]; score returned nan." in text
    )
    assert "ZeroDivisionError: float division" in text
    assert "characters skipped" in text  # stdout cut to head and tail
    assert "Its stderr" not in text  # no stderr given, no stderr section
    assert BROKEN.strip() in text
    assert "explain the bug in 2-3 sentences" in text
    assert {"repair.j2", "system.j2", "CONTRACT.md"} <= set(request.templates)


def test_head_tail() -> None:
    assert head_tail(None) is None and head_tail("  \n") is None
    assert head_tail("short") == "short"
    cut = head_tail("a" * 50 + "b" * 50, limit=10)
    assert cut == "a" * 10 + "\n[... 80 characters skipped ...]\n" + "b" * 10


# --- dataset facts ---------------------------------------------------------------------------


def test_facts_match_the_coco_file(demo: Path, facts: DatasetFacts) -> None:
    coco = json.loads(demo.read_text())
    annotations = coco["annotations"]
    assert facts.images == len(coco["images"]) == 8
    assert facts.annotations == len(annotations)
    for cls in facts.classes:
        mine = [a for a in annotations if a["category_id"] == cls.id]
        assert cls.boxes == len(mine)
        assert cls.images == len({a["image_id"] for a in mine})
    assert [c.name for c in facts.classes] == [c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])]
    assert [(s.width, s.height, s.images) for s in facts.image_sizes] == [(320, 240, 8)]
    per_image = [sum(a["image_id"] == image["id"] for a in annotations) for image in coco["images"]]
    assert (facts.boxes_per_image.min, facts.boxes_per_image.max) == (min(per_image), max(per_image))
    assert facts.boxes_per_image.share_without_boxes == sum(c == 0 for c in per_image) / 8
    widths = [a["bbox"][2] for a in annotations]
    assert facts.box_width is not None and facts.relative_width is not None
    assert (facts.box_width.min, facts.box_width.max) == (pytest.approx(min(widths)), pytest.approx(max(widths)))
    assert facts.relative_width.max == pytest.approx(max(widths) / 320, rel=1e-3)
    ids = sorted(a["id"] for a in annotations)  # first, middle and last by id
    assert [s.id for s in facts.samples] == [ids[0], ids[round((len(ids) - 1) / 2)], ids[-1]]
    assert facts.samples[0].category == next(
        c["name"] for c in coco["categories"] if c["id"] == annotations[0]["category_id"]
    )


def test_facts_are_deterministic_and_render_compactly(dataset: Dataset, facts: DatasetFacts) -> None:
    assert dataset_facts(dataset) == facts
    text = facts_text(facts)
    assert text.startswith(f"8 images, {facts.annotations} annotations, 3 classes\n")
    assert "image sizes: 320x240 (8)" in text
    assert text.count("\n  id ") == 3
    compact = facts_text(facts, compact=True)
    assert len(compact) < len(text) and compact.count("\n  id ") == 1


def test_facts_of_a_dataset_without_annotations(tmp_path: Path) -> None:
    path = tmp_path / "empty.json"
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg", "width": 10, "height": 10}],
                                "annotations": [], "categories": [{"id": 1, "name": "cat"}]}))  # fmt: skip
    facts = dataset_facts(load_coco(path))
    assert facts.box_width is None and facts.samples == ()
    assert facts.boxes_per_image.share_without_boxes == 1.0
    assert "box width px: none" in facts_text(facts)


# --- examples --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("idea", "level"),
    [
        ("boxes drawn too loose around the object", "object"),
        ("annotations whose class label is wrong", "object"),
        ("blurry or out-of-focus images", "image"),
        ("over-exposed, too bright frames", "image"),
        ("noise in the image", "image"),
    ],
)
def test_examples_follow_the_level_of_the_idea(idea: str, level: str) -> None:
    assert idea_level(idea) == level
    chosen = choose_examples(idea)
    assert len(chosen) == 2
    assert all(spec.level == level for spec in chosen)
    assert all(spec.output == "score" for spec in chosen)


def test_examples_follow_the_topic_and_are_deterministic() -> None:
    assert choose_examples("brightness of the image")[0].name == "brightness"
    assert choose_examples("blurry images: low sharpness")[0].name == "sharpness"
    assert choose_examples("duplicate boxes of the same class")[0].name == "annotation_duplicates"
    assert choose_examples("tiny box area relative to the image", k=1) == choose_examples(
        "tiny box area relative to the image", k=1
    )


def test_feature_metrics_only_for_neighbour_ideas() -> None:
    everything = list_builtin_metrics()
    plain = choose_examples("object class label consistency", k=len(everything))
    assert "appearance_neighbours" not in {spec.name for spec in plain}
    similar = choose_examples("boxes whose appearance is unlike their nearest neighbours of the same class")
    assert similar[0].name == "appearance_neighbours"


def test_short_files_are_preferred_on_equal_topic() -> None:
    chosen = choose_examples("zzz", k=3, level="image")
    lengths = [spec.source.count("\n") for spec in chosen]
    assert lengths == sorted(lengths)


# --- requests --------------------------------------------------------------------------------


def test_chat_implement_request(prompts: Prompts, task: MetricTask) -> None:
    request = build_implement_request(prompts, task, (), mode="chat", temperature=0.3, max_tokens=1200, seed=7)
    assert isinstance(request, ModelRequest)
    assert request.mode == "chat" and request.prompt is None and request.reply_prefix == ""
    assert [m.role for m in request.messages] == ["system", "user"]
    assert request.messages[0].content == system_prompt(prompts).text
    user = request.messages[1].content
    assert "loose_box" in user and task.description in user and facts_text(task.facts) in user
    for example in task.examples:
        assert example.source.strip() in user
    assert (request.temperature, request.max_tokens, request.seed) == (0.3, 1200, 7)
    hashes = prompts.template_hashes()
    assert request.templates == {name: hashes[name] for name in ("implement.j2", "system.j2", "CONTRACT.md")}


def test_chat_request_continues_the_callers_conversation(prompts: Prompts, task: MetricTask) -> None:
    first = build_implement_request(prompts, task, (), mode="chat", temperature=0.2, max_tokens=800)
    conversation = (*first.messages, Message(role="assistant", content="no code here"))
    extraction = extract_code("no code here")
    assert extraction.problem is not None
    retry = build_format_retry(
        prompts, task, conversation, extraction.problem, mode="chat", temperature=0.2, max_tokens=800
    )
    assert retry.messages[:-1] == conversation  # the system prompt is not repeated
    assert retry.messages[-1].role == "user"
    assert "no ```python block defining score" in retry.messages[-1].content
    assert {"format_retry.j2", "system.j2", "CONTRACT.md"} == set(retry.templates)


def test_chat_brainstorm_request(prompts: Prompts, facts: DatasetFacts) -> None:
    request = build_brainstorm_request(
        prompts, (), description="Animals.", facts=facts, n=5, concern="swapped classes",
        existing=["brightness"], mode="chat", temperature=0.8, max_tokens=600,
    )  # fmt: skip
    text = request.messages[-1].content
    assert "Propose 5 metric ideas" in text and "swapped classes" in text and "brightness" in text
    assert "1. snake_case_name (object) [shift, loose] - " in text
    assert "[property] for a kind of" in text and "spurious (box where no object" in text


def test_a_targets_request_in_both_modes(prompts: Prompts, task: MetricTask) -> None:
    chat = build_targets_request(prompts, task.idea, description="Animals.", mode="chat", temperature=0.2)
    assert "Which label errors should it catch?" in chat.messages[-1].content and chat.max_tokens <= 32
    held = build_targets_request(
        prompts, task.idea, description="Animals.", mode="completion", temperature=0.2, grammar=True
    )
    assert held.prompt is not None and held.prompt.endswith(" Catches:") and held.reply_prefix == " Catches:"
    assert held.grammar is not None and '"property"' in held.grammar and held.stop == ("\n",)


def test_completion_implement_request(prompts: Prompts, task: MetricTask) -> None:
    request = build_implement_request(prompts, task, (), mode="completion", temperature=0.2, max_tokens=400)
    assert request.mode == "completion" and request.prompt is not None
    assert request.prompt.endswith(request.reply_prefix)
    assert request.stop == COMPLETION_STOPS and "\ndef score(" in request.stop
    prefix = request.reply_prefix
    assert prefix.startswith('"""') and 'NAME = "loose_box"' in prefix and 'LEVEL = "object"' in prefix
    assert "def score(image, obj, scene):" in prefix
    # The prefix ends on the scaffold every box metric starts with: the box's pixels, clipped, as `crop`,
    # and the band inside its edges and the ring outside them.
    assert "red, green, blue = crop[:, :, 0], crop[:, :, 1], crop[:, :, 2]" in prefix
    assert "hue, saturation, value = cv2.split(cv2.cvtColor(box, cv2.COLOR_RGB2HSV).astype(np.float32))" in prefix
    assert prefix.rstrip().endswith("band_edges, ring_edges = around_edges[band], around_edges[ring]")
    assert "if x1 - x0 < 3 or y1 - y0 < 3:\n        return None" in prefix
    # The dataset is described before the file, as comments; the file's docstring is one sentence.
    before = request.prompt[: -len(prefix)]
    assert f"# The dataset: {task.description}" in before and "\n# 8 images" in before
    assert task.description not in prefix and "8 images" not in prefix
    assert prefix.startswith('"""Loose box: boxes much larger than the animal inside are loose labels"""\n')
    # About 4 characters per token: a 270M model's context stays small.
    assert len(request.prompt) / 4 < 1500
    assert {
        "completion.j2",
        "_completion_file.j2",
        "_completion_lines.j2",
        "_completion_dataset.j2",
        "implement.j2",
    } == set(request.templates)
    # A body completed by the model gives a file that passes the static check.
    reply = prefix + "    _, _, w, h = obj['bbox']\n    return float(w * h)\n"
    extraction = extract_code(reply, stop=request.stop)
    assert extraction.how == "whole"
    assert isinstance(check_code(extraction.code or ""), MetricSpec)


def test_completion_prompt_for_an_image_idea_uses_a_short_example(prompts: Prompts, facts: DatasetFacts) -> None:
    idea = Idea(name="dark_frames", rationale='very dark "frames" hide objects """ \\d', suspicious="low")
    task = MetricTask(idea=idea, description="Night photos.", facts=facts)
    request = build_implement_request(prompts, task, (), mode="completion", temperature=0.0, max_tokens=200)
    assert "def score(image, scene):" in request.reply_prefix
    assert 'SUSPICIOUS = "low"' in request.reply_prefix
    assert "# --- metrics/" in request.prompt.split(request.reply_prefix)[0]  # one example file
    spec = check_code(request.reply_prefix + "    return 0.0\n")
    assert isinstance(spec, MetricSpec) and spec.level == "image"


def test_completion_repair_request(prompts: Prompts, task: MetricTask) -> None:
    request = build_repair_request(
        prompts, task, (), FAILURE, BROKEN, mode="completion", temperature=0.2, max_tokens=400
    )
    assert request.prompt is not None and request.prompt.endswith(request.reply_prefix)
    before = request.prompt[: -len(request.reply_prefix)]
    assert "# --- metrics/loose_box.py (broken" in before
    assert '#     return obj["bbox"][2]' in before
    assert "# returns a finite float: score returned NaN" in before
    assert "# ZeroDivisionError: float division" in before
    assert before.rstrip().endswith("# --- metrics/loose_box.py (fixed)")
    assert "completion_repair.j2" in request.templates and "repair.j2" in request.templates
    assert request.messages[-1].role == "user"  # the chat text of the turn is still recorded


IMPROVEMENT = ImprovementContext(
    targets=("loose", "shift"),
    figures=(("loose", 0.21, 0.2), ("shift", None, None)),
    overall="AP 0.210 vs random 0.200 (random rankings reach 0.300 one time in 20; 40 errors): not shown better",
    misses=("annotation 7 (image 2, class fox): box [1, 2, 30, 40]; injected loose: grown from the true box",),
)


def test_an_improve_request_shows_the_figures_the_misses_and_the_code(prompts: Prompts, task: MetricTask) -> None:
    chat = build_improve_request(prompts, task, (), IMPROVEMENT, BROKEN, mode="chat", temperature=0.2, max_tokens=900)
    turn = chat.messages[-1].content
    assert "- loose: AP 0.210 against random's 0.200" in turn and "- shift: AP n/a against random's n/a" in turn
    assert "Overall: AP 0.210 vs random 0.200" in turn and "- annotation 7 (image 2, class fox)" in turn
    assert BROKEN.strip() in turn and "explain in 2-3 sentences what the metric misses" in turn
    assert "improve.j2" in chat.templates and "repair.j2" not in chat.templates

    completion = build_improve_request(
        prompts, task, (), IMPROVEMENT, BROKEN, mode="completion", temperature=0.2, max_tokens=400, grammar=True
    )
    assert completion.prompt is not None and completion.prompt.endswith(completion.reply_prefix)
    held = completion.prompt[: -len(completion.reply_prefix)]
    assert (
        "ended with this line" in held
        and '#   return obj["bbox"][2]' in held
        and "# --- metrics/loose_box.py (runs" not in held
    )
    completion = build_improve_request(
        prompts, task, (), IMPROVEMENT, BROKEN, mode="completion", temperature=0.2, max_tokens=400
    )
    before = completion.prompt[: -len(completion.reply_prefix)]
    assert "# --- metrics/loose_box.py (runs, but misses the loose/shift errors it should find)" in before
    assert '#     return obj["bbox"][2]' in before and "# On injected errors: AP 0.210" in before
    assert "# - annotation 7" in before and before.rstrip().endswith(
        "(better: ranks the loose/shift errors first, with another line)"
    )
    assert completion.grammar is None and "completion_improve.j2" in completion.templates


def test_completion_format_retry_and_brainstorm(prompts: Prompts, task: MetricTask) -> None:
    problem = check_code(BROKEN.replace('"box_area"', '"BoxArea"'))
    assert not isinstance(problem, MetricSpec)
    retry = build_format_retry(
        prompts, task, (), problem, code=BROKEN, mode="completion", temperature=0.2, max_tokens=400
    )
    assert retry.prompt is not None and "# - line 3: NAME must be snake_case" in retry.prompt
    brainstorm = build_brainstorm_request(
        prompts, (), description="Animals.", facts=task.facts, n=4, mode="completion", temperature=0.7,
        max_tokens=200,
    )  # fmt: skip
    assert brainstorm.prompt is not None and brainstorm.reply_prefix == "# 1."
    assert brainstorm.prompt.endswith("# 1.")


def test_a_grammar_request_holds_the_grammar_and_shows_its_shape(prompts: Prompts, task: MetricTask) -> None:
    free = build_implement_request(prompts, task, (), mode="completion", temperature=0.2, max_tokens=400)
    held = build_implement_request(prompts, task, (), mode="completion", temperature=0.2, max_tokens=400, grammar=True)
    assert free.grammar is None and "completion_grammar.gbnf.j2" not in free.templates
    assert held.grammar is not None and held.grammar.startswith('root ::= "    return "')
    assert {"completion_grammar.gbnf.j2", "_completion_lines.j2"} <= set(held.templates)
    # The few-shot lines sit before the new file, never inside it: a candidate carries none of them.
    assert "# How other box metrics end" in held.prompt and "How other" not in held.reply_prefix
    assert "How other" not in (free.prompt or "")
    assert held.reply_prefix == free.reply_prefix
    # Every class of the dataset may be chosen; the planes are the scaffold's names.
    for name in ("panda", "bear", "fox"):
        assert f'"{name}"' in held.grammar
    for plane in ("red", "green", "blue", "grey", "hue", "saturation", "value"):
        assert f"{plane} = " in held.reply_prefix or f"{plane}," in held.reply_prefix
    # The recorded form carries the grammar; an unconstrained request has no such key (old recordings).
    assert '"grammar"' in held.normalised() and '"grammar"' not in free.normalised()
    assert ModelRequest.model_validate_json(held.normalised()) == held
    repair = build_repair_request(
        prompts, task, (), FAILURE, BROKEN, mode="completion", temperature=0.2, max_tokens=400, grammar=True
    )
    assert repair.grammar == held.grammar and "How other box metrics end" in (repair.prompt or "")
    chat = build_implement_request(prompts, task, (), mode="chat", temperature=0.2, max_tokens=400, grammar=True)
    assert chat.grammar is None  # a grammar is for completions only


def test_the_grammar_offers_only_class_names_safe_in_both_languages(prompts: Prompts, task: MetricTask) -> None:
    odd = task.facts.model_copy(
        update={"classes": (*task.facts.classes, task.facts.classes[0].model_copy(update={"name": 'say "cheese"\\'}))}
    )
    held = build_implement_request(
        prompts, task.model_copy(update={"facts": odd}), (), mode="completion", temperature=0.2, max_tokens=400,
        grammar=True,
    )  # fmt: skip
    assert held.grammar is not None and "cheese" not in held.grammar and '"fox"' in held.grammar
    image_task = task.model_copy(update={"idea": Idea(name="dark_frames", rationale="dark frames", level="image")})
    image = build_implement_request(
        prompts, image_task, (), mode="completion", temperature=0.2, max_tokens=400, grammar=True
    )
    assert image.grammar is not None and "category" not in image.grammar  # no class guard for a whole image
    assert "# How other image metrics end" in (image.prompt or "")


def test_the_classes_an_idea_names_survive_the_grammars_cap(prompts: Prompts, task: MetricTask) -> None:
    template = task.facts.classes[0]
    many = tuple(template.model_copy(update={"name": f"class {number}"}) for number in range(40))
    facts = task.facts.model_copy(update={"classes": (*many, template.model_copy(update={"name": "snow leopard"}))})
    idea = Idea(name="snow_leopards_without_spots", rationale="snow leopard boxes without spots", level="object")
    held = build_implement_request(
        prompts, task.model_copy(update={"facts": facts, "idea": idea}), (), mode="completion", temperature=0.2,
        max_tokens=400, grammar=True,
    )  # fmt: skip
    assert held.grammar is not None and '"snow leopard"' in held.grammar
    assert '"class 0"' in held.grammar and '"class 39"' not in held.grammar  # the rest, in order, up to the cap


def test_requests_serialise_for_transcripts(prompts: Prompts, task: MetricTask) -> None:
    for mode in ("chat", "completion"):
        request = build_implement_request(prompts, task, (), mode=mode, temperature=0.2, max_tokens=500)
        again = build_implement_request(prompts, task, (), mode=mode, temperature=0.2, max_tokens=500)
        assert request.normalised() == again.normalised()
        assert ModelRequest.model_validate_json(request.normalised()) == request


@pytest.mark.slow
def test_templates_ship_in_the_wheel(tmp_path: Path) -> None:
    import subprocess
    import sys
    import zipfile

    repo = Path(__file__).resolve().parents[1]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(repo)],
        check=True,
        capture_output=True,
        timeout=900,
    )
    (wheel,) = tmp_path.glob("metricsmith-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"agent/prompts/{name}" for name in TEMPLATES} <= names


def _gbnf_regex(grammar: str, rule: str = "root") -> re.Pattern[str]:
    """A regex for a GBNF grammar without recursion (ours): each rule name replaced by its body."""
    rules: dict[str, str] = {}
    for line in grammar.splitlines():
        if "::=" in line and not line.lstrip().startswith("#"):
            name, body = line.split("::=", 1)
            rules[name.strip()] = body.strip()
    token = re.compile(r'"((?:\\.|[^"\\])*)"|(\[[^\]]*\])|([A-Za-z][A-Za-z0-9-]*)|(\{\d+(?:,\d*)?\}|[()|?*+])|\s+')

    def convert(body: str) -> str:
        out = []
        for literal, klass, name, operator in token.findall(body):
            if literal:
                out.append(re.escape(literal.encode().decode("unicode_escape")))
            elif klass:
                out.append(klass)
            elif name:
                out.append(f"(?:{convert(rules[name])})")
            elif operator:
                out.append({"(": "(?:"}.get(operator, operator))
        return "".join(out)

    return re.compile(convert(rules[rule]))


def test_the_code_grammar_keeps_each_plane_tested_alone_within_its_range(prompts: Prompts) -> None:
    grammar = prompts.render("completion_grammar.gbnf.j2", level="object", classes=["fox", "bear"], scope=None).text
    line = _gbnf_regex(grammar)
    assert line.fullmatch("    return float(np.mean((hue > 35) & (hue < 85)))\n")
    assert line.fullmatch('    return None if obj["category"] != "fox" else float(np.mean((value > 230)))\n')
    assert line.fullmatch("    return float(np.std(grey))\n")
    # The green-foliage candidate of the quick start: hue runs 0-179, so this tested nothing.
    assert not line.fullmatch("    return float(np.mean((hue < 255) & (saturation > 0)))\n")
    assert not line.fullmatch("    return float(np.mean((hue > 180)))\n")
    assert line.fullmatch("    return float(np.mean((saturation > 250)))\n")
    assert not line.fullmatch("    return float(np.mean((saturation > 256)))\n")
    assert not line.fullmatch("    return float(grey / red)\n")  # nothing divides


def test_an_idea_about_one_class_gets_its_guard_from_the_grammar(prompts: Prompts, facts: DatasetFacts) -> None:
    idea = Idea(name="fox_not_orange", rationale="fox boxes that are not mostly orange", level="object")
    request = build_implement_request(
        prompts, MetricTask(idea=idea, description="Animals.", facts=facts), (), mode="completion",
        temperature=0.2, max_tokens=100, grammar=True,
    )  # fmt: skip
    assert request.grammar is not None
    line = _gbnf_regex(request.grammar)
    assert line.fullmatch('    return None if obj["category"] != "fox" else float(np.mean((red > 200)))\n')
    assert not line.fullmatch("    return float(np.mean((red > 200)))\n")  # every box: class_scope would fail
    assert not line.fullmatch('    return None if obj["category"] == "fox" else float(np.mean((red > 200)))\n')
    other = idea.model_copy(update={"rationale": "boxes that are not on a panda"})
    free_choice = build_implement_request(
        prompts, MetricTask(idea=other, description="Animals.", facts=facts), (), mode="completion",
        temperature=0.2, max_tokens=100, grammar=True,
    )  # fmt: skip
    assert _gbnf_regex(free_choice.grammar or "").fullmatch("    return float(np.mean((red > 200)))\n")


def test_the_scaffold_offers_the_band_and_ring_around_the_box(prompts: Prompts, task: MetricTask) -> None:
    """A grammar line comparing the band inside the box's edges with the ring outside them: tight vs loose boxes."""
    request = build_implement_request(
        prompts, task, (), mode="completion", temperature=0.2, max_tokens=100, grammar=True
    )  # fmt: skip
    contrast = "    return float(abs(np.median(band_grey) - np.median(ring_grey)))\n"
    assert _gbnf_regex(request.grammar or "").fullmatch(contrast)
    assert _gbnf_regex(request.grammar or "").fullmatch("    return float(np.mean((edges > 40)))\n")
    assert not _gbnf_regex(request.grammar or "").fullmatch(
        "    return float(abs(np.median(band_grey) - np.mean(ring_grey)))\n"  # two statistics: not a contrast
    )
    spec = check_code(request.reply_prefix + contrast)
    assert isinstance(spec, MetricSpec)
    namespace: dict[str, object] = {}
    exec(compile(spec.source, "scaffold.py", "exec"), namespace)  # the scaffold is ours; the line is the grammar's
    score = namespace["score"]
    rng = np.random.default_rng(0)
    image = rng.integers(90, 110, size=(120, 160, 3)).astype(np.uint8)  # a noisy grey background
    image[40:80, 50:110] = rng.integers(200, 230, size=(40, 60, 3))  # a bright object
    scene = {"image": {"width": 160, "height": 120}, "annotations": []}

    def box(x: float, y: float, w: float, h: float) -> float:
        obj = {"id": 1, "bbox": [x, y, w, h], "category": "fox", "category_id": 1}
        return float(score(image, obj, {**scene, "annotations": [obj]}))  # type: ignore[operator]

    tight, loose = box(50, 40, 60, 40), box(35, 25, 90, 70)
    assert tight > 80 and loose < 10, (tight, loose)
    assert box(0, 0, 160, 120) == 0.0  # a box covering the image has no ring: no contrast, not an error
