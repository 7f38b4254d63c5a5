"""Cohen, Menon & Veraszto (2023): the infinite-depth limit of the deep linear network on matrix completion.

The balanced end-to-end flow of depth N, dW/dt = −A_N(∇ℓ(W)), on the rescaled time τ = N t, tends as N → ∞ to
dW/dτ = −A_∞(∇ℓ(W)), A_∞(Z) = ∫₀¹ (WWᵀ)^{1−s} Z (WᵀW)^s ds, with an O(1/N) error. The flow is a Riemannian
gradient flow whose volume form is explicit at every depth; the paper proposes that implicit regularisation is a
bias towards high state-space volume, which small singular values carry.

This study integrates one completion problem at several depths and ∞ in one call (one shared τ grid), fits
the exponent of ‖W_N(τ) − W_∞(τ)‖_F/‖M‖_F in N at the last saved τ (≈ −1 once N ≫ |ln σ|), does the same for
the volume forms (log vol_N → log vol_∞ at the ∞ run's end state), and follows the log-volume
``ds.dln.log_volume()`` (dlnode's convention: the density of the time-rescaled metric N·g_N, comparable across
depths up to a constant) along each trajectory. The volume-bias proposal itself is reported, not checked:
measured in the depth-∞ metric, the end state of depth 2 has the higher log-volume here (its unlearned singular
values end smaller), see ``final_volume_inf_metric``.

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
    "depths": [2, 4, 8, 16, 32, 64, 128, 256, 1024],
    "scale": 0.1,
    "init_seed": 0,
    "saveat": 120,
    "method": "auto",
}
QUICK = {**FULL, "shape": (10, 10), "rank": 2, "observed": 60, "depths": [2, 4, 16, 64, 256], "saveat": 80}

SLOPE_RANGE = (-1.2, -0.8)  # fitted exponent in N of the distances to depth inf, against the O(1/N) rate
FIT_FROM = 16  # depths from which the asymptotic regime is fitted: the expansion is in ln(sigma)/N, ln 0.1 = -2.3


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
        scale_of="product",
        seed=config["init_seed"],
        saveat=config["saveat"],
        method=config["method"],
        progress=False,
    )
    ds = ds.isel(scale=0, seed=0)
    w = ds["product"]
    norm = float(np.linalg.norm(prob.target_matrix))
    gap = np.sqrt(((w - w.sel(depth=np.inf)) ** 2).sum(("row", "col"))) / norm
    out = xr.Dataset(
        {
            "loss": ds["loss"],
            "singular_values": ds["singular_values"],
            "status": ds["status"],
            "distance_to_inf": gap.assign_attrs(long_name="||W_N(tau) - W_inf(tau)||_F / ||M||_F", units="1"),
            "log_volume": ds.dln.log_volume().assign_attrs(units="1"),
            "effective_rank": ds.dln.effective_rank(),
            "recovery_error": ds.dln.recovery_error(),
        }
    )
    # one matrix, every metric: the depth-inf run's end state measured by the volume form of each depth
    end = ds["singular_values"].sel(depth=np.inf).isel(time=-1)
    same = xr.Dataset({"singular_values": end.drop_vars("depth").expand_dims(depth=ds["depth"].values)})
    out["volume_of_limit"] = dln.log_volume(same).assign_attrs(
        long_name="log-volume of W_inf(end) in the metric of each depth (N g_N; g_inf)", units="1"
    )
    # every end state measured by the depth-inf volume form (a common yardstick)
    ends = ds["singular_values"].isel(time=-1)
    yard = [dln.log_volume(xr.Dataset({"singular_values": ends.sel(depth=[d]).assign_coords(depth=[np.inf])}))
            for d in ds["depth"].values]  # fmt: skip
    out["final_volume_inf_metric"] = (
        "depth",
        np.array([float(v.values[0]) for v in yard]),
        {"long_name": "log-volume of each depth's end state in the depth-inf metric", "units": "1"},
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


def _fit(values: xr.DataArray) -> float:
    finite = [d for d in values["depth"].values if np.isfinite(d) and d >= FIT_FROM]
    return float(np.polyfit(np.log(finite), np.log(values.sel(depth=finite).values), 1)[0])


def slope(ds: xr.Dataset) -> float:
    """Fitted exponent p of ‖W_N(τ_end) − W_∞(τ_end)‖ ∝ N^p over the finite depths ≥ FIT_FROM (τ_end: the last saved
    time, the same for every depth). The sup over τ is no measure of the rate at these depths: near an escape the
    distance saturates at O(1) until the O(1/N) shift of the escape time is smaller than the escape's width."""
    return _fit(ds["distance_to_inf"].isel(time=-1))


def volume_slope(ds: xr.Dataset) -> float:
    """Fitted exponent of |log vol_N(W) − log vol_∞(W)| in N at the ∞ run's end state W."""
    lv = ds["volume_of_limit"]
    return _fit(abs(lv - lv.sel(depth=np.inf)))


def check(ds: xr.Dataset) -> list[dict]:
    """The O(1/N) approach of the flow and of the volume form, and the low-rank trend with depth."""
    p, q = slope(ds), volume_slope(ds)
    low, high = SLOPE_RANGE
    erank = ds["effective_rank"].isel(time=-1)
    two = float(erank.sel(depth=2.0))
    deeper = erank.sel(depth=erank["depth"] > 2)
    return [
        row(
            "end-to-end flow -> infinite-depth flow at rate 1/N (tau = N t)",
            "A_N/N -> A_inf, O(1/N)",
            f"distance at tau_end ~ N^{p:.3f} (N >= {FIT_FROM})",
            low <= p <= high,
        ),
        row(
            "volume form of depth N -> that of depth inf at rate 1/N",
            "explicit volume forms, finite and infinite depth",
            f"|log vol_N - log vol_inf| ~ N^{q:.3f} (N >= {FIT_FROM})",
            low <= q <= high,
        ),
        row(
            "every depth > 2 (and inf) ends at a lower effective rank than depth 2",
            "deeper -> lower rank",
            f"depth 2: {two:.3f}; deeper: {float(deeper.min()):.3f} to {float(deeper.max()):.3f}",
            bool((deeper < two).all()),
        ),
    ]


def plot(ds: xr.Dataset, outdir: Path) -> list[Path]:
    """The distance to the ∞ flow against τ; it and the volume forms' difference against N; log-volume along τ."""
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
    end = ds["distance_to_inf"].isel(time=-1).sel(depth=finite)
    sup = ds["distance_to_inf"].max("time").sel(depth=finite)
    lv = ds["volume_of_limit"]
    vol = abs(lv - lv.sel(depth=np.inf)).sel(depth=finite)
    axes[0, 1].loglog(finite, end, "o-", label=r"$\|W_N - W_\infty\|_F / \|M\|_F$ at $\tau_{end}$")
    axes[0, 1].loglog(finite, sup, "^--", color="0.6", label=r"the same, $\sup_\tau$ (escapes)")
    axes[0, 1].loglog(finite, vol, "s-", label=r"$|\log vol_N - \log vol_\infty|$ at $W_\infty(\tau_{end})$")
    for series in (end, vol):
        ref = series.sel(depth=finite[-1]).values * finite[-1] / np.array(finite, dtype=float)
        axes[0, 1].loglog(finite, ref, "k:", lw=1)
    axes[0, 1].set(
        xlabel="depth N",
        ylabel="difference from depth ∞",
        title=f"exponents {slope(ds):.2f} (W), {volume_slope(ds):.2f} (volume); dotted: 1/N",
    )
    axes[0, 1].legend(fontsize=7)
    axes[0, 2].set(xlabel=r"rescaled time $\tau = N t$", ylabel="log-volume of W (metric N g_N; + const)")
    axes[0, 2].legend(fontsize=7)
    return [save_figure(fig, outdir, f"{NAME}-limit.png")]
