"""Gradient descent, W_j ← W_j − lr·∂L/∂W_j: explicit Euler with a constant step, exactly; step k at t = k·lr."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dlnode.flows.flow import Flow, layer_gradients
from dlnode.solvers.core import RUNNING, Method, Status, batched, call, stop_flags

__all__ = ["GD"]

WINDOW_STEPS = 1_000_000  # GD steps are cheap: a window is bounded by its save times


@cache
def _functions(problem_cls: type, flow: Flow) -> tuple[Callable, Callable, Callable]:
    def start(y0: tuple, arrays: dict, c: dict) -> dict:
        args = flow.prepare(y0, arrays, c)
        zero = jnp.zeros((), jnp.int64)
        return {"y": y0, "n": zero, "status": zero, "args": args, "loss0": flow.loss(y0, args), "lr": c["lr"]}

    def window(st: dict, arrays: dict, ts: Any, c: dict) -> tuple:
        args, loss0 = st["args"], st["loss0"]
        steps = jnp.rint(ts / c["lr"]).astype(jnp.int64)
        n_start = st["n"]

        def body(carry):
            y, n, _ = carry
            grads, w, e = layer_gradients(y, problem_cls.grad_fn, arrays)
            converged, diverged = stop_flags(problem_cls.loss_from_grad(w, e, arrays), loss0, arrays["loss_min"], c)
            status = Status.of_stop(converged, diverged)
            go = status == RUNNING
            y = jax.tree_util.tree_map(lambda a, g: jnp.where(go, a - c["lr"] * g, a), y, grads)
            return y, n + go, status

        def advance(carry, target):
            def cond(cr):
                budget = (cr[1] < c["max_steps"]) & (cr[1] - n_start < c["window_steps"])
                return (cr[1] < target) & (cr[2] == 0) & budget

            carry = jax.lax.while_loop(cond, body, carry)
            return carry, flow.observe(carry[0], args)

        (y, n, status), obs = jax.lax.scan(advance, (st["y"], st["n"], st["status"]), steps)
        return obs, flow.observe(y, args), dict(st, y=y, n=n, status=status)

    def final(st: dict) -> Any:
        return st["y"]

    return batched(start, window, final)


def _supports(flow: Flow) -> str | None:
    if flow.end_to_end or flow.name != "layers":
        return f"method='gd' is gradient descent on the layers: use flow='layers'; got flow={flow.name!r}"
    return None


def _summary(st: dict) -> dict[str, np.ndarray]:
    n, status, lr = (np.asarray(a) for a in jax.device_get((st["n"], st["status"], st["lr"])))
    return {"t": n * lr, "steps": n, "rejected": np.zeros_like(n), "status": status}


def _method() -> Method:
    return Method(
        name="gd", family="gd", stiff=False, max_steps=10_000_000, window_steps=WINDOW_STEPS, supports=_supports,
        start=lambda flow, y0, arrays, c: call(_functions(flow.problem_cls, flow)[0], y0, arrays, c),
        advance=lambda flow, st, arrays, ts, c: call(_functions(flow.problem_cls, flow)[1], st, arrays, ts, c),
        summary=_summary,
        final=lambda flow, st: call(_functions(flow.problem_cls, flow)[2], st),
        needs_lr=True,
    )  # fmt: skip


GD = _method()
