"""Argument checks for the public entry points: one place, one-line messages (argument, rule, value, fix).

Every rule runs before any work (no compile, no integration): a call that will fail fails at once. This module
depends on nothing else in dlnode but `errors`, so problems, networks and integration can all use it; the
rules that span several arguments of a call are in `dlnode.run.rules`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from dlnode.errors import fail, shown

__all__ = [
    "MAX_SEED",
    "as_array",
    "as_depths",
    "as_scales",
    "as_seeds",
    "call_init",
    "check_bool",
    "check_max_steps",
    "check_optional_int",
    "check_positive",
    "check_positive_int",
    "check_saveat",
    "check_seed",
    "check_tolerances",
    "check_width",
]

INF_NAMES = ("inf", "infinity", "∞")
MAX_SEED = 2**63 - 1  # seeds are stored as int64 coordinates


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _kind(value: Any) -> str:
    return f"{type(value).__name__} {value!r}" if isinstance(value, (str, bytes, bool, np.bool_)) else repr(value)


# --- numbers ----------------------------------------------------------------------------------------------------


EXAMPLES = {"rtol": "1e-6", "atol": "1e-9", "loss_tol": "1e-8", "t1": "10.0", "lr": "0.01", "scale": "0.1"}


def check_positive(name: str, value: Any, fix: str = "") -> float:
    """A positive finite real number (not a bool, not a string)."""
    if not _is_real(value) or not (0 < value < math.inf):
        fail(
            name,
            f"must be a positive finite number{fix}",
            shown(_kind(value)),
            f"pass e.g. {name}={EXAMPLES.get(name, '1.0')}",
        )
    return float(value)


def check_positive_int(name: str, value: Any, fix: str = "") -> int:
    if not _is_int(value) or value < 1:
        fail(name, "must be a positive integer", shown(_kind(value)), fix or f"pass e.g. {name}=2")
    return int(value)


def check_optional_int(name: str, value: Any, low: int, high: int, fix: str = "") -> int | None:
    """None, or an integer in [low, high] (bools refused: True is not 1 here)."""
    if value is None:
        return None
    if not _is_int(value) or not low <= value <= high:
        fail(name, f"must be None or an integer in [{low}, {high}]", shown(_kind(value)), fix or f"pass {name}=None")
    return int(value)


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        fail(name, "must be True or False", shown(_kind(value)), f"pass {name}=True or {name}=False")
    return bool(value)


def check_seed(seed: Any, name: str = "seed") -> int:
    """A seed is an integer in [0, 2**63 − 1] (stored as an int64 coordinate)."""
    if not _is_int(seed) or not 0 <= seed <= MAX_SEED:
        fail(name, "must be a non-negative integer below 2**63", shown(_kind(seed)), f"pass e.g. {name}=0")
    return int(seed)


def check_tolerances(rtol: Any, atol: Any) -> tuple[float | None, float | None]:
    """0 < rtol, atol < 1 (or None: the caller's default): an error estimate is accepted when below
    atol + rtol·|y|, so a tolerance of 1 or more accepts errors as large as the state and controls no step."""
    for name, value, example in (("rtol", rtol, "1e-6"), ("atol", atol, "1e-9")):
        if value is None:
            continue
        check_positive(name, value)
        if value >= 1:
            fail(
                name,
                "must be < 1 (a tolerance of 1 or more accepts errors as large as the state: the step size "
                "would not be controlled)",
                value,
                f"pass e.g. {name}={example}",
            )
    return (None if rtol is None else float(rtol)), (None if atol is None else float(atol))


def check_width(width: Any) -> int | None:
    """Hidden width: None (= max(d_in, d_out)) or a positive integer, whatever the flow."""
    if width is not None and (not _is_int(width) or width < 1):
        fail(
            "width",
            "must be a positive integer or None (= max(d_in, d_out))",
            shown(_kind(width)),
            "pass width=None or e.g. width=8",
        )
    return None if width is None else int(width)


def check_max_steps(max_steps: Any) -> None:
    """A step budget is a positive integer."""
    check_positive_int("max_steps", max_steps, "pass e.g. max_steps=200000")


# --- arrays -----------------------------------------------------------------------------------------------------


def as_array(name: str, value: Any, ndim: int | None = 2, allow_bool: bool = False) -> np.ndarray:
    """A finite, non-empty float64 array of `ndim` dimensions, refusing what a cast would silently change:
    complex values (the imaginary part would be dropped), strings, bools (unless `allow_bool`), ragged lists."""
    try:
        raw = np.asarray(value)
    except (ValueError, TypeError) as exc:  # ragged nested lists
        fail(
            name,
            "must be a rectangular array of real numbers",
            shown(type(value).__name__),
            f"pass a NumPy array ({str(exc).split('.')[0]})",
        )
    if np.iscomplexobj(raw):
        fail(
            name,
            "must be real (complex values would lose their imaginary part)",
            shown(f"dtype {raw.dtype}"),
            f"pass {name}.real or abs({name}) explicitly",
        )
    if raw.dtype.kind == "b" and not allow_bool:
        fail(name, "must hold numbers, not booleans", shown("a bool array"), f"pass {name}.astype(float)")
    if raw.dtype.kind not in "biuf":
        fail(name, "must hold real numbers", shown(f"dtype {raw.dtype} ({type(value).__name__})"), "pass a float array")
    arr = raw.astype(np.float64)
    if ndim is not None and arr.ndim != ndim:
        fail(name, f"must be a {ndim}-dimensional array", shown(f"shape {arr.shape}"), "reshape it")
    if arr.size == 0:
        fail(name, "must not be empty", shown(f"shape {arr.shape}"), "pass at least one entry")
    bad = int(np.sum(~np.isfinite(arr)))
    if bad:
        fail(name, "must be finite", shown(f"{bad} NaN/inf entr{'y' if bad == 1 else 'ies'}"), "remove or replace them")
    return arr


# --- the grid ---------------------------------------------------------------------------------------------------


def _items(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple, range, np.ndarray)) else [value]


def as_depths(depth: Any) -> list[float]:
    """Depths as floats (math.inf for ∞), unique and in the order given."""
    items = _items(depth)
    if not items:
        fail("depth", "must name at least one depth", shown("an empty list"), "pass e.g. depth=[1, 2, 3]")
    out: list[float] = []
    for d in items:
        if isinstance(d, str) and d.strip().lower() in INF_NAMES:
            value = math.inf
        elif _is_int(d) and d >= 1:
            value = float(d)
        elif isinstance(d, (float, np.floating)) and (math.isinf(d) and d > 0 or (d.is_integer() and d >= 1)):
            value = float(d)
        else:
            fail("depth", "must be a positive integer or 'inf'", shown(_kind(d)), "pass e.g. depth=[1, 2, 3]")
        if value in out:
            fail("depth", "must not repeat a value", items, "list each depth once")
        out.append(value)
    return out


def as_scales(scale: Any) -> list[float]:
    items = _items(scale)
    if not items:
        fail("scale", "must name at least one scale", shown("an empty list"), "pass e.g. scale=[0.1, 0.01]")
    out = [check_positive("scale", s, " (per-layer init scale)") for s in items]
    if len(set(out)) != len(out):
        fail("scale", "must not repeat a value", items, "list each scale once")
    return out


def as_seeds(seed: Any) -> list[int]:
    items = list(seed) if isinstance(seed, Iterable) and not isinstance(seed, (str, bytes)) else [seed]
    if not items:
        fail("seed", "must name at least one seed", shown("an empty iterable"), "pass e.g. seed=range(4)")
    for s in items:
        if not _is_int(s) or not 0 <= s <= MAX_SEED:
            fail(
                "seed",
                "must be a non-negative integer below 2**63 or an iterable of them",
                shown(_kind(s)),
                "pass e.g. seed=0 or seed=range(4)",
            )
    if len(set(items)) != len(items):
        fail("seed", "must not repeat a value", items, "list each seed once")
    return [int(s) for s in items]


def check_saveat(saveat: Any) -> int | np.ndarray:
    """An int ≥ 1 (that many log-spaced times plus t = 0) or a 1-D increasing array of times ≥ 0."""
    if _is_int(saveat):
        if saveat < 1:
            fail(
                "saveat", "must be a positive number of save times or an array of times", saveat, "pass e.g. saveat=200"
            )
        return int(saveat)
    if isinstance(saveat, (bool, np.bool_, str, bytes)) or saveat is None:
        fail("saveat", "must be an int or a 1-D array of times", shown(_kind(saveat)), "pass e.g. saveat=200")
    if isinstance(saveat, (float, np.floating)):  # a count typed as a float, or a single time
        value = float(saveat)
        fix = (f"pass saveat={max(1, round(value))} for a count, or saveat=[0, {value:g}] for times"
               if math.isfinite(value) and value > 0 else "pass e.g. saveat=200")  # fmt: skip
        fail("saveat", "must be a whole number of save times (an int) or a 1-D array of times", value, fix)
    ts = as_array("saveat", saveat, ndim=1)
    if ts[0] < 0 or np.any(np.diff(ts) <= 0):
        fail(
            "saveat",
            "must be a 1-D array of finite, non-negative, strictly increasing times",
            shown(np.array2string(ts.ravel()[:6], precision=3)),
            "sort the times and drop repeats",
        )
    return ts


# --- combinations -----------------------------------------------------------------------------------------------


# --- init callables ---------------------------------------------------------------------------------------------


def call_init(init: Callable, shapes: Sequence[tuple[int, int]], scale: float, rng: np.random.Generator) -> list:
    """Call a user's ``init(shapes, scale, rng) -> layers`` and check what it returns: one finite float array of
    each shape in `shapes` (real, not None, nothing else)."""
    name = getattr(init, "__name__", type(init).__name__)
    fix = "write it as init(shapes, scale, rng) -> [W_1, ..., W_N] with W_j of shape shapes[j]"
    try:
        out = init(list(shapes), scale, rng)
    except TypeError as exc:
        if "argument" not in str(exc):  # a TypeError from inside the user's code is theirs to see
            raise
        fail("init", "callable must take (shapes, scale, rng)", shown(f"{name}: {exc}"), fix)
    if out is None or isinstance(out, (str, bytes, np.ndarray)) or not isinstance(out, Sequence):
        fail("init", "callable must return a list of layer arrays", shown(f"{name} returned {type(out).__name__}"), fix)
    layers = [as_array(f"init layer {j + 1}", w) for j, w in enumerate(out)]
    got = [w.shape for w in layers]
    if got != [tuple(s) for s in shapes]:
        fail(
            "init",
            f"callable must return layers of shapes {[tuple(s) for s in shapes]}",
            shown(f"{name} returned {got}"),
            fix,
        )
    return layers


# --- memory -----------------------------------------------------------------------------------------------------
