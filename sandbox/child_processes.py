"""How the processes metricsmith starts behave toward the process that starts them.

- `die_with_parent`: a process that would otherwise outlive the run that started it (a sandbox worker,
  a learned metric's fitting process) is killed by the kernel when its parent ends.
- `new_processes_start_without_sigint`: a Ctrl-C at the terminal reaches every process of its group,
  children too; one that takes it while still importing (before it can say it ignores SIGINT) prints
  a traceback on the user's terminal. Children started inside this start with SIGINT blocked.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
from collections.abc import Iterator

__all__ = ["die_with_parent", "new_processes_start_without_sigint", "prctl"]

_PR_SET_PDEATHSIG = 1


def prctl(option: int, value: int) -> None:
    """Linux's prctl(2) with one argument; OSError when the kernel refuses it."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, ctypes.c_ulong(value), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


def die_with_parent(parent_pid: int | None) -> None:
    """Have the kernel kill this process (SIGKILL) when its parent ends.

    With `parent_pid`, a parent that had already ended before the signal was armed (this process was
    then given to another) ends this one at once, with exit code 70. The signal fires when the parent's
    *thread* that started this process ends, so the parent must start it from a thread that lives as
    long as it does.
    """
    prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(70)


@contextlib.contextmanager
def new_processes_start_without_sigint() -> Iterator[None]:
    """Processes started on this thread within this start with SIGINT blocked (a process starts with the
    signal mask of the thread that starts it); this thread's mask is as before afterwards.

    A child then unblocks or ignores SIGINT itself once it is ready. Here a Ctrl-C waits, blocked, if
    this is the main thread, and is raised as soon as this ends. multiprocessing's resource tracker is
    started first: starting it unblocks SIGINT on the thread that does.
    """
    from multiprocessing import resource_tracker  # here: the sandbox worker imports this module, and starts fast

    resource_tracker.ensure_running()
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
