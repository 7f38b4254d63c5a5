"""Continuous versus discrete: GD against the flow on a shared time axis, and the fitted order in lr (MATH.md §7).

GD's step k sits at flow time t = k·lr, so a GD run and a flow saved at those times compare pointwise. The global
error of GD against gradient flow is O(lr); against the modified flow of L + (lr/4)‖∇L‖² it is O(lr²).

References
----------
Barrett, Dherin (2021), "Implicit gradient regularization", arXiv 2009.11162.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.stats
import xarray as xr

__all__ = ["compare", "convergence_order", "gd_errors"]


def _match_times(ta: np.ndarray, tb: np.ndarray, rtol: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices (into ta, into tb) of the times of `ta` that have a partner in `tb` within rtol × the largest time."""
    order = np.argsort(tb)
    sorted_b = tb[order]
    pos = np.searchsorted(sorted_b, ta)
    lo, hi = np.clip(pos - 1, 0, tb.size - 1), np.clip(pos, 0, tb.size - 1)
    nearest = np.where(np.abs(sorted_b[lo] - ta) <= np.abs(sorted_b[hi] - ta), lo, hi)
    tol = rtol * max(np.max(np.abs(ta)), np.max(np.abs(tb)), np.finfo(np.float64).tiny)
    keep = np.abs(sorted_b[nearest] - ta) <= tol
    return np.flatnonzero(keep), order[nearest[keep]]


def _relative(x: xr.DataArray, y: xr.DataArray, dims: Sequence[str]) -> xr.DataArray:
    return np.sqrt(((x - y) ** 2).sum(dims, skipna=False)) / np.sqrt((y**2).sum(dims, skipna=False))


def compare(a: xr.Dataset, b: xr.Dataset, time_rtol: float = 1e-9) -> xr.Dataset:
    """Continuous versus discrete: run `a` against the reference `b` on their common times.

    Errors relative to `b`: ``product_error`` = ‖W_a − W_b‖_F/‖W_b‖_F, ``loss_error`` = |ℓ_a − ℓ_b|/|ℓ_b|,
    ``singular_values_error`` = ‖σ_a − σ_b‖_2/‖σ_b‖_2. GD's global error against the flow is O(lr) (MATH.md §7).

    Parameters
    ----------
    a, b : dlnode Datasets, e.g. GD and the flow; runs align on their common depth/scale/seed.
    time_rtol : times match by value within time_rtol × the largest time (GD's t = step·lr is rounded
        differently from a flow's save times).

    Returns
    -------
    Dataset over the common runs and times, with a's and b's method and lr in its attrs.
    """
    names = ("product", "loss", "singular_values")
    for arg, ds in (("a", a), ("b", b)):
        if not isinstance(ds, xr.Dataset) or any(v not in ds for v in names) or "time" not in ds.dims:
            raise ValueError(f"{arg} must be a dlnode Dataset with time, product, loss and singular_values")
    ia, ib = _match_times(a["time"].values, b["time"].values, time_rtol)
    if ia.size == 0:
        raise ValueError(f"a and b share no time value within time_rtol={time_rtol:g}; save them on a common grid")
    sub_a = a[list(names)].isel(time=ia).reset_coords(drop=True)
    sub_b = b[list(names)].isel(time=ib).reset_coords(drop=True).assign_coords(time=sub_a["time"].values)
    sub_a, sub_b = xr.align(sub_a, sub_b, join="inner")
    if any(sub_a.sizes[d] == 0 for d in sub_a.dims):
        raise ValueError("a and b share no run (depth, scale, seed); compare runs with common coordinates")
    out = xr.Dataset(
        {
            "product_error": _relative(sub_a["product"], sub_b["product"], ("row", "col")),
            "loss_error": abs(sub_a["loss"] - sub_b["loss"]) / abs(sub_b["loss"]),
            "singular_values_error": _relative(sub_a["singular_values"], sub_b["singular_values"], ("k",)),
        }
    )
    for var in out.data_vars.values():
        var.attrs.update(units="1", long_name=f"relative {var.name.replace('_error', '')} error of a against b")
    attrs = {f"{k}_{arg}": str(ds.attrs.get(k, "")) for k in ("method", "flow") for arg, ds in (("a", a), ("b", b))}
    return out.assign_attrs(attrs, lr_a=float(a.attrs.get("lr", np.nan)), lr_b=float(b.attrs.get("lr", np.nan)))


def gd_errors(reference: xr.Dataset, runs: Sequence[xr.Dataset], time_rtol: float = 1e-9) -> xr.Dataset:
    """Largest error over time of each GD run against a reference (the flow), stacked along ``lr``.

    Parameters
    ----------
    reference : the flow's Dataset; saved at times the GD runs share (see `compare`).
    runs : at least two GD Datasets with distinct ``attrs["lr"]``.

    Returns
    -------
    Dataset over ``lr`` (ascending) and the runs' dims with the maxima over time of `compare`'s errors; a run
    that diverged has NaN errors, not a maximum over its surviving part.
    """
    if isinstance(runs, xr.Dataset) or len(runs) < 2:
        raise ValueError("runs must be a sequence of at least two GD Datasets with different attrs['lr']")
    lrs = [float(run.attrs.get("lr", np.nan)) for run in runs]
    if not all(np.isfinite(lr) and lr > 0 for lr in lrs) or len(set(lrs)) != len(lrs):
        raise ValueError(f"runs must have distinct positive attrs['lr']; got {lrs}; pass GD runs (method='gd')")
    errors = [compare(run, reference, time_rtol).max("time", skipna=False) for run in runs]
    out = xr.concat(errors, dim=xr.DataArray(lrs, dims="lr", name="lr"), combine_attrs="drop").sortby("lr")
    out["lr"].attrs.update(long_name="step size", units="flow time per step")
    return out.assign_attrs(description="max over shared times of the error of GD against the reference")


def fit_order(errors: xr.DataArray) -> xr.DataArray:
    """Slope of ln(error) against ln(lr) (`scipy.stats.linregress`), per run; NaN if an error is not positive."""

    def slope(lr: np.ndarray, err: np.ndarray) -> float:
        if not np.all(np.isfinite(err) & (err > 0)):
            return np.nan
        return float(scipy.stats.linregress(np.log(lr), np.log(err)).slope)

    order = xr.apply_ufunc(slope, errors["lr"], errors, input_core_dims=[["lr"], ["lr"]], vectorize=True)
    return order.rename("convergence_order").assign_attrs(long_name="fitted order d ln(error)/d ln(lr)", units="1")


def convergence_order(
    reference: xr.Dataset, runs: Sequence[xr.Dataset], variable: str = "product_error"
) -> xr.DataArray:
    """Fitted convergence order of GD towards the flow: slope of ln(max_t error) against ln(lr) (`linregress`).

    ≈ 1 against the exact gradient flow (explicit Euler is first order); ≈ 2 against the modified flow
    L + (lr/4)‖∇L‖² (Barrett & Dherin 2021, arXiv 2009.11162).

    Parameters
    ----------
    reference, runs : see `gd_errors`.
    variable : which error: ``product_error``, ``loss_error`` or ``singular_values_error``.

    Returns
    -------
    DataArray of slopes over the runs' dims (``.item()`` for a single run).
    """
    errors = gd_errors(reference, runs)
    if variable not in errors:
        raise ValueError(f"variable must be one of {sorted(errors.data_vars)}; got {variable!r}")
    return fit_order(errors[variable])
