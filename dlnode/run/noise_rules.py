"""The rules of a call with noise or a diagonal network: validated once, before any work, into a `NoisePlan`.

The stochastic methods (``sgd``, ``label_noise``) and the SDE methods (``sde_euler``, ``sde_heun``) take `lr` (the
step η they run, or the SDE models), `t1`, `batch`, `noise` (label noise δ), `sampling` and `paths` (noise seeds: an
int P means paths 0 … P−1, or an iterable of seeds); the SDE methods also `dt`, their own step (default lr; lr·2^m,
|m| ≤ 10).
``network="diagonal"`` runs β = u^D − v^D (D the depth) under the flows, GD, SGD, label noise and the SDEs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import numpy as np

from dlnode.checks import check_positive, check_seed
from dlnode.errors import fail, shown
from dlnode.flows.diagonal import DIAGONAL_INITS, diagonal_init
from dlnode.problems.samples import samples_of
from dlnode.solvers.gd import SDE_METHODS
from dlnode.solvers.sde import DT_LEVELS, dt_level
from dlnode.solvers.stochastic import SAMPLING, Noise, path_key

__all__ = ["NETWORKS", "NOISY", "NoisePlan", "plan_noise", "with_paths"]

NETWORKS = ("dense", "diagonal")
NOISY = ("sgd", "label_noise", *SDE_METHODS)


@dataclasses.dataclass(frozen=True)
class NoisePlan:
    """What a call adds to a deterministic one: the network kind, the static `Noise`, δ, the SDE step and the
    paths (None: no ``path`` dim, a deterministic method)."""

    network: str = "dense"
    noise: Noise | None = None
    delta: float = 0.0
    dt: float = math.nan
    paths: Sequence[int] | None = None

    def attrs(self) -> dict[str, Any]:
        out: dict[str, Any] = {"network": self.network}
        if self.noise is not None:
            out |= {"batch": self.noise.batch, "samples": self.noise.n, "sampling": self.noise.sampling,
                    "label_noise": self.delta, "paths": len(self.paths or [])}  # fmt: skip
            if math.isfinite(self.dt):
                out["dt"] = self.dt
        return out


def _as_paths(paths: Any) -> Sequence[int]:
    """The path seeds: a count P is range(P) (never listed out before the memory check)."""
    if paths is None:
        return range(1)
    if isinstance(paths, (int, np.integer)) and not isinstance(paths, bool):
        if paths < 1:
            fail("paths", "must be a positive count or an iterable of path seeds", paths, "pass e.g. paths=100")
        return range(int(paths))
    items = list(paths) if isinstance(paths, Iterable) and not isinstance(paths, (str, bytes)) else None
    if not items:
        fail("paths", "must be a positive count or a non-empty iterable of path seeds", paths,
             "pass e.g. paths=100 or paths=range(100)")  # fmt: skip
    items = [check_seed(p, "paths") for p in items]
    if len(set(items)) != len(items):
        fail("paths", "must not repeat a seed", items, "list each path seed once")
    return items


def plan_noise(problem: Any, method: str, flow: str, network: str, init: Any, depths: list[float], lr: Any,
               t1: Any, batch: Any, noise: Any, sampling: Any, paths: Any, dt: Any,
               width: Any) -> NoisePlan:  # fmt: skip
    """Validate the noise and network arguments of a call; one-line `DlnodeError` on the first that is wrong."""
    if not isinstance(network, str) or network not in NETWORKS:
        fail("network", f"must be one of {NETWORKS}", network, "pass network='dense' or network='diagonal'")
    if network == "diagonal":
        _check_diagonal(flow, init, depths, width)
    if method not in NOISY:
        for name, value in (("batch", batch), ("noise", noise), ("paths", paths), ("dt", dt)):
            if value is not None:
                fail(name, f"applies to the stochastic methods {NOISY} only", value,
                     f"drop {name}, or pass method='sgd', 'label_noise' or an SDE method")  # fmt: skip
        if sampling != "epochs":
            fail("sampling", f"applies to the stochastic methods {NOISY} only", sampling, "drop sampling")
        return NoisePlan(network)
    samples = samples_of(problem.kind)
    if samples is None:
        fail("problem", f"must keep its samples for method={method!r} (minibatches and labels are per sample)",
             problem.kind, "use dlnode.SparseRegression(X, Y), a regression that keeps its samples (Y: (n,) or "
             "(outputs, n)), or dlnode.MatrixSensing")  # fmt: skip
    n = int(samples.count(problem.arrays()))
    check_positive("lr", lr, f" for method={method!r} (the step of the noisy updates, or the one the SDE models)")
    if method in ("sgd", "label_noise") and flow != "layers":
        fail("flow", f"must be 'layers' for method={method!r} (a discrete method on the layers)", flow,
             "pass flow='layers'")  # fmt: skip
    if method in SDE_METHODS and flow not in ("layers", "modified"):
        fail("flow", f"must be 'layers' or 'modified' (the drift) for method={method!r}", flow,
             "pass flow='layers'")  # fmt: skip
    if t1 is None:
        fail("t1", f"is required for method={method!r} (a noisy run does not converge in loss)", t1,
             "pass e.g. t1=10.0")  # fmt: skip
    if method == "sgd" and batch is None:
        fail("batch", "is required for method='sgd' (samples per step)", batch, f"pass e.g. batch=1 (of n={n})")
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, (int, np.integer))
                              or not 1 <= batch <= n):  # fmt: skip
        fail("batch", f"must be an integer in [1, n] = [1, {n}] (samples per step)", batch,
             f"pass e.g. batch=1, or batch={n} for the full batch")  # fmt: skip
    if method == "label_noise" and noise is None:
        fail("noise", "is required for method='label_noise' (the label noise std delta)", noise,
             "pass e.g. noise=0.5")  # fmt: skip
    if noise is not None and (isinstance(noise, bool) or not isinstance(noise, (int, float, np.floating))
                              or not 0 <= noise < math.inf):  # fmt: skip
        fail("noise", "must be a finite number >= 0 (the label noise std delta)", noise, "pass e.g. noise=0.5")
    if not isinstance(sampling, str) or sampling not in SAMPLING:
        fail("sampling", f"must be one of {SAMPLING}", sampling, "pass e.g. sampling='epochs'")
    spec = Noise(int(n if batch is None else batch), sampling, noise is not None, n)
    step = math.nan
    if method in SDE_METHODS:
        if spec.full and not spec.label:
            fail("method", f"{method!r} needs a diffusion: a batch below n (or sampling='with_replacement') or "
                 "label noise", shown(f"batch={spec.batch} of n={n}, no label noise"),
                 "pass batch=... or noise=..., or use a deterministic method for the flow")  # fmt: skip
        step = check_positive("dt", lr if dt is None else dt, f" for method={method!r} (the SDE step)")
        if dt_level(float(lr), step) is None:
            m = min(max(round(math.log2(step / lr)), -DT_LEVELS), DT_LEVELS)
            rule = f"must be lr times a power of two, lr·2^m with |m| <= {DT_LEVELS} (one Brownian path for all)"
            fail("dt", rule, shown(f"dt={step:g} with lr={lr:g}"), f"pass dt={lr * 2.0**m:g}")
    elif dt is not None:
        fail("dt", "applies to the SDE methods only (the discrete methods step by lr)", dt, "drop dt")
    return NoisePlan(network, spec, float(noise or 0.0), step, _as_paths(paths))


def _check_diagonal(flow: str, init: Any, depths: list[float], width: Any) -> None:
    if flow not in ("layers", "modified"):
        fail("flow", "must be 'layers' or 'modified' for network='diagonal'", flow, "pass flow='layers'")
    if not isinstance(init, str) or init not in DIAGONAL_INITS:
        fail("init", f"must be one of {DIAGONAL_INITS} for network='diagonal'", init, "pass init='uniform'")
    if any(not math.isfinite(d) for d in depths):
        fail("depth", "must be finite for network='diagonal' (the Hadamard power D)", depths, "pass e.g. depth=2")
    if width is not None:
        fail("width", "does not apply to network='diagonal' (u and v have the shape of beta)", width, "drop width")


def diagonal_states(problem: Any, depth: int, init: str, cells: list[tuple[float, int]]) -> tuple:
    """The batch of (u, v) of one depth, cells (scale, seed) stacked on the leading axis."""
    pairs = [diagonal_init((problem.d_out, problem.d_in), init, s, seed) for s, seed in cells]
    return tuple(np.stack([p[j] for p in pairs]) for j in range(2))


def with_paths(y0: Any, paths: Sequence[int]) -> tuple[Any, np.ndarray]:
    """Every cell repeated once per path (batch = cells × paths, paths fastest) and the path keys."""
    count = len(paths)
    states = jax.tree_util.tree_map(lambda a: np.repeat(np.asarray(a), count, axis=0), y0)
    cells = jax.tree_util.tree_leaves(y0)[0].shape[0]
    keys = np.asarray(jax.vmap(path_key)(np.asarray(paths, dtype=np.int64)))
    return states, np.tile(keys, (cells, 1))
