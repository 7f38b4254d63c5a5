"""`auto`'s rules, each on the case that motivated it: what auto chooses, against tsit5 and rosenbrock fixed.

Each rule of `dlnode.solvers.auto` that sends a run to the stiff path (the end of a run until converged: a stiff
tail, an ill-conditioned loss; a long given horizon; the modified flow's extra stiffness; the end-to-end flow's own
thresholds) was added after a case where tsit5, the explicit default, ran out of steps or took many times the stiff
path's. This benchmark runs those cases again, plus controls where the explicit path is right, with defaults only:
``auto``, ``tsit5`` and ``rosenbrock`` each cold in its own process (a fresh compilation cache, so compile time
counts, as it does for a user's first call) under ``--limit`` seconds. Per case and method: the status, the accepted
steps, the seconds of the `integrate` call (compile included); per case: auto's time over the best fixed
method's that reached the same end (converged, or t1), the defaults' target "within 1.5× of the best fixed
method" read case by case.

Usage: ``python -m benchmarks.auto_rules [--only tail,horizon] [--limit 120]``; writes ``auto_rules.md`` in
benchmarks/results (``auto_rules-2.md``, … when that exists).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._process import fresh_path, last_json

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("auto", "tsit5", "rosenbrock")
GOOD = (0, 1)  # finished (to a given t1) or converged


def _problem(name: str):  # noqa: ANN202
    import dlnode as dln

    if name == "sensing":  # n > d²: one minimiser of rank 2, Σ's condition number 944
        return dln.MatrixSensing.random(shape=(6, 6), rank=2, measurements=40, seed=0)
    if name == "factorization":  # Hessian I: a tail from a large init is the only stiffness
        rng = np.random.default_rng(0)
        return dln.Factorization(rng.standard_normal((6, 2)) @ rng.standard_normal((2, 6)))
    if name == "ill_conditioned":  # Σ_xx = diag(2, 2e-4): condition number 1e4, one minimiser
        x = np.diag([1.0, 1e-2]) @ np.vstack([np.ones(4), [1.0, -1.0, 1.0, -1.0]]) * np.sqrt(2.0)
        return dln.Regression(x, np.array([[1.0, 1.0]]) @ x)
    if name == "whitened":  # Σ_xx = I, singular values 3, 2, 1 of a 4 × 4 W*: one minimiser
        return dln.Regression.whitened([3.0, 2.0, 1.0], 4, 4, seed=0)
    if name == "diag":
        return dln.Factorization(np.diag([2.0, 1.0]))
    if name == "completion":
        return dln.MatrixCompletion.random((6, 6), 2, 0.6, seed=0)
    raise KeyError(name)


E2E = {"flow": "end_to_end", "init": "balanced", "scale_of": "product"}
# name: (rule, problem, integrate's arguments)
CASES: dict[str, tuple[str, str, dict]] = {
    "tail": ("stiff tail of a large init (until converged)", "factorization", {"depth": 3, "scale": 0.3}),
    "ill_conditioned": ("ill-conditioned loss (until converged)", "ill_conditioned", {"depth": 1, "scale": 1e-3}),
    "sensing_d2": ("ill-conditioned loss (until converged)", "sensing", {"depth": 2, "scale": 0.1}),
    "sensing_d3": ("ill-conditioned loss and a tail (until converged)", "sensing", {"depth": 3, "scale": 0.3}),
    "horizon": ("a given t1 far past the first escape", "sensing", {"depth": 3, "scale": 0.1, "t1": 1e3}),
    "modified": ("the modified flow's extra stiffness", "sensing",
                 {"depth": 3, "scale": 0.1, "seed": 1, "t1": 2000.0, "flow": "modified", "lr": 0.3}),
    "e2e_until": ("end to end, ill-conditioned (until converged)", "sensing", {"depth": 3, "scale": 0.1, **E2E}),
    "e2e_horizon": ("end to end, a given t1 far past the escape", "sensing",
                    {"depth": 3, "scale": 0.1, "t1": 1e4, **E2E}),
    "e2e_inf_tail": ("end to end at depth inf, a large product's tail (until converged)", "whitened",
                     {"depth": "inf", "scale": 10.0, **E2E}),
    "control_mild": ("control: nothing stiff", "diag", {"depth": 2, "scale": 0.5, "t1": 1.0}),
    "control_small": ("control: small init, no tail", "factorization", {"depth": 2, "scale": 0.01}),
    "control_e2e": ("control: many minimisers, depth 2", "completion", {"depth": 2, "scale": 0.1, **E2E}),
}  # fmt: skip


def run_one(name: str, method: str) -> dict:
    """One case by one method, in this process: status, accepted steps, seconds of the call, auto's choice."""
    import warnings

    import dlnode as dln

    rule, problem, kwargs = CASES[name]
    prob = _problem(problem)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a run out of steps warns; the row says it
        ds = dln.integrate(prob, method=method, progress=False, **kwargs)
    seconds = time.perf_counter() - start
    return {"status": int(ds["status"].item()), "steps": int(ds["num_steps"].item()), "seconds": seconds,
            "chosen": ds.attrs["method"], "compile": float(ds.attrs.get("compile_time", float("nan")))}  # fmt: skip


def measure(name: str, limit: float) -> dict:
    row: dict = {"case": name, "rule": CASES[name][0]}
    for method in METHODS:
        with tempfile.TemporaryDirectory() as cold:
            got = last_json("benchmarks.auto_rules", ["--case", name, "--method", method], cold, limit)
        row[method] = got if got is not None else {"failed": f"no result in {limit:g} s"}
    return row


def _cell(got: dict) -> str:
    if "failed" in got:
        return got["failed"]
    import dlnode as dln

    return f"{dln.Status(got['status']).name.lower()}, {got['steps']:,} steps, {got['seconds']:.1f} s"


def ratio(row: dict) -> float:
    """auto's seconds over the best fixed method's among those that reached a good end (NaN when none did)."""
    auto = row["auto"]
    good = [row[m]["seconds"] for m in METHODS[1:] if row[m].get("status") in GOOD]
    if "failed" in auto or auto.get("status") not in GOOD or not good:
        return float("nan")
    return auto["seconds"] / min(good)


def table(rows: list[dict]) -> str:
    head = "| case | rule | auto chose | auto | tsit5 | rosenbrock | auto / best |\n|---|---|---|---|---|---|---:|"
    lines = [head]
    for r in rows:
        chosen = r["auto"].get("chosen", "?")
        lines.append(f"| {r['case']} | {r['rule']} | {chosen} | {_cell(r['auto'])} | {_cell(r['tsit5'])} | "
                     f"{_cell(r['rosenbrock'])} | {ratio(r):.2f} |")  # fmt: skip
    ratios = np.array([ratio(r) for r in rows])
    done = ratios[np.isfinite(ratios)]
    summary = (
        f"auto reached a good end (converged, or t1) on {len(done)} of {len(rows)} cases; auto / best fixed "
        f"method: median {np.median(done):.2f}, max {done.max():.2f}; within 1.5x on "
        f"{int(np.sum(done <= 1.5))}, within 3x on {int(np.sum(done <= 3))}"
        if done.size
        else "no case done"
    )
    return "\n".join(lines) + "\n\n" + summary + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated case names: " + ", ".join(CASES))
    parser.add_argument("--limit", type=float, default=120.0, help="seconds per (case, method)")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:  # one case by one method, in this process
        print(json.dumps(run_one(args.case, args.method)))
        return
    names = [n for n in args.only.split(",") if n] or list(CASES)
    unknown = sorted(set(names) - set(CASES))
    if unknown:
        parser.error(f"--only names unknown cases {unknown}; choose from {', '.join(CASES)}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    rows, markdown = [], fresh_path(RESULTS, "auto_rules")
    for name in names:
        rows.append(measure(name, args.limit))
        print(json.dumps(rows[-1]), flush=True)
        markdown.write_text(f"# auto's rules against fixed methods (cold, one process each)\n\n{table(rows)}")
    print(table(rows))
    print(f"wrote {markdown}")


if __name__ == "__main__":
    main()
