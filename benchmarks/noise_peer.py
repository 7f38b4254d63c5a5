"""HaoChen et al.'s discrete script against dlnode's discrete label-noise run and GD on the same problem, in one run.

The problem is `studies.haochen2021`'s: their quadratically parametrised model β = v⊙v on d = 100, n = 40 Gaussian
samples with a 5-sparse truth, v(0) = 1, their step 0.01 (dlnode's 0.005: their loss is half of dlnode's) and their
label noise δ = 1 (dlnode's full-batch δ√n, the same covariance; the study's docstring derives it).

Contestants, alternated within each repeat (median of the repeats):

- theirs: ``train_quadratic.py --opt GD`` and ``--opt LNGD`` (their script, PyTorch float32, a Python loop over the
  samples at every step; their defaults otherwise: seed 123, a log line every 20 iterations), each in its own
  process, for K iterations; and ``--iter 0`` (imports and data only), whose wall time is taken off theirs to give
  their cost per step. Their script runs one path per process: 100 paths are 100 such processes, counted as
  100 × one process (run one after another, as on one core).
- dlnode: ``dlnode.integrate(method="gd")`` and ``method="label_noise"`` with 1 and 100 paths (the study's call,
  saved at iterations K − 20 and K), each in a fresh process: cold (an empty compilation cache) and then warm (the
  cache the cold run filled). dlnode reports its compile time apart from the run time of the steps.

Both sides compute the same K updates: GD's test error ‖β − β*‖² at iteration K − 20 (their last log line) must
agree with their printed value (to `GD_RTOL`: their run is float32, dlnode's float64, so only the leading digits
can agree; the table says how many do: 7 at K = 200, 5 at 2,000, 3 from 10,000 on, where GD has converged and
differs by 7.5e-5 relative; their script with its tensors made float64, a one-word edit run outside this repository,
prints 75.040623 at iteration 9,980, dlnode's value to every printed digit), and their one label-noise run must
lie inside the 5–95 % band of dlnode's 100 paths (the study's band). Every BLAS / OpenMP / MKL pool, theirs and
dlnode's, is pinned to one thread, and XLA computes on one (dlnode's default).

    python -m benchmarks.noise_peer --theirs PATH [--quick] [--python PYTHON] [--repeats 3]

PATH is a checkout of their ``quadratic/`` folder (it holds ``train_quadratic.py``); PYTHON an interpreter with
torch and numpy for their script (default: this one; ``pip install 'dlnode[bench]'``). Full: K = 100,000 (the
study's horizon, before their first step decay) and 10,000, about an hour on 2 cores, nearly all of it their
script; quick: K = 2,000 and 200, a few minutes. One JSON line per measurement as it is taken, then the tables.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks._process import last_json

STEPS = {"full": (100_000, 10_000), "quick": (2_000, 200)}
PATHS = (1, 100)  # dlnode's label-noise runs; GD is deterministic, one run
LOG_INTERVAL = 20  # their script's default: a log line at every iteration that is a multiple of 20
THEIR_OPT = {"gd": "GD", "label_noise": "LNGD"}
THREADS = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
SCRIPT = "train_quadratic.py"
LIMIT = 7200.0  # seconds for any one process
LINE = re.compile(r"iter:\s*(\d+)\s*\|\s*train error:\s*(\S+)\s*\|\s*test error:\s*(\S+)")


# ---------------------------------------------------------------------------------------------------- theirs
def their_script(path: str | None) -> pathlib.Path | None:
    """Their script inside `path` (their ``quadratic/`` folder, or the script itself), None when it is not there."""
    if not path:
        return None
    p = pathlib.Path(path).expanduser()
    p = p / SCRIPT if p.is_dir() else p
    return p.resolve() if p.is_file() and p.name == SCRIPT else None


def parse_log(text: str) -> dict[int, float]:
    """Their printed test error by iteration: ``iter: K | train error: x | test error: y |`` lines."""
    return {int(m.group(1)): float(m.group(3)) for m in LINE.finditer(text)}


def printed_digits(theirs: str, ours: float) -> int:
    """How many leading significant digits of their printed value `theirs` dlnode's value rounds to."""
    digits = len(theirs.replace(".", "").lstrip("0"))
    for k in range(digits, 0, -1):
        if float(f"{ours:.{k}g}") == float(f"{float(theirs):.{k}g}"):
            return k
    return 0


def run_theirs(script: pathlib.Path, python: str, opt: str, iters: int) -> dict:
    """Their script in a fresh process (in a scratch folder: it writes its log under ``log/``), timed end to end."""
    env = dict(os.environ, **THREADS)
    with tempfile.TemporaryDirectory(prefix="theirs-") as cwd:
        start = time.perf_counter()
        done = subprocess.run([python, str(script), "--opt", opt, "--iter", str(iters)], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=LIMIT)  # fmt: skip
        wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"their script failed: {(done.stderr.strip().splitlines() or ['no output'])[-1]}")
    log = parse_log(done.stdout)
    last = max(log) if log else None
    text = LINE.findall(done.stdout)[-1][2] if log else None
    return {"wall_s": wall, "last_iter": last, "test_error": log.get(last), "printed": text}


# ---------------------------------------------------------------------------------------------------- dlnode
def run_inner(spec: dict) -> dict:
    """One dlnode call, in this process, as `studies.haochen2021` makes it: test errors at iteration K − 20."""
    import numpy as np

    import dlnode as dln
    from studies.haochen2021 import SETTING, their_data

    prob, k = their_data(), int(spec["iters"])
    lr = SETTING["lr"] / 2  # their ¼-loss is half of dlnode's ½-loss
    kw = dict(depth=2, network="diagonal", init="positive", scale=SETTING["alpha"], lr=lr, t1=k * lr,
              saveat=np.array([k - LOG_INTERVAL, k]) * lr, progress=False)  # fmt: skip
    if spec["method"] == "label_noise":
        kw.update(noise=SETTING["delta"] * math.sqrt(SETTING["n"]), paths=int(spec["paths"]))
    start = time.perf_counter()
    ds = dln.integrate(prob, method=spec["method"], **kw)
    call = time.perf_counter() - start
    beta = ds["product"].isel(depth=0, scale=0, seed=0, row=0)
    steps = np.rint(ds["time"].values / lr).astype(int)
    logged = beta.isel(time=int(np.nonzero(steps == k - LOG_INTERVAL)[0][0]))  # their last log line
    errors = ((logged - np.ravel(prob.truth)) ** 2).sum("col")
    return {"call_s": call, "compile_s": float(ds.attrs["compile_time"]), "run_s": float(ds.attrs["run_time"]),
            "test_error": np.atleast_1d(errors.values).tolist(),
            "status": sorted({int(s) for s in np.ravel(ds["status"].values)})}  # fmt: skip


def run_dlnode(spec: dict, cache: str) -> dict:
    """`run_inner` in a fresh interpreter with its compilation cache in `cache`, timed end to end."""
    start = time.perf_counter()
    out = last_json("benchmarks.noise_peer", ["--inner", json.dumps(spec)], cache, LIMIT)
    wall = time.perf_counter() - start
    if out is None or "failed" in out:
        raise RuntimeError(f"dlnode run {spec} failed: {out}")
    return {**out, "wall_s": wall}


# ---------------------------------------------------------------------------------------------------- report
def _median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def _contestants(iters: tuple[int, ...]) -> list[tuple[int, str, int]]:
    return [(k, method, paths) for k in iters for method in THEIR_OPT
            for paths in ((1,) if method == "gd" else PATHS)]  # fmt: skip


def measure(script: pathlib.Path, python: str, iters: tuple[int, ...], repeats: int) -> dict:
    """All contestants, alternated within each repeat; every measurement is printed as one JSON line."""
    data: dict = {"startup": [], "theirs": {}, "cold": {}, "warm": {}}
    for rep in range(repeats):
        data["startup"].append(run_theirs(script, python, "GD", 0)["wall_s"])
        print(json.dumps({"repeat": rep, "side": "theirs start-up", "wall_s": data["startup"][-1]}), flush=True)
        for k, method, paths in _contestants(iters):
            if paths == 1:
                res = run_theirs(script, python, THEIR_OPT[method], k)
                data["theirs"].setdefault((k, method), []).append(res)
                print(json.dumps({"repeat": rep, "side": "theirs", "iters": k, "method": method, **res}), flush=True)
            spec = {"method": method, "paths": paths, "iters": k}
            with tempfile.TemporaryDirectory(prefix="dlnode-cache-") as cache:
                for mode in ("cold", "warm"):
                    res = run_dlnode(spec, cache)
                    data[mode].setdefault((k, method, paths), []).append(res)
                    print(json.dumps({"repeat": rep, "side": f"dlnode {mode}", **spec, **res}), flush=True)
    return data


def report(data: dict, iters: tuple[int, ...]) -> None:
    start = statistics.median(data["startup"])
    n = len(data["startup"])
    print(f"\n## Time ({n} alternated repeats, medians; their process start-up, --iter 0: {start:.2f} s)\n")
    print(
        "| K | method | paths | theirs s | theirs path-steps/s | dlnode cold s (compile) | dlnode warm s (compile) "
        "| dlnode start-up s | dlnode run s | dlnode path-steps/s | theirs/dlnode, process (cold, warm) "
        "| theirs/dlnode, per step |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for k, method, paths in _contestants(iters):
        theirs = paths * _median(data["theirs"][(k, method)], "wall_s")  # one process per path
        their_run = paths * (_median(data["theirs"][(k, method)], "wall_s") - start)
        cold, warm = data["cold"][(k, method, paths)], data["warm"][(k, method, paths)]
        run = _median(cold + warm, "run_s")
        c, w = _median(cold, "wall_s"), _median(warm, "wall_s")
        overhead = statistics.median(r["wall_s"] - r["call_s"] for r in cold + warm)  # imports, data, report
        print(
            f"| {k} | {method} | {paths} | {theirs:.1f} | {paths * k / their_run:.3g} | "
            f"{c:.2f} ({_median(cold, 'compile_s'):.2f}) | {w:.2f} ({_median(warm, 'compile_s'):.2f}) | "
            f"{overhead:.2f} | {run:.3f} | {paths * k / run:.3g} | {theirs / c:.3g}, {theirs / w:.3g} | "
            f"{their_run / run:.3g} |"
        )
    print(f"\n## Same computation (test error ||beta - beta*||^2 at iteration K - {LOG_INTERVAL})\n")
    print("| K | method | theirs (printed) | dlnode | agreement | check |")
    print("|---:|---|---:|---|---|---|")
    import numpy as np

    from studies.haochen2021 import BAND, GD_RTOL

    for k in iters:
        theirs = data["theirs"][(k, "gd")][0]
        ours = data["warm"][(k, "gd", 1)][0]["test_error"][0]
        rel = abs(ours - theirs["test_error"]) / theirs["test_error"]
        digits = printed_digits(theirs["printed"], ours)
        print(
            f"| {k} | gd | {theirs['printed']} | {ours:.8g} | rel. diff {rel:.1e}, {digits} leading digits | "
            f"{'pass' if rel <= GD_RTOL else 'FAIL'} (<= {GD_RTOL:g}: float32 against float64) |"
        )
        theirs = data["theirs"][(k, "label_noise")][0]
        paths = np.asarray(data["warm"][(k, "label_noise", PATHS[-1])][0]["test_error"])
        low, high = (float(np.quantile(paths, q)) for q in BAND)  # as the study's xarray quantile
        one = data["warm"][(k, "label_noise", 1)][0]["test_error"][0]
        inside = low <= theirs["test_error"] <= high
        print(
            f"| {k} | label_noise | {theirs['printed']} | {PATHS[-1]} paths: 5-95 % [{low:.4g}, {high:.4g}], "
            f"median {np.median(paths):.4g}; path 0: {one:.4g} | their run inside the band | "
            f"{'pass' if inside else 'FAIL'} |"
        )


def _refuse(message: str) -> None:
    print(message, file=sys.stderr)
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--theirs", default=None, help="a checkout of their quadratic/ folder (train_quadratic.py)")
    parser.add_argument("--python", default=sys.executable, help="interpreter with torch and numpy for their script")
    parser.add_argument("--quick", action="store_true", help="K = 2000 and 200 instead of 100000 and 10000")
    parser.add_argument("--repeats", type=int, default=3, help="alternated repeats, >= 3 (medians)")
    parser.add_argument("--inner", default=None, help=argparse.SUPPRESS)  # one dlnode run, in this process
    args = parser.parse_args(argv)
    if args.inner:
        print(json.dumps(run_inner(json.loads(args.inner))), flush=True)
        return
    script = their_script(args.theirs)
    if script is None:
        _refuse(f"--theirs must be a checkout of jhaochenz96/noise-implicit-bias's quadratic/ folder (holding "
                f"{SCRIPT}); got {args.theirs!r}: pass --theirs PATH/TO/noise-implicit-bias/quadratic")  # fmt: skip
    if args.repeats < 3:
        _refuse(f"--repeats must be at least 3 (the tables are medians); got {args.repeats}: pass --repeats 3")
    probe = subprocess.run([args.python, "-c", "import torch, numpy"], capture_output=True, text=True)
    if probe.returncode != 0:
        _refuse(f"--python must have torch and numpy for their script; {args.python!r} has not: install them "
                "(pip install 'dlnode[bench]') or pass --python PATH/TO/python")  # fmt: skip
    iters = STEPS["quick" if args.quick else "full"]
    print(json.dumps({"load_average": os.getloadavg(), "iters": iters, "repeats": args.repeats,
                      "theirs": str(script), "python": args.python}), flush=True)  # fmt: skip
    data = measure(script, args.python, iters, args.repeats)
    print(json.dumps({"load_average": os.getloadavg()}), flush=True)
    report(data, iters)


if __name__ == "__main__":
    main()
