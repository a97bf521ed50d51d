"""The wire protocol between the host and a sandbox worker.

Frames are a 4-byte big-endian length followed by that many bytes of UTF-8 JSON. Nothing is ever
pickled: the worker runs untrusted code, so everything it sends is parsed as JSON with NaN and
Infinity refused, then validated by the pydantic models below before the host believes it.

Host → worker: one `InitFrame`, then `ChunkFrame`s.
Worker → host: a `LoadingFrame` before each metric's module code runs, one `ReadyFrame`, then
`ResultsFrame`s (several per chunk, the last one `done`).
"""

from __future__ import annotations

from typing import Annotated, Literal, NamedTuple, NotRequired

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from typing_extensions import TypedDict

from sandbox.framing import (
    MAX_FEATURES,
    MAX_FRAME_BYTES,
    FrameReader,
    ProtocolViolation,
    frame_bytes,
)

# Why a call failed. "exception", "timeout" and "invalid_output" are reported by the worker;
# "crash", "hard_timeout" and "protocol" are decided by the host when the worker misbehaves.
ErrorKind = Literal[
    "exception",
    "timeout",
    "invalid_output",
    "image_unreadable",
    "metric_load",
    "crash",
    "hard_timeout",
    "protocol",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MetricCode(_Strict):
    """A metric as the worker receives it: already checked statically by the host."""

    name: str
    level: Literal["image", "object"]
    source: str
    filename: str
    # "features": score() returns a vector (a feature metric); "score": one number.
    output: Literal["score", "features"] = "score"
    # Set by the host when this metric's module-level code killed or hung a worker: it is not loaded again.
    disabled: str | None = None


class Call(NamedTuple):
    """One score() call: metric index into InitFrame.metrics, annotation index into scene (or None).

    A named tuple: a run has one per item, and on the wire it is the pair `[metric, obj]`.
    """

    metric: int
    obj: int | None


class ImageTask(_Strict):
    """One image and every call to make on it, in order."""

    image_id: int
    path: str
    scene: dict
    calls: tuple[Call, ...]


def encode_chunk(chunk: int, tasks: tuple[ImageTask, ...] | list[ImageTask]) -> bytes:
    """A ChunkFrame, serialised directly: scenes are plain JSON data, and this is the host's hot path."""
    message = {
        "t": "chunk",
        "chunk": chunk,
        "tasks": [
            {"image_id": task.image_id, "path": task.path, "scene": task.scene, "calls": list(map(tuple, task.calls))}
            for task in tasks
        ],
    }
    # orjson writes NaN as null rather than refusing it; the dataset layer has refused NaN already.
    return frame_bytes(orjson.dumps(message))


class InitFrame(_Strict):
    t: Literal["init"] = "init"
    metrics: tuple[MetricCode, ...]
    timeout_s: float
    flush_interval_s: float = 0.1


class ChunkFrame(_Strict):
    t: Literal["chunk"] = "chunk"
    chunk: int
    tasks: tuple[ImageTask, ...]


class LayerStatus(_Strict):
    """Whether one isolation layer is in force in the worker, and what exactly it does there."""

    name: str
    active: bool
    detail: str


class LoadingFrame(_Strict):
    """Sent before the worker runs a metric's module-level code, so a crash there has a culprit."""

    t: Literal["loading"]
    metric: int


class ReadyFrame(_Strict):
    t: Literal["ready"]
    pid: int
    layers: tuple[LayerStatus, ...]
    metric_errors: dict[str, str] = Field(default_factory=dict)


class ResultRow(TypedDict, closed=True):  # type: ignore[call-arg]
    """The outcome of the next call of the current chunk, in call order.

    A TypedDict, not a model: a run has one row per call, and pydantic checks these in its core
    without building a Python object each.
    """

    score: Annotated[float, Field(allow_inf_nan=False)] | None
    features: NotRequired[
        Annotated[
            tuple[Annotated[float, Field(allow_inf_nan=False)], ...], Field(min_length=1, max_length=MAX_FEATURES)
        ]
        | None
    ]
    kind: NotRequired[ErrorKind | None]
    error: NotRequired[Annotated[str, Field(max_length=20_000)] | None]


class ResultsFrame(_Strict):
    t: Literal["results"]
    chunk: int
    rows: tuple[ResultRow, ...]
    done: bool = False


WorkerFrame = Annotated[LoadingFrame | ReadyFrame | ResultsFrame, Field(discriminator="t")]
_WORKER_FRAME = TypeAdapter(WorkerFrame)


def decode_worker_frame(body: bytes) -> LoadingFrame | ReadyFrame | ResultsFrame:
    """Parse and validate one frame from a worker; anything off raises ProtocolViolation."""
    try:
        data = orjson.loads(body)
        return _WORKER_FRAME.validate_python(data)
    except Exception as error:  # every way a frame can be bad means the same thing here
        raise ProtocolViolation(f"invalid frame from worker: {str(error)[:300]}") from None


class WorkerSettings(_Strict):
    """What the host tells a worker on its command line, before any untrusted code exists."""

    scratch: str
    read_only_paths: tuple[str, ...] = ()
    memory_mb: int = 2048
    cpu_seconds: int = 4 * 3600
    file_size_mb: int = 64
    open_files: int = 64
    landlock: bool = True
    seccomp: bool = True
    parent_pid: int | None = None


def encode_model(message: BaseModel) -> bytes:
    """One frame from a host-side model."""
    return frame_bytes(message.model_dump_json().encode())


__all__ = ["MAX_FRAME_BYTES", "FrameReader", "ProtocolViolation", "encode_model"]
