"""Preloaded first by the learned metrics' fork server (`agent.metrics.learned`), and meant for nowhere else.

The server and the fitting processes it forks report only through the process pool: a fit's exception
reaches the host as that fit's result, a crash as a broken pool (the host then fits on threads). What
they would print goes to /dev/null instead of the user's terminal, where it turned up under the host's
own "interrupted" line: a Ctrl-C during the host's first seconds left the server to fork the processes
already asked for, and each failed to start (the host's semaphores were gone) with a traceback.

Importing this module anywhere but in that server changes nothing: it checks that it runs in a process
started as multiprocessing's fork server (`python -c "from multiprocessing.forkserver import main; ..."`).
"""

from __future__ import annotations

import os
import sys


def _in_fork_server() -> bool:
    return sys.argv[:1] == ["-c"] and "multiprocessing.forkserver" in sys.modules


if _in_fork_server():
    _devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(_devnull, 2)
    os.close(_devnull)
