"""Reproduced results of the literature on deep linear networks, one module per paper.

Each module ``studies.NAME`` holds ``NAME``, ``TITLE``, ``PAPER``, two configurations ``QUICK`` and ``FULL`` and
three functions: ``compute(config) -> xarray.Dataset`` (through the public ``dlnode`` API only),
``check(ds) -> list[dict]`` (rows ``{"claim", "paper", "ours", "passed"}``: the paper's claim, its number, ours
and whether the quantitative check holds) and ``plot(ds, outdir) -> list[Path]`` (the figures, named
``NAME-*.png``). `run` ties them together; the command line is ``dlnode study NAME [--quick] [-o DIR]``.
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["STUDIES", "format_table", "load", "outputs", "run"]

STUDIES: tuple[str, ...] = ("saxe2014", "gidel2019", "arora2019", "cao2022", "cmv2023", "marion_chizat2024")


def load(name: str) -> ModuleType:
    """The module ``studies.NAME``, imported on first use (so that listing the studies costs no import of JAX)."""
    if name not in STUDIES:
        raise ValueError(f"unknown study {name!r}; expected one of {list(STUDIES)} (see `dlnode study --list`)")
    return importlib.import_module(f"{__name__}.{name}")


def outputs(name: str, outdir: Path) -> tuple[Path, list[Path]]:
    """Where `run` writes: ``outdir/data/NAME.nc``, and the figures already there (``outdir/figures/NAME-*.png``)."""
    outdir = Path(outdir)
    return outdir / "data" / f"{name}.nc", sorted((outdir / "figures").glob(f"{name}-*.png"))


def run(
    name: str, quick: bool = False, outdir: Path = Path("."), overwrite: bool = False, config: dict | None = None
) -> tuple[Any, list[dict], list[Path], float]:
    """Recompute one study: its dataset, figures and check table.

    Parameters
    ----------
    name : one of `STUDIES`.
    quick : the study's ``QUICK`` configuration (small, about a minute on two cores) instead of ``FULL``.
    outdir : the dataset goes to ``outdir/data/NAME.nc``, the figures to ``outdir/figures/NAME-*.png``.
    overwrite : replace an existing dataset and figures of this study; without it an existing one is refused before
        any work.
    config : a configuration to use instead of ``QUICK``/``FULL`` (e.g. a smaller smoke-test size).

    Returns
    -------
    (dataset, check rows, figure paths, runtime in seconds of compute, check and plot together).
    """
    import dlnode as dln

    module = load(name)
    data_path, old_figures = outputs(name, outdir)
    if not overwrite and (data_path.exists() or old_figures):
        existing = data_path if data_path.exists() else old_figures[0]
        raise ValueError(
            f"outdir already holds results of study {name!r} ({existing}); pass overwrite=True (--overwrite) to "
            "replace them, or choose another outdir (-o DIR)"
        )
    chosen = config if config is not None else (module.QUICK if quick else module.FULL)
    start = time.perf_counter()
    ds = module.compute(chosen)
    rows = module.check(ds)
    runtime = time.perf_counter() - start
    ds.attrs.update(study=name, study_title=module.TITLE, study_paper=module.PAPER, study_runtime=runtime)
    ds.attrs["study_config"] = "quick" if quick and config is None else ("full" if config is None else "custom")
    if data_path.exists():  # overwrite was asked for: the stored file is this study's earlier result
        data_path.unlink()
    for old in old_figures:
        old.unlink()
    dln.save(ds, data_path)
    figures = module.plot(ds, Path(outdir) / "figures")
    return ds, rows, figures, time.perf_counter() - start


def format_table(rows: list[dict], runtime: float | None = None) -> str:
    """The check rows as a plain-text table: claim, paper, ours, pass/fail (and the runtime below)."""
    heads = ("claim", "paper", "ours", "check")
    cells = [(r["claim"], r["paper"], r["ours"], "pass" if r["passed"] else "FAIL") for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(heads)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [line.format(*heads), line.format(*("-" * w for w in widths))]
    out += [line.format(*c) for c in cells]
    if runtime is not None:
        passed = sum(r["passed"] for r in rows)
        out.append(f"{passed}/{len(rows)} checks passed; runtime {runtime:.1f} s")
    return "\n".join(out)
