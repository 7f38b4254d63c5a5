"""`integrate`: the grid depth × scale × seed of one problem, integrated and returned as a Dataset."""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import diffrax
import jax
import numpy as np
from tqdm.auto import tqdm

from ._version import __version__
from .dataset import to_dataset, with_problem
from .endtoend import recover_layers
from .flows import FLOWS, get_flow
from .network import init_end_to_end, init_layers
from .problems import Problem
from .solvers import METHODS, Controls, Solution, solve
from .solvers.auto import choose_method
from .validation import (
    as_depths,
    as_scales,
    as_seeds,
    check_call,
    check_flow,
    check_max_steps,
    check_positive,
    check_saveat,
)

__all__ = ["integrate"]

PUBLIC_METHODS = ("auto", *METHODS)
DEFAULT_LOSS_TOL = 1e-8  # stop when ℓ − ℓ* ≤ 1e-8 (ℓ₀ − ℓ*) if t1 is None
DIVERGENCE_FACTOR = 1e12  # a run whose loss grows past 1e12·ℓ₀ is marked diverged (status −2)
MAX_STEPS = {"gd": 10_000_000}
DEFAULT_MAX_STEPS = 200_000


def time_unit(problem: Problem) -> float:
    """1/‖∇ℓ(0)‖₂: the time a mode of the largest strength needs to grow by e at depth 1."""
    return 1.0 / max(float(np.linalg.norm(problem.target(), 2)), 1e-300)


def default_t_max(problem: Problem, depths: Sequence[float], scales: Sequence[float], flow: str = "layers") -> float:
    """A horizon long enough for the slowest escape (MATH.md §3), 10⁴ times the estimate.

    Per-layer flows start a mode at u₀ = scale^N and escape after ln(1/u₀)/2 (N ≤ 2) or u₀^{−(1−2/N)}/(N−2) time
    units; end-to-end flows start at u₀ = scale on the rescaled time τ = N t, where the escape is N times longer
    (1/u₀ at N = ∞).
    """
    escape = 1.0
    for n in depths:
        for s in scales:
            u0 = s if flow == "end_to_end" else s**n
            if math.isinf(n):
                t = 1.0 / u0
            elif n <= 2:
                t = max(math.log(1.0 / u0), 1.0) * (n if flow == "end_to_end" else 1.0)
            else:
                t = u0 ** (-(1 - 2 / n)) / (n - 2) * (n if flow == "end_to_end" else 1.0)
            escape = max(escape, t)
    return 1e4 * time_unit(problem) * escape


def log_times(count: int, t1: float, unit: float) -> np.ndarray:
    """t = 0 plus `count` log-spaced times ending at t1, starting at min(10⁻² unit, 10⁻³ t1)."""
    start = min(1e-2 * unit, 1e-3 * t1)
    ts = np.concatenate([[0.0], np.logspace(np.log10(start), np.log10(t1), count)])
    ts[-1] = t1  # exactly: 10**log10(t1) may round past the end of the integration interval
    return ts


def _bucket(ts: np.ndarray) -> tuple[np.ndarray, int]:
    """Pad the save times to a power of two (repeating the last) so nearby grid sizes share one compile."""
    size = max(16, 1 << (len(ts) - 1).bit_length())
    return np.concatenate([ts, np.full(size - len(ts), ts[-1])]), len(ts)


def _trim(sol: Solution, n: int) -> Solution:
    observed = jax.tree_util.tree_map(lambda a: a[:, :n], sol.observed)
    step = None if sol.step is None else sol.step[:n]
    return dataclasses.replace(sol, ts=sol.ts[:n], observed=observed, step=step)


def _gd_grid(ts: np.ndarray, lr: float) -> np.ndarray:
    """Save times rounded to whole steps (t = k·lr), duplicates removed."""
    return np.unique(np.rint(ts / lr)) * lr


def integrate(
    problem: Problem,
    depth: int | str | Iterable[int | str] = (1, 2, 3),
    width: int | None = None,
    init: str | Callable = "gaussian",
    scale: float | Sequence[float] = 1e-1,
    seed: int | Iterable[int] = 0,
    flow: str = "layers",
    method: str = "auto",
    lr: float | None = None,
    t1: float | None = None,
    rtol: float = 1e-6,
    atol: float = 1e-9,
    saveat: int | Sequence[float] = 200,
    save_weights: bool = False,
    progress: bool = True,
    loss_tol: float | None = None,
    max_steps: int | None = None,
) -> Any:
    """Integrate the training dynamics of deep linear networks on `problem` over depth × scale × seed.

    Per-layer gradient flow dW_j/dt = −∂L/∂W_j (``flow="layers"``), or gradient descent W_j ← W_j − lr·∂L/∂W_j
    (``method="gd"``: its explicit-Euler step, exactly; step k at time t = k·lr).

    Parameters
    ----------
    problem : a dlnode problem.
    depth : int, ``"inf"`` (end-to-end flow only) or a list of them.
    width : hidden width (default max(d_in, d_out)).
    init, scale, seed : initialisation (see `dlnode.init_layers`); `scale` per layer, lists make a grid.
    flow : ``layers`` (per-layer gradient flow), ``modified`` (the flow of L + (lr/4)‖∇L‖² that GD with step lr
        follows to second order), or ``end_to_end`` (the balanced end-to-end flow of W alone, depths may include
        ``"inf"``; needs init ``balanced`` or ``decoupled``, takes `scale` as the end-to-end scale and runs on the
        rescaled time τ = N t; per-layer weights are rebuilt from the SVD of W).
    method : ``auto`` (tsit5, or rosenbrock when a stiffness probe says so; see `dlnode.solvers.auto`), ``tsit5``,
        ``dopri5``, ``dopri8``, ``kvaerno5``, ``rosenbrock`` (stiff path: matrix-free CG on the layers, or
        singular coordinates U, ln σ, V for ``end_to_end`` flows, see `dlnode.solvers.singular`), ``scipy:RK45``,
        ``scipy:LSODA``, ``scipy:BDF``, ``scipy:Radau``, or ``gd``.
    lr : step size, required for ``gd`` and ``flow="modified"``.
    t1 : end time. None: run until ℓ − ℓ* ≤ loss_tol·(ℓ₀ − ℓ*) (status 1) or a horizon from the escape-time
        estimate of MATH.md §3; the save grid then ends at the latest run's convergence time (found by a first
        pass, whose run time is ``attrs["search_pass_time"]``), and a run that converged earlier holds its final
        state after its `t_final`.
    rtol, atol : tolerances of the adaptive methods.
    saveat : number of log-spaced save times (plus t = 0), or an explicit increasing array of times.
    save_weights : also store the per-layer weights at every saved time.
    progress : show a progress bar for runs longer than a second.
    loss_tol : convergence threshold (default 1e-8 when t1 is None, off otherwise).
    max_steps : step budget per run (status −1 when exhausted).

    Returns
    -------
    xarray.Dataset with the schema of DESIGN.md §3.
    """
    check_call(problem, init, flow, method, PUBLIC_METHODS, FLOWS)
    plan = _plan(problem, depth, width, init, scale, seed, flow, method, lr, t1, rtol, atol, saveat, save_weights,
                 progress, loss_tol, max_steps)  # fmt: skip
    runs = _run_grid(plan, plan.controls)
    controls, search = plan.controls, 0.0  # search: run time of a first pass that only found the end time
    if plan.until_converged and isinstance(plan.saveat, int):
        reached = max(float(np.max(s.t_final)) for s in runs.values())
        if reached < controls.t1 * (1 - 1e-12):  # everything converged before the horizon: lay the grid up to then
            controls = dataclasses.replace(controls, t1=reached)
            first, runs = runs, _run_grid(plan, controls)
            runs = {d: _keep_event(first[d], sol) for d, sol in runs.items()}
            search = sum(s.wall_time for s in first.values())
    attrs = _attrs(plan, runs, controls)
    attrs["search_pass_time"] = float(search)
    return with_problem(to_dataset(runs, plan.scales, plan.seeds, attrs, save_weights), problem)


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Validated arguments of one `integrate` call."""

    problem: Problem
    depths: list[float]
    scales: list[float]
    seeds: list[int]
    init: Any
    width: int | None
    flow: str
    method: str
    requested: str
    reason: str
    saveat: int | np.ndarray
    save_weights: bool
    progress: bool
    until_converged: bool
    controls: Controls


def _plan(problem, depth, width, init, scale, seed, flow, method, lr, t1, rtol, atol, saveat, save_weights, progress,
          loss_tol, max_steps) -> _Plan:  # noqa: ANN001  # fmt: skip
    depths, scales, seeds = as_depths(depth), as_scales(scale), as_seeds(seed)
    check_flow(flow, depths, init, method)
    if method == "gd" or flow == "modified":
        what = "method='gd'" if method == "gd" else "flow='modified'"
        lr = check_positive("lr", lr, f" for {what} (the gradient-descent step)")
    elif lr is not None:
        raise ValueError(f"lr applies to method='gd' or flow='modified' only; got lr={lr!r}; drop lr")
    for name, value in (("rtol", rtol), ("atol", atol)):
        check_positive(name, value)
    if t1 is not None:
        t1 = check_positive("t1", t1, " (or None to run until converged)")
    saveat = check_saveat(saveat)
    if loss_tol is not None:
        check_positive("loss_tol", loss_tol)
    if max_steps is not None:
        check_max_steps(max_steps)
    if method == "auto":
        chosen, reason = choose_method(problem, depths, scales, init, width, flow, float(lr or math.nan))
    else:
        chosen, reason = method, "given"
    until_converged = t1 is None
    if t1 is None:
        t1 = float(saveat[-1]) if isinstance(saveat, np.ndarray) else default_t_max(problem, depths, scales, flow)
    if isinstance(saveat, np.ndarray) and saveat[-1] > t1:
        raise ValueError(f"saveat must end at or before t1={t1}; got a last time {saveat[-1]}")
    controls = Controls(
        t1=t1, rtol=float(rtol), atol=float(atol), lr=float(lr or math.nan),
        loss_tol=loss_tol or (DEFAULT_LOSS_TOL if until_converged else -math.inf), diverge=DIVERGENCE_FACTOR,
        max_steps=max_steps or MAX_STEPS.get(chosen, DEFAULT_MAX_STEPS),
    )  # fmt: skip
    return _Plan(problem, depths, scales, seeds, init, width, flow, chosen, method, reason, saveat, bool(save_weights),
                 bool(progress), until_converged, controls)  # fmt: skip


def _keep_event(first: Solution, second: Solution) -> Solution:
    """The run whose convergence event set the grid's end reaches t1 exactly, where the second pass ends it with
    status 0 before testing the event; the passes take identical steps, so the first pass's verdict stands."""
    fix = (second.status == 0) & (first.status == 1)
    status = np.where(fix, first.status, second.status)
    messages = tuple(m if not f else "converged" for m, f in zip(second.messages, fix, strict=True))
    return dataclasses.replace(
        second, status=status, messages=messages, compile_time=first.compile_time + second.compile_time
    )


def _run_grid(plan: _Plan, controls: Controls) -> dict[float, Solution]:
    unit = time_unit(plan.problem)
    ts = log_times(plan.saveat, controls.t1, unit) if isinstance(plan.saveat, int) else plan.saveat
    if ts[0] > 0:
        ts = np.concatenate([[0.0], ts])
    if plan.method == "gd":
        ts = _gd_grid(ts, controls.lr)
    runs = {}
    bar = tqdm(total=len(plan.depths), desc="dlnode", unit="depth", delay=1.0, disable=not plan.progress, leave=False)
    with bar:
        for d in plan.depths:
            bar.set_postfix_str(f"depth {d:g}, {plan.flow}, {plan.method}")
            runs[d] = _run_depth(plan, d, ts, controls)
            bar.update()
    return runs


def _run_depth(plan: _Plan, depth: float, ts: np.ndarray, controls: Controls) -> Solution:
    """One vmapped batch: every (scale, seed) cell of one depth."""
    problem, cells = plan.problem, [(s, seed) for s in plan.scales for seed in plan.seeds]
    if plan.flow == "end_to_end":
        y0 = np.stack([init_end_to_end(problem, plan.init, s, seed) for s, seed in cells])
    else:
        layers = [init_layers(problem, int(depth), plan.init, s, seed, plan.width) for s, seed in cells]
        y0 = tuple(np.stack([c[j] for c in layers]) for j in range(int(depth)))
    flow = get_flow(plan.flow, type(problem), depth, plan.save_weights and plan.flow != "end_to_end")
    padded, n = _bucket(ts)
    sol = _trim(solve(plan.method, flow, type(problem), problem.arrays(), y0, padded, controls), n)
    if plan.flow != "end_to_end":
        return sol
    return _with_recovered_layers(sol, depth, plan.width, plan.save_weights)


def _with_recovered_layers(sol: Solution, depth: float, width: int | None, save_weights: bool) -> Solution:
    """End-to-end runs carry W only: rebuild balanced layers from its SVD (none exist at depth ∞)."""
    if math.isinf(depth):
        final: tuple = ()
    else:
        cells = [recover_layers(w, int(depth), width) for w in sol.final]
        final = tuple(np.stack([c[j] for c in cells]) for j in range(int(depth)))
    observed = dict(sol.observed)
    if save_weights and not math.isinf(depth):
        products = sol.observed["product"]  # (batch, time, m, n), NaN after a failure
        per = [[_recover_or_nan(w, int(depth), width) for w in cell] for cell in products]
        observed["weights"] = tuple(
            np.stack([np.stack([t[j] for t in cell]) for cell in per]) for j in range(int(depth))
        )
    elif save_weights:
        observed["weights"] = ()
    return dataclasses.replace(sol, final=final, observed=observed)


def _recover_or_nan(w: np.ndarray, depth: int, width: int | None) -> list[np.ndarray]:
    if np.all(np.isfinite(w)):
        return recover_layers(w, depth, width)
    return [np.full_like(a, np.nan) for a in recover_layers(np.zeros_like(w), depth, width)]


def _attrs(plan: _Plan, runs: dict, controls: Controls) -> dict[str, Any]:
    problem, init = plan.problem, plan.init
    init_name = init if isinstance(init, str) else f"callable:{getattr(init, '__name__', type(init).__name__)}"
    e2e = plan.flow == "end_to_end"
    return {
        "dlnode_version": __version__,
        "problem": problem.to_json(),
        "flow": plan.flow,
        "method": plan.method,
        "method_requested": plan.requested,
        "method_reason": plan.reason,
        "rtol": controls.rtol,
        "atol": controls.atol,
        "lr": controls.lr,
        "t1": controls.t1,
        "until_converged": int(plan.until_converged),
        "loss_tol": controls.loss_tol,
        "stop_rule": "l - l* <= loss_tol * (l0 - l*)  (status 1); l > diverge * l0 or non-finite (status -2)",
        "diverge": controls.diverge,
        "max_steps": int(controls.max_steps),
        "saveat": plan.saveat if isinstance(plan.saveat, int) else "explicit",
        "init": init_name,
        "scale_meaning": "end-to-end: W(0) has singular values scale" if e2e else "per layer",
        "width": int(plan.width) if plan.width is not None else max(problem.d_in, problem.d_out),
        "time_rescaling": "tau = N t: finite depths integrate dW/dtau = -A_N(E)/N, depth inf dW/dtau = -A_inf(E)"
        if e2e
        else "none",
        "compile_time": float(sum(s.compile_time for s in runs.values())),
        "run_time": float(sum(s.wall_time for s in runs.values())),
        "jax_version": jax.__version__,
        "diffrax_version": diffrax.__version__,
        "x64": int(jax.config.jax_enable_x64),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "Conventions": "CF-1.8",
        "loss_convention": problem.convention,
        "config": json.dumps({"depth": [str(d) for d in runs], "method": plan.method, "flow": plan.flow}),
    }
