"""The sandbox worker: a persistent process that confines itself, then runs metric code.

Started by the host as `python -I -m sandbox.worker SETTINGS_JSON` with a minimal environment.
Before it reads a single line of metric code it:
1. dies with its parent, and can never gain privileges (no_new_privs);
2. imports numpy and cv2, so that their files are read while the filesystem is still open;
3. moves the protocol pipes off stdin/stdout, so a metric's print() cannot corrupt a frame;
4. sets rlimits (address space, CPU, file size, open files, no core dumps);
5. applies Landlock and the seccomp deny-list, when asked and available, and reports what held.

Then it loads the metrics sent in the init frame and serves chunks: each image is decoded once
and every requested metric runs on it in the same pass. Results go back a few per frame, not
one frame per item. Every failure of metric code is data in a result row, never a worker crash.
"""

from __future__ import annotations

import ctypes
import io
import json
import linecache
import math
import os
import resource
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from sandbox import landlock, seccomp_filter
from sandbox.child_processes import die_with_parent, prctl
from sandbox.framing import MAX_FEATURES, PRINTED_MARKER, encode_frame, read_frame_blocking
from sandbox.paths import SYSTEM_READ_ONLY, python_runtime_dirs

_PR_SET_NO_NEW_PRIVS = 38
_PR_CAPBSET_DROP = 24
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_MAX_ERROR_CHARS = 4000
_SOFT_TIMEOUT_REPEAT_S = 0.05
_PRINTED_KEEP = 2000  # characters of a failed call's print() output kept from its start, and from its end


@dataclass(frozen=True)
class _Settings:
    """The worker's view of `sandbox.protocol.WorkerSettings`, which the host validated and sent.

    A plain dataclass, because importing pydantic would double the worker's start-up time.
    """

    scratch: str
    read_only_paths: list[str]
    memory_mb: int
    cpu_seconds: int
    file_size_mb: int
    open_files: int
    landlock: bool
    seccomp: bool
    parent_pid: int | None


def _layer(name: str, active: bool, detail: str) -> dict:
    return {"name": name, "active": active, "detail": detail}


class _SoftTimeout(BaseException):
    """Raised by SIGALRM inside a metric call. A BaseException, so `except Exception` can't eat it."""


class _InvalidOutput(Exception):
    pass


def _take_protocol_fds() -> tuple[int, int]:
    """Keep the pipes on private descriptors; stdin becomes /dev/null, stdout goes to the log."""
    proto_in, proto_out = os.dup(0), os.dup(1)
    devnull = os.open("/dev/null", os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    os.close(devnull)
    return proto_in, proto_out


def _address_space_bytes() -> int:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[0])
    return pages * os.sysconf("SC_PAGE_SIZE")


def _set_rlimits(settings: _Settings) -> dict:
    # The memory budget is on top of what the interpreter, numpy and cv2 already map.
    address_space = _address_space_bytes() + settings.memory_mb * 1024 * 1024
    highest_fd = max(int(name) for name in os.listdir("/proc/self/fd"))
    limits = {
        resource.RLIMIT_AS: address_space,
        resource.RLIMIT_CPU: settings.cpu_seconds,
        resource.RLIMIT_FSIZE: settings.file_size_mb * 1024 * 1024,
        resource.RLIMIT_NOFILE: max(settings.open_files, highest_fd + 16),
        resource.RLIMIT_CORE: 0,
    }
    for which, value in limits.items():
        _, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)  # the machine may already allow less than we would
        limits[which] = value
        resource.setrlimit(which, (value, value))
    return _layer(
        name="rlimits",
        active=True,
        detail=(
            f"memory +{settings.memory_mb} MB, CPU {settings.cpu_seconds} s, files <= {settings.file_size_mb} MB, "
            f"{limits[resource.RLIMIT_NOFILE]} open files, no core dumps"
        ),
    )


class _CapabilityHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapabilitySet(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _drop_capabilities() -> dict:
    """Give up every capability for good, so that a worker started by root is not root in power.

    The bounding set goes first (which needs CAP_SETPCAP, so it must precede the capset): without
    it, root would regain full capabilities on exec wherever seccomp is not there to deny exec.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    had = _capability_mask()
    for capability in range(64):
        libc.prctl(_PR_CAPBSET_DROP, ctypes.c_ulong(capability), 0, 0, 0)  # EINVAL past the last one
    libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header = _CapabilityHeader(version=_LINUX_CAPABILITY_VERSION_3, pid=0)
    if libc.capset(ctypes.byref(header), (_CapabilitySet * 2)()) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")
    detail = "no_new_privs; " + ("all capabilities dropped" if had else "no capabilities held")
    return _layer(name="privileges", active=True, detail=detail)


def _capability_mask() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def _confine(settings: _Settings) -> list[dict]:
    layers = [_set_rlimits(settings), _drop_capabilities()]
    if settings.landlock:
        try:
            detail = landlock.restrict_self(
                read_only=[*python_runtime_dirs(), *SYSTEM_READ_ONLY, *settings.read_only_paths],
                read_write=[settings.scratch],
                read_write_files=["/dev/null"],
            )
            layers.append(_layer(name="landlock", active=True, detail=detail))
        except landlock.LandlockUnavailable as error:
            layers.append(_layer(name="landlock", active=False, detail=str(error)))
    if settings.seccomp:
        try:
            layers.append(_layer(name="seccomp", active=True, detail=seccomp_filter.install_deny_list()))
        except seccomp_filter.SeccompUnavailable as error:
            layers.append(_layer(name="seccomp", active=False, detail=str(error)))
    return layers


def _send(fd: int, message: dict) -> None:
    data = memoryview(encode_frame(message))
    while data:
        written = os.write(fd, data)
        data = data[written:]


def _trimmed_traceback(error: BaseException, filename: str) -> str:
    """The exception with the worker's own frames cut off: the metric's frames and below only."""
    frames = traceback.extract_tb(error.__traceback__)
    start = next((i for i, frame in enumerate(frames) if frame.filename == filename), 0)
    lines = ["Traceback (most recent call last):\n", *traceback.format_list(frames[start:])]
    lines.extend(traceback.format_exception_only(type(error), error))
    text = "".join(lines)
    if len(text) > _MAX_ERROR_CHARS:
        half = _MAX_ERROR_CHARS // 2
        text = text[:half] + "\n...\n" + text[-half:]
    return text


def _load_metric(name: str, source: str, filename: str) -> tuple[Callable[..., Any], Callable[..., Any] | None]:
    """The metric's score(), and its prepare() when it defines one."""
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace: dict[str, Any] = {"__name__": f"metric_{name}", "__file__": filename}
    exec(compile(source, filename, "exec"), namespace)
    function = namespace.get("score")
    if not callable(function):
        raise TypeError("the metric defines no callable score()")
    prepare = namespace.get("prepare")
    if prepare is not None and not callable(prepare):
        raise TypeError("the metric's prepare is not callable")
    return function, prepare


def _as_score(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value.item()
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.integer | np.floating):
        raise _InvalidOutput(f"score() returned {type(value).__name__}; expected a float or None")
    number = float(value)
    if not math.isfinite(number):
        raise _InvalidOutput(f"score() returned {number}; expected a finite float or None")
    return number


def _as_features(value: object) -> list[float] | None:
    """A feature metric's vector: 1 to MAX_FEATURES finite numbers, as a flat list of floats."""
    if value is None:
        return None
    if isinstance(value, str | bytes | dict) or not hasattr(value, "__len__"):
        raise _InvalidOutput(f"score() returned {type(value).__name__}; a feature metric returns a list of floats")
    try:
        vector = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise _InvalidOutput("score() returned a sequence that is not all numbers") from None
    if vector.ndim != 1 or not 1 <= vector.size <= MAX_FEATURES:
        raise _InvalidOutput(
            f"score() returned an array of shape {vector.shape}; expected 1 to {MAX_FEATURES} numbers in one row"
        )
    if not np.isfinite(vector).all():
        raise _InvalidOutput("score() returned a feature vector with NaN or infinity")
    return vector.tolist()


def _on_alarm(signum: int, frame: object) -> None:
    raise _SoftTimeout


class _Printed(io.TextIOBase):
    """What a metric prints during one call: the first and last `_PRINTED_KEEP` characters only."""

    def __init__(self) -> None:
        self.head = ""
        self.tail = ""
        self.total = 0

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        written = len(text)
        self.total += written
        if len(self.head) < _PRINTED_KEEP:
            room = _PRINTED_KEEP - len(self.head)
            self.head += text[:room]
            text = text[room:]
        if text:
            self.tail = (self.tail + text)[-_PRINTED_KEEP:]
        return written

    def reset(self) -> None:
        self.head, self.tail, self.total = "", "", 0

    def text(self) -> str:
        skipped = self.total - len(self.head) - len(self.tail)
        middle = f"\n[... {skipped} characters skipped ...]\n" if skipped > 0 else ""
        return self.head + middle + self.tail


def _run_call(
    function: Callable[..., Any], args: tuple, timeout_s: float, filename: str, output: str, printed: _Printed
) -> dict:
    """One call; a failed call's row carries what the metric printed, for the repair prompt.

    `printed` catches the call's print() output, emptied first. It is made stdout and stderr before every
    call, not once per chunk, so a metric that replaced either cannot catch what the next call prints; the
    chunk puts the worker's own back when it ends (`_Worker._run_chunk`). Cheaper than a context manager
    per call, with a hundred thousand calls in a big run.
    """
    printed.reset()
    sys.stdout = sys.stderr = printed
    row = _call_once(function, args, timeout_s, filename, output)
    if "error" in row and printed.total:
        row["error"] = row["error"] + PRINTED_MARKER + printed.text()
    return row


def _call_once(function: Callable[..., Any], args: tuple, timeout_s: float, filename: str, output: str) -> dict:
    try:
        signal.setitimer(signal.ITIMER_REAL, timeout_s, _SOFT_TIMEOUT_REPEAT_S)
        try:
            value = function(*args)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        if output == "prepared":
            return {"prepared": _read_only(value)}
        if output == "features":
            return {"score": None, "features": _as_features(value)}
        return {"score": _as_score(value)}
    except _SoftTimeout:
        called = "prepare()" if output == "prepared" else "score()"
        return {"score": None, "kind": "timeout", "error": f"{called} ran past the {timeout_s:g} s time limit"}
    except _InvalidOutput as error:
        return {"score": None, "kind": "invalid_output", "error": str(error)}
    except BaseException as error:  # the metric's failure is a result, whatever it raised
        return {"score": None, "kind": "exception", "error": _trimmed_traceback(error, filename)}


def _read_only(value: Any) -> Any:
    """prepare()'s result with its arrays made read-only, in tuples, lists and dicts too.

    It is shared by all of the image's score() calls of that metric, so a call that wrote into it would
    change what the next one sees; a write now raises in the call that tries it.
    """
    # Exact types only: iterating a subclass would run the metric's own code, outside the call's time limit.
    if isinstance(value, np.ndarray):
        np.ndarray.setflags(value, write=False)  # numpy's own method, whatever a subclass defines
    elif type(value) in (tuple, list):
        for item in value:
            _read_only(item)
    elif type(value) is dict:
        for item in value.values():
            _read_only(item)
    return value


# OpenCV 4.10 and later decode straight to RGB: the same pixels as BGR then cvtColor, without a pass over them.
_DECODES_RGB = hasattr(cv2, "IMREAD_COLOR_RGB")
_IMREAD_FLAG: int = cv2.IMREAD_COLOR_RGB if _DECODES_RGB else cv2.IMREAD_COLOR


def _read(path: str) -> tuple[np.ndarray | None, str | None]:
    """The image as RGB, read-only; or why it can't be read."""
    try:
        image = cv2.imread(path, _IMREAD_FLAG)
    except Exception as error:
        return None, f"cannot decode {os.path.basename(path)}: {error}"
    if image is None:
        return None, f"cannot decode {os.path.basename(path)}: {_why_unreadable(path)}"
    if _cut_short_jpeg(path):
        return None, f"cannot decode {os.path.basename(path)}: the JPEG file ends before its image does (truncated)"
    if not _DECODES_RGB:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    image.setflags(write=False)
    return image, None


def _why_unreadable(path: str) -> str:
    """What is wrong with a file the decoder gave nothing for, as far as the file system tells."""
    if os.path.islink(path) and not os.path.exists(path):
        return "a link that leads nowhere (its target is missing, or links loop)"
    if not os.path.exists(path):
        return "file not found"
    if os.path.isdir(path):
        return "a folder, not an image file"
    try:
        if os.path.getsize(path) == 0:
            return "an empty file (0 bytes)"
    except OSError:
        pass
    return "not a readable image (an unknown format, or a damaged file)"


def _cut_short_jpeg(path: str) -> bool:
    """Whether the file, which decoded, is a JPEG cut short: libjpeg then fills the missing rows with grey and
    only warns, so a truncated photo would be scored as a greyed-out one.

    A whole JPEG has its end-of-image marker FF D9 after its first scan: scan data cannot hold one (an FF
    there is followed by 00 or a restart marker), and between the scans of a progressive JPEG come only
    table and scan markers. So the marker segments are walked to the first scan, and FF D9 looked for
    after it; whatever follows the marker (a phone's appended video, a maker's trailer) changes nothing.
    A file whose segments can't be walked is left to the decoder's verdict.
    """
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError:
        return False
    if not data.startswith(b"\xff\xd8"):
        return False
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return False  # not a marker where one must be: not ours to judge
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
        elif marker == 0xDA:  # start of the first scan
            return data.find(b"\xff\xd9", at) < 0
        elif 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            at += 2
        else:
            at += 2 + int.from_bytes(data[at + 2 : at + 4], "big")
    return True  # the segments run to the end of the file without reaching a scan


def _check_size(path: str, image: np.ndarray, scene: dict) -> str | None:
    info = scene.get("image", {})
    expected = (info.get("height"), info.get("width"))
    if expected != image.shape[:2]:
        # Decoding turns a photo as its EXIF orientation tag says: a file stored 640x480 may read as 480x640.
        turned = " (turned as its EXIF orientation tag says? then the annotations were made on the stored pixels)"
        return (
            f"{os.path.basename(path)} is {image.shape[1]}x{image.shape[0]} but the annotations say "
            f"{expected[1]}x{expected[0]}" + (turned if expected == image.shape[1::-1] else "")
        )
    return None


def _freeze(value: Any) -> Any:
    """Lists become tuples, all the way down: what is immutable can be shared between metrics.

    A flat list of numbers (a polygon, RLE counts) is converted in one C-level step.
    """
    if isinstance(value, list):
        if value and isinstance(value[0], list | dict):
            return tuple(_freeze(item) for item in value)
        return tuple(value)
    if isinstance(value, dict):
        return {key: _freeze(item) for key, item in value.items()}
    return value


def _freeze_nested(scene: dict) -> dict:
    """Once per image: freeze each object's segmentation, the one large nested value of a scene."""
    for obj in scene.get("annotations", ()):
        if "segmentation" in obj:
            obj["segmentation"] = _freeze(obj["segmentation"])
    return scene


def _copy_scene(scene: dict) -> dict:
    """A metric's own scene: fresh dicts and lists wherever it may write.

    Segmentations stay frozen and shared: copying every polygon for every metric cost more than the
    metrics themselves on typical scenes.
    """
    return {
        "image": dict(scene.get("image", {})),
        "annotations": [_copy_object(obj) for obj in scene.get("annotations", ())],
        "categories": [dict(category) for category in scene.get("categories", ())],
    }


def _copy_object(obj: dict) -> dict:
    fresh = dict(obj)
    fresh["bbox"] = list(obj.get("bbox", ()))
    if isinstance(obj.get("segmentation"), dict):  # RLE: its counts are frozen, the dict is not
        fresh["segmentation"] = dict(obj["segmentation"])
    return fresh


class _Worker:
    def __init__(self, proto_in: int, proto_out: int, init: dict) -> None:
        self.proto_in, self.proto_out = proto_in, proto_out
        self.timeout_s = float(init["timeout_s"])
        self.flush_interval_s = float(init.get("flush_interval_s", 0.1))
        # Per metric: name, level, file name, output, score() and prepare() (None: not loaded, or none defined).
        self.metrics: list[tuple[str, str, str, str, Callable[..., Any] | None, Callable[..., Any] | None]] = []
        self.metric_errors: dict[str, str] = {}
        self._last_decoded: tuple[str, np.ndarray | None, str | None] | None = None
        self._printed = _Printed()  # what the current call prints (`_run_call`)
        for index, metric in enumerate(init["metrics"]):
            function, prepare = self._load(index, metric)
            output = metric.get("output", "score")
            self.metrics.append((metric["name"], metric["level"], metric["filename"], output, function, prepare))

    def _load(self, index: int, metric: dict) -> tuple[Callable[..., Any] | None, Callable[..., Any] | None]:
        """Run the metric's module-level code, under the same time limit as a call."""
        if metric.get("disabled"):
            self.metric_errors[metric["name"]] = metric["disabled"]
            return None, None
        _send(self.proto_out, {"t": "loading", "metric": index})
        try:
            signal.setitimer(signal.ITIMER_REAL, self.timeout_s, _SOFT_TIMEOUT_REPEAT_S)
            try:
                return _load_metric(metric["name"], metric["source"], metric["filename"])
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except _SoftTimeout:
            self.metric_errors[metric["name"]] = f"module-level code ran past the {self.timeout_s:g} s time limit"
        except BaseException as error:  # module-level code of the metric failed
            self.metric_errors[metric["name"]] = _trimmed_traceback(error, metric["filename"])
        return None, None

    def serve(self) -> None:
        while (frame := read_frame_blocking(self.proto_in)) is not None:
            if frame.get("t") == "chunk":
                self._run_chunk(frame)

    def _run_chunk(self, frame: dict) -> None:
        chunk_id = frame["chunk"]
        rows: list[dict] = []
        last_flush = time.monotonic()
        stdout, stderr = sys.stdout, sys.stderr
        try:
            for task in frame["tasks"]:
                image, image_error = self._decoded(task["path"])
                if image is not None:
                    image_error = _check_size(task["path"], image, task["scene"])
                    image = None if image_error else image
                scene = _freeze_nested(task["scene"])
                copies: dict[int, dict] = {}
                prepared: dict[int, dict] = {}
                for call in task["calls"]:
                    rows.append(self._call(call, image, image_error, scene, copies, prepared))
                    if time.monotonic() - last_flush >= self.flush_interval_s:
                        _send(self.proto_out, {"t": "results", "chunk": chunk_id, "rows": rows, "done": False})
                        rows, last_flush = [], time.monotonic()
        finally:
            sys.stdout, sys.stderr = stdout, stderr
        _send(self.proto_out, {"t": "results", "chunk": chunk_id, "rows": rows, "done": True})

    def _decoded(self, path: str) -> tuple[np.ndarray | None, str | None]:
        """The image at `path`, decoded once for consecutive tasks on it (the versions `selftest` scores)."""
        if self._last_decoded is None or self._last_decoded[0] != path:
            self._last_decoded = (path, *_read(path))
        return self._last_decoded[1], self._last_decoded[2]

    def _call(
        self,
        call: list,
        image: np.ndarray | None,
        image_error: str | None,
        scene: dict,
        copies: dict[int, dict],
        prepared: dict[int, dict],
    ) -> dict:
        """One score() call; `copies` and `prepared` hold each metric's scene copy and prepare() result for the task."""
        metric, obj = call
        name, level, filename, output, function, prepare = self.metrics[metric]
        if function is None:
            reason = self.metric_errors.get(name, "").strip().splitlines()
            last = reason[-1] if reason else "no reason given"
            return {"score": None, "kind": "metric_load", "error": f"metric {name} failed to load: {last}"}
        if image_error is not None:
            return {"score": None, "kind": "image_unreadable", "error": image_error}
        # Each metric gets its own copy of the scene, so one metric mutating it can't skew the next.
        own = copies.get(metric)
        if own is None:
            own = copies[metric] = _copy_scene(scene)
        if prepare is None:
            args = (image, own) if level == "image" else (image, own["annotations"][obj], own)
            return _run_call(function, args, self.timeout_s, filename, output, self._printed)
        # Once per task (an image with one scene): its result, or its failure, answers every box's call.
        ready = prepared.get(metric)
        if ready is None:
            ready = prepared[metric] = _run_call(
                prepare, (image, own), self.timeout_s, filename, "prepared", self._printed
            )
            if "error" in ready:
                ready["error"] = "prepare() failed, so no box of this image can be scored:\n" + ready["error"]
        if "error" in ready:
            return {"score": None, "kind": ready["kind"], "error": ready["error"]}
        args = (image, own["annotations"][obj], own, ready["prepared"])
        return _run_call(function, args, self.timeout_s, filename, output, self._printed)


def main() -> None:
    settings = _Settings(**json.loads(sys.argv[1]))
    die_with_parent(settings.parent_pid)
    prctl(_PR_SET_NO_NEW_PRIVS, 1)
    cv2.setNumThreads(1)
    proto_in, proto_out = _take_protocol_fds()
    layers = _confine(settings)
    signal.signal(signal.SIGALRM, _on_alarm)
    # Past the file-size limit a write then fails with EFBIG (an ordinary metric error) instead of
    # killing the worker.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    init = read_frame_blocking(proto_in)
    if init is None or init.get("t") != "init":
        os._exit(0)
    worker = _Worker(proto_in, proto_out, init)
    _send(
        proto_out,
        {
            "t": "ready",
            "pid": os.getpid(),
            "layers": layers,
            "metric_errors": worker.metric_errors,
        },
    )
    worker.serve()


if __name__ == "__main__":
    main()
