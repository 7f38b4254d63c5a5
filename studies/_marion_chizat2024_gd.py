"""Marion & Chizat (2024), their gradient-descent experiments: depth L = 10, Gaussian init, GD at finite step size.

Their set-up (their code's linear-network experiment): n = 50, d = 5, noise variance 1, ‖w*‖ = 1; L = 10 layers
(nine 5×5 and one 1×5), each entry scale·N(0, 1) with scale in linspace(0.25, 0.6, 10); GD with step η ∈ {0.005,
0.02, 0.07, 0.1, 0.2} for {40 000, 10 000, 4 000, 4 000, 2 000} steps, {20, 20, 20, 20, 80} repeats; a run has
diverged when its parameters are no longer finite. They plot the final sharpness against the init scale with the
lines 2/η (for η < 0.09 only), and the probability of divergence against the init scale, one curve per η.

In dlnode's terms (docs/conventions.md): their loss is 2ℓ, so their η is dlnode's lr = 2η (the same iterates), their
sharpness is 2× dlnode's and their line 2/η is dlnode's 1/η = 2/lr; their init scale s is dlnode's ``gaussian``
scale s·√d (fan-in d for every layer). The data are theirs exactly: `their_problem` regenerates their
``generate_data(50, 5, 1.0)`` from their key (JAX's float32 stream), so ours and theirs run on one instance; the
initial layers are dlnode's own seeds, not their keys. A dlnode run has diverged when its loss is non-finite or
above 1e12·ℓ₀ (status DIVERGED; `dlnode.analysis.edge.divergence_fraction` counts them).
"""

from __future__ import annotations

import warnings

import numpy as np
import xarray as xr

import dlnode as dln
from dlnode.analysis.edge import divergence_fraction

GD_FULL = {
    "gd_depth_L": 10,
    "gd_etas": [0.005, 0.02, 0.07, 0.1, 0.2],  # their step sizes (their loss R = 2ℓ): dlnode lr = 2η
    "gd_steps": [40_000, 10_000, 4_000, 4_000, 2_000],
    "gd_repeats": [20, 20, 20, 20, 80],
    "gd_init_scales": [round(float(s), 3) for s in np.linspace(0.25, 0.6, 10)],  # theirs: entry std
}
GD_QUICK = {
    "gd_depth_L": 10,
    "gd_etas": [0.07, 0.2],
    "gd_steps": [1_500, 300],
    "gd_repeats": [4, 4],
    "gd_init_scales": [0.25, 0.406, 0.6],
}
PLOTTED_ETA = 0.09  # their sharpness figure draws only the steps below this (0.005, 0.02, 0.07)
SHARPER = 1.5  # "larger init -> sharper": median final S at the largest scale >= this x that at the smallest ...
CAP_BAND = 0.9  # ... or, where the 2/eta cap comes first, at least this fraction of 2/eta
MATCH_SIGMAS = 3.0  # divergence probability per eta against theirs: within 3 binomial standard errors

# Their code (utils.py, mlp.py: their update and 20-step power iteration), run once on their data at their full
# grid, their keys for the data and for every init (float32, as their code runs); their steps scanned and vmapped
# over repeats x scales rather than looped in Python (the same iterates); the sharpness taken after the last step
# (theirs: 4 steps before it) in their convention (2x dlnode's), NaN if diverged. Per eta and init scale of
# `GD_FULL["gd_init_scales"]`: the fraction of repeats that diverged, the median final sharpness of the converged
# ones (R - R* <= 1e-4 R*) and how many converged.
nan = float("nan")
AUTHORS_GD: dict[float, dict[str, list[float]]] = {
    0.005: {"diverged": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.05, 0.35, 0.9],
            "median_sharpness": [17.07, 18.46, 20.83, 23.75, 28.9, 58.39, 108.06, 123.46, 155.39, 316.0],
            "converged": [20, 20, 20, 20, 20, 20, 20, 19, 13, 2]},
    0.02: {"diverged": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.05, 0.25, 1.0, 0.9],
           "median_sharpness": [16.76, 18.24, 20.58, 23.85, 27.84, 40.53, 70.02, 76.38, nan, 85.29],
           "converged": [20, 20, 20, 20, 20, 20, 19, 15, 0, 2]},
    0.07: {"diverged": [0.0, 0.0, 0.0, 0.0, 0.0, 0.15, 0.5, 0.7, 1.0, 1.0],
           "median_sharpness": [17.14, 18.27, 20.14, 23.74, 26.61, 28.39, 28.35, 28.41, nan, nan],
           "converged": [20, 20, 20, 20, 20, 17, 10, 6, 0, 0]},
    0.1: {"diverged": [0.0, 0.0, 0.0, 0.0, 0.0, 0.1, 0.65, 0.9, 1.0, 1.0],
          "median_sharpness": [17.36, 18.06, 19.76, 19.97, 19.97, 19.97, 19.97, 19.99, nan, nan],
          "converged": [20, 20, 20, 20, 20, 18, 7, 2, 0, 0]},
    0.2: {"diverged": [0.0, 0.0, 0.0, 0.0, 0.175, 0.4125, 0.9125, 0.9875, 1.0, 1.0],
          "median_sharpness": [nan, nan, 14.98, nan, nan, nan, nan, nan, nan, nan],
          "converged": [0, 0, 1, 0, 0, 0, 0, 0, 0, 0]},
}  # fmt: skip
# ... and the quartiles (25 %, 75 %) of the converged runs' final sharpness, where 3 or more converged
AUTHORS_GD_QUARTILES: dict[float, list[list[float]]] = {
    0.005: [[16.79, 17.29], [17.96, 19.04], [19.98, 21.58], [21.92, 25.88], [24.29, 43.68], [37.19, 90.36],
            [57.17, 155.0], [65.93, 198.49], [110.39, 255.37], [nan, nan]],
    0.02: [[16.65, 17.01], [17.81, 18.64], [19.75, 22.13], [21.87, 30.6], [25.02, 37.44], [36.32, 47.78],
           [48.88, 81.75], [64.09, 88.47], [nan, nan], [nan, nan]],
    0.07: [[16.96, 17.68], [17.94, 18.77], [19.19, 20.8], [21.66, 26.86], [24.68, 28.18], [28.27, 28.41],
           [28.2, 28.47], [28.35, 28.44], [nan, nan], [nan, nan]],
    0.1: [[16.91, 17.53], [17.62, 18.64], [18.95, 19.96], [19.94, 19.97], [19.95, 19.97], [19.96, 19.98],
          [19.93, 19.99], [nan, nan], [nan, nan], [nan, nan]],
    0.2: [[nan, nan]] * 10,
}  # fmt: skip


def their_problem(n: int = 50, d: int = 5) -> dln.Regression:
    """Their data exactly: their generate_data(n, d, 1.0, key) with key = split(PRNGKey(0))[1], in float32 as
    JAX draws it, then least squares in float64 and ‖w*‖ = 1 by rescaling y (a = 0.770, Λ = 1.484 at 50 × 5)."""
    import jax
    import jax.numpy as jnp

    key = jax.random.split(jax.random.PRNGKey(0))[1]
    keys = []
    for _ in range(4):
        key, sub = jax.random.split(key)
        keys.append(sub)
    x = np.asarray(jax.random.normal(keys[0], (n, d), dtype=jnp.float32), dtype=float)
    w_true = np.asarray(jax.random.normal(keys[2], (d,), dtype=jnp.float32), dtype=float)
    noise = np.asarray(jax.random.normal(keys[3], (n,), dtype=jnp.float32), dtype=float)
    y = x @ w_true + noise
    w_star = np.linalg.lstsq(x, y, rcond=None)[0]
    return dln.Regression(x.T, (y / np.linalg.norm(w_star))[None])


def compute_gd(config: dict, init_factor: float | None = None) -> xr.Dataset:
    """GD at depth L over their steps × init scales × repeats: final sharpness (dlnode's), status, final loss, and
    the fraction of repeats that diverge (`divergence_fraction`), on dims ``eta`` (their step), ``init_scale``
    (theirs), ``rep``. `init_factor`: dlnode scale = their scale × this (default √d, their convention; 1 is the
    wrong mapping a negative control uses)."""
    prob = their_problem()
    d, depth = prob.d_in, int(config["gd_depth_L"])
    factor = np.sqrt(d) if init_factor is None else float(init_factor)
    scales = [float(s) for s in config["gd_init_scales"]]
    reps = max(config["gd_repeats"])
    parts = []
    for eta, steps, n_rep in zip(config["gd_etas"], config["gd_steps"], config["gd_repeats"], strict=True):
        lr = 2.0 * float(eta)
        with warnings.catch_warnings():  # the repeats that diverge are what this grid counts (gd10_divergence)
            warnings.filterwarnings("ignore", message=r"dlnode: \d+ of \d+ runs stopped before t1")
            ds = dln.integrate(prob, depth=depth, init="gaussian", scale=[s * factor for s in scales],
                               seed=list(range(int(n_rep))), method="gd", lr=lr, t1=int(steps) * lr,
                               saveat=[0.0, int(steps) * lr], sharpness=1, progress=False)  # fmt: skip
        run = ds.isel(depth=0).assign_coords(scale=scales).rename(scale="init_scale", seed="rep")
        frac = divergence_fraction(ds).isel(lr=0, depth=0, drop=True).assign_coords(scale=scales)
        part = xr.Dataset(
            {
                "gd10_sharpness": run["sharpness"].isel(eig=0, time=-1, drop=True),
                "gd10_sharpness0": run["sharpness"].isel(eig=0, time=0, drop=True),
                "gd10_loss": run["loss"].isel(time=-1, drop=True),
                "gd10_status": run["status"].astype(float),
                "gd10_divergence": frac.rename(scale="init_scale"),
            }
        ).reset_coords(drop=True)
        part = part.reindex(rep=np.arange(reps))  # fewer repeats at this eta: the rest NaN (not counted)
        parts.append(part.expand_dims(eta=[float(eta)]))
    out = xr.concat(parts, dim="eta", combine_attrs="drop")
    out["gd10_steps"] = ("eta", np.array(config["gd_steps"], dtype=float))
    out["gd10_repeats"] = ("eta", np.array(config["gd_repeats"], dtype=float))
    out["eta"].attrs.update(long_name="their GD step size (loss R = 2l); dlnode lr = 2 eta")
    out["init_scale"].attrs.update(long_name="their init scale: entry std (dlnode gaussian scale = s sqrt(d))")
    out["gd10_sharpness"].attrs.update(long_name="top Hessian eigenvalue of l at GD's last step (dlnode's; "
                                       "theirs = 2x)", units="1/time")  # fmt: skip
    out["gd10_divergence"].attrs.update(long_name="fraction of repeats whose loss left every bound", units="1")
    return out.assign_attrs(
        gd_depth_L=depth,
        gd_loss_min=float(prob.loss_min),
        gd_init_factor=factor,
        gd_a=float(dln.sharpness_bounds(prob, depth).attrs["a"]),
    )


def _theirs(ds: xr.Dataset, key: str) -> xr.DataArray:
    """Their numbers (`AUTHORS_GD`; key ``q25``/``q75``: `AUTHORS_GD_QUARTILES`) on the (eta, init_scale) cells of
    `ds` (NaN where they have none)."""
    out = xr.full_like(ds["gd10_divergence"], np.nan)
    scales = GD_FULL["gd_init_scales"]
    for eta in ds["eta"].values:
        theirs = AUTHORS_GD.get(round(float(eta), 6))
        if key in ("q25", "q75") and round(float(eta), 6) in AUTHORS_GD_QUARTILES:
            theirs = {key: [q[key == "q75"] for q in AUTHORS_GD_QUARTILES[round(float(eta), 6)]]}
        for s in ds["init_scale"].values:
            if theirs is not None and any(np.isclose(s, scales)):
                out.loc[{"eta": eta, "init_scale": s}] = theirs[key][int(np.argmin(abs(np.array(scales) - s)))]
    return out


def converged(ds: xr.Dataset) -> xr.DataArray:
    """Runs at a global minimiser at the end: (ℓ − ℓ*)/ℓ* ≤ 1e-6 (every other survivor still oscillates)."""
    return (ds["gd10_loss"] - ds.attrs["gd_loss_min"]) <= 1e-6 * ds.attrs["gd_loss_min"]


def edge_ratio(ds: xr.Dataset) -> xr.DataArray:
    """S/(2/η) in either convention: dlnode's S over dlnode's 2/lr = 1/η."""
    return ds["gd10_sharpness"] * ds["eta"]


def below_edge(ds: xr.Dataset, factor: float = 1.0) -> tuple[bool, str]:
    """Every run GD converges at has S ≤ factor·2/η (to 1e-3), and at the steps of their sharpness figure
    (η < `PLOTTED_ETA`) every run that does not diverge converges. `factor` 0.5 is the wrong convention (their S,
    2× dlnode's, against dlnode's 2/lr)."""
    conv = converged(ds)
    ratio = float(edge_ratio(ds).where(conv).max()) / factor
    alive = ds["gd10_status"] != int(dln.Status.DIVERGED)
    plotted = ds["eta"] < PLOTTED_ETA
    missed = int((alive & ds["gd10_status"].notnull() & ~conv).where(plotted, False).sum())
    above = int((edge_ratio(ds) > 1 + 1e-3).where(alive & ~conv, False).sum())
    ok = ratio <= 1 + 1e-3 and missed == 0 and int(conv.sum()) > 0
    return ok, (f"max S/(2/eta) = {ratio:.4f} over {int(conv.sum())} converged runs; {missed} survivors at eta < "
                f"{PLOTTED_ETA:g} not converged; {above} unconverged survivors above 2/eta")  # fmt: skip


def no_minimiser_past_s_min(ds: xr.Dataset, etas: list[float] | None = None) -> tuple[bool, str]:
    """Where 2/η < S_min (their lower bound on every minimiser's sharpness, 2La in theirs, La in dlnode's), no run
    converges; `etas` (default: those steps) picks the steps tested, and steps with 2/η > S_min must fail it."""
    s_min = ds.attrs["gd_depth_L"] * ds.attrs["gd_a"]  # dlnode's S_min = L a at ||w*|| = 1
    past = [float(e) for e in ds["eta"].values if 1.0 / e < s_min] if etas is None else list(etas)
    if not past:
        return False, "no eta with 2/eta < S_min: not tested"
    sub = ds.sel(eta=past)
    n_conv = int(converged(sub).sum())
    alive = int(((sub["gd10_status"] != int(dln.Status.DIVERGED)) & sub["gd10_status"].notnull()).sum())
    return n_conv == 0 and alive > 0, (f"eta {', '.join(f'{e:g}' for e in past)}: {n_conv} of {alive} surviving "
                                       f"runs converge (2/eta vs S_min = 2La = {2 * s_min:.2f}, theirs)")  # fmt: skip


def _median_alive(ds: xr.DataArray) -> xr.DataArray:
    return ds.median("rep", skipna=True)


def sharper_until_cap(ds: xr.Dataset, reverse: bool = False) -> tuple[bool, str]:
    """At every η with converged runs, larger init → sharper until the cap: the median final S (survivors) at the
    largest surviving scale ≥ min(`SHARPER`× the median at the smallest scale, `CAP_BAND`·2/η). `reverse` swaps the two
    ends (the negative control)."""
    med = _median_alive(edge_ratio(ds).where(converged(ds)))
    texts, ok = [], True
    for eta in ds["eta"].values:
        m = med.sel(eta=eta).dropna("init_scale")
        if m.size < 2:
            continue
        lo, hi = (float(m[-1]), float(m[0])) if reverse else (float(m[0]), float(m[-1]))
        ok &= hi >= min(SHARPER * lo, CAP_BAND)
        texts.append(f"eta {eta:g}: {lo:.2f} -> {hi:.2f}")
    return ok and bool(texts), "median S/(2/eta), smallest -> largest scale: " + "; ".join(texts)


def divergence_transition(ds: xr.Dataset) -> tuple[bool, str]:
    """At every η, no repeat diverges at the smallest init scale and at least half at the largest (the transition
    lies in the grid), and the probability pooled over scales does not fall as η grows (to 3 binomial standard
    errors)."""
    frac = ds["gd10_divergence"]
    n = ds["gd10_repeats"] * ds.sizes["init_scale"]
    pooled = frac.mean("init_scale")
    se = np.sqrt(np.maximum(pooled * (1 - pooled), 0.25 / n) / n)
    falls = [float(pooled[i] - pooled[i + 1]) > MATCH_SIGMAS * float(np.hypot(se[i], se[i + 1]))
             for i in range(pooled.size - 1)]  # fmt: skip
    ends = bool((frac.isel(init_scale=0) == 0).all() and (frac.isel(init_scale=-1) >= 0.5).all())
    text = ", ".join(f"{e:g}: {float(p):.3f}" for e, p in zip(ds["eta"].values, pooled.values, strict=True))
    return ends and not any(falls), (f"P(diverge) 0 at scale {float(ds['init_scale'][0]):g}, "
                                     f"{float(frac.isel(init_scale=-1).min()):.2f}+ at {float(ds['init_scale'][-1]):g}"
                                     f"; pooled over scales per eta {text}")  # fmt: skip


def divergence_matches_theirs(ds: xr.Dataset) -> tuple[bool, str]:
    """Against their code on their data: per η, the divergence probability pooled over the init scales of `ds`
    within `MATCH_SIGMAS` binomial standard errors of theirs (the variance floored at 0.05)."""
    have = [float(e) for e in ds["eta"].values if round(float(e), 6) in AUTHORS_GD]
    if not have:
        return False, "no eta with their numbers: not tested"
    ds = ds.sel(eta=have)
    ours_p = ds["gd10_divergence"].mean("init_scale")
    theirs_p = _theirs(ds, "diverged").mean("init_scale")
    n_ours = ds["gd10_repeats"] * ds.sizes["init_scale"]
    n_theirs = xr.DataArray([GD_FULL["gd_repeats"][GD_FULL["gd_etas"].index(e)] for e in have], dims="eta")
    p = (ours_p + theirs_p) / 2
    se = np.sqrt(np.maximum(p * (1 - p), 0.05) * (1 / n_ours + 1 / (n_theirs * ds.sizes["init_scale"])))
    gap = abs(ours_p - theirs_p)
    ok = bool((gap <= MATCH_SIGMAS * se).all())
    pairs = zip(have, ours_p.values, theirs_p.values, strict=True)
    text = "; ".join(f"eta {e:g}: {o:.3f} vs {t:.3f}" for e, o, t in pairs)
    return ok, f"P(diverge) pooled over scales, ours vs theirs: {text}"


def sharpness_matches_theirs(ds: xr.Dataset, sharpness_factor: float = 1.0) -> tuple[bool, str]:
    """Against their code on their data: per (η, scale) with ≥ 3 converged runs in both, the median final S within
    10 % of theirs or inside their interquartile range (where the init's randomness spreads S widely; their
    convention: 2× dlnode's; `sharpness_factor` 0.5 is the wrong factor)."""
    conv = converged(ds)
    ours_s = 2 * sharpness_factor * _median_alive(ds["gd10_sharpness"].where(conv)).where(conv.sum("rep") >= 3)
    theirs = _theirs(ds, "median_sharpness").where(_theirs(ds, "converged") >= 3)
    rel = abs(ours_s / theirs - 1).where(theirs.notnull())
    inside = (ours_s >= _theirs(ds, "q25")) & (ours_s <= _theirs(ds, "q75"))
    n = int(rel.notnull().sum())
    if n == 0:
        return False, "no cell with 3 converged runs in both: not tested"
    close = int((rel <= 0.10).sum())
    ok = bool(((rel <= 0.10) | inside).where(rel.notnull(), True).all())
    return ok, (f"median final S: {close} of {n} cells within 10 % of theirs (max {float(rel.max()):.3f}), "
                f"{int((inside & (rel > 0.10)).sum())} more inside their quartiles")  # fmt: skip


def check_gd(ds: xr.Dataset) -> list[dict]:
    """The rows of their GD experiments: S ≤ 2/η where GD converges, sharper with the init scale up to 2/η, the
    divergence transition, and the match with their code's numbers."""
    from ._common import row

    rows = []
    ok, txt = below_edge(ds)
    rows.append(row(f"GD (L = {ds.attrs['gd_depth_L']}): every run that converges ends with S <= 2/eta",
                    "final sharpness below the line 2/eta (their figure, eta < 0.09)", txt, ok))  # fmt: skip
    ok, txt = no_minimiser_past_s_min(ds)
    rows.append(row("GD: where 2/eta < S_min no run converges (it oscillates or diverges)",
                    "GD cannot converge for eta > 2/S_min; their code: 1 of 441 survivors at eta 0.2 within 1e-4 of "
                    "R*", txt, ok))  # fmt: skip
    ok, txt = sharper_until_cap(ds)
    rows.append(row(f"GD: larger init -> sharper, until the cap (median at the largest scale >= min({SHARPER:g}x "
                    f"the smallest, {CAP_BAND:g} x 2/eta))",
                    "sharpness after training rises with the init scale up to 2/eta", txt, ok))  # fmt: skip
    ok, txt = divergence_transition(ds)
    rows.append(row("GD: divergence 0 at the smallest scale, >= 50 % at the largest; not less likely at larger eta",
                    "probability of divergence rises with init scale and step", txt, ok))  # fmt: skip
    ok, txt = divergence_matches_theirs(ds)
    rows.append(row(f"GD: probability of divergence per eta as their code's (within {MATCH_SIGMAS:g} s.e.)",
                    "their code on the same data and grid (numbers in the study)", txt, ok))  # fmt: skip
    ok, txt = sharpness_matches_theirs(ds)
    rows.append(row("GD: median final sharpness per (eta, init scale) within 10 % of their code's or inside its "
                    "quartiles",
                    "their code on the same data and grid (their 20-step power iteration)", txt, ok))  # fmt: skip
    return rows


def plot_gd(ds: xr.Dataset, axes) -> None:
    """Their two GD figures on `axes` (three axes): final sharpness against init scale with the lines 2/η and their
    S_min = 2La (their convention: 2× dlnode's), the probability of divergence against init scale, and against η
    (pooled over the init scales) with the step 2/S_min past which no minimiser is stable."""
    ax_s, ax_p, ax_e = axes
    scales = ds["init_scale"].values
    conv = converged(ds)
    init = 2 * ds["gd10_sharpness0"].median(["eta", "rep"])
    ax_s.plot(scales, init, "-", color="0.5", lw=1.5, label="initialization (median)")
    for i, eta in enumerate(ds["eta"].values):
        color = f"C{i}"
        med = 2 * _median_alive(ds["gd10_sharpness"].where(conv)).sel(eta=eta)
        ax_s.plot(scales, med, "o-", color=color, ms=3, label=rf"dlnode, $\eta$ = {eta:g}")
        theirs = AUTHORS_GD.get(round(float(eta), 6))
        if theirs is not None:
            idx = [int(np.argmin(abs(np.array(GD_FULL["gd_init_scales"]) - s))) for s in scales]
            enough = np.array(theirs["converged"])[idx] >= 3  # as in the check: 3 converged runs or more
            ax_s.plot(scales[enough], np.array(theirs["median_sharpness"])[idx][enough], "x", color=color, ms=6)
            ax_p.plot(scales, np.array(theirs["diverged"])[idx], "x--", color=color, ms=6, lw=0.8)
        ax_s.axhline(2 / eta, color=color, ls="--", lw=0.8)
        ax_p.plot(scales, ds["gd10_divergence"].sel(eta=eta), "o-", color=color, ms=3, label=rf"$\eta$ = {eta:g}")
    s_min = 2 * ds.attrs["gd_depth_L"] * ds.attrs["gd_a"]
    ax_s.axhline(s_min, color="k", ls=":", lw=1.2, label=r"$S_{min} = 2La$")
    ax_s.plot([], [], "kx", label="their code (same data), median of >= 3")
    ax_s.set(xlabel="Scale of initialization", ylabel="Sharpness (their loss, 2x dlnode's)", yscale="log",
             title=rf"GD, L = {ds.attrs['gd_depth_L']}: converged runs; dashed: $2/\eta$")  # fmt: skip
    ax_s.legend(fontsize=6.5, loc="upper left")
    ax_p.plot([], [], "kx--", lw=0.8, label="their code (same data)")
    ax_p.set(xlabel="Scale of initialization", ylabel="Probability of divergence", ylim=(-0.03, 1.03),
             title="GD: fraction of repeats that diverge")  # fmt: skip
    ax_p.legend(fontsize=7, loc="upper left")
    etas = ds["eta"].values
    ax_e.plot(etas, ds["gd10_divergence"].mean("init_scale"), "o-", color="k", ms=4, label="dlnode")
    theirs = _theirs(ds, "diverged").mean("init_scale", skipna=False)  # over the same scales as ours
    ax_e.plot(etas, theirs, "x--", color="k", ms=6, lw=0.8, label="their code (same data)")
    ax_e.axvline(2.0 / s_min, color="k", ls=":", lw=1.2, label=r"$\eta = 2/S_{min}$")
    ax_e.set(xlabel=r"Learning rate $\eta$ (theirs; dlnode lr = $2\eta$)", xscale="log", ylim=(-0.03, 1.03),
             ylabel="Probability of divergence (all scales)", title="GD: divergence against the step")  # fmt: skip
    ax_e.legend(fontsize=7, loc="upper left")
