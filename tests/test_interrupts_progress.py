"""Interrupts a person can rely on: Ctrl-C stops a study within seconds wherever it lands (not only the integrate
call in progress), keeps what was computed, and says how to continue."""

import dataclasses
import os
import signal

import pytest

import dlnode as dln
from dlnode.cli import main


def _count_windows(monkeypatch, ctrl_c_at):
    calls = {"n": 0}
    for name, method in list(dln.METHODS.items()):

        def advance(flow, state, arrays, ts, c, _real=method.advance):
            calls["n"] += 1
            if calls["n"] == ctrl_c_at:
                os.kill(os.getpid(), signal.SIGINT)
            return _real(flow, state, arrays, ts, c)

        monkeypatch.setitem(dln.METHODS, name, dataclasses.replace(method, advance=advance))
    return calls


def test_ctrl_c_stops_the_whole_study(monkeypatch, tmp_path):
    """The study's first integrate call is interrupted in its only window: its second call never starts."""
    from tiny_study import register

    import studies

    register(monkeypatch)
    calls = _count_windows(monkeypatch, ctrl_c_at=1)
    with pytest.raises(KeyboardInterrupt):
        studies.run("tiny", outdir=tmp_path)
    assert calls["n"] == 1, "the study went on computing after Ctrl-C"
    assert not (tmp_path / "data" / "tiny.nc").exists()


def test_ctrl_c_in_a_study_on_the_command_line(monkeypatch, tmp_path, capsys):
    from tiny_study import register

    register(monkeypatch)
    calls = _count_windows(monkeypatch, ctrl_c_at=1)
    with pytest.raises(SystemExit) as done:
        main(["study", "tiny", "--quick", "-o", str(tmp_path)])
    err = capsys.readouterr().err
    assert done.value.code == 130 and "interrupted" in err and f"dlnode study tiny --quick -o {tmp_path}" in err
    assert calls["n"] == 1 and not (tmp_path / "data").exists()


def test_a_complete_sweep_run_again_says_nothing_was_computed(tmp_path):
    from distributed import Client
    from typer.testing import CliRunner

    from dlnode.cli import app

    config = tmp_path / "c.toml"
    config.write_text('[problem]\nkind = "factorization"\nshape = [2, 2]\nrank = 1\n[grid]\ndepth = [1]\n'
                      'scale = [0.3]\nmethod = "gd"\nlr = 0.1\n[integrate]\nt1 = 1.0\nsaveat = 3\n')  # fmt: skip
    store = tmp_path / "s.zarr"
    with Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None) as client:
        dln.sweep(config, store, client=client, progress=False)
    result = CliRunner().invoke(app, ["run", str(config), "-o", str(store)])  # no cluster is started: no task
    assert result.exit_code == 0 and "nothing to compute" in result.output and "wrote" not in result.output


def test_an_interrupted_dataset_saves_opens_and_plots_with_its_pending_depths(monkeypatch, tmp_path, capsys):
    import numpy as np

    _count_windows(monkeypatch, ctrl_c_at=1)
    prob = dln.Factorization(np.diag([2.0, 1.0]))
    with pytest.warns(UserWarning, match="pending"):
        ds = dln.integrate(prob, depth=[2, 3], scale=0.3, t1=1.0, saveat=4, method="gd", lr=0.05, progress=False)
    assert list(ds["status"].values.ravel()) == [int(dln.Status.FINISHED), int(dln.Status.PENDING)]
    path = tmp_path / "part.nc"
    dln.save(ds, path)
    again = dln.open(path)
    assert int(again["status"].sel(depth=3.0).item()) == int(dln.Status.PENDING)
    assert int(again["num_steps"].sel(depth=3.0).item()) == -1
    with pytest.raises(SystemExit) as done:
        main(["plot", str(path), "--kind", "loss", "-o", str(tmp_path / "part.png")])
    assert done.value.code == 0, capsys.readouterr().err
    template = dln.integrate(prob, depth=[2, 3], scale=0.3, t1=1.0, saveat=4, method="gd", lr=0.05, progress=False)
    template["status"][:] = int(dln.Status.PENDING)  # nothing computed: nothing to draw, said in one line
    dln.save(template, tmp_path / "none.nc")
    with pytest.raises(SystemExit) as done:
        main(["plot", str(tmp_path / "none.nc"), "--kind", "loss", "-o", str(tmp_path / "none.png")])
    assert done.value.code == 2 and "pending" in capsys.readouterr().err


def test_ctrl_c_while_the_command_starts_is_one_line():
    """JAX takes seconds to import: a Ctrl-C then is one line and exit code 130, not a traceback from an import."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import os, signal, sys, threading, time\n"
            "signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal\n"
            "sys.argv[0] = 'dlnode'  # the command's name, as its console script has it\n"
            "threading.Timer(0.2, lambda: os.kill(os.getpid(), signal.SIGINT)).start()\n"
            "import dlnode\n"
            "time.sleep(30)\n")  # fmt: skip
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(root))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 130 and "Traceback" not in done.stderr
    assert done.stderr.strip() == "interrupted (Ctrl-C) while dlnode was starting; nothing was done"
