"""The gidel2019 study on inputs that are not whitened, from small Gaussian init: the reduced-rank-regression path.

Their assumption is weaker than whitened inputs: Σ_xx commutes with Σ_xyΣ_yx. Mode i (Σ_yx = Σ s_i u_i v_iᵀ,
Σ_xx v_i = λ_i v_i) grows at rate s_i and settles at s_i/λ_i, so modes are learned in the order of the s_i, and the
plateau between the learning of modes k and k+1 is the rank-k reduced-rank regression (`rrr_staircase`). The error
terms of a plateau from random init are derived in docs/math.md §4.
"""

from __future__ import annotations

import pathlib

import numpy as np
import xarray as xr

import dlnode as dln
from dlnode.analysis.spectra import rrr_staircase

from ._common import figure, row, save_figure

__all__ = ["compute_rrr", "learning_order", "order_row", "plateau_errors", "plot_rrr", "rrr_problem", "staircase_row"]

NAME = "gidel2019"


def rrr_problem(config: dict) -> dln.Regression:
    """Regression with Σ_xx = V diag(lam) Vᵀ and Σ_yx = U diag(s) V_rᵀ (V, U random orthogonal): Σ_xx commutes with
    Σ_xyΣ_yx, their assumption, and Σ_xx ≠ I. Noiseless: Y = W* X with W* = U diag(s/lam) V_rᵀ."""
    s, lam = np.asarray(config["s"], float), np.asarray(config["lam"], float)
    rng = np.random.default_rng(0)
    v = np.linalg.qr(rng.standard_normal((lam.size, lam.size)))[0]
    u = np.linalg.qr(rng.standard_normal((s.size, s.size)))[0]
    x = np.sqrt(lam.size) * v * np.sqrt(lam)  # n = d_in samples with X Xᵀ/n = V diag(lam) Vᵀ
    return dln.Regression(x, (u * (s / lam[: s.size])) @ v[:, : s.size].T @ x)


def _modes(prob: dln.Regression) -> dict:
    """The decoupled modes: Σ_yx = Σ s_i out_i in_iᵀ, λ_i = in_iᵀ Σ_xx in_i, learned level s_i/λ_i."""
    out, s, in_t = np.linalg.svd(prob.sigma_yx, full_matrices=False)
    lam = np.einsum("ij,jk,ik->i", in_t, prob.sigma_xx, in_t)
    return {"s": s, "out": out, "in": in_t.T, "lam": lam, "level": s / lam, "norm": np.linalg.norm(prob.w_star)}


def compute_rrr(config: dict, grid: np.ndarray) -> xr.Dataset:
    """The flow and GD from small Gaussian init on `rrr_problem`; each init's mode projections u0.

    Saved on the whitened runs' grid (thinned to GD's steps): with the same shapes, number of scales and save
    times, these runs reuse the solvers the whitened runs compiled, in the quick mode."""
    rrr = config["rrr"]
    prob = rrr_problem(rrr)
    modes = _modes(prob)
    eps = [*rrr["eps"], rrr["control_eps"]]
    every = int(round(rrr["lr"] / config["dt"]))
    if not np.isclose(every * config["dt"], rrr["lr"]) or every < 1:
        raise ValueError(f"rrr lr must be a multiple of dt = {config['dt']}; got {rrr['lr']}")
    common = {"depth": 2, "init": "gaussian", "scale": eps, "seed": rrr["seeds"], "saveat": grid[::every],
              "progress": False}  # fmt: skip
    runs = [
        dln.integrate(prob, atol=1e-6 * min(eps) ** 2, **common),  # atol below rtol·ε², as for the whitened runs
        dln.integrate(prob, method="gd", lr=rrr["lr"], **common),
    ]
    products = [r["product"].squeeze("depth", drop=True).transpose("scale", "seed", "time", "row", "col") for r in runs]
    u0 = np.zeros((len(eps), len(rrr["seeds"]), modes["s"].size))
    for a, e in enumerate(eps):
        for b, seed in enumerate(rrr["seeds"]):
            w1, w2 = dln.init_layers(prob, 2, "gaussian", e, seed)
            # the balanced part W1 in_i + W2ᵀ out_i grows as e^{s_i t}; the mode's product starts at |·|²/4
            u0[a, b] = (np.linalg.norm(w1 @ modes["in"] + w2.T @ modes["out"], axis=0) / 2) ** 2
    dims = ("rrr_method", "rrr_scale", "rrr_seed", "rrr_time", "rrr_row", "rrr_col")
    coords = {"rrr_method": ["flow", "gd"], "rrr_scale": eps, "rrr_seed": rrr["seeds"], "rrr_time": common["saveat"]}
    x = np.sqrt(prob.n) * np.linalg.cholesky(prob.sigma_xx)  # any X with X Xᵀ/n = Σ_xx rebuilds the problem
    return xr.Dataset(
        {
            "rrr_product": (
                dims,
                np.stack([p.values for p in products]),
                {"long_name": "end-to-end W (Σ_xx ≠ I)", "units": "1"},
            ),
            "rrr_u0": (
                ("rrr_scale", "rrr_seed", "rrr_mode"),
                u0,
                {"long_name": "initial balanced mode product", "units": "1"},
            ),
            "rrr_x": (
                ("rrr_col", "rrr_sample"),
                x,
                {"long_name": "inputs X of the non-whitened problem", "units": "1"},
            ),
            "rrr_y": (("rrr_row", "rrr_sample"), prob.w_star @ x, {"long_name": "targets Y = W* X", "units": "1"}),
            "rrr_status": (
                ("rrr_method", "rrr_scale", "rrr_seed"),
                np.stack([r["status"].squeeze("depth", drop=True).values for r in runs]),
                runs[0]["status"].attrs,
            ),
        },
        coords=coords,
        attrs={"rrr_lr": rrr["lr"], "rrr_control_eps": rrr["control_eps"]},
    )


def _rrr_prediction(ds: xr.Dataset, method: str, eps: float, seed: int) -> dict:
    """Decoupled modes from this init: each mode's product along time (the logistic of du/dt = 2u(s − λu), or GD's
    map a ← a(1 + lr(s − λa²)) with u = a²), its learning time (u = level/2) and its growth rate."""
    prob = dln.Regression(ds["rrr_x"].values, ds["rrr_y"].values)
    m = _modes(prob)
    u0 = ds["rrr_u0"].sel(rrr_scale=eps, rrr_seed=seed).values
    t = ds["rrr_time"].values
    if method == "flow":
        rate = m["s"]
        u = m["level"] / (1 + (m["level"] / u0 - 1) * np.exp(-2 * np.outer(t, m["s"])))
    else:
        lr = ds.attrs["rrr_lr"]
        rate = np.log1p(lr * m["s"]) / lr
        steps = np.rint(t / lr).astype(int)
        a, u = np.sqrt(u0), np.zeros((int(steps.max()) + 1, u0.size))
        for n in range(u.shape[0]):
            u[n] = a * a
            a = a * (1 + lr * (m["s"] - m["lam"] * a * a))
        u = u[steps]
    learned = np.array([np.interp(0.5, u[:, i] / m["level"][i], t) for i in range(u0.size)])
    return {**m, "prob": prob, "u": u, "t_learned": learned, "rate": rate, "u0": u0}


def _cross_decay(m: dict, i: int, j: int) -> float:
    """Decay rate of learned mode i's hidden direction in unlearned mode j's layers: the slowest eigenvalue of
    [[−λ_j s_i/λ_i, s_j], [s_j, −s_i]] (linearised flow at the rank-i plateau); ≤ 0 means it grows (the order of
    the s_i then differs from that of s_i²/λ_i, outside the staircase)."""
    s, lam = m["s"], m["lam"]
    mat = np.array([[-lam[j] * s[i] / lam[i], s[j]], [s[j], -s[i]]])
    return float(-np.linalg.eigvalsh(mat).max())


def plateau_errors(ds: xr.Dataset, method: str, eps: float, seed: int, reference: str = "rrr") -> dict:
    """Distance of W to the rank-k reference at the k-th plateau's time, for k = 0 … r−1, relative to ‖W*‖.

    Plateau k sits at rescaled time τ_k = 2/(r_k + r_{k+1}) between the learning of modes k and k+1 (τ_0 =
    1/(2 r_1)), r_i = s_i (flow) or ln(1 + lr s_i)/lr (GD). Its tolerance is twice what the decoupled modes predict
    from this init (so it scales with ε): the learning and unlearned modes' logistic deviation, ∝ ε^{2δ_k},
    δ_k = (r_k − r_{k+1})/(r_k + r_{k+1}), plus the cross terms between a learned mode i and an unlearned one j,
    √(level_i u0_j) e^{r_j t_i − γ_ij (t − t_i)}; the factor 2 covers the O(1) angles the cross term leaves out.
    reference: ``rrr`` (`rrr_staircase`, their claim) or ``tsvd`` (truncated SVD of W*, the negative control).
    """
    p = _rrr_prediction(ds, method, eps, seed)
    r, t_all, t_i = p["rate"], ds["rrr_time"].values, p["t_learned"]
    tau = np.array([1 / (2 * r[0]), *(2 / (r[:-1] + r[1:]))])
    idx = np.searchsorted(t_all, tau * np.log(1 / eps))
    w = ds["rrr_product"].sel(rrr_method=method, rrr_scale=eps, rrr_seed=seed).values[idx]
    stair = rrr_staircase(p["prob"], np.array([0.0, *(2 / (p["s"][:-1] + p["s"][1:]))]))
    if reference == "rrr":
        refs = stair["product"].values
    else:
        a, b, c = np.linalg.svd(p["prob"].w_star, full_matrices=False)
        refs = np.stack([(a[:, :k] * b[:k]) @ c[:k] for k in range(len(tau))])
    err = np.linalg.norm(w - refs, axis=(1, 2)) / p["norm"]
    tol, sep = np.zeros(len(tau)), np.zeros(len(tau))
    for k, n in enumerate(idx):
        t = t_all[n]
        diag = np.linalg.norm(p["u"][n] - p["level"] * (np.arange(r.size) < k))
        cross = sum(np.sqrt(p["level"][i] * p["u0"][j]) * np.exp(r[j] * t_i[i] - _cross_decay(p, i, j) * (t - t_i[i]))
                    for i in range(k) for j in range(k, r.size))  # fmt: skip
        tol[k] = 2 * (diag + cross) / p["norm"]
        sep[k] = min(p["level"][max(k - 1, 0)], p["level"][k]) / p["norm"]  # to the neighbouring plateaus
    return {"tau": tau, "err": err, "tol": tol, "sep": sep, "rank": stair["rank"].values}


def staircase_row(ds: xr.Dataset, method: str, reference: str = "rrr", eps: list | None = None) -> dict:
    """Every plateau k within its tolerance of the rank-k reduced-rank regression, in each run (ε, seed) whose
    tolerance, set by its init before any comparison, is below half the distance to the neighbouring plateaus;
    a run whose tolerance is not is too short-lived to resolve the plateaus and tests nothing (a large init is)."""
    eps = _small_eps(ds) if eps is None else eps
    claim = f"{method}: plateau k = rank-k reduced-rank regression (Σ_xx ≠ I, Gaussian init)"
    paper = "W(τ ln 1/ε) → rank-k RRR for 1/s_k < τ < 1/s_(k+1) as ε → 0"
    worst, tested, skipped, at_min = 0.0, [], [], None
    for e in eps:
        for seed in ds["rrr_seed"].values:
            r = plateau_errors(ds, method, e, int(seed), reference)
            if not np.all(r["tol"] < r["sep"] / 2):
                skipped.append(f"{e:.0e}/{int(seed)}")
                continue
            tested.append(e)
            worst = max(worst, float((r["err"] / r["tol"]).max()))
            if e == min(eps) and at_min is None:
                at_min = r
    unresolved = f"; not resolved (ε/seed): {', '.join(skipped)}" if skipped else ""
    if not tested:
        return row(claim, paper, f"not tested: no run resolves the plateaus{unresolved}", False)
    tested_eps = ", ".join(f"{e:.0e}" for e in sorted(set(tested), reverse=True))
    ours = f"{reference}: max error/tol {worst:.2f} over {len(tested)} runs, ε = {tested_eps}"
    if at_min is not None:
        ours += (f"; at ε = {min(eps):.0e}: errors {', '.join(f'{x:.1e}' for x in at_min['err'])} (tol "
                 f"{', '.join(f'{x:.1e}' for x in at_min['tol'])})")  # fmt: skip
    return row(claim, paper, ours + unresolved, worst <= 1)


def learning_order(ds: xr.Dataset, method: str, eps: float, seed: int) -> np.ndarray:
    """Measured time at which each mode's product out_iᵀ W in_i first reaches half its level s_i/λ_i."""
    m = _modes(dln.Regression(ds["rrr_x"].values, ds["rrr_y"].values))
    w = ds["rrr_product"].sel(rrr_method=method, rrr_scale=eps, rrr_seed=seed).values
    u = np.einsum("ri,trc,ci->ti", m["out"], w, m["in"]) / m["level"]
    t = ds["rrr_time"].values
    return np.array([t[np.argmax(u[:, i] >= 0.5)] if np.any(u[:, i] >= 0.5) else np.nan for i in range(u.shape[1])])


def order_row(ds: xr.Dataset, method: str, by: str = "s") -> dict:
    """Modes are learned one at a time in decreasing s_i (singular values of Σ_yx), at τ = t/ln(1/ε) → 1/s_i.
    by: the predicted order, ``s`` (their claim) or ``level`` (the singular values s_i/λ_i of W*, whose order is
    reversed on `rrr_problem`: the negative control). Σ_xx's eigenvalues λ_i, the rates of a linear model, are in
    the order of s_i here, so they are no control.
    """
    eps = _small_eps(ds)
    claim = f"{method}: modes learned one by one in decreasing s_i (singular values of Σ_yx)"
    if not eps:
        return row(claim, "order of s_i, at t ≈ ln(1/ε)/s_i", "not tested: no small-ε run", False)
    m = _modes(dln.Regression(ds["rrr_x"].values, ds["rrr_y"].values))
    key = {"s": m["s"], "level": m["level"]}[by]
    ok, gaps = True, []
    for e in eps:
        for seed in ds["rrr_seed"].values:
            t = learning_order(ds, method, e, int(seed))
            ok &= bool(np.all(np.isfinite(t)) and np.array_equal(np.argsort(t), np.argsort(-key, kind="stable")))
            gaps.append(np.abs(m["s"] * t / np.log(1 / e) - 1).max())
    gaps = np.array(gaps).reshape(len(eps), -1).max(axis=1)
    ours = (f"order by {by}: {ok}; max |s_i t_i/ln(1/ε) − 1| = {', '.join(f'{g:.3f}' for g in gaps)} at ε = "
            f"{', '.join(f'{e:.0e}' for e in eps)}")  # fmt: skip
    return row(claim, "order of s_i, at t ≈ ln(1/ε)/s_i", ours, ok and bool(np.all(np.diff(gaps) < 0)))


def _small_eps(ds: xr.Dataset) -> list[float]:
    control = ds.attrs.get("rrr_control_eps")
    return sorted((float(e) for e in ds["rrr_scale"].values if e != control), reverse=True)


def plot_rrr(ds: xr.Dataset, outdir: pathlib.Path) -> pathlib.Path:
    """Σ_xx ≠ I, Gaussian init: the distance to each reduced-rank solution (and to the truncated SVD of W*) along
    rescaled time, and each mode's product (flow, GD, and the large control init)."""
    m = _modes(dln.Regression(ds["rrr_x"].values, ds["rrr_y"].values))
    eps = min(_small_eps(ds))
    tau = ds["rrr_time"].values / np.log(1 / eps)
    w = ds["rrr_product"].sel(rrr_method="flow", rrr_scale=eps).isel(rrr_seed=0).values
    stair = rrr_staircase(
        dln.Regression(ds["rrr_x"].values, ds["rrr_y"].values), [0, *(2 / (m["s"][:-1] + m["s"][1:])), 2]
    )
    a, b, c = np.linalg.svd(ds["rrr_y"].values @ np.linalg.pinv(ds["rrr_x"].values), full_matrices=False)
    fig, axes = figure(ncols=2, width=5.0, height=3.6)
    left, right = axes[0]
    for k in range(m["s"].size + 1):
        dist = np.linalg.norm(w - stair["product"].values[k], axis=(1, 2)) / m["norm"]
        left.plot(tau, dist, color=f"C{k}", lw=1.2, label=f"RRR rank {k}")
        if 0 < k < m["s"].size:
            tsvd = np.linalg.norm(w - (a[:, :k] * b[:k]) @ c[:k], axis=(1, 2)) / m["norm"]
            left.plot(tau, tsvd, color=f"C{k}", lw=1, ls="--", label=f"truncated SVD of W*, rank {k}")
    for k, sk in enumerate(m["s"]):
        for ax in (left, right):
            ax.axvline(1 / sk, color="k", ls=":", lw=0.8)
        right.text(1 / sk, 1.04, rf"$1/s_{{{k + 1}}}$", ha="center", fontsize="small")
    left.set(yscale="log", xlim=(0, 1.6 / m["s"].min()), ylim=(1e-8, 3), xlabel=r"rescaled time $t/\ln(1/\varepsilon)$")
    left.set_ylabel(r"$\|W(t) - W_k\|_F / \|W^*\|_F$ (flow)")
    left.set_title(rf"$\Sigma_{{xx}} \neq I$, Gaussian init, $\varepsilon$ = {eps:.0e}", fontsize="medium")
    left.legend(fontsize="x-small", loc="lower right")
    control = ds.attrs["rrr_control_eps"]
    for method, ls, e in (("flow", "-", eps), ("gd", "--", eps), ("flow", ":", control)):
        w = ds["rrr_product"].sel(rrr_method=method, rrr_scale=e).isel(rrr_seed=0).values
        u = np.einsum("ri,trc,ci->ti", m["out"], w, m["in"]) / m["level"]
        x = ds["rrr_time"].values / np.log(1 / e)
        for i in range(u.shape[1]):
            label = f"{method}, $\\varepsilon$ = {e:.0e}" if i == 0 else None
            right.plot(x, u[:, i], color=f"C{i}" if e == eps else "0.5", ls=ls, lw=1.2, label=label)
    right.set(xlim=(0, 1.6 / m["s"].min()), ylim=(-0.02, 1.12), xlabel=r"rescaled time $t/\ln(1/\varepsilon)$")
    right.set_ylabel(r"mode product $u_i^\top W v_i \,/\, (s_i/\lambda_i)$")
    right.legend(fontsize="x-small", loc="lower right")
    return save_figure(fig, outdir, f"{NAME}-rrr.png")
