"""The tableaus of the stiff paths: the Rosenbrock methods (`RODAS4` for the layer path, `dlnode.solvers.rosenbrock`;
`SHAMPINE` for the singular-coordinate path, `dlnode.solvers.singular`) and the explicit embedded Runge–Kutta pair
for the layer path's non-stiff stretches (`DOPRI5`).

References
----------
Hairer, Wanner (1996), *Solving ODEs II*, §IV.7 (the transformed stage equations, order conditions) and the
coefficients of RODAS (their code rodas.f, METH = 1); Shampine (1982), "Implementation of Rosenbrock methods",
ACM TOMS 8(2), 93–113; Kaps, Rentrop (1979), Numer. Math. 33, 55–68;
Dormand, Prince (1980), "A family of embedded Runge–Kutta formulae", J. Comput. Appl. Math. 6(1), 19–26;
Hairer, Nørsett, Wanner (1993), *Solving ODEs I*, §II.5, Table 5.2.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["DOPRI5", "RODAS4", "SHAMPINE", "ExplicitTableau", "Tableau"]


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


class Tableau(NamedTuple):
    """A Rosenbrock method in the transformed form of Hairer & Wanner (u_i = Σ_{j≤i} γ_ij k_j):

    (I − hγJ) u_i = hγ (f(y + Σ_{j<i} a_ij u_j) + Σ_{j<i} c_ij u_j / h),  y₁ = y + Σ m_i u_i,
    local error estimate Σ e_i u_i = y₁ − ŷ₁ of order `order` + 1 in h.
    """

    gamma: float
    a: np.ndarray
    c: np.ndarray
    m: np.ndarray
    e: np.ndarray
    order: int  # of the embedded solution ŷ₁, so the error estimate scales as h^{order+1}


# Shampine (1982), parameters after Kaps & Rentrop (1979): order 4, embedded order 3, A-stable, R(∞) = 1/3;
# stage 4 reuses stage 3's field value (a_4j = a_3j), so a step costs 3 field evaluations and 4 solves.
SHAMPINE = Tableau(
    gamma=0.5,
    a=np.array([[0, 0, 0, 0], [2, 0, 0, 0], [48 / 25, 6 / 25, 0, 0], [48 / 25, 6 / 25, 0, 0]], dtype=float),
    c=np.array([[0, 0, 0, 0], [-8, 0, 0, 0], [372 / 25, 12 / 5, 0, 0], [-112 / 125, -54 / 125, -2 / 5, 0]]),
    m=np.array([19 / 9, 1 / 2, 25 / 108, 125 / 108]),
    e=np.array([17 / 54, 7 / 36, 0, 125 / 108]),
    order=3,
)


# Hairer & Wanner (1996), RODAS (their rodas.f, METH = 1): order 4, embedded order 3, L-stable and stiffly accurate
# (the solution is the last stage's argument plus u₆, the estimate is u₆); stage 6 evaluates at y + Σ a₅ⱼuⱼ + u₅,
# so a step costs 6 field evaluations (the one at y included) and 6 solves.
_A5 = [1.221224509226641, 6.019134481288629, 12.53708332932087, -0.6878860361058950]
RODAS4 = Tableau(
    gamma=0.25,
    a=np.array([
        [0, 0, 0, 0, 0, 0],
        [1.544, 0, 0, 0, 0, 0],
        [0.9466785280815826, 0.2557011698983284, 0, 0, 0, 0],
        [3.314825187068521, 2.896124015972201, 0.9986419139977817, 0, 0, 0],
        [*_A5, 0, 0],
        [*_A5, 1, 0],
    ]),
    c=np.array([
        [0, 0, 0, 0, 0, 0],
        [-5.6688, 0, 0, 0, 0, 0],
        [-2.430093356833875, -0.2063599157091915, 0, 0, 0, 0],
        [-0.1073529058151375, -9.594562251023355, -20.47028614809616, 0, 0, 0],
        [7.496443313967647, -10.24680431464352, -33.99990352819905, 11.70890893206160, 0, 0],
        [8.083246795921522, -7.981132988064893, -31.52159432874371, 16.31930543123136, -6.058818238834054, 0],
    ]),
    m=np.array([*_A5, 1, 1]),
    e=np.array([0, 0, 0, 0, 0, 1], dtype=float),
    order=3,
)  # fmt: skip
