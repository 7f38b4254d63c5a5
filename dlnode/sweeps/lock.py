"""One writer per sweep store: an advisory lock (``flock``) on a hidden file beside the store.

The lock belongs to the open file, so the kernel drops it when the process that holds it ends, however it ends
(a kill included): a killed run cannot leave a store locked. The lock file itself is empty and stays (removing it
while others may be waiting on it would let two writers lock two different files).
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from dlnode.errors import PathError, fail, shown

__all__ = ["lock_path", "store_lock"]


def lock_path(store: str | os.PathLike) -> Path:
    """The hidden lock file of the store at `store`: ``.NAME.zarr.lock`` in the same directory."""
    store = Path(os.fspath(store))
    return store.with_name(f".{store.name}.lock")


@contextlib.contextmanager
def store_lock(store: str | os.PathLike, argument: str = "store") -> Iterator[None]:
    """Hold the store's lock for the block; one line naming the store if another process holds it."""
    import fcntl

    path = lock_path(store)
    try:
        handle = open(path, "a+")  # noqa: SIM115 - held for the whole block
    except OSError as exc:
        fail(argument, "must be in a writable directory (its lock file cannot be made)",
             shown(f"{str(path)!r}: {exc.strerror or exc}"), "choose a directory you can write to",
             kind=PathError)  # fmt: skip
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            fail(
                argument,
                "is being written by another process (a sweep on this store is running)",
                str(Path(os.fspath(store))),
                "wait for it to end, or stop it (Ctrl-C), then run again",
            )
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
