"""Ctrl-C as a flag: long loops (the driver's windows, a sweep's wait for its tasks) look at it between pieces of
work and stop there, instead of taking a KeyboardInterrupt at whatever line the main thread happened to be on.

A KeyboardInterrupt raised by a signal handler can land inside a finaliser or a garbage-collector callback, where
Python cannot raise it (it is printed or dropped as "unraisable") and the loop runs on as if nothing happened; a
flag read by the loop itself cannot be lost.

Scopes nest: a block inside another shares the outer block's flag, so a Ctrl-C that lands anywhere in an
`integrate` call (between two depths, or in the window that ends a depth) is seen by the call itself, and one that
lands anywhere in a study is seen by the study, not only by the `integrate` call that happened to be running.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator

__all__ = ["quit_while_starting", "sigint_flag", "stop_requested"]

_ACTIVE: list[dict] = []  # the flags of the open blocks of the main thread, outermost first


@contextlib.contextmanager
def sigint_flag() -> Iterator[dict]:
    """Within the block, Ctrl-C sets flag["hit"] instead of raising; a second Ctrl-C raises KeyboardInterrupt (the
    user gives up waiting). Main thread only (elsewhere nothing changes); the previous handler is restored on
    leaving. The flag is set up even where SIGINT was ignored (a process a shell started in the background
    inherits that), so a SIGINT sent to a run stops it wherever the process was started. Inside another such
    block, the outer block's flag itself is yielded and the handler is left as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield {"hit": False}
        return
    if _ACTIVE:
        yield _ACTIVE[0]
        return
    flag = {"hit": False}

    def handler(signum, frame):  # noqa: ANN001, ARG001
        if flag["hit"]:
            raise KeyboardInterrupt
        flag["hit"] = True

    previous = signal.signal(signal.SIGINT, handler)
    _ACTIVE.append(flag)
    try:
        yield flag
    finally:
        _ACTIVE.remove(flag)
        signal.signal(signal.SIGINT, previous)


def stop_requested() -> bool:
    """Whether Ctrl-C was pressed inside an open `sigint_flag` block (of the main thread): a piece of work about
    to start inside it (a study's next `integrate` call) should not start."""
    return threading.current_thread() is threading.main_thread() and bool(_ACTIVE) and _ACTIVE[0]["hit"]


def quit_while_starting(signum, frame) -> None:  # noqa: ANN001, ARG001
    """The `dlnode` command's SIGINT handler while it loads (JAX takes seconds to import): one line and exit code
    130, nothing done yet, instead of a KeyboardInterrupt traceback from inside an import."""
    sys.stderr.write("interrupted (Ctrl-C) while dlnode was starting; nothing was done\n")
    sys.stderr.flush()
    os._exit(130)
