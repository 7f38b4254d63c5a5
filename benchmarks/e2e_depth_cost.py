"""Cost per step of the balanced end-to-end flow against the per-layer flow, as depth grows to ∞.

The end-to-end flow integrates W alone (d_out·d_in numbers, an SVD per evaluation) whatever the depth N, so its
cost per step should not grow with N; the per-layer flow carries N matrices and 3(N − 1) products per gradient,
so its cost grows linearly. Both use tsit5 from a balanced initialisation on one problem: the end-to-end flow to
a fixed rescaled time τ₁ (the shared time axis of finite depths and ∞), the per-layer flow to t₁ = τ₁/N from the
per-layer scale (end-to-end scale)^{1/N}, i.e. the same dynamics. Cost per step = wall time (compile apart, median
of three when cheap) / (accepted + rejected steps).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

import dlnode as dln

from .peers import flow_run
from .work_precision import timed

__all__ = ["DEPTHS", "DepthCost", "measure", "table"]

DEPTHS: tuple[int | str, ...] = (2, 8, 64, "inf")


@dataclasses.dataclass(frozen=True)
class DepthCost:
    flow: str
    depth: float
    wall: float
    steps: int
    compile_time: float

    @property
    def per_step_us(self) -> float:
        return 1e6 * self.wall / max(self.steps, 1)


def _cost(problem: dln.Problem, flow: str, depth: int | str, t1: float, scale: float, saveat: int) -> DepthCost:
    times = np.concatenate([[0.0], np.geomspace(1e-3 * t1, t1, saveat)])
    init = "balanced"
    extra = {"scale_of": "product"} if flow == "end_to_end" else {}
    run = timed(lambda: flow_run(problem, "tsit5", times, flow=flow, depth=depth, init=init, scale=scale, seed=0,
                                 **extra))  # fmt: skip
    return DepthCost(flow, float(depth), run.wall, run.steps + run.rejected, run.compile_time)


def measure(
    problem: dln.Problem,
    depths: Sequence[int | str] = DEPTHS,
    tau1: float = 20.0,
    scale: float = 1e-2,
    saveat: int = 20,
) -> list[DepthCost]:
    """End-to-end flow at every depth (to τ₁) and the per-layer flow at every finite depth (to τ₁/N)."""
    out = []
    for depth in depths:
        out.append(_cost(problem, "end_to_end", depth, tau1, scale, saveat))
        if depth != "inf":
            out.append(_cost(problem, "layers", depth, tau1 / depth, scale ** (1.0 / depth), saveat))
    return out


def table(problem: dln.Problem, costs: list[DepthCost]) -> str:
    """Markdown: per depth, the cost per step of each flow and its ratio to that flow's cost at the first depth."""
    first = {c.flow: c.per_step_us for c in reversed(costs)}
    lines = [
        f"### End-to-end vs per-layer flow: cost per step against depth ({problem.d_out}x{problem.d_in} completion, "
        f"tsit5, balanced init)",
        "",
        "| flow | depth | wall s | steps (acc.+rej.) | us/step | us/step over the smallest depth's | compile s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in costs:
        depth = "inf" if math.isinf(c.depth) else f"{int(c.depth)}"
        lines.append(f"| {c.flow} | {depth} | {c.wall:.3g} | {c.steps} | {c.per_step_us:.3g} | "
                     f"{c.per_step_us / first[c.flow]:.2f} | {c.compile_time:.2g} |")  # fmt: skip
    return "\n".join(lines)
