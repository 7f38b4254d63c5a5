"""Helpers shared by the study modules: check rows, NaN-padded stacking, and figures through `dlnode.analysis.plot`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from dlnode.analysis import plot

__all__ = ["depth_label", "figure", "pad_stack", "row", "save_figure"]


def row(claim: str, paper: str, ours: str, passed: bool) -> dict:
    """One line of a study's check table."""
    return {"claim": claim, "paper": paper, "ours": ours, "passed": bool(passed)}


def pad_stack(arrays: list[np.ndarray], fill: float = np.nan) -> np.ndarray:
    """Stack 1-d arrays of different lengths into (len(arrays), longest), padding the short ones with `fill`."""
    size = max(len(a) for a in arrays)
    out = np.full((len(arrays), size), fill)
    for i, a in enumerate(arrays):
        out[i, : len(a)] = a
    return out


def depth_label(depth: float) -> str:
    return "depth ∞" if not np.isfinite(depth) else f"depth {depth:g}"


def figure(ncols: int = 1, nrows: int = 1, width: float = 4.4, height: float = 3.4) -> tuple[Figure, np.ndarray]:
    """`dlnode.analysis.plot.figure`: on the Agg canvas (no pyplot state), constrained layout, axes as a 2-d array."""
    return plot.figure(nrows, ncols, panel=(width, height))


def save_figure(fig: Figure, outdir: Path, name: str) -> Path:
    """Write `fig` to ``outdir/name`` (created when missing) at a resolution that keeps a PNG under 300 KB."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    path = outdir / name
    plot.finish(fig, path, dpi=110)
    return path
