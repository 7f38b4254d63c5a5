"""Reference trajectories for the analysis tests, in the dataset schema of docs/schema.md (`build_dataset`).

Two references: a hand-written NumPy gradient-descent loop (GD is exactly that loop) and Saxe's closed form of the
depth-2 balanced decoupled flow on whitened regression, u(t) = s e^{2st} / (e^{2st} − 1 + s/u₀) with dlnode's ½-loss
(docs/math.md §3).
"""

from __future__ import annotations

import json

import numpy as np
import xarray as xr

import dlnode as dln

# Float64 linear algebra on O(1) matrices is exact to ~1e-13.
EXACT_RTOL = 1e-10
S_WELL_SEPARATED = [4.0, 2.0, 1.0]


def layer_grads(layers: list[np.ndarray], e: np.ndarray) -> list[np.ndarray]:
    """∂L/∂W_j = (W_N⋯W_{j+1})ᵀ E (W_{j−1}⋯W_1)ᵀ (docs/math.md §1)."""
    below = [np.eye(layers[0].shape[1])]
    for w in layers[:-1]:
        below.append(w @ below[-1])
    above = [np.eye(layers[-1].shape[0])]
    for w in layers[:0:-1]:
        above.append(above[-1] @ w)
    n = len(layers)
    return [above[n - 1 - j].T @ e @ below[j].T for j in range(n)]


def gd_states(problem, layers, lr: float, steps) -> list[list[np.ndarray]]:  # noqa: ANN001
    """Layers after each of the (sorted) step counts in `steps` of plain gradient descent."""
    wanted, out = set(int(s) for s in steps), []
    for step in range(int(max(steps)) + 1):
        if step in wanted:
            out.append([w.copy() for w in layers])
        grads = layer_grads(layers, problem.grad(dln.product(layers)))
        layers = [w - lr * g for w, g in zip(layers, grads, strict=True)]
    return out


def exact_flow_states(problem, scale: float, times) -> list[list[np.ndarray]]:  # noqa: ANN001
    """Depth-2 balanced decoupled flow on ½‖W − Σ‖²: each mode u = a² obeys du/dt = 2u(s − u), u(0) = scale²."""
    u_vecs, s, vt = np.linalg.svd(problem.target(), full_matrices=False)
    u0 = scale**2
    states = []
    for t in times:
        grown = u0 * s / (u0 + (s - u0) * np.exp(-2 * s * t))
        u = np.where(s > 0, grown, u0 / (1 + 2 * u0 * t))
        states.append([np.sqrt(u)[:, None] * vt, u_vecs * np.sqrt(u)])
    return states


def _record(problem, state):  # noqa: ANN001
    layers = None if isinstance(state, np.ndarray) else state
    w = state if layers is None else dln.product(layers)
    sv = np.linalg.svd(w, compute_uv=False)
    grads = [problem.grad(w)] if layers is None else layer_grads(layers, problem.grad(w))
    return w, sv, np.sqrt(sum(np.sum(g**2) for g in grads)), float(problem.loss(w)), layers


def _fill_run(data: dict, cell: tuple, problem, states: list) -> None:  # noqa: ANN001
    """Write one run's observables (and NaN-padded layers) into the arrays of `build_dataset`."""
    d0 = None
    for t, state in enumerate(states):
        w, sv, grad_norm, loss, layers = _record(problem, state)
        for name, value in (("product", w), ("singular_values", sv), ("grad_norm", grad_norm), ("loss", loss)):
            data[name][cell + (t,)] = value
        if layers is None:
            continue
        d = dln.balancedness(layers)
        d0 = d if d0 is None else d0
        data["balancedness"][cell + (t,)] = max([np.linalg.norm(a - b) for a, b in zip(d, d0, strict=True)] + [0])
        for j, wj in enumerate(layers):
            data["weights"][cell + (t, j, slice(0, wj.shape[0]), slice(0, wj.shape[1]))] = wj


def build_dataset(problem, runs: dict, times, lr: float | None = None, init: str = "gaussian") -> xr.Dataset:  # noqa: ANN001
    """A Dataset in the schema of docs/schema.md from {(depth, scale, seed): [layers or end-to-end matrix per time]}.

    A run with fewer states than times failed: its cells after the last state are NaN and its status is −2.
    """
    depths, scales, seeds = (sorted({key[i] for key in runs}) for i in range(3))
    times = np.asarray(times, dtype=np.float64)
    shape, k = (len(depths), len(scales), len(seeds)), min(problem.d_out, problem.d_in)
    layer_shapes = [w.shape for states in runs.values() for s in states if isinstance(s, list) for w in s]
    max_depth = max([int(d) for d in depths if np.isfinite(d)] + [1])
    out_in = tuple(max([sh[i] for sh in layer_shapes] + [1]) for i in range(2))
    nan = lambda *extra: np.full(shape + (times.size, *extra), np.nan)  # noqa: E731
    data = {
        "loss": nan(), "product": nan(problem.d_out, problem.d_in), "singular_values": nan(k), "grad_norm": nan(),
        "balancedness": nan(), "weights": nan(max_depth, *out_in),
    }  # fmt: skip
    status = np.zeros(shape, dtype=np.int64)
    for (depth, scale, seed), states in runs.items():
        cell = (depths.index(depth), scales.index(scale), seeds.index(seed))
        status[cell] = 0 if len(states) == times.size else -2
        _fill_run(data, cell, problem, states)
    run, t_dims = ("depth", "scale", "seed"), ("depth", "scale", "seed", "time")
    extra = {"product": ("row", "col"), "singular_values": ("k",), "weights": ("layer", "out", "in")}
    variables = {name: (t_dims + extra.get(name, ()), value) for name, value in data.items()}
    last = max(len(states) for states in runs.values()) - 1
    variables["weights_final"] = (run + ("layer", "out", "in"), data["weights"][:, :, :, last])
    variables["status"] = (run, status)
    ds = xr.Dataset(
        variables,
        coords={"depth": np.asarray(depths, float), "scale": scales, "seed": seeds, "time": times},
        attrs={
            "problem": json.dumps(problem.describe()),
            "method": "gd" if lr else "exact",
            "flow": "layers",
            "lr": float(lr) if lr else np.nan,
            "init": init,
            "width": -1,
        },  # fmt: skip
    )
    if lr:
        ds = ds.assign_coords(step=("time", np.rint(times / lr).astype(np.int64)))
    return ds


def gd_dataset(problem, depths, scales, seeds, lr: float, steps, init: str = "gaussian", width=None) -> xr.Dataset:  # noqa: ANN001
    runs = {}
    for depth in depths:
        for scale in scales:
            for seed in seeds:
                layers = dln.init_layers(problem, depth, init, scale, seed, width)
                runs[(depth, scale, seed)] = gd_states(problem, layers, lr, steps)
    return build_dataset(problem, runs, np.asarray(steps) * lr, lr=lr, init=init)


def log_steps(last: int, num: int) -> np.ndarray:
    return np.unique(np.concatenate([[0], np.geomspace(1, last, num).round().astype(int)]))


def decoupled_runs(lrs, end_time: float = 3.0, scale: float = 0.3):  # noqa: ANN001
    """The exact depth-2 flow on a 0.04 grid and GD from the same decoupled init at each lr, every step saved."""
    prob = dln.Regression.whitened(S_WELL_SEPARATED, 3, 3, seed=0)
    grid = np.arange(0, round(end_time / 0.04) + 1) * 0.04
    flow = build_dataset(prob, {(2, scale, 0): exact_flow_states(prob, scale, grid)}, grid, init="decoupled")
    runs = [gd_dataset(prob, [2], [scale], [0], lr, np.arange(0, round(end_time / lr) + 1), "decoupled") for lr in lrs]
    return flow, runs


def univariate_data(seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Inputs X (4, 50) with an anisotropic, well-conditioned Σ̂ = XXᵀ/n (κ ≈ 4) and noisy targets Y (1, 50)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((4, 50)) * np.array([1.0, 0.8, 0.6, 0.5])[:, None]
    y = rng.standard_normal(4) @ x + 0.1 * rng.standard_normal(50)
    return x, y[None]


def univariate_problem(seed: int = 1) -> dln.Regression:
    return dln.Regression(*univariate_data(seed))
