"""The zarr store of a sweep: its layout, the template, region writes of cells, resume checks, lazy opening.

The template is written first (coordinates, the problem, attrs with the full config and provenance; every cell
variable filled with NaN, ``status`` with ``Status.PENDING``); then each task region-writes its cells, ``status``
last, so a cell counts as done only once its status is on disk. Chunks are one task's cells (one cell with
``batch = 1``), so tasks write disjoint chunks and need no lock. Zarr writes each chunk to a temporary file and
renames it, so a process killed mid-write leaves the old chunk or the new one, never half of one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import os
import shutil
import threading
import types
import uuid
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
import zarr
import zarr.api.asynchronous

from dlnode.data.formats import SWEEP_CONFIG_ATTR, NetCDF
from dlnode.data.schema import (
    ALL_VARIABLES,
    COORD_NAMES,
    GRID_DIMS,
    METHOD_USED_ATTRS,
    OPTIONAL_VARIABLES,
    RUN,
    STATUS_FLAGS,
    VARIABLES,
    with_problem,
)
from dlnode.data.storage import atomic_path, check_output_path, is_dlnode_store
from dlnode.errors import DatasetError, fail, refused, shown
from dlnode.problems.kinds import Problem
from dlnode.run.integrate import dataset_attrs
from dlnode.run.plan import Plan
from dlnode.solvers import Status
from dlnode.solvers.gd import FIXED_STEP
from dlnode.sweeps.config import SweepConfig, config_diff, layer_extent, save_times

__all__ = ["SWEEP_ATTR", "Layout", "describe", "export", "is_sweep_store", "open_store", "prepare", "stored_chunks",
           "write_cells"]  # fmt: skip

SWEEP_ATTR = SWEEP_CONFIG_ATTR
EXTRA_AXES = GRID_DIMS  # grid axes beyond depth × scale × seed: dims only when swept
INTEGERS = {"status": int(Status.PENDING), "num_steps": -1, "num_rejected": -1, "method_used": -1}
REDO = (int(Status.PENDING), int(Status.INTERRUPTED))  # cells a run computes; every other status is final
PER_CALL_ATTRS = ("compile_time", "run_time", "config")  # attrs of one integrate call that no store-wide value has


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where every cell of a config lives in the store: the dims, their coordinates, the chunking by task."""

    config: SweepConfig
    problem: Problem
    axes: dict[str, list]  # run dims first (depth, scale, seed), then the swept extra axes
    fixed: dict[str, Any]  # extra axes with a single value (lr None when no cell takes one)
    times: np.ndarray
    extent: tuple[int, int, int]  # (layer, out, in) of the padded weights
    chunk: dict[str, int]  # cells per chunk along each run dim
    rtol: float  # one rtol and atol for every cell (the config's, or integrate's defaults over the whole grid)
    atol: float

    @classmethod
    def of(cls, config: SweepConfig, batch: int, tolerances: tuple[float, float] | None = None) -> Layout:
        """The layout of `config` cut in tasks of `batch` cells; `tolerances` (rtol, atol) as resolved before (a
        store's own), else resolved here."""
        problem = config.problem.build()
        grid = config.grid
        axes: dict[str, list] = {"depth": config.depths(), "scale": list(grid.scale), "seed": list(grid.seed)}
        paths = config.integrate.path_seeds()
        if paths is not None:  # a stochastic method's noise seeds: a run dim after seed, as in integrate's datasets
            axes["path"] = paths
        fixed: dict[str, Any] = {}
        for name in EXTRA_AXES:
            values = list(getattr(grid, name)) or [None]
            if len(values) > 1:
                axes[name] = values
            else:
                fixed[name] = values[0]
        n_scale, n_seed = len(axes["scale"]), len(axes["seed"])
        if batch >= n_seed:
            per_seed, per_scale = n_seed, min(n_scale, batch // n_seed)
        else:
            per_seed, per_scale = math.ceil(n_seed / math.ceil(n_seed / batch)), 1
        chunk = {name: 1 for name in axes} | {"scale": per_scale, "seed": per_seed}
        if paths is not None:  # a task runs every path of its cells (integrate vmaps them together)
            chunk["path"] = len(paths)
        times = save_times(config, problem)
        if tolerances is None:
            tolerances = _tolerances(config, problem, times)
        return cls(config, problem, axes, fixed, times, layer_extent(config, problem), chunk, *map(float, tolerances))

    def plan(self) -> Any:
        """`dlnode.integrate`'s plan of the whole grid as one call, with the store's rtol and atol."""
        return _grid_plan(self.config, self.problem, self.times, self.config.grid.flow[0], self.rtol, self.atol)

    @property
    def run_dims(self) -> tuple[str, ...]:
        return tuple(self.axes)

    def dims_of(self, name: str) -> tuple[str, ...]:
        dims = ALL_VARIABLES[name][0] if name in ALL_VARIABLES else RUN
        return (*self.run_dims, *dims[len(RUN) :])

    def sizes(self) -> dict[str, int]:
        n_layer, n_out, n_in = self.extent
        d_out, d_in = self.problem.d_out, self.problem.d_in
        sizes = {k: len(v) for k, v in self.axes.items()}
        eig = max(self.config.integrate.sharpness, 1 if "central" in self.config.grid.flow else 0)
        return sizes | {"time": len(self.times), "row": d_out, "col": d_in, "k": min(d_out, d_in),
                        "layer": n_layer, "out": n_out, "in": n_in, "eig": eig}  # fmt: skip

    def variables(self) -> list[str]:
        """The store's variables, as integrate's datasets of the grid's cells have them: the optional ones where a
        cell saves them (a cell that does not, as the gradient flow beside a central one, holds NaN there)."""
        names = [n for n in VARIABLES if n != "weights" or self.config.integrate.save_weights]
        if self.config.integrate.sharpness or "central" in self.config.grid.flow:
            names.append("sharpness")
        if "central" in self.config.grid.flow:
            names += [n for n in OPTIONAL_VARIABLES if n != "sharpness"]
        return [n for n in names if n != "status"] + ["method_used", "status"]  # status last: the done marker

    def cells(self) -> int:
        return math.prod(len(v) for v in self.axes.values())


def _grid_plan(config: SweepConfig, problem: Problem, times: np.ndarray, flow: str, rtol: float | None,
               atol: float | None) -> Any:  # fmt: skip
    """`integrate`'s plan of every depth and scale of the grid in one call, as a task calls it: the first init,
    the largest lr, the requested method (``auto`` planned as ``tsit5``: what it chooses is per task)."""
    grid, run = config.grid, config.integrate
    method = grid.method[0] if grid.method[0] != "auto" else "tsit5"
    arguments = run.arguments() | {"rtol": rtol, "atol": atol}
    return Plan.build(problem, depth=config.depths(), init=grid.init[0], scale=list(grid.scale), seed=[0], flow=flow,
                      method=method, lr=max(grid.lr) if grid.lr else None, batch=(grid.batch or [None])[0],
                      noise=(grid.noise or [None])[0], saveat=times[1:], progress=False, **arguments)  # fmt: skip


def _tolerances(config: SweepConfig, problem: Problem, times: np.ndarray) -> tuple[float, float]:
    """(rtol, atol) for every cell: the config's, or integrate's defaults over all depths and scales of the grid
    (the tightest over the swept flows), so every cell equals a plain `integrate` call given these two values."""
    run = config.integrate
    rtol = run.rtol
    if rtol is None:
        rtol = min(_grid_plan(config, problem, times, f, None, None).controls.rtol for f in config.grid.flow)
    return rtol, _grid_plan(config, problem, times, config.grid.flow[0], rtol, run.atol).controls.atol


def _coords(layout: Layout) -> dict[str, Any]:
    coords: dict[str, Any] = {}
    for name, values in layout.axes.items():
        numbers = {"seed": np.int64, "path": np.int64, "batch": np.int64, "depth": np.float64, "scale": np.float64,
                   "lr": np.float64, "noise": np.float64}  # fmt: skip
        dtype = numbers.get(name, str)
        coords[name] = (name, np.asarray(values, dtype=dtype), {"long_name": COORD_NAMES[name]})
    coords["time"] = ("time", layout.times, {"long_name": COORD_NAMES["time"], "units": "time"})
    if layout.fixed.get("flow") == "end_to_end":  # as integrate's end-to-end datasets: time is tau = N t
        depth = np.asarray(layout.axes["depth"])[:, None]
        with np.errstate(invalid="ignore"):
            t = np.where(np.isinf(depth), np.nan, layout.times[None, :] / depth)
        coords["time"][2]["long_name"] = "rescaled time tau = N t"
        coords["t"] = (("depth", "time"), t, {"long_name": "per-layer gradient-flow time t = tau / N", "units": "time"})
    return coords


def _template(layout: Layout) -> tuple[xr.Dataset, dict]:
    sizes, variables, encoding = layout.sizes(), {}, {}
    for name in layout.variables():
        dims = layout.dims_of(name)
        shape = tuple(sizes[d] for d in dims)
        chunks = tuple(layout.chunk.get(d, sizes[d]) for d in dims)
        # one dask chunk, the store's chunks in the encoding: only the metadata is written (compute=False), and a
        # grid of millions of cells does not build a graph of one task per chunk first (minutes for 2e6 cells)
        encoding[name] = {"chunks": chunks}
        if name in INTEGERS:
            dtype = np.int8 if name == "method_used" else np.int64
            data = da.full(shape, INTEGERS[name], dtype=dtype, chunks=-1)
            encoding[name]["fill_value"] = INTEGERS[name]
        else:
            data = da.full(shape, np.nan, chunks=-1)
        if name == "method_used":
            attrs = dict(METHOD_USED_ATTRS)
        else:
            attrs = {"long_name": ALL_VARIABLES[name][1], "units": ALL_VARIABLES[name][2]}
        if name == "status":
            attrs |= STATUS_FLAGS
        variables[name] = (dims, data, attrs)
    ds = xr.Dataset(variables, coords=_coords(layout), attrs=_attrs(layout))
    return with_problem(ds, layout.problem), encoding


def _attrs(layout: Layout) -> dict[str, Any]:
    """`dlnode.integrate`'s attrs for the whole grid as one call (one builder, so the two keep the same keys and
    meanings), less the per-call timings, with the swept axes marked ``"swept"`` and the sweep's own keys."""
    runs = {d: types.SimpleNamespace(ts=layout.times, compile_time=0.0, wall_time=0.0) for d in layout.axes["depth"]}
    attrs = {k: v for k, v in dataset_attrs(layout.plan(), runs).items() if k not in PER_CALL_ATTRS}
    for name in ("flow", "init", "lr", "batch", "noise"):
        if name in layout.axes:
            attrs["label_noise" if name == "noise" else name] = "swept"
    attrs |= _method_attrs(layout)
    run = layout.config.integrate
    attrs["saveat"] = run.saveat if isinstance(run.saveat, int) else "explicit"  # the config's: tasks pass times
    if attrs["method"] == "per cell" and run.max_steps is None:
        attrs["max_steps"] = "per cell: the default of the method that ran"
    return attrs | {
        "dlnode_format": "dlnode-dataset",
        "dlnode_format_version": 1,
        SWEEP_ATTR: layout.config.canonical(),
        "swept_axes": " ".join(d for d in layout.axes if d in EXTRA_AXES),
        "sweep_batch": math.prod(layout.chunk.values()),
        "sweep_runs": "[]",
    }


def _method_attrs(layout: Layout) -> dict[str, str]:
    """As in `integrate`: ``method`` is the method that ran, ``method_requested`` the one asked for. A store has
    one ``method`` only when every cell ran the same, known before any runs (a given method); else ``"per cell"``,
    and the variable ``method_used`` holds it."""
    if "method" in layout.axes:
        return {"method": "per cell", "method_requested": "swept", "method_reason": "swept: the method coordinate"}
    requested = layout.fixed["method"]
    if requested == "auto":
        reason = "auto: chosen per task (one depth and its batch of cells), in method_used"
        return {"method": "per cell", "method_requested": "auto", "method_reason": reason}
    return {"method": requested, "method_requested": requested, "method_reason": "given"}


def is_sweep_store(path: str | os.PathLike) -> bool:
    """Whether `path` is a zarr store that `dlnode.sweeps.sweep` made (it carries the config attribute)."""
    try:
        return SWEEP_ATTR in zarr.open_group(os.fspath(path), mode="r").attrs
    except (FileNotFoundError, OSError, ValueError, zarr.errors.GroupNotFoundError):
        return False


def prepare(path: str | os.PathLike, layout: Layout) -> np.ndarray:
    """Write the template at `path`, or check that the store there is this config's; return ``status``."""
    path = Path(path)
    if path.exists() and not (path.is_dir() and not any(path.iterdir())):
        if not is_sweep_store(path):
            raise refused(f"store {os.fspath(path)!r} exists and is not a dlnode sweep store (no {SWEEP_ATTR!r} "
                             "attribute); give a new path, or remove it")  # fmt: skip
        stored = zarr.open_group(os.fspath(path), mode="r").attrs[SWEEP_ATTR]
        differ = [k for k in config_diff(stored, layout.config.canonical()) if not k.startswith("execution.")]
        if differ:
            raise refused(f"store {os.fspath(path)!r} was made from a different config (keys differ: "
                             f"{', '.join(differ)}); give a new store path, or run the store's own config "
                             f"(`dlnode info {os.fspath(path)}` prints it)")  # fmt: skip
        return read_status(path)
    if path.exists():
        path.rmdir()  # empty: replaced atomically below
    ds, encoding = _template(layout)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    try:
        ds.to_zarr(tmp, mode="w-", compute=False, consolidated=False, encoding=encoding)
        os.rename(tmp, path)  # a killed run leaves no half-written template behind
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    # a new template is all pending: reading its status back would visit every (absent) chunk, 42 s at 2e6 cells
    return np.full(ds["status"].shape, int(Status.PENDING), dtype=np.int64)


def stored_tolerances(path: str | os.PathLike) -> tuple[float, float] | None:
    """(rtol, atol) of the sweep store at `path` (None when there is none): a re-run computes its cells with the
    store's, so every cell of a store shares one pair whatever integrate's defaults are today."""
    if not is_sweep_store(path):
        return None
    attrs = zarr.open_group(os.fspath(path), mode="r").attrs
    return float(attrs["rtol"]), float(attrs["atol"])


def stored_chunks(path: str | os.PathLike) -> dict[str, int] | None:
    """Cells per chunk along each run dim of the sweep store at `path` (None when there is none): a re-run cuts
    its tasks by the store's chunks, whatever ``batch = "auto"`` would pick today."""
    if not is_sweep_store(path):
        return None
    status = open_store(path)["status"]
    return dict(zip(status.dims, status.encoding["chunks"], strict=True))


def read_status(path: str | os.PathLike) -> np.ndarray:
    return np.asarray(zarr.open_group(os.fspath(path), mode="r")["status"][...])


def write_cells(path: str | os.PathLike, layout: Layout, index: dict[str, slice], arrays: dict[str, np.ndarray],
                pending: np.ndarray, names: list[str] | None = None) -> None:  # fmt: skip
    """Region-write one task's cells (`arrays` over the task's run dims), ``status`` last; only `pending` cells.

    `index` maps each run dim to the task's slice of it; `pending` (the task's run shape) marks the cells to write:
    all of them on a first run, the missing ones when a task is redone after an interruption. `names` (default:
    every variable, status last) writes only those.
    """
    whole = tuple(index[d] for d in layout.run_dims)
    if pending.all():
        blocks = [(whole, ())]
    else:
        blocks = [
            (tuple(slice(w.start + i, w.start + i + 1) for w, i in zip(whole, cell, strict=True)),
             tuple(slice(i, i + 1) for i in cell))
            for cell in np.argwhere(pending)
        ]  # fmt: skip
    names = layout.variables() if names is None else names
    key = (os.fspath(path), layout.config.canonical(), tuple(layout.chunk.items()))
    asyncio.run(_write(key, names, blocks, arrays))


# The store's arrays as opened by the last tasks of this process, by (path, config, chunks): opening them reads
# every array's metadata (about 40 % of a task's writes, benchmarks/sweep_scaling.py); a store at that path with
# that config and chunks has the same arrays (prepare refuses any other config there), even if it was made again.
_OPENED: dict[tuple, dict[str, Any]] = {}
_OPENED_LOCK = threading.Lock()  # a worker of several threads runs several tasks at once
OPENED_STORES = 4


async def _write(key: tuple, names: list[str], blocks: list, arrays: dict[str, np.ndarray]) -> None:
    """Every variable but status concurrently (the writes are file I/O), then status once they are all on disk."""
    with _OPENED_LOCK:
        targets = _OPENED.get(key, {})
    if not set(names) <= set(targets):
        group = await zarr.api.asynchronous.open_group(store=key[0], mode="r+")
        targets = dict(zip(names, await asyncio.gather(*(group.getitem(n) for n in names)), strict=True))
        with _OPENED_LOCK:
            while len(_OPENED) >= OPENED_STORES:
                _OPENED.pop(next(iter(_OPENED)))
            _OPENED[key] = targets
    for batch in ([n for n in names if n != "status"], [n for n in names if n == "status"]):
        await asyncio.gather(*(targets[n].setitem(where, arrays[n][local]) for n in batch for where, local in blocks))


def add_run(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append one run's record (start, end, where, cells computed, outcome) to the store's ``sweep_runs``."""
    group = zarr.open_group(os.fspath(path), mode="r+")
    runs = json.loads(group.attrs.get("sweep_runs", "[]"))
    group.attrs["sweep_runs"] = json.dumps([*runs, record])


def open_store(path: str | os.PathLike) -> xr.Dataset:
    """The sweep store opened lazily: Dask-backed variables chunked like the store (one task's cells a chunk)."""
    if not is_sweep_store(path):
        raise refused(f"path {os.fspath(path)!r} is not a dlnode sweep store; run `dlnode run CONFIG -o PATH` first")
    ds = xr.open_zarr(os.fspath(path), consolidated=False, chunks={})
    missing = [name for name in ("status", "loss", "product") if name not in ds]
    if missing:  # an array whose metadata is damaged is left out by xarray, with only a warning
        fail("path", "is not a complete dlnode sweep store", shown(f"{os.fspath(path)!r}: missing or unreadable "
             f"{', '.join(map(repr, missing))}"), "restore it from a copy, or run the sweep again into a new store",
             kind=DatasetError)  # fmt: skip
    return ds


def status_counts(status: np.ndarray) -> dict[str, int]:
    """Cells by status name, in the order of `Status`, zero counts left out."""
    return {s.meaning: int((status == s).sum()) for s in Status if (status == s).any()}


def shown_values(values: Any) -> str:
    """Coordinate values as a user reads them: floats in %g, the rest as text, comma-separated."""
    return ", ".join(f"{v:g}" if isinstance(v, float | np.floating) else str(v) for v in values)


def describe(path: str | os.PathLike) -> str:
    """What `dlnode info` prints for a sweep store: grid, cells done and pending by status, provenance."""
    ds = open_store(path)
    status = ds["status"].values
    lines = [f"{os.fspath(path)}: dlnode sweep store (dlnode {ds.attrs.get('dlnode_version', '?')}, "
             f"created {ds.attrs.get('created', '?')})"]  # fmt: skip
    run_dims = [d for d in ds["status"].dims]
    for dim in run_dims:
        values = ds[dim].values
        shown = shown_values(values[:12])
        lines.append(f"grid {dim} ({len(values)}): {shown}{', ...' if len(values) > 12 else ''}")
    for name in EXTRA_AXES:
        value = ds.attrs.get("label_noise" if name == "noise" else name)
        if name not in run_dims and not _not_applicable(value):  # e.g. lr of a flow, batch of full-batch GD
            lines.append(f"{name}: {value}")
    if ds.attrs.get("network", "dense") != "dense":
        lines.append(f"network: {ds.attrs['network']}")
    t = ds["time"].values
    lines.append(f"time: {len(t)} points from {t[0]:g} to {t[-1]:g}")
    done = int(np.isin(status, REDO, invert=True).sum())
    lines.append(f"cells: {status.size}, done {done}, to compute {status.size - done}")
    lines.append("status: " + ", ".join(f"{k} {v}" for k, v in status_counts(status).items()))
    lines.append("problem: " + ", ".join(f"{k}={v}" for k, v in json.loads(ds.attrs["problem"]).items()))
    skip = {"width"} if ds.attrs.get("network") == "diagonal" else set()  # u and v have β's shape: no width
    if ds.attrs.get("method") in FIXED_STEP:
        skip |= {"rtol", "atol"}  # a grid of fixed steps: no tolerance applies
    for key in ("rtol", "atol", "t1", "width", "sweep_batch", "jax_version", "diffrax_version", "x64"):
        if key not in skip:
            lines.append(f"{key}: {ds.attrs.get(key)}")
    runs = json.loads(ds.attrs.get("sweep_runs", "[]"))
    for r in runs[-5:]:
        spent = ", ".join(f"{k.removesuffix('_s')} {v:g} s" for k, v in r.get("task_seconds", {}).items())
        tasks = f"; {r['tasks_done']} tasks spent {spent or 'nothing'}" if "tasks_done" in r else ""
        lines.append(f"run {r.get('started')}: {r.get('computed')} cells computed on {r.get('where')}, "
                     f"{r.get('outcome')} after {r.get('wall_s')} s{tasks}")  # fmt: skip
    lines.append(f"config: {ds.attrs[SWEEP_ATTR]}")
    return "\n".join(lines)


def export(path: str | os.PathLike, out: str | os.PathLike, overwrite: bool = False) -> int:
    """Write the sweep store at `path` to one netCDF file `out` (streamed chunk by chunk, every chunk with a
    Fletcher-32 checksum as `dlnode.save` writes them); returns the pending cells.

    `out` is checked before any work and, like every output of dlnode, replaced only with ``overwrite`` and only
    when it is a dlnode dataset; it is written to a hidden sibling and renamed into place.
    """
    target = check_output_path(out, overwrite, (".nc",), "out", is_dlnode_store)
    ds = open_store(path).drop_encoding()
    with atomic_path(target, "out", replace=overwrite) as tmp:
        NetCDF().write(ds, tmp)  # as dlnode.save writes it: every chunk with its checksum
    return int(np.isin(ds["status"].values, REDO).sum())


def _not_applicable(value: Any) -> bool:
    """An attribute a call left at its default because it does not apply (None, or NaN for a number)."""
    return value is None or value == "None" or (isinstance(value, (float, np.floating)) and math.isnan(value))
