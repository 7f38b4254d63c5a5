"""A call's cells as one vmapped batch against one cell at a time (`dlnode.solvers.core.by_cell`), per method.

Each case is one `integrate` call of several cells (init scale × seed) on a completion, run twice in this process
with the same plan: once with the cells as one vmapped batch (`one_cell_at_a_time` off for the stiff paths,
`ALONE_UNKNOWNS` out of reach for diffrax's methods) and once one cell at a time; run time, compilation apart.

    python -m benchmarks.batch_cells [--quick]

`--quick` runs the three cases of a few seconds each. The figures in docs/solvers.md come from these cases.
"""

from __future__ import annotations

import argparse
import contextlib
import os

import numpy as np

import dlnode as dln
from dlnode.solvers import diffrax_methods
from dlnode.solvers.rosenbrock import LayerRosenbrock
from dlnode.solvers.singular import SingularRosenbrock

# (name, shape, rank, observed fraction, depth, method, scales, seeds, end-to-end)
CASES = [
    ("rosenbrock 30x30 depth 3", 30, 3, 0.5, 3, "rosenbrock", [1e-2], range(8), False),
    ("rosenbrock 10x10 depth 4", 10, 3, 0.5, 4, "rosenbrock", [1e-2], range(8), False),
    ("singular 20x20 depth 4", 20, 2, 0.4, 4, "rosenbrock", [1e-1, 1e-2, 1e-3], range(2), True),
    ("tsit5 60x60 depth 2", 60, 5, 0.2, 2, "tsit5", [1e-1, 1e-2], range(4), False),
    ("tsit5 100x100 depth 1", 100, 5, 0.2, 1, "tsit5", [1e-1, 1e-2], range(4), False),
]
QUICK = ("rosenbrock 30x30 depth 3", "singular 20x20 depth 4", "tsit5 60x60 depth 2")


@contextlib.contextmanager
def vmapped_batch():
    """Every method runs the cells of a call as one vmapped batch (as before `by_cell`)."""
    saved = (LayerRosenbrock.one_cell_at_a_time, SingularRosenbrock.one_cell_at_a_time,
             diffrax_methods.ALONE_UNKNOWNS)  # fmt: skip
    LayerRosenbrock.one_cell_at_a_time = SingularRosenbrock.one_cell_at_a_time = False
    diffrax_methods.ALONE_UNKNOWNS = 2**62
    try:
        yield
    finally:
        LayerRosenbrock.one_cell_at_a_time, SingularRosenbrock.one_cell_at_a_time, diffrax_methods.ALONE_UNKNOWNS = (
            saved)  # fmt: skip


def run_case(n: int, rank: int, fraction: float, depth: int, method: str, scales: list, seeds, e2e: bool) -> tuple:
    prob = dln.MatrixCompletion.random(shape=(n, n), rank=rank, observed=int(fraction * n * n), seed=0)
    kw = dict(depth=depth, scale=scales, seed=seeds, method=method, progress=False)
    kw |= dict(flow="end_to_end", init="balanced", scale_of="product") if e2e else dict(init="gaussian")
    first = dln.integrate(prob, **kw)  # the plan's horizon and tolerances, fixed for both runs
    kw |= dict(t1=float(first["time"].values[-1]), saveat=first["time"].values, rtol=first.attrs["rtol"],
               atol=first.attrs["atol"])  # fmt: skip
    with vmapped_batch():
        batch = dln.integrate(prob, **kw)
    alone = dln.integrate(prob, **kw)
    cells = int(np.prod(alone["status"].shape))
    return float(batch.attrs["run_time"]), float(alone.attrs["run_time"]), cells


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    print(f"run time, compilation apart (load average {os.getloadavg()[0]:.1f})")
    print(f"{'case':28s} {'cells':>5s} {'batch s':>9s} {'alone s':>9s} {'ratio':>6s}")
    for name, *case in CASES:
        if args.quick and name not in QUICK:
            continue
        batch, alone, cells = run_case(*case)
        print(f"{name:28s} {cells:5d} {batch:9.2f} {alone:9.2f} {batch / alone:6.2f}", flush=True)


if __name__ == "__main__":
    main()
