"""The peers dlnode is measured against, each written the way its users write it, all in float64.

- `torch_gd`: a PyTorch gradient-descent loop with autograd (``loss.backward()`` and ``torch.optim.SGD``, one
  thread), as most deep-linear-network research code trains.
- `jax_gd`: the hand-written jitted JAX baseline, ``jax.grad`` of the loss inside ``lax.fori_loop`` / ``lax.scan``.
- `flow_run`: any method of dlnode's registry through `dlnode.integrate`; with default settings this is diffrax
  Tsit5 / Kvaerno5 as their users call them, and scipy's LSODA / BDF / Radau with a jitted JAX right-hand side
  and Jacobian.

Each returns a `Run`: the end-to-end matrix W(t) at the requested times, the wall time with compilation apart, the
step count, and how far the run got. `check_gd_equality` shows that both loops are dlnode's ``method="gd"``.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import dlnode as dln

__all__ = ["Run", "check_gd_equality", "flow_run", "gd_steps", "jax_gd", "torch_gd"]

TORCH_INSTALL = "pip install 'dlnode[bench]'  (torch==2.13.0, the CPU build)"


@dataclasses.dataclass(frozen=True)
class Run:
    """One contestant's trajectory and cost.

    `products` is (time, rows, cols), NaN at times the run did not reach; `status` uses dlnode's codes (0 reached
    t1, 1 converged, −1 out of steps or budget, −2 diverged, −3 solver failure); `loss_ratio` is
    (ℓ − ℓ*)/(ℓ₀ − ℓ*) at `t_reached`.
    """

    times: np.ndarray
    products: np.ndarray
    wall: float
    steps: int
    compile_time: float
    status: int
    t_reached: float
    loss_ratio: float
    layers: tuple = ()
    rejected: int = 0


def gd_steps(times: np.ndarray, lr: float) -> np.ndarray:
    """Step indices k = t/lr of save times that are whole multiples of lr (raises otherwise)."""
    steps = np.rint(np.asarray(times) / lr).astype(np.int64)
    if not np.allclose(steps * lr, times, rtol=1e-12, atol=0.0):
        raise ValueError(f"save times must be whole multiples of lr={lr}; round them with a grid of step lr")
    return steps


def _loss_ratio(problem: dln.Problem, w: np.ndarray, w0: np.ndarray) -> float:
    lmin = problem.loss_min
    return float((problem.loss(w) - lmin) / max(problem.loss(w0) - lmin, 1e-300))


def _gd_run(problem: dln.Problem, times: np.ndarray, out: np.ndarray, wall: float, steps: int, comp: float) -> Run:
    """A GD loop's result; a loop that blew up (non-finite W) is marked diverged from its first bad save on."""
    finite = np.all(np.isfinite(out), axis=(1, 2))
    last = int(np.nonzero(finite)[0][-1]) if finite.any() else 0
    if not finite.all():
        out = out.copy()
        out[last + 1 :] = np.nan
    ratio = _loss_ratio(problem, out[last], out[0])
    return Run(times, out, wall, steps, comp, 0 if finite.all() else -2, float(times[last]), ratio)


# ---------------------------------------------------------------------------------------------------- torch
def _torch() -> Any:
    """Import torch lazily (a benchmark-only peer) and pin it to one thread."""
    try:
        import torch
    except ImportError as exc:
        raise ImportError(f"the PyTorch peer needs torch; install it with: {TORCH_INSTALL}") from exc
    torch.set_num_threads(1)
    return torch


def torch_gd(problem: dln.Problem, layers: list[np.ndarray], lr: float, times: np.ndarray) -> Run:
    """Gradient descent W_j ← W_j − lr·∂L/∂W_j by autograd, W(t) recorded at step t/lr of each save time."""
    torch = _torch()
    arrays = {k: torch.as_tensor(np.asarray(v), dtype=torch.float64) for k, v in problem.arrays().items()}
    loss_fn = type(problem).loss_fn
    ws = [torch.tensor(w, dtype=torch.float64, requires_grad=True) for w in layers]
    opt = torch.optim.SGD(ws, lr=lr)
    steps = gd_steps(times, lr)
    out = np.empty((len(times), problem.d_out, problem.d_in))
    k, start = 0, time.perf_counter()
    for i, target in enumerate(steps):
        while k < target:
            opt.zero_grad()
            loss = loss_fn(dln.product(ws), arrays)
            loss.backward()
            opt.step()
            k += 1
        with torch.no_grad():
            out[i] = dln.product(ws).numpy()
    wall = time.perf_counter() - start
    return _gd_run(problem, times, out, wall, int(steps[-1]), 0.0)


# ------------------------------------------------------------------------------------------------------ jax
@functools.cache
def _jax_gd_loop(problem_cls: type) -> Any:
    grad = jax.grad(lambda ws, arrays: problem_cls.loss_fn(dln.product(ws), arrays))

    def run(ws: tuple, arrays: dict, lr: Any, counts: Any) -> Any:
        def step(_: Any, ws: tuple) -> tuple:
            return tuple(w - lr * g for w, g in zip(ws, grad(ws, arrays), strict=True))

        def segment(ws: tuple, n: Any) -> tuple:
            ws = jax.lax.fori_loop(0, n, step, ws)
            return ws, dln.product(ws)

        return jax.lax.scan(segment, ws, counts)[1]

    return jax.jit(run)


def jax_gd(problem: dln.Problem, layers: list[np.ndarray], lr: float, times: np.ndarray) -> Run:
    """The jitted loop: `counts[i]` GD steps between save times i−1 and i, W recorded after each segment."""
    steps = gd_steps(times, lr)
    args = (
        tuple(jnp.asarray(w) for w in layers),
        jax.tree_util.tree_map(jnp.asarray, problem.arrays()),
        jnp.float64(lr),
        jnp.asarray(np.diff(steps, prepend=0)),
    )
    start = time.perf_counter()
    compiled = _jax_gd_loop(type(problem)).lower(*args).compile()
    comp = time.perf_counter() - start
    start = time.perf_counter()
    out = np.asarray(jax.block_until_ready(compiled(*args)))
    wall = time.perf_counter() - start
    return _gd_run(problem, times, out, wall, int(steps[-1]), comp)


# ---------------------------------------------------------------------------------------------------- flows
def flow_run(
    problem: dln.Problem,
    method: str,
    times: np.ndarray | None,
    max_steps: int | None = None,
    **kwargs: Any,
) -> Run:
    """One `dlnode.integrate` run (a single depth, scale and seed) saved at `times` with t1 = times[-1], or, for
    ``times=None``, run until the loss criterion `loss_tol` (a keyword) holds.

    `kwargs` go to `dlnode.integrate` (depth, init, scale, seed, flow, rtol, atol, lr, loss_tol, ...); the wall
    time is the solver's own (compile time apart), the steps its accepted steps. `Run.layers` holds the final
    per-layer weights.
    """
    t1, saveat = (None, 16) if times is None else (float(times[-1]), times)
    ds = dln.integrate(problem, method=method, t1=t1, saveat=saveat, progress=False, max_steps=max_steps, **kwargs)
    cell = ds.isel(depth=0, scale=0, seed=0)
    loss = cell["loss"].values
    reached = np.nonzero(np.isfinite(loss))[0]
    lmin = problem.loss_min
    ratio = float((loss[reached[-1]] - lmin) / max(loss[0] - lmin, 1e-300))
    depth = kwargs.get("depth")
    layers: tuple = ()
    if isinstance(depth, int):  # the stored weights are padded to the largest layer shape
        shapes = dln.layer_shapes(depth, problem.d_in, problem.d_out, kwargs.get("width"))
        layers = tuple(w[:r, :c] for w, (r, c) in zip(cell["weights_final"].values, shapes, strict=True))
    return Run(
        times=cell["time"].values,
        products=cell["product"].values,
        wall=float(cell["wall_time"]),
        steps=int(cell["num_steps"]),
        compile_time=float(ds.attrs["compile_time"]),
        status=int(cell["status"]),
        t_reached=float(cell["t_final"]),
        loss_ratio=ratio,
        layers=layers,
        rejected=max(int(cell["num_rejected"]), 0),
    )


# ------------------------------------------------------------------------------------------------- equality
def check_gd_equality(steps: int = 1000) -> dict[str, float]:
    """Max |W_peer − W_dlnode| over saved times for torch and JAX GD against ``dlnode.integrate(method="gd")``
    on a small completion problem (depth 3, 8×8); round-off only, ~1e-12 or below."""
    problem = dln.MatrixCompletion.random((8, 8), 2, 40, seed=0)
    lr = 2.0**-6
    times = np.linspace(0.0, steps * lr, 11)
    settings = {"depth": 3, "init": "gaussian", "scale": 0.5, "seed": 0}
    layers = dln.init_layers(problem, 3, "gaussian", 0.5, 0)
    ref = flow_run(problem, "gd", times, lr=lr, **settings).products
    diffs = {"jax": float(np.max(np.abs(jax_gd(problem, layers, lr, times).products - ref)))}
    try:
        diffs["torch"] = float(np.max(np.abs(torch_gd(problem, layers, lr, times).products - ref)))
    except ImportError:
        diffs["torch"] = float("nan")
    diffs["scale"] = float(np.max(np.abs(ref)))
    return diffs
