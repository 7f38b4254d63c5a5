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
