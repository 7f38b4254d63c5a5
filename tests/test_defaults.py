"""What `integrate` does with its defaults: honest statuses, one pass until converged, the time scale of the
problem's own gradient, auto's choice, one meaning for (init, scale, seed) under both flows, the compile cache."""

import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import dlnode as dln
from dlnode.solvers import core, registry

SMALL = dln.MatrixCompletion.random((8, 8), 2, 40, seed=0)


def _normalised_completion(n=12, rank=2, observed=70, seed=0):
    base = dln.MatrixCompletion.random((n, n), rank, observed, seed=seed)
    return dln.MatrixCompletion(base.target(), base.mask, normalize=True)


def test_every_status_has_a_meaning_and_a_cf_flag():
    ds = dln.integrate(SMALL, depth=1, scale=0.1, t1=1.0, method="tsit5", progress=False)
    values = [int(v) for v in ds["status"].attrs["flag_values"].split()]
    meanings = ds["status"].attrs["flag_meanings"].split()
    assert values == [int(s) for s in dln.Status] and meanings == [s.meaning for s in dln.Status]
    assert set(core.MESSAGES) == set(dln.Status)


def test_until_converged_integrates_once_and_converges_on_a_normalised_completion(monkeypatch):
    # the normalisation by |Omega| slows every rate |Omega| times: a horizon from |target| would stop far too early
    prob = _normalised_completion()
    passes = []
    drive = registry.drive
    monkeypatch.setattr(registry, "drive", lambda *a, **k: passes.append(1) or drive(*a, **k))
    ds = dln.integrate(prob, depth=[1, 3], scale=1e-2, seed=[0, 1], method="tsit5", progress=False)
    assert len(passes) == 2  # one pass per depth, no search pass
    assert (ds["status"].values == dln.Status.CONVERGED).all()
    loss = ds["loss"].isel(time=-1).values
    loss0 = ds["loss"].isel(time=0).values
    assert np.all(loss - prob.loss_min <= 1.01e-8 * (loss0 - prob.loss_min))
    # the grid ends just after the last run's convergence time
    assert float(ds["time"][-2]) < float(ds["t_final"].max()) <= float(ds["time"][-1])


def test_the_time_unit_is_the_gradient_at_zero():
    prob = _normalised_completion()
    g = np.linalg.norm(prob.grad(np.zeros(prob.w_star.shape)), 2)
    from dlnode.flows.scales import time_unit

    assert time_unit(prob) == pytest.approx(1 / g, rel=1e-12)
    assert g < np.linalg.norm(prob.target(), 2) / 10  # the normalisation makes it much smaller than |target|


def test_a_horizon_without_convergence_says_not_converged():
    # t1=None with explicit save times: run until converged, but no further than the last save time
    ds = dln.integrate(SMALL, depth=3, scale=1e-2, saveat=np.array([0.0, 0.1, 0.2]), method="tsit5", progress=False)
    assert (ds["status"].values == dln.Status.NOT_CONVERGED).all()
    assert float(ds["t_final"].max()) == pytest.approx(0.2)


def test_finished_only_when_t1_was_reached():
    ds = dln.integrate(SMALL, depth=3, scale=0.1, t1=50.0, method="tsit5", max_steps=5, progress=False)
    # the budget is checked between windows; a diffrax window takes at most min(4096, max_steps) steps
    assert 5 <= int(ds["num_steps"].values.ravel()[0]) + int(ds["num_rejected"].values.ravel()[0]) <= 10
    assert int(ds["status"].values.ravel()[0]) == dln.Status.MAX_STEPS
    ds = dln.integrate(SMALL, depth=3, scale=0.1, t1=0.5, method="tsit5", progress=False)
    assert int(ds["status"].values.ravel()[0]) == dln.Status.FINISHED
    assert float(ds["t_final"].values.ravel()[0]) == pytest.approx(0.5)


def test_no_step_is_reported_when_nothing_could_be_integrated():
    # an initial loss beyond the divergence threshold (1e12·l0) cannot happen at t = 0, but a non-finite one can:
    ds = dln.integrate(SMALL, depth=2, init=lambda shapes, s, rng: [np.full(sh, 1e200) for sh in shapes],
                       scale=1.0, t1=1.0, method="tsit5", progress=False)  # fmt: skip
    assert int(ds["status"].values.ravel()[0]) == dln.Status.NO_STEP
    assert int(ds["num_steps"].values.ravel()[0]) == 0


class _PoisonedCompletion(dln.MatrixCompletion):
    """A completion whose gradient is NaN once ‖W‖_F passes half of ‖W*‖_F: a field that breaks mid-run."""

    @classmethod
    def grad_fn(cls, w, arrays):
        import jax.numpy as jnp

        g = super().grad_fn(w, arrays)
        return jnp.where(jnp.sqrt(jnp.sum(w * w)) > 0.5 * jnp.sqrt(jnp.sum(arrays["w_star"] ** 2)), jnp.nan, g)


@pytest.mark.parametrize("method", ["tsit5", "rosenbrock"])
def test_a_field_that_breaks_mid_run_stops_honestly_and_keeps_what_was_integrated(method):
    """Steps pile up against the NaN region: tsit5's time stops moving, and its loss with it (solver_failure at
    once); rosenbrock's compensated time still creeps by ~1e-17 a step, less than an ulp of t over a window, which
    the driver allows for `STALL_WINDOWS` windows in a row (an escape far out on the time axis looks like that)
    before solver_failure. Either way the trajectory up to the boundary is kept."""
    status = "SOLVER_FAILURE"
    prob = _PoisonedCompletion(SMALL.target(), SMALL.mask)
    ds = dln.integrate(prob, depth=2, scale=0.1, t1=100.0, saveat=20, method=method, max_steps=20_000, progress=False)
    assert int(ds["status"].values.ravel()[0]) == dln.Status[status]
    assert int(ds["num_steps"].values.ravel()[0]) > 0
    t_final = float(ds["t_final"].values.ravel()[0])
    assert 0.0 < t_final < 100.0
    reached = ds["loss"].squeeze().sel(time=slice(0.0, t_final))
    assert reached.size >= 2 and bool(np.isfinite(reached).all())


def test_gd_with_t1_below_one_step_is_refused_before_any_work():
    with pytest.raises(ValueError, match="t1 must be at least lr"):
        dln.integrate(SMALL, depth=2, method="gd", lr=10.0, t1=5.0, progress=False)


def test_auto_picks_the_explicit_method_on_a_non_stiff_case_and_the_stiff_one_on_a_small_init_deep_flow():
    ds = dln.integrate(SMALL, depth=2, scale=0.5, t1=1.0, progress=False)
    assert ds.attrs["method"] == "tsit5"
    arora = dln.MatrixCompletion.random((100, 100), 5, 2000, seed=0)
    from dlnode.solvers.auto import choose_method

    method, reason = choose_method(arora, [3.0], [0.1], "gaussian", None, "layers")
    assert method == "rosenbrock", reason


@pytest.mark.parametrize("scale_of", ["layer", "product"])
def test_layers_and_end_to_end_start_from_the_same_product_and_agree(scale_of):
    prob = dln.Regression.whitened([2.0, 1.0, 0.5], 3, 3, seed=0)
    kw = dict(depth=3, init="balanced", scale=0.5, seed=0, scale_of=scale_of, method="dopri8", rtol=1e-10,
              atol=1e-12, progress=False)  # fmt: skip
    tau = np.linspace(0.0, 6.0, 7)
    e2e = dln.integrate(prob, flow="end_to_end", t1=6.0, saveat=tau, **kw)
    layers = dln.integrate(prob, flow="layers", t1=2.0, saveat=tau / 3, **kw)
    w_e2e = e2e["product"].isel(depth=0, scale=0, seed=0).values
    w_layers = layers["product"].isel(depth=0, scale=0, seed=0).values
    np.testing.assert_allclose(w_e2e[0], w_layers[0], rtol=0, atol=1e-14)
    # the end-to-end dataset's coordinate t is the per-layer time of the other run
    np.testing.assert_allclose(e2e["t"].isel(depth=0).values, layers["time"].values, rtol=1e-14)
    np.testing.assert_allclose(w_e2e, w_layers, rtol=0, atol=1e-7)
    # and through the public comparison, which puts the end-to-end run on its plain time t
    errors = dln.compare(layers, e2e)
    assert float(errors["product_error"].max()) < 1e-7 and errors.sizes["time"] == len(tau)


def test_scale_of_product_gives_one_initial_product_at_every_depth():
    prob = dln.Regression.whitened([2.0, 1.0], 3, 3, seed=0)
    ds = dln.integrate(prob, depth=[2, 4, "inf"], flow="end_to_end", init="balanced", scale=0.1, scale_of="product",
                       t1=1.0, saveat=np.array([0.0, 1.0]), method="tsit5", progress=False)  # fmt: skip
    w0 = ds["product"].isel(time=0, scale=0, seed=0).values
    np.testing.assert_allclose(w0[0], w0[2], atol=1e-15)
    np.testing.assert_allclose(w0[1], w0[2], atol=1e-15)
    with pytest.raises(ValueError, match="scale_of='product'"):
        dln.integrate(prob, depth="inf", flow="end_to_end", init="balanced", progress=False)


def test_planning_works_in_logarithms_for_deep_or_large_inits():
    from dlnode.flows.scales import escape_estimate

    for depth, scale in ((400, 1e-3), (60, 1e6), (3, 1e-300)):
        assert math.isfinite(escape_estimate(SMALL, [depth], [scale]))


def test_the_persistent_compile_cache_is_used_by_a_second_process(tmp_path):
    script = textwrap.dedent(
        """
        import jax.monitoring
        hits = []
        jax.monitoring.register_event_listener(lambda name, **kw: hits.append(name))
        import dlnode as dln
        prob = dln.Factorization([[2.0, 0.0], [0.0, 1.0]])
        dln.integrate(prob, depth=3, scale=0.3, t1=1.0, method="rosenbrock", progress=False)
        print(sum(h == "/jax/compilation_cache/cache_hits" for h in hits))
        """
    )
    env = dict(os.environ, DLNODE_CACHE_DIR=str(tmp_path / "cache"))
    runs = [subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
            for _ in range(2)]  # fmt: skip
    first, second = (int(r.stdout.strip().splitlines()[-1]) for r in runs)
    assert first == 0 and second > 0
    assert any((tmp_path / "cache").iterdir())


@pytest.mark.parametrize(
    ("kw", "equinox_mode", "callbacks"),
    [
        ({"method": "rosenbrock"}, None, False),
        ({"method": "gd", "lr": 0.1}, None, False),
        ({"method": "rosenbrock", "flow": "end_to_end", "init": "balanced"}, None, False),  # the singular path
        ({"method": "tsit5"}, None, False),  # diffrax's checks traced in the graph (`diffrax_methods._checks_in_graph`)
        ({"method": "tsit5"}, "raise", True),  # a user's own equinox mode is kept: its checks raise by host callback
    ],
)
def test_which_compiled_programs_the_persistent_cache_can_keep(monkeypatch, kw, equinox_mode, callbacks):
    """JAX writes no program that holds a host callback to its persistent cache. dlnode's methods hold none, so a
    second process reuses their compiled solvers (diffrax's included: README, docs/solvers.md); the last case, where
    the user set ``EQX_ON_ERROR=raise``, shows that the check sees a callback where there is one."""
    from dlnode.solvers import diffrax_methods, stepping

    if equinox_mode is None:
        monkeypatch.delenv("EQX_ON_ERROR", raising=False)
    else:
        monkeypatch.setenv("EQX_ON_ERROR", equinox_mode)
    texts = []

    def recording(fn, *args):
        texts.append(fn.lower(*args).as_text())
        return core.call(fn, *args)

    for module in (stepping, diffrax_methods):  # the modules that run compiled programs
        monkeypatch.setattr(module, "call", recording)
    diffrax_methods._functions.cache_clear()  # traced afresh under this case's environment
    prob = dln.MatrixCompletion.random((4, 4), 2, 10, seed=0)
    try:
        dln.integrate(prob, depth=3, scale=0.3, t1=1.0, saveat=4, progress=False, **kw)
    finally:
        diffrax_methods._functions.cache_clear()
    assert len(texts) >= 3  # start, window, final
    assert any("callback" in t for t in texts) == callbacks


def test_ctrl_c_returns_the_trajectory_so_far_with_status_interrupted(tmp_path):
    script = textwrap.dedent(
        """
        import os, signal, threading
        import numpy as np
        import dlnode as dln
        prob = dln.MatrixCompletion.random((10, 10), 3, 60, seed=0)
        threading.Timer(6.0, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
        ds = dln.integrate(prob, depth=4, scale=1e-3, method="rosenbrock", rtol=1e-11, atol=1e-14, t1=1e10,
                           saveat=400, progress=False)
        status = ds["status"].values.ravel()
        loss = ds["loss"].values.ravel()
        print(int(status[0]), int(np.isfinite(loss).sum()), int(np.isnan(loss).sum()), float(ds["t_final"].max()))
        """
    )
    env = dict(os.environ, DLNODE_CACHE_DIR=str(tmp_path / "cache"))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    status, finite, missing, t_final = done.stdout.split()
    assert int(status) == dln.Status.INTERRUPTED
    assert int(finite) >= 2 and int(missing) >= 1 and 0 < float(t_final) < 1e10  # kept what it had, nothing else


def test_default_rtol_keeps_the_balancedness_and_tightens_only_end_to_end_plateaus():
    from dlnode.flows.scales import predicted_stiffness
    from dlnode.run.plan import (
        DEFAULT_RTOL,
        MAX_DEFAULT_RTOL_INFINITE,
        MAX_DEFAULT_RTOL_LAYERS,
        MIN_DEFAULT_RTOL_END_TO_END,
        STIFFNESS_FREE,
        default_rtol,
    )

    mild = dln.Factorization(np.diag([2.0, 1.0]))
    assert default_rtol(mild, [1], [0.5]) == DEFAULT_RTOL  # depth 1: no plateau, no balancedness to keep
    # depth 2: no polynomial plateau; per layer, the balancedness caps it, end to end there is none
    assert default_rtol(mild, [2], [0.5]) == MAX_DEFAULT_RTOL_LAYERS
    assert default_rtol(mild, [2], [0.5], flow="end_to_end") == DEFAULT_RTOL
    for flow in ("modified", "central"):  # the same tolerance as the gradient flow they reduce to
        assert default_rtol(mild, [2], [0.5], flow=flow) == MAX_DEFAULT_RTOL_LAYERS
    deep = dln.MatrixCompletion.random((10, 10), 3, 60, seed=0)
    assert predicted_stiffness(deep, 4, 1e-3) > 1e3 * STIFFNESS_FREE
    # per layer, a long plateau keeps the balancedness's tolerance (the slow test below holds it to its reference)
    assert default_rtol(deep, [4], [1e-3]) == default_rtol(deep, [8], [1e-3]) == MAX_DEFAULT_RTOL_LAYERS
    ratio = predicted_stiffness(deep, 4, 1e-2, "end_to_end")
    tightened = DEFAULT_RTOL * (ratio / STIFFNESS_FREE) ** -0.5
    assert MIN_DEFAULT_RTOL_END_TO_END < tightened < DEFAULT_RTOL
    assert default_rtol(deep, [4], [1e-2], flow="end_to_end") == pytest.approx(tightened, rel=1e-12)
    assert default_rtol(deep, [4], [1e-3], flow="end_to_end") == MIN_DEFAULT_RTOL_END_TO_END
    # depth ∞ escapes the sharpest: at most 2e-7 even where its plateau is mild (depth 4 beside it: the same call)
    assert default_rtol(mild, [2, math.inf], [0.5], flow="end_to_end") == MAX_DEFAULT_RTOL_INFINITE < DEFAULT_RTOL
    assert default_rtol(deep, [4, math.inf], [1e-3], flow="end_to_end") == MIN_DEFAULT_RTOL_END_TO_END
    ds = dln.integrate(mild, depth=2, scale=0.5, t1=1.0, method="tsit5", progress=False)
    rtol = MAX_DEFAULT_RTOL_LAYERS
    assert ds.attrs["rtol"] == rtol and ds.attrs["atol"] == pytest.approx(1e-3 * rtol * 0.5)


@pytest.mark.slow
def test_the_default_tolerances_meet_the_accuracy_target_on_a_stiff_plateau():
    """The claim behind the default rtol: on a case past the stiffness threshold (depth 4 from 1e-3, a sharp escape
    after a long plateau) the product stays within 1e-4 of a reference at rtol 1e-10 at every time it reached."""
    deep = dln.MatrixCompletion.random((10, 10), 3, 60, seed=0)
    ds = dln.integrate(deep, depth=4, scale=1e-3, progress=False)
    assert int(ds["status"].values.ravel()[0]) == dln.Status.CONVERGED and ds.attrs["rtol"] < 1e-6
    times = ds["time"].values
    ref = dln.integrate(deep, depth=4, scale=1e-3, method="rosenbrock", rtol=1e-10, atol=1e-16, t1=float(times[-1]),
                        saveat=times, loss_tol=None, progress=False)  # fmt: skip
    reached = times <= float(ds["t_final"].max())
    diff = np.sqrt(((ds["product"] - ref["product"]) ** 2).sum(("row", "col"))).squeeze().values
    size = np.sqrt((ref["product"] ** 2).sum(("row", "col"))).squeeze().values
    assert float(np.max((diff / size)[reached])) <= 1e-4


def test_the_planned_grid_resolves_the_fastest_and_the_slowest_escape():
    from dlnode.flows.scales import escape_estimate
    from dlnode.run.plan import GRID_DECADES, planned_times

    prob = dln.Regression.whitened([2.0, 1.0], 3, 3, seed=0)
    depths, scales = [2, 4], [0.3, 1e-3]
    fast = escape_estimate(prob, depths, scales, slowest=False)
    slow = escape_estimate(prob, depths, scales)
    ts = planned_times(40, slow, 1e4 * slow, fast)
    assert ts[1] <= 1e-2 * fast and ts[-1] >= 1e4 * slow
    ratios = ts[2:] / ts[1:-1]
    np.testing.assert_allclose(ratios, 10 ** (GRID_DECADES / 39), rtol=1e-9)  # one density over the whole range


def test_a_huge_init_keeps_its_true_initial_loss_and_says_no_step():
    # per-layer scale 1e6 at depth 3: W(0) ~ 1e18, far too stiff for an explicit first step
    prob = dln.MatrixCompletion.random((30, 30), 3, 450, seed=0)
    with pytest.warns(UserWarning, match="no_step"):
        ds = dln.integrate(prob, depth=3, scale=1e6, method="tsit5", progress=False)
    assert int(ds["status"].values.ravel()[0]) == dln.Status.NO_STEP
    w0 = dln.product(dln.init_layers(prob, 3, "gaussian", 1e6, 0))
    assert float(ds["loss"].isel(time=0).values.ravel()[0]) == pytest.approx(float(prob.loss(w0)), rel=1e-12)
