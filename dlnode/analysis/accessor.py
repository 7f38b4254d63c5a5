"""The ``ds.dln`` namespace: one-line delegations to `dlnode.analysis.spectra`, `dlnode.analysis.curvature` and
`dlnode.analysis.plot`.

Importing this module registers the accessor (``import dlnode`` does it). Each method is the function of the same
name applied to the dataset; see that function for the mathematics.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import xarray as xr

from dlnode.analysis import spectra as analysis
from dlnode.analysis.curvature import layer_alignment, sharpness_of
from dlnode.analysis.discrete import compare
from dlnode.data.schema import problem_from
from dlnode.problems.kinds import Problem

if TYPE_CHECKING:  # matplotlib loads with the first figure, not with every `import dlnode`
    from matplotlib.figure import Figure

__all__ = ["DlnAccessor"]


class _PlotNamespace:
    """``ds.dln.plot.<kind>(...)``: the figures of `dlnode.analysis.plot` for this dataset."""

    def __init__(self, ds: xr.Dataset) -> None:
        self._ds, self._plot = ds, _plots()

    def loss(self, **kwargs: Any) -> Figure:
        return self._plot.loss(self._ds, **kwargs)

    def singular_values(self, **kwargs: Any) -> Figure:
        return self._plot.singular_values(self._ds, **kwargs)

    def rank_staircase(self, **kwargs: Any) -> Figure:
        return self._plot.rank_staircase(self._ds, **kwargs)

    def sharpness(self, problem: Problem | None = None, **kwargs: Any) -> Figure:
        return self._plot.sharpness(self._ds, problem, **kwargs)

    def effective_rank(self, **kwargs: Any) -> Figure:
        return self._plot.effective_rank(self._ds, **kwargs)

    def gd_error(self, **kwargs: Any) -> Figure:
        return self._plot.gd_error(self._ds, **kwargs)


@xr.register_dataset_accessor("dln")
class DlnAccessor:
    """Analysis of a dlnode dataset: ``ds.dln.effective_rank()``, ``ds.dln.stages()``, ``ds.dln.plot.loss()``…"""

    def __init__(self, ds: xr.Dataset) -> None:
        self._ds = ds

    @property
    def plot(self) -> _PlotNamespace:
        return _PlotNamespace(self._ds)

    def effective_rank(self) -> xr.DataArray:
        return analysis.effective_rank(self._ds)

    def numerical_rank(self, threshold: float = 1e-3, relative_to: str = "current") -> xr.DataArray:
        return analysis.numerical_rank(self._ds, threshold, relative_to)

    def schatten_norm(self, p: float) -> xr.DataArray:
        return analysis.schatten_norm(self._ds, p)

    def recovery_error(self, target: Any = None) -> xr.DataArray:
        return analysis.recovery_error(self._ds, problem_from(self._ds) if target is None else target)

    def unobserved_loss(self, problem: Any = None) -> xr.DataArray:
        return analysis.unobserved_loss(self._ds, problem or problem_from(self._ds))

    def gidel_time(self, eps: float | None = None) -> xr.DataArray:
        return analysis.gidel_time(self._ds, eps)

    def stages(self, level: float = 0.5, learned: float = 0.05) -> xr.Dataset:
        return analysis.stages(self._ds, level, learned)

    def escape_times(self, level: float = 0.5, learned: float = 0.05) -> xr.DataArray:
        return analysis.escape_times(self._ds, level, learned)

    def compare(self, other: xr.Dataset, time_rtol: float = 1e-9, accuracy: float = 0.1) -> xr.Dataset:
        return compare(self._ds, other, time_rtol, accuracy)

    def final(self, name: str) -> xr.DataArray:
        return analysis.final_values(self._ds[name])

    def sharpness(self, problem: Problem | None = None, exact: bool = False) -> xr.DataArray:
        return sharpness_of(self._ds, problem or problem_from(self._ds), exact)

    def log_volume(self) -> xr.DataArray:
        return analysis.log_volume(self._ds)

    def layer_alignment(self) -> xr.DataArray:
        return layer_alignment(self._ds)


def _documented(cls: type, sources: dict[str, Any], prefix: str) -> None:
    """Give each method of `cls` the docstring of the function it applies to the dataset (xarray's accessors do the
    same with functools.wraps), so ``help(ds.dln.stages)`` shows the mathematics."""
    for name, function in sources.items():
        method = getattr(cls, name)
        head = f"``{prefix}.{name}(...)``: `{function.__module__}.{function.__name__}` applied to this dataset."
        method.__doc__ = head + ("\n\n" + function.__doc__ if function.__doc__ else "")


_documented(DlnAccessor, {
    "effective_rank": analysis.effective_rank, "numerical_rank": analysis.numerical_rank,
    "schatten_norm": analysis.schatten_norm, "recovery_error": analysis.recovery_error,
    "unobserved_loss": analysis.unobserved_loss, "gidel_time": analysis.gidel_time, "stages": analysis.stages,
    "escape_times": analysis.escape_times, "compare": compare, "final": analysis.final_values,
    "sharpness": sharpness_of, "log_volume": analysis.log_volume, "layer_alignment": layer_alignment,
}, "ds.dln")  # fmt: skip


@functools.cache
def _plots() -> Any:
    """`dlnode.analysis.plot`, imported (with matplotlib) and its docstrings given to ``ds.dln.plot`` on first use."""
    from dlnode.analysis import plot

    _documented(_PlotNamespace, {
        "loss": plot.loss, "singular_values": plot.singular_values, "rank_staircase": plot.rank_staircase,
        "sharpness": plot.sharpness, "effective_rank": plot.effective_rank, "gd_error": plot.gd_error,
    }, "ds.dln.plot")  # fmt: skip
    return plot
