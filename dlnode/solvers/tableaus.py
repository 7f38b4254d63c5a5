"""Explicit embedded Runge–Kutta pairs for the non-stiff stretches of the stiff path (`dlnode.solvers.rosenbrock`).

References
----------
Dormand, Prince (1980), "A family of embedded Runge–Kutta formulae", J. Comput. Appl. Math. 6(1), 19–26;
Hairer, Nørsett, Wanner (1993), *Solving ODEs I*, §II.5, Table 5.2.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["DOPRI5", "ExplicitTableau"]


class ExplicitTableau(NamedTuple):
    """An explicit embedded Runge–Kutta pair: stages k_i = f(y + h Σ_{j<i} a_ij k_j), y₁ = y + h Σ b_i k_i,
    error estimate h Σ e_i k_i of order `order` + 1 in h."""

    a: np.ndarray
    b: np.ndarray
    e: np.ndarray
    order: int  # of the embedded solution


# Dormand & Prince (1980) 5(4); the last stage is f(y₁), used only by the error estimate (no FSAL carried).
DOPRI5 = ExplicitTableau(
    a=np.array([
        [0, 0, 0, 0, 0, 0, 0], [1 / 5, 0, 0, 0, 0, 0, 0], [3 / 40, 9 / 40, 0, 0, 0, 0, 0],
        [44 / 45, -56 / 15, 32 / 9, 0, 0, 0, 0], [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729, 0, 0, 0],
        [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656, 0, 0],
        [35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0],
    ]),
    b=np.array([35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0]),
    e=np.array([71 / 57600, 0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40]),
    order=4,
)  # fmt: skip
