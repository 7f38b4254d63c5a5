"""`SaveAt`: what a call saves, and when — one small frozen object instead of an int-or-array plus a flag."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from dlnode.checks import check_bool, check_saveat
from dlnode.errors import fail, shown

__all__ = ["SaveAt"]


@dataclasses.dataclass(frozen=True)
class SaveAt:
    """The save times of a call, and whether the per-layer weights are kept at each.

    Parameters
    ----------
    count : that many log-spaced times after t = 0, ending at t1 (with ``t1=None``: their density, `count` per
        `dlnode.run.plan.GRID_DECADES` decades, over the planned horizon). Default 200.
    times : an explicit increasing array of times (t = 0 is added when missing). Give `count` or `times`.
    weights : keep the per-layer weights at every saved time (the final weights are always kept).

    ``dlnode.integrate(prob, saveat=SaveAt(times=[1, 10, 100], weights=True))`` is
    ``dlnode.integrate(prob, saveat=[1, 10, 100], save_weights=True)``.
    """

    count: int | None = None
    times: tuple[float, ...] | None = None
    weights: bool = False

    def __post_init__(self) -> None:
        if self.count is not None and self.times is not None:
            fail("SaveAt", "takes count or times, not both", shown(f"count={self.count!r}, times=..."),
                 "drop one of them")  # fmt: skip
        if self.times is not None:
            ts = check_saveat(self.times)
            if isinstance(ts, int):
                fail("times", "must be an array of times", ts, "pass count=... for a number of log-spaced times")
            object.__setattr__(self, "times", tuple(float(t) for t in ts))
        elif self.count is not None:
            object.__setattr__(self, "count", check_saveat(self.count))
        else:
            object.__setattr__(self, "count", 200)
        if isinstance(self.count, np.ndarray):
            fail("count", "must be a number of save times", shown("an array"), "pass times=... for explicit times")
        object.__setattr__(self, "weights", check_bool("weights", self.weights))

    @property
    def saveat(self) -> int | np.ndarray:
        """The `saveat` argument of `dlnode.integrate` this stands for: `count`, or the array of `times`."""
        return self.count if self.times is None else np.asarray(self.times, dtype=np.float64)

    @classmethod
    def of(cls, saveat: SaveAt | int | Sequence[float], save_weights: bool = False) -> SaveAt:
        """The SaveAt of `integrate`'s ``saveat`` and ``save_weights`` (either form; not both a SaveAt and a flag)."""
        if isinstance(saveat, SaveAt):
            if save_weights is not False:
                fail("save_weights", "is part of saveat=SaveAt(..., weights=...) when saveat is a SaveAt",
                     save_weights, "pass SaveAt(..., weights=True) and drop save_weights")  # fmt: skip
            return saveat
        save_weights = check_bool("save_weights", save_weights)
        ts = check_saveat(saveat)
        if isinstance(ts, int):
            return cls(count=ts, weights=save_weights)
        return cls(times=ts, weights=save_weights)
