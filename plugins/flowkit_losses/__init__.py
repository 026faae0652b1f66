"""Training objectives: conditional flow matching (``cfm``) and denoising score matching (``dsm``), and
the distributions of their training times (``uniform``, ``logit-normal``, ``mode``, ``cosmap``)."""

from flowkit import hookimpl


@hookimpl
def flowkit_register(registry):
    """Register the CFM and DSM losses and the time distributions."""
    from flowkit_losses.cfm import CFMLoss
    from flowkit_losses.dsm import DSMLoss
    from flowkit_losses.times import CosmapTime, LogitNormalTime, ModeTime, UniformTime

    registry.add("loss", "cfm", CFMLoss)
    registry.add("loss", "dsm", DSMLoss)
    registry.add("time", "uniform", UniformTime)
    registry.add("time", "logit-normal", LogitNormalTime)
    registry.add("time", "mode", ModeTime)
    registry.add("time", "cosmap", CosmapTime)
