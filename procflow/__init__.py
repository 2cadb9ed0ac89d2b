"""procflow: run and wire child processes without deadlocks, leaks or hidden failures.

>>> from procflow import Proc
>>> (Proc("printf", "3\\n1\\n2\\n") | Proc("sort", "-n")).read()
'1\\n2\\n3'
"""

from ._cancel import Cancel
from ._command import Pipeline, Proc
from ._errors import Cancelled, ExitError, OutputLimitExceeded, ProcError, ProcTimeout, SpawnError
from ._pipes import PipeReader, PipeWriter, copy, os_pipe, pipe
from ._result import Result
from ._runall import run_all
from ._running import Running
from ._secret import Secret
from ._supervisor import ChildInfo, LeakReport, Supervisor

__version__ = "0.1.0"

__all__ = [
    "Cancel",
    "Cancelled",
    "ChildInfo",
    "ExitError",
    "LeakReport",
    "OutputLimitExceeded",
    "PipeReader",
    "PipeWriter",
    "Pipeline",
    "Proc",
    "ProcError",
    "ProcTimeout",
    "Result",
    "Running",
    "Secret",
    "SpawnError",
    "Supervisor",
    "copy",
    "os_pipe",
    "pipe",
    "run_all",
]
