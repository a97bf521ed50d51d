"""Imported first by the learned metrics' fork server (`agent.metrics.learned`), and meant for nowhere else.

The server and the fitting processes it forks report only through the process pool: a fit's exception
reaches the host as that fit's result, a crash as a broken pool (the host then fits on threads). What
they would print goes to /dev/null instead of the user's terminal, where it turned up under the host's
own "interrupted" line after a Ctrl-C in a run's first seconds: the server, which ignores SIGINT only
once it has imported scikit-learn, died of it with a traceback; and processes the host had asked for
just before it left failed to start, each with a traceback of its own.

The server starts with SIGINT blocked, and this module unblocks it once the output is redirected: a
Ctrl-C in the server's first milliseconds then ends it as quietly as one during its imports.

`server_pid` is the server's pid in the server and in every process it forks (None elsewhere): those
processes die with the server (`agent.metrics.learned._fitting_process_setup`), and the server ends
when the host does.

Importing this module anywhere but in that server changes nothing: it checks that it runs in a process
started as multiprocessing's fork server (`python -c "from multiprocessing.forkserver import main; ..."`).
"""

from __future__ import annotations

import os
import signal
import sys


def _in_fork_server() -> bool:
    return sys.argv[:1] == ["-c"] and "multiprocessing.forkserver" in sys.modules


server_pid: int | None = None
if _in_fork_server():
    server_pid = os.getpid()
    _devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(_devnull, 2)
    os.close(_devnull)
    # The host starts the server with SIGINT blocked, so that a Ctrl-C before this point waits here.
    # Taken now, it ends the server (quietly) as it would have: the host is leaving too.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
