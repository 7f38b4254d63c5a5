"""The dataset schema (docs/schema.md): assembly from solver results, validation, and storage.

A dataset written by `save` and read back by `open` is identical (`xarray.testing.assert_identical`).
netCDF (h5netcdf) is for single runs and export; zarr is the working store of sweeps.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import xarray as xr

from dlnode.errors import DatasetError, DlnodeError, fail, shown
from dlnode.problems.kinds import Problem
from dlnode.solvers.core import Status
from dlnode.solvers.registry import METHODS
from dlnode.data.storage import DATASET_SUFFIXES, HDF5_SIGNATURE, atomic_path, check_input_path, check_output_path, damaged_hdf5_array, is_dlnode_store, missing_chunks, suffix_of
from dlnode.checks import check_bool

__all__ = ["FORMAT", "FORMAT_VERSION", "GRID_DIMS", "STATUS_MEANINGS", "VARIABLES", "open_dataset", "problem_from",
           "problem_variables", "save", "to_dataset", "validate"]  # fmt: skip

RUN = ("depth", "scale", "seed")
GRID_DIMS = ("flow", "init", "method", "lr")  # a sweep's swept axes beyond RUN: dims after RUN, in this order
FORMAT = "dlnode-dataset"  # attrs["dlnode_format"] of every dataset dlnode writes
FORMAT_VERSION = 1  # attrs["dlnode_format_version"]: raise it when the schema changes incompatibly
STATUS_MEANINGS = {int(s): s.meaning for s in Status}
STATUS_FLAGS = {"flag_values": " ".join(map(str, STATUS_MEANINGS)), "flag_meanings": " ".join(STATUS_MEANINGS.values())}
# `method_used` (a sweep store's, and a dataset's whose depths ran different methods): int8 codes of the methods
METHOD_CODES = {name: i for i, name in enumerate(sorted(METHODS))}
METHOD_USED_ATTRS = {
    "long_name": "method that ran the cell", "units": "1",
    "flag_values": " ".join(str(i) for i in METHOD_CODES.values()), "flag_meanings": " ".join(METHOD_CODES),
}  # fmt: skip

# name → (dims, long_name, units)
VARIABLES: dict[str, tuple[tuple[str, ...], str, str]] = {
    "loss": ((*RUN, "time"), "training loss l(W(t))", "1"),
    "product": ((*RUN, "time", "row", "col"), "end-to-end matrix W(t) = W_N...W_1", "1"),
    "singular_values": ((*RUN, "time", "k"), "singular values of W(t), descending", "1"),
    "grad_norm": ((*RUN, "time"), "norm of the gradient over all layers", "1"),
    "balancedness": ((*RUN, "time"), "max_j ||D_j(t) - D_j(0)||_F, D_j = W_{j+1}^T W_{j+1} - W_j W_j^T", "1"),
    "weights_final": ((*RUN, "layer", "out", "in"), "per-layer weights at the end of integration", "1"),
    "weights": ((*RUN, "time", "layer", "out", "in"), "per-layer weights along time", "1"),
    "status": (RUN, "run status", "1"),
    "t_final": (RUN, "flow time the run reached", "time"),
    "num_steps": (RUN, "accepted solver steps (gradient-descent steps for gd)", "1"),
    "num_rejected": (RUN, "rejected solver steps (-1: not reported by the method)", "1"),
    "wall_time": (RUN, "run time, compile time apart (a share of its vmapped batch)", "s"),
}
_SCALAR_OBS = ("loss", "grad_norm", "balancedness")


# The long names of the coordinates, one definition for `integrate`'s datasets and the sweep stores.
COORD_NAMES = {
    "depth": "network depth N (inf: N -> inf)",
    "scale": "initialisation scale (per layer or end to end: see the scale_of attribute)",
    "seed": "initialisation seed",
    "time": "flow time",
    "flow": "flow",
    "init": "initialisation",
    "method": "method requested",
    "lr": "gradient-descent step",
}


def _pad_layers(layers: Sequence[np.ndarray], lead: tuple, n_layer: int, n_out: int, n_in: int) -> np.ndarray:
    """Stack per-layer arrays of shape (*lead, d_j, d_{j−1}) into (*lead, layer, out, in), NaN-padded."""
    out = np.full((*lead, n_layer, n_out, n_in), np.nan)
    for j, w in enumerate(layers):
        out[..., j, : w.shape[-2], : w.shape[-1]] = w
    return out


def to_dataset(
    runs: dict[float, Any],
    scales: Sequence[float],
    seeds: Sequence[int],
    attrs: dict[str, Any],
    save_weights: bool,
) -> xr.Dataset:
    """Assemble per-depth `solvers.Solution`s (batch = scale × seed, row-major) into one Dataset."""
    depths = list(runs)
    first = runs[depths[0]]
    shape = (len(scales), len(seeds))
    n_layer = max(len(s.final) for s in runs.values()) or 1  # depth ∞ alone has no layers: one NaN layer
    n_out = max([w.shape[1] for s in runs.values() for w in s.final] or [first.observed["product"].shape[2]])
    n_in = max([w.shape[2] for s in runs.values() for w in s.final] or [first.observed["product"].shape[3]])
    data: dict[str, list[np.ndarray]] = {k: [] for k in VARIABLES}
    for sol in runs.values():

        def cell(a):  # noqa: ANN001, ANN202 - (batch, ...) → (scale, seed, ...)
            return np.asarray(a).reshape(*shape, *np.shape(a)[1:])

        for key in ("loss", "product", "singular_values", "grad_norm", "balancedness"):
            data[key].append(cell(sol.observed[key]))
        batch = sol.status.shape[0]
        data["weights_final"].append(cell(_pad_layers(sol.final, (batch,), n_layer, n_out, n_in)))
        if save_weights:
            lead = (batch, len(sol.ts))
            data["weights"].append(cell(_pad_layers(sol.observed["weights"], lead, n_layer, n_out, n_in)))
        data["status"].append(cell(sol.status))
        data["t_final"].append(cell(sol.t_final))
        data["num_steps"].append(cell(sol.num_steps))
        data["num_rejected"].append(cell(sol.num_rejected))
        data["wall_time"].append(np.full(shape, sol.wall_time / (shape[0] * shape[1])))
    coords: dict[str, Any] = {
        "depth": ("depth", np.asarray(depths, dtype=np.float64), {"long_name": COORD_NAMES["depth"]}),
        "scale": ("scale", np.asarray(scales, dtype=np.float64), {"long_name": COORD_NAMES["scale"]}),
        "seed": ("seed", np.asarray(seeds, dtype=np.int64), {"long_name": COORD_NAMES["seed"]}),
        "time": ("time", first.ts, {"long_name": COORD_NAMES["time"], "units": "time"}),
    }
    if first.step is not None:
        coords["step"] = ("time", first.step, {"long_name": "gradient-descent step (time = step * lr)"})
    variables = {}
    for name, (dims, long_name, units) in VARIABLES.items():
        if not data[name]:
            continue
        var_attrs = {"long_name": long_name, "units": units}
        if name == "status":
            var_attrs |= STATUS_FLAGS
        variables[name] = (dims, np.stack(data[name]), var_attrs)
    return xr.Dataset(variables, coords=coords, attrs={"dlnode_format": FORMAT, "dlnode_format_version": FORMAT_VERSION,
                                                       **attrs})  # fmt: skip


def with_problem(ds: xr.Dataset, problem: Problem) -> xr.Dataset:
    """Attach the problem's defining fields (see `problem_variables`) to a dataset."""
    variables, fields = problem_variables(problem)
    out = ds.assign(variables)
    out.attrs["problem_fields"] = fields
    return out


PROBLEM_PREFIX = "problem_"


def problem_variables(problem: Problem) -> tuple[dict[str, tuple], str]:
    """The problem's defining arrays as dataset variables ``problem_<field>`` and its scalar fields as JSON.

    Matrices of the end-to-end shape use the dims (row, col); other arrays get dims of their own. Booleans are
    stored by xarray's own encoding (int8 on disk, bool again on reading).
    """
    arrays, scalars = problem.fields()
    variables = {}
    for name, value in arrays.items():
        key = PROBLEM_PREFIX + name
        if value.shape == (problem.d_out, problem.d_in):
            dims: tuple[str, ...] = ("row", "col")
        else:
            dims = tuple(f"{key}_{i}" for i in range(value.ndim))
        attrs = {"long_name": f"problem field {name!r} (rebuild with dlnode.problem_from)", "units": "1"}
        variables[key] = (dims, value, attrs)
    return variables, json.dumps({"kind": problem.kind, "scalars": scalars}, sort_keys=True)


def problem_from(ds: xr.Dataset) -> Problem:
    """The problem a dataset was integrated on, rebuilt from its ``problem_*`` variables through the problem's
    validating constructor (a stored problem that the constructor would refuse is refused here)."""
    raw = ds.attrs.get("problem_fields")
    if raw is None:
        fail("ds", "holds no problem fields (attrs['problem_fields'])", None, "pass the problem explicitly")
    where = "attrs['problem_fields']"
    try:
        meta = json.loads(raw) if isinstance(raw, str) else None
    except (ValueError, RecursionError):
        meta = None
    if not isinstance(meta, dict) or set(meta) != {"kind", "scalars"} or not isinstance(meta["scalars"], dict):
        fail(
            where,
            "must be the JSON object {kind, scalars} that dlnode writes",
            shown(repr(raw)[:60]),
            "the dataset is damaged; pass the problem explicitly",
            kind=DatasetError,
        )
    arrays = {}
    for name in ds.data_vars:
        if str(name).startswith(PROBLEM_PREFIX):
            arrays[str(name)[len(PROBLEM_PREFIX) :]] = ds[name].values
    try:
        return Problem.from_fields(meta["kind"], arrays, meta["scalars"])
    except DlnodeError as exc:
        inner = ", ".join(str(exc).split("; ")[:2])  # the constructor's rule and value, without its fix
        fail(
            where,
            "must describe a valid problem",
            shown(inner),
            "the dataset is damaged; pass the problem explicitly",
            kind=DatasetError,
        )


REQUIRED_COORDS = ("depth", "scale", "seed", "time")
SWEEP_WITNESSES = ("loss", "product", "singular_values", "grad_norm", "t_final")
KEPT_ENCODING = ("dtype", "_FillValue", "missing_value", "scale_factor", "add_offset", "units", "calendar")


def validate(ds: xr.Dataset) -> None:
    """Raise `DatasetError` unless `ds` follows the schema: format attrs, required variables with their dims,
    long_name and units, the provenance attrs.

    The dims of every variable are the schema's, except that a sweep's swept axes (`GRID_DIMS`: flow, init,
    method, lr, those the dataset has as dims, each with its coordinate) follow the run dims in every per-cell
    variable, in that order."""
    _check_contents(ds, "ds")
    grid = tuple(d for d in GRID_DIMS if d in ds.dims)
    for d in grid:
        if d not in ds.coords:
            fail("ds", f"swept dim {d!r} must have its coordinate", None, "rebuild it with dlnode.sweeps.sweep",
                 kind=DatasetError)  # fmt: skip
    for name, (dims, _, _) in VARIABLES.items():
        expected = (*RUN, *grid, *dims[len(RUN) :])
        if name in ds and tuple(ds[name].dims) != expected:
            fail(
                "ds",
                f"variable {name!r} must have dims {expected}",
                tuple(ds[name].dims),
                "rebuild it with integrate (or dlnode.sweeps.sweep)",
                kind=DatasetError,
            )
        for key in ("long_name", "units"):
            if name in ds and key not in ds[name].attrs:
                fail("ds", f"variable {name!r} lacks the attribute {key!r}", None, "rebuild it", kind=DatasetError)
    for key in ("dlnode_version", "problem", "method", "flow"):
        if key not in ds.attrs:
            fail("ds", f"lacks the attribute {key!r}", None, "rebuild it with integrate", kind=DatasetError)
    try:
        json.loads(ds.attrs["problem"])
    except (ValueError, TypeError, RecursionError):
        fail(
            "ds",
            "attrs['problem'] must be JSON",
            shown(repr(ds.attrs["problem"])[:60]),
            "rebuild it",
            kind=DatasetError,
        )


def _check_format(attrs: dict, where: str) -> None:
    """The format attrs: ``dlnode_format == "dlnode-dataset"`` and a format version this dlnode reads."""
    fmt, version = attrs.get("dlnode_format"), attrs.get("dlnode_format_version")
    if fmt != FORMAT:
        if fmt is None and "dlnode_version" in attrs:  # written by dlnode before the format attrs existed
            fail(where, f"was written by dlnode {attrs['dlnode_version']} before format version {FORMAT_VERSION}",
                 shown(f"no attrs['dlnode_format'] = {FORMAT!r}"), "re-run it with this dlnode (or read it with "
                 "xarray.open_dataset)", kind=DatasetError)  # fmt: skip
        fail(where, "is not a dlnode dataset", shown(f"no attrs['dlnode_format'] = {FORMAT!r} (a plain xarray or "
             "netCDF dataset?)"), "open it with xarray.open_dataset instead", kind=DatasetError)  # fmt: skip
    if not isinstance(version, (int, np.integer)) or isinstance(version, bool) or version < 1:
        fail(
            where,
            "has a damaged format version",
            shown(f"dlnode_format_version={version!r}"),
            f"expected an integer, {FORMAT_VERSION} for this dlnode",
            kind=DatasetError,
        )
    if version > FORMAT_VERSION:
        fail(
            where,
            f"was written by a newer dlnode (format version {int(version)}; this one reads {FORMAT_VERSION})",
            None,
            "upgrade dlnode (pip install -U dlnode)",
            kind=DatasetError,
        )


def _check_contents(ds: xr.Dataset, where: str) -> None:
    """What `open` and `save` require: the format attrs, every schema variable (``weights`` is optional) and
    coordinate, each with at least the schema's dims, and status codes from the `Status` vocabulary."""
    _check_format(ds.attrs, where)
    if "study" in ds.attrs:  # a study's own dataset (studies.run): its own dims and variables, not the run schema
        return
    missing = [n for n in VARIABLES if n != "weights" and n not in ds.data_vars]
    missing += [f"coordinate {c}" for c in REQUIRED_COORDS if c not in ds.coords]
    if missing:
        fail(
            where,
            "is not a complete dlnode dataset",
            shown(f"missing {', '.join(map(repr, missing))}"),
            "restore it from a copy or re-run the computation",
            kind=DatasetError,
        )
    for name, (dims, _, _) in VARIABLES.items():
        if name in ds and not set(dims) <= set(ds[name].dims):
            fail(
                where,
                f"variable {name!r} must have the dims {dims}",
                shown(str(tuple(ds[name].dims))),
                "keep every dim when subsetting, e.g. ds.isel(depth=[0]) rather than ds.isel(depth=0)",
                kind=DatasetError,
            )
    status = np.asarray(ds["status"].values)
    if status.dtype.kind not in "iu" or not np.isin(status, list(STATUS_MEANINGS)).all():
        bad = np.unique(status[~np.isin(status, list(STATUS_MEANINGS))])[:5] if status.dtype.kind in "iuf" else []
        fail(
            where,
            "variable 'status' must hold the integer codes of dlnode.Status",
            shown(f"dtype {status.dtype}, values {[int(b) if b == b else b for b in bad]}"),
            "the dataset is damaged",
            kind=DatasetError,
        )


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
    target = Path(os.fspath(path)).expanduser()
    kind = DATASET_SUFFIXES[suffix_of(target, tuple(DATASET_SUFFIXES), "path")]
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
            if kind == "netcdf":
                _with_checksums(out)
                out.to_netcdf(tmp, engine="h5netcdf")
            else:
                out.to_zarr(tmp, mode="w-", consolidated=False, write_empty_chunks=True)
        except OSError:
            raise  # the machine's (disk full, permissions): atomic_path says so
        except Exception as exc:  # noqa: BLE001 - the writer refused something in ds (an attribute netCDF cannot hold)
            fail(
                "ds",
                f"cannot be stored as {'netCDF' if kind == 'netcdf' else 'zarr'}",
                shown(f"{type(exc).__name__}: {str(exc).splitlines()[0][:150] if str(exc) else ''}"),
                "store attributes as strings (json.dumps) or numbers, or save to .zarr",
                kind=DatasetError,
            )


def _with_checksums(ds: xr.Dataset) -> None:
    """Ask HDF5 for a Fletcher-32 checksum on every chunk of every numeric array: a damaged chunk then fails to
    read (found by `open`) instead of reading as wrong numbers. (Scalars cannot be chunked and get none.)"""
    for variable in ds.variables.values():
        if variable.ndim and variable.dtype.kind in "biuf":
            variable.encoding["fletcher32"] = True


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
    if kind == "netcdf":
        with open(source, "rb") as f:
            head = f.read(8)
        if head[:3] == b"CDF":
            fail(
                "path",
                "is a netCDF-3 (classic) file, not a dlnode dataset (dlnode writes netCDF-4)",
                str(source),
                "open it with xarray.open_dataset",
                kind=DatasetError,
            )
        if head != HDF5_SIGNATURE:
            fail(
                "path",
                "is not a netCDF-4 (HDF5) file",
                shown(f"{str(source)!r} starts with {head!r}"),
                "pass a .nc file written by dlnode.save",
                kind=DatasetError,
            )
    elif not ((source / "zarr.json").is_file() or (source / ".zgroup").is_file()):
        fail(
            "path",
            "is a directory but not a zarr store (no zarr.json)",
            str(source),
            "pass a .zarr store written by dlnode",
            kind=DatasetError,
        )
    ds = _read(source, kind, chunks)
    if chunks is None and kind == "zarr" and SWEEP_CONFIG_ATTR in ds.attrs:
        ds.close()
        chunks = {}
        ds = _read(source, kind, chunks)
    try:
        _check_contents(ds, f"path {str(source)!r}")
        if kind == "zarr":
            _check_chunks(source, ds)
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
        _unreadable(source, damaged_hdf5_array(source) if kind == "netcdf" else None, exc)
    except BaseException:
        ds.close()
        raise
    return ds


SWEEP_CONFIG_ATTR = "dlnode_sweep_config"  # the attribute that marks a sweep store (see dlnode.sweeps.store)


def _read(source: Path, kind: str, chunks: dict | None) -> xr.Dataset:
    try:
        if kind == "netcdf":
            return xr.open_dataset(source, engine="h5netcdf", chunks=chunks)
        return xr.open_zarr(source, consolidated=False, chunks=chunks)
    except ImportError as exc:
        fail("chunks", "needs dask", shown(str(exc)), "pip install dask, or pass chunks=None", kind=DatasetError)
    except Exception as exc:  # noqa: BLE001 - whatever the reader says, the file is the cause: one line
        name = damaged_hdf5_array(source) if kind == "netcdf" else None
        if name is not None:  # an index coordinate is read on opening
            _unreadable(source, name, exc)
        fail(
            "path",
            f"cannot be read as {'netCDF-4' if kind == 'netcdf' else 'zarr'} (damaged or truncated?)",
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
RAN = (int(Status.FINISHED), int(Status.CONVERGED), int(Status.NOT_CONVERGED))


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


def _check_chunks(source: Path, ds: xr.Dataset) -> None:
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
