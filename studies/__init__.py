"""Reproduced results of the literature on deep linear networks, one module per paper.

Each module ``studies.NAME`` holds ``NAME``, ``TITLE``, ``PAPER``, two configurations ``QUICK`` and ``FULL`` and
three functions: ``compute(config) -> xarray.Dataset`` (through the public ``dlnode`` API only),
``check(ds) -> list[dict]`` (rows ``{"claim", "paper", "ours", "passed"}``: the paper's claim, its number, ours
and whether the quantitative check holds) and ``plot(ds, outdir) -> list[Path]`` (the figures, named
``NAME-*.png``). `run` ties them together; the command line is ``dlnode study NAME [--quick] [-o DIR]``.
"""

from __future__ import annotations

import importlib
import os
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["STUDIES", "format_table", "load", "outputs", "run"]

STUDIES: tuple[str, ...] = (
    "saxe2014", "gidel2019", "arora2019", "cao2022", "cmv2023", "marion_chizat2024", "cohen2021", "haochen2021",
    "blanc2020", "woodworth2020",
)  # fmt: skip


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
    overwrite : replace this study's earlier dataset and the figures it writes again. Only files dlnode wrote
        are replaced (a dataset by its format attribute, a figure by its metadata); any other file is left alone,
        with or without `overwrite`, and a foreign file where the study writes is refused. Without `overwrite`,
        earlier results are refused. Both are checked before any work.
    config : a configuration to use instead of ``QUICK``/``FULL`` (e.g. a smaller smoke-test size).

    Returns
    -------
    (dataset, check rows, figure paths, runtime in seconds of compute, check and plot together). The dataset's
    attrs keep the parts: ``study_compute_time`` and ``study_check_time`` (seconds), ``study_runtime`` their sum.

    Raises
    ------
    KeyboardInterrupt : on Ctrl-C, wherever it lands (the `integrate` call then running stops, and no later one
        starts); nothing is written.
    """
    import dlnode as dln
    from dlnode.runtime.interrupts import sigint_flag

    module = load(name)
    data_path, figures_dir = _check_outputs(name, outdir, overwrite)
    chosen = config if config is not None else (module.QUICK if quick else module.FULL)
    start = time.perf_counter()
    with sigint_flag() as flag:  # shared by every integrate call of the study: Ctrl-C stops the study
        try:
            ds = module.compute(chosen)
            computed = time.perf_counter()
            rows = module.check(ds) if not flag["hit"] else []
        except Exception:
            if flag["hit"]:  # the study went on with an interrupted dataset: the error is the interrupt's
                raise KeyboardInterrupt from None
            raise
        if flag["hit"]:
            raise KeyboardInterrupt
    checked = time.perf_counter()
    ds.attrs.update(study=name, study_title=module.TITLE, study_paper=module.PAPER, study_runtime=checked - start,
                    study_compute_time=computed - start, study_check_time=checked - computed)  # fmt: skip
    ds.attrs["study_config"] = "quick" if quick and config is None else ("full" if config is None else "custom")
    dln.save(ds, data_path, overwrite=overwrite)
    figures = _place_figures(module, ds, figures_dir, overwrite)
    return ds, rows, figures, time.perf_counter() - start


def _check_outputs(name: str, outdir: Path, overwrite: bool) -> tuple[Path, Path]:
    """Before any work: `outdir` is a folder (or can be one), the dataset path can be written (replaced only when
    asked and only if dlnode wrote it), and no figure of an earlier run is there unless `overwrite`."""
    from dlnode.data.outputs import check_output_folder, is_dlnode_figure
    from dlnode.data.storage import check_output_path, is_dlnode_store

    outdir = check_output_folder(outdir, "outdir")
    data_path, old_figures = outputs(name, outdir)
    earlier = [p for p in [data_path, *old_figures] if p.exists() and (p == data_path or is_dlnode_figure(p))]
    if not overwrite and earlier:
        raise ValueError(
            f"outdir already holds results of study {name!r} ({earlier[0]}); pass overwrite=True (--overwrite) to "
            "replace them, or choose another outdir (-o DIR)"
        )
    if data_path.parent.is_dir():
        check_output_path(data_path, overwrite, (".nc",), "outdir", is_dlnode_store)
    else:
        check_output_folder(data_path.parent, "outdir")
    check_output_folder(outdir / "figures", "outdir")
    return data_path, outdir / "figures"


def _place_figures(module: ModuleType, ds: Any, figures_dir: Path, overwrite: bool) -> list[Path]:
    """Draw the figures in a hidden folder, then move each to `figures_dir`: a figure there is replaced only with
    `overwrite` and only if dlnode drew it; any other file is left as it is."""
    from dlnode.data.outputs import check_figure_path

    figures_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".dlnode-figures-", dir=figures_dir) as tmp:
        drawn = module.plot(ds, Path(tmp))
        placed = []
        for path in drawn:
            target = figures_dir / Path(path).name
            check_figure_path(target, overwrite, (target.suffix,), "outdir")
            os.replace(path, target)
            placed.append(target)
    return placed


def format_table(rows: list[dict], runtime: float | None = None, parts: dict[str, float] | None = None) -> str:
    """The check rows as a plain-text table: claim, paper, ours, pass/fail (and the runtime below, with its `parts`
    in seconds, e.g. ``{"compute": 70.1, "check": 3.2}``, when given)."""
    heads = ("claim", "paper", "ours", "check")
    cells = [(r["claim"], r["paper"], r["ours"], "pass" if r["passed"] else "FAIL") for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(heads)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [line.format(*heads), line.format(*("-" * w for w in widths))]
    out += [line.format(*c) for c in cells]
    if runtime is not None:
        passed = sum(r["passed"] for r in rows)
        split = f" ({', '.join(f'{k} {v:.1f} s' for k, v in parts.items())})" if parts else ""
        out.append(f"{passed}/{len(rows)} checks passed; runtime {runtime:.1f} s{split}")
    return "\n".join(out)
