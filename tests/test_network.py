"""Layer shapes, initialisations and the analytic per-layer gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dlnode as dln
from dlnode.flows.flow import Stacked, flat_problem, initial_balancedness, layer_gradients, pack_layers, unpack_layers

EXACT = 1e-12


def test_layer_shapes_chain_from_d_in_to_d_out():
    assert dln.layer_shapes(1, 4, 3) == [(3, 4)]
    assert dln.layer_shapes(3, 4, 3) == [(4, 4), (4, 4), (3, 4)]
    assert dln.layer_shapes(2, 4, 3, width=7) == [(7, 4), (3, 7)]


@pytest.mark.parametrize("init", ["gaussian", "orthogonal", "balanced", "residual", "decoupled"])
def test_initialisations_have_the_right_shapes_and_scale(init):
    prob = dln.Regression.whitened([2.0, 1.0], d_in=4, d_out=3, seed=0)
    layers = dln.init_layers(prob, 3, init, scale=1e-2, seed=1, width=5)
    assert [w.shape for w in layers] == dln.layer_shapes(3, 4, 3, 5)
    if init != "residual":
        assert 1e-2 / 10 < np.linalg.norm(layers[1], 2) < 1e-2 * 10


def test_balanced_init_has_zero_balancedness_and_orthogonal_init_unit_singular_values():
    prob = dln.Regression.whitened([1.0], d_in=3, d_out=5, seed=0)
    layers = dln.init_layers(prob, 4, "balanced", scale=0.3, seed=2, width=6)
    assert all(np.max(np.abs(d)) < EXACT for d in dln.balancedness(layers))
    ortho = dln.init_layers(prob, 2, "orthogonal", scale=0.5, seed=0)
    assert np.allclose(np.linalg.svd(ortho[0], compute_uv=False), 0.5)


def test_decoupled_init_puts_every_mode_at_scale_to_the_depth():
    prob = dln.Regression.whitened([3.0, 2.0, 1.0], d_in=5, d_out=4, seed=0)
    u, _, vt = np.linalg.svd(prob.sigma_yx)
    for depth in (1, 2, 4):
        w = dln.product(dln.init_layers(prob, depth, "decoupled", scale=0.1))
        strengths = np.diag(u.T @ w @ vt.T)[:4]
        assert np.allclose(strengths, 0.1**depth, rtol=EXACT, atol=0)
    scalar = dln.Regression.whitened([2.0], 1, 1, seed=0)
    assert all(float(w[0, 0]) == 0.1 for w in dln.init_layers(scalar, 3, "decoupled", 0.1))


def test_callable_init_is_validated():
    prob = dln.Factorization(np.eye(2))

    def ok(shapes, scale, rng):
        return [scale * np.ones(s) for s in shapes]

    assert np.all(dln.init_layers(prob, 2, ok, 0.5)[1] == 0.5)
    with pytest.raises(ValueError, match="init callable must return layers of shapes"):
        dln.init_layers(prob, 2, lambda shapes, scale, rng: [np.ones((3, 3))], 0.5)
    with pytest.raises(ValueError, match="unknown init 'xavier'"):
        dln.init_layers(prob, 2, "xavier", 0.5)


@pytest.mark.parametrize("depth", [1, 2, 3, 5, 7])
def test_analytic_layer_gradient_equals_autodiff(depth):
    """Depth 7 holds its equal hidden layers as one `Stacked` array (scanned passes); the others are unrolled."""
    prob = dln.MatrixCompletion.random((5, 4), 2, 12, seed=0)
    layers = tuple(jnp.asarray(w) for w in dln.init_layers(prob, depth, "gaussian", 0.7, seed=1, width=6))
    state = pack_layers(layers, batch=False)
    assert isinstance(state, Stacked) == (depth == 7)
    grads, w, e = layer_gradients(state, type(prob).grad_fn, prob.arrays())
    grads = unpack_layers(grads, batch=False)
    loss, _ = flat_problem(type(prob))
    auto = jax.grad(loss)(layers, prob.arrays())
    for g, a in zip(grads, auto, strict=True):
        assert np.max(np.abs(g - a)) <= EXACT * max(1.0, float(np.max(np.abs(a))))


def test_stacked_state_round_trips_and_keeps_balancedness():
    prob = dln.MatrixCompletion.random((5, 4), 2, 12, seed=0)
    cells = [dln.init_layers(prob, 8, "gaussian", 0.7, seed=s, width=6) for s in range(3)]
    batch = tuple(np.stack([c[j] for c in cells]) for j in range(8))
    state = pack_layers(batch)
    assert isinstance(state, Stacked) and state.hidden.shape == (3, 6, 6, 6)
    for a, b in zip(unpack_layers(state), batch, strict=True):
        assert np.array_equal(a, b)
    one = tuple(jnp.asarray(w) for w in cells[0])
    stacked = initial_balancedness(pack_layers(one, batch=False))
    plain = initial_balancedness(one)
    flat = [stacked[0], *stacked[1], stacked[2]]
    assert len(flat) == len(plain) == 7
    for a, b in zip(flat, plain, strict=True):
        assert np.max(np.abs(a - b)) <= 1e-14


def test_stacked_and_unrolled_states_integrate_the_same_flow(monkeypatch):
    """The same depth-7 run with its hidden layers stacked (scanned) and unrolled: one trajectory to round-off."""
    import dlnode.flows.flow as flows

    prob = dln.MatrixCompletion.random((4, 4), 2, 10, seed=0)
    kw = dict(depth=7, init="gaussian", scale=0.8, seed=[0, 1], method="tsit5", t1=2.0, saveat=5, save_weights=True,
              progress=False)  # fmt: skip
    stacked = dln.integrate(prob, **kw)
    monkeypatch.setattr(flows, "SCAN_DEPTH", 100)
    unrolled = dln.integrate(prob, **kw)
    for name in ("product", "weights", "weights_final", "balancedness", "grad_norm"):
        diff = float(np.abs(stacked[name] - unrolled[name]).max())
        assert diff <= 1e-12 * max(1.0, float(np.abs(unrolled[name]).max())), name
    assert np.array_equal(stacked["num_steps"], unrolled["num_steps"])
