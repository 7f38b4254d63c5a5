"""dlnode's errors: one line each, saying the argument, the rule, the value received and the fix.

Every error dlnode raises on purpose derives from `DlnodeError`; the kinds also derive from the built-in
exception a caller would expect (`ValueError` for a bad argument or a file that is not a dlnode dataset,
`OSError` for a path that cannot be used), so ``except ValueError`` keeps working. The command line turns each
one into a single line on stderr and exit code 2.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any, NoReturn

__all__ = ["ArgumentError", "DatasetError", "DlnodeError", "PathError", "PathExistsError", "PathMissingError", "fail",
           "refused", "shown", "warn"]  # fmt: skip

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn(message: str) -> None:
    """A `UserWarning` reported at the caller's own line: the first frame outside the dlnode package, however deep
    inside it the warning is raised (`integrate`, `resume`, a sweep)."""
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, stacklevel=level)


class DlnodeError(Exception):
    """A refused input. ``str(err)`` is one line: ``<argument> <rule>; got <value>; <fix>``.

    The parts are kept as attributes (`argument`, `rule`, `value`, `fix`) for programs that want them.
    """

    def __init__(self, argument: str, rule: str, value: Any = None, fix: str = "", text: str | None = None) -> None:
        self.argument, self.rule, self.value, self.fix = argument, rule, value, fix
        parts = [text or f"{argument} {rule}"]  # `text`: the rule in other words, naming the argument itself
        if value is not None:
            parts.append(f"got {_short(value)}")
        if fix:
            parts.append(fix)
        super().__init__(" ".join("; ".join(parts).split()))  # one line, whatever the parts held


class ArgumentError(DlnodeError, ValueError):
    """An argument that breaks a rule (type, range, or a combination of arguments)."""

    @classmethod
    def said(cls, text: str) -> ArgumentError:
        """An error whose message is already written in one piece (``<argument> <rule>; got <value>; <fix>``):
        its first word is the argument."""
        return cls(text.split(" ", 1)[0].strip("`'\""), "", None, "", text=text)


class DatasetError(DlnodeError, ValueError):
    """A file or dataset that is not a dlnode dataset, or one that is damaged."""


class PathError(DlnodeError, OSError):
    """A path that cannot be read or written (missing parent, not writable, wrong kind of file)."""


class PathExistsError(PathError, FileExistsError):
    """An output path that exists and was not to be replaced."""


class PathMissingError(PathError, FileNotFoundError):
    """An input path that does not exist."""


def refused(text: str) -> ArgumentError:
    """The `ArgumentError` of a message written in one piece (``raise refused(f"lr must be ...; got {lr}; ...")``)."""
    return ArgumentError.said(text)


def fail(
    argument: str,
    rule: str,
    value: Any = None,
    fix: str = "",
    kind: type[DlnodeError] = ArgumentError,
    text: str | None = None,
) -> NoReturn:
    """Raise `kind` (an `ArgumentError` by default) built from the four parts of a dlnode error message."""
    raise kind(argument, rule, value, fix, text)


class shown(str):  # noqa: N801 - used like a function: shown("3 x 4 array")
    """A value already written as the message should show it (not passed through repr)."""


def _short(value: Any, limit: int = 160) -> str:
    text = str(value) if isinstance(value, shown) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
