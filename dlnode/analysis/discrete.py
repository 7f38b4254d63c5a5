"""Continuous versus discrete: GD against the flow on a shared time axis, and the fitted order in lr (docs/math.md §7).

GD's step k sits at flow time t = k·lr, so a GD run and a flow saved at those times compare pointwise. The global
error of GD against gradient flow is O(lr); against the modified flow of L + (lr/4)‖∇L‖² it is O(lr²).

References
----------
Barrett, Dherin (2021), "Implicit gradient regularization", arXiv 2009.11162.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.interpolate
import xarray as xr

from dlnode.analysis.variables import is_real
from dlnode.errors import DlnodeError, refused

__all__ = ["compare", "convergence_order", "gd_errors"]

RUN_DIMS = ("depth", "scale", "seed")


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


NAMES = ("product", "loss", "singular_values")
MIN_INTERPOLATION_POINTS = 7  # the error estimate fits a second spline through every other saved time (≥ 4 knots)


def _check_pair(a: xr.Dataset, b: xr.Dataset) -> None:
    for arg, ds in (("a", a), ("b", b)):
        if not isinstance(ds, xr.Dataset):
            raise refused(
                f"{arg} must be a dlnode Dataset with time, product, loss and singular_values; got a "
                f"{type(ds).__name__}; pass the whole dataset of dlnode.integrate, not one of its variables"
            )
        missing = [v for v in (*NAMES, "time") if v not in ds.variables]
        if missing or "time" not in ds.dims:
            raise refused(
                f"{arg} must be a dlnode Dataset with time, product, loss and singular_values; it lacks "
                f"{missing or ['the time dim']}; pass the dataset of dlnode.integrate (keep those variables)"
            )


def _plain_time(a: xr.Dataset, b: xr.Dataset) -> tuple[xr.Dataset, xr.Dataset]:
    """When one of the two runs on the end-to-end flow's rescaled time τ = N t (it has the coordinate ``t``) and the
    other on plain time, put the rescaled one on t, so a balanced per-layer run and its end-to-end flow compare."""
    rescaled = ["t" in ds.coords for ds in (a, b)]
    if rescaled[0] == rescaled[1]:
        return a, b
    out = []
    for arg, ds, is_rescaled in (("a", a, rescaled[0]), ("b", b, rescaled[1])):
        if is_rescaled:
            if ds.sizes["depth"] != 1 or not np.isfinite(ds["depth"].values).all():
                raise refused(
                    f"{arg} runs on the rescaled time tau = N t of the end-to-end flow at depths "
                    f"{[float(d) for d in ds['depth'].values]}, the other on plain time t; compare one finite depth "
                    f"at a time: {arg}.sel(depth=[N])"
                )
            ds = ds.assign_coords(time=ds["t"].isel(depth=0).values).drop_vars("t")
        out.append(ds)
    return out[0], out[1]


def _spline(t: np.ndarray, y: np.ndarray, at: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cubic spline S of y(t) at `at`, and Richardson's estimate |S − S_half|/(2⁴ − 1) of its error, S_half the spline
    through every other knot (a cubic spline's error is fourth order in the knot spacing)."""
    full = scipy.interpolate.CubicSpline(t, y, axis=0)(at)
    keep = np.unique(np.concatenate([np.arange(0, t.size, 2), [t.size - 1]]))
    half = scipy.interpolate.CubicSpline(t[keep], y[keep], axis=0)(at)
    return full, np.abs(full - half) / 15.0


def _interpolate_run(tb: np.ndarray, fb: np.ndarray, ta: np.ndarray, exact: np.ndarray) -> tuple[np.ndarray, ...]:
    """b's features (time, feature) at a's times: b's own value where it saved that time, else a cubic spline."""
    values, estimate = np.full((ta.size, fb.shape[1]), np.nan), np.zeros((ta.size, fb.shape[1]))
    valid = np.all(np.isfinite(fb), axis=1)
    last = tb[valid][-1] if valid.any() else -np.inf
    values[exact >= 0] = fb[exact[exact >= 0]]
    todo = (exact < 0) & (ta <= last)
    if todo.any():
        if valid.sum() < MIN_INTERPOLATION_POINTS:
            raise refused(
                f"b must have at least {MIN_INTERPOLATION_POINTS} saved times to be interpolated at a's times; got "
                f"{int(valid.sum())}; save b at a's times (saveat=a['time'].values)"
            )
        values[todo], estimate[todo] = _spline(tb[valid], fb[valid], ta[todo])
    values[ta > last] = np.nan
    return values, estimate


def _b_at(a: xr.Dataset, b: xr.Dataset, time_rtol: float) -> tuple[xr.Dataset, xr.Dataset, xr.Dataset, np.ndarray]:
    """a's variables at its times within b's span; b's there, with their interpolation-error estimates; which
    of those times b saved itself."""
    ta_all, tb = a["time"].values, b["time"].values
    tol = time_rtol * max(np.max(np.abs(ta_all)), np.max(np.abs(tb)), np.finfo(np.float64).tiny)
    inside = (ta_all >= tb.min() - tol) & (ta_all <= tb.max() + tol)
    if not inside.any():
        raise refused(
            f"a's times [{ta_all.min():g}, {ta_all.max():g}] lie outside b's [{tb.min():g}, {tb.max():g}]; compare "
            "runs over a common time span"
        )
    sub_a = a[list(NAMES)].isel(time=np.flatnonzero(inside)).reset_coords(drop=True)
    ia, ib = _match_times(sub_a["time"].values, tb, time_rtol)
    exact = np.full(sub_a.sizes["time"], -1)
    exact[ia] = ib
    sub_b = b[list(NAMES)].reset_coords(drop=True)
    sub_a, sub_b = xr.align(sub_a, sub_b, join="inner", exclude=["time"])
    if any(sub_a.sizes[d] == 0 for d in sub_a.dims):
        raise refused("a and b share no run (depth, scale, seed); compare runs with common coordinates")
    ta = sub_a["time"].values
    values, estimates = {}, {}
    runs = [d for d in RUN_DIMS if d in sub_b.dims]
    for name in NAMES:
        da = sub_b[name].transpose(*runs, "time", ...)
        flat = da.values.reshape(*da.shape[: len(runs)], tb.size, -1)
        out = np.empty((*flat.shape[:-2], ta.size, flat.shape[-1]))
        est = np.empty_like(out)
        for idx in np.ndindex(*flat.shape[:-2]):
            out[idx], est[idx] = _interpolate_run(tb, flat[idx], ta, exact)
        shape = (*da.shape[: len(runs)], ta.size, *da.shape[len(runs) + 1 :])
        coords = {d: da[d] for d in runs} | {"time": ta}
        values[name] = xr.DataArray(out.reshape(shape), dims=da.dims, coords=coords)
        estimates[name] = xr.DataArray(est.reshape(shape), dims=da.dims, coords=coords)
    return sub_a, xr.Dataset(values), xr.Dataset(estimates), exact >= 0


def compare(a: xr.Dataset, b: xr.Dataset, time_rtol: float = 1e-9, accuracy: float = 0.1) -> xr.Dataset:
    """Continuous versus discrete: run `a` against the reference `b` at every time `a` saved within `b`'s span.

    Errors relative to `b`: ``product_error`` = ‖W_a − W_b‖_F/‖W_b‖_F, ``loss_error`` = |ℓ_a − ℓ_b|/|ℓ_b|,
    ``singular_values_error`` = ‖σ_a − σ_b‖_2/‖σ_b‖_2. GD's global error against the flow is O(lr) (see
    docs/math.md, "Continuous versus discrete").

    An end-to-end run (time τ = N t, with the coordinate ``t``) against a per-layer one is compared on t, one depth
    at a time. Where `b` saved the same time (within `time_rtol`) its value is used; elsewhere `b` is interpolated
    by a cubic spline in time through its saved states. The spline's error is estimated by a second spline through every
    other saved time (Richardson's |S − S_half|/15, S being fourth order); wherever that estimate exceeds `accuracy`
    times the largest error reported for that run, the comparison is refused: a save grid too coarse for the
    dynamics (e.g. a log grid across a fast escape) cannot pass for a small error.

    Parameters
    ----------
    a, b : dlnode Datasets, e.g. GD and the flow; runs align on their common depth/scale/seed.
    time_rtol : times match by value within time_rtol × the largest time (GD's t = step·lr is rounded
        differently from a flow's save times).
    accuracy : largest interpolation error allowed, as a fraction of the run's largest reported error (floor 1e-12).

    Returns
    -------
    Dataset over the common runs and a's times within b's span, with a boolean coordinate ``interpolated``
    and a's and b's method, flow and lr in its attrs.

    Raises
    ------
    ValueError : when `b` cannot be interpolated at `a`'s times to that accuracy; the fix is to save `b` at `a`'s
        times (``saveat=a["time"].values``) or on a finer grid.
    """
    _check_pair(a, b)
    a, b = _plain_time(a, b)
    if not (is_real(accuracy) and 0 < accuracy <= 1):
        raise refused(f"accuracy must be in (0, 1], a fraction of the reported error; got {accuracy!r}; use 0.1")
    sub_a, sub_b, estimate, exact = _b_at(a, b, time_rtol)
    dims = {"product": ("row", "col"), "singular_values": ("k",)}
    out = xr.Dataset()
    for name in NAMES:
        if name in dims:
            error = _relative(sub_a[name], sub_b[name], dims[name])
            est = np.sqrt((estimate[name] ** 2).sum(dims[name])) / np.sqrt((sub_b[name] ** 2).sum(dims[name]))
        else:
            error, est = abs(sub_a[name] - sub_b[name]) / abs(sub_b[name]), estimate[name] / abs(sub_b[name])
        bad = (est > np.maximum(accuracy * error.max("time"), 1e-12)) & error.notnull()
        if bool(bad.any()):
            cell = bad.stack(cell=bad.dims)
            where = {d: c.values[int(cell.values.argmax())] for d, c in cell["cell"].coords.items() if d != "cell"}
            run = {d: v for d, v in where.items() if d != "time"}
            at_b = {d: v for d, v in where.items() if d in est.dims}  # b may lack a's dims (a's noise paths)
            raise refused(
                f"b's save grid is too coarse to interpolate its {name} at a's times: at time {where['time']:.6g} "
                f"the estimated interpolation error {float(est.sel(at_b)):.1e} exceeds accuracy={accuracy:g} x the "
                f"run's largest error ({float(error.max('time').sel(run)):.1e}); save b at a's times "
                "(saveat=a['time'].values) or on a finer grid"
            )
        out[f"{name}_error"] = error
    for var in out.data_vars.values():
        var.attrs.update(units="1", long_name=f"relative {var.name.replace('_error', '')} error of a against b")
    out = out.assign_coords(interpolated=("time", ~exact))
    attrs = {f"{k}_{arg}": str(ds.attrs.get(k, "")) for k in ("method", "flow") for arg, ds in (("a", a), ("b", b))}
    return out.assign_attrs(attrs, lr_a=_lr(a), lr_b=_lr(b))


def _lr(ds: xr.Dataset) -> float:
    """The step size of a run: ``attrs["lr"]``, or in a sweep over lr (``attrs["lr"] == "swept"``) the ``lr``
    coordinate of a selection of one value (NaN while the selection keeps several: they are a dim of the result)."""
    if "lr" in ds.coords and ds["lr"].size == 1:
        return float(ds["lr"].values.reshape(-1)[0])
    lr = ds.attrs.get("lr", np.nan)
    return float(lr) if is_real(lr) else np.nan


def _references(reference: xr.Dataset | Sequence[xr.Dataset], runs: Sequence[xr.Dataset], lrs: list[float]):  # noqa: ANN202
    """One reference per run: the same flow for all, or one per lr when the reference depends on lr."""
    if isinstance(reference, xr.Dataset):
        if reference.attrs.get("flow") == "modified":
            raise refused(
                f"reference is the modified flow for lr={_lr(reference):g}, which depends "
                f"on lr and cannot serve runs at lr {lrs}; pass one reference per run, in the runs' order"
            )
        return [reference] * len(runs)
    refs = list(reference)
    if len(refs) != len(runs) or not all(isinstance(r, xr.Dataset) for r in refs):
        raise refused(f"reference must be one Dataset or one per run ({len(runs)}); got {len(refs)} references")
    for ref, lr in zip(refs, lrs, strict=True):
        ref_lr = _lr(ref)
        if ref.attrs.get("flow") == "modified" and not np.isclose(ref_lr, lr, rtol=1e-12, atol=0):
            raise refused(f"reference for the run at lr={lr:g} is the modified flow for lr={ref_lr:g}; match them")
    return refs


def gd_errors(
    reference: xr.Dataset | Sequence[xr.Dataset],
    runs: Sequence[xr.Dataset],
    time_rtol: float = 1e-9,
    accuracy: float = 0.1,
) -> xr.Dataset:
    """Largest error over time of each GD run against a reference (the flow), stacked along ``lr``.

    Parameters
    ----------
    reference : the flow's Dataset, or one reference per run (the modified flow depends on lr: one per lr, in the
        runs' order). Each run is compared at its own times (see `compare`).
    runs : at least two GD Datasets with distinct ``attrs["lr"]``.
    time_rtol, accuracy : passed to `compare`.

    Returns
    -------
    Dataset over ``lr`` (ascending) and the runs' dims with the maxima over time of `compare`'s errors; a run
    that diverged has NaN errors, not a maximum over its surviving part.
    """
    if isinstance(runs, xr.Dataset) or not isinstance(runs, Sequence) or len(runs) < 2:
        got = f"{len(runs)} run(s)" if isinstance(runs, Sequence) else f"a {type(runs).__name__}"
        raise refused(
            f"runs must be a sequence of at least two GD Datasets with different attrs['lr']; got {got}; pass a list "
            "such as [dlnode.integrate(p, method='gd', lr=lr) for lr in (0.02, 0.01, 0.005)]"
        )
    if not all(isinstance(run, xr.Dataset) for run in runs):
        raise refused(
            f"runs must hold GD Datasets; got {[type(run).__name__ for run in runs]}; pass datasets of dlnode.integrate"
        )
    lrs = [_lr(run) for run in runs]
    if not all(np.isfinite(lr) and lr > 0 for lr in lrs) or len(set(lrs)) != len(lrs):
        raise refused(f"runs must have distinct positive attrs['lr']; got {lrs}; pass GD runs (method='gd')")
    refs = _references(reference, runs, lrs)
    errors, peaks = [], []
    for run, ref in zip(runs, refs, strict=True):
        try:
            error = compare(run, ref, time_rtol, accuracy).drop_vars("interpolated", errors="ignore")
        except DlnodeError as exc:  # each lr rounds a log grid to its own steps: say how to give one reference
            raise refused(
                f"reference cannot be compared with the GD run at lr={_lr(run):g}: {exc}. For convergence orders, "
                "integrate the reference with saveat=numpy.union1d(*[run['time'].values for run in runs]) (every "
                "run's times), or run GD with saveat on a grid of the largest lr's steps"
            ) from None
        errors.append(error.max("time", skipna=False))
        peaks.append(error.fillna(-np.inf).idxmax("time"))
    out = xr.concat(errors, dim=xr.DataArray(lrs, dims="lr", name="lr"), combine_attrs="drop").sortby("lr")
    when = xr.concat(peaks, dim=xr.DataArray(lrs, dims="lr", name="lr"), combine_attrs="drop").sortby("lr")
    for name in list(out.data_vars):
        out[f"{name}_time"] = when[name].assign_attrs(long_name=f"time at which {name} is largest", units="time")
    out["lr"].attrs.update(long_name="step size", units="flow time per step")
    return out.assign_attrs(description="max over a's times of the error of GD against the reference (the time of "
                            "each maximum in *_time: for small-init runs it sits at an escape)")  # fmt: skip


def fit_order(errors: xr.DataArray) -> xr.DataArray:
    """Slope of ln(error) against ln(lr) (`scipy.stats.linregress`), per run; NaN if an error is not positive."""

    import scipy.stats  # loaded with the first fit, not with every `import dlnode` (a third of a second)

    def slope(lr: np.ndarray, err: np.ndarray) -> float:
        if not np.all(np.isfinite(err) & (err > 0)):
            return np.nan
        return float(scipy.stats.linregress(np.log(lr), np.log(err)).slope)

    order = xr.apply_ufunc(slope, errors["lr"], errors, input_core_dims=[["lr"], ["lr"]], vectorize=True)
    return order.rename("convergence_order").assign_attrs(long_name="fitted order d ln(error)/d ln(lr)", units="1")


def convergence_order(
    reference: xr.Dataset | Sequence[xr.Dataset],
    runs: Sequence[xr.Dataset],
    variable: str = "product_error",
    time_rtol: float = 1e-9,
    accuracy: float = 0.1,
) -> xr.DataArray:
    """Fitted convergence order of GD towards the flow: slope of ln(max_t error) against ln(lr) (`linregress`).

    The error of each run is its largest over time (`gd_errors`, which also says when: ``*_error_time``); from a
    small initialisation it sits at an escape, where GD's O(lr) time shift of the escape dominates, so the fitted
    order there can read below the asymptotic 1 at moderate lr (e.g. 0.86 over lr 0.01-0.04).

    ≈ 1 against the exact gradient flow (explicit Euler is first order); ≈ 2 against the modified flow
    L + (lr/4)‖∇L‖² (Barrett & Dherin 2021, arXiv 2009.11162).

    Parameters
    ----------
    reference, runs : see `gd_errors`; against the modified flow, one reference per run (its lr).
    variable : which error: ``product_error``, ``loss_error`` or ``singular_values_error``.
    time_rtol, accuracy : passed to `compare`.

    Returns
    -------
    DataArray of slopes over the runs' dims (``.item()`` for a single run).
    """
    names = [f"{name}_error" for name in NAMES]
    if variable not in names:
        raise refused(f"variable must be one of {names}; got {variable!r}; use 'product_error'")
    errors = gd_errors(reference, runs, time_rtol, accuracy)
    return fit_order(errors[variable])
