"""The dataset schema (docs/schema.md): assembly from solver results, validation, and storage.

A dataset written by `save` and read back by `open` is identical (`xarray.testing.assert_identical`).
netCDF (h5netcdf) is for single runs and export; zarr is the working store of sweeps.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from .problems import Problem
from .solvers.core import Status

__all__ = ["STATUS_MEANINGS", "VARIABLES", "open_dataset", "problem_from", "problem_variables", "save", "to_dataset",
           "validate"]  # fmt: skip

RUN = ("depth", "scale", "seed")
STATUS_MEANINGS = {int(s): s.meaning for s in Status}

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
        "depth": ("depth", np.asarray(depths, dtype=np.float64), {"long_name": "network depth N (inf: N -> inf)"}),
        "scale": ("scale", np.asarray(scales, dtype=np.float64), {"long_name": "per-layer initialisation scale"}),
        "seed": ("seed", np.asarray(seeds, dtype=np.int64), {"long_name": "initialisation seed"}),
        "time": ("time", first.ts, {"long_name": "flow time", "units": "time"}),
    }
    if first.step is not None:
        coords["step"] = ("time", first.step, {"long_name": "gradient-descent step (time = step * lr)"})
    variables = {}
    for name, (dims, long_name, units) in VARIABLES.items():
        if not data[name]:
            continue
        var_attrs = {"long_name": long_name, "units": units}
        if name == "status":
            var_attrs["flag_values"] = " ".join(str(k) for k in STATUS_MEANINGS)
            var_attrs["flag_meanings"] = " ".join(STATUS_MEANINGS.values())
        variables[name] = (dims, np.stack(data[name]), var_attrs)
    return xr.Dataset(variables, coords=coords, attrs=attrs)


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
    """The problem a dataset was integrated on, rebuilt from its ``problem_*`` variables."""
    if "problem_fields" not in ds.attrs:
        raise ValueError("dataset holds no problem fields (attrs['problem_fields']); pass the problem explicitly")
    meta = json.loads(ds.attrs["problem_fields"])
    arrays = {}
    for name in ds.data_vars:
        if str(name).startswith(PROBLEM_PREFIX):
            value = ds[name].values
            arrays[str(name)[len(PROBLEM_PREFIX) :]] = (
                value.astype(bool) if ds[name].attrs.get("dtype") == "bool" else value
            )
    return Problem.from_fields(meta["kind"], arrays, meta["scalars"])


def validate(ds: xr.Dataset) -> None:
    """Raise ValueError unless `ds` follows the schema: required variables with their dims, long_name, units."""
    for name, (dims, _, _) in VARIABLES.items():
        if name not in ds:
            if name == "weights":
                continue
            raise ValueError(f"dataset is missing variable {name!r}; expected the dlnode schema (docs/schema.md)")
        if tuple(ds[name].dims) != dims:
            raise ValueError(f"variable {name!r} must have dims {dims}; got {tuple(ds[name].dims)}")
        for key in ("long_name", "units"):
            if key not in ds[name].attrs:
                raise ValueError(f"variable {name!r} lacks the attribute {key!r}")
    for key in ("dlnode_version", "problem", "method", "flow"):
        if key not in ds.attrs:
            raise ValueError(f"dataset lacks the attribute {key!r}")
    json.loads(ds.attrs["problem"])


def _format(path: str | os.PathLike) -> str:
    suffix = os.fspath(path).rstrip("/").lower()
    if suffix.endswith(".nc"):
        return "netcdf"
    if suffix.endswith(".zarr"):
        return "zarr"
    raise ValueError(f"path must end in .nc (netCDF) or .zarr; got {os.fspath(path)!r}")


def save(ds: xr.Dataset, path: str | os.PathLike) -> None:
    """Write `ds` to netCDF (``.nc``, h5netcdf engine) or zarr (``.zarr``), chosen by the path's suffix."""
    kind = _format(path)
    parent = os.path.dirname(os.fspath(path).rstrip("/"))
    if parent:
        os.makedirs(parent, exist_ok=True)
    if kind == "netcdf":
        ds.to_netcdf(path, engine="h5netcdf")
    else:
        ds.to_zarr(path, mode="w", consolidated=False)


def open_dataset(path: str | os.PathLike) -> xr.Dataset:
    """Read a dataset written by `save` (fully loaded into memory, file closed)."""
    kind = _format(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"path does not exist: {os.fspath(path)!r}")
    if kind == "netcdf":
        with xr.open_dataset(path, engine="h5netcdf") as ds:
            return ds.load()
    with xr.open_zarr(path, consolidated=False) as ds:
        return ds.load()
