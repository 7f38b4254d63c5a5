"""Damaged data is found on `open`, not read as wrong numbers: netCDF files carry a Fletcher-32 checksum on every
chunk (a flipped byte fails to read, named in one line), and a run whose status says it ran must hold a finite
initial loss and final time in either format."""

import h5py
import numpy as np
import pytest
import xarray as xr

import dlnode as dln
from dlnode.errors import DatasetError

PROB = dln.MatrixCompletion.random((3, 3), 1, 6, seed=0)


@pytest.fixture(scope="module")
def ds():
    return dln.integrate(PROB, depth=1, seed=[0, 1], t1=0.5, saveat=3, progress=False)


def flip_a_byte(path, name):
    """Flip one byte in the middle of the first stored chunk of the array `name` (the data, not the file's
    metadata); return the chunk's bytes before and after."""
    with h5py.File(path, "r") as h5:
        info = h5[name].id.get_chunk_info(0) if h5[name].chunks else None
        offset, size = (
            (info.byte_offset, info.size) if info else (h5[name].id.get_offset(), h5[name].id.get_storage_size())
        )
    data = bytearray(path.read_bytes())
    data[offset + size // 2] ^= 0x5A
    path.write_bytes(bytes(data))


def one_line(err):
    text = str(err.value)
    assert "\n" not in text, text
    return text


def test_every_array_of_a_saved_netcdf_file_carries_checksums(ds, tmp_path):
    path = tmp_path / "run.nc"
    dln.save(ds, path)
    with h5py.File(path, "r") as h5:
        arrays = {name: h5[name] for name in ds.variables if ds[name].ndim}
        assert arrays and all(a.fletcher32 for a in arrays.values()), [n for n, a in arrays.items() if not a.fletcher32]
    xr.testing.assert_identical(dln.open(path), ds)  # and it still round-trips


@pytest.mark.parametrize("name", ["loss", "product", "status", "weights_final", "time", "problem_mask"])
def test_a_flipped_byte_in_a_netcdf_chunk_is_one_line_naming_the_file_and_variable(ds, tmp_path, name):
    path = tmp_path / "run.nc"
    dln.save(ds, path)
    flip_a_byte(path, name)
    with pytest.raises(DatasetError) as err:
        dln.open(path)
    text = one_line(err)
    assert str(path) in text and f"variable {name!r} cannot be read" in text and "checksum" in text, text


def test_without_checksums_the_same_flip_reads_as_wrong_numbers(ds, tmp_path):
    """The reference for the test above: the byte flipped is data, which HDF5 alone returns silently changed."""
    path = tmp_path / "plain.nc"
    dln.save(ds, path)
    plain = dln.open(path)
    for variable in plain.variables.values():
        variable.encoding.pop("fletcher32", None)
    path2 = tmp_path / "plain2.nc"
    plain.to_netcdf(path2, engine="h5netcdf")
    flip_a_byte(path2, "loss")
    with xr.open_dataset(path2, engine="h5netcdf") as back:
        changed = back["loss"].values
    assert not np.array_equal(changed, ds["loss"].values, equal_nan=True)


def test_a_lazily_opened_damaged_file_is_refused_when_its_checks_read_it(ds, tmp_path):
    pytest.importorskip("dask")
    path = tmp_path / "run.nc"
    dln.save(ds, path)
    flip_a_byte(path, "status")
    with pytest.raises(DatasetError, match="variable 'status' cannot be read"):
        dln.open(path, chunks={})


@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
@pytest.mark.parametrize("name", ["loss", "t_final"])
def test_a_run_that_says_it_ran_without_numbers_is_damage(ds, tmp_path, suffix, name):
    damaged = ds.copy(deep=True)
    where = {"seed": 1, "time": 0} if name == "loss" else {"seed": 1}
    damaged[name].loc[where] = np.nan
    path = tmp_path / f"run{suffix}"
    dln.save(damaged, path)  # save writes what it is given; open checks it
    with pytest.raises(DatasetError) as err:
        dln.open(path)
    assert f"variable {name!r} is not finite" in one_line(err) and "1 run(s) whose status says they ran" in str(err)


def test_a_run_that_stopped_at_once_may_lack_numbers(ds, tmp_path):
    """A diverged or stepless run (an initial state whose loss overflows) legitimately has no finite loss."""
    stopped = ds.copy(deep=True)
    stopped["loss"].loc[{"seed": 1}] = np.inf
    stopped["t_final"].loc[{"seed": 1}] = 0.0
    stopped["status"].loc[{"seed": 1}] = int(dln.Status.NO_STEP)
    path = tmp_path / "run.nc"
    dln.save(stopped, path)
    xr.testing.assert_identical(dln.open(path), stopped)
