"""The cao2022 study beyond its rank sweep: gradient descent beside the flow, near-equal singular values, and a mode
below the stage detector's cut (docs/stages.md has the closed forms).

- GD against the flow: the rank-R factorisation trained by discrete gradient descent (their setting: discrete
  gradient dynamics with a small step) on a save grid of multiples of every lr, and by the flow at tight
  tolerances on the same grid. Explicit Euler is first order, so each stage's end differs from the flow's by
  c·lr + O(lr²): the fitted slope of ln |Δt| against ln lr must be 1 (within GD_SLOPE_ATOL).
- Near-equal singular values s₂/s₁ = ρ: a depth-2 network from the decoupled initialisation u₀ on
  M = diag(1, ρ, 0). Mode k's rise is the logistic u(t) = s e^{2st}/(e^{2st} − 1 + s/u₀); it passes the fraction f
  of s at t_f(s) = ln(f/(1 − f)·(s/u₀ − 1))/(2s). The detector merges two rises whose central halves overlap, so
  it must report two stages exactly when t_{1/4}(ρ) > t_{3/4}(1), one otherwise; the margin between them decides
  only when it exceeds the save grid's cell there.
- A mode below the cut: M = diag(1, c, 0) with c = 3 % < 5 % (`learned`): the mode is learned (its final σ is c)
  but has no escape, so the detector reports one stage; with learned = c/3 it reports two, at the closed form.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

import dlnode as dln

from ._common import row

GD_SLOPE_ATOL = 0.1  # fitted order of the GD-vs-flow stage-time gap in lr (first order: 1); O(lr) at these lr
FLOW_RTOL, FLOW_ATOL = 1e-10, 1e-13  # the flow reference on GD's grid: far below the O(lr) gaps (≥ 1e-3)
GRID_STEPS = 2000  # save points of the GD comparison, spread over twice the flow's last escape, plus
WINDOW = 0.03  # every multiple of the smallest lr within 3 % of each stage end (the O(lr) shifts are below 1 %)
LEARNED_RTOL = 0.05  # a mode below the cut counts as learned within 5 % of its target: the loss criterion (1e-8 of
# ℓ₀) bounds |σ₂ − c| by ≈ √(2e-8 ℓ₀) ≈ 1e-4, 1 % of a 1 % mode
CUT = 0.05  # the detector's default `learned`: modes below 5 % of σ_1 make no stage


def rise_time(s: np.ndarray | float, u0: float, fraction: float) -> np.ndarray:
    """t_f: a balanced decoupled depth-2 mode of strength s from u₀ reaches the fraction f of s (½-loss)."""
    s = np.asarray(s, dtype=float)
    return np.log(fraction / (1 - fraction) * (s / u0 - 1)) / (2 * s)


def _diag(values: list[float], dim: int) -> dln.Factorization:
    m = np.zeros((dim, dim))
    m[np.arange(len(values)), np.arange(len(values))] = values
    return dln.Factorization(m)


def _grid(ends: np.ndarray, base: float) -> np.ndarray:
    """Multiples of `base` up to twice the last stage end: GRID_STEPS of them, and every one within WINDOW of
    each end, so that the O(lr) shifts of a crossing are resolved where the detector interpolates it."""
    ends = ends[np.isfinite(ends)]
    last = int(np.ceil(2 * ends.max() / base))
    step = max(1, last // GRID_STEPS)
    fine = [np.arange(int(e * (1 - WINDOW) / base), int(np.ceil(e * (1 + WINDOW) / base)) + 1) for e in ends]
    return base * np.unique(np.concatenate([np.arange(0, last + step, step), *fine]))


def gd_vs_flow(config: dict, target) -> xr.Dataset:  # noqa: ANN001
    """Stage ends of GD at each lr and of the flow on the same grid, for the rank ``gd_rank`` target."""
    lrs = sorted(config["gd_lr"])
    base = lrs[0]
    if not all(np.isclose(lr / base, round(lr / base)) for lr in lrs):
        raise ValueError(f"gd_lr must be integer multiples of the smallest, so one grid holds every step; got {lrs}")
    prob, scale = target(config["gd_rank"], config["dim"]), config["gd_scale"]
    cells = []
    for depth in config["gd_depth"]:
        first = dln.integrate(prob, depth=depth, scale=scale, seed=0, progress=False)
        grid = _grid(dln.stages(first)["end"].values, base)
        kw = {"depth": depth, "scale": scale, "seed": 0, "progress": False, "saveat": grid, "t1": float(grid[-1])}
        flow = dln.integrate(prob, rtol=FLOW_RTOL, atol=FLOW_ATOL, **kw)
        runs = [dln.integrate(prob, method="gd", lr=lr, **kw) for lr in lrs]
        found = [dln.stages(ds).isel(depth=0, scale=0, seed=0, drop=True) for ds in [flow, *runs]]
        cells.append(xr.Dataset({
            "gd_end": (("gd_lr", "gd_stage"), np.stack([f["end"].values for f in found[1:]])),
            "gd_stages": ("gd_lr", [int(f["num_stages"]) for f in found[1:]]),
            "gd_finite": ("gd_lr", [bool(np.isfinite(ds["loss"]).all()) for ds in runs]),
            "flow_end": ("gd_stage", found[0]["end"].values),
            "flow_stages": int(found[0]["num_stages"]),
        }, coords={"gd_lr": lrs, "gd_stage": np.arange(1, found[0].sizes["stage"] + 1)}))  # fmt: skip
    out = xr.concat(cells, xr.DataArray(config["gd_depth"], dims="gd_depth"))
    return out.assign_attrs(gd_rank=config["gd_rank"], gd_scale=scale)


def _two_modes(config: dict, ratio: float) -> xr.Dataset:
    """M = diag(1, ρ, 0) at depth 2 from the decoupled u₀ of every ``close_u0`` (one call, one compiled shape),
    seen on every ``close_thin``-th point of its save grid (1: all of it)."""
    scales = [float(np.sqrt(u)) for u in config["close_u0"]]
    ds = dln.integrate(_diag([1.0, ratio], 3), depth=2, init="decoupled", scale=scales,
                       saveat=config["close_saveat"], progress=False)  # fmt: skip
    ds = ds.isel(time=slice(None, None, config.get("close_thin", 1)))
    return ds.isel(depth=0, seed=0, drop=True).assign_coords(scale=config["close_u0"])


def close_values(config: dict) -> xr.Dataset:
    """Stages and escapes of M = diag(1, ρ, 0) at depth 2 from the decoupled u₀, per ρ and u₀."""
    cells = []
    for ratio in config["close_ratio"]:
        ds = _two_modes(config, ratio)
        esc = dln.escape_times(ds).isel(k=slice(0, 2))
        cells.append(xr.Dataset({
            "close_stages": dln.stages(ds)["num_stages"],
            "close_escape": esc.reset_coords(drop=True),
            "close_resolution": esc["resolution"].reset_coords(drop=True),
            "close_status": ds["status"],
        }).rename(scale="close_u0", k="mode"))  # fmt: skip
    return xr.concat(cells, xr.DataArray(config["close_ratio"], dims="close_ratio"))


def below_cut(config: dict) -> xr.Dataset:
    """M = diag(1, c, 0) at depth 2 from the decoupled u₀ = ``cut_u0`` (one of ``close_u0``): stages at the
    default cut and at learned = c/3."""
    u0, cells = config["cut_u0"], []
    for c in config["cut_ratio"]:
        ds = _two_modes(config | {"close_thin": 1}, c).sel(scale=u0, drop=True)
        low = dln.escape_times(ds, learned=c / 3).isel(k=slice(0, 2))
        cells.append(xr.Dataset({
            "cut_stages": dln.stages(ds)["num_stages"],
            "cut_stages_low": dln.stages(ds, learned=c / 3)["num_stages"],
            "cut_escape_low": low.reset_coords(drop=True).rename(k="mode"),
            "cut_resolution": low["resolution"].reset_coords(drop=True).rename(k="mode"),
            "cut_final": ds["singular_values"].isel(time=-1, k=1, drop=True),
            "cut_status": ds["status"],
        }))  # fmt: skip
    return xr.concat(cells, xr.DataArray(config["cut_ratio"], dims="cut_ratio")).assign_attrs(cut_u0=u0)


def completion_scale(config: dict, depth: int) -> float:
    """The per-layer init scale of the completion runs at `depth`: ``cmp_scale``, or its entry for `depth` when it
    maps depths to scales (depth 2 separates its stages only as ln(1/ε): it runs from a smaller ε)."""
    scale = config["cmp_scale"]
    return float(scale[depth]) if isinstance(scale, dict) else float(scale)


def completion(config: dict) -> xr.Dataset:
    """Deep matrix completion (Arora et al. 2019's instance, ``cmp_shape``, rank ``cmp_rank``, a fraction
    ``cmp_observed`` of the entries) by the flow and by GD at ``cmp_lr``, each depth from its own scale
    (`completion_scale`): stages, and the recovery error of M."""
    cells = []
    for seed in config["cmp_seed"]:
        prob = dln.MatrixCompletion.random(shape=tuple(config["cmp_shape"]), rank=config["cmp_rank"],
                                           observed=config["cmp_observed"], seed=seed)  # fmt: skip
        m = prob.target()
        runs = {"flow": {}, "gd": {"method": "gd", "lr": config["cmp_lr"]}}
        found = []
        for kw in (runs[name] for name in config["cmp_method"]):
            depths = []
            for depth in config["cmp_depth"]:
                ds = dln.integrate(prob, depth=depth, scale=completion_scale(config, depth), seed=0, progress=False,
                                   **kw)  # fmt: skip
                w = ds["product"].isel(time=-1).values
                error = np.linalg.norm(w - m, axis=(-2, -1)) / np.linalg.norm(m)
                depths.append(xr.Dataset({
                    "cmp_stages": (("depth", "scale", "seed"), dln.stages(ds)["num_stages"].values),
                    "cmp_error": (("depth", "scale", "seed"), error),
                    "cmp_status": ds["status"].reset_coords(drop=True),
                }).isel(scale=0, seed=0, drop=True).rename(depth="cmp_depth"))  # fmt: skip
            found.append(xr.concat(depths, "cmp_depth"))
        cells.append(xr.concat(found, xr.DataArray(config["cmp_method"], dims="cmp_method")))
    out = xr.concat(cells, xr.DataArray(config["cmp_seed"], dims="cmp_seed"))
    scales = [completion_scale(config, d) for d in config["cmp_depth"]]
    out["cmp_scale"] = ("cmp_depth", np.asarray(scales), {"long_name": "per-layer init scale", "units": "1"})
    return out.assign_attrs(cmp_rank=config["cmp_rank"], cmp_lr=config["cmp_lr"])


def completion_rows(ds: xr.Dataset) -> list[dict]:
    """Per depth: stages == R on every completion run that converged, and how many recovered M (to 1e-2)."""
    if "cmp_stages" not in ds:
        return []
    rank, lr, rows = int(ds.attrs["cmp_rank"]), float(ds.attrs["cmp_lr"]), []
    methods = ", ".join(f"GD lr {lr:g}" if m == "gd" else "flow" for m in ds["cmp_method"].values)
    for depth in ds["cmp_depth"].values:
        cell = ds.sel(cmp_depth=depth)
        done = (cell["cmp_status"] == dln.Status.CONVERGED).values
        recovered = int(((cell["cmp_error"] < 1e-2).values & done).sum())
        where = (f"over {cell.sizes['cmp_seed']} instance(s) x ({methods}); {int(done.sum())}/{done.size} converged, "
                 f"{recovered} recovered M to 1e-2")  # fmt: skip
        claim = f"completion, depth {int(depth)}, rank-{rank} matrix, eps {float(cell['cmp_scale']):g}: {rank} stages"
        rows.append(count_row(claim, cell["cmp_stages"].values[done], rank, where))
    return rows


def count_row(claim: str, found: np.ndarray, rank: int, where: str) -> dict:
    """Stages == R on every run in `found` (an empty selection tests nothing and fails)."""
    found = np.asarray(found).ravel()
    counts = sorted({int(v) for v in found})
    return row(claim, f"{rank} stage(s)", f"{counts} {where}" if found.size else "not tested",
               found.size > 0 and bool((found == rank).all()))  # fmt: skip


def gd_rows(ds: xr.Dataset) -> list[dict]:
    """GD's stage count, and its stage ends against the flow's: a gap of first order in lr."""
    rank = int(ds.attrs.get("gd_rank", 0))
    if "gd_end" not in ds:
        return [row("discrete GD: stages == R, stage ends = flow's + O(lr)", "R; O(lr)", "not tested", False)]
    ok = ds["gd_finite"].values
    where = f"over depths {ds['gd_depth'].values.tolist()}, lr = {ds['gd_lr'].values.tolist()}"
    rows = [count_row(f"discrete GD, rank-{rank} target: {rank} stages", ds["gd_stages"].values[ok], rank, where)]
    gap = np.abs(ds["gd_end"] - ds["flow_end"]).isel(gd_stage=slice(0, rank))
    lr = ds["gd_lr"].values.astype(float)
    for depth in ds["gd_depth"].values:
        g = gap.sel(gd_depth=depth).values  # (lr, stage)
        usable = np.all(np.isfinite(g) & (g > 0), axis=0)
        slopes = [float(np.polyfit(np.log(lr), np.log(g[:, m]), 1)[0]) for m in np.flatnonzero(usable)]
        enough = len(lr) >= 2 and len(slopes) == rank
        passed = enough and all(abs(p - 1) <= GD_SLOPE_ATOL for p in slopes)
        fitted = ", ".join(f"{p:.3f}" for p in slopes)
        ours = (f"d ln|t_GD - t_flow| / d ln lr = {fitted} (stages 1-{rank}); "
                f"|gap| <= {np.nanmax(g):.2g} at lr {lr.min():g}-{lr.max():g}") if enough else "not tested"  # fmt: skip
        rows.append(row(f"depth {int(depth)}: GD stage ends = flow's + O(lr)", "slope 1", ours, passed))
    return rows


def close_rows(ds: xr.Dataset) -> list[dict]:
    """Per ρ: the detector's count against the closed-form overlap rule, where the save grid can tell."""
    rows = []
    if "close_stages" not in ds:
        return [row("near-equal singular values: stages merge as the closed form says", "", "not tested", False)]
    for ratio in ds["close_ratio"].values:
        cell = ds.sel(close_ratio=ratio)
        s, parts, passed = np.array([1.0, float(ratio)]), [], True
        for u0 in cell["close_u0"].values:
            c = cell.sel(close_u0=u0)
            half = rise_time(s, u0, 0.5)
            margin = float(rise_time(s[1], u0, 0.25) - rise_time(s[0], u0, 0.75))  # > 0: two stages
            width = float(np.nanmax(c["close_resolution"].values * half))  # the grid's cell at the escapes
            got, want = int(c["close_stages"]), 2 if margin > 0 else 1
            timed = bool(np.all(np.abs(c["close_escape"].values - half) <= width))
            resolved = abs(margin) > width
            ok = resolved and got == want and timed and int(c["close_status"]) == dln.Status.CONVERGED
            passed &= ok
            parts.append(f"u0 {u0:.0e}: {got} (closed form {want}, margin {margin:+.2f} vs cell {width:.2f}"
                         + ("" if resolved else ", not resolvable on this grid")
                         + ("" if timed else ", escapes off the closed form") + ")")  # fmt: skip
        rows.append(row(f"s2/s1 = {ratio:g} (rank 2, depth 2): stages merge iff the rises overlap",
                        "1 or 2 stages: t_1/4(s2) > t_3/4(s1)", "; ".join(parts), passed))  # fmt: skip
    return rows


def cut_rows(ds: xr.Dataset) -> list[dict]:
    """A mode below 5 % of σ₁ is learned but makes no stage; a lower cut finds it at the closed-form time."""
    if "cut_stages" not in ds:
        return [row("a mode below the 5 % cut: learned, not counted", "", "not tested", False)]
    u0, rows = float(ds.attrs["cut_u0"]), []
    for c in ds["cut_ratio"].values:
        cell = ds.sel(cut_ratio=c)
        half = rise_time(np.array([1.0, float(c)]), u0, 0.5)
        width = cell["cut_resolution"].values * half
        learned = (
            abs(float(cell["cut_final"]) / c - 1) <= LEARNED_RTOL and int(cell["cut_status"]) == dln.Status.CONVERGED
        )
        timed = bool(np.all(np.abs(cell["cut_escape_low"].values - half) <= width))
        default, low = int(cell["cut_stages"]), int(cell["cut_stages_low"])
        escapes, closed = np.round(cell["cut_escape_low"].values, 2).tolist(), np.round(half, 2).tolist()
        rows.append(row(
            f"mode at {100 * c:g} % of s1 (cut {100 * CUT:g} %): learned, yet 1 stage; 2 with learned = {c / 3:.2g}",
            "rank 2: 2 stages", f"final sigma_2/c = {float(cell['cut_final']) / c:.4f}; {default} stage(s) at the "
            f"default cut, {low} at learned = {c / 3:.2g}, escapes {escapes} vs closed form {closed}",
            c < CUT and learned and default == 1 and low == 2 and timed,
        ))  # fmt: skip
    return rows
