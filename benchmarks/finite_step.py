"""Cost of the curvature along a run and of the central flow, against gradient descent over the same time span.

On a deep linear network of the kind of Cohen et al. (2021) (whitened inputs X = Q·√n, targets Y = A X with A
Gaussian, square layers of width d, Xavier-normal init: `studies.cohen2021.problem`), at a step size that puts GD
on the edge of stability, in one process, each run's time the median of `REPEATS` runs after the one that compiles
(compile time apart, `attrs["run_time"]`):

- GD saved at every step, without and with ``sharpness=1`` (the ratio is the cost of the curvature along the run,
  where it is computed at every step), and GD saved every `SPARSE` steps with and without it;
- the central flow (tsit5) over the same time span, and the gradient flow (tsit5) as its baseline.

The Lanczos share of the central flow is measured on one field evaluation: the time of the top-eigenpair solve
against the whole field (both jitted, median of repeats).

    python -m benchmarks.finite_step [--quick] [--paper]

`--tracked` adds the central flow tracking k = 1, 2 and 3 eigenvalues on a whitened 5 × 5 regression (singular values
3, 2, 1; depth 3, Gaussian 0.5, lr 0.2, t1 = 200) whose second eigenvalue sits just below the edge: steps, rejected
steps and run time (median of `TRACKED_REPEATS` after the compiling run) for each k.

`--rest` runs the central flow until converged on a whitened 6 × 6 regression (singular values 4, 2, 1; depth 4,
Gaussian 0.4, lr 0.1) where it comes to rest on the edge above ℓ*: with the driver's edge-rest rule and with it
switched off (the run then goes on to its horizon): status, time reached, steps, run time and final loss of each.

`--paper` adds the field evaluation's Lanczos share on the network of Cohen et al.'s own size (20 layers of width 50,
50,000 parameters, the same data construction), where the Lanczos reorthogonalisation, not the products, is the cost.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

import dlnode as dln
from dlnode.flows.central import central_parts
from dlnode.flows.flow import layer_gradients
from dlnode.flows.hessian import top_eigenpairs
from studies import cohen2021

SPARSE = 20  # steps between saves of the sparse GD runs
REPEATS = 9  # each run's time: the median of this many runs after the one that compiles


def _median_time(fn, y, repeats: int = 7, evaluations: int = 50) -> float:
    """Seconds of one evaluation of `fn` (y -> a pytree), timed in a compiled loop of `evaluations` that feeds each
    result back into the next argument (no dispatch per evaluation, and nothing for the compiler to hoist): the
    median of `repeats` loops."""

    def body(_, x):
        out = jax.tree_util.tree_leaves(fn(x))
        total = sum(jnp.sum(leaf) for leaf in out)
        return jax.tree_util.tree_map(lambda a: a + 1e-300 * total, x)

    loop = jax.jit(lambda x: jax.lax.fori_loop(0, evaluations, body, x))
    jax.block_until_ready(loop(y))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(loop(y))
        times.append(time.perf_counter() - start)
    return statistics.median(times) / evaluations


def lanczos_share(config: dict) -> dict[str, float]:
    """Seconds of one central-flow field evaluation, of its Lanczos solve and of one gradient, and the Lanczos
    products, at the initial weights."""
    prob = cohen2021.problem(config)
    layers = tuple(jnp.asarray(w) for w in dln.init_layers(prob, config["depth"], "gaussian", config["scale"],
                                                           config["seed"]))  # fmt: skip
    arrays = jax.tree_util.tree_map(jnp.asarray, prob.arrays())

    def gradient(y):
        return layer_gradients(y, type(prob).grad_fn, arrays)[0]

    def lanczos(y):
        theta, vectors, _ = top_eigenpairs(gradient, y, 1)
        return theta, vectors

    return {"field": _median_time(lambda y: central_parts(gradient, y, config["lr"], 1)["field"], layers),
            "lanczos": _median_time(lanczos, layers), "gradient": _median_time(gradient, layers),
            "products": float(jax.jit(lambda y: top_eigenpairs(gradient, y, 1)[2])(layers))}  # fmt: skip


def measure(config: dict, repeats: int = REPEATS) -> dict[str, float]:
    prob = cohen2021.problem(config)
    lr, steps = config["lr"], config["steps"]
    every = np.arange(steps + 1) * lr
    kw = {"depth": config["depth"], "init": "gaussian", "scale": config["scale"], "seed": config["seed"],
          "t1": every[-1],
          "progress": False}  # fmt: skip
    calls = {
        "gd": {"method": "gd", "lr": lr, "saveat": every},
        "gd+sharpness": {"method": "gd", "lr": lr, "saveat": every, "sharpness": 1},
        "gd sparse": {"method": "gd", "lr": lr, "saveat": every[::SPARSE]},
        "gd sparse+sharpness": {"method": "gd", "lr": lr, "saveat": every[::SPARSE], "sharpness": 1},
        "gradient flow": {"method": "tsit5", "saveat": every[::SPARSE]},
        "central flow": {"flow": "central", "lr": lr, "saveat": every[::SPARSE]},
    }
    out, runs = {}, {}
    for name, call in calls.items():  # the first call compiles; the median of `repeats` runs after it
        runs[name] = dln.integrate(prob, **call, **kw)
        times = [float(dln.integrate(prob, **call, **kw).attrs["run_time"]) for _ in range(repeats)]
        out[name] = statistics.median(times)
    out["central compile"] = float(runs["central flow"].attrs["compile_time"])
    out["central steps"] = float(runs["central flow"]["num_steps"].sum())
    out["central rejected"] = float(runs["central flow"]["num_rejected"].sum())
    return out


TRACKED_REPEATS = 3


def tracked(repeats: int = TRACKED_REPEATS) -> dict[int, dict[str, float]]:
    """The central flow at k = 1, 2, 3 tracked eigenvalues on a regression with two eigenvalues near the edge."""
    prob = dln.Regression.whitened([3.0, 2.0, 1.0], 5, 5, seed=0)
    kw = {"depth": 3, "scale": 0.5, "seed": 0, "flow": "central", "lr": 0.2, "t1": 200.0, "saveat": 40,
          "progress": False}  # fmt: skip
    out = {}
    for k in (1, 2, 3):
        ds = dln.integrate(prob, sharpness=k, **kw)
        times = [float(dln.integrate(prob, sharpness=k, **kw).attrs["run_time"]) for _ in range(repeats)]
        out[k] = {"steps": float(ds["num_steps"].sum()), "rejected": float(ds["num_rejected"].sum()),
                  "run": statistics.median(times), "second": float(ds["sharpness"].isel(time=-1, eig=1).item())
                  if k > 1 else float(ds["untracked_sharpness"].isel(time=-1).item())}  # fmt: skip
    return out


def at_rest() -> dict[str, dict[str, float]]:
    """The central flow run until converged on a regression where it comes to rest on the edge above ℓ*: with the
    driver's edge-rest rule (status ``edge_rest``), and with the rule switched off (``REST_DECADES`` = ∞: the run
    goes on to its horizon, status ``not_converged``). One run each, cold compile apart."""
    from dlnode.solvers import driver

    prob = dln.Regression.whitened([4.0, 2.0, 1.0], 6, 6, seed=1)
    kw = {"depth": 4, "scale": 0.4, "seed": 0, "flow": "central", "lr": 0.1, "progress": False}
    out = {}
    for name, decades in (("with the rule", driver.REST_DECADES), ("rule off", math.inf)):
        saved, driver.REST_DECADES = driver.REST_DECADES, decades
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the runs' own stop warnings: their statuses are printed
                ds = dln.integrate(prob, **kw)
        finally:
            driver.REST_DECADES = saved
        out[name] = {"status": dln.Status(int(ds["status"].item())).meaning, "t": float(ds["t_final"].item()),
                     "steps": float(ds["num_steps"].item()), "run": float(ds.attrs["run_time"]),
                     "loss": float(ds["loss"].squeeze().dropna("time").values[-1])}  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--paper", action="store_true", help="also the Lanczos share at L = 20, d = 50")
    parser.add_argument("--tracked", action="store_true", help="also the central flow at k = 1, 2, 3 near the edge")
    parser.add_argument("--rest", action="store_true", help="also a central flow at rest on the edge, rule on and off")
    args = parser.parse_args(argv)
    config = dict(cohen2021.QUICK if args.quick else cohen2021.FULL)
    times = measure(config)
    share = lanczos_share(config)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"d={config['d']}, depth={config['depth']}, lr={config['lr']:g}, {config['steps']} GD steps "
          f"(run time, compile apart; median of {REPEATS} runs, load average {load})")  # fmt: skip
    for name, value in times.items():
        print(f"  {name:24s} {value:10.3f}" + ("" if "steps" in name or "rejected" in name else " s"))
    evaluations = 6 * (times["central steps"] + times["central rejected"])  # tsit5: 6 new stages a step (FSAL)
    print(f"  curvature at every step: {times['gd+sharpness'] / times['gd']:.1f}x GD; every {SPARSE} steps: "
          f"{times['gd sparse+sharpness'] / times['gd sparse']:.2f}x")  # fmt: skip
    print(f"  central flow / GD over the same span: {times['central flow'] / times['gd sparse']:.1f}x; "
          f"gradient flow / GD: {times['gradient flow'] / times['gd sparse']:.2f}x")  # fmt: skip
    print(
        f"  one field evaluation: {1e3 * share['field']:.2f} ms, of which Lanczos {1e3 * share['lanczos']:.2f} ms "
        f"({100 * share['lanczos'] / share['field']:.0f} %, {share['products']:.0f} Hessian-vector products); one "
        f"gradient {1e3 * share['gradient']:.3f} ms"
    )
    if args.paper:
        paper = lanczos_share({**config, "d": 50, "depth": 20})
        print(f"  L = 20, d = 50 (50,000 parameters): one field evaluation {1e3 * paper['field']:.1f} ms, of which "
              f"Lanczos {1e3 * paper['lanczos']:.1f} ms ({paper['products']:.0f} products); one gradient "
              f"{1e3 * paper['gradient']:.3f} ms")  # fmt: skip
    print(f"  central flow: ~{evaluations:.0f} field evaluations ({evaluations / config['steps']:.1f} per GD step), "
          f"{1e3 * times['central flow'] / evaluations:.2f} ms each in the run")  # fmt: skip
    if args.tracked:
        print("  central flow, whitened 5 x 5 regression, depth 3, lr 0.2 (2/lr = 10), t1 = 200:")
        for k, row in tracked().items():
            print(f"    k = {k}: {row['steps']:.0f} steps, {row['rejected']:.0f} rejected, {row['run']:.2f} s; "
                  f"second eigenvalue at the end {row['second']:.4g}")  # fmt: skip
    if args.rest:
        print("  central flow until converged, whitened 6 x 6 regression (4, 2, 1), depth 4, Gaussian 0.4, lr 0.1:")
        for name, row in at_rest().items():
            print(f"    {name}: {row['status']} at t = {row['t']:.4g}, {row['steps']:.0f} steps, {row['run']:.1f} s, "
                  f"loss {row['loss']:.7g}")  # fmt: skip


if __name__ == "__main__":
    main()
