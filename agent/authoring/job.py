"""One authoring job, wired end to end: dataset, run directory, backend, transcript, validation set, loop.

`metricsmith author` and `metricsmith replay` both come through `run_author_job`; the only
difference is the backend. Everything a replay needs to rebuild the job is written into the
transcript's meta line (`settings`): the dataset's location (or, for a demo dataset, how to
generate it again), the description, errors.json, and the loop's settings.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError
from rich.markup import escape

from agent.authoring.extract import Idea
from agent.authoring.loop import (
    AuthoringOutcome,
    AuthoringSettings,
    Listener,
    author_idea,
    dataset_fingerprint,
    idea_from_text,
)
from agent.authoring.prompting import Prompts
from agent.authoring.validation_set import ValidationSet, build_validation_set, load_validation_set
from agent.data.coco import Dataset, load_coco
from agent.data.demo import generate_demo_dataset
from agent.data.label_errors import load_errors
from agent.errors import UserError
from agent.llm.backends.local import LocalBackend
from agent.llm.backends.openai import OpenAIBackend
from agent.llm.backends.replay import ReplayBackend
from agent.llm.model import Mode, ModelBackend
from agent.llm.transcript import RecordingBackend, Transcript, TranscriptMeta, TranscriptWriter
from agent.metrics.library import LibraryRef, library_metrics
from agent.resources import cache_dir
from sandbox.isolation import SandboxConfig

__all__ = [
    "BackendChoice",
    "DatasetSource",
    "JobSettings",
    "SessionSetup",
    "default_backend",
    "describe_event",
    "job_settings_from_transcript",
    "make_backend",
    "run_author_job",
]

BackendChoice = Literal["openai", "local", "replay"]
TRANSCRIPT_NAME = "transcript.jsonl"


class DemoRecipe(BaseModel):
    """How `metricsmith demo-data` made a dataset, so a replay can make it again anywhere."""

    model_config = ConfigDict(extra="forbid")

    images: int
    seed: int
    error_rate: float
    width: int
    height: int


class DatasetSource(BaseModel):
    model_config = ConfigDict(extra="forbid")

    annotations: str
    images: str | None = None
    errors: str | None = None
    fingerprint: str | None = None
    demo: DemoRecipe | None = None


class JobSettings(BaseModel):
    """What a transcript's meta line records under `settings`: enough to run the same job again."""

    model_config = ConfigDict(extra="forbid")

    idea: str
    description: str = ""
    dataset: DatasetSource
    authoring: dict[str, Any]
    validation_size: int = 64
    # The promoted metrics the draft was checked against for duplicates. A replay compares with exactly
    # these (the built-ins come with the code, like the templates), never with whatever library the
    # replaying machine has. Recordings from before this field compared with none.
    library: list[LibraryRef] = []


def default_backend(base_url: str | None) -> BackendChoice:
    """openai when an endpoint or key is configured, else the embedded local model."""
    if base_url or os.environ.get("OPENAI_BASE_URL") or os.environ.get("OPENAI_API_KEY"):
        return "openai"
    return "local"


def make_backend(
    choice: BackendChoice,
    *,
    model: str | None = None,
    base_url: str | None = None,
    model_path: Path | None = None,
    transcript: Path | Transcript | None = None,
    mode: Mode | None = None,
    request_timeout_s: float | None = None,
) -> ModelBackend:
    """The backend the user asked for (LocalBackend imports llama_cpp only when it is built)."""
    if choice == "replay":
        if transcript is None:
            raise UserError("--backend replay needs --transcript RECORDING.jsonl")
        return ReplayBackend(transcript)
    if choice == "local":
        return LocalBackend(model_path)
    if not model:
        raise UserError("--backend openai needs --model NAME (e.g. gpt-4o-mini, or the name your server serves)")
    return OpenAIBackend(model, base_url=base_url, mode=mode or "chat", timeout_s=request_timeout_s)


def demo_recipe(annotations: Path) -> DemoRecipe | None:
    """The recipe of a dataset `metricsmith demo-data` wrote, read from its info block; else None."""
    try:
        document = json.loads(annotations.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    info = document.get("info") if isinstance(document, dict) else None
    if not isinstance(info, dict) or info.get("generator") != "metricsmith.agent.demo_data":
        return None
    images = document.get("images") or []
    if not images:
        return None
    return DemoRecipe(
        images=len(images),
        seed=int(info.get("seed", 0)),
        error_rate=float(info.get("error_rate", 0.2)),
        width=int(images[0]["width"]),
        height=int(images[0]["height"]),
    )


def dataset_source(annotations: Path, images: Path | None, errors: Path | None) -> DatasetSource:
    return DatasetSource(
        annotations=str(annotations.resolve()),
        images=str(images.resolve()) if images else None,
        errors=str(errors.resolve()) if errors else None,
        fingerprint=dataset_fingerprint(annotations),
        demo=demo_recipe(annotations),
    )


def materialise(source: DatasetSource) -> tuple[Path, Path | None, Path | None]:
    """The (annotations, images, errors) paths for a recorded source: as recorded, or the demo made again."""
    annotations = Path(source.annotations)
    if annotations.exists() and (source.fingerprint is None or dataset_fingerprint(annotations) == source.fingerprint):
        errors = Path(source.errors) if source.errors else None
        return annotations, Path(source.images) if source.images else None, errors
    if source.demo is None:
        raise UserError(
            f"the recorded dataset {annotations} is missing or changed; pass --annotations with the same dataset"
        )
    recipe = source.demo
    folder = cache_dir() / f"demo-{recipe.images}-{recipe.seed}-{recipe.error_rate:g}-{recipe.width}x{recipe.height}"
    made = folder / "annotations.json"
    # A cached copy made by another version of the generator is not the recorded dataset: make it again.
    if not made.exists() or (source.fingerprint is not None and dataset_fingerprint(made) != source.fingerprint):
        if folder.exists():
            shutil.rmtree(folder)
        generate_demo_dataset(
            folder,
            n_images=recipe.images,
            seed=recipe.seed,
            error_rate=recipe.error_rate,
            width=recipe.width,
            height=recipe.height,
        )
    return made, None, (folder / "errors.json") if source.errors else None


@dataclass(frozen=True, kw_only=True)
class SessionSetup:
    """What every authoring session needs, after the CLI parsed it: the dataset, the model, the
    loop's settings and where to write. `metricsmith chat` runs on exactly this (agent.sessions.chat)."""

    annotations: Path
    run_dir: Path
    backend: ModelBackend
    images: Path | None = None
    description: str = ""
    errors: Path | None = None
    settings: AuthoringSettings = field(default_factory=AuthoringSettings)
    validation_size: int = 64
    library: Path | None = None
    # The promoted versions to compare drafts with; None: the library's latest of each (a replay pins them).
    pinned_library: tuple[LibraryRef, ...] | None = None
    workers: int | None = None
    origin: Literal["recorded", "fixture"] = "recorded"


@dataclass(frozen=True, kw_only=True)
class AuthorJob(SessionSetup):
    """One `metricsmith author` (or replay) invocation: a session for one idea."""

    idea: str
    transcript_path: Path | None = None  # default: RUN_DIR/transcript.jsonl


def _prepare_run_dir(run_dir: Path) -> None:
    if run_dir.exists() and any(run_dir.iterdir()):
        raise UserError(f"{run_dir} is not empty: give --out a new folder (each run keeps its own record)")
    run_dir.mkdir(parents=True, exist_ok=True)


def run_author_job(job: AuthorJob, listener: Listener = lambda event, data: None) -> AuthoringOutcome:
    """Run the loop for one idea; the run directory ends up with the transcript and any candidate."""
    if not job.idea.strip():  # the model would be asked to write a metric for nothing
        raise UserError('the idea is empty: say what the metric should flag, e.g. "boxes on a blurry background"')
    dataset: Dataset = load_coco(job.annotations, job.images)
    if job.errors is not None:  # read now, not after the model has been paid for a draft
        if not job.errors.exists():
            raise UserError(f"{job.errors}: no such errors file")
        load_errors(job.errors)
    pins, library = library_metrics(job.library, job.pinned_library)
    _prepare_run_dir(job.run_dir)
    sandbox = SandboxConfig(workers=job.workers) if job.workers else SandboxConfig()
    validation = validation_set(dataset, job.run_dir / "validation-set", job.validation_size)
    idea: Idea = idea_from_text(job.idea)
    settings = JobSettings(
        idea=job.idea,
        description=job.description,
        dataset=dataset_source(job.annotations, job.images, job.errors),
        authoring=job.settings.as_dict(),
        validation_size=job.validation_size,
        library=pins,
    )
    prompts = Prompts()
    transcript_path = job.transcript_path or job.run_dir / TRANSCRIPT_NAME
    meta = TranscriptMeta.for_backend(
        job.backend,
        templates=prompts.template_hashes(),
        idea=job.idea,
        settings=settings.model_dump(mode="json"),
        origin=job.origin,
    )
    with TranscriptWriter(transcript_path, meta) as writer:
        recording = RecordingBackend(job.backend, writer)
        return author_idea(
            idea,
            recording,
            writer,
            dataset,
            validation,
            job.run_dir,
            description=job.description,
            settings=job.settings,
            sandbox=sandbox,
            library=library,
            errors_path=job.errors,
            transcript_name=os.path.relpath(transcript_path, job.run_dir),
            listener=listener,
        )


def validation_set(dataset: Dataset, folder: Path, size: int) -> ValidationSet:
    """The run's validation set: built once, reloaded when the folder already holds it."""
    if (folder / "annotations.json").exists():
        return load_validation_set(folder)
    return build_validation_set(dataset, folder, size=size)


def job_settings_from_transcript(transcript: Transcript) -> JobSettings:
    """The job a transcript's meta line recorded, its authoring settings checked too; a UserError in one line."""
    try:
        settings = JobSettings.model_validate(transcript.meta.settings)
        authoring_settings(settings.authoring)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
        problem = f"settings.{where}: {first['msg']}{more}"
        raise UserError(f"{transcript.path}: the meta line's settings cannot rebuild the job: {problem}") from None
    return settings


def recorded_outcome(transcript: Transcript) -> dict[str, Any] | None:
    """The `outcome` event a session ended with, if it ended."""
    outcomes = [event.data for event in transcript.events if event.event == "outcome"]
    return outcomes[-1] if outcomes else None


def authoring_settings(values: dict[str, Any]) -> AuthoringSettings:
    """The recorded authoring settings, each checked against its field's type (a transcript is a file: edited by hand,
    or torn). Raises ValidationError, located under `authoring`."""
    known = set(AuthoringSettings.__dataclass_fields__)
    chosen = {key: value for key, value in values.items() if key in known}
    if isinstance(chosen.get("targets"), list):
        chosen["targets"] = tuple(chosen["targets"])
    return _AUTHORING_SETTINGS.validate_python({"authoring": chosen})["authoring"]


_AUTHORING_SETTINGS = TypeAdapter(dict[Literal["authoring"], AuthoringSettings])


def describe_rounds(outcome: AuthoringOutcome) -> Sequence[str]:
    """One line per model exchange, for the terminal."""
    lines = []
    sampled = any(r.sample > 1 for r in outcome.rounds)
    for r in outcome.rounds:
        step = {"repair": f" {r.repair}", "improve": f" {r.improvement}"}.get(r.kind, "")
        sample = f" · sample {r.sample}" if sampled else ""
        lines.append(f"draft {r.draft} · {r.kind}{step}{sample}: {r.outcome} — {r.detail} ({r.tokens} tokens)")
    return lines


def describe_event(event: str, data: dict[str, Any]) -> str | None:
    """One line (rich markup) per step of the loop, from its listener events; None for steps not shown."""
    if event == "draft":
        return f"[bold]draft {data['draft']}[/]: asking the model for the metric"
    if event == "format_problem":
        return f"  [yellow]unusable reply[/]: {escape(data['problem'])}"
    if event == "validating":
        return f"  validating code {data['code_sha256'][:8]} in the sandbox"
    if event == "validation":
        failure = data.get("failure")
        if data["passed"]:
            return "  [green]validation passed[/]"
        if failure:
            return f"  [red]validation failed[/] ({failure['check']}): {escape(failure['message'][:200])}"
        return None
    if event == "stopped":
        return f"  stopping this draft: {data['why'].replace('_', ' ')}"
    if event == "evaluating":
        return "  measuring it against the known label errors"
    if event == "usefulness":
        return f"  measuring it on {escape(', '.join(data['targets']))} errors injected into a sample of your data"
    if event == "measured":
        mark = {True: "[green]clears its bar[/]", False: "[yellow]not shown useful yet[/]", None: "too few errors"}
        return f"  {mark[data['cleared']]}: {escape(data['selection'])}"
    if event == "targets_proposed":
        said = ", ".join(data["targets"]) or "nothing it can be measured on"
        return f"  the model says it should catch: {escape(said)}"
    if event == "chosen":
        return f"  keeping sample {data['sample']} of {data['of']}: the best on the selection half"
    return None
