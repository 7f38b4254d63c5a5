"""The solver layer: one registry of methods (`METHODS`), a shared core (`Status`, `Controls`, `Solution`, the stop
rule), and one module per method family. The only package that imports diffrax or scipy.integrate."""

from dlnode.solvers.core import MESSAGES, Controls, Method, Solution, Status, stop_flags
from dlnode.solvers.registry import METHODS, solve

__all__ = ["MESSAGES", "METHODS", "Controls", "Method", "Solution", "Status", "solve", "stop_flags"]
