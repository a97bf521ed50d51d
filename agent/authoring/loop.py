"""The authoring loop: one idea in, a validated candidate metric (or a plain reason why not) out.

    draft 1: implement -> reply -> extract -> static checks -> sandbox validation
               | format problem: a specific correction, within a small format budget
               | validation failed: a repair prompt (failing check, item, trimmed traceback, code)
               v   ... at most `max_repairs` repairs, stopping early on code or an error seen before
    draft 2: a fresh conversation, the same idea ...      (at most `max_drafts` drafts)

Every model exchange goes through `RecordingBackend`, so the transcript holds each request and
reply as it happens; every validation, extraction problem and the outcome are events in it too.
A whole session is therefore replayable: the same settings, dataset and templates give the same
requests, and the replay backend checks them one by one.

The loop never promotes anything. A passing draft becomes a *pending* candidate in the run
directory (agent.authoring.candidates); the gate (agent.review.gate) is where a human decides.

Empty and truncated replies are the model's behaviour, not exceptions: an empty reply is asked
again, a truncated one is asked again for a complete, shorter file. Only `ModelUnreachable`
(the environment) escapes, and the CLI turns it into exit code 3.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from agent.authoring.candidates import (
    CandidateRecord,
    candidate_dir,
    new_candidate_id,
    now_iso,
    save_candidate,
    write_json_atomic,
)
from agent.authoring.extract import (
    Extraction,
    FormatProblem,
    Idea,
    Issue,
    check_code,
    extract_code,
    no_code_problem,
    parse_targets_reply,
)
from agent.authoring.prompting import (
    ImprovementContext,
    MetricTask,
    Prompts,
    build_format_retry,
    build_implement_request,
    build_improve_request,
    build_repair_request,
    build_targets_request,
    choose_examples,
    idea_class_scope,
    idea_level,
    system_prompt,
)
from agent.authoring.repair import DEFAULT_TOKEN_CAP, LoopGuard, StopReason, error_signature, repair_context
from agent.authoring.usefulness_check import Usefulness, UsefulnessBench
from agent.authoring.validation import (
    DEFAULT_MAX_ERROR_RATE,
    DEFAULT_TIME_BUDGET_S,
    ValidationReport,
    evaluate_candidate,
    validate,
)
from agent.authoring.validation_set import ValidationSet
from agent.data.coco import Dataset
from agent.data.facts import dataset_facts
from agent.evaluation.ranking import load_error_labels
from agent.evaluation.report import build_report, render_html, write_report
from agent.evaluation.usefulness import PROPERTY, SIGNIFICANCE
from agent.llm.conversation import Conversation
from agent.llm.model import ModelBackend, ModelReply, ModelRequest, Usage
from agent.llm.transcript import TranscriptWriter
from agent.metrics.contract import MetricSpec
from agent.metrics.results import write_rows
from agent.metrics.scoring import score_dataset
from sandbox.isolation import SandboxConfig

__all__ = [
    "AuthoringOutcome",
    "AuthoringSettings",
    "Round",
    "author_idea",
    "dataset_fingerprint",
    "idea_from_text",
    "model_defaults",
]

# The path a candidate's code carries in tracebacks and reports: fixed, so that a replayed session
# shows the model the same traceback as the recorded one, whatever the run directory.
CANDIDATE_PATH = "metric.py"

IDEA_NAME_MAX_CHARS = 48
# Words that say nothing about what a metric measures; the idea's NAME is made of the others.
_FILLER = frozenset(
    {
        "a",
        "an",
        "the",
        "that",
        "this",
        "these",
        "those",
        "is",
        "are",
        "be",
        "of",
        "on",
        "in",
        "at",
        "to",
        "for",
        "with",
        "and",
        "or",
        "nor",
        "it",
        "its",
        "as",
        "by",
        "from",
        "flag",
        "find",
        "detect",
        "spot",
        "score",
        "measure",
        "metric",
        "which",
        "whose",
        "where",
        "when",
        "than",
        "more",
        "less",
        "very",
        "too",
        "any",
        "some",
        "each",
        "every",
    }
)


@dataclass(frozen=True)
class AuthoringSettings:
    max_repairs: int = 3
    max_drafts: int = 2
    max_format_retries: int = 2
    token_cap: int = DEFAULT_TOKEN_CAP
    temperature: float = 0.2
    max_tokens: int = 1500
    seed: int = 0
    # Hold completion-mode code to prompts/completion_grammar.gbnf.j2 (see `model_defaults`).
    grammar: bool = False
    context_budget_tokens: int = 6000
    max_error_rate: float = DEFAULT_MAX_ERROR_RATE
    time_budget_s: float = DEFAULT_TIME_BUDGET_S
    # What the idea should catch (agent.evaluation.usefulness): error types, or ("property",). Given
    # error types, a candidate is measured on them, injected into the user's data.
    targets: tuple[str, ...] = ()
    # Rounds for a draft that runs but misses its targets: a budget of its own, apart from repairs.
    max_improvements: int = 2
    # Best-of-N: the replies asked for in each implement and improvement round of a judged idea.
    samples: int = 1
    # When no draft clears the bar, leave the best as a candidate marked "runs, not shown useful".
    keep_unproven: bool = False
    # Given no targets, ask the model what the idea should catch first (the reply is on the record).
    propose_targets: bool = False

    def as_dict(self) -> dict[str, Any]:
        values = {name: getattr(self, name) for name in self.__dataclass_fields__}
        # Settings added since the first recordings are written only when they differ from their default,
        # so a recording made without them reads as it did before they existed.
        for name in ("targets", "max_improvements", "samples", "keep_unproven", "propose_targets"):
            if values[name] == self.__dataclass_fields__[name].default:
                del values[name]
        if "targets" in values:
            values["targets"] = list(self.targets)
        return values

    @property
    def judged(self) -> bool:
        """Whether drafts are judged on injected errors: targets given, and not a property."""
        return bool(self.targets) and PROPERTY not in self.targets


@dataclass(frozen=True)
class Round:
    """One model exchange of the loop and what came of it."""

    draft: int
    repair: int
    kind: Literal["implement", "repair", "format_retry", "improve"]
    outcome: Literal["passed", "not_useful", "failed", "format_problem", "repeated_code", "repeated_error"]
    code_sha256: str | None
    detail: str
    tokens: int  # this exchange's own: each sample of a best-of-N round is a round of its own
    improvement: int = 0  # the improvement round of the draft it belongs to (0: before any)
    sample: int = 1  # its place among the round's samples


@dataclass
class AuthoringOutcome:
    verdict: Literal["passed", "gave_up"]
    reason: str  # on giving up: the final failure, stated plainly
    idea: Idea
    candidate: CandidateRecord | None = None
    rounds: list[Round] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tokens_estimated: bool = False

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def usage(self) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens, estimated=self.tokens_estimated
        )

    @property
    def exchanges(self) -> int:
        return len(self.rounds)


Listener = Callable[[str, dict[str, Any]], None]

# A small local model writes slowly and rambles: a shorter reply budget keeps a round under a minute.
LOCAL_MAX_TOKENS = 512
GRAMMAR_SAMPLES = 8


def model_defaults(
    backend: ModelBackend, *, grammar: bool | None = None, max_tokens: int | None = None, samples: int | None = None
) -> dict[str, Any]:
    """The `AuthoringSettings` that follow the model rather than the idea (None: the model's default).

    - max_tokens: LOCAL_MAX_TOKENS for the local backend.
    - samples (best-of-N, for ideas judged on injected errors): GRAMMAR_SAMPLES when the grammar holds
      the model to one line, which takes about a second; 1 for a capable model, whose file costs more.
    - grammar: completion mode only, and on by default for the local backend there. A base model that
      small almost never writes a whole metric that parses and runs (11 of 12 free drafts did not
      parse); held to prompts/completion_grammar.gbnf.j2 it writes the measurement, always valid code.
      An OpenAI-compatible server gets the grammar only when asked (llama.cpp's server honours it).
    """
    local = backend.name == "local"
    wanted = local if grammar is None else grammar
    held = wanted and backend.mode == "completion"
    return {
        "max_tokens": max_tokens or (LOCAL_MAX_TOKENS if local else AuthoringSettings.max_tokens),
        "grammar": held,
        "samples": samples or (GRAMMAR_SAMPLES if held else 1),
    }


def idea_from_text(text: str) -> Idea:
    """A user's idea as an `Idea`: a snake_case NAME from its first meaningful words, the text as rationale."""
    spoken = text.lower().replace("n't", " not")
    words = [word for word in re.findall(r"[a-z][a-z0-9]*", spoken) if word not in _FILLER]
    # Whole words only, up to six of them and IDEA_NAME_MAX_CHARS: "fox_boxes_not_mostly" said less than the idea.
    kept: list[str] = []
    for word in words[:6]:
        if len("_".join([*kept, word])) > IDEA_NAME_MAX_CHARS:
            break
        kept.append(word)
    name = "_".join(kept) or (words[0][:IDEA_NAME_MAX_CHARS] if words else "") or "custom_metric"
    if not name[0].isalpha():
        name = f"metric_{name}"
    return Idea(name=name, rationale=" ".join(text.split()), level=idea_level(text))


def dataset_fingerprint(annotations: Path) -> str:
    """The sha256 of the annotations file: which labels a metric was written and validated against."""
    return hashlib.sha256(annotations.read_bytes()).hexdigest()


@dataclass(frozen=True)
class _Step:
    """Where in its draft a round is: which draft, how many repairs and improvements came before, and its kind."""

    draft: int
    repair: int
    kind: Literal["implement", "repair", "format_retry", "improve"]
    improvement: int


@dataclass
class _Sample:
    """One reply of a round and what came of it."""

    index: int
    reply: ModelReply
    extraction: Extraction
    checked: MetricSpec | FormatProblem
    spent: int
    status: Literal["format_problem", "repeated_reply", "repeated_code", "failed", "passed"] = "format_problem"
    report: ValidationReport | None = None
    usefulness: Usefulness | None = None
    signature: str | None = None  # a failing sample's error signature (agent.authoring.repair.error_signature)
    stop: StopReason | None = None  # set on the failing sample that goes on, when it repeats itself

    @property
    def code_sha256(self) -> str | None:
        return self.checked.code_sha256 if isinstance(self.checked, MetricSpec) else None


def _sample_seed(seed: int | None, index: int) -> int | None:
    """Sample `index`'s seed: far from the next draft's (seed + 1), so no two requests share one."""
    return None if seed is None else seed + 1000 * (index - 1)


SAMPLE_WARMING = 0.1  # each further sample of a round this much warmer, up to MAX_SAMPLE_TEMPERATURE
MAX_SAMPLE_TEMPERATURE = 1.3


def _sample_temperature(request: ModelRequest, index: int) -> float:
    warmer = request.temperature + SAMPLE_WARMING * (index - 1)
    return max(request.temperature, min(warmer, MAX_SAMPLE_TEMPERATURE))


def _improvement_context(useful: Usefulness) -> ImprovementContext:
    figures = tuple((t, ap, chance) for t, (ap, chance) in useful.selection.by_type.items())
    return ImprovementContext(
        targets=tuple(useful.targets), figures=figures, overall=useful.decision(), misses=tuple(useful.misses)
    )


class _Session:
    """The state of one idea's loop; `run()` is the whole algorithm."""

    def __init__(
        self,
        idea: Idea,
        backend: ModelBackend,
        writer: TranscriptWriter,
        dataset: Dataset,
        validation: ValidationSet,
        run_dir: Path,
        *,
        description: str,
        settings: AuthoringSettings,
        sandbox: SandboxConfig,
        library: Sequence[MetricSpec],
        errors_path: Path | None,
        transcript_name: str,
        listener: Listener,
    ) -> None:
        self.idea, self.backend, self.writer = idea, backend, writer
        self.dataset, self.validation, self.run_dir = dataset, validation, run_dir
        self.settings, self.sandbox, self.library = settings, sandbox, library
        self.errors_path, self.transcript_name, self.listener = errors_path, transcript_name, listener
        self.prompts = Prompts()
        examples = tuple(choose_examples(idea.text, k=2, level=idea.level))
        self.task = MetricTask(idea=idea, description=description, facts=dataset_facts(dataset), examples=examples)
        self.guard = LoopGuard(token_cap=settings.token_cap)
        # "fox boxes that ...": the class the idea is about, whose boxes alone should be scored.
        self.scope = idea_class_scope(idea.rationale, [c.name for c in dataset.categories])
        self.outcome = AuthoringOutcome(verdict="gave_up", reason="the loop made no attempt", idea=idea)
        self.bench: UsefulnessBench | None = None  # the run's usefulness set, built on the first measurement
        self.measured = 0  # drafts measured on it so far: the selection half's bar tightens with each
        self.best_unproven: _Sample | None = None  # the best draft that ran but did not clear its bar

    # -- plumbing -----------------------------------------------------------------------------

    def _emit(self, event: str, data: dict[str, Any]) -> None:
        self.writer.event(event, data)
        self.listener(event, data)

    def _ask(self, request: ModelRequest) -> ModelReply:
        reply = self.backend.complete(request)
        self.outcome.tokens_estimated |= reply.usage.estimated
        self.outcome.prompt_tokens += reply.usage.prompt_tokens
        self.outcome.completion_tokens += reply.usage.completion_tokens
        return reply

    def _request_kwargs(self, draft: int) -> dict[str, Any]:
        return {
            "mode": self.backend.mode,
            "temperature": self.settings.temperature,
            "max_tokens": self.settings.max_tokens,
            # A fresh draft asks the same question again: with the same seed a sampling model repeats itself.
            "seed": self.settings.seed + draft - 1,
            "grammar": self.settings.grammar,
        }

    def _propose_targets(self) -> None:
        """Ask the model what the idea should catch; from then on the idea is judged on that, if anything."""
        request = build_targets_request(
            self.prompts, self.idea, description=self.task.description, mode=self.backend.mode,
            temperature=self.settings.temperature, seed=self.settings.seed, grammar=self.settings.grammar,
        )  # fmt: skip
        reply = self._ask(request)
        self.guard.spend(reply.usage.total_tokens)
        targets = parse_targets_reply(reply.text)
        self.settings = dataclasses.replace(self.settings, targets=targets)
        self._emit("targets_proposed", {"targets": list(targets), "reply": reply.text.strip()[:200]})

    # -- the loop -----------------------------------------------------------------------------

    def run(self) -> AuthoringOutcome:
        if self.settings.propose_targets and not self.settings.targets:
            self._propose_targets()
        for draft in range(1, self.settings.max_drafts + 1):
            self._emit("draft", {"draft": draft})
            if self._draft(draft) or self.guard.over_cap():
                break
        if self.outcome.candidate is None and self.settings.keep_unproven and self.best_unproven is not None:
            kept = self.best_unproven
            assert isinstance(kept.checked, MetricSpec) and kept.report is not None
            reason = self.outcome.reason
            self._promote_to_candidate(kept.checked, kept.extraction, kept.report, kept.usefulness, unproven=True)
            self.outcome.verdict = "gave_up"  # the idea did not succeed: its best draft waits, marked, for review
            self.outcome.reason = f"{reason}; its best draft is left as a candidate marked 'runs, not shown useful'"
        self._emit(
            "outcome",
            {
                "verdict": self.outcome.verdict,
                "reason": self.outcome.reason,
                "candidate": self.outcome.candidate.id if self.outcome.candidate else None,
                "code_sha256": self.outcome.candidate.code_sha256 if self.outcome.candidate else None,
                "exchanges": self.outcome.exchanges,
                "tokens": self.outcome.tokens,
            },
        )
        return self.outcome

    def _draft(self, draft: int) -> bool:
        """One draft with its repairs and improvements. True when it produced a candidate (or hit the token cap)."""
        self.guard.new_draft()
        conversation = Conversation(system_prompt(self.prompts).text)
        request = build_implement_request(
            self.prompts, self.task, conversation.messages(self.settings.context_budget_tokens),
            **self._request_kwargs(draft),
        )  # fmt: skip
        kind: Literal["implement", "repair", "format_retry", "improve"] = "implement"
        turn_summary = f"[the request to implement the idea, draft {draft}]"
        repairs = format_retries = improvements = 0
        best_figure = -math.inf  # the draft's best selection figure so far: an improvement must beat it
        replies_seen: set[str] = set()
        while True:
            step = _Step(draft, repairs, kind, improvements)
            samples = self._sample(request, step, replies_seen)
            over_cap = self.guard.over_cap()
            user_turn = request.messages[-1].content
            turn_kind = {
                "implement": "idea", "repair": "repair_request", "format_retry": "format_error", "improve": "improve",
            }[kind]  # fmt: skip
            conversation.add("user", user_turn, turn_kind, summary=turn_summary)
            chosen = self._choose(samples)
            sha = chosen.code_sha256
            conversation.add(
                "assistant",
                chosen.reply.text,
                "code",
                summary=f"[draft {draft}: code {sha[:8] if sha else 'unusable'}]",
            )
            checked, extraction = chosen.checked, chosen.extraction
            if chosen.status == "repeated_reply":
                # The same unusable reply again: asking once more would only burn tokens.
                self.outcome.reason += " (the model then repeated the same reply)"
                self._emit("stopped", {"draft": draft, "why": "repeated_reply"})
                return False
            if isinstance(checked, FormatProblem):
                format_retries += 1
                self.outcome.reason = f"the model gave no usable metric file: {checked}"
                if over_cap:
                    return self._out_of_tokens()
                if format_retries > self.settings.max_format_retries:
                    return False
                request = build_format_retry(
                    self.prompts, self.task, conversation.messages(self.settings.context_budget_tokens),
                    checked, code=extraction.code, **self._request_kwargs(draft),
                )  # fmt: skip
                kind = "format_retry"
                turn_summary = f"[format correction, draft {draft}: {str(checked)[:160]}]"
                continue

            if chosen.status == "repeated_code":
                self.outcome.reason += " (the model then returned code it had already tried)"
                self._emit("stopped", {"draft": draft, "why": "repeated_code"})
                return False
            report = chosen.report
            assert report is not None and isinstance(checked, MetricSpec)
            if report.passed:
                useful = chosen.usefulness
                if useful is not None and useful.tries != self.measured:
                    # Chosen as the best of this round's samples: held to the bar of every draft tried so far.
                    useful = useful.model_copy(update={"tries": self.measured, "bar_p": SIGNIFICANCE / self.measured})
                    chosen.usefulness = useful
                if useful is None or useful.cleared is not False:
                    self._promote_to_candidate(checked, extraction, report, useful)
                    return True
                # It runs, but its ranking of the target errors is not shown better than chance.
                self._remember_unproven(chosen)
                self.outcome.reason = f"runs, not shown useful on {', '.join(useful.targets)}: {useful.decision()}"
                if over_cap:
                    return self._out_of_tokens()
                if improvements and useful.figure <= best_figure:
                    self.outcome.reason += " (an improvement round did not raise the figure)"
                    self._emit("stopped", {"draft": draft, "why": "plateau", "figure": useful.figure})
                    return False
                best_figure = max(best_figure, useful.figure)
                if improvements >= self.settings.max_improvements:
                    return False
                improvements += 1
                turn_summary = f"[improvement request, draft {draft}: {useful.decision()[:160]}]"
                request = build_improve_request(
                    self.prompts, self.task, conversation.messages(self.settings.context_budget_tokens),
                    _improvement_context(useful), checked.source, **self._request_kwargs(draft),
                )  # fmt: skip
                kind = "improve"
                continue
            failure = report.first_failure
            assert failure is not None
            detail = f"{failure.check}: {failure.message}" + (f" (on {failure.item})" if failure.item else "")
            self.outcome.reason = f"validation failed: {detail}"
            if over_cap:
                return self._out_of_tokens()
            if chosen.stop is not None:
                self.outcome.reason += " (the same error came back after a repair)"
                self._emit("stopped", {"draft": draft, "why": chosen.stop})
                return False
            if repairs >= self.settings.max_repairs:
                return False
            repairs += 1
            turn_summary = f"[repair request, draft {draft}: {detail[:160]}]"
            request = build_repair_request(
                self.prompts, self.task, conversation.messages(self.settings.context_budget_tokens),
                repair_context(report, self.validation), checked.source, **self._request_kwargs(draft),
            )  # fmt: skip
            kind = "repair"

    def _sample_count(self, kind: str) -> int:
        """Best-of-N applies where a new metric is proposed and a figure can choose between them."""
        if self.settings.judged and kind in ("implement", "improve"):
            return max(1, self.settings.samples)
        return 1

    def _sample(self, request: ModelRequest, step: _Step, replies_seen: set[str]) -> list[_Sample]:
        """Ask for the round's samples, one request each, and check, validate and measure each new one."""
        samples: list[_Sample] = []
        codes_this_round: set[str] = set()
        for index in range(1, self._sample_count(step.kind) + 1):
            # Each sample is its own request with its own seed, and a little warmer than the one before:
            # a small model at one temperature mostly repeats itself, whatever the seed.
            asked = (
                request
                if index == 1
                else request.model_copy(
                    update={
                        "seed": _sample_seed(request.seed, index),
                        "temperature": _sample_temperature(request, index),
                    }
                )
            )
            reply = self._ask(asked)
            spent = reply.usage.total_tokens
            self.guard.spend(spent)
            extraction = extract_code(reply.text, asked.stop)
            checked = self._check(reply, extraction)
            sample = _Sample(index, reply, extraction, checked, spent)
            samples.append(sample)
            if isinstance(checked, FormatProblem):
                digest = hashlib.sha256(reply.text.encode("utf-8")).hexdigest()
                if digest in replies_seen:
                    sample.status = "repeated_reply"
                    self._round(step, "repeated_code", None, "the model repeated an unusable reply", spent, index)
                else:
                    replies_seen.add(digest)
                    self._round(step, "format_problem", None, str(checked), spent, index)
                    self._emit("format_problem", {"draft": step.draft, "problem": str(checked), "kind": checked.kind})
            elif checked.code_sha256 in codes_this_round or self.guard.tried(checked.code_sha256):
                sample.status = "repeated_code"
                self._round(step, "repeated_code", checked.code_sha256, "the model returned code it had tried", spent,
                            index)  # fmt: skip
            else:
                codes_this_round.add(checked.code_sha256)
                self._evaluate_sample(sample, checked, step)
            if self.guard.over_cap():
                break
        return samples

    def _evaluate_sample(self, sample: _Sample, spec: MetricSpec, step: _Step) -> None:
        report = self._validate(spec, step.draft, step.repair)
        sample.report = report
        if not report.passed:
            sample.status = "failed"
            failure = report.first_failure
            assert failure is not None
            sample.signature = error_signature(failure)
            detail = f"{failure.check}: {failure.message}" + (f" (on {failure.item})" if failure.item else "")
            self._round(step, "failed", spec.code_sha256, detail, sample.spent, sample.index)
            return
        self.guard.codes.add(spec.code_sha256)
        sample.status = "passed"
        if not self.settings.judged:
            self._round(step, "passed", spec.code_sha256, "every check passed", sample.spent, sample.index)
            return
        useful = self._measure(spec, step, sample.index)
        sample.usefulness = useful
        outcome: Literal["passed", "not_useful"] = "not_useful" if useful.cleared is False else "passed"
        self._round(step, outcome, spec.code_sha256, f"every check passed; {useful.decision()}", sample.spent,
                    sample.index)  # fmt: skip

    def _choose(self, samples: list[_Sample]) -> _Sample:
        """The round's sample to go on with: the best passing one on the selection half, else the first failing
        one (to repair), else the first unusable one (to correct)."""
        passed = [s for s in samples if s.status == "passed"]
        failed = [s for s in samples if s.status == "failed"]
        if passed:
            for other in failed:
                self.guard.codes.add(other.code_sha256 or "")
            # max() keeps the first of equals: with no figure to tell them apart, the first sample wins.
            best = max(passed, key=lambda s: s.usefulness.figure if s.usefulness is not None else 0.0)
            if len(samples) > 1:
                self._emit("chosen", {"sample": best.index, "of": len(samples), "code_sha256": best.code_sha256})
            return best
        if failed:
            chosen = failed[0]
            assert chosen.code_sha256 is not None
            # Only the sample that goes on is held to "the same error twice": the others were alternatives.
            chosen.stop = self.guard.observe(chosen.code_sha256, chosen.signature)
            for other in failed[1:]:
                self.guard.codes.add(other.code_sha256 or "")
            if chosen.stop is not None:
                self._retag_last(chosen, chosen.stop)
            return chosen
        # A fresh unusable reply is corrected; only when every sample repeated itself does the draft stop.
        order = {"format_problem": 0, "repeated_code": 1, "repeated_reply": 2}
        return min(samples, key=lambda s: order.get(s.status, 3))

    def _retag_last(self, sample: _Sample, outcome: Literal["repeated_error", "repeated_code"]) -> None:
        for position in range(len(self.outcome.rounds) - 1, -1, -1):
            recorded = self.outcome.rounds[position]
            if recorded.code_sha256 == sample.code_sha256 and recorded.sample == sample.index:
                self.outcome.rounds[position] = dataclasses.replace(recorded, outcome=outcome)
                return

    def _measure(self, spec: MetricSpec, step: _Step, sample: int) -> Usefulness:
        if self.bench is None:
            self.bench = UsefulnessBench(self.dataset, self.run_dir, self.settings.targets, self.settings.seed)
            useful = self.bench.useful
            halves = {"selection": useful.selection, "reporting": useful.reporting}
            self._emit("usefulness_set", {
                "images": len(useful.document["images"]), "targets": list(useful.targets),
                "errors": {name: useful.errors_in(half) for name, half in halves.items()},
                "notes": list(useful.notes),
            })  # fmt: skip
        self._emit("usefulness", {"metric": spec.name, "targets": list(self.settings.targets)})
        self.measured += 1
        measured = self.bench.measure(spec, self.sandbox, tries=self.measured, scope=self.scope)
        self._emit(
            "measured",
            {
                "draft": step.draft, "improvement": step.improvement, "sample": sample,
                "code_sha256": spec.code_sha256, "cleared": measured.cleared, "bar_p": measured.bar_p,
                "selection": measured.decision(), "reporting": measured.reporting.line,
            },
        )  # fmt: skip
        return measured

    def _remember_unproven(self, sample: _Sample) -> None:
        assert sample.usefulness is not None
        if self.best_unproven is None or sample.usefulness.figure > self.best_unproven.usefulness.figure:  # type: ignore[union-attr]
            self.best_unproven = sample

    def _check(self, reply: ModelReply, extraction: Extraction) -> MetricSpec | FormatProblem:
        if not reply.text.strip():
            reason = "the reply was empty"
            if self.backend.mode == "chat":
                reason += " (a base model without a chat template answers chat requests with nothing)"
            return FormatProblem(issues=(Issue(kind="empty", reason=reason),))
        if extraction.code is None:
            return extraction.problem or no_code_problem()
        truncated = extraction.truncated or reply.finish_reason == "length"
        # A fixed name, so tracebacks and reports never show a temporary path.
        return check_code(extraction.code, truncated=truncated, path=CANDIDATE_PATH)

    def _validate(self, spec: MetricSpec, draft: int, repair: int) -> ValidationReport:
        self._emit("validating", {"draft": draft, "repair": repair, "code_sha256": spec.code_sha256})
        report = validate(
            spec,
            self.validation,
            self.sandbox,
            max_error_rate=self.settings.max_error_rate,
            time_budget_s=self.settings.time_budget_s,
            library=self.library,
            scope=self.scope,
        )
        attempt = self.run_dir / "attempts" / f"{self.idea.name}-d{draft}r{repair}-{spec.code_sha256[:8]}"
        attempt.mkdir(parents=True, exist_ok=True)
        (attempt / "metric.py").write_text(spec.source, encoding="utf-8")
        write_json_atomic(attempt / "validation.json", report)
        failure = report.first_failure
        self._emit(
            "validation",
            {
                "draft": draft,
                "repair": repair,
                "code_sha256": spec.code_sha256,
                "passed": report.passed,
                "checks": {check.name: check.status for check in report.checks},
                "failure": None if failure is None else {"check": failure.check, "message": failure.message},
            },
        )
        return report

    def _round(self, step: _Step, outcome: Any, sha: str | None, detail: str, tokens: int, sample: int) -> None:
        self.outcome.rounds.append(
            Round(step.draft, step.repair, step.kind, outcome, sha, detail, tokens, step.improvement, sample)
        )

    def _out_of_tokens(self) -> bool:
        self.outcome.reason += (
            f" (stopped: the idea used {self.guard.tokens} tokens, over its cap of {self.guard.token_cap})"
        )
        self._emit("stopped", {"why": "token_cap", "tokens": self.guard.tokens})
        return True

    def _promote_to_candidate(
        self,
        spec: MetricSpec,
        extraction: Extraction,
        report: ValidationReport,
        measured: Usefulness | None,
        *,
        unproven: bool = False,
    ) -> None:
        """Write the pending candidate: code, rationale, validation report, eval and usefulness figures, record."""
        candidate_id = new_candidate_id(spec.name, spec.code_sha256)
        folder = candidate_dir(self.run_dir, candidate_id)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "metric.py").write_text(spec.source, encoding="utf-8")
        rationale = extraction.rationale.strip() or "(the model gave no explanation beyond the code)"
        (folder / "rationale.md").write_text(f"# {spec.name}\n\nIdea: {self.idea.rationale}\n\n{rationale}\n")
        write_json_atomic(folder / "validation.json", report)
        # The whole dataset, scored once: the reviewer's histogram and contact sheet, and the eval figures.
        self._emit("scoring", {"metric": spec.name, "images": len(self.dataset.images)})
        rows = score_dataset(self.dataset, [spec], self.sandbox).rows
        write_rows(folder / "scores.csv", rows)
        errors = load_error_labels(self.errors_path) if self.errors_path is not None else None
        sheet = build_report(self.dataset, rows, {spec.name: spec.suspicious}, errors=errors, specs={spec.name: spec})
        write_report(folder / "report.html", render_html(sheet))
        evaluation = None
        if self.errors_path is not None:
            result = evaluate_candidate(spec, self.dataset, self.errors_path, self.sandbox, rows=rows)
            write_json_atomic(folder / "evaluation.json", result)
            evaluation = result.model_dump(mode="json")
        usefulness = None
        if measured is not None:
            write_json_atomic(folder / "usefulness.json", measured)
            usefulness = measured.model_dump(mode="json")
        record = CandidateRecord(
            id=candidate_id,
            name=spec.name,
            level=spec.level,
            suspicious=spec.suspicious,
            idea=self.idea.rationale,
            code_sha256=spec.code_sha256,
            created_at=now_iso(),
            validation_passed=True,
            backend=self.backend.name,
            model=self.backend.model,
            transcript=self.transcript_name,
            templates=self.prompts.template_hashes(),
            dataset_fingerprint=dataset_fingerprint(self.dataset.annotations_path),
            rounds=len(self.outcome.rounds),
            tokens=self.outcome.tokens,
            evaluation=evaluation,
            usefulness=usefulness,
            unproven=unproven,
        )
        save_candidate(self.run_dir, record)
        self.outcome.verdict, self.outcome.candidate = "passed", record
        self.outcome.reason = "every validation check passed"
        self._emit("candidate", {"id": candidate_id, "code_sha256": spec.code_sha256})


def author_idea(
    idea: Idea,
    backend: ModelBackend,
    writer: TranscriptWriter,
    dataset: Dataset,
    validation: ValidationSet,
    run_dir: Path,
    *,
    description: str = "",
    settings: AuthoringSettings | None = None,
    sandbox: SandboxConfig | None = None,
    library: Sequence[MetricSpec] = (),
    errors_path: Path | None = None,
    transcript_name: str = "transcript.jsonl",
    listener: Listener = lambda event, data: None,
) -> AuthoringOutcome:
    """Run the loop for one idea; `backend` should already record into `writer` (RecordingBackend)."""
    return _Session(
        idea,
        backend,
        writer,
        dataset,
        validation,
        run_dir,
        description=description,
        settings=settings or AuthoringSettings(),
        sandbox=sandbox or SandboxConfig(),
        library=library,
        errors_path=errors_path,
        transcript_name=transcript_name,
        listener=listener,
    ).run()
