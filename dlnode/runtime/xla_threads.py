"""How many threads XLA's CPU runtime computes on: one per process by default (``DLNODE_XLA_THREADS``).

XLA's CPU client runs compiled code on a thread pool sized to every CPU the process may use, and it has no option
to size it otherwise. dlnode's compiled programs are sequential loops of small steps (one solver step after the
other), which such a pool does not speed up: it hands the loop from one of its threads to another. Measured on a
2-core machine (median of one run each, cold compile cache, float64): a 12 × 12 depth-3 tsit5 run took 4.8 s of
wall time and 1.5 cores with the pool of two, 3.9 s and 1.0 core with one thread; Arora et al.'s 100 × 100
completion with defaults ran 22.9 s against 19.6 s; the end-to-end 30 × 30 case 23.8 s against 22.7 s. And two
processes side by side (a sweep's workers) each wanted 1.5 cores of the two.

The pool size is read from the process's CPU affinity when the CPU client is created, so dlnode wraps JAX's CPU
client factory: while the client is created, the creating thread is restricted to `DLNODE_XLA_THREADS` CPUs; right
after, it and the threads the client started get back the affinity the creating thread had. Nothing else about the
process changes, and nothing is done when JAX created its CPU client before dlnode was imported, on systems
without ``sched_setaffinity``, or with ``DLNODE_XLA_THREADS=all`` (XLA's own pool size).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from typing import Any

from dlnode.errors import refused

__all__ = ["ENV", "limit_xla_threads", "requested_threads"]

ENV = "DLNODE_XLA_THREADS"


def requested_threads(value: str | None = None) -> int | None:
    """The thread count `DLNODE_XLA_THREADS` asks for: a positive integer (default 1), or None for ``all``."""
    value = os.environ.get(ENV, "1") if value is None else value
    if value.strip().lower() == "all":
        return None
    try:
        threads = int(value)
    except ValueError:
        threads = 0
    if threads < 1:
        raise refused(f"{ENV} must be a positive integer or 'all' (XLA's own pool, one thread per CPU); "
                         f"got {value!r}; unset it for one thread")  # fmt: skip
    return threads


def limit_xla_threads() -> bool:
    """Make JAX's CPU client, when it is created, compute on `requested_threads()` threads; False when that cannot
    apply (the client exists already, ``all`` was asked for, no ``sched_setaffinity``, or JAX's layout changed)."""
    threads = requested_threads()
    if threads is None or not hasattr(os, "sched_setaffinity"):
        return False
    try:
        from jax._src import xla_bridge
    except ImportError:  # pragma: no cover - a JAX without this module: leave XLA's pool alone
        return False
    registrations, created = getattr(xla_bridge, "_backend_factories", None), getattr(xla_bridge, "_backends", None)
    registration = registrations.get("cpu") if isinstance(registrations, dict) else None
    if registration is None or created or getattr(registration.factory, "dlnode_threads", None) is not None:
        return False
    try:
        registrations["cpu"] = dataclasses.replace(registration, factory=_pinned(registration.factory, threads))
    except TypeError:  # pragma: no cover - not the dataclass it was: leave XLA's pool alone
        return False
    return True


def _pinned(factory: Callable[..., Any], threads: int) -> Callable[..., Any]:
    @functools.wraps(factory)
    def create(*args: Any, **kwargs: Any) -> Any:
        allowed = os.sched_getaffinity(0)
        before = _threads()
        os.sched_setaffinity(0, sorted(allowed)[:threads])
        try:
            return factory(*args, **kwargs)
        finally:
            for tid in (_threads() - before) | {0}:  # the threads the client started, and this one
                try:
                    os.sched_setaffinity(tid, allowed)
                except OSError:  # a thread that ended meanwhile
                    pass

    create.dlnode_threads = threads
    return create


def _threads() -> set[int]:
    try:
        return {int(tid) for tid in os.listdir("/proc/self/task")}
    except OSError:
        return set()
