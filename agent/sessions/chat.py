"""The brainstorming session behind `metricsmith chat`: session state and the command dispatcher.

`ChatSession.dispatch(line)` runs one line of input: a slash command (the table `COMMANDS`; each
handler's docstring is its `/help` text), or free text, which is a chat turn with the model about
the dataset. Output goes to the rich Console the session was given; nothing here reads a terminal,
so tests drive the dispatcher directly and the REPL (agent/cli/chat.py, prompt_toolkit) is only the
loop around it.

The session is recorded as ONE transcript, RUN_DIR/transcript.jsonl: every model exchange (through
`RecordingBackend`), every line typed (`user_input` events), the authoring loop's own events, what
the editor did (`editor`, with the new code) and every gate decision (`decision`). The meta line's
settings say `"kind": "chat"`, so `metricsmith replay` sends such a transcript to
agent.sessions.chat_replay, which feeds the recorded lines through the same dispatcher with the replay backend.

The run directory is an ordinary authoring run (agent.authoring.candidates): candidates land in
RUN_DIR/candidates/ID, the validation set in RUN_DIR/validation-set, so `metricsmith review RUN_DIR`
and `metricsmith approve RUN_DIR ID` work on it as on an `author` run.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict
from rich.console import Console
from rich.live import Live
from rich.markdown import Markdown
from rich.markup import escape
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from agent.authoring.candidates import CandidateRecord, list_candidates, load_candidate
from agent.authoring.extract import Idea, extract_ideas
from agent.authoring.job import (
    TRANSCRIPT_NAME,
    DatasetSource,
    SessionSetup,
    dataset_source,
    describe_event,
    validation_set,
)
from agent.authoring.loop import AuthoringOutcome, author_idea, idea_from_text
from agent.authoring.prompting import Prompts, build_brainstorm_request, build_chat_request, system_prompt
from agent.authoring.validation import ValidationReport
from agent.authoring.validation_set import ValidationSet
from agent.data.coco import load_coco
from agent.data.facts import dataset_facts
from agent.errors import MetricsmithError, UserError
from agent.evaluation.usefulness import parse_targets
from agent.llm.backends.replay import ReplayMismatch
from agent.llm.conversation import Conversation
from agent.llm.model import ForwardingBackend, Message, ModelBackend, ModelReply, ModelRequest, TextSink, Usage
from agent.llm.pricing import cost_usd
from agent.llm.transcript import RecordingBackend, TranscriptMeta, TranscriptWriter
from agent.metrics.contract import MetricSpec, list_builtin_metrics
from agent.metrics.library import (
    LibraryRef,
    check_library_folder,
    default_library_dir,
    latest_library_refs,
    library_metrics,
    list_library,
)
from agent.review.editing import Editor, edit_candidate, open_in_editor, revalidate_candidate
from agent.review.gate import approve, promote_candidate, reject
from agent.review.view import show_candidate
from sandbox.engine import WorkerStartFailed
from sandbox.isolation import IsolationUnavailable, SandboxConfig

__all__ = [
    "COMMANDS",
    "ChatSession",
    "ChatSettings",
    "ChatSetup",
    "Command",
]

DEFAULT_IDEAS = 5
MAX_IDEAS = 20
BRAINSTORM_MAX_TOKENS = 800
SUMMARY_NAME = "session.md"
HISTORY_NAME = ".chat_history"


class ChatSettings(BaseModel):
    """What a chat transcript's meta line records under `settings`: enough to run the session again."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["chat"] = "chat"
    description: str = ""
    dataset: DatasetSource
    authoring: dict[str, Any]
    validation_size: int = 64
    # The promoted metrics in the library when the session started (see JobSettings.library); what the
    # session promotes itself is in its decisions, and a replay promotes it again.
    library: list[LibraryRef] = []


# One `metricsmith chat` session (or its replay): what any authoring session needs, and no idea yet.
ChatSetup = SessionSetup


class _Meter(ForwardingBackend):
    """A ModelBackend that forwards every request and adds up the tokens of the replies."""

    def __init__(self, inner: ModelBackend) -> None:
        super().__init__(inner)
        self.prompt_tokens = self.completion_tokens = self.exchanges = 0
        self.estimated = False

    @property
    def usage(self) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens, estimated=self.estimated
        )

    def complete(self, request: ModelRequest, on_text: TextSink | None = None) -> ModelReply:
        reply = self.inner.complete(request, on_text)
        self.exchanges += 1
        self.prompt_tokens += reply.usage.prompt_tokens
        self.completion_tokens += reply.usage.completion_tokens
        self.estimated |= reply.usage.estimated
        return reply


@dataclass(frozen=True)
class _Implemented:
    """What one /implement came to, for the session summary."""

    idea: Idea
    verdict: str
    reason: str
    candidate: str | None
    rounds: int
    tokens: int


class ChatSession:
    """The state of one chat session; `dispatch` runs a line of input against it."""

    def __init__(self, setup: ChatSetup, console: Console, *, editor: Editor = open_in_editor) -> None:
        self.setup, self.console, self.editor = setup, console, editor
        self.run_dir = setup.run_dir
        self.dataset = load_coco(setup.annotations, setup.images)
        if setup.errors is not None and not setup.errors.exists():
            raise UserError(f"{setup.errors}: no such errors file")
        if self.run_dir.exists() and any(self.run_dir.iterdir()):
            raise UserError(f"{self.run_dir} is not empty: give --out a new folder (each session keeps its own record)")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.prompts = Prompts()
        self.facts = dataset_facts(self.dataset)
        self.library_dir = default_library_dir(setup.library)
        # What drafts are compared with: the library as it was when the session started, plus what the
        # session itself promotes; never versions another process promotes meanwhile, which a replay can't know.
        pinned = setup.pinned_library
        self.library_pins = list(latest_library_refs(self.library_dir) if pinned is None else pinned)
        self.sandbox = SandboxConfig(workers=setup.workers) if setup.workers else SandboxConfig()
        settings = ChatSettings(
            description=setup.description,
            dataset=dataset_source(setup.annotations, setup.images, setup.errors),
            authoring=setup.settings.as_dict(),
            validation_size=setup.validation_size,
            library=self.library_pins,
        )
        meta = TranscriptMeta.for_backend(
            setup.backend,
            templates=self.prompts.template_hashes(),
            settings=settings.model_dump(mode="json"),
            origin=setup.origin,
        )
        self.writer = TranscriptWriter(self.run_dir / TRANSCRIPT_NAME, meta)
        self.backend = _Meter(RecordingBackend(setup.backend, self.writer))
        # One conversation for free chat and brainstorms, so "tell me more about idea 2" makes sense.
        self.conversation = Conversation(system_prompt(self.prompts).text)
        self.ideas: list[Idea] = []
        self.current: str | None = None  # the candidate /show, /run, /approve ... act on
        self.implemented: list[_Implemented] = []
        self.decisions: list[dict[str, Any]] = []
        self._validation: ValidationSet | None = None

    def close(self) -> None:
        self.writer.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    # -- dispatch -----------------------------------------------------------------------------

    def dispatch(self, line: str) -> bool:
        """Run one line: a slash command, or a message to the model. False when the session should end.

        Errors the user can act on are printed and the session goes on; Ctrl-C cancels the command
        only. A replay mismatch propagates: the session no longer follows its recording.
        """
        text = line.strip()
        if not text:
            return True
        self.writer.event("user_input", {"line": line})
        try:
            match = re.fullmatch(r"/(\S*)\s*(.*)", text, flags=re.DOTALL)
            if match is None:
                self._chat(text)
                return True
            name, argument = match.group(1).lower(), match.group(2).strip()
            command = COMMANDS.get(name)
            if command is None:
                self._unknown(name)
                return True
            return command.handler(self, argument) is not False
        except KeyboardInterrupt:
            self.writer.event("cancelled", {"line": line})
            self.console.print("[yellow]cancelled[/] (the session goes on)", markup=True)
        except ReplayMismatch:
            raise
        except (MetricsmithError, IsolationUnavailable, WorkerStartFailed) as error:
            self.console.print(f"[red]error[/]: {escape(str(error))}", markup=True)
        return True

    def _unknown(self, name: str) -> None:
        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f"did you mean /{close[0]}? " if close else ""
        self.console.print(f"unknown command /{escape(name)}: {hint}/help lists the commands", markup=True)

    # -- commands (each docstring is its /help text) ------------------------------------------

    def cmd_help(self, argument: str) -> None:
        """Show every command, or one command's help: /help implement."""
        wanted = argument.lstrip("/").lower()
        if wanted and wanted not in COMMANDS:
            self._unknown(wanted)
            return
        for command in [COMMANDS[wanted]] if wanted else COMMANDS.values():
            self.console.print(f"[bold cyan]{escape(command.usage)}[/]", markup=True)
            for doc_line in command.help.splitlines():
                self.console.print(f"    {doc_line}", markup=False)
        if not wanted:
            self.console.print("Anything else you type is a message to the model about the dataset.")
            self.console.print("Enter sends, Esc-Enter (or Alt-Enter) starts a new line, Tab completes a command.")
            self.console.print("Ctrl-C cancels what is running; Ctrl-D or /exit leaves.")

    def cmd_ideas(self, argument: str) -> None:
        """Ask the model for N metric ideas (default 5) for this dataset, optionally focused on a concern.

        Example: /ideas 3 boxes that are too loose. Shown as a numbered list for /implement K."""
        count_text, _, concern = argument.partition(" ")
        if count_text.isdigit():
            count = int(count_text)
        else:
            count, concern = DEFAULT_IDEAS, argument
        if not 1 <= count <= MAX_IDEAS:
            raise UserError(f"/ideas N: N must be between 1 and {MAX_IDEAS}, got {count}")
        chat = self.backend.mode == "chat"
        request = build_brainstorm_request(
            self.prompts,
            self._messages() if chat else (),
            description=self.setup.description,
            facts=self.facts,
            n=count,
            mode=self.backend.mode,
            temperature=self.setup.settings.temperature,
            max_tokens=BRAINSTORM_MAX_TOKENS,
            concern=concern.strip() or None,
            existing=self._existing_names(),
            seed=self.setup.settings.seed,
            grammar=self.setup.settings.grammar,
        )
        with self.console.status("asking the model for ideas…"):
            reply = self.backend.complete(request)
        if chat:
            asked = f"[asked for {count} ideas]"
            self.conversation.add("user", request.messages[-1].content, "brainstorm", summary=asked)
            self.conversation.add("assistant", reply.text, "ideas", summary="[a list of metric ideas]")
        ideas = extract_ideas(reply.text)
        self.writer.event("ideas", {"ideas": [idea.model_dump(mode="json") for idea in ideas]})
        if not ideas:
            self.console.print(
                "the model gave no usable idea (expected lines like `1. name (object) - why`); its reply was:",
                markup=False,
            )
            self.console.print(reply.text or "(empty)", markup=False)
            return
        self.ideas = ideas
        table = Table("#", "idea", "level", "catches", "why", title="ideas", title_justify="left")
        for number, idea in enumerate(ideas, start=1):
            table.add_row(str(number), idea.name, idea.level or "?", ", ".join(idea.targets) or "?", idea.rationale)
        self.console.print(table)
        self.console.print('write one: /implement 1   (or /implement "your own idea")')

    def cmd_implement(self, argument: str) -> None:
        """Write the metric for idea K of the last /ideas, or for an idea in your words.

        Runs the authoring loop (draft, validate in the sandbox, repair) and shows each round; a metric
        that passes becomes the current candidate. Example: /implement 2, /implement "boxes off the animal".
        `--target shift,loose` at the end says what it should catch: the candidate is then measured on
        those errors, injected into a sample of the dataset."""
        settings = self.setup.settings
        aimed = re.search(r"\s*--target\s+(\S+)\s*$", argument)
        if aimed is not None:
            settings = dataclasses.replace(settings, targets=parse_targets(aimed.group(1)))
            argument = argument[: aimed.start()].strip()
        elif re.search(r"(^|\s)--target\s*$", argument):  # it would have become part of the idea's text
            raise UserError("--target needs the error types it should catch, like --target shift,loose")
        if not argument:
            raise UserError('/implement K (an idea from /ideas) or /implement "your idea" [--target TYPES]')
        if argument.isdigit():
            if not self.ideas:
                raise UserError('no ideas yet: /ideas first, or /implement "your idea"')
            number = int(argument)
            if not 1 <= number <= len(self.ideas):
                raise UserError(f"there are {len(self.ideas)} ideas: /implement 1 to {len(self.ideas)}")
            idea = self.ideas[number - 1]
            if aimed is None and idea.targets:
                # The brainstorm said what the idea should catch: measure it on that, unless told otherwise.
                settings = dataclasses.replace(settings, targets=idea.targets)
        else:
            idea = idea_from_text(argument.strip().strip("\"'"))
        if not settings.targets:
            settings = dataclasses.replace(settings, propose_targets=True)
        self.console.rule(f"implementing {idea.name}")
        outcome = author_idea(
            idea,
            self.backend,
            self.writer,
            self.dataset,
            self._validation_set(),
            self.run_dir,
            description=self.setup.description,
            settings=settings,
            sandbox=self.sandbox,
            library=self._library(),
            errors_path=self.setup.errors,
            transcript_name=TRANSCRIPT_NAME,
            listener=self._progress,
        )
        self._report(idea, outcome)

    def cmd_run(self, argument: str) -> None:
        """Validate the current candidate's metric.py again in the sandbox (after you changed it, say)."""
        record = self._current()
        with self.console.status("validating in the sandbox…"):
            record, report = revalidate_candidate(
                self.run_dir, record, sandbox=self.sandbox, library=self._library(record)
            )
        self.writer.event(
            "revalidation", {"candidate": record.id, "code_sha256": record.code_sha256, "passed": report.passed}
        )
        self._show_validation(report)

    def cmd_show(self, argument: str) -> None:
        """Show the current candidate: its code, validation report, scores, and the path of its contact sheet."""
        record = self._current()
        show_candidate(self.console, self.run_dir, record)
        self.console.print(f"status: {record.status}")
        sheet = self.run_dir / "candidates" / record.id / "report.html"
        if sheet.exists():
            self.console.print(f"contact sheet (worst and best items, with their boxes): {sheet}", markup=False)

    def cmd_approve(self, argument: str) -> None:
        """Approve the current candidate (with an optional note) and promote it into the library."""
        record = self._current()
        check_library_folder(self.library_dir)  # before the approval, which a failed promotion would leave behind
        approved = approve(self.run_dir, record.id, note=argument or None)
        self._decided("approve", approved.id, approved.code_sha256, note=argument or None)
        entry = promote_candidate(self.run_dir, record.id, self.library_dir)
        self._decided("promote", record.id, entry.manifest.code_sha256, version=entry.manifest.version)
        self.library_pins.append(LibraryRef.of(entry.manifest))
        promoted = f"lib:{entry.manifest.name}@{entry.manifest.version} in {self.library_dir}"
        self.console.print(f"[green]promoted[/] as {escape(promoted)}", markup=True)

    def cmd_reject(self, argument: str) -> None:
        """Reject the current candidate; a reason is required: /reject scores every box the same."""
        record = self._current()
        if not argument:
            raise UserError("a rejection needs a reason: /reject REASON")
        rejected = reject(self.run_dir, record.id, argument)
        self._decided("reject", rejected.id, rejected.code_sha256, note=argument)
        self.console.print(f"rejected {rejected.id}")

    def cmd_edit(self, argument: str) -> None:
        """Open the current candidate's metric.py in $EDITOR; changed code goes back to pending and is validated again.

        Set VISUAL or EDITOR to choose the editor (default: vi)."""
        record = self._current()
        edited = edit_candidate(
            self.run_dir, record, self._edit_and_record, sandbox=self.sandbox, library=self._library(record)
        )
        if edited.code_sha256 == record.code_sha256:
            self.console.print("no change")
            return
        self._decided("edit", edited.id, edited.code_sha256)
        verdict = "[green]passed[/]" if edited.validation_passed else "[red]failed[/] (it stays pending; /show)"
        self.console.print(f"edited code {edited.code_sha256[:8]}: validation {verdict}", markup=True)

    def cmd_library(self, argument: str) -> None:
        """List the built-in metrics and the metrics promoted into the library."""
        builtins = Table("built-in", "level", "suspicious", "what it measures", title_justify="left")
        for spec in list_builtin_metrics():
            builtins.add_row(spec.name, spec.level, spec.suspicious, spec.description.split("\n")[0])
        self.console.print(builtins)
        entries = list_library(self.library_dir)
        if not entries:
            self.console.print(f"no promoted metric in {self.library_dir} yet", markup=False)
            return
        promoted = Table("promoted", "version", "level", "approved by", "note", title_justify="left")
        for entry in entries:
            manifest = entry.manifest
            promoted.add_row(
                f"lib:{manifest.name}",
                str(manifest.version),
                manifest.level,
                manifest.approval.approver,
                manifest.approval.note or "",
            )
        self.console.print(promoted)

    def cmd_cost(self, argument: str) -> None:
        """Show the tokens used so far in this session, and their price when the model's is known."""
        self.console.print(self._cost_line(), markup=False)

    def cmd_save(self, argument: str) -> None:
        """Write a summary of the session (ideas, metrics written, decisions, tokens) to RUN_DIR/session.md."""
        path = self.run_dir / SUMMARY_NAME
        temporary = path.with_name(f".{SUMMARY_NAME}.tmp")
        temporary.write_text(self.summary(), encoding="utf-8")
        os.replace(temporary, path)
        self.console.print(f"saved {path}", markup=False)

    def cmd_exit(self, argument: str) -> bool:
        """Leave the session (Ctrl-D does too). Everything is already on the record in RUN_DIR."""
        pending = [record.id for record in list_candidates(self.run_dir) if record.status == "pending"]
        if pending:
            self.console.print(f"{_count(len(pending), 'candidate')} still pending: metricsmith review {self.run_dir}")
        self.console.print(f"transcript: {self.writer.path}", markup=False)
        return False

    # -- helpers ------------------------------------------------------------------------------

    def _chat(self, text: str) -> None:
        if self.backend.mode == "completion":
            self.console.print(
                "Free chat needs a chat model: this is a base model in completion mode, which can only continue "
                'code. Use /ideas to brainstorm metrics, then /implement K (or /implement "your idea").',
                markup=False,
            )
            return
        request = build_chat_request(
            self.prompts,
            self._messages(),
            text,
            description=self.setup.description,
            facts=None if self.conversation.turns else self.facts,
            temperature=self.setup.settings.temperature,
            max_tokens=self.setup.settings.max_tokens,
            seed=self.setup.settings.seed,
        )
        reply = self._streamed(request)
        if not reply.text.strip():
            self.console.print(
                "the model answered with nothing (a base model without a chat template does that); "
                "restart with --completion and use /ideas and /implement",
                markup=False,
            )
            return
        self.conversation.add("user", request.messages[-1].content, "chat", summary=f"[user: {text[:120]}]")
        self.conversation.add("assistant", reply.text, "chat_reply", summary=f"[model: {reply.text[:120]}]")

    def _streamed(self, request: ModelRequest) -> ModelReply:
        """The reply, rendered as markdown while it arrives (a spinner until the first piece)."""
        pieces: list[str] = []
        waiting = Spinner("dots", text="the model is thinking…")
        with Live(waiting, console=self.console, refresh_per_second=12, vertical_overflow="visible") as live:

            def show(piece: str) -> None:
                pieces.append(piece)
                live.update(Markdown("".join(pieces)), refresh=True)  # each piece shows as it comes

            reply = self.backend.complete(request, show)
            if not reply.text.strip():
                live.update(Text(""))  # the caller says what an empty reply means
        return reply

    def _messages(self) -> tuple[Message, ...]:
        return self.conversation.messages(self.setup.settings.context_budget_tokens)

    def _existing_names(self) -> list[str]:
        """Metrics a brainstorm should not propose again: the built-ins, the library and what this session promoted.

        The library as the session pinned it, not as it is now: a replay must send the same requests.
        """
        # The learned detectors are named for error types, not ideas: no brainstorm line could repeat them.
        builtins = {spec.name for spec in list_builtin_metrics() if spec.combine != "learned"}
        return sorted(builtins | {pin.name for pin in self.library_pins})

    def _library(self, record: CandidateRecord | None = None) -> list[MetricSpec]:
        """What a candidate must not duplicate: the library, without the candidate's own promoted versions."""
        _, specs = library_metrics(self.library_dir, self.library_pins)
        return [spec for spec in specs if record is None or spec.name != record.name]

    def _validation_set(self) -> ValidationSet:
        if self._validation is None:
            with self.console.status("building the validation set…"):
                self._validation = validation_set(
                    self.dataset, self.run_dir / "validation-set", self.setup.validation_size
                )
        return self._validation

    def _current(self) -> CandidateRecord:
        if self.current is None:
            raise UserError("no current candidate: /implement an idea first (/ideas, then /implement 1)")
        return load_candidate(self.run_dir, self.current)

    def _progress(self, event: str, data: dict[str, Any]) -> None:
        line = describe_event(event, data)
        if event == "scoring":
            line = f"  scoring all {data['images']} images for the contact sheet"
        if line is not None:  # describe_event's markup, its values escaped
            self.console.print(line, markup=True)

    def _report(self, idea: Idea, outcome: AuthoringOutcome) -> None:
        candidate = outcome.candidate
        self.implemented.append(
            _Implemented(
                idea=idea,
                verdict=outcome.verdict,
                reason=outcome.reason,
                candidate=candidate.id if candidate else None,
                rounds=outcome.exchanges,
                tokens=outcome.tokens,
            )
        )
        if candidate is None:
            self.console.print(f"[red]gave up[/]: {escape(outcome.reason)}", markup=True)
            self.console.print(f"the attempts are in {self.run_dir / 'attempts'}", markup=False)
            return
        self.current = candidate.id
        self.console.print(
            f"[green]candidate {escape(candidate.id)}[/] passed after {_count(outcome.exchanges, 'exchange')} and is "
            "pending: /show it, then /approve or /reject REASON",
            markup=True,
        )

    def _show_validation(self, report: ValidationReport) -> None:
        table = Table("check", "status", "detail", title_justify="left")
        for check in report.checks:
            table.add_row(check.name, check.status, check.detail or "")
        self.console.print(table)
        verdict = "[green]passed[/]" if report.passed else "[red]failed[/]"
        self.console.print(f"validation {verdict}", markup=True)

    def _edit_and_record(self, path: Path) -> None:
        """The editor, with what it did on the record: a replay writes the same code back."""
        before = path.read_text(encoding="utf-8")
        self.editor(path)
        after = path.read_text(encoding="utf-8")
        self.writer.event("editor", {"candidate": path.parent.name, "code": after if after != before else None})

    def _decided(self, action: str, candidate: str, sha: str, **details: Any) -> None:
        decision = {"action": action, "candidate": candidate, "code_sha256": sha, **details}
        # The gate itself appends the decision to this session's transcript (agent.review.gate._append_decision).
        self.decisions.append({**decision, "name": load_candidate(self.run_dir, candidate).name})

    def _cost_line(self) -> str:
        usage = self.backend.usage
        estimated = " (estimated: the server reported none)" if usage.estimated else ""
        price = cost_usd(self.backend.model, usage)
        priced = f"; about ${price:.4f} at {self.backend.model}'s list price" if price is not None else ""
        return (
            f"{_count(self.backend.exchanges, 'exchange')}, {usage.total_tokens} tokens ({usage.prompt_tokens} prompt, "
            f"{usage.completion_tokens} completion){estimated}{priced or '; price unknown for ' + self.backend.model}"
        )

    def summary(self) -> str:
        """The session as markdown: setup, ideas, what each /implement gave, decisions, tokens."""
        lines = [
            "# metricsmith chat session",
            "",
            f"- dataset: `{self.setup.annotations}` ({len(self.dataset.images)} images)",
            f"- model: {self.backend.name} ({self.backend.model}, {self.backend.mode} mode)",
            f"- transcript: `{self.writer.path}`",
            f"- tokens: {self._cost_line()}",
            "",
            "## Ideas",
            "",
        ]
        lines += [
            f"{n}. `{idea.name}` ({idea.level or '?'}; {', '.join(idea.targets) or 'no target'}): {idea.rationale}"
            for n, idea in enumerate(self.ideas, 1)
        ]
        lines += ["", "## Metrics written", ""]
        for done in self.implemented:
            result = f"candidate `{done.candidate}`" if done.candidate else f"gave up: {done.reason}"
            lines.append(f"- `{done.idea.name}`: {done.verdict} after {_count(done.rounds, 'exchange')}, {result}")
        lines += ["", "## Decisions", ""]
        for decision in self.decisions:
            note = f": {decision['note']}" if decision.get("note") else ""
            code = decision["code_sha256"][:12]
            lines.append(f"- {decision['action']} `{decision['candidate']}` (code {code}){note}")
        pending = [record.id for record in list_candidates(self.run_dir) if record.status == "pending"]
        if pending:
            lines += ["", f"Pending review: `metricsmith review {self.run_dir}` ({', '.join(pending)})"]
        return "\n".join(lines) + "\n"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


@dataclass(frozen=True)
class Command:
    """A slash command: `/help` shows its usage and the handler's docstring."""

    name: str
    usage: str
    handler: Callable[[ChatSession, str], bool | None]

    @property
    def help(self) -> str:
        return inspect.getdoc(self.handler) or ""


COMMANDS: dict[str, Command] = {
    command.name: command
    for command in (
        Command("help", "/help [COMMAND]", ChatSession.cmd_help),
        Command("ideas", "/ideas [N] [CONCERN]", ChatSession.cmd_ideas),
        Command("implement", '/implement K | "IDEA"', ChatSession.cmd_implement),
        Command("run", "/run", ChatSession.cmd_run),
        Command("show", "/show", ChatSession.cmd_show),
        Command("approve", "/approve [NOTE]", ChatSession.cmd_approve),
        Command("reject", "/reject REASON", ChatSession.cmd_reject),
        Command("edit", "/edit", ChatSession.cmd_edit),
        Command("library", "/library", ChatSession.cmd_library),
        Command("cost", "/cost", ChatSession.cmd_cost),
        Command("save", "/save", ChatSession.cmd_save),
        Command("exit", "/exit", ChatSession.cmd_exit),
    )
}
