"""Tests of dlnode.analysis, dlnode.curvature and the ds.dln accessor against closed forms and invariants.

Trajectories come from two references built here: a hand-written NumPy gradient-descent loop (GD is exactly that
loop) and Saxe's closed form of the depth-2 balanced decoupled flow on whitened regression,
u(t) = s e^{2st} / (e^{2st} − 1 + s/u₀) with dlnode's ½-loss (docs/math.md §3). Both are stored in the dataset schema
of docs/schema.md by `build_dataset`.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr

import dlnode as dln
import dlnode.accessor  # noqa: F401  (registers ds.dln)
from dlnode import analysis
from dlnode.curvature import layer_alignment, sharpness, sharpness_bounds, sharpness_of
from dlnode.discrete import compare, convergence_order, gd_errors

# Tolerances. Float64 linear algebra on O(1) matrices is exact to ~1e-13; ARPACK runs to machine precision, and a
# Ritz value's error is the square of its residual, so Lanczos and eigvalsh agree far below 1e-8.
EXACT_RTOL = 1e-10
LANCZOS_RTOL = 1e-8
# Linear interpolation of ln σ in ln t across one grid cell of width Δ errs by Δ²/8 · |f''/f'| in ln t, with
# f = ln σ(e^x) ≈ 2s e^x, so f''/f' = 1: Δ = 0.04 (200 log points over 3.5 decades) gives 2e-4.
INTERPOLATION_RTOL = 1e-3
# A coarser 80-point grid (Δ ≈ 0.12) gives Δ²/8 ≈ 2e-3 in ln t.
GRID_RTOL = 1e-2
# Explicit Euler has global error O(lr): the fitted order of GD against the exact flow is 1 up to O(lr) terms.
ORDER_ATOL = 0.15

S_WELL_SEPARATED = [4.0, 2.0, 1.0]


# ---------------------------------------------------------------------------------------------- dataset builders
def layer_grads(layers: list[np.ndarray], e: np.ndarray) -> list[np.ndarray]:
    """∂L/∂W_j = (W_N⋯W_{j+1})ᵀ E (W_{j−1}⋯W_1)ᵀ (docs/math.md §1)."""
    below = [np.eye(layers[0].shape[1])]
    for w in layers[:-1]:
        below.append(w @ below[-1])
    above = [np.eye(layers[-1].shape[0])]
    for w in layers[:0:-1]:
        above.append(above[-1] @ w)
    n = len(layers)
    return [above[n - 1 - j].T @ e @ below[j].T for j in range(n)]


def gd_states(problem, layers, lr: float, steps) -> list[list[np.ndarray]]:  # noqa: ANN001
    """Layers after each of the (sorted) step counts in `steps` of plain gradient descent."""
    wanted, out = set(int(s) for s in steps), []
    for step in range(int(max(steps)) + 1):
        if step in wanted:
            out.append([w.copy() for w in layers])
        grads = layer_grads(layers, problem.grad(dln.product(layers)))
        layers = [w - lr * g for w, g in zip(layers, grads, strict=True)]
    return out


def exact_flow_states(problem, scale: float, times) -> list[list[np.ndarray]]:  # noqa: ANN001
    """Depth-2 balanced decoupled flow on ½‖W − Σ‖²: each mode u = a² obeys du/dt = 2u(s − u), u(0) = scale²."""
    u_vecs, s, vt = np.linalg.svd(problem.target(), full_matrices=False)
    u0 = scale**2
    states = []
    for t in times:
        grown = u0 * s / (u0 + (s - u0) * np.exp(-2 * s * t))
        u = np.where(s > 0, grown, u0 / (1 + 2 * u0 * t))
        states.append([np.sqrt(u)[:, None] * vt, u_vecs * np.sqrt(u)])
    return states


def _record(problem, state):  # noqa: ANN001
    layers = None if isinstance(state, np.ndarray) else state
    w = state if layers is None else dln.product(layers)
    sv = np.linalg.svd(w, compute_uv=False)
    grads = [problem.grad(w)] if layers is None else layer_grads(layers, problem.grad(w))
    return w, sv, np.sqrt(sum(np.sum(g**2) for g in grads)), float(problem.loss(w)), layers


def _fill_run(data: dict, cell: tuple, problem, states: list) -> None:  # noqa: ANN001
    """Write one run's observables (and NaN-padded layers) into the arrays of `build_dataset`."""
    d0 = None
    for t, state in enumerate(states):
        w, sv, grad_norm, loss, layers = _record(problem, state)
        for name, value in (("product", w), ("singular_values", sv), ("grad_norm", grad_norm), ("loss", loss)):
            data[name][cell + (t,)] = value
        if layers is None:
            continue
        d = dln.balancedness(layers)
        d0 = d if d0 is None else d0
        data["balancedness"][cell + (t,)] = max([np.linalg.norm(a - b) for a, b in zip(d, d0, strict=True)] + [0])
        for j, wj in enumerate(layers):
            data["weights"][cell + (t, j, slice(0, wj.shape[0]), slice(0, wj.shape[1]))] = wj


def build_dataset(problem, runs: dict, times, lr: float | None = None, init: str = "gaussian") -> xr.Dataset:  # noqa: ANN001
    """A Dataset in the schema of docs/schema.md from {(depth, scale, seed): [layers or end-to-end matrix per time]}.

    A run with fewer states than times failed: its cells after the last state are NaN and its status is −2.
    """
    depths, scales, seeds = (sorted({key[i] for key in runs}) for i in range(3))
    times = np.asarray(times, dtype=np.float64)
    shape, k = (len(depths), len(scales), len(seeds)), min(problem.d_out, problem.d_in)
    layer_shapes = [w.shape for states in runs.values() for s in states if isinstance(s, list) for w in s]
    max_depth = max([int(d) for d in depths if np.isfinite(d)] + [1])
    out_in = tuple(max([sh[i] for sh in layer_shapes] + [1]) for i in range(2))
    nan = lambda *extra: np.full(shape + (times.size, *extra), np.nan)  # noqa: E731
    data = {
        "loss": nan(), "product": nan(problem.d_out, problem.d_in), "singular_values": nan(k), "grad_norm": nan(),
        "balancedness": nan(), "weights": nan(max_depth, *out_in),
    }  # fmt: skip
    status = np.zeros(shape, dtype=np.int64)
    for (depth, scale, seed), states in runs.items():
        cell = (depths.index(depth), scales.index(scale), seeds.index(seed))
        status[cell] = 0 if len(states) == times.size else -2
        _fill_run(data, cell, problem, states)
    run, t_dims = ("depth", "scale", "seed"), ("depth", "scale", "seed", "time")
    extra = {"product": ("row", "col"), "singular_values": ("k",), "weights": ("layer", "out", "in")}
    variables = {name: (t_dims + extra.get(name, ()), value) for name, value in data.items()}
    last = max(len(states) for states in runs.values()) - 1
    variables["weights_final"] = (run + ("layer", "out", "in"), data["weights"][:, :, :, last])
    variables["status"] = (run, status)
    ds = xr.Dataset(
        variables,
        coords={"depth": np.asarray(depths, float), "scale": scales, "seed": seeds, "time": times},
        attrs={
            "problem": json.dumps(problem.describe()),
            "method": "gd" if lr else "exact",
            "flow": "layers",
            "lr": float(lr) if lr else np.nan,
            "init": init,
            "width": -1,
        },  # fmt: skip
    )
    if lr:
        ds = ds.assign_coords(step=("time", np.rint(times / lr).astype(np.int64)))
    return ds


def gd_dataset(problem, depths, scales, seeds, lr: float, steps, init: str = "gaussian", width=None) -> xr.Dataset:  # noqa: ANN001
    runs = {}
    for depth in depths:
        for scale in scales:
            for seed in seeds:
                layers = dln.init_layers(problem, depth, init, scale, seed, width)
                runs[(depth, scale, seed)] = gd_states(problem, layers, lr, steps)
    return build_dataset(problem, runs, np.asarray(steps) * lr, lr=lr, init=init)


def log_steps(last: int, num: int) -> np.ndarray:
    return np.unique(np.concatenate([[0], np.geomspace(1, last, num).round().astype(int)]))


def grid_rtol(times) -> float:  # noqa: ANN001
    """Twice the leading interpolation error Δ²/8 in ln t, Δ the widest cell of the positive save times."""
    log_t = np.log(np.asarray(times)[np.asarray(times) > 0])
    return 2 * np.max(np.diff(log_t)) ** 2 / 8


def spectrum(values) -> xr.DataArray:  # noqa: ANN001
    return xr.DataArray(np.asarray(values, dtype=float), dims=("case", "k"))


def univariate_data(seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Inputs X (4, 50) with an anisotropic, well-conditioned Σ̂ = XXᵀ/n (κ ≈ 4) and noisy targets Y (1, 50)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((4, 50)) * np.array([1.0, 0.8, 0.6, 0.5])[:, None]
    y = rng.standard_normal(4) @ x + 0.1 * rng.standard_normal(50)
    return x, y[None]


def univariate_problem(seed: int = 1) -> dln.Regression:
    return dln.Regression(*univariate_data(seed))


def aligned_minimiser(problem: dln.Regression, depth: int, width: int, seed: int) -> list[np.ndarray]:
    """Balanced rank-one aligned minimiser: W_1 = ρ v_1uᵀ, W_j = ρ v_jv_{j−1}ᵀ, W_L = ρ v_{L−1}ᵀ, ρ^L = ‖w*‖."""
    w = problem.w_star[0]
    rho, u = np.linalg.norm(w) ** (1 / depth), w / np.linalg.norm(w)
    vs = [v / np.linalg.norm(v) for v in np.random.default_rng(seed).standard_normal((depth - 1, width))]
    middle = [rho * np.outer(vs[j], vs[j - 1]) for j in range(1, depth - 1)]
    return [rho * np.outer(vs[0], u), *middle, rho * vs[-1][None, :]]


# ------------------------------------------------------------------------------------------ spectra and ranks
def test_numerical_rank_hand_values():
    sv = spectrum([[1, 1e-2, 1e-4], [3, 3, 0], [0, 0, 0], [np.nan] * 3])
    np.testing.assert_array_equal(analysis.numerical_rank(sv).values, [2, 2, 0, np.nan])
    np.testing.assert_array_equal(analysis.numerical_rank(sv, threshold=0.05).values, [1, 2, 0, np.nan])
    # Against the run's largest σ_1: a tiny start has rank 0, not full rank.
    along = xr.DataArray([[1e-6, 5e-7], [4.0, 1e-6], [4.0, 2.0]], dims=("time", "k"), coords={"time": [0, 1, 2]})
    np.testing.assert_array_equal(analysis.numerical_rank(along).values, [2, 1, 2])
    np.testing.assert_array_equal(analysis.numerical_rank(along, relative_to="max").values, [0, 1, 2])


def test_effective_rank_hand_values():
    sv = spectrum([[3, 1, 0], [2, 2, 2], [5, 0, 0], [0, 0, 0], [np.nan] * 3])
    p = np.array([0.75, 0.25])
    expected = [np.exp(-np.sum(p * np.log(p))), 3.0, 1.0, 0.0, np.nan]
    np.testing.assert_allclose(analysis.effective_rank(sv).values, expected, rtol=EXACT_RTOL)


def test_schatten_norms_against_their_definitions():
    sv = spectrum([[3, 1, 0], [4, 2, 1]])
    np.testing.assert_allclose(analysis.schatten_norm(sv, 1).values, [4, 7], rtol=EXACT_RTOL)
    np.testing.assert_allclose(analysis.schatten_norm(sv, np.inf).values, [3, 4], rtol=EXACT_RTOL)
    np.testing.assert_allclose(
        analysis.schatten_norm(sv, 0.5).values, [(np.sqrt(3) + 1) ** 2, (2 + np.sqrt(2) + 1) ** 2], rtol=EXACT_RTOL
    )
    prob = dln.Regression.whitened([3.0, 1.0], 3, 4, seed=0)
    ds = gd_dataset(prob, [2], [0.5], [0], 0.05, [0, 5, 40])
    frobenius = np.sqrt((ds["product"] ** 2).sum(("row", "col")))
    xr.testing.assert_allclose(analysis.schatten_norm(ds, 2), frobenius.rename("schatten_norm"), rtol=EXACT_RTOL)


def test_recovery_error_and_unobserved_loss_of_completion():
    for normalize in (False, True):
        prob = dln.MatrixCompletion.random(shape=(6, 5), rank=2, observed=15, seed=0, normalize=normalize)
        delta = np.random.default_rng(2).standard_normal((6, 5))
        w = prob.target_matrix + delta
        ds = build_dataset(prob, {(np.inf, 1e-2, 0): [w]}, [1.0])  # an end-to-end (depth ∞) run: product only
        err = analysis.recovery_error(ds, prob).squeeze().item()
        assert err == pytest.approx(np.linalg.norm(delta) / np.linalg.norm(prob.target_matrix), rel=EXACT_RTOL)
        hidden = ~prob.mask
        test = 0.5 * np.sum(delta[hidden] ** 2) / (hidden.sum() if normalize else 1)
        assert analysis.unobserved_loss(ds, prob).squeeze().item() == pytest.approx(test, rel=EXACT_RTOL)
        if not normalize:  # ½ over Ω plus ½ over its complement is ½‖W − M‖²
            total = ds["loss"] + analysis.unobserved_loss(ds, prob)
            assert total.squeeze().item() == pytest.approx(0.5 * np.sum(delta**2), rel=EXACT_RTOL)


def test_final_values_of_a_failed_run():
    prob = dln.Regression.whitened([2.0], 2, 2, seed=0)
    states = gd_states(prob, dln.init_layers(prob, 2, "gaussian", 0.1, 0), 0.1, [0, 10, 20, 30])
    ds = build_dataset(prob, {(2, 0.1, 0): states, (2, 0.1, 1): states[:2]}, [0.0, 1.0, 2.0, 3.0], lr=0.1)
    loss = ds["loss"].sel(depth=2, scale=0.1)
    final = analysis.final_values(loss)
    assert final.sel(seed=0).item() == loss.sel(seed=0).isel(time=3).item()
    assert final.sel(seed=1).item() == loss.sel(seed=1).isel(time=1).item()
    np.testing.assert_array_equal(ds["status"].values.ravel(), [0, -2])


def test_layer_alignment_of_hand_built_layers():
    theta = 0.3
    a, a_perp = np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
    w1 = 3 * np.outer(a, [1.0, 0]) + np.outer(a_perp, [0, 1.0])  # top left singular vector a
    d = np.cos(theta) * a + np.sin(theta) * a_perp  # W_2's top right singular vector
    w2 = 2 * np.outer([1.0, 0, 0], d) + 0.5 * np.outer([0, 1.0, 0], np.cross(a, d))
    w3 = 4 * np.array([[1.0, 0, 0]])  # top right singular vector = W_2's top left, aligned
    prob = dln.Regression(np.eye(2), np.ones((1, 2)))
    ds = build_dataset(prob, {(3, 1.0, 0): [[w1, w2, w3]], (2, 1.0, 0): [[w1, w3]]}, [0.0])
    align = layer_alignment(ds).sel(scale=1.0, seed=0).isel(time=0)
    np.testing.assert_allclose(align.sel(depth=3).values, [np.cos(theta), 1.0, np.nan], rtol=EXACT_RTOL)
    np.testing.assert_allclose(align.sel(depth=2).values, [1.0, np.nan, np.nan], rtol=EXACT_RTOL)
    final = layer_alignment(ds.drop_vars("weights")).sel(depth=3, scale=1.0, seed=0)
    np.testing.assert_allclose(final.values, [np.cos(theta), 1.0, np.nan], rtol=EXACT_RTOL)


# ---------------------------------------------------------------------------------- Gidel's staircase, stages
def test_gidel_time_and_rrr_staircase_values():
    prob = dln.Regression.whitened(S_WELL_SEPARATED, 3, 3, seed=0)
    ds = build_dataset(prob, {(2, 1e-6, 0): exact_flow_states(prob, 1e-6, [0.0, 2.0])}, [0.0, 2.0])
    np.testing.assert_allclose(analysis.gidel_time(ds).values.ravel(), [0, 2 / np.log(1e6)], rtol=EXACT_RTOL)
    np.testing.assert_allclose(analysis.gidel_time(ds, eps=0.5).values, [0, 2 / np.log(2)], rtol=EXACT_RTOL)
    # mode i is learned at t/ln(1/ε) = 1/s_i: 1/4 < 0.3 < 1/2 < 0.6 < 1 < 2
    stair = analysis.rrr_staircase(prob, [0.1, 0.3, 0.6, 2.0])
    np.testing.assert_array_equal(stair["rank"].values, [0, 1, 2, 3])
    np.testing.assert_allclose(stair["singular_values"].values[1:3], [[4, 0, 0], [4, 2, 0]], rtol=EXACT_RTOL)
    np.testing.assert_allclose(stair["product"].values[-1], prob.w_star, atol=EXACT_RTOL)
    u, s, vt = np.linalg.svd(prob.w_star)
    np.testing.assert_allclose(stair["product"].values[1], 4 * np.outer(u[:, 0], vt[0]), atol=EXACT_RTOL)


def test_flow_from_vanishing_init_follows_the_staircase():
    # At rescaled time τ between 1/s_k and 1/s_(k+1) the flow differs from the rank-k RRR matrix by the unlearned
    # mode, of size ε^{2(1 − τ s_(k+1))}, and the learning mode's residual, ε^{2(τ s_k − 1)}: for ε = 1e-6 and the
    # τ below, at most ε^0.6 ≈ 2.5e-4 relative.
    staircase_rtol = 1e-3
    eps, tau = 1e-6, np.array([0.35, 0.7, 1.5])
    prob = dln.Regression.whitened(S_WELL_SEPARATED, 3, 3, seed=0)
    times = tau * np.log(1 / eps)
    ds = build_dataset(prob, {(2, eps, 0): exact_flow_states(prob, eps, times)}, times, init="decoupled")
    stair = analysis.rrr_staircase(prob, analysis.gidel_time(ds).values.ravel())
    flow = ds["product"].squeeze(("depth", "scale", "seed")).values
    errors = np.linalg.norm(flow - stair["product"].values, axis=(1, 2)) / np.linalg.norm(stair["product"], axis=(1, 2))
    assert np.all(errors < staircase_rtol), errors


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_number_of_stages_equals_target_rank(rank):
    # Cao et al. (2022): from small init, a rank-R target is learned in R plateau-and-jump stages, at depth 2
    # (per-layer scale 1e-6) and at depth 3 (whose escape is polynomial in 1/scale, so scale 0.05 suffices).
    prob = dln.Regression.whitened(S_WELL_SEPARATED[:rank], 4, 4, seed=rank)
    ds2 = gd_dataset(prob, [2], [1e-6], [0, 1], 0.02, log_steps(1200, 150))
    ds3 = gd_dataset(prob, [3], [0.05], [0, 1], 0.04, log_steps(2000, 150))
    s = np.array(S_WELL_SEPARATED[:rank])
    # each plateau sits at a saddle, loss ½ Σ_{i≥k} s_i². In its middle (in ln t), at depth 2 from 1e-6 the modes
    # learned before are within 1e-3 of s_i and the next one below 1e-3 s_k; at depth 3 from 0.05 the escapes
    # (∝ 1/s_k) are only a factor 2 apart and the plateaus short, so the middle is 1e-2 s_k² off the saddle.
    for ds, plateau_tol in ((ds2, 1e-3), (ds3, 1e-2)):
        found = analysis.stages(ds)
        np.testing.assert_array_equal(found["num_stages"].values, rank)
        np.testing.assert_array_equal(
            found["rank"].isel(stage=slice(0, rank)).values.reshape(-1, rank)[0], np.arange(1, rank + 1)
        )
        for k in range(rank):
            plateau = found["plateau_loss"].isel(stage=k)
            assert np.all(abs(plateau - 0.5 * np.sum(s[k:] ** 2)) <= plateau_tol * s[k] ** 2), plateau.values


def escape_rtol(times, t_escape, s) -> np.ndarray:  # noqa: ANN001
    """Linear interpolation of g(x) = ln σ(eˣ) across a cell of width Δ in x = ln t errs by Δ²/8·|g''/g'| in x.

    At the half-way point of a logistic rise of rate 2s, g' = ts and g'' = ts − (ts)², so |g''/g'| = |1 − ts|;
    twice that bound, as a relative error in t.
    """
    log_t = np.log(np.asarray(times)[np.asarray(times) > 0])
    return 2 * np.max(np.diff(log_t)) ** 2 / 8 * np.abs(1 - np.asarray(t_escape) * np.asarray(s))


def test_stage_times_follow_gidel_scaling():
    # Gidel et al. (2019): a mode escapes after ln(1/ε)/ln(1 + lr·s) GD steps. The linear phase is scale-invariant,
    # so for two scales with the same seed the shift of the escapes between ε₁ and ε₂ is exactly
    # lr·ln(ε₁/ε₂)/ln(1 + lr·s_k), up to contamination by the neighbouring mode, O(ε₁^{2(1 − s_(k+1)/s_k)}) = O(ε₁)
    # = 1e-4 here, and one-step interpolation.
    scaling_rtol = 1e-3
    lr, eps1, eps2 = 0.02, 1e-4, 1e-8
    prob = dln.Regression.whitened(S_WELL_SEPARATED, 3, 3, seed=0)
    ds = gd_dataset(prob, [2], [eps2, eps1], [0, 1], lr, np.arange(0, 1401))
    ends = analysis.stages(ds)["end"].sel(depth=2).isel(stage=slice(0, 3))
    shift = ends.sel(scale=eps2) - ends.sel(scale=eps1)
    predicted = lr * np.log(eps1 / eps2) / np.log1p(lr * np.array(S_WELL_SEPARATED))
    np.testing.assert_allclose(shift.values, np.broadcast_to(predicted, shift.shape), rtol=scaling_rtol)
    # one escape per stage here: the stages' ends are the modes' escape times
    escapes = analysis.escape_times(ds).sel(depth=2).reset_coords(drop=True)
    np.testing.assert_array_equal(escapes.values, ends.transpose("scale", "seed", "stage").values)
    # the same GD trajectory saved on a coarse log grid gives the same stage times, up to interpolation
    coarse = ds.isel(time=log_steps(1400, 80))
    fine, rough = analysis.stages(ds)["end"].isel(stage=slice(0, 3)), analysis.stages(coarse)
    rtol = escape_rtol(coarse["time"], fine, xr.DataArray(S_WELL_SEPARATED, dims="stage"))
    assert np.all(abs(rough["end"].isel(stage=slice(0, 3)) - fine) <= rtol * fine)
    assert np.all(rough["resolution"].isel(stage=slice(0, 3)) > analysis.stages(ds)["resolution"].isel(stage=0))


def test_closed_form_solves_the_layer_gradient_flow():
    # dW/dt of the closed form (central difference, error O(h²)·|d³W/dt³| ≈ 1e-8·s³) against the chain rule
    # dW/dt = −(G_2 W_1 + W_2 G_1) of the per-layer flow dW_j/dt = −G_j: checks the factor 2 in du/dt = 2u(s − u).
    h, derivative_atol = 1e-4, 1e-6
    prob = dln.Regression.whitened(S_WELL_SEPARATED, 3, 3, seed=0)
    for t in (0.1, 0.5, 1.0, 3.0):
        (w1, w2), before, after = exact_flow_states(prob, 0.3, [t, t - h, t + h])
        g1, g2 = layer_grads([w1, w2], prob.grad(w2 @ w1))
        numeric = (dln.product(after) - dln.product(before)) / (2 * h)
        np.testing.assert_allclose(numeric, -(g2 @ w1 + w2 @ g1), atol=derivative_atol)


def test_stages_of_the_closed_form_flow():
    # Balanced decoupled depth-2 flow: u_k(t) = s e^{2st}/(e^{2st} − 1 + s/u₀) crosses x = u_k(T)/2 (half its final
    # value) at t_k = ln(x(s/u₀ − 1)/(s − x))/(2s), ≈ ln(1/ε)/s_k for ε → 0 (Gidel), u₀ = ε².
    eps = 1e-6
    prob = dln.Regression.whitened(S_WELL_SEPARATED, 3, 3, seed=0)
    times = np.concatenate([[0.0], np.geomspace(1e-2, 40, 200)])
    ds = build_dataset(prob, {(2, eps, 0): exact_flow_states(prob, eps, times)}, times, init="decoupled")
    found = analysis.stages(ds).squeeze(("depth", "scale", "seed"))
    s, u0 = np.array(S_WELL_SEPARATED), eps**2
    x = ds["singular_values"].isel(time=-1).squeeze().values / 2
    t_k = np.log(x * (s / u0 - 1) / (s - x)) / (2 * s)
    rtol = escape_rtol(times, t_k, s)
    np.testing.assert_array_less(abs(found["end"].values[:3] - t_k), rtol * t_k)
    np.testing.assert_array_less(abs(found["start"].values[:3] - [0, *t_k[:2]]), rtol * np.array([1, *t_k[:2]]))
    escapes = analysis.escape_times(ds).squeeze(("depth", "scale", "seed"))
    np.testing.assert_array_less(abs(escapes.values - t_k), rtol * t_k)
    assert np.all(escapes["resolution"].values <= 1.1 * np.max(np.diff(np.log(times[1:]))))
    np.testing.assert_allclose(found["duration"].values[:3], np.diff([0, *found["end"].values[:3]]))
    np.testing.assert_array_equal(found["rank"].values[:3], [1, 2, 3])
    # the plateau before mode k: loss ½ Σ_{i≥k} s_i², up to the transients of the neighbouring modes in the middle
    # of the plateau (in ln t), below ε^0.3 s_k² for s = 4, 2, 1
    saddle = 0.5 * np.cumsum(s[::-1] ** 2)[::-1]
    np.testing.assert_array_less(abs(found["plateau_loss"].values[:3] - saddle), eps**0.3 * s**2)
    assert int(found["num_stages"]) == 3
    # the staircase of modes learned jumps at the escapes (away from the cells that hold them)
    count = analysis.modes_learned(ds).squeeze(("depth", "scale", "seed")).values
    expected = (times[:, None] >= t_k[None, :]).sum(axis=1)
    cell = np.max(np.diff(np.log(times[1:])))
    far = np.all(abs(np.log(np.maximum(times, 1e-300))[:, None] - np.log(t_k)[None, :]) > cell, axis=1)
    np.testing.assert_array_equal(count[far], expected[far])


@pytest.mark.slow
def test_stages_of_a_low_rank_completion_across_depths_scales_and_seeds():
    # A 30×30 rank-3 completion (450 of 900 entries seen), default save grid: 3 stages at depth 3 (scales 0.1,
    # 0.01) and at depth 2 from scales small enough that its escapes, at ≈ ln(1/ε)/s_i, are further apart than its
    # rises (width ∝ 1/s_i): 1e-5, 1e-6. Every stage ends at an escape, never at an early save time.
    prob = dln.MatrixCompletion.random(shape=(30, 30), rank=3, observed=450, seed=0)
    for depth, scales in ((2, [1e-5, 1e-6]), (3, [1e-1, 1e-2])):
        ds = dln.integrate(prob, depth=depth, scale=scales, seed=[0, 1, 2], progress=False)
        assert np.all(ds["status"] == dln.Status.CONVERGED)
        found = analysis.stages(ds)
        np.testing.assert_array_equal(found["num_stages"].values, 3)
        np.testing.assert_array_equal(found["rank"].isel(stage=slice(0, 3)).values.reshape(-1, 3), [[1, 2, 3]] * 6)
        # the first plateau is the initial loss: nothing is learned before the first escape
        loss0 = ds["loss"].isel(time=0)
        assert np.all(abs(found["plateau_loss"].isel(stage=0) - loss0) < 1e-3 * loss0)
        # every stage ends in a real drop of the loss (half a mode of the target learned, ≥ 10 % of the plateau's
        # loss here), not at an early save time where nothing happens
        t, loss = ds["time"].values, ds["loss"].transpose("depth", "scale", "seed", "time").values
        ends, plateaus = (found[v].isel(stage=slice(0, 3)).transpose("depth", "scale", "seed", "stage").values
                          for v in ("end", "plateau_loss"))  # fmt: skip
        for cell in np.ndindex(ends.shape[:3]):
            at_end = np.interp(ends[cell], t, loss[cell])
            assert np.all(at_end < 0.9 * plateaus[cell]), (cell, at_end, plateaus[cell])


# ------------------------------------------------------------------------------------------------- sharpness
@pytest.mark.parametrize("depth", [2, 3, 4])
def test_lanczos_equals_the_exact_hessian_spectrum(depth):
    rng = np.random.default_rng(depth)
    regression = dln.Regression(rng.standard_normal((4, 12)), rng.standard_normal((3, 12)))
    completion = dln.MatrixCompletion.random(shape=(4, 3), rank=1, observed=8, seed=depth)
    for prob in (regression, completion):
        layers = dln.init_layers(prob, depth, "gaussian", 1.0, depth, width=3)
        exact = sharpness(prob, layers, k=3, exact=True)
        np.testing.assert_allclose(sharpness(prob, layers, k=3), exact, rtol=LANCZOS_RTOL)
        assert sharpness(prob, layers) == pytest.approx(exact[0], rel=LANCZOS_RTOL)


@pytest.mark.parametrize("depth", [2, 3, 4])
def test_sharpness_at_the_balanced_optimum_of_whitened_regression(depth):
    # docs/math.md §3: at the balanced optimum the top Hessian eigenvalue is N s_1^{2−2/N} (½-loss, whitened).
    prob = dln.Regression.whitened(S_WELL_SEPARATED, 3, 3, seed=1)
    u, s, vt = np.linalg.svd(prob.w_star)
    root = np.diag(s ** (1 / depth))
    layers = [root @ vt] + [root] * (depth - 2) + [u @ root]
    expected = depth * s[0] ** (2 - 2 / depth)
    assert sharpness(prob, layers) == pytest.approx(expected, rel=LANCZOS_RTOL)


@pytest.mark.parametrize("depth", [2, 3, 4])
def test_sharpness_of_the_aligned_minimiser_and_the_loss_convention(depth):
    prob = univariate_problem()
    layers = aligned_minimiser(prob, depth, width=3, seed=depth)
    np.testing.assert_allclose(dln.product(layers), prob.w_star, atol=EXACT_RTOL)
    bounds = sharpness_bounds(prob, depth).sel(depth=depth)
    assert sharpness(prob, layers, exact=True) == pytest.approx(bounds["aligned"].item(), rel=EXACT_RTOL)
    # Marion–Chizat's loss R(w) = (1/n)Σ_i (y_i − wᵀx_i)² has no ½: its Hessian, formed here from the data and
    # not from dlnode's problem, is twice dlnode's and matches the paper's closed form.
    x, y = univariate_data()
    flat = jnp.concatenate([jnp.ravel(w) for w in layers])
    splits = np.cumsum([w.size for w in layers])[:-1]

    def paper_loss(z):  # noqa: ANN001, ANN202
        parts = jnp.split(z, splits)
        w = dln.product([p.reshape(layer.shape) for p, layer in zip(parts, layers, strict=True)])
        return jnp.mean((y - w @ x) ** 2)

    paper = np.linalg.eigvalsh(np.asarray(jax.hessian(paper_loss)(flat)))[-1]
    paper_bounds = sharpness_bounds(prob, depth, convention="marion_chizat").sel(depth=depth)
    assert paper == pytest.approx(paper_bounds["aligned"].item(), rel=EXACT_RTOL)
    assert paper == pytest.approx(2 * sharpness(prob, layers, exact=True), rel=EXACT_RTOL)
    assert paper_bounds["s_min"].item() == pytest.approx(2 * bounds["s_min"].item(), rel=EXACT_RTOL)


@pytest.mark.parametrize("depth", [2, 3, 4])
def test_every_minimiser_is_at_least_s_min_sharp(depth):
    # Marion & Chizat (2024): S ≥ S_min at every minimiser. Random ones: random upper layers, W_1 solving for w*.
    prob = univariate_problem()
    s_min = sharpness_bounds(prob, depth)["s_min"].item()
    rng = np.random.default_rng(depth)
    for _ in range(3):
        upper = [rng.standard_normal((3, 3)) for _ in range(depth - 2)] + [rng.standard_normal((1, 3))]
        c = dln.product(upper) if depth > 2 else upper[0]
        w1 = c.T @ prob.w_star / np.sum(c**2) + (np.eye(3) - c.T @ c / np.sum(c**2)) @ rng.standard_normal((3, 4))
        layers = [w1, *upper]
        np.testing.assert_allclose(dln.product(layers), prob.w_star, atol=1e-12)
        assert sharpness(prob, layers, exact=True) >= s_min * (1 - EXACT_RTOL)


def test_gradient_descent_from_small_init_finds_a_flat_aligned_minimiser():
    # Marion & Chizat (2024): from small init, 1 ≤ S/S_min ≤ 4Λ/a (the paper's 8LΛ line), with aligned layers.
    depth, scale = 3, 1e-2
    prob = univariate_problem()
    bounds = sharpness_bounds(prob, depth).sel(depth=depth)
    lr = 1.0 / bounds["upper"].item()  # stable below 2/S for every S under the upper line
    layers = dln.init_layers(prob, depth, "gaussian", scale, 0, width=4)
    for _ in range(20_000):
        grads = layer_grads(layers, prob.grad(dln.product(layers)))
        if np.sqrt(sum(np.sum(g**2) for g in grads)) < 1e-10:
            break
        layers = [w - lr * g for w, g in zip(layers, grads, strict=True)]
    assert prob.loss(dln.product(layers)) == pytest.approx(prob.loss_min, abs=1e-15)
    ratio = sharpness(prob, layers) / bounds["s_min"].item()
    assert 1 <= ratio <= 4 * bounds.attrs["Lambda"] / bounds.attrs["a"]
    # the unlearned parts of the layers stay O(scale), so alignment is 1 − O(scale²)
    ds = build_dataset(prob, {(depth, scale, 0): [layers]}, [1.0])
    alignment = layer_alignment(ds).isel(layer=slice(0, depth - 1))
    np.testing.assert_allclose(alignment.values.ravel(), 1.0, atol=10 * scale**2)


def test_sharpness_of_a_dataset_along_time_and_at_the_end():
    prob = dln.Regression.whitened([3.0, 1.0], 3, 2, seed=0)
    steps = [0, 20, 200]
    runs = {}
    for depth in (1, 2, 3):
        runs[(depth, 0.5, 0)] = gd_states(prob, dln.init_layers(prob, depth, "gaussian", 0.5, 0, width=4), 0.05, steps)
    runs[(np.inf, 0.5, 0)] = [dln.product(states[-1]) for states in [runs[(2, 0.5, 0)]] * 3]
    ds = build_dataset(prob, runs, np.array(steps) * 0.05, lr=0.05)
    along = sharpness_of(ds, prob).sel(scale=0.5, seed=0)
    final = sharpness_of(ds.drop_vars("weights"), prob).sel(scale=0.5, seed=0)
    assert along.dims == ("depth", "time") and final.dims == ("depth",)
    for depth in (1, 2, 3):
        expected = [sharpness(prob, layers, exact=True) for layers in runs[(depth, 0.5, 0)]]
        np.testing.assert_allclose(along.sel(depth=depth).values, expected, rtol=LANCZOS_RTOL)
        assert final.sel(depth=depth).item() == pytest.approx(expected[-1], rel=LANCZOS_RTOL)
    assert np.isnan(along.sel(depth=np.inf)).all() and np.isnan(final.sel(depth=np.inf))
    xr.testing.assert_identical(ds.dln.sharpness(prob), along.broadcast_like(sharpness_of(ds, prob)))


# ------------------------------------------------------------------------------------ continuous vs discrete
def decoupled_runs(lrs, end_time: float = 3.0, scale: float = 0.3):  # noqa: ANN001
    """The exact depth-2 flow on a 0.04 grid and GD from the same decoupled init at each lr, every step saved."""
    prob = dln.Regression.whitened(S_WELL_SEPARATED, 3, 3, seed=0)
    grid = np.arange(0, round(end_time / 0.04) + 1) * 0.04
    flow = build_dataset(prob, {(2, scale, 0): exact_flow_states(prob, scale, grid)}, grid, init="decoupled")
    runs = [gd_dataset(prob, [2], [scale], [0], lr, np.arange(0, round(end_time / lr) + 1), "decoupled") for lr in lrs]
    return flow, runs


def test_compare_matches_times_by_value():
    flow, (gd,) = decoupled_runs([0.01])
    same = compare(flow, flow)
    assert same.sizes["time"] == flow.sizes["time"] and float(abs(same["product_error"]).max()) == 0.0
    result = flow.dln.compare(gd)  # flow against GD: the flow's 76 grid times are all GD steps (t = 4k·0.01)
    assert result.sizes["time"] == flow.sizes["time"]
    np.testing.assert_allclose(result["time"].values, flow["time"].values)
    error = compare(gd, flow)
    assert error.attrs["lr_a"] == 0.01 and np.isnan(error.attrs["lr_b"])
    assert 0 < float(error["product_error"].max()) < 0.1  # O(lr·s) for lr = 0.01, s ≤ 4


def test_gradient_descent_converges_to_the_flow_with_order_one():
    lrs = [0.02, 0.01, 0.005, 0.0025]
    flow, runs = decoupled_runs(lrs)
    errors = gd_errors(flow, runs)
    np.testing.assert_array_equal(errors["lr"].values, sorted(lrs))
    for variable in ("product_error", "loss_error", "singular_values_error"):
        order = convergence_order(flow, runs, variable)
        assert order.item() == pytest.approx(1.0, abs=ORDER_ATOL), variable


def test_compare_interpolates_the_flow_at_every_gd_time():
    # GD at lr = 0.01 saves every step; the exact flow is saved every 0.04 only. compare() reports the error at all
    # 301 GD times, the flow spline-interpolated between its saves, as if the flow had been saved at GD's times.
    flow, (gd,) = decoupled_runs([0.01])
    result = compare(gd, flow)
    assert result.sizes["time"] == gd.sizes["time"] and int(result["interpolated"].sum()) == 225
    prob = dln.Regression.whitened(S_WELL_SEPARATED, 3, 3, seed=0)
    times = gd["time"].values
    dense = build_dataset(prob, {(2, 0.3, 0): exact_flow_states(prob, 0.3, times)}, times, init="decoupled")
    reference = compare(gd, dense)  # every time saved by both: no interpolation
    assert not reference["interpolated"].any()
    # compare's promise: the reported error is within `accuracy` (0.1) of the run's largest error of the true one;
    # here, the flow's spline errs by ~(8h)⁴/384 ≈ 3e-5 relative near t = 0 (rate 2s = 8, h = 0.04) and less later
    diff = abs(result["product_error"] - reference["product_error"])
    assert float(diff.max()) <= 0.1 * float(reference["product_error"].max())
    assert float(diff.max()) <= 3e-4
    assert float(result["product_error"].max()) == pytest.approx(float(reference["product_error"].max()), rel=1e-3)


def test_compare_refuses_a_save_grid_too_coarse_for_the_escape():
    # From scale 1e-3 the modes escape at t ≈ ln(1/ε)/s_i in a rise of width ~1/s_i; a 12-point log grid holds
    # no point inside most rises, so GD cannot be compared with it, only with a flow saved at GD's times.
    prob = dln.Regression.whitened(S_WELL_SEPARATED, 3, 3, seed=0)
    steps = np.arange(0, 801)
    gd = gd_dataset(prob, [2], [1e-3], [0], 0.01, steps, init="decoupled")
    coarse = np.concatenate([[0.0], np.geomspace(0.08, 8.0, 11)])
    flow = build_dataset(prob, {(2, 1e-3, 0): exact_flow_states(prob, 1e-3, coarse)}, coarse, init="decoupled")
    with pytest.raises(ValueError, match="too coarse to interpolate") as info:
        compare(gd, flow)
    assert "saveat=a['time'].values" in str(info.value) and "\n" not in str(info.value)


def test_gradient_descent_follows_the_modified_flow_with_order_two():
    # Barrett & Dherin (2021): GD follows the flow of L + (lr/4)‖∇L‖² to O(lr²); the modified flow depends on lr,
    # so each GD run needs its own reference, and one reference for several lr is refused.
    prob = dln.Regression.whitened(S_WELL_SEPARATED, 3, 3, seed=0)
    lrs, grid = [0.02, 0.01, 0.005], np.arange(0, 76) * 0.04
    common = {"depth": 2, "init": "decoupled", "scale": 0.3, "saveat": grid, "t1": grid[-1], "progress": False}
    runs = [dln.integrate(prob, method="gd", lr=lr, **common) for lr in lrs]
    modified = [dln.integrate(prob, flow="modified", lr=lr, rtol=1e-10, atol=1e-12, **common) for lr in lrs]
    assert convergence_order(modified, runs).item() == pytest.approx(2.0, abs=ORDER_ATOL)
    with pytest.raises(ValueError, match="depends on lr and cannot serve runs"):
        convergence_order(modified[0], runs)
    with pytest.raises(ValueError, match="run at lr=0.02 is the modified flow for lr=0.005"):
        convergence_order(modified[::-1], runs)


# ------------------------------------------------------------------------------------ accessor and validation
def test_accessor_delegates_to_the_analysis_functions():
    prob = dln.Regression.whitened([3.0, 1.0], 3, 3, seed=0)
    ds = gd_dataset(prob, [1, 2], [1e-3], [0], 0.05, log_steps(400, 40))
    xr.testing.assert_identical(ds.dln.effective_rank(), analysis.effective_rank(ds))
    xr.testing.assert_identical(ds.dln.numerical_rank(1e-2), analysis.numerical_rank(ds, 1e-2))
    xr.testing.assert_identical(ds.dln.schatten_norm(1), analysis.schatten_norm(ds, 1))
    xr.testing.assert_identical(ds.dln.stages(), analysis.stages(ds))
    xr.testing.assert_identical(ds.dln.gidel_time(), analysis.gidel_time(ds))
    xr.testing.assert_identical(ds.dln.recovery_error(prob), analysis.recovery_error(ds, prob))
    xr.testing.assert_identical(ds.dln.layer_alignment(), layer_alignment(ds))
    xr.testing.assert_identical(ds.dln.final("loss"), analysis.final_values(ds["loss"]))


@pytest.fixture(scope="module")
def bad_calls() -> dict:
    prob = dln.Regression.whitened([3.0, 1.0], 3, 3, seed=0)
    ds = gd_dataset(prob, [2], [0.1], [0], 0.05, [0, 10])
    shifted = ds.assign_coords(time=ds["time"] + 0.013)
    multi = dln.Regression(np.eye(3), np.ones((2, 3)))
    general = dln.Regression(np.diag([1.0, 2.0, 3.0]), np.ones((3, 3)))
    layers = dln.init_layers(prob, 2, "gaussian", 0.1, 0)
    calls = [
        (lambda: analysis.numerical_rank(ds, threshold=0), "threshold must be in"),
        (lambda: analysis.numerical_rank(ds, relative_to="first"), "relative_to must be"),
        (lambda: analysis.effective_rank(ds["loss"]), "ds_or_sv must be"),
        (lambda: analysis.schatten_norm(ds, 0), "p must be a positive"),
        (lambda: analysis.recovery_error(ds, np.zeros((3, 3))), "target must be a non-zero"),
        (lambda: analysis.recovery_error(ds, np.ones((2, 3))), "target must have"),
        (lambda: analysis.unobserved_loss(ds, prob), "problem must be a MatrixCompletion"),
        (lambda: analysis.gidel_time(ds, eps=2.0), "eps must lie in"),
        (lambda: analysis.rrr_staircase(general, [1.0]), "identity Hessian"),
        (lambda: analysis.rrr_staircase(prob, [-1.0]), "times must be"),
        (lambda: analysis.stages(ds, level=1.5), "level must be in"),
        (lambda: analysis.stages(ds, learned=0), "learned must be in"),
        (lambda: compare(ds, shifted), "saved times to be interpolated"),
        (lambda: compare(ds, ds, accuracy=0), "accuracy must be in"),
        (lambda: compare(ds, ds["loss"]), "b must be a dlnode Dataset"),
        (lambda: gd_errors(ds, [ds]), "at least two"),
        (lambda: gd_errors(ds, [ds, ds]), "distinct positive"),
        (lambda: sharpness(prob, [np.ones((2, 3)), layers[1]]), "weights must chain"),
        (lambda: sharpness(prob, layers, k=0), "k must be an integer"),
        (lambda: sharpness_bounds(multi, 2), "univariate Regression"),
        (lambda: sharpness_bounds(univariate_problem(), 2, convention="paper"), "convention must be"),
        (lambda: sharpness_bounds(univariate_problem(), 0), "depth must be a positive integer"),
        (lambda: sharpness_of(ds.drop_vars(["weights", "weights_final"]), prob), "weights_final"),
    ]
    return {match: call for call, match in calls}


BAD_CALL_MATCHES = [
    "threshold must be in", "relative_to must be", "ds_or_sv must be", "p must be a positive",
    "target must be a non-zero", "target must have", "problem must be a MatrixCompletion", "eps must lie in",
    "identity Hessian", "times must be", "level must be in", "learned must be in", "saved times to be interpolated",
    "accuracy must be in", "b must be a dlnode Dataset",
    "at least two", "distinct positive", "weights must chain", "k must be an integer", "univariate Regression",
    "convention must be", "depth must be a positive integer", "weights_final",
]  # fmt: skip


@pytest.mark.parametrize("match", BAD_CALL_MATCHES)
def test_invalid_arguments_raise_one_line_errors(bad_calls, match):
    with pytest.raises(ValueError, match=match) as info:
        bad_calls[match]()
    assert "\n" not in str(info.value)
