"""The defaults table: each target called with nothing but problem, depth, init and scale (and the flow).

For every case: the method `auto` chose, the statuses, the final loss ratio (ℓ − ℓ*)/(ℓ₀ − ℓ*), the largest relative
error ‖W − W_ref‖_F/‖W_ref‖_F against a tight reference integrated at the run's own save times, the balancedness
drift relative to max_j ‖W_j‖²_F, and three times: the cold compile (a fresh compilation cache, a fresh process),
the warm compile (a second process sharing that cache) and the run time. Each case runs in its own process under a
time limit; a case that exceeds it is reported as such.

Usage: ``python -m benchmarks.defaults [--only arora,c50] [--limit 300] [--no-reference] [--methods M1,M2]``; with
``--methods`` a second table times every case cold with only ``method=`` set, against auto; writes
``defaults.md`` in the output folder (default benchmarks/results).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._process import last_json

RESULTS = Path(__file__).resolve().parent / "results"


def _problem(name: str):
    import dlnode as dln

    from .stiff_targets import d10_completion

    if name == "arora":
        return dln.MatrixCompletion.random(shape=(100, 100), rank=5, observed=2000, seed=0)
    if name == "c50":
        base = dln.MatrixCompletion.random((50, 50), 3, 600, seed=0)
        return dln.MatrixCompletion(base.target(), base.mask, normalize=True)
    if name == "d10":
        return d10_completion()
    if name == "d50":
        return dln.MatrixCompletion.random((50, 50), 3, 1500, seed=0)
    if name == "fact10":
        return dln.Factorization(d10_completion().w_star)
    if name == "c30":
        return dln.MatrixCompletion.random((30, 30), 3, 450, seed=0)
    raise ValueError(name)


# name → (problem, integrate keywords a user would type, reference method)
CASES: dict[str, tuple[str, dict, str | None]] = {
    "arora": ("arora", {"depth": 3, "init": "gaussian", "scale": 0.1}, "dopri8"),
    "c50": ("c50", {"depth": [1, 2, 3], "init": "gaussian", "scale": 1e-3}, "rosenbrock"),
    # the reference is rosenbrock at rtol 1e-10: scipy's Radau at rtol 1e-10 was itself 1e-2 off on this case (at
    # t ≈ 670, early on the plateau) while rosenbrock at rtol 1e-6 / 1e-8 / 1e-10 is 4.9e-6 / 4.1e-8 / 2.4e-10 from
    # rosenbrock at 1e-11, an error proportional to rtol
    "d10": ("d10", {"depth": 4, "init": "gaussian", "scale": 1e-3}, "rosenbrock"),
    "d50": ("d50", {"depth": 4, "init": "gaussian", "scale": 1e-3}, "rosenbrock"),
    "d8": ("d10", {"depth": 8, "init": "gaussian", "scale": 1e-3}, None),
    "d8_e2e": ("d10", {"depth": 8, "init": "balanced", "scale": 1e-3, "flow": "end_to_end"}, None),
    "d8_fact": ("fact10", {"depth": 8, "init": "balanced", "scale": 1e-3, "flow": "end_to_end"}, "rosenbrock"),
    # the reference is the singular path at rtol 1e-10 for every depth: for depth 2, which auto gives tsit5 in W,
    # another method in other coordinates
    "e2e_c30": (
        "c30",
        {"depth": [2, 4, "inf"], "init": "balanced", "scale": 1e-3, "flow": "end_to_end", "scale_of": "product"},
        "rosenbrock",
    ),  # fmt: skip
    # the reference as e2e_c30's; it runs for several minutes (with --limit 400 it ran inside its 1600 s)
    "e2e_arora": (
        "arora",
        {"depth": [2, 4, "inf"], "init": "balanced", "scale": 1e-3, "flow": "end_to_end", "scale_of": "product"},
        "rosenbrock",
    ),  # fmt: skip
}


def run_case(name: str, out: Path, method: str | None = None) -> dict:
    """One case with defaults (or with only `method` set), in this process; saves the defaults' dataset (for the
    reference) and returns its row."""
    import dlnode as dln

    prob_name, kw, _ = CASES[name]
    prob = _problem(prob_name)
    start = time.perf_counter()
    ds = dln.integrate(prob, progress=False, **kw, **({"method": method} if method else {}))
    total = time.perf_counter() - start
    if method is None:
        dln.save(ds, out / f"defaults_{name}.nc", overwrite=True)
    loss, loss0 = ds["loss"].isel(time=-1).values, ds["loss"].isel(time=0).values
    ratio = (loss - prob.loss_min) / (loss0 - prob.loss_min)
    return {
        "case": name, "method": _methods(ds), "reason": ds.attrs["method_reason"],
        "status": sorted({dln.Status(int(s)).meaning for s in ds["status"].values.ravel()}),
        "loss_ratio": float(np.nanmax(ratio)), "drift": _drift(ds), "compile": float(ds.attrs["compile_time"]),
        "run": float(ds.attrs["run_time"]), "total": total, "steps": int(ds["num_steps"].max()),
        "t_end": float(ds["time"][-1]),
    }  # fmt: skip


def _methods(ds) -> str:
    """The method that ran, or each depth's when auto chose per depth (``method_used``)."""
    if "method_used" not in ds:
        return ds.attrs["method"]
    names = ds["method_used"].attrs["flag_meanings"].split()
    used = ds["method_used"].isel(scale=0, seed=0).values
    return "per depth: " + ", ".join(f"{d:g} {names[int(c)]}" for d, c in zip(ds["depth"].values, used, strict=True))


def _drift(ds) -> float:
    """max over depths of the balancedness drift over max_j ‖W_j‖²_F at the end (NaN for end-to-end flows)."""
    if ds.attrs["flow"] == "end_to_end":
        return float("nan")
    sizes = (ds["weights_final"].fillna(0.0) ** 2).sum(("out", "in")).max("layer")
    return float((ds["balancedness"].max("time") / sizes).max())


def reference_error(name: str, out: Path) -> float:
    """The case's largest relative error in W against its reference method at rtol 1e-10, at the same times."""
    import dlnode as dln

    prob_name, kw, method = CASES[name]
    if method is None:
        return float("nan")
    ds = dln.open(out / f"defaults_{name}.nc")
    times = ds["time"].values
    ref = dln.integrate(_problem(prob_name), progress=False, method=method, rtol=1e-10, atol=1e-13, t1=float(times[-1]),
                        saveat=times, loss_tol=None, max_steps=5_000_000, **kw)  # fmt: skip
    reached = ds["time"] <= np.minimum(ds["t_final"], ref["t_final"])
    diff = np.sqrt(((ds["product"] - ref["product"]) ** 2).sum(("row", "col")))
    size = np.sqrt((ref["product"] ** 2).sum(("row", "col")))
    return float((diff / size).where(reached).max())


def _subprocess(args: list[str], cache: str, limit: float) -> dict | None:
    return last_json("benchmarks.defaults", args, cache, limit)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(CASES))
    parser.add_argument("--limit", type=float, default=300.0, help="seconds per process")
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--methods",
        default="",
        help="also time each case with only method=M set (comma-separated), cold, for the auto-against-the-best table",
    )
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--reference", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.case:
        print(json.dumps(run_case(args.case, args.out, args.method)))
        return
    if args.reference:
        print(json.dumps({"error_ref": reference_error(args.reference, args.out)}))
        return
    rows = []
    for name in args.only.split(","):
        with tempfile.TemporaryDirectory() as cache:
            cold = _subprocess(["--case", name, "--out", str(args.out)], cache, args.limit)
            warm = _subprocess(["--case", name, "--out", str(args.out)], cache, args.limit) if cold else None
        row = {"case": name, "limit": args.limit, "cold": cold, "warm": warm}
        if cold and "failed" not in cold and not args.no_reference:
            ref = _subprocess(["--reference", name, "--out", str(args.out)], tempfile.gettempdir(), 4 * args.limit)
            row["error_ref"] = None if ref is None else ref.get("error_ref")
        rows.append(row)
        print(_line(row), flush=True)
    table = ["| case | call | method | status | ℓ/ℓ₀ | max err vs ref | drift/max‖W_j‖² | cold compile s | "
             "warm compile s | run s | steps |", "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    table += [_line(r) for r in rows]
    if args.methods:
        table += ["", *_methods_table(rows, args.methods.split(","), args)]
    (args.out / "defaults.md").write_text("# Defaults table\n\n" + "\n".join(table) + "\n")
    print(f"wrote {args.out / 'defaults.md'}")


def _methods_table(rows: list[dict], methods: list[str], args: argparse.Namespace) -> list[str]:
    """auto against each method set by hand, every run cold (a fresh compilation cache) with everything else
    default; the best is the fastest run that converged (compile and run time together)."""
    lines = ["| case | auto picked | auto s | " + " | ".join(f"{m} s" for m in methods) + " | best | auto / best |",
             "|---|---|---:|" + "---:|" * len(methods) + "---|---:|"]  # fmt: skip
    for row in rows:
        name, cold = row["case"], row["cold"]
        if not cold or "failed" in cold:
            continue
        times = {"auto": cold["total"] if cold["status"] == ["converged"] else None}
        cells = []
        for m in methods:
            with tempfile.TemporaryDirectory() as cache:
                got = _subprocess(["--case", name, "--method", m, "--out", str(args.out)], cache, args.limit)
            if got is None:
                cells.append(f"> {args.limit:.0f}")
            elif "failed" in got:
                cells.append("error")
            else:
                ok = got["status"] == ["converged"]
                times[m] = got["total"] if ok else None
                cells.append(f"{got['total']:.1f}" + ("" if ok else f" ({'/'.join(got['status'])})"))
            print(name, m, cells[-1], flush=True)
        done = {k: v for k, v in times.items() if v is not None}
        best = min(done, key=done.get) if done else "–"
        ratio = f"{times['auto'] / done[best]:.2f}" if times["auto"] and done else "–"
        head = f"| {name} | {cold['method']} | {cold['total']:.1f} | "
        lines.append(head + " | ".join(cells) + f" | {best} | {ratio} |")
    return lines


def _line(row: dict) -> str:
    name, cold, warm = row["case"], row["cold"], row["warm"]
    call = ", ".join(f"{k}={v}" for k, v in CASES[name][1].items())
    if cold is None:
        return f"| {name} | {call} | – | over the {row['limit']:.0f} s limit | | | | | | | |"
    if "failed" in cold:
        return f"| {name} | {call} | – | error: {cold['failed']} | | | | | | | |"
    err = row.get("error_ref")
    err_text = "–" if err is None or not np.isfinite(err) else f"{err:.2g}"
    warm_c = "–" if not warm or "failed" in warm else f"{warm['compile']:.2f}"
    drift = "–" if not np.isfinite(cold["drift"]) else f"{cold['drift']:.2g}"
    cells = [name, call, cold["method"], "/".join(cold["status"]), f"{cold['loss_ratio']:.2g}", err_text, drift,
             f"{cold['compile']:.2f}", warm_c, f"{cold['run']:.2f}", str(cold["steps"])]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


if __name__ == "__main__":
    main()
