"""A process that dies with its parent: for processes that would otherwise outlive the run that started them."""

from __future__ import annotations

import ctypes
import os
import signal

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
