"""Few-step generation with flow maps: MeanFlow (Geng et al. 2025, arXiv 2505.13447).

* loss ``meanflow``: trains a two-time network ``u(x_t, t, r)``, the average velocity over ``[t, r]``,
  on the MeanFlow identity with one ``torch.func.jvp`` (``docs/math.md``, "MeanFlow");
* dynamics ``mean-flow``: the average velocity ``average(x, t, r)`` of such a model, and its drift
  ``u(x, t, t)`` (the instantaneous velocity), so ODE simulators integrate it too;
* simulator ``mean-flow-jump``: ``x <- x + (t_next - t) u(x, t, t_next)`` over the ``[sample]`` grid,
  one network evaluation per step (``steps = 1``: one-step generation).

Importing this package is cheap: the component modules load when the registry asks for them.
"""

from flowkit import hookimpl


@hookimpl
def flowkit_register(registry):
    """Register the MeanFlow loss, its dynamics and its jump sampler."""
    from flowkit_flowmaps.jumps import MeanFlowDynamics, MeanFlowJump
    from flowkit_flowmaps.meanflow import MeanFlowLoss

    registry.add("loss", "meanflow", MeanFlowLoss)
    registry.add("dynamics", "mean-flow", MeanFlowDynamics)
    registry.add("simulator", "mean-flow-jump", MeanFlowJump)
