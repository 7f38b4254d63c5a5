"""One output-path policy for every writer (`save`, `export`, `study`, `run`, `demo`, `plot`): checked before any
work, never deleting or replacing a file dlnode did not write (with or without --overwrite), a study replacing only
the files it writes, and errors that name the user's path."""

import numpy as np
import pytest
from typer.testing import CliRunner

import dlnode as dln
from dlnode.cli import app, main

runner = CliRunner()
STORE_CONFIG = {
    "problem": {"kind": "factorization", "shape": [2, 2], "rank": 1, "seed": 0},
    "grid": {"depth": [1], "scale": [0.3], "method": "gd", "lr": [0.1]},
    "integrate": {"t1": 1.0, "saveat": 3},
}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from distributed import Client

    path = tmp_path_factory.mktemp("store") / "s.zarr"
    with Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None) as client:
        dln.sweep(STORE_CONFIG, path, client=client, progress=False)
    return path


def _foreign_netcdf(path):
    import h5py

    with h5py.File(path, "w") as f:
        f["x"] = np.arange(3.0)
    return path.read_bytes()


def test_export_never_replaces_a_foreign_netcdf(store, tmp_path):
    out = tmp_path / "mine.nc"
    before = _foreign_netcdf(out)
    result = runner.invoke(app, ["export", str(store), str(out), "--overwrite"])
    assert result.exit_code == 2 and "not a dlnode dataset" in result.output and str(out) in result.output
    assert out.read_bytes() == before


def test_export_errors_name_out_not_a_temporary_file(store, tmp_path):
    out = tmp_path / "missing-dir" / "x.nc"
    (tmp_path / "missing-dir").write_text("a file where a directory should be")
    result = runner.invoke(app, ["export", str(store), str(out)])
    assert result.exit_code == 2 and str(out) in result.output and ".partial" not in result.output


def test_export_writes_checksummed_chunks_and_replaces_its_own(store, tmp_path):
    import h5py

    out = tmp_path / "e.nc"
    assert runner.invoke(app, ["export", str(store), str(out)]).exit_code == 0
    with h5py.File(out, "r") as f:
        assert f["loss"].fletcher32 and f["status"].fletcher32
    assert runner.invoke(app, ["export", str(store), str(out)]).exit_code == 2  # exists, no --overwrite
    assert runner.invoke(app, ["export", str(store), str(out), "--overwrite"]).exit_code == 0
    assert int(dln.open(out)["status"].item()) == int(dln.Status.FINISHED)


def _no_compute(monkeypatch, name):
    import studies

    module = studies.load(name)
    monkeypatch.setattr(
        module, "compute", lambda config: pytest.fail("the study computed before its paths were checked")
    )


def test_study_out_that_is_a_file_is_refused_before_any_work(monkeypatch, tmp_path):
    _no_compute(monkeypatch, "saxe2014")
    out = tmp_path / "a-file"
    out.write_text("mine")
    result = runner.invoke(app, ["study", "saxe2014", "--quick", "-o", str(out)])
    assert result.exit_code == 2 and str(out) in result.output
    assert out.read_text() == "mine"


def test_demo_out_that_is_a_file_is_refused_before_any_work(monkeypatch, tmp_path):
    _no_compute(monkeypatch, "arora2019")
    out = tmp_path / "a-file"
    out.write_text("mine")
    result = runner.invoke(app, ["demo", "--quick", "-o", str(out)])
    assert result.exit_code == 2 and str(out) in result.output
    assert out.read_text() == "mine"


def test_study_overwrite_keeps_user_files_and_refuses_a_foreign_dataset(monkeypatch, tmp_path):
    _no_compute(monkeypatch, "arora2019")
    (tmp_path / "figures").mkdir()
    (tmp_path / "data").mkdir()
    notes = tmp_path / "figures" / "arora2019-my-notes.png"
    notes.write_bytes(b"my own notes")
    data = tmp_path / "data" / "arora2019.nc"
    before = _foreign_netcdf(data)
    result = runner.invoke(app, ["study", "arora2019", "--quick", "--overwrite", "-o", str(tmp_path)])
    assert result.exit_code == 2 and str(data) in result.output and "not a dlnode dataset" in result.output
    assert data.read_bytes() == before and notes.read_bytes() == b"my own notes"


def test_study_overwrite_replaces_only_its_own_files(monkeypatch, tmp_path):
    """A study's re-run replaces its dataset and the figures it writes, and leaves any other file alone."""
    from tiny_study import register

    import studies

    register(monkeypatch)
    ds, rows, figures, _ = studies.run("tiny", outdir=tmp_path)
    assert all(r["passed"] for r in rows) and [p.name for p in figures] == ["tiny-loss.png"]
    saved = dln.open(tmp_path / "data" / "tiny.nc").attrs  # the runtime's parts, kept in the file
    assert saved["study_compute_time"] > 0 and saved["study_check_time"] >= 0
    assert saved["study_compute_time"] + saved["study_check_time"] == pytest.approx(saved["study_runtime"], rel=1e-12)
    shown = runner.invoke(app, ["info", str(tmp_path / "data" / "tiny.nc")]).output
    assert f"compute {saved['study_compute_time']:.1f} s, check {saved['study_check_time']:.1f} s" in shown, shown
    notes = tmp_path / "figures" / "tiny-my-notes.png"
    notes.write_bytes(b"my own notes")
    before = {p: p.stat().st_ino for p in figures}
    with pytest.raises(ValueError, match="overwrite"):  # earlier results: refused without --overwrite
        studies.run("tiny", outdir=tmp_path)
    _, _, again, _ = studies.run("tiny", outdir=tmp_path, overwrite=True)
    assert notes.read_bytes() == b"my own notes"
    assert again == figures and all(p.stat().st_ino != before[p] for p in figures)  # drawn anew, put in place
    assert int(dln.open(tmp_path / "data" / "tiny.nc")["status"].sel(depth=3.0).item()) == int(dln.Status.FINISHED)


def test_plot_overwrite_never_replaces_a_foreign_image(tmp_path, capsys):
    prob = dln.Factorization(np.diag([2.0, 1.0]))
    ds = dln.integrate(prob, depth=2, scale=0.3, t1=1.0, saveat=4, progress=False, method="gd", lr=0.05)
    path = tmp_path / "run.nc"
    dln.save(ds, path)
    mine = tmp_path / "photo.png"
    mine.write_bytes(b"\x89PNG\r\n\x1a\nnot dlnode's")
    with pytest.raises(SystemExit) as done:
        main(["plot", str(path), "--kind", "loss", "-o", str(mine), "--overwrite"])
    assert done.value.code == 2 and str(mine) in capsys.readouterr().err
    assert mine.read_bytes() == b"\x89PNG\r\n\x1a\nnot dlnode's"
    ours = tmp_path / "fig.png"
    assert runner.invoke(app, ["plot", str(path), "--kind", "loss", "-o", str(ours)]).exit_code == 0
    assert runner.invoke(app, ["plot", str(path), "--kind", "loss", "-o", str(ours), "--overwrite"]).exit_code == 0


def test_run_refuses_a_foreign_store_before_any_work(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[problem]\nkind = "factorization"\nshape = [2, 2]\nrank = 1\n[grid]\ndepth = [1]\n'
                      'scale = [0.3]\nmethod = "gd"\nlr = 0.1\n[integrate]\nt1 = 1.0\nsaveat = 3\n')  # fmt: skip
    foreign = tmp_path / "x.zarr"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    result = runner.invoke(app, ["run", str(config), "-o", str(foreign)])
    assert result.exit_code == 2 and str(foreign) in result.output
    assert (foreign / "notes.txt").read_text() == "mine"
