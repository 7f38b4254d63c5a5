"""Saddle-to-saddle learning: when each mode escapes, and the stages those escapes make.

A mode escapes when its singular value σ_k(t) rises through a fixed fraction (`level`, ½ by default) of its own
final value, for the last time. Measuring each mode against its own end point makes the escape a property of the
trajectory, not of a threshold relative to σ_1: a mode that starts small and is learned crosses it once, in the
middle of its sigmoid-like rise; a mode that never learns (its final value is below `learned` × the largest final
singular value) has no escape; a mode that starts above the level (large initialisation) has none either. A stage is
a plateau of the loss ended by an escape; modes that rise together (the central halves of their rises, from ¼ to
¾ of the final value, overlap in time, as for equal singular values of the target) escape in one stage.

Times are interpolated inside the save grid's cell that holds the crossing, linearly in (ln t, ln σ) (in (t, σ) in
the first cell, from t = 0). When that cell also holds most of the rise, the grid did not resolve the escape and
the time is only as good as the cell: ``resolution`` reports the cell's width relative to the escape
time, so that a coarse grid cannot pass for an accurate one. Save a denser grid around the escapes to shrink it.

References
----------
Saxe, McClelland, Ganguli (2014), arXiv 1312.6120 (the mode dynamics); Gidel, Bach, Lacoste-Julien (2019),
arXiv 1904.13262 (escape at ≈ ln(1/ε)/s_i); Cao et al. (2022), arXiv 2212.14150 (R stages for a rank-R target).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from dlnode.analysis.variables import final_values, is_real, require_variable
from dlnode.errors import refused

__all__ = ["escape_times", "modes_learned", "stages"]

RISE = (0.25, 0.75)  # the central half of a rise, as fractions of the mode's final value


def _check(level: float, learned: float) -> None:
    if not (is_real(level) and 0 < level < 1):
        raise refused(f"level must be in (0, 1), a fraction of each mode's final value; got {level!r}; use 0.5")
    if not (is_real(learned) and 0 < learned < 1):
        raise refused(
            f"learned must be in (0, 1), a fraction of the largest final singular value; got {learned!r}; use 0.05"
        )


def _inputs(ds: xr.Dataset) -> tuple[xr.DataArray, xr.DataArray, xr.DataArray]:
    sv, loss = require_variable(ds, "singular_values"), require_variable(ds, "loss")
    if "time" not in sv.dims or "time" not in loss.dims or "k" not in sv.dims:
        raise refused(
            f"ds must have singular_values over (time, k) and loss over time; got {sv.dims} and {loss.dims}; pass "
            "the dataset of dlnode.integrate, not a selection at one time"
        )
    return ds["time"].reset_coords(drop=True), sv, loss


def _crossing(t: np.ndarray, s: np.ndarray, level: float) -> tuple[float, int]:
    """(time, cell index) of the last upward crossing of `level` by s(t); (NaN, −1) if s ends below or starts above."""
    above = s >= level
    if not above[-1] or above.all():
        return np.nan, -1
    i = int(np.flatnonzero(~above)[-1])
    if t[i] > 0 and s[i] > 0:
        x0, x1, y0, y1, y = np.log(t[i]), np.log(t[i + 1]), np.log(s[i]), np.log(s[i + 1]), np.log(level)
        return float(np.exp(x0 + (y - y0) / (y1 - y0) * (x1 - x0))), i
    return float(t[i] + (level - s[i]) / (s[i + 1] - s[i]) * (t[i + 1] - t[i])), i


def _modes_of_run(t: np.ndarray, sv: np.ndarray, level: float, learned: float) -> np.ndarray:
    """(4, k): escape time, rise start, rise end and grid resolution of each mode of one run (NaN: no escape)."""
    out = np.full((4, sv.shape[-1]), np.nan)
    ok = np.isfinite(t) & np.all(np.isfinite(sv), axis=-1)
    t, sv = t[ok], sv[ok]
    if t.size < 2 or not sv[-1, 0] > 0:
        return out
    final = sv[-1]
    for k in np.flatnonzero(final >= learned * final[0]):
        escape, cell = _crossing(t, sv[:, k], level * final[k])
        if np.isnan(escape):
            continue
        lo = _crossing(t, sv[:, k], RISE[0] * final[k])[0]
        hi = _crossing(t, sv[:, k], RISE[1] * final[k])[0]
        out[:, k] = escape, lo if np.isfinite(lo) else t[0], hi, (t[cell + 1] - t[cell]) / escape
    return out


def _per_mode(ds: xr.Dataset, level: float, learned: float) -> xr.Dataset:
    time, sv, _ = _inputs(ds)
    out = xr.apply_ufunc(
        _modes_of_run, time, sv, kwargs={"level": level, "learned": learned},
        input_core_dims=[["time"], ["time", "k"]], output_core_dims=[["part", "k"]], vectorize=True,
        dask="parallelized", output_dtypes=[float], dask_gufunc_kwargs={"output_sizes": {"part": 4}},
    )  # fmt: skip
    names = ("escape", "rise_start", "rise_end", "resolution")
    return xr.Dataset({name: out.isel(part=i, drop=True) for i, name in enumerate(names)})


def escape_times(ds: xr.Dataset, level: float = 0.5, learned: float = 0.05) -> xr.DataArray:
    """Escape time of each mode: the last time σ_k(t) rises through `level` × its final value.

    Parameters
    ----------
    ds : a dlnode Dataset (``singular_values``, ``loss``), flow or gradient descent (t = step·lr).
    level : fraction of each mode's final value that marks its escape (½: the middle of its rise).
    learned : a mode whose final σ_k is below `learned` × the final σ_1 never learned and has no escape.

    Returns
    -------
    DataArray over the run dims and ``k``: NaN for modes that never learned or started above the level. Its
    ``resolution`` coordinate is the width of the save-grid cell holding each crossing, relative to the time.

    References
    ----------
    Saxe, McClelland, Ganguli (2014), arXiv 1312.6120: for a balanced decoupled depth-2 mode u(0) = u₀ under the
    ½-loss, u(t) = s/2 at t = ln(s/u₀ − 1)/(2s).
    """
    _check(level, learned)
    modes = _per_mode(ds, level, learned)
    out = modes["escape"].assign_coords(resolution=modes["resolution"])
    return out.rename("escape_time").assign_attrs(
        long_name=f"time at which sigma_k last rises through {level:g} of its final value", units="time"
    )


def _stages_of_run(t, sv, loss, level: float, learned: float) -> np.ndarray:  # noqa: ANN001
    """(6, k): start, end, plateau loss, modes escaped so far, rise end and resolution of each stage of one run."""
    out = np.full((6, sv.shape[-1]), np.nan)
    escape, lo, hi, res = _modes_of_run(t, sv, level, learned)
    found = np.flatnonzero(np.isfinite(escape))
    ok = np.isfinite(t) & np.isfinite(loss) & np.all(np.isfinite(sv), axis=-1)  # as in _modes_of_run
    if not found.size or ok.sum() < 2:
        return out
    final = sv[np.flatnonzero(ok)[-1]]
    ahead = int(np.sum((final >= learned * final[0]) & ~np.isfinite(escape) & (sv[0] >= level * final)))
    groups: list[list[int]] = []
    for k in found[np.argsort(lo[found])]:  # rises that overlap in time are one escape
        if groups and lo[k] <= max(hi[j] for j in groups[-1]):
            groups[-1].append(k)
        else:
            groups.append([k])
    tp, lp = t[ok & (t > 0)], loss[ok & (t > 0)]
    start, after = 0.0, tp[0]  # `after`: where the previous rise ended, i.e. where this plateau begins
    count = ahead
    for m, group in enumerate(groups):
        end = min(escape[group])
        count += len(group)
        middle = np.sqrt(after * max(min(lo[group]), after))  # the plateau's middle, in ln t
        plateau = np.interp(np.log(middle), np.log(tp), lp)
        out[:, m] = start, end, plateau, count, max(hi[group]), max(res[group])
        start, after = end, max(hi[group])
    return out


def stages(ds: xr.Dataset, level: float = 0.5, learned: float = 0.05) -> xr.Dataset:
    """Saddle-to-saddle stages of each run: a plateau of the loss ended by the escape of one or more modes.

    Each mode that learns (final σ_k ≥ `learned` × final σ_1) and starts below `level` × its final value escapes
    once, at the last time σ_k rises through that level (see `escape_times`): each escape ends a stage, except that
    modes rising together (the central halves of their rises, ¼ to ¾ of the final value, overlap in time) share
    one. Stage m ends at its first escape and starts where stage m − 1 ended
    (t = 0 for the first); its ``duration`` is the difference. For small initialisation the number of stages is the
    target's rank R (Cao et al. 2022); at depth 2 stage i ends at ≈ ln(1/ε)/s_i (Gidel et al. 2019).

    Parameters
    ----------
    ds : a dlnode Dataset (``singular_values``, ``loss``).
    level : fraction of each mode's final value that marks its escape.
    learned : modes with a final σ_k below `learned` × the final σ_1 never learned and make no stage.

    Returns
    -------
    Dataset over the run dims and ``stage`` (1, 2, …; NaN-padded) with ``start``, ``end``, ``duration``,
    ``plateau_loss`` (the loss in the middle of the plateau, in ln t), ``rank`` (modes learned after the stage),
    ``rise_end`` (when the stage's last rise reached ¾ of its final value), ``resolution`` (save-grid cell width at
    the escape over the escape time), and ``num_stages``.

    References
    ----------
    Cao et al. (2022), "Understanding incremental learning of gradient descent", arXiv 2212.14150.
    Gidel, Bach, Lacoste-Julien (2019), arXiv 1904.13262.
    """
    _check(level, learned)
    time, sv, loss = _inputs(ds)
    out = xr.apply_ufunc(
        _stages_of_run, time, sv, loss, kwargs={"level": level, "learned": learned},
        input_core_dims=[["time"], ["time", "k"], ["time"]], output_core_dims=[["part", "stage"]], vectorize=True,
        dask="parallelized", output_dtypes=[float],
        dask_gufunc_kwargs={"output_sizes": {"part": 6, "stage": sv.sizes["k"]}},
    )  # fmt: skip
    names = ("start", "end", "plateau_loss", "rank", "rise_end", "resolution")
    result = xr.Dataset({name: out.isel(part=i, drop=True) for i, name in enumerate(names)})
    result = result.assign_coords(stage=np.arange(1, sv.sizes["k"] + 1))
    result["duration"] = result["end"] - result["start"]
    result["num_stages"] = result["end"].notnull().sum("stage")
    units = {"start": "time", "end": "time", "duration": "time", "rise_end": "time"}
    for name, var in result.data_vars.items():
        var.attrs.update(units=units.get(str(name), "1"), long_name=str(name).replace("_", " "))
    return result.assign_attrs(level=level, learned=learned)


def modes_learned(ds: xr.Dataset, level: float = 0.5, learned: float = 0.05) -> xr.DataArray:
    """Number of modes at or above `level` × their final value, among those that learn: the staircase of `stages`.

    Parameters
    ----------
    ds, level, learned : as in `stages`.

    Returns
    -------
    DataArray over the run dims and time (NaN where the spectrum is NaN).
    """
    _check(level, learned)
    _, sv, _ = _inputs(ds)
    final = final_values(sv)
    counted = final >= learned * final.isel(k=0)
    up = (sv >= level * final) & counted
    out = up.sum("k").astype(np.float64).where(sv.isel(k=0).notnull())
    return out.rename("modes_learned").assign_attrs(long_name=f"modes above {level:g} of their final value", units="1")
