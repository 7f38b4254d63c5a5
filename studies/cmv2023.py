"""Cohen, Menon & Veraszto (2023): the infinite-depth limit of the deep linear network on matrix completion.

The balanced end-to-end flow of depth N, dW/dt = −A_N(∇ℓ(W)), on the rescaled time τ = N t, tends as N → ∞ to
dW/dτ = −A_∞(∇ℓ(W)), A_∞(Z) = ∫₀¹ (WWᵀ)^{1−s} Z (WᵀW)^s ds, with an O(1/N) error. The flow is a Riemannian
gradient flow whose volume form is explicit at every depth; the paper proposes that implicit regularisation is a
bias towards high state-space volume, which small singular values carry.

This study runs two problems, every depth and ∞ of each in one `dlnode.integrate` call from the balanced
W(0) = s·Q_out Q_inᵀ (the same W(0) at every depth):

- a random rank-2 completion (Arora et al.'s instance) from two init scales: a large one (0.1), where the O(1/N)
  approach of the end-to-end flow to depth ∞ is fitted (and of the volume forms), and a small one (1e-3), where
  convergence, recovery of M, the effective rank against the target's and the volume proposal are checked;
- Menon's 2×2 example: complete a 2×2 matrix from its diagonal (Ω = {(1,1), (2,2)}, both observed values 1). The
  completions are [[1, a], [b, 1]], the rank-one ones the hyperbola ab = 1. Depth 1 keeps W(0)'s off-diagonal
  entries (the gradient has none); depth 2 splits into two decoupled pairs (row i of W₂, column i of W₁), whose
  end state is closed-form (`pair_closed_form`); whether deeper flows reach the rank-one completions is the question
  Menon poses (restated in his lectures on the DLN) and Shin & Yun (arXiv 2603.04703) answer for a family of
  initialisations: depth ≥ 3 couples the pairs unless the init is diagonal, and the flow reaches rank one if and
  only if it is coupled.

Measured in ``FULL`` (20 × 20, |Ω| = 160, init 1e-3; the quick 10 × 10 instance recovers M at every depth ≥ 4):
depths 4 and 8 recover M (error 5.0e-3, 2.9e-3) but depth 16 and deeper end on other completions, of growing norm
(σ₁ 17.9 at depth 16, 215 at ∞, against M's 17.4; error 0.48 → 10.9), whose effective rank falls below M's (1.455 at
∞ against 1.925): the recovery and rank rows fail there, and a low effective rank alone is no sign of recovery.
Three paths agree on those end states: the singular-coordinate Rosenbrock path (``auto``, see "Solver"), LSODA on W
and, at depth 16, the per-layer gradient flow from the balanced layers (error 0.4804 against LSODA's 0.4805; σ₁…σ₃
to 1e-4).

The volume proposal is tested as a claim, and fails where it fails (see `volume_beats_depth_one` and
`volume_orders_rank`): the volume form of depth N (dlnode's ``ds.dln.log_volume()``: the density of the
time-rescaled metric N·g_N, g_∞ at ∞) is compared at the completions the flows select.

Time normalisation. dlnode's finite-depth operator A_N carries no 1/N (checked in dlnode's tests: the product of
balanced layers under the per-layer flow moves by −A_N(E)); depth ∞ is reached by rescaling time, τ = N t, so that
dW/dτ = −A_N(E)/N → −A_∞(E). The paper's own text was not reachable (only its abstract), so that its
normalisation is the same is not confirmed here; the end states compared below do not depend on the time axis.

Solver. The completion and the 2×2 example run under the defaults (``auto``). On the 20 × 20 completion ``auto``
picks the Rosenbrock path in singular coordinates for every depth ≥ 4; its 400 unknowns are above that path's
dense-LU limit (300), and its matrix-free stage solves fall short once the modes have escaped (depth 16 alone: 4092
steps, 68 s), so a run switches to dense LU stage solves (see docs/solvers.md). Measured in one session on a quiet
2-core CPU, the whole completion (11 depths × 2 scales) converges under ``auto`` in 78 s (wall, compilation
included), under ``scipy:LSODA`` on W in 67 s; the two agree on every end state to 1.8e-3 relative (to 1e-4 at
depths ≤ 8 and at init 0.1). (When a call's cells ran as one vmapped batch, the first cell to switch took the other
scale with it, and ``auto`` took 385 s.) The tests check the quick completion against LSODA, a second backend.
W-coordinates are accurate here: at an end-to-end init of 1e-3 no singular value is near round-off. Nothing was
dropped from ``FULL``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

import dlnode as dln

from ._common import depth_label, figure, row, save_figure

NAME = "cmv2023"
TITLE = "Infinite-depth limit: O(1/N) approach, recovery and rank, the 2×2 diagonal completion, the volume proposal"
PAPER = "Cohen, Menon, Veraszto (2023), arXiv 2210.12497"

FULL = {
    "shape": (20, 20),
    "rank": 2,
    "observed": 160,
    "seed": 0,
    "depths": [1, 2, 4, 8, 16, 32, 64, 128, 256, 1024],
    "scale": 0.1,
    "small_scale": 1e-3,
    "init_seed": 0,
    "saveat": 120,
    "method": "auto",  # the completion's solver (see the module docstring, "Solver")
    "pair_method": "auto",
    "pair_depths": [1, 2, 3, 4, 8, 64],
    "pair_scales": [1e-1, 1e-2, 1e-3, 1e-4],
    "pair_seeds": [0, 1, 8],
}
QUICK = {**FULL, "shape": (10, 10), "observed": 60, "depths": [1, 2, 4, 16, 64, 256], "saveat": 80,
         "pair_depths": [1, 2, 3], "pair_scales": [1e-1, 1e-2, 1e-3], "pair_seeds": [0, 8]}  # fmt: skip

SLOPE_RANGE = (-1.2, -0.8)  # fitted exponent in N of the distances to depth inf, against the O(1/N) rate
FIT_FROM = 16  # depths from which the asymptotic regime is fitted: the expansion is in ln(sigma)/N, ln 0.1 = -2.3
LOSS_TOL = 1e-8  # dlnode's default convergence criterion l - l* <= LOSS_TOL (min(l0, l(W=0)) - l*), every run's
RECOVERED = 1e-2  # relative error ||W - M||_F / ||M||_F below which M counts as recovered (as in arora2019)
DEEP = 4  # the depths from which recovery and the target's rank are claimed (depth 2 is the negative control)
ERANK_RTOL = 0.01  # "at the target's effective rank": within 1 % of erank(M)
RANK_THRESHOLD = 1e-3  # numerical rank: singular values above this fraction of the largest
# the 2x2 example: end states are those at l <= LOSS_TOL l0, whose residual |W_ii - 1| ~ 1e-4 still moves the
# off-diagonal entries by ~5e-5 (measured against runs to 1e-14); depth 3 is 7e-3 from depth 2's closed form
CLOSED_FORM_TOL = 1e-3
RANK_ONE_RATE = 1.0  # "tends to rank one with the init scale": sigma_2/sigma_1 <= RANK_ONE_RATE * s at every s


def pair_closed_form(w0: np.ndarray, depth: float, observed: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """The t → ∞ end state of the balanced flow of depth 1 or 2 on the 2×2 diagonal completion, from W(0) = `w0`.

    Depth 1: the gradient vanishes off the diagonal, so W(∞) = [[m₁, w₁₂], [w₂₁, m₂]]. Depth 2 with balanced
    layers W₂ = U Σ^{1/2}, W₁ = Σ^{1/2} Vᵀ: with r_i the rows of W₂ and c_i the columns of W₁, W_ij = r_i·c_j and
    ℓ = ½ Σ_i (r_i·c_i − m_i)², so dr_i/dt = −e_i c_i, dc_i/dt = −e_i r_i (e_i = W_ii − m_i): two decoupled pairs.
    p = r + c and q = r − c scale as p(0)g and q(0)/g with g = exp(−∫e); r·c = (|p|²g² − |q|²g⁻²)/4 → m gives
    g² = (2m + √(4m² + |p|²|q|²))/|p|², hence r(∞) = (p g + q/g)/2, c(∞) = (p g − q/g)/2 and W(∞)_ij = r_i·c_j.
    The end state does not depend on the time axis (normalised loss or not, τ or t).
    """
    m = np.asarray(observed, dtype=float)
    w0 = np.asarray(w0, dtype=float)
    if depth == 1:
        return np.where(np.eye(2, dtype=bool), np.diag(m), w0)
    if depth != 2:
        raise ValueError(f"closed form known for depth 1 and 2 only; got {depth!r}")
    u, s, vt = np.linalg.svd(w0)
    r, c = u * np.sqrt(s), (np.sqrt(s)[:, None] * vt).T
    p, q = r + c, r - c
    pp, qq = np.sum(p * p, axis=1), np.sum(q * q, axis=1)
    g = np.sqrt((2 * m + np.sqrt(4 * m**2 + pp * qq)) / pp)[:, None]
    return ((p * g + q / g) / 2) @ ((p * g - q / g) / 2).T


def _end(ds: xr.Dataset, name: str) -> xr.DataArray:
    return ds[name].isel(time=-1).drop_vars(["t", "time"], errors="ignore")


def _volume(sv: xr.DataArray, depth: float) -> xr.DataArray:
    """log vol of the spectra `sv` (dim k, any others) in the metric of `depth` (dlnode.log_volume)."""
    own = "depth" in sv.dims
    one = (sv.rename(depth="end_of") if own else sv).expand_dims(depth=[float(depth)])
    out = dln.log_volume(xr.Dataset({"singular_values": one})).isel(depth=0, drop=True)
    return out.rename(end_of="depth") if own else out


def _completion(config: dict) -> tuple[xr.Dataset, np.ndarray]:
    """Every depth and ∞ on the random rank-r completion, from the large and the small init scale."""
    shape, rank, observed = config["shape"], config["rank"], config["observed"]
    prob = dln.MatrixCompletion.random(shape, rank, observed, config["seed"], normalize=True)
    ds = dln.integrate(prob, depth=[*config["depths"], "inf"], flow="end_to_end", init="balanced",
                       scale=[config["scale"], config["small_scale"]], scale_of="product", seed=config["init_seed"],
                       saveat=config["saveat"], method=config["method"], progress=False)  # fmt: skip
    return ds.isel(seed=0), prob.target_matrix


def _pair(config: dict) -> xr.Dataset:
    """Menon's 2×2 example, every depth and ∞ × init scale × seed in one call; end states and W(0)."""
    prob = dln.MatrixCompletion(np.eye(2), np.eye(2, dtype=bool))
    ds = dln.integrate(prob, depth=[*config["pair_depths"], "inf"], flow="end_to_end", init="balanced",
                       scale=config["pair_scales"], scale_of="product", seed=config["pair_seeds"], saveat=20,
                       method=config["pair_method"], progress=False)  # fmt: skip
    names = {"depth": "pair_depth", "scale": "pair_scale", "seed": "pair_seed", "row": "pair_row",
             "col": "pair_col", "k": "pair_k"}  # fmt: skip
    w0 = _end(ds.isel(time=[0]), "product").isel(
        depth=0, drop=True
    )  # the same W(0) at every depth (scale_of="product")
    out = xr.Dataset(
        {
            "pair_initial": w0.assign_attrs(long_name="W(0) of the 2x2 example", units="1"),
            "pair_end": _end(ds, "product").assign_attrs(long_name="W at the end, 2x2 example", units="1"),
            "pair_singular_values": _end(ds, "singular_values").assign_attrs(units="1"),
            "pair_status": ds["status"],
            "pair_loss_ratio": (_end(ds, "loss") / ds["loss"].isel(time=0)).assign_attrs(units="1"),
        }
    ).drop_vars(["time", "t"], errors="ignore")
    return out.rename(names)


def compute(config: dict) -> xr.Dataset:
    """Both problems through `dlnode.integrate`; distances to ∞, errors, ranks and volumes at the end states."""
    ds, target = _completion(config)
    w = ds["product"]
    norm = float(np.linalg.norm(target))
    gap = np.sqrt(((w - w.sel(depth=np.inf)) ** 2).sum(("row", "col"))) / norm
    tsv = np.linalg.svd(target, compute_uv=False)
    tsv = tsv[tsv > 1e-12 * tsv[0]]
    p = tsv / tsv.sum()
    out = xr.Dataset(
        {
            "loss": ds["loss"],
            "singular_values": ds["singular_values"],
            "status": ds["status"],
            "distance_to_inf": gap.assign_attrs(long_name="||W_N(tau) - W_inf(tau)||_F / ||M||_F", units="1"),
            "log_volume": ds.dln.log_volume().assign_attrs(units="1"),
            "effective_rank": ds.dln.effective_rank(),
            "recovery_error": ds.dln.recovery_error(),
            "product_end": _end(ds, "product").assign_attrs(long_name="W at the last saved time", units="1"),
        }
    )
    end = _end(ds, "singular_values")
    # one matrix, every metric: the depth-inf run's end state measured by the volume form of each depth
    lim = end.sel(depth=np.inf, drop=True)
    out["volume_of_limit"] = xr.concat([_volume(lim, d) for d in ds["depth"].values], "depth").assign_attrs(
        long_name="log-volume of W_inf(end) in the metric of each depth (N g_N; g_inf)", units="1"
    )
    # every end state in its own depth's metric, the depth-1 end state in each depth's metric, and every end
    # state in the depth-inf metric (one yardstick)
    depths = ds["depth"].values
    own = [_volume(end.sel(depth=d, drop=True), d) for d in depths]
    first = [_volume(end.sel(depth=1.0, drop=True), d) for d in depths] if 1.0 in depths else None
    out["volume_own"] = xr.concat(own, "depth").assign_attrs(long_name="log-volume of W_N(end) in N g_N", units="1")
    if first is not None:
        out["volume_depth_one"] = xr.concat(first, "depth").assign_attrs(
            long_name="log-volume of the depth-1 end state in N g_N", units="1"
        )
    out["volume_inf_metric"] = _volume(end, np.inf).assign_attrs(
        long_name="log-volume of each depth's end state in the depth-inf metric", units="1"
    )
    out = out.assign_coords(depth=depths)
    out["target_singular_values"] = ("target_k", tsv, {"long_name": "nonzero singular values of M", "units": "1"})
    out.attrs.update(
        {
            "shape": list(config["shape"]),
            "rank": int(config["rank"]),
            "observed": int(config["observed"]),
            "scale": float(config["scale"]),
            "small_scale": float(config["small_scale"]),
            "target_effective_rank": float(np.exp(-np.sum(p * np.log(p)))),
            "time_rescaling": ds.attrs["time_rescaling"],
            "method": ds.attrs["method"],
            "loss_convention": ds.attrs["loss_convention"],
            "flow": "end_to_end, init balanced, W(0) = scale Q_out Q_in^T",
        }
    )
    return xr.merge([out, _pair(config)], combine_attrs="override")


def _fit(values: xr.DataArray) -> float:
    finite = [d for d in values["depth"].values if np.isfinite(d) and d >= FIT_FROM]
    return float(np.polyfit(np.log(finite), np.log(values.sel(depth=finite).values), 1)[0])


def slope(ds: xr.Dataset) -> float:
    """Fitted exponent p of ‖W_N(τ_end) − W_∞(τ_end)‖ ∝ N^p over the finite depths ≥ FIT_FROM at the large init
    scale (τ_end: the last saved time, the same for every depth). The sup over τ is no measure of the rate at these
    depths: near an escape the distance saturates at O(1) until the O(1/N) shift of the escape time is smaller
    than the escape's width."""
    return _fit(ds["distance_to_inf"].sel(scale=ds.attrs["scale"]).isel(time=-1))


def slope_to(ds: xr.Dataset, reference: float) -> float:
    """`slope` with depth `reference`'s end state in place of depth ∞'s: the negative control of the rate row."""
    end = ds["product_end"].sel(scale=ds.attrs["scale"])
    gap = np.sqrt(((end - end.sel(depth=reference)) ** 2).sum(("row", "col")))
    return _fit(gap.where(gap["depth"] != reference, drop=True))


def volume_slope(ds: xr.Dataset, rescale: bool = True) -> float:
    """Fitted exponent of |log vol_N(W) − log vol_∞(W)| in N at the ∞ run's end state W (large init). Without
    `rescale`, the density of g_N itself rather than of N·g_N: the wrong normalisation, which must fail."""
    lv = ds["volume_of_limit"].sel(scale=ds.attrs["scale"])
    if not rescale:  # density of g_N = that of N g_N less (k^2/2) ln N (dlnode.flows.endtoend.log_volume)
        k = ds.sizes["k"]
        depth = lv["depth"]
        lv = lv - xr.where(np.isfinite(depth), 0.5 * k**2 * np.log(depth.where(np.isfinite(depth), 1.0)), 0.0)
    return _fit(abs(lv - lv.sel(depth=np.inf)))


def converged(status: xr.DataArray, loss_ratio: xr.DataArray) -> tuple[bool, str]:
    """Every run ended CONVERGED with ℓ(end)/ℓ(0) ≤ `LOSS_TOL` (ℓ* = 0 on a completion with a zero-loss fit)."""
    ok_status = bool((status == int(dln.Status.CONVERGED)).all())
    worst = float(loss_ratio.max())
    n = int(status.size)
    bad = int((status != int(dln.Status.CONVERGED)).sum())
    return ok_status and worst <= LOSS_TOL, f"{n - bad}/{n} runs converged; max l_end/l_0 {worst:.1e}"


def loss_ratio(ds: xr.Dataset) -> xr.DataArray:
    return ds["loss"].isel(time=-1) / ds["loss"].isel(time=0)


def recovers(ds: xr.Dataset, depth: float, scale: float) -> tuple[bool, str]:
    """Depth N's end state from init `scale` recovers M: ‖W − M‖_F/‖M‖_F < `RECOVERED`."""
    if depth not in ds["depth"].values or scale not in ds["scale"].values:
        return False, f"depth {depth:g} at scale {scale:g} not run: not tested"
    err = float(ds["recovery_error"].sel(depth=depth, scale=scale).isel(time=-1))
    return err < RECOVERED, f"error {err:.1e}"


def at_target_rank(ds: xr.Dataset, depth: float, scale: float) -> tuple[bool, str]:
    """Depth N's end state has the target's numerical rank (singular values above `RANK_THRESHOLD`·σ₁) and its
    effective rank within `ERANK_RTOL` of erank(M)."""
    if depth not in ds["depth"].values or scale not in ds["scale"].values:
        return False, f"depth {depth:g} at scale {scale:g} not run: not tested"
    sv = ds["singular_values"].sel(depth=depth, scale=scale).isel(time=-1).values
    er = float(ds["effective_rank"].sel(depth=depth, scale=scale).isel(time=-1))
    target = ds.attrs["target_effective_rank"]
    rank = int(np.sum(sv > RANK_THRESHOLD * sv[0]))
    ok = rank == ds.attrs["rank"] and abs(er - target) <= ERANK_RTOL * target
    return ok, f"erank {er:.3f}, rank {rank} (sigma_{ds.attrs['rank'] + 1}/sigma_1 {sv[ds.attrs['rank']] / sv[0]:.1e})"


def erank_falls_with_depth(ds: xr.Dataset, scale: float) -> tuple[bool, str]:
    """The effective rank at the end is non-increasing in depth (∞ last), to 1e-6."""
    er = ds["effective_rank"].sel(scale=scale).isel(time=-1).values
    return bool(np.all(np.diff(er) <= 1e-6)), "erank " + ", ".join(f"{v:.3f}" for v in er)


def _pair_depth(ds: xr.Dataset, depth: float) -> xr.DataArray:
    return ds["pair_end"].sel(pair_depth=depth)


def selects_closed_form(ds: xr.Dataset, depth: float, as_depth: float | None = None) -> tuple[bool, str]:
    """On the 2×2 example, depth N's end states (every scale and seed) are within `CLOSED_FORM_TOL` of the closed
    form of depth `as_depth` (default N; 1 and 2 have one, see `pair_closed_form`)."""
    as_depth = depth if as_depth is None else as_depth
    if depth not in ds["pair_depth"].values:
        return False, f"depth {depth:g} not run: not tested"
    if as_depth not in (1, 2):
        return False, f"no closed form for depth {as_depth:g}: not tested"
    worst = 0.0
    for scale in ds["pair_scale"].values:
        for seed in ds["pair_seed"].values:
            w0 = ds["pair_initial"].sel(pair_scale=scale, pair_seed=seed).values
            end = _pair_depth(ds, depth).sel(pair_scale=scale, pair_seed=seed).values
            worst = max(worst, float(np.abs(end - pair_closed_form(w0, as_depth)).max()))
    return worst <= CLOSED_FORM_TOL, f"max |W - closed form| {worst:.1e}"


def reflection_seeds(ds: xr.Dataset) -> list[int]:
    """Seeds whose W(0) = s·O has det O = −1 (a reflection: symmetric, one negative eigenvalue); a rotation
    (det +1) keeps W = aI + bJ, an invariant set on which the two diagonal entries never couple."""
    det = np.linalg.det(ds["pair_initial"].isel(pair_scale=0).transpose("pair_seed", "pair_row", "pair_col").values)
    return [int(s) for s, d in zip(ds["pair_seed"].values, det, strict=True) if d < 0]


def tends_to_rank_one(ds: xr.Dataset, depth: float, seeds: list[int] | None = None) -> tuple[bool, str]:
    """On the 2×2 example, depth N's completion tends to a rank-one one ([[1, ±1], [±1, 1]]) as the init scale s
    falls: σ₂/σ₁ ≤ `RANK_ONE_RATE`·s at every scale and seed (default: the reflection seeds)."""
    seeds = reflection_seeds(ds) if seeds is None else seeds
    if depth not in ds["pair_depth"].values or not seeds:
        return False, "depth or seeds not run: not tested"
    sv = ds["pair_singular_values"].sel(pair_depth=depth, pair_seed=seeds)
    ratio = (sv.isel(pair_k=1) / sv.isel(pair_k=0)).max("pair_seed")
    scales = ratio["pair_scale"].values
    worst = float((ratio / ratio["pair_scale"]).max())
    fit = float(np.polyfit(np.log(scales), np.log(ratio.values), 1)[0]) if len(scales) > 1 else np.nan
    text = "sigma2/sigma1 " + ", ".join(f"{v:.1e}" for v in ratio.values) + f" (slope {fit:.2f})"
    return worst <= RANK_ONE_RATE, text


def volume_beats_depth_one(ds: xr.Dataset, depth: float, scale: float) -> tuple[bool, str]:
    """The volume proposal at depth N: the completion depth N selects has a higher volume, in depth N's own metric,
    than the completion of depth 1 (the flow with no implicit bias: its unobserved entries stay near W(0)'s)."""
    if "volume_depth_one" not in ds or depth not in ds["depth"].values:
        return False, "depth 1 or this depth not run: not tested"
    own = float(ds["volume_own"].sel(depth=depth, scale=scale))
    first = float(ds["volume_depth_one"].sel(depth=depth, scale=scale))
    return own > first, f"{own:.1f} vs {first:.1f}"


def volume_orders_rank(ds: xr.Dataset, depths: list[float], scale: float) -> tuple[bool, str]:
    """The volume proposal across depths, in one metric (g_∞): of any two depths' completions, the one of lower
    effective rank has the higher volume."""
    er = ds["effective_rank"].sel(scale=scale, depth=depths).isel(time=-1).values
    vol = ds["volume_inf_metric"].sel(scale=scale, depth=depths).values
    wrong = [(a, b) for i, a in enumerate(depths) for j, b in enumerate(depths) if er[i] < er[j] - 1e-6
             and vol[i] <= vol[j]]  # fmt: skip
    text = ", ".join(f"{depth_label(d).split()[-1]}: {v:.1f}" for d, v in zip(depths, vol, strict=True))
    if wrong:
        a, b = wrong[0]
        text += f"; {len(wrong)} pairs out of order, e.g. depth {b:g} above depth {a:g}"
    return not wrong, text


def _ratio(w: np.ndarray) -> float:
    sv = np.linalg.svd(w, compute_uv=False)
    return float(sv[1] / sv[0])


def _rows_of(results: list[tuple[bool, str]]) -> tuple[bool, str]:
    return all(ok for ok, _ in results), "; ".join(text for _, text in results)


def check(ds: xr.Dataset) -> list[dict]:
    """The O(1/N) limit; convergence, recovery and rank at a small init; the 2×2 example's completions; the
    volume proposal, pass or fail."""
    p, q = slope(ds), volume_slope(ds)
    low, high = SLOPE_RANGE
    big, small = ds.attrs["scale"], ds.attrs["small_scale"]
    depths = [float(d) for d in ds["depth"].values]
    deep = [d for d in depths if d >= DEEP]
    shallow = [d for d in depths if d < DEEP]
    pair_ratio = ds["pair_loss_ratio"]
    conv = _rows_of([converged(ds["status"], loss_ratio(ds)), converged(ds["pair_status"], pair_ratio)])
    rec_deep = _rows_of([recovers(ds, d, small) for d in deep])
    rec_text = ", ".join(f"{depth_label(d).split()[-1]}: {recovers(ds, d, small)[1].split()[-1]}" for d in depths)
    rank_deep = _rows_of([at_target_rank(ds, d, small) for d in deep])
    falls = erank_falls_with_depth(ds, small)
    er = ds["effective_rank"].isel(time=-1)
    two = [d for d in ds["pair_depth"].values if d >= 2]
    rank_one = _rows_of([tends_to_rank_one(ds, d) for d in two])
    at_big = ds["pair_singular_values"].sel(pair_scale=ds["pair_scale"].max(), pair_seed=reflection_seeds(ds)[0])
    order = ", ".join(f"{depth_label(d).split()[-1]}: {float(v):.1e}"
                      for d, v in zip(two, (at_big.isel(pair_k=1) / at_big.isel(pair_k=0)).sel(pair_depth=two).values,
                                      strict=True))  # fmt: skip
    seed = reflection_seeds(ds)[0]
    exact = ", ".join(f"{_ratio(pair_closed_form(ds['pair_initial'].sel(pair_scale=s, pair_seed=seed).values, 2)):.1e}"
                      for s in ds["pair_scale"].values)  # fmt: skip
    rotations = [int(s) for s in ds["pair_seed"].values if int(s) not in reflection_seeds(ds)]
    finite = [d for d in depths if np.isfinite(d) and d >= 2]
    vol_finite = [volume_beats_depth_one(ds, d, small) for d in finite]
    vol_inf = volume_beats_depth_one(ds, np.inf, small)
    order_small = volume_orders_rank(ds, depths, small)
    order_big = volume_orders_rank(ds, depths, big)
    return [
        row(
            "the completion of depth N -> that of depth inf at rate 1/N (tau = N t; init 0.1)",
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
            "every run converges (both problems, every depth, scale and seed)",
            "training converges to a zero-loss completion",
            conv[1],
            conv[0],
        ),
        row(
            f"from a small init ({small:g}) depth >= {DEEP} and inf recover the rank-{ds.attrs['rank']} target",
            "training asymptotics of completion (their numerics, not at hand); Arora et al. 2019",
            f"||W - M||/||M||: {rec_text}; init {big:g}, depth inf: {recovers(ds, np.inf, big)[1].split()[-1]}",
            rec_deep[0] and bool(deep),
        ),
        row(
            f"from a small init, deeper -> lower effective rank, down to the target's "
            f"({ds.attrs['target_effective_rank']:.3f}, rank {ds.attrs['rank']}) at depth >= {DEEP} and inf",
            "deeper -> lower rank",
            f"{falls[1]} (depths {', '.join(f'{d:g}' for d in depths)}); init {big:g}: depth inf erank "
            f"{float(er.sel(depth=np.inf, scale=big)):.3f}; depth {shallow[-1]:g}: "
            f"{at_target_rank(ds, shallow[-1], small)[1]}",
            rank_deep[0] and falls[0] and bool(deep),
        ),
        row(
            "2x2 diagonal completion: depth 1 keeps W(0)'s off-diagonal entries",
            "the gradient vanishes off Omega",
            selects_closed_form(ds, 1.0)[1],
            selects_closed_form(ds, 1.0)[0],
        ),
        row(
            "2x2 diagonal completion: depth 2 ends at the closed form of its two decoupled pairs",
            "depth 2 is decoupled (Shin & Yun)",
            selects_closed_form(ds, 2.0)[1],
            selects_closed_form(ds, 2.0)[0],
        ),
        row(
            "2x2 diagonal completion: every depth >= 2 and inf tends to a rank-one completion as init -> 0",
            "Menon's question: W(t) -> rank one (Shin & Yun: iff coupled)",
            f"reflection W(0), depths {', '.join(f'{d:g}' for d in two)}: {rank_one[1]}; depth 2's closed form: "
            f"{exact}; at s = {float(ds['pair_scale'].max()):g}: {order}; rotation W(0): "
            f"{tends_to_rank_one(ds, two[-1], rotations)[1] if rotations else 'not run'}",
            rank_one[0],
        ),
        row(
            "volume proposal, depth inf: its completion has more volume than depth 1's (metric g_inf)",
            "implicit regularisation = bias to high volume",
            f"log vol {vol_inf[1]} (init {small:g})",
            vol_inf[0],
        ),
        row(
            "volume proposal, every finite depth >= 2: more volume than depth 1's completion (own metric N g_N)",
            "implicit regularisation = bias to high volume",
            "; ".join(f"N = {d:g}: {t}" for d, (_, t) in zip(finite, vol_finite, strict=True)),
            all(ok for ok, _ in vol_finite) and bool(finite),
        ),
        row(
            "volume proposal across depths (one metric, g_inf): lower effective rank <-> higher volume",
            "implicit regularisation = bias to high volume",
            f"init {small:g}: {order_small[1]}; init {big:g}: {order_big[1]}",
            order_small[0] and order_big[0],
        ),
    ]


def plot(ds: xr.Dataset, outdir: Path) -> list[Path]:
    """The limit (distance to ∞ against τ and N, log-volume along τ) at the large init; the effective rank against
    depth at both inits, with the recovery error; the 2×2 example's distance to rank one against the init scale."""
    fig, axes = figure(ncols=3, width=4.0)
    big = ds.attrs["scale"]
    at = ds.sel(scale=big)
    t = ds["time"].values
    pos = t > 0
    colors = {d: f"C{i}" for i, d in enumerate(ds["depth"].values)}
    for d in ds["depth"].values:
        if np.isfinite(d):
            axes[0, 0].loglog(t[pos], at["distance_to_inf"].sel(depth=d)[pos], color=colors[d], label=depth_label(d))
        axes[0, 2].semilogx(t[pos], at["log_volume"].sel(depth=d)[pos], color=colors[d], label=depth_label(d))
    axes[0, 0].set(xlabel=r"rescaled time $\tau = N t$", ylabel=r"$\|W_N - W_\infty\|_F / \|M\|_F$",
                   title=f"init {big:g}")  # fmt: skip
    axes[0, 0].legend(fontsize=7)
    finite = [d for d in ds["depth"].values if np.isfinite(d) and d >= 2]
    end = at["distance_to_inf"].isel(time=-1).sel(depth=finite)
    sup = at["distance_to_inf"].max("time").sel(depth=finite)
    lv = at["volume_of_limit"]
    vol = abs(lv - lv.sel(depth=np.inf)).sel(depth=finite)
    axes[0, 1].loglog(finite, end, "o-", label=r"$\|W_N - W_\infty\|_F / \|M\|_F$ at $\tau_{end}$")
    axes[0, 1].loglog(finite, sup, "^--", color="0.6", label=r"the same, $\sup_\tau$ (escapes)")
    axes[0, 1].loglog(finite, vol, "s-", label=r"$|\log vol_N - \log vol_\infty|$ at $W_\infty(\tau_{end})$")
    for series in (end, vol):
        ref = series.sel(depth=finite[-1]).values * finite[-1] / np.array(finite, dtype=float)
        axes[0, 1].loglog(finite, ref, "k:", lw=1)
    axes[0, 1].set(xlabel="depth N", ylabel="difference from depth ∞",
                   title=f"exponents {slope(ds):.2f} (W), {volume_slope(ds):.2f} (volume); dotted: 1/N")  # fmt: skip
    axes[0, 1].legend(fontsize=7)
    axes[0, 2].set(xlabel=r"rescaled time $\tau = N t$", ylabel="log-volume of W (metric N g_N; + const)")
    axes[0, 2].legend(fontsize=7)
    first = save_figure(fig, outdir, f"{NAME}-limit.png")

    fig, axes = figure(ncols=3, width=4.2)
    depth = ds["depth"].values
    position = np.where(np.isfinite(depth), depth, 2 * depth[np.isfinite(depth)].max())
    ticks = ["∞" if not np.isfinite(d) else f"{d:g}" for d in depth]
    title = f"{ds.attrs['shape'][0]}×{ds.attrs['shape'][1]} rank {ds.attrs['rank']}, |Ω| = {ds.attrs['observed']}"
    for scale, marker in zip(ds["scale"].values, "os", strict=True):
        er = ds["effective_rank"].sel(scale=scale).isel(time=-1)
        axes[0, 0].semilogx(position, er, marker + "-", label=f"init {scale:g}")
        err = ds["recovery_error"].sel(scale=scale).isel(time=-1)
        axes[0, 1].loglog(position, err, marker + "-", label=f"init {scale:g}")
    axes[0, 0].axhline(ds.attrs["target_effective_rank"], color="k", ls=":", label="target M")
    axes[0, 1].axhline(RECOVERED, color="k", ls=":", label="recovered below")
    for ax, label in (
        (axes[0, 0], "effective rank of W at the end"),
        (axes[0, 1], r"$\|W - M\|_F/\|M\|_F$ at the end"),
    ):
        ax.set_xticks(position, ticks)
        ax.minorticks_off()
        ax.set(xlabel="depth N", ylabel=label, title=title)
        ax.legend(fontsize=7)
    sv = ds["pair_singular_values"]
    ratio = sv.isel(pair_k=1) / sv.isel(pair_k=0)
    scales = ds["pair_scale"].values
    reflections = reflection_seeds(ds)
    for i, d in enumerate(ds["pair_depth"].values):
        for seed in ds["pair_seed"].values:
            rotation = int(seed) not in reflections
            first_reflection = not rotation and int(seed) == reflections[0]
            axes[0, 2].loglog(scales, ratio.sel(pair_depth=d, pair_seed=seed), "x--" if rotation else "o-",
                              color=f"C{i}", label=depth_label(d) if first_reflection else None)  # fmt: skip
    seed = reflections[0]
    exact = [_ratio(pair_closed_form(ds["pair_initial"].sel(pair_scale=s, pair_seed=seed).values, 2)) for s in scales]
    axes[0, 2].loglog(scales, exact, ":", color="C1", label="depth 2, closed form")
    axes[0, 2].loglog(scales, scales, "k:", lw=1, label=r"$s$")
    axes[0, 2].set(xlabel="init scale s (W(0) = s·O)", ylabel=r"$\sigma_2/\sigma_1$ of the completion",
                   title="2×2 from its diagonal; dashed: rotation O")  # fmt: skip
    axes[0, 2].legend(fontsize=6, loc="lower right", ncol=2)
    return [first, save_figure(fig, outdir, f"{NAME}-completions.png")]
