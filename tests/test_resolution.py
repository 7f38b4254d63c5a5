"""A deep per-layer run from a tiny unbalanced init stops as `unresolved` once its weights move slower than the
round-off of their field, and that is what the field says: in exact rational arithmetic, at the weights where it
stopped, the slow part of the field is smaller than its float64 error. The negative control, the same problem from
a scale whose plateau is resolved, converges."""

from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dlnode as dln
from dlnode.flows.flow import flat_problem, get_flow
from dlnode.solvers.core import RUNNING
from dlnode.solvers.resolution import LONG_STEP, MIN_STEPS, unresolved

PROBLEM = {"shape": (6, 6), "rank": 2, "observed": 24, "seed": 0}
SLOW_EIGENVALUE = 1e-8  # ∇²L eigenvalues below this (the learned modes' are ~1 and above) span the slow directions


@pytest.fixture(scope="module")
def deep_tiny():
    prob = dln.MatrixCompletion.random(**PROBLEM)
    with pytest.warns(UserWarning, match="unresolved"):
        return prob, dln.integrate(prob, depth=5, init="gaussian", scale=1e-5, progress=False)


def _exact_field(layers, target, mask):
    """−∂L/∂W_j of ℓ = ½ Σ_Ω (W − M)² in exact rational arithmetic from the float64 weights."""

    def fr(a):
        return [[Fraction(float(v)) for v in row] for row in np.asarray(a)]

    def mm(a, b):
        return [[sum(a[i][k] * b[k][j] for k in range(len(b))) for j in range(len(b[0]))] for i in range(len(a))]

    def tr(a):
        return [list(r) for r in zip(*a, strict=True)]

    ws = [fr(w) for w in layers]
    prefixes = [[[Fraction(int(i == j)) for j in range(len(ws[0][0]))] for i in range(len(ws[0][0]))]]
    for w in ws[:-1]:
        prefixes.append(mm(w, prefixes[-1]))
    prod = mm(ws[-1], prefixes[-1])
    back = [[(prod[i][j] - Fraction(float(target[i, j]))) * int(mask[i, j]) for j in range(len(prod[0]))]
            for i in range(len(prod))]  # fmt: skip
    grads = [None] * len(ws)
    for j in range(len(ws) - 1, -1, -1):
        grads[j] = mm(back, tr(prefixes[j]))
        back = mm(tr(ws[j]), back)
    return np.concatenate([-np.array([[float(v) for v in row] for row in g]).ravel() for g in grads])


def test_stops_early_as_unresolved(deep_tiny):
    prob, ds = deep_tiny
    assert ds["status"].item() == dln.Status.UNRESOLVED
    assert ds["num_steps"].item() < 10_000  # not the step budget (200,000)
    layers = tuple(ds["weights_final"].isel(depth=0, scale=0, seed=0, layer=j).dropna("out", how="all")
                   .dropna("in", how="all").values for j in range(5))  # fmt: skip
    w = np.linalg.multi_dot(layers[::-1])
    assert prob.loss(w) < 0.5 * float(ds["loss"].isel(time=0).item())  # it stopped past the first escape


def test_the_field_is_below_its_round_off_where_it_stopped(deep_tiny):
    prob, ds = deep_tiny
    layers = tuple(ds["weights_final"].isel(depth=0, scale=0, seed=0, layer=j).values for j in range(5))
    arrays = jax.tree_util.tree_map(np.asarray, prob.arrays())
    flow = get_flow("layers", type(prob), 5.0)
    computed = np.concatenate([np.asarray(g).ravel() for g in flow.field(0.0, layers, {"problem": arrays})])
    exact = _exact_field(layers, prob.target(), np.asarray(prob.mask))
    loss, _ = flat_problem(type(prob))
    shapes = [w.shape for w in layers]

    def flat_loss(x):
        parts, k = [], 0
        for a, b in shapes:
            parts.append(x[k : k + a * b].reshape(a, b))
            k += a * b
        return loss(tuple(parts), arrays)

    x = np.concatenate([w.ravel() for w in layers])
    eigenvalues, vectors = np.linalg.eigh(np.asarray(jax.hessian(flat_loss)(x)))
    slow = vectors[:, np.abs(eigenvalues) < SLOW_EIGENVALUE]
    assert slow.shape[1] > 0
    signal, error = np.linalg.norm(slow.T @ exact), np.linalg.norm(slow.T @ (computed - exact))
    assert error > signal  # the float64 field's slow part is round-off, not the flow


def test_a_resolved_plateau_converges():
    prob = dln.MatrixCompletion.random(**PROBLEM)
    ds = dln.integrate(prob, depth=3, init="gaussian", scale=1e-3, progress=False)
    assert ds["status"].item() == dln.Status.CONVERGED


def test_far_from_converged_is_measured_against_the_stop_rules_gap():
    """A slow, long-stepped window of a cell still 1e-3·ℓ(0) above ℓ* is unresolved though its large init started
    at ℓ₀ = 1e6·ℓ(0): `FAR` is a fraction of the stop rule's gap min(ℓ₀, ℓ(0)) − ℓ*, as the stop rule's own
    `loss_tol` is. Negative control: without ℓ(0) (the gap ℓ₀ − ℓ*, the rule before) the same window counts as
    near enough, and a cell at 1e-7·ℓ(0) is near enough either way."""
    running = jnp.asarray(RUNNING, jnp.int64)
    slow = dict(moved=0.0, elapsed=1.0, accepted=MIN_STEPS, step=LONG_STEP, rho=1.0, loss0=1e6, loss_min=0.0)
    assert int(unresolved(running, loss=1e-3, loss_scale=1.0, **slow)) == int(dln.Status.UNRESOLVED)
    assert int(unresolved(running, loss=1e-3, **slow)) == RUNNING
    assert int(unresolved(running, loss=1e-7, loss_scale=1.0, **slow)) == RUNNING
