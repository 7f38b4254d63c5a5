"""`open` checks what it opens: the format attrs, the schema, every zarr chunk (a missing one is damage, not NaN,
unless its cells are PENDING in a sweep store), and the stored problem (rebuilt through its constructor)."""

import json
import shutil

import numpy as np
import pytest
import xarray as xr

import dlnode as dln
from dlnode.errors import DatasetError

PROB = dln.MatrixCompletion.random((3, 3), 1, 6, seed=0)
PENDING = int(dln.Status.PENDING)


@pytest.fixture(scope="module")
def ds():
    return dln.integrate(PROB, depth=1, seed=[0, 1], t1=0.5, saveat=3, progress=False)


RUN = {"depth": 1, "scale": 1, "seed": 1}


def sweep_store(ds, path):
    """A store as a sweep leaves it half-way: a template (metadata, coordinates, every status PENDING) and then
    region writes of the cells that are done (here seed 0, written with every chunk); seed 1 has no chunk."""
    per_cell = [n for n, v in ds.data_vars.items() if set(RUN) <= set(v.dims)]
    template = ds.assign({n: ds[n].chunk(RUN) for n in per_cell}).assign(status=xr.full_like(ds["status"], PENDING))
    template.attrs["dlnode_sweep_config"] = json.dumps({"depth": [1], "seed": [0, 1]})
    template.to_zarr(path, compute=False, consolidated=False)
    done = ds[per_cell].isel(seed=[0]).drop_vars([c for c in ds.coords if not set(ds[c].dims) <= set(RUN)])
    done.to_zarr(path, region={d: slice(0, 1) for d in RUN}, consolidated=False, write_empty_chunks=True)


def test_a_sweep_store_with_pending_cells_opens(ds, tmp_path):
    path = tmp_path / "sweep.zarr"
    sweep_store(ds, path)
    assert not list((path / "loss" / "c").rglob("0/0/1/*"))  # the pending cell has no chunk on disk
    back = dln.open(path)
    xr.testing.assert_identical(back.isel(seed=[0]).drop_attrs(), ds.isel(seed=[0]).drop_attrs())
    assert (back["status"].sel(seed=1) == PENDING).all() and back["loss"].sel(seed=1).isnull().all()
    assert "dlnode_sweep_config" in back.attrs


def test_a_missing_chunk_of_a_finished_cell_is_damage(ds, tmp_path):
    path = tmp_path / "sweep.zarr"
    sweep_store(ds, path)
    shutil.rmtree(path / "product" / "c" / "0" / "0" / "0")  # depth 0, scale 0, seed 0: a finished cell
    with pytest.raises(DatasetError, match=r"damaged; got variable 'product' has 1 missing chunk\(s\) for cells that"):
        dln.open(path)


def test_a_deleted_status_chunk_is_found_through_the_data(ds, tmp_path):
    """A missing status chunk reads as 0 (finished): in a sweep store (whose writer may leave out integer chunks
    of fill values) the data of the pending cell then have missing chunks of a 'finished' cell, which is damage;
    in a saved store any missing chunk is damage."""
    path = tmp_path / "sweep.zarr"
    sweep_store(ds, path)
    for chunk in (path / "status" / "c").rglob("*"):
        if chunk.is_file():
            chunk.unlink()
    with pytest.raises(DatasetError, match="missing chunk.* for cells that are not pending"):
        dln.open(path)
    dln.save(ds, tmp_path / "saved.zarr")
    for chunk in (tmp_path / "saved.zarr" / "num_steps" / "c").rglob("*"):
        if chunk.is_file():
            chunk.unlink()
    with pytest.raises(DatasetError, match="variable 'num_steps' has 1 missing chunk"):
        dln.open(tmp_path / "saved.zarr")


@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
def test_chunks_opens_lazily_with_dask(ds, tmp_path, suffix):
    pytest.importorskip("dask")
    path = tmp_path / f"run{suffix}"
    dln.save(ds, path)
    lazy = dln.open(path, chunks={"depth": 1, "scale": 1, "seed": 1})
    try:
        assert lazy["product"].chunks is not None and lazy["product"].data.numblocks[2] == 2
        xr.testing.assert_identical(lazy.load(), ds)
    finally:
        lazy.close()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"drop": "dlnode_format"},
            r"was written by dlnode .* before format version 1; got no attrs\['dlnode_format'\]",
        ),
        ({"set": ("dlnode_format_version", 7)}, r"written by a newer dlnode \(format version 7.*upgrade dlnode"),
        ({"set": ("dlnode_format_version", "one")}, "damaged format version"),
        ({"set": ("dlnode_format", "netcdf")}, "is not a dlnode dataset"),
    ],
)
def test_the_format_attrs_are_checked(ds, tmp_path, change, message):
    other = ds.copy()
    other.attrs = dict(ds.attrs)
    if "drop" in change:
        other.attrs.pop(change["drop"])
        other.attrs.pop("dlnode_format_version")
    else:
        other.attrs[change["set"][0]] = change["set"][1]
    other.to_netcdf(tmp_path / "x.nc", engine="h5netcdf")
    with pytest.raises(DatasetError, match=message):
        dln.open(tmp_path / "x.nc")


def test_a_stored_problem_is_rebuilt_through_its_constructor(ds, tmp_path):
    """The issue's case: an all-False mask, which MatrixCompletion refuses, was rebuilt without complaint."""
    tampered = ds.copy(deep=True)
    tampered["problem_mask"].values[:] = False
    tampered.to_netcdf(tmp_path / "x.nc", engine="h5netcdf")
    with pytest.raises(DatasetError, match="must describe a valid problem; got mask must observe at least one"):
        dln.open(tmp_path / "x.nc")
    rebuilt = dln.problem_from(ds)
    assert type(rebuilt) is type(PROB) and rebuilt.describe() == PROB.describe()
    np.testing.assert_array_equal(rebuilt.mask, PROB.mask)
