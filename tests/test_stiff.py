"""The stiff path (method ``rosenbrock``): tableau order, agreement with dopri8, saddle-to-saddle stages, invariants,
status codes, and the stiffness probe."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dlnode as dln
from dlnode.flows.flow import get_flow
from dlnode.solvers import rosenbrock as stiff
from dlnode.solvers.krylov import cg
from dlnode.solvers.tableaus import DOPRI5

# Adaptive global error stays within a modest multiple of rtol·|y| over O(1) time for an order-4 method with an
# error-per-step controller (the same bound the explicit methods meet in test_methods).
GLOBAL_FACTOR = 100.0
RTOL = 1e-6
# RODAS4 has an order-3 embedded estimate: h ∝ rtol^{1/4}, so the step count grows by 10^{1/4} per decade.
STEP_SLOPE, STEP_SLOPE_TOL = 1 / 4, 0.05
# Stage (escape) times: at rtol 1e-8 an order-4 integration moves an escape time by far less than 1e-4 of itself.
STAGE_RTOL, STAGE_TOL = 1e-8, 1e-4
# D_j is conserved by the flow: its drift is integration error, a modest multiple of rtol·max_j‖W_j‖².
DRIFT_FACTOR = 100.0

SMALL = dln.MatrixCompletion.random((6, 5), 2, 18, seed=1)
TIMES = np.linspace(0.0, 3.0, 7)
KW = dict(depth=3, init="gaussian", scale=0.6, seed=[0, 1], t1=3.0, saveat=TIMES, progress=False)

# Stiff tail: after the escapes of STAGED, with t1 ≫ the last stage, accuracy allows h·λ_max ≫ SWITCH.
TAIL_T1, TAIL_RTOL = 1e3, 1e-6
# Before the first escape of STAGED (t ≈ 10) the flow is not stiff: every step is explicit.
EARLY_T1 = 5.0
# CG from a Galerkin guess with residual 1e-2 of the cold one needs two of the six decades fewer (ideally 1/3 fewer
# iterations); ask for at least a fifth.
CG_RTOL, WARM_SAVING = 1e-6, 0.2

STAGED = dln.Regression.whitened([4.0, 2.0, 1.0], 4, 4, seed=0)
STAGE_TIMES = np.linspace(0.0, 45.0, 451)
STAGE_KW = dict(depth=3, init="gaussian", scale=0.1, seed=0, t1=45.0, saveat=STAGE_TIMES, progress=False)


def _order_conditions(tab: stiff.Tableau, weights: np.ndarray) -> np.ndarray:
    """Residuals of the eight order-4 conditions of a Rosenbrock method (Hairer & Wanner II, Table IV.7.1)."""
    g, stages = tab.gamma, len(tab.m)
    gammas = np.linalg.inv(np.eye(stages) / g - tab.c)
    alpha = tab.a @ gammas
    beta = alpha + gammas - g * np.eye(stages)
    bp, ai = beta.sum(1), alpha.sum(1)
    b = weights @ gammas
    return np.array([
        b.sum() - 1, b @ bp - (0.5 - g), b @ ai**2 - 1 / 3, b @ (beta @ bp) - (1 / 6 - g + g * g),
        b @ ai**3 - 0.25, b @ (ai * (alpha @ bp)) - (1 / 8 - g / 3), b @ (beta @ ai**2) - (1 / 12 - g / 3),
        b @ (beta @ beta @ bp) - (1 / 24 - g / 2 + 1.5 * g * g - g**3),
    ])  # fmt: skip


def _direct(problem, depth, scale, seeds, ts, rtol, switching):
    """`stiff._batch` called directly: (products at ts, status, (accepted, rejected, explicit steps))."""
    flow = get_flow("layers", type(problem), depth)
    inits = [dln.init_layers(problem, depth, "gaussian", scale, s) for s in seeds]
    y0 = tuple(jnp.asarray(np.stack(ws)) for ws in zip(*inits, strict=True))
    c = dict(t1=ts[-1], rtol=rtol, atol=rtol * 1e-3, lr=np.nan, loss_tol=-np.inf, diverge=1e12, max_steps=1e5,
             window_steps=1e5)  # fmt: skip
    c = {k: np.float64(v) for k, v in c.items()}
    start, window, _ = stiff.make_batch(flow, switching)
    arrays = jax.tree_util.tree_map(jnp.asarray, problem.arrays())
    obs, _, state = jax.device_get(window(start(y0, arrays, c), arrays, jnp.asarray(ts), c))
    s = stiff.summary(state)
    return obs["product"], s["status"], (s["steps"], s["rejected"], s["explicit"])


def test_tableau_has_order_four_and_an_order_three_estimate():
    tab = stiff.SHAMPINE
    assert np.abs(_order_conditions(tab, tab.m)).max() < 1e-14
    embedded = _order_conditions(tab, tab.m - tab.e)
    assert np.abs(embedded[:4]).max() < 1e-14  # order 3 …
    assert np.abs(embedded[4:]).max() > 1e-3  # … and not 4, so y₁ − ŷ₁ = O(h⁴) estimates the error


def _stability(tab: stiff.Tableau, weights: np.ndarray, z: complex) -> complex:
    """R(z): one step of the method with the given output weights on y' = λy, y(0) = 1, z = hλ."""
    u = np.zeros(len(tab.m), dtype=complex)
    for i in range(len(u)):
        u[i] = tab.gamma * (z * (1 + tab.a[i] @ u) + tab.c[i] @ u) / (1 - tab.gamma * z)
    return 1 + weights @ u


def test_layer_tableau_is_rodas4_order_four_l_stable_with_a_vanishing_stiff_estimate():
    tab = stiff.TABLEAU
    assert tab is stiff.RODAS4
    assert np.abs(_order_conditions(tab, tab.m)).max() < 1e-13  # order 4 …
    embedded = _order_conditions(tab, tab.m - tab.e)
    assert np.abs(embedded[:4]).max() < 1e-13 and np.abs(embedded[4:]).max() > 1e-3  # … estimated by order 3
    ys = np.logspace(-3, 8, 200)
    for weights in (tab.m, tab.m - tab.e):
        assert abs(_stability(tab, weights, -1e12)) < 1e-10  # R(∞) = 0 for y₁ and for ŷ₁ …
        # … and A-stable: R's only pole, 1/γ, is in the right half-plane, so |R| ≤ 1 on the imaginary axis bounds
        # it on the whole left half-plane (maximum principle); the negative real axis is checked as well
        assert np.all(np.abs([_stability(tab, weights, 1j * y) for y in ys]) <= 1 + 1e-12)
        assert np.all(np.abs([_stability(tab, weights, -y) for y in ys]) <= 1)
    # Shampine's method, by contrast, keeps a third of a stiff component and estimates two thirds of it as error
    assert abs(_stability(stiff.SHAMPINE, stiff.SHAMPINE.m, -1e12) - 1 / 3) < 1e-9
    shampine_estimate = _stability(stiff.SHAMPINE, stiff.SHAMPINE.m, -1e12) - _stability(
        stiff.SHAMPINE, stiff.SHAMPINE.m - stiff.SHAMPINE.e, -1e12
    )
    assert abs(shampine_estimate - 2 / 3) < 1e-9
    assert abs(_stability(tab, tab.m, -0.1) - np.exp(-0.1)) < 1e-7  # and it is the exponential for small z


@pytest.fixture(scope="module")
def small_reference():
    return dln.integrate(SMALL, method="dopri8", rtol=1e-12, atol=1e-14, **KW)


def test_agrees_with_a_tight_explicit_reference(small_reference):
    ds = dln.integrate(SMALL, method="rosenbrock", rtol=RTOL, atol=RTOL * 1e-3, **KW)
    scale = float(np.abs(small_reference["product"]).max())
    err = float(np.abs(ds["product"] - small_reference["product"]).max())
    assert err < GLOBAL_FACTOR * RTOL * scale, err
    assert (ds["status"].values == 0).all()
    assert ds.attrs["method"] == "rosenbrock"


def test_explicit_tableau_is_dopri5():
    a, b, e = DOPRI5.a, DOPRI5.b, DOPRI5.e
    c = a.sum(1)
    order5 = [
        b.sum() - 1,
        b @ c - 1 / 2,
        b @ c**2 - 1 / 3,
        b @ (a @ c) - 1 / 6,
        b @ c**3 - 1 / 4,
        b @ (c * (a @ c)) - 1 / 8,
        b @ (a @ c**2) - 1 / 12,
        b @ (a @ a @ c) - 1 / 24,
        b @ c**4 - 1 / 5,
    ]
    assert np.abs(order5).max() < 1e-14
    assert abs(e.sum()) < 1e-14 and np.abs(e).max() > 1e-3  # the error estimate is consistent and non-trivial


def test_rosenbrock_steps_alone_agree_with_the_reference(small_reference):
    prod, status, _ = _direct(SMALL, 3, 0.6, [0, 1], TIMES, RTOL, switching=False)
    ref = small_reference["product"].values.reshape(prod.shape)
    assert (status == 0).all()
    assert float(np.abs(prod - ref).max()) < GLOBAL_FACTOR * RTOL * float(np.abs(ref).max())


def test_a_non_stiff_run_takes_explicit_steps_and_a_stiff_tail_rosenbrock_steps():
    _, _, (steps, _, explicit) = _direct(STAGED, 3, 0.1, [0], np.linspace(0.0, EARLY_T1, 11), TAIL_RTOL, True)
    assert (explicit == steps).all(), (steps, explicit)
    ts = np.linspace(0.0, TAIL_T1, 11)
    _, status, (steps, _, explicit) = _direct(STAGED, 3, 0.1, [0], ts, TAIL_RTOL, switching=True)
    assert (status == 0).all() and (explicit > 0).all() and (steps - explicit >= 10).all(), (steps, explicit)


def test_cg_from_a_galerkin_guess():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((60, 60)))
    a = jnp.asarray(q @ np.diag(np.logspace(0, 3, 60)) @ q.T)
    b, b2 = jnp.asarray(rng.standard_normal(60)), jnp.asarray(rng.standard_normal(60))

    def small(r):
        return jnp.linalg.norm(r) <= CG_RTOL * jnp.linalg.norm(b)

    x, r, k, ok = cg(lambda p: a @ p, b, small, 400)
    assert bool(ok) and float(jnp.linalg.norm(a @ x - b)) < 2 * CG_RTOL * float(jnp.linalg.norm(b))
    basis, abasis = stiff._a_orthonormal(x, b - r, jnp.zeros((2, 60)), jnp.zeros((2, 60)))
    assert abs(float(basis @ (a @ basis)) - 1) < 1e-8
    rhs = b + 1e-2 * b2  # a nearby right-hand side, as the stages of one step are
    x0 = (basis @ rhs) * basis
    x2, _, k2, ok2 = cg(lambda p: a @ p, rhs, small, 400, x0, rhs - (basis @ rhs) * abasis)
    _, _, k_cold, _ = cg(lambda p: a @ p, rhs, small, 400)
    assert bool(ok2) and float(jnp.linalg.norm(a @ x2 - rhs)) < 2 * CG_RTOL * float(jnp.linalg.norm(b))
    assert int(k2) <= (1 - WARM_SAVING) * int(k_cold), (int(k2), int(k_cold))


def test_step_count_follows_the_order():
    steps = []
    for rtol in (1e-5, 1e-7, 1e-9):
        _, _, (accepted, _, _) = _direct(SMALL, 3, 0.6, [0, 1], TIMES, rtol, switching=False)
        steps.append(float(accepted.mean()))
    slope = np.polyfit(np.log10([1e-5, 1e-7, 1e-9]), np.log10(steps), 1)[0]
    assert abs(-slope - STEP_SLOPE) < STEP_SLOPE_TOL, slope


def _escape_times(ds) -> np.ndarray:
    """Time each singular value first reaches half its target s_k (linear interpolation between saves)."""
    sv = ds["singular_values"].values.reshape(len(STAGE_TIMES), -1)
    out = []
    for k, s in enumerate(STAGED.whitened_values):
        i = int(np.nonzero(sv[:, k] >= 0.5 * s)[0][0])
        frac = (0.5 * s - sv[i - 1, k]) / (sv[i, k] - sv[i - 1, k])
        out.append(STAGE_TIMES[i - 1] + frac * (STAGE_TIMES[i] - STAGE_TIMES[i - 1]))
    return np.array(out)


@pytest.fixture(scope="module")
def staged_runs():
    ref = dln.integrate(STAGED, method="dopri8", rtol=1e-12, atol=1e-15, **STAGE_KW)
    ros = dln.integrate(STAGED, method="rosenbrock", rtol=STAGE_RTOL, atol=STAGE_RTOL * 1e-3, save_weights=True,
                        **STAGE_KW)  # fmt: skip
    return ref, ros


def test_passes_three_stages_in_order_at_the_reference_times(staged_runs):
    ref, ros = staged_runs
    t_ref, t_ros = _escape_times(ref), _escape_times(ros)
    assert np.all(np.diff(t_ros) > 0), t_ros  # largest singular value first
    assert np.all(np.diff(t_ros) > 0.5), t_ros  # distinct plateaus between the stages
    np.testing.assert_allclose(t_ros, t_ref, rtol=STAGE_TOL)
    assert float(ros["loss"].values.ravel()[-1]) < 1e-6 * float(ros["loss"].values.ravel()[0])


def test_conserves_balancedness(staged_runs):
    _, ros = staged_runs
    size = float(np.max(np.sum(ros["weights"].values ** 2, axis=(-2, -1))))
    assert float(np.nanmax(ros["balancedness"].values)) < DRIFT_FACTOR * STAGE_RTOL * size


def test_status_codes():
    kw = dict(KW, seed=0)
    assert int(dln.integrate(SMALL, method="rosenbrock", max_steps=3, **kw)["status"].values.ravel()[0]) == -1
    ds = dln.integrate(SMALL, method="rosenbrock", loss_tol=1e-3, **dict(kw, t1=1e4, saveat=np.array([0.0, 1e4])))
    assert int(ds["status"].values.ravel()[0]) == 1
    assert float(ds["t_final"].values.ravel()[0]) < 1e4


def test_the_cg_path_refuses_the_end_to_end_flow():
    # integrate sends end_to_end flows to singular coordinates (test_singular); the CG path itself needs −∇²L
    with pytest.raises(ValueError, match="symmetric Jacobian"):
        stiff.make_batch(get_flow("end_to_end", type(STAGED), 3.0))


def test_compensated_time_resolves_unit_steps_at_1e18():
    hi, lo = jnp.float64(1e18), jnp.float64(0.0)
    for _ in range(1000):
        hi, lo = stiff._two_sum_add(hi, lo, jnp.float64(1.0))
    assert float(hi) + float(lo) == 1e18 + 1000.0 and float(hi) == 1e18 + 1000.0


def _layers(ds, k: int) -> tuple:
    w = ds["weights"].values.reshape(len(STAGE_TIMES), 3, 4, 4)[k]
    return tuple(jnp.asarray(x) for x in w)


def test_probe_stiff_after_the_first_escape(staged_runs):
    _, ros = staged_runs
    flow = get_flow("layers", dln.Regression, 3)
    t_first = _escape_times(ros)[0]
    k = int(np.searchsorted(STAGE_TIMES, t_first + 1.0))  # on the plateau after mode 1 is learned
    stiff_now, reason = stiff.probe(flow, _layers(ros, k), STAGED.arrays())
    assert stiff_now, reason


@pytest.mark.parametrize(("depth", "scale"), [(1, 0.1), (3, 1.0)])
def test_probe_not_stiff_at_start(depth, scale):
    flow = get_flow("layers", dln.Regression, depth)
    y0 = tuple(jnp.asarray(w) for w in dln.init_layers(STAGED, depth, "gaussian", scale, 0))
    stiff_now, reason = stiff.probe(flow, y0, STAGED.arrays())
    assert not stiff_now, reason
    assert "lambda_max" in reason
