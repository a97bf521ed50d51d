"""The batch job's configuration: a TOML file, then environment variables, then flags.

    [dataset]
    annotations = "demo/annotations.json"   # required; relative paths are relative to the config file
    images = "demo/images"                  # optional (default: as for `metricsmith score`)
    description = "Pandas, bears and foxes"  # or description_file = "dataset.md"
    errors = "demo/errors.json"             # optional: known label errors, for eval figures

    ideas = ["flag boxes that are not on a panda"]   # the ideas to author ...
    # brainstorm = 3                                # ... or ask the model for N ideas first
    # An idea may say what it should catch (error types, or "property"): its candidate is then
    # measured on those errors, injected into a sample of the dataset (see `author --target`):
    # ideas = [{ text = "boxes too big for their animal", target = ["loose"] }, "very dark images"]

    [model]
    backend = "local"            # "local" (embedded), "openai" (any OpenAI-compatible server) or "replay"
    model = "gpt-4o-mini"        # openai: the model name
    base_url = "http://127.0.0.1:8080/v1"
    model_path = "model.gguf"    # local: another GGUF than the embedded default
    transcript = "session.jsonl" # replay: the recording to play
    temperature = 0.2
    completion = false           # openai: use the completions endpoint (a base model on a llama.cpp server)
    grammar = true               # completion mode: hold code to a grammar (default: on for "local")

    [budgets]
    max_repairs = 3
    max_drafts = 2
    max_tokens_per_idea = 60000
    max_improvements = 2         # rounds for a draft that runs but misses its target
    samples = 8                  # best-of-N per round for targeted ideas (default: 8 grammar-held, else 1)
    keep_unproven = false        # leave an idea's best draft that missed its target, marked as such
    cost_ceiling_usd = 2.0       # optional: stop authoring new ideas past this estimated spend

    library = "metricsmith-library"

Environment variables override the file (METRICSMITH_BACKEND, METRICSMITH_MODEL,
OPENAI_BASE_URL, METRICSMITH_MODEL_PATH, METRICSMITH_LIBRARY), and the command line's flags
override both. Every problem in the file is reported at once, one line each, naming the key.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent.data.json_files import read_text_file
from agent.errors import UserError
from agent.evaluation.usefulness import parse_targets
from agent.llm.backends import server_url_problem

__all__ = ["BatchConfig", "ConfigInvalid", "load_batch_config"]

Backend = Literal["openai", "local", "replay"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetSection(_Section):
    annotations: Path
    images: Path | None = None
    description: str | None = None
    description_file: Path | None = None
    errors: Path | None = None

    @model_validator(mode="after")
    def _one_description(self) -> DatasetSection:
        if self.description is not None and self.description_file is not None:
            raise ValueError("give description or description_file, not both")
        return self


class ModelSection(_Section):
    backend: Backend = "local"
    model: str | None = None
    base_url: str | None = None
    model_path: Path | None = None
    transcript: Path | None = None
    temperature: float = Field(default=0.2, ge=0.0, le=2.0)
    completion: bool = False
    grammar: bool | None = None  # None: agent.authoring.loop.model_defaults decides
    # None: agent.llm.backends.openai decides. At most a day, as --request-timeout: the timers take no more.
    request_timeout: float | None = Field(default=None, gt=0, le=86_400)

    @model_validator(mode="after")
    def _replay_needs_a_recording(self) -> ModelSection:
        if self.backend == "replay" and self.transcript is None:
            raise ValueError("backend 'replay' needs transcript = \"RECORDING.jsonl\"")
        return self

    # Checked here, so a problem names the config's key; the backend's own checks name the command's flags.
    @model_validator(mode="after")
    def _openai_needs_a_model(self) -> ModelSection:
        if self.backend == "openai" and not (self.model or "").strip():
            raise ValueError(
                "backend 'openai' needs model = \"NAME\" (e.g. gpt-4o-mini, or the name your server serves)"
            )
        return self

    @field_validator("base_url")
    @classmethod
    def _a_server_url(cls, url: str | None) -> str | None:
        problem = None if url is None else server_url_problem(url)
        if problem is not None:
            raise ValueError(f"{url!r} is not a server URL: {problem}")
        return url


class Budgets(_Section):
    max_repairs: int = Field(default=3, ge=0, le=20)
    max_drafts: int = Field(default=2, ge=1, le=20)
    max_tokens_per_idea: int = Field(default=60_000, ge=1_000)
    max_improvements: int = Field(default=2, ge=0, le=20)
    samples: int | None = Field(default=None, ge=1, le=64)  # None: agent.authoring.loop.model_defaults decides
    keep_unproven: bool = False
    cost_ceiling_usd: float | None = Field(default=None, gt=0, allow_inf_nan=False)


class IdeaEntry(_Section):
    text: str
    target: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _known_targets(self) -> IdeaEntry:
        if self.target:
            try:
                self.target = list(parse_targets(self.target))
            except UserError as error:
                raise ValueError(str(error)) from None
        return self


class BatchConfig(_Section):
    dataset: DatasetSection
    ideas: list[str | IdeaEntry] = Field(default_factory=list)
    brainstorm: int | None = Field(default=None, ge=1, le=50)
    model: ModelSection = Field(default_factory=ModelSection)
    budgets: Budgets = Field(default_factory=Budgets)
    library: Path = Path("metricsmith-library")

    @model_validator(mode="after")
    def _ideas_or_brainstorm(self) -> BatchConfig:
        if bool(self.ideas) == (self.brainstorm is not None):
            raise ValueError("give either ideas = [...] or brainstorm = N (exactly one of them)")
        texts = [text for text, _ in self.idea_entries()]
        if any(not text.strip() for text in texts):
            raise ValueError("ideas: an idea is empty")
        if len({text.strip() for text in texts}) != len(texts):
            raise ValueError("ideas: the same idea is listed twice")
        return self

    def idea_entries(self) -> list[tuple[str, tuple[str, ...]]]:
        """Each listed idea's text and targets (none for an idea given as a plain string)."""
        return [(idea, ()) if isinstance(idea, str) else (idea.text, tuple(idea.target)) for idea in self.ideas]

    def description_text(self) -> str:
        if self.dataset.description_file is not None:
            return read_text_file(self.dataset.description_file, "the [dataset] description_file")
        return self.dataset.description or ""


class ConfigInvalid(UserError):
    """Every problem of a config file; `str()` is the first line, `problems` all of them."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        self.problems = problems
        noun = "problem" if len(problems) == 1 else "problems"
        super().__init__(f"{path}: {len(problems)} {noun}: " + "; ".join(problems))


_ENVIRONMENT: dict[str, tuple[str, ...]] = {
    "METRICSMITH_BACKEND": ("model", "backend"),
    "METRICSMITH_MODEL": ("model", "model"),
    "OPENAI_BASE_URL": ("model", "base_url"),
    "METRICSMITH_MODEL_PATH": ("model", "model_path"),
    "METRICSMITH_LIBRARY": ("library",),
}


def _set(data: dict[str, Any], keys: tuple[str, ...], value: Any) -> None:
    for key in keys[:-1]:
        data = data.setdefault(key, {})
    data[keys[-1]] = value


def _relative_to(base: Path, config: BatchConfig) -> BatchConfig:
    """Paths in the file are relative to the file's folder, wherever the command runs from."""

    def fix(path: Path | None) -> Path | None:
        if path is None or path.is_absolute():
            return path
        return base / path

    dataset = config.dataset.model_copy(
        update={
            "annotations": fix(config.dataset.annotations),
            "images": fix(config.dataset.images),
            "description_file": fix(config.dataset.description_file),
            "errors": fix(config.dataset.errors),
        }
    )
    model = config.model.model_copy(
        update={"model_path": fix(config.model.model_path), "transcript": fix(config.model.transcript)}
    )
    return config.model_copy(update={"dataset": dataset, "model": model, "library": fix(config.library)})


def load_batch_config(
    path: Path, overrides: Mapping[tuple[str, ...], Any] | None = None, environ: Mapping[str, str] | None = None
) -> BatchConfig:
    """Read, merge (file < environment < `overrides` from flags) and validate a batch config."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: no such config file") from None
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"{path}: not valid TOML: {error}") from None
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: not UTF-8 text (byte {error.start} can't be decoded), so not a TOML file") from None
    # A table named in the file as something else (`model = "gpt"`) can't take the environment's or the flags' keys.
    for keys in {keys[:-1] for keys in (*_ENVIRONMENT.values(), *(overrides or {}))}:
        if keys and keys[0] in data and not isinstance(data[keys[0]], dict):
            raise ConfigInvalid(path, [f"{keys[0]}: must be a table ([{keys[0]}]), got {data[keys[0]]!r}"])
    environ = os.environ if environ is None else environ
    given_by: dict[str, str] = {}  # a key set from outside the file, and by what: a bad value is not the file's
    for variable, keys in _ENVIRONMENT.items():
        if environ.get(variable):
            _set(data, keys, environ[variable])
            given_by[".".join(keys)] = f"${variable}"
    for keys, value in (overrides or {}).items():
        if value is not None:
            _set(data, keys, value)
            given_by[".".join(keys)] = "the command line"
    try:
        config = BatchConfig.model_validate(data)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            where = ".".join(str(part) for part in item["loc"] if not str(part).startswith("function-after"))
            message = item["msg"].removeprefix("Value error, ")
            if where in given_by:
                message += f" (set by {given_by[where]}, not in the file)"
            problems.append(f"{where}: {message}" if where else message)
        raise ConfigInvalid(path, problems) from None
    config = _relative_to(path.resolve().parent, config)
    described = config.dataset.description_file
    if described is not None and not described.is_file():  # found now, not after the run folder is made
        raise ConfigInvalid(path, [f"dataset.description_file: no such file {described}"])
    return config
