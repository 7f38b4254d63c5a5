"""dlnode: training of deep linear networks as continuous dynamical systems.

Float64 is switched on in JAX on import (``jax_enable_x64``); datasets record it in their attrs. JAX's persistent
compilation cache is on (see `dlnode.cache`). XLA's CPU runtime computes on one thread per process unless
``DLNODE_XLA_THREADS`` says otherwise (see `dlnode.xla_threads`).
"""

import jax

jax.config.update("jax_enable_x64", True)

from .cache import compilation_cache  # noqa: E402

compilation_cache()

from .xla_threads import limit_xla_threads  # noqa: E402

limit_xla_threads()

from . import accessor  # noqa: E402, F401  (accessor registers the ds.dln namespace)
from ._version import __version__  # noqa: E402
from .analysis import effective_rank, escape_times, log_volume, modes_learned, numerical_rank, stages  # noqa: E402
from .curvature import sharpness, sharpness_bounds  # noqa: E402
from .dataset import open_dataset as open  # noqa: E402, A004
from .dataset import problem_from, save, validate  # noqa: E402
from .discrete import compare, convergence_order  # noqa: E402
from .errors import DlnodeError  # noqa: E402
from .integration import integrate  # noqa: E402
from .network import balancedness, init_layers, layer_shapes, product  # noqa: E402
from .problems import Factorization, MatrixCompletion, MatrixSensing, Problem, Regression  # noqa: E402
from .resuming import resume  # noqa: E402
from .solvers import METHODS, Status  # noqa: E402
from .sweep import sweep  # noqa: E402

__all__ = [
    "METHODS",
    "DlnodeError",
    "Factorization",
    "MatrixCompletion",
    "MatrixSensing",
    "Problem",
    "Regression",
    "Status",
    "__version__",
    "balancedness",
    "compare",
    "compilation_cache",
    "convergence_order",
    "effective_rank",
    "escape_times",
    "log_volume",
    "modes_learned",
    "numerical_rank",
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
