"""One registry of integration methods: `METHODS` maps a name to a `Method` (see `core.Method`).

- diffrax (`tsit5`, `dopri5`, `dopri8`, `kvaerno5`): PID step-size control, vmapped over the batch.
- scipy (`scipy:RK45`, `scipy:LSODA`, `scipy:BDF`, `scipy:Radau`): the float64 reference; a jitted right-hand
  side and, for the implicit methods, the jitted Jacobian −∇²L.
- `rosenbrock`: RODAS4, a linearly implicit (L-stable) Rosenbrock method of order 4 with matrix-free CG stage
  solves on Hessian-vector products, for stiff small-init flows through every plateau (see `rosenbrock`); on
  flows of the end-to-end matrix, Shampine's order-4 Rosenbrock method in singular coordinates (U, ln σ, V) with
  dense LU (see `singular`).
- `gd`: explicit Euler with constant step lr, i.e. gradient descent exactly; step k sits at time t = k·lr.
- `sgd`, `label_noise`: the same loop with a minibatch and/or perturbed labels; `sde_euler`, `sde_heun`: diffrax's
  Euler–Maruyama and Heun methods on the SDE of that noise, in the same fixed-step loop (see `gd`, `sde`).

Adding a method is one module defining a `Method` (for a method of one `step`, a `stepping.SteppingMethod` and its
`method_entry`) and one line here; the method tests parametrise over `METHODS`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dlnode.errors import refused
from dlnode.flows.flow import Flow
from dlnode.solvers import rosenbrock, singular
from dlnode.solvers.core import Controls, Method, Solution
from dlnode.solvers.diffrax_methods import DIFFRAX
from dlnode.solvers.driver import Horizon, drive
from dlnode.solvers.gd import FIXED_STEP
from dlnode.solvers.scipy_methods import SCIPY
from dlnode.solvers.stepping import SteppingMethod, method_entry

__all__ = ["METHODS", "solve"]


def _rosenbrock_supports(flow: Flow) -> str | None:
    return singular.check(flow) if flow.end_to_end else rosenbrock._check_flow(flow)


def _rosenbrock_of(flow: Flow) -> SteppingMethod:
    return singular.SingularRosenbrock(flow.problem_cls) if flow.end_to_end else rosenbrock.LayerRosenbrock(flow)


def _rosenbrock_initial(flow: Flow, y0: Any, arrays: dict, c: dict) -> tuple[Any, dict]:
    return singular.initial(flow, y0, arrays, c) if flow.end_to_end else (y0, c)


ROSENBROCK = method_entry(
    _rosenbrock_of, initial=_rosenbrock_initial,
    name="rosenbrock", family="rosenbrock", stiff=True, max_steps=200_000, window_steps=256,
    supports=_rosenbrock_supports, summary=singular.summary,
)  # fmt: skip

METHODS: dict[str, Method] = {**DIFFRAX, "rosenbrock": ROSENBROCK, **SCIPY, **FIXED_STEP}


def solve(
    method: str,
    flow: Flow,
    arrays: dict,
    y0: Any,
    ts: np.ndarray,
    controls: Controls,
    *,
    until_converged: bool = False,
    horizon: Horizon | None = None,
    on_window: Any = None,
    checkpoint: Any = None,
    floor: Any = None,
) -> Solution:
    """Integrate a batch of initial states `y0` (a pytree whose leaves have the batch as leading axis: the layer
    tuple, or the end-to-end matrix) under `flow` and observe at `ts` (ts[0] = 0), window by window.
    `checkpoint` (the `Solution.checkpoint` of an interrupted run) continues that run instead, and `floor` gives
    cells a lowest reachable loss above ℓ* (see `drive`).

    Raises
    ------
    ValueError : for an unknown method or a flow the method does not support.
    """
    if method not in METHODS:
        raise refused(f"unknown method {method!r}; expected one of {sorted(METHODS)}")
    entry = METHODS[method]
    reason = entry.supports(flow)
    if reason:
        raise refused(reason)
    return drive(entry, flow, arrays, y0, ts, controls, until_converged=until_converged, horizon=horizon,
                 on_window=on_window, checkpoint=checkpoint, floor=floor)  # fmt: skip
