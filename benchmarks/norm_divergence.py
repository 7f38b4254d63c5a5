"""The third stage of the `d8_e2e` target, checked by an integrator that shares nothing with singular coordinates.

On the `d10` completion (10×10, rank 3, 60 observed entries, seed 0) at depth 8 from a small balanced init, the
third escape does not settle at the target's third singular value: the escaping mode's σ runs past the target's
σ₁ = 9.04 to ~10⁵ within ~10⁶ units of τ, while the loss falls to ≈ 5.6e-4 ℓ₀ and stays there. This script finds
that escape with ``method="rosenbrock"`` on ``flow="end_to_end"`` (U, ln σ, V), then integrates the per-layer flow
(`recover_layers` of the saved W, diffrax dopri8, rtol 1e-11, plain time t = Δτ/8) from the first save where the
escaping mode is resolved in the entries of W (σ₃ ≥ 1e-3), and compares the two at every later save.

σ(0) = 1e-16 rather than the target's 1e-24 puts the third escape at τ ≈ 2.5e12 instead of 2.5e18; the stages are
the same. The escape is located by successive runs on finer save grids (each stops at the end of its grid).

Usage: ``python -m benchmarks.norm_divergence [--out benchmarks/results] [--steps 30000]`` (about 4 min; writes
norm_divergence.md; ``--steps 600000`` follows the divergence to τ − τ₀ ≈ 3e10 in about 13 min more).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import dlnode as dln
from dlnode.flows.endtoend import recover_layers

from .stiff_targets import d10_completion

DEPTH, SCALE, RTOL = 8, 1e-16, 1e-7
RESOLVED = 1e-3  # σ₃ from which the per-layer run starts: 1e-3/9 relative to σ₁, far above round-off of W
SPACING = 250.0  # τ between the compared saves (the escape takes ~10³ τ)
COMPARED = 14  # saves after the start
REF_RTOL = 1e-11
CONTINUE_STEPS = 30_000


def _run(problem: dln.Problem, saves: np.ndarray, max_steps: int = 50_000):
    return dln.integrate(
        problem, depth=DEPTH, init="balanced", scale=SCALE, scale_of="product", seed=0, method="rosenbrock",
        flow="end_to_end",
        rtol=RTOL, atol=RTOL * 1e-3, t1=float(saves[-1]), saveat=saves, progress=False, max_steps=max_steps,
    )  # fmt: skip


def _singular_values(ds, n: int) -> np.ndarray:
    return ds["singular_values"].values.reshape(n, -1)


def locate(problem: dln.Problem) -> tuple[np.ndarray, object]:
    """A save grid of `COMPARED` + 1 times `SPACING` apart starting at the first save with σ₃ ≥ `RESOLVED`, and
    the singular-path run on it."""
    saves = np.concatenate([[0.0], np.logspace(0, 27, 201)])
    while True:
        ds = _run(problem, saves, max_steps=20_000)  # the first run stalls in the divergence, past the escape
        sv = _singular_values(ds, len(saves))
        hit = np.nonzero(sv[:, 2] >= RESOLVED)[0]
        if hit.size:
            lo, hi = saves[hit[0] - 1], saves[hit[0]]
        else:  # the run stopped between two saves, after the escape: bracket it by its last save and its end
            t_final = float(ds["t_final"].values.ravel()[0])
            layers = ds["weights_final"].values.reshape(DEPTH, *problem.w_star.shape)
            if np.linalg.norm(np.linalg.multi_dot(layers[::-1]), 2) < 2 * np.linalg.norm(problem.w_star, 2):
                raise RuntimeError(f"no third escape by τ = {t_final:.3g}")
            lo, hi = saves[np.isfinite(sv[:, 2])][-1], t_final
        if hi - lo <= SPACING:
            break
        saves = np.concatenate([[0.0], np.linspace(lo, hi, 101)])
    saves = np.concatenate([[0.0], hi + SPACING * np.arange(COMPARED + 1)])
    return saves, _run(problem, saves)


def compare(out_dir: Path, continue_steps: int = CONTINUE_STEPS) -> Path:
    problem = d10_completion()
    start = time.perf_counter()
    saves, ds = locate(problem)
    located = time.perf_counter() - start
    n = len(saves)
    products = ds["product"].values.reshape(n, *problem.w_star.shape)
    sv, loss = _singular_values(ds, n), ds["loss"].values.ravel()
    layers = recover_layers(products[1], DEPTH)
    ts = (saves[1:] - saves[1]) / DEPTH
    ref = dln.integrate(
        problem, depth=DEPTH, init=lambda shapes, scale, rng: layers, scale=1.0, method="dopri8", rtol=REF_RTOL,
        atol=REF_RTOL * 1e-3, t1=float(ts[-1]), saveat=ts, progress=False, max_steps=5_000_000,
    )  # fmt: skip
    ref_products = ref["product"].values.reshape(len(ts), *problem.w_star.shape)
    ref_sv, ref_loss = _singular_values(ref, len(ts)), ref["loss"].values.ravel()
    target = np.linalg.svd(problem.w_star, compute_uv=False)[:3]
    lines = [
        "# Norm divergence in the third stage (`d10` completion, depth 8, balanced σ(0) = 1e-16)", "",
        f"Singular path: rosenbrock on flow end_to_end, rtol {RTOL:g} (escape located in {located:.0f} s). Check: "
        f"per-layer dopri8, rtol {REF_RTOL:g}, from the singular path's W at τ₀ = {saves[1]:.12g} "
        f"({float(ref.attrs['run_time']):.1f} s, status {int(ref['status'].values.ravel()[0])}). Target σ: "
        + ", ".join(f"{s:.4g}" for s in target) + ". ℓ/ℓ₀: loss over the initial loss.", "",
        "| τ − τ₀ | ℓ/ℓ₀ singular | σ₁ σ₂ σ₃ singular | ℓ/ℓ₀ per-layer | σ₁ σ₂ σ₃ per-layer | rel. error of W |",
        "| ---: | ---: | --- | ---: | --- | ---: |",
    ]  # fmt: skip
    errors = []
    for k in range(len(ts)):
        err = np.linalg.norm(ref_products[k] - products[k + 1]) / np.linalg.norm(products[k + 1])
        errors.append(err)
        lines.append(
            f"| {saves[k + 1] - saves[1]:.0f} | {loss[k + 1] / loss[0]:.5e} | "
            + " ".join(f"{s:.5g}" for s in sv[k + 1, :3])
            + f" | {ref_loss[k] / loss[0]:.5e} | "
            + " ".join(f"{s:.5g}" for s in ref_sv[k, :3])
            + f" | {err:.2e} |"
        )
    lines += ["", f"Largest relative error of W: {max(errors):.2e}; σ₁ at the end {sv[-1, 0]:.4g} "
              f"(singular) and {ref_sv[-1, 0]:.4g} (per-layer), against the target's {target[0]:.4g}."]  # fmt: skip
    # the singular path alone, further on (no explicit integrator can follow: the sharpness grows like σ₁^{2−2/N})
    later = np.concatenate([[0.0], saves[1] + np.logspace(4, 15, 12)])
    cont = _run(problem, later, max_steps=continue_steps)
    cont_sv, cont_loss = _singular_values(cont, len(later)), cont["loss"].values.ravel()
    reached = [k for k in range(1, len(later)) if np.isfinite(cont_loss[k])]
    lines += ["", f"Further on, the singular path alone (at most {continue_steps} step attempts, "
              f"{float(cont.attrs['run_time']):.0f} s): "
              + "; ".join(f"τ − τ₀ = {later[k] - saves[1]:.0e}: σ₁ = {cont_sv[k, 0]:.4g}, σ₄ = {cont_sv[k, 3]:.4g}, "
                          f"ℓ/ℓ₀ = {cont_loss[k] / cont_loss[0]:.5e}" for k in reached) + "."]  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "norm_divergence.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument(
        "--steps",
        type=int,
        default=CONTINUE_STEPS,
        help="step attempts of the singular path past the escape (600000: ~13 min, to τ − τ₀ ≈ 3e10)",
    )
    opts = parser.parse_args()
    path = compare(opts.out, opts.steps)
    print(path.read_text())


if __name__ == "__main__":
    main()
