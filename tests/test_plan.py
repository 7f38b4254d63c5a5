"""One plan per call: `integrate` and a sweep's tasks build the same `Plan` from the same arguments, and every rule
that ties a call's arguments together refuses a bad one with the same message from Python, from a sweep config and
from the command line."""

import copy
import inspect
import math

import numpy as np
import pytest
from typer.testing import CliRunner

import dlnode as dln
from dlnode.cli import app
from dlnode.flows import scales
from dlnode.run.plan import Plan
from dlnode.sweeps.config import GridConfig, IntegrateConfig, load_config
from dlnode.sweeps.store import Layout
from dlnode.sweeps.sweep import _tasks, task_plan

PROBLEM = {"kind": "matrix_completion", "shape": [6, 6], "rank": 2, "observed": 20, "seed": 3}
TIMES = [0.5, 1.0, 2.0, 4.0]


def _problem():
    return dln.MatrixCompletion.random((6, 6), 2, 20, 3)


def _config(**grid):
    return {
        "problem": dict(PROBLEM),
        "grid": {"depth": [3], "scale": [0.1, 0.2], "seed": [0, 1], "method": "tsit5"} | grid,
        "integrate": {"t1": 4.0, "saveat": TIMES, "rtol": 1e-7, "atol": 1e-10},
        "execution": {"batch": 4},
    }


def test_a_sweep_task_and_integrate_build_equal_plans():
    layout = Layout.of(load_config(_config()), batch=4)  # one task: every (scale, seed) of the depth
    (task,) = _tasks(layout)
    from_sweep = task_plan(layout, task)
    by_hand = Plan.build(_problem(), depth=3, scale=[0.1, 0.2], seed=[0, 1], method="tsit5", t1=4.0, saveat=TIMES,
                         rtol=1e-7, atol=1e-10)  # fmt: skip
    assert from_sweep == by_hand
    # negative controls: another seed list, another problem instance, another tolerance: not the same plan
    assert from_sweep != Plan.build(_problem(), depth=3, scale=[0.1, 0.2], seed=[0, 2], method="tsit5", t1=4.0,
                                    saveat=TIMES, rtol=1e-7, atol=1e-10)  # fmt: skip
    other = dln.MatrixCompletion.random((6, 6), 2, 20, 4)
    assert from_sweep != Plan.build(other, depth=3, scale=[0.1, 0.2], seed=[0, 1], method="tsit5", t1=4.0,
                                    saveat=TIMES, rtol=1e-7, atol=1e-10)  # fmt: skip
    assert from_sweep != Plan.build(_problem(), depth=3, scale=[0.1, 0.2], seed=[0, 1], method="tsit5", t1=4.0,
                                    saveat=TIMES, rtol=1e-6, atol=1e-10)  # fmt: skip


def test_integrate_runs_the_plan_it_builds():
    prob = _problem()
    args = dict(depth=2, scale=0.1, seed=0, method="tsit5", t1=2.0, saveat=[0.5, 1.0, 2.0], progress=False)
    ds = dln.integrate(prob, **args)
    plan = Plan.build(prob, **args)
    np.testing.assert_array_equal(ds["time"].values, plan.times)
    assert ds.attrs["rtol"] == plan.controls.rtol and ds.attrs["atol"] == plan.controls.atol


def test_the_problem_scales_are_computed_once_per_problem(monkeypatch):
    prob = _problem()
    calls = []
    real = scales.hessian_scale
    monkeypatch.setattr(scales, "hessian_scale", lambda p, *a: calls.append(p) or real(p, *a))
    Plan.build(prob, depth=[2, 3, 4], scale=[1e-1, 1e-2, 1e-3], seed=[0, 1], t1=1.0)
    Plan.build(prob, depth=[2, 3], scale=1e-2, t1=1.0)
    assert len(calls) == 1
    Plan.build(_problem(), depth=2, scale=1e-2, t1=1.0)  # another problem object: its own scales
    assert len(calls) == 2
    if prob.target_matrix.flags.writeable:  # an array changed in place makes a new problem: computed afresh
        prob.target_matrix[0, 0] += 1.0
        Plan.build(prob, depth=2, scale=1e-2, t1=1.0)
        assert len(calls) == 3


# (the rule, integrate's arguments beside the problem, the same cell as config changes)
RULES = [
    ("depth inf needs end_to_end", dict(depth=[2, "inf"], scale=0.1), dict(grid={"depth": [2, "inf"]})),
    ("end_to_end needs a balanced init", dict(depth=2, scale=0.1, flow="end_to_end"),
     dict(grid={"flow": "end_to_end"})),
    ("gd needs layers", dict(depth=2, scale=0.1, flow="end_to_end", init="balanced", method="gd", lr=0.1),
     dict(grid={"flow": "end_to_end", "init": "balanced", "method": "gd", "lr": 0.1})),
    ("gd needs lr", dict(depth=2, scale=0.1, method="gd"), dict(grid={"method": "gd"})),
    ("lr only with gd or modified", dict(depth=2, scale=0.1, lr=0.1), dict(grid={"lr": 0.1})),
    ("t1 at least one step", dict(depth=2, scale=0.1, method="gd", lr=0.5, t1=0.4, saveat=5),
     dict(grid={"method": "gd", "lr": 0.5}, integrate={"t1": 0.4, "saveat": 5})),
    ("scale_of product with inf", dict(depth=["inf"], scale=0.1, flow="end_to_end", init="balanced"),
     dict(grid={"depth": ["inf"], "flow": "end_to_end", "init": "balanced"})),
    ("saveat within t1", dict(depth=2, scale=0.1, t1=1.0, saveat=[0.5, 2.0]),
     dict(integrate={"t1": 1.0, "saveat": [0.5, 2.0]})),
    ("the singular path needs depth >= 2", dict(depth=1, scale=0.1, flow="end_to_end", init="balanced",
     method="rosenbrock"), dict(grid={"depth": [1], "flow": "end_to_end", "init": "balanced", "method": "rosenbrock"})),
    ("gd is not the modified flow", dict(depth=2, scale=0.1, flow="modified", lr=0.1, method="gd"),
     dict(grid={"flow": "modified", "lr": 0.1, "method": "gd"})),
    ("label noise only for the stochastic methods", dict(depth=2, scale=0.1, noise=0.1),
     dict(grid={"noise": 0.1})),
    ("sharpness needs layer parameters", dict(depth=2, scale=0.1, flow="end_to_end", init="balanced", sharpness=1),
     dict(grid={"flow": "end_to_end", "init": "balanced"}, integrate={"sharpness": 1})),
    ("a dense network's inits", dict(depth=2, scale=0.1, init="positive"), dict(grid={"init": "positive"})),
    ("a diagonal network's inits", dict(depth=2, scale=0.1, network="diagonal", init="orthogonal"),
     dict(grid={"init": "orthogonal"}, integrate={"network": "diagonal"})),
]  # fmt: skip


def test_a_config_takes_every_argument_of_a_plan():
    """The sweep config is the plan's fields plus the grid: [grid] and [integrate] together name every argument of
    `Plan.build` (= `dlnode.integrate`) but the problem (its own table) and the progress bar."""
    arguments = set(inspect.signature(Plan.build).parameters) - {"problem", "progress"}
    grid, run = set(GridConfig.model_fields), set(IntegrateConfig.model_fields)
    assert not grid & run
    assert grid | run == arguments
    assert set(inspect.signature(dln.integrate).parameters) == arguments | {"problem", "progress"}


def _bad_config(changes):
    config = {"problem": dict(PROBLEM), "grid": {"depth": [2], "scale": [0.1], "method": "tsit5"},
              "integrate": {"t1": 4.0, "saveat": 5}}  # fmt: skip
    config = copy.deepcopy(config)
    for table, values in changes.items():
        config[table].update(values)
    return config


def _toml(config):
    def value(v):
        if isinstance(v, str):
            return f'"{v}"'
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return repr(v)

    return "".join(f"[{t}]\n" + "".join(f"{k} = {value(v)}\n" for k, v in rows.items()) for t, rows in config.items())


@pytest.mark.parametrize(("rule", "arguments", "changes"), RULES, ids=[r[0] for r in RULES])
def test_every_rule_says_the_same_from_python_a_config_and_the_command(tmp_path, rule, arguments, changes):
    with pytest.raises(dln.DlnodeError) as python:
        dln.integrate(_problem(), progress=False, **arguments)
    said = str(python.value)
    assert "\n" not in said
    with pytest.raises(dln.DlnodeError) as config:
        load_config(_bad_config(changes))
    assert said in str(config.value)
    path = tmp_path / "bad.toml"
    path.write_text(_toml(_bad_config(changes)))
    result = CliRunner().invoke(app, ["run", str(path), "-o", str(tmp_path / "x.zarr")])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {config.value}"
    assert not (tmp_path / "x.zarr").exists()


def test_a_rule_of_the_flow_kind_holds_for_any_method_that_declares_it():
    """The lr rule reads the method's capability, not its name: a method that declares `needs_lr` needs lr."""
    from dlnode.solvers import METHODS

    needs = sorted(name for name, m in METHODS.items() if m.needs_lr)
    assert "gd" in needs and not {"tsit5", "dopri5", "dopri8", "kvaerno5", "rosenbrock"} & set(needs)
    assert {METHODS[n].family for n in needs} <= {"gd", "sde"}  # the fixed-step methods: their step is the lr
    assert not math.isnan(Plan.build(_problem(), depth=2, scale=0.1, method="gd", lr=0.1, t1=1.0).controls.lr)
    with pytest.raises(dln.DlnodeError, match="lr must be"):
        Plan.build(_problem(), depth=2, scale=0.1, method="gd", t1=1.0)


def test_saveat_is_one_object_for_times_and_weights():
    prob = _problem()
    args = dict(depth=2, scale=0.1, method="tsit5", t1=2.0, progress=False)
    short = Plan.build(prob, saveat=[0.5, 1.0, 2.0], save_weights=True, **args)
    full = Plan.build(prob, saveat=dln.SaveAt(times=[0.5, 1.0, 2.0], weights=True), **args)
    assert short == full and full.save_weights
    assert Plan.build(prob, saveat=dln.SaveAt(count=7), **args) == Plan.build(prob, saveat=7, **args)
    assert Plan.build(prob, saveat=dln.SaveAt(count=7), **args) != Plan.build(prob, saveat=8, **args)
    ds = dln.integrate(prob, saveat=dln.SaveAt(times=[0.5, 1.0, 2.0], weights=True), **args)
    assert "weights" in ds and ds.sizes["time"] == 4


@pytest.mark.parametrize(
    ("make", "said"),
    [
        (lambda: dln.SaveAt(count=5, times=[1.0]), "SaveAt takes count or times, not both"),
        (lambda: dln.SaveAt(count=0), "saveat must be a positive number of save times"),
        (lambda: dln.SaveAt(times=[2.0, 1.0]), "strictly increasing"),
        (lambda: dln.SaveAt(weights="yes"), "weights"),
        (lambda: Plan.build(_problem(), saveat=dln.SaveAt(count=5), save_weights=True), "save_weights is part of"),
    ],
)
def test_bad_saveat_is_refused_in_one_line(make, said):
    with pytest.raises(dln.DlnodeError) as err:
        make()
    assert said in str(err.value) and "\n" not in str(err.value)


def test_a_status_is_set_by_name_inside_jitted_code():
    import jax
    import jax.numpy as jnp

    @jax.jit
    def rule(loss):
        return dln.Status.of_stop(loss < 1e-3, ~jnp.isfinite(loss))

    got = [dln.Status(int(rule(x))) for x in (jnp.inf, 1e-4, 1.0)]
    assert got == [dln.Status.DIVERGED, dln.Status.CONVERGED, dln.Status.FINISHED]  # FINISHED is 0: still running
    assert all(s.message for s in dln.Status)


def test_the_library_refuses_input_with_dlnode_errors_only():
    """No bare ValueError left in dlnode: every refusal is a DlnodeError (pydantic's field validators, which must
    raise ValueError for pydantic to report the key, are the exception)."""
    import ast
    from pathlib import Path

    bare = []
    for path in (Path(dln.__file__).parent).rglob("*.py"):
        tree = ast.parse(path.read_text())
        validators = {
            id(node)
            for fn in ast.walk(tree)
            if isinstance(fn, ast.FunctionDef) and any("validator" in ast.unparse(d) for d in fn.decorator_list)
            for node in ast.walk(fn)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Raise) and node.exc is not None and id(node) not in validators:
                call = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
                if isinstance(call, ast.Name) and call.id in ("ValueError", "TypeError"):
                    bare.append(f"{path.name}:{node.lineno}")
    assert bare == []


def test_the_memory_said_before_the_run_bounds_the_dataset():
    """The plan's peak estimate (said in the progress bar before the run) covers the dataset it makes, held twice
    while assembled, and is not far above it."""
    prob = dln.MatrixCompletion.random((30, 30), 3, 400, seed=0)
    kw = dict(depth=[2, 3], scale=[0.1, 0.3], seed=[0, 1], method="tsit5", t1=0.5, saveat=50, progress=False)
    plan = Plan.build(prob, **kw)
    ds = dln.integrate(prob, **kw)
    assert 2 * ds.nbytes <= plan.memory <= 3 * ds.nbytes


def test_a_residual_init_is_planned_from_a_product_near_the_identity():
    """A residual init (W_j = I + s·G/√(N d)) starts the product at size 1 whatever s: its save grid begins well
    before it converges, and auto does not read a plateau from s^N. The negative control: the same call planned as if
    its product were s^N (a Gaussian init of that scale) puts its first save after the residual run's convergence."""
    prob = dln.MatrixCompletion.random((6, 5), 2, 0.8, seed=0)
    kw = {"depth": 8, "scale": 3e-3, "progress": False}
    plan = Plan.build(prob, init="residual", **kw)
    ds = dln.integrate(prob, init="residual", **kw)
    assert int(ds["status"].item()) == dln.Status.CONVERGED
    t_final = float(ds["t_final"].item())
    assert plan.times[1] < 1e-2 * t_final  # saves along the run, not only t = 0 and the held final state
    assert int(np.sum(ds["time"].values <= t_final)) >= 20
    assert plan.method == "tsit5" and "predicted stiffness 3.62 <=" in plan.reason  # the flow from I is mild
    gaussian = Plan.build(prob, init="gaussian", **kw)
    assert gaussian.times[1] > t_final  # planned from s^N = 6.6e-21: nothing saved before the residual run converged
    assert gaussian.method == "rosenbrock" and "plateau stiffness 4.96e+15" in gaussian.reason


def test_a_sweep_until_converged_plans_a_residual_init_as_integrate_does():
    from dlnode.sweeps.config import until_converged_times

    config = _config(depth=[8], scale=[3e-3], seed=[0], init=["residual"], method="auto")
    config["integrate"] = {"saveat": 40}
    times = until_converged_times(load_config(config), _problem())
    planned = Plan.build(_problem(), depth=8, scale=3e-3, init="residual", saveat=40, progress=False).times
    np.testing.assert_array_equal(times, planned)
    assert times[1] <= 1e-2 * scales.time_unit(_problem())  # from a product of size 1: the grid starts early
    gaussian = _config(depth=[8], scale=[3e-3], seed=[0], init=["gaussian"], method="auto")
    gaussian["integrate"] = {"saveat": 40}
    assert until_converged_times(load_config(gaussian), _problem())[1] > 1e6 * times[1]  # negative control: s^N
