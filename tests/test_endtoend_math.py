"""Tests of the balanced end-to-end operator, its infinite-depth limit, metric, volume and balanced layers.

References used as oracles: the closed form of the divided differences and a 60-digit `decimal` evaluation of it
(near ties and zeros); the matrix-power sum defining A_N, with powers from `eigh`; Gauss–Legendre quadrature of
A_∞'s integral; the per-layer gradient flow of balanced layers (the identity the end-to-end flow comes from);
the determinant of the metric tensor; hand-computed values.
"""

from __future__ import annotations

import decimal
import functools
import math

import jax
import numpy as np
import pytest

import dlnode
from dlnode.flows.endtoend import apply_operator, end_to_end_field, log_volume, metric, operator_weights, recover_layers

EPS = np.finfo(np.float64).eps
# The weights are a few float64 operations (log1p, expm1, pow) each within an ulp or two; their condition number
# is at most |ln σ| + O(1) for the σ used here (≤ 30), so the error is below 100·eps ≈ 2e-14. 1e-12 leaves margin.
WEIGHT_RTOL = 1e-12
# Backward-stable SVD / eigh of matrices with condition number ≲ 1e2, a depth-5 sum: ~ d·N·cond·eps ≈ 1e-13.
MATRIX_RTOL = 1e-12
# Products and Gram matrices of N orthonormal-frame layers: a few ulps per multiplication.
BALANCE_RTOL = 1e-12
# The O(1/N) rate: fitted slope of log error against log N must be within this of −1.
SLOPE_TOL = 0.1
DEPTHS = (1, 2, 3, 4, 5)
SHAPES = ((4, 4), (3, 5), (5, 3))
DIGITS = 60


def _rel(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


def _decimal_weight(s_i: float, s_k: float, depth: float) -> decimal.Decimal:
    """The weights from their definition, in 60-digit decimal arithmetic (exact binary inputs)."""
    with decimal.localcontext() as ctx:
        ctx.prec = DIGITS
        x, y = decimal.Decimal(s_i), decimal.Decimal(s_k)
        if depth == math.inf:
            if x == 0 or y == 0:
                return decimal.Decimal(0)
            return x * x if x == y else (x * x - y * y) / ((x * x).ln() - (y * y).ln())
        n = decimal.Decimal(depth)
        if x == y:
            return n * x ** (2 - 2 / n) if x > 0 else decimal.Decimal(1 if depth == 1 else 0)
        if x == 0 or y == 0:
            return max(x, y) ** (2 - 2 / n)
        return (x * x - y * y) / (x ** (2 / n) - y ** (2 / n))


def test_weights_match_closed_form_at_separated_values():
    s = np.array([0.3, 1.0, 2.5, 7.0])
    i, k = np.triu_indices(s.size, 1)
    si, sk = np.concatenate([s[i], s[k]]), np.concatenate([s[k], s[i]])
    for depth in (1, 2, 3, 5, 8, 64):
        expected = (si**2 - sk**2) / (si ** (2 / depth) - sk ** (2 / depth))
        np.testing.assert_allclose(operator_weights(si, sk, depth), expected, rtol=WEIGHT_RTOL)
        np.testing.assert_allclose(operator_weights(s, s, depth), depth * s ** (2 - 2 / depth), rtol=WEIGHT_RTOL)
    expected = (si**2 - sk**2) / np.log(si**2 / sk**2)
    np.testing.assert_allclose(operator_weights(si, sk, math.inf), expected, rtol=WEIGHT_RTOL)
    got = np.asarray(operator_weights(s[:, None], s[None, :], math.inf))
    np.testing.assert_allclose(np.diag(got), s**2, rtol=WEIGHT_RTOL)


@pytest.mark.parametrize("depth", [1, 2, 3, 7, 64, 1000, math.inf])
def test_weights_match_high_precision_at_ties_near_ties_and_zeros(depth):
    pairs = [(0.0, 0.0), (0.0, 1e-100), (2.5, 0.0), (0.0, 1e8)]  # weights stay above float64's underflow
    for s in (1e-6, 0.7, 1.0, 3.2, 1e4):
        pairs += [(s, s * (1 + d)) for d in (0.0, 1e-15, 1e-12, 1e-8, 1e-4, 0.5)]
    s_i, s_k = np.array(pairs).T
    got = np.asarray(operator_weights(s_i, s_k, depth))
    assert np.all(np.isfinite(got))
    for (x, y), value in zip(pairs, got, strict=True):
        ref = _decimal_weight(x, y, depth)
        if ref == 0:
            assert value == 0.0, (x, y)
        else:
            assert abs(decimal.Decimal(float(value)) / ref - 1) < WEIGHT_RTOL, (x, y, value, ref)
    np.testing.assert_array_equal(got, operator_weights(s_k, s_i, depth))  # symmetric in its two arguments


def _psd_power(p: np.ndarray, alpha: float, rank: int) -> np.ndarray:
    """P^α by eigh; the known zero eigenvalues (rank(WWᵀ) = min(m, n)) are set to exactly 0, and 0⁰ = 1."""
    lam, q = np.linalg.eigh(p)
    lam = np.clip(lam, 0.0, None)
    lam[: p.shape[0] - rank] = 0.0
    powered = np.ones_like(lam) if alpha == 0 else np.where(lam > 0, lam ** max(alpha, 0.0), 0.0)
    return (q * powered) @ q.T


def _direct_operator(w: np.ndarray, z: np.ndarray, depth: int) -> np.ndarray:
    rank = min(w.shape)
    left, right = w @ w.T, w.T @ w
    return sum(
        _psd_power(left, (depth - j) / depth, rank) @ z @ _psd_power(right, (j - 1) / depth, rank)
        for j in range(1, depth + 1)
    )


@pytest.mark.parametrize("shape", SHAPES)
def test_apply_operator_matches_matrix_power_sum(shape):
    rng = np.random.default_rng(1)
    w, z = rng.standard_normal(shape), rng.standard_normal(shape)
    for depth in DEPTHS:
        assert _rel(apply_operator(w, z, depth), _direct_operator(w, z, depth)) < MATRIX_RTOL
    np.testing.assert_allclose(apply_operator(w, z, 1), z, rtol=MATRIX_RTOL)


@pytest.mark.parametrize("shape", SHAPES)
def test_infinite_depth_operator_matches_quadrature(shape):
    rng = np.random.default_rng(2)
    w, z = rng.standard_normal(shape), rng.standard_normal(shape)
    rank = min(shape)
    nodes, weights = np.polynomial.legendre.leggauss(60)
    s_values, s_weights = (nodes + 1) / 2, weights / 2
    left, right = w @ w.T, w.T @ w
    expected = sum(
        c * _psd_power(left, 1 - s, rank) @ z @ _psd_power(right, s, rank)
        for s, c in zip(s_values, s_weights, strict=True)
    )
    assert _rel(apply_operator(w, z, math.inf), expected) < MATRIX_RTOL
    assert _rel(apply_operator(w, z, "inf"), expected) < MATRIX_RTOL


def _fitted_slope(depths, errors) -> float:
    return float(np.polyfit(np.log(depths), np.log(errors), 1)[0])


@pytest.mark.parametrize("shape", [(4, 4), (3, 5)])
def test_scaled_operator_tends_to_infinite_depth_at_rate_one_over_depth(shape):
    rng = np.random.default_rng(3)
    w, z = rng.standard_normal(shape), rng.standard_normal(shape)
    limit = apply_operator(w, z, math.inf)
    depths = 2 ** np.arange(3, 9)
    errors = [_rel(np.asarray(apply_operator(w, z, int(n))) / n, limit) for n in depths]
    assert abs(_fitted_slope(depths, errors) + 1) < SLOPE_TOL, errors


def _problem_gradient(shape: tuple[int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A point W and the matrix-completion gradient E = ∇ℓ(W) there."""
    rng = np.random.default_rng(seed)
    problem = dlnode.MatrixCompletion.random(shape=shape, rank=2, observed=0.6, seed=seed)
    w = rng.standard_normal(shape)
    return w, np.asarray(problem.grad(w))


@pytest.mark.parametrize("shape", SHAPES)
def test_energy_identity(shape):
    w, e = _problem_gradient(shape, seed=4)
    for depth in (*DEPTHS, math.inf):
        field = end_to_end_field(w, e, depth)
        np.testing.assert_allclose(metric(w, field, depth), np.sum(e * -field), rtol=MATRIX_RTOL)
        if depth != math.inf:
            a_e = apply_operator(w, e, depth)
            np.testing.assert_allclose(metric(w, a_e, depth, rescale=False), np.sum(e * a_e), rtol=MATRIX_RTOL)
            np.testing.assert_allclose(end_to_end_field(w, e, depth, rescale=False), -a_e, rtol=MATRIX_RTOL)
            np.testing.assert_allclose(field, -a_e / depth, rtol=MATRIX_RTOL)


def test_metric_and_operator_at_a_rank_deficient_point():
    w = np.diag([2.0, 1.0, 0.0])
    null, unit = np.zeros((3, 3)), np.zeros((3, 3))
    null[2, 2], unit[0, 0] = 1.0, 1.0
    for depth in (2, 3, 5):
        assert float(np.abs(apply_operator(w, null, depth)).max()) == 0.0
        assert float(metric(w, null, depth)) == 0.0  # off the range of A_N: ignored, not infinite
        expected = 1 / (depth * 2.0 ** (2 - 2 / depth))  # 1/a_11 with a_11 = N σ_1^{2−2/N}
        np.testing.assert_allclose(metric(w, unit, depth, rescale=False), expected, rtol=MATRIX_RTOL)
        np.testing.assert_allclose(metric(w, unit, depth), depth * expected, rtol=MATRIX_RTOL)
    np.testing.assert_allclose(metric(w, unit, math.inf), 1 / 4.0, rtol=MATRIX_RTOL)
    np.testing.assert_allclose(metric(w, null + unit, 1), 2.0, rtol=MATRIX_RTOL)  # depth 1: Euclidean


def test_log_volume_hand_computed():
    ln2 = math.log(2)
    # σ = (2, 1), N = 2: ln(2·|2 − 1|) + (1/2 − 1)(ln 2 + ln 1)
    np.testing.assert_allclose(log_volume([2.0, 1.0], 2), 0.5 * ln2, rtol=WEIGHT_RTOL)
    # unscaled: ln|2 − 1| − ½ ln 2 − (k/2) ln N = −1.5 ln 2
    np.testing.assert_allclose(log_volume([2.0, 1.0], 2, rescale=False), -1.5 * ln2, rtol=WEIGHT_RTOL)
    # σ = (8, 1), N = 3: ln(3·|4 − 1|) + (1/3 − 1) ln 8 = ln(9/4)
    np.testing.assert_allclose(log_volume([1.0, 8.0], 3), math.log(9 / 4), rtol=WEIGHT_RTOL)
    # depth ∞: ln|ln 4 − ln 1| − ln 2
    np.testing.assert_allclose(log_volume([2.0, 1.0], math.inf), math.log(math.log(4)) - ln2, rtol=WEIGHT_RTOL)
    # one σ: only the diagonal term, and leading axes are kept
    stacked = np.array([[[2.0, 1.0], [1.0, 8.0], [8.0, 1.0]]] * 2)
    got = np.asarray(log_volume(stacked, 3))
    assert got.shape == (2, 3)
    np.testing.assert_allclose(got[:, 1:], math.log(9 / 4), rtol=WEIGHT_RTOL)
    np.testing.assert_allclose(log_volume([4.0], 2), -0.5 * math.log(4), rtol=WEIGHT_RTOL)


def test_log_volume_accurate_near_a_tie():
    s = [1.0, 1.0 + 2**-40]
    with decimal.localcontext() as ctx:
        ctx.prec = DIGITS
        x, y = decimal.Decimal(s[0]), decimal.Decimal(s[1])
        for depth in (2, 5, 64):
            n = decimal.Decimal(depth)
            ref = (n * (y ** (2 / n) - x ** (2 / n))).ln() + (1 / n - 1) * y.ln()
            np.testing.assert_allclose(log_volume(s, depth), float(ref), rtol=WEIGHT_RTOL)
        ref = (2 * y.ln()).ln() - y.ln()
        np.testing.assert_allclose(log_volume(s, math.inf), float(ref), rtol=WEIGHT_RTOL)


def _operator_matrix(w: np.ndarray, depth: float) -> np.ndarray:
    """The matrix of Z ↦ A_N(Z)/N (A_∞ at depth ∞) on the entries of Z: the inverse of the metric tensor."""
    basis = np.eye(w.size).reshape(w.size, *w.shape)
    scale = 1.0 if depth == math.inf else depth
    return np.stack([np.asarray(apply_operator(w, b, depth)).ravel() / scale for b in basis], axis=1)


def test_log_volume_is_metric_determinant_times_svd_jacobian():
    rng = np.random.default_rng(5)
    sigma = np.array([2.5, 1.2, 0.4])
    u, v = np.linalg.qr(rng.standard_normal((3, 3)))[0], np.linalg.qr(rng.standard_normal((3, 3)))[0]
    w = (u * sigma) @ v.T
    jacobian = sum(math.log(abs(sigma[i] ** 2 - sigma[k] ** 2)) for i in range(3) for k in range(i + 1, 3))
    for depth in (1, 2, 3, 5, math.inf):
        # vol = √det(metric tensor) = det(A/N)^{-1/2} against dW; dW = Jacobian · dσ dU dV
        expected = -0.5 * np.linalg.slogdet(_operator_matrix(w, depth))[1] + jacobian
        np.testing.assert_allclose(log_volume(sigma, depth), expected, rtol=MATRIX_RTOL)
        if depth != math.inf:
            unscaled = expected - 0.5 * w.size * math.log(depth)  # metric g_N = (N g_N)/N on 9 dimensions
            np.testing.assert_allclose(log_volume(sigma, depth, rescale=False), unscaled, rtol=MATRIX_RTOL, atol=1e-14)


def test_scaled_log_volume_tends_to_infinite_depth_at_rate_one_over_depth():
    sigma = np.array([[3.0, 1.5, 0.2, 0.05]])
    limit = float(log_volume(sigma, math.inf)[0])
    depths = 2 ** np.arange(3, 9)
    errors = [abs(float(log_volume(sigma, int(n))[0]) - limit) for n in depths]
    assert abs(_fitted_slope(depths, errors) + 1) < SLOPE_TOL, errors


def _check_balanced(layers, w, depth):
    assert len(layers) == depth
    assert _rel(dlnode.product(layers), w) < BALANCE_RTOL
    scale = np.linalg.norm(w, 2) ** (2 / depth)
    for d in dlnode.balancedness(layers):
        assert np.linalg.norm(d) / scale < BALANCE_RTOL


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("width", [None, 7])
def test_recover_layers_are_balanced_with_product_w(shape, width):
    w = np.random.default_rng(6).standard_normal(shape)
    for depth in DEPTHS:
        layers = recover_layers(w, depth, width=width)
        _check_balanced(layers, w, depth)
        hidden = max(shape) if width is None else width
        dims = [shape[1]] + [hidden] * (depth - 1) + [shape[0]]
        assert [layer.shape for layer in layers] == [(dims[j + 1], dims[j]) for j in range(depth)]


def test_recover_layers_width_against_rank():
    rng = np.random.default_rng(7)
    low_rank = rng.standard_normal((5, 2)) @ rng.standard_normal((2, 4))
    _check_balanced(recover_layers(low_rank, 3, width=2), low_rank, 3)
    with pytest.raises(ValueError, match=r"width must be at least rank\(W\) = 2"):
        recover_layers(low_rank, 3, width=1)


def _per_layer_velocity(layers: list[np.ndarray], e: np.ndarray) -> np.ndarray:
    """d/dt of the product under dW_j/dt = −G_j, G_j = (W_N⋯W_{j+1})ᵀ E (W_{j−1}⋯W_1)ᵀ."""
    total = np.zeros_like(e)
    for j in range(len(layers)):
        above = dlnode.product(layers[j + 1 :]) if j + 1 < len(layers) else np.eye(e.shape[0])
        below = dlnode.product(layers[:j]) if j > 0 else np.eye(e.shape[1])
        total -= above @ (above.T @ e @ below.T) @ below
    return total


@pytest.mark.parametrize("shape", [(3, 5), (5, 3), (4, 4)])
def test_per_layer_flow_of_balanced_layers_is_the_end_to_end_flow(shape):
    rng = np.random.default_rng(8)
    problem = dlnode.Regression(rng.standard_normal((shape[1], 20)), rng.standard_normal((shape[0], 20)))
    w = rng.standard_normal(shape)
    e = np.asarray(problem.grad(w))
    for depth in (1, 2, 3, 4, 5):
        for width in (None, 6):
            velocity = _per_layer_velocity(recover_layers(w, depth, width=width), e)
            expected = end_to_end_field(w, e, depth, rescale=False)
            assert _rel(velocity, expected) < MATRIX_RTOL, (depth, width)


def test_functions_are_jit_compatible():
    w, e = _problem_gradient((4, 3), seed=9)
    for depth in (3, math.inf):
        field = jax.jit(functools.partial(end_to_end_field, depth=depth))
        np.testing.assert_allclose(field(w, e), end_to_end_field(w, e, depth), rtol=MATRIX_RTOL)
        length = jax.jit(functools.partial(metric, depth=depth))
        np.testing.assert_allclose(length(w, e), metric(w, e, depth), rtol=MATRIX_RTOL)
        volume = jax.jit(functools.partial(log_volume, depth=depth))
        np.testing.assert_allclose(volume(np.array([3.0, 1.0])), log_volume([3.0, 1.0], depth), rtol=MATRIX_RTOL)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: operator_weights(1.0, 2.0, 0), "depth must be a positive integer or inf"),
        (lambda: operator_weights(1.0, 2.0, 2.5), "depth must be a positive integer or inf"),
        (lambda: apply_operator(np.eye(2), np.eye(2), True), "depth must be a positive integer or inf"),
        (lambda: apply_operator(np.eye(2), np.eye(3), 2), r"Z must have W's shape \(2, 2\); got \(3, 3\)"),
        (lambda: end_to_end_field(np.ones(3), np.ones(3), 2), "W must be a 2-dimensional array"),
        (lambda: log_volume(np.ones((2, 0)), 2), "sigma must have the singular values on a non-empty"),
        (lambda: recover_layers(np.eye(2), math.inf), "depth must be a positive integer; got inf"),
        (lambda: recover_layers(np.eye(2), 2, width=0), "width must be a positive integer or None"),
        (lambda: recover_layers(np.full((2, 2), np.nan), 2), "W must be finite; got 4 NaN/inf entries"),
        (lambda: recover_layers(np.ones(3), 2), "W must be a 2-dimensional array"),
    ],
)
def test_invalid_inputs_raise_one_line_errors(call, message):
    with pytest.raises(ValueError, match=message) as info:
        call()
    assert "\n" not in str(info.value)
