"""`integrate`: the grid depth × scale × seed of one problem, integrated and returned as a Dataset."""

from __future__ import annotations

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
from .dataset import to_dataset
from .flows import FLOWS
from .network import init_layers
from .problems import Problem
from .solvers import METHODS, Controls, Solution, solve
from .validation import as_depths, as_scales, as_seeds, check_call, check_positive, check_saveat

__all__ = ["integrate"]

PUBLIC_METHODS = ("auto", *METHODS)
DEFAULT_LOSS_TOL = 1e-8  # stop when ℓ − ℓ* ≤ 1e-8 (ℓ₀ − ℓ*) if t1 is None
DIVERGENCE_FACTOR = 1e12  # a run whose loss grows past 1e12·ℓ₀ is marked diverged (status −2)
MAX_STEPS = {"gd": 10_000_000}
DEFAULT_MAX_STEPS = 200_000


def time_unit(problem: Problem) -> float:
    """1/‖∇ℓ(0)‖₂: the time a mode of the largest strength needs to grow by e at depth 1."""
    return 1.0 / max(float(np.linalg.norm(problem.target(), 2)), 1e-300)


def default_t_max(problem: Problem, depths: Sequence[float], scales: Sequence[float]) -> float:
    """A horizon long enough for the slowest escape (MATH.md §3): ln(1/u₀) at N ≤ 2, u₀^{−(1−2/N)}/(N−2) beyond."""
    escape = 1.0
    for n in depths:
        for s in scales:
            u0 = s**n
            if n <= 2:
                escape = max(escape, math.log(max(1.0 / u0, math.e)))
            else:
                escape = max(escape, u0 ** (-(1 - 2 / n)) / (n - 2))
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
    observed = {k: (tuple(w[:, :n] for w in v) if k == "weights" else v[:, :n]) for k, v in sol.observed.items()}
    step = None if sol.step is None else sol.step[:n]
    return Solution(**{**sol.__dict__, "ts": sol.ts[:n], "observed": observed, "step": step})


def _gd_grid(ts: np.ndarray, lr: float) -> np.ndarray:
    """Save times rounded to whole steps (t = k·lr), duplicates removed."""
    return np.unique(np.rint(ts / lr)) * lr


def _run_depth(problem, depth, scales, seeds, init, width, method, ts, controls, save_weights, bar) -> Solution:  # noqa: ANN001
    cells = [init_layers(problem, int(depth), init, s, seed, width) for s in scales for seed in seeds]
    y0 = tuple(np.stack([c[j] for c in cells]) for j in range(int(depth)))
    padded, n = _bucket(ts)
    sol = solve(method, type(problem), problem.arrays(), y0, padded, controls, save_weights, progress=bar)
    return _trim(sol, n)


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
    depth : int or list of ints.
    width : hidden width (default max(d_in, d_out)).
    init, scale, seed : initialisation (see `dlnode.init_layers`); `scale` per layer, lists make a grid.
    flow : ``layers`` (per-layer gradient flow).
    method : ``auto`` (tsit5), ``tsit5``, ``dopri5``, ``dopri8``, ``kvaerno5``, ``scipy:RK45``, ``scipy:LSODA``,
        ``scipy:BDF``, ``scipy:Radau``, or ``gd``.
    lr : step size, required for ``gd``.
    t1 : end time. None: run until ℓ − ℓ* ≤ loss_tol·(ℓ₀ − ℓ*) (status 1) or a horizon from the escape-time
        estimate of MATH.md §3; the save grid then ends at the latest run's convergence time, and a run that
        converged earlier holds its final state after its `t_final`.
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
    depths, scales, seeds = as_depths(depth), as_scales(scale), as_seeds(seed)
    if any(math.isinf(d) for d in depths):
        raise ValueError(f"depth 'inf' needs flow='end_to_end' (the infinite-depth flow); got flow={flow!r}")
    chosen, reason = ("tsit5", "auto maps to tsit5 (explicit, adaptive)") if method == "auto" else (method, "given")
    if chosen == "gd":
        lr = check_positive("lr", lr, " for method='gd' (the gradient-descent step)")
    elif lr is not None:
        raise ValueError(f"lr applies to method='gd' only; got lr={lr!r} with method={method!r}; drop lr")
    for name, value in (("rtol", rtol), ("atol", atol)):
        check_positive(name, value)
    if t1 is not None:
        t1 = check_positive("t1", t1, " (or None to run until converged)")
    saveat = check_saveat(saveat)
    if loss_tol is not None:
        check_positive("loss_tol", loss_tol)
    if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1):
        raise ValueError(f"max_steps must be a positive integer; got {max_steps!r}")
    until_converged = t1 is None
    if t1 is None:
        t1 = float(saveat[-1]) if isinstance(saveat, np.ndarray) else default_t_max(problem, depths, scales)
    if isinstance(saveat, np.ndarray) and saveat[-1] > t1:
        raise ValueError(f"saveat must end at or before t1={t1}; got a last time {saveat[-1]}")
    controls = Controls(
        t1=t1, rtol=float(rtol), atol=float(atol), lr=float(lr or math.nan),
        loss_tol=loss_tol or (DEFAULT_LOSS_TOL if until_converged else -math.inf), diverge=DIVERGENCE_FACTOR,
        max_steps=max_steps or MAX_STEPS.get(chosen, DEFAULT_MAX_STEPS),
    )  # fmt: skip
    runs = _run_grid(problem, depths, scales, seeds, init, width, chosen, saveat, controls, save_weights, progress)
    if until_converged and isinstance(saveat, int):
        reached = max(float(np.max(s.t_final)) for s in runs.values())
        if reached < t1 * (1 - 1e-12):  # everything converged before the horizon: lay the grid up to then
            controls = Controls(**{**controls.__dict__, "t1": reached})
            first = runs
            runs = _run_grid(problem, depths, scales, seeds, init, width, chosen, saveat, controls, save_weights,
                             progress)  # fmt: skip
            runs = {d: _keep_event(first[d], sol) for d, sol in runs.items()}
    attrs = _attrs(problem, runs, controls, chosen, method, reason, init, width, flow, saveat, until_converged)
    return to_dataset(runs, scales, seeds, attrs, save_weights)


def _keep_event(first: Solution, second: Solution) -> Solution:
    """The run whose convergence event set the grid's end reaches t1 exactly, where the second pass ends it with
    status 0 before testing the event; the passes take identical steps, so the first pass's verdict stands."""
    fix = (second.status == 0) & (first.status == 1)
    status = np.where(fix, first.status, second.status)
    messages = tuple(m if not f else "converged" for m, f in zip(second.messages, fix, strict=True))
    return Solution(**{**second.__dict__, "status": status, "messages": messages})


def _run_grid(problem, depths, scales, seeds, init, width, method, saveat, controls, save_weights, progress):  # noqa: ANN001
    ts = log_times(saveat, controls.t1, time_unit(problem)) if isinstance(saveat, int) else saveat
    if isinstance(saveat, np.ndarray) and ts[0] > 0:
        ts = np.concatenate([[0.0], ts])
    if method == "gd":
        ts = _gd_grid(ts, controls.lr)
    runs = {}
    with tqdm(total=len(depths), desc="dlnode", unit="depth", delay=1.0, disable=not progress, leave=False) as bar:
        for d in depths:
            bar.set_postfix_str(f"depth {int(d)}, {method}")
            runs[d] = _run_depth(problem, d, scales, seeds, init, width, method, ts, controls, save_weights,
                                 lambda it: it)  # fmt: skip
            bar.update()
    return runs


def _attrs(problem, runs, controls, method, requested, reason, init, width, flow, saveat, until_converged):  # noqa: ANN001
    init_name = init if isinstance(init, str) else f"callable:{getattr(init, '__name__', type(init).__name__)}"
    return {
        "dlnode_version": __version__,
        "problem": problem.to_json(),
        "flow": flow,
        "method": method,
        "method_requested": requested,
        "method_reason": reason,
        "rtol": controls.rtol,
        "atol": controls.atol,
        "lr": controls.lr,
        "t1": controls.t1,
        "until_converged": int(until_converged),
        "loss_tol": controls.loss_tol,
        "stop_rule": "l - l* <= loss_tol * (l0 - l*)  (status 1); l > diverge * l0 or non-finite (status -2)",
        "diverge": controls.diverge,
        "max_steps": int(controls.max_steps),
        "saveat": saveat if isinstance(saveat, int) else "explicit",
        "init": init_name,
        "width": int(width) if width is not None else max(problem.d_in, problem.d_out),
        "time_rescaling": "none",
        "compile_time": float(sum(s.compile_time for s in runs.values())),
        "run_time": float(sum(s.wall_time for s in runs.values())),
        "jax_version": jax.__version__,
        "diffrax_version": diffrax.__version__,
        "x64": int(jax.config.jax_enable_x64),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "Conventions": "CF-1.8",
        "loss_convention": problem.convention,
        "config": json.dumps({"depth": [str(d) for d in runs], "method": method, "flow": flow}),
    }
