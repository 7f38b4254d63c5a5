"""method='gd' is gradient descent exactly, and converges to the flow at order 1 in lr."""

import numpy as np
import pytest
from scipy.stats import linregress

import dlnode as dln

EXACT = 1e-12


def _numpy_gd(prob, layers, lr, steps):
    layers = [w.copy() for w in layers]
    for _ in range(steps):
        w = dln.product(layers)
        e = prob.grad(w)
        grads = []
        for j in range(len(layers)):
            left = dln.product(layers[j + 1 :]) if j + 1 < len(layers) else np.eye(w.shape[0])
            right = dln.product(layers[:j]) if j > 0 else np.eye(w.shape[1])
            grads.append(left.T @ e @ right.T)
        layers = [a - lr * g for a, g in zip(layers, grads, strict=True)]
    return layers


def test_gd_equals_a_hand_written_numpy_loop():
    prob = dln.MatrixCompletion.random((8, 6), 2, 30, seed=0)
    lr, steps = 0.05, 400
    ds = dln.integrate(prob, depth=3, init="gaussian", scale=0.5, seed=[0, 1], method="gd", lr=lr, t1=steps * lr,
                       saveat=np.array([100, 250, 400]) * lr, progress=False)  # fmt: skip
    assert list(ds["step"].values) == [0, 100, 250, 400]
    assert np.allclose(ds.time.values, ds["step"].values * lr, rtol=0, atol=1e-15)
    for seed in (0, 1):
        layers = dln.init_layers(prob, 3, "gaussian", 0.5, seed=seed)
        for k, n in enumerate(ds["step"].values):
            ref = dln.product(_numpy_gd(prob, layers, lr, int(n)))
            got = ds["product"].sel(seed=seed).values[0, 0, k]
            assert np.max(np.abs(got - ref)) < EXACT * max(1, np.abs(ref).max())
        final = _numpy_gd(prob, layers, lr, steps)
        for j, w in enumerate(final):
            got = ds["weights_final"].sel(seed=seed).values[0, 0, j, : w.shape[0], : w.shape[1]]
            assert np.max(np.abs(got - w)) < EXACT
    assert (ds["num_steps"].values == steps).all() and (ds["status"].values == 0).all()


def test_gd_changes_balancedness_by_lr_squared_times_the_gradient_term():
    prob = dln.Regression.whitened([2.0, 1.0], 3, 3, seed=0)
    lr = 0.1
    layers = dln.init_layers(prob, 2, "gaussian", 0.8, seed=3)
    ds = dln.integrate(prob, depth=2, init="gaussian", scale=0.8, seed=3, method="gd", lr=lr, t1=lr,
                       saveat=np.array([lr]), progress=False)  # fmt: skip
    w = dln.product(layers)
    e = prob.grad(w)
    g1, g2 = layers[1].T @ e, e @ layers[0].T
    # D after one step minus D before = lr² (G_2ᵀG_2 − G_1G_1ᵀ) exactly (docs/math.md §1)
    expected = np.linalg.norm(lr**2 * (g2.T @ g2 - g1 @ g1.T))
    assert abs(float(ds["balancedness"].values[0, 0, 0, -1]) - expected) < 1e-12 * max(expected, 1)


def test_gd_converges_to_the_flow_at_order_one():
    prob = dln.Regression.whitened([2.0, 1.0, 0.5], 3, 3, seed=2)
    t_end = 4.0
    times = np.linspace(0.5, t_end, 8)
    kw = dict(depth=3, init="gaussian", scale=0.5, seed=0, t1=t_end, progress=False)
    flow = dln.integrate(prob, method="dopri8", rtol=1e-12, atol=1e-14, saveat=times, **kw)
    lrs = np.array([0.05, 0.025, 0.0125, 0.00625])
    errors = []
    for lr in lrs:
        gd = dln.integrate(prob, method="gd", lr=lr, saveat=times, **kw)
        diff = gd["product"].values - flow["product"].values
        errors.append(np.max(np.abs(diff)))
    slope = linregress(np.log(lrs), np.log(errors)).slope
    assert abs(slope - 1.0) < 0.1, (slope, errors)


def test_gd_needs_a_positive_lr():
    prob = dln.Factorization(np.eye(2))
    with pytest.raises(ValueError, match="lr must be a positive finite number for method='gd'"):
        dln.integrate(prob, depth=2, method="gd", lr=-0.1, progress=False)
    with pytest.raises(ValueError, match="lr applies to method=.gd., flow=.modified. or flow=.central. only"):
        dln.integrate(prob, depth=2, method="tsit5", lr=0.1, progress=False)
