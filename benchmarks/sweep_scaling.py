"""Sweeps on Dask: 2 workers against 1 on a CPU-bound grid, the per-cell overhead of the Dask path against a plain
loop of `dln.integrate` calls, and what vmap batching (``[execution] batch``) gains per cell.

Every figure is the median of `--repeats` runs after a warm-up that compiles each shape in every worker (compile
time is apart: workers keep their compiled solvers), all measured in one run of this script::

    python -m benchmarks.sweep_scaling            # ~3 min on 2 cores
    python -m benchmarks.sweep_scaling --repeats 5

BLAS, OpenMP and XLA are pinned to one thread per process before numpy and jax load, so one worker uses one core.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

import argparse  # noqa: E402
import logging  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

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


def loop_time(config: dict, repeats: int) -> float:
    """Median wall time of a plain loop of `integrate` calls, one per cell, compiled once beforehand."""
    from dlnode.store import Layout
    from dlnode.sweep_config import load_config

    cfg = load_config(config)
    layout = Layout.of(cfg, 1)  # the sweep's time axis and its rtol, atol (resolved once for the grid)
    problem, ts = layout.problem, layout.times[1:]

    def once() -> None:
        for seed in cfg.grid.seed:
            dln.integrate(problem, depth=cfg.grid.depth[0], scale=cfg.grid.scale, seed=[seed], method="tsit5",
                          t1=cfg.integrate.t1, saveat=ts, rtol=layout.rtol, atol=layout.atol,
                          progress=False)  # fmt: skip

    once()
    return median_time(once, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from distributed import Client, LocalCluster

    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        rows = []
        cluster_kw = {"threads_per_worker": 1, "processes": True, "dashboard_address": None}
        with LocalCluster(n_workers=1, silence_logs=logging.ERROR, **cluster_kw) as c1, Client(c1) as one:
            heavy_1 = sweep_time(one, HEAVY, args.repeats, scratch)
            tiny_cfg = tiny(4, 32, 1)
            dask_tiny = sweep_time(one, tiny_cfg, args.repeats, scratch)
            batches = {(d, b): sweep_time(one, tiny(d, 32, b), args.repeats, scratch)
                       for d in (4, 16, 32) for b in (1, 4, 16)}  # fmt: skip
        loop_tiny = loop_time(tiny_cfg, args.repeats)
        loop_heavy = loop_time(HEAVY, 1)
        with LocalCluster(n_workers=2, silence_logs=logging.ERROR, **cluster_kw) as c2, Client(c2) as two:
            heavy_2 = sweep_time(two, HEAVY, args.repeats, scratch)
    cells = len(HEAVY["grid"]["seed"])
    rows.append(f"CPU-bound grid ({cells} cells, depth 3, 12x12, tsit5 to t=1000): plain loop {loop_heavy:.2f} s; "
                f"sweep 1 worker {heavy_1:.2f} s, 2 workers {heavy_2:.2f} s: {heavy_1 / heavy_2:.2f}x")  # fmt: skip
    rows.append(f"per-cell cost, 32 tiny cells (4x4, depth 2), batch 1: plain integrate loop "
                f"{1e3 * loop_tiny / 32:.1f} ms, Dask sweep (1 worker) {1e3 * dask_tiny / 32:.1f} ms: "
                f"overhead {1e3 * (dask_tiny - loop_tiny) / 32:.1f} ms per cell")  # fmt: skip
    for (d, b), wall in batches.items():
        rows.append(f"vmap batching, d={d:>2} depth 2, batch {b:>2}: {1e3 * wall / 32:.1f} ms per cell (1 worker)")
    print(f"medians of {args.repeats} runs, compile time apart, {os.cpu_count()} CPUs")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
