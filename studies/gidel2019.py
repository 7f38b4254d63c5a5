"""Gidel, Bach, Lacoste-Julien (2019): the staircase of reduced-rank-regression solutions from vanishing init.

Whitened two-layer regression, target singular values s_i, decoupled (spectral) initialisation of per-layer scale ε
(each mode starts at u₀ = ε²). With dlnode's ½-loss a mode obeys du/dt = 2u(s − u), so it is learned (u = s/2) at

    t_i = ln(s_i/ε² − 1)/(2 s_i) = ln(1/ε)/s_i + ln(s_i)/(2 s_i) + O(ε²),

and in rescaled time t/ln(1/ε) the flow tends to a staircase with steps at 1/s_i as ε → 0. Gradient descent with
step η (a ← a(1 + η(s − a²)) per step in the linear phase) escapes after ≈ ln(1/ε)/ln(1 + ηs) steps, i.e. at
rescaled time η/ln(1 + ηs) > 1/s; the modified flow of L + (η/4)‖∇L‖² follows GD one order in η closer than the
flow. A depth-1 model (plain linear regression) learns every component at once.

Their assumption is weaker than whitened inputs: Σ_xx commutes with Σ_xyΣ_yx. `rrr_problem` builds such inputs
with a spread spectrum (Σ_xx eigenvalues lam), and the flow and GD run from small Gaussian init (not spectral).
Mode i (Σ_yx = Σ s_i u_i v_iᵀ, Σ_xx v_i = λ_i v_i) grows at rate s_i and settles at s_i/λ_i, so modes are learned
in the order of the s_i, not of W*'s singular values s_i/λ_i (reversed on this problem), and the plateau between
the learning of modes k and k+1 is the rank-k reduced-rank regression (`rrr_staircase`), which differs from the
truncated SVD of W* here. Each plateau is checked at its time, within twice the deviation that the decoupled modes
predict from this very init, which shrinks with ε (see `plateau_errors` and docs/math.md §4).

Save grids: the runs save every multiple of 0.01 in time (explicit `saveat`, see `_grid`): the escape-time
differences between GD, the flow and the modified flow are O(η²) ≈ 1e-4, so the escapes must be resolved on a grid
much finer than the default log grid (whose cells are 7 % of the time there).
"""

from __future__ import annotations

import pathlib

import numpy as np
import xarray as xr

import dlnode as dln

from ._common import figure, save_figure
from ._gidel2019_rrr import (  # noqa: F401  (plateau_errors, rrr_problem: public for the negative controls)
    compute_rrr,
    order_row,
    plateau_errors,
    plot_rrr,
    rrr_problem,
    staircase_row,
)

NAME = "gidel2019"
TITLE = "Saddle-to-saddle staircase of two-layer linear networks from vanishing init, flow and gradient descent"
PAPER = "Gidel, Bach, Lacoste-Julien (2019), arXiv 1904.13262"

# rrr: inputs that are not whitened (Σ_xx eigenvalues lam, commuting with Σ_xyΣ_yx: their assumption), Σ_yx
# singular values s, small Gaussian init of per-layer scale eps, the flow and GD at step lr; control_eps is a large
# init that visits no plateau (the negative control of the staircase row, in the tests)
RRR_QUICK = {"s": [4.0, 2.0, 1.0], "lam": [2.0, 0.75, 0.3], "eps": [1e-4, 1e-8], "control_eps": 0.5, "seeds": [0],
             "lr": 0.01}  # fmt: skip
RRR_FULL = {**RRR_QUICK, "eps": [1e-2, 1e-3, 1e-4, 1e-6, 1e-9, 1e-12], "seeds": [0, 1, 2, 3]}
QUICK = {"s": [4.0, 2.0, 1.0], "eps": [1e-2, 1e-4, 1e-8], "lr": [0.04, 0.02, 0.01], "dt": 0.01, "rrr": RRR_QUICK}
FULL = {"s": [4.0, 2.0, 1.0], "eps": [1e-1, 1e-2, 1e-3, 1e-4, 1e-6, 1e-8, 1e-12], "lr": [0.08, 0.04, 0.02, 0.01],
        "dt": 0.005, "rrr": RRR_FULL}  # fmt: skip

FLOW_RTOL = 1e-4  # escape times against the closed form (solver rtol 1e-6, interpolation on a dt grid)
ORDER_ATOL = 0.25  # fitted orders in lr: 1 (flow) and 2 (modified flow), up to higher-order terms at these lr


def _grid(config: dict) -> np.ndarray:
    # Every multiple of dt up to well past the last escape: GD at each lr (a multiple of dt) saves every step,
    # and the escapes of GD, the flow and the modified flow are compared on the same fine grid.
    s, eps = np.asarray(config["s"]), min(config["eps"])
    t_end = 1.5 * np.log(s.max() / eps**2) / (2 * s.min()) + 10 / s.min()
    return np.arange(0, int(np.ceil(t_end / config["dt"])) + 1) * config["dt"]


def _escapes(ds: xr.Dataset) -> xr.DataArray:
    return dln.escape_times(ds).isel(seed=0, drop=True).drop_vars("resolution")


def compute(config: dict) -> xr.Dataset:
    """The flow at depths 1 and 2 over ε; GD and the modified flow at depth 2 for each lr; their escape times."""
    s = np.asarray(config["s"], dtype=float)
    prob = dln.Regression.whitened(s, len(s), len(s), seed=0)
    grid = _grid(config)
    # atol: the default 1e-9 is larger than the layers themselves at ε ≤ 1e-8, where it lets the solver integrate
    # the growth phase with a relative error ~ atol/ε and shifts the escapes by ~1e-3; an atol below rtol·ε keeps
    # the relative error at rtol.
    atol = 1e-6 * min(config["eps"]) ** 2
    common = {"init": "decoupled", "scale": config["eps"], "saveat": grid, "progress": False}
    flow = dln.integrate(prob, depth=[1, 2], atol=atol, **common)
    gd, modified = [], []
    for lr in config["lr"]:
        gd.append(_escapes(dln.integrate(prob, depth=2, method="gd", lr=lr, **common)).squeeze("depth", drop=True))
        run = dln.integrate(prob, depth=2, flow="modified", lr=lr, atol=atol, **common)
        modified.append(_escapes(run).squeeze("depth", drop=True))
    lr = xr.DataArray(config["lr"], dims="lr", attrs={"long_name": "GD step size", "units": "time per step"})
    out = flow.assign(
        target_s=("k", s, {"long_name": "target singular values s_i", "units": "1"}),
        escape_flow=_escapes(flow).assign_attrs(long_name="escape time of the flow (u = u_final/2)", units="time"),
        escape_gd=xr.concat(gd, lr).assign_attrs(long_name="escape time of GD (t = step * lr)", units="time"),
        escape_modified=xr.concat(modified, lr).assign_attrs(
            long_name="escape time of the modified flow", units="time"
        ),  # fmt: skip
    )
    final = out["singular_values"].sel(depth=2).isel(seed=0, time=-1, drop=True)
    u0 = out["scale"] ** 2
    exact = np.log(final / 2 * (out["target_s"] / u0 - 1) / (out["target_s"] - final / 2)) / (2 * out["target_s"])
    out["escape_exact"] = exact.assign_attrs(long_name="depth-2 closed-form escape time", units="time")
    out["num_stages"] = dln.stages(out)["num_stages"].isel(seed=0, drop=True)
    rrr = compute_rrr(config, grid)
    return out.assign(rrr.data_vars).assign_attrs(rrr.attrs)


def _slope(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def check(ds: xr.Dataset) -> list[dict]:
    """The paper's claims against this run."""
    s, eps = ds["target_s"], ds["scale"]
    rows = []
    rel = float(abs(ds["escape_flow"].sel(depth=2) / ds["escape_exact"] - 1).max())
    rows.append({
        "claim": "depth 2: mode i learned at t_i = ln(s_i/eps^2 - 1)/(2 s_i)", "paper": "closed form (Saxe eq. 12)",
        "ours": f"max rel. error {rel:.1e} (<= {FLOW_RTOL:g})", "passed": rel <= FLOW_RTOL,
    })  # fmt: skip
    tau = ds["escape_flow"].sel(depth=2) / np.log(1 / eps) * s  # → 1 as ε → 0: the staircase at 1/s_i
    gap = abs(tau - 1).max("k")
    smallest = float(gap.isel(scale=int(np.argmin(eps.values))))
    bound = float((abs(np.log(s)) / (2 * np.log(1 / eps))).max("k").isel(scale=int(np.argmin(eps.values))))
    rows.append({
        "claim": "staircase: learned at t/ln(1/eps) -> 1/s_i as eps -> 0",
        "paper": "|s_i t_i/ln(1/eps) - 1| = ln(s_i)/(2 ln(1/eps)) -> 0",
        "ours": f"{smallest:.3f} at eps = {float(eps.min()):.0e} (bound {bound:.3f}); decreasing in eps: "
        f"{bool(np.all(np.diff(gap.sortby('scale').values) > 0))}",
        "passed": smallest <= 1.01 * bound and bool(np.all(np.diff(gap.sortby("scale").values) > 0)),
    })  # fmt: skip
    rows.append(_discrete_row(ds))
    rows.extend(_order_rows(ds))
    one = ds["num_stages"].sel(depth=1)
    two = ds["num_stages"].sel(depth=2).isel(scale=int(np.argmin(eps.values)))
    rows.append({
        "claim": "depth 1 learns all components at once; depth 2 one at a time",
        "paper": "1 stage vs rank(target) stages", "ours": f"depth 1: {sorted(set(one.values.tolist()))} stage(s); "
        f"depth 2 at eps = {float(eps.min()):.0e}: {int(two)}",
        "passed": bool(np.all(one == 1)) and int(two) == ds.sizes["k"],
    })  # fmt: skip
    for method in ("flow", "gd"):
        rows += [staircase_row(ds, method), order_row(ds, method)]
    return rows


def _discrete_row(ds: xr.Dataset) -> dict:
    """GD's escape shifts by lr·ln(ε₁/ε₂)/ln(1 + lr·s) between two scales: the linear phase multiplies a mode by
    (1 + lr·s) per step whatever its size, so the shift is exact up to the neighbouring modes' O(ε₁) coupling."""
    eps = np.sort(ds["scale"].values)
    e1, e2 = eps[-1], eps[0]
    shift = ds["escape_gd"].sel(scale=e2) - ds["escape_gd"].sel(scale=e1)
    predicted = ds["lr"] * np.log(e1 / e2) / np.log1p(ds["lr"] * ds["target_s"])
    rel = float(abs(shift / predicted - 1).max())
    tol = 2 * float(ds["lr"].max()) / float(shift.min()) + 2 * e1  # one step of interpolation, plus the coupling
    return {
        "claim": "GD: escape after ln(1/eps)/ln(1 + lr s) steps",
        "paper": "discrete escape (Gidel et al. Thm 1)",
        "ours": f"shift between eps = {e1:.0e} and {e2:.0e}: max rel. error {rel:.1e} (<= {tol:.1e})",
        "passed": rel <= tol,
    }


def _order_rows(ds: xr.Dataset) -> list[dict]:
    """|t_GD − t_flow| = O(lr) and |t_GD − t_modified| = O(lr²), at the smallest ε, for the slowest mode."""
    if ds.sizes["lr"] < 2:
        return []
    pick = {"scale": float(ds["scale"].min()), "k": ds.sizes["k"] - 1}
    lr = ds["lr"].values
    flow = abs(ds["escape_gd"] - ds["escape_flow"].sel(depth=2)).isel(k=pick["k"]).sel(scale=pick["scale"])
    mod = abs(ds["escape_gd"] - ds["escape_modified"]).isel(k=pick["k"]).sel(scale=pick["scale"])
    p1, p2 = _slope(lr, flow.values), _slope(lr, mod.values)
    return [
        {"claim": "GD escape differs from the flow's by O(lr)", "paper": "order 1",
         "ours": f"order {p1:.2f}; at lr = {lr.min():g}: {float(flow.min()):.1e}", "passed": abs(p1 - 1) <= ORDER_ATOL},
        {"claim": "the modified flow is one order closer to GD", "paper": "order 2 (Barrett & Dherin 2021)",
         "ours": f"order {p2:.2f}; at lr = {lr.min():g}: {float(mod.min()):.1e}", "passed": abs(p2 - 2) <= ORDER_ATOL},
    ]  # fmt: skip


def plot(ds: xr.Dataset, outdir: pathlib.Path) -> list[pathlib.Path]:
    """The staircase in rescaled time for each ε, and GD against the flow at the smallest ε."""
    from matplotlib import colormaps
    from matplotlib.ticker import NullFormatter

    fig, axes = figure(ncols=2, width=5.0, height=3.6)
    left, right = axes[0]
    t = ds["time"].values
    eps = np.sort(ds["scale"].values)[::-1]
    colors = [colormaps["viridis"](x) for x in np.linspace(0.0, 0.85, len(eps))]
    s = ds["target_s"].values
    for e, c in zip(eps, colors, strict=True):
        sv = ds["singular_values"].sel(depth=2, scale=e).isel(seed=0)
        tau = t / np.log(1 / e)
        for k in range(ds.sizes["k"]):
            left.plot(tau, sv.isel(k=k) / s[k], color=c, lw=1.2, label=rf"$\varepsilon$ = {e:.0e}" if k == 0 else None)
    for k, sk in enumerate(s):
        left.axvline(1 / sk, color="k", ls=":", lw=0.8)
        left.text(1 / sk, 1.04, rf"$1/s_{{{k + 1}}}$", ha="center", fontsize="small")
    one = ds["singular_values"].sel(depth=1, scale=eps[-1]).isel(seed=0)
    for k in range(ds.sizes["k"]):
        left.plot(t / np.log(1 / eps[-1]), one.isel(k=k) / s[k], color="C3", lw=1, ls="--",
                  label="depth 1" if k == 0 else None)  # fmt: skip
    left.set(xlim=(0, 1.4 / s.min()), ylim=(-0.02, 1.12), xlabel=r"rescaled time $t/\ln(1/\varepsilon)$")
    left.set_ylabel(r"$\sigma_k(W)/s_k$ (depth 2, decoupled init)")
    left.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    lr = ds["lr"].values
    e = eps[-1]
    right.plot(lr, abs(ds["escape_gd"] - ds["escape_flow"].sel(depth=2)).sel(scale=e).isel(k=-1), "o-",
               label="GD vs flow")  # fmt: skip
    right.plot(lr, abs(ds["escape_gd"] - ds["escape_modified"]).sel(scale=e).isel(k=-1), "s-",
               label="GD vs modified flow")  # fmt: skip
    right.set(xscale="log", yscale="log", xlabel="step size lr [flow time per step]")
    right.set_xticks(lr, [f"{x:g}" for x in lr])
    right.xaxis.set_minor_formatter(NullFormatter())
    right.set_ylabel(rf"|escape-time difference| of $s_{{{len(s)}}}$ [time]")
    right.set_title(rf"$\varepsilon$ = {e:.0e}", fontsize="medium")
    right.legend(fontsize="small")
    return [save_figure(fig, outdir, f"{NAME}-staircase.png"), plot_rrr(ds, outdir)]
