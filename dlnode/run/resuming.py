"""`resume`: continue an `integrate` call that Ctrl-C interrupted, bit for bit as if it never had been.

The solver state of an interrupted run lives in memory, attached (by identity, while it lives) to the very
dataset the interrupted call returned; nothing of it is stored in the dataset or on disk.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any, NoReturn

import numpy as np

from dlnode.errors import fail, shown
from dlnode.solvers.core import Status

__all__ = ["remember", "resume"]

# id of a dataset returned by an interrupted call → how to continue it (dropped when that dataset is collected)
_PENDING: dict[int, list] = {}


def remember(ds: Any, rest: Callable[[bool | None], Any]) -> None:
    """Attach to `ds` the continuation `rest(progress)` of the interrupted call that returned it."""
    _PENDING[id(ds)] = [rest, False]  # [continuation, spent]
    weakref.finalize(ds, _PENDING.pop, id(ds), None)


def resume(ds: Any, progress: bool | None = None) -> Any:
    """Continue an `integrate` call that Ctrl-C interrupted, from where it stopped.

    `ds` is the dataset the interrupted call returned (its runs still going have status INTERRUPTED, the depths
    not begun are absent). Those runs go on from the solver state they had reached, then the remaining depths
    run; the dataset returned is the one the call would have returned had it never been interrupted: the same
    trajectories, statuses, step counts and final times, bit for bit (only timings and `created` differ). If it
    is interrupted again, it can be resumed again.

    The solver state lives in memory only: a dataset read from disk, a copy or a selection of `ds` cannot be
    resumed (run the `integrate` call again), and `ds` resumes once.

    Parameters
    ----------
    ds : the dataset an interrupted `dlnode.integrate` call returned.
    progress : show a progress bar (default None: as the interrupted call did).

    Raises
    ------
    dlnode.errors.ArgumentError : for a dataset with nothing to resume, or no solver state to resume from.
    """
    entry = _PENDING.get(id(ds))
    if entry is None or entry[1]:
        _refuse(ds, entry is not None)
    if progress is not None and not isinstance(progress, (bool, np.bool_)):
        fail("progress", "must be True, False or None", progress, "pass progress=False to hide the progress bar")
    entry[1] = True
    return entry[0](None if progress is None else bool(progress))


def _refuse(ds: Any, spent: bool) -> NoReturn:
    if spent:
        fail("ds", "was resumed already (an interrupted dataset resumes once)", shown("a resumed dataset"),
             "resume the dataset that resume returned, if that one was interrupted")  # fmt: skip
    variables = getattr(ds, "variables", None)
    if variables is None or "status" not in variables:
        fail("ds", "must be the dataset an interrupted dlnode.integrate call returned", shown(type(ds).__name__),
             "pass that dataset itself")  # fmt: skip
    stopped = int((np.asarray(variables["status"]) == int(Status.INTERRUPTED)).sum())
    if not stopped:
        fail("ds", "has no interrupted runs: there is nothing to resume", shown("a dataset without INTERRUPTED runs"),
             "pass the dataset an interrupted integrate call returned")  # fmt: skip
    fail("ds", "has no solver state to resume from (it is kept in memory with the very dataset an interrupted "
         "integrate call returned, not with one read from disk, a copy or a selection)",
         shown(f"a dataset with {stopped} interrupted runs"), "run the same integrate call again")  # fmt: skip
