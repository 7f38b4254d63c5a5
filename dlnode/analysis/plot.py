"""Figures from dlnode datasets.

Every function takes a dataset (or an analysis result), returns a `matplotlib.figure.Figure` and, given `path`,
saves it there. On a lazily opened sweep store each figure loads only what it draws: the variable it plots (one
panel at a time for `singular_values`) or the reduced result of its analysis, never the whole store. A sweep's
swept axes (lr, method, flow, init) are not drawn: select one value first, e.g. ``ds.sel(lr=0.1)``.

Figures are drawn on the Agg canvas directly, without pyplot: importing this module changes no global backend (an
interactive session keeps its own) and no figure stays registered in pyplot's figure manager.
`PLOTS` maps the names that ``dlnode plot PATH --kind KIND`` accepts to these functions.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import ListedColormap, Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullFormatter

from dlnode.analysis import spectra as analysis
from dlnode.analysis.curvature import sharpness_bounds, sharpness_of
from dlnode.analysis.discrete import fit_order
from dlnode.analysis.variables import require_variable
from dlnode.data.outputs import figure_metadata
from dlnode.data.schema import GRID_DIMS, problem_from
from dlnode.errors import refused
from dlnode.problems.kinds import Problem, Regression

__all__ = ["PLOTS", "effective_rank", "figure", "finish", "gd_error", "loss", "rank_staircase", "sharpness"]
__all__ += ["singular_values"]

TIME_LABEL = r"time $t$ [flow time; GD: step $\times$ lr]"
RUN_DIMS = ("depth", "scale", "seed", "path")  # a noise path (method="sgd", …) is drawn as a run of its own
LINESTYLES = ("-", "--", ":", "-.")


def figure(nrows: int = 1, ncols: int = 1, panel: tuple[float, float] = (4.2, 3.2)) -> tuple[Figure, np.ndarray]:
    """A constrained-layout figure on its own Agg canvas (no pyplot) and its (nrows, ncols) array of axes.

    `panel` is the (width, height) of each panel in inches; the figure is ncols × width by nrows × height.
    """
    fig = Figure(figsize=(panel[0] * ncols, panel[1] * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def finish(fig: Figure, path: str | Path | None, dpi: int = 120) -> Figure:
    """Save `fig` to `path` (PNG, PDF, SVG … by its suffix) at `dpi` when a path is given; return `fig`. The file
    carries dlnode's figure marker where its format has metadata, so a later ``--overwrite`` may replace it."""
    if path is not None:
        fig.savefig(path, dpi=dpi, metadata=figure_metadata(path))
    return fig


def _values(da: xr.DataArray, dim: str) -> list[Any]:
    return list(da[dim].values) if dim in da.dims else [None]


def _selection(ds: xr.Dataset, dim: str) -> str:
    """How to select the first value of `dim`: ``ds.sel(lr=0.1)``; a dict for ``method``, which is also the name of
    `xarray.Dataset.sel`'s own keyword."""
    first = ds[dim].values[0].item() if dim in ds.coords else 0
    return f"ds.sel({{{dim!r}: {first!r}}})" if dim == "method" else f"ds.sel({dim}={first!r})"


def _drawable(ds: xr.Dataset, kind: str) -> xr.Dataset:
    """`ds` without the sweep's swept axes of one value (lazily); a one-line error naming a swept axis of several."""
    for dim in GRID_DIMS:
        if isinstance(ds, xr.Dataset) and dim in ds.dims and ds.sizes[dim] > 1:
            raise refused(f"plot {kind}: ds has the swept dim {dim!r} ({ds.sizes[dim]} values), which the figure "
                             f"does not draw; select one first, e.g. {_selection(ds, dim)}")  # fmt: skip
    return ds.isel({d: 0 for d in GRID_DIMS if d in ds.dims}) if isinstance(ds, xr.Dataset) else ds


def _runs(da: xr.DataArray, dims: tuple[str, ...] = RUN_DIMS) -> Iterator[tuple[dict, xr.DataArray]]:
    """(coordinates, sub-array) of every combination of the run dims that `da` has."""
    present = [d for d in dims if d in da.dims]
    for values in itertools.product(*(da[d].values for d in present)):
        where = dict(zip(present, values, strict=True))
        yield where, da.sel(where)


def _depth_label(depth: Any) -> str:
    return "all depths" if depth is None else ("depth ∞" if not np.isfinite(depth) else f"depth {depth:g}")


def _colors(n: int, name: str = "viridis") -> list[Any]:
    return [colormaps[name](x) for x in np.linspace(0.0, 0.85, max(n, 1))]


def _positive_time(da: xr.DataArray) -> xr.DataArray:
    return da.sel(time=da["time"] > 0)


def loss(ds: xr.Dataset, path: str | Path | None = None) -> Figure:
    """Loss ℓ(W(t)) on log-log axes: colour = depth, line style = scale, one line per seed (and noise path)."""
    ds = _drawable(ds, "loss")
    da = _positive_time(require_variable(ds, "loss")).compute()  # what it draws, loaded once
    fig, axes = figure()
    ax = axes[0, 0]
    depths, scales = _values(da, "depth"), _values(da, "scale")
    colors = _colors(len(depths))
    labelled = set()
    for where, y in _runs(da):
        i, j = depths.index(where.get("depth")), scales.index(where.get("scale"))
        label = None if (i, j) in labelled else f"{_depth_label(depths[i])}, scale {scales[j]}"
        labelled.add((i, j))
        ax.plot(y["time"], y, color=colors[i], ls=LINESTYLES[j % 4], lw=1.0, alpha=0.8, label=label)
    problem = json.loads(ds.attrs.get("problem", "{}")) if isinstance(ds.attrs.get("problem"), str) else {}
    ax.set(xscale="log", yscale="log", xlabel=_time_label(ds), ylabel=f"loss {problem.get('loss', 'l(W)')}")
    ax.legend(fontsize="small")
    return finish(fig, path)


def _time_label(ds: xr.Dataset) -> str:
    if ds.attrs.get("flow") == "end_to_end":
        return r"rescaled time $\tau = N t$ [end-to-end flow]"
    return TIME_LABEL


LEGEND_MAX = 6  # more singular values than this are coloured by index with a colour bar, not a legend


def singular_values(ds: xr.Dataset, path: str | Path | None = None) -> Figure:
    """Singular values σ_k(W(t)) on log-log axes; rows = scale, columns = depth, colour = k, one line per seed.

    Up to six singular values are named in a legend; more are coloured by their index k on one colour bar.
    """
    ds = _drawable(ds, "singular_values")
    da = _positive_time(require_variable(ds, "singular_values"))
    depths, scales = _values(da, "depth"), _values(da, "scale")
    fig, axes = figure(len(scales), len(depths))
    n_k = da.sizes["k"]
    colors = _colors(n_k, "plasma")
    for where, panel in _runs(da, ("scale", "depth")):
        i, j = scales.index(where.get("scale")), depths.index(where.get("depth"))
        ax = axes[i, j]
        panel = panel.compute()  # one panel's spectra at a time: a lazily opened store stays on disk
        for s, (_, y) in enumerate(_runs(panel, ("seed", "path"))):
            for k in range(n_k):
                label = rf"$\sigma_{{{k + 1}}}$" if s == 0 and n_k <= LEGEND_MAX else None
                ax.plot(y["time"], y.isel(k=k), color=colors[k], lw=1.0, alpha=0.8, label=label)
        ax.set(xscale="log", yscale="log", title=f"{_depth_label(depths[j])}, scale {scales[i]}")
        ax.title.set_fontsize("medium")
    for ax in axes[-1]:
        ax.set_xlabel(_time_label(ds))
    for ax in axes[:, 0]:
        ax.set_ylabel(r"singular value $\sigma_k(W)$ [units of W]")
    if n_k <= LEGEND_MAX:
        axes[0, -1].legend(fontsize="small")
    else:
        mappable = ScalarMappable(Normalize(0.5, n_k + 0.5), ListedColormap(colors))
        mappable.set_array([])
        bar = fig.colorbar(mappable, ax=axes, shrink=0.9, pad=0.01)
        bar.set_label(r"index $k$ of $\sigma_k$ (1 = largest)")
        bar.ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    return finish(fig, path)


def rank_staircase(ds: xr.Dataset, level: float = 0.5, learned: float = 0.05, path: str | Path | None = None) -> Figure:
    """Modes learned (σ_k at or above `level` × its final value) against log time, with the stages' ends.

    One panel per depth, colour = scale, one line per seed; circles mark each stage's end (see
    `dlnode.analysis.stages.stages`) at the number of modes learned after it; the loss is drawn in grey on the right
    axis.
    """
    ds = _drawable(ds, "rank_staircase")
    count = _positive_time(analysis.modes_learned(ds, level, learned)).compute()  # reduced results, loaded once
    found = analysis.stages(ds, level, learned).compute()
    loss_da = _positive_time(require_variable(ds, "loss")).compute()
    depths, scales = _values(count, "depth"), _values(count, "scale")
    top = max(float(found["rank"].max()) if found["rank"].notnull().any() else 1.0, 1.0)
    fig, axes = figure(1, len(depths))
    colors = _colors(len(scales))
    twins = [ax.twinx() for ax in axes[0]]
    for where, r in _runs(count):
        j, i = depths.index(where.get("depth")), scales.index(where.get("scale"))
        ax = axes[0, j]
        ax.plot(r["time"], r, drawstyle="steps-post", color=colors[i], lw=1.2, alpha=0.8)
        st = found.sel(where)
        ax.plot(st["end"], st["rank"], "o", color=colors[i], mfc="none")
        twins[j].plot(loss_da["time"], loss_da.sel(where), color="0.6", lw=0.8, ls="--")
    for j, ax in enumerate(axes[0]):
        ax.set(xscale="log", xlabel=_time_label(ds), title=_depth_label(depths[j]), ylim=(-0.3, top + 0.3))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        twins[j].set(yscale="log")
        if j:  # one loss scale for all depths, labelled on the right
            twins[j].sharey(twins[0])
            twins[j - 1].tick_params(labelright=False)
    axes[0, 0].set_ylabel(rf"modes learned ($\sigma_k \geq$ {level:g} $\sigma_k$(end))")
    twins[-1].set_ylabel(r"loss $\ell(W)$ (grey, dashed)")
    handles = [axes[0, 0].plot([], [], color=c, label=f"scale {s}")[0] for c, s in zip(colors, scales, strict=True)]
    axes[0, 0].legend(handles=handles + axes[0, 0].plot([], [], "ko", mfc="none", label="stage end"), fontsize="small")
    return finish(fig, path)


def sharpness(ds: xr.Dataset, problem: Problem | None = None, path: str | Path | None = None) -> Figure:
    """Sharpness at the final weights against depth, with Marion–Chizat's S_min and upper line when they apply.

    Uses the dataset's ``sharpness`` variable when it has one (saved along the run: its top eigenvalue at the last
    save), else computes it on `problem` (default: the problem stored in the dataset). The bounds are drawn for a
    univariate `Regression`, in dlnode's ½-loss convention (see `sharpness_bounds`).
    """
    ds = _drawable(ds, "sharpness")
    if problem is None and "problem_fields" in ds.attrs:
        problem = problem_from(ds)
    if "sharpness" in ds:  # saved along the run (``sharpness=k``): the top eigenvalue at each run's last save
        values = ds["sharpness"]
        values = values.isel(eig=0) if "eig" in values.dims else values
        values = analysis.final_values(values) if "time" in values.dims else values
    elif problem is None:
        raise refused("problem is required to compute the sharpness; or pass a dataset with a 'sharpness' variable")
    else:
        values = sharpness_of(ds.drop_vars("weights", errors="ignore"), problem)
    values = values.sel(depth=np.isfinite(values["depth"])).compute()
    fig, axes = figure()
    ax = axes[0, 0]
    scales = _values(values, "scale")
    colors = _colors(len(scales))
    for i, scale in enumerate(scales):
        s = values if scale is None else values.sel(scale=scale)
        points = s.stack(run=[d for d in s.dims if d != "depth"]) if s.ndim > 1 else s.expand_dims(run=[0])
        ax.plot(s["depth"], points.transpose("depth", ...), "o", color=colors[i], alpha=0.6, mfc="none")
        ax.plot(s["depth"], points.mean("run"), "-", color=colors[i], label=f"scale {scale}")
    if isinstance(problem, Regression) and problem.d_out == 1:
        bounds = sharpness_bounds(problem, values["depth"].values.astype(int))
        ax.plot(bounds["depth"], bounds["s_min"], "k-", label=r"$S_{\min} = L a \|w^*\|^{2-2/L}$")
        ax.plot(bounds["depth"], bounds["upper"], "k--", label=r"$4 L \Lambda \|w^*\|^{2-2/L}$")
        ax.plot(bounds["depth"], bounds["aligned"], "k:", label="balanced aligned minimiser")
    ax.set(xlabel="depth $L$", ylabel=r"sharpness $\lambda_{\max}(\nabla^2 L)$ [1/time]", yscale="log")
    ax.set_title(r"final weights; loss with $\frac{1}{2}$ (dlnode)", fontsize="medium")
    ax.legend(fontsize="small")
    return finish(fig, path)


def effective_rank(ds: xr.Dataset, path: str | Path | None = None) -> Figure:
    """Effective rank of W at each run's last reached time against depth (mean ± std over seeds and noise paths; ∞ at
    the right)."""
    ds = _drawable(ds, "effective_rank")
    erank = analysis.final_values(analysis.effective_rank(ds)).compute()  # the reduced result, loaded once
    depth = erank["depth"].values
    finite = depth[np.isfinite(depth)]
    position = np.where(np.isfinite(depth), depth, (finite.max() + 1) if finite.size else 1.0)
    erank = erank.assign_coords(position=("depth", position))
    fig, axes = figure()
    ax = axes[0, 0]
    scales = _values(erank, "scale")
    for color, scale in zip(_colors(len(scales)), scales, strict=True):
        e = erank if scale is None else erank.sel(scale=scale)
        over = [d for d in ("seed", "path") if d in e.dims]
        mean, std = e.mean(over), e.std(over)  # over nothing: the value itself, and 0
        ax.errorbar(e["position"], mean, yerr=std, marker="o", color=color, capsize=3, label=f"scale {scale}")
    ax.set_xticks(position, [("∞" if not np.isfinite(d) else f"{d:g}") for d in depth])
    ax.set(xlabel="depth $N$", ylabel=r"effective rank $e^{-\sum_i p_i \ln p_i}$, $p = \sigma / \sum \sigma$")
    ax.legend(fontsize="small")
    return finish(fig, path)


def gd_error(errors: xr.Dataset, variable: str = "product_error", path: str | Path | None = None) -> Figure:
    """Largest GD-vs-flow error against the step size (log-log) with the fitted order.

    `errors` is the Dataset of `dlnode.analysis.curvature.gd_errors`; `variable` one of its errors.
    """
    da = require_variable(errors, variable)
    if "lr" not in da.dims:
        raise refused("errors must have an 'lr' dim; pass the result of dlnode.analysis.curvature.gd_errors")
    order = fit_order(da)
    fig, axes = figure()
    ax = axes[0, 0]
    log_lr = np.log(da["lr"].values)
    runs = list(_runs(da))
    for (where, e), color in zip(runs, _colors(len(runs)), strict=True):
        slope = float(order.sel(where))
        intercept = np.mean(np.log(e.values)) - slope * np.mean(log_lr)  # the least-squares line's
        name = ", ".join(f"{k} {v:g}" for k, v in where.items())
        ax.plot(da["lr"], e, "o", color=color)
        ax.plot(da["lr"], np.exp(intercept + slope * log_lr), "-", color=color, label=f"{name}: slope {slope:.2f}")
    ax.set(xscale="log", yscale="log", xlabel="step size lr [flow time per step]")
    ax.xaxis.set_minor_formatter(NullFormatter())  # after set_xscale, which installs its own
    ax.set_ylabel(f"max$_t$ relative {variable.replace('_error', '').replace('_', ' ')} error")
    ax.legend(fontsize="small")
    return finish(fig, path)


PLOTS = {
    "loss": loss,
    "singular_values": singular_values,
    "rank_staircase": rank_staircase,
    "sharpness": sharpness,
    "effective_rank": effective_rank,
    "gd_error": gd_error,
}
