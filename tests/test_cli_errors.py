"""The command line never shows a bare traceback: a refused input is one line and exit 2 (checked before any
work), a bug one line pointing to a saved traceback and exit 1, Ctrl-C one line and exit 130 with no partial file;
a run that comes back interrupted is saved, then the command exits 130."""

import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
import xarray as xr

import dlnode as dln
from dlnode import cli

PROB = dln.MatrixCompletion.random((3, 3), 1, 6, seed=0)


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """A dataset and a folder of files: a dlnode dataset, a plain netCDF, a netCDF-3 file, a folder named .nc."""
    root = tmp_path_factory.mktemp("cli_files")
    ds = dln.integrate(PROB, depth=1, seed=[0, 1], t1=0.5, saveat=3, progress=False)
    dln.save(ds, root / "good.nc")
    xr.Dataset({"a": ("x", np.arange(3.0))}).to_netcdf(root / "plain.nc", engine="h5netcdf")
    xr.Dataset({"a": ("x", np.arange(3.0))}).to_netcdf(root / "classic.nc", engine="scipy")
    (root / "dir.nc").mkdir()
    data = (root / "good.nc").read_bytes()
    (root / "truncated.nc").write_bytes(data[: len(data) // 3])
    tampered = ds.copy()
    tampered.attrs = {**ds.attrs, "problem_fields": '{"kind": "matrix_completion"'}
    tampered.to_netcdf(root / "tampered.nc", engine="h5netcdf")
    return ds, root


def dlnode(capsys, *args):
    """Run `dlnode ARGS` in this process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as info:
        cli.main([str(a) for a in args])
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


def one_line(err):
    assert err.strip() and "\n" not in err.strip() and "Traceback" not in err, err
    return err.strip()


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("plain.nc", "is not a dlnode dataset"),
        ("classic.nc", "netCDF-3"),
        ("dir.nc", "is a directory"),
        ("truncated.nc", "cannot be read as netCDF-4"),
        ("tampered.nc", "problem_fields"),
        ("missing.nc", "does not exist"),
        ("good.txt", "must end in .nc"),
    ],
)
def test_info_and_plot_refuse_what_is_not_a_dlnode_dataset(stored, capsys, tmp_path, name, message):
    """The issue's case: `dlnode info` on a plain netCDF crashed with an AttributeError (exit 1)."""
    _, root = stored
    code, _, err = dlnode(capsys, "info", root / name)
    assert code == 2 and message in one_line(err)
    code, _, err = dlnode(capsys, "plot", root / name, "-o", tmp_path / "fig.png")
    assert code == 2 and message in one_line(err)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("out", "message"),
    [
        ("nope/fig.png", "must be in an existing directory"),
        ("fig.txt", "--out must end in"),
        ("dir.nc/fig.png", "must be in an existing directory"),
    ],
)
def test_plot_checks_its_output_before_reading(stored, capsys, tmp_path, out, message):
    _, root = stored
    code, _, err = dlnode(capsys, "plot", root / "good.nc", "-o", tmp_path / out)
    assert code == 2 and message in one_line(err)


def test_plot_replaces_a_figure_only_with_overwrite(stored, capsys, tmp_path):
    _, root = stored
    fig = tmp_path / "fig.png"
    code, _, _ = dlnode(capsys, "plot", root / "good.nc", "--kind", "singular_values", "-o", fig)
    assert code is None or code == 0
    older = fig.read_bytes()  # a figure dlnode drew (it carries its marker): replaceable, when asked
    code, _, err = dlnode(capsys, "plot", root / "good.nc", "--kind", "loss", "-o", fig)
    assert code == 2 and "already exists" in one_line(err) and fig.read_bytes() == older
    code, out, _ = dlnode(capsys, "plot", root / "good.nc", "--kind", "loss", "-o", fig, "--overwrite")
    assert code is None or code == 0
    assert fig.read_bytes()[:4] == b"\x89PNG" and fig.read_bytes() != older and sorted(tmp_path.iterdir()) == [fig]


@pytest.fixture
def command(monkeypatch):
    """Register a throwaway command on the app for one test (the wrapper's behaviour, whatever the command)."""
    added = []

    def register(name, fn):
        cli.app.command(name)(fn)
        added.append(name)

    yield register
    for _ in added:
        cli.app.registered_commands.pop()


def test_overwrite_never_replaces_a_foreign_folder(stored, capsys, tmp_path):
    _, root = stored
    (tmp_path / "fig.png").mkdir()
    (tmp_path / "fig.png" / "notes.txt").write_text("mine")
    code, _, err = dlnode(capsys, "plot", root / "good.nc", "-o", tmp_path / "fig.png", "--overwrite")
    assert code == 2 and "not replaced even with overwrite" in one_line(err)
    assert (tmp_path / "fig.png" / "notes.txt").read_text() == "mine"


def test_ctrl_c_anywhere_is_one_line_and_exit_130(capsys, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(dln, "integrate", interrupted)
    code, _, err = dlnode(capsys, "demo", "--quick", "-o", tmp_path)
    assert code == 130 and "interrupted" in one_line(err)
    assert not list(tmp_path.rglob("*.nc")) and not list(tmp_path.rglob(".*"))


def test_ctrl_c_while_saving_leaves_no_partial_file(stored, capsys, tmp_path, monkeypatch, command):
    ds, _ = stored
    command("save-for-test", lambda: dln.save(ds, tmp_path / "run.nc"))
    original = xr.Dataset.to_netcdf

    def interrupted(self, path, *args, **kwargs):
        original(self, path, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(xr.Dataset, "to_netcdf", interrupted)
    code, _, err = dlnode(capsys, "save-for-test")
    assert code == 130 and "interrupted" in one_line(err)
    assert not list(tmp_path.iterdir())


def _study_returning(ds, hook=None):
    """A stand-in for studies.run: saves `ds` where the study would, and returns it with one passing row."""

    def run(name, quick, outdir, overwrite, config):
        import studies

        if hook:
            hook()
        path, _ = studies.outputs(name, outdir)
        dln.save(ds, path)
        return ds, [{"claim": "c", "paper": "p", "ours": "o", "passed": True}], [], 0.0

    return run


def test_an_interrupted_run_is_saved_and_exits_130(stored, capsys, tmp_path, monkeypatch):
    """integrate returns what it computed with status INTERRUPTED: the study's dataset is kept, the command says
    where and exits 130."""
    studies = pytest.importorskip("studies")
    ds, _ = stored
    partial = ds.copy(deep=True)
    partial["status"].values[0, 0, 1] = int(dln.Status.INTERRUPTED)
    monkeypatch.setattr(studies, "run", _study_returning(partial))
    code, _, err = dlnode(capsys, "demo", "--quick", "-o", tmp_path)
    out = tmp_path / "data" / "arora2019.nc"
    assert code == 130 and f"1 run(s) stopped early; the result so far was saved to {out}" in one_line(err)
    xr.testing.assert_identical(dln.open(out), partial)


def test_a_ctrl_c_python_swallowed_still_stops_the_command(stored, capsys, tmp_path, monkeypatch):
    """A KeyboardInterrupt raised inside a garbage-collector callback is ignored by Python (the run goes on): the
    command still counts the Ctrl-C, keeps the finished result and stops, quietly."""
    studies = pytest.importorskip("studies")
    ds, _ = stored

    def swallowed():
        try:
            cli._count_sigint(2, None)
        except KeyboardInterrupt:
            pass

    monkeypatch.setattr(studies, "run", _study_returning(ds, swallowed))
    code, _, err = dlnode(capsys, "demo", "--quick", "-o", tmp_path)
    assert code == 130 and "the runs had finished; the result so far was saved to" in one_line(err)
    xr.testing.assert_identical(dln.open(tmp_path / "data" / "arora2019.nc"), ds)


@pytest.mark.parametrize(
    ("error", "code", "message"),
    [
        (RuntimeError("boom"), 1, "RuntimeError: boom -- this is a bug in dlnode"),
        (MemoryError(), 1, "out of memory"),
        (OSError(28, "No space left on device"), None, "No space left on device"),
        (ValueError("x must be y; got z"), 2, "error: x must be y; got z"),
    ],
)
def test_unexpected_errors_are_one_line(capsys, tmp_path, monkeypatch, command, error, code, message):
    def fails():
        raise error

    command("fails-for-test", fails)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    got, _, err = dlnode(capsys, "fails-for-test")
    assert got == (code or 1) and message in one_line(err)
    if isinstance(error, RuntimeError):
        report = err.strip().split("traceback saved in ")[1]
        assert "Traceback" in open(report).read() and "RuntimeError: boom" in open(report).read()
        monkeypatch.setenv("DLNODE_DEBUG", "1")
        with pytest.raises(RuntimeError, match="boom"):
            cli.main(["fails-for-test"])


def test_usage_errors_exit_2(capsys):
    code, _, err = dlnode(capsys, "frobnicate")
    assert code == 2 and "No such command" in err


@pytest.mark.slow
def test_sigint_during_the_demo_exits_130_without_a_partial_file(tmp_path):
    """A real Ctrl-C (SIGINT) sent to `dlnode demo` while it works: one line, exit 130, no partial file, no crash."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    # a shell's background job inherits SIGINT ignored (and Python then installs no handler): install it
    code = (
        "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); from dlnode.cli import main; main()"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, "demo", "--quick", "-o", str(tmp_path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    first = proc.stdout.readline()  # the study's title, printed before it computes
    assert "arora2019" in first, first + proc.stderr.read()
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("interrupted") and "Traceback" not in err
    assert not [p for p in tmp_path.rglob("*") if ".partial-" in p.name]
    for path in tmp_path.rglob("*.nc"):  # a dataset kept is whole
        dln.open(path)


def test_a_command_that_handles_ctrl_c_itself_is_not_reported_twice(capsys, monkeypatch):
    """A command may catch the interrupt, say what it kept, and exit 130: the wrapper adds nothing."""

    @cli.app.command("kept-for-test")
    def kept() -> None:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            cli.typer.echo("interrupted: 3 of 8 cells on disk", err=True)
            raise cli.typer.Exit(code=130) from None

    try:
        code, _, err = dlnode(capsys, "kept-for-test")
    finally:
        cli.app.registered_commands.pop()
    assert code == 130 and one_line(err) == "interrupted: 3 of 8 cells on disk"


def test_warnings_are_one_line(capsys, command):
    import warnings

    command("warns-for-test", lambda: warnings.warn("dlnode: 1 of 2 runs did not converge: depth 1", stacklevel=1))
    code, _, err = dlnode(capsys, "warns-for-test")
    assert code in (None, 0) and err.strip().splitlines() == ["warning: dlnode: 1 of 2 runs did not converge: depth 1"]
