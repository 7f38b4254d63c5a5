"""Sweeps on a real Dask cluster: the store equals plain `integrate` calls bitwise, survives a killed worker and a
killed client, refuses foreign stores, and opens lazily for the analyses.

One local cluster of two worker processes serves the module: the workers keep their compiled solvers between
tests. Every reference value is a plain `dln.integrate` call on the same cell in this process.
"""

import importlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import dlnode as dln
from dlnode.run.plan import default_rtol

pytest.importorskip("distributed")
from distributed import Client, LocalCluster  # noqa: E402

pytestmark = pytest.mark.slow

CONFIG = {
    "problem": {"kind": "factorization", "shape": [4, 4], "rank": 2, "seed": 1},
    "grid": {"depth": [1, 2], "scale": [0.1, 0.3], "seed": [0, 1], "method": "tsit5"},
    "integrate": {"t1": 5.0, "saveat": 10},
    "execution": {"batch": 1},
}
ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS="1")
NONDETERMINISTIC = ("wall_time",)  # seconds measured, the only value two identical runs do not share
PER_LAYER = ("weights_final", "weights")  # padded with NaN beyond a cell's depth in the store


def _config(**grid):
    return {**CONFIG, "grid": {**CONFIG["grid"], **grid}}


@pytest.fixture(scope="module")
def client():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with Client(cluster) as c:
            yield c


@pytest.fixture(scope="module")
def reference():
    """Each cell of CONFIG's problem by its own `integrate` call, on the store's time axis and with the store's
    rtol and atol (resolved once over the whole grid), keyed by cell."""
    cache = {}

    def cell(ds_store, depth, scale, seed):
        key = (depth, scale, seed)
        if key not in cache:
            problem = dln.problem_from(ds_store)  # the store's own problem, rebuilt from its variables
            cache[key] = dln.integrate(problem, depth=int(depth), scale=[scale], seed=[seed], method="tsit5",
                                       t1=5.0, saveat=ds_store["time"].values[1:], rtol=ds_store.attrs["rtol"],
                                       atol=ds_store.attrs["atol"], progress=False)  # fmt: skip
        return cache[key]

    return cell


def assert_equals_serial(store_ds: xr.Dataset, reference) -> None:
    """Every cell of the store equals its own `integrate` call bitwise, in every variable (NONDETERMINISTIC apart)."""
    store_ds = store_ds.load()
    assert (store_ds["status"] != dln.Status.PENDING).all()
    for depth in store_ds.depth.values:
        for scale in store_ds.scale.values:
            for seed in store_ds.seed.values:
                ref = reference(store_ds, depth, scale, seed).isel(depth=0, scale=0, seed=0)
                got = store_ds.sel(depth=depth, scale=scale, seed=seed)
                compared = [n for n in ref.data_vars if n not in NONDETERMINISTIC]
                assert set(compared) - set(PER_LAYER) >= {"loss", "product", "status", "num_steps"}
                for name in compared:
                    values, n = got[name].values, int(depth)
                    if name in PER_LAYER:  # layers beyond this depth are padding
                        values, padding = values[..., :n, :, :], values[..., n:, :, :]
                        assert np.isnan(padding).all(), name
                    np.testing.assert_array_equal(values, ref[name].values, err_msg=name)
                np.testing.assert_array_equal(got["time"].values, ref["time"].values)


def assert_attrs_as_integrate(store_ds: xr.Dataset, ref: xr.Dataset) -> None:
    """The store carries every attr of an `integrate` dataset (its per-call timings apart) with the same value:
    one builder makes both; ``method`` is the method that ran in both."""
    from dlnode.sweeps.store import PER_CALL_ATTRS

    missing = set(ref.attrs) - set(PER_CALL_ATTRS) - set(store_ds.attrs)
    assert not missing, missing
    own = {"created", "saveat"}  # the store's creation; its config's save count (a task passes the times)
    for key in set(ref.attrs) - set(PER_CALL_ATTRS) - own:
        a, b = store_ds.attrs[key], ref.attrs[key]
        assert a == b or (isinstance(a, float) and np.isnan(a) and np.isnan(b)), (key, a, b)
    assert store_ds.attrs["method"] == store_ds.attrs["method_requested"] == "tsit5"
    assert store_ds.attrs["saveat"] == CONFIG["integrate"]["saveat"]


def _runs(path):
    return json.loads(dln.open(path).attrs["sweep_runs"])


def test_two_workers_equal_serial_bitwise(client, reference, tmp_path):
    ds = dln.sweep(CONFIG, tmp_path / "s.zarr", client=client, progress=False)
    assert ds["loss"].chunks is not None  # Dask-backed, one chunk per cell
    assert ds["loss"].data.numblocks[:3] == (2, 2, 2)
    assert ds.attrs["dlnode_format"] == "dlnode-dataset" and ds.attrs["dlnode_format_version"] == 1
    assert_equals_serial(ds, reference)
    assert_attrs_as_integrate(ds, reference(ds, 1.0, 0.1, 0))
    counted = dln.integrate(dln.problem_from(ds.load()), depth=1, scale=0.1, seed=0, method="tsit5", t1=5.0,
                            saveat=10, progress=False)  # fmt: skip
    problem, scales = dln.problem_from(ds.load()), CONFIG["grid"]["scale"]
    rtol = default_rtol(problem, [1, 2], scales)  # integrate's defaults over the whole grid
    assert (ds.attrs["rtol"], ds.attrs["atol"]) == (rtol, 1e-3 * rtol * min(scales))
    np.testing.assert_array_equal(ds["time"].values, counted["time"].values)  # integrate's own grid for saveat=10
    again = dln.sweep(CONFIG, tmp_path / "s.zarr", client=client, progress=False)  # nothing left to compute
    xr.testing.assert_identical(again.load(), ds.load())
    assert [r["computed"] for r in _runs(tmp_path / "s.zarr")] == [8]


def _arm_kill(marker: str) -> None:
    """On a worker: the first task to write (of any worker) writes its data, not its status, and dies."""
    sweep_module, store_module = (
        importlib.import_module("dlnode.sweeps.sweep"),
        importlib.import_module("dlnode.sweeps.store"),
    )
    original = store_module.write_cells

    def dying(path, layout, task, arrays, pending, names=None):
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return original(path, layout, task, arrays, pending, names)
        original(path, layout, task, arrays, pending, [n for n in layout.variables() if n != "status"])
        os._exit(1)

    sweep_module.write_cells = dying


def test_killed_worker_mid_task_every_cell_once(client, reference, tmp_path):
    marker = tmp_path / "killed"
    client.run(_arm_kill, str(marker))
    ds = dln.sweep(CONFIG, tmp_path / "k.zarr", client=client, progress=False)
    assert marker.exists()  # a worker did die between its data and its status
    assert_equals_serial(ds, reference)
    assert [r["computed"] for r in _runs(tmp_path / "k.zarr")] == [8]  # each cell reported once: Dask's retry


def _cli(args, **kwargs):
    """`dlnode ARGS` as from a terminal: a process a shell starts in the background inherits SIGINT ignored, and
    so would this one when the suite runs so; a terminal's foreground command has the default handler."""
    code = ("import signal; signal.signal(signal.SIGINT, signal.default_int_handler)\n"
            "from dlnode.cli import main; main()")  # fmt: skip
    return subprocess.Popen([sys.executable, "-c", code, *args], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)  # fmt: skip


def _done(path) -> int:
    import zarr

    try:
        status = zarr.open_group(os.fspath(path), mode="r")["status"][...]
    except (FileNotFoundError, KeyError, ValueError, zarr.errors.GroupNotFoundError):
        return 0
    return int((status != dln.Status.PENDING).sum())


def _write_toml(path, seeds) -> Path:
    path.write_text(
        '[problem]\nkind = "factorization"\nshape = [4, 4]\nrank = 2\nseed = 1\n'
        f'[grid]\ndepth = [1, 2]\nscale = [0.1, 0.3]\nseed = {list(seeds)}\nmethod = "tsit5"\n'
        "[integrate]\nt1 = 5.0\nsaveat = 10\n[execution]\nbatch = 1\n"
    )
    return path


def _stop_mid_sweep(proc, store, sig) -> int:
    t0 = time.monotonic()
    while (done := _done(store)) == 0 and proc.poll() is None and time.monotonic() - t0 < 300:
        time.sleep(0.01)
    os.kill(proc.pid, sig)
    return done


def _signal_state(pid) -> str:
    """The signal masks of a process (blocked, ignored, caught), from /proc, to say why a signal did nothing."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError as exc:
        return f"no /proc status ({exc})"
    return " ".join(line.replace("\t", "") for line in lines if line.startswith(("SigBlk", "SigIgn", "SigCgt")))


def test_killed_client_rerun_completes_the_store(client, reference, tmp_path):
    seeds = range(12)
    config = _write_toml(tmp_path / "sweep.toml", seeds)
    store = tmp_path / "c.zarr"
    proc = _cli(["run", str(config), "-o", str(store), "--scheduler", client.scheduler.address])
    done = _stop_mid_sweep(proc, store, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert 0 < done < 48, f"the client was to be killed mid-sweep; {done} of 48 cells were done"
    ds = dln.sweep(config, store, client=client, progress=False)
    assert_equals_serial(ds, reference)


def test_ctrl_c_stops_cleanly_and_resumes(client, reference, tmp_path):
    # 160 cells: with warm workers 48 tiny cells can all finish between the first one and the Ctrl-C
    config = _write_toml(tmp_path / "sweep.toml", range(40))
    store = tmp_path / "i.zarr"
    here = (signal.getsignal(signal.SIGINT), _signal_state("self"))
    proc = _cli(["run", str(config), "-o", str(store), "--scheduler", client.scheduler.address])
    t0 = time.monotonic()
    while _done(store) == 0 and proc.poll() is None and time.monotonic() - t0 < 300:
        time.sleep(0.01)
    there = _signal_state(proc.pid)  # a child that ignores or blocks SIGINT cannot be stopped by it
    os.kill(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    lines = [line for line in err.splitlines() if line.startswith("interrupted")]
    assert proc.returncode == 130, f"{err[-2000:]}\nchild at the SIGINT: {there}\npytest: {here}"
    assert len(lines) == 1 and "run the same command to finish" in lines[0]
    assert 0 < int(lines[0].split()[1]) <= 160
    assert_equals_serial(dln.sweep(config, store, client=client, progress=False), reference)


class _KillOnCollect:
    """An object whose finaliser sends this process SIGINT: a Ctrl-C that lands inside a finaliser, where Python
    cannot raise a KeyboardInterrupt (it reports it as unraisable and goes on)."""

    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)


class _Completed:
    """A stand-in for distributed's as_completed: `n` results, one per poll; the first poll drops a _KillOnCollect."""

    def __init__(self, n, kill_at=3):
        self.left, self.kill_at = n, kill_at

    def is_empty(self):
        return self.left == 0

    def next_batch(self, block=True):
        if self.left == self.kill_at:
            _KillOnCollect()  # collected at once, in this frame: the SIGINT arrives inside its __del__
        self.left -= 1
        return [self.left]


def test_a_ctrl_c_inside_a_finaliser_still_stops_the_wait():
    from dlnode.sweeps.sweep import _until_interrupted

    seen, before = [], signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        for result in _until_interrupted(_Completed(5)):
            seen.append(result)
    assert seen == [4, 3, 2]  # the poll that received the SIGINT hands over its result, then the wait stops
    assert signal.getsignal(signal.SIGINT) is before  # the handler before is back


def test_a_ctrl_c_with_the_last_results_does_not_call_a_complete_sweep_interrupted():
    from dlnode.sweeps.sweep import _until_interrupted

    seen = list(_until_interrupted(_Completed(5, kill_at=1)))  # the SIGINT comes with the last poll
    assert seen == [4, 3, 2, 1, 0]  # every result handed over, and no KeyboardInterrupt: nothing was left to stop


def test_changed_config_and_foreign_directories_are_refused(client, tmp_path):
    store = tmp_path / "s.zarr"
    first = dln.sweep(CONFIG, store, client=client, progress=False).load()
    rebatched = {**CONFIG, "execution": {"batch": 4}}  # how cells make tasks is no part of the config: accepted
    xr.testing.assert_identical(dln.sweep(rebatched, store, client=client, progress=False).load(), first)
    assert [r["computed"] for r in _runs(store)] == [8]  # nothing recomputed: the store's chunks are kept
    with pytest.raises(ValueError, match=r"different config \(keys differ: grid.scale, integrate.t1\)"):
        dln.sweep({**_config(scale=[0.2, 0.3]), "integrate": {"t1": 6.0, "saveat": 10}}, store, client=client)
    foreign = tmp_path / "foreign.zarr"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="exists and is not a dlnode sweep store"):
        dln.sweep(CONFIG, foreign, client=client)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]  # untouched
    with pytest.raises(ValueError, match="path ending in .zarr"):
        dln.sweep(CONFIG, tmp_path / "x.nc", client=client)


def test_lazy_analysis_equals_eager(client, tmp_path):
    store = tmp_path / "s.zarr"
    lazy = dln.sweep(CONFIG, store, client=client, progress=False)
    opened = dln.open(store)  # a sweep store opens lazily too: one chunk per task, nothing loaded
    assert all(opened[v].chunks is not None for v in ("loss", "product", "status"))
    xr.testing.assert_identical(opened.compute(), lazy.compute())
    eager = opened.load()
    for name in ("effective_rank", "numerical_rank", "stages", "escape_times", "recovery_error"):
        result = getattr(lazy.dln, name)()
        arrays = result.data_vars.values() if isinstance(result, xr.Dataset) else [result]
        assert all(a.chunks is not None for a in arrays), name  # computed lazily, chunk by chunk
        xr.testing.assert_identical(result.compute(), getattr(eager.dln, name)())
    for function in (dln.stages, dln.escape_times):  # the module functions as the accessor
        result = function(lazy)
        arrays = result.data_vars.values() if isinstance(result, xr.Dataset) else [result]
        assert all(a.chunks is not None for a in arrays), function.__name__
        xr.testing.assert_identical(result.compute(), function(eager))


def test_cli_info_and_export(client, tmp_path):
    from typer.testing import CliRunner

    from dlnode.cli import app

    store = tmp_path / "s.zarr"
    dln.sweep(CONFIG, store, client=client, progress=False)
    runner = CliRunner()
    info = runner.invoke(app, ["info", str(store)])
    assert info.exit_code == 0, info.output
    assert "grid depth (2): 1, 2" in info.output and "cells: 8, done 8, to compute 0" in info.output
    assert "status: finished 8" in info.output
    assert "batch: None" not in info.output and "noise: None" not in info.output  # what does not apply is not shown
    assert "rtol: " in info.output  # an adaptive method's grid states its tolerances (a fixed-step grid's does not)
    out = tmp_path / "out.nc"
    assert runner.invoke(app, ["export", str(store), str(out)]).exit_code == 0
    xr.testing.assert_identical(dln.open(out), dln.open(store))
    refused = runner.invoke(app, ["export", str(store), str(out)])
    assert refused.exit_code == 2 and "already exists" in refused.output and "--overwrite" in refused.output
    assert runner.invoke(app, ["export", str(store), str(out), "--overwrite"]).exit_code == 0


def test_gradient_descent_lr_axis(client, tmp_path):
    """A swept lr becomes a dim; each GD cell equals its own integrate call, on the store's times (t = k lr)."""
    config = {**CONFIG, "grid": {"depth": [2], "scale": [0.1], "seed": [0], "method": "gd", "lr": [0.1, 0.05]},
              "integrate": {"t1": 2.0, "saveat": 10}}  # fmt: skip
    ds = dln.sweep(config, tmp_path / "gd.zarr", client=client, progress=False).load()
    assert ds["loss"].dims == ("depth", "scale", "seed", "lr", "time") and ds.attrs["method"] == "gd"
    for lr in (0.1, 0.05):
        ref = dln.integrate(dln.problem_from(ds), depth=2, scale=[0.1], seed=[0], method="gd", lr=lr, t1=2.0,
                            saveat=ds["time"].values[1:], rtol=ds.attrs["rtol"], atol=ds.attrs["atol"],
                            progress=False)  # fmt: skip
        got = ds.sel(lr=lr)
        np.testing.assert_allclose(ref["time"].values, ds["time"].values, rtol=1e-12, atol=0)
        for name in ("loss", "product", "status", "num_steps"):
            np.testing.assert_array_equal(got[name].values, ref[name].values, err_msg=name)
        np.testing.assert_array_equal(got["num_steps"].values, round(2.0 / lr))  # GD: t1 / lr steps exactly


def test_a_modified_flow_cell_that_ends_past_two_over_lr_is_reported_by_the_sweep(client, tmp_path):
    """As in `integrate`: a modified-flow cell that settles where S ≥ 2/lr (GD at that lr cannot stay there) is
    named in one warning line, with a lower bound on S (at most the store's final weights' exact sharpness); the
    cell at the small lr is not (negative control)."""
    config = {"problem": {"kind": "matrix_sensing", "shape": [6, 6], "rank": 2, "measurements": 40, "seed": 0},
              "grid": {"depth": [2], "scale": [0.1], "seed": [0], "flow": "modified", "lr": [0.02, 0.3]},
              "integrate": {"t1": 60.0, "saveat": 4}}  # fmt: skip
    with pytest.warns(UserWarning, match="modified-flow cells") as caught:
        ds = dln.sweep(config, tmp_path / "m.zarr", client=client, progress=False).load()
    (message,) = [str(w.message) for w in caught if "modified-flow" in str(w.message)]
    assert "1 of 2 modified-flow cells of this sweep end where the sharpness S is above 2/lr = 6.66667" in message
    assert "lr = 0.3 only while" in message
    exact = ds.sel(lr=[0.02, 0.3]).dln.sharpness(exact=True).isel(depth=0, scale=0, seed=0).values
    bound = float(re.search(r"S ≥ ([0-9.]+)", message).group(1))
    assert exact[0] < 2 / 0.02 and 2 / 0.3 < bound <= exact[1]


def test_end_to_end_to_depth_infinity(client, tmp_path):
    """The end-to-end flow at depth 2 and ∞ (scale_of='product'): cells equal integrate's, coordinate t included."""
    config = {**CONFIG, "grid": {"depth": [2, "inf"], "scale": [0.1], "seed": [0], "method": "tsit5",
                                 "flow": "end_to_end", "init": "balanced"},
              "integrate": {"t1": 5.0, "saveat": 10, "scale_of": "product"}}  # fmt: skip
    ds = dln.sweep(config, tmp_path / "e2e.zarr", client=client, progress=False).load()
    ref = dln.integrate(dln.problem_from(ds), depth=[2, "inf"], scale=[0.1], seed=[0], method="tsit5",
                        flow="end_to_end", init="balanced", scale_of="product", t1=5.0, saveat=ds["time"].values[1:],
                        rtol=ds.attrs["rtol"], atol=ds.attrs["atol"], progress=False)  # fmt: skip
    xr.testing.assert_identical(ds["t"], ref["t"])
    for name in ("loss", "product", "singular_values", "status", "weights_final"):
        np.testing.assert_array_equal(ds[name].values, ref[name].values, err_msg=name)


def test_a_sweep_without_t1_runs_until_converged(client, tmp_path):
    """t1 left out, saveat a count: the time axis integrate plans for the whole grid, every cell stopping when it
    converges, each equal to an integrate call on that axis (the cells converge at their own times)."""
    config = {**CONFIG, "integrate": {"saveat": 20}}
    ds = dln.sweep(config, tmp_path / "until.zarr", client, progress=False).load()
    assert (ds["status"] == dln.Status.CONVERGED).all()
    problem = dln.problem_from(ds)
    assert ds["time"].values[-1] > float(ds["t_final"].max())  # the planned horizon holds every convergence
    for depth in ds.depth.values:
        for scale in ds.scale.values:
            for seed in ds.seed.values:  # one cell a task (batch 1): one cell a call, bitwise
                one = dln.integrate(problem, depth=int(depth), scale=[scale], seed=[seed], method="tsit5",
                                    saveat=ds["time"].values[1:], rtol=ds.attrs["rtol"], atol=ds.attrs["atol"],
                                    progress=False).isel(depth=0, scale=0, seed=0)  # fmt: skip
                got = ds.sel(depth=depth, scale=scale, seed=seed)
                assert int(one["status"]) == int(got["status"])
                np.testing.assert_array_equal(one["loss"].values, got["loss"].values)


def test_a_noisy_sweep_has_the_path_dim_and_equals_integrate(client, tmp_path):
    """The config takes every argument integrate takes: label-noise GD on a diagonal network over a grid of label
    noise δ and 3 noise paths, with the top Hessian eigenvalues; each cell of the store, every path, equals its own
    integrate call bitwise."""
    config = {
        "problem": {"kind": "sparse_regression", "d": 6, "n": 4, "sparsity": 2, "seed": 1},
        "grid": {"depth": [2], "scale": [0.1], "seed": [0], "method": "label_noise", "lr": [0.05], "noise": [0.2, 0.5]},
        "integrate": {"t1": 1.0, "saveat": 6, "network": "diagonal", "paths": 3, "sharpness": 2},
        "execution": {"batch": 1},
    }
    ds = dln.sweep(config, tmp_path / "noise.zarr", client=client, progress=False).load()
    assert ds["loss"].dims == ("depth", "scale", "seed", "path", "noise", "time")
    assert ds["sharpness"].dims == ("depth", "scale", "seed", "path", "noise", "time", "eig")
    assert ds.attrs["network"] == "diagonal" and ds.attrs["label_noise"] == "swept"
    for noise in (0.2, 0.5):
        ref = dln.integrate(dln.problem_from(ds), depth=2, scale=[0.1], seed=[0], method="label_noise", lr=0.05,
                            t1=1.0, saveat=ds["time"].values[1:], network="diagonal", noise=noise, paths=3,
                            sharpness=2, rtol=ds.attrs["rtol"], atol=ds.attrs["atol"], progress=False)  # fmt: skip
        got = ds.sel(noise=noise)
        for name in ("loss", "product", "sharpness", "status", "num_steps", "weights_final"):
            np.testing.assert_array_equal(got[name].values, ref[name].values, err_msg=name)
        assert np.ptp(got["loss"].isel(time=-1).values) > 0  # the paths differ: the noise is per path
