"""The dataset schema (docs/schema.md): its variables and coordinates, assembly from solver results, the stored
problem, and validation. Files are `dlnode.data.files` (save, open) and `dlnode.data.formats`."""

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
           "problem_variables", "save", "to_dataset", "unpad_layers", "validate"]  # fmt: skip

RUN = ("depth", "scale", "seed")
# a sweep's swept axes beyond RUN: dims after RUN (and path), in this order
GRID_DIMS = ("flow", "init", "method", "lr", "batch", "noise")
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
    "wall_time": (RUN, "run time, compile time apart (its batch's, shared equally among the cells)", "s"),
}
_SCALAR_OBS = ("loss", "grad_norm", "balancedness")
# Saved only when asked for (integrate's `sharpness`, or by the central flow); checked like VARIABLES when present.
OPTIONAL_VARIABLES: dict[str, tuple[tuple[str, ...], str, str]] = {
    "sharpness": ((*RUN, "time", "eig"), "largest eigenvalues of the Hessian of L in the layers, descending",
                  "1/time"),
    "oscillation": ((*RUN, "time"), "central flow: predicted oscillation size sqrt(tr Sigma) of GD about it", "1"),
    "loss_averaged": ((*RUN, "time"), "central flow: predicted time-averaged GD loss L + <Sigma, H>/2", "1"),
    "regime": ((*RUN, "time"), "central flow: number of Hessian eigenvalues held at 2/lr (0: gradient flow)", "1"),
    "untracked_sharpness": ((*RUN, "time"), "central flow: the largest Hessian eigenvalue not tracked (the (k+1)-th); "
                            "past 2/lr the run stops as untracked_edge", "1/time"),
}


ALL_VARIABLES = {**VARIABLES, **OPTIONAL_VARIABLES}  # every variable a dataset may have, saved or optional

# The long names of the coordinates, one definition for `integrate`'s datasets and the sweep stores.
COORD_NAMES = {
    "depth": "network depth N (inf: N -> inf)",
    "scale": "initialisation scale (per layer or end to end: see the scale_of attribute)",
    "seed": "initialisation seed",
    "path": "noise seed of the path",
    "time": "flow time",
    "flow": "flow",
    "init": "initialisation",
    "method": "method requested",
    "lr": "gradient-descent step",
    "batch": "minibatch size of the stochastic methods",
    "noise": "label noise std delta of the stochastic methods",
}


def _pad_layers(layers: Sequence[np.ndarray], lead: tuple, n_layer: int, n_out: int, n_in: int) -> np.ndarray:
    """Stack per-layer arrays of shape (*lead, d_j, d_{j−1}) into (*lead, layer, out, in), NaN-padded."""
    out = np.full((*lead, n_layer, n_out, n_in), np.nan)
    for j, w in enumerate(layers):
        out[..., j, : w.shape[-2], : w.shape[-1]] = w
    return out


def unpad_layers(weights: np.ndarray, depth: float, d_in: int) -> list[np.ndarray] | None:
    """Layers W_1 … W_N of one run from the NaN-padded (layer, out, in) block; None for depth ∞ or a failed run.

    Layer j occupies the top-left (d_j, d_{j−1}) corner; d_j is the number of its rows that are not all NaN.
    """
    if not np.isfinite(depth):
        return None
    layers, cols = [], d_in
    for block in weights[: int(depth)]:
        rows_present = np.flatnonzero(~np.all(np.isnan(block[:, :cols]), axis=1))
        if rows_present.size == 0:
            return None
        layers.append(block[: rows_present[-1] + 1, :cols])
        cols = layers[-1].shape[0]
    return layers if all(np.all(np.isfinite(w)) for w in layers) else None


def to_dataset(
    runs: dict[float, Any],
    scales: Sequence[float],
    seeds: Sequence[int],
    attrs: dict[str, Any],
    save_weights: bool,
    paths: Sequence[int] | None = None,
) -> xr.Dataset:
    """Assemble per-depth `solvers.Solution`s (batch = scale × seed, row-major; × path with `paths`, the noise
    seeds of a stochastic method, a dim ``path`` after ``seed``) into one Dataset."""
    depths = list(runs)
    first = runs[depths[0]]
    shape = (len(scales), len(seeds)) + ((len(paths),) if paths is not None else ())
    n_layer = max(len(s.final) for s in runs.values()) or 1  # depth ∞ alone has no layers: one NaN layer
    n_out = max([w.shape[1] for s in runs.values() for w in s.final] or [first.observed["product"].shape[2]])
    n_in = max([w.shape[2] for s in runs.values() for w in s.final] or [first.observed["product"].shape[3]])
    data: dict[str, list[np.ndarray]] = {k: [] for k in VARIABLES}
    for sol in runs.values():

        def cell(a):  # noqa: ANN001, ANN202 - (batch, ...) → (scale, seed, ...)
            return np.asarray(a).reshape(*shape, *np.shape(a)[1:])

        for key in ("loss", "product", "singular_values", "grad_norm", "balancedness", *OPTIONAL_VARIABLES):
            if key in VARIABLES or key in sol.observed:
                data.setdefault(key, []).append(cell(sol.observed[key]))
        batch = sol.status.shape[0]
        data["weights_final"].append(cell(_pad_layers(sol.final, (batch,), n_layer, n_out, n_in)))
        if save_weights:
            lead = (batch, len(sol.ts))
            data["weights"].append(cell(_pad_layers(sol.observed["weights"], lead, n_layer, n_out, n_in)))
        data["status"].append(cell(sol.status))
        data["t_final"].append(cell(sol.t_final))
        data["num_steps"].append(cell(sol.num_steps))
        data["num_rejected"].append(cell(sol.num_rejected))
        data["wall_time"].append(np.full(shape, sol.wall_time / int(np.prod(shape))))
    coords: dict[str, Any] = {
        "depth": ("depth", np.asarray(depths, dtype=np.float64), {"long_name": COORD_NAMES["depth"]}),
        "scale": ("scale", np.asarray(scales, dtype=np.float64), {"long_name": COORD_NAMES["scale"]}),
        "seed": ("seed", np.asarray(seeds, dtype=np.int64), {"long_name": COORD_NAMES["seed"]}),
        "time": ("time", first.ts, {"long_name": COORD_NAMES["time"], "units": "time"}),
    }
    if paths is not None:
        coords["path"] = ("path", np.asarray(paths, dtype=np.int64), {"long_name": COORD_NAMES["path"]})
    if first.step is not None:
        coords["step"] = ("time", first.step, {"long_name": "gradient-descent step (time = step * lr)"})
    variables = {}
    for name, (dims, long_name, units) in ALL_VARIABLES.items():
        if not data.get(name):
            continue
        var_attrs = {"long_name": long_name, "units": units}
        if name == "status":
            var_attrs |= STATUS_FLAGS
        if paths is not None:
            dims = (*RUN, "path", *dims[len(RUN) :])
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
        variables[key] = (dims, np.array(value), attrs)  # a copy: the dataset never shares the problem's arrays
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
def validate(ds: xr.Dataset) -> None:
    """Raise `DatasetError` unless `ds` follows the schema: format attrs, required variables with their dims,
    long_name and units, the provenance attrs.

    The dims of every variable are the schema's, except that a sweep's swept axes (`GRID_DIMS`: flow, init,
    method, lr, those the dataset has as dims, each with its coordinate) follow the run dims in every per-cell
    variable, in that order."""
    _check_contents(ds, "ds")
    grid = ("path",) * ("path" in ds.dims) + tuple(d for d in GRID_DIMS if d in ds.dims)
    for d in grid:
        if d not in ds.coords:
            fail("ds", f"swept dim {d!r} must have its coordinate", None, "rebuild it with dlnode.sweeps.sweep",
                 kind=DatasetError)  # fmt: skip
    for name, (dims, _, _) in ALL_VARIABLES.items():
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
    for name, (dims, _, _) in ALL_VARIABLES.items():
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


