"""Cohen, Menon & Veraszto (2023): the infinite-depth limit of the deep linear network on matrix completion.

The balanced end-to-end flow of depth N, dW/dt = −A_N(∇ℓ(W)), on the rescaled time τ = N t, tends as N → ∞ to
dW/dτ = −A_∞(∇ℓ(W)), A_∞(Z) = ∫₀¹ (WWᵀ)^{1−s} Z (WᵀW)^s ds, with an O(1/N) error. The flow is a Riemannian
gradient flow whose volume form is explicit at every depth; the paper proposes that implicit regularisation is a
bias towards high state-space volume, which small singular values carry.

This study integrates one completion problem at depths 2, 4, 8, 16 and ∞ in one call (one shared τ grid), fits
the slope of sup_τ ‖W_N(τ) − W_∞(τ)‖_F/‖M‖_F against N on log axes (≈ −1), and follows the log-volume
``ds.dln.log_volume()`` (dlnode's convention: the density of the time-rescaled metric N·g_N, comparable across
depths up to a constant) along each trajectory, against the depth-1 interpolant (no implicit low-rank bias).

Time normalisation. dlnode's finite-depth operator A_N carries no 1/N (checked in dlnode's tests: the product of
balanced layers under the per-layer flow moves by −A_N(E)); depth ∞ is reached by rescaling time, τ = N t, so that
dW/dτ = −A_N(E)/N → −A_∞(E). The O(1/N) slope below is the numerical confirmation that this is the limit on that
time axis. We could not read the paper's own statement of its time normalisation (only its abstract was
reachable), so that it matches theirs is not confirmed here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

import dlnode as dln

from ._common import depth_label, figure, row, save_figure

NAME = "cmv2023"
TITLE = "Infinite-depth limit: O(1/N) approach of the end-to-end flow, log-volume along trajectories"
PAPER = "Cohen, Menon, Veraszto (2023), arXiv 2210.12497"

FULL = {
    "shape": (20, 20),
    "rank": 2,
    "observed": 160,
    "seed": 0,
    "depths": [2, 4, 8, 16],
    "scale": 0.1,
    "init_seed": 0,
    "saveat": 120,
    "method": "auto",
}
QUICK = {**FULL, "shape": (8, 8), "rank": 2, "observed": 40, "saveat": 80}

SLOPE_RANGE = (-1.25, -0.75)  # fitted exponent of sup_tau ||W_N - W_inf|| in N, against the O(1/N) rate
FIT_FROM = 4  # depths from which the asymptotic regime is fitted


def compute(config: dict) -> xr.Dataset:
    """Depths (and ∞) through the end-to-end flow in one call, the depth-1 interpolant, errors to ∞, volumes."""
    prob = dln.MatrixCompletion.random(
        config["shape"], config["rank"], config["observed"], config["seed"], normalize=True
    )
    depths = [*config["depths"], "inf"]
    ds = dln.integrate(
        prob,
        depth=depths,
        flow="end_to_end",
        init="balanced",
        scale=config["scale"],
        seed=config["init_seed"],
        saveat=config["saveat"],
        method=config["method"],
        progress=False,
    )
    ds = ds.isel(scale=0, seed=0)
    # the flow's limit against the plain least-squares flow from the same W(0): depth 1 on its own time axis
    flat = dln.integrate(
        prob,
        depth=1,
        init="balanced",
        scale=config["scale"],
        seed=config["init_seed"],
        saveat=config["saveat"],
        progress=False,
    ).isel(scale=0, seed=0)
    w = ds["product"]
    norm = float(np.linalg.norm(prob.target_matrix))
    gap = np.sqrt(((w - w.sel(depth=np.inf)) ** 2).sum(("row", "col"))) / norm
    sv_flat = flat["singular_values"].isel(depth=0, time=-1)
    out = xr.Dataset(
        {
            "loss": ds["loss"],
            "singular_values": ds["singular_values"],
            "status": ds["status"],
            "distance_to_inf": gap.assign_attrs(long_name="||W_N(tau) - W_inf(tau)||_F / ||M||_F", units="1"),
            "log_volume": ds.dln.log_volume().assign_attrs(units="1"),
            "effective_rank": ds.dln.effective_rank(),
            "recovery_error": ds.dln.recovery_error(),
            "depth1_singular_values": sv_flat.drop_vars(["depth", "time"], errors="ignore").assign_attrs(
                long_name="singular values of the depth-1 interpolant (same W(0))", units="1"
            ),
        }
    )
    lv_flat = {}
    for depth in ds["depth"].values:
        sub = xr.Dataset({"singular_values": sv_flat.expand_dims(depth=[depth])})
        lv_flat[depth] = float(dln.log_volume(sub).values[0])
    out["depth1_log_volume"] = (
        "depth",
        [lv_flat[d] for d in ds["depth"].values],
        {"long_name": "log-volume of the depth-1 interpolant in each depth's metric", "units": "1"},
    )
    out.attrs.update(
        {
            "shape": list(config["shape"]),
            "rank": int(config["rank"]),
            "observed": int(config["observed"]),
            "scale": float(config["scale"]),
            "time_rescaling": ds.attrs["time_rescaling"],
            "method": ds.attrs["method"],
            "loss_convention": prob.convention,
            "flow": "end_to_end, init balanced, W(0) = scale Q_out Q_in^T",
        }
    )
    return out


def slope(ds: xr.Dataset) -> float:
    """Fitted exponent p of sup_τ ‖W_N(τ) − W_∞(τ)‖ ∝ N^p over the finite depths ≥ FIT_FROM."""
    sup = ds["distance_to_inf"].max("time")
    finite = [d for d in ds["depth"].values if np.isfinite(d) and d >= FIT_FROM]
    return float(np.polyfit(np.log(finite), np.log(sup.sel(depth=finite).values), 1)[0])


def check(ds: xr.Dataset) -> list[dict]:
    """The O(1/N) slope, the low-rank trend with depth, and the volume of the limit against the depth-1 fit."""
    rows = []
    p = slope(ds)
    rows.append(
        row(
            "end-to-end flow -> infinite-depth flow at rate 1/N (tau = N t)",
            "A_N/N -> A_inf with an O(1/N) error",
            f"fitted exponent {p:.3f} in [{SLOPE_RANGE[0]}, {SLOPE_RANGE[1]}]",
            SLOPE_RANGE[0] <= p <= SLOPE_RANGE[1],
        )
    )
    erank = ds["effective_rank"].isel(time=-1)
    order = bool(np.all(np.diff(erank.values) <= 1e-6))
    rows.append(
        row(
            "effective rank at the end decreases with depth, inf lowest",
            "deeper -> lower rank",
            ", ".join(f"{depth_label(d)}: {v:.3f}" for d, v in zip(ds["depth"].values, erank.values, strict=True)),
            order,
        )
    )
    fit = float((ds["loss"].isel(time=-1) / ds["loss"].isel(time=0)).max())
    rows.append(
        row(
            "every depth fits the observed entries", "loss -> 0", f"max final/initial loss {fit:.1e} < 1e-6", fit < 1e-6
        )
    )
    lv_end = ds["log_volume"].isel(time=-1)
    higher = lv_end - ds["depth1_log_volume"]
    rows.append(
        row(
            "the flow's limit has higher log-volume than the depth-1 interpolant (each depth's metric)",
            "implicit regularisation = bias towards high volume",
            f"min difference {float(higher.min()):.1f}",
            bool((higher > 0).all()),
        )
    )
    return rows


def plot(ds: xr.Dataset, outdir: Path) -> list[Path]:
    """The distance to the ∞ flow against τ and its sup against N; log-volume and effective rank along τ."""
    fig, axes = figure(ncols=3, width=4.0)
    t = ds["time"].values
    pos = t > 0
    colors = {d: f"C{i}" for i, d in enumerate(ds["depth"].values)}
    for d in ds["depth"].values:
        if np.isfinite(d):
            axes[0, 0].loglog(t[pos], ds["distance_to_inf"].sel(depth=d)[pos], color=colors[d], label=depth_label(d))
        axes[0, 2].semilogx(t[pos], ds["log_volume"].sel(depth=d)[pos], color=colors[d], label=depth_label(d))
    axes[0, 0].set(xlabel=r"rescaled time $\tau = N t$", ylabel=r"$\|W_N - W_\infty\|_F / \|M\|_F$")
    axes[0, 0].legend(fontsize=7)
    finite = [d for d in ds["depth"].values if np.isfinite(d)]
    sup = ds["distance_to_inf"].max("time").sel(depth=finite)
    axes[0, 1].loglog(finite, sup, "o-", label=r"$\sup_\tau$ distance")
    ref = sup.sel(depth=finite[-1]).values * finite[-1] / np.array(finite, dtype=float)
    axes[0, 1].loglog(finite, ref, "k:", label=r"$\propto 1/N$")
    axes[0, 1].set(
        xlabel="depth N", ylabel=r"$\sup_\tau \|W_N - W_\infty\|_F / \|M\|_F$", title=f"fitted exponent {slope(ds):.2f}"
    )
    axes[0, 1].legend(fontsize=7)
    axes[0, 2].set(xlabel=r"rescaled time $\tau = N t$", ylabel="log-volume (metric N g_N; +const)")
    axes[0, 2].legend(fontsize=7)
    return [save_figure(fig, outdir, f"{NAME}-limit.png")]
