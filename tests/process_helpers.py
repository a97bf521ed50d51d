"""A terminal's Ctrl-C, as tests give it: to the command's whole process group, once a helper process starts."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


def child_of(pid: int, marker: bytes) -> int | None:
    """The pid of a child of process `pid` whose command line holds `marker`, if one runs."""
    for entry in Path("/proc").iterdir():
        try:
            status = (entry / "status").read_text()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if f"\nPPid:\t{pid}\n" in status and marker in command:
            return int(entry.name)
    return None


def start_as_from_a_terminal(command: list[str], *, own_group: bool = False) -> subprocess.Popen[str]:
    """`command` started with its output piped and with SIGINT as a terminal leaves it; `own_group`: in a process
    group of its own, so that `os.killpg` reaches its children too, as a terminal's Ctrl-C does."""
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=own_group,
        # A suite started in the background by a shell inherits SIGINT ignored, and Python then never turns it
        # into KeyboardInterrupt: give the command the disposition a terminal gives it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip


def ctrl_c_once_a_child_starts(command: list[str], marker: bytes, timeout_s: float = 60) -> tuple[int, str, str]:
    """Run `command` in a process group of its own and, as soon as a child holding `marker` starts (while it
    is still starting up), send SIGINT to the whole group, as a terminal's Ctrl-C does. (exit code, stdout,
    stderr), read until every process that held the pipes has let go of them: what helpers print counts."""
    process = start_as_from_a_terminal(command, own_group=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None and child_of(process.pid, marker) is None:
        time.sleep(0.01)
    if process.poll() is not None:
        raise AssertionError(f"the command ended before a child holding {marker!r} started")
    time.sleep(0.05)
    os.killpg(process.pid, signal.SIGINT)
    stdout, stderr = process.communicate(timeout=timeout_s)
    return process.returncode, stdout, stderr
