"""The batch job: many ideas, authored concurrently, resumable after any crash.

A batch run directory:

    RUN_DIR/
      manifest.json        # the resolved config and the ideas, each with a stable id (written once)
      results.jsonl        # append-only: one line per FINISHED idea (fsync'ed)
      ideas/ID/            # one authoring run per idea: transcript.jsonl, candidates/, attempts/ ...
      summary.json         # written atomically after every idea, and at the end
      report.html          # every candidate scored on the dataset, as `metricsmith report` draws it

Resuming (`--resume RUN_DIR`) reads the manifest (the ideas are never brainstormed twice), skips every
idea with a line in results.jsonl, and authors the others from scratch: an idea killed half-way
left only a partial folder, which is moved to `ideas/.interrupted/` first. So after any kill,
SIGKILL included, a resumed run ends with each idea exactly once in results.jsonl.

`--approve-passing` is the one way to approve without a human at the moment of decision. It must
be given explicitly, and each such approval is recorded as a policy, with its criteria.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from agent.authoring.candidates import list_candidates, now_iso, write_json_atomic
from agent.authoring.extract import extract_ideas
from agent.authoring.job import AuthorJob, make_backend, run_author_job
from agent.authoring.loop import AuthoringOutcome, AuthoringSettings, model_defaults
from agent.authoring.prompting import Prompts, build_brainstorm_request
from agent.authoring.usefulness_check import Usefulness
from agent.data.coco import load_coco
from agent.data.facts import dataset_facts
from agent.errors import UserError
from agent.evaluation.ranking import load_error_labels
from agent.evaluation.report import build_report, render_html, write_report
from agent.llm.model import ModelBackend, ModelUnreachable
from agent.llm.pricing import cost_usd
from agent.llm.transcript import RecordingBackend, TranscriptMeta, TranscriptWriter
from agent.metrics.contract import MetricSpec, parse_metric_source
from agent.metrics.library import check_library_folder
from agent.metrics.scoring import score_dataset
from agent.review.gate import approve, promote_candidate
from agent.sessions.batch_config import BatchConfig
from sandbox.isolation import SandboxConfig

__all__ = ["BatchIdea", "BatchManifest", "BatchResult", "BatchSummary", "backend_for", "run_batch"]

APPROVE_PASSING_POLICY = "--approve-passing: every sandbox validation check passed (error rate, finite, not constant, "
APPROVE_PASSING_POLICY += "deterministic, time budget, not a duplicate of a library metric)"


class BatchIdea(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    text: str
    targets: list[str] = []  # what the idea should catch (agent.evaluation.usefulness)


class BatchManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: int = 1
    created_at: str
    config: dict[str, Any]
    ideas: list[BatchIdea]
    brainstormed: bool = False


class BatchResult(BaseModel):
    """One line of results.jsonl."""

    model_config = ConfigDict(extra="forbid")

    idea_id: str
    idea: str
    verdict: str  # "passed", "gave_up" or "unreachable"
    reason: str
    candidate: str | None = None
    approved: bool = False
    library_version: int | None = None
    exchanges: int = 0
    tokens: int = 0
    cost_usd: float | None = None
    usefulness: str | None = None  # with targets: the candidate's verdict on injected errors, in one line
    finished_at: str


class BatchSummary(BaseModel):
    run_dir: str
    ideas: int
    finished: int
    passed: int
    gave_up: int
    unreachable: int
    pending_review: list[str]
    approved: list[str]
    tokens: int
    cost_usd: float | None
    results: list[BatchResult]
    report: str | None = None


@dataclass(frozen=True)
class BatchOptions:
    concurrency: int = 2
    approve_passing: bool = False
    workers: int | None = None


Progress = Callable[[str, dict[str, Any]], None]


# After this many ideas in a row found the model server unreachable, no queued idea starts.
UNREACHABLE_IN_A_ROW = 2


def _idea_id(index: int, text: str) -> str:
    words = "".join(ch if ch.isalnum() else "-" for ch in text.lower()).split("-")
    slug = "-".join(word for word in words if word)[:40].strip("-") or "idea"
    return f"{index:02d}-{slug}"


def _read_results(run_dir: Path) -> dict[str, BatchResult]:
    path = run_dir / "results.jsonl"
    if not path.exists():
        return {}
    results: dict[str, BatchResult] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            result = BatchResult.model_validate_json(line)
        except ValueError:
            continue  # a line torn by a kill: that idea is simply not finished
        # The latest line of an idea wins: an idea the model server was unreachable for is authored again on
        # --resume, and its new line follows the old.
        results[result.idea_id] = result
    return results


class _ResultLog:
    """results.jsonl: appended under a lock, one fsync'ed line per finished idea."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        data = path.read_bytes() if path.exists() else b""
        if data and not data.endswith(b"\n"):
            # A kill mid-write left part of a line, whose idea is not finished (`_read_results` skips it). Cut off,
            # or the next result would be appended to it and be lost with it on the next resume.
            with open(path, "r+b") as handle:
                handle.truncate(data.rfind(b"\n") + 1)
                os.fsync(handle.fileno())

    def append(self, result: BatchResult) -> None:
        with self.lock, open(self.path, "a", encoding="utf-8") as handle:
            handle.write(result.model_dump_json() + "\n")
            handle.flush()
            os.fsync(handle.fileno())


def backend_for(config: BatchConfig) -> ModelBackend:
    """The model the config names."""
    model = config.model
    return make_backend(
        model.backend,
        model=model.model,
        base_url=model.base_url,
        model_path=model.model_path,
        transcript=model.transcript,
        mode="completion" if model.completion else None,
        request_timeout_s=model.request_timeout,
    )


def _brainstorm(config: BatchConfig, backend: ModelBackend, run_dir: Path) -> list[tuple[str, tuple[str, ...]]]:
    """Ask the model for `brainstorm` ideas; the exchange is recorded in RUN_DIR/brainstorm.jsonl."""
    dataset = load_coco(config.dataset.annotations, config.dataset.images)
    prompts = Prompts()
    meta = TranscriptMeta.for_backend(backend, templates=prompts.template_hashes(), idea=None)
    with TranscriptWriter(run_dir / "brainstorm.jsonl", meta) as writer:
        request = build_brainstorm_request(
            prompts,
            (),
            description=config.description_text(),
            facts=dataset_facts(dataset),
            n=config.brainstorm or 1,
            mode=backend.mode,
            temperature=config.model.temperature,
            max_tokens=800,
            grammar=model_defaults(backend, grammar=config.model.grammar)["grammar"],
        )
        reply = RecordingBackend(backend, writer).complete(request)
        ideas = extract_ideas(reply.text)
        writer.event(
            "brainstorm", {"ideas": [idea.rationale for idea in ideas], "targets": [list(i.targets) for i in ideas]}
        )
    if not ideas:
        raise UserError("the model's brainstorm gave no usable idea; list ideas = [...] in the config instead")
    # Each idea keeps the targets the model gave it, so it is measured on errors of those types.
    return [(f"{idea.name.replace('_', ' ')}: {idea.rationale}", idea.targets) for idea in ideas[: config.brainstorm]]


def _start(config: BatchConfig, run_dir: Path, backend: ModelBackend) -> BatchManifest:
    left = sorted(path.name for path in run_dir.iterdir()) if run_dir.exists() else []
    if left and not (run_dir / "manifest.json").exists() and all(name.startswith("brainstorm") for name in left):
        # A start that failed while brainstorming (a dead server) left its transcript and no manifest: nothing to
        # resume, so this start takes the folder over, keeping that transcript aside.
        failed = run_dir / "brainstorm.jsonl"
        if failed.exists():
            failed.rename(run_dir / f"brainstorm.failed-{len(left)}.jsonl")
    elif left:
        raise UserError(f"{run_dir} is not empty: pass a new --out, or --resume {run_dir} to finish it")
    run_dir.mkdir(parents=True, exist_ok=True)
    brainstormed = config.brainstorm is not None
    entries = _brainstorm(config, backend, run_dir) if brainstormed else config.idea_entries()
    manifest = BatchManifest(
        created_at=now_iso(),
        config=config.model_dump(mode="json"),
        ideas=[
            BatchIdea(id=_idea_id(index, text), text=text, targets=list(targets))
            for index, (text, targets) in enumerate(entries, start=1)
        ],
        brainstormed=brainstormed,
    )
    write_json_atomic(run_dir / "manifest.json", manifest)
    return manifest


def load_manifest(run_dir: Path) -> BatchManifest:
    try:
        return BatchManifest.model_validate_json((run_dir / "manifest.json").read_bytes())
    except FileNotFoundError:
        if (run_dir / "brainstorm.jsonl").exists():
            raise UserError(
                f"{run_dir} stopped while brainstorming, before any idea was set: there is nothing to resume; "
                f"start it again with --out {run_dir}"
            ) from None
        raise UserError(f"{run_dir} holds no manifest.json: not a batch run directory") from None
    except ValueError as error:
        raise UserError(f"{run_dir / 'manifest.json'}: unreadable: {str(error).splitlines()[0]}") from None


def _set_aside_partial(run_dir: Path, idea: BatchIdea) -> None:
    folder = run_dir / "ideas" / idea.id
    if folder.exists():
        aside = run_dir / "ideas" / ".interrupted"
        aside.mkdir(parents=True, exist_ok=True)
        target = aside / f"{idea.id}-{len(list(aside.iterdir())) + 1}"
        os.rename(folder, target)


def _author_one(
    idea: BatchIdea, config: BatchConfig, backend: ModelBackend, run_dir: Path, options: BatchOptions
) -> BatchResult:
    budgets = config.budgets
    settings = AuthoringSettings(
        max_repairs=budgets.max_repairs,
        max_drafts=budgets.max_drafts,
        token_cap=budgets.max_tokens_per_idea,
        temperature=config.model.temperature,
        targets=tuple(idea.targets),
        propose_targets=not idea.targets,
        max_improvements=budgets.max_improvements,
        keep_unproven=budgets.keep_unproven,
        **model_defaults(backend, grammar=config.model.grammar, samples=budgets.samples),
    )
    idea_dir = run_dir / "ideas" / idea.id
    try:
        outcome: AuthoringOutcome = run_author_job(
            AuthorJob(
                idea=idea.text,
                annotations=config.dataset.annotations,
                images=config.dataset.images,
                run_dir=idea_dir,
                backend=backend,
                description=config.description_text(),
                errors=config.dataset.errors,
                settings=settings,
                library=config.library,
                workers=options.workers,
            )
        )
    except ModelUnreachable as error:
        return BatchResult(
            idea_id=idea.id, idea=idea.text, verdict="unreachable", reason=str(error), finished_at=now_iso()
        )
    approved, version = False, None
    usefulness = None
    if outcome.candidate is not None and outcome.candidate.usefulness:
        usefulness = Usefulness.model_validate(outcome.candidate.usefulness).summary()
    if outcome.candidate is not None and options.approve_passing:
        approve(idea_dir, outcome.candidate.id, by="batch policy", policy=APPROVE_PASSING_POLICY)
        version = promote_candidate(idea_dir, outcome.candidate.id, config.library, by="batch policy").manifest.version
        approved = True
    return BatchResult(
        idea_id=idea.id,
        idea=idea.text,
        verdict=outcome.verdict,
        reason=outcome.reason,
        candidate=outcome.candidate.id if outcome.candidate else None,
        approved=approved,
        library_version=version,
        exchanges=outcome.exchanges,
        tokens=outcome.tokens,
        cost_usd=cost_usd(backend.model, outcome.usage) if backend.name == "openai" else None,
        usefulness=usefulness,
        finished_at=now_iso(),
    )


def summarise(run_dir: Path, manifest: BatchManifest, report: str | None = None) -> BatchSummary:
    results = _read_results(run_dir)
    ordered = [results[idea.id] for idea in manifest.ideas if idea.id in results]
    costs = [result.cost_usd for result in ordered if result.cost_usd is not None]
    pending = [
        record.id
        for idea in manifest.ideas
        for record in list_candidates(run_dir / "ideas" / idea.id)
        if record.status == "pending"
    ]
    return BatchSummary(
        run_dir=str(run_dir),
        ideas=len(manifest.ideas),
        finished=len(ordered),
        passed=sum(result.verdict == "passed" for result in ordered),
        gave_up=sum(result.verdict == "gave_up" for result in ordered),
        unreachable=sum(result.verdict == "unreachable" for result in ordered),
        pending_review=pending,
        approved=[result.candidate for result in ordered if result.approved and result.candidate],
        tokens=sum(result.tokens for result in ordered),
        cost_usd=sum(costs) if costs else None,
        results=ordered,
        report=report,
    )


def _candidate_report(run_dir: Path, config: BatchConfig, manifest: BatchManifest, workers: int | None) -> str | None:
    """Every passing candidate scored on the whole dataset, drawn as `metricsmith report` draws metrics."""
    specs: list[MetricSpec] = []
    seen: set[str] = set()
    for idea in manifest.ideas:
        for record in list_candidates(run_dir / "ideas" / idea.id):
            if record.id in seen:  # two ideas that led to the very same code: one section is enough
                continue
            seen.add(record.id)
            path = run_dir / "ideas" / idea.id / "candidates" / record.id / "metric.py"
            # Named by candidate id: two ideas may well produce metrics with the same NAME.
            source = path.read_text(encoding="utf-8")
            spec = parse_metric_source(source, path=str(path))
            specs.append(spec.model_copy(update={"name": record.id.replace("-", "_")}))
    if not specs:
        return None
    dataset = load_coco(config.dataset.annotations, config.dataset.images)
    sandbox = SandboxConfig(workers=workers, share_workers=False) if workers else SandboxConfig(share_workers=False)
    outcome = score_dataset(dataset, specs, sandbox)
    errors = load_error_labels(config.dataset.errors) if config.dataset.errors else None
    report = build_report(
        dataset,
        outcome.rows,
        {spec.name: spec.suspicious for spec in specs},
        errors=errors,
        specs={spec.name: spec for spec in specs},
    )
    path = run_dir / "report.html"
    write_report(path, render_html(report))
    return str(path)


def run_batch(
    config: BatchConfig,
    run_dir: Path,
    *,
    resume: bool,
    options: BatchOptions,
    progress: Progress = lambda event, data: None,
) -> BatchSummary:
    """Author every idea of the config (or of the manifest, when resuming); returns the summary."""
    # A bad dataset is the user's to fix: say so before loading a model or creating the run directory.
    load_coco(config.dataset.annotations, config.dataset.images)
    if config.dataset.errors is not None and not config.dataset.errors.exists():
        raise UserError(f"{config.dataset.errors}: no such errors file (dataset.errors in the config)")
    if options.approve_passing:  # before the model is paid, not at the first promotion
        check_library_folder(config.library)
    backend = backend_for(config)
    manifest = load_manifest(run_dir) if resume else _start(config, run_dir, backend)
    with _only_run(run_dir):
        return _author_ideas(config, run_dir, manifest, backend, resume=resume, options=options, progress=progress)


@contextlib.contextmanager
def _only_run(run_dir: Path) -> Iterator[None]:
    """Hold the run's manifest locked while its ideas are authored: a second process on the same run (a --resume
    while it still runs) set both aside each other's ideas and failed with a message about --out."""
    with open(run_dir / "manifest.json", "rb") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(
                f"{run_dir} is being run by another metricsmith batch right now; let it finish (or stop it), "
                f"then --resume {run_dir} if ideas are left"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _author_ideas(
    config: BatchConfig,
    run_dir: Path,
    manifest: BatchManifest,
    backend: ModelBackend,
    *,
    resume: bool,
    options: BatchOptions,
    progress: Progress,
) -> BatchSummary:
    # An outage is not a verdict on an idea: those that found the server unreachable are authored again.
    done = {key: result for key, result in _read_results(run_dir).items() if result.verdict != "unreachable"}
    todo = [idea for idea in manifest.ideas if idea.id not in done]
    progress("start", {"ideas": len(manifest.ideas), "done": len(done), "todo": len(todo)})
    if (
        resume
        and config.brainstorm is None
        and [text for text, _ in config.idea_entries()] != [idea.text for idea in manifest.ideas]
    ):  # the run's own ideas are what it finishes: a silently ignored list would look authored
        progress(
            "note",
            {"text": f"the config's ideas differ from the run's; --resume finishes the run's {len(manifest.ideas)}"},
        )
    for idea in todo:
        _set_aside_partial(run_dir, idea)
    log = _ResultLog(run_dir / "results.jsonl")
    spent = sum(result.cost_usd or 0.0 for result in done.values())
    ceiling = config.budgets.cost_ceiling_usd
    pool = ThreadPoolExecutor(max_workers=max(1, options.concurrency))
    unreachable_in_a_row = 0
    try:
        futures = {}
        for idea in todo:
            futures[pool.submit(_author_one, idea, config, backend, run_dir, options)] = idea
        for future in as_completed(futures):
            if future.cancelled():  # a queued idea the ceiling or an outage stopped: --resume authors it
                continue
            result = future.result()
            log.append(result)
            spent += result.cost_usd or 0.0
            write_json_atomic(run_dir / "summary.json", summarise(run_dir, manifest))
            progress("idea", result.model_dump(mode="json"))
            unreachable_in_a_row = unreachable_in_a_row + 1 if result.verdict == "unreachable" else 0
            if unreachable_in_a_row == UNREACHABLE_IN_A_ROW and any(not pending.done() for pending in futures):
                # Each idea would spend the whole retry budget on a server that is down: a dead server cost
                # some ten minutes an idea before the user heard.
                progress("unreachable", {"in_a_row": unreachable_in_a_row})
                for pending in futures:
                    pending.cancel()
            if ceiling is not None and spent > ceiling:
                progress("ceiling", {"spent": spent, "ceiling": ceiling})
                for pending in futures:
                    pending.cancel()
    except BaseException:
        # Ctrl-C (or a failure): no queued idea starts. The ones under way are left to the caller, which
        # need not wait for their model requests: their finished work is on disk, and --resume redoes them.
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    report = _candidate_report(run_dir, config, manifest, options.workers)
    summary = summarise(run_dir, manifest, report)
    write_json_atomic(run_dir / "summary.json", summary)
    return summary
