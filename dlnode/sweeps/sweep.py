"""`sweep`: a grid of `integrate` runs on Dask, written cell by cell into one zarr store, resumable.

The grid is depth × scale × seed × (flow × init × method × lr where swept) of one problem (see
`dlnode.sweeps.config`). Cells that differ only in scale and seed share their shape: up to ``batch`` of them make
one task, one `dlnode.integrate` call (vmapped over the batch). Tasks run on a `dask.distributed` cluster — a
local one of processes by default, or any cluster through a scheduler address or a `Client` — and region-write
their cells into the store (`dlnode.sweeps.store`), ``status`` last. A task on a worker that dies is rescheduled by
Dask; a run stopped any other way (Ctrl-C, a killed client, a restart) is resumed by running it again: cells whose
status is on disk are kept, and the rest are computed exactly as an uninterrupted run would have.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import itertools
import logging
import os
import signal
import socket
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from dlnode._version import __version__
from dlnode.data.schema import METHOD_CODES
from dlnode.errors import refused, warn
from dlnode.run.integrate import past_edge, past_edge_message, run_plan
from dlnode.run.plan import Plan
from dlnode.runtime.interrupts import sigint_flag
from dlnode.solvers import Status
from dlnode.sweeps.config import SweepConfig, grid_layer_shapes, load_config
from dlnode.sweeps.lock import store_lock
from dlnode.sweeps.store import (
    EXTRA_AXES,
    REDO,
    Layout,
    add_run,
    open_store,
    prepare,
    read_status,
    status_counts,
    stored_chunks,
    stored_tolerances,
    write_cells,
)

__all__ = ["auto_batch", "sweep"]

# vmap pays while the per-call overhead dominates: measured in benchmarks/sweep_scaling.py (docs/sweeps.md)
AUTO_BATCH = ((1024, 16), (4096, 4))  # (at most this many state numbers per cell, cells per task)
POLL_S = 0.05  # how often the wait for a sweep's tasks looks for results and for Ctrl-C
TIME_RTOL = 1e-12  # a cell's save times equal the store's up to rounding of t = k·lr for gradient descent
# The local cluster has no dashboard, so Dask's statistical profiler (a sample every 10 ms) and its fast monitors
# (event-loop tick every 20 ms, memory every 100 ms, system every 500 ms) would only take CPU from the workers:
# idle with 2 workers they cost 4-7 % of a core by default, ~1.5 % so (benchmarks/sweep_scaling.py).
LOCAL_CLUSTER_CONFIG = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "1s",
    "distributed.worker.memory.monitor-interval": "1s",
    "distributed.admin.system-monitor.interval": "2s",
}


def sweep(
    config: SweepConfig | dict | str | os.PathLike,
    store: str | os.PathLike,
    client: Any = None,
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> xr.Dataset:
    """Run every missing cell of a sweep on Dask into the zarr `store`; return the store opened lazily.

    Parameters
    ----------
    config : a TOML path, a dict of its tables, or a `SweepConfig` (see `dlnode.sweeps.config`).
    store : a path ending in ``.zarr``: created with the template on the first run; on a re-run it must be this
        config's store, and only cells whose status is pending (or interrupted) are computed.
    client : a ``distributed.Client`` to run on (left open). Default: a local cluster of `workers` processes with
        one thread each, closed at the end; `scheduler` (``tcp://HOST:8786``) connects to a running cluster instead.
    workers : size of the local cluster (default: the CPUs this process may use).
    progress : a bar over cells with the running counts by status, then a one-line summary on stderr.

    Returns
    -------
    xarray.Dataset backed by Dask arrays, one chunk per task's cells; dims depth, scale, seed, then the swept
    axes among flow, init, method, lr, then those of the dlnode schema.

    Raises
    ------
    ValueError on a bad config or store path (before any work); RuntimeError when tasks raised (their cells stay
    pending, every other cell is on disk); KeyboardInterrupt after Ctrl-C, once the finished cells are on disk.
    """
    cfg = load_config(config)
    if not isinstance(store, (str, os.PathLike)) or Path(store).suffix != ".zarr":
        raise refused(
            f"store must be a path ending in .zarr (a zarr directory); got "
            f"{os.fspath(store) if isinstance(store, (str, os.PathLike)) else store!r}"
        )
    if client is not None and scheduler is not None:
        raise refused("give client or scheduler, not both; got both")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise refused(f"workers must be a positive integer (local cluster size); got {workers!r}")
    cpus = len(os.sched_getaffinity(0))
    if workers is not None and workers > cpus:
        raise refused(f"workers must be at most the {cpus} CPUs this process may use (more processes only share "
                      f"them, and each compiles and holds its own copy of JAX); got {workers}; pass --workers {cpus} "
                      "or fewer, or --scheduler ADDR for a larger cluster")  # fmt: skip
    if scheduler is not None:
        probe_scheduler(scheduler)  # before anything is written
    batch = cfg.execution.batch if isinstance(cfg.execution.batch, int) else auto_batch(cfg)
    with store_lock(store):  # one writer per store: a second run is told at once
        layout = Layout.of(cfg, batch, stored_tolerances(store))
        chunks = stored_chunks(store)
        if chunks is not None and set(chunks) == set(layout.chunk):  # else prepare() names the keys that differ
            layout = dataclasses.replace(layout, chunk=chunks)
        status = prepare(store, layout)
        tasks = [t for t in _tasks(layout) if np.isin(status[_where(layout, t)], REDO).any()]
        if tasks:
            _execute(tasks, layout, Path(store), status, (client, scheduler, workers), progress)
    return open_store(store)


SCHEDULER_TIMEOUT_S = 5.0  # how long a scheduler address may take to answer before the sweep is refused


def probe_scheduler(address: str) -> None:
    """Refuse, within `SCHEDULER_TIMEOUT_S` seconds, a scheduler address nobody answers at (TCP addresses: a
    connection is opened and closed; other protocols are left to Dask's own connection, with the same timeout)."""
    text = address if "://" in address else f"tcp://{address}"
    protocol, _, rest = text.partition("://")
    if protocol != "tcp":
        return
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        raise refused(f"scheduler must be an address like tcp://HOST:8786; got {address!r}")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=SCHEDULER_TIMEOUT_S):
            pass
    except OSError as exc:
        raise refused(f"scheduler: nothing answers at {address!r} within {SCHEDULER_TIMEOUT_S:g} s "
                      f"({exc.strerror or exc}); start one with `dask scheduler`, or leave out --scheduler for a "
                      "local cluster; nothing was written") from None  # fmt: skip


def auto_batch(config: SweepConfig) -> int:
    """Cells per task when ``batch = "auto"``: many for small states (vmap removes per-call overhead), else 1."""
    shapes = grid_layer_shapes(config, config.problem.build())
    size = max(sum(a * b for a, b in per_depth) for per_depth in shapes.values())
    return next((cells for limit, cells in AUTO_BATCH if size <= limit), 1)


def _tasks(layout: Layout) -> list[dict[str, slice]]:
    """The grid cut into tasks: each run dim in chunks of the layout's size (the store's chunks)."""
    starts = [range(0, len(v), layout.chunk[d]) for d, v in layout.axes.items()]
    return [
        {d: slice(s, min(s + layout.chunk[d], len(layout.axes[d]))) for d, s in zip(layout.axes, combo, strict=True)}
        for combo in itertools.product(*starts)
    ]


def _where(layout: Layout, task: dict[str, slice]) -> tuple[slice, ...]:
    return tuple(task[d] for d in layout.run_dims)


def _describe(layout: Layout, task: dict[str, slice]) -> str:
    return ", ".join(f"{d} {layout.axes[d][s.start] if s.stop - s.start == 1 else layout.axes[d][s]}"
                     for d, s in task.items())  # fmt: skip


@functools.lru_cache(maxsize=4)
def _layout(config_json: str, chunk: tuple[tuple[str, int], ...], tolerances: tuple[float, float]) -> Layout:
    return dataclasses.replace(Layout.of(SweepConfig.model_validate_json(config_json), 1, tolerances),
                               chunk=dict(chunk))  # fmt: skip


def task_arguments(layout: Layout, task: dict[str, slice]) -> dict[str, Any]:
    """The arguments of `dlnode.integrate` that one task's cells are: the config's, the task's slice of the grid,
    and the store's tolerances and save times (every cell of a sweep shares them)."""
    value = {d: (layout.axes[d][task[d]][0] if d in layout.axes else layout.fixed[d]) for d in EXTRA_AXES}
    run = layout.config.integrate.arguments() | {"rtol": layout.rtol, "atol": layout.atol}
    if "path" in layout.axes:
        run["paths"] = layout.axes["path"][task["path"]]
    return dict(
        depth=layout.axes["depth"][task["depth"]][0], scale=layout.axes["scale"][task["scale"]],
        seed=layout.axes["seed"][task["seed"]], init=value["init"], flow=value["flow"], method=value["method"],
        lr=value["lr"], batch=value["batch"], noise=value["noise"], saveat=layout.times[1:], progress=False, **run,
    )  # fmt: skip


def task_plan(layout: Layout, task: dict[str, slice]) -> Plan:
    """The `Plan` of one task: the plan `dlnode.integrate` builds from `task_arguments`."""
    return Plan.build(layout.problem, **task_arguments(layout, task))


def run_task(config_json: str, chunk: tuple, tolerances: tuple[float, float], task: dict[str, slice],
             pending: np.ndarray, store: str) -> dict:  # fmt: skip
    """One task, on a worker: one `integrate` call over its cells, region-written into `store` (status last).

    Returns the cells' status codes, the compile time, its modified-flow cells and those of them that end past
    2/lr (`dlnode.run.integrate.past_edge`), and where the task's time went: ``wall_s`` (the whole task),
    ``integrate_s`` (its ``compile_s`` included) and ``write_s`` (wall), ``thread_cpu_s`` (CPU of the thread that
    ran it: JAX runs compiled code on threads of its own, so mostly Python) and ``process_cpu_s`` (of the whole
    worker process meanwhile: JAX's threads, the event loop, and other tasks on a worker of several threads)."""
    clock, cpu, process = time.perf_counter(), time.thread_time(), time.process_time()
    layout = _layout(config_json, chunk, tolerances)
    with warnings.catch_warnings():  # what a plan warns of (a frozen subspace, a narrow width), the client's
        warnings.filterwarnings("ignore", message="dlnode: ", category=UserWarning)  # grid plan said once
        plan = task_plan(layout, task)
    ds = run_plan(plan, warn_stops=False)  # the sweep's own report counts the statuses
    if ds.sizes["time"] != len(layout.times) or not np.allclose(ds["time"], layout.times, rtol=TIME_RTOL, atol=0):
        raise refused(f"cells {_describe(layout, task)}: save times differ from the store's; report this as a bug")
    arrays = _cell_arrays(layout, ds)
    written = time.perf_counter()
    write_cells(store, layout, task, arrays, pending)
    end = time.perf_counter()
    modified = int(pending.sum()) if plan.flow == "modified" else 0
    return {"status": arrays["status"][pending].tolist(), "compile_s": ds.attrs["compile_time"],
            "past_edge": past_edge(ds, plan, pending.reshape(ds["status"].shape) if modified else None),
            "modified_cells": modified, "sharpness_saved": "sharpness" in ds,
            "wall_s": end - clock, "integrate_s": written - clock, "write_s": end - written,
            "thread_cpu_s": time.thread_time() - cpu, "process_cpu_s": time.process_time() - process}  # fmt: skip


def _cell_arrays(layout: Layout, ds: xr.Dataset) -> dict[str, np.ndarray]:
    """The task's values of each store variable, shaped (task run dims, rest) and padded to the store's extent."""
    run_shape = tuple(ds.sizes[d] if d in ds.sizes else 1 for d in layout.run_dims)
    sizes = layout.sizes()
    out = {"method_used": np.full(run_shape, METHOD_CODES[ds.attrs["method"]], dtype=np.int8)}
    cells = ds["status"].shape  # (depth, scale, seed[, path])
    for name in layout.variables():
        if name == "method_used":
            continue
        rest = [sizes[d] for d in layout.dims_of(name)[len(run_shape) :]]
        if name not in ds:  # an optional variable this cell does not save (the gradient flow beside a central one)
            out[name] = np.full((*run_shape, *rest), np.nan)
            continue
        values = ds[name].values
        own = values.shape[len(cells) :]
        if list(own) != rest:  # layer/out/in of a shallower depth: NaN beyond its own shapes
            padded = np.full((*cells, *rest), np.nan)
            padded[(Ellipsis, *(slice(0, n) for n in own))] = values
            values = padded
        out[name] = values.reshape(*run_shape, *rest)
    return out


@contextlib.contextmanager
def _client(client: Any, scheduler: str | None, workers: int | None) -> Iterator[tuple[Any, str]]:
    """The Dask client to use and a description of it; clients and clusters made here are closed at the end."""
    if client is not None:
        yield client, f"client {client.scheduler.address}"
        return
    from distributed import Client

    if scheduler is not None:
        try:
            own = Client(scheduler, timeout=f"{SCHEDULER_TIMEOUT_S:g}s")
        except (OSError, TimeoutError) as exc:
            raise refused(f"scheduler: cannot connect to {scheduler!r} ({exc}); start one with "
                             "`dask scheduler` or leave out --scheduler for a local cluster") from None  # fmt: skip
        with own:
            yield own, f"scheduler {scheduler}"
        return
    n = workers or len(os.sched_getaffinity(0))
    cluster = local_cluster(n)
    try:
        with Client(cluster) as own:
            own.register_plugin(_ignore_interrupt())
            yield own, f"local cluster of {n} processes"
    finally:
        cluster.close()


def local_cluster(workers: int) -> Any:
    """The local cluster `sweep` starts: `workers` processes of one thread each, no dashboard, no profiler."""
    import dask
    from distributed import LocalCluster

    with dask.config.set(LOCAL_CLUSTER_CONFIG):  # read when the scheduler and the nannies start (and sent to workers)
        # no dashboard; the scheduler's small HTTP server (health checks) on a free port, not Dask's default 8787,
        # which another cluster may hold (Dask then warned "Port 8787 is already in use")
        return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                            scheduler_kwargs={"dashboard_address": ":0"}, silence_logs=logging.ERROR)  # fmt: skip


def _ignore_interrupt() -> Any:
    """A worker plugin: local workers ignore SIGINT, so Ctrl-C in a terminal (sent to the whole process group)
    stops the client alone, which then closes the cluster — instead of every worker printing a traceback."""
    from distributed import WorkerPlugin

    class IgnoreInterrupt(WorkerPlugin):
        name = "dlnode-ignore-sigint"

        def setup(self, worker: Any) -> None:
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, signal.SIG_IGN)

    return IgnoreInterrupt()


def _execute(tasks: list, layout: Layout, store: Path, status: np.ndarray, where: tuple, progress: bool) -> None:
    """Submit every task, follow them with the bar, record the run in the store; raise on task errors."""
    from distributed import as_completed

    counts = Counter(status_counts(status[~np.isin(status, REDO)]))
    before = sum(counts.values())
    started, clock, computed, errors, spent = _now(), time.perf_counter(), Counter(), [], []
    edge = {"past": [], "modified": 0, "saved": True}  # modified-flow cells past 2/lr, of how many (`past_edge`)
    bar = tqdm(total=status.size, initial=before, unit="cell", desc="sweep", disable=not progress, file=sys.stderr)
    outcome, description = "interrupted", "not started"
    try:
        with _client(*where) as (client, description), bar:
            common = (layout.config.canonical(), tuple(layout.chunk.items()), (layout.rtol, layout.atol))
            path = os.fspath(store.resolve())
            futures = {
                client.submit(run_task, *common, t, np.isin(status[_where(layout, t)], REDO), path, pure=False,
                              retries=0): t
                for t in tasks
            }  # fmt: skip
            try:
                for future in _until_interrupted(as_completed(futures)):
                    if future.status != "finished":
                        errors.append((futures[future], future.exception()))
                        continue
                    result = future.result()
                    spent.append({k: v for k, v in result.items() if k.endswith("_s")})
                    edge["past"] += result["past_edge"]
                    edge["modified"] += result["modified_cells"]
                    edge["saved"] &= result["sharpness_saved"] or not result["modified_cells"]
                    names = [Status(s).meaning for s in result["status"]]
                    counts.update(names)
                    computed.update(names)
                    bar.set_postfix_str(", ".join(f"{k} {v}" for k, v in counts.items()), refresh=False)
                    bar.update(len(names))
            except BaseException:
                client.cancel(list(futures))  # a cluster we do not own keeps running: drop our tasks from it
                raise
        outcome = f"{len(errors)} failed tasks" if errors else "complete"
    finally:
        wall = time.perf_counter() - clock
        record = {"started": started, "where": description, "host": socket.gethostname(),
                  "computed": sum(computed.values()), "outcome": outcome, "wall_s": round(wall, 3),
                  "dlnode_version": __version__, "tasks_done": len(spent),
                  "task_seconds": {k: round(v, 3) for k, v in sum(map(Counter, spent), Counter()).items()}}  # fmt: skip
        add_run(store, record)
        if progress:
            by = ", ".join(f"{k} {v}" for k, v in computed.items()) or "none"
            on_disk = int((~np.isin(read_status(store), REDO)).sum())
            tqdm.write(f"sweep {store}: {on_disk} of {status.size} cells on disk ({before} before this run); "
                       f"reported now: {sum(computed.values())} ({by}); {len(errors)} failed tasks; {outcome}; "
                       f"{wall:.1f} s", file=sys.stderr)  # fmt: skip
    if edge["past"]:
        warn(past_edge_message(edge["past"], edge["modified"], "cells of this sweep", edge["saved"]))
    if errors:
        task, exc = errors[0]
        raise RuntimeError(f"{len(errors)} sweep tasks raised (their cells stay pending, the rest are on disk); "
                           f"first: {_describe(layout, task)}: {type(exc).__name__}: {exc}")  # fmt: skip


def _until_interrupted(completed: Any) -> Iterator[Any]:
    """The futures of a distributed ``as_completed`` as they finish; KeyboardInterrupt, raised here, once Ctrl-C
    was pressed (it is looked at every `POLL_S` seconds: a signal handler that raised at a random line of the main
    thread could be swallowed by a finaliser, and the sweep would run on to the end). A Ctrl-C that arrives with
    the last results stops nothing: every task is done, and the sweep reports itself complete."""
    with sigint_flag() as flag:
        while not completed.is_empty():
            if flag["hit"]:
                raise KeyboardInterrupt
            ready = completed.next_batch(block=False)
            if not ready:
                time.sleep(POLL_S)
            yield from ready


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
