"""Targets of the stiff path (method ``rosenbrock``) through the public API, against cached tight references.

For each target: wall time (compile apart), accepted/rejected steps, the final loss ratio (ℓ − ℓ*)/(ℓ₀ − ℓ*),
the largest relative error ‖W − W_ref‖_F/‖W_ref‖_F of the end-to-end matrix over the saved times the run reached,
and the balancedness drift max_j ‖D_j(t) − D_j(0)‖_F relative to max_j ‖W_j(t1)‖²_F (the size of the terms of
D_j) and to max_j ‖D_j(0)‖_F.

References are integrated once and cached under ``$DLNODE_REF_DIR`` (default benchmarks/results/stiff_refs):
diffrax dopri8 at rtol 1e-10 where an explicit method can cross the plateaus (target 1), and otherwise (d = 10
and 50) ``rosenbrock`` itself at rtol 1e-10 (a self-convergence check, marked as such; scipy's Radau at rtol 1e-10
with the dense Jacobian, d = 10's reference before, is 3.4e-3 off rosenbrock at 1e-11 early on the first plateau,
at t ≈ 91). Depth 8 has no reference: its first plateau (~10¹⁸) is
beyond every plain-time integrator, so only the stages, the loss and the drift are reported. ``d8_e2e`` and
``d8_fact`` take depth 8 through the balanced end-to-end flow in singular coordinates (σ(0) = 1e-24, time τ = 8t).

Usage: ``python -m benchmarks.stiff_targets [--rtol 1e-7] [--only d8_e2e,d8_fact]`` or ``dlnode bench --targets``
(all targets; ``targets.md`` in the output folder). ``--masks 0,1,2,3,4,5 [--steps 30000]`` runs ``d8_e2e`` on
the completions whose observed entries those seeds draw instead (``masks.md``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

import dlnode as dln

from .work_precision import rel_error

REF_DIR = os.environ.get("DLNODE_REF_DIR", os.path.join(os.path.dirname(__file__), "results", "stiff_refs"))
REF_RTOL = 1e-10
SAVE_POINTS = 96


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    problem: dln.Problem
    depth: int
    scale: float
    loss_tol: float
    t1: float
    reference: str | None  # method of the cached reference, None for no reference
    first_save: float = 1e-2
    flow: str = "layers"  # "end_to_end": balanced init, `scale` is the end-to-end scale, time is τ = N t
    rtol: float | None = None  # overrides the table's rtol where the 1e-4 accuracy needs a tighter one
    max_steps: int = 200_000

    def times(self) -> np.ndarray:
        ts = np.concatenate([[0.0], np.logspace(np.log10(self.first_save), np.log10(self.t1), SAVE_POINTS - 1)])
        ts[-1] = self.t1
        return ts


def d10_completion(seed: int = 0) -> dln.MatrixCompletion:
    """The small completion of targets 2 and 3: 10×10, rank 3, 60 observed entries (the mask drawn by `seed`)."""
    return dln.MatrixCompletion.random((10, 10), 3, 60, seed=seed)


def targets() -> list[Target]:
    """Targets 1–3 of the stiff-flow issue: the Arora et al. completion, depth 4 at d = 10 and 50, depth 8."""
    arora = dln.MatrixCompletion.random(shape=(100, 100), rank=5, observed=2000, seed=0)
    d10 = d10_completion()
    d50 = dln.MatrixCompletion.random((50, 50), 3, 1500, seed=0)
    return [
        Target("arora", arora, 3, 0.1, 1e-7, 400.0, "dopri8"),
        # d10 at rtol 1e-9 is 1.7e-6 off rosenbrock at rtol 1e-11 (measured with RODAS4; 12,664 steps)
        Target("d10", d10, 4, 1e-3, 1e-6, 1e10, "rosenbrock", rtol=1e-9),
        Target("d50", d50, 4, 1e-3, 1e-6, 1e10, "rosenbrock"),
        Target("d8", d10, 8, 1e-3, 1e-6, 1e26, None),
        # depth 8 at per-layer 1e-3 through the balanced end-to-end flow (σ(0) = 1e-24) in singular coordinates: the
        # completion of d8, and the full factorisation of the same target (self-convergence reference at 1e-10)
        Target("d8_e2e", d10, 8, 1e-24, 1e-6, 1e27, None, flow="end_to_end"),
        Target("d8_fact", dln.Factorization(d10.w_star), 8, 1e-24, 1e-6, 1e27, "rosenbrock", flow="end_to_end"),
    ]


def mask_targets(seeds: Sequence[int], max_steps: int = 30_000) -> list[Target]:
    """`d8_e2e` on other observation masks: `d10_completion(seed)` for each of `seeds`, `max_steps` each."""
    base = next(t for t in targets() if t.name == "d8_e2e")
    return [
        dataclasses.replace(base, name=f"d8_e2e_mask{seed}", problem=d10_completion(seed), max_steps=max_steps)
        for seed in seeds
    ]


def _run(t: Target, method: str, rtol: float, loss_tol: float, max_steps: int = 200_000):
    init = "balanced" if t.flow == "end_to_end" else "gaussian"
    return dln.integrate(
        t.problem, depth=t.depth, init=init, scale=t.scale, seed=0, method=method, rtol=rtol, flow=t.flow,
        scale_of="product" if t.flow == "end_to_end" else "layer",
        atol=rtol * 1e-3, t1=t.t1, saveat=t.times(), loss_tol=loss_tol, progress=False, max_steps=max_steps,
    )  # fmt: skip


def reference(t: Target) -> dict[str, np.ndarray] | None:
    """The cached reference products at the target's save times (computed on first use)."""
    if t.reference is None:
        return None
    path = os.path.join(REF_DIR, f"{t.name}_{t.reference.replace(':', '_')}.npz")
    if not os.path.exists(path):
        os.makedirs(REF_DIR, exist_ok=True)
        ds = _run(t, t.reference, REF_RTOL, t.loss_tol / 10, max_steps=5_000_000)
        np.savez(path, product=ds["product"].values.reshape(len(t.times()), *t.problem.w_star.shape),
                 t_final=float(ds["t_final"].values.ravel()[0]), status=int(ds["status"].values.ravel()[0]),
                 run_time=float(ds.attrs["run_time"]))  # fmt: skip
    data = np.load(path)
    return {k: data[k] for k in data.files}


def _relative_error(ds, ref: dict | None, times: np.ndarray) -> float:
    """`rel_error` over the save times both runs reached (a converged run holds its final state after t_final)."""
    if ref is None:
        return float("nan")
    w = ds["product"].values.reshape(ref["product"].shape)
    reached = times <= min(float(ds["t_final"].values.ravel()[0]), float(ref["t_final"]))
    return rel_error(w[reached], ref["product"][reached])


def _drift(ds, t: Target) -> tuple[float, float]:
    """Balancedness drift relative to max_j ‖W_j(end)‖²_F and to max_j ‖D_j(0)‖_F (none: end-to-end flows are
    balanced by construction)."""
    if t.flow == "end_to_end":
        return float("nan"), float("nan")
    layers = dln.init_layers(t.problem, t.depth, "gaussian", t.scale, 0)
    d0 = max(np.linalg.norm(d) for d in dln.balancedness(layers))
    final = ds["weights_final"].values.reshape(t.depth, *ds["weights_final"].shape[-2:])
    size = max(float(np.sum(np.nan_to_num(w) ** 2)) for w in final)
    drift = float(np.nanmax(ds["balancedness"].values))
    return drift / size, drift / d0


def _peak(ds, t: Target) -> float:
    """max over the run of σ₁ over the target's σ₁: above 1, the path overshoots in norm on its way."""
    sv = ds["singular_values"].values.reshape(len(t.times()), -1)
    return float(np.nanmax(sv[:, 0]) / np.linalg.svd(t.problem.w_star, compute_uv=False)[0])


def _stages(ds, t: Target) -> str:
    """Times at which the k-th singular value first exceeds half its target value (the stage times)."""
    target = np.linalg.svd(t.problem.w_star, compute_uv=False)[: np.linalg.matrix_rank(t.problem.w_star)]
    sv = ds["singular_values"].values.reshape(len(t.times()), -1)
    out = []
    for k, s in enumerate(target):
        hit = np.nonzero(sv[:, k] > 0.5 * s)[0]
        out.append(f"{t.times()[hit[0]]:.3g}" if hit.size else "-")
    return ",".join(out)


def measure(t: Target, rtol: float) -> dict[str, float | str]:
    ref = reference(t)
    rtol = t.rtol or rtol
    ds = _run(t, "rosenbrock", rtol, t.loss_tol, t.max_steps)
    loss = ds["loss"].values.ravel()
    final_ratio = (loss[np.isfinite(loss)][-1] - t.problem.loss_min) / (loss[0] - t.problem.loss_min)
    drift_w, drift_d0 = _drift(ds, t)
    return {
        "target": t.name, "rtol": rtol, "run_s": ds.attrs["run_time"], "compile_s": ds.attrs["compile_time"],
        "steps": int(ds["num_steps"].values.ravel()[0]), "rejected": int(ds["num_rejected"].values.ravel()[0]),
        "status": int(ds["status"].values.ravel()[0]), "t_final": float(ds["t_final"].values.ravel()[0]),
        "loss_ratio": float(final_ratio), "rel_err": _relative_error(ds, ref, t.times()),
        "ref": "none" if ref is None else ("self" if t.reference == "rosenbrock" else t.reference),
        "drift_w": drift_w, "drift_d0": drift_d0, "peak": _peak(ds, t), "stages": _stages(ds, t),
    }  # fmt: skip


COLUMNS = ("target", "rtol", "run_s", "compile_s", "steps", "rejected", "status", "t_final", "loss_ratio", "rel_err",
           "ref", "drift_w", "drift_d0", "peak", "stages")  # fmt: skip


def _cell(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def run(
    out_dir: Path, rtol: float = 1e-7, only: Sequence[str] | None = None, chosen: Sequence[Target] | None = None,
    name: str = "targets.md",
) -> Path:  # fmt: skip
    """Measure the chosen targets (`chosen`, else those of `targets()` named in `only`, else all) and write `name`
    under `out_dir`, one row per target as it finishes (a long run leaves what it measured). Returns its path."""
    if chosen is None:
        chosen = [t for t in targets() if only is None or t.name in only]
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / name
    lines = [
        f"# Stiff-path targets (method rosenbrock, rtol {rtol:g} unless the row says otherwise, atol 1e-3 rtol)", "",
        "run_s/compile_s: solver wall time and compilation; loss_ratio: (l - l*)/(l0 - l*) at the end; rel_err: max "
        "relative error of W against the reference (ref; 'self' = rosenbrock at rtol 1e-10); drift_w, drift_d0: "
        "balancedness drift over max_j |W_j|^2 and max_j |D_j(0)| (nan: end-to-end, balanced by construction); "
        "peak: max over the run of sigma_1 over the target's sigma_1; stages: times at which sigma_k first exceeds "
        "half the target's sigma_k (t, or tau = N t end-to-end).", "",
        "| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS),
    ]  # fmt: skip
    for t in chosen:
        row = measure(t, rtol)
        lines.append("| " + " | ".join(_cell(row[c]) for c in COLUMNS) + " |")
        path.write_text("\n".join(lines) + "\n")
        print(lines[-1], flush=True)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rtol", type=float, default=1e-7)
    parser.add_argument("--only", default=",".join(t.name for t in targets()))
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--refs-only", action="store_true", help="build the cached references and stop")
    parser.add_argument("--masks", default=None, help="instead: d8_e2e on these mask seeds (e.g. 0,1,2,3,4,5)")
    parser.add_argument("--steps", type=int, default=30_000, help="step budget of each --masks run")
    opts = parser.parse_args()
    if opts.masks is not None:
        chosen = mask_targets([int(s) for s in opts.masks.split(",")], opts.steps)
        print(f"wrote {run(opts.out, opts.rtol, chosen=chosen, name='masks.md')}")
        return
    only = opts.only.split(",")
    if opts.refs_only:
        for t in targets():
            if t.name in only:
                print(t.name, "reference:", reference(t) is not None, flush=True)
        return
    print(f"wrote {run(opts.out, opts.rtol, only)}")


if __name__ == "__main__":
    main()
