"""The balancedness D_j = W_{j+1}ᵀW_{j+1} − W_jW_jᵀ of a per-layer gradient flow is conserved: with defaults only, its
drift stays below 1e-6·max_j‖W_j‖² up to the last save of the run."""

import numpy as np

import dlnode as dln
from dlnode.run.plan import MAX_DEFAULT_RTOL_LAYERS, default_rtol

TARGET = 1e-6  # drift over max_j ‖W_j‖²_F


def _drift(weights, steps):
    """max_j ‖D_j(t) − D_j(0)‖_F at each save, from the stored layers (steps: the layers' (out, in) shapes)."""
    layers = [weights[:, j, :o, :i] for j, (o, i) in enumerate(steps)]

    def d(t):
        return [layers[j + 1][t].T @ layers[j + 1][t] - layers[j][t] @ layers[j][t].T for j in range(len(layers) - 1)]

    start = d(0)
    return np.array([max(np.linalg.norm(a - b) for a, b in zip(d(t), start, strict=True)) for t in range(len(weights))])


def test_drift_at_the_last_save_of_a_default_run_is_below_the_target():
    # the drift grows over the last escape (t ≈ 200 → 1000) and then stays (see the next test for its size)
    prob = dln.MatrixCompletion.random((6, 6), 2, 24, seed=1)
    ds = dln.integrate(prob, depth=3, init="gaussian", scale=1e-2, save_weights=True, progress=False)
    assert ds["status"].item() == dln.Status.CONVERGED
    cell = ds.isel(depth=0, scale=0, seed=0)
    size = float((cell["weights_final"].fillna(0.0) ** 2).sum(("out", "in")).max())
    drift = cell["balancedness"].values
    assert drift[-1] <= TARGET * size and np.nanmax(drift) <= TARGET * size
    # the same drift from the stored layers themselves
    shapes = [(6, 6)] * 3
    mine = _drift(cell["weights"].values, shapes)
    np.testing.assert_allclose(mine, drift, rtol=1e-6, atol=1e-14 * size)
    # the run's own tolerance, not luck: the plan capped it for a per-layer flow with a balancedness to keep
    assert ds.attrs["rtol"] == default_rtol(prob, [3], [1e-2]) <= MAX_DEFAULT_RTOL_LAYERS


def test_the_drift_is_integration_error_that_the_default_tolerance_bounds():
    # negative control: the same run at a loose rtol drifts past the target (measured, relative to max‖W_j‖²: 1.2e-7
    # at rtol 1e-6, 1.2e-6 at 1e-5, 1.9e-5 at 1e-4; 4.6e-8 at the default 2e-7); depth 1 keeps 1e-6
    prob = dln.MatrixCompletion.random((6, 6), 2, 24, seed=1)
    loose = dln.integrate(prob, depth=3, init="gaussian", scale=1e-2, rtol=1e-4, progress=False)
    size = float((loose["weights_final"].fillna(0.0) ** 2).sum(("out", "in")).max())
    assert float(loose["balancedness"].isel(time=-1).item()) > TARGET * size
    assert default_rtol(prob, [1], [1e-2]) == 1e-6
