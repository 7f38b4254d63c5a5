"""dlnode's performance comparison: ``python -m benchmarks.run [--quick]``.

Writes ``bench.md`` (machine, the GD-loop equality check, one work-precision table per case, the end-to-end cost
per step against depth) and ``bench.png`` (work-precision panels and the depth panel) to ``benchmarks/results/``.
``--quick`` runs a small case in a few minutes; the full run takes the Arora et al. completion and the two
depth-4 small-init cases (hours of budgeted peers). Every contestant runs on one thread.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

import dlnode as dln

from .e2e_depth_cost import DepthCost, measure
from .e2e_depth_cost import table as depth_table
from .peers import check_gd_equality
from .work_precision import CASES, DLNODE_METHODS, TARGET, Row, run_case, table

__all__ = ["main", "run"]

RESULTS = Path(__file__).resolve().parent / "results"
QUICK_CASES = ("quick",)
FULL_CASES = ("arora", "deep10", "deep50")


def machine_info() -> str:
    """CPU, threads and library versions, for the head of the report."""
    import diffrax
    import jax
    import scipy

    try:
        import torch

        torch_version = torch.__version__
    except ImportError:
        torch_version = "not installed"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return "\n".join([
        f"- machine: {cpu}, {os.cpu_count()} CPUs; {platform.system()} {platform.release()}; "
        f"Python {platform.python_version()}",
        "- threads: OPENBLAS/OMP/MKL = 1, XLA single-threaded Eigen, torch.set_num_threads(1)",
        f"- dlnode {dln.__version__}, jax {jax.__version__} (x64 {jax.config.jax_enable_x64}), "
        f"diffrax {diffrax.__version__}, numpy {np.__version__}, scipy {scipy.__version__}, torch {torch_version}",
        f"- date: {datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')}",
    ])  # fmt: skip


def _equality_section() -> str:
    diffs = check_gd_equality()
    return (
        '### Gradient-descent loops against `dlnode.integrate(method="gd")`\n\n'
        f"Depth 3, 8x8 completion, 1000 steps at lr 2^-6, |W| up to {diffs['scale']:.3g}: max |W_jax − W_dlnode| = "
        f"{diffs['jax']:.2g}, max |W_torch − W_dlnode| = {diffs['torch']:.2g} (round-off: the same iteration)."
    )


def _depth_problem(quick: bool) -> tuple[dln.Problem, tuple, float]:
    if quick:
        return dln.MatrixCompletion.random((20, 20), 2, 160, seed=0), (2, 8, "inf"), 50.0
    return dln.MatrixCompletion.random((50, 50), 3, 1000, seed=0), (2, 8, 64, "inf"), 20.0


def run(
    quick: bool,
    out_dir: Path = RESULTS,
    cases: Sequence[str] | None = None,
    methods: Sequence[str] = DLNODE_METHODS,
    depth_cost: bool = True,
) -> Path:
    """Run the benchmark and write ``bench.md`` and ``bench.png`` into `out_dir`; returns the Markdown's path.

    `cases` defaults to the quick case or to the full ones; `methods` are the dlnode methods compared. The report
    is rewritten after every case, so a long run leaves what it has measured.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    names = tuple(cases or (QUICK_CASES if quick else FULL_CASES))
    unknown = sorted(set(names) - set(CASES))
    if unknown:
        raise ValueError(f"unknown case(s) {unknown}; expected some of {sorted(CASES)}")
    head = ["# dlnode benchmark" + (" (quick)" if quick else ""), "", machine_info(), "", _equality_section()]
    sections, panels, costs = [], [], []
    if depth_cost:  # first: minutes, where the budgeted cases take hours
        problem, depths, tau1 = _depth_problem(quick)
        costs = measure(problem, depths, tau1=tau1)
        sections.append(depth_table(problem, costs))
        _write(out_dir, head, sections, panels, costs, start)
    for name in names:
        case = CASES[name]
        ref, rows = run_case(case, out_dir, methods)
        sections.append(table(case, ref, rows))
        panels.append((case.name, rows))
        _write(out_dir, head, sections, panels, costs, start)
    return _write(out_dir, head, sections, panels, costs, start)


def _write(out_dir: Path, head: list, sections: list, panels: list, costs: list, start: float) -> Path:
    """bench.md, bench.png, and bench.json (the rows and costs behind them, for re-plotting)."""
    import matplotlib.pyplot as plt

    fig = figure(panels, costs)
    fig.savefig(out_dir / "bench.png", dpi=120)
    plt.close(fig)
    data = {"cases": {name: [dataclasses.asdict(r) for r in rows] for name, rows in panels},
            "depth_cost": [dataclasses.asdict(c) for c in costs]}  # fmt: skip
    (out_dir / "bench.json").write_text(json.dumps(data, indent=1, default=float))
    footer = f"Total benchmark time {time.perf_counter() - start:.0f} s (compilation included). Figure: bench.png."
    text = "\n\n".join(["\n".join(head), *sections, footer]) + "\n"
    path = out_dir / "bench.md"
    path.write_text(text)
    return path


def _plot_case(ax, title: str, rows: list[Row]) -> None:  # noqa: ANN001
    """Wall time against max relative error, one colour per method and one marker per tolerance; hollow:
    extrapolated; cross: did not finish; dashed: the measured GD points behind the extrapolation."""
    bases = list(dict.fromkeys(r.name.split(" rtol=")[0] for r in rows))
    tols = list(dict.fromkeys(r.name.split(" rtol=")[1] for r in rows if " rtol=" in r.name))
    for r in rows:
        if not (np.isfinite(r.wall) and np.isfinite(r.error)):
            continue
        base, _, tol = r.name.partition(" rtol=")
        color = f"C{bases.index(base) % 10}"
        marker = "x" if not r.finished else "os^v"[tols.index(tol) % 4] if tol else "D"
        face = "none" if r.extrapolated and marker != "x" else color
        edge = None if marker == "x" else color
        ax.scatter([r.error], [r.wall], marker=marker, facecolors=face, edgecolors=edge, s=30)
        ax.annotate(r.name, (r.error, r.wall), fontsize=5, xytext=(3, 2), textcoords="offset points", color=color)
        if r.curve:
            walls, errs = zip(*r.curve, strict=True)
            ax.plot(errs, walls, "--", color=color, lw=0.8)
    ax.axvline(TARGET, color="0.6", lw=0.8, ls=":")
    ax.set(xscale="log", yscale="log", xlabel="max rel. error of W over saved times", ylabel="wall s", title=title)


def _plot_depths(ax, costs: list[DepthCost]) -> None:  # noqa: ANN001
    """Microseconds per step against depth; depth ∞ is drawn at 4× the largest finite depth."""
    from matplotlib.ticker import NullFormatter

    finite = [c.depth for c in costs if math.isfinite(c.depth)]
    at_inf = 4 * max(finite) if finite else 1.0
    for flow, style in (("end_to_end", "o-"), ("layers", "s-")):
        pts = [(c.depth if math.isfinite(c.depth) else at_inf, c.per_step_us) for c in costs if c.flow == flow]
        if pts:
            ax.plot(*zip(*pts, strict=True), style, label=flow)
    ax.set(xscale="log", yscale="log", xlabel="depth N", ylabel="us per step", title="cost per step vs depth")
    ticks = sorted({c.depth if math.isfinite(c.depth) else at_inf for c in costs})
    ax.set_xticks(ticks, [f"{t:g}" if t != at_inf else "inf" for t in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.legend(fontsize=7)


def figure(panels: list[tuple[str, list[Row]]], costs: list[DepthCost]):  # noqa: ANN201
    """One work-precision panel per case, and the depth panel when measured."""
    import matplotlib.pyplot as plt

    n = max(1, len(panels) + bool(costs))
    fig, axes = plt.subplots(1, n, figsize=(6 * n, 4.5), squeeze=False)
    for ax, (title, rows) in zip(axes[0], panels, strict=False):
        _plot_case(ax, title, rows)
    if costs:
        _plot_depths(axes[0][len(panels)], costs)
    fig.tight_layout()
    return fig


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m benchmarks.run [--quick] [--cases a,b] [--out DIR] [--no-depth]``."""
    parser = argparse.ArgumentParser(description="dlnode against its peers: work-precision and depth cost")
    parser.add_argument("--quick", action="store_true", help="the small case only (a few minutes)")
    parser.add_argument("--cases", default=None, help=f"comma-separated, from {sorted(CASES)}")
    parser.add_argument("--out", type=Path, default=RESULTS, help="output folder (default benchmarks/results)")
    parser.add_argument("--no-depth", action="store_true", help="skip the end-to-end cost-per-step measurement")
    opts = parser.parse_args(argv)
    cases = opts.cases.split(",") if opts.cases else None
    path = run(opts.quick, opts.out, cases, depth_cost=not opts.no_depth)
    print(path.read_text())


if __name__ == "__main__":
    main()
