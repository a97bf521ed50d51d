"""Prompt text for one turn: templates, example metrics, and the requests built from them (with the dataset
facts of `agent.data.facts`).

The templates are jinja2 files in the prompts folder (`agent.resources.prompts_dir()`), rendered with
StrictUndefined so a missing variable is an error, not a silently empty line. The metric contract
(CONTRACT.md) is injected into the system prompt verbatim as the global `contract`, so what the
model is told is always exactly what `agent.metrics.contract` checks.

Every request records the sha256 of each source that went into it (templates, included templates
and CONTRACT.md) in `ModelRequest.templates`, so a replay mismatch can name the template that
changed.

The split with the conversation manager: this module renders the text of ONE turn and wraps it in
a `ModelRequest`; the caller owns the conversation (which turns exist and which to send) and hands
it in as a tuple of `Message`. Chat mode appends the new user turn (and the system prompt, when the
conversation has none). Completion mode, for base models with no chat template, renders a code
prompt instead (completion*.j2) whose `reply_prefix` block is the start of the metric file the model
continues; `messages` then still records the conversation plus the chat text of the turn.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import jinja2
import jinja2.meta
import jinja2.nodes
from pydantic import BaseModel, ConfigDict

from agent import resources
from agent.authoring.extract import FormatProblem, Idea, corrective_message
from agent.data.facts import DatasetFacts, compact_number, facts_text
from agent.llm.model import Message, Mode, ModelRequest
from agent.metrics.contract import MetricSpec, list_builtin_metrics

__all__ = [
    "COMPLETION_STOPS",
    "FailedItem",
    "ImprovementContext",
    "MetricTask",
    "Prompts",
    "RenderedPrompt",
    "RepairContext",
    "build_brainstorm_request",
    "build_chat_request",
    "build_format_retry",
    "build_implement_request",
    "build_improve_request",
    "build_repair_request",
    "build_targets_request",
    "choose_examples",
    "head_tail",
    "idea_class_scope",
    "idea_level",
    "system_prompt",
]

CONTRACT_FILE = "CONTRACT.md"
REPLY_PREFIX_BLOCK = "reply_prefix"
# Where a base model's continuation has left the function body: a new file, a test harness, a
# fence, a second score(). Local servers accept any number; OpenAI's own completions API takes 4.
COMPLETION_STOPS: tuple[str, ...] = ("\nif __name__", "\n```", "\nclass ", "\n# ---", "\ndef score(", '\n"""')
BRAINSTORM_COMPLETION_STOPS: tuple[str, ...] = ("\n\n", "\n# Ideas", "\n```")
# A 270M model's context is small and its attention short: completion prompts keep examples and
# failing code short, and tracebacks to their last lines.
_COMPLETION_EXAMPLE_MAX_LINES = 40
_COMPLETION_CODE_MAX_LINES = 60
_COMPLETION_ERROR_MAX_LINES = 12
_STREAM_HEAD_TAIL = 600

Level = Literal["image", "object"]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- templates -------------------------------------------------------------------------------


class RenderedPrompt(_Frozen):
    """A rendered template: its text, its name, the sha256 of its source, and of every source it used."""

    text: str
    template: str
    sha256: str
    # Name -> sha256 for the template itself, templates it includes, and CONTRACT.md when it uses it.
    templates: dict[str, str]
    # Completion templates only: the text of their reply_prefix block, which the prompt ends with.
    reply_prefix: str = ""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _docstring_safe(text: str) -> str:
    """Text that cannot end or corrupt the triple-quoted docstring it is placed in."""
    return text.replace("\\", "/").replace('"""', "'''")


class Prompts:
    """The prompt templates of one prompts folder (by default the shipped one)."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = Path(directory) if directory is not None else resources.prompts_dir()
        self._env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(self.directory),
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=True,
            trim_blocks=True,
            lstrip_blocks=True,
            # Plain text and code, not HTML: escaping would turn `<` and quotes in code into entities.
            autoescape=False,
        )
        self._env.filters["num"] = compact_number
        self._env.filters["docstring_safe"] = _docstring_safe
        self._env.globals["contract"] = self.contract()

    def contract(self) -> str:
        """CONTRACT.md, exactly as shipped."""
        return (self.directory / CONTRACT_FILE).read_text(encoding="utf-8")

    def template_hashes(self) -> dict[str, str]:
        """sha256 of every .j2 template and of CONTRACT.md, by file name."""
        files = [*sorted(self.directory.glob("*.j2")), self.directory / CONTRACT_FILE]
        return {file.name: _sha256(file.read_bytes()) for file in files}

    def _sources_used(self, name: str, seen: set[str] | None = None) -> set[str]:
        """`name`, the templates it includes or imports (recursively), and CONTRACT.md if it reads `contract`."""
        seen = set() if seen is None else seen
        if name in seen:
            return seen
        seen.add(name)
        source, _, _ = self._env.loader.get_source(self._env, name)  # type: ignore[union-attr]
        tree = self._env.parse(source)
        # meta.find_undeclared_variables skips globals, and `contract` is one: look for the name itself.
        if any(node.name == "contract" for node in tree.find_all(jinja2.nodes.Name)):
            seen.add(CONTRACT_FILE)
        for child in jinja2.meta.find_referenced_templates(tree):
            if child is not None:
                self._sources_used(child, seen)
        return seen

    def render(self, name: str, **context: Any) -> RenderedPrompt:
        """Render template `name`; a completion template's reply_prefix block is returned alongside."""
        template = self._env.get_template(name)
        text = template.render(**context)
        prefix = ""
        if REPLY_PREFIX_BLOCK in template.blocks:
            prefix = "".join(template.blocks[REPLY_PREFIX_BLOCK](template.new_context(context)))
            if not text.endswith(prefix):
                raise ValueError(f"{name}: the {REPLY_PREFIX_BLOCK} block must end the template")
        hashes = self.template_hashes()
        used = {source: hashes[source] for source in sorted(self._sources_used(name)) if source in hashes}
        return RenderedPrompt(text=text, template=name, sha256=used[name], templates=used, reply_prefix=prefix)


def system_prompt(prompts: Prompts) -> RenderedPrompt:
    """The chat-mode system prompt: the role, the contract verbatim, and the rules."""
    return prompts.render("system.j2")


# --- example selection -----------------------------------------------------------------------

_OBJECT_WORDS = (
    "box", "bbox", "label", "annotation", "annotat", "object", "class", "categor", "instance",
    "polygon", "segment", "mask", "overlap", "iou", "duplicat", "crop",
)  # fmt: skip
_IMAGE_WORDS = (
    "image", "frame", "photo", "blur", "bright", "exposure", "expos", "noise", "noisy", "sharp",
    "contrast", "dark", "colour", "color", "saturat", "jpeg", "compress", "resolution",
)  # fmt: skip
_FEATURE_WORDS = ("neighbour", "neighbor", "similar", "appearance", "embedding", "nearest", "look")
_STOPWORDS = frozenset(
    ("a", "an", "and", "are", "as", "at", "be", "by", "each", "for", "from", "how", "in", "into", "is", "it",
     "its", "more", "less", "not", "of", "on", "one", "or", "per", "than", "that", "the", "their", "this", "to",
     "very", "what", "when", "whether", "which", "with")
)  # fmt: skip
_WORD = re.compile(r"[a-z][a-z0-9]*")


def _tokens(text: str) -> set[str]:
    words = set()
    for word in _WORD.findall(text.lower().replace("_", " ")):
        if word in _STOPWORDS or len(word) < 3:
            continue
        # A crude stem: plurals, then a 6-letter prefix, so "boxes"/"box" and "brightness"/"bright" meet.
        if word.endswith(("xes", "ches", "shes", "sses")):
            word = word[:-2]
        elif len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
            word = word[:-1]
        words.add(word[:6])
    return words


def _mentions(tokens: set[str], stems: Iterable[str]) -> int:
    return sum(1 for stem in stems if any(token.startswith(stem[:6]) for token in tokens))


def idea_level(idea: str) -> Level | None:
    """The level an idea's words point at ("object" for boxes and labels, "image" for exposure, blur...)."""
    tokens = _tokens(idea)
    objects, images = _mentions(tokens, _OBJECT_WORDS), _mentions(tokens, _IMAGE_WORDS)
    if objects == images:
        return None
    return "object" if objects > images else "image"


_BOX_WORDS = r"(?:box|boxes|bbox|bboxes|label|labels|annotation|annotations)"


def idea_class_scope(idea: str, class_names: Iterable[str]) -> str | None:
    """The class an idea is about, when it names exactly one, right before its boxes ("fox boxes that ...")."""
    named = [name for name in class_names if re.search(rf"\b{re.escape(name.lower())}s?\b", idea.lower())]
    if len(named) != 1:
        return None  # "panda and fox boxes", "boxes that are not on a panda": not one class's boxes
    found = {
        name for name in class_names if re.search(rf"\b{re.escape(name.lower())}s?\s+{_BOX_WORDS}\b", idea.lower())
    }
    return found.pop() if len(found) == 1 else None


def _metric_text(spec: MetricSpec) -> str:
    return " ".join([spec.name, spec.title or "", spec.description, *spec.tags])


def choose_examples(
    idea: str, k: int = 2, *, level: Level | None = None, metrics: Sequence[MetricSpec] | None = None
) -> list[MetricSpec]:
    """Up to `k` reference metrics to show as examples for `idea`. Deterministic.

    Ranked by: same level as the idea (given, or read from its words), topic overlap (shared words
    with the metric's name, title, description and tags, rarer words counting more), then shorter
    files (40 lines weigh about as much as one shared rare word). Feature metrics are left out unless
    the idea is about neighbours or appearance.
    """
    # A learned metric's file is a feature extractor for a classifier metricsmith trains: not a pattern to copy.
    pool = [spec for spec in (list_builtin_metrics() if metrics is None else metrics) if spec.combine != "learned"]
    tokens = _tokens(idea)
    if not _mentions(tokens, _FEATURE_WORDS):
        pool = [spec for spec in pool if spec.output != "features"]
    if not pool or k <= 0:
        return []
    wanted = level or idea_level(idea)
    texts = {spec.name: _tokens(_metric_text(spec)) for spec in pool}
    frequency = Counter(token for words in texts.values() for token in words)

    def topic(spec: MetricSpec) -> float:
        shared = tokens & texts[spec.name]
        return sum(math.log((len(pool) + 1) / (frequency[token] + 0.5)) for token in shared)

    def rank(spec: MetricSpec) -> tuple[int, float, str]:
        # Every 40 lines cost about one shared rare word: a long example eats the context it is meant to help.
        lines = spec.source.count("\n")
        return (0 if wanted is None or spec.level == wanted else 1, lines / 40 - topic(spec), spec.name)

    return sorted(pool, key=rank)[:k]


# --- requests --------------------------------------------------------------------------------


class MetricTask(_Frozen):
    """Everything the prompts for one metric need to know about what to write."""

    idea: Idea
    description: str
    facts: DatasetFacts
    examples: tuple[MetricSpec, ...] = ()

    @property
    def level(self) -> Level:
        """The idea's level, else the one its words point at, else "object" (most label errors are boxes)."""
        return self.idea.level or idea_level(self.idea.text) or "object"


class FailedItem(_Frozen):
    """The image or box a check failed on, as the repair prompt describes it."""

    image_id: int
    file_name: str | None = None
    width: int | None = None
    height: int | None = None
    annotation_id: int | None = None
    category: str | None = None
    bbox: tuple[float, float, float, float] | None = None
    got: str | None = None  # what score() returned, as text ("nan", "'abc'"), when it returned
    # The validation set's own phrase for it ("the tiny 2×2 box at [...] in a 320×240 image, class fox").
    description: str | None = None


class RepairContext(_Frozen):
    """Why a metric must be repaired: the failing check and what the sandbox saw."""

    check: str
    message: str
    item: FailedItem | None = None
    traceback: str | None = None  # already trimmed by the caller
    stdout: str | None = None
    stderr: str | None = None


def head_tail(text: str | None, limit: int = _STREAM_HEAD_TAIL) -> str | None:
    """`text` cut to its first and last `limit` characters (None and blank stay None)."""
    if text is None or not text.strip():
        return None
    if len(text) <= 2 * limit:
        return text
    skipped = len(text) - 2 * limit
    return f"{text[:limit]}\n[... {skipped} characters skipped ...]\n{text[-limit:]}"


def _chat_messages(
    prompts: Prompts, conversation: tuple[Message, ...], turn: RenderedPrompt
) -> tuple[tuple[Message, ...], dict[str, str]]:
    """The conversation plus the new user turn, with the system prompt first when it has none."""
    templates = dict(turn.templates)
    if conversation and conversation[0].role == "system":
        system = system_prompt(prompts)
        if conversation[0].content == system.text:  # only claim hashes for text we know we rendered
            templates.update(system.templates)
        return (*conversation, Message(role="user", content=turn.text)), templates
    system = system_prompt(prompts)
    templates.update(system.templates)
    messages = (Message(role="system", content=system.text), *conversation, Message(role="user", content=turn.text))
    return messages, templates


def _request(
    prompts: Prompts,
    conversation: tuple[Message, ...],
    turn: RenderedPrompt,
    completion: RenderedPrompt | None,
    *,
    mode: Mode,
    temperature: float,
    max_tokens: int,
    seed: int | None,
    stop: Sequence[str],
    grammar: RenderedPrompt | None = None,
) -> ModelRequest:
    if mode == "chat":
        messages, templates = _chat_messages(prompts, conversation, turn)
        return ModelRequest(
            mode="chat",
            messages=messages,
            temperature=temperature,
            max_tokens=max_tokens,
            seed=seed,
            templates=templates,
        )
    if mode != "completion" or completion is None:
        raise ValueError(f"mode must be 'chat' or 'completion', got {mode!r}")
    return ModelRequest(
        mode="completion",
        messages=(*conversation, Message(role="user", content=turn.text)),
        prompt=completion.text,
        reply_prefix=completion.reply_prefix,
        temperature=temperature,
        max_tokens=max_tokens,
        stop=tuple(stop),
        seed=seed,
        grammar=grammar.text if grammar is not None else None,
        templates={**turn.templates, **completion.templates, **(grammar.templates if grammar is not None else {})},
    )


# Class names that can sit inside both a GBNF string literal and a Python one, unescaped.
_PLAIN_CLASS_NAME = re.compile(r"[A-Za-z0-9 _.-]{1,40}")
_GRAMMAR_MAX_CLASSES = 30


def _code_grammar(prompts: Prompts, task: MetricTask, mode: Mode, grammar: bool) -> RenderedPrompt | None:
    """The grammar that holds a completion to valid code over the scaffold's names, when asked for."""
    if not grammar or mode != "completion":
        return None
    names = [c.name for c in task.facts.classes if _PLAIN_CLASS_NAME.fullmatch(c.name)]
    if len(names) > _GRAMMAR_MAX_CLASSES:
        # Past the cap, the classes the idea names come first: "fox boxes ..." must be able to say "fox".
        words = set(re.findall(r"[a-z0-9]+", task.idea.text.lower()))
        names.sort(key=lambda name: not set(re.findall(r"[a-z0-9]+", name.lower())) <= words)
    scope = idea_class_scope(task.idea.rationale, [c.name for c in task.facts.classes])
    if task.level != "object" or scope is None or not _PLAIN_CLASS_NAME.fullmatch(scope):
        scope = None
    # An idea about one class's boxes gets its guard written for it: left to choose, the model mostly
    # scored every box (and validation's class_scope check failed every sample).
    return prompts.render(
        "completion_grammar.gbnf.j2", level=task.level, classes=names[:_GRAMMAR_MAX_CLASSES], scope=scope
    )


def _completion_context(task: MetricTask, grammar: bool) -> dict[str, Any]:
    """What the completion templates need; text that lands inside a docstring is made safe for it."""
    title = task.idea.title and _docstring_safe(task.idea.title)
    idea = task.idea.model_copy(update={"rationale": _docstring_safe(task.idea.rationale), "title": title})
    return {
        "idea": idea,
        "level": task.level,
        # A base model cannot be asked which end is suspicious; "high" fits most "how odd is this" scores.
        "suspicious": task.idea.suspicious or "high",
        "description": _docstring_safe(task.description),
        "facts": _docstring_safe(facts_text(task.facts, compact=True)),
        "examples": _completion_examples(task),
        "grammar": grammar,
    }


def _completion_examples(task: MetricTask) -> list[MetricSpec]:
    """One short example file: the task's own if it has one, else the best short reference metric."""
    short = [spec for spec in task.examples if spec.source.count("\n") <= _COMPLETION_EXAMPLE_MAX_LINES]
    if short:
        return short[:1]
    pool = [spec for spec in list_builtin_metrics() if spec.source.count("\n") <= _COMPLETION_EXAMPLE_MAX_LINES]
    return choose_examples(task.idea.text, k=1, level=task.level, metrics=pool)


def build_brainstorm_request(
    prompts: Prompts,
    conversation: tuple[Message, ...],
    *,
    description: str,
    facts: DatasetFacts,
    n: int,
    mode: Mode,
    temperature: float,
    max_tokens: int,
    concern: str | None = None,
    existing: Sequence[str] = (),
    seed: int | None = None,
    grammar: bool = False,
) -> ModelRequest:
    """Ask for `n` metric ideas (parse the reply with `agent.authoring.extract.extract_ideas`)."""
    turn = prompts.render(
        "brainstorm.j2",
        description=description,
        facts=facts_text(facts),
        n=n,
        concern=concern,
        existing=list(existing),
    )
    completion = None
    if mode == "completion":
        completion = prompts.render("completion_brainstorm.j2", description=description, concern=concern, n=n)
    return _request(
        prompts, conversation, turn, completion, mode=mode, temperature=temperature, max_tokens=max_tokens,
        seed=seed, stop=BRAINSTORM_COMPLETION_STOPS,
        grammar=prompts.render("brainstorm_grammar.gbnf.j2", n=n) if grammar and completion is not None else None,
    )  # fmt: skip


def build_chat_request(
    prompts: Prompts,
    conversation: tuple[Message, ...],
    message: str,
    *,
    description: str,
    facts: DatasetFacts | None,
    temperature: float,
    max_tokens: int,
    seed: int | None = None,
) -> ModelRequest:
    """A free-form chat turn (`metricsmith chat`); give `facts` on the first turn only. Chat mode only."""
    turn = prompts.render(
        "chat.j2", message=message, description=description, facts=facts_text(facts) if facts is not None else None
    )
    return _request(
        prompts, conversation, turn, None, mode="chat", temperature=temperature, max_tokens=max_tokens,
        seed=seed, stop=(),
    )  # fmt: skip


def build_implement_request(
    prompts: Prompts,
    task: MetricTask,
    conversation: tuple[Message, ...],
    *,
    mode: Mode,
    temperature: float,
    max_tokens: int,
    seed: int | None = None,
    grammar: bool = False,
) -> ModelRequest:
    """Ask for the first draft of the metric file for `task`."""
    turn = prompts.render(
        "implement.j2",
        idea=task.idea,
        description=task.description,
        facts=facts_text(task.facts),
        examples=list(task.examples),
    )
    completion = prompts.render("completion.j2", **_completion_context(task, grammar)) if mode == "completion" else None
    return _request(
        prompts, conversation, turn, completion, mode=mode, temperature=temperature, max_tokens=max_tokens,
        seed=seed, stop=COMPLETION_STOPS, grammar=_code_grammar(prompts, task, mode, grammar),
    )  # fmt: skip


def _last_lines(text: str, count: int) -> str:
    lines = text.rstrip().split("\n")
    return "\n".join(lines[-count:])


def _first_lines(text: str, count: int) -> str:
    lines = text.rstrip().split("\n")
    if len(lines) <= count:
        return "\n".join(lines)
    return "\n".join([*lines[:count], f"... ({len(lines) - count} more lines)"])


def build_repair_request(
    prompts: Prompts,
    task: MetricTask,
    conversation: tuple[Message, ...],
    failure: RepairContext,
    code: str,
    *,
    mode: Mode,
    temperature: float,
    max_tokens: int,
    seed: int | None = None,
    grammar: bool = False,
) -> ModelRequest:
    """Ask for the whole corrected file after `code` failed `failure.check`."""
    failure = failure.model_copy(update={"stdout": head_tail(failure.stdout), "stderr": head_tail(failure.stderr)})
    turn = prompts.render("repair.j2", failure=failure, code=code)
    completion = None
    if mode == "completion":
        error = f"{failure.check}: {failure.message}"
        if failure.traceback:
            # The innermost frames name the failing line; the rest does not fit a small model's context.
            error += "\n" + _last_lines(failure.traceback, _COMPLETION_ERROR_MAX_LINES)
        completion = prompts.render(
            "completion_repair.j2",
            code=_first_lines(code, _COMPLETION_CODE_MAX_LINES),
            error=error,
            **_completion_context(task, grammar),
        )
    return _request(
        prompts, conversation, turn, completion, mode=mode, temperature=temperature, max_tokens=max_tokens,
        seed=seed, stop=COMPLETION_STOPS, grammar=_code_grammar(prompts, task, mode, grammar),
    )  # fmt: skip


class ImprovementContext(_Frozen):
    """Why a metric that runs must do better: its figures on the target errors and its worst misses."""

    targets: tuple[str, ...]
    figures: tuple[tuple[str, float | None, float | None], ...]  # (type, AP, random's AP) per target type
    overall: str  # one line: AP against random, its interval, the verdict
    misses: tuple[str, ...]


def build_improve_request(
    prompts: Prompts,
    task: MetricTask,
    conversation: tuple[Message, ...],
    improvement: ImprovementContext,
    code: str,
    *,
    mode: Mode,
    temperature: float,
    max_tokens: int,
    seed: int | None = None,
    grammar: bool = False,
) -> ModelRequest:
    """Ask for a better whole file after `code` ran but missed its targets (neither a repair nor a fresh draft)."""
    context = {
        "targets": list(improvement.targets),
        "figures": [{"type": t, "ap": ap, "random": chance} for t, ap, chance in improvement.figures],
        "overall": improvement.overall,
        "misses": list(improvement.misses),
    }
    turn = prompts.render("improve.j2", code=code, **context)
    completion = None
    if mode == "completion":
        completion = prompts.render(
            "completion_improve.j2",
            code=_first_lines(code, _COMPLETION_CODE_MAX_LINES),
            **context,
            **_completion_context(task, grammar),
        )
    return _request(
        prompts, conversation, turn, completion, mode=mode, temperature=temperature, max_tokens=max_tokens,
        seed=seed, stop=COMPLETION_STOPS, grammar=_code_grammar(prompts, task, mode, grammar),
    )  # fmt: skip


TARGET_COMPLETION_STOPS: tuple[str, ...] = ("\n",)


def build_targets_request(
    prompts: Prompts,
    idea: Idea,
    *,
    description: str,
    mode: Mode,
    temperature: float,
    seed: int | None = None,
    grammar: bool = False,
) -> ModelRequest:
    """Ask what an idea given without targets should catch (read the reply with `extract.parse_targets_reply`)."""
    turn = prompts.render("targets.j2", idea=idea, description=description)
    completion = None
    if mode == "completion":
        completion = prompts.render("completion_targets.j2", idea=idea, description=description)
    held = prompts.render("targets_grammar.gbnf.j2") if grammar and completion is not None else None
    return _request(
        prompts, (), turn, completion, mode=mode, temperature=temperature, max_tokens=24, seed=seed,
        stop=TARGET_COMPLETION_STOPS, grammar=held,
    )  # fmt: skip


def build_format_retry(
    prompts: Prompts,
    task: MetricTask,
    conversation: tuple[Message, ...],
    problem: FormatProblem,
    *,
    mode: Mode,
    temperature: float,
    max_tokens: int,
    code: str | None = None,
    seed: int | None = None,
    grammar: bool = False,
) -> ModelRequest:
    """Ask again after a reply gave no usable file; `code`: what was extracted, if anything (completion mode)."""
    correction = corrective_message(problem)
    turn = prompts.render("format_retry.j2", correction=correction)
    completion = None
    if mode == "completion":
        completion = prompts.render(
            "completion_repair.j2",
            code=_first_lines(code, _COMPLETION_CODE_MAX_LINES) if code else None,
            error=correction,
            **_completion_context(task, grammar),
        )
    return _request(
        prompts, conversation, turn, completion, mode=mode, temperature=temperature, max_tokens=max_tokens,
        seed=seed, stop=COMPLETION_STOPS, grammar=_code_grammar(prompts, task, mode, grammar),
    )  # fmt: skip
