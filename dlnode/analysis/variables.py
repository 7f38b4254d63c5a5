"""The dataset variables every analysis reads: a required variable, its final values, what counts as a number."""

from __future__ import annotations

import numbers

import numpy as np
import xarray as xr

from dlnode.errors import refused

__all__ = ["final_values", "is_real", "require_variable"]


def require_variable(ds: xr.Dataset, name: str) -> xr.DataArray:
    """`ds[name]`, or a one-line ValueError naming what the dataset holds instead."""
    if not isinstance(ds, xr.Dataset) or name not in ds:
        got = list(ds.data_vars) if isinstance(ds, xr.Dataset) else type(ds).__name__
        raise refused(
            f"ds must be a dlnode Dataset with variable {name!r}; got {got}; pass the dataset of dlnode.integrate"
        )
    return ds[name]


def final_values(da: xr.DataArray) -> xr.DataArray:
    """Each element's value at its run's last non-NaN time: the end of the run, or where a failed run stopped.

    Parameters
    ----------
    da : a DataArray with dim ``time``.

    Returns
    -------
    `da` without ``time`` (NaN where every time is NaN).
    """
    if not isinstance(da, xr.DataArray) or "time" not in da.dims:
        raise refused(f"da must be a DataArray with dim 'time'; got {type(da).__name__}; pass e.g. ds['loss']")
    along_time = [name for name, c in da.coords.items() if "time" in c.dims]
    da = da.drop_vars(along_time)
    index = xr.DataArray(np.arange(da.sizes["time"]), dims="time")
    last = (da.notnull() * index).argmax("time")
    # the one value at `last` (NaN where every time is NaN), by masked sums: lazy on sweep stores, exact
    return da.where(index == last).sum("time", min_count=1, keep_attrs=True)


def is_real(x: object) -> bool:
    """A real number (Python or NumPy, e.g. np.float32), not a bool."""
    return isinstance(x, numbers.Real) and not isinstance(x, (bool, np.bool_))
