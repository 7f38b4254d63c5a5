"""dlnode: training of deep linear networks as continuous dynamical systems.

Float64 is switched on in JAX on import (``jax_enable_x64``); datasets record it in their attrs. JAX's persistent
compilation cache is on (see `dlnode.runtime.cache`). XLA's CPU runtime computes on one thread per process unless
``DLNODE_XLA_THREADS`` says otherwise (see `dlnode.runtime.xla_threads`).
"""

import os
import signal
import sys

from dlnode.runtime.interrupts import quit_while_starting

if os.path.basename(sys.argv[0]) == "dlnode" and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    signal.signal(signal.SIGINT, quit_while_starting)  # a Ctrl-C while JAX loads: one line, not a traceback

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

from dlnode.runtime.cache import compilation_cache  # noqa: E402

compilation_cache()

from dlnode.runtime.xla_threads import limit_xla_threads  # noqa: E402

try:
    limit_xla_threads()
except ValueError as _refused:
    # the `dlnode` command imports this package before its own error handling can run: say it as that command
    # says every refused input, one line and exit code 2, instead of a traceback
    if os.path.basename(sys.argv[0]) == "dlnode":
        sys.stderr.write(f"error: {_refused}\n")
        sys.exit(2)
    raise

from dlnode._version import __version__  # noqa: E402
from dlnode.analysis import accessor  # noqa: E402, F401  (accessor registers the ds.dln namespace)
from dlnode.analysis.curvature import sharpness, sharpness_bounds  # noqa: E402
from dlnode.analysis.discrete import compare, convergence_order  # noqa: E402
from dlnode.analysis.edge import (  # noqa: E402
    divergence_fraction,
    edge_comparison,
    edge_figure,
    edge_summary,
    time_average,
)
from dlnode.analysis.paths import (  # noqa: E402
    hessian_trace,
    implicit_regulariser,
    interpolator_distance,
    interpolators,
    path_summary,
    sparsity,
    weak_error,
)
from dlnode.analysis.spectra import effective_rank, log_volume, numerical_rank  # noqa: E402
from dlnode.analysis.stages import escape_times, modes_learned, stages  # noqa: E402
from dlnode.data.files import open_dataset as open  # noqa: E402, A004
from dlnode.data.files import save  # noqa: E402
from dlnode.data.schema import problem_from, validate  # noqa: E402
from dlnode.errors import DlnodeError  # noqa: E402
from dlnode.flows.diagonal import hypentropy  # noqa: E402
from dlnode.problems.kinds import Factorization, MatrixCompletion, MatrixSensing, Problem, Regression  # noqa: E402
from dlnode.problems.network import balancedness, init_layers, layer_shapes, product  # noqa: E402
from dlnode.problems.sparse import SparseRegression  # noqa: E402
from dlnode.run.integrate import integrate  # noqa: E402
from dlnode.run.resuming import resume  # noqa: E402
from dlnode.run.saveat import SaveAt  # noqa: E402
from dlnode.solvers import METHODS, Status  # noqa: E402

__all__ = [
    "METHODS",
    "DlnodeError",
    "Factorization",
    "MatrixCompletion",
    "MatrixSensing",
    "Problem",
    "Regression",
    "SparseRegression",
    "SaveAt",
    "Status",
    "__version__",
    "balancedness",
    "compare",
    "divergence_fraction",
    "edge_comparison",
    "edge_figure",
    "edge_summary",
    "time_average",
    "compilation_cache",
    "convergence_order",
    "effective_rank",
    "escape_times",
    "log_volume",
    "modes_learned",
    "numerical_rank",
    "hessian_trace",
    "hypentropy",
    "implicit_regulariser",
    "interpolator_distance",
    "interpolators",
    "path_summary",
    "sparsity",
    "weak_error",
    "sharpness",
    "sharpness_bounds",
    "stages",
    "sweep",
    "init_layers",
    "integrate",
    "layer_shapes",
    "open",
    "problem_from",
    "product",
    "resume",
    "save",
    "validate",
]


def __getattr__(name: str):  # noqa: ANN202
    """`dlnode.sweep` on first use: Dask and zarr load with the first sweep, not with every ``import dlnode``."""
    if name == "sweep":
        from dlnode.sweeps.sweep import sweep

        return sweep
    raise AttributeError(f"module 'dlnode' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The module's names with `sweep`, which `__getattr__` supplies (tab completion, ``dir(dlnode)``)."""
    return sorted(set(globals()) | {"sweep"})
