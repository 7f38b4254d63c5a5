"""Tests of dlnode.analysis.spectra, dlnode.analysis.curvature and the ds.dln accessor against closed forms and
invariants.

Trajectories come from the references of `reference_runs` (a hand-written NumPy GD loop and Saxe's closed form of the
depth-2 flow). The stages are tested in test_stages.py, GD against the flow in test_discrete.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr
from reference_runs import (
    EXACT_RTOL,
    S_WELL_SEPARATED,
    build_dataset,
    exact_flow_states,
    gd_dataset,
    gd_states,
    layer_grads,
    log_steps,
    univariate_data,
    univariate_problem,
)

import dlnode as dln
import dlnode.analysis.accessor  # noqa: F401  (registers ds.dln)
from dlnode.analysis import spectra as analysis
from dlnode.analysis.curvature import layer_alignment, sharpness, sharpness_bounds, sharpness_of
from dlnode.analysis.discrete import compare, gd_errors

# ARPACK runs to machine precision, and a Ritz value's error is the square of its residual, so Lanczos and eigvalsh
# agree far below 1e-8.
LANCZOS_RTOL = 1e-8


def spectrum(values) -> xr.DataArray:  # noqa: ANN001
    return xr.DataArray(np.asarray(values, dtype=float), dims=("case", "k"))


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
    lazy = analysis.final_values(loss.chunk({"seed": 1}))  # as on a sweep store: computed chunk by chunk
    assert lazy.chunks is not None
    xr.testing.assert_identical(lazy.compute(), final)
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


def test_rrr_staircase_without_whitened_inputs():
    # Σ_xx = V diag(λ) Vᵀ commuting with Σ_xyΣ_yx (Gidel et al.'s assumption): mode i grows at s_i and the rank-k
    # reduced-rank regression is the truncated SVD of Σ_yx Σ_xx^{-1/2} mapped back by Σ_xx^{-1/2} (a second closed
    # form); with s/λ in the reverse order of s it is not the truncated SVD of the least-squares solution
    rng = np.random.default_rng(1)
    v, u = np.linalg.qr(rng.standard_normal((3, 3)))[0], np.linalg.qr(rng.standard_normal((2, 2)))[0]
    s, lam = np.array([4.0, 2.0]), np.array([2.0, 0.75, 0.3])
    x = np.sqrt(3) * v * np.sqrt(lam)  # X Xᵀ/n = V diag(λ) Vᵀ
    prob = dln.Regression(x, (u * s / lam[:2]) @ v[:, :2].T @ x)
    stair = analysis.rrr_staircase(prob, [0.1, 0.3, 0.6])
    np.testing.assert_array_equal(stair["rank"].values, [0, 1, 2])
    np.testing.assert_allclose(stair["learning_rate"].values, s, rtol=EXACT_RTOL)
    root = v @ np.diag(lam**-0.5) @ v.T
    a, b, c = np.linalg.svd(prob.sigma_yx @ root)
    np.testing.assert_allclose(stair["product"].values[1], a[:, :1] * b[:1] @ c[:1] @ root, atol=EXACT_RTOL)
    np.testing.assert_allclose(stair["product"].values[2], prob.w_star, atol=EXACT_RTOL)
    a, b, c = np.linalg.svd(prob.w_star)
    assert np.linalg.norm(stair["product"].values[1] - a[:, :1] * b[:1] @ c[:1]) > 1.0


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

    paper = np.linalg.eigvalsh(np.asarray(jax.jit(jax.hessian(paper_loss))(flat)))[-1]
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
    general = dln.Regression(np.diag([1.0, 2.0, 3.0]), np.ones((3, 3)))  # Σ_xx does not commute with Σ_xyΣ_yx
    partial = dln.MatrixCompletion(np.ones((2, 2)), np.eye(2, dtype=bool))
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
        (lambda: analysis.rrr_staircase(general, [1.0]), "commutes with"),
        (lambda: analysis.rrr_staircase(partial, [1.0]), "identity Hessian"),
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
    "commutes with", "identity Hessian", "times must be", "level must be in", "learned must be in",
    "saved times to be interpolated", "accuracy must be in", "b must be a dlnode Dataset",
    "at least two", "distinct positive", "weights must chain", "k must be an integer", "univariate Regression",
    "convention must be", "depth must be a positive integer", "weights_final",
]  # fmt: skip


@pytest.mark.parametrize("match", BAD_CALL_MATCHES)
def test_invalid_arguments_raise_one_line_errors(bad_calls, match):
    with pytest.raises(ValueError, match=match) as info:
        bad_calls[match]()
    assert "\n" not in str(info.value)


def test_every_accessor_method_says_what_it_computes():
    """``help(ds.dln.X)`` shows the docstring of the function X applies, for every public method and plot (the plot
    namespace takes its docstrings from `dlnode.analysis.plot` when ``ds.dln.plot`` is first used)."""
    from dlnode.analysis.accessor import DlnAccessor, _PlotNamespace

    assert xr.Dataset().dln.plot is not None  # the user's path: ds.dln.plot
    for cls in (DlnAccessor, _PlotNamespace):
        for name in dir(cls):
            member = getattr(cls, name)
            if name.startswith("_") or not callable(member):
                continue
            assert member.__doc__ and "applied to this dataset" in member.__doc__, (cls.__name__, name)
            assert len(member.__doc__.splitlines()) > 2, (cls.__name__, name)  # the function's own text follows
