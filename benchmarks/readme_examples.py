"""The README's two long examples, timed as a new user runs them: cold, each in a fresh interpreter with an empty
compile cache, with dlnode's defaults.

- ``tour``: ``integrate(prob, depth=[1, 2, 3], init="gaussian", scale=[1e-1, 1e-2], seed=range(4), saveat=200)`` on
  the 100 × 100 rank-5 completion with 2000 observed entries (24 runs);
- ``infinite``: ``integrate(prob, depth=[2, 4, 16, "inf"], flow="end_to_end", init="balanced", scale=1e-2,
  scale_of="product")`` on the same completion.

Each case prints one JSON line: wall seconds of the call (compilation included), the run and compile seconds dlnode
reports, the statuses, the steps per depth and the dataset's size in memory.

    python -m benchmarks.readme_examples [--cases tour,infinite] [--limit 3600]
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
import time

from benchmarks._process import last_json

CASES = ("tour", "infinite")


def _problem():
    import dlnode as dln

    return dln.MatrixCompletion.random(shape=(100, 100), rank=5, observed=2000, seed=0)


def run_case(name: str) -> dict:
    """One case in this process: the README's call, timed."""
    import numpy as np

    import dlnode as dln

    prob = _problem()
    start = time.perf_counter()
    if name == "tour":
        ds = dln.integrate(prob, depth=[1, 2, 3], init="gaussian", scale=[1e-1, 1e-2], seed=range(4), saveat=200,
                           progress=False)  # fmt: skip
    else:
        ds = dln.integrate(prob, depth=[2, 4, 16, "inf"], flow="end_to_end", init="balanced", scale=1e-2,
                           scale_of="product", progress=False)  # fmt: skip
    wall = time.perf_counter() - start
    statuses = collections.Counter(dln.Status(int(v)).meaning for v in np.ravel(ds["status"].values))
    steps = {f"{d:g}": int(ds["num_steps"].sel(depth=d).max()) for d in ds["depth"].values}
    return {"case": name, "wall_s": round(wall, 1), "run_s": round(float(ds.attrs["run_time"]), 1),
            "compile_s": round(float(ds.attrs["compile_time"]), 1), "statuses": dict(statuses),
            "max_steps_per_depth": steps, "dataset_mb": round(ds.nbytes / 2**20, 1)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated: tour, infinite")
    parser.add_argument("--limit", type=float, default=3600.0, help="seconds per case before it is given up")
    parser.add_argument("--inner", default=None, help=argparse.SUPPRESS)  # one case, in this process
    args = parser.parse_args()
    if args.inner:
        print(json.dumps(run_case(args.inner)), flush=True)
        return
    for name in args.cases.split(","):
        with tempfile.TemporaryDirectory(prefix="dlnode-cache-") as cache:
            result = last_json("benchmarks.readme_examples", ["--inner", name], cache, args.limit)
        print(json.dumps(result if result is not None else {"case": name, "timed_out_s": args.limit}), flush=True)


if __name__ == "__main__":
    main()
