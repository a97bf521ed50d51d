"""Turn a model's reply into metric code, and say precisely what is wrong when that fails.

Extraction is the step LLM code loops most often get wrong ("no code block found", leftover stop
sequences), so it is lenient about form and strict about content:

1. Normalise: CRLF and lone CR become LF; end-of-turn tokens some servers leak (`<|im_end|>`,
   `</s>`, `<end_of_turn>`, ...) cut the reply there; stop sequences, whole or partial, left at the
   end are removed.
2. Pick the code: a tagged fence (```python metric / ```metric) → any python or bare fence → the
   whole reply when it is code. Among several blocks, the last one that defines `score` wins: models
   often show a broken snippet first and the fixed file last. A fence left open (a reply cut at
   max_tokens) runs to the end of the reply and is marked truncated.
3. `check_code` validates the code with `agent.metrics.contract.parse_metric_source` (the one static
   contract check; nothing is executed) and turns its problems into a `FormatProblem` whose
   `corrective_message` tells the model exactly what to change.

The import rule checked here is feedback for the model, not a security boundary: the sandbox is.
A brainstorm reply (a numbered list of ideas) is parsed by `extract_ideas`.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.evaluation.usefulness import PROPERTY, TARGETS
from agent.metrics.contract import (
    LEVEL_PARAMETERS,
    NAME_MAX_LENGTH,
    NAME_PATTERN,
    MetricFileError,
    MetricSpec,
    parse_metric_source,
)

__all__ = [
    "END_OF_TURN_TOKENS",
    "Extraction",
    "FormatProblem",
    "Idea",
    "Issue",
    "IssueKind",
    "check_code",
    "corrective_message",
    "extract_code",
    "extract_ideas",
    "no_code_problem",
    "parse_targets_reply",
]

Level = Literal["image", "object"]
How = Literal["tagged", "fence", "whole"]
IssueKind = Literal["empty", "no_code", "truncated", "syntax", "imports", "name", "signature", "contract"]

# Special tokens that mark the end of a turn in common chat templates. A server that does not map
# them to "stop" hands them back as text; nothing after one belongs to the reply.
END_OF_TURN_TOKENS: tuple[str, ...] = (
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|end|>",
    "<end_of_turn>",
    "<eos>",
    "</s>",
)
_FENCE_STOPS = ("```", "~~~")
_PYTHON_TAGS = frozenset({"", "python", "py", "python3", "py3", "metric"})
_FENCE_OPEN = re.compile(r"^ {0,3}(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\n]*)$")
_DEFINES_SCORE = re.compile(r"^(?:async[ \t]+)?def[ \t]+score[ \t]*\(", re.MULTILINE)
_EXPECTED_SIGNATURES = 'score(image, obj, scene) for LEVEL = "object", or score(image, scene) for LEVEL = "image"'


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Issue(_Frozen):
    """One thing wrong with a reply: its kind, the line in the code (when known) and what is wrong."""

    kind: IssueKind
    line: int | None = None
    reason: str


class FormatProblem(_Frozen):
    """Why a reply gave no usable metric file. Every issue found is kept, so one retry can fix them all."""

    issues: tuple[Issue, ...] = Field(min_length=1)
    # The LEVEL the code declared, when it declared a valid one: lets messages show the right signature.
    level: Level | None = None

    @property
    def kind(self) -> IssueKind:
        return self.issues[0].kind

    def __str__(self) -> str:
        return "; ".join(_located(issue) for issue in self.issues)


class Extraction(_Frozen):
    """The code found in a reply (or why none was), and the prose around it.

    `rationale` is everything outside the chosen block, trimmed: in a repair round it holds the
    model's explanation of the bug. `truncated` means the chosen fence was never closed.
    """

    code: str | None
    rationale: str = ""
    how: How | None = None
    truncated: bool = False
    problem: FormatProblem | None = None


class Idea(_Frozen):
    """One metric idea, as a brainstorm proposes it or a user states it."""

    name: str = Field(pattern=NAME_PATTERN, max_length=NAME_MAX_LENGTH)
    rationale: str
    level: Level | None = None
    suspicious: Literal["high", "low"] | None = None
    title: str | None = None
    # What it should catch (agent.evaluation.usefulness.TARGETS), as a brainstorm proposed it; () if unsaid.
    targets: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        """The idea as one line of prose (what example selection and prompts read)."""
        return f"{self.name.replace('_', ' ')}: {self.rationale}"


@dataclass(frozen=True)
class _Block:
    start: int  # index of the opening fence line
    end: int  # index one past the closing fence line (or len(lines) when unclosed)
    info: str
    code: str
    closed: bool

    @property
    def tagged(self) -> bool:
        return "metric" in self.info.lower().replace(",", " ").split()

    @property
    def pythonish(self) -> bool:
        words = self.info.lower().replace(",", " ").split()
        return not words or words[0] in _PYTHON_TAGS


def extract_code(reply: str, stop: Sequence[str] = ()) -> Extraction:
    """Find the metric code in `reply`. `stop`: the request's stop sequences, stripped if left at the end."""
    text = _normalise(reply, stop)
    if not text.strip():
        return Extraction(code=None, problem=_problem("empty", "the reply was empty"))
    lines = text.split("\n")
    # An empty block is no candidate: a dangling "```" left at the end of a fenceless reply opens one.
    blocks = [block for block in _fenced_blocks(lines) if block.pythonish and block.code.strip()]
    tagged = [block for block in blocks if block.tagged]
    for how, candidates in (("tagged", tagged), ("fence", blocks)):
        chosen = _choose(candidates)
        if chosen is not None:
            parts = ("\n".join(lines[: chosen.start]).strip(), "\n".join(lines[chosen.end :]).strip())
            prose = "\n\n".join(part for part in parts if part)
            code = _strip_stops(chosen.code, (*stop, *_FENCE_STOPS)).strip("\n")
            if not code.strip():
                return Extraction(code=None, rationale=prose, problem=no_code_problem())
            return Extraction(code=code + "\n", rationale=prose, how=how, truncated=not chosen.closed)  # type: ignore[arg-type]
    # A fenceless reply may still end in a dangling fence: the model began one it never filled.
    text = _strip_stops(text, _FENCE_STOPS)
    if _is_code(text):
        return Extraction(code=text.strip("\n") + "\n", how="whole")
    return Extraction(code=None, rationale=text.strip(), problem=no_code_problem())


def _normalise(reply: str, stop: Sequence[str]) -> str:
    text = reply.replace("\r\n", "\n").replace("\r", "\n").lstrip("\ufeff")
    for token in END_OF_TURN_TOKENS:
        cut = text.find(token)
        if cut >= 0:
            text = text[:cut]
    return _strip_stops(text, (*stop, *END_OF_TURN_TOKENS))


def _strip_stops(text: str, stops: Sequence[str]) -> str:
    """Remove stop sequences, whole or begun, from the end of `text` (repeatedly: they can stack).

    A stop that starts a line ("\\nif __name__", "\\n```") only counts at the start of a line, and a
    partial one that begins with a letter must be at least 2 characters, so that a last line of
    real code is never mistaken for the start of a stop.
    """
    while True:
        body = text.rstrip()
        cut = None
        for stop in stops:
            core = stop.strip()
            if not core:
                continue
            line_start = stop[: len(stop) - len(stop.lstrip())].count("\n") > 0
            minimum = 2 if core[0].isalnum() or core[0] == "_" else 1
            for n in range(len(core), minimum - 1, -1):
                if not body.endswith(core[:n]):
                    continue
                at = len(body) - n
                if line_start and at > 0 and body[at - 1] != "\n":
                    continue
                cut = at if cut is None else min(cut, at)
                break
        if cut is None:
            return text
        text = body[:cut]


def _fenced_blocks(lines: list[str]) -> list[_Block]:
    blocks: list[_Block] = []
    index = 0
    while index < len(lines):
        match = _FENCE_OPEN.match(lines[index])
        if match is None:
            index += 1
            continue
        fence = match.group("fence")
        closing = re.compile(rf"^ {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
        end = index + 1
        while end < len(lines) and not closing.match(lines[end]):
            end += 1
        closed = end < len(lines)
        body = "\n".join(lines[index + 1 : end])
        blocks.append(_Block(index, end + 1 if closed else len(lines), match.group("info").strip(), body, closed))
        index = end + 1
    return blocks


def _choose(blocks: list[_Block]) -> _Block | None:
    """The last block that defines score; failing that the last block (its check names what is missing)."""
    defining = [block for block in blocks if _DEFINES_SCORE.search(block.code)]
    if defining:
        return defining[-1]
    return blocks[-1] if blocks else None


def _is_code(text: str) -> bool:
    """Whether an unfenced reply is a Python file rather than prose.

    Prose like "hello" parses as an expression, so a reply counts as code only when it binds
    something at the top level; one that defines score but does not parse is code too, so that the
    check reports its syntax error rather than "no code found".
    """
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return _DEFINES_SCORE.search(text) is not None
    binds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Assign, ast.AnnAssign, ast.Import, ast.ImportFrom)
    return any(isinstance(stmt, binds) for stmt in tree.body)


def check_code(code: str, *, truncated: bool = False, path: str = "<reply>") -> MetricSpec | FormatProblem:
    """Validate extracted code against the metric contract, statically (never executed).

    `truncated`: the reply was cut off (an unclosed fence, or finish_reason "length"), which turns a
    syntax error into the more useful "your reply was cut off". `path` is the name the spec (and so
    every traceback of the code) carries.
    """
    try:
        return parse_metric_source(code, path=path, origin="file")
    except MetricFileError as err:
        issues = tuple(_issue(line, reason, truncated) for line, reason in err.problems)
        return FormatProblem(issues=issues, level=_declared_level(code))


def _issue(line: int | None, reason: str, truncated: bool) -> Issue:
    if reason.startswith(("syntax error", "cannot parse")):
        return Issue(kind="truncated" if truncated else "syntax", line=line, reason=reason)
    if reason.startswith(("imports '", "relative import")):
        return Issue(kind="imports", line=line, reason=reason)
    if reason.startswith("NAME must"):
        return Issue(kind="name", line=line, reason=reason)
    if reason.startswith(("score must take", "defines no function 'score'")):
        return Issue(kind="signature", line=line, reason=reason)
    return Issue(kind="contract", line=line, reason=reason)


def _declared_level(code: str) -> Level | None:
    """LEVEL as the code declares it, if it parses and says "image" or "object" literally."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "LEVEL" for t in stmt.targets):
            value = stmt.value
            if isinstance(value, ast.Constant) and value.value in LEVEL_PARAMETERS:
                return value.value  # type: ignore[no-any-return]
    return None


def _problem(kind: IssueKind, reason: str) -> FormatProblem:
    return FormatProblem(issues=(Issue(kind=kind, reason=reason),))


def no_code_problem() -> FormatProblem:
    """The reply held no code at all."""
    return _problem("no_code", "the reply holds no code block defining score")


def corrective_message(problem: FormatProblem) -> str:
    """What the model must change, one line per issue: the text format_retry.j2 shows it. Pure."""
    return "\n".join(f"- {_correction(issue, problem.level)}" for issue in problem.issues)


def _correction(issue: Issue, level: Level | None) -> str:
    where = f"line {issue.line}: " if issue.line is not None else ""
    if issue.kind == "empty":
        return "your reply was empty: reply with the whole metric file in one ```python block"
    if issue.kind == "no_code":
        return f"no ```python block defining {_signature(level)}: put the whole file in one ```python block"
    if issue.kind == "truncated":
        return (
            f"your reply was cut off before the file ended ({where}{issue.reason}): write a shorter file, "
            "without long comments, and close the ```python block"
        )
    if issue.kind == "syntax":
        return f"{where}{issue.reason}: the file must be valid Python 3; return the whole corrected file"
    if issue.kind == "imports":
        match = re.match(r"imports '([^']+)'", issue.reason)
        if match is None:  # a relative import; its reason already says what to do
            return f"{where}{issue.reason}"
        module = match.group(1)
        return f"{where}imports {module}: only numpy, cv2, math and the standard library; rewrite without {module}"
    if issue.kind == "name":
        got = re.search(r"got (.+)$", issue.reason)
        suggestion = _snake_case(_unquote(got.group(1))) if got else None
        hint = f', e.g. NAME = "{suggestion}"' if suggestion else ""
        if "at most" in issue.reason:
            return f"{where}NAME must be at most {NAME_MAX_LENGTH} characters{hint}"
        return f"{where}NAME must be snake_case (lowercase letters, digits, underscores){hint}"
    if issue.kind == "signature":
        if issue.reason.startswith("defines no function"):
            return f"the file defines no function score: define {_signature(level)} at the top level"
        return f"{where}{issue.reason}: the signature must be exactly {_signature(level)}"
    if issue.reason.startswith(("has ", "defines ")):
        return f"the file {issue.reason}"  # metric_file's reasons for whole-file problems omit the subject
    return f"{where}{issue.reason}"


def _signature(level: Level | None) -> str:
    if level is None:
        return _EXPECTED_SIGNATURES
    return f"score({', '.join(LEVEL_PARAMETERS[level])})"


def _unquote(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def _snake_case(text: str) -> str | None:
    """A snake_case spelling of `text` ("BoxArea" -> "box_area"), or None when nothing usable is left."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", text)
    words = re.findall(r"[a-z0-9]+", spaced.lower())
    name = "_".join(words)[:NAME_MAX_LENGTH].strip("_")
    return name if re.match(NAME_PATTERN, name) else None


def _located(issue: Issue) -> str:
    return f"line {issue.line}: {issue.reason}" if issue.line is not None else issue.reason


_IDEA_LINE = re.compile(
    r"^\s*(?:#\s*)?(?:\d+[.)]|[-*])\s+\**`?(?P<name>[A-Za-z][A-Za-z0-9_ ]*?)`?\**\s*"
    r"[\[(](?P<level>image|object)[\])]\s*(?:\[(?P<targets>[A-Za-z0-9_ ,/-]+)\])?\s*[-–—:|]?\s*(?P<rationale>.+?)\s*$",
    re.IGNORECASE,
)


def extract_ideas(reply: str) -> list[Idea]:
    """The ideas of a brainstorm reply: lines like `1. box_area (object) - why it finds problems`.

    Lines that do not follow the format are skipped; duplicate names keep their first occurrence.
    """
    text = _normalise(reply, ())
    ideas: list[Idea] = []
    seen: set[str] = set()
    for line in text.split("\n"):
        match = _IDEA_LINE.match(line)
        if match is None:
            continue
        name = _snake_case(match.group("name").strip())
        if name is None or name in seen:
            continue
        seen.add(name)
        level = match.group("level").lower()
        targets = _targets(match.group("targets") or "")
        ideas.append(Idea(name=name, level=level, rationale=match.group("rationale"), targets=targets))  # type: ignore[arg-type]
    return ideas


def parse_targets_reply(reply: str) -> tuple[str, ...]:
    """The targets a reply to prompts/targets.j2 names (its first line that names any); () when none."""
    for line in reply.strip().splitlines():
        found = _targets(line.replace("Catches:", " "))
        if found:
            return found
    return ()


def _targets(text: str) -> tuple[str, ...]:
    """The known targets a brainstorm line names, in the canonical order; a property stands alone."""
    words = {word for word in re.split(r"[\s,/]+", text.lower()) if word}
    found = tuple(target for target in TARGETS if target in words and target != PROPERTY)
    if found:
        return found
    return (PROPERTY,) if PROPERTY in words else ()
