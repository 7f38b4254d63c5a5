"""Sweep configuration: a TOML file read with `tomllib`, validated with pydantic, with one-line errors.

A config has four tables::

    [problem]      kind = "matrix_completion", shape = [20, 20], rank = 3, observed = 200, seed = 0
    [grid]         depth = [1, 2, 3], init = ["gaussian"], scale = [0.1, 0.01], seed = [0, 1, 2, 3],
                   method = ["tsit5"], flow = ["layers"], lr = [], batch = [], noise = []
                   (each a list or a single value)
    [integrate]    t1 = 100.0, saveat = 100, rtol, atol, width, save_weights, loss_tol, max_steps,
                   scale_of = "layer", sharpness, network, sampling, paths, dt, norm_limit
                   (with [grid], every argument of `dlnode.integrate` but the problem and the progress bar)
    [execution]    batch = "auto"   (cells per Dask task, vmapped together)

Every cell of the grid shares one time axis, so the config defines it alone: ``integrate.t1`` with ``saveat`` a
count (t = 0 plus that many log-spaced times ending at t1, as `dlnode.integrate` lays them); ``saveat`` a count
without ``t1`` (until converged: the grid `dlnode.integrate` plans for the whole grid's depths and scales, up to
the slowest cell's horizon, each cell stopping when it converges); or ``saveat`` an explicit list of times (then
``t1`` may be left out: each run stops at its last save time or on convergence).
Likewise one ``rtol`` and ``atol`` hold for every cell: the config's, or `dlnode.integrate`'s defaults resolved once
over the whole grid (`dlnode.sweeps.store.Layout`).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import tomllib
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dlnode.data.schema import GRID_DIMS
from dlnode.errors import ArgumentError, DlnodeError
from dlnode.flows.diagonal import DIAGONAL_INITS
from dlnode.flows.flow import FLOWS
from dlnode.flows.scales import escape_estimate, plateau_scales, time_unit
from dlnode.problems.kinds import Factorization, MatrixCompletion, MatrixSensing, Problem, Regression, _low_rank_target
from dlnode.problems.network import INITS, check_init, layer_shapes
from dlnode.problems.sparse import SparseRegression
from dlnode.run.noise_rules import NETWORKS, plan_noise
from dlnode.run.plan import HORIZON_FACTOR, log_times, planned_times
from dlnode.run.rules import check_arguments, check_memory, check_sharpness
from dlnode.solvers import METHODS
from dlnode.solvers.gd import SDE_METHODS

__all__ = ["SweepConfig", "config_diff", "grid_layer_shapes", "load_config", "save_times"]

Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
PosInt = Annotated[int, Field(ge=1)]
Seed = Annotated[int, Field(ge=0, lt=2**63)]  # stored as an int64 coordinate
Shape = Annotated[list[PosInt], Field(min_length=2, max_length=2)]
GD_TIME_RTOL = 1e-9  # a GD save time is a whole number of steps when t/lr is this close to an integer


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class FactorizationConfig(_Table):
    """½‖W − M‖²_F with an explicit `matrix`, or a random rank-`rank` M of `shape` from `seed`."""

    kind: Literal["factorization"]
    shape: Shape | None = None
    rank: PosInt | None = None
    seed: Seed = 0
    matrix: list[list[Annotated[float, Field(allow_inf_nan=False)]]] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> FactorizationConfig:
        if (self.matrix is None) == (self.shape is None or self.rank is None):
            raise ValueError("give either matrix = [[...], ...] or shape = [rows, cols] with rank")
        if self.matrix is not None and (not self.matrix[0] or len({len(row) for row in self.matrix}) != 1):
            lengths = sorted({len(row) for row in self.matrix})
            raise ValueError(f"problem.matrix must be a rectangular list of rows of numbers (row lengths {lengths})")
        if wrong := _rank_beyond(self.shape, self.rank):
            raise ValueError(wrong)
        return self

    def build(self) -> Problem:
        if self.matrix is not None:
            return Factorization(np.asarray(self.matrix, dtype=np.float64))
        return Factorization(_low_rank_target(tuple(self.shape), self.rank, np.random.default_rng(self.seed)))


class RegressionConfig(_Table):
    """Whitened regression (Σ_xx = I) with target singular values `singular_values`; shape = [d_out, d_in]."""

    kind: Literal["regression"]
    singular_values: Annotated[list[Positive], Field(min_length=1)]
    shape: Shape
    seed: Seed = 0

    def build(self) -> Problem:
        return Regression.whitened(self.singular_values, d_in=self.shape[1], d_out=self.shape[0], seed=self.seed)


class MatrixCompletionConfig(_Table):
    """`MatrixCompletion.random`: `observed` a count of entries or a fraction in (0, 1]."""

    kind: Literal["matrix_completion"]
    shape: Shape
    rank: PosInt
    observed: PosInt | Annotated[float, Field(gt=0, le=1)]
    seed: Seed = 0
    normalize: bool = False

    @model_validator(mode="after")
    def _rank(self) -> MatrixCompletionConfig:
        if wrong := _rank_beyond(self.shape, self.rank):
            raise ValueError(wrong)
        return self

    def build(self) -> Problem:
        return MatrixCompletion.random(tuple(self.shape), self.rank, self.observed, self.seed, self.normalize)


class SparseRegressionConfig(_Table):
    """`SparseRegression.random`: Gaussian design of `n` samples in dimension `d`, a `sparsity`-sparse β* (k × d
    for `outputs` = k)."""

    kind: Literal["sparse_regression"]
    d: PosInt
    n: PosInt
    sparsity: PosInt
    noise: NonNegative = 0.0
    seed: Seed = 0
    signed: bool = False
    outputs: PosInt = 1

    @model_validator(mode="after")
    def _sparsity(self) -> SparseRegressionConfig:
        if self.sparsity > self.d:
            raise ValueError(f"sparsity must be at most d = {self.d}; got {self.sparsity}")
        return self

    def build(self) -> Problem:
        return SparseRegression.random(self.d, self.n, self.sparsity, self.noise, self.seed, self.signed,
                                       self.outputs)  # fmt: skip


class MatrixSensingConfig(_Table):
    """`MatrixSensing.random` with `measurements` Gaussian measurements."""

    kind: Literal["matrix_sensing"]
    shape: Shape
    rank: PosInt
    measurements: PosInt
    seed: Seed = 0

    @model_validator(mode="after")
    def _rank(self) -> MatrixSensingConfig:
        if wrong := _rank_beyond(self.shape, self.rank):
            raise ValueError(wrong)
        return self

    def build(self) -> Problem:
        return MatrixSensing.random(tuple(self.shape), self.rank, self.measurements, self.seed)


ProblemConfig = Annotated[
    FactorizationConfig | RegressionConfig | MatrixCompletionConfig | MatrixSensingConfig | SparseRegressionConfig,
    Field(discriminator="kind"),
]
PROBLEM_TABLES = {m.model_fields["kind"].annotation.__args__[0]: m for m in ProblemConfig.__origin__.__args__}


def _rank_beyond(shape: list[int] | None, rank: int | None) -> str | None:
    """What is wrong with a rank above what a matrix of `shape` can have (None when it is within)."""
    if shape is not None and rank is not None and rank > min(shape):
        return (
            f"problem.rank must be at most min(shape) = {min(shape)} (the rank of a {shape[0]} x {shape[1]} "
            f"matrix); got {rank}"
        )
    return None


OPTIONAL_AXES = ("lr", "batch", "noise")  # grid axes that may be empty: integrate's default (None) for every cell


def _listed(value: Any) -> Any:
    return value if isinstance(value, list) else [value]


class GridConfig(_Table):
    """The grid axes: every combination of their values is one cell."""

    depth: list[PosInt | Literal["inf"]]
    scale: list[Positive]
    seed: list[Seed] = [0]
    init: list[Literal[tuple(dict.fromkeys((*INITS, *DIAGONAL_INITS)))]] = ["gaussian"]  # type: ignore[valid-type]
    method: list[Literal[("auto", *sorted(METHODS))]] = ["auto"]  # type: ignore[valid-type]
    flow: list[Literal[FLOWS]] = ["layers"]  # type: ignore[valid-type]
    lr: list[Positive] = []
    batch: list[PosInt] = []  # the stochastic methods' minibatch sizes (empty: integrate's default, the full batch)
    noise: list[NonNegative] = []  # their label noise δ (empty: none)

    @field_validator("*", mode="before")
    @classmethod
    def _as_list(cls, value: Any) -> Any:
        return _listed(value)

    @field_validator("*", mode="after")
    @classmethod
    def _distinct(cls, value: list, info: Any) -> list:
        if not value and info.field_name not in OPTIONAL_AXES:  # an empty axis is a grid of no cells
            raise ValueError("must hold at least one value")
        if len(set(value)) != len(value):  # by value: 1 and 1.0 are one scale
            raise ValueError("values must not repeat")
        return value


class IntegrateConfig(_Table):
    """The arguments of `dlnode.integrate` shared by every cell: together with the grid's axes, every argument of
    `dlnode.run.plan.Plan.build` but the problem (the [problem] table) and the progress bar (tests keep the two
    lists equal). The types here parse TOML; the rules are the plan's own (`_check_cells`)."""

    t1: Positive | None = None
    saveat: PosInt | Annotated[list[NonNegative], Field(min_length=1)] = 200
    rtol: Positive | None = None  # None: integrate's default over the whole grid, one value for every cell
    atol: Positive | None = None
    width: PosInt | None = None
    save_weights: bool = False
    loss_tol: Positive | None = None
    max_steps: PosInt | None = None
    scale_of: Literal["layer", "product"] = "layer"
    sharpness: Annotated[int, Field(ge=0)] = 0
    network: Literal[NETWORKS] = "dense"  # type: ignore[valid-type]
    sampling: str = "epochs"
    paths: PosInt | Annotated[list[Seed], Field(min_length=1)] | None = None  # a count, or the noise seeds
    dt: Positive | None = None
    norm_limit: Annotated[float, Field(gt=1)] = 1e3  # inf (TOML: inf) turns the norm-runaway stop off

    def arguments(self) -> dict[str, Any]:
        """These fields as `dlnode.integrate`'s keyword arguments (`saveat` aside: a sweep passes its times)."""
        return {name: getattr(self, name) for name in type(self).model_fields if name != "saveat"}

    def path_seeds(self) -> list[int] | None:
        """The noise seeds of the ``path`` dim (None: a deterministic method, no such dim)."""
        if self.paths is None:
            return None
        return list(range(self.paths)) if isinstance(self.paths, int) else list(self.paths)


class ExecutionConfig(_Table):
    """How cells become Dask tasks: `batch` cells of one shape per task, vmapped ("auto": by the state size; the stiff
    paths run a task's cells one after another, `SteppingMethod.one_cell_at_a_time`)."""

    batch: PosInt | Literal["auto"] = "auto"


class SweepConfig(_Table):
    """A validated sweep config (see the module docstring)."""

    problem: ProblemConfig
    grid: GridConfig
    integrate: IntegrateConfig = IntegrateConfig()
    execution: ExecutionConfig = ExecutionConfig()

    def canonical(self) -> str:
        """The config as sorted JSON, `execution` left out: what the store records and compares on a re-run (how
        cells are cut into tasks changes no cell; a re-run cuts its tasks by the store's chunks)."""
        return json.dumps(self.model_dump(mode="json", exclude={"execution"}), sort_keys=True)

    def depths(self) -> list[float]:
        return [math.inf if d == "inf" else float(d) for d in self.grid.depth]


def load_config(source: SweepConfig | dict | str | os.PathLike) -> SweepConfig:
    """A `SweepConfig` from a TOML file path, a dict of tables, or a config; one-line ValueError on bad input."""
    if isinstance(source, SweepConfig):
        return source
    if isinstance(source, (str, os.PathLike)):
        try:
            with open(source, "rb") as f:
                source = tomllib.load(f)
        except FileNotFoundError:
            raise _refused(f"config file does not exist: {os.fspath(source)!r}") from None
        except IsADirectoryError:
            raise _refused(f"config file {os.fspath(source)!r} is a directory; pass the TOML file itself") from None
        except UnicodeDecodeError:
            raise _refused(f"config file {os.fspath(source)!r} is not text (not UTF-8: a binary file?); pass a TOML "
                           "file (docs/sweeps.md)") from None  # fmt: skip
        except tomllib.TOMLDecodeError as exc:
            raise _refused(f"config file {os.fspath(source)!r} is not valid TOML: {exc}") from None
        except OSError as exc:
            raise _refused(f"config file {os.fspath(source)!r} cannot be read: {exc.strerror or exc}") from None
    if not isinstance(source, dict):
        raise _refused(f"config must be a TOML path, a dict or a SweepConfig; got {type(source).__name__}")
    try:
        config = SweepConfig.model_validate(source)
    except ValidationError as exc:
        raise _refused(_one_line(exc)) from None
    _check_cells(config)
    return config


def _key(loc: tuple) -> str:
    """'grid.scale[0]' from pydantic's location, without the union members it tried ('constrained-int', …)."""
    known = {name for model in (SweepConfig, GridConfig, IntegrateConfig, ExecutionConfig, *PROBLEM_TABLES.values())
             for name in model.model_fields}  # fmt: skip
    names = [p for p in loc if isinstance(p, str) and p in known]
    return ".".join(names) + "".join(f"[{p}]" for p in loc if isinstance(p, int))


def _one_line(exc: ValidationError) -> str:
    """The first error as 'config key K: rule; got V' (with the allowed keys or values where there are some)."""
    errors = exc.errors()
    err, key = errors[0], _key(errors[0]["loc"])
    same = [e for e in errors if _key(e["loc"]) == key]  # one per member of a union type (e.g. int | "inf")
    others = len({_key(e["loc"]) for e in errors}) - 1
    more = f" (and {others} more)" if others else ""
    if err["type"] == "extra_forbidden":
        key = ".".join(filter(None, (_key(err["loc"][:-1]), str(err["loc"][-1]))))
        allowed = sorted(_table_model(err["loc"][:-1]).model_fields)
        return f"config key {key!r} is not known; allowed keys here: {', '.join(allowed)}{more}"
    if err["type"] == "union_tag_invalid":
        tags = ", ".join(repr(t) for t in PROBLEM_TABLES)
        return f"config key 'problem.kind' must be one of {tags}; got {err['ctx']['tag']!r}"
    if err["type"] == "missing":
        return f"config key {key!r} is required{more}"
    rules = dict.fromkeys(e["msg"].removeprefix("Value error, ") for e in same)
    message = " or ".join(rules) if len(rules) > 1 else next(iter(rules))
    got = err.get("input")
    if isinstance(got, dict):
        return f"config table {key!r}: {message}{more}"
    return f"config key {key!r}: {message}; got {got!r}{more}"


def _table_model(loc: tuple) -> type[BaseModel]:
    tables = {"grid": GridConfig, "integrate": IntegrateConfig, "execution": ExecutionConfig}
    if not loc:
        return SweepConfig
    if loc[0] == "problem":
        return PROBLEM_TABLES.get(loc[1], FactorizationConfig) if len(loc) > 1 else SweepConfig
    return tables.get(loc[0], SweepConfig)


def _check_cells(config: SweepConfig) -> None:
    """Rules that span tables: every grid cell must be a valid `integrate` call (the rules `Plan.build` applies:
    `dlnode.run.rules`, `dlnode.run.noise_rules`, said with their own message), and all share one time axis."""
    grid, run = config.grid, config.integrate
    saveat = np.asarray(run.saveat, dtype=np.float64) if isinstance(run.saveat, list) else run.saveat
    problem = config.problem.build()
    axes = (grid.flow, grid.init, grid.method, grid.lr or [None], grid.batch or [None], grid.noise or [None])
    for cell in itertools.product(*axes):
        _check_cell(config.depths(), dict(zip(GRID_DIMS, cell, strict=True)), run, saveat, problem)
    if isinstance(run.saveat, list):
        ts = np.asarray(run.saveat)
        if np.any(np.diff(ts) <= 0):
            raise _refused(f"config key 'integrate.saveat' must be strictly increasing; got {run.saveat[:6]}")
    steps = fixed_steps(config)
    if steps and isinstance(run.saveat, list):
        for step in steps:
            counts = np.asarray(run.saveat) / step
            if not np.allclose(counts, np.rint(counts), rtol=GD_TIME_RTOL, atol=0):
                raise _refused(f"config key 'integrate.saveat': every time must be a whole number of steps "
                               f"(t = k step) for the step {step}; got {run.saveat[:6]}")  # fmt: skip
    if steps:
        top = max(steps)
        for step in steps:
            if not math.isclose(top / step, round(top / step), rel_tol=GD_TIME_RTOL):
                key = "integrate.dt" if step == run.dt else "grid.lr"
                raise _refused(f"config key {key!r}: every step (lr, or dt of an SDE method) must divide the "
                               f"largest ({top}) so that all fixed-step runs share the save times; "
                               f"got {step}")  # fmt: skip
    _check_task_memory(config)


TASK_CELLS = 16  # the most cells one task holds (batch = "auto" picks at most this many)


def _check_task_memory(config: SweepConfig) -> None:
    """One task (one depth, up to a batch of cells) must fit in memory with the sweep's time axis and weights:
    checked before the time axis itself is laid out (a count of 10**9 save times is 7.45 GiB alone)."""
    run = config.integrate
    cells = config.execution.batch if isinstance(config.execution.batch, int) else TASK_CELLS
    paths = run.paths if isinstance(run.paths, int) else len(run.paths or [0])  # a task runs every path of its cells
    cells = min(cells, len(config.grid.scale) * len(config.grid.seed)) * paths
    saveat = run.saveat if isinstance(run.saveat, int) else np.zeros(len(run.saveat))
    try:
        check_memory(config.problem.build(), [max(config.depths())], run.width, cells, saveat, run.save_weights,
                     run.t1 is None, paths=paths)  # fmt: skip
    except DlnodeError as exc:
        key = {"width": "integrate.width", "save_weights": "integrate.save_weights", "paths": "integrate.paths"}.get(
            exc.argument, "integrate.saveat"
        )
        raise _refused(f"config key {key!r}: {exc}".replace(f"{exc.argument} ", "", 1)) from None


def _check_cell(depths: list[float], axes: dict[str, Any], run: IntegrateConfig, saveat: Any,
                problem: Problem) -> None:  # fmt: skip
    """One combination of the grid axes (`GRID_DIMS` → value), through the rules every `integrate` call obeys."""
    flow, init, method, lr = axes["flow"], axes["init"], axes["method"], axes["lr"]
    try:
        if run.network == "dense":  # a diagonal network's inits are its own (`plan_noise` checks them)
            check_init(init)
        plan_noise(problem, method, flow, run.network, init, depths, lr, run.t1, axes["batch"], axes["noise"],
                   run.sampling, run.paths, run.dt, run.width)  # fmt: skip
        check_arguments(depths, init, flow, method, lr, run.t1, saveat, run.scale_of, type(problem))
        check_sharpness(run.sharpness, problem, depths, run.width, flow, run.network)
    except DlnodeError as exc:
        cell = ", ".join(f"{k}={v!r}" for k, v in axes.items() if v is not None)
        raise _refused(
            f"config key {CONFIG_KEYS.get(exc.argument, 'grid')!r}, in the cells {cell}: {exc}; every combination "
            "of the grid axes must be a valid dlnode.integrate call (split the sweep where it is not)"
        ) from None


# where each argument of integrate lives in a config
CONFIG_KEYS = {"depth": "grid.depth", "problem": "problem.kind"} | {name: f"grid.{name}" for name in GRID_DIMS} | {
    name: f"integrate.{name}" for name in IntegrateConfig.model_fields
}  # fmt: skip


def _refused(text: str) -> ArgumentError:
    return ArgumentError("config", "", None, "", text=text)


def save_times(config: SweepConfig, problem: Problem) -> np.ndarray:
    """The sweep's time axis, from the config alone (t = 0 first).

    A count `saveat` gives the log-spaced grid of `dlnode.integrate` ending at t1; for the fixed-step methods the
    times are rounded to whole steps of the largest step (which every step divides: `fixed_steps`), never past
    t1, duplicates removed.
    """
    run = config.integrate
    if isinstance(run.saveat, int) and run.t1 is None:
        ts = until_converged_times(config, problem)
    elif isinstance(run.saveat, int):
        ts = log_times(run.saveat, run.t1, time_unit(problem))
    else:
        ts = np.asarray(run.saveat, dtype=np.float64)
    if ts[0] > 0:
        ts = np.concatenate([[0.0], ts])
    if fixed_steps(config) and isinstance(run.saveat, int):
        top = max(fixed_steps(config))
        end = run.t1 if run.t1 is not None else float(ts[-1])
        last = math.floor(end / top * (1 + GD_TIME_RTOL))  # the last whole step at or before t1
        ts = np.unique(np.minimum(np.rint(ts / top), last)) * top
    return ts


def fixed_steps(config: SweepConfig) -> list[float]:
    """The steps of the grid's fixed-step cells (t = k·step): lr for gd, sgd and label_noise; dt (else lr) for
    the SDE methods. Empty when no cell takes fixed steps."""
    grid, dt = config.grid, config.integrate.dt
    steps: list[float] = []
    for method in grid.method:
        if method in METHODS and METHODS[method].needs_lr:
            steps += [dt] if method in SDE_METHODS and dt is not None else list(grid.lr)
    return sorted(set(steps))


def until_converged_times(config: SweepConfig, problem: Problem) -> np.ndarray:
    """The time axis of a sweep that runs until converged (``t1`` left out, ``saveat`` a count): the grid
    `dlnode.integrate` plans for one call over every depth and scale of the grid (each flow's escape estimates;
    `saveat` times per `GRID_DECADES` decades up to `HORIZON_FACTOR` times the slowest escape; a residual init's
    product read as of size 1, `plateau_scales`). Each cell stops when it converges (holding its final state after)
    or says NOT_CONVERGED at the end of the axis."""
    depths, scales, scale_of = config.depths(), list(config.grid.scale), config.integrate.scale_of
    starts = [plateau_scales(init, scales, scale_of) for init in config.grid.init]
    slowest = max(escape_estimate(problem, depths, s, f, of) for f in config.grid.flow for s, of in starts)
    fastest = min(escape_estimate(problem, depths, s, f, of, slowest=False) for f in config.grid.flow
                  for s, of in starts)  # fmt: skip
    return planned_times(config.integrate.saveat, slowest, HORIZON_FACTOR * slowest, fastest)


def grid_layer_shapes(config: SweepConfig, problem: Problem) -> dict[float, list[tuple[int, int]]]:
    """The (out, in) shape of each layer at every depth of the grid; depth ∞ carries W alone: [(d_out, d_in)]."""
    return {d: [(problem.d_out, problem.d_in)] if math.isinf(d)
            else layer_shapes(int(d), problem.d_in, problem.d_out, config.integrate.width)
            for d in config.depths()}  # fmt: skip


def layer_extent(config: SweepConfig, problem: Problem) -> tuple[int, int, int]:
    """(layers, out, in) of the padded per-layer weights over every finite depth of the grid (1, d_out, d_in at ∞;
    2, d_out, d_in for a diagonal network's u and v)."""
    if config.integrate.network == "diagonal":  # the two factors u, v, each of β's shape
        return 2, problem.d_out, problem.d_in
    finite = [s for d, s in grid_layer_shapes(config, problem).items() if not math.isinf(d)]
    if not finite:
        return 1, problem.d_out, problem.d_in
    shapes = [s for per_depth in finite for s in per_depth]
    return max(map(len, finite)), max(s[0] for s in shapes), max(s[1] for s in shapes)


def config_diff(stored: str, current: str) -> list[str]:
    """Dotted keys whose values differ between two canonical config JSON strings."""

    def flat(tree: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(tree, dict):
            out: dict[str, Any] = {}
            for k, v in tree.items():
                out.update(flat(v, f"{prefix}{k}."))
            return out
        return {prefix.rstrip("."): tree}

    a, b = flat(json.loads(stored)), flat(json.loads(current))
    return sorted(k for k in a.keys() | b.keys() if a.get(k, "<absent>") != b.get(k, "<absent>"))
