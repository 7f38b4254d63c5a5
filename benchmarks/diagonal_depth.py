"""The solver of a diagonal linear network (β = u^D − v^D) by depth: tsit5 against the stiff path (`rosenbrock`).

On `SparseRegression.random()` (d = 100, n = 40, β* 5-sparse), uniform init at scales 0.1, 1e-2 and 1e-3, depths 2, 3
and 4, run until converged with defaults and a step budget of `BUDGET` attempts, one process, each run's time its
run time (compilation apart): status, accepted steps and run time of each method, and the method `auto` chooses
(`dlnode.solvers.auto.choose_diagonal`: tsit5 at D ≤ 2, rosenbrock at D ≥ 3).

    python -m benchmarks.diagonal_depth
"""

from __future__ import annotations

import os
import warnings

import dlnode as dln

BUDGET = 60_000  # attempts (accepted and rejected steps) a run may take
DEPTHS, SCALES, METHODS = (2, 3, 4), (0.1, 1e-2, 1e-3), ("tsit5", "rosenbrock")


def measure() -> list[dict]:
    prob = dln.SparseRegression.random()
    rows = []
    for depth in DEPTHS:
        for scale in SCALES:
            row = {"depth": depth, "scale": scale}
            for method in (*METHODS, "auto"):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # a run out of steps warns; its status is in the table
                    ds = dln.integrate(prob, network="diagonal", depth=depth, scale=scale, method=method,
                                       max_steps=BUDGET, progress=False)  # fmt: skip
                row[method] = {"status": dln.Status(int(ds["status"].item())).meaning,
                               "steps": int(ds["num_steps"].item()), "run": float(ds.attrs["run_time"]),
                               "chosen": ds.attrs["method"]}  # fmt: skip
            rows.append(row)
    return rows


def main() -> None:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"diagonal network on SparseRegression.random(), until converged, budget {BUDGET} attempts (load {load})")
    print("| D | scale | tsit5 | rosenbrock | auto |")
    print("|---|---|---|---|---|")
    for row in measure():
        cells = [f"{row[m]['status']}, {row[m]['steps']} steps, {row[m]['run']:.2f} s" for m in METHODS]
        print(f"| {row['depth']} | {row['scale']:g} | {cells[0]} | {cells[1]} | {row['auto']['chosen']} |")


if __name__ == "__main__":
    main()
