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


def test_demo_quick_writes_a_dataset_and_prints_a_summary(tmp_path):
    out = tmp_path / "demo.nc"
    proc = _run("demo", "--quick", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "eff. rank" in proc.stdout and "converged" in proc.stdout
    ds = dln.open(out)
    dln.validate(ds)
    assert list(ds.depth.values) == [1.0, 2.0, 3.0]
    info = _run("info", str(out))
    assert info.returncode == 0, info.stderr
    assert "status:" in info.stdout and "matrix_completion" in info.stdout
    xr.testing.assert_identical(ds, dln.open(out))
    for kind in ("loss", "singular_values", "rank_staircase", "effective_rank"):
        assert (tmp_path / f"demo_{kind}.png").stat().st_size > 10_000
    fig = tmp_path / "sv.png"
    proc = _run("plot", str(out), "--kind", "sharpness", "-o", str(fig))
    assert proc.returncode == 0, proc.stderr
    assert fig.stat().st_size > 10_000
    bad = _run("plot", str(out), "--kind", "pie")
    assert bad.returncode == 2 and "--kind must be one of" in bad.stderr


def test_info_on_a_missing_file_is_a_one_line_error(tmp_path):
    proc = _run("info", str(tmp_path / "nothing.nc"))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "path does not exist" in proc.stderr
