"""Cao et al. (2022), "A dynamics theory of implicit regularization in deep low-rank matrix factorization": deep
matrix factorisation of a rank-R target passes R saddle-point-escaping stages.

Their setting, as far as the public record shows it: deep matrix factorisation trained by discrete gradient
descent with a small step from a small initialisation, on a low-rank matrix reconstruction; the sizes, ranks, step
and initialisation scale of their experiment could not be found, and no code of theirs is public. So the study runs
full factorisation ℓ(W) = ½‖W − M‖²_F of a d×d target M = U diag(s_1 … s_R) Vᵀ with s_i = 4·2^{1−i} (rank R = 1 … 5),
deep linear networks of depth N from a small Gaussian initialisation of per-layer scale ε, under the flow and under
discrete GD (`method="gd"`) at several steps. `dlnode.analysis.stages` counts one stage per escape (a mode's σ_k
rising through half its final value); the claim is R stages. The stage durations follow the single-mode escape
times (Saxe et al. 2014): at depth 2 the first stage lasts ≈ ln(1/ε)/s_1 (linear in ln(1/ε)), at depth N ≥ 3
≈ u₀^{−(1−2/N)}/((N−2)s_1) with u₀ ∝ ε^N, i.e. ∝ ε^{−(N−2)}. GD's stage ends must match the flow's to first order
in lr; two near-equal singular values merge into one stage exactly when the closed-form rises overlap; a mode
below the detector's 5 % cut is learned but not counted; deep matrix completion of a 12×12 rank-3 matrix from 60 %
of its entries (Arora et al. 2019's construction) by GD and by the flow passes R stages too (`studies._cao2022_cases`,
docs/stages.md): depth 3 from ε = 1e-2, depth 2 from ε = 1e-12, since depth 2 separates its stages only as ln(1/ε)
(the stage ends ≈ ln(1/ε²)/s_k apart by ln(1/ε²)(1/s_{k+1} − 1/s_k), each rise O(1/s_k) wide, as the merge rows show
on factorisations): from 1e-2 two of its modes rise together on two of the five instances (2 stages), a negative
control in the tests.

Runs use `dlnode.integrate` with its defaults (run until converged, default save grid), one call per depth and
scale. The duration exponents are least-squares slopes through the first stage's end at every ε of ``sweep_scale``
(four scales from 3e-2 to 1e-3 in the quick mode, six from 3e-1 to 1e-3 in the full one), so scatter about the power
law fails them. Stage times are interpolated inside save cells of relative width ``resolution``; a duration row also
fails if any of its cells exceeds RESOLUTION_MAX = 25 % of the escape time. At depth 2, linear interpolation in
(ln t, ln σ) across a cell of width Δ in ln t errs by ≈ Δ²/8·|1 − t s_1| in ln t (the logistic rise), ≈ 4 % of t for
Δ = ln 1.25 and t s_1 ≈ 7.6 at ε = 1e-3: a slope error below 0.1/s_1 over the quick range, inside SLOPE_ATOL. The
default save grid gives cells near 5 %, well below the cap.
"""

from __future__ import annotations

import pathlib

import numpy as np
import xarray as xr

import dlnode as dln

from . import _cao2022_cases as cases
from ._common import figure, save_figure

NAME = "cao2022"
TITLE = "Incremental learning: a rank-R target is learned in R saddle-to-saddle stages"
PAPER = "Cao et al. (2022), arXiv 2212.14150"  # Cao, Qian, Huang, Chen, Gao, Dong, Guo, Qu

QUICK = {"rank": [1, 2, 3, 4, 5], "dim": 6, "depth": [2, 3], "scale": [1e-2, 1e-3], "seed": [0],
         "sweep_scale": [3e-2, 1e-2, 3e-3, 1e-3],
         "gd_rank": 3, "gd_depth": [2], "gd_lr": [0.02, 0.01], "gd_scale": 1e-1,
         "close_ratio": [0.95, 0.999], "close_u0": [1e-6, 1e-40], "close_saveat": 800,
         "cut_ratio": [0.03], "cut_u0": 1e-6,
         "cmp_shape": [12, 12], "cmp_rank": 3, "cmp_observed": 0.6, "cmp_seed": [1], "cmp_depth": [2, 3],
         "cmp_scale": {2: 1e-12, 3: 1e-2}, "cmp_lr": 0.01, "cmp_method": ["gd"]}  # fmt: skip
FULL = {"rank": [1, 2, 3, 4, 5], "dim": 8, "depth": [2, 3, 4], "scale": [1e-2, 1e-3], "seed": [0, 1, 2],
        "sweep_scale": [3e-1, 1e-1, 3e-2, 1e-2, 3e-3, 1e-3],
        "gd_rank": 5, "gd_depth": [2, 3, 4], "gd_lr": [0.01, 0.005, 0.0025], "gd_scale": 1e-1,
        "close_ratio": [0.5, 0.95, 0.999], "close_u0": [1e-3, 1e-6, 1e-12, 1e-40], "close_saveat": 800,
        "cut_ratio": [0.03, 0.01], "cut_u0": 1e-6,
        "cmp_shape": [12, 12], "cmp_rank": 3, "cmp_observed": 0.6, "cmp_seed": [0, 1, 2, 3, 4], "cmp_depth": [2, 3],
        "cmp_scale": {2: 1e-12, 3: 1e-2}, "cmp_lr": 0.01, "cmp_method": ["flow", "gd"]}  # fmt: skip

SLOPE_ATOL = 0.15  # fitted exponents of the first stage's duration against ε: O(1) corrections at these moderate ε
RESOLUTION_MAX = 0.25  # largest save-grid cell at an escape, relative to its time, for the duration fits


def target(rank: int, dim: int) -> dln.Factorization:
    """M = U diag(4, 2, 1, ½, ¼)[:rank] Vᵀ with Haar U, V (seed = rank)."""
    s = 4.0 * 2.0 ** -np.arange(rank)
    rng = np.random.default_rng(rank)
    u = np.linalg.qr(rng.standard_normal((dim, dim)))[0][:, :rank]
    v = np.linalg.qr(rng.standard_normal((dim, dim)))[0][:, :rank]
    return dln.Factorization((u * s) @ v.T)


def _stages(config: dict, rank: int, scales: list[float]) -> xr.Dataset:
    # One `integrate` call per (depth, scale), each on its default save grid: one grid for all would be laid out
    # for the slowest run (depth 4 from 1e-3 escapes after ~1e5) and start after the fast runs have escaped
    # (depth 2 after ~2), leaving their whole rise in its first cell.
    prob = target(rank, config["dim"])
    cells = []
    for depth in config["depth"]:
        for scale in scales:
            ds = dln.integrate(prob, depth=depth, scale=scale, seed=config["seed"], progress=False)
            found = dln.stages(ds)
            loss = ds["loss"].isel(time=-1) / ds["loss"].isel(time=0)  # checks the status: learned means small loss
            keep = found[["num_stages", "end", "duration", "resolution"]]
            cells.append(keep.assign(status=ds["status"], final_loss=loss).reset_coords(drop=True))
    return xr.combine_by_coords(cells, combine_attrs="drop_conflicts")


def compute(config: dict) -> xr.Dataset:
    """Stages of every (rank, depth, scale, seed); the first stage's end over a wider range of scales at rank 1."""
    runs = [_stages(config, r, config["scale"]) for r in config["rank"]]
    rank = xr.DataArray(config["rank"], dims="rank", attrs={"long_name": "target rank R", "units": "1"})
    out = xr.concat(runs, rank)
    out["target_s"] = ("k", 4.0 * 2.0 ** -np.arange(max(config["rank"])), {"long_name": "s_i", "units": "1"})
    if config["sweep_scale"]:
        sweep = _stages(config, 1, config["sweep_scale"]).rename(scale="sweep_scale")
        out["first_end"] = (
            sweep["end"]
            .isel(stage=0, drop=True)
            .assign_attrs(long_name="end of the first stage (rank 1)", units="time")
        )
        out["first_resolution"] = sweep["resolution"].isel(stage=0, drop=True)
    out.attrs.update(dim=config["dim"], description="dlnode.analysis.stages of full factorisations, M = U diag(s) V^T")
    extra = [cases.gd_vs_flow(config, target), cases.close_values(config), cases.below_cut(config)]
    extra += [cases.completion(config)] if config.get("cmp_seed") else []
    return xr.merge([out, *extra], combine_attrs="no_conflicts")


def check(ds: xr.Dataset) -> list[dict]:
    """Stages == R for every rank, depth, scale and seed; first-stage duration against ε; GD against the flow;
    near-equal singular values; a mode below the detector's cut."""
    rows = []
    # converged: by the status and, independently, by the final loss (the default criterion is 1e-8 of the initial)
    ok = (ds["status"] == dln.Status.CONVERGED) & (ds["final_loss"] <= 1e-6)
    for r in ds["rank"].values:
        got, good = ds["num_stages"].sel(rank=r), ok.sel(rank=r)
        counts = sorted(set(got.where(good).values[good.values].ravel().astype(int).tolist()))
        failed = int((~good).sum())
        note = (
            f"; {failed} run(s) not converged (status or final loss > 1e-6 of the initial), left out" if failed else ""
        )
        rows.append({
            "claim": f"rank-{r} target: {r} saddle-to-saddle stage(s)", "paper": f"{r} stage(s)",
            "ours": f"{counts} over depths {', '.join(str(int(d)) for d in ds['depth'].values)}, "
            f"{got.sizes['scale']} scales, {got.sizes['seed']} seeds" + note,
            "passed": bool((got.where(good) == r).sum() == good.sum()) and not failed,
        })  # fmt: skip
    rows.extend(_duration_rows(ds))
    return rows + cases.gd_rows(ds) + cases.close_rows(ds) + cases.cut_rows(ds) + cases.completion_rows(ds)


def _duration_rows(ds: xr.Dataset) -> list[dict]:
    """First stage: ∝ ln(1/ε) at depth 2 (slope of end against ln(1/ε) ≈ 1/s_1), ∝ ε^{−(N−2)} at depth N ≥ 3."""
    name = "first_end" if "first_end" in ds else "end"
    dim = "sweep_scale" if name == "first_end" else "scale"
    first = ds[name] if name == "first_end" else ds["end"].sel(rank=1).isel(stage=0)
    first = first.mean("seed")
    eps = first[dim].values.astype(float)
    # the save-grid cell holding each escape, relative to it: a fit on escapes the grid did not resolve means nothing
    res = ds["first_resolution"] if name == "first_end" else ds["resolution"].sel(rank=1).isel(stage=0)
    coarse = float(res.max())
    rows = []
    s1 = float(ds["target_s"][0])
    for depth in first["depth"].values.astype(int):
        y = first.sel(depth=depth).values
        if depth == 2:
            slope = float(np.polyfit(np.log(1 / eps), y, 1)[0])
            expected, passed = 1 / s1, abs(slope * s1 - 1) <= SLOPE_ATOL
            ours = f"d t_1 / d ln(1/eps) = {slope:.3f}"
        else:
            slope = float(np.polyfit(np.log(eps), np.log(y), 1)[0])
            expected, passed = -(depth - 2), abs(slope + depth - 2) <= SLOPE_ATOL * (depth - 2)
            ours = f"d ln t_1 / d ln eps = {slope:.2f}"
        rows.append({
            "claim": f"depth {depth}: first stage lasts " + ("~ ln(1/eps)/s_1" if depth == 2 else "~ eps^-(N-2)"),
            "paper": f"{expected:.3g}",
            "ours": ours + f" over eps = {eps.min():.0e} to {eps.max():.0e} (save cells <= {coarse:.0%} of the times)",
            "passed": bool(passed) and coarse <= RESOLUTION_MAX,
        })  # fmt: skip
    return rows


def plot(ds: xr.Dataset, outdir: pathlib.Path) -> list[pathlib.Path]:
    """Stage ends against the target rank (one panel per depth), and the first stage's end against ε."""
    from matplotlib.ticker import LogFormatterSciNotation, LogLocator, NullFormatter

    depths = ds["depth"].values.astype(int)
    fig, axes = figure(ncols=len(depths) + 1, width=3.3, height=3.2)
    axes = axes[0]
    scale = float(ds["scale"].min())
    for ax, depth in zip(axes[:-1], depths, strict=True):
        ends = ds["end"].sel(depth=depth, scale=scale).isel(seed=0)
        for m in range(int(ds["rank"].max())):
            ax.plot(ds["rank"], ends.isel(stage=m), "o-", color=f"C{m}", label=f"stage {m + 1}")
        ax.set(yscale="log", xlabel="target rank R", title=f"depth {depth}, scale {scale:g}, seed 0")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(LogFormatterSciNotation(labelOnlyBase=False))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(ds["rank"].values)
    axes[0].set_ylabel("end of stage (escape time) [flow time]")
    axes[0].legend(fontsize="small", ncols=2)
    ax = axes[-1]
    first = ds["first_end"] if "first_end" in ds else ds["end"].sel(rank=1).isel(stage=0)
    dim = "sweep_scale" if "first_end" in ds else "scale"
    for i, depth in enumerate(depths):
        ax.plot(first[dim], first.sel(depth=depth).mean("seed"), "o-", color=f"C{i}", label=f"depth {depth}")
    ax.set(xscale="log", yscale="log", xlabel=r"per-layer init scale $\varepsilon$", title="first stage, rank 1")
    ax.set_ylabel("duration [flow time]")
    ax.legend(fontsize="small")
    return [save_figure(fig, outdir, f"{NAME}-stages.png"), _plot_gd(ds, outdir)]


def _plot_gd(ds: xr.Dataset, outdir: pathlib.Path) -> pathlib.Path:
    """|t_GD − t_flow| of each stage's end against lr, one panel per depth, with the first-order line."""
    from matplotlib.ticker import NullFormatter

    depths = ds["gd_depth"].values.astype(int)
    fig, axes = figure(ncols=len(depths), width=3.3, height=3.2)
    lr = ds["gd_lr"].values.astype(float)
    for ax, depth in zip(axes[0], depths, strict=True):
        gap = abs(ds["gd_end"] - ds["flow_end"]).sel(gd_depth=depth)
        rank = int(ds.attrs["gd_rank"])
        for m in range(rank):
            ax.plot(lr, gap.isel(gd_stage=m).values, "o-", color=f"C{m}", label=f"stage {m + 1}")
        low = float(gap.isel(gd_stage=slice(0, rank)).min())
        ax.plot(lr, 0.5 * low * lr / lr.min(), "k:", label="slope 1")
        title = f"depth {depth}, rank {rank}, scale {ds.attrs['gd_scale']:g}"
        ax.set(xscale="log", yscale="log", xlabel="GD step size lr", title=title)
        ax.set_xticks(lr, [f"{v:g}" for v in lr])
        ax.xaxis.set_minor_formatter(NullFormatter())
    axes[0, 0].set_ylabel("|end of stage: GD - flow| [flow time]")
    axes[0, 0].legend(fontsize="small")
    return save_figure(fig, outdir, f"{NAME}-gd.png")
