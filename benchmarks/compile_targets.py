"""Compile targets: cold and warm compile time of `dlnode.integrate` on the 50×50 depth-3 completion, and where it goes.

Each case is a call a user would type (the normalised 50×50 rank-3 completion with 600 observed entries, per-layer
Gaussian init 1e-3, defaults otherwise). It runs in a fresh process whose JAX compilation cache is an empty
temporary folder (cold), then in a second fresh process on that folder (warm, the persistent cache filled by the
first), `--repeats` times (medians reported; default 3). Per run: ``attrs["compile_time"]`` (what dlnode reports:
the solver's compiled functions), the process's CPU time over it (every thread; a loaded machine stretches it far
less than the wall time), its split into JAX's tracing, lowering to StableHLO and XLA's compile (or cache
read), every compilation of the process from JAX's own monitoring events (the solver's, and the rest: `auto`'s
stiffness probe, the initialisation, the dataset's analysis), the run time, the whole call and the import.

Usage: ``python -m benchmarks.compile_targets [--only c50_d3,c50_d64] [--repeats 3] [--limit 300]
[--env XLA_FLAGS=...]``; writes ``compile_targets.md`` (``compile_targets-2.md``, … when taken: an earlier run's
table is never replaced) and appends to ``compile_targets.jsonl`` in the output folder (default
benchmarks/results). Run it on a quiet machine with ``OPENBLAS_NUM_THREADS=1``; the times are the machine's.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._process import fresh_path

RESULTS = Path(__file__).resolve().parent / "results"

# name → integrate keywords (besides the problem, progress=False)
CASES: dict[str, dict] = {
    "c50_d3": {"depth": 3, "scale": 1e-3},
    "c50_d64": {"depth": 64, "scale": 1e-3},
    "c50_d3_tsit5": {"depth": 3, "scale": 1e-3, "method": "tsit5"},
    "c50_d3_dopri8": {"depth": 3, "scale": 1e-3, "method": "dopri8"},
}

# JAX's monitoring events of one compilation, by the phase they time
EVENTS = {
    "/jax/core/compile/jaxpr_trace_duration": "trace",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
    "/jax/core/compile/backend_compile_duration": "xla",
}


def problem():
    """The normalised 50×50 rank-3 completion, 600 observed entries (the defaults table's c50)."""
    import dlnode as dln

    base = dln.MatrixCompletion.random((50, 50), 3, 600, seed=0)
    return dln.MatrixCompletion(base.target(), base.mask, normalize=True)


def run_case(name: str, imported: float) -> dict:
    """One case in this process: its times (seconds) and what it ran."""
    import jax

    import dlnode as dln
    from dlnode.solvers.core import COMPILE

    process = dict.fromkeys(EVENTS.values(), 0.0)

    def listen(event: str, seconds: float, **kwargs) -> None:
        if event in EVENTS:
            process[EVENTS[event]] += seconds

    jax.monitoring.register_event_duration_secs_listener(listen)
    prob = problem()
    start = time.perf_counter()
    ds = dln.integrate(prob, progress=False, **CASES[name])
    total = time.perf_counter() - start
    return {
        "case": name, "method": ds.attrs["method"], "rtol": float(ds.attrs["rtol"]),
        "status": sorted({dln.Status(int(s)).meaning for s in ds["status"].values.ravel()}),
        "steps": int(ds["num_steps"].max()), "compile": float(ds.attrs["compile_time"]),
        "solver": {k: COMPILE.get(k, math.nan) for k in ("trace", "lower", "xla", "cpu")}, "process": process,
        "run": float(ds.attrs["run_time"]), "total": total, "import": imported,
    }  # fmt: skip


def _child(name: str, cache: str, env: dict, limit: float) -> dict:
    """`name` in a fresh interpreter with its JAX compilation cache in `cache`."""
    env = dict(os.environ, **env, DLNODE_CACHE_DIR=cache, JAX_COMPILATION_CACHE_DIR=cache, OPENBLAS_NUM_THREADS="1")
    try:
        done = subprocess.run([sys.executable, "-m", "benchmarks.compile_targets", "--case", name], env=env,
                              capture_output=True, text=True, timeout=limit)  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"failed": f"over {limit:.0f} s"}
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"failed": (done.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(lines[-1])


def _median(runs: list[dict], *keys: str) -> float:
    values = []
    for r in runs:
        for k in keys:
            r = r[k]
        values.append(r)
    return statistics.median(values) if values else float("nan")


def _row(name: str, cold: list[dict], warm: list[dict]) -> str:
    ok = [r for r in cold if "failed" not in r]
    okw = [r for r in warm if "failed" not in r]
    if not ok:
        return f"| {name} | – | {cold[0]['failed'] if cold else 'no run'} |" + " |" * 14
    first = ok[0]
    cells = [name, first["method"], "/".join(first["status"]), str(first["steps"])]
    for runs in (ok, okw):
        cells += [f"{_median(runs, 'compile'):.2f}", f"{_median(runs, 'solver', 'cpu'):.2f}"] if runs else ["–"] * 2
    cells += [f"{_median(ok, 'solver', k):.2f}" for k in ("trace", "lower", "xla")]
    cells += [f"{_median(ok, 'process', k):.2f}" for k in ("trace", "lower", "xla")]
    cells += [f"{_median(okw, 'process', 'xla'):.2f}" if okw else "–", f"{_median(ok, 'run'):.2f}",
              f"{_median(ok, 'total'):.2f}"]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


HEADER = [
    "| case | method | status | steps | cold compile s | cold compile CPU s | warm compile s | warm compile CPU s "
    "| solver trace | solver lower | solver XLA | process trace | process lower | process XLA | warm process XLA "
    "| run s | call s |",
    "|---|---|---|---:|" + "---:|" * 13,
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="c50_d3,c50_d64,c50_d3_tsit5")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--limit", type=float, default=300.0, help="seconds per process")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the child processes")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:
        began = time.perf_counter()
        import dlnode  # noqa: F401  (the import is timed apart)

        print(json.dumps(run_case(args.case, time.perf_counter() - began)))
        return
    env = dict(kv.split("=", 1) for kv in args.env)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    with open(args.out / "compile_targets.jsonl", "a") as log:
        for name in args.only.split(","):
            cold, warm = [], []
            for _ in range(args.repeats):
                with tempfile.TemporaryDirectory() as cache:
                    cold.append(_child(name, cache, env, args.limit))
                    warm.append(_child(name, cache, env, args.limit))
                for kind, r in (("cold", cold[-1]), ("warm", warm[-1])):
                    log.write(json.dumps({"kind": kind, "env": env, **r, "case": name}) + "\n")
                    log.flush()
            rows.append(_row(name, cold, warm))
            print(rows[-1], flush=True)
    note = f"Child environment: {env}." if env else ""
    text = "# Compile targets\n\n" + "\n".join(HEADER + rows) + "\n\n" + note + "\n"
    markdown = fresh_path(args.out, "compile_targets")
    markdown.write_text(text)
    print(f"wrote {markdown}")


if __name__ == "__main__":
    main()
