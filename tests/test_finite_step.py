"""Gradient descent at finite step size: the sharpness along a run, the central flow, divergence.

References: the dense Hessian (`jax.hessian`, eigvalsh) for the Lanczos values; the gradient flow for the central flow
below the edge; a brute-force minimisation for the complementarity solve; the stability bound 2/η for the edge.
"""

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from jax.flatten_util import ravel_pytree

import dlnode as dln
from dlnode.flows import flow as flow_module
from dlnode.flows.central import complementarity
from dlnode.flows.flow import flat_problem
from dlnode.solvers.stepping import compiled

EIG_RTOL = 1e-9  # Lanczos stops at residuals 1e-7 |θ₁|: eigenvalues to ~1e-14 relative, far inside this
SOLVER_RTOL = 1e-8  # the explicit methods' tolerance in these tests

PROB = dln.Regression.whitened(singular_values=[3.0, 2.0, 1.0], d_in=4, d_out=3, seed=0)


def _layers(ds, depth, **where):
    """The per-layer weights (time, ...) of one run, un-padded."""
    w = ds["weights"].sel(depth=float(depth)).isel(scale=0, seed=0, **where).values
    shapes = dln.layer_shapes(depth, PROB.d_in, PROB.d_out)
    return [w[..., j, :r, :c] for j, (r, c) in enumerate(shapes)]


@jax.jit
def _dense_hessian(layers, arrays):
    """∇²L in the flattened layers (compiled once per depth: the tests call it at every save)."""
    loss, _ = flat_problem(type(PROB))
    flat, unravel = ravel_pytree(layers)
    return jax.hessian(lambda x: loss(unravel(x), arrays))(flat)


def _dense_top(layers, k):
    arrays = jax.tree_util.tree_map(jnp.asarray, PROB.arrays())
    hessian = _dense_hessian(tuple(jnp.asarray(w) for w in layers), arrays)
    return np.linalg.eigvalsh(np.asarray(hessian))[::-1][:k]


def test_sharpness_at_every_gd_step_matches_the_dense_hessian():
    """Every step's top-2 eigenvalues, at that step's iterate, equal eigvalsh of the dense Hessian there; and
    `dln.sharpness` at the final weights runs the same Lanczos."""
    lr = 0.05
    ds = dln.integrate(PROB, depth=3, scale=0.5, method="gd", lr=lr, t1=6 * lr, saveat=np.arange(7) * lr,
                       sharpness=2, save_weights=True, progress=False)  # fmt: skip
    assert ds["sharpness"].dims == ("depth", "scale", "seed", "time", "eig") and ds.attrs["sharpness"] == 2
    assert ds["step"].values.tolist() == list(range(7))
    for i in range(ds.sizes["time"]):
        dense = _dense_top([w[i] for w in _layers(ds, 3)], 2)
        got = ds["sharpness"].isel(depth=0, scale=0, seed=0, time=i).values
        np.testing.assert_allclose(got, dense, rtol=EIG_RTOL)
    last = [w[-1] for w in _layers(ds, 3)]
    np.testing.assert_allclose(dln.sharpness(PROB, last, k=2), _dense_top(last, 2), rtol=EIG_RTOL)


def test_sharpness_along_a_stiff_flow_matches_the_dense_hessian():
    """The stiff path (`rosenbrock`) warm-starts each save's Lanczos from the last save's vectors too: every save's
    top-2 eigenvalues equal eigvalsh of the dense Hessian at that save's weights."""
    ds = dln.integrate(PROB, depth=3, scale=0.5, method="rosenbrock", t1=2.0, saveat=5, sharpness=2,
                       save_weights=True, progress=False)  # fmt: skip
    assert ds.attrs["method"] == "rosenbrock" and ds.sizes["time"] > 2
    for i in range(ds.sizes["time"]):
        dense = _dense_top([w[i] for w in _layers(ds, 3)], 2)
        np.testing.assert_allclose(ds["sharpness"].isel(depth=0, scale=0, seed=0, time=i).values, dense, rtol=EIG_RTOL)


def test_sharpness_along_an_explicit_flow_matches_the_dense_hessian():
    """diffrax's methods save the states and observe them after each window, each save's Lanczos warm-started from
    the last's (and a window's padded repeats of its last time not solved again): 22 saves, two windows, the second
    padded; every save's top-2 eigenvalues equal eigvalsh of the dense Hessian at that save's weights."""
    ds = dln.integrate(PROB, depth=3, scale=0.5, method="tsit5", t1=2.0, saveat=21, sharpness=2, rtol=SOLVER_RTOL,
                       save_weights=True, progress=False)  # fmt: skip
    assert ds.attrs["method"] == "tsit5" and 16 < ds.sizes["time"] < 32
    for i in range(ds.sizes["time"]):
        dense = _dense_top([w[i] for w in _layers(ds, 3)], 2)
        np.testing.assert_allclose(ds["sharpness"].isel(depth=0, scale=0, seed=0, time=i).values, dense, rtol=EIG_RTOL)


def test_saves_a_run_did_not_reach_are_not_observed_on_inf_states(monkeypatch):
    """diffrax leaves the save times a solve did not reach as inf; the curvature's saves are observed after the solve
    (warm-started), and an inf state must not reach the Lanczos solve (or LAPACK, which printed its complaint to the
    user's terminal 1214 times on a long run). A run that spends its step budget (3,000 steps) short of its last saves
    (74 of 101 reached): every state the Lanczos solve is handed is finite, and so are the reached saves' values.
    Control: the spy that watches the Lanczos solve's input records an inf state as one (with the observation of
    unreached saves undone, it records 6 of them in this run)."""
    seen = []
    real = flow_module.tracked_eigenvalues

    def spy(gradient, y, k, start):
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(w)) for w in jax.tree_util.tree_leaves(y)]))
        jax.debug.callback(lambda ok: seen.append(bool(ok)), finite)
        return real(gradient, y, k, start)

    monkeypatch.setattr(flow_module, "tracked_eigenvalues", spy)
    compiled.cache_clear()  # the window is traced again, with the spy in it
    prob = dln.MatrixCompletion.random(shape=(20, 20), rank=2, observed=200, seed=0)
    with pytest.warns(UserWarning, match="stopped before t1"):
        ds = dln.integrate(prob, depth=3, scale=0.1, method="tsit5", t1=1e4, saveat=100, sharpness=1, max_steps=3000,
                           progress=False)  # fmt: skip
    compiled.cache_clear()
    reached = ds["time"].values <= float(ds["t_final"].max())
    assert ds.status.item() == int(dln.Status.MAX_STEPS) and reached.sum() < reached.size
    assert np.isfinite(ds["sharpness"].isel(depth=0, scale=0, seed=0).values[reached]).all()
    assert len(seen) > reached.sum() and all(seen)
    seen.clear()
    layers = tuple(jnp.full(s, jnp.inf) for s in dln.layer_shapes(3, prob.d_in, prob.d_out))
    jax.block_until_ready(spy(lambda y: y, layers, 1, jnp.zeros(sum(w.size for w in layers))))
    assert seen == [False]


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"sharpness": 45}, "sharpness must be at most the parameter count 44"),
        ({"sharpness": -1}, "sharpness must be a non-negative integer"),
        ({"sharpness": 1, "flow": "end_to_end", "init": "balanced"}, "sharpness needs per-layer parameters"),
        ({"flow": "central"}, "lr must be a positive finite number for flow='central'"),
        ({"flow": "central", "lr": 0.0}, "lr must be a positive finite number for flow='central'"),
        ({"flow": "central", "lr": -0.1}, "lr must be a positive finite number for flow='central'"),
        ({"flow": "central", "lr": 0.1, "method": "rosenbrock"}, "method must be an explicit method"),
    ],
)
def test_bad_input_is_refused_in_one_line(kwargs, words):
    with pytest.raises(dln.DlnodeError) as info:
        dln.integrate(PROB, depth=3, t1=1.0, progress=False, **kwargs)
    message = str(info.value)
    assert words in message and "\n" not in message


def test_central_flow_is_the_gradient_flow_below_the_edge():
    """With 2/η far above the sharpness, X = 0 and the central flow is the gradient flow (same solver, same rtol)."""
    kw = {"depth": 2, "scale": 0.5, "seed": 0, "t1": 0.5, "saveat": 3, "method": "tsit5",
          "rtol": SOLVER_RTOL, "progress": False}  # fmt: skip
    central = dln.integrate(PROB, flow="central", lr=1e-3, save_weights=True, **kw)
    flow = dln.integrate(PROB, flow="layers", **kw)
    last = [w[-1] for w in _layers(central, 2)]  # the flow's own sharpness along the run, against the dense Hessian
    got = central["sharpness"].isel(depth=0, scale=0, seed=0, time=-1).values
    np.testing.assert_allclose(got, _dense_top(last, 1), rtol=EIG_RTOL)
    assert float(central["sharpness"].max()) < 0.01 * 2 / 1e-3
    assert (central["regime"] == 0).all() and (central["oscillation"] == 0).all()
    np.testing.assert_allclose(central["product"], flow["product"], rtol=0, atol=10 * SOLVER_RTOL)
    np.testing.assert_allclose(central["loss_averaged"], flow["loss"], rtol=10 * SOLVER_RTOL)


def test_central_flow_is_as_far_from_gd_as_the_gradient_flow_below_the_edge():
    """Where GD stays below the edge, the central flow's distance to GD shrinks with lr at the gradient flow's rate:
    the fitted order in lr of ‖W_GD − W_central‖ is that of ‖W_GD − W_flow‖ (1 for explicit Euler: Barrett &
    Dherin 2021), and each distance equals the flow's to the solvers' tolerance."""
    from scipy.stats import linregress

    lrs = [0.02, 0.01, 0.005, 0.0025]
    times = np.linspace(0.0, 1.0, 6)  # whole GD steps at every lr
    kw = {"depth": 2, "scale": 0.5, "seed": 0, "t1": 1.0, "saveat": times, "progress": False}
    flow = dln.integrate(PROB, flow="layers", method="tsit5", rtol=SOLVER_RTOL, **kw)
    far: dict[str, list[float]] = {"central": [], "layers": []}
    for lr in lrs:
        gd = dln.integrate(PROB, method="gd", lr=lr, **kw)
        central = dln.integrate(PROB, flow="central", lr=lr, method="tsit5", rtol=SOLVER_RTOL, **kw)
        assert float(central["sharpness"].max()) < 0.1 * 2 / lr and (central["regime"] == 0).all()
        far["central"].append(float(dln.compare(gd, central)["product_error"].max()))
        far["layers"].append(float(dln.compare(gd, flow)["product_error"].max()))
    np.testing.assert_allclose(far["central"], far["layers"], rtol=1e-4)
    slopes = {name: linregress(np.log(lrs), np.log(errors)).slope for name, errors in far.items()}
    assert slopes["central"] == pytest.approx(1.0, abs=0.15)
    assert slopes["central"] == pytest.approx(slopes["layers"], abs=1e-3)


def _objective(x, c, b):
    return 0.5 * np.einsum("ij,ijkl,kl->", x, b, x) + np.sum(c * x)


def _brute_force(c, b, starts=8):
    """min ½⟨X, B[X]⟩ + ⟨C, X⟩ over X = LLᵀ (every PSD X), by BFGS from several random L."""
    k = c.shape[0]
    rows, cols = np.tril_indices(k)

    def f(p):
        lower = np.zeros((k, k))
        lower[rows, cols] = p
        return _objective(lower @ lower.T, c, b)

    rng = np.random.default_rng(0)
    best = min((scipy.optimize.minimize(f, rng.standard_normal(rows.size), method="BFGS", options={"gtol": 1e-12})
                for _ in range(starts)), key=lambda r: r.fun)  # fmt: skip
    lower = np.zeros((k, k))
    lower[rows, cols] = best.x
    return lower @ lower.T


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("case", range(4))
def test_complementarity_solve_against_brute_force(k, case):
    """The closed form (k = 1) and the projected solve (k ≥ 2) give the minimiser over X ⪰ 0 that brute force finds,
    and satisfy the complementarity condition: X ⪰ 0, C + B[X] ⪰ 0, ⟨X, C + B[X]⟩ = 0."""
    rng = np.random.default_rng(10 * k + case)
    g = rng.standard_normal((k, k, 30))  # g_ij live in the parameter space, of far more than k² dimensions
    g = 0.5 * (g + g.transpose(1, 0, 2))
    b = 0.5 * np.einsum("ijp,klp->ijkl", g, g)
    c = rng.standard_normal((k, k))
    c = 0.5 * (c + c.T) - (case % 2) * np.eye(k)  # odd cases: an edge violated, X ≠ 0 somewhere
    x = np.asarray(complementarity(jnp.asarray(c), jnp.asarray(b)))
    reference = _brute_force(c, b)
    assert _objective(x, c, b) <= _objective(reference, c, b) + 1e-8 * (1 + abs(_objective(reference, c, b)))
    np.testing.assert_allclose(x, reference, atol=1e-5 * max(1.0, np.abs(reference).max()))
    slack = c + np.einsum("ijkl,kl->ij", b, x)
    assert np.linalg.eigvalsh(x).min() >= -1e-10 and np.linalg.eigvalsh(slack).min() >= -1e-6
    assert abs(np.sum(x * slack)) <= 1e-6 * max(1.0, np.abs(x).max())


def test_single_eigenvalue_closed_form_is_projected_gradient_flow():
    """k = 1 on the edge (C = 0 up to the relaxation term): the central field is GF projected onto the tangent of
    {S = 2/η}, −∇L + (⟨∇S, ∇L⟩/‖∇S‖²)∇S, with ∇S by finite differences of the dense top eigenvalue."""
    from dlnode.flows.central import central_parts
    from dlnode.flows.flow import layer_gradients

    layers = tuple(jnp.asarray(w) for w in dln.init_layers(PROB, 2, "gaussian", 1.0, 0))
    arrays = jax.tree_util.tree_map(jnp.asarray, PROB.arrays())
    gradient = functools.partial(lambda y: layer_gradients(y, type(PROB).grad_fn, arrays)[0])
    flat, unravel = ravel_pytree(layers)
    s = float(_dense_top(layers, 1)[0])
    lr = 2.0 / s  # exactly on the edge
    parts = central_parts(gradient, layers, lr, 1)
    g = np.asarray(ravel_pytree(parts["gradient"])[0])
    loss, _ = flat_problem(type(PROB))
    hessian = jax.jit(jax.hessian(lambda x: loss(unravel(x), arrays)))

    def top(x):
        return np.linalg.eigvalsh(np.asarray(hessian(x)))[-1]

    h = 1e-5
    grad_s = np.array([(top(flat + h * e) - top(flat - h * e)) / (2 * h) for e in np.eye(flat.size)])
    a = grad_s @ g
    if a >= 0:  # this draw would not sharpen: X = 0 and the field is −∇L
        np.testing.assert_allclose(np.asarray(ravel_pytree(parts["field"])[0]), -g, rtol=1e-12)
        return
    projected = -g + (a / (grad_s @ grad_s)) * grad_s
    np.testing.assert_allclose(np.asarray(ravel_pytree(parts["field"])[0]), projected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(parts["covariance"][0, 0]), -2 * a / (grad_s @ grad_s), rtol=1e-5)


def test_central_field_with_three_tracked_eigenvalues_against_dense_curvature_gradients():
    """k = 3, 2/η at 1/0.9 of the third eigenvalue while the flow sharpens fast (depth 3 from 0.1, at t = 2 of its
    gradient flow), so the stabilised condition holds all three (C = A + τa has three negative directions): X has
    three eigenvalues at the edge, and the field equals −(∇L + ½ Σ_ij X_ij g_ij) with every
    g_ij = ∇_w(u_iᵀ ∇²L(w) u_j) taken pair by pair from the dense Hessian (the solver computes the six in one vmapped
    Hessian-vector product) and X the solver's own."""
    from dlnode.flows.central import central_parts
    from dlnode.flows.flow import layer_gradients
    from dlnode.flows.hessian import top_eigenpairs

    ds = dln.integrate(PROB, depth=3, scale=0.1, method="tsit5", t1=2.0, saveat=[0.0, 2.0], save_weights=True,
                       progress=False)  # fmt: skip
    layers = tuple(jnp.asarray(w) for w in _layers(ds, 3, time=-1))
    arrays = jax.tree_util.tree_map(jnp.asarray, PROB.arrays())
    gradient = functools.partial(lambda y: layer_gradients(y, type(PROB).grad_fn, arrays)[0])
    flat, unravel = ravel_pytree(layers)
    lr = 0.9 * 2.0 / float(_dense_top(layers, 3)[-1])  # 2/η just above the third eigenvalue
    parts = central_parts(gradient, layers, lr, 3)
    _, vectors, _ = top_eigenpairs(gradient, layers, 3)
    u = [np.asarray(ravel_pytree(v)[0]) for v in vectors]
    loss, _ = flat_problem(type(PROB))
    hessian = jax.hessian(lambda x: loss(unravel(x), arrays))
    x = np.asarray(parts["covariance"])
    curvature_gradient = jax.jit(jax.grad(lambda w, a, b: a @ hessian(w) @ b))
    correction = sum(x[i, j] * np.asarray(curvature_gradient(flat, u[i], u[j])) for i in range(3) for j in range(3))
    expected = -(np.asarray(ravel_pytree(parts["gradient"])[0]) + 0.5 * correction)
    np.testing.assert_allclose(np.asarray(ravel_pytree(parts["field"])[0]), expected, rtol=1e-9, atol=1e-12)
    assert int(parts["regime"]) == 3


def test_gd_that_spikes_and_recovers_is_not_diverged_and_the_fraction_over_lr():
    """At lr 0.3 GD's loss goes up and down and comes back to ~1e-30: FINISHED, not DIVERGED; at 0.6 the loss
    leaves every bound: DIVERGED, and the message names the bound. `divergence_fraction` counts seeds per lr."""
    from dlnode.analysis.edge import divergence_fraction

    prob = dln.Regression.whitened(singular_values=[3.0, 2.0, 1.0], d_in=3, d_out=3, seed=0)
    kw = {"depth": 2, "init": "gaussian", "scale": 1.0, "seed": [0, 1, 2], "method": "gd", "progress": False}
    runs = {lr: dln.integrate(prob, lr=lr, t1=400 * lr, saveat=np.arange(401) * lr, **kw) for lr in (0.05, 0.3, 0.6)}
    spiky = runs[0.3]["loss"].isel(depth=0, scale=0)
    rises = (spiky.diff("time") > 0).sum("time")
    assert (rises > 0).all(), "the loss at the middle lr must go up somewhere"
    assert (runs[0.3]["status"] == int(dln.Status.FINISHED)).all()
    assert float(spiky.isel(time=-1).max()) < 1e-3 * float(spiky.isel(time=0).min())  # it came back down
    assert (runs[0.6]["status"] == int(dln.Status.DIVERGED)).all()
    fraction = divergence_fraction(list(runs.values()))
    assert fraction["lr"].values.tolist() == [0.05, 0.3, 0.6]
    assert fraction.squeeze().values.tolist() == [0.0, 0.0, 1.0]
    fewer = runs[0.6].isel(seed=[0])  # another seed list at one lr: the fraction over the seeds it ran
    assert divergence_fraction([runs[0.05], fewer]).squeeze().values.tolist() == [0.0, 1.0]
    assert "left every bound" in dln.solvers.core.MESSAGES[dln.Status.DIVERGED]


def test_gd_that_never_settles_stops_at_its_horizon_as_not_converged(monkeypatch):
    """GD at lr 0.1 on this completion, whose minimisers are all sharper than 2/lr = 20, bounces for ever. Run until
    converged it stops at its planned horizon as NOT_CONVERGED, and the warning says its loss still oscillates.
    Negative control: comparing save against save (the rule of the flows, whose loss is monotone), the chaotic loss
    "fell" and the horizon was extended, past the budget (the default budget of 10^7 steps took 30 s)."""
    from dlnode.solvers import driver

    prob = dln.MatrixCompletion.random(shape=(6, 6), rank=2, observed=0.6, seed=0)
    kw = {"method": "gd", "depth": 3, "scale": 0.1, "lr": 0.1, "progress": False, "max_steps": 400_000}
    with pytest.warns(UserWarning, match="rises and falls between saves: lr = 0.1"):
        ds = dln.integrate(prob, **kw)
    assert int(ds["status"].item()) == dln.Status.NOT_CONVERGED
    assert float(ds["t_final"].item()) == pytest.approx(ds.attrs["t1"])
    assert int(ds["num_steps"].item()) <= round(ds.attrs["t1"] / 0.1) < 400_000
    monkeypatch.setattr(driver, "NON_MONOTONE", ())
    with pytest.warns(UserWarning, match="max_steps"):
        extended = dln.integrate(prob, **kw)
    assert int(extended["status"].item()) == dln.Status.MAX_STEPS
    assert float(extended["t_final"].item()) > 2 * ds.attrs["t1"]


def test_a_central_flow_that_comes_to_rest_on_the_edge_says_so():
    """ℓ = ½(ab − 1)² (a 1 × 1 whitened regression at depth 2) has the Hessian [[b², 2ab − 1], [2ab − 1, a²]]; its
    flattest minimiser, a = b = ±1, has S = 2. At lr = 1.2 (2/η = 5/3 < 2) no minimiser is flat enough: the central
    flow comes to rest on the edge at the least loss there, a = b with 3a² − 1 = 2/η (closed form: a² = 8/9, ℓ =
    ½(a² − 1)² = 1/162, the other eigenvalue 1/9). Run until converged, it stops as EDGE_REST, held at that point
    (measured: |a| within 3.3e-7, S within 8.0e-7 relative, at rtol 2e-7; checked to 10·rtol), once its loss has
    stood still on the edge for a decade of time, long before its horizon; the warning says why. Negative control:
    at lr = 0.5 (2/η = 4 > 2) it converges, to S = 2, with no warning."""
    prob = dln.Regression.whitened([1.0], 1, 1, seed=0)
    kw = {"depth": 2, "scale": 0.5, "seed": 0, "flow": "central", "progress": False, "save_weights": True}
    with pytest.warns(UserWarning, match=r"came to rest on the edge S = 2/lr = 1.66667 with loss 0.00617"):
        ds = dln.integrate(prob, lr=1.2, **kw)
    assert int(ds["status"].item()) == dln.Status.EDGE_REST
    last = ds.isel(time=-1)
    np.testing.assert_allclose(np.abs(last["weights"].values.ravel()), np.sqrt(8 / 9), rtol=2e-6)
    assert float(last["sharpness"].item()) == pytest.approx(2 / 1.2, rel=2e-6)
    assert float(last["loss"].item()) == pytest.approx(1 / 162, rel=1e-4)  # 10·rtol on a is 6.8e-5 on ℓ (4a/(a² − 1))
    assert float(last["regime"].item()) == 1
    # the untracked eigenvalue there: the Hessian [[a², 2a² − 1], [2a² − 1, a²]] has a² ± (2a² − 1) = 5/3 and 1/9
    assert float(last["untracked_sharpness"].item()) == pytest.approx(1 / 9, rel=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        flat = dln.integrate(prob, lr=0.5, **kw)
    assert int(flat["status"].item()) == dln.Status.CONVERGED
    assert float(flat["sharpness"].isel(time=-1).item()) == pytest.approx(2.0, rel=1e-3)


def test_the_untracked_edge_rule_on_saved_eigenvalues():
    """The driver stops a running central-flow cell whose largest untracked eigenvalue passed (1 + slack)·2/lr at any
    filled save or at the window's end; NaN (not monitored), unfilled saves and stopped cells are left alone."""
    from dlnode.solvers import driver
    from dlnode.solvers.core import Controls

    controls = Controls(t1=1.0, rtol=1e-6, atol=1e-9, lr=0.1, loss_tol=1e-8, diverge=1e12, max_steps=1000)
    # lr = 0.1: the edge 2/lr = 20, the bound (1 + 1e-3)·20 = 20.02
    values = np.array([[19.0, 20.1, 19.0], [19.0, 20.01, np.nan], [19.0, 25.0, 19.0], [np.nan, np.nan, np.nan],
                       [19.0, 19.0, 19.0]])  # fmt: skip
    filled = np.ones_like(values, bool)
    filled[2, 1] = False  # a save the cell did not reach
    saved = driver._Saved({"untracked_sharpness": values}, filled)
    last = {"untracked_sharpness": np.array([19.0, 19.0, 19.0, np.nan, 21.0])}
    running = np.array([True, True, True, True, True])
    got = driver._untracked_edge(last, saved, running, controls)
    assert got.tolist() == [True, False, False, False, True]
    assert not driver._untracked_edge(last, saved, np.zeros(5, bool), controls).any()
    assert not driver._untracked_edge(last, driver._Saved({"loss": values}, filled), running, controls).any()


def test_the_edge_rest_rule_on_saved_losses():
    """The driver stops a running central-flow cell held at the edge (regime ≥ 1) at every save of the last decade of
    time whose loss fell over it by at most 1e-3 of its distance to ℓ*; a loss still falling, a save below the edge,
    less than a decade of saves, a stopped cell, and a flow that saves no regime are left alone."""
    from dlnode.solvers import driver
    from dlnode.solvers.core import Controls

    controls = Controls(t1=1.0, rtol=1e-6, atol=1e-9, lr=0.1, loss_tol=1e-8, diverge=1e12, max_steps=1000)
    ts = np.array([0.0, 1.0, 3.0, 10.0, 30.0, 100.0])
    flat, falling = [5.0, 2.0, 1.0, 1.0, 0.9995, 0.9991], [5.0, 2.0, 1.0, 1.0, 0.999, 0.9988]
    loss = np.array([flat, falling, flat, flat, flat])
    regime = np.array([[0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 0, 1], [0, 0, 1, 1, 1, 1],
                       [0, 0, 1, 1, 1, 1]], float)  # fmt: skip
    filled = np.ones_like(loss, bool)
    filled[3, 4:] = False  # saves to t = 10 only: less than a decade at the edge so far
    saved = driver._Saved({"loss": loss, "regime": regime}, filled)
    rule = functools.partial(driver._edge_rest, ts=ts, arrays={"loss_min": 0.0}, falling=1e-3)
    running = np.array([True, True, True, True, False])
    # cell 0: 1.0 → 0.9991 over [10, 100] is 9e-4 of its gap; cell 1: 1.2e-3, still falling
    assert rule({}, saved, running, controls).tolist() == [True, False, False, False, False]
    assert not rule({}, driver._Saved({"loss": loss}, filled), running, controls).any()
    # a flow started on the edge, its loss flat over its first saves: t = 0 begins no decade
    early = driver._Saved({"loss": np.array([[1.0, 1.0, 1.0]]), "regime": np.ones((1, 3))}, np.ones((1, 3), bool))
    begun = functools.partial(driver._edge_rest, ts=np.array([0.0, 1e-3, 5e-3]), arrays={"loss_min": 0.0}, falling=1e-3)
    assert not begun({}, early, np.array([True]), controls).any()
    later = functools.partial(driver._edge_rest, ts=np.array([0.0, 1e-3, 1e-2]), arrays={"loss_min": 0.0}, falling=1e-3)
    assert later({}, early, np.array([True]), controls).all()  # ... and a decade from t = 1e-3 on does


def test_a_central_flow_stops_when_an_untracked_eigenvalue_passes_its_bound(monkeypatch):
    """The run of the test above, the untracked eigenvalue going from about −1.0 (at the init) to 1/9 (at rest):
    with the bound put at 0.1 (slack −0.94 of 2/lr = 5/3) the run stops as UNTRACKED_EDGE before it comes to rest, keeps
    its trajectory, and the warning names the fix; at the real slack it ends as in the test above (control)."""
    from dlnode.solvers import driver

    prob = dln.Regression.whitened([1.0], 1, 1, seed=0)
    kw = {"depth": 2, "scale": 0.5, "seed": 0, "flow": "central", "lr": 1.2, "progress": False}
    monkeypatch.setattr(driver, "UNTRACKED_SLACK", 0.1 * 1.2 / 2 - 1)
    with pytest.warns(UserWarning, match=r"untracked_edge \(eigenvalue 2, which it does not track, passed 2/lr = "
                                         r"1.66667 by t = .*: pass sharpness=2\)"):  # fmt: skip
        ds = dln.integrate(prob, **kw)
    assert int(ds["status"].item()) == dln.Status.UNTRACKED_EDGE
    untracked = ds["untracked_sharpness"].squeeze().dropna("time").values
    assert untracked[0] < 0.1 < untracked.max() and np.isfinite(ds["loss"].squeeze().dropna("time").values).all()
    monkeypatch.setattr(driver, "UNTRACKED_SLACK", 1e-3)
    with pytest.warns(UserWarning, match="came to rest on the edge"):
        control = dln.integrate(prob, **kw)
    assert int(control["status"].item()) == dln.Status.EDGE_REST
    # measured: the untracked eigenvalue passes 0.1 by t = 9.1, the control comes to rest by t = 177
    assert float(ds["t_final"].item()) < 0.1 * float(control["t_final"].item())


def test_the_trend_rule_extends_no_stationary_loss_and_a_clearly_falling_one():
    """The horizon rule on 200 saved losses drawn independently (log-normal, σ = 0.7: a bouncing loss), stationary
    or times a trend over the last half. The trend rule extends none of 200 stationary draws (its pair fraction is
    0.5 ± 0.06 at 50 saves a quarter, 0.75 is four deviations out) and all 200 that fall 10× over the last half; a
    2× fall under that much noise it leaves at the horizon (4 of 200 extended: such a run ends `not_converged`,
    truthfully, and t1= runs it on). Negative control: save against save, the flows' rule, extends about half of
    the stationary draws (98 of 200)."""
    from dlnode.solvers import driver

    rng = np.random.default_rng(0)
    horizon, arrays = driver.Horizon(), {"loss_min": 0.0}

    def extends(values: np.ndarray, monotone: bool) -> bool:
        saved = driver._Saved({"loss": values[None, :]}, np.ones((1, values.size), bool))
        return driver._falling(saved, np.ones(1, bool), arrays, horizon, monotone=monotone)

    def trend(factor: float) -> np.ndarray:
        return np.exp(np.log(factor) * np.clip(np.arange(200) - 100, 0, None) / 100)

    draws = [np.exp(rng.normal(0.0, 0.7, 200)) for _ in range(200)]
    assert sum(extends(d, monotone=False) for d in draws) == 0
    assert all(extends(d * trend(0.1), monotone=False) for d in draws)
    assert sum(extends(d * trend(0.5), monotone=False) for d in draws) < 20
    assert 70 <= sum(extends(d, monotone=True) for d in draws) <= 130


@pytest.mark.parametrize(("n", "k"), [(60, 3), (40, 30), (1500, 3)])
def test_lanczos_past_its_first_checks_against_eigh(n, k):
    """A quadratic whose top eigenvalues cluster (or k above the first checks' block) needs more products than the
    first checks see: the values and vectors still match a dense eigh, to the Lanczos tolerance. At n = 1500 the
    basis is past `GROW_BASIS` entries and grows by doubling (24, 48, 80 rows) as the solve goes on."""
    from dlnode.flows.hessian import CHECK_EVERY, GROW_BASIS, LANCZOS_MAX, LANCZOS_RTOL, SMALL_CHECKS, top_eigenpairs

    assert (n * LANCZOS_MAX > GROW_BASIS) == (n == 1500)

    rng = np.random.default_rng(n)
    q = np.linalg.qr(rng.standard_normal((n, n)))[0]
    spectrum = np.concatenate([10.0 - 1e-3 * np.arange(5), rng.uniform(0.0, 9.0, n - 5)])
    a = jnp.asarray((q * spectrum) @ q.T)
    theta, vectors, used = jax.jit(lambda y: top_eigenpairs(lambda x: a @ x, y, k))(jnp.zeros(n))
    assert int(used) > SMALL_CHECKS * CHECK_EVERY
    np.testing.assert_allclose(np.asarray(theta), np.sort(spectrum)[::-1][:k], rtol=1e-9)
    for i, v in enumerate(vectors):
        residual = np.linalg.norm(np.asarray(a @ v - theta[i] * v))
        assert residual <= 10 * LANCZOS_RTOL * 10.0 and abs(np.linalg.norm(v) - 1) < 1e-9


@pytest.mark.parametrize("mix", [None, 0.0])
def test_a_warm_start_orthogonal_to_the_top_still_finds_it(mix, monkeypatch):
    """Along a run each save's Lanczos starts from the last save's Ritz vectors. An eigenvalue can rise past them
    from a direction they miss, even exactly (a symmetry): started from an exact eigenvector of the second
    eigenvalue, the solve still finds the first, by the fixed vector mixed into every warm start. The negative
    control, no mixing (`mix` 0), stops on the second eigenvalue: the Krylov space of an eigenvector is itself."""
    from dlnode.flows import hessian

    if mix is not None:
        monkeypatch.setattr(hessian, "WARM_MIX", mix)
    rng = np.random.default_rng(5)
    n = 30
    q = np.linalg.qr(rng.standard_normal((n, n)))[0]
    spectrum = np.concatenate([[10.0, 9.0], rng.uniform(0.0, 8.0, n - 2)])
    a = jnp.asarray((q * spectrum) @ q.T)
    second = jnp.asarray(q[:, 1])
    solve = jax.jit(lambda y, start: hessian.tracked_eigenvalues(lambda x: a @ x, y, 1, start))
    theta, nxt = solve(jnp.zeros(n), second)
    if mix is None:
        np.testing.assert_allclose(float(theta[0]), 10.0, rtol=1e-12)
        assert abs(float(jnp.dot(nxt, q[:, 0]))) == pytest.approx(1.0, abs=1e-9)  # the next start: its vector
        np.testing.assert_allclose(float(solve(jnp.zeros(n), nxt)[0][0]), 10.0, rtol=1e-12)
        np.testing.assert_allclose(float(solve(jnp.zeros(n), jnp.zeros(n))[0][0]), 10.0, rtol=1e-12)  # zeros: fixed
        noise = rng.standard_normal((n, n))  # one step on: the last top vector is a warm start worth products
        moved = a + 1e-4 * jnp.asarray(noise + noise.T)
        products = jax.jit(lambda s: hessian.top_eigenpairs(lambda x: moved @ x, jnp.zeros(n), 1, s)[2])
        used = {"cold": int(products(jnp.zeros(n))), "warm": int(products(jnp.asarray(q[:, 0])))}
        assert used["warm"] < used["cold"], used
    else:
        np.testing.assert_allclose(float(theta[0]), 9.0, rtol=1e-12)


def test_the_divergence_fraction_of_sgd_counts_every_noise_path():
    """SGD with minibatches of 4 at lr 0.06 on a 6 × 5 sensing problem diverges on some of its noise paths, not
    all (14 of 2 seeds × 8 paths): the fraction is over seeds × paths (each path is a run), the count of DIVERGED
    statuses over the runs, where per path it was a fraction of 2 seeds. At lr 0.01 no run diverges (the control)."""
    from dlnode.analysis.edge import divergence_fraction

    prob = dln.MatrixSensing.random(shape=(6, 5), rank=2, measurements=40, seed=0)
    kw = dict(depth=3, scale=0.1, seed=[0, 1], method="sgd", batch=4, t1=20.0, paths=8, saveat=10, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the runs that stopped early, named
        runs = [dln.integrate(prob, lr=lr, **kw) for lr in (0.01, 0.06)]
    diverged = int((runs[1]["status"] == int(dln.Status.DIVERGED)).sum())
    assert 0 < diverged < 16, diverged
    fraction = divergence_fraction(runs).squeeze()
    assert fraction.dims == ("lr",) and fraction.values.tolist() == [0.0, diverged / 16]
    assert "seeds x paths" in fraction.attrs["long_name"]


def test_a_central_flow_that_creeps_where_eigenvalues_rise_together_stops_as_a_solver_failure():
    """An 8 × 8 rank-2 completion at depth 3 from Gaussian 0.1 with lr 0.5: GD diverges (every minimiser is sharper
    than 2/η = 4), and the central flow's top eigenvalues rise together through the escape (θ₁ − θ₂ ~ 4e-7 at
    t = 2.894), where X switches on below the edge and the field jumps with the ill-defined eigenvector: tsit5's
    steps collapse (4000 attempts moved t by 0.002 in 110 s, the default budget worth 1.5 hours). The driver's
    creep rule for the central flow (its time too slow to reach 2t on the budget left, two windows of 256 attempts
    in a row) stops it as a solver failure within a few windows, and the warning says where and why."""
    prob = dln.MatrixCompletion.random((8, 8), rank=2, observed=40, seed=0)
    kw = dict(depth=3, scale=0.1, progress=False)
    with pytest.warns(UserWarning, match=r"solver_failure \(the central flow crept at t = 2\.89"):
        ds = dln.integrate(prob, flow="central", lr=0.5, **kw)
    assert ds.status.item() == int(dln.Status.SOLVER_FAILURE)
    assert ds.num_steps.item() + ds.num_rejected.item() <= 5 * 256  # measured 792 attempts, of a budget of 200,000
    with pytest.warns(UserWarning, match="diverged"):  # the lr is past every edge GD could hold
        assert dln.integrate(prob, method="gd", lr=0.5, **kw).status.item() == int(dln.Status.DIVERGED)
