"""Sweeps on Dask: 2 workers against 1 on a CPU-bound grid, the per-cell overhead of the Dask path against a plain
loop of `dln.integrate` calls, and what vmap batching (``[execution] batch``) gains per cell.

Further rows explain the 2-against-1 figure in terms that depend little on how busy the machine is: the hardware's
own ceiling (the plain loop in 1 process against 2 independent processes on half the cells each, no Dask at all: no
scheduler beats that ratio); where the CPU of one sweep on 1 and on 2 workers went (inside the tasks: integrate,
zarr writes; the worker processes; this process, which holds the client, the scheduler and the nannies of the local
cluster; every other process on the machine) with the bytes each task sends; and the CPU a 2-worker local cluster
spends on its own upkeep while idle, with distributed's defaults and as `dln.sweep` starts it. The clusters are
the one `dln.sweep` starts (`dlnode.sweeps.sweep.local_cluster`).

Every figure is the median of `--repeats` runs after a warm-up that compiles each shape in every worker (compile
time is apart: workers keep their compiled solvers), all measured in one run of this script::

    python -m benchmarks.sweep_scaling            # ~5 min on 2 cores
    python -m benchmarks.sweep_scaling --repeats 5

BLAS and OpenMP are pinned to one thread per process before numpy loads, and XLA computes on one thread per process
(dlnode's default, `dlnode.runtime.xla_threads`), so one worker uses one core.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import multiprocessing  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import psutil  # noqa: E402

import dlnode as dln  # noqa: E402

# CPU-bound: each cell is thousands of tsit5 steps of a depth-3 network on a 12 x 12 factorisation (~2 s a cell, so
# the fixed cost of a sweep — cluster start apart: template, scheduling, the client's progress loop — is amortised)
HEAVY = {
    "problem": {"kind": "factorization", "shape": [12, 12], "rank": 3, "seed": 0},
    "grid": {"depth": [3], "scale": [0.3], "seed": list(range(16)), "method": "tsit5"},
    "integrate": {"t1": 1000.0, "saveat": 20, "rtol": 1e-9, "atol": 1e-12},
    "execution": {"batch": 1},
}


def tiny(d: int, cells: int, batch: int) -> dict:
    """A grid of `cells` short runs (depth 2, d x d factorisation) whose cost is mostly per-call overhead."""
    return {
        "problem": {"kind": "factorization", "shape": [d, d], "rank": 2, "seed": 0},
        "grid": {"depth": [2], "scale": [0.1], "seed": list(range(cells)), "method": "tsit5"},
        "integrate": {"t1": 5.0, "saveat": 10},
        "execution": {"batch": batch},
    }


def median_time(run: Callable[[], object], repeats: int) -> float:
    walls = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        walls.append(time.perf_counter() - t0)
    return statistics.median(walls)


def sweep_time(client, config: dict, repeats: int, scratch: Path) -> float:  # noqa: ANN001
    """Median wall time of the whole sweep on a fresh store, after one warm-up sweep compiled every shape."""

    def once() -> None:
        dln.sweep(config, scratch / f"{uuid.uuid4().hex}.zarr", client=client, progress=False)

    for _ in range(len(client.scheduler_info()["workers"])):
        once()  # warm-up: each worker compiles the shape the first time it runs a task of it
    return median_time(once, repeats)


def _plain_loop(config: dict) -> Callable[[list[int]], None]:
    """A plain loop of `integrate` calls over the given seeds of `config`, one per cell, on the sweep's time axis
    with its rtol, atol (resolved once for the grid)."""
    from dlnode.sweeps.config import load_config
    from dlnode.sweeps.store import Layout

    cfg = load_config(config)
    layout = Layout.of(cfg, 1)
    problem, ts = layout.problem, layout.times[1:]

    def run(seeds: list[int]) -> None:
        for seed in seeds:
            dln.integrate(problem, depth=cfg.grid.depth[0], scale=cfg.grid.scale, seed=[seed], method="tsit5",
                          t1=cfg.integrate.t1, saveat=ts, rtol=layout.rtol, atol=layout.atol,
                          progress=False)  # fmt: skip

    return run


def loop_time(config: dict, repeats: int) -> float:
    """Median wall time of a plain loop of `integrate` calls, one per cell, compiled once beforehand."""
    run, seeds = _plain_loop(config), list(config["grid"]["seed"])
    run(seeds)
    return median_time(lambda: run(seeds), repeats)


def _share(config: dict, seeds: list[int], barrier: Any, results: Any) -> None:
    """In a process of its own: compile, wait for the others, then time the plain loop over `seeds`."""
    run = _plain_loop(config)
    run(seeds[:1])  # compile (apart, as everywhere here)
    barrier.wait()
    t0, cpu = time.monotonic(), time.process_time()
    run(seeds)
    results.put((t0, time.monotonic(), time.process_time() - cpu))


def independent_time(config: dict, processes: int) -> tuple[float, float]:
    """(wall, CPU) of `processes` independent processes running the plain loop on an equal share of the cells each,
    started together: no Dask, no scheduler, no store — the machine's own ceiling for that many workers."""
    context = multiprocessing.get_context("spawn")
    seeds = list(config["grid"]["seed"])
    barrier, results = context.Barrier(processes), context.Queue()
    procs = [context.Process(target=_share, args=(config, seeds[i::processes], barrier, results))
             for i in range(processes)]  # fmt: skip
    for p in procs:
        p.start()
    spans = [results.get() for _ in procs]
    for p in procs:
        p.join()
    return max(s[1] for s in spans) - min(s[0] for s in spans), sum(s[2] for s in spans)


def _busy(times: Any) -> float:
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def _process_cpu() -> float:
    cpu = psutil.Process().cpu_times()
    return cpu.user + cpu.system


def _threads_cpu() -> dict[str, float]:
    """CPU seconds of each named thread of this process (client, scheduler and nannies share its event loop)."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    for t in psutil.Process().threads():
        name = "main (client, progress)" if t.id == threading.main_thread().native_id else names.get(t.id, "other")
        name = "event loop (scheduler, nannies, client comms)" if "IO loop" in name or "IOLoop" in name else name
        out[name] = out.get(name, 0.0) + t.user_time + t.system_time
    return out


def where_cpu_goes(client, config: dict, scratch: Path) -> list[str]:  # noqa: ANN001
    """One sweep on `client` (warm: run after `sweep_time`) with its CPU accounted for, by psutil and by the tasks."""
    from distributed.protocol.pickle import dumps

    from dlnode.sweeps.config import load_config
    from dlnode.sweeps.store import REDO, Layout
    from dlnode.sweeps.sweep import _tasks, run_task

    store = scratch / f"{uuid.uuid4().hex}.zarr"
    workers_before = client.run(_process_cpu)
    main_before, threads_before, machine_before = _process_cpu(), _threads_cpu(), psutil.cpu_times()
    t0 = time.perf_counter()
    dln.sweep(config, store, client=client, progress=False)
    wall = time.perf_counter() - t0
    machine, main = _busy(psutil.cpu_times()) - _busy(machine_before), _process_cpu() - main_before
    threads = {k: v - threads_before.get(k, 0.0) for k, v in _threads_cpu().items()}
    workers = sum(client.run(_process_cpu).values()) - sum(workers_before.values())
    record = json.loads(dln.open(store).attrs["sweep_runs"])[-1]
    tasks, spent = record["tasks_done"], record["task_seconds"]
    layout = Layout.of(load_config(config), 1)
    task = _tasks(layout)[0]
    args = (layout.config.canonical(), tuple(layout.chunk.items()), (layout.rtol, layout.atol), task,
            np.isin(np.full((1, 1, 1), -7), REDO), str(store))  # fmt: skip
    sent = len(dumps((run_task, args)))
    got = len(dumps({"status": [0]} | {k: 0.0 for k in spent}))
    cores = len(client.scheduler_info()["workers"])
    top = ", ".join(f"{k} {v:.2f} s" for k, v in sorted(threads.items(), key=lambda kv: -kv[1])[:3])
    inside = spent.get("wall_s", 0.0)
    return [
        f"one sweep on {cores} worker(s), {tasks} tasks, wall {wall:.2f} s ({cores} x wall = {cores * wall:.2f} "
        f"worker-s): inside tasks {inside:.2f} s (integrate {spent.get('integrate_s', 0):.2f} s, compile "
        f"{spent.get('compile_s', 0):.2f} s of it; zarr writes {spent.get('write_s', 0):.2f} s); CPU meanwhile: "
        f"worker process {spent.get('process_cpu_s', 0):.2f} s, of which the task's own thread "
        f"{spent.get('thread_cpu_s', 0):.2f} s (JAX runs compiled code on its own threads)",
        f"  CPU during the sweep: worker processes {workers:.2f} s ({workers / wall:.2f} cores); this process "
        f"(client, scheduler, nannies) {main:.2f} s [{top}]; other processes on the machine "
        f"{machine - workers - main:.2f} s; machine busy {machine:.2f} of {psutil.cpu_count() * wall:.2f} core-s",
        f"  per task: {sent} B pickled to the worker (the config as JSON, {len(args[0])} B: the problem is rebuilt "
        f"from it and cached on the worker, never sent), {got} B back; worker time outside tasks "
        f"{1e3 * (cores * wall - inside) / max(tasks, 1):.1f} ms per task (scheduling, dispatch, the last tasks' "
        "imbalance)",
    ]


def idle_cpu(cluster, seconds: float = 10.0) -> tuple[float, float]:  # noqa: ANN001
    """(this process, the workers) CPU seconds of `cluster` doing nothing for `seconds`: its own upkeep."""
    from distributed import Client

    with cluster, Client(cluster) as client:
        time.sleep(1.0)  # past the start-up
        workers, main = sum(client.run(_process_cpu).values()), _process_cpu()
        time.sleep(seconds)
        return _process_cpu() - main, sum(client.run(_process_cpu).values()) - workers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from distributed import Client, LocalCluster

    from dlnode.sweeps.sweep import local_cluster

    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        rows = []
        idle = 10.0
        plain = LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None, silence_logs=logging.ERROR)
        idle_default, idle_dlnode = idle_cpu(plain, idle), idle_cpu(local_cluster(2), idle)
        with local_cluster(1) as c1, Client(c1) as one:  # the cluster dln.sweep starts
            heavy_1 = sweep_time(one, HEAVY, args.repeats, scratch)
            probe = where_cpu_goes(one, HEAVY, scratch)
            tiny_cfg = tiny(4, 32, 1)
            dask_tiny = sweep_time(one, tiny_cfg, args.repeats, scratch)
            batches = {(d, b): sweep_time(one, tiny(d, 32, b), args.repeats, scratch)
                       for d in (4, 16, 32) for b in (1, 4, 16)}  # fmt: skip
        loop_tiny = loop_time(tiny_cfg, args.repeats)
        loop_heavy = loop_time(HEAVY, 1)
        with local_cluster(2) as c2, Client(c2) as two:
            heavy_2 = sweep_time(two, HEAVY, args.repeats, scratch)
            probe += where_cpu_goes(two, HEAVY, scratch)
        alone, alone_cpu = independent_time(HEAVY, 1)
        pair, pair_cpu = independent_time(HEAVY, 2)
    cells = len(HEAVY["grid"]["seed"])
    rows.append(f"CPU-bound grid ({cells} cells, depth 3, 12x12, tsit5 to t=1000): plain loop {loop_heavy:.2f} s; "
                f"sweep 1 worker {heavy_1:.2f} s, 2 workers {heavy_2:.2f} s: {heavy_1 / heavy_2:.2f}x")  # fmt: skip
    rows.append(f"hardware ceiling, same grid without Dask: plain loop in 1 process {alone:.2f} s (CPU {alone_cpu:.2f} "
                f"s); 2 independent processes on half the cells each {pair:.2f} s (CPU {pair_cpu:.2f} s): "
                f"{alone / pair:.2f}x")  # fmt: skip
    rows.extend(probe)
    rows.append(f"a 2-worker local cluster's own upkeep, idle for {idle:g} s (CPU of this process + of the workers): "
                f"distributed's defaults {idle_default[0]:.2f} + {idle_default[1]:.2f} s; dln.sweep's (no profiler, "
                f"slower monitors) {idle_dlnode[0]:.2f} + {idle_dlnode[1]:.2f} s")  # fmt: skip
    rows.append(f"per-cell cost, 32 tiny cells (4x4, depth 2), batch 1: plain integrate loop "
                f"{1e3 * loop_tiny / 32:.1f} ms, Dask sweep (1 worker) {1e3 * dask_tiny / 32:.1f} ms: "
                f"overhead {1e3 * (dask_tiny - loop_tiny) / 32:.1f} ms per cell")  # fmt: skip
    for (d, b), wall in batches.items():
        rows.append(f"vmap batching, d={d:>2} depth 2, batch {b:>2}: {1e3 * wall / 32:.1f} ms per cell (1 worker)")
    print(f"medians of {args.repeats} runs, compile time apart, {os.cpu_count()} CPUs")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
