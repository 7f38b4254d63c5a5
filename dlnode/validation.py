"""Argument checks for the public entry points: one place, one-line messages (argument, rule, value, fix)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from .network import check_init
from .problems import Problem

__all__ = [
    "as_depths",
    "as_scales",
    "as_seeds",
    "check_max_steps",
    "check_positive",
    "check_saveat",
    "check_singular_depths",
]

INF_NAMES = ("inf", "infinity", "∞")


def as_depths(depth: Any) -> list[float]:
    """Depths as floats (math.inf for ∞), unique and in the order given."""
    items = list(depth) if isinstance(depth, (list, tuple, range, np.ndarray)) else [depth]
    if not items:
        raise ValueError("depth must name at least one depth; got an empty list")
    out: list[float] = []
    for d in items:
        if isinstance(d, str) and d.strip().lower() in INF_NAMES:
            value = math.inf
        elif isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 1:
            value = float(d)
        elif isinstance(d, (float, np.floating)) and (math.isinf(d) and d > 0 or (d.is_integer() and d >= 1)):
            value = float(d)
        else:
            raise ValueError(f"depth must be a positive integer or 'inf'; got {d!r}")
        if value in out:
            raise ValueError(f"depth must not repeat a value; got {items!r}")
        out.append(value)
    return out


def as_scales(scale: Any) -> list[float]:
    items = list(scale) if isinstance(scale, (list, tuple, np.ndarray)) else [scale]
    if not items:
        raise ValueError("scale must name at least one scale; got an empty list")
    out = []
    for s in items:
        if isinstance(s, bool) or not isinstance(s, (int, float, np.number)) or not (0 < s < math.inf):
            raise ValueError(f"scale must be a positive finite number (per-layer init scale); got {s!r}")
        out.append(float(s))
    if len(set(out)) != len(out):
        raise ValueError(f"scale must not repeat a value; got {items!r}")
    return out


def as_seeds(seed: Any) -> list[int]:
    items = list(seed) if isinstance(seed, Iterable) and not isinstance(seed, (str, bytes)) else [seed]
    if not items:
        raise ValueError("seed must name at least one seed; got an empty iterable")
    for s in items:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0:
            raise ValueError(f"seed must be a non-negative integer or an iterable of them; got {s!r}")
    if len(set(items)) != len(items):
        raise ValueError(f"seed must not repeat a value; got {items!r}")
    return [int(s) for s in items]


def check_positive(name: str, value: Any, fix: str = "") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not (0 < value < math.inf):
        raise ValueError(f"{name} must be a positive finite number{fix}; got {value!r}")
    return float(value)


def check_saveat(saveat: Any) -> int | np.ndarray:
    """An int ≥ 1 (that many log-spaced times plus t = 0) or a 1-D increasing array of times ≥ 0."""
    if isinstance(saveat, (int, np.integer)) and not isinstance(saveat, bool):
        if saveat < 1:
            raise ValueError(f"saveat must be a positive number of save times or an array of times; got {saveat}")
        return int(saveat)
    try:
        ts = np.asarray(saveat, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"saveat must be an int or a 1-D array of times; got {type(saveat).__name__}") from None
    if ts.ndim != 1 or ts.size == 0 or not np.all(np.isfinite(ts)) or ts[0] < 0 or np.any(np.diff(ts) <= 0):
        raise ValueError("saveat must be a 1-D array of finite, non-negative, strictly increasing times; "
                         f"got {np.array2string(ts.ravel()[:6], precision=3)}")  # fmt: skip
    return ts


def check_call(problem: Any, init: Any, flow: str, method: str, methods: Iterable[str], flows: Iterable[str]) -> None:
    if not isinstance(problem, Problem):
        raise ValueError(
            f"problem must be a dlnode problem (Regression, MatrixCompletion, MatrixSensing, Factorization); "
            f"got {type(problem).__name__}"
        )
    check_init(init)
    if flow not in flows:
        raise ValueError(f"unknown flow {flow!r}; expected one of {sorted(flows)}")
    if method not in methods:
        raise ValueError(f"unknown method {method!r}; expected one of {sorted(methods)}")


def check_flow(flow: str, depths: list[float], init: Any, method: str) -> None:
    """Combinations a flow does not allow: depth ∞ and unbalanced inits need ``end_to_end`` rules; GD is per-layer."""
    if flow != "end_to_end" and any(math.isinf(d) for d in depths):
        raise ValueError(f"depth 'inf' needs flow='end_to_end' (the infinite-depth flow); got flow={flow!r}")
    if flow == "end_to_end" and init not in ("balanced", "decoupled"):
        raise ValueError(
            f"flow='end_to_end' needs a balanced init (every D_j = 0): init='balanced' or 'decoupled'; got {init!r}"
        )
    if flow == "end_to_end" and method == "rosenbrock":
        check_singular_depths(depths)
    if flow != "layers" and method == "gd":
        raise ValueError(f"method='gd' is gradient descent on the layers: use flow='layers'; got flow={flow!r}")


def check_singular_depths(depths: Iterable[float]) -> None:
    """The singular-coordinate path (``rosenbrock`` on ``end_to_end``) integrates ln σ: depth ≥ 2 (or ∞) only."""
    depths = list(depths)
    if any(d < 2 for d in depths):
        raise ValueError(
            "method='rosenbrock' on flow='end_to_end' integrates ln σ and needs depth >= 2 (σ may cross 0 at depth 1); "
            f"got depths {[f'{d:g}' for d in depths]}; use tsit5 for depth 1"
        )


def check_max_steps(max_steps: Any) -> None:
    """A step budget is a positive integer."""
    if isinstance(max_steps, bool) or not isinstance(max_steps, (int, np.integer)) or max_steps < 1:
        raise ValueError(f"max_steps must be a positive integer; got {max_steps!r}; pass e.g. max_steps=200000")
