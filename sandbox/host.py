"""The host's handle on one worker process: spawn it confined, talk frames, kill its group."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import tempfile

from sandbox import bwrap
from sandbox.protocol import (
    FrameReader,
    InitFrame,
    LoadingFrame,
    ProtocolViolation,
    ReadyFrame,
    ResultsFrame,
    WorkerSettings,
    decode_worker_frame,
    encode_model,
)

# Variables that change numeric results or stop old OpenBLAS builds from crashing on some CPUs.
# None of them can carry a secret; everything else in the host's environment stays behind.
_PASSED_THROUGH = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
_SIGNAL_NUMBERS = {int(number) for number in signal.Signals}
_F_SETPIPE_SZ = 1031


# glibc serves a large allocation (an image, a plane of it) with a fresh mmap until a large free raises its
# threshold, and gives freed memory back beyond another: each image-sized temporary then costs its page faults
# again, up to a millisecond a demo image for some metrics. Fixed thresholds (glibc's own ceiling for
# the first) keep such memory in the heap for the next image. `benchmarks/metric_cost.py` runs under them too.
WORKER_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(64 << 20)}


def worker_environment(scratch: str) -> dict[str, str]:
    """A fresh minimal environment: never the host's, so no API key can reach metric code."""
    env = {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": scratch,
        "TMPDIR": scratch,
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        **WORKER_MALLOC,
    }
    env.update({name: os.environ[name] for name in _PASSED_THROUGH if name in os.environ})
    return env


class WorkerProcess:
    """One persistent worker. All I/O with it is non-blocking on the host's side of the pipe."""

    def __init__(
        self, init: InitFrame, layers: dict[str, bool], memory_mb: int, scratch_mb: int, read_only: tuple[str, ...]
    ) -> None:
        self.ready: ReadyFrame | None = None
        self.images_done = 0
        self._reader = FrameReader()
        self._host_scratch: str | None = None
        use_bwrap = self.in_bwrap = layers.get("bwrap", False)
        if use_bwrap:
            scratch = bwrap.SCRATCH_IN_SANDBOX
        else:
            scratch = self._host_scratch = tempfile.mkdtemp(prefix="metricsmith-scratch-")
        settings = WorkerSettings(
            scratch=scratch,
            read_only_paths=read_only,
            memory_mb=memory_mb,
            landlock=layers.get("landlock", False),
            seccomp=layers.get("seccomp", False),
            parent_pid=None if use_bwrap else os.getpid(),
        )
        argv = [sys.executable, "-I", "-m", "sandbox.worker", settings.model_dump_json()]
        if use_bwrap:
            argv = bwrap.command(argv, list(read_only), scratch_bytes=scratch_mb * 1024 * 1024)
        self._log = tempfile.TemporaryFile(prefix="metricsmith-worker-log-")
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=worker_environment(scratch),
            cwd=scratch if not use_bwrap else "/",
            start_new_session=True,  # its own process group, killed as a whole
            close_fds=True,
        )
        assert self.process.stdout is not None and self.process.stdin is not None
        self.stdout_fd = self.process.stdout.fileno()
        self.stdin_fd = self.process.stdin.fileno()
        # Never block on a worker: one that stops reading (a metric can make it) must not freeze the
        # host, whose deadlines are what kill it. Frames wait in an outbox until the pipe takes them.
        os.set_blocking(self.stdout_fd, False)
        os.set_blocking(self.stdin_fd, False)
        with contextlib.suppress(OSError):
            fcntl.fcntl(self.stdin_fd, _F_SETPIPE_SZ, 1 << 20)  # room for a queued chunk
        self._outbox = bytearray()
        self.send(init)

    def send(self, frame: InitFrame | bytes) -> bool:
        """Queue one frame (a model, or already encoded) and write what the pipe takes now.

        False when the worker is gone.
        """
        self._outbox += frame if isinstance(frame, bytes) else encode_model(frame)
        return self.flush()

    def flush(self) -> bool:
        """Write as much of the outbox as the pipe takes without blocking; False when the worker is gone."""
        while self._outbox:
            try:
                written = os.write(self.stdin_fd, self._outbox)
            except BlockingIOError:
                return True
            except OSError:
                return False
            del self._outbox[:written]
        return True

    @property
    def wants_write(self) -> bool:
        return bool(self._outbox)

    def read_frames(self) -> tuple[list[LoadingFrame | ReadyFrame | ResultsFrame], bool, ProtocolViolation | None]:
        """Drain what the pipe holds now: (frames, still_open, violation).

        Frames that arrived complete before junk are returned with the violation, not dropped: a
        metric that writes junk after a sibling's results must not get those results blamed on it.
        """
        frames: list[LoadingFrame | ReadyFrame | ResultsFrame] = []
        while True:
            try:
                data = os.read(self.stdout_fd, 1 << 20)
            except BlockingIOError:
                return frames, True, None
            if not data:
                return frames, False, None
            try:
                bodies = self._reader.feed(data)
            except ProtocolViolation as violation:
                bodies, failure = violation.bodies, violation
            else:
                failure = None
            for body in bodies:
                try:
                    frames.append(decode_worker_frame(body))
                except ProtocolViolation as violation:
                    return frames, True, violation
            if failure is not None:
                return frames, True, failure

    def exit_description(self) -> str:
        """How the worker ended, for the failed item's message."""
        code = self.process.poll()
        if code is None:
            return "closed its protocol pipe"
        if self.in_bwrap and code > 128 and code - 128 in _SIGNAL_NUMBERS:
            code = -(code - 128)  # bwrap reports a child killed by signal N as exit status 128 + N
        if code < 0:
            name = signal.Signals(-code).name
            hint = {"SIGSEGV": " (segmentation fault)", "SIGXCPU": " (CPU limit)", "SIGSYS": " (forbidden system call)"}
            return f"was killed by {name}{hint.get(name, '')}"
        return f"exited with status {code}"

    def log_tail(self, limit: int = 2000) -> str:
        with contextlib.suppress(OSError, ValueError):
            self._log.seek(0, os.SEEK_END)
            size = self._log.tell()
            self._log.seek(max(0, size - limit))
            return self._log.read().decode("utf-8", "replace").strip()
        return ""

    def kill(self) -> None:
        """Kill the whole process group and clean up; safe to call twice."""
        self._outbox.clear()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        for stream in (self.process.stdin, self.process.stdout):
            with contextlib.suppress(OSError):
                if stream is not None:
                    stream.close()
        self._log.close()
        if self._host_scratch is not None:
            shutil.rmtree(self._host_scratch, ignore_errors=True)
            self._host_scratch = None


__all__ = ["ProtocolViolation", "WorkerProcess", "worker_environment"]
