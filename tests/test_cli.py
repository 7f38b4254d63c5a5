"""The `dlnode` command from a fresh process: the demo writes a dataset and a table; info describes it."""

import os
import subprocess
import sys

import xarray as xr

import dlnode as dln

ENV = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}


def _run(*args):
    return subprocess.run([sys.executable, "-c", "from dlnode.cli import main; main()", *args], env=ENV,
                          capture_output=True, text=True, timeout=600)  # fmt: skip


def test_demo_quick_runs_the_flagship_study_and_prints_its_table(tmp_path):
    """`dlnode demo --quick` is the arora2019 study at its smoke-test size: dataset, figures, a passing table."""
    proc = _run("demo", "--quick", "-o", str(tmp_path))
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "Arora, Cohen, Hu, Luo (2019)" in proc.stdout and "checks passed" in proc.stdout
    assert "FAIL" not in proc.stdout
    ds = dln.open(tmp_path / "data" / "arora2019.nc")
    assert ds.attrs["study"] == "arora2019" and list(ds.depth.values) == [1.0, 3.0]
    for kind in ("spectra", "rank-vs-depth"):
        size = (tmp_path / "figures" / f"arora2019-{kind}.png").stat().st_size
        assert 10_000 < size < 300_000
    info = _run("info", str(tmp_path / "data" / "arora2019.nc"))
    assert info.returncode == 0, info.stderr
    assert "dlnode study 'arora2019'" in info.stdout and "effective_rank" in info.stdout
    again = _run("demo", "--quick", "-o", str(tmp_path))
    assert again.returncode == 2 and "--overwrite" in again.stderr


def test_info_and_plot_describe_a_stored_run(tmp_path):
    prob = dln.MatrixCompletion.random(shape=(6, 6), rank=1, observed=20, seed=0)
    out = tmp_path / "run.nc"
    dln.save(dln.integrate(prob, depth=[1, 2], scale=0.1, saveat=20, progress=False), out)
    ds = dln.open(out)
    dln.validate(ds)
    info = _run("info", str(out))
    assert info.returncode == 0, info.stderr
    assert "status: converged 2 (of 2 runs)\n" in info.stdout and "matrix_completion" in info.stdout
    assert "rtol: " in info.stdout and "batch: " not in info.stdout  # an adaptive run: its tolerances, no noise
    xr.testing.assert_identical(ds, dln.open(out))
    fig = tmp_path / "sv.png"
    proc = _run("plot", str(out), "--kind", "singular_values", "-o", str(fig))
    assert proc.returncode == 0, proc.stderr
    assert fig.stat().st_size > 10_000
    bad = _run("plot", str(out), "--kind", "pie")
    assert bad.returncode == 2 and "--kind must be one of" in bad.stderr


def test_info_on_a_missing_file_is_a_one_line_error(tmp_path):
    proc = _run("info", str(tmp_path / "nothing.nc"))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "path does not exist" in proc.stderr


def test_bench_runs_the_benchmark_module_in_a_fresh_interpreter(tmp_path, monkeypatch):
    """`dlnode bench` starts `python -m benchmarks.<module>` (which pins BLAS threads before numpy loads) in the
    checkout, and a failing module ends in a one-line error."""
    from typer.testing import CliRunner

    from dlnode import cli

    calls = []

    def fake_run(cmd, cwd, check):
        calls.append((cmd, cwd))
        return subprocess.CompletedProcess(cmd, 1 if "benchmarks.stiff_targets" in cmd else 0)

    monkeypatch.setattr(cli.subprocess, "run", fake_run)
    runner = CliRunner()
    ok = runner.invoke(cli.app, ["bench", "--quick", "--out", str(tmp_path)])
    assert ok.exit_code == 0, ok.output
    cmd, cwd = calls[-1]
    assert cmd == [sys.executable, "-m", "benchmarks.run", "--quick", "--out", str(tmp_path.resolve())]
    assert (cwd / "benchmarks" / "__init__.py").exists()
    failed = runner.invoke(cli.app, ["bench", "--targets", "--out", str(tmp_path)])
    assert failed.exit_code == 2
    assert calls[-1][0][:3] == [sys.executable, "-m", "benchmarks.stiff_targets"]
    assert "benchmarks.stiff_targets exited with status 1" in failed.output


LAZY = ("matplotlib", "dask", "distributed", "zarr", "scipy.stats", "diffrax", "equinox", "lineax")


def test_import_leaves_plotting_dask_and_diffrax_for_first_use():
    """``import dlnode`` (and so every ``dlnode`` command) loads none of matplotlib, Dask, zarr, scipy.stats and
    diffrax (with equinox and lineax), about 1.5 s of its start; they load on first use. The second half is the
    control: the same check after `dln.sweep`, ``ds.dln.plot`` and a tsit5 run finds Dask, zarr, matplotlib and
    diffrax loaded (Dask's distributed scheduler loads when a sweep runs, scipy.stats with the first fitted order)."""
    probe = (
        "import sys, numpy as np, dlnode as dln, xarray as xr\n"
        f"print(' '.join(m for m in {LAZY!r} if m in sys.modules))\n"
        "assert 'sweep' in dir(dln) and 'dask' not in sys.modules  # listed before it loads\n"
        "dln.sweep; xr.Dataset().dln.plot\n"
        "dln.integrate(dln.Factorization(np.eye(2)), depth=1, scale=0.1, t1=1.0, method='tsit5', progress=False)\n"
        f"print(' '.join(m for m in {LAZY!r} if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    before, after = done.stdout.split("\n")[:2]
    assert before == ""
    assert {"dask", "diffrax", "matplotlib", "zarr"} <= set(after.split())
