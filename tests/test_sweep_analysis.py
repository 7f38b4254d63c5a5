"""Sweep stores with swept axes (lr, method) pass `dln.validate`, and the analyses and plots run on them lazily.

Two small real stores made by `dln.sweep` (a gradient-descent grid over two step sizes, a flow grid over two
methods), on an in-process Dask cluster that is closed before the tests read them: what the tests compute then runs
on Dask's local scheduler, whose tasks a callback can see. The references are the same functions on the store
loaded into memory (eager NumPy), on a selection of the swept axis, and `dlnode.flows.endtoend.log_volume` on one cell.
"""

import json
import logging
import re

import numpy as np
import pytest
import xarray as xr

import dlnode as dln
from dlnode.errors import DatasetError

pytest.importorskip("distributed")
da = pytest.importorskip("dask.array")
from dask.callbacks import Callback  # noqa: E402
from distributed import Client, LocalCluster  # noqa: E402

pytestmark = pytest.mark.slow

BASE = {
    "problem": {"kind": "factorization", "shape": [4, 4], "rank": 2, "seed": 1},
    "integrate": {"t1": 2.0, "saveat": 10},
    "execution": {"batch": 1},
}
GRIDS = {
    "lr": {"depth": [1, 2], "scale": [0.1], "seed": [0, 1], "method": "gd", "lr": [0.1, 0.05]},
    "method": {"depth": [1, 2], "scale": [0.1], "seed": [0, 1], "method": ["tsit5", "dopri5"]},
}
# Lanczos (ARPACK eigsh, tol=0: to machine precision) may differ from one call to the next on the same cell in the
# last bits of the sharpness: its dot products and Hessian-vector products sum in an order that depends on where the
# arrays lie in memory (measured: 3e-17 relative between Dask's worker threads and the main thread; a fresh-clone CI
# run saw it between two main-thread calls). Every other analysis is bitwise equal.
ITERATIVE = {"sharpness": 1e-14}
ANALYSES = ("effective_rank", "numerical_rank", "stages", "escape_times", "recovery_error", "log_volume",
            "sharpness", "layer_alignment")  # fmt: skip
PLOTS = {  # figure → the store variables it may read
    "loss": {"loss"},
    "singular_values": {"singular_values"},
    "rank_staircase": {"singular_values", "loss"},
    "effective_rank": {"singular_values"},
    "sharpness": {"weights_final"} | {f"problem_{n}" for n in ("target",)},
}


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """{swept dim: path of its store}, made by a real sweep (cells in worker threads of this process)."""
    root = tmp_path_factory.mktemp("swept")
    cluster_kw = {"n_workers": 1, "threads_per_worker": 1, "processes": False, "dashboard_address": None}
    with LocalCluster(silence_logs=logging.ERROR, **cluster_kw) as cluster, Client(cluster) as client:
        for dim, grid in GRIDS.items():
            dln.sweep({**BASE, "grid": grid}, root / f"{dim}.zarr", client=client, progress=False)
    return {dim: root / f"{dim}.zarr" for dim in GRIDS}


def _lazy(result):
    arrays = result.data_vars.values() if isinstance(result, xr.Dataset) else [result]
    return all(isinstance(a.data, da.Array) for a in arrays)


@pytest.mark.parametrize("dim", list(GRIDS))
def test_validate_accepts_the_swept_axes(stores, dim):
    ds = dln.open(stores[dim])
    assert ds["loss"].dims == ("depth", "scale", "seed", dim, "time")
    dln.validate(ds)
    dln.validate(ds.load())
    swapped = ds.assign(loss=ds["loss"].transpose("depth", "scale", "seed", "time", dim))
    with pytest.raises(DatasetError, match=rf"'loss' must have dims \('depth', 'scale', 'seed', '{dim}', 'time'\)"):
        dln.validate(swapped)
    with pytest.raises(DatasetError, match=f"swept dim '{dim}' must have its coordinate"):
        dln.validate(ds.drop_vars(dim))


@pytest.mark.parametrize("dim", list(GRIDS))
def test_analyses_on_swept_axes_lazy_equal_eager_and_per_slice(stores, dim):
    lazy = dln.open(stores[dim])
    eager = dln.open(stores[dim]).load()
    for name in ANALYSES:
        result = getattr(lazy.dln, name)()
        assert _lazy(result), name  # still Dask arrays before .compute()
        expected = getattr(eager.dln, name)()
        assert dim in expected.dims, name
        _assert_agree(name, result.compute(), expected)
        for value in eager[dim].values:  # a swept axis is one more broadcast dim: each slice on its own agrees
            alone = getattr(eager.sel({dim: [value]}).dln, name)()
            _assert_agree(name, alone, expected.sel({dim: [value]}))


def _assert_agree(name, got, expected):
    if name in ITERATIVE:
        xr.testing.assert_allclose(got, expected, rtol=ITERATIVE[name], atol=0)
    else:
        xr.testing.assert_identical(got, expected)


def test_log_volume_lazy_in_any_chunking_equals_eager(stores):
    from dlnode.flows.endtoend import log_volume

    path = stores["lr"]
    eager = dln.open(path).load().dln.log_volume()
    for chunks in ({}, {"depth": 2, "seed": 2}):  # the store's own chunks (one cell), then every depth in one block
        lazy = dln.open(path, chunks=chunks).dln.log_volume()
        assert isinstance(lazy.data, da.Array)
        xr.testing.assert_identical(lazy.compute(), eager)
    ds = dln.open(path).load()
    cell = {"depth": 2.0, "scale": 0.1, "seed": 1, "lr": 0.05}
    np.testing.assert_array_equal(eager.sel(cell).values,
                                  np.asarray(log_volume(ds["singular_values"].sel(cell).values, 2)))  # fmt: skip
    assert np.isfinite(eager.sel(cell).values[1:]).all()


def _lines(fig):
    return [np.asarray(line.get_xydata()) for ax in fig.axes for line in ax.get_lines()]


@pytest.mark.parametrize("kind", list(PLOTS))
def test_plots_load_only_what_they_draw(stores, kind):
    lazy = dln.open(stores["lr"]).sel(lr=0.1)
    names = set(lazy.variables)
    read = []

    def start(dsk):
        read.append({m for key in dsk for m in re.findall(r"open_dataset-([a-z_]+)-", str(key)) if m in names})

    with Callback(start=start):
        fig = getattr(lazy.dln.plot, kind)()
    assert set().union(*read) <= PLOTS[kind], read
    if kind == "singular_values":  # one panel (depth × scale) per load
        assert len(read) == lazy.sizes["depth"] * lazy.sizes["scale"]
    assert all(isinstance(lazy[v].data, da.Array) for v in ("loss", "singular_values", "product"))  # not loaded
    eager = getattr(dln.open(stores["lr"]).load().sel(lr=0.1).dln.plot, kind)()
    got, expected = _lines(fig), _lines(eager)
    assert len(got) == len(expected) > 0
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(("dim", "fix"), [("lr", "ds.sel(lr=0.1)"), ("method", "ds.sel({'method': 'tsit5'})")])
def test_plots_refuse_a_swept_axis_in_one_line(stores, dim, fix):
    ds = dln.open(stores[dim])
    for kind in PLOTS:
        with pytest.raises(ValueError, match=re.escape(f"swept dim '{dim}' (2 values)")) as info:
            getattr(ds.dln.plot, kind)()
        assert str(info.value).endswith(f"select one first, e.g. {fix}") and "\n" not in str(info.value)
    selected = eval(fix, {"ds": ds})  # the fix the message names works
    assert _lines(selected.dln.plot.loss())


def test_run_record_accounts_for_the_tasks_time(stores):
    """Each run's record says how many tasks finished and where their time went (summed over tasks)."""
    for path in stores.values():
        (record,) = json.loads(dln.open(path).attrs["sweep_runs"])
        spent = record["task_seconds"]
        assert record["tasks_done"] == record["computed"] == 8  # batch 1: one cell a task
        assert set(spent) == {"wall_s", "integrate_s", "write_s", "compile_s", "thread_cpu_s", "process_cpu_s"}
        # one worker; the seconds are rounded to milliseconds in the record, so their sum may pass the wall by that
        assert 0 < spent["integrate_s"] + spent["write_s"] <= spent["wall_s"] + 2e-3
        assert spent["wall_s"] <= record["wall_s"]
        assert spent["compile_s"] <= spent["integrate_s"]


def _upkeep_config():
    import dask

    from dlnode.sweeps.sweep import LOCAL_CLUSTER_CONFIG

    return {key: dask.config.get(key) for key in LOCAL_CLUSTER_CONFIG}


def test_local_cluster_workers_run_without_profiler_or_fast_monitors():
    """The cluster `dln.sweep` starts has no dashboard: its worker processes get the config that turns Dask's
    profiler off and slows its monitors (benchmarks/sweep_scaling.py measures what that saves)."""
    from dlnode.sweeps.sweep import LOCAL_CLUSTER_CONFIG, local_cluster

    with local_cluster(1) as cluster, Client(cluster) as client:
        (got,) = client.run(_upkeep_config).values()
        assert got == LOCAL_CLUSTER_CONFIG
    assert _upkeep_config() != LOCAL_CLUSTER_CONFIG  # this process's own config is left as it was


def test_store_made_again_at_the_same_path_is_written_in_full(tmp_path):
    """Workers keep the arrays of the stores they wrote open (by path, config and chunks): a store removed and
    made again at that path, with the same config or another, is still written cell for cell."""
    import shutil

    path, other = tmp_path / "again.zarr", tmp_path / "other.zarr"
    first = {**BASE, "grid": GRIDS["lr"]}
    second = {**BASE, "grid": {**GRIDS["lr"], "seed": [2, 3]}}
    cluster_kw = {"n_workers": 1, "threads_per_worker": 1, "processes": False, "dashboard_address": None}
    with LocalCluster(silence_logs=logging.ERROR, **cluster_kw) as cluster, Client(cluster) as client:
        before = dln.sweep(first, path, client=client, progress=False).load()
        for config in (first, second):
            shutil.rmtree(path)
            again = dln.sweep(config, path, client=client, progress=False).load()
            fresh = dln.sweep(config, other, client=client, progress=False).load()
            shutil.rmtree(other)
            assert (again["status"] != dln.Status.PENDING).all()
            for name in ("loss", "product", "weights_final", "status", "num_steps"):
                xr.testing.assert_identical(again[name], fresh[name])
        xr.testing.assert_identical(dln.sweep(first, other, client=client, progress=False).load()["loss"],
                                    before["loss"])  # fmt: skip


def test_compare_a_selection_of_the_swept_lr_against_the_flow(stores):
    """`dln.compare` of a cell selected at one lr of the sweep equals its comparison as a plain GD run (the step size
    comes from the lr coordinate: the store's attrs['lr'] is 'swept')."""
    ds = dln.open(stores["lr"]).load().isel(seed=[0])
    problem, times = dln.problem_from(ds), ds["time"].values[1:]
    run = {"depth": [1, 2], "scale": [0.1], "seed": [0], "t1": 2.0, "saveat": times, "progress": False}
    flow = dln.integrate(problem, method="tsit5", rtol=1e-10, atol=1e-12, **run)
    for lr in (0.1, 0.05):
        gd = dln.integrate(problem, method="gd", lr=lr, rtol=ds.attrs["rtol"], atol=ds.attrs["atol"], **run)
        got, expected = dln.compare(ds.sel(lr=lr), flow), dln.compare(gd, flow)
        assert got.attrs["lr_a"] == expected.attrs["lr_a"] == lr
        assert set(got.data_vars) == set(expected.data_vars) and expected.data_vars
        for name in expected.data_vars:
            np.testing.assert_array_equal(got[name].values, expected[name].values, err_msg=name)


def test_cli_plot_draws_one_value_of_a_swept_axis_with_sel(stores, tmp_path):
    from typer.testing import CliRunner

    from dlnode.cli import app

    runner = CliRunner()
    out = tmp_path / "lr.png"
    done = runner.invoke(app, ["plot", str(stores["lr"]), "--kind", "loss", "--sel", "lr=0.05", "-o", str(out)])
    assert done.exit_code == 0, done.output
    assert out.stat().st_size > 0
    done = runner.invoke(app, ["plot", str(stores["method"]), "-k", "loss", "--sel", "method=dopri5", "-o",
                               str(tmp_path / "m.png")])  # fmt: skip
    assert done.exit_code == 0, done.output
    refused = {  # arguments → the one line it gets (exit 2, nothing written)
        (): "--sel: the dataset has the swept dim 'lr' (2 values: 0.1, 0.05), which the figure does not draw; "
        "pass e.g. --sel lr=0.1",
        ("--sel", "lr=0.3"): "--sel lr=0.3: lr has the values 0.1, 0.05; pass one of them",
        ("--sel", "lr=fast"): "--sel lr=fast: lr has the values 0.1, 0.05; pass one of them",
        ("--sel", "method=tsit5"): "--sel method=tsit5: the dataset has no swept dim 'method' (it has ['lr'])",
        (
            "--sel",
            "depth=2",
        ): "--sel must be DIM=VALUE with DIM one of ['flow', 'init', 'method', 'lr', 'batch', 'noise']",
        ("--sel", "lr"): "--sel must be DIM=VALUE",
        ("--sel", "lr=0.1", "--sel", "lr=0.05"): "--sel gives 'lr' twice ('0.1' and '0.05')",
    }
    for args, line in refused.items():
        target = tmp_path / "refused.png"
        done = runner.invoke(app, ["plot", str(stores["lr"]), "-k", "loss", *args, "-o", str(target)])
        assert done.exit_code == 2, (args, done.output)
        assert done.output.count("\n") == 1 and f"error: {line}" in done.output, (args, done.output)
        assert not target.exists()


def test_cli_info_shows_where_the_tasks_time_went(stores):
    from typer.testing import CliRunner

    from dlnode.cli import app

    done = CliRunner().invoke(app, ["info", str(stores["lr"])])
    assert done.exit_code == 0, done.output
    (record,) = json.loads(dln.open(stores["lr"]).attrs["sweep_runs"])
    (line,) = [ln for ln in done.output.splitlines() if ln.startswith("run ")]
    assert f"; {record['tasks_done']} tasks spent " in line
    assert f"integrate {record['task_seconds']['integrate_s']:g} s" in line
    assert "\nrtol: " not in done.output and "\nt1: " in done.output  # a GD grid: fixed steps, no tolerance applies
