"""Refuse, when the pipeline is built, a sampler whose dynamics are not finite where it will step.

A schedule's ends can make the dynamics singular: the score of a velocity model divides by
``beta_t``, which is 0 at the data end of the OT schedule, and Langevin dynamics divide by it at the
noise end. Such a pipeline would train to the end and then give only non-finite samples. Before any
work starts, the dynamics are evaluated (the untrained network: a singular coefficient is non-finite
whatever the network says) at the grid's times where every simulator evaluates them: every time of
the grid but its last, which an explicit method (Euler, Euler–Maruyama) never evaluates at all.

Where the device backend prepared a module of its own to call (``torch.compile``, a counting or
capturing wrapper), the check is not made: a forward pass at build would compile for a batch of the
probe's shape, a cost the run should not pay for a check.
"""

from __future__ import annotations

import torch

from flowkit.engine.guidance import guided_dynamics, num_classes
from flowkit.engine.records import Pipeline, sample_times
from flowkit.engine.returns import draw_prior
from flowkit.errors import CapabilityError

#: Points probed at each time; at most this many times are probed (the first, the one before the
#: last, and evenly spaced ones between): singular coefficients sit at the ends.
_POINTS, _TIMES = 4, 8


@torch.no_grad()
def check_finite_dynamics(pipeline: Pipeline) -> None:
    """Raise a one-line :class:`CapabilityError` naming the dynamics, the path (and its schedule) and
    the first time of the ``[sample]`` grid where the dynamics are not finite."""
    if pipeline.network is not pipeline.model:  # a prepared module: no forward pass at build
        return
    times = sample_times(pipeline, torch.device("cpu"))
    if pipeline.sample.simulator.adaptive:
        probed = times[:1]
    else:
        inner = times[:-1]
        picks = torch.linspace(0, len(inner) - 1, min(_TIMES, len(inner))).round().long().unique()
        probed = inner[picks]
    device = pipeline.device.device
    generator = torch.Generator(device=device).manual_seed(0)  # its own: the run's draws are untouched
    shape = (_POINTS, *pipeline.dataset.shape)
    x = draw_prior(pipeline.path, shape, generator, device)
    labels = None
    if num_classes(pipeline):  # a conditional model: class 0, guided as sampling guides it
        labels = torch.zeros(_POINTS, dtype=torch.long, device=device)
    dynamics = guided_dynamics(pipeline, labels)
    network = pipeline.network
    training = network.training
    network.eval()  # no dropout draw from the global generator, no running statistics updated
    try:
        for t in probed.tolist():
            times_dtype = x.dtype if x.is_floating_point() else torch.float32  # tokens: float times
            try:
                drift = dynamics.drift(x, torch.full((_POINTS,), t, dtype=times_dtype, device=device))
            except CapabilityError:  # dynamics with no drift (a jump process): their own sampler's affair
                return
            if not bool(torch.isfinite(drift).all()):
                raise CapabilityError(_message(pipeline, t))
    finally:
        network.train(training)


def _message(pipeline: Pipeline, t: float) -> str:
    path = pipeline.path
    schedule = getattr(path, "schedule", None)
    of = f"path '{path.display_name}'"
    if schedule is not None and hasattr(schedule, "display_name"):
        of += f" with schedule '{schedule.display_name}'"
    return (
        f"dynamics '{pipeline.sample.dynamics.display_name}' are not finite at t = {t:g} of the grid, "
        f"for {of}: sampling would give only non-finite values; use other dynamics, or a schedule "
        "whose t_range stops short of its singular end"
    )
