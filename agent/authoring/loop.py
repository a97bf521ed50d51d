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

import hashlib
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
from agent.authoring.extract import Extraction, FormatProblem, Idea, Issue, check_code, extract_code, no_code_problem
from agent.authoring.prompting import (
    MetricTask,
    Prompts,
    build_format_retry,
    build_implement_request,
    build_repair_request,
    choose_examples,
    idea_level,
    system_prompt,
)
from agent.authoring.repair import DEFAULT_TOKEN_CAP, LoopGuard, error_signature, repair_context
from agent.authoring.usefulness_check import measure_usefulness
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
from agent.evaluation.usefulness import PROPERTY
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

    def as_dict(self) -> dict[str, Any]:
        values = {name: getattr(self, name) for name in self.__dataclass_fields__}
        if not self.targets:
            del values["targets"]  # recordings without targets read as they did before targets existed
        else:
            values["targets"] = list(self.targets)
        return values


@dataclass(frozen=True)
class Round:
    """One model exchange of the loop and what came of it."""

    draft: int
    repair: int
    kind: Literal["implement", "repair", "format_retry"]
    outcome: Literal["passed", "failed", "format_problem", "repeated_code", "repeated_error"]
    code_sha256: str | None
    detail: str
    tokens: int


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


def model_defaults(
    backend: ModelBackend, *, grammar: bool | None = None, max_tokens: int | None = None
) -> dict[str, Any]:
    """The `AuthoringSettings` that follow the model rather than the idea (None: the model's default).

    - max_tokens: LOCAL_MAX_TOKENS for the local backend.
    - grammar: completion mode only, and on by default for the local backend there. A base model that
      small almost never writes a whole metric that parses and runs (11 of 12 free drafts did not
      parse); held to prompts/completion_grammar.gbnf.j2 it writes the measurement, always valid code.
      An OpenAI-compatible server gets the grammar only when asked (llama.cpp's server honours it).
    """
    local = backend.name == "local"
    wanted = local if grammar is None else grammar
    return {
        "max_tokens": max_tokens or (LOCAL_MAX_TOKENS if local else AuthoringSettings.max_tokens),
        "grammar": wanted and backend.mode == "completion",
    }


def idea_from_text(text: str) -> Idea:
    """A user's idea as an `Idea`: a snake_case NAME from its first meaningful words, the text as rationale."""
    spoken = text.lower().replace("n't", " not")
    words = [word for word in re.findall(r"[a-z][a-z0-9]*", spoken) if word not in _FILLER]
    name = "_".join(words[:4])[:48].strip("_") or "custom_metric"
    if not name[0].isalpha():
        name = f"metric_{name}"
    return Idea(name=name, rationale=" ".join(text.split()), level=idea_level(text))


def dataset_fingerprint(annotations: Path) -> str:
    """The sha256 of the annotations file: which labels a metric was written and validated against."""
    return hashlib.sha256(annotations.read_bytes()).hexdigest()


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
        self.outcome = AuthoringOutcome(verdict="gave_up", reason="the loop made no attempt", idea=idea)

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

    # -- the loop -----------------------------------------------------------------------------

    def run(self) -> AuthoringOutcome:
        for draft in range(1, self.settings.max_drafts + 1):
            self._emit("draft", {"draft": draft})
            if self._draft(draft) or self.guard.over_cap():
                break
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
        """One draft with its repairs. True when it produced a candidate (or the token cap ended the idea)."""
        self.guard.new_draft()
        conversation = Conversation(system_prompt(self.prompts).text)
        request = build_implement_request(
            self.prompts, self.task, conversation.messages(self.settings.context_budget_tokens),
            **self._request_kwargs(draft),
        )  # fmt: skip
        kind: Literal["implement", "repair", "format_retry"] = "implement"
        turn_summary = f"[the request to implement the idea, draft {draft}]"
        repairs = format_retries = 0
        replies_seen: set[str] = set()
        while True:
            reply = self._ask(request)
            spent = reply.usage.total_tokens
            over_cap = self.guard.spend(spent)
            user_turn = request.messages[-1].content
            turn_kind = {"implement": "idea", "repair": "repair_request", "format_retry": "format_error"}[kind]
            conversation.add("user", user_turn, turn_kind, summary=turn_summary)
            extraction = extract_code(reply.text, request.stop)
            checked = self._check(reply, extraction)
            sha = checked.code_sha256 if isinstance(checked, MetricSpec) else None
            conversation.add(
                "assistant",
                reply.text,
                "code",
                summary=f"[draft {draft}: code {sha[:8] if sha else 'unusable'}]",
            )
            if isinstance(checked, FormatProblem):
                digest = hashlib.sha256(reply.text.encode("utf-8")).hexdigest()
                if digest in replies_seen:
                    # The same unusable reply again: asking once more would only burn tokens.
                    self._round(
                        draft, repairs, kind, "repeated_code", None, "the model repeated an unusable reply", spent
                    )
                    self.outcome.reason += " (the model then repeated the same reply)"
                    self._emit("stopped", {"draft": draft, "why": "repeated_reply"})
                    return False
                replies_seen.add(digest)
                self._round(draft, repairs, kind, "format_problem", None, str(checked), spent)
                self._emit("format_problem", {"draft": draft, "problem": str(checked), "kind": checked.kind})
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

            if self.guard.tried(checked.code_sha256):
                self._round(draft, repairs, kind, "repeated_code", sha, "the model returned code it had tried", spent)
                self.outcome.reason += " (the model then returned code it had already tried)"
                self._emit("stopped", {"draft": draft, "why": "repeated_code"})
                return False
            report = self._validate(checked, draft, repairs)
            if report.passed:
                self._round(draft, repairs, kind, "passed", sha, "every check passed", spent)
                self._promote_to_candidate(checked, extraction, report)
                return True
            failure = report.first_failure
            assert failure is not None
            detail = f"{failure.check}: {failure.message}" + (f" (on {failure.item})" if failure.item else "")
            self.outcome.reason = f"validation failed: {detail}"
            stop = self.guard.observe(checked.code_sha256, error_signature(failure))
            self._round(draft, repairs, kind, stop or "failed", sha, detail, spent)
            if over_cap:
                return self._out_of_tokens()
            if stop is not None:
                self.outcome.reason += " (the same error came back after a repair)"
                self._emit("stopped", {"draft": draft, "why": stop})
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

    def _round(
        self, draft: int, repair: int, kind: Any, outcome: Any, sha: str | None, detail: str, tokens: int
    ) -> None:
        self.outcome.rounds.append(Round(draft, repair, kind, outcome, sha, detail, tokens))

    def _out_of_tokens(self) -> bool:
        self.outcome.reason += (
            f" (stopped: the idea used {self.guard.tokens} tokens, over its cap of {self.guard.token_cap})"
        )
        self._emit("stopped", {"why": "token_cap", "tokens": self.guard.tokens})
        return True

    def _promote_to_candidate(self, spec: MetricSpec, extraction: Extraction, report: ValidationReport) -> None:
        """Write the pending candidate: code, rationale, validation report, eval figures, record."""
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
        if self.settings.targets and PROPERTY not in self.settings.targets:
            self._emit("usefulness", {"metric": spec.name, "targets": list(self.settings.targets)})
            measured = measure_usefulness(
                spec, self.dataset, self.run_dir, self.settings.targets, self.settings.seed, self.sandbox
            )
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
