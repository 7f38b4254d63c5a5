"""The default SDE step, checked: does dt = lr resolve the SDE on this run?

An SDE method's default step is dt = lr (the step the SDE models; Euler–Maruyama's step then has exactly one SGD
step's first two moments). Whether that step solves the SDE depends on the run: on a 6 × 5 rank-2 sensing problem
(40 measurements) at depth 3 from Gaussian 0.1, minibatches of 4 at lr 0.05, Heun at dt = lr held the loss near 1 up
to t = 20 on most paths, where dt = lr/2 and lr/8 (the same Brownian paths) and SGD itself reach 1e-5 — a wrong
answer that looked like a noisy plateau. So a run at the default step is run again on its first `CHECK_PATHS` paths
at dt/2, on the same Brownian paths (every dt of one path integrates one path, docs/noise.md §3), and the two
path-means of the loss are compared at every save; the difference, relative to the stop rule's loss gap
min(ℓ₀, ℓ(0)) − ℓ*, is the attribute ``dt_check`` (infinite where a path diverges at one step and not at the other),
and above `STEP_TOL` a warning names the cell and a smaller step. A step passed explicitly is the caller's: no check.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from dlnode.errors import warn
from dlnode.solvers.core import Status, stop_gap
from dlnode.solvers.gd import SDE_METHODS

__all__ = ["CHECK_PATHS", "STEP_TOL", "check_call", "checked"]

CHECK_PATHS = 4  # paths run again at dt/2: their mean differences are paired, so a few paths measure the bias
STEP_TOL = 0.1  # the case above: 0.19 at dt = lr (0.023 from lr/2 to lr/4); resolved runs 4e-4 to 1.6e-2 (docs)


def check_call(given: dict[str, Any], plan: Any, ds: Any) -> dict[str, Any] | None:
    """integrate's keywords for the check of `ds` (the call `given`, its `plan`): the first `CHECK_PATHS` paths at
    dt/2 at the run's own save times, nothing else saved; None where no check applies (not an SDE method, a step
    the caller chose, a run stopped by Ctrl-C)."""
    if plan.method not in SDE_METHODS or given.get("dt") is not None:
        return None
    if np.isin(ds["status"].values, [int(Status.INTERRUPTED), int(Status.PENDING)]).any():
        return None
    paths = list(plan.noise.paths)[:CHECK_PATHS]
    return given | {"dt": plan.noise.dt / 2, "paths": paths, "saveat": np.asarray(ds["time"].values, float),
                    "save_weights": False, "sharpness": 0}  # fmt: skip


def checked(ds: Any, fine: Any, plan: Any) -> Any:
    """`ds` with ``dt_check`` (and ``dt_check_paths``) from its run again at dt/2 (`fine`); a warning above
    `STEP_TOL`. A check that was itself interrupted (Ctrl-C) adds nothing but a warning that says so."""
    if np.isin(fine["status"].values, [int(Status.INTERRUPTED), int(Status.PENDING)]).any():
        warn(f"dlnode: the check of the default SDE step dt = lr = {plan.noise.dt:g} was interrupted (Ctrl-C): the run "
             f"is complete, its step unchecked (no dt_check); pass dt={plan.noise.dt / 2:g} to run the check's step "
             "yourself")  # fmt: skip
        return ds
    k = fine.sizes["path"]
    coarse = ds.isel(path=slice(0, k))
    if not np.array_equal(coarse["time"].values, fine["time"].values):  # pragma: no cover - same save times
        return ds
    loss, loss_fine = coarse["loss"].values, fine["loss"].values  # (depth, scale, seed, path, time)
    gap = stop_gap(loss[..., 0, 0], plan.controls.loss_scale, plan.problem.loss_min, np)  # every path starts at ℓ₀
    finite = np.isfinite(loss).all(axis=-2) & np.isfinite(loss_fine).all(axis=-2)
    with np.errstate(invalid="ignore", over="ignore"):
        mean = np.abs(np.where(finite[..., None, :], loss - loss_fine, 0.0).mean(axis=-2))
    diff = mean / np.maximum(gap[..., None], np.finfo(float).tiny)  # (depth, scale, seed, time)
    status = coarse["status"].values != fine["status"].values  # diverged at one step, not at the other
    worst = np.where(status.any(axis=-1), np.inf, diff.max(axis=-1))  # (depth, scale, seed)
    value = float(np.max(worst))
    ds = ds.assign_attrs({"dt_check": value, "dt_check_paths": int(k)})
    if value > STEP_TOL:
        warn(_message(ds, worst, diff, status, plan, k))
    return ds


def _message(ds: Any, worst: np.ndarray, diff: np.ndarray, status: np.ndarray, plan: Any, k: int) -> str:
    at = np.unravel_index(int(np.argmax(worst)), worst.shape)
    cell = ", ".join(f"{name} {ds[name].values[i]:g}" for name, i in zip(("depth", "scale", "seed"), at, strict=True))
    dt = plan.noise.dt
    if math.isinf(worst[at]):
        what = (f"on {int(status[at].sum())} of its first {k} paths the run diverged at one step and not at the "
                "other")  # fmt: skip
    else:
        j = int(np.argmax(diff[at]))
        what = (f"the mean loss of its first {k} paths differs by {worst[at]:.2g} of the loss gap "
                f"min(l0, l(0)) - l* at t = {ds['time'].values[j]:.4g}")  # fmt: skip
    return (
        f"dlnode: the default SDE step dt = lr = {dt:g} does not resolve {plan.method}'s SDE on this run: at dt "
        f"and dt/2 (the same Brownian paths; {cell}) {what}, above {STEP_TOL:g} (ds.attrs['dt_check']); pass "
        f"dt={dt / 4:g} (lr/4) or smaller, or dt={dt:g} to keep this step unchecked"
    )
