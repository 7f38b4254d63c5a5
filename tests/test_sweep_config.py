"""Sweep configs: TOML in, one-line errors naming the key and its allowed values, one time axis for every cell.

No cluster here: every refusal happens before any work.
"""

import copy

import numpy as np
import pytest
from typer.testing import CliRunner

import dlnode as dln
from dlnode.cli import app
from dlnode.run.plan import default_rtol
from dlnode.sweeps.config import load_config, save_times
from dlnode.sweeps.store import Layout, _template
from dlnode.sweeps.sweep import auto_batch

BASE = {
    "problem": {"kind": "factorization", "shape": [4, 4], "rank": 2, "seed": 1},
    "grid": {"depth": [1, 2], "scale": [0.1, 0.3], "seed": [0, 1], "method": "tsit5"},
    "integrate": {"t1": 5.0, "saveat": 10},
}


def _with(table: str, **values):
    out = copy.deepcopy(BASE)
    out.setdefault(table, {}).update(values)
    return out


BAD = [
    (
        _with("grid", dept=[3]),
        "config key 'grid.dept' is not known; allowed keys here: batch, depth, flow, init, lr, method, noise",
    ),
    (_with("grid", method=["tsit6"]), "config key 'grid.method[0]': Input should be 'auto', 'dopri5'"),
    (_with("grid", scale=["big"]), "config key 'grid.scale[0]': Input should be a valid number; got 'big'"),
    (_with("grid", scale=[-1.0]), "config key 'grid.scale[0]': Input should be greater than 0; got -1.0"),
    (_with("grid", seed=["3"]), "config key 'grid.seed[0]': Input should be a valid integer; got '3'"),
    (_with("grid", seed=[1, 1]), "config key 'grid.seed': values must not repeat; got [1, 1]"),
    (_with("grid", scale=[1, 1.0]), "config key 'grid.scale': values must not repeat; got [1, 1.0]"),
    (_with("grid", scale=[0.1, 1e-1, 0.3]), "config key 'grid.scale': values must not repeat; got [0.1, 0.1, 0.3]"),
    (_with("grid", init=["zeros"]), "config key 'grid.init[0]': Input should be 'gaussian', 'orthogonal'"),
    (
        _with("grid", depth=[0]),
        "config key 'grid.depth[0]': Input should be greater than or equal to 1 or Input should be 'inf'; got 0",
    ),
    (_with("problem", kind="lasso"), "config key 'problem.kind' must be one of 'factorization', 'regression'"),
    (_with("problem", observed=10), "config key 'problem.observed' is not known; allowed keys here: kind, matrix"),
    (_with("integrate", rtol="1e-6"), "config key 'integrate.rtol': Input should be a valid number; got '1e-6'"),
    (_with("integrate", saveat=[0.0, 2.0, 1.0]), "config key 'integrate.saveat' must be strictly increasing"),
    ({**BASE, "grids": {}}, "config key 'grids' is not known; allowed keys here: execution, grid, integrate, problem"),
    (
        _with("execution", batch=0),
        "config key 'execution.batch': Input should be greater than or equal to 1 or Input should be 'auto'",
    ),
    (_with("grid", depth=[2, "inf"]), "depth 'inf' needs flow='end_to_end'"),
    (
        _with("grid", depth=["inf"], flow="end_to_end", init="balanced"),
        "config key 'integrate.scale_of', in the cells flow='end_to_end', init='balanced', method='tsit5': "
        "scale_of must be 'product' with depth 'inf'",
    ),
    (_with("grid", flow=["end_to_end"]), "flow='end_to_end' needs a balanced init"),
    (
        _with("grid", method=["gd"]),
        "config key 'grid.lr', in the cells flow='layers', init='gaussian', method='gd': lr must be",
    ),
    (
        _with("grid", lr=[0.1]),
        "config key 'grid.lr', in the cells flow='layers', init='gaussian', method='tsit5', lr=0.1: "
        "lr applies to method='gd', flow='modified' or flow='central' only",
    ),
    (
        _with("grid", method=["gd"], lr=[0.1, 0.03]),
        "config key 'grid.lr': every step (lr, or dt of an SDE method) must divide the largest (0.1)",
    ),
    (
        {**_with("grid", method=["gd"], lr=[0.5, 0.25]), "integrate": {"t1": 0.4, "saveat": 10}},
        "config key 'integrate.t1', in the cells flow='layers', init='gaussian', method='gd', lr=0.5: "
        "t1 must be at least lr=0.5 for method='gd' (one step); got 0.4",
    ),
    (
        {**BASE, "problem": {"kind": "sparse_regression", "d": 4, "n": 3, "sparsity": 5}},
        "config table 'problem': sparsity must be at most d = 4; got 5",
    ),
    (_with("integrate", network="sparse"), "config key 'integrate.network': Input should be 'dense' or 'diagonal'"),
    (_with("integrate", paths=0), "config key 'integrate.paths'"),
    (
        {
            **BASE,
            "problem": {"kind": "sparse_regression", "d": 4, "n": 3, "sparsity": 2},
            "grid": {"depth": [2], "scale": [0.1], "method": "label_noise", "lr": [0.1], "noise": [0.1]},
            "integrate": {"t1": 1.0, "paths": 10**9},
        },
        "config key 'integrate.paths': asks for more memory than this machine has available; got 1000000000 paths",
    ),
    (
        _with("grid", method=["gd"], lr=[0.1], noise=[0.1]),
        "config key 'grid.noise', in the cells flow='layers', init='gaussian', method='gd', lr=0.1, noise=0.1: noise "
        "applies to the stochastic methods",
    ),
    (
        {
            **BASE,
            "problem": {"kind": "sparse_regression", "d": 4, "n": 3, "sparsity": 2},
            "grid": {"depth": [2], "scale": [0.1], "method": "label_noise", "lr": [0.1], "noise": [0.1]},
            "integrate": {"t1": 1.0, "sampling": "shuffled"},
        },
        "config key 'integrate.sampling', in the cells flow='layers', init='gaussian', method='label_noise', lr=0.1, "
        "noise=0.1: sampling must be one of",
    ),
]


@pytest.mark.parametrize(("config", "message"), BAD, ids=[m[:40] for _, m in BAD])
def test_bad_configs_give_one_line_errors(config, message):
    with pytest.raises(ValueError) as err:
        load_config(config)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_toml_through_the_command_line(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[problem]\nkind = "factorization"\nshape = [4, 4]\nrank = 2\n[grid]\ndepth = [1]\nscale = 0.1\n'
                    'method = "rk4"\n[integrate]\nt1 = 1.0\n')  # fmt: skip
    result = CliRunner().invoke(app, ["run", str(path), "-o", str(tmp_path / "x.zarr")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: config key 'grid.method[0]': Input should be 'auto'")
    assert not (tmp_path / "x.zarr").exists()
    (tmp_path / "broken.toml").write_text("[grid\n")
    result = CliRunner().invoke(app, ["run", str(tmp_path / "broken.toml"), "-o", str(tmp_path / "x.zarr")])
    assert result.exit_code == 2 and "is not valid TOML" in result.output


def test_toml_file_and_single_values():
    """A TOML file and the same tables as a dict give one config; a single value stands for a one-item list."""
    config = load_config(_with("grid", scale=0.1, method="tsit5"))
    assert config.grid.scale == [0.1] and config.grid.method == ["tsit5"]
    assert config.depths() == [1.0, 2.0]
    e2e = _with("grid", depth=[2, "inf"], flow="end_to_end", init="balanced")
    e2e["integrate"]["scale_of"] = "product"
    assert load_config(e2e).depths()[-1] == np.inf


def test_example_configs_are_valid():
    from pathlib import Path

    configs = sorted((Path(__file__).resolve().parent.parent / "studies" / "configs").glob("*.toml"))
    assert configs
    for path in configs:
        load_config(path)


def test_time_axis_from_the_config_alone():
    """A count lays integrate's log grid ending at t1; for GD every time is a whole number of steps of each lr."""
    config = load_config(BASE)
    problem = config.problem.build()
    ts = save_times(config, problem)
    assert ts[0] == 0 and ts[-1] == 5.0 and len(ts) == 11 and np.all(np.diff(ts) > 0)
    gd = load_config(_with("grid", method=["gd"], lr=[0.1, 0.05, 0.025]))
    for lr in (0.1, 0.05, 0.025):
        steps = save_times(gd, problem) / lr
        np.testing.assert_allclose(steps, np.rint(steps), rtol=0, atol=1e-9)
    explicit = load_config(_with("integrate", t1=None, saveat=[0.5, 1.0, 2.0]))
    np.testing.assert_array_equal(save_times(explicit, problem), [0.0, 0.5, 1.0, 2.0])


def test_auto_batch_by_state_size():
    assert auto_batch(load_config(BASE)) == 16  # 4x4, depth 2: 32 numbers a cell
    assert auto_batch(load_config(_with("problem", shape=[40, 40], rank=2))) == 4  # 3200 numbers
    assert auto_batch(load_config(_with("problem", shape=[60, 60], rank=2))) == 1  # 7200


def test_store_path_refusals_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="store must be a path ending in .zarr"):
        dln.sweep(BASE, tmp_path / "x.nc")
    (tmp_path / "file.zarr").write_text("not a store")
    with pytest.raises(ValueError, match="exists and is not a dlnode sweep store"):
        dln.sweep(BASE, tmp_path / "file.zarr")
    with pytest.raises(ValueError, match="workers must be a positive integer"):
        dln.sweep(BASE, tmp_path / "y.zarr", workers=0)
    assert not (tmp_path / "y.zarr").exists()


def test_gradient_descent_times_never_pass_t1():
    """Rounding to whole steps of the largest lr stops at the last step at or before t1 (2.06 → 2.0, not 2.1)."""
    config = load_config({**_with("grid", method=["gd"], lr=[0.1, 0.05]), "integrate": {"t1": 2.06, "saveat": 10}})
    ts = save_times(config, config.problem.build())
    assert ts[-1] == 2.0 and np.all(ts <= 2.06) and np.all(np.diff(ts) > 0)
    for lr in (0.1, 0.05):
        np.testing.assert_allclose(ts / lr, np.rint(ts / lr), rtol=0, atol=1e-9)


def test_one_rtol_and_atol_for_the_whole_grid():
    """Unset tolerances are integrate's defaults over every depth and scale of the grid (a depth-4 cell sets the
    per-layer rtol for all; the smallest scale sets atol); given ones are kept; a store's own ones win."""
    config = load_config(_with("grid", depth=[1, 4], scale=[1e-3, 0.3]))
    problem = config.problem.build()
    layout = Layout.of(config, 1)
    rtol = default_rtol(problem, [1, 4], [1e-3, 0.3])
    assert rtol < 1e-6  # the balancedness's tolerance of the depth-4 cells: the grid's value, not a cell's own
    assert default_rtol(problem, [1], [0.3]) == 1e-6
    assert (layout.rtol, layout.atol) == (rtol, 1e-3 * rtol * 1e-3)
    attrs = _template(layout)[0].attrs
    assert (attrs["rtol"], attrs["atol"]) == (layout.rtol, layout.atol)
    given = Layout.of(load_config(_with("integrate", rtol=1e-8, atol=1e-12)), 1)
    assert (given.rtol, given.atol) == (1e-8, 1e-12)
    only_rtol = Layout.of(load_config(_with("integrate", rtol=1e-8)), 1)
    assert only_rtol.atol == 1e-3 * 1e-8 * 0.1  # atol follows the given rtol
    assert (Layout.of(config, 1, (1e-7, 1e-11)).rtol, Layout.of(config, 1, (1e-7, 1e-11)).atol) == (1e-7, 1e-11)


def test_execution_is_no_part_of_the_compared_config():
    """A re-run with another batch is the same config (cells do not depend on how they are cut into tasks)."""
    a = load_config(_with("execution", batch=1))
    b = load_config(_with("execution", batch=8))
    assert a.canonical() == b.canonical() and "execution" not in a.canonical()


def test_store_method_attrs_follow_integrate():
    """``method`` is the method that ran, as in integrate: the given one, or "per cell" (see method_used)."""
    given = _template(Layout.of(load_config(BASE), 1))[0].attrs
    assert (given["method"], given["method_requested"], given["method_reason"]) == ("tsit5", "tsit5", "given")
    auto = _template(Layout.of(load_config(_with("grid", method="auto")), 1))[0].attrs
    assert (auto["method"], auto["method_requested"]) == ("per cell", "auto")
    swept = _template(Layout.of(load_config(_with("grid", method=["tsit5", "dopri5"])), 1))[0].attrs
    assert (swept["method"], swept["method_requested"]) == ("per cell", "swept")
