"""Woodworth et al. (2020): the initialisation scale α moves a diagonal network from the kernel to the rich regime.

Their model (Section 4): f(x) = ⟨w₊² − w₋², x⟩ from w₊ = w₋ = α·1, trained by gradient flow on the square loss. This
is dlnode's ``network="diagonal"`` at depth 2 with ``init="uniform"``, ``scale=α``: u = v = α·1 and β = u⊙u − v⊙v,
so dlnode's `scale` is their α itself (no conversion). Their Theorem 1: the flow converges to

    β_α = argmin Q_α(β) subject to Xβ = y,   Q_α(β) = α² Σᵢ q(βᵢ/α²),   q(z) = 2 − √(4 + z²) + z·arcsinh(z/2),

the minimum-ℓ₁ interpolator as α → 0 (rich regime) and the minimum-ℓ₂ one as α → ∞ (kernel regime). The constants
are derived for dlnode's parametrisation in docs/woodworth2020.md: the flow gives β(t) = 2α² sinh(Xᵀν(t)), and
q'(z) = arcsinh(z/2) makes that the KKT condition of exactly this Q_α. The minimiser is computed here independently
of the flow, by Newton's method on the dual (`q_minimiser`); Q_α itself is `dlnode.hypentropy`.

Their set-up (the sparse regression of their Figure 1 and Section 4): d = 1000, n = 100 Gaussian samples
xᵢ ~ N(0, I), a 5-sparse β* with entries 1/√5 (‖β*‖ = 1). Our labels are noiseless (the theorem is about
interpolation), so the test error ‖β − β*‖² is the population error, and the minimum-ℓ₁ interpolator is β* itself
whenever ℓ₁ recovers the support.

Claims checked: (1) the flow's limit is the Q_α minimiser at every α; (2) at the smallest α it is the minimum-ℓ₁
interpolator, at the largest the minimum-ℓ₂ one; (3) the test error rises monotonically in α from the minimum-ℓ₁
level to the minimum-ℓ₂ level, whose mean over Gaussian designs is (1 − n/d)‖β*‖² (β_ℓ₂ is the projection of β* on
the n-dimensional row space of X, uniformly distributed); (4) gradient descent at a small step ends near the flow's
limit, its distance falling linearly with the step.

α is kept ≤ 10 (≤ 10^0.5 at FULL's d = 1000): at larger α the flow's β = u² − v² cancels α² against α² (an
integration error δ on u is 2α²δ on β), so an adaptive solver at rtol 1e-10 cannot reach a 1e-12 loss reduction
(measured at d = 100: at α = 30 and 100 the loss stalls at 1e-9 to 1e-11); the limit is then already within 1e-5
of the minimum-ℓ₂ interpolator.
"""

from __future__ import annotations

import pathlib
import warnings

import numpy as np
import scipy.linalg
import xarray as xr

import dlnode as dln

from ._common import figure, row, save_figure

NAME = "woodworth2020"
TITLE = "The initialisation scale moves a diagonal linear network from the kernel (min-l2) to the rich (min-l1) regime"
PAPER = "Woodworth, Gunasekar, Lee, Moroshko, Savarese, Golan, Soudry, Srebro (2020), arXiv 2002.09277, Thm 1, Fig. 1"

# FULL's smallest α is 1e-3: the flow's last phase fits the residual off the support through entries of size ~α, so
# its time (and tsit5's step count) grows like 1/α (d = 40: t = 3.4e4 at α = 1e-3, 3.2e5 at 1e-4). Its largest is
# 10^0.5: at d = 1000 the integration error carried into β (2α²·rtol·|u| a step) can hold the loss above 1e-12 ℓ₀ at
# α = 10 (design 1 ran into the step budget); at 10^0.5 the limit is within 1e-6 of min-ℓ₂ already
FULL = {"d": 1000, "n": 100, "sparsity": 5, "seeds": (0, 1, 2), "alphas": tuple(10.0 ** np.arange(-3, 0.51, 0.5)),
        "gd_alpha": 0.1, "gd_lrs": (4e-3, 2e-3)}  # fmt: skip
QUICK = {"d": 40, "n": 15, "sparsity": 2, "seeds": (0, 1), "alphas": (1e-3, 1e-2, 1e-1, 1.0, 10.0),
         "gd_alpha": 0.1, "gd_lrs": (0.02, 0.01)}  # fmt: skip

RTOL = 1e-10  # the flow's local tolerance (tsit5)
LOSS_TOL = 1e-12  # run until ℓ ≤ 1e-12 ℓ₀: the residual is then ≤ 1e-6 ‖y‖ (ℓ = ‖Xβ − y‖²/2n)
MAX_STEPS = 2_000_000
# Flow limit against the Q_α minimiser, ‖β_flow − β_α‖ / ‖β_α‖: the stop rule leaves a residual ≤ 1e-6 ‖y‖, which
# the design (σ_max/σ_min ≈ (1 + √(n/d))/(1 − √(n/d)) ≈ 1.9 at n/d = 0.1) carries into β at about that size; the
# dual solver's residual is 1e-14. 1e-4 leaves two decades of margin for the integration error through the plateaus
# (measured ≤ 3e-6), and is far below the change of β_α over a factor 10 in α in the transition (≥ 1e-1).
Q_RTOL = 1e-4
# smallest α against min-ℓ₁, relative: the approach is a power of α where ℓ₁ recovers β* (Q_α's own distance, from the
# dual solver: about 1e-3 at α = 1e-4, 1.3e-2 at 1e-3), so 5 % holds from α = 1e-3 down; min-ℓ₂ is ~1 away
L1_RTOL = 5e-2
L2_RTOL = 1e-4  # largest α (10) against min-ℓ₂ (Q_α's own distance: 2e-6)
MONOTONE_SLACK = 1e-9  # test errors below this are the min-ℓ₁ plateau at roundoff: ties, not decreases
L2_SIGMAS = 4.0  # min-ℓ₂'s mean test error against (1 − n/d)‖β*‖², in exact standard errors of a mean over designs
GD_RATIO = (1.6, 2.4)  # halving the step must halve GD's distance to the flow's limit (first order in the step)


def problem(d: int, n: int, sparsity: int, seed: int) -> dln.SparseRegression:
    """Their sparse regression: X (d, n) with N(0, 1) entries, β* = 1/√s on s coordinates, noiseless labels."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((d, n))
    truth = np.zeros(d)
    truth[:sparsity] = 1.0 / np.sqrt(sparsity)  # the design is exchangeable: the first s coordinates lose nothing
    return dln.SparseRegression(x, truth @ x, truth, sparsity=sparsity, seed=seed)


def q_minimiser(inputs: np.ndarray, labels: np.ndarray, alpha: float, rtol: float = 1e-14) -> np.ndarray:
    """argmin Q_α(β) subject to ⟨β, xᵢ⟩ = yᵢ, by damped Newton on the dual.

    ∇Q_α(β) = arcsinh(β/2α²), so the KKT conditions are β = 2α² sinh(Xλ) with X λ's image in the row space, and
    λ ∈ ℝⁿ minimises the convex dual D(λ) = 2α² Σᵢ cosh((Xλ)ᵢ) − ⟨λ, y⟩, whose gradient is the constraint residual
    Xᵀβ(λ) − y. Newton steps, halved until D or the residual falls, until ‖residual‖ ≤ rtol·‖y‖.
    """
    x, y, c = np.asarray(inputs), np.asarray(labels).ravel(), 2.0 * alpha**2
    tol = rtol * np.linalg.norm(y)

    def parts(lam: np.ndarray) -> tuple[float, np.ndarray, float]:
        with np.errstate(over="ignore", invalid="ignore"):  # a trial step too long overflows: rejected below
            z = x @ lam
            g = x.T @ (c * np.sinh(z)) - y
            return c * np.sum(np.cosh(z)) - lam @ y, g, float(np.sqrt(np.sum(g * g)))

    lam = np.zeros(len(y))
    f, g, size = parts(lam)
    for _ in range(500):
        if size <= tol:
            return c * np.sinh(x @ lam)
        p = scipy.linalg.solve((x.T * (c * np.cosh(x @ lam))) @ x, -g, assume_a="pos")
        t = 1.0
        while t > 1e-14:
            fn, gn, sn = parts(lam + t * p)
            if fn <= f + 1e-4 * t * (g @ p) or sn < size:  # NaN (overflow) compares False: halve again
                break
            t /= 2
        lam, f, g, size = lam + t * p, fn, gn, sn
    raise RuntimeError(f"dual Newton did not reach a residual {tol:.1e} at alpha={alpha:g} (last {size:.1e})")


def _limits(prob: dln.SparseRegression, alphas: tuple, **kw: object) -> tuple[np.ndarray, np.ndarray]:
    """(β at the end, status) of one run per α, each until ℓ ≤ LOSS_TOL·ℓ₀ (a run that converged holds its end).
    One call per α: the adaptive steps of a grid call are shared, and the small-α runs would set them for all."""
    betas, status = [], []
    for alpha in alphas:
        with warnings.catch_warnings():  # a run that does not converge is in `status`, and fails the checks
            warnings.simplefilter("ignore", UserWarning)
            ds = dln.integrate(prob, depth=2, network="diagonal", init="uniform", scale=alpha, loss_tol=LOSS_TOL,
                               max_steps=MAX_STEPS, saveat=20, progress=False, **kw)  # fmt: skip
        betas.append(ds["product"].isel(depth=0, scale=0, seed=0, time=-1, row=0).values)
        status.append(int(ds["status"].isel(depth=0, scale=0, seed=0)))
    return np.array(betas), np.array(status)


def compute(config: dict) -> xr.Dataset:
    alphas, seeds = tuple(float(a) for a in config["alphas"]), tuple(config["seeds"])
    flow, qmin, l1, l2, truth, status = [], [], [], [], [], []
    for seed in seeds:
        prob = problem(config["d"], config["n"], config["sparsity"], seed)
        beta, stat = _limits(prob, alphas, method="tsit5", rtol=RTOL)
        flow.append(beta)
        status.append(stat)
        qmin.append([q_minimiser(prob.inputs, prob.labels, a) for a in alphas])
        refs = dln.interpolators(prob)
        l1.append(refs["l1"][0])
        l2.append(refs["l2"][0])
        truth.append(prob.truth[0])
        if seed == seeds[0]:  # (4) gradient descent at two small steps, one α, to its own convergence
            runs = [_limits(prob, (float(config["gd_alpha"]),), method="gd", lr=lr) for lr in config["gd_lrs"]]
            gd, gd_status = [b[0] for b, _ in runs], [st[0] for _, st in runs]
            gd_flow = flow[-1][alphas.index(float(config["gd_alpha"]))]
    dims = ("seed", "alpha", "coord")
    out = xr.Dataset(
        {
            "beta_flow": (dims, np.array(flow), {"long_name": "limit of the gradient flow (dlnode)"}),
            "beta_q": (dims, np.array(qmin), {"long_name": "argmin Q_alpha subject to X beta = y (dual Newton)"}),
            "beta_l1": (("seed", "coord"), np.array(l1), {"long_name": "minimum-l1 interpolator"}),
            "beta_l2": (("seed", "coord"), np.array(l2), {"long_name": "minimum-l2 interpolator"}),
            "beta_star": (("seed", "coord"), np.array(truth), {"long_name": "truth beta*"}),
            "status": (("seed", "alpha"), np.array(status), {"long_name": "dlnode status of the flow"}),
            "beta_gd": (("lr", "coord"), np.array(gd), {"long_name": f"GD limit at alpha={config['gd_alpha']}"}),
            "gd_status": ("lr", np.array(gd_status), {"long_name": "dlnode status of GD"}),
            "beta_gd_flow": ("coord", gd_flow, {"long_name": "flow limit at the GD alpha"}),
        },
        coords={"seed": list(seeds), "alpha": list(alphas), "lr": list(config["gd_lrs"])},
    )
    out = out.assign(_derived(out))
    out.attrs.update(d=config["d"], n=config["n"], sparsity=config["sparsity"], gd_alpha=float(config["gd_alpha"]),
                     rtol=RTOL, loss_tol=LOSS_TOL)  # fmt: skip
    return out


def _norm(da: xr.DataArray) -> xr.DataArray:
    return np.sqrt((da**2).sum("coord"))


def _derived(ds: xr.Dataset) -> dict[str, xr.DataArray]:
    """Test error, ‖β‖₁, Q_α, and distances, for the flow, the Q_α minimiser and the two interpolators."""
    err = lambda b: ((b - ds["beta_star"]) ** 2).sum("coord")  # noqa: E731
    alpha = ds["alpha"]
    return {
        "test_error": err(ds["beta_flow"]).assign_attrs(long_name="||beta - beta*||^2 (population error)"),
        "test_error_l1": err(ds["beta_l1"]),
        "test_error_l2": err(ds["beta_l2"]),
        "l1_norm": np.abs(ds["beta_flow"]).sum("coord"),
        "q_value": xr.apply_ufunc(
            dln.hypentropy, ds["beta_flow"], alpha, input_core_dims=[["coord"], []], vectorize=True
        ),  # fmt: skip
        "q_error": _norm(ds["beta_flow"] - ds["beta_q"]) / _norm(ds["beta_q"]),
        "distance_l1": _norm(ds["beta_flow"] - ds["beta_l1"]) / _norm(ds["beta_l1"]),
        "distance_l2": _norm(ds["beta_flow"] - ds["beta_l2"]) / _norm(ds["beta_l2"]),
        "gd_distance": _norm(ds["beta_gd"] - ds["beta_gd_flow"]) / _norm(ds["beta_gd_flow"]),
    }


def check(ds: xr.Dataset) -> list[dict]:
    ds = ds.assign(_derived(ds))  # from the stored vectors, so an edited dataset is checked as it stands
    n, d = int(ds.attrs["n"]), int(ds.attrs["d"])
    converged = bool((ds["status"] == 1).all())
    gd_converged = bool((ds["gd_status"] == 1).all())
    q_err = float(ds["q_error"].max())
    small, large = ds.isel(alpha=0), ds.isel(alpha=-1)
    mean = ds["test_error"].mean("seed").values
    steps = np.diff(mean)
    l2_err = ds["test_error_l2"]
    expected = (1 - n / d) * float((ds["beta_star"] ** 2).sum("coord").mean())
    # ‖β_ℓ₂ − β*‖²/‖β*‖² = 1 − ‖Pβ*‖²/‖β*‖² ~ Beta((d − n)/2, n/2) for P the projection on a uniform n-dim subspace
    a, b = (d - n) / 2, n / 2
    se = expected / (1 - n / d) * np.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)) / ds.sizes["seed"])
    ratio = float(ds["gd_distance"].isel(lr=0) / ds["gd_distance"].isel(lr=1))
    a0, a1 = float(ds["alpha"][0]), float(ds["alpha"][-1])
    return [
        row(f"flow limit = argmin Q_alpha s.t. X beta = y at every alpha (Thm 1; rel. error <= {Q_RTOL:g})",
            "equal", f"max rel. error {q_err:.2g} over {ds.sizes['alpha']} alphas x {ds.sizes['seed']} seeds"
            + ("" if converged else "; some runs did not converge"), converged and q_err <= Q_RTOL),
        row(f"alpha = {a0:g}: the min-l1 interpolator (rel. distance <= {L1_RTOL:g})", "alpha -> 0: min-l1",
            f"{float(small['distance_l1'].max()):.2g} (to min-l2: {float(small['distance_l2'].min()):.2g})",
            float(small["distance_l1"].max()) <= L1_RTOL),
        row(f"alpha = {a1:g}: the min-l2 interpolator (rel. distance <= {L2_RTOL:g})", "alpha -> inf: min-l2",
            f"{float(large['distance_l2'].max()):.2g} (to min-l1: {float(large['distance_l1'].min()):.2g})",
            float(large["distance_l2"].max()) <= L2_RTOL),
        row("test error rises monotonically with alpha, kernel -> rich (mean over seeds)", "— (figure: curve only)",
            f"{mean[0]:.3g} at alpha={a0:g} ... {mean[-1]:.3g} at {a1:g}; largest fall {max(-steps.min(), 0):.2g}",
            bool((steps >= -MONOTONE_SLACK).all()) and mean[-1] > mean[0]),
        row(f"kernel level: min-l2 test error = (1 - n/d)|beta*|^2 in mean (within {L2_SIGMAS:g} s.e.)",
            f"{expected:.3g} +- {se:.2g} (closed form, s.e.)", f"{float(l2_err.mean()):.3g}",
            abs(float(l2_err.mean()) - expected) <= L2_SIGMAS * se),
        row(f"GD (lr {float(ds['lr'][0]):g}, {float(ds['lr'][1]):g}) -> flow limit at alpha={ds.attrs['gd_alpha']:g}: "
            f"distance halves with lr (ratio in {GD_RATIO})", "— (paper: gradient flow)",
            ", ".join(f"{v:.2g}" for v in ds["gd_distance"].values) + f"; ratio {ratio:.3g}"
            + ("" if gd_converged else "; GD did not converge"), gd_converged and GD_RATIO[0] <= ratio <= GD_RATIO[1]),
    ]  # fmt: skip


def plot(ds: xr.Dataset, outdir: pathlib.Path) -> list[pathlib.Path]:
    fig, axes = figure(1, 1, width=5.2)
    ax = axes[0, 0]
    alpha = ds["alpha"].values
    for i, seed in enumerate(ds["seed"].values):
        label = "gradient flow (dlnode)" if i == 0 else None
        ax.semilogx(alpha, ds["test_error"].sel(seed=seed), "o-", color="C0", alpha=0.6, label=label)
        ax.semilogx(alpha, ((ds["beta_q"] - ds["beta_star"]) ** 2).sum("coord").sel(seed=seed), "x", color="k",
                    label="argmin Q_alpha (dual Newton)" if i == 0 else None)  # fmt: skip
    ax.axhline(float(ds["test_error_l2"].mean()), color="C1", ls="--", label="min-l2 interpolator (mean)")
    ax.axhline(float(ds["test_error_l1"].mean()), color="C2", ls=":", label="min-l1 interpolator (mean)")
    ax.set(xlabel="initialisation scale alpha", ylabel="test error ||beta - beta*||^2",
           title=f"Woodworth et al. 2020: d={ds.attrs['d']}, n={ds.attrs['n']}, s={ds.attrs['sparsity']}")  # fmt: skip
    ax.legend(fontsize=7)
    return [save_figure(fig, outdir, f"{NAME}-test-error.png")]
