"""Built-in reporters: progress bars, a JSON-lines metrics log and plots, through lifecycle hooks.

The pipeline knows none of them: each is a set of hook implementations. ``--quiet`` (``run.quiet``) or
``[report] progress = false`` silences the console; ``[report] plots`` and ``[report] log`` switch
the files off.
"""

from flowkit import hookimpl
from flowkit_report.reporters import (
    flowkit_log,
    flowkit_run_end,
    flowkit_run_start,
    flowkit_samples_ready,
    flowkit_sampling_progress,
    flowkit_stage,
    flowkit_train_step,
)


@hookimpl
def flowkit_register(registry):  # reporters provide hooks, no components
    """Nothing to register: the reporters act through lifecycle hooks only."""


__all__ = [
    "flowkit_log",
    "flowkit_register",
    "flowkit_run_end",
    "flowkit_run_start",
    "flowkit_samples_ready",
    "flowkit_sampling_progress",
    "flowkit_stage",
    "flowkit_train_step",
]
