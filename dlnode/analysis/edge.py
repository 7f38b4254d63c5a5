"""Gradient descent at finite step size: the edge of stability, divergence, and GD against the flows.

Functions Dataset in → DataArray/Dataset out (docs/finite-step.md): GD's time average over a stated window of
steps, where and how closely GD's sharpness sits at 2/η, the fraction of seeds that diverge over a grid of lr,
and the comparison of GD (raw and time-averaged) with the gradient, modified and central flows on one time axis.

References
----------
Cohen, Kaur, Li, Kolter, Talwalkar (2021), "Gradient descent on neural networks typically occurs at the edge of
stability", arXiv 2103.00065; Cohen, Damian, Talwalkar, Kolter, Lee (2024), "Understanding optimization in deep
learning with central flows", arXiv 2410.24206.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from dlnode.analysis.discrete import compare
from dlnode.errors import fail, shown
from dlnode.solvers.core import Status

__all__ = ["divergence_fraction", "edge_comparison", "edge_figure", "edge_summary", "time_average"]

RUN_DIMS = ("depth", "scale", "seed")
EDGE_BAND = 0.05  # GD "at the edge": its sharpness within 5 % of 2/η (the target of docs/finite-step.md)
AVERAGED = ("loss", "product", "singular_values")


def _lr_of(ds: xr.Dataset, argument: str) -> float:
    lr = ds.attrs.get("lr", np.nan)
    try:
        lr = float(lr)
    except (TypeError, ValueError):
        lr = np.nan
    if not np.isfinite(lr) or lr <= 0:
        fail(argument, "must be a GD run or a flow with its lr (attrs['lr'] > 0)", shown(f"attrs['lr'] = {lr!r}"),
             "pass a dataset of dlnode.integrate(..., method='gd', lr=...)")  # fmt: skip
    return lr


def _steps(ds: xr.Dataset, argument: str) -> np.ndarray:
    if ds.attrs.get("method") != "gd" or "step" not in ds.coords:
        fail(argument, "must be a GD run (method='gd', with its step coordinate)", shown(f"method "
             f"{ds.attrs.get('method')!r}"), "pass a dataset of dlnode.integrate(..., method='gd')")  # fmt: skip
    return np.asarray(ds["step"].values)


def time_average(gd: xr.Dataset, window: int = 2) -> xr.Dataset:
    """GD's loss, end-to-end matrix and singular values averaged over a centred window of `window` steps.

    GD on the edge oscillates from step to step along the top eigenvectors (a period-2 flip first, longer or
    irregular cycles later); the central flow predicts the trajectory averaged over those oscillations. The average
    at save k is the mean over saves k − ⌊window/2⌋ … k − ⌊window/2⌋ + window − 1, which needs the run saved at every
    step (``saveat=np.arange(steps + 1) * lr``); times within half a window of either end are NaN.

    Parameters
    ----------
    gd : a GD dataset saved at every step.
    window : steps per average (≥ 2; 2 averages a period-2 oscillation exactly).

    Returns
    -------
    The dataset with ``loss``, ``product`` and ``singular_values`` replaced by their averages and
    ``attrs["time_average_window"] = window`` (in steps).
    """
    steps = _steps(gd, "gd")
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 2:
        fail("window", "must be an integer number of steps >= 2", window, "pass e.g. window=2")
    if steps.size < window or np.any(np.diff(steps) != 1):
        fail("gd", f"must be saved at every step to be averaged over {window} steps",
             shown(f"{steps.size} saves, steps {steps[:4].tolist()}..."),
             "pass saveat=np.arange(n_steps + 1) * lr to dlnode.integrate")  # fmt: skip
    out = gd.copy()
    for name in AVERAGED:
        if name in gd:
            rolled = gd[name].rolling(time=int(window), center=True, min_periods=int(window)).mean()
            out[name] = rolled.assign_attrs(gd[name].attrs, time_average_window=int(window))
    return out.assign_attrs(time_average_window=int(window))


def _sharpness(ds: xr.Dataset, argument: str) -> xr.DataArray:
    if "sharpness" not in ds:
        fail(argument, "must hold the sharpness along time", shown("no variable 'sharpness'"),
             "integrate with sharpness=1")  # fmt: skip
    return ds["sharpness"].isel(eig=0)


def edge_summary(gd: xr.Dataset, band: float = EDGE_BAND) -> xr.Dataset:
    """Where GD's sharpness S reaches 2/η and how closely it stays there, per run.

    ``t_edge``: the first saved time with S ≥ (1 − band)·2/η (NaN if never); ``edge_deviation``: the median over the
    saves from then on of |S·η/2 − 1|; ``at_edge``: that median ≤ band; ``overshoot``: max S·η/2 − 1 after t_edge.
    """
    lr = _lr_of(gd, "gd")
    s = _sharpness(gd, "gd") * lr / 2.0
    reached = s >= 1.0 - band
    first = reached.argmax("time")
    any_reached = reached.any("time")
    t_edge = xr.where(any_reached, gd["time"].isel(time=first).reset_coords(drop=True), np.nan)
    after = gd["time"] >= t_edge
    deviation = abs(s - 1.0).where(after).median("time")
    overshoot = (s - 1.0).where(after).max("time")
    out = xr.Dataset({
        "t_edge": t_edge.assign_attrs(long_name="first time S >= (1 - band) 2/lr", units="time"),
        "edge_deviation": deviation.assign_attrs(long_name="median |S lr/2 - 1| after t_edge", units="1"),
        "overshoot": overshoot.assign_attrs(long_name="max S lr/2 - 1 after t_edge", units="1"),
    })  # fmt: skip
    out["at_edge"] = (out["edge_deviation"] <= band).assign_attrs(long_name=f"median within {band:g} of 2/lr")
    return out.assign_attrs(lr=lr, band=band)


def divergence_fraction(runs: xr.Dataset | Sequence[xr.Dataset]) -> xr.DataArray:
    """The fraction of seeds whose GD run diverged (status DIVERGED: the loss left every bound), per lr; of a
    stochastic method's runs (a ``path`` dim: SGD, label noise, their SDEs), the fraction of seeds × paths.

    A run whose loss oscillates or spikes and comes back is not diverged: only a non-finite loss or one past
    ``attrs["diverge"]``·max(ℓ₀, ℓ(W = 0)) is (the bound each dataset states in ``attrs["stop_rule"]``).

    Parameters
    ----------
    runs : GD datasets at different lr (each with its ``attrs["lr"]``), or one dataset with an ``lr`` dim (a sweep).

    Returns
    -------
    DataArray over ``lr`` (ascending) and the runs' depth and scale: diverged seeds / seeds (runs / runs over seed
    and path).
    """
    if isinstance(runs, xr.Dataset):
        if "lr" not in runs.dims:
            runs = [runs]
        else:
            status = runs["status"]
            return _fraction(status)
    runs = list(runs)
    if not runs or not all(isinstance(r, xr.Dataset) and "status" in r for r in runs):
        fail("runs", "must be GD datasets (or one dataset with an lr dim)", shown(f"{len(runs)} item(s)"),
             "pass [dlnode.integrate(p, method='gd', lr=lr) for lr in lrs]")  # fmt: skip
    lrs = [_lr_of(r, "runs") for r in runs]
    if len(set(lrs)) != len(lrs):
        fail("runs", "must have distinct lr", lrs, "pass one dataset per lr")
    status = xr.concat([r["status"] for r in runs], dim=xr.DataArray(lrs, dims="lr", name="lr"), join="outer")
    return _fraction(status.sortby("lr"))


def _fraction(status: xr.DataArray) -> xr.DataArray:
    """Diverged runs over the runs each lr ran, over seed (and path: each noise path is a run of its own); datasets
    with other seed lists are NaN where they did not run."""
    ran = status.notnull()
    over = [dim for dim in ("seed", "path") if dim in status.dims]
    diverged = (status == int(Status.DIVERGED)).where(ran, False).sum(over) / ran.sum(over)
    what = "seeds" if over == ["seed"] else "runs (seeds x paths)"
    return diverged.rename("divergence_fraction").assign_attrs(
        long_name=f"fraction of {what} whose loss left every bound (status diverged)", units="1"
    )


def edge_comparison(gd: xr.Dataset, flows: Mapping[str, xr.Dataset], window: int = 2) -> xr.Dataset:
    """Each flow against GD's raw trajectory and against GD's time average over `window` steps (`compare`).

    The central flow is compared by its predicted time-averaged loss (``loss_averaged``: L + ½⟨Σ, ∇²L⟩), the
    others by their loss. Errors are relative to GD (raw, or averaged), at every GD save in the flow's span.

    Save each flow at GD step times (e.g. ``saveat=gd["time"].values[::2]``): GD then contributes its own value at
    every one of them, never an interpolation across its oscillation.

    Returns
    -------
    Dataset with ``<flow>_loss_error_raw``, ``<flow>_loss_error_averaged`` (and the same for ``product``) over the
    runs and time; ``attrs["time_average_window"]`` states the window in steps.
    """
    averaged = time_average(gd, window)
    out = xr.Dataset()
    for name, flow in flows.items():
        if not isinstance(flow, xr.Dataset):
            fail("flows", "must map names to flow datasets", shown(f"{name!r}: {type(flow).__name__}"),
                 "pass e.g. {'gradient': ds_gf, 'central': ds_cf}")  # fmt: skip
        if "loss_averaged" in flow:
            flow = flow.assign(loss=flow["loss_averaged"])
        for label, reference in (("raw", gd), ("averaged", averaged)):
            errors = compare(flow, reference)  # at the flow's saves, each a GD step: GD's own value, relative
            for var in ("loss_error", "product_error"):
                out[f"{name}_{var}_{label}"] = errors[var].drop_vars("interpolated", errors="ignore")
    return out.assign_attrs(time_average_window=int(window), lr=_lr_of(gd, "gd"),
                            description="errors of each flow relative to GD (compare(flow, gd)): raw and "
                                        "time-averaged over the stated window of steps")  # fmt: skip


def edge_figure(gd: xr.Dataset, flows: Mapping[str, xr.Dataset], window: int = 2, path: str | None = None) -> Any:
    """GD (raw and averaged over `window` steps) with the flows in `flows` on one time axis: the loss (the central
    flow's predicted time-averaged loss dashed beside its own), and the sharpness S(t) with the line 2/η.

    Draws the first run (depth, scale, seed) of each dataset. Returns the `matplotlib.figure.Figure`; saved to
    `path` when given.
    """
    from dlnode.analysis.plot import figure, finish

    lr = _lr_of(gd, "gd")
    first = {d: 0 for d in RUN_DIMS}
    fig, axes = figure(1, 2, panel=(5.0, 3.6))
    ax_loss, ax_s = axes[0]
    t = gd["time"].values
    ax_loss.plot(t, gd["loss"].isel(first).values, color="0.75", lw=0.6, label="GD")
    ax_loss.plot(t, time_average(gd, window)["loss"].isel(first).values, color="k", lw=1.2,
                 label=f"GD, averaged over {window} steps")  # fmt: skip
    if "sharpness" in gd:
        ax_s.plot(t, gd["sharpness"].isel({**first, "eig": 0}).values, color="0.6", lw=0.6, label="GD")
    colors = {"gradient": "tab:blue", "modified": "tab:green", "central": "tab:red"}
    for name, flow in flows.items():
        color = colors.get(name, None)
        ft = flow["time"].values
        ax_loss.plot(ft, flow["loss"].isel(first).values, color=color, lw=1.0, label=f"{name} flow")
        if "loss_averaged" in flow:
            ax_loss.plot(ft, flow["loss_averaged"].isel(first).values, color=color, lw=1.4, ls="--",
                         label=f"{name} flow: predicted GD average")  # fmt: skip
        if "sharpness" in flow:
            ax_s.plot(ft, flow["sharpness"].isel({**first, "eig": 0}).values, color=color, lw=1.0, label=f"{name} flow")
    ax_s.axhline(2.0 / lr, color="k", ls=":", lw=1.0, label=r"$2/\eta$")
    ax_loss.set_yscale("log")
    ax_loss.set(xlabel=r"time $t$ = step $\times\ \eta$", ylabel="loss", title=f"loss, lr = {lr:g}")
    ax_s.set(xlabel=r"time $t$ = step $\times\ \eta$", ylabel=r"sharpness $S = \lambda_{max}(\nabla^2 L)$",
             title="sharpness")  # fmt: skip
    ax_loss.legend(fontsize=7)
    ax_s.legend(fontsize=7)
    return finish(fig, path)
