"""SGD against its SDE: the weak order in lr, the SDE solvers' work–precision, and the path throughput.

Problem: a sparse regression (Gaussian design, d = 10, n = 20, 3-sparse truth, label noise 0.1 in the data) on a
depth-3 dense network of width 10 (210 parameters), label-noise gradient descent with δ = 0.5, from a Gaussian
init of per-layer scale 0.7, over t ∈ [0, 1] (t = k·lr).

1. Weak order: |E φ(SGD_η) − E φ(SDE_η)| for φ = loss and ‖W‖_F at t = 1, η ∈ {0.1, 0.05, 0.025, 0.0125}, P paths
   each (10⁴ in the full run), the SDE solved by Heun at dt = η/2 (weak error O(dt² + η·dt) = O(η²)); the
   fitted slope of log error on log η, with each error's Monte Carlo standard error.
2. Work–precision at η = 0.05: Euler–Maruyama and Heun at dt = η, η/2, η/4, η/8 against Heun at η/32 on the same
   Brownian paths (a path's Brownian tree does not depend on dt), so that the error of E φ is estimated from paired
   differences, with a small Monte Carlo error; wall time of each run (compile apart).
3. Throughput: path-steps per second of the SDE (Euler–Maruyama) and of label-noise SGD on this network, and the
   extrapolated time of 10⁴ paths × 10⁴ steps.

Run: ``python -m benchmarks.noise_sde [--quick]`` (quick: 10³ paths). Timings are on whatever machine runs it: quote
them with the machine and its load.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.stats import linregress

import dlnode as dln

ETAS = (0.1, 0.05, 0.025, 0.0125)
STEPS = (1, 2, 4, 8)  # dt = η / these, in the work-precision table
REFERENCE_STEPS = 32


def problem() -> dln.SparseRegression:
    return dln.SparseRegression.random(d=10, n=20, sparsity=3, noise=0.1, seed=0)


def _run(method: str, eta: float, paths: int, dt: float | None = None, t1: float = 1.0) -> tuple:
    kw = dict(depth=3, width=10, init="gaussian", scale=0.7, seed=0, lr=eta, t1=t1, saveat=np.array([t1]),
              noise=0.5, paths=paths, progress=False)  # fmt: skip
    if dt is not None:
        kw["dt"] = dt
    start = time.perf_counter()
    ds = dln.integrate(problem(), method=method, **kw)
    total = time.perf_counter() - start
    return ds, float(ds.attrs["run_time"]), total


def _phis(ds) -> dict:
    end = ds.isel(time=-1, depth=0, scale=0, seed=0)
    return {"loss": end["loss"], "norm_W": np.sqrt((end["product"] ** 2).sum(("row", "col")))}


def weak_order(paths: int) -> None:
    print(f"\n## Weak order: label-noise GD against its SDE (Heun, dt = lr/2), {paths} paths each\n")
    print("| lr | phi | E phi(SGD) | E phi(SDE) | error | MC error |")
    print("|---:|---|---:|---:|---:|---:|")
    errors: dict[str, list[float]] = {"loss": [], "norm_W": []}
    for eta in ETAS:
        sgd = _phis(_run("label_noise", eta, paths)[0])
        sde = _phis(_run("sde_heun", eta, paths, dt=eta / 2)[0])
        for name in errors:
            weak = dln.weak_error(sgd[name], sde[name])
            err, mc = float(weak["error"]), float(weak["mc_error"])
            errors[name].append(err)
            print(f"| {eta:g} | {name} | {float(sgd[name].mean()):.6f} | {float(sde[name].mean()):.6f} | "
                  f"{err:.2e} | {mc:.1e} |")  # fmt: skip
    for name, errs in errors.items():
        fit = linregress(np.log(ETAS), np.log(errs))
        print(f"\nfitted weak order ({name}): p = {fit.slope:.3f} ± {fit.stderr:.3f}")


def work_precision(paths: int, eta: float = 0.05) -> None:
    print(f"\n## Work-precision of the SDE solvers at lr = {eta} ({paths} paths, same Brownian paths)\n")
    ref, _, _ = _run("sde_heun", eta, paths, dt=eta / REFERENCE_STEPS)
    ref_phi = _phis(ref)
    print("| solver | dt | steps | error E loss | MC error | error E norm_W | MC error | run s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for method in ("sde_euler", "sde_heun"):
        for k in STEPS:
            ds, run_s, _ = _run(method, eta, paths, dt=eta / k)
            phi = _phis(ds)
            cells = []
            for name in ("loss", "norm_W"):
                diff = (phi[name] - ref_phi[name]).values
                cells += [f"{abs(diff.mean()):.2e}", f"{diff.std(ddof=1) / np.sqrt(diff.size):.1e}"]
            print(f"| {method} | lr/{k} | {int(round(1 / (eta / k)))} | {' | '.join(cells)} | {run_s:.2f} |")


def throughput(paths: int, steps: int = 200) -> None:
    print(f"\n## Throughput ({paths} paths x {steps} steps, compile apart)\n")
    eta = 1.0 / steps
    rows = []
    for method in ("label_noise", "sde_euler", "sde_heun"):
        _, run_s, total = _run(method, eta, paths, dt=eta if method != "label_noise" else None)
        rate = paths * steps / run_s
        rows.append((method, run_s, total - run_s, rate, 1e8 / rate))
    print("| method | run s | compile and set-up s | path-steps/s | 10^4 paths x 10^4 steps (extrapolated) s |")
    print("|---|---:|---:|---:|---:|")
    for method, run_s, other, rate, big in rows:
        print(f"| {method} | {run_s:.2f} | {other:.2f} | {rate:.3g} | {big:.0f} |")
    print(f"\nratio SDE (Euler-Maruyama) / label-noise GD run time: {rows[1][1] / rows[0][1]:.2f}; "
          f"Heun / Euler-Maruyama: {rows[2][1] / rows[1][1]:.2f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10^3 paths instead of 10^4")
    parser.add_argument("--only", default="weak,wp,speed", help="comma-separated: weak, wp, speed")
    args = parser.parse_args()
    paths = 1000 if args.quick else 10_000
    parts = args.only.split(",")
    if "weak" in parts:
        weak_order(paths)
    if "wp" in parts:
        work_precision(paths)
    if "speed" in parts:
        throughput(paths)


if __name__ == "__main__":
    main()
