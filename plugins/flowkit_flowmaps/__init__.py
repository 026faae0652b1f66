"""Few-step generation with flow maps: MeanFlow (Geng et al. 2025, arXiv 2505.13447) and shortcut
models (Frans et al. 2024, arXiv 2410.12557).

* loss ``meanflow``: trains a two-time network ``u(x_t, t, r)``, the average velocity over ``[t, r]``,
  on the MeanFlow identity with one ``torch.func.jvp`` (``docs/math.md``, "MeanFlow");
* dynamics ``mean-flow``: the average velocity ``average(x, t, r)`` of such a model, and its drift
  ``u(x, t, t)`` (the instantaneous velocity), so ODE simulators integrate it too;
* simulator ``mean-flow-jump``: ``x <- x + (t_next - t) u(x, t, t_next)`` over the ``[sample]`` grid,
  one network evaluation per step (``steps = 1``: one-step generation);
* loss ``shortcut``: trains the same two-time network as a step-size-conditioned shortcut
  ``s(x, t, d) = u(x, t, t + d)`` on flow matching at ``d = 0`` and two-half-step self-consistency
  targets at ``d = 2^-k`` (``docs/math.md``, "Shortcut models"); sampled like MeanFlow;
* coupling ``reflow``: the (noise, sample) pairs of a finished teacher run, drawn once per run with
  the teacher's sampler (``docs/math.md``, "Reflow").

Importing this package is cheap: the component modules load when the registry asks for them.
"""

from flowkit import hookimpl


@hookimpl
def flowkit_register(registry):
    """Register the MeanFlow and shortcut losses, their dynamics, their jump sampler and reflow."""
    from flowkit_flowmaps.jumps import MeanFlowDynamics, MeanFlowJump
    from flowkit_flowmaps.meanflow import MeanFlowLoss
    from flowkit_flowmaps.reflow import Reflow
    from flowkit_flowmaps.shortcut import ShortcutLoss

    registry.add("loss", "meanflow", MeanFlowLoss)
    registry.add("loss", "shortcut", ShortcutLoss)
    registry.add("dynamics", "mean-flow", MeanFlowDynamics)
    registry.add("simulator", "mean-flow-jump", MeanFlowJump)
    registry.add("coupling", "reflow", Reflow)
