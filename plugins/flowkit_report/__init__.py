"""Built-in reporters: progress bars, a JSON-lines metrics log and plots, through lifecycle hooks.

The pipeline knows none of them: each is a set of hook implementations.

* progress bars (tqdm, on stderr) for training and sampling, with the running loss;
* ``metrics.jsonl``: one JSON object per logged step (``{"step", "loss", "lr"}``);
* for 2D data, ``samples.png``, ``trajectories.png`` and ``vector_field.png`` (see :mod:`.plots`).

The plugin declares its own pipeline table, ``[report]`` (:class:`ReportSettings`): ``--quiet``
(``run.quiet``) silences the console completely (a failed plot is then noted in ``report-errors.log``
instead of a warning); ``[report] progress = false`` turns the bars off; ``[report] plots = false`` and
``[report] log = false`` switch the files off. ``-p no:report`` removes the reporters (and their table)
altogether.
"""

from flowkit import hookimpl
from flowkit_report.reporters import (
    ReportSettings,
    flowkit_log,
    flowkit_run_end,
    flowkit_run_start,
    flowkit_samples_ready,
    flowkit_sampling_progress,
    flowkit_stage,
    flowkit_train_step,
)


@hookimpl
def flowkit_register(registry):
    """Declare the ``[report]`` table; the reporters act through lifecycle hooks, no components."""
    registry.add_table("report", ReportSettings)


__all__ = [
    "ReportSettings",
    "flowkit_log",
    "flowkit_register",
    "flowkit_run_end",
    "flowkit_run_start",
    "flowkit_samples_ready",
    "flowkit_sampling_progress",
    "flowkit_stage",
    "flowkit_train_step",
]
