"""Shared test set-up: float64 (dlnode switches it on at import), a persistent compilation cache for the suite (so a
second run of the tests, and CI's later tests, reuse compiled solvers), and compiled code released after each
test module."""

import gc
import os
from pathlib import Path

os.environ.setdefault("DLNODE_CACHE_DIR", str(Path(__file__).resolve().parent.parent / ".cache" / "jax-tests"))
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax  # noqa: E402
import pytest  # noqa: E402

from dlnode.solvers import core  # noqa: E402

# JAX's own record of tracing (one event per function traced to a jaxpr): tests count traces with it to show that a
# new t1, rtol, lr or depth reuses a compiled solver.
TRACES = {"n": 0}
_TRACE_EVENT = "/jax/core/compile/jaxpr_trace_duration"


def _count_trace(event: str, duration: float, **kwargs) -> None:
    if event == _TRACE_EVENT:
        TRACES["n"] += 1


jax.monitoring.register_event_duration_secs_listener(_count_trace)


@pytest.fixture
def traces():
    """A callable giving the number of functions JAX has traced so far in this process."""
    return lambda: TRACES["n"]


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_code():
    """Drop every compiled function after each test module (later modules reload theirs from the persistent cache).
    XLA maps each compiled executable's code into memory, some hundreds of mappings each (6,400 after the 13 tests of
    test_resume alone); kept for the whole suite they passed the kernel's limit on mappings per process
    (vm.max_map_count, 65,530 by default) and a compilation late in the run crashed with a segmentation fault."""
    yield
    core.release_compiled()
    gc.collect()
