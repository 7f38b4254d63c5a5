"""One class per file format: each recognises its own files from their contents, and `open` picks it."""

import zarr

import dlnode as dln
from dlnode.data.formats import FORMATS, SWEEP_CONFIG_ATTR, SWEEP_STORE, format_of


def _run():
    prob = dln.Factorization([[2.0, 0.0], [0.0, 1.0]])
    return dln.integrate(prob, depth=2, scale=0.3, t1=1.0, saveat=3, method="tsit5", progress=False)


def test_each_format_opens_its_own_files_only(tmp_path):
    ds = _run()
    dln.save(ds, tmp_path / "a.nc")
    dln.save(ds, tmp_path / "a.zarr")
    netcdf, plain_zarr = FORMATS["netcdf"], FORMATS["zarr"]
    assert netcdf.can_open(tmp_path / "a.nc") and not netcdf.can_open(tmp_path / "a.zarr")
    assert plain_zarr.can_open(tmp_path / "a.zarr") and not plain_zarr.can_open(tmp_path / "a.nc")
    assert not SWEEP_STORE.can_open(tmp_path / "a.zarr")
    assert format_of(tmp_path / "a.zarr", "zarr") is plain_zarr
    (tmp_path / "fake.nc").write_bytes(b"CDF\x01 classic")  # netCDF-3: not a format dlnode writes
    assert not netcdf.can_open(tmp_path / "fake.nc")


def test_a_sweep_store_is_recognised_by_its_attribute_and_opens_lazily(tmp_path):
    dln.save(_run(), tmp_path / "s.zarr")
    zarr.open_group(str(tmp_path / "s.zarr"), mode="r+").attrs[SWEEP_CONFIG_ATTR] = "{}"
    assert format_of(tmp_path / "s.zarr", "zarr") is SWEEP_STORE
    opened = dln.open(tmp_path / "s.zarr")
    assert opened["loss"].chunks is not None  # dask-backed: a sweep store stays on disk until read
    opened.close()
