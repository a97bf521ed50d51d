"""bubblewrap: new namespaces around the worker (no network, own pids, a minimal read-only filesystem).

The worker sees only the system libraries, the Python runtime, the dataset (all read-only) and a
size-limited scratch tmpfs. The host's home directory, other users' files and every other process
are simply absent from its mount and pid namespaces.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from sandbox.paths import python_runtime_dirs

SCRATCH_IN_SANDBOX = "/scratch"
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf")


def bwrap_path() -> str | None:
    return shutil.which("bwrap")


def command(
    worker_argv: list[str], read_only: list[str], scratch_bytes: int, tmp_bytes: int = 64 * 1024 * 1024
) -> list[str]:
    """The bwrap command line that runs worker_argv inside the namespaces."""
    bwrap = bwrap_path()
    if bwrap is None:
        raise FileNotFoundError("bwrap is not installed")
    args = [bwrap, "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
    for path in _SYSTEM_DIRS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    for path in _SYSTEM_FILES:
        args += ["--ro-bind-try", path, path]
    args += ["--proc", "/proc", "--dev", "/dev"]
    args += ["--size", str(tmp_bytes), "--tmpfs", "/tmp", "--size", str(tmp_bytes), "--tmpfs", "/dev/shm"]
    args += ["--size", str(scratch_bytes), "--tmpfs", SCRATCH_IN_SANDBOX]
    # Parents before children, so a bind inside /tmp lands on top of the tmpfs, not under it.
    binds = sorted({os.path.realpath(path) for path in [*python_runtime_dirs(), *read_only]}, key=len)
    for path in binds:
        if not path.startswith(("/usr/", "/proc", "/dev")) and os.path.exists(path):
            args += ["--ro-bind", path, path]
    args += ["--chdir", SCRATCH_IN_SANDBOX, "--"]
    return args + worker_argv


def probe() -> tuple[bool, str]:
    """Whether bwrap can build the namespaces here: it is run once, for real."""
    if bwrap_path() is None:
        return False, "bwrap not installed (Debian/Ubuntu: apt-get install bubblewrap)"
    try:
        args = command([sys.executable, "-I", "-c", "pass"], [], 1024 * 1024)
        result = subprocess.run(args, capture_output=True, text=True, timeout=20, env={"PATH": "/usr/bin:/bin"})
    except (OSError, subprocess.TimeoutExpired) as error:
        return False, f"bwrap failed to start: {error}"
    if result.returncode != 0:
        reason = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else f"exit {result.returncode}"
        hint = " (user namespaces are disabled for this user)" if "uid map" in reason or "namespace" in reason else ""
        return False, f"bwrap cannot create namespaces here: {reason}{hint}"
    return True, "namespaces: user, pid, net, ipc, uts, cgroup, mount; read-only runtime; tmpfs scratch"
