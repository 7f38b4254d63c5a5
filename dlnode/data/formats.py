"""The file formats dlnode reads and writes, one class each: netCDF-4 (a single run, an export), zarr (a saved
dataset), and the sweep store (a zarr store that a sweep fills cell by cell).

Each says whether it can open a path (`can_open`, from the bytes or the files on disk, not the name alone),
refuses a file of another kind in one line (`check`), reads (`read`) and writes (`write`) a dataset, names a
damaged variable where the format can tell (`damaged_variable`), and checks what a reader could otherwise take for
data (`check_chunks`). `dlnode.data.files` (save, open) picks the format; nothing else branches on the kind.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from dlnode.data.storage import HDF5_SIGNATURE, damaged_hdf5_array, missing_chunks
from dlnode.errors import DatasetError, fail, shown
from dlnode.solvers.core import Status

__all__ = ["FORMATS", "NetCDF", "SweepStore", "Zarr", "format_of"]

SWEEP_CONFIG_ATTR = "dlnode_sweep_config"  # the attribute that marks a sweep store (see dlnode.sweeps.store)
SWEEP_WITNESSES = ("loss", "product", "singular_values", "grad_norm", "t_final")


class NetCDF:
    """netCDF-4 (HDF5) through h5netcdf, with a Fletcher-32 checksum on every chunk of every numeric array."""

    name, label, suffix = "netcdf", "netCDF-4", ".nc"
    lazy = False  # opened into memory unless chunks are asked for

    def can_open(self, source: Path) -> bool:
        return source.is_file() and _head(source) == HDF5_SIGNATURE

    def check(self, source: Path) -> None:
        head = _head(source)
        if head[:3] == b"CDF":
            fail("path", "is a netCDF-3 (classic) file, not a dlnode dataset (dlnode writes netCDF-4)", str(source),
                 "open it with xarray.open_dataset", kind=DatasetError)  # fmt: skip
        if head != HDF5_SIGNATURE:
            fail("path", "is not a netCDF-4 (HDF5) file", shown(f"{str(source)!r} starts with {head!r}"),
                 "pass a .nc file written by dlnode.save", kind=DatasetError)  # fmt: skip

    def read(self, source: Path, chunks: dict | None) -> xr.Dataset:
        return xr.open_dataset(source, engine="h5netcdf", chunks=chunks)

    def write(self, ds: xr.Dataset, tmp: Path) -> None:
        """Ask HDF5 for a Fletcher-32 checksum on every chunk of every numeric array: a damaged chunk then fails to
        read (found by `open`) instead of reading as wrong numbers. (Scalars cannot be chunked and get none.)"""
        for variable in ds.variables.values():
            if variable.ndim and variable.dtype.kind in "biuf":
                variable.encoding["fletcher32"] = True
        ds.to_netcdf(tmp, engine="h5netcdf")

    def damaged_variable(self, source: Path) -> str | None:
        return damaged_hdf5_array(source)

    def check_chunks(self, source: Path, ds: xr.Dataset) -> None:
        """Nothing to do before reading: every chunk carries its checksum, checked as it is read."""


class Zarr:
    """A zarr store (a directory) written whole by `dlnode.save`: every chunk is there."""

    name, label, suffix = "zarr", "zarr", ".zarr"
    lazy = False

    def can_open(self, source: Path) -> bool:
        return source.is_dir() and ((source / "zarr.json").is_file() or (source / ".zgroup").is_file())

    def check(self, source: Path) -> None:
        if not self.can_open(source):
            fail("path", "is a directory but not a zarr store (no zarr.json)", str(source),
                 "pass a .zarr store written by dlnode", kind=DatasetError)  # fmt: skip

    def read(self, source: Path, chunks: dict | None) -> xr.Dataset:
        return xr.open_zarr(source, consolidated=False, chunks=chunks)

    def write(self, ds: xr.Dataset, tmp: Path) -> None:
        ds.to_zarr(tmp, mode="w-", consolidated=False, write_empty_chunks=True)

    def damaged_variable(self, source: Path) -> str | None:
        return None

    def check_chunks(self, source: Path, ds: xr.Dataset) -> None:
        _check_zarr_chunks(source, ds)


class SweepStore(Zarr):
    """The zarr store of a sweep (`dlnode.sweeps.store`): opened lazily by default (a grid may not fit in memory),
    its cells not run yet `PENDING`. Written by the sweep, cell by cell, not by `save`."""

    name, label = "sweep store", "dlnode sweep store (zarr)"
    lazy = True

    def can_open(self, source: Path) -> bool:
        if not super().can_open(source):
            return False
        try:
            import zarr

            return SWEEP_CONFIG_ATTR in zarr.open_group(str(source), mode="r").attrs
        except Exception:  # noqa: BLE001 - unreadable metadata: not recognisably a sweep store; open says why
            return False


FORMATS = {"netcdf": NetCDF(), "zarr": Zarr()}
SWEEP_STORE = SweepStore()


def format_of(source: Path, kind: str) -> NetCDF | Zarr:
    """The format of an existing path whose suffix says `kind` ("netcdf" or "zarr"); a zarr store is a sweep
    store when it carries the sweep's attribute."""
    if kind == "zarr" and SWEEP_STORE.can_open(source):
        return SWEEP_STORE
    return FORMATS[kind]


def _head(source: Path) -> bytes:
    with open(source, "rb") as f:
        return f.read(8)


def _check_zarr_chunks(source: Path, ds: xr.Dataset) -> None:
    """Missing zarr chunks are damage (they would read as NaN or 0), except data chunks whose cells are all
    `PENDING` in a sweep store: those are the cells not run yet.

    `save` writes every chunk, so in a saved store any other missing chunk is damage. A sweep store's writer may
    leave out chunks that hold only the fill value (zarr's default: a status still PENDING, NaN balancedness of an
    end-to-end run, the absent layers of depth ∞), which cannot be told from a deleted chunk; there the witnesses
    are the variables every cell that ran holds finite values in (`SWEEP_WITNESSES`: its state at t = 0 and the
    time it reached), so a deleted data chunk is still found.
    """
    status = ds["status"].compute()  # not .load(): that would load it into the lazily opened dataset
    pending = status.values == int(Status.PENDING)
    sweep = "dlnode_sweep_config" in ds.attrs
    missing = missing_chunks(source)
    for name, regions in sorted(missing.items(), key=lambda item: item[0] != "status"):  # status first
        dims = ds[name].dims if name in ds.variables else ()
        if sweep and name not in SWEEP_WITNESSES:
            continue
        per_cell = name in ds.data_vars and name != "status" and set(status.dims) <= set(dims)

        def done(region: tuple[slice, ...], dims: tuple = dims) -> bool:
            where = dict(zip(dims, region, strict=True))
            return not pending[tuple(where[d] for d in status.dims)].all()

        bad = [r for r in regions if done(r)] if per_cell else regions
        if bad:
            cells = " for cells that are not pending" if per_cell else ""
            fail(f"path {str(source)!r}", "is damaged",
                 shown(f"variable {name!r} has {len(bad)} missing chunk(s){cells} (they would read as fill values)"),
                 "restore it from a copy or re-run the computation", kind=DatasetError)  # fmt: skip
