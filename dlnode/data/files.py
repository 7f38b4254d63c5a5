"""Safe files: `save` (atomic, never over a file dlnode did not write) and `open` (checked), through the format
classes of `dlnode.data.formats`.

A dataset written by `save` and read back by `open` is identical (`xarray.testing.assert_identical`).
netCDF (h5netcdf) is for single runs and export; zarr is the working store of sweeps.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import numpy as np
import xarray as xr

from dlnode.checks import check_bool
from dlnode.data.formats import FORMATS, NetCDF, Zarr, format_of
from dlnode.data.schema import FORMAT, FORMAT_VERSION, _check_contents, problem_from
from dlnode.data.storage import DATASET_SUFFIXES, as_path, atomic_path, check_input_path, check_output_path, is_dlnode_store, suffix_of
from dlnode.errors import DatasetError, DlnodeError, fail, shown
from dlnode.solvers.core import Status

__all__ = ["open_dataset", "save"]

KEPT_ENCODING = ("dtype", "_FillValue", "missing_value", "scale_factor", "add_offset", "units", "calendar")



def save(ds: xr.Dataset, path: str | os.PathLike, overwrite: bool = False) -> None:
    """Write `ds` to netCDF (``.nc``, h5netcdf engine) or zarr (``.zarr``), chosen by the path's suffix.

    Never destroys anything by accident: an existing `path` is refused unless ``overwrite=True``, and even then
    only a dlnode dataset is replaced (never a foreign file or directory). The data go to a hidden temporary
    sibling first and are renamed into place, so a failed or interrupted write leaves the old file as it was.
    Missing parent directories are created.

    Raises
    ------
    DatasetError : `ds` is not a dlnode dataset (see `validate`).
    PathExistsError, PathError : `path` exists, its directory is missing or not writable, or the write failed.
    """
    target = as_path(path)
    fmt = FORMATS[DATASET_SUFFIXES[suffix_of(target, tuple(DATASET_SUFFIXES), "path")]]
    check_bool("overwrite", overwrite)
    if not isinstance(ds, xr.Dataset):
        fail("ds", "must be an xarray Dataset from dlnode.integrate", shown(type(ds).__name__), "pass the dataset")
    out = ds.copy()
    out.attrs.update(dlnode_format=FORMAT, dlnode_format_version=FORMAT_VERSION)
    for variable in out.variables.values():  # a file's own layout (chunks, compressors) does not carry over
        variable.encoding = {k: v for k, v in variable.encoding.items() if k in KEPT_ENCODING}
    _check_contents(out, "ds")
    if "problem_fields" in out.attrs:
        problem_from(out)  # what open would refuse is not written
    check_output_path(target, overwrite, tuple(DATASET_SUFFIXES), "path", is_dlnode_store, make_parents=True)
    with atomic_path(target, replace=overwrite) as tmp:
        try:
            fmt.write(out, tmp)
        except OSError:
            raise  # the machine's (disk full, permissions): atomic_path says so
        except Exception as exc:  # noqa: BLE001 - the writer refused something in ds (an attribute netCDF cannot hold)
            fail(
                "ds",
                f"cannot be stored as {fmt.label}",
                shown(f"{type(exc).__name__}: {str(exc).splitlines()[0][:150] if str(exc) else ''}"),
                "store attributes as strings (json.dumps) or numbers, or save to .zarr",
                kind=DatasetError,
            )


def open_dataset(path: str | os.PathLike, chunks: dict[str, int] | None = None) -> xr.Dataset:
    """Read a dataset written by `save` (or a sweep store), checked: refuses what is not a dlnode dataset, a
    damaged file (unreadable, variables missing, zarr chunks missing where the cell is not `PENDING`, a netCDF
    chunk that fails its checksum, a run that says it finished but has no finite initial loss, a stored problem
    its constructor refuses) with a one-line `DatasetError` naming what is wrong. A file opened lazily
    (`chunks` given) is checked chunk by chunk when read, not here.

    Parameters
    ----------
    path : a ``.nc`` file or a ``.zarr`` store.
    chunks : None (default) loads everything into memory and closes the file — except a sweep store, which opens
        lazily with the store's own chunks (one task's cells a chunk: a grid larger than memory stays on disk);
        a dict such as ``{"depth": 1, "scale": 1, "seed": 1}`` opens lazily with dask (close the dataset when
        done); ``{}`` keeps the file's own chunks.
    """
    source, kind = check_input_path(path)
    if chunks is not None and not isinstance(chunks, dict):
        fail("chunks", "must be None or a dict of dim -> chunk size", chunks, 'pass e.g. chunks={"seed": 1}')
    fmt = format_of(source, kind)
    fmt.check(source)
    if chunks is None and fmt.lazy:  # a sweep store: its own chunks, lazily
        chunks = {}
    ds = _read(source, fmt, chunks)
    try:
        _check_contents(ds, f"path {str(source)!r}")
        fmt.check_chunks(source, ds)
        if "problem_fields" in ds.attrs:
            problem_from(ds)
        if chunks is None:
            ds = _load(ds, source)
        _check_complete(ds, source)
    except DlnodeError:
        ds.close()
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged chunk read by a check (status, the problem): name it
        ds.close()
        _unreadable(source, fmt.damaged_variable(source), exc)
    except BaseException:
        ds.close()
        raise
    return ds


def _read(source: Path, fmt: NetCDF | Zarr, chunks: dict | None) -> xr.Dataset:
    try:
        return fmt.read(source, chunks)
    except ImportError as exc:
        fail("chunks", "needs dask", shown(str(exc)), "pip install dask, or pass chunks=None", kind=DatasetError)
    except Exception as exc:  # noqa: BLE001 - whatever the reader says, the file is the cause: one line
        name = fmt.damaged_variable(source)
        if name is not None:  # an index coordinate is read on opening
            _unreadable(source, name, exc)
        fail(
            "path",
            f"cannot be read as {fmt.label} (damaged or truncated?)",
            shown(f"{str(source)!r}: {_first_line(exc)}"),
            "restore it from a copy or re-run the computation",
            kind=DatasetError,
        )


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def _unreadable(source: Path, name: str | None, exc: BaseException) -> NoReturn:
    what = f"variable {name!r}" if name else "a variable"
    fail(f"path {str(source)!r}", "is damaged",
         shown(f"{what} cannot be read: a chunk fails its checksum or cannot be decoded ({_first_line(exc)})"),
         "restore it from a copy or re-run the computation", kind=DatasetError)  # fmt: skip


def _load(ds: xr.Dataset, source: Path) -> xr.Dataset:
    """Read every variable into memory, one at a time, so that a damaged one is named."""
    with ds:
        for name, variable in ds.variables.items():
            try:
                variable.load()
            except Exception as exc:  # noqa: BLE001 - a chunk that fails its checksum or cannot be decoded
                _unreadable(source, name, exc)
        return ds.load()


# statuses that say a run went to its end: it had a finite initial loss (else it would have diverged at once) and
# reached a finite time
RAN = (int(Status.FINISHED), int(Status.CONVERGED), int(Status.NOT_CONVERGED), int(Status.SUBSPACE_OPTIMUM))


def _check_complete(ds: xr.Dataset, source: Path) -> None:
    """A cell whose status says it ran holds a finite loss at t = 0 and a finite `t_final`: data that read as NaN
    (a chunk lost, a variable overwritten) where the status promises numbers is damage."""
    if "study" in ds.attrs or not len(ds["time"]):
        return
    read = {}
    for name, part in (("status", ds["status"]), ("loss", ds["loss"].isel(time=0)), ("t_final", ds["t_final"])):
        try:
            read[name] = np.asarray(part.values)
        except Exception as exc:  # noqa: BLE001 - a lazily opened file, read here for the first time
            _unreadable(source, name, exc)
    ran = np.isin(read.pop("status"), RAN)
    for name, values in read.items():
        bad = ran & ~np.isfinite(values)
        if bad.any():
            what = "at time 0 " if name == "loss" else ""
            fail(f"path {str(source)!r}", "is damaged",
                 shown(f"variable {name!r} is not finite {what}in {int(bad.sum())} run(s) whose status says they ran"),
                 "restore it from a copy or re-run the computation", kind=DatasetError)  # fmt: skip
