"""Problems: losses and gradients against their defining formulas, random instances, validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dlnode as dln

EXACT = 1e-12  # float64 round-off on O(1)-sized sums of a few hundred terms


def _close(a, b, tol=EXACT):
    return np.max(np.abs(np.asarray(a) - np.asarray(b))) <= tol * max(1.0, np.max(np.abs(b)))


def test_regression_loss_and_gradient_match_the_data_form():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((4, 30)), rng.standard_normal((3, 30))
    prob = dln.Regression(x, y)
    w = rng.standard_normal((3, 4))
    assert _close(prob.loss(w), 0.5 * np.sum((w @ x - y) ** 2) / 30)
    assert _close(prob.grad(w), (w @ x - y) @ x.T / 30)
    # at the least-squares solution the loss is the residual, with no cancellation
    assert _close(prob.loss(prob.w_star), prob.loss_min)
    assert prob.loss(prob.w_star) >= 0


def test_regression_loss_near_the_minimum_has_no_cancellation():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 50))
    prob = dln.Regression(x, rng.standard_normal((2, 3)) @ x)  # noiseless: ℓ* = 0
    delta = 1e-9 * rng.standard_normal((2, 3))
    expected = 0.5 * np.sum((delta @ x) ** 2) / 50
    assert abs(float(prob.loss(prob.w_star + delta)) - expected) <= 1e-8 * expected


def test_whitened_regression_has_the_requested_spectrum():
    prob = dln.Regression.whitened([3.0, 2.0, 1.0], d_in=5, d_out=4, seed=3)
    assert np.allclose(prob.sigma_xx, np.eye(5))
    assert np.allclose(np.linalg.svd(prob.sigma_yx, compute_uv=False)[:3], [3, 2, 1])
    w = np.ones((4, 5))
    assert _close(prob.loss(w), 0.5 * np.sum((w - prob.sigma_yx) ** 2))


def test_completion_follows_arora_et_al_construction():
    prob = dln.MatrixCompletion.random(shape=(100, 100), rank=5, observed=2000, seed=0)
    assert np.isclose(np.linalg.norm(prob.target_matrix), 100.0)
    assert np.linalg.matrix_rank(prob.target_matrix) == 5
    assert prob.mask.sum() == 2000
    frac = dln.MatrixCompletion.random(shape=(10, 20), rank=2, observed=0.25, seed=1)
    assert frac.mask.sum() == 50
    w = np.random.default_rng(2).standard_normal((10, 20))
    assert _close(frac.loss(w), 0.5 * np.sum(frac.mask * (w - frac.target_matrix) ** 2))
    norm = dln.MatrixCompletion(frac.target_matrix, frac.mask, normalize=True)
    assert _close(norm.loss(w), frac.loss(w) / 50)
    assert "Omega" in norm.describe()["loss"]


def test_sensing_and_factorization_losses():
    sens = dln.MatrixSensing.random(shape=(4, 5), rank=2, measurements=40, seed=0)
    w = np.random.default_rng(3).standard_normal((4, 5))
    inner = np.einsum("mij,ij->m", sens.sensing, w - sens.target_matrix)
    assert _close(sens.loss(w), 0.5 * np.mean(inner**2))
    fac = dln.Factorization(np.arange(6.0).reshape(2, 3))
    assert _close(fac.loss(np.zeros((2, 3))), 0.5 * np.sum(np.arange(6.0) ** 2))


@pytest.mark.parametrize(
    "prob",
    [
        dln.Regression.whitened([2.0, 1.0], 3, 3, seed=0),
        dln.MatrixCompletion.random((6, 5), 2, 15, seed=0),
        dln.MatrixSensing.random((4, 3), 1, 20, seed=0),
        dln.Factorization(np.eye(3)),
    ],
    ids=lambda p: p.kind,
)
def test_gradient_is_the_autodiff_gradient_of_the_loss(prob):
    w = jnp.asarray(np.random.default_rng(5).standard_normal((prob.d_out, prob.d_in)))
    assert _close(prob.grad(w), jax.grad(prob.loss)(w))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: dln.Regression(np.ones((2, 3)), np.ones((2, 4))), "same number of samples"),
        (lambda: dln.Regression(np.ones(3), np.ones((2, 3))), "X must be a 2-dimensional array"),
        (lambda: dln.Regression(np.full((2, 3), np.nan), np.ones((2, 3))), "X must be finite"),
        (lambda: dln.MatrixCompletion.random((5, 5), rank=7), "rank must be an integer in"),
        (lambda: dln.MatrixCompletion.random((5, 5), rank=2, observed=30), "observed must be a count"),
        (lambda: dln.MatrixCompletion(np.ones((2, 2)), np.zeros((2, 2), bool)), "at least one entry"),
        (lambda: dln.Regression.whitened([1.0, -1.0], 3, 3), "positive finite"),
        (lambda: dln.MatrixSensing.random((3, 3), 1, measurements=0), "measurements must be a positive"),
        (lambda: dln.MatrixCompletion.random((5, 5), 2, 10, seed=-1), "seed must be a non-negative"),
    ],
)
def test_bad_input_gets_a_one_line_error(call, match):
    with pytest.raises(ValueError, match=match) as info:
        call()
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("shape", [(7, 4), (4, 7)])
def test_loss_min_in_span_against_least_squares(shape):
    """ℓ*_S, the best fit inside W₀'s column space (tall W₀) or row space (wide), by conjugate gradients on the
    problem's Hessian products, against a dense least-squares solve over the subspace's coordinates: a completion
    (each column, or row, its own least squares over the observed entries) and a sensing problem. A square W₀ of
    full rank spans everything: ℓ*_S = ℓ* (negative control: the subspace is what lifts the floor)."""
    rng = np.random.default_rng(5)
    target = rng.standard_normal((shape[0], 2)) @ rng.standard_normal((2, shape[1]))
    w0 = rng.standard_normal(shape)
    basis = np.linalg.svd(w0 if shape[0] > shape[1] else w0.T, full_matrices=False)[0]  # (long side, short side)
    r = basis.shape[1]
    mask = rng.random(shape) < 0.7
    completion = dln.MatrixCompletion(target, mask)
    sensing = dln.MatrixSensing(rng.standard_normal((30, *shape)), target)

    def least_squares(prob):  # the loss's linear map on the coordinates Z (W = QZ, or W = ZᵀQᵀ), column by column
        count = r * (shape[1] if shape[0] > shape[1] else shape[0])
        cols = []
        for i in range(count):
            z = np.zeros(count)
            z[i] = 1.0
            z = z.reshape(r, -1)
            w = basis @ z if shape[0] > shape[1] else (basis @ z).T
            cols.append(w)
        if isinstance(prob, dln.MatrixCompletion):
            a = np.stack([c[mask] for c in cols], axis=1)
            b = target[mask]
        else:
            a = np.stack([np.einsum("mij,ij->m", prob.sensing, c) for c in cols], axis=1)
            b = np.einsum("mij,ij->m", prob.sensing, target)
        z = np.linalg.lstsq(a, b, rcond=None)[0]
        return 0.5 * float(np.sum((a @ z - b) ** 2)) / (1 if isinstance(prob, dln.MatrixCompletion) else len(b))

    for prob in (completion, sensing):
        expected = least_squares(prob)
        got = prob.loss_min_in_span(w0)
        assert got > prob.loss_min + 1e-3
        assert got == pytest.approx(expected, rel=1e-10)
    low_rank = rng.standard_normal((5, 2)) @ rng.standard_normal((2, 5))
    square = dln.MatrixSensing(rng.standard_normal((40, 5, 5)), low_rank)
    assert square.loss_min_in_span(rng.standard_normal((5, 5))) == pytest.approx(square.loss_min, abs=1e-9)
    with pytest.raises(ValueError, match="w0"):
        completion.loss_min_in_span(np.zeros((3, 3)))


def test_a_problem_shows_what_defines_it_in_one_line_not_its_arrays():
    assert repr(dln.MatrixSensing.random(shape=(6, 6), rank=2, measurements=40, seed=0)) == (
        "MatrixSensing(6 × 6, measurements=40, rank=2, seed=0)"
    )
    assert repr(dln.Factorization(np.eye(3))) == "Factorization(3 × 3)"
    assert "\n" not in repr(dln.MatrixCompletion.random(shape=(30, 30), rank=3, observed=0.5, seed=1))
