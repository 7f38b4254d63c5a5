"""Gradient flow through `integrate` against exact solutions (docs/math.md §3): Saxe's modes and depth 1."""

import numpy as np
import pytest
import scipy.integrate
import scipy.linalg

import dlnode as dln

RTOL, ATOL = 1e-10, 1e-12  # solver tolerances of these checks
MATCH = 1e-7  # a 5th-order adaptive method at rtol 1e-10 is accurate to well below this over O(10) time units
S = np.array([3.0, 2.0, 1.0])


def _mode_strengths(ds, prob):
    u, _, vt = np.linalg.svd(prob.sigma_yx)
    w = ds["product"].squeeze(("scale", "seed")).values  # (depth, time, row, col)
    return np.einsum("ia,dtij,ja->dta", u[:, :3], w, vt[:3].T)


def test_saxe_two_layer_closed_form():
    prob = dln.Regression.whitened(S, d_in=4, d_out=4, seed=0)
    u0 = 1e-3
    times = np.linspace(0.0, 6.0, 61)
    ds = dln.integrate(prob, depth=2, init="decoupled", scale=np.sqrt(u0), seed=0, t1=6.0, saveat=times,
                       method="tsit5", rtol=RTOL, atol=ATOL, progress=False)  # fmt: skip
    got = _mode_strengths(ds, prob)[0]
    t = times[:, None]
    exact = S * np.exp(2 * S * t) / (np.exp(2 * S * t) - 1 + S / u0)
    assert np.max(np.abs(got - exact) / S) < MATCH


@pytest.mark.parametrize("depth", [3, 4])
def test_saxe_n_layer_mode_ode(depth):
    prob = dln.Regression.whitened(S, d_in=3, d_out=3, seed=1)
    scale = 0.3
    u0 = scale**depth
    times = np.linspace(0.0, 8.0, 41)
    ds = dln.integrate(prob, depth=depth, init="decoupled", scale=scale, seed=0, t1=8.0, saveat=times,
                       method="dopri8", rtol=RTOL, atol=ATOL, progress=False)  # fmt: skip
    got = _mode_strengths(ds, prob)[0]
    for a, s in enumerate(S):
        ref = scipy.integrate.solve_ivp(lambda t, u, s=s: depth * u ** (2 - 2 / depth) * (s - u), (0, 8.0), [u0],
                                        t_eval=times, method="DOP853", rtol=1e-13, atol=1e-15)  # fmt: skip
        assert np.max(np.abs(got[:, a] - ref.y[0])) / s < MATCH


def test_depth_one_regression_is_a_matrix_exponential():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((3, 20)), rng.standard_normal((2, 20))
    prob = dln.Regression(x, y)
    times = np.linspace(0.0, 3.0, 16)
    ds = dln.integrate(prob, depth=1, init="gaussian", scale=1.0, seed=4, t1=3.0, saveat=times,
                       method="tsit5", rtol=RTOL, atol=ATOL, progress=False)  # fmt: skip
    w0 = dln.init_layers(prob, 1, "gaussian", 1.0, seed=4)[0]
    for k, t in enumerate(times):  # dW/dt = −(W − W*)Σ_xx  ⇒  W(t) = W* + (W0 − W*) exp(−Σ_xx t)
        exact = prob.w_star + (w0 - prob.w_star) @ scipy.linalg.expm(-prob.sigma_xx * t)
        assert np.max(np.abs(ds["product"].values[0, 0, 0, k] - exact)) < MATCH
    assert np.allclose(ds["loss"].values[0, 0, 0], [prob.loss(w) for w in ds["product"].values[0, 0, 0]], rtol=1e-12)
