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

from dlnode.checks import check_bool, check_positive
from dlnode.errors import fail, shown
from dlnode.flows.flow import FLOW_KINDS, get_flow
from dlnode.problems.kinds import Problem
from dlnode.problems.network import check_init, init_layers, layer_shapes
from dlnode.solvers import METHODS
from dlnode.solvers.singular import check_singular_depths

__all__ = ["SCALE_OF", "available_memory", "check_arguments", "check_call", "check_flow", "check_inits", "check_memory",
           "check_sharpness"]  # fmt: skip

SCALE_OF = ("layer", "product")
IMPLICIT = ("rosenbrock", "kvaerno5", "scipy:BDF", "scipy:Radau", "scipy:LSODA")  # need the field's Jacobian


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


def check_flow(flow: str, depths: list[float], init: Any, method: str, problem_cls: type | None = None) -> None:
    """Combinations of flow, depth, init and method, read from the capabilities the flow kind (`FLOW_KINDS`) and
    the method (`Method.supports`, `Method.needs_lr`) declare: depth ∞ and a balanced init belong to end-to-end
    flows; a method refuses the flows it cannot integrate (checked on the flow of each depth when the problem class
    is known)."""
    kind = FLOW_KINDS[flow]
    if not kind.end_to_end and any(math.isinf(d) for d in depths):
        fail(
            "depth",
            "'inf' needs flow='end_to_end' (the infinite-depth flow)",
            shown(f"flow={flow!r}"),
            "pass flow='end_to_end', init='balanced'",
        )
    if kind.end_to_end and not (isinstance(init, str) and init in ("balanced", "decoupled")):
        fail(
            "init",
            f"must be balanced for flow={flow!r}",
            init,
            "pass init='balanced'",
            text=f"flow={flow!r} needs a balanced init (every D_j = 0): init='balanced' or 'decoupled'",
        )
    if flow == "central" and method in IMPLICIT:
        fail("method", "must be an explicit method for flow='central' (its field holds a Lanczos solve)", method,
             "pass method='tsit5' (or 'auto')")  # fmt: skip
    entry = METHODS.get(method)
    if entry is None:  # auto chooses among the methods that support the flow
        return
    discrete = entry.needs_lr and entry.family != "sde"  # an SDE's drift may be the modified flow
    if entry.needs_lr and kind.end_to_end or (discrete and kind.needs_lr):
        fail(
            "method",
            f"{method!r} needs flow='layers'",
            shown(f"flow={flow!r}"),
            "use flow='layers'",
            text=f"method={method!r} is gradient descent on the layers: it needs flow='layers'",
        )
    if kind.end_to_end and entry.name == "rosenbrock":  # the singular-coordinate path: a rule on the depths
        check_singular_depths(depths)
    if problem_cls is None:
        return
    for d in depths:
        reason = entry.supports(get_flow(flow, problem_cls, d))
        if reason:
            fail("method", "must support the flow", shown(f"depth {d:g}"),
                 "pass method='auto' (it picks a method that supports the flow)", text=reason)  # fmt: skip


def check_arguments(depths: list[float], init: Any, flow: str, method: str, lr: Any, t1: Any, saveat: Any,
                    scale_of: Any, problem_cls: type | None = None) -> tuple[float | None, float | None]:  # fmt: skip
    """The rules that tie a call's arguments together, in one place for `integrate`, a sweep config and the
    command line (each says them with the same message). Returns (lr, t1) as floats (or None)."""
    check_flow(flow, depths, init, method, problem_cls)
    if scale_of not in SCALE_OF:
        fail("scale_of", f"must be one of {SCALE_OF}", scale_of, "pass scale_of='layer' or scale_of='product'")
    if scale_of == "layer" and any(math.isinf(d) for d in depths):
        fail("scale_of", "must be 'product' with depth 'inf' (a per-layer scale has no infinite-depth limit)",
             scale_of, "pass scale_of='product' to give the end-to-end scale")  # fmt: skip
    entry, kind = METHODS.get(method), FLOW_KINDS[flow]
    if (entry is not None and entry.needs_lr) or kind.needs_lr:
        what = f"method={method!r}" if entry is not None and entry.needs_lr else f"flow={flow!r}"
        lr = check_positive("lr", lr, f" for {what} (the gradient-descent step)")
    elif lr is not None:
        fail("lr", "applies to method='gd', flow='modified' or flow='central' only", lr,
             "drop lr, or pass method='gd'")  # fmt: skip
    if t1 is not None:
        t1 = check_positive("t1", t1, " (or None to run until converged)")
        if entry is not None and entry.needs_lr and t1 < lr:
            fail("t1", f"must be at least lr={lr:g} for method={method!r} (one step)", t1,
                 f"pass t1 >= {lr:g} or a smaller lr")  # fmt: skip
    if isinstance(saveat, np.ndarray) and t1 is not None and saveat[-1] > t1:
        fail("saveat", f"must end at or before t1={t1:g}", shown(f"a last time {saveat[-1]:g}"),
             "drop the later times or raise t1")  # fmt: skip
    return lr, t1


def check_inits(problem: Any, depths: Sequence[float], init: Any, scales: float | Sequence[float],
                seeds: int | Sequence[int], width: int | None) -> None:  # fmt: skip
    """Try a user's init callable on every cell (depth, scale, seed) of the call, so a bad one (a wrong shape, a
    non-finite value at some depth or seed) fails before any work rather than after the first depths ran."""
    if not callable(init):
        return
    scales = [scales] if np.ndim(scales) == 0 else list(scales)
    seeds = [seeds] if np.ndim(seeds) == 0 else list(seeds)
    for d in depths:
        if math.isfinite(d):
            for scale in scales:
                for seed in seeds:
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


SOLVER_COPIES = 16  # copies of one batch's layers a solver holds (stages, error estimate, saved and carried state)


def check_memory(
    problem: Any,
    depths: Sequence[float],
    width: int | None,
    cells: int,
    saveat: int | np.ndarray,
    save_weights: bool,
    until_converged: bool = False,
    available: int | None = None,
    paths: int = 1,
) -> int:
    """Refuse a call whose arrays cannot fit in memory; returns the estimate in bytes. `cells` counts every run
    (the noise paths included: `paths` of them per (scale, seed) cell, named when they are what does not fit).

    Per cell and saved time the dataset holds W (d_out·d_in), its singular values, three scalars and, with
    `save_weights`, the layers padded to (layer, out, in); the arrays exist twice while the dataset is assembled.
    Until converged (t1=None), a grid of `saveat` times continues at the same density up to the horizon: counted
    twice. Whatever is saved, every cell keeps its final layers (padded, twice while assembled), and the solver
    holds `SOLVER_COPIES` copies of the layers of one depth's batch (stages, error estimate, saved state).
    """
    save_weights = check_bool("save_weights", save_weights)
    m, n = problem.d_out, problem.d_in
    times = (saveat * (2 if until_converged else 1) + 1) if isinstance(saveat, int) else len(saveat) + 1
    finite = [int(d) for d in depths if math.isfinite(d)]
    hidden = max(m, n) if width is None else width
    layers = max(finite, default=1)
    per_time = m * n + min(m, n) + 3
    padded = layers * max(m, hidden) * max(n, hidden) if finite else 0
    weights = padded if save_weights else 0
    state = max((sum(a * b for a, b in layer_shapes(d, n, m, width)) for d in finite), default=m * n)
    trajectories = 2 * 8 * cells * len(depths) * times * (per_time + weights)
    layer_arrays = 2 * 8 * cells * len(depths) * padded + 8 * SOLVER_COPIES * cells * state
    need = trajectories + layer_arrays
    available = available_memory() if available is None else available
    if available is not None and need > available:
        if layer_arrays > trajectories:
            fail("width", "gives layers that do not fit in the memory this machine has available",
                 shown(f"about {_gib(need)} for layers of width {hidden} ({state} numbers per cell, {cells} cells, "
                       f"{len(depths)} depths) against {_gib(available)} available"),
                 "pass a smaller width, fewer depths or cells, or split the grid over several calls")  # fmt: skip
        if paths > 1 and need / paths <= available:  # the noise paths multiply the cells past what fits
            fail("paths", "asks for more memory than this machine has available",
                 shown(f"{paths} paths: about {_gib(need)} ({len(depths)} depths x {cells} runs (cells x paths) x "
                       f"{times} times, x2 while assembling) against {_gib(available)} available"),
                 f"pass at most {max(int(available * paths // need), 1)} paths, or split them over several "
                 "calls")  # fmt: skip
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


def check_sharpness(k: Any, problem: Any, depths: Sequence[float], width: int | None, flow: str,
                    network: str = "dense") -> int:  # fmt: skip
    """`sharpness`: a non-negative integer, at most the parameter count of the smallest network of the call (a
    diagonal network has the two factors u, v of β's shape), and only for the per-layer flows (an end-to-end run
    has no layer parameters)."""
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k < 0:
        fail("sharpness", "must be a non-negative integer (the number of top Hessian eigenvalues saved)", k,
             "pass e.g. sharpness=1")  # fmt: skip
    if k and flow == "end_to_end":
        fail("sharpness", "needs per-layer parameters: not with flow='end_to_end'", k,
             "pass flow='layers' (or sharpness=0)")  # fmt: skip
    if k and flow != "end_to_end":
        if network == "diagonal":
            count = 2 * problem.d_in * problem.d_out
        else:
            count = min(sum(a * b for a, b in layer_shapes(int(d), problem.d_in, problem.d_out, width)) for d in depths)
        if k > count:
            fail("sharpness", f"must be at most the parameter count {count} of the smallest network", k,
                 f"pass sharpness <= {count}")  # fmt: skip
    return int(k)


def check_norm_limit(norm_limit: Any) -> float:
    """A number above 1 (inf: no limit): the multiple of max(‖W*‖₂, ‖W(0)‖₂) past which a run stops as
    NORM_RUNAWAY."""
    if isinstance(norm_limit, (bool, np.bool_)) or not isinstance(norm_limit, (int, float, np.integer, np.floating)) \
            or not 1 < norm_limit <= math.inf:  # fmt: skip
        fail("norm_limit", "must be a number above 1, or inf for no limit (a multiple of max(||W*||_2, ||W(0)||_2))",
             norm_limit, "pass e.g. norm_limit=1e3, or norm_limit=math.inf")  # fmt: skip
    return float(norm_limit)
