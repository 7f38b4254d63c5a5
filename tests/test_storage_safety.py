"""`save` never destroys: existing paths are refused unless asked, only dlnode's own files are replaced, and every
write is atomic (a failed or interrupted write leaves the old file as it was and no partial file behind)."""

import numpy as np
import pytest
import xarray as xr

import dlnode as dln
from dlnode.errors import PathExistsError

PROB = dln.MatrixCompletion.random((3, 3), 1, 6, seed=0)


@pytest.fixture(scope="module")
def ds():
    return dln.integrate(PROB, depth=1, seed=[0, 1], t1=0.5, saveat=3, progress=False)


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
def test_an_existing_dataset_is_replaced_only_when_asked(ds, tmp_path, suffix):
    path = tmp_path / f"run{suffix}"
    dln.save(ds, path)
    changed = ds.assign(loss=ds["loss"] * 2)
    with pytest.raises(PathExistsError, match="already exists.*overwrite=True"):
        dln.save(changed, path)
    xr.testing.assert_identical(dln.open(path), ds)
    dln.save(changed, path, overwrite=True)
    xr.testing.assert_identical(dln.open(path), changed.assign_attrs(ds.attrs))
    assert _listing(tmp_path) == [path.name]  # no temporary or set-aside copies left


@pytest.mark.parametrize("name", ["results.zarr", "results.nc"])
def test_a_foreign_path_is_never_replaced_even_with_overwrite(ds, tmp_path, name):
    """The issue's first case: saving onto a folder of the user's deleted everything in it."""
    path = tmp_path / name
    if name.endswith(".zarr"):
        path.mkdir()
        (path / "thesis.tex").write_text("years of work")
    else:
        path.write_text("years of work")
    for overwrite in (False, True):
        with pytest.raises(PathExistsError, match="overwrite|not a dlnode dataset"):
            dln.save(ds, path, overwrite=overwrite)
    kept = path / "thesis.tex" if path.is_dir() else path
    assert kept.read_text() == "years of work"


@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
def test_an_interrupted_write_leaves_the_old_file_and_no_partial_one(ds, tmp_path, monkeypatch, suffix):
    path = tmp_path / f"run{suffix}"
    dln.save(ds, path)
    method = "to_netcdf" if suffix == ".nc" else "to_zarr"
    original = getattr(xr.Dataset, method)

    def write_half_then_interrupt(self, target, *args, **kwargs):
        original(self.isel(time=[0]), target, *args, **kwargs)  # something is on disk when Ctrl-C comes
        raise KeyboardInterrupt

    monkeypatch.setattr(xr.Dataset, method, write_half_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        dln.save(ds.assign(loss=ds["loss"] + 1), path, overwrite=True)
    monkeypatch.undo()
    assert _listing(tmp_path) == [path.name]
    xr.testing.assert_identical(dln.open(path), ds)


def test_a_failed_first_write_leaves_nothing(ds, tmp_path, monkeypatch):
    def disk_full(self, target, *args, **kwargs):
        with open(target, "wb") as f:
            f.write(b"\x89HDF\r\n\x1a\n partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(xr.Dataset, "to_netcdf", disk_full)
    with pytest.raises(OSError, match="path could not be written; got .*No space left on device; check the free"):
        dln.save(ds, tmp_path / "run.nc")
    assert _listing(tmp_path) == []


def test_save_marks_the_format_and_open_reads_it(ds, tmp_path):
    """The format attrs come from `integrate` and survive storage in both formats."""
    assert ds.attrs["dlnode_format"] == "dlnode-dataset" and ds.attrs["dlnode_format_version"] == 1
    for suffix in (".nc", ".zarr"):
        dln.save(ds, tmp_path / f"a{suffix}")
        back = dln.open(tmp_path / f"a{suffix}")
        assert back.attrs["dlnode_format"] == "dlnode-dataset" and int(back.attrs["dlnode_format_version"]) == 1


def test_a_store_opened_lazily_can_replace_itself(ds, tmp_path):
    """save reads everything into the temporary sibling before the old store is moved aside."""
    path = tmp_path / "run.zarr"
    dln.save(ds, path)
    lazy = dln.open(path, chunks={"depth": 1, "scale": 1, "seed": 1})
    dln.save(lazy.assign(loss=lazy["loss"] * 3), path, overwrite=True)
    lazy.close()
    np.testing.assert_array_equal(dln.open(path)["loss"].values, 3 * ds["loss"].values)
    assert _listing(tmp_path) == ["run.zarr"]


def test_a_file_that_appears_while_writing_is_not_replaced(ds, tmp_path, monkeypatch):
    """Another process creates the path after the check: the finished write does not clobber it."""
    path = tmp_path / "run.nc"
    original = xr.Dataset.to_netcdf

    def meanwhile(self, target, *args, **kwargs):
        path.write_text("the other process's result")
        return original(self, target, *args, **kwargs)

    monkeypatch.setattr(xr.Dataset, "to_netcdf", meanwhile)
    with pytest.raises(PathExistsError, match="appeared while the data were written"):
        dln.save(ds, path)
    assert path.read_text() == "the other process's result" and _listing(tmp_path) == ["run.nc"]


def test_a_zarr_v2_store_is_checked_too(ds, tmp_path):
    path = tmp_path / "v2.zarr"
    ds.to_zarr(path, zarr_format=2, consolidated=False, write_empty_chunks=True)  # every chunk, as save writes
    xr.testing.assert_identical(dln.open(path), ds)
    (path / "loss" / "0.0.0.0").unlink()
    with pytest.raises(ValueError, match="variable 'loss' has 1 missing chunk"):
        dln.open(path)


def test_missing_parent_directories_are_created(ds, tmp_path):
    path = tmp_path / "data" / "runs" / "run.nc"
    dln.save(ds, path)
    xr.testing.assert_identical(dln.open(path), ds)


def test_a_study_dataset_keeps_its_own_dims(ds, tmp_path):
    """A study's dataset (attrs["study"]) is derived from runs and has dims of its own: stored and read like any
    dlnode dataset (format attrs), without the run schema."""
    table = xr.Dataset({"escape_time": ("depth", np.array([1.0, 2.0]))}, coords={"depth": [2.0, 3.0]},
                       attrs={"study": "example"})  # fmt: skip
    dln.save(table, tmp_path / "study.nc")
    back = dln.open(tmp_path / "study.nc")
    xr.testing.assert_identical(back, table.assign_attrs(dlnode_format="dlnode-dataset", dlnode_format_version=1))
