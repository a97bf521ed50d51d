"""Where the `metricsmith` command starts (the console script, and `python -m agent.cli`).

It imports nothing heavy itself, so that a Ctrl-C from the first instant, while the command line's own
modules are still being imported, ends in "interrupted" and exit code 130 rather than a traceback.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Iterator

__all__ = ["EXIT_INTERRUPTED", "no_lost_ctrl_c", "run"]

EXIT_INTERRUPTED = 130  # here, not in agent.cli.console, which imports rich: too heavy to wait for
_HOOK_RETURN_S = 0.05


@contextlib.contextmanager
def no_lost_ctrl_c() -> Iterator[None]:
    """Within this, a Ctrl-C that Python would drop is raised again a moment later.

    Python's SIGINT handler raises KeyboardInterrupt wherever the main thread is, inside a weakref
    callback or a finalizer too, and there an exception can't propagate: it was printed as "Exception
    ignored ... KeyboardInterrupt" and dropped, and the command went on. The import system runs such
    callbacks (for its module locks) all through a command's first seconds.
    """
    previous = sys.unraisablehook

    def deliver_again(unraisable: sys.UnraisableHookArgs) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt) and callable(signal.getsignal(signal.SIGINT)):
            # A real signal, to the main thread, so that a call waiting there is interrupted too; sent from
            # another thread, since raised here, in the hook, it would be dropped again. So it is sent only
            # once the hook is done: a fixed 1 ms after the thread started could land while this thread was
            # still waiting in start() for the GIL (seen on a loaded machine), and was dropped there.
            hook_done = threading.Event()
            main = threading.main_thread().ident
            assert main is not None  # the main thread is running: it is the one in this hook

            def send_again() -> None:
                hook_done.wait()
                time.sleep(_HOOK_RETURN_S)  # for the hook's return, past a switch of the GIL (5 ms)
                signal.pthread_kill(main, signal.SIGINT)

            threading.Thread(target=send_again, daemon=True).start()
            hook_done.set()
            return
        previous(unraisable)

    sys.unraisablehook = deliver_again
    try:
        yield
    finally:
        sys.unraisablehook = previous


def run() -> int:
    """Run the command named in sys.argv; its exit code."""
    with no_lost_ctrl_c():
        try:
            from agent.cli.main import main
        except KeyboardInterrupt:
            sys.stderr.write("interrupted\n")
            return EXIT_INTERRUPTED
        return main()
