"""Arora, Cohen, Hu, Luo (2019): deeper matrix factorisations complete a low-rank matrix with lower effective rank.

Matrix completion of a rank-r n×n matrix M = UVᵀ/√r (‖M‖_F = n) from |Ω| entries drawn uniformly; gradient flow
of depth-N linear networks from a small Gaussian initialisation, and the nuclear-norm minimiser as the baseline.
Deeper networks end at a lower effective rank and recover M better when |Ω| is small, where the nuclear norm
fails (their Figure 2).

Their code (github.com/roosephu/deep_matrix_factorization), mapped to dlnode:

- loss: the mean over Ω of (W_ij − M_ij)², not halved. dlnode's ``MatrixCompletion(M, mask, normalize=True)`` is
  ℓ = (1/2|Ω|) Σ_Ω (W_ij − M_ij)², so theirs = 2ℓ; their lr η is dlnode's lr 2η, and their GD step k sits at
  dlnode flow time t = 2ηk. This study integrates the gradient flow (their small-lr limit), on the unnormalised
  loss ½Σ_Ω (the same trajectory on the time t/|Ω|: dlnode's default horizon, set from the target's norm, is too
  short for the normalised loss) and reports times and losses in the normalised convention.
- initialisation: each layer N(0, s^{2/N}/n) with end-to-end scale s = 1e-3 (``init_scale``), i.e. dlnode's
  ``init="gaussian"`` with ``scale=s, scale_of="product"`` (each layer s^{1/N}). Depth ∞ is the balanced
  end-to-end flow of Cohen, Menon & Veraszto with W(0) = s·Q_out Q_inᵀ (``flow="end_to_end"``,
  ``init="balanced"``, ``scale=s, scale_of="product"``), on its rescaled time τ = N t.
- metrics: their test loss (mean over all n² entries of the squared error) is ‖W − M‖²_F/n² = (relative error)²
  because ‖M‖_F = n; this study reports the relative error ‖W − M‖_F/‖M‖_F and the effective rank of W
  (Roy–Vetterli, exp of the entropy of σ/Σσ).
- baseline: min ‖X‖_* subject to X_ij = M_ij on Ω, solved here by ADMM with singular-value thresholding and
  certified by its duality gap.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

import dlnode as dln

from ._common import depth_label, figure, pad_stack, row, save_figure

NAME = "arora2019"
TITLE = "Deep matrix factorisation: depth lowers the effective rank of the completion"
PAPER = "Arora, Cohen, Hu, Luo (2019), arXiv 1905.13655"

FULL = {
    "shape": (100, 100),
    "rank": 5,
    "observed": [2000, 5000],
    "depths": [1, 2, 3, 4],
    "infinite": True,
    "init_scale": 1e-3,
    "seed": 0,
    "init_seed": 0,
    "saveat": 80,
    "loss_tol": 1e-7,
    "method_inf": "auto",
}
# quick: depth ∞ left out (its end-to-end flow alone takes minutes here; the cmv2023 study covers it)
QUICK = {**FULL, "shape": (30, 30), "rank": 3, "observed": [300, 450], "depths": [1, 2, 3], "infinite": False}
# the demo's --quick and the command-line tests: seconds, depth ∞ left out
SMOKE = {**QUICK, "shape": (20, 20), "rank": 2, "observed": [160, 300], "depths": [1, 3], "infinite": False}

ERANK_FACTOR = 5.0  # the restatement of the claim: erank(depth 3) < erank(depth 1)/5
RECOVERED = 1e-2  # relative error below which M counts as recovered
GAP_TOL = 1e-6  # relative duality gap of the nuclear-norm baseline


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


def _effective_rank(sv: np.ndarray) -> float:
    p = sv / sv.sum()
    p = p[p > 0]
    return float(np.exp(-np.sum(p * np.log(p))))


def _run(prob: dln.MatrixCompletion, depth: float, config: dict) -> xr.Dataset:
    common = {"seed": config["init_seed"], "saveat": config["saveat"], "loss_tol": config["loss_tol"]}
    s = config["init_scale"]
    if np.isfinite(depth):
        return dln.integrate(
            prob, depth=int(depth), init="gaussian", scale=s, scale_of="product", progress=False, **common
        )
    return dln.integrate(
        prob,
        depth="inf",
        flow="end_to_end",
        init="balanced",
        scale=s,
        scale_of="product",
        method=config["method_inf"],
        progress=False,
        **common,
    )


def _one_problem(observed: int, config: dict) -> dict[str, np.ndarray]:
    # Integrated on the unnormalised loss ½Σ_Ω(W_ij − M_ij)², whose flow is the normalised one's on the time
    # t_norm = |Ω| t (dlnode's default horizon is set from the target's norm and misses the 1/|Ω| of
    # normalize=True); times and losses are reported in the normalised convention.
    prob = dln.MatrixCompletion.random(config["shape"], config["rank"], observed, config["seed"])
    depths = [float(d) for d in config["depths"]] + ([np.inf] if config["infinite"] else [])
    out: dict[str, list] = {k: [] for k in ("sv", "erank", "error", "loss", "status", "wall", "time", "tloss", "terr")}
    for depth in depths:
        ds = _run(prob, depth, config).isel(depth=0, scale=0, seed=0)
        sv = ds["singular_values"].isel(time=-1).values
        out["sv"].append(sv)
        out["erank"].append(_effective_rank(sv))
        out["error"].append(float(ds.dln.recovery_error().isel(time=-1)))
        out["loss"].append(2.0 * float(ds["loss"].isel(time=-1)) / observed)
        out["status"].append(int(ds["status"]))
        out["wall"].append(float(ds.attrs["run_time"] + ds.attrs["compile_time"]))
        out["time"].append(observed * ds["time"].values)
        out["tloss"].append(2.0 * ds["loss"].values / observed)
        out["terr"].append(ds.dln.recovery_error().values)
    nuclear, gap = nuclear_norm_completion(prob.target_matrix, prob.mask)
    return {
        "depths": np.array(depths),
        "sv": np.stack(out["sv"]),
        "erank": np.array(out["erank"]),
        "error": np.array(out["error"]),
        "loss": np.array(out["loss"]),
        "status": np.array(out["status"]),
        "wall": np.array(out["wall"]),
        "time": pad_stack(out["time"]),
        "tloss": pad_stack(out["tloss"]),
        "terr": pad_stack(out["terr"]),
        "nuclear_sv": np.linalg.svd(nuclear, compute_uv=False),
        "nuclear_error": np.linalg.norm(nuclear - prob.target_matrix) / np.linalg.norm(prob.target_matrix),
        "gap": gap,
        "target_sv": np.linalg.svd(prob.target_matrix, compute_uv=False),
    }


def compute(config: dict) -> xr.Dataset:
    """Every depth (and ∞) on every |Ω|: final spectra, effective rank, recovery error, trajectories, baseline."""
    parts = [_one_problem(int(m), config) for m in config["observed"]]
    steps = max(p["time"].shape[1] for p in parts)

    def stack(key: str) -> np.ndarray:
        arrays = [np.asarray(p[key]) for p in parts]
        if key in ("time", "tloss", "terr"):
            arrays = [np.pad(a, ((0, 0), (0, steps - a.shape[1])), constant_values=np.nan) for a in arrays]
        return np.stack(arrays)

    run, traj, nuc = ("observed", "depth"), ("observed", "depth", "save"), "min-nuclear-norm completion"
    data = {
        "singular_values": ((*run, "k"), stack("sv"), "singular values of the final W"),
        "effective_rank": (run, stack("erank"), "effective rank of the final W (Roy-Vetterli)"),
        "recovery_error": (run, stack("error"), "||W - M||_F / ||M||_F at the end"),
        "train_loss": (run, stack("loss"), "final loss, their convention: mean over Omega of (W_ij - M_ij)^2"),
        "status": (run, stack("status"), "dlnode run status (0 reached t1, 1 converged)"),
        "wall_time": (run, stack("wall"), "run plus compile time of the integration [s]"),
        "run_time": (traj, stack("time"), "flow time of the normalised loss, |Omega| t (depth inf: tau = N t)"),
        "run_loss": (traj, stack("tloss"), "loss along the run, their convention (2 l)"),
        "run_error": (traj, stack("terr"), "||W(t) - M||_F / ||M||_F along the run"),
        "nuclear_singular_values": (("observed", "k"), stack("nuclear_sv"), f"singular values of the {nuc}"),
        "nuclear_effective_rank": (
            "observed",
            np.array([_effective_rank(p["nuclear_sv"]) for p in parts]),
            f"effective rank of the {nuc}",
        ),
        "nuclear_error": ("observed", stack("nuclear_error"), f"||X - M||_F / ||M||_F of the {nuc}"),
        "nuclear_gap": ("observed", stack("gap"), f"relative duality gap of the {nuc}"),
        "target_singular_values": (("observed", "k"), stack("target_sv"), "singular values of M"),
    }
    units = {"wall_time": "s", "run_time": "time"}
    variables = {k: (dims, v, {"long_name": ln, "units": units.get(k, "1")}) for k, (dims, v, ln) in data.items()}
    coords = {
        "observed": ("observed", np.array(config["observed"], dtype=np.int64), {"long_name": "|Omega|"}),
        "depth": ("depth", parts[0]["depths"], {"long_name": "network depth N (inf: end-to-end limit)"}),
    }
    attrs = {
        "shape": list(config["shape"]),
        "rank": int(config["rank"]),
        "init_scale": float(config["init_scale"]),
        "problem_seed": int(config["seed"]),
        "init_seed": int(config["init_seed"]),
        "loss_convention": "theirs: mean over Omega of (W_ij - M_ij)^2 = 2 l, l of MatrixCompletion(normalize=True)",
        "lr_mapping": "their lr eta = dlnode lr 2 eta; their step k = dlnode flow time 2 eta k (this study: flow)",
        "time_convention": "run_time is the flow time of MatrixCompletion(normalize=True), = |Omega| x that of the "
        "unnormalised loss the flow was integrated on (the same trajectory)",
        "init_convention": "layers N(0, s^(2/N)/n), s = init_scale: dlnode init='gaussian', scale=s, "
        "scale_of='product'; depth inf: flow='end_to_end', init='balanced', scale=s, scale_of='product' (tau = N t)",
    }
    return xr.Dataset(variables, coords=coords, attrs=attrs)


def check(ds: xr.Dataset) -> list[dict]:
    """Deeper → lower effective rank and better recovery than the nuclear norm at small |Ω|; all fit Ω."""
    rows = []
    small, large = ds["observed"].values.min(), ds["observed"].values.max()
    finite = ds["depth"].values[np.isfinite(ds["depth"].values)]
    deep = 3.0 if 3.0 in finite else finite.max()
    for m in ds["observed"].values:
        er = ds["effective_rank"].sel(observed=m)
        e1, ed = float(er.sel(depth=1.0)), float(er.sel(depth=deep))
        rows.append(
            row(
                f"|Omega|={m}: erank(depth {deep:g}) < erank(depth 1)/{ERANK_FACTOR:g}",
                "deeper -> lower effective rank (§2-3)",
                f"{ed:.2f} vs {e1:.2f}/{ERANK_FACTOR:g} = {e1 / ERANK_FACTOR:.2f}",
                ed < e1 / ERANK_FACTOR,
            )
        )
    err = ds["recovery_error"].sel(observed=small)
    nuc = float(ds["nuclear_error"].sel(observed=small))
    ed = float(err.sel(depth=deep))
    rows.append(
        row(
            f"|Omega|={small}: depth {deep:g} recovers M, the nuclear norm does not",
            "depth >= 3 beats the nuclear norm at few observations (§2)",
            f"error {ed:.1e} (depth {deep:g}) vs {nuc:.2f} (nuclear)",
            ed < RECOVERED < nuc,
        )
    )
    big = ds["recovery_error"].sel(observed=large)
    worst = float(big.sel(depth=big["depth"] >= deep).max())
    nuc_big = float(ds["nuclear_error"].sel(observed=large))
    two = f"; depth 2 {float(big.sel(depth=2.0)):.1e}" if 2.0 in big["depth"].values else ""
    rows.append(
        row(
            f"|Omega|={large}: depths >= {deep:g} and the nuclear norm recover M",
            "with many observations depth and nuclear norm both recover (§2)",
            f"max error {worst:.1e}; nuclear {nuc_big:.1e}{two}",
            max(worst, nuc_big) < RECOVERED,
        )
    )
    if np.inf in ds["depth"].values:
        target = ds["target_singular_values"].sel(observed=small).values
        t_erank = _effective_rank(target[target > 1e-12 * target[0]])
        e_inf = float(ds["effective_rank"].sel(observed=small, depth=np.inf))
        rows.append(
            row(
                f"|Omega|={small}: depth inf ends at the target's effective rank (within 2%)",
                "the infinite-depth limit keeps the low-rank bias (CMV 2023)",
                f"{e_inf:.3f} vs erank(M) = {t_erank:.3f}",
                abs(e_inf - t_erank) < 0.02 * t_erank,
            )
        )
    gap = float(ds["nuclear_gap"].max())
    rows.append(
        row(
            "nuclear-norm baseline solved to optimality",
            "min ||X||_* s.t. X = M on Omega",
            f"duality gap {gap:.1e} < {GAP_TOL:.0e}",
            gap < GAP_TOL,
        )
    )
    fit = float(ds["train_loss"].max() / ds["run_loss"].isel(save=0).min())
    rows.append(
        row(
            "every run fits the observed entries",
            "train loss -> 0 (their convention, 2 l)",
            f"max final/initial loss {fit:.1e} < 1e-4",
            fit < 1e-4,
        )
    )
    return rows


def plot(ds: xr.Dataset, outdir: Path) -> list[Path]:
    """Final spectra per depth and the effective rank and recovery error against depth, with the baseline."""
    paths = []
    obs = ds["observed"].values
    fig, axes = figure(ncols=len(obs))
    colors = [f"C{i}" for i in range(ds.sizes["depth"])]
    for ax, m in zip(axes[0], obs, strict=True):
        sub = ds.sel(observed=m)
        k = np.arange(1, ds.sizes["k"] + 1)
        for c, d in zip(colors, ds["depth"].values, strict=True):
            ax.semilogy(k, sub["singular_values"].sel(depth=d), "o-", ms=2.5, lw=1, color=c, label=depth_label(d))
        ax.semilogy(k, sub["nuclear_singular_values"], "k--", lw=1, label="min nuclear norm")
        ax.semilogy(k, sub["target_singular_values"], "k:", lw=1.2, label="target M")
        ax.set(xlabel="index i", ylabel=r"$\sigma_i(W)$ at the end", title=f"|Ω| = {m}", ylim=(1e-8, None))
        ax.legend(fontsize=7, loc="upper right")
    paths.append(save_figure(fig, outdir, f"{NAME}-spectra.png"))
    fig, axes = figure(ncols=2)
    x = np.arange(ds.sizes["depth"])
    names = [depth_label(d).replace("depth ", "") for d in ds["depth"].values]
    for ax, var, nuc, label in (
        (axes[0, 0], "effective_rank", "nuclear_effective_rank", "effective rank of W"),
        (axes[0, 1], "recovery_error", "nuclear_error", r"$\|W-M\|_F/\|M\|_F$"),
    ):
        for i, m in enumerate(obs):
            ax.plot(x, ds[var].sel(observed=m), "o-", color=f"C{i}", label=f"depth N, |Ω| = {m}")
            ax.axhline(float(ds[nuc].sel(observed=m)), color=f"C{i}", ls="--", lw=1, label=f"nuclear norm, |Ω| = {m}")
        ax.set(
            xticks=x, xticklabels=names, xlabel="depth N", ylabel=label, yscale="log" if "error" in var else "linear"
        )
        ax.legend(fontsize=7)
    axes[0, 1].set_title("recovery (their test loss = error²)", fontsize=9)
    rows, cols = ds.attrs["shape"]
    axes[0, 0].set_title(f"{rows}×{cols}, rank {ds.attrs['rank']}, init {ds.attrs['init_scale']:g}", fontsize=9)
    paths.append(save_figure(fig, outdir, f"{NAME}-rank-vs-depth.png"))
    return paths
