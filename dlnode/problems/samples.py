"""Per-sample views of the problems that keep their samples: what minibatch SGD, label noise and their SDEs need.

A problem with samples has the loss ℓ(W) = (1/2n) Σᵢ ‖rᵢ(W)‖², each residual affine in W:
rᵢ(W) = 𝒜ᵢ(W − W*) − ρᵢ, with 𝒜ᵢ the sample's linear measurement and ρᵢ = yᵢ − 𝒜ᵢ(W*) the least-squares
residual (zero when W* interpolates). The gradient of sample i is 𝒜ᵢ*(rᵢ); a minibatch B has
E_B = (1/|B|) Σ_{i∈B} 𝒜ᵢ*(rᵢ), and labels perturbed by ξᵢ give rᵢ − ξᵢ.

`SAMPLES` maps a problem kind to its `Samples`: the sample count, the residuals of a batch of indices, and the
adjoint Σ_b 𝒜_{i_b}*(r_b). Residuals are computed from W − W* (as the problems' gradients are), so that they do not
cancel near the minimum.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp

__all__ = ["SAMPLES", "Samples", "samples_of"]


@dataclasses.dataclass(frozen=True)
class Samples:
    """The per-sample functions of one problem kind (pure functions of the problem's `arrays()`).

    count(arrays) -> n; width(arrays) -> the size of one residual rᵢ; residuals(W, arrays, idx) -> (len(idx), width);
    adjoint(r, arrays, idx) -> Σ_b 𝒜_{idx_b}*(r_b), shaped like W. `idx` None means every sample, in order.
    design: the key of `arrays` that 𝒜 is linear in, with every entry of 𝒜ᵢ*(rᵢ) one residual entry times one
    design entry; so `adjoint` on the squared residuals, with that array squared, is Σ_b 𝒜_b*(r_b)⊙𝒜_b*(r_b).
    """

    count: Callable[[dict], int]
    width: Callable[[dict], int]
    residuals: Callable[[Any, dict, Any], Any]
    adjoint: Callable[[Any, dict, Any], Any]
    design: str

    def adjoint_squares(self, r: Any, arrays: dict) -> Any:
        """Σᵢ 𝒜ᵢ*(rᵢ)⊙𝒜ᵢ*(rᵢ) over every sample (entrywise squares), shaped like W: one `adjoint`, not n."""
        return self.adjoint(r * r, dict(arrays, **{self.design: arrays[self.design] ** 2}), None)


def _take(a: Any, idx: Any) -> Any:
    return a if idx is None else a[idx]


# regression on kept samples: rᵢ = (W − W*) xᵢ − ρᵢ, 𝒜ᵢ*(r) = r xᵢᵀ; inputs held as (n, d_in), offsets (n, d_out)
def _regression_residuals(w: Any, arrays: dict, idx: Any) -> Any:
    return _take(arrays["inputs"], idx) @ (w - arrays["w_star"]).T - _take(arrays["offsets"], idx)


def _regression_adjoint(r: Any, arrays: dict, idx: Any) -> Any:
    return r.T @ _take(arrays["inputs"], idx)


REGRESSION = Samples(
    count=lambda arrays: arrays["inputs"].shape[0],
    width=lambda arrays: arrays["offsets"].shape[1],
    residuals=_regression_residuals,
    adjoint=_regression_adjoint,
    design="inputs",
)


# matrix sensing with noiseless labels yᵢ = ⟨Aᵢ, M⟩: rᵢ = ⟨Aᵢ, W − M⟩, 𝒜ᵢ*(r) = r Aᵢ
def _sensing_residuals(w: Any, arrays: dict, idx: Any) -> Any:
    a = _take(arrays["sensing"], idx)
    return jnp.einsum("bij,ij->b", a, w - arrays["w_star"])[:, None]


def _sensing_adjoint(r: Any, arrays: dict, idx: Any) -> Any:
    return jnp.einsum("b,bij->ij", r[:, 0], _take(arrays["sensing"], idx))


SENSING = Samples(
    count=lambda arrays: arrays["sensing"].shape[0],
    width=lambda arrays: 1,
    residuals=_sensing_residuals,
    adjoint=_sensing_adjoint,
    design="sensing",
)

SAMPLES: dict[str, Samples] = {"sparse_regression": REGRESSION, "matrix_sensing": SENSING}


def samples_of(kind: str) -> Samples | None:
    """The per-sample functions of a problem kind, or None when its problems keep no samples."""
    return SAMPLES.get(kind)
