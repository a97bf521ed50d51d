"""The paths a worker's interpreter must keep reading after it is confined."""

from __future__ import annotations

import os
import sys

SYSTEM_READ_ONLY = ("/usr", "/lib", "/lib64", "/etc/ld.so.cache", "/dev/urandom")


def python_runtime_dirs() -> list[str]:
    """The directories this interpreter imports from: its prefixes and its search path."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable))}
    paths.update(entry for entry in sys.path if entry and os.path.isdir(entry))
    return sorted({os.path.realpath(path) for path in paths})
