"""Rules that span the arguments of one call (problem, init, flow, method, memory).

Each runs before any work: a call that will fail fails at once, with one line that names the argument, the rule,
the value and the fix. The argument-by-argument checks live in `dlnode.checks`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from dlnode.checks import check_bool
from dlnode.errors import fail, shown
from dlnode.problems.kinds import Problem
from dlnode.problems.network import check_init, init_layers
from dlnode.solvers.singular import check_singular_depths

__all__ = ["available_memory", "check_call", "check_flow", "check_inits", "check_memory"]


def check_call(problem: Any, init: Any, flow: str, method: str, methods: Iterable[str], flows: Iterable[str]) -> None:
    if not isinstance(problem, Problem):
        fail(
            "problem",
            "must be a dlnode problem (Regression, MatrixCompletion, MatrixSensing, Factorization)",
            shown(type(problem).__name__),
            "build one, e.g. dlnode.Regression(X, Y)",
        )
    check_init(init)
    if not isinstance(flow, str) or flow not in flows:
        fail(
            "flow",
            "must be a known flow",
            None,
            "pass e.g. flow='layers'",
            text=f"unknown flow {flow!r}; expected one of {sorted(flows)}",
        )
    if not isinstance(method, str) or method not in methods:
        fail(
            "method",
            "must be a known method",
            None,
            "pass e.g. method='auto'",
            text=f"unknown method {method!r}; expected one of {sorted(methods)}",
        )


def check_flow(flow: str, depths: list[float], init: Any, method: str) -> None:
    """Combinations a flow does not allow: depth ∞ and unbalanced inits need ``end_to_end`` rules; GD is per-layer."""
    if flow != "end_to_end" and any(math.isinf(d) for d in depths):
        fail(
            "depth",
            "'inf' needs flow='end_to_end' (the infinite-depth flow)",
            shown(f"flow={flow!r}"),
            "pass flow='end_to_end', init='balanced'",
        )
    if flow == "end_to_end" and not (isinstance(init, str) and init in ("balanced", "decoupled")):
        fail(
            "init",
            "must be balanced for flow='end_to_end'",
            init,
            "pass init='balanced'",
            text="flow='end_to_end' needs a balanced init (every D_j = 0): init='balanced' or 'decoupled'",
        )
    if flow == "end_to_end" and method == "rosenbrock":
        check_singular_depths(depths)
    if flow != "layers" and method == "gd":
        fail(
            "method",
            "'gd' needs flow='layers'",
            shown(f"flow={flow!r}"),
            "use flow='layers'",
            text="method='gd' is gradient descent on the layers: it needs flow='layers'",
        )


def check_inits(problem: Any, depths: Sequence[float], init: Any, scale: float, seed: int, width: int | None) -> None:
    """Try a user's init callable once per depth (first scale and seed), so a bad one fails before any work."""
    if not callable(init):
        return
    for d in depths:
        if math.isfinite(d):
            init_layers(problem, int(d), init, scale, seed, width)


def available_memory() -> int | None:
    """Bytes of memory this process can still use: MemAvailable, capped by a cgroup limit; None if unknown."""
    found = []
    try:
        with open("/proc/meminfo") as f:
            found += [int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")]
    except OSError:
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as f, open("/sys/fs/cgroup/memory.current") as g:
            limit = f.read().strip()
            if limit.isdigit():
                found.append(int(limit) - int(g.read().strip()))
    except (OSError, ValueError):
        pass
    if not found:
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            return None
    return max(min(found), 0)


def _gib(n: float) -> str:
    return f"{n / 2**30:.3g} GiB"


def check_memory(
    problem: Any,
    depths: Sequence[float],
    width: int | None,
    cells: int,
    saveat: int | np.ndarray,
    save_weights: bool,
    until_converged: bool = False,
    available: int | None = None,
) -> int:
    """Refuse a call whose saved trajectories cannot fit in memory; returns the estimate in bytes.

    Per cell and saved time the dataset holds W (d_out·d_in), its singular values, three scalars and, with
    `save_weights`, the layers padded to (layer, out, in); the arrays exist twice while the dataset is assembled.
    Until converged (t1=None), a grid of `saveat` times continues at the same density up to the horizon: counted
    twice.
    """
    save_weights = check_bool("save_weights", save_weights)
    m, n = problem.d_out, problem.d_in
    times = (saveat * (2 if until_converged else 1) + 1) if isinstance(saveat, int) else len(saveat) + 1
    finite = [int(d) for d in depths if math.isfinite(d)]
    hidden = max(m, n) if width is None else width
    layers = max(finite, default=1)
    per_time = m * n + min(m, n) + 3
    weights = layers * max(m, hidden) * max(n, hidden) if save_weights and finite else 0
    need = 2 * 8 * cells * len(depths) * times * (per_time + weights)
    available = available_memory() if available is None else available
    if available is not None and need > available:
        argument = "save_weights" if weights > per_time else "saveat"
        fail(
            argument,
            "asks for more memory than this machine has available",
            shown(
                f"about {_gib(need)} ({len(depths)} depths x {cells} cells x {times} times x "
                f"{per_time + weights} numbers x 8 bytes, x2 while assembling) against {_gib(available)} "
                "available"
            ),
            "save fewer times (e.g. saveat=200), pass save_weights=False, or split the grid over several calls",
        )
    return need
