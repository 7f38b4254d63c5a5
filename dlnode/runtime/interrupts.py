"""Ctrl-C as a flag: long loops (the driver's windows, a sweep's wait for its tasks) look at it between pieces of
work and stop there, instead of taking a KeyboardInterrupt at whatever line the main thread happened to be on.

A KeyboardInterrupt raised by a signal handler can land inside a finaliser or a garbage-collector callback, where
Python cannot raise it (it is printed or dropped as "unraisable") and the loop runs on as if nothing happened; a
flag read by the loop itself cannot be lost.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

__all__ = ["sigint_flag"]


@contextlib.contextmanager
def sigint_flag() -> Iterator[dict]:
    """Within the block, Ctrl-C sets flag["hit"] instead of raising; a second Ctrl-C raises KeyboardInterrupt (the
    user gives up waiting). Main thread only (elsewhere nothing changes); the previous handler is restored on
    leaving. The flag is set up even where SIGINT was ignored (a process a shell started in the background
    inherits that), so a SIGINT sent to a run stops it wherever the process was started."""
    flag = {"hit": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):  # noqa: ANN001, ARG001
        if flag["hit"]:
            raise KeyboardInterrupt
        flag["hit"] = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)
