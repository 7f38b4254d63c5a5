"""`resume`: continue an `integrate` call that Ctrl-C interrupted, bit for bit as if it never had been.

The solver state of an interrupted run lives in memory, attached (by identity, while it lives) to the very
dataset the interrupted call returned; nothing of it is stored in the dataset or on disk. With it go two
fingerprints: of the problem object the call was given and of the dataset as returned (its attributes, which
hold the call's arguments, and its stored problem). `resume` continues only what it was: a problem object or a
dataset changed since is refused in one line, instead of continuing on something else.
"""

from __future__ import annotations

import copy
import hashlib
import weakref
from collections.abc import Callable
from typing import Any, NoReturn

import numpy as np

from dlnode.errors import fail, shown
from dlnode.solvers.core import Status

__all__ = ["remember", "resume"]

# id of a dataset returned by an interrupted call → how to continue it (dropped when that dataset is collected)
_PENDING: dict[int, list] = {}


def remember(ds: Any, rest: Callable[[bool | None], Any], problem: Any) -> None:
    """Attach to `ds` the continuation `rest(progress)` of the interrupted call that returned it, which was given
    the problem object `problem`."""
    # [continuation, spent, the problem object, its fingerprint, the dataset's attrs and stored problem]
    _PENDING[id(ds)] = [rest, False, problem, problem_print(problem), copy.deepcopy(dict(ds.attrs)), _stored(ds)]
    weakref.finalize(ds, _PENDING.pop, id(ds), None)


def problem_print(problem: Any) -> str:
    """A fingerprint of a problem: its kind, scalar fields and the bytes of its arrays."""
    arrays, scalars = problem.fields()
    digest = hashlib.sha256(f"{problem.kind} {sorted(scalars.items())!r}".encode())
    for name in sorted(arrays):
        value = np.ascontiguousarray(arrays[name])
        digest.update(f"{name} {value.dtype} {value.shape}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def _stored(ds: Any) -> str:
    """A fingerprint of the problem a dataset stores (its ``problem_*`` variables)."""
    digest = hashlib.sha256()
    for name in sorted(n for n in ds.variables if str(n).startswith("problem_")):
        value = np.ascontiguousarray(ds[name].values)
        digest.update(f"{name} {value.dtype} {value.shape}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def _check_unchanged(ds: Any, entry: list) -> None:
    """Refuse to resume when the problem object or the dataset changed since the interrupted call returned."""
    _, _, problem, printed, attrs, stored = entry
    if problem_print(problem) != printed:
        fail("problem", "was changed after the interrupted call (its arrays differ from those the call ran on), so "
             "resume would not continue what it was", shown(f"a changed {type(problem).__name__}"),
             "restore the problem, or run integrate again on the changed one")  # fmt: skip
    if _stored(ds) != stored:
        fail("ds", "was changed after the interrupted call: its stored problem (problem_* variables) differs",
             shown("a changed dataset"),
             "resume the dataset as the call returned it, or run integrate again")  # fmt: skip
    now = dict(ds.attrs)
    for key in sorted(set(attrs) | set(now)):
        was, is_ = attrs.get(key, "<absent>"), now.get(key, "<absent>")
        if not _same(was, is_):
            fail("ds", f"was changed after the interrupted call: attrs[{key!r}] is {is_!r}, was {was!r} (the "
                 "attributes record the call's arguments)", None,
                 "resume the dataset as the call returned it, or run integrate again")  # fmt: skip


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(np.array_equal(a, b, equal_nan=True))
    except TypeError:
        return bool(np.array_equal(a, b))


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
    _check_unchanged(ds, entry)
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
    stopped = int(np.isin(np.asarray(variables["status"]), (int(Status.INTERRUPTED), int(Status.PENDING))).sum())
    if not stopped:
        fail("ds", "has no interrupted runs: there is nothing to resume", shown("a dataset without INTERRUPTED runs"),
             "pass the dataset an interrupted integrate call returned")  # fmt: skip
    fail("ds", "has no solver state to resume from (it is kept in memory with the very dataset an interrupted "
         "integrate call returned, not with one read from disk, a copy or a selection)",
         shown(f"a dataset with {stopped} interrupted runs"), "run the same integrate call again")  # fmt: skip
