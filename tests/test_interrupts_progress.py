"""Interrupts a person can rely on: Ctrl-C stops a study within seconds wherever it lands (not only the integrate
call in progress), keeps what was computed, and says how to continue."""

import dataclasses
import os
import signal

import pytest

import dlnode as dln
from dlnode.cli import main

TINY = {"s": [3.0, 2.0, 1.0], "depth": [2, 3], "scale": [1e-1]}


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
    import studies

    calls = _count_windows(monkeypatch, ctrl_c_at=1)
    with pytest.raises(KeyboardInterrupt):
        studies.run("saxe2014", outdir=tmp_path, config=TINY)
    assert calls["n"] <= 2, "the study went on computing after Ctrl-C"
    assert not (tmp_path / "data" / "saxe2014.nc").exists()


def test_ctrl_c_in_a_study_on_the_command_line(monkeypatch, tmp_path, capsys):
    import studies

    module = studies.load("saxe2014")
    monkeypatch.setattr(module, "QUICK", TINY)
    calls = _count_windows(monkeypatch, ctrl_c_at=1)
    with pytest.raises(SystemExit) as done:
        main(["study", "saxe2014", "--quick", "-o", str(tmp_path)])
    err = capsys.readouterr().err
    assert done.value.code == 130 and "interrupted" in err and "dlnode study saxe2014" in err
    assert calls["n"] <= 2


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
