"""The `dlnode` command: `demo` (the main job), `study` (one paper's result), `info` (a stored dataset or sweep
store), `plot` (its figures), `bench`, `run` (a sweep on Dask) and `export` (a sweep store to netCDF)."""

from __future__ import annotations

import importlib
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
import warnings
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from dlnode._version import __version__
from dlnode.data.outputs import check_figure_path
from dlnode.data.schema import STATUS_MEANINGS
from dlnode.data.storage import DATASET_SUFFIXES, atomic_path, check_output_path, is_dlnode_store
from dlnode.errors import DlnodeError
from dlnode.runtime.interrupts import quit_while_starting
from dlnode.solvers.core import Status
from dlnode.solvers.gd import FIXED_STEP

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Deep linear networks as dynamical systems.",
)


INTERRUPTED = 130  # the exit code of a command stopped by Ctrl-C (128 + SIGINT)
SIGINTS = [0]  # Ctrl-Cs seen during this command, even one whose KeyboardInterrupt Python swallowed
Overwrite = Annotated[bool, typer.Option("--overwrite", help="replace existing output files (dlnode's own only)")]


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def check_outputs(paths: dict[Path, tuple[str, ...]], overwrite: bool, option: str = "--out") -> None:
    """Check every output path (with its allowed suffixes) before any work: a bad one fails the command at once."""
    for path, suffixes in paths.items():
        if suffixes == tuple(DATASET_SUFFIXES):
            check_output_path(path, overwrite, suffixes, option, is_dlnode_store)
        else:
            check_figure_path(path, overwrite, suffixes, option)


def stop_if_interrupted(ds, out: Path | None) -> None:  # noqa: ANN001
    """A run stopped by Ctrl-C returns what it computed with status INTERRUPTED: say so and exit 130. So does a
    Ctrl-C that came while the run could not stop (its KeyboardInterrupt raised inside a garbage-collector
    callback, where Python ignores it): the finished result is kept, the rest of the command is not done."""
    status = ds["status"].values if ds is not None and "status" in ds else np.zeros(0)  # a study may hold none
    cells = int((np.asarray(status) == int(Status.INTERRUPTED)).sum())
    if cells or SIGINTS[0]:
        where = f"; the result so far was saved to {out}" if out is not None else ""
        what = f"{cells} run(s) stopped early" if cells else "the runs had finished"
        typer.echo(f"interrupted (Ctrl-C): {what}{where}", err=True)
        raise typer.Exit(code=INTERRUPTED)


def _count_sigint(signum: int, frame) -> None:  # noqa: ANN001, ARG001
    SIGINTS[0] += 1
    raise KeyboardInterrupt


def _unraisable(hook):  # noqa: ANN001, ANN202
    """sys.unraisablehook that drops a KeyboardInterrupt Python could not raise (it is counted in SIGINTS and
    stops the command at its next step) instead of printing its traceback; anything else goes to `hook`."""

    def quiet(unraisable) -> None:  # noqa: ANN001
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            hook(unraisable)

    return quiet


def write_figure(kind: str, ds, path: Path, overwrite: bool) -> None:  # noqa: ANN001
    """A figure written atomically: an interrupted or failed plot leaves no partial image."""
    from dlnode.analysis.plot import PLOTS  # matplotlib loads for the commands that draw, not for every command

    with atomic_path(path, "--out", replace=overwrite) as tmp:
        PLOTS[kind](ds, path=tmp)


def image_suffixes() -> tuple[str, ...]:
    from matplotlib.figure import Figure

    return tuple(f".{k}" for k in sorted(Figure().canvas.get_supported_filetypes()))


DEMO_STUDY = "arora2019"


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for data/ and figures/")] = Path("."),
    quick: Annotated[bool, typer.Option("--quick", help="a tiny problem (seconds), for smoke tests")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace the results of an earlier demo")] = False,
) -> None:
    """The flagship study (Arora et al. 2019, depth lowers the rank of a matrix completion) in its quick mode:
    data, figures and the table of the paper's claims against our numbers. Same as `dlnode study arora2019 --quick`."""
    studies = _studies()
    config = studies.load(DEMO_STUDY).SMOKE if quick else None
    _run_study(DEMO_STUDY, True, out, overwrite, config, "smoke-test" if quick else None,
               "dlnode demo" + (" --quick" if quick else ""))  # fmt: skip


def _studies():  # noqa: ANN202 - the studies package of a dlnode install
    # reached by name: the library does not depend on the studies, which sit on top of it
    try:
        studies = importlib.import_module("studies")
    except ImportError:
        _fail("the studies package is not installed; install dlnode from a checkout with `pip install -e .`")
    return studies


def _run_study(
    name: str,
    quick: bool,
    out: Path,
    overwrite: bool,
    config: dict | None = None,
    label: str | None = None,
    command: str | None = None,
) -> None:
    studies = _studies()
    module = studies.load(name)
    size = label or ("quick" if quick else "full")
    typer.echo(f"{name}: {module.TITLE}\n{module.PAPER}; {size} configuration")
    try:
        ds, rows, figures, runtime = studies.run(name, quick=quick, outdir=out, overwrite=overwrite, config=config)
    except (ValueError, OSError) as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        again = command or f"dlnode study {name}" + (" --quick" if quick else "")
        if str(out) != ".":
            again += f" -o {shlex.quote(str(out))}"
        typer.echo(f"interrupted (Ctrl-C): the study stopped and wrote nothing; run `{again}` again to compute it "
                   "(a study starts over)", err=True)  # fmt: skip
        raise typer.Exit(code=INTERRUPTED) from None
    data_path, _ = studies.outputs(name, out)
    typer.echo(f"wrote {data_path}  (open with dlnode.open)")
    stop_if_interrupted(ds, data_path)
    for path in figures:
        typer.echo(f"wrote {path}")
    parts = {"compute": ds.attrs["study_compute_time"], "check": ds.attrs["study_check_time"]}
    parts["figures and file"] = runtime - parts["compute"] - parts["check"]
    typer.echo(studies.format_table(rows, runtime, parts))
    if not all(r["passed"] for r in rows):
        raise typer.Exit(code=1)


@app.command()
def study(
    name: Annotated[str | None, typer.Argument(help="the study to run (see --list)")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="the small configuration (about a minute)")] = False,
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for data/NAME.nc and figures/NAME-*.png")] = Path(
        "."
    ),
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace this study's earlier results")] = False,
    list_: Annotated[bool, typer.Option("--list", help="list the studies and exit")] = False,
) -> None:
    """Reproduce one paper's result: data, figures, and a table of its claims against our numbers (exit status 1
    when a check fails)."""
    studies = _studies()
    if list_:
        for key in studies.STUDIES:
            try:
                module = studies.load(key)
            except ModuleNotFoundError as exc:
                if exc.name != f"studies.{key}":
                    raise
                typer.echo(f"{key:<18} (not in this install)")
                continue
            typer.echo(f"{key:<18} {module.PAPER}: {module.TITLE}")
        return
    if name is None:
        _fail(f"NAME is required: one of {list(studies.STUDIES)}; or pass --list")
    if name not in studies.STUDIES:
        _fail(f"NAME must be one of {list(studies.STUDIES)}; got {name!r}; see `dlnode study --list`")
    _run_study(name, quick, out, overwrite)


@app.command("plot")
def plot_command(
    path: Annotated[Path, typer.Argument(help="a dataset written by dlnode (.nc or .zarr)")],
    kind: Annotated[str, typer.Option("--kind", "-k", help="figure kind (see --help)")] = "singular_values",
    out: Annotated[Path, typer.Option("--out", "-o", help="image to write (.png, .pdf, .svg, ...)")] = Path(
        "figure.png"
    ),
    overwrite: Overwrite = False,
    sel: Annotated[
        list[str] | None,
        typer.Option(
            "--sel",
            help="DIM=VALUE: the value of a sweep's swept dim (lr, method, flow, init) to draw; "
            "repeat for several dims",
        ),
    ] = None,  # fmt: skip
) -> None:
    """A figure of a stored dataset: loss, singular_values, rank_staircase, sharpness, effective_rank."""
    import dlnode as dln
    from dlnode.analysis.plot import PLOTS

    if kind not in PLOTS or kind == "gd_error":
        choices = sorted(k for k in PLOTS if k != "gd_error")
        _fail(f"--kind must be one of {choices}; got {kind!r}; pass e.g. --kind loss")
    wanted = _parse_sel(sel or [])
    check_outputs({out: image_suffixes()}, overwrite)
    ds = _select(dln.open(path), wanted)
    if "status" in ds and not (ds["status"] != int(Status.PENDING)).any():
        _fail(f"{path} holds no computed cell yet (every cell is pending), so there is nothing to draw; compute it "
              "first (`dlnode run CONFIG -o PATH`, or dln.resume in the session that was interrupted)")  # fmt: skip
    write_figure(kind, ds, out, overwrite)
    typer.echo(f"wrote {out}")


def _parse_sel(items: list[str]) -> dict[str, str]:
    """{dim: value text} of the --sel options; one line naming a malformed or repeated one."""
    from dlnode.data.schema import GRID_DIMS

    wanted: dict[str, str] = {}
    for item in items:
        dim, eq, value = item.partition("=")
        if not eq or not value or dim not in GRID_DIMS:
            _fail(f"--sel must be DIM=VALUE with DIM one of {list(GRID_DIMS)} (a sweep's swept dims); got {item!r}; "
                  "pass e.g. --sel lr=0.1")  # fmt: skip
        if dim in wanted:
            _fail(f"--sel gives {dim!r} twice ({wanted[dim]!r} and {value!r}); pass one value per dim")
        wanted[dim] = value
    return wanted


def _select(ds, wanted: dict[str, str]):  # noqa: ANN001, ANN202
    """`ds` at the --sel values (lazily); one line for a dim the dataset lacks, a value it lacks, or a swept dim of
    several values left unselected (the figures draw one value of each)."""
    from dlnode.data.schema import GRID_DIMS
    from dlnode.sweeps.store import shown_values as shown

    where = {}
    for dim, text in wanted.items():
        if dim not in ds.dims:
            swept = [d for d in GRID_DIMS if d in ds.dims]
            _fail(f"--sel {dim}={text}: the dataset has no swept dim {dim!r} (it has {swept or 'none'}); "
                  "leave that --sel out")  # fmt: skip
        values = ds[dim].values
        if values.dtype.kind in "fiu":
            try:
                hits = np.flatnonzero(np.isclose(values.astype(float), float(text), rtol=1e-12, atol=0))
            except ValueError:
                hits = np.zeros(0, int)
        else:
            hits = np.flatnonzero(values.astype(str) == text)
        if hits.size != 1:
            _fail(f"--sel {dim}={text}: {dim} has the values {shown(values)}; pass one of them")
        where[dim] = int(hits[0])
    ds = ds.isel(where)
    for dim in GRID_DIMS:
        if dim in ds.dims and ds.sizes[dim] > 1:
            _fail(f"--sel: the dataset has the swept dim {dim!r} ({ds.sizes[dim]} values: {shown(ds[dim].values)}), "
                  f"which the figure does not draw; pass e.g. --sel {dim}={shown(ds[dim].values[:1])}")  # fmt: skip
    return ds


def _meanings(ds) -> dict[int, str]:  # noqa: ANN001, ARG001 - the vocabulary is dlnode's (open checked the codes)
    return STATUS_MEANINGS


@app.command()
def info(path: Annotated[Path, typer.Argument(help="a dataset written by dlnode (.nc or .zarr)")]) -> None:
    """What a stored dataset holds: dims, variables, status counts, provenance."""
    import dlnode as dln
    from dlnode.sweeps import store

    if store.is_sweep_store(path):  # read lazily: a sweep store may not fit in memory
        typer.echo(store.describe(path))
        return
    ds = dln.open(path)
    if "study" in ds.attrs:  # a study's dataset (studies.run): its own dims, not the run schema
        typer.echo(f"{path}: dlnode study {ds.attrs['study']!r}, {ds.attrs.get('study_paper', '')}")
        typer.echo("dims: " + ", ".join(f"{k}={v}" for k, v in ds.sizes.items()))
        typer.echo("variables: " + ", ".join(sorted(ds.data_vars)))
        config, runtime = ds.attrs.get("study_config", "?"), ds.attrs.get("study_runtime", 0.0)
        parts = [f"{k} {ds.attrs[f'study_{k}_time']:.1f} s" for k in ("compute", "check")
                 if f"study_{k}_time" in ds.attrs]  # fmt: skip
        typer.echo(f"configuration: {config}; runtime {runtime:.1f} s" + (f" ({', '.join(parts)})" if parts else ""))
        return
    typer.echo(f"{path}: dlnode dataset (version {ds.attrs.get('dlnode_version', '?')})")
    typer.echo("dims: " + ", ".join(f"{k}={v}" for k, v in ds.sizes.items()))
    typer.echo("depth: " + ", ".join(f"{d:g}" for d in ds.depth.values) + "; scale: "
               + ", ".join(f"{s:g}" for s in ds.scale.values) + f"; seeds: {ds.sizes['seed']}")  # fmt: skip
    t = ds.time.values
    typer.echo(f"time: {len(t)} points from {t[0]:g} to {t[-1]:g}")
    typer.echo("variables: " + ", ".join(sorted(ds.data_vars)))
    status = ds["status"].values
    counts = {name: int((status == k).sum()) for k, name in _meanings(ds).items()}
    typer.echo("status: " + ", ".join(f"{name} {n}" for name, n in counts.items() if n) + f" (of {status.size} runs)")
    try:
        problem = json.loads(ds.attrs.get("problem", "{}"))
        typer.echo("problem: " + ", ".join(f"{k}={v}" for k, v in problem.items()))
    except (ValueError, TypeError, AttributeError, RecursionError):
        typer.echo(f"problem: {str(ds.attrs.get('problem'))[:80]!r} (not the JSON dlnode writes)")
    fixed_step = ds.attrs.get("method") in FIXED_STEP  # rtol and atol do not apply to a run of fixed steps
    keys = ("network", "flow", "method", "method_reason", "init", "scale_of", "width", *(() if fixed_step else
            ("rtol", "atol")), "lr", "dt", "dt_check", "dt_check_paths", "batch", "sampling", "label_noise", "paths",
            "sharpness", "t1",
            "compile_time", "run_time", "jax_version", "diffrax_version", "x64", "created")  # fmt: skip
    for key in keys:
        if key in ds.attrs:
            typer.echo(f"{key}: {ds.attrs[key]}")


@app.command()
def bench(
    quick: Annotated[bool, typer.Option("--quick", help="the small work-precision case only (minutes)")] = False,
    targets: Annotated[
        bool, typer.Option("--targets", help="the stiff-path targets (Arora completion, depth 4 and 8) instead")
    ] = False,
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for bench.md and bench.png")] = Path(
        "benchmarks/results"
    ),
) -> None:
    """The performance comparison against the peers (benchmarks/ in a dlnode checkout): a table and a figure;
    with --targets, the stiff path's targets table (targets.md).

    It runs in a fresh interpreter (``python -m benchmarks.run`` or ``benchmarks.stiff_targets``): the benchmarks
    pin BLAS, OpenMP and XLA to one thread, which only works before numpy and jax load, and this process has them.
    """
    root = Path(__file__).resolve().parent.parent
    if not (root / "benchmarks" / "run.py").exists():
        _fail("bench needs the benchmarks/ folder of a dlnode checkout; run it from a clone installed with -e")
    module, args = ("benchmarks.stiff_targets", []) if targets else ("benchmarks.run", ["--quick"] if quick else [])
    done = subprocess.run([sys.executable, "-m", module, *args, "--out", str(out.resolve())], cwd=root, check=False)
    if done.returncode:
        _fail(f"bench: {module} exited with status {done.returncode}")


@app.command("run")
def run_command(
    config: Annotated[Path, typer.Argument(help="a sweep config (TOML; see docs/sweeps.md)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="the zarr store to write or resume (.zarr)")],
    scheduler: Annotated[
        str | None, typer.Option("--scheduler", help="address of a running Dask scheduler, e.g. tcp://HOST:8786")
    ] = None,
    workers: Annotated[int | None, typer.Option("--workers", help="processes of the local cluster")] = None,
) -> None:
    """Run (or resume) a sweep: every missing cell of the config's grid, on Dask, into one zarr store."""
    import dlnode as dln
    from dlnode.sweeps import store

    complete = store.is_sweep_store(out) and not np.isin(store.read_status(out), store.REDO).any()
    try:
        dln.sweep(config, out, scheduler=scheduler, workers=workers)
        if SIGINTS[0]:  # a Ctrl-C whose KeyboardInterrupt Python could not raise (it came inside a finaliser)
            raise KeyboardInterrupt
    except ValueError as exc:
        _fail(str(exc))
    except RuntimeError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from None
    except KeyboardInterrupt:
        if not store.is_sweep_store(out):
            typer.echo(f"interrupted before the store was written; nothing in {out}", err=True)
            raise typer.Exit(code=130) from None
        status = store.read_status(out)
        done = int((~np.isin(status, store.REDO)).sum())
        typer.echo(f"interrupted: {done} of {status.size} cells on disk in {out}; run the same command to finish",
                   err=True)  # fmt: skip
        raise typer.Exit(code=130) from None
    if complete:  # the config was checked against the store, and nothing was left to compute
        typer.echo(f"nothing to compute: every cell of {out} was already on disk (`dlnode info {out}` summarises it)")
        return
    typer.echo(f"wrote {out}  (`dlnode info {out}` summarises it)")


@app.command("export")
def export_command(
    path: Annotated[Path, typer.Argument(help="a sweep store (.zarr)")],
    out: Annotated[Path, typer.Argument(help="the netCDF file to write (.nc)")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace OUT if it exists")] = False,
) -> None:
    """Write a sweep store to one netCDF file (streamed chunk by chunk; pending cells stay NaN, status pending)."""
    from dlnode.sweeps import store

    try:
        pending = store.export(path, out, overwrite=overwrite)
    except (ValueError, OSError) as exc:
        _fail(str(exc))
    typer.echo(f"wrote {out}" + (f" ({pending} cells still pending)" if pending else ""))


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `dlnode` command: never a bare traceback.

    A refused input (any dlnode error, or a ValueError) is one line on stderr and exit code 2; an error of the
    machine (disk full, out of memory) one line and exit code 1; Ctrl-C one line and exit code 130 (no partial
    file is left: every write is atomic); anything else is a bug: one line saying so, with the traceback saved
    to a file to report (``DLNODE_DEBUG=1`` shows it instead), exit code 1.
    """
    SIGINTS[0] = 0
    previous = signal.getsignal(signal.SIGINT)
    starting = (signal.default_int_handler, quit_while_starting)  # the second: set while the command loaded
    count = previous in starting and threading.current_thread() is threading.main_thread()
    if count:  # a background job's ignored SIGINT stays ignored
        signal.signal(signal.SIGINT, _count_sigint)
    hook, sys.unraisablehook = sys.unraisablehook, _unraisable(sys.unraisablehook)
    show, warnings.showwarning = warnings.showwarning, _one_line_warning
    try:
        app(args=argv, prog_name="dlnode")
    except SystemExit as exc:
        if exc.code == INTERRUPTED and _caused_by_interrupt(exc):
            _interrupted()
        raise
    except KeyboardInterrupt:
        _interrupted()
    except (DlnodeError, ValueError) as exc:
        _exit(f"error: {exc}", 2)
    except MemoryError:
        _exit("error: out of memory; pass fewer save times (saveat), save_weights=False or a smaller grid", 1)
    except OSError as exc:
        _exit(f"error: {exc}", 1)
    except Exception as exc:  # noqa: BLE001 - the one place that turns a bug into a report instead of a traceback
        if os.environ.get("DLNODE_DEBUG"):
            raise
        _exit(f"error: {type(exc).__name__}: {exc} -- this is a bug in dlnode {__version__}; please report it with "
              f"the command you ran and the traceback saved in {_save_traceback()}", 1)  # fmt: skip
    finally:
        sys.unraisablehook, warnings.showwarning = hook, show
        if count:
            signal.signal(signal.SIGINT, previous)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001, ARG001
    """Warnings on the command line: one line each, without the source line Python would print under them."""
    typer.echo(" ".join(f"warning: {message}".split()), err=True)


def _exit(message: str, code: int) -> None:
    typer.echo(" ".join(message.split()), err=True)
    sys.exit(code)


def _interrupted() -> None:
    _exit("interrupted (Ctrl-C); no partial file was left behind", INTERRUPTED)


def _caused_by_interrupt(exc: BaseException) -> bool:
    """Whether a SystemExit(130) is typer's answer to a KeyboardInterrupt (``raise Exit(130) from interrupt``),
    rather than a command's own exit after it said what it kept (``raise Exit(130) from None``)."""
    seen = exc.__context__  # the typer Exit that sys.exit was called for
    while seen is not None:
        if isinstance(seen, KeyboardInterrupt):
            return True
        seen = seen.__cause__
    return False


def _save_traceback() -> str:
    fd, name = tempfile.mkstemp(prefix="dlnode-bug-", suffix=".txt")
    with os.fdopen(fd, "w") as f:
        f.write(f"dlnode {__version__}, python {sys.version.split()[0]}\nargs: {sys.argv[1:]}\n\n")
        f.write(traceback.format_exc())
    return name


if __name__ == "__main__":
    main()
