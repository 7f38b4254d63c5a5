"""Arora, Cohen, Hu, Luo (2019): deeper matrix factorisations complete a low-rank matrix with lower effective rank.

Matrix completion of a rank-r n×n matrix M = UVᵀ/√r (‖M‖_F = n) from |Ω| entries drawn uniformly; gradient flow
of depth-N linear networks from a small Gaussian initialisation, and the nuclear-norm minimiser as the baseline.
Deeper networks end at a lower effective rank and recover M better when |Ω| is small, where the nuclear norm
fails. Their code (README) sweeps depths 2–4, init 1e-3…1e-6 and |Ω| ∈ {2000, 5000} on one 100×100 rank-5 M.
``FULL`` runs that grid as Dask sweeps (`dlnode.sweep`, one per depth and |Ω|, every (scale, seed) cell a task, on
a local cluster of one process per core); ``QUICK`` runs the same plans as `dlnode.integrate` calls (tested equal).

Their code (github.com/roosephu/deep_matrix_factorization), mapped to dlnode:

- loss: the mean over Ω of (W_ij − M_ij)², not halved. dlnode's ``MatrixCompletion(M, mask, normalize=True)`` is
  ℓ = (1/2|Ω|) Σ_Ω (W_ij − M_ij)², so theirs = 2ℓ; their lr η is dlnode's lr 2η, and their GD step k sits at
  dlnode flow time t = 2ηk. This study integrates the gradient flow (their small-lr limit), on the unnormalised
  loss ½Σ_Ω (the same trajectory on the time t/|Ω|: dlnode's default horizon, set from the target's norm, is too
  short for the normalised loss) and reports times and losses in the normalised convention.
- initialisation: each layer N(0, s^{2/N}/n) with end-to-end scale s (``init_scales``), i.e. dlnode's
  ``init="gaussian"`` with ``scale=s, scale_of="product"`` (each layer s^{1/N}). Depth ∞ is the balanced
  end-to-end flow of Cohen, Menon & Veraszto with W(0) = s·Q_out Q_inᵀ (``flow="end_to_end"``,
  ``init="balanced"``, ``scale=s, scale_of="product"``), on its rescaled time τ = N t.
- metrics: their test loss (mean over all n² entries of the squared error) is ‖W − M‖²_F/n² = (relative error)²
  because ‖M‖_F = n; this study reports the relative error ‖W − M‖_F/‖M‖_F and the effective rank of W
  (Roy–Vetterli, exp of the entropy of σ/Σσ).
- baseline: min ‖X‖_* subject to X_ij = M_ij on Ω, solved here by ADMM with singular-value thresholding and
  certified by its duality gap (theirs: cvxpy's SCS with |X_ij − M_ij| ≤ 1e-3 on Ω).
- optimiser: theirs is GroupRMSprop (one global adaptive step lr/√(running mean of ‖∇‖²), lr 1e-3 or 3e-4), a
  time change of gradient descent; this study integrates the gradient flow. Their loop was run once on this
  study's instances (`AUTHORS`, below): at lr 1e-3 it can end elsewhere than the flow (see the row's "paper").
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import distributed
import numpy as np
import xarray as xr

import dlnode as dln

from ._common import depth_label, figure, row, save_figure

NAME = "arora2019"
TITLE = "Deep matrix factorisation: depth lowers the effective rank of the completion"
PAPER = "Arora, Cohen, Hu, Luo (2019), arXiv 1905.13655"

# their grid (README of their code): 100×100 rank 5, |Ω| 2000 and 5000, depths 2–4, init 1e-3…1e-6; plus depth ∞
FULL = {
    "shape": (100, 100),
    "rank": 5,
    "observed": [2000, 5000],
    "depths": [2, 3, 4],
    "infinite": True,
    "init_scales": [1e-3, 1e-4, 1e-5, 1e-6],
    "inf_scales": [1e-3],
    "init_seeds": [0, 1, 2],
    "seed": 0,
    "saveat": 80,
    "loss_tol": 1e-7,
    "method_inf": "auto",
    "sweep": True,  # their grid as Dask sweeps (one per depth and |Ω|) on a local cluster
    "workers": None,  # its processes (None: one per core)
}
QUICK = {
    **FULL,
    "shape": (30, 30),
    "rank": 3,
    "observed": [300, 540],
    "depths": [2, 3],
    "init_scales": [1e-3, 1e-4],
    "init_seeds": [0],
    "sweep": False,  # one integrate call per depth (the test suite's configuration)
}
# the demo's --quick and the command-line tests: seconds, depth ∞ left out
SMOKE = {**QUICK, "shape": (20, 20), "rank": 2, "observed": [160, 300], "depths": [1, 3], "infinite": False,
         "init_scales": [1e-3]}  # fmt: skip

RECOVERED = 1e-2  # relative error ‖W − M‖_F/‖M‖_F below which M counts as recovered (their test loss 1e-4)
ERANK_RTOL = 0.05  # "ends at the target's effective rank": within 5 % of erank(M)
BEATS_NUCLEAR = 10.0  # "beats the nuclear norm": error at least 10× below the min-nuclear-norm completion's
INIT_SLOPE = 0.1  # error ∝ init^slope: "the error depends on the init" is a fitted slope above this
GAP_TOL = 1e-6  # relative duality gap of the nuclear-norm baseline
FIT = 1e-4  # final/initial training loss below which a run fits Ω

# Their training loop (main.py: gaussian init, GroupRMSprop at lr 1e-3, stop at train loss ≤ 1e-6) run once on
# this study's instances (dlnode's MatrixCompletion.random, seed 0), torch 2.13 CPU float32, torch seed 0: relative
# error ‖W − M‖_F/‖M‖_F and effective rank at the end. Keys: (n, |Ω|, depth, init). At 30×30, |Ω| = 300, depth 3,
# torch's draw ends on a rank-4 completion (error 0.172, erank 3.40, the same at lr 3e-4); the same loop started
# from dlnode's W(0) (seed 0) ends at error 5.4e-3, erank 2.93, as the flow does: there the draw decides.
AUTHORS = {
    (100, 2000, 2.0, 1e-3): (0.207, 8.50),
    (100, 2000, 2.0, 1e-4): (0.130, 6.82),
    (100, 2000, 2.0, 1e-6): (0.056, 5.56),
    (100, 2000, 3.0, 1e-6): (7.43e-3, 4.91),
    (30, 300, 2.0, 1e-4): (0.101, 3.61),
    (100, 2000, 3.0, 1e-3): (5.98e-3, 4.99),
    (100, 2000, 4.0, 1e-3): (6.05e-3, 4.96),
    (100, 5000, 2.0, 1e-3): (3.71e-3, 5.10),
    (30, 300, 2.0, 1e-3): (0.185, 4.28),
    (30, 300, 3.0, 1e-3): (0.172, 3.40),
}


def nuclear_norm_completion(
    target: np.ndarray, mask: np.ndarray, gap_tol: float = 1e-7, max_iter: int = 50_000
) -> tuple[np.ndarray, float]:
    """The minimum-nuclear-norm completion min ‖X‖_* s.t. X_ij = M_ij on Ω, by ADMM.

    Splitting X = Z with Z in the affine set C = {Z : Z_Ω = M_Ω}: X ← SVT_{1/ρ}(Z − U) (soft-thresholded singular
    values), Z ← proj_C(X + U), U ← U + X − Z. After each iteration U vanishes off Ω, so Y = −ρU is a dual point
    supported on Ω, and for every feasible X, ‖X‖_* ≥ ⟨Y, X⟩/‖Y‖₂ = ⟨Y, M⟩/‖Y‖₂. Iteration stops when the relative
    gap between the feasible Z's nuclear norm and that lower bound is below `gap_tol`; ρ is rebalanced from the
    primal and dual residuals (Boyd et al. 2011, §3.4.1).

    Returns
    -------
    (Z, relative duality gap): Z matches M on Ω exactly.
    """
    observed = np.where(mask, target, 0.0)
    rho = 10.0 / np.linalg.norm(observed, 2)
    z, u, gap = observed.copy(), np.zeros_like(observed), np.inf
    for it in range(max_iter):
        left, s, right = np.linalg.svd(z - u, full_matrices=False)
        x = (left * np.maximum(s - 1.0 / rho, 0.0)) @ right
        z_old, z = z, np.where(mask, target, x + u)
        u = u + x - z
        if it % 25:
            continue
        dual = -rho * u
        upper = np.linalg.svd(z, compute_uv=False).sum()
        gap = (upper - np.sum(dual * observed) / np.linalg.norm(dual, 2)) / upper
        if gap < gap_tol:
            break
        primal, dual_res = np.linalg.norm(x - z), rho * np.linalg.norm(z - z_old)
        if primal > 10 * dual_res or dual_res > 10 * primal:
            factor = 2.0 if primal > dual_res else 0.5
            rho, u = rho * factor, u / factor
    return z, float(gap)


def effective_rank(sv: np.ndarray) -> float:
    """Roy–Vetterli effective rank exp(H(σ/Σσ)) of a spectrum (their code's and this study's measure)."""
    p = np.asarray(sv, dtype=float)
    p = p[p > 0] / p[p > 0].sum()
    return float(np.exp(-np.sum(p * np.log(p))))


def _final(ds: xr.Dataset, observed: int) -> dict[str, np.ndarray]:
    """(scale, seed) arrays of one integrate call's final state: spectra, effective rank, error, losses, status."""
    sv = ds["singular_values"].isel(depth=0, time=-1).transpose("scale", "seed", "k").values
    loss = ds["loss"].isel(depth=0).transpose("scale", "seed", "time").values
    return {
        "sv": sv,
        "erank": np.apply_along_axis(effective_rank, -1, sv),
        "error": ds.dln.recovery_error().isel(depth=0, time=-1).transpose("scale", "seed").values,
        "loss": 2.0 * loss[..., -1] / observed,
        "loss0": 2.0 * loss[..., 0] / observed,
        "status": ds["status"].isel(depth=0).transpose("scale", "seed").values,
        "wall": ds["wall_time"].isel(depth=0).transpose("scale", "seed").values if "run_time" not in ds.attrs
        else np.full(sv.shape[:2], float(ds.attrs["run_time"] + ds.attrs["compile_time"]) / sv[..., 0].size),
    }  # fmt: skip


def _grid_run(prob: dln.MatrixCompletion, config: dict, client: Any, depth: Any, scales: list[float],
              **call: Any) -> xr.Dataset:  # fmt: skip
    """The integrate call of one depth as a Dask sweep of its (scale, seed) cells on `client`, into a zarr store
    in a temporary directory (the study keeps only the reduced dataset): the same plan, cell by cell."""
    shape, rank, seed = list(config["shape"]), int(config["rank"]), int(config["seed"])
    grid = {"depth": [depth], "scale": scales, "seed": list(config["init_seeds"]), "init": [call.pop("init")]}
    grid |= {key: [call.pop(key)] for key in ("flow", "method") if key in call}
    sweep_config = {
        "problem": {"kind": "matrix_completion", "shape": shape, "rank": rank, "observed": int(prob.mask.sum()),
                    "seed": seed},
        "grid": grid,
        "integrate": {"saveat": int(config["saveat"]), "loss_tol": float(config["loss_tol"]), **call},
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="arora2019-") as where:
        return dln.sweep(sweep_config, Path(where) / "cells.zarr", client=client, progress=False).load()


def _run(prob: dln.MatrixCompletion, depth: float, config: dict, client: Any = None) -> dict[str, np.ndarray]:
    """One depth on one problem over init scale × seed, padded with NaN where depth ∞ does not run a scale; as one
    `integrate` call, or (`client`: a Dask client) as a sweep of its cells on that cluster."""
    common = {"seed": config["init_seeds"], "saveat": config["saveat"], "loss_tol": config["loss_tol"]}
    scales = [float(s) for s in config["init_scales"]]
    observed = int(prob.mask.sum())
    if np.isfinite(depth):
        if client is not None:
            return _final(_grid_run(prob, config, client, int(depth), scales, init="gaussian", scale_of="product"),
                          observed)  # fmt: skip
        ds = dln.integrate(prob, depth=int(depth), init="gaussian", scale=scales, scale_of="product",
                           progress=False, **common)  # fmt: skip
        return _final(ds, observed)
    chosen = [s for s in scales if s in [float(x) for x in config["inf_scales"]]]
    if client is not None:
        ds = _grid_run(prob, config, client, "inf", chosen, init="balanced", flow="end_to_end",
                       method=config["method_inf"], scale_of="product")  # fmt: skip
    else:
        ds = dln.integrate(prob, depth="inf", flow="end_to_end", init="balanced", scale=chosen, scale_of="product",
                           method=config["method_inf"], progress=False, **common)  # fmt: skip
    part = _final(ds, observed)
    out = {}
    for key, value in part.items():
        full = np.full((len(scales), *value.shape[1:]), np.nan if key != "status" else -1, dtype=value.dtype)
        full[[scales.index(s) for s in chosen]] = value
        out[key] = full
    return out


def _one_problem(observed: int, config: dict, client: Any = None) -> dict[str, np.ndarray]:
    # Integrated on the unnormalised loss ½Σ_Ω(W_ij − M_ij)², whose flow is the normalised one's on the time
    # t_norm = |Ω| t (dlnode's default horizon is set from the target's norm and misses the 1/|Ω| of
    # normalize=True); losses are reported in their convention (mean over Ω, not halved).
    prob = dln.MatrixCompletion.random(config["shape"], config["rank"], observed, config["seed"])
    depths = [float(d) for d in config["depths"]] + ([np.inf] if config["infinite"] else [])
    runs = [_run(prob, d, config, client) for d in depths]
    nuclear, gap = nuclear_norm_completion(prob.target_matrix, prob.mask)
    out = {key: np.stack([r[key] for r in runs]) for key in runs[0]}
    nuclear_sv = np.linalg.svd(nuclear, compute_uv=False)
    out.update(
        depths=np.array(depths),
        nuclear_sv=nuclear_sv,
        nuclear_erank=effective_rank(nuclear_sv),
        nuclear_error=np.linalg.norm(nuclear - prob.target_matrix) / np.linalg.norm(prob.target_matrix),
        gap=gap,
        target_sv=np.linalg.svd(prob.target_matrix, compute_uv=False),
    )
    return out


def compute(config: dict) -> xr.Dataset:
    """Every depth (and ∞) × init scale × seed on every |Ω|: final spectra, effective rank, error; the baseline."""
    if config.get("sweep"):  # every depth's cells as a Dask sweep on one local cluster (one process per core)
        workers = config.get("workers") or len(os.sched_getaffinity(0))
        with distributed.LocalCluster(n_workers=workers, threads_per_worker=1,
                                      processes=True, dashboard_address=None) as cluster,  \
                distributed.Client(cluster) as client:  # fmt: skip
            parts = [_one_problem(int(m), config, client) for m in config["observed"]]
    else:
        parts = [_one_problem(int(m), config) for m in config["observed"]]
    run = ("observed", "depth", "scale", "seed")
    nuc = "min-nuclear-norm completion"

    def stack(key: str) -> np.ndarray:
        return np.stack([np.asarray(p[key]) for p in parts])

    data = {
        "singular_values": ((*run, "k"), stack("sv"), "singular values of the final W"),
        "effective_rank": (run, stack("erank"), "effective rank of the final W (Roy-Vetterli)"),
        "recovery_error": (run, stack("error"), "||W - M||_F / ||M||_F at the end"),
        "train_loss": (run, stack("loss"), "final loss, their convention: mean over Omega of (W_ij - M_ij)^2"),
        "initial_loss": (run, stack("loss0"), "initial loss, their convention"),
        "status": (run, stack("status"), "dlnode run status (1 converged; -1: not run)"),
        "wall_time": (run, stack("wall"), "run plus compile time of the integration, per run [s]"),
        "nuclear_singular_values": (("observed", "k"), stack("nuclear_sv"), f"singular values of the {nuc}"),
        "nuclear_effective_rank": ("observed", stack("nuclear_erank"), f"effective rank of the {nuc}"),
        "nuclear_error": ("observed", stack("nuclear_error"), f"||X - M||_F / ||M||_F of the {nuc}"),
        "nuclear_gap": ("observed", stack("gap"), f"relative duality gap of the {nuc}"),
        "target_singular_values": (("observed", "k"), stack("target_sv"), "singular values of M"),
    }
    variables = {k: (dims, v, {"long_name": ln, "units": "s" if k == "wall_time" else "1"})
                 for k, (dims, v, ln) in data.items()}  # fmt: skip
    coords = {
        "observed": ("observed", np.array(config["observed"], dtype=np.int64), {"long_name": "|Omega|"}),
        "depth": ("depth", parts[0]["depths"], {"long_name": "network depth N (inf: end-to-end limit)"}),
        "scale": ("scale", np.array(config["init_scales"], dtype=float), {"long_name": "end-to-end init scale s"}),
        "seed": ("seed", np.array(config["init_seeds"], dtype=np.int64), {"long_name": "init seed"}),
    }
    attrs = {
        "shape": list(config["shape"]),
        "rank": int(config["rank"]),
        "problem_seed": int(config["seed"]),
        "loss_convention": "theirs: mean over Omega of (W_ij - M_ij)^2 = 2 l, l of MatrixCompletion(normalize=True)",
        "lr_mapping": "their lr eta = dlnode lr 2 eta; their step k = dlnode flow time 2 eta k (this study: flow)",
        "init_convention": "layers N(0, s^(2/N)/n), s = scale: dlnode init='gaussian', scale=s, "
        "scale_of='product'; depth inf: flow='end_to_end', init='balanced', scale=s, scale_of='product' (tau = N t)",
    }
    return xr.Dataset(variables, coords=coords, attrs=attrs)


def _target_erank(ds: xr.Dataset, m: int) -> float:
    target = ds["target_singular_values"].sel(observed=m).values
    return effective_rank(target[target > 1e-12 * target[0]])


def _at_smallest_init(ds: xr.Dataset, var: str, m: int, depth: float) -> xr.DataArray:
    """`var` over seeds at the smallest init scale this depth ran (depth ∞ runs only some scales)."""
    da = ds[var].sel(observed=m, depth=depth)
    ran = da["scale"].values[(ds["status"].sel(observed=m, depth=depth) >= 0).all("seed").values]
    return da.sel(scale=ran.min())


def recovers(ds: xr.Dataset, m: int, depth: float) -> tuple[bool, str]:
    """At |Ω| = m, depth N's completion from the smallest init recovers M (worst seed below `RECOVERED`)."""
    if depth not in ds["depth"].values:
        return False, f"depth {depth:g} not run: not tested"
    worst = float(_at_smallest_init(ds, "recovery_error", m, depth).max())
    return worst < RECOVERED, f"error {worst:.1e}"


def erank_at_target(ds: xr.Dataset, m: int, depth: float) -> tuple[bool, str]:
    """At |Ω| = m, depth N ends at the target's effective rank (every seed within `ERANK_RTOL`)."""
    if depth not in ds["depth"].values:
        return False, f"depth {depth:g} not run: not tested"
    er, target = _at_smallest_init(ds, "effective_rank", m, depth), _target_erank(ds, m)
    worst = float(abs(er - target).max() / target)
    return worst <= ERANK_RTOL, f"erank {float(er.median()):.2f} (M: {target:.2f})"


def init_slope(ds: xr.Dataset, m: int, depth: float) -> tuple[bool, str]:
    """At |Ω| = m, the fitted slope of ln(error) against ln(init scale) (median over seeds) exceeds `INIT_SLOPE`:
    the completion this depth selects still depends on the init (depth 2's, in their init sweep)."""
    if depth not in ds["depth"].values or ds.sizes["scale"] < 2:
        return False, "fewer than two init scales: not tested"
    err = ds["recovery_error"].sel(observed=m, depth=depth).median("seed")
    keep = np.isfinite(err.values)
    if keep.sum() < 2:
        return False, "fewer than two init scales ran: not tested"
    slope = float(np.polyfit(np.log(err["scale"].values[keep]), np.log(err.values[keep]), 1)[0])
    return slope > INIT_SLOPE, f"slope {slope:.2f}"


def beats_nuclear(ds: xr.Dataset, m: int, depth: float) -> tuple[bool, str]:
    """At |Ω| = m, depth N's worst error is `BEATS_NUCLEAR`× below the min-nuclear-norm completion's."""
    if depth not in ds["depth"].values:
        return False, f"depth {depth:g} not run: not tested"
    worst = float(_at_smallest_init(ds, "recovery_error", m, depth).max())
    nuc = float(ds["nuclear_error"].sel(observed=m))
    return worst * BEATS_NUCLEAR < nuc, f"{worst:.1e} vs nuclear {nuc:.2f}"


def all_recover(ds: xr.Dataset, m: int) -> tuple[bool, str]:
    """At |Ω| = m, every depth ≥ 2 (from its smallest init, every seed) and the nuclear norm recover M."""
    worst = max(float(_at_smallest_init(ds, "recovery_error", m, d).max()) for d in ds["depth"].values if d >= 2)
    nuc = float(ds["nuclear_error"].sel(observed=m))
    return max(worst, nuc) < RECOVERED, f"max error {worst:.1e}; nuclear {nuc:.1e}"


def _authors_slope(n: int, m: int) -> str:
    """Their code's depth-2 slope of ln(error) against ln(init) between the smallest and largest init it ran."""
    runs = sorted((k[3], v[0]) for k, v in AUTHORS.items() if k[:3] == (n, m, 2.0))
    if len(runs) < 2:
        return "their code: not run at this size"
    (s0, e0), (s1, e1) = runs[0], runs[-1]
    slope = np.log(e1 / e0) / np.log(s1 / s0)
    return f"their code: error {e1:.3f} -> {e0:.3f} from init {s1:g} to {s0:g}, slope {slope:.2f}"


AUTHORS_NOTES = {(30, 300, 3.0, 1e-3): " (torch's draw; from dlnode's W(0): error 5.4e-03, erank 2.93)"}


def _authors(key: tuple) -> str:
    hit = AUTHORS.get(key)
    if hit is None:
        return ""
    return f"; their code (init {key[3]:g}): error {hit[0]:.1e}, erank {hit[1]:.2f}{AUTHORS_NOTES.get(key, '')}"


def check(ds: xr.Dataset) -> list[dict]:
    """Depth ≥ 3 (and ∞) recover M and end at its effective rank where shallower depths and the nuclear norm do not;
    their error falls with the init scale; every method recovers at the larger |Ω|; the baseline is optimal."""
    rows = []
    small, large = int(ds["observed"].values.min()), int(ds["observed"].values.max())
    depths = ds["depth"].values
    deep = [d for d in depths if d >= 3]
    shallow = [d for d in depths if d < 3]
    n = ds.attrs["shape"][0]
    if not deep or not shallow:
        rows.append(row("depth 3 separates from depth <= 2", "their Figure 2", "needs both: not tested", False))
    for d in deep:
        ok_r, r_txt = recovers(ds, small, d)
        ok_e, e_txt = erank_at_target(ds, small, d)
        rows.append(row(f"|Omega|={small}: depth {d:g} recovers M and ends at its effective rank",
                        f"depth >= 3 recovers at few observations{_authors((n, small, d, 1e-3))}",
                        f"{r_txt}; {e_txt}", ok_r and ok_e))  # fmt: skip
    for d in shallow:
        ok_r, r_txt = recovers(ds, small, d)
        ok_e, e_txt = erank_at_target(ds, small, d)
        rows.append(row(f"|Omega|={small}: depth {d:g} does not recover M (nor reach its effective rank)",
                        f"depth 2 fails at few observations{_authors((n, small, d, 1e-3))}",
                        f"{r_txt}; {e_txt}", not ok_r and not ok_e))  # fmt: skip
    for d in [d for d in deep if np.isfinite(d)][:1]:
        ok, txt = beats_nuclear(ds, small, d)
        rows.append(row(f"|Omega|={small}: depth {d:g} beats the nuclear norm by {BEATS_NUCLEAR:g}x",
                        "deep factorisations beat min nuclear norm at few observations", txt, ok))  # fmt: skip
    if 2.0 in depths and ds.sizes["scale"] >= 2:
        ok, txt = init_slope(ds, small, 2.0)
        rows.append(row(f"|Omega|={small}: depth 2's error depends on the init (falls as it shrinks, slope > "
                        f"{INIT_SLOPE:g})", f"depth 2 is not init-independent; {_authors_slope(n, small)}", txt,
                        ok))  # fmt: skip
        worst = float(ds["recovery_error"].sel(observed=small, depth=[d for d in deep if np.isfinite(d)]).max())
        rows.append(row(f"|Omega|={small}: depths >= 3 recover M from every init scale",
                        "deeper: small init suffices", f"max error {worst:.1e}", worst < RECOVERED))  # fmt: skip
    ok, txt = all_recover(ds, large)
    theirs = _authors((n, large, 2.0, 1e-3)).replace("their code", "their code, depth 2")
    rows.append(row(f"|Omega|={large}: every depth >= 2 (smallest init) and the nuclear norm recover M",
                    f"with many observations depth and nuclear norm both recover{theirs}", txt, ok))  # fmt: skip
    gap = float(ds["nuclear_gap"].max())
    rows.append(row("nuclear-norm baseline solved to optimality", "min ||X||_* s.t. X = M on Omega",
                    f"duality gap {gap:.1e} < {GAP_TOL:.0e}", gap < GAP_TOL))  # fmt: skip
    ran = ds["status"] >= 0
    fit = float((ds["train_loss"] / ds["initial_loss"]).where(ran).max())
    rows.append(row("every run fits the observed entries", "train loss -> 0 (their convention, 2 l)",
                    f"max final/initial loss {fit:.1e} < {FIT:.0e}", fit < FIT))  # fmt: skip
    return rows


def plot(ds: xr.Dataset, outdir: Path) -> list[Path]:
    """Final spectra per depth (smallest init, seed 0); error against init scale; effective rank against depth."""
    paths = []
    obs = ds["observed"].values
    fig, axes = figure(ncols=len(obs))
    k = np.arange(1, ds.sizes["k"] + 1)
    for ax, m in zip(axes[0], obs, strict=True):
        sub = ds.sel(observed=m)
        for i, d in enumerate(ds["depth"].values):
            sv = _at_smallest_init(ds, "singular_values", int(m), d).isel(seed=0)
            ax.semilogy(k, sv, "o-", ms=2.5, lw=1, color=f"C{i}", label=f"{depth_label(d)}, s = {float(sv.scale):g}")
        ax.semilogy(k, sub["nuclear_singular_values"], "k--", lw=1, label="min nuclear norm")
        ax.semilogy(k, sub["target_singular_values"], "k:", lw=1.2, label="target M")
        ax.set(xlabel="index i", ylabel=r"$\sigma_i(W)$ at the end", title=f"|Ω| = {m}", ylim=(1e-8, None))
        ax.legend(fontsize=6.5, loc="upper right")
    paths.append(save_figure(fig, outdir, f"{NAME}-spectra.png"))
    fig, axes = figure(ncols=2)
    ax = axes[0, 0]
    small = int(obs.min())
    for i, d in enumerate(ds["depth"].values):
        err = ds["recovery_error"].sel(observed=small, depth=d)
        ran = np.isfinite(err.median("seed").values)
        for seed in ds["seed"].values:
            ax.plot(ds["scale"].values[ran], err.sel(seed=seed).values[ran], ".", color=f"C{i}", ms=3)
        ax.plot(ds["scale"].values[ran], err.median("seed").values[ran], "o-", color=f"C{i}", ms=4,
                label=depth_label(d))  # fmt: skip
    ax.axhline(float(ds["nuclear_error"].sel(observed=small)), color="k", ls="--", lw=1, label="min nuclear norm")
    ax.axhline(RECOVERED, color="0.5", ls=":", lw=1, label=f"recovered ({RECOVERED:g})")
    ax.set(xscale="log", yscale="log", xlabel=r"init scale $s$ (their init_scale; layers $N(0, s^{2/N}/n)$)",
           ylabel=r"$\|W-M\|_F/\|M\|_F$ (their test loss = error²)", title=f"|Ω| = {small}")  # fmt: skip
    ax.invert_xaxis()
    ax.legend(fontsize=6.5)
    ax = axes[0, 1]
    x = np.arange(ds.sizes["depth"])
    names = [depth_label(d).replace("depth ", "") for d in ds["depth"].values]
    for i, m in enumerate(obs):
        er = [float(_at_smallest_init(ds, "effective_rank", int(m), d).median()) for d in ds["depth"].values]
        ax.plot(x, er, "o-", color=f"C{i}", label=f"depth N, |Ω| = {m}")
        ax.axhline(float(ds["nuclear_effective_rank"].sel(observed=m)), color=f"C{i}", ls="--", lw=1,
                   label=f"nuclear norm, |Ω| = {m}")  # fmt: skip
    ax.axhline(_target_erank(ds, int(obs.min())), color="k", ls=":", lw=1.2, label="target M")
    ax.set(xticks=x, xticklabels=names, xlabel="depth N (smallest init)", ylabel="effective rank of W", yscale="log")
    rows, cols = ds.attrs["shape"]
    ax.set_title(f"{rows}×{cols}, rank {ds.attrs['rank']}", fontsize=9)
    ax.legend(fontsize=6.5)
    paths.append(save_figure(fig, outdir, f"{NAME}-rank-vs-depth.png"))
    return paths
