"""turnout's chaos harness: experiments, the cluster it runs, faults, the client fleet and the
checker (docs/architecture.md, "harness/").

Public surface, imported on first use so that a fleet worker (``python -m harness.fleet``) or
the trio-free TUI importing one module does not load the rest:

- ``Experiment``, ``FaultSpec``, ``ExperimentError``, ``load_experiment``: experiment files;
- ``FaultKind``, ``FAULTS``: the fault catalogue (one class per kind, harness.faults);
- ``Invariants``, ``Report``, ``check_files``, ``check_run_dir``: the checker;
- ``RunOptions``, ``run_experiment``: one run end to end (trio).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .checker import Invariants as Invariants
    from .checker import Report as Report
    from .checker import check_files as check_files
    from .checker import check_run_dir as check_run_dir
    from .experiment import Experiment as Experiment
    from .experiment import ExperimentError as ExperimentError
    from .experiment import FaultSpec as FaultSpec
    from .experiment import load_experiment as load_experiment
    from .faults import FAULTS as FAULTS
    from .faults import FaultKind as FaultKind
    from .runner import RunOptions as RunOptions
    from .runner import run_experiment as run_experiment

_HOME = {"Invariants": "checker", "Report": "checker", "check_files": "checker",
         "check_run_dir": "checker", "Experiment": "experiment", "ExperimentError": "experiment",
         "FaultSpec": "experiment", "load_experiment": "experiment", "FAULTS": "faults",
         "FaultKind": "faults", "RunOptions": "runner", "run_experiment": "runner"}
__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'harness' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
