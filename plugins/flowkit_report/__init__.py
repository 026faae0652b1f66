"""Built-in reporters: progress bars, a JSON-lines metrics log and plots, through lifecycle hooks.

The pipeline knows none of them: each is a set of hook implementations.

* progress bars (tqdm, on stderr) for training and sampling, with the running loss;
* ``metrics.jsonl``: one JSON object per logged step (``{"step", "loss", "lr"}``);
* for 2D data, ``samples.png``, ``trajectories.png`` and ``vector_field.png`` (see :mod:`.plots`).

``--quiet`` (``run.quiet``) silences the console completely (a failed plot is then noted in
``report-errors.log`` instead of a warning); ``[report] progress = false`` turns the bars off;
``[report] plots = false`` and ``[report] log = false`` switch the files off. ``-p no:report`` removes
the reporters altogether.
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
