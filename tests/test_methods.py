"""Every registered method against a tight reference; tolerance-driven balancedness drift; no retracing."""

import math

import numpy as np
import pytest

import dlnode as dln
from dlnode.flows import scales
from dlnode.solvers import auto

PROB = dln.MatrixCompletion.random((6, 5), 2, 18, seed=1)
TIMES = np.linspace(0.0, 3.0, 7)
KW = dict(depth=3, init="gaussian", scale=0.6, seed=[0, 1], t1=3.0, saveat=TIMES, progress=False)
# Global error of an adaptive method is a modest multiple of rtol·|y| over O(1) time; 100·rtol bounds it
# for every method here (tight enough to catch an order or sign error, which gives O(1) errors).
GLOBAL_FACTOR = 100.0
RTOL, ATOL = 1e-6, 1e-9


@pytest.fixture(scope="module")
def reference():
    return dln.integrate(PROB, method="dopri8", rtol=1e-12, atol=1e-14, **KW)


# every registered flow integrator (the fixed-step methods, which take lr, are other dynamics: see
# test_gradient_descent and test_noise)
@pytest.mark.parametrize("method", sorted(m for m, entry in dln.METHODS.items() if not entry.needs_lr))
def test_method_agrees_with_a_tight_reference(method, reference):
    ds = dln.integrate(PROB, method=method, rtol=RTOL, atol=ATOL, **KW)
    scale = float(np.abs(reference["product"]).max())
    err = float(np.abs(ds["product"] - reference["product"]).max())
    assert err < GLOBAL_FACTOR * RTOL * scale, err
    assert (ds["status"].values == 0).all()
    assert ds.attrs["method"] == method
    assert (ds["num_steps"].values > 0).all()


def test_balancedness_drift_scales_with_the_tolerance():
    drifts = []
    for rtol in (1e-4, 1e-6, 1e-8):
        ds = dln.integrate(PROB, method="tsit5", rtol=rtol, atol=rtol * 1e-3, **KW)
        drifts.append(float(ds["balancedness"].max()))
    # a 5th-order error-per-unit-step controller: drift falls with rtol, and far below it
    assert drifts[0] > drifts[1] > drifts[2]
    assert all(d < 10 * r for d, r in zip(drifts, (1e-4, 1e-6, 1e-8), strict=True))
    assert drifts[0] / drifts[2] > 100


def test_changing_t1_saveat_rtol_or_lr_does_not_retrace(traces):
    # save grids are padded to a power of two (at least 16), so any grid of 17 to 32 times shares one compile
    prob = dln.Regression.whitened([2.0, 1.0], 3, 3, seed=0)
    kw = dict(depth=2, init="gaussian", scale=0.3, seed=0, progress=False)
    dln.integrate(prob, method="tsit5", t1=2.0, saveat=20, rtol=1e-6, **kw)
    before = traces()
    dln.integrate(prob, method="tsit5", t1=5.0, saveat=20, rtol=1e-8, atol=1e-12, **kw)
    dln.integrate(prob, method="tsit5", t1=3.0, saveat=np.linspace(0.1, 3.0, 17), rtol=1e-5, **kw)
    assert traces() == before
    dln.integrate(prob, method="gd", lr=0.1, t1=2.0, saveat=np.arange(1, 21) * 0.1, **kw)
    before = traces()
    dln.integrate(prob, method="gd", lr=0.05, t1=4.0, saveat=np.arange(1, 21) * 0.2, **kw)
    dln.integrate(prob, method="gd", lr=0.02, t1=1.0, saveat=np.arange(1, 25) * 0.04, **kw)  # same size bucket
    assert traces() == before


def test_run_until_converged_stops_on_the_loss_criterion():
    prob = dln.Regression.whitened([2.0, 1.0], 3, 3, seed=0)
    ds = dln.integrate(prob, depth=[2, 3], init="gaussian", scale=[0.1, 0.3], seed=0, saveat=40, progress=False)
    assert (ds["status"].values == 1).all()
    final = ds["loss"].isel(time=-1)
    assert (final <= 1e-8 * ds["loss"].isel(time=0) * (1 + 1e-6)).all()
    # one pass: the save grid ends at the first save time at or after the latest convergence
    assert float(ds.time[-2]) < float(ds["t_final"].max()) <= float(ds.time[-1])
    # `saveat` sets the density of the planned log grid: 40 times per GRID_DECADES decades
    from dlnode.run.plan import GRID_DECADES

    ratios = ds.time.values[2:] / ds.time.values[1:-1]
    np.testing.assert_allclose(ratios, 10 ** (GRID_DECADES / 39), rtol=1e-9)


def test_auto_takes_the_explicit_path_when_nothing_is_stiff():
    prob = dln.Factorization(np.diag([2.0, 1.0]))
    ds = dln.integrate(prob, depth=[1, 2], scale=0.5, t1=1.0, saveat=5, progress=False)
    assert ds.attrs["method"] == "tsit5" and ds.attrs["method_requested"] == "auto"
    assert "not stiff" in ds.attrs["method_reason"]


def test_auto_takes_the_stiff_path_for_small_init_deep_flows():
    prob = dln.Regression.whitened([4.0, 2.0, 1.0], 3, 3, seed=0)
    # docs/math.md §3: a learned mode's curvature over an unlearned one's growth, (s/u0)^(1 - 2/N) = 800 here
    assert scales.predicted_stiffness(prob, 4, 0.05) == pytest.approx((4.0 / 0.05**4) ** 0.5, rel=1e-12)
    assert scales.predicted_stiffness(prob, 4, 0.05) > auto.STIFF_RATIO
    ds = dln.integrate(prob, depth=4, scale=0.05, t1=1.0, saveat=5, progress=False)
    assert ds.attrs["method"] == "rosenbrock"
    assert "predicted plateau stiffness" in ds.attrs["method_reason"]


SENSING = dln.MatrixSensing.random(shape=(6, 6), rank=2, measurements=40, seed=0)  # n > d²: one minimiser, rank 2


def test_auto_sees_the_stiff_tail_of_a_large_init_until_converged():
    # W(0)'s part outside W*'s singular spaces must be shed at an algebraic rate; measured by the steps of both
    # methods from the same call (a factorisation: its Hessian is I, so the tail alone makes it stiff)
    rng = np.random.default_rng(0)
    prob = dln.Factorization(rng.standard_normal((6, 2)) @ rng.standard_normal((2, 6)))
    assert prob.unique_minimiser and SENSING.unique_minimiser
    assert dln.Regression.whitened([2.0, 1.0], 3, 3).unique_minimiser
    # where W* is not the only minimiser a run fits another one instead of shedding W(0)'s part: no tail rule
    assert not dln.MatrixSensing.random(shape=(6, 6), rank=2, measurements=30, seed=0).unique_minimiser
    assert not dln.MatrixCompletion.random((6, 5), 2, 0.8, seed=0).unique_minimiser
    w0 = {n: dln.product(dln.init_layers(prob, n, "gaussian", scale, 0)) for n, scale in ((3, 0.3), (2, 0.01))}
    assert auto.tail_ratio(prob, w0[3], 1e-8) == pytest.approx(1830, rel=0.01)
    ds = dln.integrate(prob, depth=3, scale=0.3, progress=False)
    assert ds.attrs["method"] == "rosenbrock" and "stiff tail" in ds.attrs["method_reason"]
    assert ds.status.item() == int(dln.Status.CONVERGED) and ds.num_steps.item() < 1000  # 526
    explicit = dln.integrate(prob, depth=3, scale=0.3, method="tsit5", max_steps=3000, progress=False)
    assert explicit.status.item() == int(dln.Status.MAX_STEPS)  # what auto chose before (9177 steps to converge)
    # controls: a small init leaves no tail (the explicit path, as before); a horizon of its own has no stop rule
    assert auto.tail_ratio(prob, w0[2], 1e-8) == pytest.approx(0.0227, rel=0.01)  # ∝ scale^(2N)
    small = dln.integrate(prob, depth=2, scale=0.01, progress=False)
    assert small.attrs["method"] == "tsit5" and small.status.item() == int(dln.Status.CONVERGED)
    assert "stiff tail" not in dln.integrate(prob, depth=3, scale=0.3, t1=1.0, progress=False).attrs["method_reason"]


def test_auto_sees_the_curvature_a_large_unbalanced_init_keeps_on_a_run_that_cannot_converge():
    """Width 1 on an 8 × 8 rank-2 completion (ℓ* out of reach), depth 2 from Gaussian 10: the conserved imbalance
    ‖D‖₂ = ‖W₂ᵀW₂ − W₁W₁ᵀ‖₂ = 960 keeps the curvature at ≥ ~‖D‖₂·h for the whole run, so an explicit run to the
    horizon takes about ‖D‖₂·h·t/3.5 steps or more (`imbalance_steps`): auto takes the stiff path, which ends at
    its horizon, not_converged, in hundreds of steps. Reference: tsit5's own accepted steps to where it stopped
    are the bound's to within a factor 2 (measured 0.94 of it: the bound is ‖D‖₂·h, not the exact curvature).
    Controls: the same init at full width (ℓ* reachable, a run that stops when it converges) is not judged by the
    horizon, and a small init (‖D‖ ~ scale²) stays explicit."""
    prob = dln.MatrixCompletion.random((8, 8), rank=2, observed=40, seed=0)
    kw = dict(depth=2, width=1, scale=10.0, progress=False)
    with pytest.warns(UserWarning, match="width 1 is below the rank 2"):
        ds = dln.integrate(prob, **kw)
        explicit = dln.integrate(prob, method="tsit5", max_steps=20_000, **kw)
    assert ds.attrs["method"] == "rosenbrock" and "conserved imbalance" in ds.attrs["method_reason"]
    assert ds.status.item() == int(dln.Status.NOT_CONVERGED) and ds.num_steps.item() < 2000  # 715
    assert explicit.status.item() == int(dln.Status.MAX_STEPS)
    bound = auto.imbalance_steps(prob, dln.init_layers(prob, 2, "gaussian", 10.0, 0, 1), explicit.t_final.item())
    assert 0.5 * bound <= explicit.num_steps.item() <= 2 * bound, (bound, explicit.num_steps.item())
    assert "conserved imbalance" not in dln.integrate(prob, depth=2, scale=10.0, progress=False).attrs["method_reason"]
    with pytest.warns(UserWarning, match="width 1 is below the rank 2"):
        small = dln.integrate(prob, **kw | {"scale": 0.1})
    assert small.attrs["method"] == "tsit5"


def test_auto_sees_an_ill_conditioned_loss_that_a_run_until_converged_must_resolve():
    # X with singular values 1 and 1e-2 (Σ_xx's condition number 1e4, one minimiser): at depth 1 the flow is
    # W' = −(W − W*)Σ_xx, whose slow direction holds a closed-form share of the gap
    x = np.diag([1.0, 1e-2]) @ np.vstack([np.ones(4), [1.0, -1.0, 1.0, -1.0]]) * np.sqrt(2.0)  # Σ_xx = diag(2, 2e-4)
    prob = dln.Regression(x, np.array([[1.0, 1.0]]) @ x)
    w0 = np.zeros((1, 2))
    slow, kappa = auto.slow_fraction(prob, w0, 1e-2)
    assert kappa == pytest.approx(1e4, rel=1e-9)
    assert slow == pytest.approx(2e-4 / (2.0 + 2e-4), rel=1e-9)  # ½λ_i (w*_i)² over their sum
    ds = dln.integrate(prob, depth=1, scale=1e-3, progress=False)
    assert ds.attrs["method"] == "rosenbrock" and "curvature spans" in ds.attrs["method_reason"]
    explicit = dln.integrate(prob, depth=1, scale=1e-3, method="tsit5", progress=False)
    assert ds.status.item() == explicit.status.item() == int(dln.Status.CONVERGED)
    assert explicit.num_steps.item() > 5 * ds.num_steps.item()
    # the same regression with its samples kept has the same flow, and auto gives it the same path (it took tsit5's
    # 13,164 steps before the rule read its Σ_xx); with n < d its minimisers are many: no end-of-run rule
    kept = dln.SparseRegression(x, np.array([[1.0, 1.0]]) @ x)
    assert kept.unique_minimiser and not dln.SparseRegression(x[:, :1], x[0, :1]).unique_minimiser
    same = dln.integrate(kept, depth=1, scale=1e-3, progress=False)
    assert same.attrs["method_reason"] == ds.attrs["method_reason"] and same.num_steps.item() == ds.num_steps.item()
    # the sensing branch's H = AᵀA/m is the problem's own Hessian operator; a well-conditioned loss has no slow part
    delta = np.random.default_rng(0).standard_normal((6, 6))
    flat = SENSING.sensing.reshape(40, -1)
    np.testing.assert_allclose((flat.T @ flat / 40 @ delta.ravel()).reshape(6, 6),
                               type(SENSING).hessian_op(delta, SENSING.arrays()), rtol=1e-12, atol=1e-14)  # fmt: skip
    assert auto.slow_fraction(dln.Regression.whitened([2.0, 1.0], 3, 3), np.zeros((3, 3)), 1e-2) == (0.0, 1.0)


def test_auto_sees_a_long_given_horizon_past_the_first_escape():
    # a run to a given t1 goes on after it converges, where the learned mode's curvature bounds an explicit step:
    # to t1 = 1e3 the stiff path takes 442 steps where tsit5 (what auto chose before) took 11,351, and to 1e5 ran
    # out of its budget at t = 1.4e4
    kw = dict(depth=3, scale=0.1, t1=1e3, progress=False)
    ds = dln.integrate(SENSING, **kw)
    assert ds.attrs["method"] == "rosenbrock" and "explicit steps past the first escape" in ds.attrs["method_reason"]
    assert ds.status.item() == int(dln.Status.FINISHED) and ds.num_steps.item() < 1000
    explicit = dln.integrate(SENSING, method="tsit5", max_steps=5000, **kw)
    assert explicit.status.item() == int(dln.Status.MAX_STEPS)
    # the estimate it reads: S*·(t1 − first escape)/3.5 with S* = N s*^{2−2/N} λ_max(H), the top of the dense
    # Hessian at a balanced minimiser of this problem's loss
    s_star = np.linalg.norm(SENSING.w_star, 2)
    flat = SENSING.sensing.reshape(40, -1)
    h = np.linalg.eigvalsh(flat.T @ flat / 40)[-1]
    escape = scales.escape_estimate(SENSING, [3], [0.1], slowest=False)
    want = 3 * s_star ** (4 / 3) * h * (1e3 - escape) / auto.EXPLICIT_REACH
    assert auto.horizon_steps(SENSING, 3, [0.1], "layer", "layers", math.nan, 1e3) == pytest.approx(want, rel=1e-6)
    # control: a horizon that ends near the first escape keeps the explicit path
    short = dln.integrate(SENSING, **{**kw, "t1": 2.0})
    assert "explicit steps past" not in short.attrs["method_reason"]


def test_auto_gives_the_end_to_end_flow_the_end_of_run_and_horizon_rules():
    # the end-to-end flow of an ill-conditioned loss (SENSING: condition number 944) ends as stiff as the layers':
    # until converged at depth 3 from a balanced product of 0.1, tsit5 (what auto chose before) ran out of its
    # 200,000 steps at 159,533 accepted, where singular coordinates converge in 480; to t1 = 1e4, 37,670 against 385
    kw = dict(depth=3, scale=0.1, flow="end_to_end", init="balanced", scale_of="product", progress=False)
    ds = dln.integrate(SENSING, **kw)
    assert ds.attrs["method"] == "rosenbrock" and "curvature spans 944x" in ds.attrs["method_reason"]
    assert ds.status.item() == int(dln.Status.CONVERGED) and ds.num_steps.item() < 1000
    with pytest.warns(UserWarning, match="did not converge"):
        explicit = dln.integrate(SENSING, method="tsit5", max_steps=20_000, **kw)
    assert explicit.status.item() == int(dln.Status.MAX_STEPS)
    far = dln.integrate(SENSING, t1=1e4, **kw)
    assert far.attrs["method"] == "rosenbrock" and "explicit steps past" in far.attrs["method_reason"]
    assert far.status.item() == int(dln.Status.FINISHED) and far.num_steps.item() < 1000
    # control: a loss with many minimisers (a completion) keeps the explicit path at depth 2, where it has no plateau
    completion = dln.MatrixCompletion.random((6, 6), 2, 0.6, seed=0)
    assert dln.integrate(completion, **{**kw, "depth": 2}).attrs["method"] == "tsit5"


def test_auto_reads_the_tail_at_depth_inf_too():
    # at depth ∞ a large product's part outside W*'s singular spaces decays as σ' ∝ −σ³ (in τ): the tail rule read
    # finite depths only, and tsit5 ran out of its 200,000 steps at ℓ = 6e-7 ℓ(0) on this whitened regression
    prob = dln.Regression.whitened([3.0, 2.0, 1.0], 4, 4, seed=0)
    kw = dict(depth="inf", flow="end_to_end", init="balanced", scale=10.0, scale_of="product", progress=False)
    ds = dln.integrate(prob, **kw)
    assert ds.attrs["method"] == "rosenbrock" and "stiff tail" in ds.attrs["method_reason"]
    assert ds.status.item() == int(dln.Status.CONVERGED)
    with pytest.warns(UserWarning, match="did not converge"):
        explicit = dln.integrate(prob, method="tsit5", max_steps=20_000, **kw)
    assert explicit.status.item() == int(dln.Status.MAX_STEPS)


def test_auto_counts_the_modified_flow_s_extra_stiffness():
    # the modified flow's Jacobian at a minimum is -(H + (lr/2) H²): its learned modes are 1 + lr·S/2 stiffer
    prob = dln.Regression.whitened([4.0, 2.0, 1.0], 3, 3, seed=0)
    plain = scales.predicted_stiffness(prob, 3, 0.3)
    learned = 3 * 4.0 ** (4 / 3)  # N s*^(2 - 2/N) h, h = 1
    assert scales.predicted_stiffness(prob, 3, 0.3, "modified", lr=0.1) == pytest.approx(
        plain * (1 + 0.05 * learned), rel=1e-12
    )
    assert scales.predicted_stiffness(prob, 3, 0.3, "modified") == pytest.approx(plain, rel=1e-12)  # no lr: as before
    # on SENSING at depth 3 from 0.1, lr = 0.3 (S ≈ 40 at the end): tsit5 ran out of its 200,000 steps, seed 1; with a
    # horizon of one's own (no tail or curvature rule) the plateau prediction alone now sends it to the stiff path
    from dlnode.run.plan import Plan

    kw = dict(depth=3, scale=0.1, seed=1, t1=2000.0, progress=False)
    plain = Plan.build(SENSING, **kw)  # stiff too, by its long horizon only (`auto.horizon_steps`)
    assert plain.method == "rosenbrock" and "predicted plateau stiffness" not in plain.reason
    plan = Plan.build(SENSING, flow="modified", lr=0.3, **kw)
    assert plan.method == "rosenbrock" and "predicted plateau stiffness" in plan.reason
    ds = dln.integrate(SENSING, flow="modified", lr=0.3, **kw)
    assert ds.status.item() == int(dln.Status.FINISHED)


def test_each_case_of_the_rules_benchmark_goes_where_its_rule_sends_it():
    """`benchmarks.auto_rules` times auto against tsit5 and rosenbrock on the case behind each rule: each rule case
    is planned for the stiff path by its own rule, each control for the explicit one (the plans alone, no run)."""
    from benchmarks import auto_rules
    from dlnode.run.plan import Plan

    why = {"tail": "stiff tail", "e2e_inf_tail": "stiff tail", "horizon": "explicit steps past",
           "e2e_horizon": "explicit steps past", "modified": "predicted plateau stiffness"}  # fmt: skip
    for name, (_, problem, kwargs) in auto_rules.CASES.items():
        plan = Plan.build(auto_rules._problem(problem), **kwargs)
        if name.startswith("control"):
            assert plan.method == "tsit5", (name, plan.reason)
        else:
            assert plan.method == "rosenbrock" and why.get(name, "curvature spans") in plan.reason, (name, plan.reason)
    row = {"auto": {"status": 1, "seconds": 3.0}, "tsit5": {"status": -1, "seconds": 1.0},
           "rosenbrock": {"status": 1, "seconds": 2.0}}  # fmt: skip
    assert auto_rules.ratio(row) == 1.5  # against the best method that converged, not the faster one out of steps


def test_equal_flows_are_one_flow_and_share_compiled_solvers():
    """get_flow is cached on what defines the flow: depth 2 and 2.0 are one end-to-end flow, and the layer flow is
    one for every depth (an extra Flow object would compile every solver again)."""
    from dlnode.flows.flow import get_flow

    cls = dln.Factorization
    assert get_flow("layers", cls, 2) is get_flow("layers", cls, 2.0, False) is get_flow("layers", cls, 7, 0)
    assert get_flow("layers", cls, 2, True) is not get_flow("layers", cls, 2)  # it observes the weights too
    assert get_flow("modified", cls, 2) is not get_flow("layers", cls, 2)
    assert get_flow("end_to_end", cls, 2) is get_flow("end_to_end", cls, 2.0)
    assert get_flow("end_to_end", cls, float("inf")) is get_flow("end_to_end", cls, np.inf)
    assert get_flow("end_to_end", cls, 3) is not get_flow("end_to_end", cls, 2)
